//! Pause points and injected fsync failures for the crash and storage-fault tests.
//!
//! The lifecycle code calls [`reached`] at the spots a crash test wants to kill the real
//! process at (after `started` is durable, after the Proxmox POST, after the UPID is
//! journaled, after the task ended, mid-compaction, mid-Recover). Without the cargo
//! feature `fault-points` — the default, and always in the shipped release build —
//! every function here is an inline no-op and the environment is never read.
//!
//! The points, by name:
//!
//! | point | where |
//! |---|---|
//! | `benign:after-started`, `signed:after-started` | the op's `started` record is durable; nothing sent yet |
//! | `benign:after-post`, `signed:after-post` | Proxmox accepted the request; its UPID is not journaled yet |
//! | `benign:after-upid`, `signed:after-upid` | the `task_running` record with the UPID is durable |
//! | `benign:after-wait`, `signed:after-wait` | the task ended; the terminal record is not written yet |
//! | `journal:compact-before-rename`, `nonces:compact-before-rename` | a compaction's temp file is written and fsync'd; the rename has not happened |
//! | `audit:rotate-before-rename` | a rotation's new file is written and fsync'd as `audit.log.rotate.tmp`; `audit.log` is not renamed yet |
//! | `audit:rotate-between-renames` | `audit.log` is durably renamed to `audit.log.1`; the new file is not in place yet |
//! | `recover:after-found` | Recover found the task of an op that had no UPID and journaled it |
//! | `restore:after-stop` | a `restore_overwrite`'s stop step succeeded and is journaled; the restore's `started` is not written yet |
//! | `provision:after-provenance` | a create's `started` and its `created_by_agent` provenance are durable; nothing sent yet (the create then passes the `benign:*` points) |
//! | `rotation:after-rename` | a signer rotation's `signers.json` is renamed into place and the directory fsync'd; the live set not swapped yet, the step not journaled as ended |
//!
//! With the feature, and only when the test's environment asks for it:
//! * [`PAUSE_AT_ENV`] equal to a point's name: the process writes that name to the file
//!   named by [`PAUSE_MARKER_ENV`] (written and fsync'd) and then sleeps forever on the
//!   calling thread, so the parent test can SIGKILL it at exactly that point;
//! * [`FAIL_SYNC_AT_ENV`] = `N` or `N:forever`: every [`crate::store::Store`] of the
//!   process runs on one shared [`crate::store::FaultyIo`], so the process's N-th
//!   fsync fails (once, or that one and every later one);
//! * [`JOURNAL_COMPACT_AT_ENV`] = `N`: the journal is compacted (at start and by the
//!   running worker) once it holds more than `N` records, instead of [`crate::reconcile::journal::COMPACT_OVER`];
//! * [`SECOND_MS_ENV`] = `N`: one second of the daemon's poll schedule lasts `N`
//!   milliseconds, so process tests (and the soak) see several hub rounds, 60 schedule
//!   seconds apart, without waiting minutes.
//!
//! The variables are named `FELHOM_FAULT_*`, not `FELHOM_AGENT_*`: the configuration
//! rejects every unknown `FELHOM_AGENT_*` variable, and these are not configuration.
//!
//! This module never changes what the agent does when no variable is set, and it is the
//! one place outside `store` that writes a file: the marker, which is test plumbing and
//! holds no state of the agent's.

use std::path::Path;
#[cfg(feature = "fault-points")]
use std::sync::Arc;

#[cfg(feature = "fault-points")]
use super::file_io::Io;

/// The point to pause at (feature `fault-points` only).
pub const PAUSE_AT_ENV: &str = "FELHOM_FAULT_PAUSE_AT";
/// The file the paused process writes the point's name to (feature `fault-points` only).
pub const PAUSE_MARKER_ENV: &str = "FELHOM_FAULT_PAUSE_MARKER";
/// `N` or `N:forever`: fail the process's N-th fsync (feature `fault-points` only).
pub const FAIL_SYNC_AT_ENV: &str = "FELHOM_FAULT_FAIL_SYNC_AT";
/// The journal's record count above which it is compacted, at start and while running
/// (feature `fault-points` only).
pub const JOURNAL_COMPACT_AT_ENV: &str = "FELHOM_FAULT_JOURNAL_COMPACT_AT";

/// The `pct` the restore tests' boot check runs instead of `/usr/sbin/pct` (feature
/// `fault-points` only): a stand-in script for process tests and the simulator.
pub const PCT_ENV: &str = "FELHOM_FAULT_PCT";

/// `N` > 0: one second of the poll schedule lasts `N` ms (feature `fault-points` only).
pub const SECOND_MS_ENV: &str = "FELHOM_FAULT_SECOND_MS";

/// Marks `point` as reached: pauses the process there for good when the test asked for
/// it. A no-op without the feature.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub(crate) fn reached(_point: &str) {}

/// Marks `point` as reached: pauses the process there for good when the test asked for
/// it (see the module doc).
#[cfg(feature = "fault-points")]
pub(crate) fn reached(point: &str) {
    let Some((want, marker)) = pause_target() else {
        return;
    };
    if want != point {
        return;
    }
    crate::warn!(
        fault_point_paused,
        "fault point reached: pausing for good",
        point = point
    );
    if let Some(marker) = marker
        && let Err(e) = write_marker(marker, point)
    {
        crate::error!(
            fault_marker_write_failed,
            "fault point marker could not be written",
            path = marker.display(),
            error = e
        );
    }
    loop {
        std::thread::park();
    }
}

/// [`reached`] for the point `"{store}:{what}"`, where `{store}` is the store file's
/// name without its extension (`journal`, `nonces`, `audit`). A no-op without the
/// feature.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub(crate) fn reached_in(_store: &Path, _what: &str) {}

