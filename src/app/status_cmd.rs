//! `felhom-agent status [--json]`: what the daemon is doing, read from the status file
//! it replaces atomically (`super::status`), the state lock's PID and `/proc`.
//!
//! Exit codes: 0 healthy; 1 degraded (each reason printed); 3 not running. "Running"
//! means: the state lock file names a PID, that process exists, the status file was
//! written by that PID, and it is fresh (written within three heartbeats). A daemon that
//! stopped leaves its PID in the lock file, but its status file then goes stale, and a
//! reused PID does not match the file's.
//!
//! This command takes no lock and never writes, renames or truncates anything: it only
//! reads two small files (each bounded) and `/proc`, so it is safe while the daemon runs.

use std::io::{Read, Write};
use std::path::Path;

use serde::Serialize;

use super::command::{EXIT_FAILED, EXIT_OK, visible, write_pretty_json};
use super::status::{STATUS_FILE, STATUS_FORMAT, StatusDoc};
use crate::base::time::{Clock, SystemClock, Timestamp};
use crate::config::Config;
use crate::hub::collect::PauseSource;
use crate::store::statelock::LOCK_FILE;

/// Exit code: the daemon is not running.
pub(crate) const EXIT_NOT_RUNNING: u8 = 3;
/// The largest status file read.
const MAX_STATUS_BYTES: u64 = 1 << 20;
/// The longest PID text read from the lock file.
const MAX_PID_BYTES: u64 = 32;
/// A status file older than this many heartbeats is stale.
const STALE_HEARTBEATS: i64 = 3;

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Health {
    /// Running, nothing wrong.
    Healthy,
    /// Running, with reasons.
    Degraded,
    /// Not running (or not answering).
    NotRunning,
}

/// What `status --json` prints.
#[derive(Debug, Serialize)]
struct Verdict<'a> {
    state: Health,
    reasons: Vec<String>,
    status: Option<&'a StatusDoc>,
}

/// Reads at most `cap` bytes of `path`; `None` when it does not exist.
fn read_bounded(path: &Path, cap: u64) -> Result<Option<Vec<u8>>, String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > cap {
        return Err(format!("{}: more than {cap} bytes", path.display()));
    }
    Ok(Some(bytes))
}

/// Why the daemon does not count as running, if it does not.
fn not_running(state_dir: &Path, doc: &StatusDoc, now: Timestamp) -> Option<String> {
    let lock = state_dir.join(LOCK_FILE);
    let pid: Option<u32> = read_bounded(&lock, MAX_PID_BYTES)
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| t.trim().parse().ok())
        .filter(|p| *p > 0);
    let Some(pid) = pid else {
        return Some(format!("no daemon holds {}", lock.display()));
    };
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return Some(format!("PID {pid} named in {} is gone", lock.display()));
    }
    if doc.pid != pid {
        return Some(format!(
            "the status file is from PID {}, the state lock names PID {pid}",
            doc.pid
        ));
    }
    let age = now.unix() - doc.written_at.unix();
    let limit = STALE_HEARTBEATS * i64::try_from(doc.heartbeat_seconds.max(1)).unwrap_or(30);
    if age > limit {
        return Some(format!(
            "the status file is {age} s old (written at least every {} s): the daemon is stuck",
            doc.heartbeat_seconds
        ));
    }
    None
}

