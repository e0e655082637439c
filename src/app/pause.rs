//! `felhom-agent pause --reason TEXT` and `resume`: the operator's local veto.
//!
//! The veto is one small file, `state_dir/pause.json` ([`PauseMarker`]), replaced
//! durably (temp file, fsync, rename, directory fsync). `pause` writes it with
//! `"paused": true`, the reason, the caller's uid and the time; `resume` replaces it
//! with `"paused": false` and who lifted it, so the last word and its author stay on
//! disk. Neither command needs the running daemon: the daemon holds the state lock, so
//! it is the daemon that reads the marker, at every reconcile pass and before every
//! signed op ([`PausedPacing`], the same hold as the hub's `blocked`), and reports it.
//! A held signed op is not verified and its nonce is not burned; it runs on the first
//! round after `resume`. A marker that cannot be read holds too (fail safe).
//!
//! **Audit.** When no daemon holds the state lock, the command takes it, appends the
//! pause or resume to `audit.log` itself and marks the marker `audited`. When a daemon
//! runs, the daemon audits every marker it has not audited yet ([`PauseWatch::observe`],
//! from its watch loop), so each pause and resume is audited at least once with its
//! uid and time. This module never talks to Proxmox or the hub, never removes the
//! marker, and never rewrites a marker it did not just write.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::command::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::base::sync::lock;
use crate::base::time::{Clock, SystemClock, Timestamp};
use crate::config::Config;
use crate::hub::collect::PauseSource;
use crate::hub::report::PauseReport;
use crate::reconcile::audit::{AuditLog, AuditRecord};
use crate::reconcile::engine::Pacing;
use crate::store::statelock::{StateLock, StateLockError};
use crate::store::{OsIo, replace_file};

/// The marker's name inside the state directory.
pub(crate) const PAUSE_FILE: &str = "pause.json";
/// The largest marker read; a bigger file is unreadable (and holds).
const MAX_MARKER_BYTES: u64 = 4096;
/// The longest reason accepted, in bytes.
pub(crate) const MAX_REASON_BYTES: usize = 200;
/// The op word the audit records a pause or a resume under.
pub(crate) const PAUSE_AUDIT_OP: &str = "operator_pause";

/// The pause marker's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseMarker {
    /// Whether mutations are held.
    pub paused: bool,
    /// Why (set by `pause`; `None` after `resume`).
    pub reason: Option<String>,
    /// The uid of the process that wrote the marker.
    pub by_uid: u32,
    /// When it was written.
    #[serde(with = "crate::base::time::rfc3339")]
    pub at: Timestamp,
    /// Whether the command already recorded it in the audit log.
    #[serde(default)]
    pub audited: bool,
    /// On a `resume`: the pause it lifted, so that the resume's audit record names it
    /// (a pause lifted before the running daemon audited it is still on record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted: Option<LiftedPause>,
}

/// The pause a `resume` lifted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiftedPause {
    /// Its reason.
    pub reason: Option<String>,
    /// Who paused.
    pub by_uid: u32,
    /// When.
    #[serde(with = "crate::base::time::rfc3339")]
    pub at: Timestamp,
}

/// What the marker says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseState {
    /// No marker, or the last word was `resume`.
    Running(Option<PauseMarker>),
    /// Paused by an operator.
    Paused(PauseMarker),
    /// A marker exists but cannot be read: held, fail safe. The text says why.
    Unreadable(String),
}

impl PauseState {
    /// Whether mutations are held.
    pub fn holds(&self) -> bool {
        !matches!(self, PauseState::Running(_))
    }
}

/// The marker's path in `state_dir`.
pub(crate) fn pause_path(state_dir: &Path) -> PathBuf {
    state_dir.join(PAUSE_FILE)
}

/// Reads the marker in `state_dir` (bounded, never panics).
pub fn read_pause(state_dir: &Path) -> PauseState {
    let path = pause_path(state_dir);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return PauseState::Running(None),
        Err(e) => return PauseState::Unreadable(format!("{}: {e}", path.display())),
    };
    if !meta.is_file() {
        return PauseState::Unreadable(format!("{}: not a regular file", path.display()));
    }
    if meta.len() > MAX_MARKER_BYTES {
        return PauseState::Unreadable(format!(
            "{}: {} bytes, more than {MAX_MARKER_BYTES}",
            path.display(),
            meta.len()
        ));
    }
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return PauseState::Running(None),
        Err(e) => return PauseState::Unreadable(format!("{}: {e}", path.display())),
    };
    match serde_json::from_slice::<PauseMarker>(&bytes) {
        Ok(m) if m.paused => PauseState::Paused(m),
        Ok(m) => PauseState::Running(Some(m)),
        Err(e) => PauseState::Unreadable(format!("{}: {e}", path.display())),
    }
}

