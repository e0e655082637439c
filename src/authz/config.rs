//! The `authz` section of the agent's configuration and its validation into
//! [`Signer`]s: allow-listed operator keys as `authorized_keys` lines, each with a
//! `key_id` (advisory, for audit) and a role.
//!
//! Validation refuses, naming the entry: lines that do not parse, `authorized_keys`
//! options, key types the verifier refuses (DSA, certificates, RSA under 2048 bits),
//! and duplicate key material or key ids. It never reads files or logs keys.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use ssh_key::{HashAlg, PublicKey};

use super::sshsig::check_key_policy;
use crate::base::time::Timestamp;

/// Default bound on the clock difference between the operator and this host.
pub(crate) const DEFAULT_MAX_CLOCK_SKEW_SECONDS: u64 = 120;
/// The largest clock skew that may be configured.
pub(crate) const MAX_CLOCK_SKEW_SECONDS: u64 = 3600;

fn default_skew() -> u64 {
    DEFAULT_MAX_CLOCK_SKEW_SECONDS
}

/// The `authz` section as written in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzConfig {
    /// Accepted clock difference in seconds, both ways (default 120, at most 3600).
    #[serde(default = "default_skew")]
    pub max_clock_skew_seconds: u64,
    /// Refuse (rather than only audit) a hardware-key signature whose counter is not
    /// above the highest seen for that key.
    #[serde(default)]
    pub sk_counter_strict: bool,
    /// The allow-listed operator keys (the policy's version 0).
    #[serde(default)]
    pub signers: Vec<SignerEntry>,
    /// How many distinct recovery keys must sign one blob for an emergency rotation
    /// (default 1, at most [`MAX_SIGNERS`]).
    #[serde(default = "default_threshold")]
    pub recovery_threshold: u32,
    /// An OpenSSH `allowed_signers` file used instead of the inline `signers` (see
    /// [`super::allowed_signers`]).
    #[serde(default)]
    pub allowed_signers_file: Option<PathBuf>,
    /// Public keys refused whatever else lists them, one per line (see [`super::revoked`]).
    #[serde(default)]
    pub revoked_keys_file: Option<PathBuf>,
}

fn default_threshold() -> u32 {
    1
}

/// The most signers a policy (config, file or rotation) may hold.
pub const MAX_SIGNERS: usize = 32;

impl Default for AuthzConfig {
    fn default() -> Self {
        AuthzConfig {
            max_clock_skew_seconds: DEFAULT_MAX_CLOCK_SKEW_SECONDS,
            sk_counter_strict: false,
            signers: Vec::new(),
            recovery_threshold: 1,
            allowed_signers_file: None,
            revoked_keys_file: None,
        }
    }
}

/// One allow-listed key as written in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerEntry {
    /// Name for audit logs (`[A-Za-z0-9._@-]`, 1–64 characters); never an authz input.
    pub key_id: String,
    /// What the key may sign.
    pub role: Role,
    /// `authorized_keys` line: `TYPE BASE64 [COMMENT]`, without options.
    pub public_key: String,
    /// RFC 3339 time after which the key is refused (`signer_expired`); absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_before: Option<String>,
}

/// What a signer may authorize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Ordinary destructive operations and planned signer rotation.
    Operational,
    /// Signer rotation only (the break-glass key).
    Recovery,
}

impl Role {
    /// `operational` or `recovery`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operational => "operational",
            Role::Recovery => "recovery",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The configured key id.
    pub key_id: String,
    /// The configured role.
    pub role: Role,
    /// The key (its comment kept as written).
    pub public_key: PublicKey,
    /// `SHA256:...` fingerprint, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// Refused (`signer_expired`) before this time, when set.
    pub valid_after: Option<Timestamp>,
    /// Refused (`signer_expired`) after this time, when set (the second itself is valid,
    /// as for `ssh-keygen`'s `valid-before`).
    pub valid_before: Option<Timestamp>,
}

impl Signer {
    /// Builds a signer from an `authorized_keys` line, applying the key-type policy.
    /// The error says why, without the field path (see [`AuthzConfig::validate`]).
    pub fn from_authorized_key(key_id: &str, role: Role, line: &str) -> Result<Signer, String> {
        let entry: ssh_key::authorized_keys::Entry = line
            .trim()
            .parse()
            .map_err(|e| format!("not an authorized_keys line: {e}"))?;
        if !entry.config_opts().is_empty() {
            return Err("authorized_keys options are not supported".into());
        }
        let public_key = entry.public_key().clone();
        check_key_policy(public_key.key_data())?;
        let fingerprint = public_key.fingerprint(HashAlg::Sha256).to_string();
        Ok(Signer {
            key_id: key_id.to_string(),
            role,
            public_key,
            fingerprint,
            valid_after: None,
            valid_before: None,
        })
    }

