//! Checks on the values of the configuration: https URLs, names and token ids, the TLS
//! trust choice, secrets read inline or from a file, and the signer list. Each error
//! names the field; nothing here writes anything.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::schema::{Reader, SIGNER_FIELDS, env_name, mode_bits, read_capped};
use super::{ConfigError, Mode, field_err};
use crate::authz::{Role, SignerEntry};
use crate::base::json::kind;
use crate::base::secret::Secret;
use crate::net::{Sha256Pin, TlsTrust};

pub(super) fn check_https_url(
    field: &str,
    url: &str,
    allow_path: bool,
) -> Result<String, ConfigError> {
    let expected = if allow_path {
        "must be https://HOST[:PORT][/PATH]"
    } else {
        "must be https://HOST[:PORT]"
    };
    let bad = || field_err(field, format!("{expected}, got {url:?}"));
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let path = path.trim_end_matches('/');
    if !path.is_empty() && !allow_path {
        return Err(bad());
    }
    if url.contains(['?', '#', ' ']) || url.chars().any(char::is_control) {
        return Err(bad());
    }
    let host_port_ok = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => !h.is_empty() && (p.is_empty() || port_ok(p.strip_prefix(':'))),
            None => false,
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => host_ok(h) && port_ok(Some(p)),
            None => host_ok(authority),
        }
    };
    if !host_port_ok {
        return Err(bad());
    }
    Ok(format!("https://{authority}{path}"))
}

pub(super) fn host_ok(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

pub(super) fn port_ok(p: Option<&str>) -> bool {
    p.and_then(|p| p.parse::<u16>().ok()).is_some_and(|p| p > 0)
}

pub(super) fn check_name(field: &str, s: &str, what: &str) -> Result<(), ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(field_err(
            field,
            format!("must be {what} (letters, digits, '-', '.', '_'; at most 63), got {s:?}"),
        ))
    }
}

/// `USER@REALM!TOKENID`, as Proxmox's `split_tokenid` accepts it.
pub(super) fn check_token_id(field: &str, s: &str) -> Result<(), ConfigError> {
    let bad = || {
        field_err(
            field,
            format!("must be USER@REALM!TOKENID (e.g. felhom-agent@pve!agent), got {s:?}"),
        )
    };
    let (userid, name) = s.split_once('!').ok_or_else(bad)?;
    let (user, realm) = userid.rsplit_once('@').ok_or_else(bad)?;
    let name_ok = name.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && name.len() >= 2
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    let user_ok = !user.is_empty()
        && !user
            .chars()
            .any(|c| c.is_whitespace() || c == ':' || c == '/');
    let realm_ok = !realm.is_empty()
        && realm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if name_ok && user_ok && realm_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

pub(super) fn tls_choice(r: &Reader<'_>, section: &str) -> Result<TlsTrust, ConfigError> {
    let fp_path = format!("{section}.tls.fingerprint_sha256");
    let ca_path = format!("{section}.tls.ca_file");
    let insecure_path = format!("{section}.tls.insecure_skip_verify");
    let fp = r.string(&fp_path)?.filter(|s| !s.is_empty());
    let ca = r.string(&ca_path)?.filter(|s| !s.is_empty());
    let insecure = r.bool(&insecure_path)?;
    match (fp, ca, insecure) {
        (Some(_), Some(_), _) => Err(field_err(
            format!("{section}.tls"),
            "set either fingerprint_sha256 or ca_file, not both",
        )),
        (Some(_), _, true) | (_, Some(_), true) => Err(field_err(
            insecure_path,
            "cannot be combined with fingerprint_sha256 or ca_file",
        )),
        (Some(fp), None, false) => Sha256Pin::parse(&fp)
            .map(TlsTrust::Pin)
            .map_err(|e| field_err(fp_path, e.to_string())),
        (None, Some(ca), false) => Ok(TlsTrust::CaFile(PathBuf::from(ca))),
        (None, None, true) => Ok(TlsTrust::InsecureSkipVerify),
        (None, None, false) => Ok(TlsTrust::SystemBundle),
    }
}

/// Where systemd puts a unit's credentials: a `*_file` there exists only inside the unit.
const SYSTEMD_CREDENTIALS: &str = "/run/credentials/";

/// Where the unit's `LoadCredential=` reads the secrets from, and so where the command
/// line finds them outside the unit, after `$CREDENTIALS_DIRECTORY`.
pub(super) const CREDENTIALS_FALLBACK_DIR: &str = "/etc/felhom-agent/credentials";

/// The files a `*_file` secret is looked for in, in order: the configured path; for a
/// path under `/run/credentials/` (the unit's), the same name in
/// `$CREDENTIALS_DIRECTORY` (when set and absolute) and then in
/// [`CREDENTIALS_FALLBACK_DIR`], so the command line works outside the unit.
pub(super) fn secret_candidates(path: &Path, credentials_directory: Option<&Path>) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    if path.starts_with(SYSTEMD_CREDENTIALS)
        && let Some(name) = path.file_name()
    {
        if let Some(d) = credentials_directory.filter(|d| d.is_absolute()) {
            out.push(d.join(name));
        }
        out.push(Path::new(CREDENTIALS_FALLBACK_DIR).join(name));
    }
    out.dedup();
    out
}

