//! The signer policy over time: which keys may sign, in which role, at which policy
//! `version`, and where that set came from (the config's inline list or its
//! allowed_signers file at version 0, or a `rotate_signers` op durable in
//! `state_dir/signers.json`); the revoked keys beside it; the recovery threshold.
//!
//! [`SignerSet`] is the one live copy the verifier reads on every check; a rotation
//! replaces it only after the new set is durable ([`SignerSet::apply_rotation`]), under
//! the write lock, so no check sees a set that is not on disk and no check after the
//! rename sees the old one. [`plan_rotation`] is the pure check of a rotation's params
//! against the held policy (`policy_version`, `policy_invalid`), run before any nonce is
//! burned. This module writes `signers.json` only through [`crate::store::replace_file`]
//! and never executes an op.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::AuthzError;
use super::allowed_signers::{MAX_ALLOWED_SIGNERS_BYTES, parse_allowed_signers};
use super::config::{
    AuthzConfig, MAX_SIGNERS, Role, Signer, SignerEntry, SignersConfigError, validate_entries,
};
use super::revoked::RevokedKeys;
use crate::base::sync::lock;
use crate::base::time::Timestamp;
use crate::store::{Io, OsIo, replace_file};

/// The file a rotated signer set is kept in, inside the state directory.
pub const SIGNERS_FILE: &str = "signers.json";
/// Largest `signers.json` read, in bytes.
pub(crate) const MAX_SIGNERS_FILE_BYTES: usize = 256 * 1024;
/// How far ahead `selftest offline` (and `status`) warn of a signer's expiry.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// Where the held signer set came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignerSource {
    /// `authz.signers` in the config file (version 0).
    Config,
    /// `authz.allowed_signers_file` (version 0).
    AllowedSigners,
    /// A `rotate_signers` op, kept in `state_dir/signers.json`.
    Rotated,
}

impl SignerSource {
    /// `config`, `allowed_signers` or `rotated`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignerSource::Config => "config",
            SignerSource::AllowedSigners => "allowed_signers",
            SignerSource::Rotated => "rotated",
        }
    }
}

/// One version of the signer set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerPolicy {
    /// 0 for the config's set; each rotation adds exactly one.
    pub version: u64,
    /// Where it came from.
    pub source: SignerSource,
    /// The signers.
    pub signers: Vec<Signer>,
    /// Distinct recovery signatures an emergency rotation needs (`authz.recovery_threshold`).
    pub recovery_threshold: u32,
}

impl SignerPolicy {
    /// How many recovery keys the set holds.
    pub fn recovery_count(&self) -> usize {
        self.signers
            .iter()
            .filter(|s| s.role == Role::Recovery)
            .count()
    }

    /// The signers' `SHA256:` fingerprints, in set order.
    pub fn fingerprints(&self) -> Vec<String> {
        self.signers.iter().map(|s| s.fingerprint.clone()).collect()
    }

    /// The effective set, one `name: value` line each, for `verify` and `selftest
    /// offline`: source, version, threshold, each signer (role, fingerprint, validity)
    /// and the revoked keys. Key ids are escaped (they are config text).
    pub fn describe(&self, revoked: &RevokedKeys) -> Vec<String> {
        let mut out = vec![
            format!("signer_source: {}", self.source.as_str()),
            format!("signer_version: {}", self.version),
            format!("recovery_threshold: {}", self.recovery_threshold),
        ];
        for s in &self.signers {
            let mut line = format!(
                "signer: {} {} {}",
                s.key_id.escape_debug(),
                s.role.as_str(),
                s.fingerprint
            );
            if let Some(a) = s.valid_after {
                line.push_str(&format!(" valid_after={a}"));
            }
            match s.valid_before {
                Some(b) => line.push_str(&format!(" valid_before={b}")),
                None => line.push_str(" valid_before=never"),
            }
            out.push(line);
        }
        for fp in revoked.fingerprints() {
            out.push(format!("revoked: {fp}"));
        }
        out
    }
}

/// A signer that expires within [`EXPIRY_WARNING_DAYS`] of `now`, or already has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryWarning {
    /// The signer's key id.
    pub key_id: String,
    /// Its role.
    pub role: Role,
    /// Its fingerprint.
    pub fingerprint: String,
    /// When it expires (or expired).
    pub valid_before: Timestamp,
    /// Whether `valid_before` is already past.
    pub expired: bool,
}

