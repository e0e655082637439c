//! One planned action on its guest's lane: the op class and intent it stands for, and
//! its journaled lifecycle — `started` durable before the request is sent, the UPID
//! journaled (`task_running`) before the wait, the terminal record last.
//!
//! A job never decides whether it may run (the engine asked the gate first) and never
//! runs outside the queue.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::classify::{Intent, OpClass};
use super::journal::{Journal, JournalError, JournalRecord, OpState};
use super::plan::{Action, ActionKind};
use super::provision::Settled;
use crate::base::shutdown::Shutdown;
use crate::base::sync::lock;
use crate::base::time::Clock;
use crate::proxmox::{Client, ConfigChange, TaskOutcome, Upid, WaitError, WaitOptions};

/// What a stop's wait allows beyond its shutdown timeout: Proxmox kills the guest at the
/// timeout, and the kill, the worker's exit and the next poll take a few seconds more.
pub(crate) const SHUTDOWN_WAIT_SLACK: Duration = Duration::from_secs(30);

/// Why a sent action failed, as journaled and logged.
struct Failure {
    transient: bool,
    /// The request may have reached Proxmox (its answer was lost).
    may_have_run: bool,
    error: String,
}

/// How one action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied (task OK, task with warnings, or a synchronous config write).
    Applied,
    /// The gate refused it; nothing was sent.
    Refused {
        /// The refusal code (`pending_signature`, ...).
        code: String,
    },
    /// Not sent: the guest is backing off after earlier failures, an op for it is
    /// still in flight, an earlier action for it failed in this pass, or the hub asked
    /// to hold mutations.
    Deferred {
        /// Why.
        why: String,
    },
    /// Not sent: a disruptive action (a stop, or a config write that lowers cores or
    /// memory) beyond `reconcile.max_disruptive_per_hour`. It stays held until the
    /// rolling hour allows it or an operator runs `felhom-agent resume --rate-limit`.
    RateLimited {
        /// The limit per rolling hour.
        limit: u32,
        /// Disruptive actions applied or in flight in the window, this pass's included.
        in_window: usize,
    },
    /// Sent (or tried) and failed.
    Failed {
        /// Whether it should pass by itself (lock, timeout, 5xx).
        transient: bool,
        /// What failed.
        error: String,
    },
    /// Sent, but the wait ended (timeout, shutdown) before the task did: the op stays
    /// in flight in the journal. The next pass waits for the same task again (after a
    /// shutdown, Recover does at the next start); it is never sent twice.
    Unresolved {
        /// The task.
        upid: String,
        /// Why the wait ended.
        why: String,
    },
}

/// One action of a pass and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionResult {
    /// The action.
    pub action: Action,
    /// Its journal op id, when it got that far.
    pub op_id: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
}

/// A journal write failed while an action ran: the engine stops the pass with
/// `EngineError::Journal` and the process exits non-zero.
#[derive(Debug)]
pub struct ActionJournalError {
    /// The op whose step could not be recorded.
    pub op_id: String,
    /// What failed.
    pub source: JournalError,
}

/// The op class of a planned action.
pub(crate) fn class_of(kind: ActionKind) -> OpClass {
    match kind {
        ActionKind::SetConfig => OpClass::SetConfig,
        ActionKind::Resize => OpClass::Resize,
        ActionKind::Start => OpClass::Start,
        ActionKind::Stop => OpClass::Stop,
        ActionKind::Create => OpClass::GuestCreate,
    }
}

/// The gate's vocabulary for a planned action.
pub(crate) fn intent_for(host_id: &str, action: &Action) -> Intent {
    let mut intent = Intent::new(
        class_of(action.kind),
        host_id,
        Some(action.vmid.to_string()),
    );
    intent.params = action.params.clone();
    intent
}

/// A task this engine dispatched whose wait ended before the task did.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) action: Action,
    pub(super) running: JournalRecord,
    pub(super) upid: Upid,
}

/// One action as it runs on its guest's lane.
pub(super) struct Job {
    pub(super) client: Client,
    pub(super) journal: Arc<Journal>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) shutdown: Shutdown,
    pub(super) wait: WaitOptions,
    pub(super) shutdown_timeout_seconds: u32,
    pub(super) failed_this_pass: Arc<Mutex<HashSet<u32>>>,
    pub(super) unresolved: Arc<Mutex<Vec<Pending>>>,
    pub(super) action: Action,
    /// Counted by the blast-radius limit: its journal records say so.
    pub(super) disruptive: bool,
}

