//! What a Proxmox call can fail with, classified for the callers' policies: whether
//! the request provably never reached Proxmox (only then may a mutation be sent
//! again), whether the failure is transient (retry on a later pass, with backoff),
//! and which privilege a permission failure names.

use std::collections::BTreeMap;
use std::fmt;

use super::decode::DecodeError;
use super::validate::InvalidArgument;
use crate::net::{Method, TransportError, TrustError};

/// A privilege named by Proxmox's `Permission check failed (PATH, PRIV)` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privilege {
    /// The ACL path, e.g. `/vms/100`.
    pub path: String,
    /// The privileges, any one of which would have passed (`P1|P2` in the text).
    pub privs: Vec<String>,
}

impl Privilege {
    /// Finds `Permission check failed (PATH, PRIV[|PRIV...])` in a message. The bare
    /// form without parentheses, and the API-token form that names a URI instead of
    /// an ACL path, give `None`.
    pub fn parse(text: &str) -> Option<Privilege> {
        const MARK: &str = "Permission check failed (";
        let start = text.find(MARK)? + MARK.len();
        let rest = &text[start..];
        let inner = &rest[..rest.find(')')?];
        let (path, privs) = inner.split_once(", ")?;
        let path = path.trim();
        if !path.starts_with('/') || path.contains(char::is_whitespace) {
            return None;
        }
        let privs: Vec<String> = privs.split('|').map(|p| p.trim().to_string()).collect();
        let well_formed = privs
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'));
        if !well_formed {
            return None;
        }
        Some(Privilege {
            path: path.to_string(),
            privs,
        })
    }

    /// Whether this names exactly `path` and includes `privilege`.
    pub fn is(&self, path: &str, privilege: &str) -> bool {
        self.path == path && self.privs.iter().any(|p| p == privilege)
    }
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, {}", self.path, self.privs.join("|"))
    }
}

/// Whether an error text (an API message or a task's exit status) describes a
/// condition that passes by itself: a lock wait that timed out, or a guest locked
/// by a backup or snapshot that is still running.
pub fn is_transient_text(text: &str) -> bool {
    text.contains("got timeout")
        || [
            "locked (backup)",
            "locked (snapshot)",
            "locked (snapshot-delete)",
        ]
        .iter()
        .any(|m| text.contains(m))
}

/// An answer from Proxmox with an error status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The request's method.
    pub method: Method,
    /// The API path below `/api2/json`, e.g. `/nodes/pve/lxc/100/status/start`.
    pub path: String,
    /// The HTTP status.
    pub status: u16,
    /// Proxmox's message: the body's `message` field (servers since 2025), else the
    /// reason phrase of the status line, else the standard phrase.
    pub message: String,
    /// Per-parameter errors of a 400 (`{"vmid": "type check ('integer') failed ..."}`).
    pub errors: BTreeMap<String, String>,
    /// The privilege a 403 names.
    pub privilege: Option<Privilege>,
    /// Whether trying again later may succeed without any change on our side: a 5xx
    /// (other than 501, "not implemented"), a lock timeout, a guest locked by a
    /// backup or snapshot.
    pub transient: bool,
}

impl ApiError {
    /// Whether Proxmox says the guest does not exist (it answers 500 with
    /// `Configuration file '...' does not exist`; there are no 404s).
    pub fn guest_missing(&self) -> bool {
        self.message.contains("Configuration file") && self.message.contains("does not exist")
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: HTTP {}: {}",
            self.method, self.path, self.status, self.message
        )?;
        for (k, v) in &self.errors {
            write!(f, "; {k}: {v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// A failed Proxmox call.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProxmoxError {
    /// The client options are unusable (at construction).
    Option {
        /// The option, e.g. `base_url`, `token_id`.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The TLS trust choice could not be loaded (at construction).
    Trust(TrustError),
    /// An argument was refused before anything was sent.
    Argument(InvalidArgument),
    /// The request did not produce a complete answer.
    Transport(TransportError),
    /// Proxmox answered with an error status.
    Api(Box<ApiError>),
    /// Proxmox answered 2xx but the body is not the expected shape.
    Decode {
        /// The request's method.
        method: Method,
        /// The API path.
        path: String,
        /// What did not fit.
        detail: DecodeError,
    },
}

impl ProxmoxError {
    /// Whether the request provably never reached Proxmox: refused locally, or a
    /// connect/TLS failure. Only such a mutation may be sent again.
    pub fn never_sent(&self) -> bool {
        match self {
            ProxmoxError::Option { .. } | ProxmoxError::Trust(_) | ProxmoxError::Argument(_) => {
                true
            }
            ProxmoxError::Transport(t) => t.never_sent(),
            ProxmoxError::Api(_) | ProxmoxError::Decode { .. } => false,
        }
    }

    /// Whether the request may have been carried out although no usable answer came
    /// back: the connection broke or timed out after the request went out, or a 2xx
    /// answer could not be read. A mutation that failed this way has to be judged by
    /// reading the state again, never by assuming it did not happen.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            ProxmoxError::Transport(t) => !t.never_sent(),
            ProxmoxError::Decode { .. } => true,
            ProxmoxError::Option { .. }
            | ProxmoxError::Trust(_)
            | ProxmoxError::Argument(_)
            | ProxmoxError::Api(_) => false,
        }
    }

    /// Whether the same call may succeed later without any change on our side
    /// (network trouble, a transient API answer). Says nothing about whether a
    /// mutation was processed: see [`ProxmoxError::never_sent`].
    pub fn is_transient(&self) -> bool {
        match self {
            ProxmoxError::Api(a) => a.transient,
            ProxmoxError::Transport(t) => matches!(
                t,
                TransportError::Connect { .. }
                    | TransportError::Timeout { .. }
                    | TransportError::Io { .. }
                    | TransportError::Protocol { .. }
            ),
            _ => false,
        }
    }

    /// The privilege a permission failure names.
    pub fn privilege(&self) -> Option<&Privilege> {
        match self {
            ProxmoxError::Api(a) => a.privilege.as_ref(),
            _ => None,
        }
    }

    /// The API error, when Proxmox answered with an error status.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            ProxmoxError::Api(a) => Some(a.as_ref()),
            _ => None,
        }
    }
}

