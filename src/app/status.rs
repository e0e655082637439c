//! The daemon's status file, `state_dir/status.json` ([`StatusDoc`]), for
//! `felhom-agent status` and for people.
//!
//! The daemon keeps one [`StatusBoard`] and replaces the file atomically (temp file,
//! fsync, rename, directory fsync) after every hub round ([`StatusRound`]), after every
//! reconcile pass ([`PassObserver`]) and at least every [`HEARTBEAT`] from its watch
//! loop, so a reader can tell a live daemon from a stale file by `written_at`. Each write
//! reads the live parts (ops in flight, pending signatures, holds, damage) from the
//! journal, the audit log, the nonce store, the shared envelope and the pause marker.
//!
//! The file holds no secret: errors are the ones the logs carry (bearer key and token
//! redacted by their clients), audit entries are already capped and blob-free. This
//! module never changes what it reads, never talks to Proxmox or the hub itself, and a
//! failed write is logged and never stops the daemon (the file is a report, not state
//! anything acts on).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::notify::Notifier;
use super::pause::PauseWatch;
use crate::authz::{FileNonceStore, SignerSet, expiry_warnings};
use crate::base::sync::lock;
use crate::base::time::{Clock, SystemClock, Timestamp};
use crate::hub::collect::PauseSource;
use crate::hub::envelope::ControlEnvelope;
use crate::hub::poller::{Reporter, SharedEnvelope};
use crate::hub::report::PauseReport;
use crate::reconcile::action::Outcome;
use crate::reconcile::audit::AuditLog;
use crate::reconcile::engine::{EngineError, PassObserver, PassReport};
use crate::reconcile::journal::Journal;
use crate::reconcile::restore_results::{
    RestoreTestResult, RestoreTestsState, TestOutcome, read_results,
};
use crate::store::{OsIo, replace_file};

/// The status file's name inside the state directory.
pub(crate) const STATUS_FILE: &str = "status.json";
/// The document's format; a reader refuses another.
pub(crate) const STATUS_FORMAT: u32 = 1;
/// The longest gap between two writes while the daemon runs.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(30);
/// At most this many actions of the last pass are listed.
const MAX_ACTIONS: usize = 64;
/// At most this many pending signatures and ops in flight are listed.
const MAX_LISTED: usize = 64;
/// The longest error text kept, in bytes.
const MAX_ERROR_BYTES: usize = 512;

/// What `status.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDoc {
    /// The document format, 1; a reader refuses another.
    pub format: u32,
    /// The daemon's PID.
    pub pid: u32,
    /// The agent's version.
    pub version: String,
    /// The config's `host_id`.
    pub host_id: String,
    /// The config file the daemon was started with.
    pub config_path: String,
    /// When the daemon started.
    #[serde(with = "crate::base::time::rfc3339")]
    pub up_since: Timestamp,
    /// When this document was written.
    #[serde(with = "crate::base::time::rfc3339")]
    pub written_at: Timestamp,
    /// The longest gap between two writes, in seconds: an older `written_at` means
    /// the daemon is gone or stuck.
    pub heartbeat_seconds: u64,
    /// The last hub round, if any ran.
    pub last_report: Option<ReportStatus>,
    /// The last reconcile pass, if any ran.
    pub last_pass: Option<PassStatus>,
    /// Ops the journal shows started and not finished.
    pub ops_in_flight: Vec<InFlightStatus>,
    /// Operations held for a signature, oldest first.
    pub pending_signatures: Vec<PendingStatus>,
    /// What holds mutations now.
    pub hold: HoldStatus,
    /// Damaged durable files, each with the step that clears it.
    pub damage: Vec<DamageStatus>,
    /// The signer policy.
    pub signers: SignersStatus,
    /// The last restore tests, where configured (`null`: none configured).
    pub restore_tests: Option<serde_json::Value>,
    /// Guests Proxmox listed at the last pass, by run state.
    #[serde(default)]
    pub guest_states: std::collections::BTreeMap<String, usize>,
}

/// The last hub round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportStatus {
    /// When it ended.
    #[serde(with = "crate::base::time::rfc3339")]
    pub at: Timestamp,
    /// Whether the hub took the report.
    pub ok: bool,
    /// The hub's answer as the agent understood it (on success).
    pub answer: Option<serde_json::Value>,
    /// Why it failed (on failure).
    pub error: Option<String>,
    /// When a round last succeeded.
    #[serde(with = "crate::base::time::opt_rfc3339")]
    pub last_success: Option<Timestamp>,
}

