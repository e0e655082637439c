//! Recover: at startup, before any mutation, resolve every op the journal left in
//! flight (the agent stopped or crashed mid-operation).
//!
//! This module owns that resolution: an op with a UPID is judged by its task (waiting
//! while it still runs); an op without one is looked up in the node's task list by vmid,
//! task type and start time before it is declared failed — except a config change,
//! which Proxmox usually applies synchronously without a task: that one is judged by
//! the guest's config as it is now. It only reads Proxmox and
//! appends to the journal: it never dispatches, and so never re-executes anything — a
//! destructive op needs a fresh signature to run again.

use std::fmt;

use std::collections::BTreeMap;

use crate::base::shutdown::Shutdown;
use crate::base::time::Clock;
use crate::proxmox::{Client, GuestConfig, TaskFilter, TaskSource, Upid, WaitError, WaitOptions};
use crate::reconcile::classify::OpClass;
use crate::reconcile::journal::{Journal, JournalError, JournalRecord, OpState};
use crate::reconcile::normalize::Normalizers;

/// How far before an op's `started` record its task may claim to have started (the
/// journal and Proxmox read the same host clock; this absorbs second rounding).
const START_SLACK_SECS: i64 = 5;

/// What Recover did with each in-flight op.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoverReport {
    /// Ops whose task ended successfully (now journaled `succeeded`).
    pub succeeded: Vec<String>,
    /// Ops whose task failed, that never reached Proxmox, or (a config change without
    /// a task) whose values the guest's config does not show (now journaled `failed`).
    pub failed: Vec<String>,
    /// Ops left in flight, with why (the wait timed out, shutdown, Proxmox unreadable).
    pub unresolved: Vec<(String, String)>,
}

/// Why Recover stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum RecoverError {
    /// A journal append failed (fatal: exit non-zero, the restart recovers again).
    Journal(JournalError),
}

impl fmt::Display for RecoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoverError::Journal(e) => write!(f, "recover: {e}"),
        }
    }
}

impl std::error::Error for RecoverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecoverError::Journal(e) => Some(e),
        }
    }
}

impl From<JournalError> for RecoverError {
    fn from(e: JournalError) -> Self {
        RecoverError::Journal(e)
    }
}

/// The Proxmox task type an op of `class` runs as, when it runs as a task. A stop is
/// `vzstop` here; see [`task_type_of`] for a journaled op, whose stop may have been sent
/// as a shutdown.
pub(crate) fn task_type(class: &OpClass) -> Option<&'static str> {
    match class {
        OpClass::Start => Some("vzstart"),
        OpClass::Stop => Some("vzstop"),
        OpClass::SetConfig => Some("vzconfig"),
        OpClass::Resize => Some("resize"),
        OpClass::GuestDestroy => Some("vzdestroy"),
        OpClass::RestoreOverwrite | OpClass::ScratchRestore => Some("vzrestore"),
        OpClass::SnapshotRollback => Some("vzrollback"),
        OpClass::BackupDelete => Some("imgdel"),
        _ => None,
    }
}

/// The Proxmox task type the journaled op ran as. A stop journaled with a `timeout`
/// param was sent as `status/shutdown` (`vzshutdown`); one without it predates that and
/// was a hard `status/stop` (`vzstop`), so an old journal still resolves.
pub(crate) fn task_type_of(rec: &JournalRecord) -> Option<&'static str> {
    match rec.class {
        OpClass::Stop if rec.params.contains_key("timeout") => Some("vzshutdown"),
        OpClass::GuestCreate if rec.params.get("source").map(String::as_str) == Some("backup") => {
            Some("vzrestore")
        }
        OpClass::GuestCreate => Some("vzcreate"),
        ref class => task_type(class),
    }
}

