//! The reversibility gate: every action passes here before it may run.
//!
//! This module owns the policy that turns an [`Intent`] (and, for destructive ones, a
//! signed op and the guest as it is right before dispatch) into a [`Decision`]: benign
//! by class or by the agent's own journaled provenance → allowed unsigned; destructive →
//! only with a verified signature whose signer's role covers the op, whose blob names
//! exactly this action, and whose `guest_digest` is the guest's config digest **now**
//! (Proxmox reuses vmids); a protected guest only when the signed params say
//! `unprotect`. The nonce is burned last, once every check passed, so no refusal burns
//! it. It records every decision in the audit log and the log. It never executes
//! anything, never reads provenance from an intent's params, and never allows a
//! destructive op while the journal or the nonce store is damaged.

use std::fmt;
use std::sync::Arc;

use crate::authz;
use crate::base::time::{Clock, SystemClock};
use crate::reconcile::audit::{AuditDelivery, AuditLog, AuditRecord};
use crate::reconcile::classify::{Class, Intent, OpClass, Provenance, classify};
use crate::reconcile::journal::{Journal, JournalView};

/// An operator-signed op as received: the exact blob bytes and the armored SSHSIG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedOp {
    /// The blob exactly as signed (never re-serialized).
    pub blob: Vec<u8>,
    /// The `-----BEGIN SSH SIGNATURE-----` armor.
    pub signature: String,
    /// Further signatures over the same bytes (an emergency rotation's recovery keys).
    pub cosignatures: Vec<String>,
}

impl SignedOp {
    /// An op with one signature.
    pub fn new(blob: Vec<u8>, signature: String) -> SignedOp {
        SignedOp {
            blob,
            signature,
            cosignatures: Vec::new(),
        }
    }

    /// Every signature, the first one first.
    pub fn signatures(&self) -> Vec<&str> {
        std::iter::once(self.signature.as_str())
            .chain(self.cosignatures.iter().map(String::as_str))
            .collect()
    }
}

/// The gate's word on one intent.
// One decision per action, moved once: boxing the verified op would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The action may run.
    Allowed {
        /// Why.
        reason: AllowReason,
        /// The verified signed op, for [`AllowReason::Signed`].
        verified: Option<authz::VerifiedOp>,
    },
    /// The action must not run.
    Refused {
        /// Why.
        reason: Refusal,
    },
}

impl Decision {
    /// Whether the action may run.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }

    /// The refusal, if refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Decision::Refused { reason } => Some(reason),
            Decision::Allowed { .. } => None,
        }
    }
}

/// Why an action was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowReason {
    /// The class cannot lose data (start, stop, set config).
    Benign,
    /// It destroys only what the journal says the agent itself made.
    AgentProvenance,
    /// A verified, role-scoped signature bound to exactly this action.
    Signed,
}

impl AllowReason {
    /// `benign`, `agent_provenance` or `signed`.
    pub fn code(self) -> &'static str {
        match self {
            AllowReason::Benign => "benign",
            AllowReason::AgentProvenance => "agent_provenance",
            AllowReason::Signed => "signed",
        }
    }
}

/// The guest an action names, as read immediately before dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestNow {
    /// Nothing was read: the action names no guest, or this is a dry run. A signed op
    /// that names a guest is refused on this (`guest_changed`): fail closed.
    NotRead,
    /// Proxmox says no guest with that vmid exists.
    Gone,
    /// The config could not be read (refused as `guest_changed`: fail closed).
    Unreadable(String),
    /// The guest's config as it is now.
    Present {
        /// The config `digest`.
        digest: Option<String>,
        /// `protection: 1`: Proxmox refuses to remove it, and so does the gate.
        protected: bool,
        /// Whether it runs now: an op that overwrites it (`restore_overwrite`) is
        /// refused on a running guest unless the signed params say `stop`.
        running: bool,
    },
}

impl GuestNow {
    /// Whether the guest is there and has `protection: 1`.
    pub fn is_protected(&self) -> bool {
        matches!(
            self,
            GuestNow::Present {
                protected: true,
                ..
            }
        )
    }
}