/// The last reconcile pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassStatus {
    /// When it ended.
    #[serde(with = "crate::base::time::rfc3339")]
    pub at: Timestamp,
    /// Whether it ran to the end (its actions may still have failed).
    pub ok: bool,
    /// The desired state's generation, when the pass read one.
    pub generation: Option<u64>,
    /// Each planned action and how it ended, at most 64.
    pub actions: Vec<ActionStatus>,
    /// Why the pass failed.
    pub error: Option<String>,
    /// When a pass last ran to the end.
    #[serde(with = "crate::base::time::opt_rfc3339")]
    pub last_success: Option<Timestamp>,
}

/// One action of the last pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionStatus {
    /// The guest.
    pub vmid: u32,
    /// `set_config`, `start`, `stop`.
    pub kind: String,
    /// `applied`, `refused`, `deferred`, `rate_limited`, `failed`, `unresolved`.
    pub outcome: String,
    /// The refusal code, why it was deferred, or what failed.
    pub detail: Option<String>,
}

/// An op in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlightStatus {
    /// The journal's op id.
    pub op_id: String,
    /// The guest.
    pub vmid: u32,
    /// The op class.
    pub op: String,
    /// Its last step (`started`, `task_running`).
    pub state: String,
    /// When that step was recorded.
    #[serde(with = "crate::base::time::rfc3339")]
    pub since: Timestamp,
}

/// An operation held for a signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingStatus {
    /// The op class.
    pub op: String,
    /// The guest, if any.
    pub guest_id: Option<String>,
    /// When the gate held it.
    #[serde(with = "crate::base::time::rfc3339")]
    pub at: Timestamp,
    /// The gate's reason.
    pub reason: String,
}

/// What holds mutations now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldStatus {
    /// The hub marks the host `blocked`.
    pub blocked: bool,
    /// An operator's pause.
    pub paused: Option<PauseReport>,
    /// Disruptive actions the blast-radius limit held in the last pass.
    pub rate_limited: usize,
}

/// A damaged durable file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamageStatus {
    /// The file.
    pub file: String,
    /// What is wrong (line number and why).
    pub problem: String,
    /// The step that clears it.
    pub clear: String,
}

/// The signer policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignersStatus {
    /// Signers configured (0: benign changes only).
    pub configured: usize,
    /// The held policy version, where signer rotation keeps one.
    pub policy_version: Option<u64>,
    /// Signers close to or past their expiry.
    pub expiry_warnings: Vec<String>,
}

/// What the board reads the live parts from, once the reconciler is open.
struct Sources {
    journal: Arc<Journal>,
    audit: Arc<AuditLog>,
    nonces: Option<Arc<FileNonceStore>>,
    /// The gate's live signer set (version, expiry), when signers are configured.
    signers: Option<Arc<SignerSet>>,
    /// The state directory whose `restore-tests.json` holds the results, when restore
    /// tests are configured.
    restore_tests: Option<PathBuf>,
}

/// How many restore-test results `status` shows (the newest).
const RESTORE_TESTS_SHOWN: usize = 8;

/// The daemon's status: updated by the workers, written to `status.json`.
pub struct StatusBoard {
    path: PathBuf,
    doc: Mutex<StatusDoc>,
    sources: Mutex<Option<Sources>>,
    envelope: Mutex<Option<SharedEnvelope>>,
    pause: Arc<PauseWatch>,
    last_write: Mutex<Option<Instant>>,
    notifier: Mutex<Option<Arc<Notifier>>>,
    listener: Mutex<Option<Arc<dyn StatusListener>>>,
}

/// Told what the board learns and each document it writes (the metrics textfile).
pub(crate) trait StatusListener: Send + Sync {
    /// A hub round ended.
    fn round_done(&self, ok: bool);
    /// A reconcile pass ended.
    fn pass_done(&self, result: &Result<PassReport, EngineError>);
    /// The status file was written with `doc`.
    fn written(&self, doc: &StatusDoc);
}

