//! `felhom-agent verify`: checks a signed op (one or several signatures over one blob)
//! against the effective signer set and host offline, as the gate would (roles, the
//! recovery threshold, a rotation's version and new set), and prints that set: its
//! source, version, each key's role, fingerprint and expiry, and the revoked keys. It
//! never burns a nonce, only reads the state directory (`signers.json`, the rotated
//! set), and reads no more than one byte past the verifier's own caps of any file.

use std::io::Write;
use std::path::Path;

use super::command::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, load_config};
use crate::authz::blob::MAX_BLOB_BYTES;
use crate::authz::sshsig::MAX_ARMOR_BYTES;
use crate::config::Mode;

/// Reads at most `cap + 1` bytes of `path`, so an endless file (`/dev/zero`) or a huge
/// one costs no more than the cap. Over the cap is the verifier's own refusal,
/// `malformed` on `out` (exit 1); a file that cannot be opened or read is exit 2.
fn read_input(
    path: &Path,
    what: &str,
    cap: usize,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Vec<u8>, u8> {
    use std::io::Read;
    let mut buf = Vec::new();
    let limit = u64::try_from(cap).map_or(u64::MAX, |c| c.saturating_add(1));
    let r = std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut buf));
    match r {
        Ok(_) if buf.len() > cap => {
            let _ = writeln!(out, "refused: malformed");
            let _ = writeln!(
                out,
                "detail: {what} {} is over the {cap}-byte cap",
                path.display().to_string().escape_debug()
            );
            Err(EXIT_FAILED)
        }
        Ok(_) => Ok(buf),
        Err(e) => {
            let _ = writeln!(err, "felhom-agent: {what} {}: {e}", path.display());
            Err(EXIT_USAGE)
        }
    }
}

/// Runs `verify`; returns the exit code.
pub(crate) fn verify(
    blob: &Path,
    sigs: &[std::path::PathBuf],
    config: &Path,
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
    // The verifier's own caps: what it would refuse as `malformed` is refused the same
    // way here, before more than one byte past the cap is read.
    let blob = match read_input(blob, "--blob", MAX_BLOB_BYTES, out, err) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let mut texts = Vec::with_capacity(sigs.len());
    for sig in sigs {
        let sig = match read_input(sig, "--sig", MAX_ARMOR_BYTES, out, err) {
            Ok(b) => b,
            Err(code) => return code,
        };
        let Ok(sig) = String::from_utf8(sig) else {
            let _ = writeln!(out, "refused: malformed");
            let _ = writeln!(out, "detail: the signature file is not UTF-8 text");
            return EXIT_FAILED;
        };
        texts.push(sig);
    }
    let set = match crate::authz::load_signer_set_os(authz, Some(&cfg.state_dir)) {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => {
            let _ = writeln!(err, "felhom-agent: configuration error: {e}");
            return EXIT_USAGE;
        }
    };
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let code = match crate::authz::verify_offline_set(
        std::sync::Arc::clone(&set),
        authz,
        &cfg.host_id,
        &blob,
        &refs,
        &crate::base::time::SystemClock,
    ) {
        Ok(op) => {
            let _ = writeln!(out, "verified (no nonce burned)");
            let _ = write!(out, "{}", op.to_lines());
            EXIT_OK
        }
        Err(e) => {
            let _ = writeln!(out, "refused: {}", e.code());
            let _ = writeln!(out, "detail: {}", e.detail().escape_debug());
            EXIT_FAILED
        }
    };
    for line in set.policy().describe(&set.revoked()) {
        let _ = writeln!(out, "{line}");
    }
    code
}
