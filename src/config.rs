//! Configuration: the JSON file, the `FELHOM_AGENT_*` environment overlay, defaults,
//! secrets from files, and validation that depends on the mode being run.
//!
//! The file is walked field by field against `SCHEMA` rather than handed to a serde
//! derive, so every error names the full path of the field and why it is wrong
//! (`proxmox.url: must be https://HOST[:PORT], got "http://pve"`), and an unknown
//! field anywhere is an error rather than silently ignored. Every leaf can be
//! overridden from the environment: `proxmox.token_secret` ←
//! `FELHOM_AGENT_PROXMOX_TOKEN_SECRET`. An unknown `FELHOM_AGENT_*` variable is an
//! error too (a typo must not silently leave a default in force).
//!
//! Sections a mode does not use may be absent; a section that is present is always
//! checked. Secrets are read (inline, or from `*_file`) only for the sections the mode
//! uses, and live in [`Secret`]s from then on; [`Config::redacted`] is the printable form.
//! This module reads files and the environment; it never writes anything.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::authz::{AuthzConfig, Role, SignerEntry};
use crate::base::log::Level;
use crate::base::secret::Secret;
use crate::net::{Sha256Pin, TlsTrust};

/// Where the daemon looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/felhom-agent/agent.json";
/// Default state directory (journal, nonce store, audit log).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/felhom-agent";
/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "FELHOM_AGENT_";
/// Largest config or secret file read, in bytes.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// `audit.max_bytes` when not set: 16 MiB.
pub const AUDIT_MAX_BYTES_DEFAULT: u64 = 16 * 1024 * 1024;
/// The smallest `audit.max_bytes`, 1 MiB: room for every pending entry a rotation
/// carries (64 capped entries, each under 13 KiB even when every byte needs a JSON
/// escape) and for the decisions a rotation is meant to keep.
pub const AUDIT_MAX_BYTES_MIN: u64 = 1024 * 1024;
/// The largest `audit.max_bytes`, 1 GiB.
pub const AUDIT_MAX_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// `reconcile.shutdown_timeout_seconds` when absent: how long a guest gets to shut down
/// cleanly before Proxmox stops it hard.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECONDS: u64 = 120;
/// The longest `reconcile.shutdown_timeout_seconds`: a pass waits that long for a guest
/// that ignores its shutdown, so this also bounds how long one guest holds a pass.
pub const MAX_SHUTDOWN_TIMEOUT_SECONDS: u64 = 600;

/// What the agent is about to do; decides which sections are required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The daemon: Proxmox and hub required, authz optional (no signers: benign only).
    Run,
    /// `selftest read`: Proxmox only.
    SelftestRead,
    /// `selftest task`: Proxmox only.
    SelftestTask,
    /// `selftest hub`: Proxmox and hub.
    SelftestHub,
    /// `selftest offline`: no network; host_id, state_dir, authz if present.
    SelftestOffline,
    /// `verify`: host_id and authz with at least one signer.
    Verify,
    /// `plan`: Proxmox; authz if present.
    Plan,
    /// `journal`: the state directory only.
    Journal,
}

impl Mode {
    /// The command-line spelling, for error messages.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::SelftestRead => "selftest read",
            Mode::SelftestTask => "selftest task",
            Mode::SelftestHub => "selftest hub",
            Mode::SelftestOffline => "selftest offline",
            Mode::Verify => "verify",
            Mode::Plan => "plan",
            Mode::Journal => "journal",
        }
    }

    fn needs_proxmox(self) -> bool {
        matches!(
            self,
            Mode::Run | Mode::SelftestRead | Mode::SelftestTask | Mode::SelftestHub | Mode::Plan
        )
    }

    fn needs_hub(self) -> bool {
        matches!(self, Mode::Run | Mode::SelftestHub)
    }

    fn needs_host_id(self) -> bool {
        matches!(
            self,
            Mode::Run | Mode::SelftestHub | Mode::SelftestOffline | Mode::Verify | Mode::Plan
        )
    }
}

