//! `felhom-agent op new`: prints an op blob for an operator to sign with
//! `ssh-keygen -Y sign -n felhom-op-v1`. It fills what the agent will check: this
//! host's `host_id`, a fresh 128-bit nonce, the validity window, and the guest's
//! config digest as Proxmox reports it now.
//!
//! It never signs, never reads a private key, never writes a file and never mutates
//! Proxmox: the one request it may send is a read of the guest's config.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use super::command::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, load_config};
use super::wiring;
use crate::authz::{MAX_BLOB_BYTES, OpBlob, Role};
use crate::base::encoding::hex_encode;
use crate::base::time::{Clock, SystemClock, Timestamp};
use crate::config::{Config, Mode};
use crate::reconcile::SIGNED_CATALOGUE;

/// The window `op new` gives without `--valid`: one hour.
pub(crate) const DEFAULT_VALID_SECONDS: i64 = 3600;
/// The longest `--valid`: the verifier's own longest window (24 h).
const MAX_VALID_SECONDS: i64 = 24 * 3600;
/// Nonce bytes: 128 bits, the verifier's minimum.
const NONCE_BYTES: usize = 16;
/// The verifier's caps on a params key and value.
const MAX_PARAM_KEY: usize = 64;
const MAX_PARAM_VALUE: usize = 4096;
/// Longest config digest accepted (the verifier's cap).
const MAX_DIGEST_CHARS: usize = 64;

/// What `op new` was asked to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpNewRequest {
    /// The op name; one of the catalogue.
    pub op: String,
    /// The guest, for every op but `rotate_signers`.
    pub guest: Option<u32>,
    /// `--param` pairs.
    pub params: BTreeMap<String, String>,
    /// `--valid`, in seconds.
    pub valid_seconds: i64,
    /// `--digest`: the guest's config digest, instead of reading it from Proxmox.
    pub digest: Option<String>,
    /// `--key-id`: the advisory key id; default the only operational signer's.
    pub key_id: Option<String>,
}

impl OpNewRequest {
    /// The checks that need no config: the op is in the catalogue, a guest is named
    /// exactly when the op is about one, a given digest is one the verifier accepts.
    pub(crate) fn check(&self) -> Result<(), String> {
        if !SIGNED_CATALOGUE.contains(&self.op.as_str()) {
            return Err(format!(
                "unknown op {:?}: the agent executes only {}",
                self.op,
                SIGNED_CATALOGUE.join(", ")
            ));
        }
        let host_wide = self.op == "rotate_signers";
        match (host_wide, self.guest) {
            (true, Some(_)) => return Err(format!("`{}` is host-wide: drop --guest", self.op)),
            (false, None) => return Err(format!("`{}` needs --guest N", self.op)),
            _ => {}
        }
        if let Some(d) = &self.digest {
            if host_wide {
                return Err("--digest is only for an op on a guest".into());
            }
            if d.is_empty()
                || d.len() > MAX_DIGEST_CHARS
                || !d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(format!(
                    "--digest must be 1-{MAX_DIGEST_CHARS} lower-case hex digits (the guest's \
                     config digest as Proxmox prints it)"
                ));
            }
        }
        if let Some(k) = &self.key_id
            && (k.len() > 64 || k.chars().any(char::is_control))
        {
            return Err("--key-id must be 1-64 bytes without control characters".into());
        }
        Ok(())
    }
}