/// Why an action was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Destructive and no signed op was presented (or no signer is configured).
    PendingSignature,
    /// The guest the op was signed for is gone, or its config digest is no longer the
    /// one signed (another guest under a reused vmid, or a changed config).
    GuestChanged,
    /// The guest has `protection: 1` and the signed params do not say `unprotect`.
    Protected,
    /// The op overwrites the guest (`restore_overwrite`), the guest runs, and the
    /// signed params do not say `stop`.
    GuestRunning,
    /// No executor here carries this kind of op.
    UnknownOp,
    /// The signature verified but its signer's role does not cover this op.
    RoleDenied,
    /// The signature verified but the blob names another op, host, guest or params.
    BindingMismatch,
    /// The verifier refused the signed op.
    Rejected(authz::AuthzError),
    /// Destructive while the journal or the nonce store is damaged, or the decision
    /// could not be audited.
    StateDamaged,
    /// The snapshot or backup volume the signed op names does not exist (or its
    /// params do not name one).
    TargetMissing,
    /// The backup volume a `backup_delete` names belongs to another guest than the
    /// op's `guest_id` (or its owner cannot be told).
    ForeignVolume,
    /// The desired state wants a root disk smaller than it is: Proxmox cannot shrink a
    /// disk and the agent never tries.
    ShrinkRefused,
    /// Benign but disruptive (a stop, a reduction of cores or memory) beyond
    /// `reconcile.max_disruptive_per_hour`: held, not sent, until the rolling hour
    /// allows it or an operator runs `felhom-agent resume --rate-limit`.
    RateLimited,
}

impl Refusal {
    /// The snake_case word operators and the audit log see.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::PendingSignature => "pending_signature",
            Refusal::GuestChanged => "guest_changed",
            Refusal::Protected => "protected",
            Refusal::GuestRunning => "guest_running",
            Refusal::UnknownOp => "unknown_op",
            Refusal::RoleDenied => "role_denied",
            Refusal::BindingMismatch => "binding_mismatch",
            Refusal::Rejected(e) => e.code(),
            Refusal::StateDamaged => "state_damaged",
            Refusal::RateLimited => "rate_limited",
            Refusal::TargetMissing => "target_missing",
            Refusal::ForeignVolume => "foreign_volume",
            Refusal::ShrinkRefused => "shrink_refused",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Rejected(e) => write!(f, "signature rejected: {e}"),
            other => f.write_str(other.code()),
        }
    }
}

/// What the op's own target looks like now (the snapshot to roll back to, the backup
/// volume to delete), read right before dispatch: `Err` refuses the op with that
/// refusal and why, after the signature checks and before the nonce is burned.
pub type TargetCheck<'a> = &'a dyn Fn() -> Result<(), (Refusal, String)>;

/// Reports whether a store the gate depends on (the nonce store) is damaged.
pub type HealthProbe = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The gate for one host.
pub struct Gate {
    host_id: String,
    verifier: Option<authz::Verifier>,
    journal: Arc<Journal>,
    audit: Arc<AuditLog>,
    clock: Arc<dyn Clock>,
    nonce_health: Option<HealthProbe>,
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("host_id", &self.host_id)
            .field("verifier", &self.verifier.is_some())
            .finish()
    }
}

/// What the classifier and the state checks say before any signature is looked at.
enum Pre {
    Allow(AllowReason),
    Refuse(Refusal, String),
    NeedsSignature,
}

impl Gate {
    /// A gate for `host_id`. With no verifier (no signers configured) only benign and
    /// agent-internal actions are ever allowed.
    pub fn new(
        host_id: String,
        verifier: Option<authz::Verifier>,
        journal: Arc<Journal>,
        audit: Arc<AuditLog>,
    ) -> Gate {
        Gate {
            host_id,
            verifier,
            journal,
            audit,
            clock: Arc::new(SystemClock),
            nonce_health: None,
        }
    }