/// [`reached`] for the point `"{store}:{what}"`, where `{store}` is the store file's
/// name without its extension (`journal`, `nonces`, `audit`).
#[cfg(feature = "fault-points")]
pub(crate) fn reached_in(store: &Path, what: &str) {
    if pause_target().is_none() {
        return;
    }
    let stem = store
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    reached(&format!("{stem}:{what}"));
}

/// The `pct` program: `default`. Without the feature there is no override.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub(crate) fn pct_program(default: std::path::PathBuf) -> std::path::PathBuf {
    default
}

/// The `pct` program: the absolute path in [`PCT_ENV`] when set, else `default`.
#[cfg(feature = "fault-points")]
pub(crate) fn pct_program(default: std::path::PathBuf) -> std::path::PathBuf {
    match std::env::var_os(PCT_ENV).map(std::path::PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        _ => default,
    }
}

/// The journal's compaction threshold at start: `default`, or the test's override.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub(crate) fn journal_compact_at(default: u64) -> u64 {
    default
}

/// The journal's compaction threshold at start: `default`, or the value of
/// [`JOURNAL_COMPACT_AT_ENV`] when it is set and a number.
#[cfg(feature = "fault-points")]
pub(crate) fn journal_compact_at(default: u64) -> u64 {
    match std::env::var(JOURNAL_COMPACT_AT_ENV) {
        Ok(v) => match v.parse() {
            Ok(n) => n,
            Err(_) => {
                crate::error!(
                    fault_env_invalid,
                    "ignoring an unparsable journal compaction threshold",
                    var = JOURNAL_COMPACT_AT_ENV,
                    value = v
                );
                default
            }
        },
        Err(_) => default,
    }
}

/// How long one second of the poll schedule lasts: `second`. A no-op without the
/// feature.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub(crate) fn schedule_second(second: std::time::Duration) -> std::time::Duration {
    second
}

/// How long one second of the poll schedule lasts: `second`, or [`SECOND_MS_ENV`]
/// milliseconds when it is set to a whole number above 0.
#[cfg(feature = "fault-points")]
pub(crate) fn schedule_second(second: std::time::Duration) -> std::time::Duration {
    let Ok(v) = std::env::var(SECOND_MS_ENV) else {
        return second;
    };
    match v.parse::<u64>() {
        Ok(ms) if ms > 0 => std::time::Duration::from_millis(ms),
        _ => {
            crate::error!(
                fault_env_invalid,
                "ignoring an unparsable schedule second (want milliseconds above 0)",
                var = SECOND_MS_ENV,
                value = v
            );
            second
        }
    }
}

/// The [`Io`] a store opens with: `io`, or the process-wide faulty one when
/// [`FAIL_SYNC_AT_ENV`] is set (it then replaces `io`: the binary only ever uses the
/// real file system, which the faulty one wraps).
#[cfg(feature = "fault-points")]
pub(crate) fn store_io(io: Arc<dyn Io>) -> Arc<dyn Io> {
    use std::sync::OnceLock;

    use super::file_io::{FaultOp, FaultyIo};
    static FAULTY: OnceLock<Option<Arc<FaultyIo>>> = OnceLock::new();
    let faulty = FAULTY.get_or_init(|| {
        let v = std::env::var(FAIL_SYNC_AT_ENV).ok()?;
        match parse_fail_at(&v) {
            Some((at, for_good)) => {
                crate::warn!(
                    fault_sync_armed,
                    "fault injection: an fsync of this process will fail",
                    at = at,
                    for_good = for_good
                );
                Some(Arc::new(FaultyIo::new(FaultOp::Sync, at, for_good)))
            }
            None => {
                crate::error!(
                    fault_env_invalid,
                    "ignoring an unparsable fsync fault (want N or N:forever)",
                    var = FAIL_SYNC_AT_ENV,
                    value = v
                );
                None
            }
        }
    });
    match faulty {
        Some(f) => Arc::clone(f) as Arc<dyn Io>,
        None => io,
    }
}

/// `N` → `(N, false)`, `N:forever` → `(N, true)`; `N` must be at least 1.
#[cfg(feature = "fault-points")]
fn parse_fail_at(v: &str) -> Option<(u64, bool)> {
    let (n, for_good) = match v.split_once(':') {
        Some((n, "forever")) => (n, true),
        Some(_) => return None,
        None => (v, false),
    };
    n.parse().ok().filter(|n| *n >= 1).map(|n| (n, for_good))
}

#[cfg(feature = "fault-points")]
fn pause_target() -> Option<&'static (String, Option<std::path::PathBuf>)> {
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(String, Option<std::path::PathBuf>)>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let point = std::env::var(PAUSE_AT_ENV).ok().filter(|p| !p.is_empty())?;
            let marker = std::env::var_os(PAUSE_MARKER_ENV).map(std::path::PathBuf::from);
            Some((point, marker))
        })
        .as_ref()
}

#[cfg(feature = "fault-points")]
fn write_marker(path: &Path, point: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path)?;
    f.write_all(point.as_bytes())?;
    f.sync_all()
}

#[cfg(all(test, feature = "fault-points"))]
mod tests {
    use super::*;

    #[test]
    fn fail_at_values_parse_or_are_refused() {
        assert_eq!(parse_fail_at("3"), Some((3, false)));
        assert_eq!(parse_fail_at("7:forever"), Some((7, true)));
        assert_eq!(parse_fail_at("0"), None);
        assert_eq!(parse_fail_at("3:sometimes"), None);
        assert_eq!(parse_fail_at("x"), None);
    }
}