/// Resolves every in-flight op in `journal` against `client`.
pub fn recover(
    journal: &Journal,
    client: &Client,
    wait: &WaitOptions,
    shutdown: &Shutdown,
    clock: &dyn Clock,
) -> Result<RecoverReport, RecoverError> {
    let mut report = RecoverReport::default();
    for rec in journal.in_flight() {
        let upid = match rec.upid.as_deref().map(Upid::parse) {
            Some(Ok(u)) => Some(u),
            Some(Err(e)) => {
                finish(
                    journal,
                    &rec,
                    OpState::Failed,
                    format!("journaled UPID unreadable: {e}"),
                    clock,
                    &mut report,
                )?;
                continue;
            }
            None => match find_task(client, &rec) {
                Ok(Some(u)) => {
                    let mut running = rec.step(OpState::TaskRunning, clock.now());
                    running.upid = Some(u.as_str().to_string());
                    running.detail = Some("task found in the node's task list".into());
                    journal.append(&running)?;
                    crate::store::faultpoint::reached("recover:after-found");
                    Some(u)
                }
                Ok(None) => None,
                Err(why) => {
                    crate::warn!(
                        recover_task_list_unreadable,
                        "recover: task list unreadable",
                        op_id = rec.op_id,
                        error = why
                    );
                    report.unresolved.push((rec.op_id.clone(), why));
                    continue;
                }
            },
        };
        let Some(upid) = upid else {
            let (state, detail) = if rec.class == OpClass::SetConfig {
                judge_sync_config(client, &rec)
            } else {
                (
                    OpState::Failed,
                    "no task found: the op never reached Proxmox; not re-executed".into(),
                )
            };
            finish(journal, &rec, state, detail, clock, &mut report)?;
            continue;
        };
        let mut rec = rec;
        rec.upid = Some(upid.as_str().to_string());
        match client.wait_task(&upid, wait, shutdown) {
            Ok(_) => finish(
                journal,
                &rec,
                OpState::Succeeded,
                "recovered: task ended OK".into(),
                clock,
                &mut report,
            )?,
            Err(WaitError::Failed(e)) => finish(
                journal,
                &rec,
                OpState::Failed,
                format!("recovered: task failed: {}", e.exitstatus),
                clock,
                &mut report,
            )?,
            Err(e) => {
                crate::warn!(
                    recover_op_unresolved,
                    "recover: op left in flight",
                    op_id = rec.op_id,
                    error = e
                );
                report.unresolved.push((rec.op_id.clone(), e.to_string()));
            }
        }
    }
    settle_creates(journal, client, clock, &report)?;
    Ok(report)
}

/// Settles the provenance of every create Recover resolved (see
/// `super::provision::settle`): one with a task is judged by it, one without never
/// reached Proxmox.
fn settle_creates(
    journal: &Journal,
    client: &Client,
    clock: &dyn Clock,
    report: &RecoverReport,
) -> Result<(), RecoverError> {
    use crate::reconcile::provision::{Settled, settle};
    let resolved = report
        .succeeded
        .iter()
        .map(|id| (id, true))
        .chain(report.failed.iter().map(|id| (id, false)));
    for (op_id, ok) in resolved {
        let Some(rec) = journal.latest(op_id) else {
            continue;
        };
        if rec.class != OpClass::GuestCreate {
            continue;
        }
        let settled = match (ok, rec.upid.is_some()) {
            (true, _) => Settled::Succeeded,
            (false, true) => Settled::TaskFailed,
            (false, false) => Settled::NeverSent,
        };
        settle(journal, client, rec.vmid, op_id, settled, clock.now())?;
    }
    Ok(())
}

fn finish(
    journal: &Journal,
    rec: &JournalRecord,
    state: OpState,
    detail: String,
    clock: &dyn Clock,
    report: &mut RecoverReport,
) -> Result<(), RecoverError> {
    let mut done = rec.step(state, clock.now());
    done.detail = Some(detail.clone());
    journal.append(&done)?;
    crate::info!(
        recover_op_resolved,
        "recover: op resolved",
        op_id = rec.op_id,
        state = state.as_str(),
        detail = detail
    );
    match state {
        OpState::Succeeded => report.succeeded.push(rec.op_id.clone()),
        _ => report.failed.push(rec.op_id.clone()),
    }
    Ok(())
}