    /// Uses `clock` for audit timestamps.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Gate {
        self.clock = clock;
        self
    }

    /// Consults `probe` before every destructive decision: `Some(why)` means the nonce
    /// store is damaged and destructive actions are refused (`state_damaged`).
    pub fn with_nonce_health(mut self, probe: HealthProbe) -> Gate {
        self.nonce_health = Some(probe);
        self
    }

    /// The host this gate decides for.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// The live signer set of the verifier, if signers are configured (a rotation is
    /// applied through it).
    pub fn signer_set(&self) -> Option<&Arc<authz::SignerSet>> {
        self.verifier.as_ref().map(authz::Verifier::signer_set)
    }

    /// The journal the gate reads provenance from.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    fn pre(&self, intent: &Intent) -> Pre {
        let nonce_damage = self
            .nonce_health
            .as_ref()
            .and_then(|p| p())
            .map(|d| format!("nonce store damaged: {d}"));
        pre(intent, self.journal.as_ref(), nonce_damage)
    }

    /// Decides on `intent` and records the decision in the audit log and the log.
    /// `guest` is the guest as read immediately before dispatch (run this on the
    /// guest's queue lane, so nothing of ours changes it in between). A destructive
    /// intent needs `signed`; its nonce is burned only when the decision is `Allowed`.
    pub fn authorize(
        &self,
        intent: &Intent,
        signed: Option<&SignedOp>,
        guest: &GuestNow,
    ) -> Decision {
        self.decide(intent, signed, guest, &|| Ok(()), None, Origin::Agent)
    }

    /// [`Gate::authorize`] for an op the hub delivered: the audit entry of the decision
    /// carries `delivery` (the hub's id, the nonce, the blob's hash), so every entry
    /// about a delivered op names it. The decision itself never depends on it.
    pub fn authorize_delivered(
        &self,
        intent: &Intent,
        signed: Option<&SignedOp>,
        guest: &GuestNow,
        delivery: Option<&AuditDelivery>,
    ) -> Decision {
        self.decide(
            intent,
            signed,
            guest,
            &|| Ok(()),
            delivery,
            Origin::Operator,
        )
    }

    /// [`Gate::authorize_delivered`] that also asks `target` about the op's own target
    /// once the signature, binding, role, digest and protection checks passed and
    /// before the nonce is burned (see [`TargetCheck`]).
    pub fn authorize_target(
        &self,
        intent: &Intent,
        signed: Option<&SignedOp>,
        guest: &GuestNow,
        target: TargetCheck<'_>,
        delivery: Option<&AuditDelivery>,
    ) -> Decision {
        self.decide(intent, signed, guest, target, delivery, Origin::Operator)
    }

    fn decide(
        &self,
        intent: &Intent,
        signed: Option<&SignedOp>,
        guest: &GuestNow,
        target: TargetCheck<'_>,
        delivery: Option<&AuditDelivery>,
        origin: Origin,
    ) -> Decision {
        let pre = match self.pre(intent) {
            // An operator's op (a signed job, a delivery) carries params the agent did
            // not write: a `txn` there is a claim, never provenance. Only the agent's
            // own intents are benign by provenance; everything else is checked signed.
            Pre::Allow(AllowReason::AgentProvenance) if origin == Origin::Operator => {
                Pre::NeedsSignature
            }
            other => other,
        };
        let (decision, why) = match pre {
            Pre::Allow(AllowReason::AgentProvenance) if guest.is_protected() => (
                Decision::Refused {
                    reason: Refusal::Protected,
                },
                "the guest has protection: 1".to_string(),
            ),
            Pre::Allow(r) => (
                Decision::Allowed {
                    reason: r,
                    verified: None,
                },
                r.code().to_string(),
            ),
            Pre::Refuse(r, why) => (Decision::Refused { reason: r }, why),
            Pre::NeedsSignature => self.check_signed(intent, signed, guest, target),
        };
        self.record(intent, decision, why, delivery)
    }

    /// Records a refusal found outside the gate's own checks (an op no executor here
    /// carries) in the audit log and the log, like every other decision; `delivery` as
    /// for [`Gate::authorize_delivered`].
    pub fn refuse(
        &self,
        intent: &Intent,
        reason: Refusal,
        why: String,
        delivery: Option<&AuditDelivery>,
    ) -> Decision {
        self.record(intent, Decision::Refused { reason }, why, delivery)
    }

    fn check_signed(
        &self,
        intent: &Intent,
        signed: Option<&SignedOp>,
        guest: &GuestNow,
        target: TargetCheck<'_>,
    ) -> (Decision, String) {
        let refuse = |r: Refusal, why: String| (Decision::Refused { reason: r }, why);
        let (Some(verifier), Some(signed)) = (&self.verifier, signed) else {
            let why = if self.verifier.is_none() {
                "destructive and no signer is configured"
            } else {
                "destructive and unsigned"
            };
            return refuse(Refusal::PendingSignature, why.into());
        };
        let rejected = |e: authz::AuthzError| {
            let why = e.detail().to_string();
            match e {
                authz::AuthzError::RoleDenied(_) => refuse(Refusal::RoleDenied, why),
                e => refuse(Refusal::Rejected(e), why),
            }
        };
        let v = match verifier.check_all(&signed.blob, &signed.signatures()) {
            Ok(v) => v,
            Err(e) => return rejected(e),
        };
        if let Some(field) = binding_mismatch(intent, &v) {
            return refuse(
                Refusal::BindingMismatch,
                format!("signed op differs from the action in {field}"),
            );
        }
        if let Err(e) = verifier.check_authority(&v) {
            return rejected(e);
        }
        if intent.class == OpClass::RotateSigners
            && let Err(e) = verifier.plan_rotation(&v)
        {
            return rejected(e);
        }
        if let Some(why) = guest_changed(&v, guest) {
            return refuse(Refusal::GuestChanged, why);
        }
        if guest.is_protected() && v.blob.params.get("unprotect").map(String::as_str) != Some("1") {
            return refuse(
                Refusal::Protected,
                "the guest has protection: 1 and the signed params do not say unprotect".into(),
            );
        }
        if intent.class == OpClass::RestoreOverwrite
            && matches!(guest, GuestNow::Present { running: true, .. })
            && v.blob.params.get("stop").map(String::as_str) != Some("1")
        {
            return refuse(
                Refusal::GuestRunning,
                "the guest runs and the signed params do not say stop".into(),
            );
        }
        if let Err((r, why)) = target() {
            return refuse(r, why);
        }
        // Every check passed: only now is the nonce burned.
        if let Err(e) = verifier.consume(&v) {
            let why = e.detail().to_string();
            return refuse(Refusal::Rejected(e), why);
        }
        // A possible cloned authenticator is allowed (non-strict mode) but must reach
        // the audit log, not only stderr: it rides in the reason so every existing
        // reader of the record (report tail, hub) sees it without a format change.
        let why = match v.sk_counter_warning() {
            Some(w) => format!("signed; {w}"),
            None => "signed".into(),
        };
        (
            Decision::Allowed {
                reason: AllowReason::Signed,
                verified: Some(v),
            },
            why,
        )
    }

    fn record(
        &self,
        intent: &Intent,
        decision: Decision,
        why: String,
        delivery: Option<&AuditDelivery>,
    ) -> Decision {
        let key_id = match &decision {
            // The configured signer's id, found by key material: the blob's own
            // `key_id` is only the operator's claim and never goes to the audit log.
            Decision::Allowed {
                verified: Some(v), ..
            } => Some(v.signer.key_id.clone()),
            _ => None,
        };
        let word = match &decision {
            Decision::Allowed { .. } => "allowed",
            Decision::Refused { reason } => reason.code(),
        };
        // Capped here as the audit log caps it, so the log line is bounded too.
        let entry = super::audit::cap(AuditRecord {
            at: self.clock.now(),
            op: intent.class.as_str().to_string(),
            guest_id: intent.guest_id.clone(),
            decision: word.to_string(),
            reason: why,
            key_id: key_id.clone(),
            delivery: delivery.cloned(),
            truncated: Vec::new(),
        });
        let why = &entry.reason;
        let guest = intent.guest_id.as_deref().unwrap_or("-");
        if let Err(e) = self.audit.record(&entry) {
            crate::error!(
                gate_audit_failed,
                "gate decision could not be audited",
                op = intent.class,
                guest = guest,
                error = e
            );
            // An unaudited destructive action must not run.
            if let Decision::Allowed {
                reason: AllowReason::Signed | AllowReason::AgentProvenance,
                ..
            } = decision
            {
                return Decision::Refused {
                    reason: Refusal::StateDamaged,
                };
            }
        }
        match &decision {
            Decision::Allowed { .. } => crate::info!(
                gate_decision,
                "gate allowed",
                allowed = true,
                op = intent.class,
                guest = guest,
                reason = why,
                key_id = key_id.as_deref().unwrap_or("-")
            ),
            Decision::Refused { reason } => crate::warn!(
                gate_decision,
                "gate refused",
                allowed = false,
                op = intent.class,
                guest = guest,
                decision = reason.code(),
                reason = why
            ),
        }
        decision
    }

    /// What [`Gate::authorize`] would say without a signature, for `felhom-agent plan`:
    /// classifies and checks state, never verifies (so burns no nonce), never audits.
    pub fn dry_run(&self, intent: &Intent) -> Decision {
        dry_decision(self.pre(intent))
    }
}