/// `KEY=VALUE`, within the verifier's caps (key 1-64 bytes, value at most 4096, no
/// control characters in either).
pub(crate) fn parse_param(s: &str) -> Result<(String, String), String> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(format!(
            "must be KEY=VALUE, got {:?}",
            super::command::visible(s)
        ));
    };
    if k.is_empty() || k.len() > MAX_PARAM_KEY || k.chars().any(char::is_control) {
        return Err(format!(
            "key must be 1-{MAX_PARAM_KEY} bytes without control characters"
        ));
    }
    if v.len() > MAX_PARAM_VALUE || v.chars().any(char::is_control) {
        return Err(format!(
            "{k}: value must be at most {MAX_PARAM_VALUE} bytes without control characters"
        ));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// `N` followed by `s`, `m` or `h`; 1 s to 24 h.
pub(crate) fn parse_valid(s: &str) -> Result<i64, String> {
    let bad = || format!("must be N followed by s, m or h (1s to 24h), got {s:?}");
    let (digits, unit) = s.split_at(s.len().saturating_sub(1));
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(bad()),
    };
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let secs = n * mult;
    if !(1..=MAX_VALID_SECONDS).contains(&secs) {
        return Err(bad());
    }
    Ok(secs)
}

/// A fresh nonce: [`NONCE_BYTES`] from the kernel's generator, in hex.
fn fresh_nonce() -> std::io::Result<String> {
    let mut b = [0u8; NONCE_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex_encode(&b))
}

/// The blob, one field per line in the order the README documents. Each value is
/// JSON-encoded by serde_json, so no input can break out of its string.
fn render(fields: &[(&str, serde_json::Value)]) -> String {
    let mut s = String::from("{\n");
    for (i, (k, v)) in fields.iter().enumerate() {
        let sep = if i + 1 == fields.len() { "" } else { "," };
        s.push_str(&format!("  \"{k}\": {v}{sep}\n"));
    }
    s.push_str("}\n");
    s
}

/// The key id to print: `--key-id`, else the configured operational signer when there
/// is exactly one.
fn key_id(req: &OpNewRequest, cfg: &Config) -> Result<String, String> {
    if let Some(k) = &req.key_id {
        return Ok(k.clone());
    }
    let ops: Vec<&str> = cfg
        .authz
        .iter()
        .flat_map(|a| &a.signers)
        .filter(|s| s.role == Role::Operational)
        .map(|s| s.key_id.as_str())
        .collect();
    match ops.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => Err("`op new` needs --key-id ID: authz.signers names no operational signer".into()),
        many => Err(format!(
            "`op new` needs --key-id ID: authz.signers names {} operational signers ({})",
            many.len(),
            many.join(", ")
        )),
    }
}

/// Runs `op new`; returns the exit code. The blob goes to `out`, errors to `err`.
pub(crate) fn op_new(
    req: &OpNewRequest,
    config: &Path,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let live = req.guest.is_some() && req.digest.is_none();
    let mode = if live { Mode::OpNewLive } else { Mode::OpNew };
    let cfg = match load_config(config, mode, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let key_id = match key_id(req, &cfg) {
        Ok(k) => k,
        Err(e) => {
            let _ = writeln!(err, "felhom-agent: {e}");
            return EXIT_USAGE;
        }
    };
    let digest = match (req.guest, &req.digest) {
        (Some(vmid), None) => match read_guest(&cfg, vmid) {
            Ok((d, protected)) => {
                if protected && req.params.get("unprotect").map(String::as_str) != Some("1") {
                    // Not an error: the operator may mean to clear the flag first.
                    let _ = writeln!(
                        err,
                        "felhom-agent: note: guest {vmid} has protection: 1; without \
                         --param unprotect=1 the agent refuses this op as `protected`"
                    );
                }
                Some(d)
            }
            Err(e) => {
                let _ = writeln!(err, "felhom-agent: op new: {e}");
                return EXIT_FAILED;
            }
        },
        (_, d) => d.clone(),
    };
    let nonce = match fresh_nonce() {
        Ok(n) => n,
        Err(e) => {
            let _ = writeln!(err, "felhom-agent: op new: cannot read /dev/urandom: {e}");
            return EXIT_FAILED;
        }
    };
    let now = SystemClock.now();
    let expires = Timestamp(now.unix().saturating_add(req.valid_seconds));
    let mut fields: Vec<(&str, serde_json::Value)> = vec![
        ("op", req.op.clone().into()),
        ("host_id", cfg.host_id.clone().into()),
    ];
    if let (Some(g), Some(d)) = (req.guest, digest) {
        fields.push(("guest_id", g.to_string().into()));
        fields.push(("guest_digest", d.into()));
    }
    let params: serde_json::Map<String, serde_json::Value> = req
        .params
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    fields.extend([
        ("params", serde_json::Value::Object(params)),
        ("key_id", key_id.into()),
        ("nonce", nonce.into()),
        ("not_before", now.to_rfc3339().into()),
        ("expires_at", expires.to_rfc3339().into()),
    ]);
    let blob = render(&fields);
    // What is printed is what the verifier will parse: within its size cap and read by
    // its own parser, so no blob is printed that the agent would refuse as malformed.
    if blob.len() > MAX_BLOB_BYTES {
        let _ = writeln!(
            err,
            "felhom-agent: op new: the blob would be {} bytes, over the verifier's {MAX_BLOB_BYTES}-byte cap (fewer or shorter --param)",
            blob.len()
        );
        return EXIT_USAGE;
    }
    if let Err(e) = OpBlob::parse(blob.as_bytes()) {
        let _ = writeln!(
            err,
            "felhom-agent: op new: the verifier would refuse this blob: {}",
            e.detail()
        );
        return EXIT_USAGE;
    }
    match out.write_all(blob.as_bytes()) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let _ = writeln!(err, "felhom-agent: op new: cannot write the blob: {e}");
            EXIT_FAILED
        }
    }
}