    /// Why this signer may not sign at `now` (outside its validity), if so.
    pub fn outside_validity(&self, now: Timestamp) -> Option<String> {
        if let Some(a) = self.valid_after
            && now < a
        {
            return Some(format!(
                "signer {:?} ({}) is valid only after {a}, now {now}",
                self.key_id, self.fingerprint
            ));
        }
        if let Some(b) = self.valid_before
            && now > b
        {
            return Some(format!(
                "signer {:?} ({}) expired at {b}, now {now}",
                self.key_id, self.fingerprint
            ));
        }
        None
    }

    /// The entry that reads back as this signer (for `signers.json`).
    pub(crate) fn to_entry(&self) -> SignerEntry {
        SignerEntry {
            key_id: self.key_id.clone(),
            role: self.role,
            public_key: self.public_key.to_openssh().unwrap_or_default(),
            valid_before: self.valid_before.map(Timestamp::to_rfc3339),
        }
    }
}

/// A configuration value that is not acceptable: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignersConfigError {
    /// Dotted path of the field, e.g. `authz.signers[1].public_key`.
    pub field: String,
    /// Why it is refused.
    pub reason: String,
}

impl fmt::Display for SignersConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for SignersConfigError {}

pub(crate) fn valid_key_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

impl AuthzConfig {
    /// Checks the section and returns the inline signers, or the first error naming its
    /// entry. The file-backed parts (`allowed_signers_file`, `revoked_keys_file`) are read
    /// by [`super::policy::load_signer_set`].
    pub fn validate(&self) -> Result<Vec<Signer>, SignersConfigError> {
        if self.max_clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS {
            return Err(SignersConfigError {
                field: "authz.max_clock_skew_seconds".into(),
                reason: format!(
                    "{} exceeds the {MAX_CLOCK_SKEW_SECONDS}-second maximum",
                    self.max_clock_skew_seconds
                ),
            });
        }
        if self.recovery_threshold == 0 || self.recovery_threshold as usize > MAX_SIGNERS {
            return Err(SignersConfigError {
                field: "authz.recovery_threshold".into(),
                reason: format!(
                    "{} is not between 1 and {MAX_SIGNERS}",
                    self.recovery_threshold
                ),
            });
        }
        if self.allowed_signers_file.is_some() && !self.signers.is_empty() {
            return Err(SignersConfigError {
                field: "authz.allowed_signers_file".into(),
                reason: "set together with authz.signers: use one or the other".into(),
            });
        }
        validate_entries(&self.signers, "authz.signers")
    }

    /// Whether any signer source is configured (inline or a file).
    pub fn has_signers(&self) -> bool {
        !self.signers.is_empty() || self.allowed_signers_file.is_some()
    }
}

/// Validates signer entries (inline config or a rotation's set); errors name
/// `PREFIX[i].field`.
pub(crate) fn validate_entries(
    entries: &[SignerEntry],
    prefix: &str,
) -> Result<Vec<Signer>, SignersConfigError> {
    if entries.len() > MAX_SIGNERS {
        return Err(SignersConfigError {
            field: prefix.into(),
            reason: format!("{} entries, at most {MAX_SIGNERS}", entries.len()),
        });
    }
    let mut out: Vec<Signer> = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let field = |f: &str| format!("{prefix}[{i}].{f}");
        if !valid_key_id(&e.key_id) {
            return Err(SignersConfigError {
                field: field("key_id"),
                reason: format!("{:?} is not 1-64 characters of [A-Za-z0-9._@-]", e.key_id),
            });
        }
        let mut s =
            Signer::from_authorized_key(&e.key_id, e.role, &e.public_key).map_err(|reason| {
                SignersConfigError {
                    field: field("public_key"),
                    reason,
                }
            })?;
        if let Some(vb) = &e.valid_before {
            s.valid_before =
                Some(
                    Timestamp::parse_rfc3339(vb).map_err(|err| SignersConfigError {
                        field: field("valid_before"),
                        reason: format!("not an RFC 3339 time: {err}"),
                    })?,
                );
        }
        push_unique(&mut out, s, prefix, &field("key_id"), &field("public_key"))?;
    }
    Ok(out)
}

/// Appends `s` unless its key id or key material is already in `out`.
pub(crate) fn push_unique(
    out: &mut Vec<Signer>,
    s: Signer,
    prefix: &str,
    key_id_field: &str,
    key_field: &str,
) -> Result<(), SignersConfigError> {
    if let Some(j) = out.iter().position(|o| o.key_id == s.key_id) {
        return Err(SignersConfigError {
            field: key_id_field.into(),
            reason: format!("{:?} is already used by {prefix}[{j}]", s.key_id),
        });
    }
    if let Some(j) = out
        .iter()
        .position(|o| o.public_key.key_data() == s.public_key.key_data())
    {
        return Err(SignersConfigError {
            field: key_field.into(),
            reason: format!("same key as {prefix}[{j}] (key_id {:?})", out[j].key_id),
        });
    }
    out.push(s);
    Ok(())
}
