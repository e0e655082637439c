//! `selftest offline`: checks that need no network. Known-answer tests of the
//! signature pipeline on vectors compiled into the binary, the `authz` config, the
//! state directory's owner and mode, and a read-only replay of the durable files.
//!
//! Never modifies anything: store files are replayed with [`crate::store::verify_file`]
//! (a torn tail is reported, not cut) and no nonce store on disk is touched.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{AuthzConfig, AuthzError, MemoryNonceStore, Policy, Role, Signer, Verifier};
use crate::base::time::{Clock as _, ManualClock, Timestamp};
use crate::store::{StoreError, verify_file};

const KAT_PUB: &str = include_str!("../../vectors/sshsig/keys/ed25519.pub");
const KAT_BLOB: &[u8] = include_bytes!("../../vectors/sshsig/blobs/op-valid.json");
const KAT_SIG: &str = include_str!("../../vectors/sshsig/sigs/op-valid.ed25519.sig");
const KAT_SIG_WRONG_NS: &str =
    include_str!("../../vectors/sshsig/sigs/op-valid.ed25519.wrong-namespace.sig");
const KAT_HOST: &str = "pve-a";
// The `key_id` the vector's blob claims: the built-in signer carries it, so a passing
// known-answer test logs no `signer_key_id_mismatch` warning.
const KAT_KEY_ID: &str = "ops-2026";
// Inside the vector's window (2030-01-01T00:00:00Z .. 01:00:00Z).
const KAT_NOW: Timestamp = Timestamp(1_893_457_800);

/// One line of the selftest checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

fn check(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_string(),
        ok,
        detail: detail.into(),
    }
}

fn expect_refusal(name: &str, got: Result<super::VerifiedOp, AuthzError>, want: &str) -> Check {
    match got {
        Err(e) if e.code() == want => check(name, true, format!("refused: {e}")),
        Err(e) => check(
            name,
            false,
            format!("refused as {} (want {want}): {e}", e.code()),
        ),
        Ok(_) => check(name, false, format!("accepted (want {want})")),
    }
}

fn known_answer_tests() -> Vec<Check> {
    let signer = match Signer::from_authorized_key(KAT_KEY_ID, Role::Operational, KAT_PUB) {
        Ok(s) => s,
        Err(e) => return vec![check("kat: built-in signer", false, e)],
    };
    let v = Verifier::new(
        vec![signer],
        KAT_HOST,
        Policy::default(),
        Arc::new(ManualClock::new(KAT_NOW)),
        Arc::new(MemoryNonceStore::new()),
    );
    let mut out = Vec::new();
    out.push(match v.verify(KAT_BLOB, KAT_SIG) {
        Ok(op) => check(
            "kat: good signature verifies",
            true,
            format!("{} by {}", op.blob.op, op.signer.fingerprint),
        ),
        Err(e) => check("kat: good signature verifies", false, e.to_string()),
    });
    let mut tampered = KAT_BLOB.to_vec();
    if let Some(p) = tampered.iter().position(|&b| b == b'5') {
        tampered[p] = b'6';
    }
    out.push(expect_refusal(
        "kat: tampered blob refused",
        v.verify(&tampered, KAT_SIG),
        "bad_signature",
    ));
    out.push(expect_refusal(
        "kat: wrong namespace refused",
        v.verify(KAT_BLOB, KAT_SIG_WRONG_NS),
        "namespace",
    ));
    out.push(expect_refusal(
        "kat: replay refused",
        v.verify(KAT_BLOB, KAT_SIG),
        "replay",
    ));
    out
}