/// The journal params of a stop, as sent to `status/shutdown`: Recover reads `timeout`
/// to look for a `vzshutdown` task (a stop journaled without it was a `vzstop`).
pub fn shutdown_params(timeout_seconds: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("timeout".to_owned(), timeout_seconds.to_string()),
        ("forceStop".to_owned(), "1".to_owned()),
    ])
}

impl Job {
    /// What the op sends, as journaled: the action's params, and for a stop the
    /// shutdown's `timeout` and `forceStop`.
    fn sent_params(&self) -> BTreeMap<String, String> {
        let mut params = self.action.params.clone();
        if self.action.kind == ActionKind::Stop {
            params.extend(shutdown_params(self.shutdown_timeout_seconds));
        }
        params
    }

    /// How long to wait for the op's task: a shutdown may take its whole timeout (the
    /// guest ignoring it until Proxmox kills it), so its wait covers that; a wait that
    /// still ends first leaves the op in flight, waited again by the next pass.
    fn wait_options(&self) -> WaitOptions {
        let mut wait = self.wait;
        if self.action.kind == ActionKind::Stop {
            let shutdown = Duration::from_secs(u64::from(self.shutdown_timeout_seconds));
            wait.timeout = wait.timeout.max(shutdown + SHUTDOWN_WAIT_SLACK);
        }
        wait
    }

    fn record(&self, rec: &JournalRecord) -> Result<(), ActionJournalError> {
        self.journal
            .append(rec)
            .map_err(|source| ActionJournalError {
                op_id: rec.op_id.clone(),
                source,
            })
    }

    fn result(&self, op_id: Option<String>, outcome: Outcome) -> ActionResult {
        if !matches!(outcome, Outcome::Applied) {
            lock(&self.failed_this_pass).insert(self.action.vmid);
        }
        ActionResult {
            action: self.action.clone(),
            op_id,
            outcome,
        }
    }

    /// Journals the op's terminal record and says how it ended: applied, or failed
    /// with `failure` (its detail is the journaled one).
    fn end(
        &self,
        op_id: &str,
        mut rec: JournalRecord,
        failure: Option<Failure>,
    ) -> Result<ActionResult, ActionJournalError> {
        if let Some(f) = &failure {
            rec.detail = Some(f.error.clone());
        }
        self.record(&rec)?;
        let a = &self.action;
        if a.kind == ActionKind::Create {
            let settled = match &failure {
                None => Settled::Succeeded,
                Some(f) if rec.upid.is_some() || f.may_have_run => Settled::TaskFailed,
                Some(_) => Settled::NeverSent,
            };
            super::provision::settle(
                &self.journal,
                &self.client,
                a.vmid,
                op_id,
                settled,
                self.clock.now(),
            )
            .map_err(|source| ActionJournalError {
                op_id: op_id.to_owned(),
                source,
            })?;
        }
        let outcome = match failure {
            None => {
                crate::info!(
                    action_applied,
                    "reconcile action applied",
                    op_id = op_id,
                    vmid = a.vmid,
                    action = a.kind,
                    reason = a.reason
                );
                Outcome::Applied
            }
            Some(f) => {
                crate::warn!(
                    action_failed,
                    "reconcile action failed",
                    op_id = op_id,
                    vmid = a.vmid,
                    action = a.kind,
                    transient = f.transient,
                    may_have_run = f.may_have_run,
                    error = f.error
                );
                Outcome::Failed {
                    transient: f.transient,
                    error: f.error,
                }
            }
        };
        Ok(self.result(Some(op_id.to_owned()), outcome))
    }