impl fmt::Display for ExpiryWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.expired { "expired" } else { "expires" };
        write!(
            f,
            "{} signer {:?} ({}) {verb} at {}",
            self.role,
            self.key_id.escape_debug().to_string(),
            self.fingerprint,
            self.valid_before
        )
    }
}

/// The signers of `policy` that expire within [`EXPIRY_WARNING_DAYS`] of `now` or
/// already expired: what `selftest offline` and `status` warn of.
pub fn expiry_warnings(policy: &SignerPolicy, now: Timestamp) -> Vec<ExpiryWarning> {
    let horizon = now.0.saturating_add(EXPIRY_WARNING_DAYS * 86_400);
    policy
        .signers
        .iter()
        .filter_map(|s| {
            let b = s.valid_before?;
            (b.0 <= horizon).then(|| ExpiryWarning {
                key_id: s.key_id.clone(),
                role: s.role,
                fingerprint: s.fingerprint.clone(),
                valid_before: b,
                expired: now > b,
            })
        })
        .collect()
}

/// [`expiry_warnings`], each also logged as an `event=signer_expiring` warning: what
/// the daemon's start and `selftest offline` do with them.
pub fn warn_expiring(policy: &SignerPolicy, now: Timestamp) -> Vec<ExpiryWarning> {
    let warnings = expiry_warnings(policy, now);
    for w in &warnings {
        crate::warn!(
            signer_expiring,
            "signer expires soon or has expired",
            key_id = w.key_id,
            role = w.role.as_str(),
            fingerprint = w.fingerprint,
            valid_before = w.valid_before,
            expired = w.expired
        );
    }
    warnings
}

/// The expiry warnings of the effective signer set of `cfg` (the rotated one when
/// `state_dir` holds `signers.json`) at `now`: what `status` shows beside `selftest
/// offline`. Reads files only; an unusable set is the error naming why.
pub fn signer_expiry_warnings(
    cfg: &AuthzConfig,
    state_dir: Option<&Path>,
    now: Timestamp,
) -> Result<Vec<ExpiryWarning>, SignersConfigError> {
    let set = load_signer_set_os(cfg, state_dir)?;
    Ok(expiry_warnings(&set.policy(), now))
}

/// The live signer set: the policy, the revoked keys, and where to persist a rotation.
pub struct SignerSet {
    policy: RwLock<Arc<SignerPolicy>>,
    revoked: RwLock<Arc<RevokedKeys>>,
    file: Option<PathBuf>,
    io: Arc<dyn Io>,
    rotating: Mutex<()>,
}

impl fmt::Debug for SignerSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.policy();
        f.debug_struct("SignerSet")
            .field("version", &p.version)
            .field("source", &p.source)
            .field("signers", &p.signers.len())
            .finish_non_exhaustive()
    }
}

/// Why a rotation could not be made durable; the held set is unchanged.
#[derive(Debug)]
#[non_exhaustive]
pub enum RotationError {
    /// The held version moved since the op was checked (another rotation landed).
    Version {
        /// The version now held.
        held: u64,
        /// The version the op asked for.
        asked: u64,
    },
    /// This set has no `signers.json` to write (a verifier built without a state dir).
    NoFile,
    /// Writing `signers.json` failed (old file intact, or the new one durable only if
    /// the rename and directory fsync both happened — the next start reads whichever).
    Write(std::io::Error),
}

impl fmt::Display for RotationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RotationError::Version { held, asked } => {
                write!(
                    f,
                    "signer policy is at version {held}, the rotation asked for {asked}"
                )
            }
            RotationError::NoFile => f.write_str("no state directory to keep signers.json in"),
            RotationError::Write(e) => write!(f, "{SIGNERS_FILE} not written: {e}"),
        }
    }
}

impl std::error::Error for RotationError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RotationError::Write(e) => Some(e),
            _ => None,
        }
    }
}

impl SignerSet {
    /// A set holding `policy` and `revoked`, persisting rotations to `file` through `io`.
    pub fn new(
        policy: SignerPolicy,
        revoked: RevokedKeys,
        file: Option<PathBuf>,
        io: Arc<dyn Io>,
    ) -> SignerSet {
        SignerSet {
            policy: RwLock::new(Arc::new(policy)),
            revoked: RwLock::new(Arc::new(revoked)),
            file,
            io,
            rotating: Mutex::new(()),
        }
    }