impl std::fmt::Debug for StatusBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusBoard")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Cuts `text` to [`MAX_ERROR_BYTES`] on a character boundary.
fn capped(text: String) -> String {
    if text.len() <= MAX_ERROR_BYTES {
        return text;
    }
    let mut end = MAX_ERROR_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn action_status(r: &crate::reconcile::action::ActionResult) -> ActionStatus {
    let (outcome, detail) = match &r.outcome {
        Outcome::Applied => ("applied", None),
        Outcome::Refused { code } => ("refused", Some(code.clone())),
        Outcome::Deferred { why } => ("deferred", Some(why.clone())),
        Outcome::RateLimited { limit, in_window } => (
            "rate_limited",
            Some(format!("{in_window} disruptive this hour, limit {limit}")),
        ),
        Outcome::Failed { error, .. } => ("failed", Some(error.clone())),
        Outcome::Unresolved { why, .. } => ("unresolved", Some(why.clone())),
    };
    ActionStatus {
        vmid: r.action.vmid,
        kind: r.action.kind.as_str().to_owned(),
        outcome: outcome.to_owned(),
        detail: detail.map(capped),
    }
}

impl StatusBoard {
    /// A board for a daemon started now from `config_path`, writing in `state_dir`.
    pub fn new(
        state_dir: &Path,
        host_id: &str,
        config_path: &Path,
        signers: usize,
        pause: Arc<PauseWatch>,
    ) -> StatusBoard {
        let now = SystemClock.now();
        StatusBoard {
            path: state_dir.join(STATUS_FILE),
            doc: Mutex::new(StatusDoc {
                format: STATUS_FORMAT,
                pid: std::process::id(),
                version: crate::base::version::VERSION.to_owned(),
                host_id: host_id.to_owned(),
                config_path: config_path.display().to_string(),
                up_since: now,
                written_at: now,
                heartbeat_seconds: HEARTBEAT.as_secs(),
                last_report: None,
                last_pass: None,
                ops_in_flight: Vec::new(),
                pending_signatures: Vec::new(),
                hold: HoldStatus {
                    blocked: false,
                    paused: None,
                    rate_limited: 0,
                },
                damage: Vec::new(),
                signers: SignersStatus {
                    configured: signers,
                    policy_version: None,
                    expiry_warnings: Vec::new(),
                },
                restore_tests: None,
                guest_states: std::collections::BTreeMap::new(),
            }),
            sources: Mutex::new(None),
            envelope: Mutex::new(None),
            pause,
            last_write: Mutex::new(None),
            notifier: Mutex::new(None),
            listener: Mutex::new(None),
        }
    }

    /// Sends systemd a `STATUS=` line whenever the summary changes.
    pub(crate) fn with_notifier(&self, notifier: Arc<Notifier>) {
        *lock(&self.notifier) = Some(notifier);
    }

    /// Tells `listener` every round, pass and write (the metrics textfile).
    pub(crate) fn with_listener(&self, listener: Arc<dyn StatusListener>) {
        *lock(&self.listener) = Some(listener);
    }

    /// The one-line summary systemd shows (`systemctl status`).
    pub fn summary(&self) -> String {
        summary(&lock(&self.doc))
    }

    /// Reads the hub's hold from `envelope`.
    pub fn with_envelope(&self, envelope: SharedEnvelope) {
        *lock(&self.envelope) = Some(envelope);
    }

    /// Reads ops in flight, pending signatures and damage from the reconciler's files.
    pub fn bind(
        &self,
        journal: Arc<Journal>,
        audit: Arc<AuditLog>,
        nonces: Option<Arc<FileNonceStore>>,
        signers: Option<Arc<SignerSet>>,
        restore_tests: Option<PathBuf>,
    ) {
        *lock(&self.sources) = Some(Sources {
            journal,
            audit,
            nonces,
            signers,
            restore_tests,
        });
    }

    /// The document as it stands (live parts as of the last write).
    pub fn snapshot(&self) -> StatusDoc {
        lock(&self.doc).clone()
    }

    /// Records a hub round and writes the file.
    pub fn report_done(&self, result: Result<&ControlEnvelope, String>) {
        let at = SystemClock.now();
        if let Some(l) = lock(&self.listener).as_ref() {
            l.round_done(result.is_ok());
        }
        {
            let mut doc = lock(&self.doc);
            let before = doc.last_report.as_ref().and_then(|r| r.last_success);
            doc.last_report = Some(match result {
                Ok(e) => ReportStatus {
                    at,
                    ok: true,
                    answer: Some(e.to_json()),
                    error: None,
                    last_success: Some(at),
                },
                Err(why) => ReportStatus {
                    at,
                    ok: false,
                    answer: None,
                    error: Some(capped(why)),
                    last_success: before,
                },
            });
        }
        self.write();
    }

    /// Writes the file if the last write is 30 s old or more.
    pub fn heartbeat(&self) {
        let due = lock(&self.last_write).is_none_or(|t| t.elapsed() >= HEARTBEAT);
        if due {
            self.write();
        }
    }

    /// Refreshes the live parts and replaces the file. A failure is logged only.
    pub fn write(&self) {
        let mut doc = lock(&self.doc);
        self.refresh(&mut doc);
        doc.written_at = SystemClock.now();
        let bytes = match serde_json::to_vec_pretty(&*doc) {
            Ok(b) => b,
            Err(e) => {
                crate::warn!(status_not_written, "status file not written", error = e);
                return;
            }
        };
        // Written under the document's lock: one writer of the temp file at a time.
        if let Err(e) = replace_file(&OsIo, &self.path, &bytes) {
            crate::warn!(
                status_not_written,
                "status file not written",
                file = self.path.display(),
                error = e
            );
            return;
        }
        *lock(&self.last_write) = Some(Instant::now());
        if let Some(l) = lock(&self.listener).as_ref() {
            l.written(&doc);
        }
        let line = summary(&doc);
        drop(doc);
        if let Some(n) = lock(&self.notifier).as_ref() {
            n.status(&line);
        }
    }

    fn refresh(&self, doc: &mut StatusDoc) {
        doc.hold.blocked = lock(&self.envelope)
            .as_ref()
            .and_then(SharedEnvelope::get)
            .is_some_and(|e| e.blocked);
        doc.hold.paused = self.pause.paused();
        let sources = lock(&self.sources);
        let Some(src) = sources.as_ref() else {
            return;
        };
        doc.ops_in_flight = src
            .journal
            .in_flight()
            .into_iter()
            .take(MAX_LISTED)
            .map(|r| InFlightStatus {
                op_id: r.op_id,
                vmid: r.vmid,
                op: r.class.as_str().to_owned(),
                state: r.state.as_str().to_owned(),
                since: r.at,
            })
            .collect();
        doc.pending_signatures = src
            .audit
            .pending()
            .into_iter()
            .take(MAX_LISTED)
            .map(|e| PendingStatus {
                op: e.op,
                guest_id: e.guest_id,
                at: e.at,
                reason: e.reason,
            })
            .collect();
        let mut damage = Vec::new();
        if let Some(problem) = src.journal.damaged() {
            damage.push(DamageStatus {
                file: "journal.log".into(),
                problem: capped(problem),
                clear: "felhom-agent state acknowledge-damage journal.log".into(),
            });
        }
        if let Some(why) = src.nonces.as_ref().and_then(|n| n.unavailable()) {
            damage.push(DamageStatus {
                file: "nonces.log".into(),
                problem: capped(why),
                clear: "felhom-agent state acknowledge-damage nonces.log".into(),
            });
        }
        doc.damage = damage;
        if let Some(set) = &src.signers {
            let policy = set.policy();
            doc.signers.policy_version = Some(policy.version);
            doc.signers.expiry_warnings = expiry_warnings(&policy, SystemClock.now())
                .iter()
                .map(ToString::to_string)
                .collect();
        }
        if let Some(dir) = &src.restore_tests {
            doc.restore_tests = Some(restore_tests_status(&read_results(dir)));
        }
    }
}

/// The newest restore-test results and the ones running, as `status` shows them:
/// `{"last": [...], "running": [...], "last_success": RFC 3339 or null}`, each result as
/// the report carries it.
fn restore_tests_status(state: &RestoreTestsState) -> serde_json::Value {
    let skip = state.results.len().saturating_sub(RESTORE_TESTS_SHOWN);
    let last: Vec<&RestoreTestResult> = state.results.iter().skip(skip).collect();
    // When a restore test last passed (its end), for the metrics' last-success gauge.
    let last_success = state
        .results
        .iter()
        .filter(|r| r.outcome == TestOutcome::Ok)
        .map(|r| {
            let secs = i64::try_from(r.duration_seconds).unwrap_or(i64::MAX);
            Timestamp(r.started_at.0.saturating_add(secs))
        })
        .max()
        .map(Timestamp::to_rfc3339);
    serde_json::json!({ "last": last, "running": state.running, "last_success": last_success })
}

/// `running; report ok; pass ok (2 actions); 0 in flight; 1 pending signature(s)`.
fn summary(doc: &StatusDoc) -> String {
    let hold = match (&doc.hold.paused, doc.hold.blocked) {
        (Some(p), _) => format!("paused: {}", p.reason),
        (None, true) => "blocked by the hub".to_owned(),
        (None, false) => "running".to_owned(),
    };
    let report = match &doc.last_report {
        Some(r) if r.ok => "report ok",
        Some(_) => "report failing",
        None => "no report yet",
    };
    let pass = match &doc.last_pass {
        Some(p) if p.ok => format!("pass ok ({} actions)", p.actions.len()),
        Some(_) => "pass failing".to_owned(),
        None => "no pass yet".to_owned(),
    };
    format!(
        "{hold}; {report}; {pass}; {} in flight; {} pending signature(s)",
        doc.ops_in_flight.len(),
        doc.pending_signatures.len()
    )
}

impl PassObserver for StatusBoard {
    fn pass_done(&self, result: &Result<PassReport, EngineError>) {
        let at = SystemClock.now();
        if let Some(l) = lock(&self.listener).as_ref() {
            l.pass_done(result);
        }
        {
            let mut doc = lock(&self.doc);
            let before = doc.last_pass.as_ref().and_then(|p| p.last_success);
            let status = match result {
                Ok(r) => {
                    doc.hold.rate_limited = r.rate_limited();
                    doc.guest_states = r
                        .guest_states
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), *v))
                        .collect();
                    PassStatus {
                        at,
                        ok: true,
                        generation: Some(r.generation),
                        actions: r
                            .results
                            .iter()
                            .take(MAX_ACTIONS)
                            .map(action_status)
                            .collect(),
                        error: None,
                        last_success: Some(at),
                    }
                }
                Err(e) => PassStatus {
                    at,
                    ok: false,
                    generation: None,
                    actions: Vec::new(),
                    error: Some(capped(e.to_string())),
                    last_success: before,
                },
            };
            doc.last_pass = Some(status);
        }
        self.write();
    }
}

