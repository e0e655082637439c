//! `authz.allowed_signers_file` against the real OpenSSH: one allowed_signers file and
//! one set of signatures (by `ssh-keygen -Y sign`), judged by `ssh-keygen -Y verify -f
//! FILE -I KEY_ID -n felhom-op-v1` (with `-r` for the revoked-keys case) and by the
//! agent's verifier at the same time. The agent accepts exactly what `ssh-keygen`
//! accepts, and then also checks the role the file's comment carries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::rotate::{NEW_OPS, OPS, REC1, REC2, REC3, bare_key, destroy_blob, sign_as, sign_ns};
use common::tempdir;
use felhom_agent::authz::{
    AuthzConfig, MemoryNonceStore, Policy, Role, SignerSource, Verifier, load_signer_set_os,
};
use felhom_agent::base::{ManualClock, Timestamp};

const NOW: i64 = 1_900_000_000;
const DAY: i64 = 86_400;
const DIGEST: &str = "9c1e4bd07f3f6a25c8e4d1b2a3f5e6d7c8b9a0f1";

/// `YYYYMMDDHHMMSSZ`, the form `ssh-keygen` reads and writes.
fn ssh_time(t: i64) -> String {
    let s = Timestamp(t).to_string();
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    format!("{digits}Z")
}

fn allowed_signers() -> String {
    format!(
        "# felhom signers\n\
         ops-2026 namespaces=\"felhom-op-v1\" {} felhom-role=operational\n\
         rec-1 namespaces=\"git,felhom-op-v1\",valid-before=\"{}\" {} laptop felhom-role=recovery\n\
         old-ops namespaces=\"felhom-op-v1\",valid-before=\"{}\" {} felhom-role=operational\n\
         future namespaces=\"felhom-op-v1\",valid-after=\"{}\" {} felhom-role=operational\n\
         edge-before namespaces=\"felhom-op-v1\",valid-before=\"{}\" {} felhom-role=operational\n\
         edge-after namespaces=\"felhom-op-v1\",valid-after=\"{}\" {} felhom-role=operational\n",
        bare_key(OPS),
        ssh_time(NOW + DAY),
        bare_key(REC1),
        ssh_time(NOW - DAY),
        bare_key(REC2),
        ssh_time(NOW + DAY),
        bare_key(REC3),
        ssh_time(NOW),
        bare_key("rsa-2048"),
        ssh_time(NOW),
        bare_key("rsa-3072"),
    )
}

