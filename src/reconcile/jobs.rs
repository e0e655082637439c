//! Signed jobs: one operator-signed operation, from receipt to journaled outcome.
//!
//! This module owns the order of a signed job — dedupe by the op's nonce, then, on the
//! guest's queue lane and so serialized with every other mutation of that guest: read
//! the guest as it is now, the gate (signature, role, binding, the guest's digest and
//! protection, and only then the nonce), clearing `protection` as a journaled step of
//! its own when the signed params ask for it, and the journal around an injected
//! [`DestructiveExecutor`], marking the nonce applied on success. It never executes
//! anything the gate refused, never executes before the `started` record is durable,
//! and never marks an op applied that did not succeed.

use std::fmt;
use std::sync::Arc;

use crate::authz::OpBlob;
use crate::base::time::{Clock, SystemClock};
use crate::reconcile::audit::AuditDelivery;
use crate::reconcile::classify::{Intent, OpClass};
use crate::reconcile::gate::{Decision, Gate, GuestNow, Refusal, SignedOp};
use crate::reconcile::journal::{Journal, JournalError, JournalRecord, OpState};
use crate::reconcile::queue::{JobPanicked, Queue, QueueClosed};

/// Hands a task's UPID to the journal as soon as Proxmox accepted it.
pub type OnTask<'a> = dyn FnMut(&str) -> Result<(), JournalError> + 'a;

/// Performs authorized destructive ops. Injected so the daemon decides what is wired
/// and tests can count executions.
pub trait DestructiveExecutor: Send + Sync {
    /// Whether this executor carries ops of `class`; any other is refused `unknown_op`
    /// before anything is checked or burned.
    fn carries(&self, class: &OpClass) -> bool;

    /// The guest as it is now (its config digest and protection flag), read
    /// immediately before the gate decides and the op is dispatched.
    fn guest_now(&self, vmid: u32) -> GuestNow;

    /// The op's own target as it is now (the snapshot a rollback names, the backup
    /// volume a deletion names): `Err` refuses the op with that refusal and why. The
    /// gate asks only once the signature, binding, role, digest and protection checks
    /// passed, and before the nonce is burned. Ops without a target of their own pass.
    /// No default: a wrapper that forgot to pass it on would skip the check.
    fn check_target(&self, intent: &Intent) -> Result<(), (Refusal, String)>;

