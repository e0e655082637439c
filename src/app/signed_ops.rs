//! Signed ops from the hub, carried through reconcile's signed-job path.
//!
//! Each op the feed delivers has its blob parsed **unverified**, only to build the
//! [`Intent`] it asks for; then [`SignedJobs::run_signed_job`] decides: the nonce dedupe,
//! the gate (which verifies the signature over the raw bytes and binds it to that
//! intent and to the guest as it is now), the journal and the executor. An op
//! delivered without a signature goes to the gate unsigned — a destructive one is held
//! as `pending_signature` — and is never executed by this channel. Every outcome
//! reaches the audit log (so the next report's `audit_tail` shows it) and a log line;
//! a blob that does not parse, and an entry the feed skipped, are audited with the
//! blob's SHA-256, its size and why. The audit never holds a blob's or a signature's
//! bytes: what a parser quoted from the input is blanked out of the reasons written
//! there.
//!
//! Every outcome is also kept, one entry per hub op id, in the results the next reports
//! carry (`signed_op_results`) until the hub acknowledges them (`super::results`); a feed
//! entry skipped for being unusable is kept too when its id is usable.
//!
//! While the hub marks the host `blocked` (the same hold that stops reconcile's
//! mutations), a delivered op goes nowhere: not to the gate, so its nonce is not burned,
//! and not to the journal. It is audited `held` once per hold and runs on the first
//! announcement after the hold lifts.
//!
//! This module never executes anything itself (the executor does, through the job),
//! never trusts a field of a blob before the verifier has checked it, and never lets
//! the bearer key into an error, a log line or a `Debug`. A journal failure ends the
//! worker, so the daemon exits non-zero.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::authz::OpBlob;
use crate::base::shutdown::Shutdown;
use crate::base::sync::lock;
use crate::base::time::{Clock, SystemClock};
use crate::hub::ops_feed::{
    Announcement, DeliveredOp, FetchError, MAX_OPS, SignedOpsClient, SkippedEntry, blob_digest,
};
use crate::reconcile::audit::{AuditDelivery as Delivery, AuditLog, AuditRecord};
use crate::reconcile::classify::{Intent, OpClass};
use crate::reconcile::engine::Pacing;
use crate::reconcile::gate::{Decision, Gate, GuestNow, SignedOp};
use crate::reconcile::jobs::{DestructiveExecutor, JobError, JobOutcome, SignedJobs};
use crate::reconcile::op_results::{OpResult, OpResults, OpResultsError, ResultOutcome};

/// The word the audit records for an op the agent could not read.
pub(crate) const UNREADABLE_OP: &str = "signed_op";

/// The intent a blob asks for, read **without** verifying it: the gate binds the
/// verified blob to this intent, so a lie here can only cause a refusal.
pub fn unverified_intent(blob: &[u8]) -> Result<Intent, crate::authz::AuthzError> {
    let b = OpBlob::parse(blob)?;
    let mut intent = Intent::new(OpClass::parse(&b.op), b.host_id, b.guest_id);
    intent.params = b.params;
    Ok(intent)
}

/// The nonce a blob names, read **without** verifying it, only to name the op in the
/// audit and in the results the hub reads back; `None` when the blob does not parse.
pub fn unverified_nonce(blob: &[u8]) -> Option<String> {
    OpBlob::parse(blob).ok().map(|b| b.nonce)
}

/// What became of one delivered op.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpOutcome {
    /// It went through [`SignedJobs::run_signed_job`] (or, unsigned, the gate alone
    /// refused it) with this outcome.
    Job(JobOutcome),
    /// It arrived unsigned and the gate would allow it (benign, or the agent's own
    /// guest), but this channel executes signed ops only: nothing ran.
    UnsignedNotRun,
    /// Its blob does not parse, so no intent could be built; nothing ran.
    Unparseable {
        /// Why, naming the field.
        why: String,
    },
    /// The hub holds this host's mutations (`blocked`): the op was not looked at, its
    /// nonce is not burned, and it runs once the hold lifts.
    Held,
}