/// Why the configuration was refused. Each names the file, variable or field.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file (or a secret file it names) could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The config file is not JSON.
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the JSON parser said.
        message: String,
    },
    /// A field is missing, unknown, of the wrong type or out of range.
    Field {
        /// Dotted path, e.g. `proxmox.tls.fingerprint_sha256`.
        field: String,
        /// What is wrong, including the offending value where it is not secret.
        problem: String,
    },
    /// A `FELHOM_AGENT_*` variable is unknown or not valid for its field.
    Env {
        /// The variable name.
        var: String,
        /// What is wrong.
        problem: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => write!(f, "{}: {source}", path.display()),
            ConfigError::Syntax {
                path,
                line,
                column,
                message,
            } => write!(
                f,
                "{}:{line}:{column}: not valid JSON: {message}",
                path.display()
            ),
            ConfigError::Field { field, problem } => write!(f, "{field}: {problem}"),
            ConfigError::Env { var, problem } => write!(f, "{var}: {problem}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn field_err(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

/// The type of a leaf in the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
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
const SCHEMA: &[(&str, Kind)] = &[
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
    ("hub.timeout_seconds", Kind::Int),
    ("hub.tls.fingerprint_sha256", Kind::OptStr),
    ("hub.tls.ca_file", Kind::OptStr),
    ("hub.tls.insecure_skip_verify", Kind::Bool),
    ("authz.max_clock_skew_seconds", Kind::Int),
    ("authz.sk_counter_strict", Kind::Bool),
    ("authz.signers", Kind::Json),
    ("reconcile.desired_file", Kind::OptStr),
    ("reconcile.max_parallel", Kind::Int),
    ("audit.max_bytes", Kind::Int),
    ("reconcile.shutdown_timeout_seconds", Kind::Int),
];

/// The fields of one `authz.signers[]` entry.
pub const SIGNER_FIELDS: &[&str] = &["key_id", "role", "public_key"];

/// Every leaf the config knows, as a dotted path (`hub.tls.ca_file`), in schema order;
/// `authz.signers` is one leaf whose entries have [`SIGNER_FIELDS`]. The example config
/// and the README are checked against this list.
pub fn field_paths() -> impl Iterator<Item = &'static str> {
    SCHEMA.iter().map(|(path, _)| *path)
}

fn env_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.replace('.', "_").to_ascii_uppercase()
    )
}

/// The `proxmox` section.
#[derive(Debug, Clone)]
pub struct ProxmoxConfig {
    /// `https://HOST:PORT`, no path.
    pub url: String,
    /// The node name as Proxmox knows it.
    pub node: String,
    /// `USER@REALM!TOKENID`.
    pub token_id: String,
    /// The token secret (loaded when the mode needs Proxmox).
    pub token_secret: Option<Secret>,
    /// Where the secret came from, for `redacted()`.
    pub token_secret_file: Option<PathBuf>,
    /// Certificate trust.
    pub tls: TlsTrust,
    /// Per-request timeout.
    pub timeout_seconds: u64,
}

/// The `hub` section.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Base URL; the report goes to `{url}/api/v1/host-report`.
    pub url: String,
    /// The bearer key (loaded when the mode needs the hub).
    pub api_key: Option<Secret>,
    /// Where the key came from, for `redacted()`.
    pub api_key_file: Option<PathBuf>,
    /// First report interval until the hub says otherwise (60..=3600).
    pub poll_seconds: u64,
    /// Per-request timeout.
    pub timeout_seconds: u64,
    /// Certificate trust (system bundle unless set).
    pub tls: TlsTrust,
}

/// The `reconcile` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// The desired-state file, if any.
    pub desired_file: Option<PathBuf>,
    /// Global bound on concurrent Proxmox mutations (and parallel reads).
    pub max_parallel: usize,
    /// How long a `run: stopped` gives a guest to shut down cleanly before Proxmox
    /// stops it hard (`status/shutdown` with `timeout` and `forceStop=1`).
    pub shutdown_timeout_seconds: u32,
}

/// The `audit` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// `audit.log` is rotated to `audit.log.1` before it would pass this many bytes, so
    /// the two files together stay under twice it.
    pub max_bytes: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_bytes: AUDIT_MAX_BYTES_DEFAULT,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// This host's identity for the hub and signed ops.
    pub host_id: String,
    /// Durable state directory.
    pub state_dir: PathBuf,
    /// Log level.
    pub log_level: Level,
    /// The Proxmox section, if present.
    pub proxmox: Option<ProxmoxConfig>,
    /// The hub section, if present.
    pub hub: Option<HubConfig>,
    /// The authz section, if present. Its signers are validated, except in
    /// [`Mode::SelftestOffline`], whose checklist validates and reports them.
    pub authz: Option<AuthzConfig>,
    /// The reconcile section (defaults when absent).
    pub reconcile: ReconcileConfig,
    /// The audit section (defaults when absent).
    pub audit: AuditConfig,
    /// Problems worth a warning that do not stop the agent (e.g. a readable secret file).
    pub warnings: Vec<String>,
}

/// The process environment as a map, for [`Config::load`].
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Reads a file of at most [`MAX_FILE_BYTES`].
fn read_capped(path: &Path) -> Result<Vec<u8>, ConfigError> {
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

fn mode_bits(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
}

/// Walks the raw JSON, tracking the dotted path for errors.
struct Reader<'a> {
    root: &'a Value,
}