/// Checks an operator's reason: 1 to [`MAX_REASON_BYTES`] bytes, no control characters.
pub(crate) fn check_reason(reason: &str) -> Result<(), String> {
    if reason.trim().is_empty() {
        return Err("--reason must say why (it is empty)".into());
    }
    if reason.len() > MAX_REASON_BYTES {
        return Err(format!(
            "--reason is {} bytes, at most {MAX_REASON_BYTES}",
            reason.len()
        ));
    }
    if let Some((i, c)) = reason.char_indices().find(|(_, c)| c.is_control()) {
        return Err(format!(
            "--reason has a control character {:?} at byte {i}",
            c
        ));
    }
    Ok(())
}

/// The uid this process runs as: the owner of `/proc/self` (no libc call needed).
pub(crate) fn current_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// The audit record of a marker.
fn audit_record(m: &PauseMarker) -> AuditRecord {
    let (decision, reason) = if m.paused {
        (
            "paused",
            format!(
                "operator pause by uid {}: {}",
                m.by_uid,
                m.reason.as_deref().unwrap_or("")
            ),
        )
    } else {
        let lifted = m.lifted.as_ref().map_or(String::new(), |p| {
            format!(
                ", lifting the pause by uid {} of {}: {}",
                p.by_uid,
                p.at.to_rfc3339(),
                p.reason.as_deref().unwrap_or("")
            )
        });
        (
            "resumed",
            format!("operator resume by uid {}{lifted}", m.by_uid),
        )
    };
    AuditRecord::new(m.at, PAUSE_AUDIT_OP, None, decision, reason, None)
}

fn write_marker(state_dir: &Path, m: &PauseMarker) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(m)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    replace_file(&OsIo, &pause_path(state_dir), &bytes)
}

/// Writes `marker`, then audits it here when no daemon holds the state lock. Returns
/// `Some(pid)` of the daemon that will audit it instead, when one runs.
fn write_and_audit(cfg: &Config, marker: &PauseMarker) -> Result<Option<Option<u32>>, String> {
    let dir = &cfg.state_dir;
    let held = match StateLock::try_acquire(dir) {
        Ok(lock) => Ok(lock),
        Err(StateLockError::Held { pid, .. }) => Err(pid),
        Err(e) => return Err(e.to_string()),
    };
    // The veto is durable first; the audit follows.
    write_marker(dir, marker).map_err(|e| {
        format!(
            "cannot write the pause marker {}: {e}",
            pause_path(dir).display()
        )
    })?;
    let lock = match held {
        Ok(lock) => lock,
        Err(pid) => return Ok(Some(pid)),
    };
    let audit = AuditLog::open_bounded(&dir.join("audit.log"), Arc::new(OsIo), cfg.audit.max_bytes)
        .and_then(|log| log.record(&audit_record(marker)));
    match audit {
        Ok(()) => {
            let done = PauseMarker {
                audited: true,
                ..marker.clone()
            };
            // Failing here only means the next daemon start audits it again.
            if let Err(e) = write_marker(dir, &done) {
                crate::warn!(
                    pause_marker_not_marked_audited,
                    "pause audited; marking the marker audited failed",
                    error = e
                );
            }
        }
        Err(e) => crate::warn!(
            pause_not_audited,
            "pause marker written; the audit log could not record it (the daemon will)",
            error = e
        ),
    }
    drop(lock);
    Ok(None)
}

/// `felhom-agent pause --reason TEXT`: 0 once the marker is durable.
pub(crate) fn pause(cfg: &Config, reason: &str, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    if let Err(why) = check_reason(reason) {
        let _ = writeln!(err, "felhom-agent: {why}");
        return EXIT_USAGE;
    }
    let marker = PauseMarker {
        paused: true,
        reason: Some(reason.to_owned()),
        by_uid: current_uid(),
        at: SystemClock.now(),
        audited: false,
        lifted: None,
    };
    finish(cfg, &marker, "paused", out, err)
}