impl OpOutcome {
    /// The word the audit log and the log use.
    pub fn code(&self) -> &'static str {
        match self {
            OpOutcome::Job(JobOutcome::Skipped) => "skipped",
            OpOutcome::Job(JobOutcome::Refused(r)) => r.code(),
            OpOutcome::Job(JobOutcome::Executed { .. }) => "executed",
            OpOutcome::Job(JobOutcome::Failed { .. }) => "failed",
            OpOutcome::UnsignedNotRun => "not_executed",
            OpOutcome::Unparseable { .. } => "malformed",
            OpOutcome::Held => "held",
        }
    }
    /// The result the reports carry for this outcome: its word and precise code.
    pub fn result(&self) -> (ResultOutcome, &'static str) {
        match self {
            OpOutcome::Job(JobOutcome::Executed { .. }) => (ResultOutcome::Executed, "executed"),
            OpOutcome::Job(JobOutcome::Failed { .. }) => (ResultOutcome::Failed, "failed"),
            OpOutcome::Job(JobOutcome::Skipped) => (ResultOutcome::Skipped, "already_applied"),
            OpOutcome::Job(JobOutcome::Refused(r)) => (ResultOutcome::Refused, r.code()),
            OpOutcome::UnsignedNotRun => (ResultOutcome::NotExecuted, "unsigned"),
            OpOutcome::Unparseable { .. } => (ResultOutcome::Malformed, "malformed"),
            OpOutcome::Held => (ResultOutcome::Held, "blocked"),
        }
    }
}

/// What one fetch-and-run round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundSummary {
    /// Each usable op's hub id and outcome, in the hub's order.
    pub outcomes: Vec<(String, OpOutcome)>,
    /// The entries skipped before they reached the gate.
    pub skipped: Vec<SkippedEntry>,
}