/// The effective uid of this process, from `/proc/self/status`.
fn current_uid() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn state_dir_check(dir: &Path) -> Check {
    let name = "state dir: owner and mode";
    let m = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => return check(name, false, format!("{}: {e}", dir.display())),
    };
    if !m.is_dir() {
        return check(name, false, format!("{}: not a directory", dir.display()));
    }
    let mode = m.mode() & 0o7777;
    let uid = current_uid();
    let mut problems = Vec::new();
    if mode & 0o077 != 0 {
        problems.push(format!("mode {mode:04o}, want 0700"));
    }
    match uid {
        Some(u) if u == m.uid() => {}
        Some(u) => problems.push(format!("owned by uid {}, this process is uid {u}", m.uid())),
        None => problems.push("cannot read this process's uid".into()),
    }
    if problems.is_empty() {
        check(
            name,
            true,
            format!("{} mode {mode:04o} uid {}", dir.display(), m.uid()),
        )
    } else {
        check(
            name,
            false,
            format!("{}: {}", dir.display(), problems.join("; ")),
        )
    }
}

fn store_file_check(path: &Path) -> Check {
    let name = format!("replay: {}", path.display());
    if !path.exists() {
        return check(&name, true, "absent (nothing recorded yet)");
    }
    let mode = std::fs::metadata(path)
        .map(|m| m.mode() & 0o7777)
        .unwrap_or(0);
    let mode_note = if mode & 0o077 != 0 {
        format!("; mode {mode:04o}, want 0600")
    } else {
        String::new()
    };
    match verify_file(path) {
        Ok(s) if s.torn_bytes > 0 => check(
            &name,
            mode_note.is_empty(),
            format!(
                "{} records; torn last line of {} bytes (cut at next start){mode_note}",
                s.records, s.torn_bytes
            ),
        ),
        Ok(s) => check(
            &name,
            mode_note.is_empty(),
            format!("{} records, chain verified{mode_note}", s.records),
        ),
        Err(StoreError::Corrupt { line, reason, .. }) => {
            check(&name, false, format!("corrupt at line {line}: {reason}"))
        }
        Err(e) => check(&name, false, e.to_string()),
    }
}

/// The `authz` config and the effective signer set (the rotated one when `state_dir`
/// holds `signers.json`): one check for the config, one line per fact of the set
/// (source, version, threshold, each signer's role, fingerprint and expiry, each revoked
/// key), and a warning line for each signer expiring within
/// [`super::EXPIRY_WARNING_DAYS`] days (a warning passes: the other signers still work;
/// it is also logged as `signer_expiring`).
fn signer_checks(cfg: &AuthzConfig, state_dir: Option<&Path>, now: Timestamp) -> Vec<Check> {
    let set = match super::load_signer_set_os(cfg, state_dir) {
        Ok(s) => s,
        Err(e) => return vec![check("config: authz", false, e.to_string())],
    };
    let policy = set.policy();
    let mut out = vec![check(
        "config: authz",
        true,
        format!(
            "{} signers ({} recovery), version {} from {}",
            policy.signers.len(),
            policy.recovery_count(),
            policy.version,
            policy.source.as_str()
        ),
    )];
    for line in policy.describe(&set.revoked()) {
        let (name, detail) = line.split_once(": ").unwrap_or((line.as_str(), ""));
        out.push(check(&format!("signers: {name}"), true, detail));
    }
    for w in super::warn_expiring(&policy, now) {
        out.push(check("signers: expiry", true, format!("warning: {w}")));
    }
    out
}

/// Runs the offline checks: the known-answer tests always; the `authz` config when
/// given; the state directory (0700, owned by this process's uid) when given; and a
/// read-only replay of each store file (missing files pass: nothing recorded yet).
pub fn offline_selftest(
    cfg: Option<&AuthzConfig>,
    state_dir: Option<&Path>,
    store_files: &[PathBuf],
) -> Vec<Check> {
    let mut out = known_answer_tests();
    if let Some(cfg) = cfg {
        out.extend(signer_checks(
            cfg,
            state_dir,
            crate::base::time::SystemClock.now(),
        ));
    }
    if let Some(d) = state_dir {
        out.push(state_dir_check(d));
    }
    out.extend(store_files.iter().map(|p| store_file_check(p)));
    out
}