/// `felhom-agent resume`: lifts the pause; 0 once durable (or when not paused).
pub(crate) fn resume(cfg: &Config, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let lifted = match read_pause(&cfg.state_dir) {
        PauseState::Running(_) => {
            let _ = writeln!(out, "not paused: nothing to resume");
            return EXIT_OK;
        }
        PauseState::Paused(p) => Some(LiftedPause {
            reason: p.reason,
            by_uid: p.by_uid,
            at: p.at,
        }),
        PauseState::Unreadable(_) => None,
    };
    let marker = PauseMarker {
        paused: false,
        reason: None,
        by_uid: current_uid(),
        at: SystemClock.now(),
        audited: false,
        lifted,
    };
    finish(cfg, &marker, "resumed", out, err)
}

fn finish(
    cfg: &Config,
    marker: &PauseMarker,
    word: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    if !cfg.state_dir.is_dir() {
        let _ = writeln!(
            err,
            "felhom-agent: state_dir {} is not a directory: no daemon has run here",
            cfg.state_dir.display()
        );
        return EXIT_FAILED;
    }
    match write_and_audit(cfg, marker) {
        Ok(daemon) => {
            crate::info!(
                operator_pause_written,
                "operator pause marker written",
                paused = marker.paused,
                uid = marker.by_uid
            );
            let _ = write!(out, "{word} ({})", pause_path(&cfg.state_dir).display());
            let _ = match daemon {
                Some(pid) => writeln!(
                    out,
                    ": the running daemon{} takes it at its next pass or signed op, and audits it",
                    pid.map(|p| format!(" (PID {p})")).unwrap_or_default()
                ),
                None => writeln!(out, ": audited; no daemon is running"),
            };
            EXIT_OK
        }
        Err(e) => {
            let _ = writeln!(err, "felhom-agent: {e}");
            EXIT_FAILED
        }
    }
}

/// The daemon's view of the marker: read fresh at every question, audited once.
#[derive(Debug)]
pub struct PauseWatch {
    state_dir: PathBuf,
    /// The last marker audited or found audited, to audit each one once.
    seen: Mutex<Option<PauseMarker>>,
}

impl PauseWatch {
    /// Watches the marker in `state_dir`.
    pub fn new(state_dir: &Path) -> PauseWatch {
        PauseWatch {
            state_dir: state_dir.to_path_buf(),
            seen: Mutex::new(None),
        }
    }

    /// What the marker says now.
    pub fn state(&self) -> PauseState {
        read_pause(&self.state_dir)
    }

    /// Audits (and logs) the marker if it changed since the last look and the command
    /// did not audit it already. An audit failure is left to the daemon's health check
    /// (a poisoned log stops it); the marker is looked at again next time.
    pub fn observe(&self, audit: &AuditLog) {
        let marker = match self.state() {
            PauseState::Paused(m) | PauseState::Running(Some(m)) => m,
            PauseState::Running(None) | PauseState::Unreadable(_) => return,
        };
        let mut seen = lock(&self.seen);
        if seen.as_ref() == Some(&marker) {
            return;
        }
        if marker.paused {
            crate::warn!(
                operator_paused,
                "an operator paused every mutation",
                uid = marker.by_uid,
                at = marker.at.to_rfc3339(),
                reason = marker.reason.as_deref().unwrap_or("")
            );
        } else {
            crate::info!(
                operator_resumed,
                "an operator lifted the pause",
                uid = marker.by_uid,
                at = marker.at.to_rfc3339()
            );
        }
        if !marker.audited
            && let Err(e) = audit.record(&audit_record(&marker))
        {
            crate::error!(pause_audit_failed, "pause not audited", error = e);
            return;
        }
        *seen = Some(marker);
    }
}

impl PauseSource for PauseWatch {
    fn paused(&self) -> Option<PauseReport> {
        match self.state() {
            PauseState::Running(_) => None,
            PauseState::Paused(m) => Some(PauseReport {
                reason: m.reason.unwrap_or_default(),
                since: Some(m.at),
                by_uid: Some(m.by_uid),
            }),
            PauseState::Unreadable(_) => Some(PauseReport {
                reason: "pause marker unreadable: held until an operator runs resume".into(),
                since: None,
                by_uid: None,
            }),
        }
    }
}