/// What the gate reads of the agent's own history: the provenance of a guest and
/// whether that history can be trusted. The live [`Journal`] gives it to the gate, a
/// read-only [`JournalView`] to `felhom-agent plan`.
pub trait History {
    /// The agent's own provenance for `vmid` (see [`Journal::provenance`]).
    fn provenance(&self, vmid: u32, txn: Option<&str>) -> Option<Provenance>;
    /// Why the history is damaged, if it is.
    fn damaged(&self) -> Option<String>;
}

impl History for Journal {
    fn provenance(&self, vmid: u32, txn: Option<&str>) -> Option<Provenance> {
        Journal::provenance(self, vmid, txn)
    }

    fn damaged(&self) -> Option<String> {
        Journal::damaged(self)
    }
}

impl History for JournalView {
    fn provenance(&self, vmid: u32, txn: Option<&str>) -> Option<Provenance> {
        JournalView::provenance(self, vmid, txn)
    }

    fn damaged(&self) -> Option<String> {
        JournalView::damaged(self).map(str::to_owned)
    }
}

/// Who made an intent: the agent itself (reconcile, Recover, restore tests), or an
/// operator through the signed-op channel (the params are the blob's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Agent,
    Operator,
}

/// The classifier and the state checks, before any signature is looked at.
fn pre(intent: &Intent, history: &dyn History, nonce_damage: Option<String>) -> Pre {
    let damage = history
        .damaged()
        .map(|d| format!("journal damaged: {d}"))
        .or(nonce_damage);
    // Provenance from a damaged journal is not trusted.
    if !intent.class.is_benign_by_class() && !intent.class.in_catalogue() {
        return Pre::Refuse(
            Refusal::UnknownOp,
            format!("{} is not in the signed-op catalogue", intent.class),
        );
    }
    let provenance: Option<Provenance> = match (&intent.class, intent.vmid(), &damage) {
        (OpClass::GuestDestroy, Some(vmid), None) => {
            history.provenance(vmid, intent.params.get("txn").map(String::as_str))
        }
        _ => None,
    };
    match classify(intent, provenance) {
        Class::Benign => Pre::Allow(AllowReason::Benign),
        Class::BenignByProvenance(_) => Pre::Allow(AllowReason::AgentProvenance),
        Class::Destructive => match damage {
            Some(d) => Pre::Refuse(Refusal::StateDamaged, d),
            None => Pre::NeedsSignature,
        },
    }
}