/// A config change with neither a UPID nor a task: Proxmox applies most config writes
/// synchronously and leaves no task, so whether the PUT landed can only be read from the
/// guest's config now. Its values all there → succeeded; otherwise (or unreadable) →
/// failed with the outcome called unknown. Never re-sent: the next pass re-plans from the
/// config it reads.
fn judge_sync_config(client: &Client, rec: &JournalRecord) -> (OpState, String) {
    const UNKNOWN: &str = "outcome unknown: a synchronous config change leaves no task";
    const REPLAN: &str = "not re-sent; the next pass re-plans from the guest's config";
    if rec.params.is_empty() {
        return (
            OpState::Failed,
            format!("{UNKNOWN} and the journal holds no params to compare; {REPLAN}"),
        );
    }
    match client.guest_config(rec.vmid) {
        Ok(cfg) => match first_difference(&cfg, &rec.params) {
            None => (
                OpState::Succeeded,
                "recovered: no task (a synchronous config change leaves none), and the \
                 guest's config has every value the op set"
                    .into(),
            ),
            Some(key) => (
                OpState::Failed,
                format!("{UNKNOWN}, and the guest's {key} is not the op's value; {REPLAN}"),
            ),
        },
        Err(e) => (
            OpState::Failed,
            format!("{UNKNOWN}, and the guest's config is unreadable ({e}); {REPLAN}"),
        ),
    }
}

/// The first key in `params` whose value the guest's config does not have.
fn first_difference<'a>(
    cfg: &GuestConfig,
    params: &'a BTreeMap<String, String>,
) -> Option<&'a str> {
    let norm = Normalizers::default();
    params
        .iter()
        .find(|(key, want)| {
            let have: Option<String> = match key.as_str() {
                "cores" => cfg.cores.map(|v| v.to_string()),
                "memory" => cfg.memory_mib.map(|v| v.to_string()),
                "swap" => cfg.swap_mib.map(|v| v.to_string()),
                "description" => cfg.description.clone(),
                "hostname" => cfg.hostname.clone(),
                other => cfg.other.get(other).map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    v => v.to_string(),
                }),
            };
            // An absent key never matches, even a value that normalizes to empty.
            have.is_none_or(|have| !norm.equal(key, want, Some(&have)))
        })
        .map(|(key, _)| key.as_str())
}

/// The id Proxmox gives the op's task: the vmid, except a volume deletion's `imgdel`,
/// whose id is `VMID@STORAGE` (pve-storage's `Content.pm`).
fn task_id_of(rec: &JournalRecord) -> String {
    let storage = rec
        .params
        .get("volid")
        .and_then(|v| v.split_once(':'))
        .map(|(s, _)| s);
    match (&rec.class, storage) {
        (OpClass::BackupDelete, Some(storage)) => format!("{}@{storage}", rec.vmid),
        _ => rec.vmid.to_string(),
    }
}

/// The earliest task of the op's type on its guest that started no earlier than the op.
fn find_task(client: &Client, rec: &JournalRecord) -> Result<Option<Upid>, String> {
    let Some(kind) = task_type_of(rec) else {
        return Ok(None);
    };
    let id = task_id_of(rec);
    let since = rec.at.unix().saturating_sub(START_SLACK_SECS).max(0);
    let filter = TaskFilter {
        // Proxmox filters `vmid` on the task id, which an `imgdel` does not equal.
        vmid: (id == rec.vmid.to_string()).then_some(rec.vmid),
        task_type: Some(kind.to_string()),
        since: u64::try_from(since).ok(),
        source: TaskSource::All,
        ..TaskFilter::default()
    };
    let tasks = client.list_tasks(&filter).map_err(|e| e.to_string())?;
    Ok(tasks
        .into_iter()
        .filter(|t| {
            t.task_type == kind
                && t.id == id
                && i64::try_from(t.starttime).is_ok_and(|s| s >= since)
        })
        .min_by_key(|t| t.starttime)
        .map(|t| t.upid))
}