/// `text` with whatever sits between quotes (`"…"`, `` `…` ``) replaced by `…`: parser
/// errors quote the input they stopped at, and the audit keeps no bytes of a blob.
fn unquoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' && c != '`' {
            continue;
        }
        let mut closed = false;
        while let Some(d) = chars.next() {
            if c == '"' && d == '\\' {
                chars.next();
            } else if d == c {
                closed = true;
                break;
            }
        }
        out.push('…');
        if closed {
            out.push(c);
        }
    }
    out
}

/// How many held deliveries are remembered as already audited; past it the memory is
/// cleared, so a long hold re-audits an op now and then but never grows without bound.
const MAX_HELD_REMEMBERED: usize = 4 * MAX_OPS;

/// Runs delivered ops through the signed-job path of one reconciler.
pub struct SignedOpsRunner {
    jobs: SignedJobs,
    gate: Arc<Gate>,
    audit: Arc<AuditLog>,
    executor: Arc<dyn DestructiveExecutor>,
    clock: Arc<dyn Clock>,
    hold: Option<Arc<dyn Pacing>>,
    results: Option<Arc<OpResults>>,
    /// Deliveries (hub id, blob SHA-256) audited `held` during the current hold.
    held_audited: Mutex<HashSet<(String, String)>>,
}

impl fmt::Debug for SignedOpsRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedOpsRunner")
            .field("jobs", &self.jobs)
            .finish_non_exhaustive()
    }
}

impl SignedOpsRunner {
    /// A runner on `jobs` (built on `gate`), auditing outcomes to `audit` (the log the
    /// gate writes to), executing through `executor`.
    pub fn new(
        jobs: SignedJobs,
        gate: Arc<Gate>,
        audit: Arc<AuditLog>,
        executor: Arc<dyn DestructiveExecutor>,
    ) -> SignedOpsRunner {
        SignedOpsRunner {
            jobs,
            gate,
            audit,
            executor,
            clock: Arc::new(SystemClock),
            hold: None,
            results: None,
            held_audited: Mutex::new(HashSet::new()),
        }
    }

    /// Keeps each outcome in `results`, for the reports, until the hub acknowledges it.
    pub fn with_results(mut self, results: Arc<OpResults>) -> SignedOpsRunner {
        self.results = Some(results);
        self
    }

    /// Keeps one outcome for the reports; a failure is logged, never fatal (the audit
    /// and the journal hold what happened).
    fn keep_result(&self, id: &str, nonce: Option<String>, outcome: ResultOutcome, code: &str) {
        let Some(results) = &self.results else {
            return;
        };
        let result = OpResult {
            id: id.to_string(),
            nonce,
            outcome,
            code: code.to_string(),
            at: self.clock.now(),
        };
        match results.record(result) {
            Ok(_) => {}
            Err(e @ OpResultsError::Invalid { .. }) => crate::warn!(
                signed_op_result_not_kept,
                "signed op result not kept for the hub",
                hub_op = id,
                error = e
            ),
            Err(e) => crate::error!(
                op_results_not_saved,
                "signed op result not saved",
                hub_op = id,
                error = e
            ),
        }
    }

    /// Holds every delivered op while `hold` says mutations are held (the hub's
    /// `blocked`, the same source that holds the engine).
    pub fn with_hold(mut self, hold: Arc<dyn Pacing>) -> SignedOpsRunner {
        self.hold = Some(hold);
        self
    }

    fn is_held(&self) -> bool {
        self.hold.as_ref().is_some_and(|h| h.held())
    }

    /// Uses `clock` for audit timestamps.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> SignedOpsRunner {
        self.clock = clock;
        self
    }

    /// Carries one op through the gate and, if allowed and signed, the executor.
    /// `Err` only for what must stop the agent (a journal failure) or a queue that is
    /// closed or a job that panicked.
    pub fn handle(&self, op: &DeliveredOp) -> Result<OpOutcome, JobError> {
        self.handle_at(op, None)
    }

    /// [`SignedOpsRunner::handle`] for the op at `index` of the hub's answer (recorded
    /// in the audit with it).
    fn handle_at(&self, op: &DeliveredOp, index: Option<usize>) -> Result<OpOutcome, JobError> {
        let nonce = unverified_nonce(&op.blob);
        let delivery = || {
            let (sha, bytes) = blob_digest(&op.blob);
            Delivery {
                hub_op_id: Some(op.id.clone()),
                nonce: nonce.clone(),
                index: index.map(|i| i as u64),
                blob_sha256: Some(sha),
                blob_bytes: Some(bytes),
            }
        };
        if self.is_held() {
            self.hold_op(op, delivery());
            self.keep(op, nonce, &OpOutcome::Held);
            return Ok(OpOutcome::Held);
        }
        let intent = match unverified_intent(&op.blob) {
            Ok(i) => i,
            Err(e) => {
                let why = e.to_string();
                crate::warn!(
                    signed_op_unparsable,
                    "signed op skipped: blob does not parse",
                    hub_op = op.id,
                    error = why
                );
                self.audit_delivery(
                    &op.id,
                    "malformed",
                    format!("blob does not parse: {}", unquoted(&why)),
                    delivery(),
                );
                let outcome = OpOutcome::Unparseable { why };
                self.keep(op, nonce, &outcome);
                return Ok(outcome);
            }
        };
        let outcome = match &op.signature {
            Some(signature) => {
                let signed = SignedOp {
                    blob: op.blob.clone(),
                    signature: signature.clone(),
                    cosignatures: op.cosignatures.clone(),
                };
                OpOutcome::Job(self.jobs.run_delivered_job(
                    &intent,
                    &signed,
                    Arc::clone(&self.executor),
                    Some(delivery()),
                )?)
            }
            // The gate records its own decision; an unsigned op never runs here.
            None => match self.gate.authorize_delivered(
                &intent,
                None,
                &GuestNow::NotRead,
                Some(&delivery()),
            ) {
                Decision::Refused { reason } => OpOutcome::Job(JobOutcome::Refused(reason)),
                Decision::Allowed { .. } => OpOutcome::UnsignedNotRun,
            },
        };
        self.report(op, &intent, &outcome, delivery());
        self.keep(op, nonce, &outcome);
        Ok(outcome)
    }

    fn keep(&self, op: &DeliveredOp, nonce: Option<String>, outcome: &OpOutcome) {
        let (word, code) = outcome.result();
        self.keep_result(&op.id, nonce, word, code);
    }

    /// Logs a held op, and audits it the first time this hold meets it. Nothing else
    /// happens: no gate, no nonce, no journal. The blob is read unverified only to name
    /// the op and guest in the audit.
    fn hold_op(&self, op: &DeliveredOp, delivery: Delivery) {
        let intent = unverified_intent(&op.blob).ok();
        let class = intent.as_ref().map_or(UNREADABLE_OP, |i| i.class.as_str());
        let guest_id = intent.as_ref().and_then(|i| i.guest_id.clone());
        let guest = guest_id.as_deref().unwrap_or("-");
        let reason = self
            .hold
            .as_ref()
            .and_then(|h| h.hold_reason())
            .unwrap_or_else(|| HELD_REASON.to_owned());
        handled(op, class, guest, &OpOutcome::Held, &reason);
        let key = (
            op.id.clone(),
            delivery.blob_sha256.clone().unwrap_or_default(),
        );
        {
            let mut seen = lock(&self.held_audited);
            if seen.contains(&key) {
                return;
            }
            if seen.len() >= MAX_HELD_REMEMBERED {
                seen.clear();
            }
            seen.insert(key);
        }
        let delivered = Delivered {
            hub_op: &op.id,
            op: class,
            guest_id,
            delivery,
        };
        self.audit_delivered(delivered, OpOutcome::Held.code(), reason);
    }

    /// Logs the outcome and audits what the gate did not already audit.
    fn report(&self, op: &DeliveredOp, intent: &Intent, outcome: &OpOutcome, delivery: Delivery) {
        let guest = intent.guest_id.as_deref().unwrap_or("-");
        // A refusal was audited, and logged at warn, by the gate's own decision.
        let reason = match outcome {
            OpOutcome::Job(JobOutcome::Refused(_)) => None,
            OpOutcome::Job(JobOutcome::Skipped) => Some("its nonce was already applied".into()),
            OpOutcome::Job(JobOutcome::Executed { op_id }) => Some(format!("executed as {op_id}")),
            OpOutcome::Job(JobOutcome::Failed { op_id, detail }) => {
                Some(format!("{op_id} failed: {detail}"))
            }
            OpOutcome::UnsignedNotRun => {
                Some("delivered unsigned; the signed-ops channel runs signed ops only".to_string())
            }
            OpOutcome::Unparseable { why } => Some(why.clone()),
            OpOutcome::Held => return,
        };
        let said = reason.as_deref().unwrap_or("refused by the gate");
        handled(op, intent.class.as_str(), guest, outcome, said);
        let Some(reason) = reason else {
            return;
        };
        let delivered = Delivered {
            hub_op: &op.id,
            op: intent.class.as_str(),
            guest_id: intent.guest_id.clone(),
            delivery,
        };
        self.audit_delivered(delivered, outcome.code(), reason);
    }

    /// Audits a delivery that never reached the gate (its op is not known).
    fn audit_delivery(&self, hub_op: &str, decision: &str, reason: String, delivery: Delivery) {
        let delivered = Delivered {
            hub_op,
            op: UNREADABLE_OP,
            guest_id: None,
            delivery,
        };
        self.audit_delivered(delivered, decision, reason);
    }

    /// Writes the audit entry of one delivery; a failed write is logged, never fatal.
    fn audit_delivered(&self, d: Delivered<'_>, decision: &str, reason: String) {
        let mut entry =
            AuditRecord::new(self.clock.now(), d.op, d.guest_id, decision, reason, None);
        entry.delivery = Some(d.delivery);
        if let Err(e) = self.audit.record(&entry) {
            crate::error!(
                signed_op_audit_failed,
                "signed op delivery could not be audited",
                hub_op = d.hub_op,
                op = d.op,
                error = e
            );
        }
    }

    /// Logs and audits the entries an answer's parse skipped: one audit entry each for
    /// those within the first [`MAX_OPS`], one for all past it (so an answer of any
    /// length writes at most `MAX_OPS + 1` of them).
    fn audit_skipped(&self, skipped: &[SkippedEntry]) {
        let mut over = skipped.iter().filter(|s| s.over_limit);
        if let Some(first) = over.next() {
            let last = over.next_back().unwrap_or(first);
            let count = last.index - first.index + 1;
            crate::warn!(
                signed_ops_over_limit,
                "signed op entries over the limit skipped",
                first_index = first.index,
                last_index = last.index,
                count = count,
                max = MAX_OPS
            );
            self.audit_delivery(
                "-",
                "over_limit",
                format!(
                    "{count} entries after the first {MAX_OPS} of one answer skipped (indexes {} to {})",
                    first.index, last.index
                ),
                Delivery {
                    hub_op_id: None,
                    nonce: None,
                    index: Some(first.index as u64),
                    blob_sha256: None,
                    blob_bytes: None,
                },
            );
        }
        for s in skipped.iter().filter(|s| !s.over_limit) {
            crate::warn!(
                signed_op_entry_skipped,
                "signed op entry skipped",
                index = s.index,
                reason = s.why
            );
            if let Some(id) = &s.hub_id {
                self.keep_result(id, None, ResultOutcome::Malformed, "malformed_entry");
            }
            let (sha, bytes) = s.blob.clone().unzip();
            self.audit_delivery(
                s.hub_id.as_deref().unwrap_or("-"),
                "malformed",
                format!("entry skipped: {}", unquoted(&s.why)),
                Delivery {
                    hub_op_id: s.hub_id.clone(),
                    nonce: None,
                    index: Some(s.index as u64),
                    blob_sha256: sha,
                    blob_bytes: bytes,
                },
            );
        }
    }

    /// Fetches the queued ops and handles each in the hub's order. A skipped entry is
    /// logged with its index and why.
    pub fn run_round(&self, client: &SignedOpsClient) -> Result<RoundSummary, SignedOpsError> {
        let parsed = client.fetch().map_err(SignedOpsError::Fetch)?;
        if !self.is_held() {
            // A hold that comes back later is a new one: its ops are audited again.
            lock(&self.held_audited).clear();
        }
        self.audit_skipped(&parsed.skipped);
        let mut summary = RoundSummary {
            outcomes: Vec::with_capacity(parsed.ops.len()),
            skipped: parsed.skipped,
        };
        for (i, op) in parsed.ops.iter().enumerate() {
            let index = parsed.indexes.get(i).copied();
            let outcome = self.handle_at(op, index).map_err(SignedOpsError::Job)?;
            summary.outcomes.push((op.id.clone(), outcome));
        }
        Ok(summary)
    }
}

/// Why a round stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum SignedOpsError {
    /// The fetch failed; nothing was handled (tried again on the next announcement).
    Fetch(FetchError),
    /// A job could not be carried through; ops after it were not handled.
    Job(JobError),
}

impl SignedOpsError {
    /// Whether the agent must stop: a journal append failed, so what is on disk is no
    /// longer known.
    pub fn is_fatal(&self) -> bool {
        matches!(self, SignedOpsError::Job(JobError::Journal(_)))
    }
}

impl fmt::Display for SignedOpsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignedOpsError::Fetch(e) => e.fmt(f),
            SignedOpsError::Job(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SignedOpsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SignedOpsError::Fetch(e) => Some(e),
            SignedOpsError::Job(e) => Some(e),
        }
    }
}

/// How often the worker looks at the shutdown signal while no op is announced.
const WORKER_TICK: Duration = Duration::from_millis(200);

/// The worker: on each announcement, one fetch-and-run round; until shutdown, or a
/// fatal error (returned, so the daemon stops and exits non-zero).
pub fn run_worker(
    runner: &SignedOpsRunner,
    client: &SignedOpsClient,
    announcement: &Announcement,
    shutdown: &Shutdown,
) -> Result<(), SignedOpsError> {
    while !shutdown.is_triggered() {
        if !announcement.take(WORKER_TICK) || shutdown.is_triggered() {
            continue;
        }
        match runner.run_round(client) {
            Ok(summary) => crate::info!(
                signed_ops_round_done,
                "signed ops round done",
                handled = summary.outcomes.len(),
                skipped = summary.skipped.len()
            ),
            Err(e) if e.is_fatal() => {
                crate::error!(
                    signed_ops_worker_stopped,
                    "signed ops worker stopping",
                    error = e
                );
                return Err(e);
            }
            Err(e) => crate::warn!(
                signed_ops_round_failed,
                "signed ops round failed",
                error = e
            ),
        }
    }
    Ok(())
}

/// Why a held op did not run.
const HELD_REASON: &str =
    "the hub marks this host blocked; held, not verified and its nonce not used";

/// Logs what became of one delivered op (`event=signed_op_handled`).
fn handled(op: &DeliveredOp, class: &str, guest: &str, outcome: &OpOutcome, reason: &str) {
    crate::info!(
        signed_op_handled,
        "signed op handled",
        hub_op = op.id,
        op = class,
        guest = guest,
        outcome = outcome.code(),
        reason = reason
    );
}

/// One delivery from the hub as its audit entry names it.
struct Delivered<'a> {
    hub_op: &'a str,
    op: &'a str,
    guest_id: Option<String>,
    delivery: Delivery,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::gate::Refusal;

    #[test]
    fn quoted_input_is_blanked_out_of_a_reason() {
        const CASES: &[(&str, &str)] = &[
            (
                "blob: unknown field `secretish`, expected one of `op`, `host_id`",
                "blob: unknown field `…`, expected one of `…`, `…`",
            ),
            (
                "blob: invalid type: string \"a\\\"b\", expected u64",
                "blob: invalid type: string \"…\", expected u64",
            ),
            ("blob: params[\"k\"] must be", "blob: params[\"…\"] must be"),
            ("unterminated `abc", "unterminated `…"),
            (
                "no quotes at line 1 column 2",
                "no quotes at line 1 column 2",
            ),
        ];
        for (input, want) in CASES {
            assert_eq!(unquoted(input), *want, "{input}");
        }
    }

    #[test]
    fn every_outcome_has_its_word_and_code() {
        let cases = [
            (
                OpOutcome::Job(JobOutcome::Executed { op_id: "x".into() }),
                ResultOutcome::Executed,
                "executed",
            ),
            (
                OpOutcome::Job(JobOutcome::Failed {
                    op_id: "x".into(),
                    detail: "d".into(),
                }),
                ResultOutcome::Failed,
                "failed",
            ),
            (
                OpOutcome::Job(JobOutcome::Skipped),
                ResultOutcome::Skipped,
                "already_applied",
            ),
            (
                OpOutcome::Job(JobOutcome::Refused(Refusal::GuestChanged)),
                ResultOutcome::Refused,
                "guest_changed",
            ),
            (
                OpOutcome::UnsignedNotRun,
                ResultOutcome::NotExecuted,
                "unsigned",
            ),
            (
                OpOutcome::Unparseable { why: "w".into() },
                ResultOutcome::Malformed,
                "malformed",
            ),
            (OpOutcome::Held, ResultOutcome::Held, "blocked"),
        ];
        for (outcome, word, code) in cases {
            assert_eq!(outcome.result(), (word, code), "{outcome:?}");
        }
    }
}