/// Why a running daemon is degraded; empty when healthy.
pub(crate) fn degraded(doc: &StatusDoc) -> Vec<String> {
    let mut why = Vec::new();
    match &doc.last_report {
        None => why.push("no hub round has finished yet".to_owned()),
        Some(r) if !r.ok => why.push(format!(
            "the last hub report failed: {}",
            r.error.as_deref().unwrap_or("unknown error")
        )),
        Some(_) => {}
    }
    match &doc.last_pass {
        Some(p) if !p.ok => why.push(format!(
            "the last reconcile pass failed: {}",
            p.error.as_deref().unwrap_or("unknown error")
        )),
        Some(p) => {
            let failed = p
                .actions
                .iter()
                .filter(|a| a.outcome == "failed" || a.outcome == "unresolved")
                .count();
            if failed > 0 {
                why.push(format!("{failed} action(s) of the last pass failed"));
            }
        }
        None => why.push("no reconcile pass has finished yet".to_owned()),
    }
    if let Some(p) = &doc.hold.paused {
        why.push(format!(
            "paused by an operator{}: {}",
            p.by_uid.map(|u| format!(" (uid {u})")).unwrap_or_default(),
            p.reason
        ));
    }
    if doc.hold.blocked {
        why.push("the hub marks this host blocked".to_owned());
    }
    if doc.hold.rate_limited > 0 {
        why.push(format!(
            "{} disruptive action(s) held rate_limited (felhom-agent resume --rate-limit)",
            doc.hold.rate_limited
        ));
    }
    for d in &doc.damage {
        why.push(format!(
            "{} is damaged ({}); clear: {}",
            d.file, d.problem, d.clear
        ));
    }
    for w in &doc.signers.expiry_warnings {
        why.push(format!("signer: {w}"));
    }
    why.extend(failed_restore_tests(doc));
    why
}

/// The guests whose newest restore test failed: a backup that did not come back is a
/// degraded host.
fn failed_restore_tests(doc: &StatusDoc) -> Vec<String> {
    let Some(tests) = doc.restore_tests.as_ref() else {
        return Vec::new();
    };
    newest_per_guest(tests)
        .into_iter()
        .filter(|(_, r)| r.get("outcome").and_then(serde_json::Value::as_str) == Some("failed"))
        .map(|(vmid, r)| {
            let field = |k: &str| r.get(k).and_then(serde_json::Value::as_str).unwrap_or("?");
            format!(
                "restore test of guest {vmid} failed at stage {} (backup {}): {}",
                field("stage"),
                field("backup_volid"),
                field("detail")
            )
        })
        .collect()
}

