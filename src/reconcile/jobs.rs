//! Signed jobs: one operator-signed operation, from receipt to journaled outcome.
//!
//! This module owns the order of a signed job — dedupe by the op's nonce, the gate, the
//! journal around an injected [`DestructiveExecutor`], marking the nonce applied on
//! success — and runs the execution on the guest's queue lane. It never executes
//! anything the gate refused, never executes before the `started` record is durable,
//! and never marks an op applied that did not succeed.

use std::fmt;
use std::sync::Arc;

use crate::authz::OpBlob;
use crate::proxmox::{Client, Upid, WaitOptions};
use crate::reconcile::classify::{Intent, OpClass};
use crate::reconcile::gate::{Decision, Gate, Refusal, SignedOp};
use crate::reconcile::journal::{JournalError, JournalRecord, OpState};
use crate::reconcile::queue::{JobPanicked, Queue, QueueClosed};
use crate::shutdown::Shutdown;
use crate::time::{Clock, SystemClock};

/// Performs an authorized destructive op. Injected so the daemon decides what is wired
/// and tests can count executions.
pub trait DestructiveExecutor: Send + Sync {
    /// Executes `intent`. Call `on_task` with the task's UPID as soon as Proxmox accepted
    /// it (before waiting), so a crash mid-task leaves the UPID in the journal; if it
    /// fails, stop and return the error. `Err` is a sentence saying what failed.
    fn execute(
        &self,
        intent: &Intent,
        on_task: &mut dyn FnMut(&str) -> Result<(), JournalError>,
    ) -> Result<(), String>;
}

/// How a signed job ended (a refusal is an outcome, not an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// The op's nonce was already applied: nothing done, success.
    Skipped,
    /// The gate refused it; nothing executed, nothing journaled.
    Refused(Refusal),
    /// Executed and succeeded; the nonce is marked applied.
    Executed {
        /// The journal's op id.
        op_id: String,
    },
    /// Authorized but no executor is wired: journaled as failed, not applied.
    NotExecuted {
        /// The journal's op id.
        op_id: String,
    },
    /// Executed and failed; journaled, not applied.
    Failed {
        /// The journal's op id.
        op_id: String,
        /// What the executor said.
        detail: String,
    },
}

/// Why a signed job could not be carried through (distinct from a refusal).
#[derive(Debug)]
#[non_exhaustive]
pub enum JobError {
    /// A journal append failed (fatal: the caller exits non-zero; nothing ran after).
    Journal(JournalError),
    /// The queue was closed before the job was submitted; nothing ran.
    Queue(QueueClosed),
    /// The job panicked on its lane; the journal says how far it got.
    Panicked(JobPanicked),
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Journal(e) => write!(f, "signed job: {e}"),
            JobError::Queue(e) => write!(f, "signed job not queued: {e}"),
            JobError::Panicked(e) => write!(f, "signed job: {e}"),
        }
    }
}

impl std::error::Error for JobError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JobError::Journal(e) => Some(e),
            JobError::Queue(e) => Some(e),
            JobError::Panicked(e) => Some(e),
        }
    }
}

/// Runs signed jobs through one gate and one queue.
pub struct SignedJobs {
    gate: Arc<Gate>,
    queue: Arc<Queue>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for SignedJobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedJobs")
            .field("gate", &self.gate)
            .finish()
    }
}