impl Reader<'_> {
    fn get(&self, path: &str) -> Option<&Value> {
        let mut v = self.root;
        for part in path.split('.') {
            v = v.as_object()?.get(part)?;
        }
        Some(v)
    }

    fn has_section(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| !v.is_null())
    }

    fn string(&self, path: &str) -> Result<Option<String>, ConfigError> {
        match self.get(path) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(field_err(
                path,
                format!("must be a string, got {}", type_name(other)),
            )),
        }
    }

    fn required_string(&self, path: &str, mode: Mode) -> Result<String, ConfigError> {
        match self.string(path)? {
            Some(s) if !s.is_empty() => Ok(s),
            Some(_) => Err(field_err(path, "must not be empty")),
            None => Err(field_err(
                path,
                format!("is required for `{}`", mode.name()),
            )),
        }
    }

    fn int(&self, path: &str, default: u64, lo: u64, hi: u64) -> Result<u64, ConfigError> {
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
                format!("must be a number, got {}", type_name(other)),
            )),
        }
    }

    fn bool(&self, path: &str) -> Result<bool, ConfigError> {
        match self.get(path) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(field_err(
                path,
                format!("must be true or false, got {}", type_name(other)),
            )),
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Rejects any key not in [`SCHEMA`], and any non-object where a section is expected.
fn check_known_fields(v: &Value, prefix: &str) -> Result<(), ConfigError> {
    let Some(obj) = v.as_object() else {
        let what = if prefix.is_empty() {
            "the configuration"
        } else {
            prefix
        };
        return Err(field_err(
            what,
            format!("must be an object, got {}", type_name(v)),
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
fn apply_env(root: &mut Value, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
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

fn set_path(root: &mut Value, path: &str, value: Value) -> Result<(), String> {
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

fn check_https_url(field: &str, url: &str, allow_path: bool) -> Result<String, ConfigError> {
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

fn host_ok(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn port_ok(p: Option<&str>) -> bool {
    p.and_then(|p| p.parse::<u16>().ok()).is_some_and(|p| p > 0)
}

fn check_name(field: &str, s: &str, what: &str) -> Result<(), ConfigError> {
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
fn check_token_id(field: &str, s: &str) -> Result<(), ConfigError> {
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

fn tls_choice(r: &Reader<'_>, section: &str) -> Result<TlsTrust, ConfigError> {
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

/// Reads a secret given inline (`name`) or in a file (`name_file`); exactly one.
fn load_secret(
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
            let bytes = read_capped(&path)?;
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

fn signers(r: &Reader<'_>) -> Result<Vec<SignerEntry>, ConfigError> {
    let Some(v) = r.get("authz.signers") else {
        return Ok(Vec::new());
    };
    let arr = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        other => {
            return Err(field_err(
                "authz.signers",
                format!("must be an array, got {}", type_name(other)),
            ));
        }
    };
    let mut out = Vec::with_capacity(arr.len());
    for (i, item) in arr.iter().enumerate() {
        let at = format!("authz.signers[{i}]");
        let Some(obj) = item.as_object() else {
            return Err(field_err(
                at,
                format!("must be an object, got {}", type_name(item)),
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
                    format!("must be a string, got {}", type_name(other)),
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
        });
    }
    Ok(out)
}

impl Config {
    /// Loads `path`, overlays `env`, applies defaults and validates for `mode`.
    pub fn load(
        path: &Path,
        env: &BTreeMap<String, String>,
        mode: Mode,
    ) -> Result<Config, ConfigError> {
        let bytes = read_capped(path)?;
        let (mut cfg, file_holds_secret) = Config::parse(&bytes, path, env, mode)?;
        if file_holds_secret && mode_bits(path).is_some_and(|m| m & 0o077 != 0) {
            cfg.warnings.push(format!(
                "{} holds a secret and is readable by group or others; chmod 600 it",
                path.display()
            ));
        }
        Ok(cfg)
    }

    /// Parses and validates the bytes of a config file as [`Config::load`] does once it
    /// has read them: JSON syntax (the error names `origin`), unknown fields, the `env`
    /// overlay, defaults and the checks for `mode`. Secret files the document names are
    /// read when the mode needs them; the file-permission warning is `load`'s alone.
    pub fn from_slice(
        bytes: &[u8],
        origin: &Path,
        env: &BTreeMap<String, String>,
        mode: Mode,
    ) -> Result<Config, ConfigError> {
        Config::parse(bytes, origin, env, mode).map(|(cfg, _)| cfg)
    }

    /// [`Config::from_slice`], and whether the document itself (not the environment)
    /// holds a secret inline.
    fn parse(
        bytes: &[u8],
        origin: &Path,
        env: &BTreeMap<String, String>,
        mode: Mode,
    ) -> Result<(Config, bool), ConfigError> {
        let mut root: Value = serde_json::from_slice(bytes).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        check_known_fields(&root, "")?;
        let file_holds_secret = ["/proxmox/token_secret", "/hub/api_key"].iter().any(|p| {
            root.pointer(p)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        });
        apply_env(&mut root, env)?;
        Ok((Config::from_value(&root, mode)?, file_holds_secret))
    }

    /// Validates an already-parsed (and env-overlaid) JSON document for `mode`.
    pub fn from_value(root: &Value, mode: Mode) -> Result<Config, ConfigError> {
        check_known_fields(root, "")?;
        let r = Reader { root };
        let mut warnings = Vec::new();

        let host_id = match r.string("host_id")? {
            Some(h) => {
                check_name("host_id", &h, "a host identifier")?;
                h
            }
            None if mode.needs_host_id() => {
                return Err(field_err(
                    "host_id",
                    format!("is required for `{}`", mode.name()),
                ));
            }
            None => String::new(),
        };

        let state_dir = PathBuf::from(
            r.string("state_dir")?
                .unwrap_or_else(|| DEFAULT_STATE_DIR.to_owned()),
        );
        if state_dir.is_relative() {
            return Err(field_err(
                "state_dir",
                format!("must be an absolute path, got {:?}", state_dir.display()),
            ));
        }

        let log_level = match r.string("log.level")? {
            None => Level::Info,
            Some(s) => Level::parse(&s).ok_or_else(|| {
                field_err(
                    "log.level",
                    format!("must be one of error, warn, info, debug; got {s:?}"),
                )
            })?,
        };

        let proxmox = if r.has_section("proxmox") || mode.needs_proxmox() {
            if !r.has_section("proxmox") {
                return Err(field_err(
                    "proxmox",
                    format!("section is required for `{}`", mode.name()),
                ));
            }
            let url = check_https_url(
                "proxmox.url",
                &r.required_string("proxmox.url", mode)?,
                false,
            )?;
            let node = r.required_string("proxmox.node", mode)?;
            check_name("proxmox.node", &node, "a Proxmox node name")?;
            let token_id = r.required_string("proxmox.token_id", mode)?;
            check_token_id("proxmox.token_id", &token_id)?;
            let (token_secret, token_secret_file) = load_secret(
                &r,
                "proxmox",
                "token_secret",
                mode.needs_proxmox(),
                mode,
                &mut warnings,
            )?;
            let tls = tls_choice(&r, "proxmox")?;
            let timeout_seconds = r.int("proxmox.timeout_seconds", 30, 1, 600)?;
            Some(ProxmoxConfig {
                url,
                node,
                token_id,
                token_secret,
                token_secret_file,
                tls,
                timeout_seconds,
            })
        } else {
            None
        };

        let hub = if r.has_section("hub") || mode.needs_hub() {
            if !r.has_section("hub") {
                return Err(field_err(
                    "hub",
                    format!("section is required for `{}`", mode.name()),
                ));
            }
            let url = check_https_url("hub.url", &r.required_string("hub.url", mode)?, true)?;
            let (api_key, api_key_file) =
                load_secret(&r, "hub", "api_key", mode.needs_hub(), mode, &mut warnings)?;
            Some(HubConfig {
                url,
                api_key,
                api_key_file,
                poll_seconds: r.int("hub.poll_seconds", 300, 60, 3600)?,
                timeout_seconds: r.int("hub.timeout_seconds", 30, 1, 600)?,
                tls: tls_choice(&r, "hub")?,
            })
        } else {
            None
        };

        let authz = if r.has_section("authz") {
            let section = AuthzConfig {
                max_clock_skew_seconds: r.int("authz.max_clock_skew_seconds", 120, 0, 3600)?,
                sk_counter_strict: r.bool("authz.sk_counter_strict")?,
                signers: signers(&r)?,
            };
            // The authz module owns what a valid signer is (key types, sizes, duplicates).
            // `selftest offline` is the operator's tool for finding a bad signer: it
            // validates the section itself and fails that line of its checklist (exit
            // 1) instead of refusing to run (exit 2).
            if mode != Mode::SelftestOffline {
                section
                    .validate()
                    .map_err(|e| field_err(e.field, e.reason))?;
            }
            Some(section)
        } else {
            None
        };
        if mode == Mode::Verify && authz.as_ref().is_none_or(|a| a.signers.is_empty()) {
            return Err(field_err(
                "authz.signers",
                "`verify` needs at least one signer",
            ));
        }

        let desired_file = r
            .string("reconcile.desired_file")?
            .filter(|s| !s.is_empty());
        let reconcile = ReconcileConfig {
            desired_file: desired_file.map(PathBuf::from),
            max_parallel: usize::try_from(r.int("reconcile.max_parallel", 4, 1, 64)?).unwrap_or(4),
            shutdown_timeout_seconds: u32::try_from(r.int(
                "reconcile.shutdown_timeout_seconds",
                DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
                1,
                MAX_SHUTDOWN_TIMEOUT_SECONDS,
            )?)
            .unwrap_or(120),
        };

        let audit = AuditConfig {
            max_bytes: r.int(
                "audit.max_bytes",
                AUDIT_MAX_BYTES_DEFAULT,
                AUDIT_MAX_BYTES_MIN,
                AUDIT_MAX_BYTES_MAX,
            )?,
        };

        Ok(Config {
            host_id,
            state_dir,
            log_level,
            proxmox,
            hub,
            authz,
            reconcile,
            audit,
            warnings,
        })
    }

    /// The effective configuration as pretty JSON with every secret replaced by
    /// `<redacted>` (a secret file's path is shown; it is not secret).
    pub fn redacted(&self) -> String {
        use serde_json::json;
        let tls = |t: &TlsTrust| match t {
            TlsTrust::Pin(p) => json!({"fingerprint_sha256": p.to_string()}),
            TlsTrust::CaFile(f) => json!({"ca_file": f.display().to_string()}),
            TlsTrust::SystemBundle => json!({"system_bundle": true}),
            TlsTrust::InsecureSkipVerify => json!({"insecure_skip_verify": true}),
        };
        let secret = |s: &Option<Secret>| s.as_ref().map(|_| crate::base::secret::REDACTED);
        let v = json!({
            "host_id": self.host_id,
            "state_dir": self.state_dir.display().to_string(),
            "log": {"level": self.log_level.as_str()},
            "proxmox": self.proxmox.as_ref().map(|p| json!({
                "url": p.url,
                "node": p.node,
                "token_id": p.token_id,
                "token_secret": secret(&p.token_secret),
                "token_secret_file": p.token_secret_file.as_ref().map(|f| f.display().to_string()),
                "tls": tls(&p.tls),
                "timeout_seconds": p.timeout_seconds,
            })),
            "hub": self.hub.as_ref().map(|h| json!({
                "url": h.url,
                "api_key": secret(&h.api_key),
                "api_key_file": h.api_key_file.as_ref().map(|f| f.display().to_string()),
                "poll_seconds": h.poll_seconds,
                "timeout_seconds": h.timeout_seconds,
                "tls": tls(&h.tls),
            })),
            "authz": self.authz.as_ref().map(|a| json!({
                "max_clock_skew_seconds": a.max_clock_skew_seconds,
                "sk_counter_strict": a.sk_counter_strict,
                "signers": a.signers.iter().map(|s| json!({
                    "key_id": s.key_id, "role": s.role.as_str(), "public_key": s.public_key,
                })).collect::<Vec<_>>(),
            })),
            "reconcile": {
                "desired_file": self.reconcile.desired_file.as_ref().map(|f| f.display().to_string()),
                "max_parallel": self.reconcile.max_parallel,
                "shutdown_timeout_seconds": self.reconcile.shutdown_timeout_seconds,
            },
            "audit": {"max_bytes": self.audit.max_bytes},
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PIN: &str = "0B:9F:FE:ED:3A:31:26:BC:FB:D3:C1:AA:8F:90:EF:F5:A0:47:04:96:79:0B:4D:19:ED:EA:3D:99:26:B2:A1:C6";
    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILegkWonGBmXh5jeLDN8tuep67C4kAWq6lYQK3C5cpaf ops";

    fn full() -> Value {
        json!({
            "host_id": "pve-a",
            "state_dir": "/var/lib/felhom-agent",
            "log": {"level": "debug"},
            "proxmox": {
                "url": "https://127.0.0.1:8006",
                "node": "pve-a",
                "token_id": "felhom-agent@pve!agent",
                "token_secret": "s3cr3t-token-value",
                "tls": {"fingerprint_sha256": PIN, "ca_file": null, "insecure_skip_verify": false},
                "timeout_seconds": 30
            },
            "hub": {
                "url": "https://hub.example.net",
                "api_key": "hub-key-value",
                "poll_seconds": 300,
                "timeout_seconds": 30,
                "tls": {"ca_file": null, "fingerprint_sha256": null}
            },
            "authz": {
                "max_clock_skew_seconds": 120,
                "sk_counter_strict": false,
                "signers": [{"key_id": "ops-2026", "role": "operational", "public_key": KEY}]
            },
            "reconcile": {"desired_file": null, "max_parallel": 4},
            "audit": {"max_bytes": 16777216}
        })
    }

    fn err(v: &Value, mode: Mode) -> String {
        Config::from_value(v, mode).unwrap_err().to_string()
    }

    #[test]
    fn the_design_example_loads_for_run() {
        let c = Config::from_value(&full(), Mode::Run).unwrap();
        assert_eq!(c.host_id, "pve-a");
        assert_eq!(c.log_level, Level::Debug);
        let p = c.proxmox.unwrap();
        assert_eq!(p.tls, TlsTrust::Pin(Sha256Pin::parse(PIN).unwrap()));
        assert_eq!(p.token_secret.unwrap().expose(), "s3cr3t-token-value");
        assert_eq!(c.hub.unwrap().tls, TlsTrust::SystemBundle);
        assert_eq!(c.authz.unwrap().signers[0].key_id, "ops-2026");
        assert_eq!(c.reconcile.max_parallel, 4);
        assert_eq!(
            u64::from(c.reconcile.shutdown_timeout_seconds),
            DEFAULT_SHUTDOWN_TIMEOUT_SECONDS
        );
    }

    #[test]
    fn each_malformed_field_names_itself() {
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "/proxmox/url",
                json!("http://pve:8006"),
                "proxmox.url: must be https://HOST[:PORT], got \"http://pve:8006\"",
            ),
            (
                "/proxmox/url",
                json!("https://pve:8006/api2/json"),
                "proxmox.url: must be https://HOST[:PORT]",
            ),
            (
                "/proxmox/url",
                json!("https://pve:99999"),
                "proxmox.url: must be https://HOST[:PORT]",
            ),
            (
                "/proxmox/url",
                json!(8006),
                "proxmox.url: must be a string, got a number",
            ),
            (
                "/proxmox/tls/fingerprint_sha256",
                json!("AB:CD"),
                "proxmox.tls.fingerprint_sha256: ",
            ),
            (
                "/authz/signers/0/public_key",
                json!("ssh-ed25519 AAAA ops"),
                "authz.signers[0].public_key: ",
            ),
            (
                "/proxmox/node",
                json!("pve a"),
                "proxmox.node: must be a Proxmox node name",
            ),
            (
                "/proxmox/token_id",
                json!("felhom-agent@pve"),
                "proxmox.token_id: must be USER@REALM!TOKENID",
            ),
            (
                "/proxmox/token_id",
                json!("agent!tok"),
                "proxmox.token_id: must be USER@REALM!TOKENID",
            ),
            (
                "/proxmox/timeout_seconds",
                json!(0),
                "proxmox.timeout_seconds: must be a whole number from 1 to 600, got 0",
            ),
            (
                "/proxmox/timeout_seconds",
                json!("30"),
                "proxmox.timeout_seconds: must be a number, got a string",
            ),
            (
                "/proxmox/tls/insecure_skip_verify",
                json!("yes"),
                "proxmox.tls.insecure_skip_verify: must be true or false",
            ),
            (
                "/proxmox/tls/insecure_skip_verify",
                json!(true),
                "proxmox.tls.insecure_skip_verify: cannot be combined",
            ),
            (
                "/proxmox/tls/ca_file",
                json!("/etc/ca.pem"),
                "proxmox.tls: set either fingerprint_sha256 or ca_file, not both",
            ),
            (
                "/proxmox/token_secret_file",
                json!("/run/x"),
                "proxmox.token_secret: set either token_secret or token_secret_file, not both",
            ),
            (
                "/hub/url",
                json!("hub.example.net"),
                "hub.url: must be https://HOST[:PORT][/PATH]",
            ),
            (
                "/hub/poll_seconds",
                json!(5),
                "hub.poll_seconds: must be a whole number from 60 to 3600, got 5",
            ),
            (
                "/host_id",
                json!("pve a!"),
                "host_id: must be a host identifier",
            ),
            (
                "/state_dir",
                json!("var/lib"),
                "state_dir: must be an absolute path",
            ),
            (
                "/log/level",
                json!("verbose"),
                "log.level: must be one of error, warn, info, debug; got \"verbose\"",
            ),
            (
                "/authz/signers",
                json!({}),
                "authz.signers: must be an array, got an object",
            ),
            (
                "/authz/signers/0/role",
                json!("admin"),
                "authz.signers[0].role: must be \"operational\" or \"recovery\", got \"admin\"",
            ),
            (
                "/authz/signers/0/public_key",
                json!(""),
                "authz.signers[0].public_key: must not be empty",
            ),
            (
                "/authz/signers/0/comment",
                json!("x"),
                "authz.signers[0].comment: unknown field",
            ),
            (
                "/authz/max_clock_skew_seconds",
                json!(-1),
                "authz.max_clock_skew_seconds: must be a whole number from 0 to 3600, got -1",
            ),
            (
                "/reconcile/max_parallel",
                json!(0),
                "reconcile.max_parallel: must be a whole number from 1 to 64, got 0",
            ),
            (
                "/reconcile/shutdown_timeout_seconds",
                json!(0),
                "reconcile.shutdown_timeout_seconds: must be a whole number from 1 to 600, got 0",
            ),
            (
                "/reconcile/shutdown_timeout_seconds",
                json!(601),
                "reconcile.shutdown_timeout_seconds: must be a whole number from 1 to 600, got 601",
            ),
            (
                "/reconcile/max_paralel",
                json!(2),
                "reconcile.max_paralel: unknown field",
            ),
            (
                "/audit/max_bytes",
                json!(65536),
                "audit.max_bytes: must be a whole number from 1048576 to 1073741824, got 65536",
            ),
            (
                "/audit/max_bytes",
                json!(2_147_483_648u64),
                "audit.max_bytes: must be a whole number from 1048576 to 1073741824",
            ),
            (
                "/audit/max_bytes",
                json!("16M"),
                "audit.max_bytes: must be a number, got a string",
            ),
            (
                "/audit/max_files",
                json!(2),
                "audit.max_files: unknown field",
            ),
            (
                "/proxmox/tls/pin",
                json!("x"),
                "proxmox.tls.pin: unknown field",
            ),
            ("/extra", json!(1), "extra: unknown field"),
            (
                "/proxmox/tls",
                json!("pin"),
                "proxmox.tls: must be an object, got a string",
            ),
        ];
        for (ptr, value, want) in cases {
            let mut v = full();
            let (parent, key) = ptr.rsplit_once('/').unwrap();
            v.pointer_mut(parent)
                .and_then(Value::as_object_mut)
                .unwrap_or_else(|| panic!("{parent} is an object in the fixture"))
                .insert(key.to_owned(), value);
            let got = err(&v, Mode::Run);
            assert!(
                got.starts_with(want),
                "{ptr}: got {got:?}, want prefix {want:?}"
            );
        }
    }

    #[test]
    fn sections_are_required_by_mode_only() {
        let mut v = full();
        v.as_object_mut().unwrap().remove("hub");
        v.as_object_mut().unwrap().remove("authz");
        v.as_object_mut().unwrap().remove("host_id");
        assert!(Config::from_value(&v, Mode::SelftestRead).is_ok());
        assert_eq!(err(&v, Mode::Run), "host_id: is required for `run`");
        v["host_id"] = json!("pve-a");
        assert_eq!(err(&v, Mode::Run), "hub: section is required for `run`");
        assert_eq!(
            err(&v, Mode::Verify),
            "authz.signers: `verify` needs at least one signer"
        );
        let verify_only = json!({"host_id": "pve-a", "authz": full()["authz"].clone()});
        assert!(Config::from_value(&verify_only, Mode::Verify).is_ok());
        assert_eq!(
            err(&verify_only, Mode::SelftestRead),
            "proxmox: section is required for `selftest read`"
        );
    }

    #[test]
    fn missing_secret_is_required_only_where_used() {
        let mut v = full();
        v["proxmox"].as_object_mut().unwrap().remove("token_secret");
        let e = err(&v, Mode::SelftestRead);
        assert!(
            e.starts_with("proxmox.token_secret: is required for `selftest read`"),
            "{e}"
        );
        assert!(e.contains("FELHOM_AGENT_PROXMOX_TOKEN_SECRET"));
        v["proxmox"]["token_secret_file"] = json!("/nonexistent/secret");
        assert!(
            Config::from_value(&v, Mode::Verify).is_ok(),
            "verify reads no Proxmox secret"
        );
    }

    #[test]
    fn env_overlay_wins_and_is_typed() {
        let mut v = full();
        let env: BTreeMap<String, String> = [
            ("FELHOM_AGENT_HOST_ID", "pve-b"),
            ("FELHOM_AGENT_PROXMOX_TOKEN_SECRET", "from-env"),
            ("FELHOM_AGENT_PROXMOX_TIMEOUT_SECONDS", "7"),
            ("FELHOM_AGENT_PROXMOX_TLS_FINGERPRINT_SHA256", ""),
            ("FELHOM_AGENT_PROXMOX_TLS_INSECURE_SKIP_VERIFY", "true"),
            (
                "FELHOM_AGENT_RECONCILE_DESIRED_FILE",
                "/etc/felhom-agent/desired.json",
            ),
            ("FELHOM_AGENT_RECONCILE_SHUTDOWN_TIMEOUT_SECONDS", "30"),
            ("FELHOM_AGENT_AUTHZ_SIGNERS", "[]"),
            ("OTHER", "ignored"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        apply_env(&mut v, &env).unwrap();
        let c = Config::from_value(&v, Mode::Run).unwrap();
        assert_eq!(c.host_id, "pve-b");
        let p = c.proxmox.unwrap();
        assert_eq!(p.token_secret.unwrap().expose(), "from-env");
        assert_eq!(p.timeout_seconds, 7);
        assert_eq!(p.tls, TlsTrust::InsecureSkipVerify);
        assert!(c.authz.unwrap().signers.is_empty());
        assert_eq!(
            c.reconcile.desired_file.unwrap(),
            PathBuf::from("/etc/felhom-agent/desired.json")
        );
        assert_eq!(c.reconcile.shutdown_timeout_seconds, 30);
    }

    #[test]
    fn audit_max_bytes_defaults_to_16_mib_and_the_environment_overrides_it() {
        let mut v = full();
        v.as_object_mut().unwrap().remove("audit");
        let c = Config::from_value(&v, Mode::Run).unwrap();
        assert_eq!(c.audit.max_bytes, 16 * 1024 * 1024);
        assert!(
            c.redacted().contains("\"max_bytes\": 16777216"),
            "{}",
            c.redacted()
        );

        let env = BTreeMap::from([(
            "FELHOM_AGENT_AUDIT_MAX_BYTES".to_owned(),
            "2097152".to_owned(),
        )]);
        apply_env(&mut v, &env).unwrap();
        assert_eq!(
            Config::from_value(&v, Mode::Run).unwrap().audit.max_bytes,
            2 * 1024 * 1024
        );

        let mut v = full();
        let env = BTreeMap::from([("FELHOM_AGENT_AUDIT_MAX_BYTES".to_owned(), "4096".to_owned())]);
        apply_env(&mut v, &env).unwrap();
        assert_eq!(
            err(&v, Mode::Run),
            "audit.max_bytes: must be a whole number from 1048576 to 1073741824, got 4096"
        );
        let mut v = full();
        v["audit"] = json!(16);
        assert_eq!(err(&v, Mode::Run), "audit: must be an object, got a number");
    }

    #[test]
    fn env_errors_name_the_variable() {
        let cases = [
            (
                "FELHOM_AGENT_PROXMOX_TIMEOUT",
                "1",
                "FELHOM_AGENT_PROXMOX_TIMEOUT: not a configuration field",
            ),
            (
                "FELHOM_AGENT_HUB_POLL_SECONDS",
                "soon",
                "FELHOM_AGENT_HUB_POLL_SECONDS: must be a whole number, got \"soon\"",
            ),
            (
                "FELHOM_AGENT_AUTHZ_SK_COUNTER_STRICT",
                "yes",
                "FELHOM_AGENT_AUTHZ_SK_COUNTER_STRICT: must be true or false",
            ),
            (
                "FELHOM_AGENT_AUTHZ_SIGNERS",
                "[",
                "FELHOM_AGENT_AUTHZ_SIGNERS: must be JSON",
            ),
        ];
        for (k, val, want) in cases {
            let mut v = full();
            let env = BTreeMap::from([(k.to_owned(), val.to_owned())]);
            let got = apply_env(&mut v, &env).unwrap_err().to_string();
            assert!(got.starts_with(want), "{got}");
        }
    }

    #[test]
    fn every_schema_leaf_has_an_env_name_that_maps_back() {
        for (path, _) in SCHEMA {
            let mut v = json!({});
            let var = env_name(path);
            let env = BTreeMap::from([(var.clone(), "1".to_owned())]);
            // Every variable is accepted by the overlay (the value may then fail
            // validation, which is a different error).
            if let Err(ConfigError::Env { problem, .. }) = apply_env(&mut v, &env) {
                assert!(
                    !problem.contains("not a configuration field"),
                    "{var} was not recognised"
                );
            }
            assert!(
                v.pointer(&format!("/{}", path.replace('.', "/"))).is_some(),
                "{var} did not land on {path}"
            );
        }
    }

    #[test]
    fn redacted_hides_secrets_and_debug_too() {
        let c = Config::from_value(&full(), Mode::Run).unwrap();
        let r = c.redacted();
        assert!(r.contains("<redacted>"));
        for secret in ["s3cr3t-token-value", "hub-key-value"] {
            assert!(!r.contains(secret));
            assert!(!format!("{c:?}").contains(secret));
        }
    }

    #[test]
    fn secret_file_is_read_trimmed_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("felhom-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "file-secret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut v = full();
        v["proxmox"].as_object_mut().unwrap().remove("token_secret");
        v["proxmox"]["token_secret_file"] = json!(f.display().to_string());
        let c = Config::from_value(&v, Mode::SelftestRead).unwrap();
        assert_eq!(
            c.proxmox.unwrap().token_secret.unwrap().expose(),
            "file-secret"
        );
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("readable by group or others"))
        );

        std::fs::write(&f, "").unwrap();
        let e = err(&v, Mode::SelftestRead);
        assert!(e.ends_with("the file is empty"), "{e}");
        v["proxmox"]["token_secret_file"] = json!("relative/token");
        assert!(err(&v, Mode::SelftestRead).contains("must be an absolute path"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_reports_json_syntax_with_position() {
        let dir = std::env::temp_dir().join(format!("felhom-cfg-syntax-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("agent.json");
        std::fs::write(&f, "{\n  \"host_id\": \"pve-a\",\n  oops\n}").unwrap();
        let e = Config::load(&f, &BTreeMap::new(), Mode::Verify).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { line: 3, .. }), "{e}");
        // An inline secret in a group-readable file is warned about; at 0600 it is not.
        use std::os::unix::fs::PermissionsExt;
        let mut doc = full();
        doc["hub"].as_object_mut().unwrap().remove("api_key");
        std::fs::write(&f, doc.to_string()).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = Config::load(&f, &BTreeMap::new(), Mode::SelftestRead).unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains("holds a secret")),
            "{:?}",
            c.warnings
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::load(&f, &BTreeMap::new(), Mode::SelftestRead).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let missing = Config::load(&dir.join("nope.json"), &BTreeMap::new(), Mode::Verify)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope.json"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn from_slice_validates_like_load_and_names_the_origin() {
        let origin = Path::new("from-memory.json");
        let env = BTreeMap::new();
        let doc = full().to_string();
        let c = Config::from_slice(doc.as_bytes(), origin, &env, Mode::Run).unwrap();
        assert_eq!(c.host_id, "pve-a");
        let e = Config::from_slice(b"{\n oops", origin, &env, Mode::Verify).unwrap_err();
        match &e {
            ConfigError::Syntax { path, line: 2, .. } => assert_eq!(path, origin),
            other => panic!("{other:?}"),
        }
        // The env overlay applies, and an unknown variable is refused as in `load`.
        let env: BTreeMap<String, String> =
            [("FELHOM_AGENT_HOST_ID".to_string(), "pve-b".to_string())].into();
        let c = Config::from_slice(doc.as_bytes(), origin, &env, Mode::Run).unwrap();
        assert_eq!(c.host_id, "pve-b");
        let env: BTreeMap<String, String> =
            [("FELHOM_AGENT_NOPE".to_string(), "1".to_string())].into();
        let e = Config::from_slice(doc.as_bytes(), origin, &env, Mode::Run).unwrap_err();
        assert!(matches!(e, ConfigError::Env { .. }), "{e}");
    }
}