impl fmt::Display for ProxmoxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxmoxError::Option { field, reason } => write!(f, "proxmox option {field}: {reason}"),
            ProxmoxError::Trust(e) => write!(f, "proxmox TLS trust: {e}"),
            ProxmoxError::Argument(e) => write!(f, "proxmox request refused: {e}"),
            ProxmoxError::Transport(e) => write!(f, "proxmox: {e}"),
            ProxmoxError::Api(e) => write!(f, "proxmox: {e}"),
            ProxmoxError::Decode {
                method,
                path,
                detail,
            } => write!(f, "proxmox: {method} {path}: unexpected answer: {detail}"),
        }
    }
}

impl std::error::Error for ProxmoxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProxmoxError::Trust(e) => Some(e),
            ProxmoxError::Argument(e) => Some(e),
            ProxmoxError::Transport(e) => Some(e),
            ProxmoxError::Api(e) => Some(e.as_ref()),
            ProxmoxError::Decode { detail, .. } => Some(detail),
            ProxmoxError::Option { .. } => None,
        }
    }
}

impl From<InvalidArgument> for ProxmoxError {
    fn from(e: InvalidArgument) -> Self {
        ProxmoxError::Argument(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privilege_parsing() {
        let p = Privilege::parse("Permission check failed (/vms/100, VM.PowerMgmt)\n").unwrap();
        assert_eq!(p.path, "/vms/100");
        assert_eq!(p.privs, vec!["VM.PowerMgmt"]);
        assert!(p.is("/vms/100", "VM.PowerMgmt"));
        let p = Privilege::parse(
            "Permission check failed (/vms/100, VM.Config.Disk|VM.Config.CPU|VM.Config.Memory)",
        )
        .unwrap();
        assert_eq!(p.privs.len(), 3);
        assert_eq!(
            p.to_string(),
            "/vms/100, VM.Config.Disk|VM.Config.CPU|VM.Config.Memory"
        );
        assert_eq!(Privilege::parse("Permission check failed"), None);
        assert_eq!(
            Privilege::parse(
                "Permission check failed (URI '/nodes' not available with API token, need proper ticket."
            ),
            None
        );
        assert_eq!(Privilege::parse("CT is locked (backup)"), None);
    }

    #[test]
    fn only_a_lost_or_unreadable_answer_leaves_the_outcome_unknown() {
        let target = || "POST https://h/api2/json/x".to_string();
        let transport = |t| ProxmoxError::Transport(t);
        assert!(
            transport(TransportError::Io {
                target: target(),
                source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            })
            .outcome_unknown()
        );
        assert!(
            transport(TransportError::Timeout {
                target: target(),
                phase: crate::net::TimeoutPhase::Exchange,
            })
            .outcome_unknown()
        );
        assert!(
            !transport(TransportError::Timeout {
                target: target(),
                phase: crate::net::TimeoutPhase::Connect,
            })
            .outcome_unknown()
        );
        assert!(
            ProxmoxError::Decode {
                method: Method::Post,
                path: "/x".into(),
                detail: DecodeError {
                    field: "body".into(),
                    expected: "JSON",
                    found: "<html>".into(),
                },
            }
            .outcome_unknown()
        );
        let refused = ApiError {
            method: Method::Post,
            path: "/x".into(),
            status: 500,
            message: "CT is locked (backup)".into(),
            errors: BTreeMap::new(),
            privilege: None,
            transient: true,
        };
        assert!(!ProxmoxError::Api(Box::new(refused)).outcome_unknown());
    }

    #[test]
    fn transient_texts() {
        assert!(is_transient_text(
            "can't lock file '/run/lock/lxc/pve-config-100.lock' - got timeout"
        ));
        assert!(is_transient_text("CT is locked (backup)"));
        assert!(!is_transient_text("CT is locked (create)"));
        assert!(!is_transient_text(
            "Permission check failed (/vms/100, VM.PowerMgmt)"
        ));
    }
}
