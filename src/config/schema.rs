//! The raw side of the configuration: every leaf the schema knows, the reader that
//! walks the JSON naming each field's path, the unknown-field check and the
//! environment overlay. Nothing here knows what a field means; it never validates a
//! value beyond its JSON type.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::{ConfigError, ENV_PREFIX, MAX_FILE_BYTES, Mode, field_err};
use crate::base::json::kind;

/// The type of a leaf in the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Str,
    /// A string that may be `null`.
    OptStr,
    Int,
    Bool,
    /// Any JSON (arrays); from the environment it is parsed as JSON.
    Json,
}

/// Every leaf the config knows, as a dotted path and its type. Drives the unknown-field
/// check and the environment overlay.
pub(super) const SCHEMA: &[(&str, Kind)] = &[
    ("host_id", Kind::Str),
    ("state_dir", Kind::Str),
    ("log.level", Kind::Str),
    ("proxmox.url", Kind::Str),
    ("proxmox.node", Kind::Str),
    ("proxmox.token_id", Kind::Str),
    ("proxmox.token_secret", Kind::OptStr),
    ("proxmox.token_secret_file", Kind::OptStr),
    ("proxmox.tls.fingerprint_sha256", Kind::OptStr),
    ("proxmox.tls.ca_file", Kind::OptStr),
    ("proxmox.tls.insecure_skip_verify", Kind::Bool),
    ("proxmox.timeout_seconds", Kind::Int),
    ("hub.url", Kind::Str),
    ("hub.api_key", Kind::OptStr),
    ("hub.api_key_file", Kind::OptStr),
    ("hub.poll_seconds", Kind::Int),
    ("hub.event_wait_seconds", Kind::Int),
    ("hub.timeout_seconds", Kind::Int),
    ("hub.tls.fingerprint_sha256", Kind::OptStr),
    ("hub.tls.ca_file", Kind::OptStr),
    ("hub.tls.insecure_skip_verify", Kind::Bool),
    ("authz.max_clock_skew_seconds", Kind::Int),
    ("authz.sk_counter_strict", Kind::Bool),
    ("authz.signers", Kind::Json),
    ("authz.recovery_threshold", Kind::Int),
    ("authz.allowed_signers_file", Kind::OptStr),
    ("authz.revoked_keys_file", Kind::OptStr),
    ("reconcile.source", Kind::OptStr),
    ("reconcile.desired_file", Kind::OptStr),
    ("reconcile.max_parallel", Kind::Int),
    ("audit.max_bytes", Kind::Int),
    ("reconcile.shutdown_timeout_seconds", Kind::Int),
    ("reconcile.max_disruptive_per_hour", Kind::Int),
    ("restore_tests.every_hours", Kind::Int),
    ("restore_tests.vmid_range", Kind::Str),
    ("restore_tests.storage", Kind::Str),
    ("restore_tests.max_parallel", Kind::Int),
    ("restore_tests.min_free_memory_mib", Kind::Int),
    ("restore_tests.min_free_storage_gib", Kind::Int),
];

/// The fields of one `authz.signers[]` entry.
pub const SIGNER_FIELDS: &[&str] = &["key_id", "role", "public_key", "valid_before"];

/// Every leaf the config knows, as a dotted path (`hub.tls.ca_file`), in schema order;
/// `authz.signers` is one leaf whose entries have [`SIGNER_FIELDS`]. The example config
/// and the README are checked against this list.
pub fn field_paths() -> impl Iterator<Item = &'static str> {
    SCHEMA.iter().map(|(path, _)| *path)
}

pub(super) fn env_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.replace('.', "_").to_ascii_uppercase()
    )
}

/// Reads a file of at most [`MAX_FILE_BYTES`].
pub(super) fn read_capped(path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::Read {
            path: path.to_owned(),
            source: std::io::Error::other(format!("larger than {MAX_FILE_BYTES} bytes")),
        });
    }
    Ok(buf)
}

pub(super) fn mode_bits(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
}

/// Walks the raw JSON, tracking the dotted path for errors.
pub(super) struct Reader<'a> {
    pub(super) root: &'a Value,
    /// `$CREDENTIALS_DIRECTORY` from the environment, where a secret file is also
    /// looked for outside the systemd unit.
    pub(super) credentials_directory: Option<&'a Path>,
}