impl SignedJobs {
    /// Signed jobs through `gate`, executed on `queue` (the one every mutation uses).
    pub fn new(gate: Arc<Gate>, queue: Arc<Queue>) -> SignedJobs {
        SignedJobs {
            gate,
            queue,
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses `clock` for journal timestamps.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> SignedJobs {
        self.clock = clock;
        self
    }

    /// Runs one signed job: dedupe by nonce, gate, then journal and execute on the
    /// guest's lane. `executor: None` → authorized but not executed (journaled failed).
    pub fn run_signed_job(
        &self,
        intent: &Intent,
        signed: &SignedOp,
        executor: Option<Arc<dyn DestructiveExecutor>>,
    ) -> Result<JobOutcome, JobError> {
        let journal = self.gate.journal().clone();
        // The nonce is read without trusting the blob: a hit only skips work, and a key
        // is marked applied only after a verified op succeeded.
        if let Ok(blob) = OpBlob::parse(&signed.blob)
            && journal.already_applied(&blob.nonce)
        {
            crate::info!(
                "signed op already applied; skipped",
                op = intent.class,
                guest = intent.guest_id.as_deref().unwrap_or("-")
            );
            return Ok(JobOutcome::Skipped);
        }
        let verified = match self.gate.authorize(intent, Some(signed)) {
            Decision::Refused { reason } => return Ok(JobOutcome::Refused(reason)),
            Decision::Allowed { verified, .. } => verified,
        };
        let vmid = intent.vmid().unwrap_or(0);
        let mut rec = JournalRecord::started(
            journal.new_op_id(&format!("{}-{vmid}", intent.class)),
            vmid,
            intent.class.clone(),
            self.clock.now(),
        );
        rec.params = intent.params.clone();
        if let Some(v) = &verified {
            rec.idempotency_key = Some(v.nonce.clone());
            rec.expires_at = Some(v.expires_at);
        }
        let clock = self.clock.clone();
        let intent = intent.clone();
        let job = move || -> Result<JobOutcome, JournalError> {
            journal.append(&rec)?;
            crate::faultpoint::reached("signed:after-started");
            let op_id = rec.op_id.clone();
            let Some(exec) = executor else {
                let mut done = rec.step(OpState::Failed, clock.now());
                done.detail = Some("authorized but not executed: no executor is wired".into());
                journal.append(&done)?;
                crate::warn!(
                    "signed op authorized but not executed: no executor",
                    op_id = op_id
                );
                return Ok(JobOutcome::NotExecuted { op_id });
            };
            let mut upid: Option<String> = None;
            let res = exec.execute(&intent, &mut |u: &str| {
                let mut running = rec.step(OpState::TaskRunning, clock.now());
                running.upid = Some(u.to_string());
                journal.append(&running)?;
                crate::faultpoint::reached("signed:after-upid");
                upid = Some(u.to_string());
                Ok(())
            });
            crate::faultpoint::reached("signed:after-wait");
            let mut done = rec.step(
                if res.is_ok() {
                    OpState::Succeeded
                } else {
                    OpState::Failed
                },
                clock.now(),
            );
            done.upid = upid;
            match res {
                Ok(()) => {
                    journal.append(&done)?;
                    crate::info!("signed op executed", op_id = op_id);
                    Ok(JobOutcome::Executed { op_id })
                }
                Err(detail) => {
                    done.detail = Some(detail.clone());
                    journal.append(&done)?;
                    crate::warn!("signed op failed", op_id = op_id, detail = detail);
                    Ok(JobOutcome::Failed { op_id, detail })
                }
            }
        };
        let handle = self.queue.submit(vmid, job).map_err(JobError::Queue)?;
        handle
            .wait()
            .map_err(JobError::Panicked)?
            .map_err(JobError::Journal)
    }
}

/// Executes `guest_destroy` through the Proxmox API (`purge` param `1` → purge) and
/// waits for the task. Every other class is refused by this executor.
pub struct ProxmoxExecutor {
    client: Arc<Client>,
    wait: WaitOptions,
    shutdown: Shutdown,
}

impl fmt::Debug for ProxmoxExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxmoxExecutor").finish()
    }
}

impl ProxmoxExecutor {
    /// An executor on `client`, waiting tasks with `wait` until `shutdown`.
    pub fn new(client: Arc<Client>, wait: WaitOptions, shutdown: Shutdown) -> ProxmoxExecutor {
        ProxmoxExecutor {
            client,
            wait,
            shutdown,
        }
    }
}

impl DestructiveExecutor for ProxmoxExecutor {
    fn execute(
        &self,
        intent: &Intent,
        on_task: &mut dyn FnMut(&str) -> Result<(), JournalError>,
    ) -> Result<(), String> {
        if intent.class != OpClass::GuestDestroy {
            return Err(format!("no executor for {}", intent.class));
        }
        let vmid = intent
            .vmid()
            .ok_or_else(|| "guest_destroy needs a numeric guest_id".to_string())?;
        let purge = intent.params.get("purge").map(String::as_str) == Some("1");
        let upid: Upid = self
            .client
            .destroy(vmid, purge, false)
            .map_err(|e| format!("destroy {vmid}: {e}"))?;
        crate::faultpoint::reached("signed:after-post");
        on_task(upid.as_str()).map_err(|e| format!("journal: {e}"))?;
        self.client
            .wait_task(&upid, &self.wait, &self.shutdown)
            .map(|_| ())
            .map_err(|e| format!("destroy {vmid}: {e}"))
    }
}