    pub(super) fn run(self) -> Result<ActionResult, ActionJournalError> {
        let a = &self.action;
        if lock(&self.failed_this_pass).contains(&a.vmid) {
            return Ok(ActionResult {
                action: a.clone(),
                op_id: None,
                outcome: Outcome::Deferred {
                    why: "an earlier action for this guest failed in this pass".into(),
                },
            });
        }
        let class = class_of(a.kind);
        let op_id = self.journal.new_op_id(&format!("{}-{}", a.kind, a.vmid));
        let mut started = JournalRecord::started(&op_id, a.vmid, class, self.clock.now());
        started.params = self.sent_params();
        started.disruptive = self.disruptive;
        // Durable before anything reaches Proxmox.
        self.record(&started)?;
        crate::store::faultpoint::reached("benign:after-started");

        let sent = match a.kind {
            ActionKind::SetConfig => self.client.set_config(
                a.vmid,
                &ConfigChange {
                    set: a
                        .params
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    delete: Vec::new(),
                    digest: a.digest.clone(),
                },
            ),
            ActionKind::Resize => {
                let bytes = a
                    .params
                    .get("size")
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                self.client.resize_rootfs(a.vmid, bytes).map(Some)
            }
            ActionKind::Start => self.client.start(a.vmid).map(Some),
            // A clean shutdown, hard-stopped by Proxmox once the timeout passes.
            ActionKind::Stop => self
                .client
                .shutdown(a.vmid, Some(self.shutdown_timeout_seconds))
                .map(Some),
            ActionKind::Create => {
                // The agent's provenance (the transaction is this op) is durable before
                // the create can reach Proxmox.
                self.journal
                    .record_guest_created(a.vmid, &op_id, self.clock.now())
                    .map_err(|source| ActionJournalError {
                        op_id: op_id.clone(),
                        source,
                    })?;
                crate::store::faultpoint::reached("provision:after-provenance");
                super::provision::request(a)
                    .and_then(|r| self.client.create_lxc(&r))
                    .map(Some)
            }
        };
        let upid = match sent {
            Ok(upid) => {
                crate::store::faultpoint::reached("benign:after-post");
                upid
            }
            Err(e) => {
                let ended = Failure {
                    transient: e.is_transient(),
                    may_have_run: e.outcome_unknown(),
                    error: e.to_string(),
                };
                let rec = started.step(OpState::Failed, self.clock.now());
                return self.end(&op_id, rec, Some(ended));
            }
        };
        let Some(upid) = upid else {
            // A synchronous config write: applied when the PUT answered.
            let rec = started.step(OpState::Succeeded, self.clock.now());
            return self.end(&op_id, rec, None);
        };
        let mut running = started.step(OpState::TaskRunning, self.clock.now());
        running.upid = Some(upid.to_string());
        // The UPID is durable before the wait, so a crash mid-wait re-attaches to it.
        self.record(&running)?;
        crate::store::faultpoint::reached("benign:after-upid");
        self.finish(&op_id, &running, &upid)
    }

    pub(super) fn finish(
        &self,
        op_id: &str,
        running: &JournalRecord,
        upid: &Upid,
    ) -> Result<ActionResult, ActionJournalError> {
        let a = &self.action;
        match self
            .client
            .wait_task(upid, &self.wait_options(), &self.shutdown)
        {
            Ok(outcome) => {
                crate::store::faultpoint::reached("benign:after-wait");
                let mut rec = running.step(OpState::Succeeded, self.clock.now());
                if let TaskOutcome::Warnings { count, .. } = outcome {
                    rec.detail = Some(format!("task ended with {count} warning(s)"));
                }
                self.end(op_id, rec, None)
            }
            Err(WaitError::Failed(task)) => {
                let ended = Failure {
                    transient: task.is_transient(),
                    may_have_run: false,
                    error: task.to_string(),
                };
                let rec = running.step(OpState::Failed, self.clock.now());
                self.end(op_id, rec, Some(ended))
            }
            Err(e) => {
                // Timeout, shutdown or an unreadable status: the task may still run.
                // Leave the op in flight; it is re-attached, never re-sent.
                crate::warn!(
                    action_wait_abandoned,
                    "stopped waiting for a reconcile task; it stays in flight",
                    op_id = op_id,
                    vmid = a.vmid,
                    upid = upid,
                    error = e
                );
                let outcome = Outcome::Unresolved {
                    upid: upid.to_string(),
                    why: e.to_string(),
                };
                if !matches!(e, WaitError::Shutdown { .. }) {
                    lock(&self.unresolved).push(Pending {
                        action: a.clone(),
                        running: running.clone(),
                        upid: upid.clone(),
                    });
                }
                Ok(self.result(Some(op_id.to_owned()), outcome))
            }
        }
    }
}