impl Reader<'_> {
    pub(super) fn get(&self, path: &str) -> Option<&Value> {
        let mut v = self.root;
        for part in path.split('.') {
            v = v.as_object()?.get(part)?;
        }
        Some(v)
    }

    pub(super) fn has_section(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| !v.is_null())
    }

    pub(super) fn string(&self, path: &str) -> Result<Option<String>, ConfigError> {
        match self.get(path) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(field_err(
                path,
                format!("must be a string, got {}", kind(other)),
            )),
        }
    }

    pub(super) fn required_string(&self, path: &str, mode: Mode) -> Result<String, ConfigError> {
        match self.string(path)? {
            Some(s) if !s.is_empty() => Ok(s),
            Some(_) => Err(field_err(path, "must not be empty")),
            None => Err(field_err(
                path,
                format!("is required for `{}`", mode.name()),
            )),
        }
    }

    pub(super) fn int(
        &self,
        path: &str,
        default: u64,
        lo: u64,
        hi: u64,
    ) -> Result<u64, ConfigError> {
        match self.get(path) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if (lo..=hi).contains(&v) => Ok(v),
                _ => Err(field_err(
                    path,
                    format!("must be a whole number from {lo} to {hi}, got {n}"),
                )),
            },
            Some(other) => Err(field_err(
                path,
                format!("must be a number, got {}", kind(other)),
            )),
        }
    }

    pub(super) fn bool(&self, path: &str) -> Result<bool, ConfigError> {
        match self.get(path) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(field_err(
                path,
                format!("must be true or false, got {}", kind(other)),
            )),
        }
    }
}

/// Rejects any key not in [`SCHEMA`], and any non-object where a section is expected.
pub(super) fn check_known_fields(v: &Value, prefix: &str) -> Result<(), ConfigError> {
    let Some(obj) = v.as_object() else {
        let what = if prefix.is_empty() {
            "the configuration"
        } else {
            prefix
        };
        return Err(field_err(
            what,
            format!("must be an object, got {}", kind(v)),
        ));
    };
    for (key, child) in obj {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if SCHEMA.iter().any(|(p, _)| *p == path) {
            continue;
        }
        let section = format!("{path}.");
        if SCHEMA.iter().any(|(p, _)| p.starts_with(&section)) {
            if !child.is_null() {
                check_known_fields(child, &path)?;
            }
            continue;
        }
        return Err(field_err(path, "unknown field"));
    }
    Ok(())
}

/// Applies `FELHOM_AGENT_*` variables onto the raw JSON.
pub(super) fn apply_env(
    root: &mut Value,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (var, raw) in env.range(ENV_PREFIX.to_owned()..) {
        if !var.starts_with(ENV_PREFIX) {
            break;
        }
        let Some((path, kind)) = SCHEMA.iter().find(|(p, _)| env_name(p) == *var) else {
            return Err(ConfigError::Env {
                var: var.clone(),
                problem: "not a configuration field (see the README's configuration reference)"
                    .into(),
            });
        };
        let value = match kind {
            Kind::Str => Value::String(raw.clone()),
            Kind::OptStr if raw.is_empty() => Value::Null,
            Kind::OptStr => Value::String(raw.clone()),
            Kind::Int => raw
                .parse::<u64>()
                .map(Value::from)
                .map_err(|_| ConfigError::Env {
                    var: var.clone(),
                    problem: format!("must be a whole number, got {raw:?}"),
                })?,
            Kind::Bool => match raw.as_str() {
                "true" | "1" => Value::Bool(true),
                "false" | "0" => Value::Bool(false),
                _ => {
                    return Err(ConfigError::Env {
                        var: var.clone(),
                        problem: format!("must be true or false, got {raw:?}"),
                    });
                }
            },
            Kind::Json => serde_json::from_str(raw).map_err(|e| ConfigError::Env {
                var: var.clone(),
                problem: format!("must be JSON: {e}"),
            })?,
        };
        set_path(root, path, value).map_err(|problem| ConfigError::Env {
            var: var.clone(),
            problem,
        })?;
    }
    Ok(())
}

pub(super) fn set_path(root: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        if cur.is_null() {
            *cur = Value::Object(Map::new());
        }
        let Some(obj) = cur.as_object_mut() else {
            return Err(format!(
                "cannot set {path}: {} in the file is not an object",
                parts[..i].join(".")
            ));
        };
        if i + 1 == parts.len() {
            obj.insert((*part).to_owned(), value);
            return Ok(());
        }
        cur = obj.entry((*part).to_owned()).or_insert(Value::Null);
    }
    Ok(())
}