/// Reads a secret given inline (`name`) or in a file (`name_file`); exactly one. A file
/// is looked for where [`secret_candidates`] says; every failure names the field.
pub(super) fn load_secret(
    r: &Reader<'_>,
    section: &str,
    name: &str,
    needed: bool,
    mode: Mode,
    warnings: &mut Vec<String>,
) -> Result<(Option<Secret>, Option<PathBuf>), ConfigError> {
    let inline_path = format!("{section}.{name}");
    let file_path = format!("{section}.{name}_file");
    let inline = r.string(&inline_path)?.filter(|s| !s.is_empty());
    let file = r.string(&file_path)?.filter(|s| !s.is_empty());
    match (inline, file) {
        (Some(_), Some(_)) => Err(field_err(
            format!("{section}.{name}"),
            format!("set either {name} or {name}_file, not both"),
        )),
        (Some(s), None) => Ok((Some(Secret::new(s)), None)),
        (None, Some(f)) => {
            let path = PathBuf::from(f);
            if !needed {
                return Ok((None, Some(path)));
            }
            if path.is_relative() {
                return Err(field_err(file_path, "must be an absolute path"));
            }
            let candidates = secret_candidates(&path, r.credentials_directory);
            let found = candidates
                .iter()
                .find(|c| std::fs::symlink_metadata(c).is_ok())
                .ok_or_else(|| {
                    let also = if candidates.len() > 1 {
                        let rest: Vec<String> = candidates[1..]
                            .iter()
                            .map(|c| c.display().to_string())
                            .collect();
                        format!(" (outside systemd also looked for {})", rest.join(", "))
                    } else {
                        String::new()
                    };
                    field_err(
                        &file_path,
                        format!("{} does not exist{also}", path.display()),
                    )
                })?;
            let bytes = read_capped(found).map_err(|e| match e {
                ConfigError::Read { path, source } => field_err(
                    &file_path,
                    format!("cannot read {}: {source}", path.display()),
                ),
                other => other,
            })?;
            let path = found.clone();
            let text = String::from_utf8(bytes)
                .map_err(|_| field_err(&file_path, "the file is not UTF-8 text"))?;
            let value = text.trim_end_matches(['\n', '\r']).to_owned();
            if value.is_empty() {
                return Err(field_err(&file_path, "the file is empty"));
            }
            if value.contains(['\n', '\r']) {
                return Err(field_err(&file_path, "the file must hold one line"));
            }
            if mode_bits(&path).is_some_and(|m| m & 0o077 != 0) {
                warnings.push(format!(
                    "{file_path}: {} is readable by group or others; chmod 600 it",
                    path.display()
                ));
            }
            Ok((Some(Secret::new(value)), Some(path)))
        }
        (None, None) if needed => Err(field_err(
            format!("{section}.{name}"),
            format!(
                "is required for `{}` (set {name}, {name}_file or {})",
                mode.name(),
                env_name(&inline_path)
            ),
        )),
        (None, None) => Ok((None, None)),
    }
}

pub(super) fn signers(r: &Reader<'_>) -> Result<Vec<SignerEntry>, ConfigError> {
    let Some(v) = r.get("authz.signers") else {
        return Ok(Vec::new());
    };
    let arr = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        other => {
            return Err(field_err(
                "authz.signers",
                format!("must be an array, got {}", kind(other)),
            ));
        }
    };
    let mut out = Vec::with_capacity(arr.len());
    for (i, item) in arr.iter().enumerate() {
        let at = format!("authz.signers[{i}]");
        let Some(obj) = item.as_object() else {
            return Err(field_err(
                at,
                format!("must be an object, got {}", kind(item)),
            ));
        };
        if let Some(k) = obj.keys().find(|k| !SIGNER_FIELDS.contains(&k.as_str())) {
            return Err(field_err(format!("{at}.{k}"), "unknown field"));
        }
        let get = |k: &str| -> Result<String, ConfigError> {
            match obj.get(k) {
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
                Some(Value::String(_)) => Err(field_err(format!("{at}.{k}"), "must not be empty")),
                None | Some(Value::Null) => Err(field_err(format!("{at}.{k}"), "is required")),
                Some(other) => Err(field_err(
                    format!("{at}.{k}"),
                    format!("must be a string, got {}", kind(other)),
                )),
            }
        };
        let key_id = get("key_id")?;
        let role = match get("role")?.as_str() {
            "operational" => Role::Operational,
            "recovery" => Role::Recovery,
            other => {
                return Err(field_err(
                    format!("{at}.role"),
                    format!("must be \"operational\" or \"recovery\", got {other:?}"),
                ));
            }
        };
        out.push(SignerEntry {
            key_id,
            role,
            public_key: get("public_key")?,
            valid_before: match obj.get("valid_before") {
                None | Some(Value::Null) => None,
                Some(_) => Some(get("valid_before")?),
            },
        });
    }
    Ok(out)
}