fn print_human(out: &mut dyn Write, state: &Health, reasons: &[String], doc: Option<&StatusDoc>) {
    let word = match state {
        Health::Healthy => "healthy",
        Health::Degraded => "degraded",
        Health::NotRunning => "not running",
    };
    let _ = writeln!(out, "state: {word}");
    for r in reasons {
        let _ = writeln!(out, "  - {}", visible(r));
    }
    let Some(doc) = doc else { return };
    let _ = writeln!(
        out,
        "daemon: PID {}, version {}, host {}, up since {}, config {}",
        doc.pid,
        visible(&doc.version),
        visible(&doc.host_id),
        doc.up_since.to_rfc3339(),
        visible(&doc.config_path)
    );
    let _ = writeln!(out, "status written: {}", doc.written_at.to_rfc3339());
    match &doc.last_report {
        Some(r) if r.ok => {
            let _ = writeln!(
                out,
                "last report: {} ok, hub answered {}",
                r.at.to_rfc3339(),
                r.answer
                    .as_ref()
                    .map(|a| visible(&a.to_string()))
                    .unwrap_or_default()
            );
        }
        Some(r) => {
            let _ = writeln!(
                out,
                "last report: {} FAILED: {} (last success {})",
                r.at.to_rfc3339(),
                visible(r.error.as_deref().unwrap_or("")),
                r.last_success
                    .map_or("never".to_owned(), |t| t.to_rfc3339())
            );
        }
        None => {
            let _ = writeln!(out, "last report: none yet");
        }
    }
    match &doc.last_pass {
        Some(p) => {
            let _ = writeln!(
                out,
                "last pass: {} {}{}, {} action(s)",
                p.at.to_rfc3339(),
                if p.ok { "ok" } else { "FAILED" },
                p.generation
                    .map(|g| format!(" (generation {g})"))
                    .unwrap_or_default(),
                p.actions.len()
            );
            if let Some(e) = &p.error {
                let _ = writeln!(out, "  error: {}", visible(e));
            }
            for a in &p.actions {
                let _ = writeln!(
                    out,
                    "  {} {}: {}{}",
                    a.kind,
                    a.vmid,
                    a.outcome,
                    a.detail
                        .as_deref()
                        .map(|d| format!(" ({})", visible(d)))
                        .unwrap_or_default()
                );
            }
        }
        None => {
            let _ = writeln!(out, "last pass: none yet");
        }
    }
    let _ = writeln!(out, "ops in flight: {}", doc.ops_in_flight.len());
    for o in &doc.ops_in_flight {
        let _ = writeln!(
            out,
            "  {} {} guest {} {} since {}",
            visible(&o.op_id),
            visible(&o.op),
            o.vmid,
            o.state,
            o.since.to_rfc3339()
        );
    }
    let _ = writeln!(out, "pending signatures: {}", doc.pending_signatures.len());
    for p in &doc.pending_signatures {
        let _ = writeln!(
            out,
            "  {} guest {} since {}: {}",
            visible(&p.op),
            visible(p.guest_id.as_deref().unwrap_or("-")),
            p.at.to_rfc3339(),
            visible(&p.reason)
        );
    }
    let paused = doc.hold.paused.as_ref().map_or("no".to_owned(), |p| {
        format!(
            "yes, since {}: {}",
            p.since.map_or("?".to_owned(), |t| t.to_rfc3339()),
            visible(&p.reason)
        )
    });
    let _ = writeln!(
        out,
        "hold: paused {paused}; hub blocked {}; rate_limited {}",
        if doc.hold.blocked { "yes" } else { "no" },
        doc.hold.rate_limited
    );
    let _ = writeln!(
        out,
        "signers: {} configured{}",
        doc.signers.configured,
        doc.signers
            .policy_version
            .map(|v| format!(", policy version {v}"))
            .unwrap_or_default()
    );
    print_restore_tests(out, doc.restore_tests.as_ref());
}

/// The newest result of each guest in `status.json`'s `restore_tests.last` (oldest
/// first there), by vmid.
fn newest_per_guest(
    tests: &serde_json::Value,
) -> std::collections::BTreeMap<u64, &serde_json::Value> {
    let mut newest = std::collections::BTreeMap::new();
    let last = tests.get("last").and_then(serde_json::Value::as_array);
    for r in last.into_iter().flatten() {
        if let Some(vmid) = r.get("vmid").and_then(serde_json::Value::as_u64) {
            newest.insert(vmid, r);
        }
    }
    newest
}

/// `restore tests: last success T; running 9900`, then the newest test of each guest, one
/// line each: `guest 100: ok, backup VOLID, started T` or `… failed at stage S …: DETAIL`.
fn print_restore_tests(out: &mut dyn Write, tests: Option<&serde_json::Value>) {
    use serde_json::Value;
    let Some(tests) = tests else {
        let _ = writeln!(out, "restore tests: not configured");
        return;
    };
    let text = |v: &Value, k: &str| visible(v.get(k).and_then(Value::as_str).unwrap_or("?"));
    let running: Vec<String> = tests
        .get("running")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|r| match r.get("scratch_vmid").and_then(Value::as_u64) {
            Some(scratch) => format!("{} (guest {})", scratch, r["vmid"]),
            None => format!("guest {}", r["vmid"]),
        })
        .collect();
    let _ = writeln!(
        out,
        "restore tests: last success {}; running {}",
        tests
            .get("last_success")
            .and_then(Value::as_str)
            .map_or("never".to_owned(), visible),
        if running.is_empty() {
            "none".to_owned()
        } else {
            running.join(", ")
        }
    );
    for (vmid, r) in newest_per_guest(tests) {
        let outcome = text(r, "outcome");
        let stage = r
            .get("stage")
            .and_then(Value::as_str)
            .map(|s| format!(" at stage {}", visible(s)))
            .unwrap_or_default();
        let detail = r
            .get("detail")
            .and_then(Value::as_str)
            .map(|d| format!(": {}", visible(d)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  guest {vmid}: {outcome}{stage}, backup {}, started {}{detail}",
            text(r, "backup_volid"),
            text(r, "started_at"),
        );
    }
}