    /// Clears the guest's `protection` flag, on the condition that its config still has
    /// `digest` (Proxmox refuses the write otherwise). `on_task` as for
    /// [`DestructiveExecutor::execute`], when the write runs as a task.
    fn unprotect(&self, vmid: u32, digest: &str, on_task: &mut OnTask<'_>) -> Result<(), String>;

    /// Stops the guest at once (a `restore_overwrite` whose signed params say `stop`,
    /// on a running guest). `on_task` as for [`DestructiveExecutor::execute`]. An
    /// executor that cannot stop guests says so (`Err`). No default, as for
    /// [`DestructiveExecutor::check_target`].
    fn stop_guest(&self, vmid: u32, on_task: &mut OnTask<'_>) -> Result<(), String>;

    /// Executes `intent`. Call `on_task` with the task's UPID as soon as Proxmox accepted
    /// it (before waiting), so a crash mid-task leaves the UPID in the journal; if it
    /// fails, stop and return the error. `Err` is a sentence saying what failed.
    fn execute(&self, intent: &Intent, on_task: &mut OnTask<'_>) -> Result<(), String>;
}

/// How a signed job ended (a refusal is an outcome, not an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// The op's nonce was already applied: nothing done, success.
    Skipped,
    /// The gate refused it; nothing executed, nothing journaled, no nonce burned.
    Refused(Refusal),
    /// Executed and succeeded; the nonce is marked applied.
    Executed {
        /// The journal's op id.
        op_id: String,
    },
    /// Executed (or its `unprotect` step) and failed; journaled, not applied. The nonce
    /// is burned: a retry needs a fresh signature.
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

/// Runs signed jobs through one gate and one queue. The reconciler builds the one
/// instance; a clone is a handle on the same gate and queue.
#[derive(Clone)]
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

    /// Runs one signed job: dedupe by nonce, then on the guest's lane: read the guest,
    /// the gate, the `unprotect` step if asked for, and the op, each journaled.
    pub fn run_signed_job(
        &self,
        intent: &Intent,
        signed: &SignedOp,
        executor: Arc<dyn DestructiveExecutor>,
    ) -> Result<JobOutcome, JobError> {
        self.run_delivered_job(intent, signed, executor, None)
    }

    /// [`SignedJobs::run_signed_job`] for an op the hub delivered: the gate's audit
    /// entries for it carry `delivery`.
    pub fn run_delivered_job(
        &self,
        intent: &Intent,
        signed: &SignedOp,
        executor: Arc<dyn DestructiveExecutor>,
        delivery: Option<AuditDelivery>,
    ) -> Result<JobOutcome, JobError> {
        // The nonce is read without trusting the blob: a hit only skips work, and a key
        // is marked applied only after a verified op succeeded.
        if let Ok(blob) = OpBlob::parse(&signed.blob)
            && self.gate.journal().already_applied(&blob.nonce)
        {
            crate::info!(
                signed_op_already_applied,
                "signed op already applied; skipped",
                op = intent.class,
                guest = intent.guest_id.as_deref().unwrap_or("-")
            );
            return Ok(JobOutcome::Skipped);
        }
        let vmid = intent.vmid().unwrap_or(0);
        let run = SignedRun {
            gate: Arc::clone(&self.gate),
            clock: Arc::clone(&self.clock),
            intent: intent.clone(),
            signed: signed.clone(),
            executor,
            delivery,
        };
        let handle = self
            .queue
            .submit(vmid, move || run.run())
            .map_err(JobError::Queue)?;
        handle
            .wait()
            .map_err(JobError::Panicked)?
            .map_err(JobError::Journal)
    }
}

/// One signed job on its lane.
struct SignedRun {
    gate: Arc<Gate>,
    clock: Arc<dyn Clock>,
    intent: Intent,
    signed: SignedOp,
    executor: Arc<dyn DestructiveExecutor>,
    delivery: Option<AuditDelivery>,
}

impl SignedRun {
    fn run(self) -> Result<JobOutcome, JournalError> {
        let intent = &self.intent;
        // Outside the catalogue, or not wired here: refused before anything is read,
        // checked or burned.
        let unknown = if !intent.class.in_catalogue() {
            Some(format!(
                "{} is not in the signed-op catalogue",
                intent.class
            ))
        } else if !self.executor.carries(&intent.class) {
            Some(format!("no executor here carries {}", intent.class))
        } else {
            None
        };
        if let Some(why) = unknown
            && let Decision::Refused { reason } =
                self.gate
                    .refuse(intent, Refusal::UnknownOp, why, self.delivery.as_ref())
        {
            return Ok(JobOutcome::Refused(reason));
        }
        // Read right before the decision, on the lane: nothing of ours changes the guest
        // between this read and the dispatch.
        let guest = match (&intent.guest_id, intent.vmid()) {
            (None, _) => GuestNow::NotRead,
            (Some(_), Some(vmid)) => self.executor.guest_now(vmid),
            (Some(g), None) => GuestNow::Unreadable(format!("guest_id {g:?} is not a vmid")),
        };
        let target = || self.executor.check_target(intent);
        let verified = match self.gate.authorize_target(
            intent,
            Some(&self.signed),
            &guest,
            &target,
            self.delivery.as_ref(),
        ) {
            Decision::Refused { reason } => return Ok(JobOutcome::Refused(reason)),
            Decision::Allowed { verified, .. } => verified,
        };
        let journal = Arc::clone(self.gate.journal());
        let vmid = intent.vmid().unwrap_or(0);
        // The gate allowed a protected guest only because the signed params say
        // `unprotect`: clearing the flag is its own journaled op, conditional on the
        // digest the operator signed for.
        if let GuestNow::Present {
            protected: true,
            digest: Some(digest),
            ..
        } = &guest
        {
            let mut rec = JournalRecord::started(
                journal.new_op_id(&format!("unprotect-{vmid}")),
                vmid,
                OpClass::SetConfig,
                self.clock.now(),
            );
            rec.params.insert("protection".into(), "0".into());
            let res = self.step(&journal, &rec, |on_task| {
                self.executor.unprotect(vmid, digest, on_task)
            })?;
            if let Err(detail) = res {
                return Ok(JobOutcome::Failed {
                    op_id: rec.op_id,
                    detail,
                });
            }
        }
        // A restore over a running guest was allowed only because the signed params say
        // `stop`: stopping it is its own journaled op.
        if let Some(rec) =
            super::restore_overwrite::stop_step(intent, &guest, &journal, self.clock.now())
        {
            let res = self.step(&journal, &rec, |on_task| {
                self.executor.stop_guest(vmid, on_task)
            })?;
            if let Err(detail) = res {
                return Ok(JobOutcome::Failed {
                    op_id: rec.op_id,
                    detail,
                });
            }
            crate::store::faultpoint::reached("restore:after-stop");
        }
        let mut rec = JournalRecord::started(
            journal.new_op_id(&format!("{}-{vmid}", intent.class)),
            vmid,
            intent.class.clone(),
            self.clock.now(),
        );
        rec.params = intent.params.clone();
        if let Some(v) = &verified {
            rec.idempotency_key = Some(v.blob.nonce.clone());
            rec.expires_at = Some(v.blob.expires_at);
        }
        let res = self.step(&journal, &rec, |on_task| {
            self.executor.execute(intent, on_task)
        })?;
        let op_id = rec.op_id;
        match res {
            Ok(()) => {
                crate::info!(signed_op_executed, "signed op executed", op_id = op_id);
                Ok(JobOutcome::Executed { op_id })
            }
            Err(detail) => {
                crate::warn!(
                    signed_op_failed,
                    "signed op failed",
                    op_id = op_id,
                    detail = detail
                );
                Ok(JobOutcome::Failed { op_id, detail })
            }
        }
    }

    /// Journals `rec` started, runs `act` (which journals its UPID through `on_task`),
    /// and journals the outcome. `Err` only for a journal failure.
    fn step(
        &self,
        journal: &Journal,
        rec: &JournalRecord,
        act: impl FnOnce(&mut OnTask<'_>) -> Result<(), String>,
    ) -> Result<Result<(), String>, JournalError> {
        journal.append(rec)?;
        crate::store::faultpoint::reached("signed:after-started");
        let mut upid: Option<String> = None;
        let res = act(&mut |u: &str| {
            let mut running = rec.step(OpState::TaskRunning, self.clock.now());
            running.upid = Some(u.to_string());
            journal.append(&running)?;
            crate::store::faultpoint::reached("signed:after-upid");
            upid = Some(u.to_string());
            Ok(())
        });
        crate::store::faultpoint::reached("signed:after-wait");
        let mut done = rec.step(
            if res.is_ok() {
                OpState::Succeeded
            } else {
                OpState::Failed
            },
            self.clock.now(),
        );
        done.upid = upid;
        if let Err(detail) = &res {
            done.detail = Some(detail.clone());
        }
        journal.append(&done)?;
        Ok(res)
    }
}