/// The guest's config digest as Proxmox reports it now, and whether it is protected.
fn read_guest(cfg: &Config, vmid: u32) -> Result<(String, bool), String> {
    let section = cfg
        .proxmox
        .as_ref()
        .ok_or("the proxmox section is needed to read the guest's digest (or give --digest)")?;
    let client = wiring::proxmox_client(section).map_err(|e| e.to_string())?;
    let conf = client
        .guest_config(vmid)
        .map_err(|e| format!("reading guest {vmid}'s config: {e}"))?;
    let protected = conf.protected();
    conf.digest
        .map(|d| (d, protected))
        .ok_or_else(|| format!("guest {vmid}'s config carries no digest"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(op: &str, guest: Option<u32>) -> OpNewRequest {
        OpNewRequest {
            op: op.into(),
            guest,
            params: BTreeMap::new(),
            valid_seconds: DEFAULT_VALID_SECONDS,
            digest: None,
            key_id: None,
        }
    }

    #[test]
    fn only_the_catalogue_and_the_right_target() {
        for op in SIGNED_CATALOGUE {
            let guest = (*op != "rotate_signers").then_some(105);
            assert_eq!(req(op, guest).check(), Ok(()), "{op}");
        }
        for (op, guest) in [
            ("storage_wipe", Some(105)),
            ("start", Some(105)),
            ("guest_destroy", None),
            ("rotate_signers", Some(105)),
        ] {
            assert!(req(op, guest).check().is_err(), "{op}");
        }
        let mut r = req("guest_destroy", Some(105));
        r.digest = Some("ABC".into());
        assert!(r.check().unwrap_err().contains("--digest"));
    }

    #[test]
    fn valid_and_param_within_the_verifiers_caps() {
        assert_eq!(parse_valid("90s"), Ok(90));
        assert_eq!(parse_valid("15m"), Ok(900));
        assert_eq!(parse_valid("24h"), Ok(86_400));
        for bad in ["25h", "0s", "h", "1d", "-1h", "1.5h", "", "9999999h"] {
            assert!(parse_valid(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_param("purge=1"), Ok(("purge".into(), "1".into())));
        assert_eq!(parse_param("a=b=c"), Ok(("a".into(), "b=c".into())));
        for bad in ["purge", "=1", "k=a\nb"] {
            assert!(parse_param(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_rendered_blob_is_json_with_the_fields_in_order() {
        let s = render(&[("op", "x\"y".into()), ("params", serde_json::json!({}))]);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["op"], "x\"y");
        assert!(s.find("\"op\"") < s.find("\"params\""));
    }
}