    /// The policy held now.
    pub fn policy(&self) -> Arc<SignerPolicy> {
        Arc::clone(&self.policy.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The revoked keys held now.
    pub fn revoked(&self) -> Arc<RevokedKeys> {
        Arc::clone(&self.revoked.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the revoked keys.
    pub fn set_revoked(&self, revoked: RevokedKeys) {
        *self.revoked.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(revoked);
    }

    /// Re-reads `path` into the revoked keys; a file that cannot be read or parsed
    /// keeps the last good list and logs a warning (`revoked_keys_reload_failed`).
    /// Returns whether the list was replaced.
    pub fn reload_revoked(&self, path: &Path) -> bool {
        match RevokedKeys::read(path) {
            Ok(r) => {
                crate::info!(
                    revoked_keys_reloaded,
                    "revoked keys re-read",
                    revoked = r.len()
                );
                self.set_revoked(r);
                true
            }
            Err(e) => {
                crate::warn!(
                    revoked_keys_reload_failed,
                    "revoked keys file unusable; keeping the last good list",
                    error = e,
                    kept = self.revoked().len()
                );
                false
            }
        }
    }

    /// Makes `next` the held policy: under the write lock (no check runs meanwhile),
    /// `next.version` must still be the held version + 1; `signers.json` is replaced
    /// durably (temp file, fsync, rename, directory fsync) and only then is `next` held.
    /// Returns the policy it replaced.
    pub fn apply_rotation(&self, next: SignerPolicy) -> Result<Arc<SignerPolicy>, RotationError> {
        let _one = lock(&self.rotating);
        let mut held = self.policy.write().unwrap_or_else(|p| p.into_inner());
        if held.version.checked_add(1) != Some(next.version) {
            return Err(RotationError::Version {
                held: held.version,
                asked: next.version,
            });
        }
        let file = self.file.as_ref().ok_or(RotationError::NoFile)?;
        let bytes = encode_signers_file(&next);
        replace_file(self.io.as_ref(), file, &bytes).map_err(RotationError::Write)?;
        crate::store::faultpoint::reached("rotation:after-rename");
        let old = std::mem::replace(&mut *held, Arc::new(next));
        Ok(old)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignersDoc {
    version: u64,
    signers: Vec<SignerEntry>,
}

fn encode_signers_file(p: &SignerPolicy) -> Vec<u8> {
    let doc = SignersDoc {
        version: p.version,
        signers: p.signers.iter().map(Signer::to_entry).collect(),
    };
    let mut v = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    v.push(b'\n');
    v
}

/// Reads `state_dir/signers.json`: `Ok(None)` when absent; an error (naming the file
/// and why) when it cannot be read or does not hold a valid set — the caller refuses
/// to start rather than fall back to an older set.
pub fn read_signers_file(
    path: &Path,
    recovery_threshold: u32,
) -> Result<Option<SignerPolicy>, SignersConfigError> {
    let field = path.display().to_string();
    let err = |reason: String| SignersConfigError {
        field: field.clone(),
        reason,
    };
    let bytes = match read_capped(path, MAX_SIGNERS_FILE_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let doc: SignersDoc =
        serde_json::from_slice(&bytes).map_err(|e| err(format!("not a signer set: {e}")))?;
    let signers = validate_entries(&doc.signers, &format!("{field}: signers"))?;
    if doc.version == 0 {
        return Err(err(
            "version 0 is the config's own set, never a rotation".into()
        ));
    }
    Ok(Some(SignerPolicy {
        version: doc.version,
        source: SignerSource::Rotated,
        signers,
        recovery_threshold,
    }))
}

fn read_capped(path: &Path, cap: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let limit = u64::try_from(cap).map_or(u64::MAX, |c| c + 1);
    std::fs::File::open(path)?
        .take(limit)
        .read_to_end(&mut buf)?;
    if buf.len() > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("over the {cap}-byte cap"),
        ));
    }
    Ok(buf)
}

/// Builds the live signer set of `cfg`: the rotated set in `state_dir/signers.json`
/// when there is one, else the allowed_signers file, else the inline signers; and the
/// revoked keys file. Any of them unreadable or invalid is an error naming it.
pub fn load_signer_set(
    cfg: &AuthzConfig,
    state_dir: Option<&Path>,
    io: Arc<dyn Io>,
) -> Result<SignerSet, SignersConfigError> {
    let inline = cfg.validate()?;
    let file = state_dir.map(|d| d.join(SIGNERS_FILE));
    let rotated = match &file {
        Some(f) => read_signers_file(f, cfg.recovery_threshold)?,
        None => None,
    };
    let policy = match (rotated, &cfg.allowed_signers_file) {
        (Some(p), _) => p,
        (None, Some(path)) => {
            let field = "authz.allowed_signers_file";
            let bytes =
                read_capped(path, MAX_ALLOWED_SIGNERS_BYTES).map_err(|e| SignersConfigError {
                    field: field.into(),
                    reason: format!("{}: {e}", path.display()),
                })?;
            let text = String::from_utf8(bytes).map_err(|e| SignersConfigError {
                field: field.into(),
                reason: format!(
                    "{}: not UTF-8 at byte {}",
                    path.display(),
                    e.utf8_error().valid_up_to()
                ),
            })?;
            SignerPolicy {
                version: 0,
                source: SignerSource::AllowedSigners,
                signers: parse_allowed_signers(&text, &path.display().to_string())?,
                recovery_threshold: cfg.recovery_threshold,
            }
        }
        (None, None) => SignerPolicy {
            version: 0,
            source: SignerSource::Config,
            signers: inline,
            recovery_threshold: cfg.recovery_threshold,
        },
    };
    let revoked = match &cfg.revoked_keys_file {
        Some(path) => RevokedKeys::read(path).map_err(|reason| SignersConfigError {
            field: "authz.revoked_keys_file".into(),
            reason,
        })?,
        None => RevokedKeys::none(),
    };
    Ok(SignerSet::new(policy, revoked, file, io))
}

/// [`load_signer_set`] on the real file system.
pub fn load_signer_set_os(
    cfg: &AuthzConfig,
    state_dir: Option<&Path>,
) -> Result<SignerSet, SignersConfigError> {
    load_signer_set(cfg, state_dir, Arc::new(OsIo))
}

/// The params of a `rotate_signers` op: `mode` (`planned` or `emergency`), `version`
/// (decimal, exactly the held version + 1) and `signers` (a JSON array of entries shaped
/// as `authz.signers[]`, as a string).
pub const ROTATION_PARAMS: &[&str] = &["mode", "version", "signers"];

/// Checks a rotation's params against the held policy and the revoked keys and returns
/// the policy it would install. `PolicyVersion` for a rollback or a skipped version;
/// `PolicyInvalid` for anything else wrong with the new set, including one that holds
/// fewer recovery keys than the threshold (or none) or a revoked key.
pub fn plan_rotation(
    params: &BTreeMap<String, String>,
    held: &SignerPolicy,
    revoked: &RevokedKeys,
) -> Result<SignerPolicy, AuthzError> {
    let invalid = |why: String| AuthzError::PolicyInvalid(why);
    if let Some(k) = params
        .keys()
        .find(|k| !ROTATION_PARAMS.contains(&k.as_str()))
    {
        return Err(invalid(format!("params.{}: unknown", k.escape_debug())));
    }
    match params.get("mode").map(String::as_str) {
        Some("planned" | "emergency") => {}
        _ => return Err(invalid("params.mode: must be planned or emergency".into())),
    }
    let version: u64 = params
        .get("version")
        .filter(|v| !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| invalid("params.version: must be a decimal number".into()))?;
    if version <= held.version {
        return Err(AuthzError::PolicyVersion(format!(
            "rollback: version {version} is not above the held version {}",
            held.version
        )));
    }
    if Some(version) != held.version.checked_add(1) {
        return Err(AuthzError::PolicyVersion(format!(
            "skipped: version {version}, the held version is {} (want {})",
            held.version,
            held.version.saturating_add(1)
        )));
    }
    let text = params
        .get("signers")
        .ok_or_else(|| invalid("params.signers: required".into()))?;
    let entries: Vec<SignerEntry> = serde_json::from_str(text)
        .map_err(|e| invalid(format!("params.signers: not a signer list: {e}")))?;
    if entries.len() > MAX_SIGNERS {
        return Err(invalid(format!(
            "params.signers: {} entries, at most {MAX_SIGNERS}",
            entries.len()
        )));
    }
    let signers =
        validate_entries(&entries, "params.signers").map_err(|e| invalid(e.to_string()))?;
    if let Some(s) = signers
        .iter()
        .find(|s| revoked.find(s.public_key.key_data()).is_some())
    {
        return Err(invalid(format!(
            "params.signers: {:?} ({}) is revoked",
            s.key_id, s.fingerprint
        )));
    }
    let next = SignerPolicy {
        version,
        source: SignerSource::Rotated,
        signers,
        recovery_threshold: held.recovery_threshold,
    };
    let need = held.recovery_threshold.max(1) as usize;
    if next.recovery_count() < need {
        return Err(invalid(format!(
            "the new set holds {} recovery keys, the threshold needs {need}",
            next.recovery_count()
        )));
    }
    Ok(next)
}
