//! `felhom-agent verify`: checks a signed op (one or several signatures over one blob)
//! against the effective signer set and host offline, as the gate would (roles, the
//! recovery threshold, a rotation's version and new set), and prints that set: its
//! source, version, each key's role, fingerprint and expiry, and the revoked keys. It
//! never burns a nonce, only reads the state directory (`signers.json`, the rotated
//! set), and reads no more than one byte past the verifier's own caps of any file.

use std::io::Write;
use std::path::Path;

use super::command::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, Format, load_config, visible, write_json};
use crate::authz::VerifiedOp;
use crate::authz::blob::MAX_BLOB_BYTES;
use crate::authz::sshsig::MAX_ARMOR_BYTES;
use crate::config::Mode;
use crate::reconcile::classify::{OpClass, SIGNED_CATALOGUE};
use crate::reconcile::gate::Refusal;

/// How `verify` ends: the op, or a refusal with its snake_case code and detail.
type Verdict = Result<VerifiedOp, (&'static str, String)>;

/// Reads at most `cap + 1` bytes of `path`, so an endless file (`/dev/zero`) or a huge
/// one costs no more than the cap. Over the cap is the verifier's own refusal,
/// `malformed` (exit 1); a file that cannot be opened or read is exit 2.
fn read_input(
    path: &Path,
    what: &str,
    cap: usize,
    err: &mut dyn Write,
) -> Result<Result<Vec<u8>, (&'static str, String)>, u8> {
    use std::io::Read;
    let mut buf = Vec::new();
    let limit = u64::try_from(cap).map_or(u64::MAX, |c| c.saturating_add(1));
    let r = std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut buf));
    match r {
        Ok(_) if buf.len() > cap => Ok(Err((
            "malformed",
            format!("{what} {} is over the {cap}-byte cap", path.display()),
        ))),
        Ok(_) => Ok(Ok(buf)),
        Err(e) => {
            let _ = writeln!(
                err,
                "felhom-agent: {what} {}: {e}",
                visible(&path.display().to_string())
            );
            Err(EXIT_USAGE)
        }
    }
}

/// Runs `verify`; returns the exit code.
pub(crate) fn verify(
    blob: &Path,
    sigs: &[std::path::PathBuf],
    config: &Path,
    format: Format,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let cfg = match load_config(config, Mode::Verify, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(authz) = cfg.authz.as_ref() else {
        let _ = writeln!(
            err,
            "felhom-agent: configuration error: authz.signers: `verify` needs at least one signer"
        );
        return EXIT_USAGE;
    };
    let set = match crate::authz::load_signer_set_os(authz, Some(&cfg.state_dir)) {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => {
            let _ = writeln!(err, "felhom-agent: configuration error: {e}");
            return EXIT_USAGE;
        }
    };
    let verdict = match judge(
        std::sync::Arc::clone(&set),
        authz,
        &cfg.host_id,
        blob,
        sigs,
        err,
    ) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let effective = set.policy().describe(&set.revoked());
    let printed = match (format, &verdict) {
        (Format::Json, v) => {
            let mut doc = verdict_json(v);
            doc["signer_set"] = serde_json::json!(effective);
            write_json(out, &doc)
        }
        (Format::Text, Ok(op)) => out
            .write_all(b"verified (no nonce burned)\n")
            .and_then(|()| out.write_all(op.to_lines().as_bytes())),
        (Format::Text, Err((code, detail))) => {
            writeln!(out, "refused: {code}\ndetail: {}", visible(detail))
        }
    }
    .and_then(|()| {
        if format == Format::Text {
            for line in &effective {
                writeln!(out, "{}", visible(line))?;
            }
        }
        Ok(())
    });
    match (printed, verdict) {
        (Err(e), _) => {
            let _ = writeln!(err, "felhom-agent: verify: cannot write the result: {e}");
            EXIT_FAILED
        }
        (Ok(()), Ok(_)) => EXIT_OK,
        (Ok(()), Err(_)) => EXIT_FAILED,
    }
}

/// Reads both files within the verifier's caps (what it would refuse as `malformed` is
/// refused the same way here, before more than one byte past the cap is read) and runs
/// the pipeline. `Err(exit code)` when a file cannot be read.
fn judge(
    set: std::sync::Arc<crate::authz::SignerSet>,
    authz: &crate::authz::AuthzConfig,
    host_id: &str,
    blob: &Path,
    sigs: &[std::path::PathBuf],
    err: &mut dyn Write,
) -> Result<Verdict, u8> {
    let blob = match read_input(blob, "--blob", MAX_BLOB_BYTES, err)? {
        Ok(b) => b,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let mut texts = Vec::with_capacity(sigs.len());
    for sig in sigs {
        let sig = match read_input(sig, "--sig", MAX_ARMOR_BYTES, err)? {
            Ok(b) => b,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let Ok(sig) = String::from_utf8(sig) else {
            return Ok(Err((
                "malformed",
                "the signature file is not UTF-8 text".to_owned(),
            )));
        };
        texts.push(sig);
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let verdict = crate::authz::verify_offline_set(
        set,
        authz,
        host_id,
        &blob,
        &refs,
        &crate::base::time::SystemClock,
    )
    .map_err(|e| (e.code(), e.detail().to_owned()));
    // A verified op the agent would never execute is refused here already, not at
    // delivery: `unknown_op`, as the daemon's gate says it.
    Ok(verdict.and_then(|op| {
        if OpClass::is_catalogued(&op.blob.op) {
            Ok(op)
        } else {
            Err((
                Refusal::UnknownOp.code(),
                format!(
                    "{} is not in the signed-op catalogue ({})",
                    op.blob.op,
                    SIGNED_CATALOGUE.join(", ")
                ),
            ))
        }
    }))
}

/// The `--json` document: `{"result":"verified", …the op…}` or
/// `{"result":"refused","code","detail"}`.
fn verdict_json(v: &Verdict) -> serde_json::Value {
    match v {
        Ok(op) => serde_json::json!({
            "result": "verified",
            "nonce_burned": false,
            "op": op.blob.op,
            "host_id": op.blob.host_id,
            "guest_id": op.blob.guest_id,
            "guest_digest": op.blob.guest_digest,
            "params": op.blob.params,
            "key_id": op.blob.key_id,
            "signer": op.signer.key_id,
            "signer_role": op.signer.role.as_str(),
            "signer_fingerprint": op.signer.fingerprint,
            "nonce": op.blob.nonce,
            "not_before": op.blob.not_before.to_rfc3339(),
            "expires_at": op.blob.expires_at.to_rfc3339(),
            "sk": op.sk.as_ref().map(|sk| serde_json::json!({"flags": sk.flags, "counter": sk.counter})),
            "sk_counter_warning": op.sk_counter_warning(),
        }),
        Err((code, detail)) => serde_json::json!({
            "result": "refused",
            "code": code,
            "detail": detail,
        }),
    }
}
