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

use serde_json::Value;

use crate::authz::AuthzConfig;
use crate::base::log::Level;
use crate::base::secret::Secret;
use crate::net::TlsTrust;

mod check;
mod restore_tests;
mod schema;

use check::{check_https_url, check_name, check_token_id, load_secret, signers, tls_choice};
pub use restore_tests::{RestoreTestsConfig, parse_vmid_range};
use schema::{Reader, apply_env, check_known_fields, mode_bits, read_capped};
pub use schema::{SIGNER_FIELDS, field_paths};

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
/// carries (64 capped entries, each under 15 KiB even when every byte needs a JSON
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

/// `reconcile.max_disruptive_per_hour` when absent: stops and reductions of cores or
/// memory sent per rolling hour before the rest are held `rate_limited`.
pub const DEFAULT_MAX_DISRUPTIVE_PER_HOUR: u64 = 10;
/// The largest `reconcile.max_disruptive_per_hour`. 0 is allowed: every disruptive
/// action then waits for `felhom-agent resume --rate-limit`.
pub const MAX_DISRUPTIVE_PER_HOUR: u64 = 10_000;

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
    /// `resume [--rate-limit]`, `pause`, `status`: the state directory only.
    Resume,
    /// `op new` with `--digest` or for a host-wide op: host_id; authz if present.
    OpNew,
    /// `op new` reading the guest's digest: host_id and Proxmox; authz if present.
    OpNewLive,
    /// `state acknowledge-damage`: the state directory only.
    AcknowledgeDamage,
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
            Mode::Resume => "resume",
            Mode::OpNew | Mode::OpNewLive => "op new",
            Mode::AcknowledgeDamage => "state acknowledge-damage",
        }
    }

    fn needs_proxmox(self) -> bool {
        matches!(
            self,
            Mode::Run
                | Mode::SelftestRead
                | Mode::SelftestTask
                | Mode::SelftestHub
                | Mode::Plan
                | Mode::OpNewLive
        )
    }

    fn needs_hub(self) -> bool {
        matches!(self, Mode::Run | Mode::SelftestHub)
    }

    fn needs_host_id(self) -> bool {
        matches!(
            self,
            Mode::Run
                | Mode::SelftestHub
                | Mode::SelftestOffline
                | Mode::Verify
                | Mode::Plan
                | Mode::OpNew
                | Mode::OpNewLive
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
    /// How long the hub may hold one event-stream request open (1..=300); 0 turns the
    /// stream off, leaving the report cadence alone.
    pub event_wait_seconds: u64,
    /// Per-request timeout.
    pub timeout_seconds: u64,
    /// Certificate trust (system bundle unless set).
    pub tls: TlsTrust,
}

/// Where the desired state comes from (`reconcile.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesiredSource {
    /// `"file"` (the default): `reconcile.desired_file`, or nothing managed without
    /// one. For air-gapped hosts.
    File,
    /// `"hub"`: `GET {hub.url}/api/v1/desired-state`, the last good document cached in
    /// `state_dir/desired.json`.
    Hub,
}

impl DesiredSource {
    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredSource::File => "file",
            DesiredSource::Hub => "hub",
        }
    }
}

/// The `reconcile` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// Where the desired state comes from.
    pub source: DesiredSource,
    /// The desired-state file, if any (source `file` only).
    pub desired_file: Option<PathBuf>,
    /// Global bound on concurrent Proxmox mutations (and parallel reads).
    pub max_parallel: usize,
    /// How long a `run: stopped` gives a guest to shut down cleanly before Proxmox
    /// stops it hard (`status/shutdown` with `timeout` and `forceStop=1`).
    pub shutdown_timeout_seconds: u32,
    /// Disruptive benign actions (stops, reductions of cores or memory) sent per
    /// rolling hour; beyond it they are held `rate_limited`.
    pub max_disruptive_per_hour: u32,
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
    /// The restore-test section: restore tests run only when it is present.
    pub restore_tests: Option<RestoreTestsConfig>,
    /// Problems worth a warning that do not stop the agent (e.g. a readable secret file).
    pub warnings: Vec<String>,
}