/// Runs `status`; returns the exit code.
pub(crate) fn status(
    cfg: &Config,
    _config_path: &Path,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let path = cfg.state_dir.join(STATUS_FILE);
    let doc = match read_bounded(&path, MAX_STATUS_BYTES) {
        Ok(Some(bytes)) => match serde_json::from_slice::<StatusDoc>(&bytes) {
            Ok(d) if d.format == STATUS_FORMAT => Ok(Some(d)),
            Ok(d) => Err(format!(
                "{}: format {} (this agent reads {STATUS_FORMAT})",
                path.display(),
                d.format
            )),
            Err(e) => Err(format!("{}: {e}", path.display())),
        },
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    let doc = match doc {
        // The pause marker is read live: a pause shows before the daemon's next write.
        Ok(d) => d.map(|mut d| {
            d.hold.paused = super::pause::PauseWatch::new(&cfg.state_dir).paused();
            d
        }),
        Err(e) => {
            let _ = writeln!(err, "felhom-agent: status file unreadable: {e}");
            return EXIT_FAILED;
        }
    };
    let (state, reasons) = match &doc {
        None => (
            Health::NotRunning,
            vec![format!(
                "no status file {}: no daemon has run with this state directory",
                path.display()
            )],
        ),
        Some(d) => match not_running(&cfg.state_dir, d, SystemClock.now()) {
            Some(why) => (Health::NotRunning, vec![why]),
            None => {
                let why = degraded(d);
                if why.is_empty() {
                    (Health::Healthy, why)
                } else {
                    (Health::Degraded, why)
                }
            }
        },
    };
    if json {
        let verdict = Verdict {
            state: state.clone(),
            reasons,
            status: doc.as_ref(),
        };
        if let Err(code) = write_pretty_json(out, err, &verdict) {
            return code;
        }
    } else {
        print_human(out, &state, &reasons, doc.as_ref());
    }
    match state {
        Health::Healthy => EXIT_OK,
        Health::Degraded => EXIT_FAILED,
        Health::NotRunning => EXIT_NOT_RUNNING,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::status::{HoldStatus, PassStatus, ReportStatus, SignersStatus};

    fn doc() -> StatusDoc {
        let t = Timestamp(1_800_000_000);
        StatusDoc {
            format: STATUS_FORMAT,
            pid: std::process::id(),
            version: "0.1.0".into(),
            host_id: "pve-a".into(),
            config_path: "/etc/felhom-agent/agent.json".into(),
            up_since: t,
            written_at: t,
            heartbeat_seconds: 30,
            last_report: Some(ReportStatus {
                at: t,
                ok: true,
                answer: None,
                error: None,
                last_success: Some(t),
            }),
            last_pass: Some(PassStatus {
                at: t,
                ok: true,
                generation: Some(1),
                actions: Vec::new(),
                error: None,
                last_success: Some(t),
            }),
            ops_in_flight: Vec::new(),
            pending_signatures: Vec::new(),
            hold: HoldStatus {
                blocked: false,
                paused: None,
                rate_limited: 0,
            },
            damage: Vec::new(),
            signers: SignersStatus {
                configured: 1,
                policy_version: None,
                expiry_warnings: Vec::new(),
            },
            restore_tests: None,
            guest_states: Default::default(),
        }
    }

    #[test]
    fn each_degradation_is_named() {
        assert!(degraded(&doc()).is_empty(), "healthy");
        let mut d = doc();
        d.last_report = None;
        d.hold.blocked = true;
        d.hold.rate_limited = 2;
        assert_eq!(degraded(&d).len(), 3, "{:?}", degraded(&d));
        let mut d = doc();
        if let Some(r) = d.last_report.as_mut() {
            r.ok = false;
            r.error = Some("hub unreachable".into());
        }
        assert!(degraded(&d)[0].contains("hub unreachable"));
    }

    #[test]
    fn a_guest_whose_newest_restore_test_failed_degrades_the_host() {
        let mut d = doc();
        let r = |vmid: u32, outcome: &str, stage: Option<&str>| {
            serde_json::json!({"vmid": vmid, "backup_volid": format!("local:backup/{vmid}"),
                "outcome": outcome, "stage": stage, "detail": "x"})
        };
        // Newest last: 100 failed, then passed; 101 passed, then failed at restore.
        d.restore_tests = Some(serde_json::json!({"last": [
            r(100, "failed", Some("boot_check")),
            r(101, "ok", None),
            r(100, "ok", None),
            r(101, "failed", Some("restore")),
        ], "running": []}));
        let why = degraded(&d);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(
            why[0].starts_with("restore test of guest 101 failed at stage restore"),
            "{why:?}"
        );
        d.restore_tests = Some(serde_json::json!({"last": [r(101, "ok", None)], "running": []}));
        assert!(degraded(&d).is_empty());
    }

    #[test]
    fn restore_tests_read_as_one_line_per_guest_never_as_json() {
        let mut out = Vec::new();
        print_restore_tests(&mut out, None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "restore tests: not configured\n"
        );
        let tests = serde_json::json!({
            "last": [
                {"vmid": 101, "backup_volid": "local:backup/a", "started_at": "2026-12-01T03:00:00Z",
                 "outcome": "ok", "stage": null, "detail": null},
                {"vmid": 100, "backup_volid": "local:backup/b", "started_at": "2026-12-02T03:00:00Z",
                 "outcome": "failed", "stage": "restore", "detail": "task failed:\u{1b}[31m x"},
                {"vmid": 101, "backup_volid": "local:backup/c", "started_at": "2026-12-03T03:00:00Z",
                 "outcome": "ok", "stage": null, "detail": null}
            ],
            "running": [{"vmid": 102, "scratch_vmid": 9900}],
            "last_success": "2026-12-03T03:00:05Z"
        });
        let mut out = Vec::new();
        print_restore_tests(&mut out, Some(&tests));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "restore tests: last success 2026-12-03T03:00:05Z; running 9900 (guest 102)",
                "  guest 100: failed at stage restore, backup local:backup/b, started \
                 2026-12-02T03:00:00Z: task failed:\\u{1b}[31m x",
                "  guest 101: ok, backup local:backup/c, started 2026-12-03T03:00:00Z",
            ]
        );
        assert!(!text.contains("\"vmid\""), "no JSON: {text}");
    }

    #[test]
    fn running_needs_the_lock_pid_alive_matching_and_a_fresh_file() {
        let dir = std::env::temp_dir().join(format!("felhom-status-cmd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = doc();
        let now = Timestamp(d.written_at.unix() + 10);
        assert!(not_running(&dir, &d, now).is_some(), "no lock file");
        std::fs::write(dir.join(LOCK_FILE), format!("{}\n", std::process::id())).unwrap();
        assert_eq!(not_running(&dir, &d, now), None);
        let stale = Timestamp(d.written_at.unix() + 91);
        assert!(not_running(&dir, &d, stale).unwrap().contains("stuck"));
        let other = StatusDoc { pid: 1, ..doc() };
        assert!(not_running(&dir, &other, now).unwrap().contains("PID 1"));
        std::fs::write(dir.join(LOCK_FILE), "4000000000\n").unwrap();
        assert!(not_running(&dir, &d, now).unwrap().contains("gone"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