fn dry_decision(pre: Pre) -> Decision {
    match pre {
        Pre::Allow(r) => Decision::Allowed {
            reason: r,
            verified: None,
        },
        Pre::Refuse(r, _) => Decision::Refused { reason: r },
        Pre::NeedsSignature => Decision::Refused {
            reason: Refusal::PendingSignature,
        },
    }
}

/// [`Gate::dry_run`] over any [`History`], with no gate built: what `felhom-agent plan`
/// shows. Never verifies, never burns a nonce, never audits.
pub(crate) fn dry_run(intent: &Intent, history: &dyn History) -> Decision {
    dry_decision(pre(intent, history, None))
}

/// Why the guest is not the one the op was signed for, if it is not. Only ops that
/// name a guest are bound to one.
fn guest_changed(v: &authz::VerifiedOp, guest: &GuestNow) -> Option<String> {
    let (Some(id), Some(signed)) = (&v.blob.guest_id, &v.blob.guest_digest) else {
        return None;
    };
    match guest {
        GuestNow::Present {
            digest: Some(now), ..
        } if now == signed => None,
        GuestNow::Present {
            digest: Some(now), ..
        } => Some(format!(
            "guest {id}: config digest is {now}, the op was signed for {signed}"
        )),
        GuestNow::Present { digest: None, .. } => {
            Some(format!("guest {id}: Proxmox sent no config digest"))
        }
        GuestNow::Gone => Some(format!("guest {id} no longer exists")),
        GuestNow::Unreadable(e) => Some(format!("guest {id}: config could not be read: {e}")),
        GuestNow::NotRead => Some(format!("guest {id}: config not read before dispatch")),
    }
}

/// The first field in which the signed op differs from the intent, if any.
fn binding_mismatch(intent: &Intent, v: &authz::VerifiedOp) -> Option<&'static str> {
    if v.blob.op != intent.class.as_str() {
        Some("op")
    } else if v.blob.host_id != intent.host_id {
        Some("host_id")
    } else if v.blob.guest_id != intent.guest_id {
        Some("guest_id")
    } else if v.blob.params != intent.params {
        Some("params")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_codes_are_snake_case_words() {
        assert_eq!(Refusal::PendingSignature.code(), "pending_signature");
        assert_eq!(Refusal::GuestChanged.code(), "guest_changed");
        assert_eq!(Refusal::Protected.code(), "protected");
        assert_eq!(Refusal::UnknownOp.code(), "unknown_op");
        assert_eq!(Refusal::RoleDenied.code(), "role_denied");
        assert_eq!(Refusal::BindingMismatch.code(), "binding_mismatch");
        assert_eq!(Refusal::StateDamaged.code(), "state_damaged");
        assert_eq!(Refusal::TargetMissing.code(), "target_missing");
        assert_eq!(Refusal::ForeignVolume.code(), "foreign_volume");
        assert_eq!(Refusal::ShrinkRefused.code(), "shrink_refused");
        assert_eq!(
            Refusal::Rejected(authz::AuthzError::Replay("x".into())).code(),
            "replay"
        );
    }
}