/// The process environment as a map, for [`Config::load`].
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
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
        let credentials = env.get("CREDENTIALS_DIRECTORY").map(Path::new);
        Ok((
            Config::from_value_with(&root, mode, credentials)?,
            file_holds_secret,
        ))
    }

    /// Validates an already-parsed (and env-overlaid) JSON document for `mode`.
    pub fn from_value(root: &Value, mode: Mode) -> Result<Config, ConfigError> {
        Config::from_value_with(root, mode, None)
    }

    /// [`Config::from_value`], looking for secret files in `credentials` too.
    fn from_value_with(
        root: &Value,
        mode: Mode,
        credentials: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        check_known_fields(root, "")?;
        let r = Reader {
            root,
            credentials_directory: credentials,
        };
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
                event_wait_seconds: r.int("hub.event_wait_seconds", 55, 0, 300)?,
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
                recovery_threshold: u32::try_from(r.int(
                    "authz.recovery_threshold",
                    1,
                    1,
                    crate::authz::MAX_SIGNERS as u64,
                )?)
                .unwrap_or(1),
                allowed_signers_file: r
                    .string("authz.allowed_signers_file")?
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from),
                revoked_keys_file: r
                    .string("authz.revoked_keys_file")?
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from),
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
        if mode == Mode::Verify && authz.as_ref().is_none_or(|a| !a.has_signers()) {
            return Err(field_err(
                "authz.signers",
                "`verify` needs at least one signer",
            ));
        }

        let desired_file = r
            .string("reconcile.desired_file")?
            .filter(|s| !s.is_empty());
        let source = match r.string("reconcile.source")?.as_deref() {
            None | Some("file") => DesiredSource::File,
            Some("hub") => DesiredSource::Hub,
            Some(_) => {
                return Err(field_err("reconcile.source", "must be `file` or `hub`"));
            }
        };
        if source == DesiredSource::Hub {
            if desired_file.is_some() {
                return Err(field_err(
                    "reconcile.desired_file",
                    "is for reconcile.source `file`; with `hub` the document is cached in state_dir/desired.json",
                ));
            }
            if hub.is_none() {
                return Err(field_err(
                    "reconcile.source",
                    "`hub` needs a hub section to fetch the desired state from",
                ));
            }
        }
        let reconcile = ReconcileConfig {
            source,
            desired_file: desired_file.map(PathBuf::from),
            max_parallel: usize::try_from(r.int("reconcile.max_parallel", 4, 1, 64)?).unwrap_or(4),
            shutdown_timeout_seconds: u32::try_from(r.int(
                "reconcile.shutdown_timeout_seconds",
                DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
                1,
                MAX_SHUTDOWN_TIMEOUT_SECONDS,
            )?)
            .unwrap_or(120),
            max_disruptive_per_hour: u32::try_from(r.int(
                "reconcile.max_disruptive_per_hour",
                DEFAULT_MAX_DISRUPTIVE_PER_HOUR,
                0,
                MAX_DISRUPTIVE_PER_HOUR,
            )?)
            .unwrap_or(10),
        };

        let audit = AuditConfig {
            max_bytes: r.int(
                "audit.max_bytes",
                AUDIT_MAX_BYTES_DEFAULT,
                AUDIT_MAX_BYTES_MIN,
                AUDIT_MAX_BYTES_MAX,
            )?,
        };

        let restore_tests = restore_tests::restore_tests(&r)?;
        if let Some(t) = &restore_tests
            && t.max_parallel >= reconcile.max_parallel
        {
            return Err(field_err(
                "restore_tests.max_parallel",
                format!(
                    "is {}: each running test holds one of reconcile.max_parallel's {} mutation slots, so it must be below it",
                    t.max_parallel, reconcile.max_parallel
                ),
            ));
        }

        Ok(Config {
            host_id,
            state_dir,
            log_level,
            proxmox,
            hub,
            authz,
            reconcile,
            audit,
            restore_tests,
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
                "event_wait_seconds": h.event_wait_seconds,
                "timeout_seconds": h.timeout_seconds,
                "tls": tls(&h.tls),
            })),
            "authz": self.authz.as_ref().map(|a| json!({
                "max_clock_skew_seconds": a.max_clock_skew_seconds,
                "sk_counter_strict": a.sk_counter_strict,
                "signers": a.signers.iter().map(|s| json!({
                    "key_id": s.key_id, "role": s.role.as_str(), "public_key": s.public_key,
                    "valid_before": s.valid_before,
                })).collect::<Vec<_>>(),
                "recovery_threshold": a.recovery_threshold,
                "allowed_signers_file": a.allowed_signers_file.as_ref().map(|f| f.display().to_string()),
                "revoked_keys_file": a.revoked_keys_file.as_ref().map(|f| f.display().to_string()),
            })),
            "reconcile": {
                "source": self.reconcile.source.as_str(),
                "desired_file": self.reconcile.desired_file.as_ref().map(|f| f.display().to_string()),
                "max_parallel": self.reconcile.max_parallel,
                "shutdown_timeout_seconds": self.reconcile.shutdown_timeout_seconds,
                "max_disruptive_per_hour": self.reconcile.max_disruptive_per_hour,
            },
            "audit": {"max_bytes": self.audit.max_bytes},
            "restore_tests": self.restore_tests.as_ref().map(|t| json!({
                "every_hours": t.every_hours,
                "vmid_range": format!("{}-{}", t.vmid_range.start(), t.vmid_range.end()),
                "storage": t.storage,
                "max_parallel": t.max_parallel,
                "min_free_memory_mib": t.min_free_memory_mib,
                "min_free_storage_gib": t.min_free_storage_gib,
            })),
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