/// The hub's hold (`inner`) or the operator's pause: either holds every mutation.
pub struct PausedPacing {
    inner: Arc<dyn Pacing>,
    watch: Arc<PauseWatch>,
}

impl PausedPacing {
    /// `inner`'s pacing, held also while `watch` says paused.
    pub fn new(inner: Arc<dyn Pacing>, watch: Arc<PauseWatch>) -> PausedPacing {
        PausedPacing { inner, watch }
    }
}

impl Pacing for PausedPacing {
    fn interval(&self) -> Option<Duration> {
        self.inner.interval()
    }

    fn generation(&self) -> u64 {
        self.inner.generation()
    }

    fn held(&self) -> bool {
        self.inner.held() || self.watch.state().holds()
    }

    fn hold_reason(&self) -> Option<String> {
        match self.watch.state() {
            PauseState::Paused(m) => Some(format!(
                "paused by an operator (uid {}): {}; held, not verified and its nonce not used",
                m.by_uid,
                m.reason.as_deref().unwrap_or("")
            )),
            PauseState::Unreadable(_) => {
                Some("pause marker unreadable; held, not verified and its nonce not used".into())
            }
            PauseState::Running(_) => self.inner.hold_reason(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("felhom-pause-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reasons_are_checked_naming_the_byte_and_why() {
        assert!(check_reason("disk swap in rack 3").is_ok());
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("   ", "empty"),
            ("a\nb", "byte 1"),
            ("x\u{1b}[31m", "byte 1"),
        ];
        for (r, want) in cases {
            let e = check_reason(r).unwrap_err();
            assert!(e.contains(want), "{r:?}: {e}");
        }
        assert!(check_reason(&"x".repeat(MAX_REASON_BYTES + 1)).is_err());
    }

    #[test]
    fn the_marker_holds_when_paused_or_unreadable_and_not_otherwise() {
        let d = dir("state");
        assert_eq!(read_pause(&d), PauseState::Running(None));
        let m = PauseMarker {
            paused: true,
            reason: Some("r".into()),
            by_uid: 0,
            at: Timestamp(1_800_000_000),
            audited: false,
            lifted: None,
        };
        write_marker(&d, &m).unwrap();
        assert_eq!(read_pause(&d), PauseState::Paused(m.clone()));
        let lifted = PauseMarker {
            paused: false,
            reason: None,
            ..m
        };
        write_marker(&d, &lifted).unwrap();
        assert!(!read_pause(&d).holds());
        for bad in [&b"{"[..], b"{\"paused\":false,\"extra\":1}", &[b' '; 5000]] {
            std::fs::write(pause_path(&d), bad).unwrap();
            assert!(
                matches!(read_pause(&d), PauseState::Unreadable(_)),
                "{:?}",
                String::from_utf8_lossy(&bad[..bad.len().min(30)])
            );
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_resume_names_the_pause_it_lifted_in_its_audit_record() {
        let pause = PauseMarker {
            paused: true,
            reason: Some("kernel update".into()),
            by_uid: 1000,
            at: Timestamp(1_800_000_000),
            audited: false,
            lifted: None,
        };
        let resume = PauseMarker {
            paused: false,
            reason: None,
            by_uid: 0,
            at: Timestamp(1_800_000_001),
            audited: false,
            lifted: Some(LiftedPause {
                reason: pause.reason.clone(),
                by_uid: pause.by_uid,
                at: pause.at,
            }),
        };
        let record = serde_json::to_value(audit_record(&resume)).unwrap();
        let reason = record["reason"].as_str().unwrap();
        assert!(reason.starts_with("operator resume by uid 0, lifting the pause by uid 1000 of "));
        assert!(reason.ends_with(": kernel update"), "{reason}");
        // The marker round-trips, and one written without `lifted` still reads.
        let d = dir("lifted");
        write_marker(&d, &resume).unwrap();
        assert_eq!(read_pause(&d), PauseState::Running(Some(resume)));
        std::fs::write(
            pause_path(&d),
            br#"{"paused":false,"reason":null,"by_uid":0,"at":"2027-01-15T08:00:00Z"}"#,
        )
        .unwrap();
        assert!(matches!(read_pause(&d), PauseState::Running(Some(m)) if m.lifted.is_none()));
        let _ = std::fs::remove_dir_all(&d);
    }
}
