//! The `authz` section of the agent's configuration and its validation into
//! [`Signer`]s: allow-listed operator keys as `authorized_keys` lines, each with a
//! `key_id` (advisory, for audit) and a role.
//!
//! Validation refuses, naming the entry: lines that do not parse, `authorized_keys`
//! options, key types the verifier refuses (DSA, certificates, RSA under 2048 bits),
//! and duplicate key material or key ids. It never reads files or logs keys.

use std::fmt;

use serde::{Deserialize, Serialize};
use ssh_key::{HashAlg, PublicKey};

use super::sshsig::check_key_policy;

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
    /// The allow-listed operator keys.
    #[serde(default)]
    pub signers: Vec<SignerEntry>,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        AuthzConfig {
            max_clock_skew_seconds: DEFAULT_MAX_CLOCK_SKEW_SECONDS,
            sk_counter_strict: false,
            signers: Vec::new(),
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
        })
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

fn valid_key_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

impl AuthzConfig {
    /// Checks the section and returns the signers, or the first error naming its entry.
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
        let mut out: Vec<Signer> = Vec::with_capacity(self.signers.len());
        for (i, e) in self.signers.iter().enumerate() {
            let field = |f: &str| format!("authz.signers[{i}].{f}");
            if !valid_key_id(&e.key_id) {
                return Err(SignersConfigError {
                    field: field("key_id"),
                    reason: format!("{:?} is not 1-64 characters of [A-Za-z0-9._@-]", e.key_id),
                });
            }
            if let Some(j) = out.iter().position(|s| s.key_id == e.key_id) {
                return Err(SignersConfigError {
                    field: field("key_id"),
                    reason: format!("{:?} is already used by authz.signers[{j}]", e.key_id),
                });
            }
            let s = Signer::from_authorized_key(&e.key_id, e.role, &e.public_key).map_err(
                |reason| SignersConfigError {
                    field: field("public_key"),
                    reason,
                },
            )?;
            if let Some(j) = out
                .iter()
                .position(|o| o.public_key.key_data() == s.public_key.key_data())
            {
                return Err(SignersConfigError {
                    field: field("public_key"),
                    reason: format!(
                        "same key as authz.signers[{j}] (key_id {:?})",
                        out[j].key_id
                    ),
                });
            }
            out.push(s);
        }
        Ok(out)
    }
}