fn ssh_keygen_verify(
    dir: &Path,
    file: &Path,
    principal: &str,
    blob: &[u8],
    sig: &str,
    revoked: Option<&Path>,
) -> bool {
    let sig_path = dir.join(format!("v-{}.sig", common::sign::nonce()));
    fs::write(&sig_path, sig).unwrap();
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-Y", "verify", "-f"])
        .arg(file)
        .args(["-I", principal, "-n", "felhom-op-v1", "-s"])
        .arg(&sig_path)
        .arg(format!("-Overify-time={}", ssh_time(NOW)));
    if let Some(r) = revoked {
        cmd.arg("-r").arg(r);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh-keygen runs");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(blob).unwrap();
    child.wait().unwrap().success()
}

fn verifier(cfg: &AuthzConfig) -> Verifier {
    let set = load_signer_set_os(cfg, None).unwrap();
    Verifier::with_set(
        Arc::new(set),
        "pve-a",
        Policy::default(),
        Arc::new(ManualClock::new(Timestamp(NOW))),
        Arc::new(MemoryNonceStore::new()),
    )
}

#[test]
fn the_agent_accepts_exactly_what_ssh_keygen_accepts_and_then_checks_the_role() {
    let dir = tempdir("allowed-signers", "equivalence");
    let file = dir.join("allowed_signers");
    fs::write(&file, allowed_signers()).unwrap();
    let revoked = dir.join("revoked_keys");
    fs::write(&revoked, format!("{}\n", bare_key(OPS))).unwrap();
    let cfg = AuthzConfig {
        allowed_signers_file: Some(file.clone()),
        ..AuthzConfig::default()
    };
    let with_revoked = AuthzConfig {
        revoked_keys_file: Some(revoked.clone()),
        ..cfg.clone()
    };
    let policy = load_signer_set_os(&cfg, None).unwrap().policy();
    assert_eq!(policy.source, SignerSource::AllowedSigners);
    assert_eq!(policy.version, 0);
    assert_eq!(policy.signers.len(), 6);

    let blob = destroy_blob("pve-a", "105", DIGEST, NOW);
    let mut tampered = blob.clone();
    let at = tampered.iter().position(|&b| b == b'5').unwrap();
    tampered[at] = b'6';
    // (what, principal, signing key, namespace, blob verified, revoked file?, want ok,
    //  role the agent finds)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a [u8],
        bool,
        bool,
        Option<Role>,
    );
    let cases: Vec<Case> = vec![
        (
            "operational key",
            "ops-2026",
            OPS,
            "felhom-op-v1",
            &blob,
            false,
            true,
            Some(Role::Operational),
        ),
        (
            "recovery key, namespace in a list",
            "rec-1",
            REC1,
            "felhom-op-v1",
            &blob,
            false,
            true,
            Some(Role::Recovery),
        ),
        (
            "expired by valid-before",
            "old-ops",
            REC2,
            "felhom-op-v1",
            &blob,
            false,
            false,
            None,
        ),
        (
            "not yet valid by valid-after",
            "future",
            REC3,
            "felhom-op-v1",
            &blob,
            false,
            false,
            None,
        ),
        (
            "valid-before is this very second",
            "edge-before",
            "rsa-2048",
            "felhom-op-v1",
            &blob,
            false,
            true,
            Some(Role::Operational),
        ),
        (
            "valid-after is this very second",
            "edge-after",
            "rsa-3072",
            "felhom-op-v1",
            &blob,
            false,
            true,
            Some(Role::Operational),
        ),
        (
            "key not in the file",
            "ops-2026",
            NEW_OPS,
            "felhom-op-v1",
            &blob,
            false,
            false,
            None,
        ),
        (
            "wrong namespace",
            "ops-2026",
            OPS,
            "git",
            &blob,
            false,
            false,
            None,
        ),
        (
            "tampered bytes",
            "ops-2026",
            OPS,
            "felhom-op-v1",
            &tampered,
            false,
            false,
            None,
        ),
        (
            "revoked key",
            "ops-2026",
            OPS,
            "felhom-op-v1",
            &blob,
            true,
            false,
            None,
        ),
    ];
    for (what, principal, key, ns, verified, use_revoked, want_ok, want_role) in cases {
        let sig = sign_ns(&dir, key, &blob, ns);
        let ssh_ok = ssh_keygen_verify(
            &dir,
            &file,
            principal,
            verified,
            &sig,
            use_revoked.then_some(revoked.as_path()),
        );
        let v = verifier(if use_revoked { &with_revoked } else { &cfg });
        let agent = v.check(verified, &sig);
        assert_eq!(ssh_ok, want_ok, "{what}: ssh-keygen");
        assert_eq!(
            agent.is_ok(),
            ssh_ok,
            "{what}: agent {agent:?}, ssh-keygen {ssh_ok}"
        );
        if let Ok(op) = agent {
            assert_eq!(op.signer.key_id, principal, "{what}");
            assert_eq!(Some(op.signer.role), want_role, "{what}");
            // The role check on top: a destroy needs an operational signer.
            let role = v.check_authority(&op).map_err(|e| e.code());
            match want_role {
                Some(Role::Operational) => assert_eq!(role, Ok(()), "{what}"),
                _ => assert_eq!(role, Err("role_denied"), "{what}"),
            }
        }
    }
    // The same key signing for the recovery principal is refused by ssh-keygen (the
    // principal does not match) while the agent does not read the principal from the op
    // at all: it names the signer by key material, so it reports the file's own id.
    let sig = sign_as(&dir, OPS, &blob);
    assert!(!ssh_keygen_verify(&dir, &file, "rec-1", &blob, &sig, None));
    let op = verifier(&cfg).check(&blob, &sig).unwrap();
    assert_eq!(op.signer.key_id, "ops-2026");
}

#[test]
fn a_file_that_breaks_the_rules_refuses_to_load_naming_the_line() {
    let dir = tempdir("allowed-signers", "refused");
    let file = dir.join("allowed_signers");
    fs::write(
        &file,
        format!(
            "ops-2026 namespaces=\"felhom-op-v1\" {} felhom-role=operational\n\
             ca cert-authority,namespaces=\"felhom-op-v1\" {} felhom-role=recovery\n",
            bare_key(OPS),
            bare_key(REC1)
        ),
    )
    .unwrap();
    let cfg = AuthzConfig {
        allowed_signers_file: Some(file.clone()),
        ..AuthzConfig::default()
    };
    let e = load_signer_set_os(&cfg, None).unwrap_err();
    assert_eq!(e.field, format!("{}:2", file.display()));
    assert!(e.reason.contains("cert-authority"), "{e}");
}