/// A hub round that tells the board how it went.
pub(crate) struct StatusRound<R> {
    inner: R,
    board: Arc<StatusBoard>,
}

impl<R> StatusRound<R> {
    /// `inner`, reporting each round to `board`.
    pub(crate) fn new(inner: R, board: Arc<StatusBoard>) -> StatusRound<R> {
        StatusRound { inner, board }
    }
}

impl<R: Reporter> Reporter for StatusRound<R> {
    type Error = R::Error;

    fn round(&mut self) -> Result<ControlEnvelope, R::Error> {
        let result = self.inner.round();
        self.board
            .report_done(result.as_ref().map_err(ToString::to_string));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(vmid: u32, at: i64, secs: u64, outcome: TestOutcome) -> RestoreTestResult {
        RestoreTestResult {
            vmid,
            backup_volid: format!("local:backup/vzdump-lxc-{vmid}.tar.zst"),
            scratch_vmid: Some(9900),
            started_at: Timestamp(at),
            duration_seconds: secs,
            outcome,
            stage: None,
            detail: None,
            size_bytes: None,
        }
    }

    #[test]
    fn restore_tests_show_the_newest_and_when_one_last_passed() {
        let mut state = RestoreTestsState::default();
        for i in 0..10 {
            state.results.push(result(
                100 + i,
                1_800_000_000 + i64::from(i) * 100,
                7,
                TestOutcome::Ok,
            ));
        }
        state
            .results
            .push(result(200, 1_800_005_000, 3, TestOutcome::Failed));
        let v = restore_tests_status(&state);
        let last = v["last"].as_array().unwrap();
        assert_eq!(last.len(), RESTORE_TESTS_SHOWN);
        assert_eq!(last.last().unwrap()["vmid"], 200, "newest last");
        // The last pass is guest 109's, ending 7 s after its start; the failure later
        // does not count.
        assert_eq!(
            v["last_success"],
            Timestamp(1_800_000_900 + 7).to_rfc3339().as_str()
        );
        assert!(restore_tests_status(&RestoreTestsState::default())["last_success"].is_null());
    }
}
