//! The `rotate_signers` executor: a rotation the gate allowed (its signatures, roles,
//! threshold, version and new set checked, its nonce burned) made durable and live.
//!
//! It runs as the signed job's journaled step (`started` is durable before anything
//! here), re-plans the rotation against the set held **now** (a rotation that landed
//! meanwhile makes this one a skipped version: it fails, nothing written), audits the
//! old and new fingerprints, and applies it through [`SignerSet::apply_rotation`]:
//! `signers.json` replaced durably, then the set swapped. From that moment an op signed
//! by a removed key is refused. [`recover_rotations`] settles a rotation left in flight
//! by a crash from what `signers.json` holds. This module never talks to Proxmox and
//! never writes a file but through the signer set.

use std::fmt;
use std::sync::Arc;

use crate::authz::{SignerPolicy, SignerSet, plan_rotation};
use crate::base::time::{Clock, SystemClock};
use crate::reconcile::audit::{AuditLog, AuditRecord};
use crate::reconcile::classify::{Intent, OpClass};
use crate::reconcile::gate::{GuestNow, Refusal};
use crate::reconcile::jobs::{DestructiveExecutor, OnTask};
use crate::reconcile::journal::{Journal, JournalError, OpState};

/// The audit decision word of an applied rotation (its summary record).
pub const ROTATED: &str = "rotated";
/// The audit decision words of one signer in a rotation: in the old set only, in the
/// new set only, in both.
pub const SIGNER_REMOVED: &str = "signer_removed";
/// See [`SIGNER_REMOVED`].
pub const SIGNER_ADDED: &str = "signer_added";
/// See [`SIGNER_REMOVED`].
pub const SIGNER_KEPT: &str = "signer_kept";

/// Executes `rotate_signers` ops on one signer set.
pub struct RotationExecutor {
    set: Arc<SignerSet>,
    audit: Arc<AuditLog>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for RotationExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotationExecutor")
            .field("set", &self.set)
            .finish_non_exhaustive()
    }
}

impl RotationExecutor {
    /// An executor rotating `set`, auditing each rotation to `audit`.
    pub fn new(set: Arc<SignerSet>, audit: Arc<AuditLog>) -> RotationExecutor {
        RotationExecutor {
            set,
            audit,
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses `clock` for audit timestamps.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> RotationExecutor {
        self.clock = clock;
        self
    }
}

/// One audit record per signer of the old and the new set (an audit field holds 256
/// characters, a set up to 32 keys), then the summary: every fingerprint, old and new,
/// is in the audit log before the set changes.
fn audit_records(old: &SignerPolicy, new: &SignerPolicy) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let word = |v: u64, s: &crate::authz::Signer| {
        format!(
            "version {v}: {} {} {}",
            s.role.as_str(),
            s.key_id,
            s.fingerprint
        )
    };
    for s in &old.signers {
        let kept = new.signers.iter().any(|n| n.fingerprint == s.fingerprint);
        if !kept {
            out.push((SIGNER_REMOVED, word(old.version, s)));
        }
    }
    for s in &new.signers {
        let kept = old.signers.iter().any(|o| o.fingerprint == s.fingerprint);
        let w = if kept { SIGNER_KEPT } else { SIGNER_ADDED };
        out.push((w, word(new.version, s)));
    }
    out.push((
        ROTATED,
        format!(
            "signer policy version {} -> {}: {} signers ({} recovery) replace {}",
            old.version,
            new.version,
            new.signers.len(),
            new.recovery_count(),
            old.signers.len()
        ),
    ));
    out
}

impl DestructiveExecutor for RotationExecutor {
    fn carries(&self, class: &OpClass) -> bool {
        *class == OpClass::RotateSigners
    }

    fn guest_now(&self, _vmid: u32) -> GuestNow {
        GuestNow::NotRead
    }

    fn check_target(&self, _intent: &Intent) -> Result<(), (Refusal, String)> {
        // The new set and its version are the gate's checks (before the nonce); the
        // rotation has no target of its own.
        Ok(())
    }

    fn unprotect(&self, _vmid: u32, _digest: &str, _on: &mut OnTask<'_>) -> Result<(), String> {
        Err("a signer rotation names no guest".into())
    }

    fn stop_guest(&self, _vmid: u32, _on: &mut OnTask<'_>) -> Result<(), String> {
        Err("a signer rotation names no guest".into())
    }

    fn execute(&self, intent: &Intent, _on_task: &mut OnTask<'_>) -> Result<(), String> {
        if intent.class != OpClass::RotateSigners {
            return Err(format!("no executor for {}", intent.class));
        }
        let held = self.set.policy();
        let next = plan_rotation(&intent.params, &held, &self.set.revoked())
            .map_err(|e| format!("rotation refused at execution: {e}"))?;
        // Audited before it is applied: no rotation without its record.
        for (decision, reason) in audit_records(&held, &next) {
            self.audit
                .record(&AuditRecord::new(
                    self.clock.now(),
                    OpClass::RotateSigners.as_str(),
                    None,
                    decision,
                    reason,
                    None,
                ))
                .map_err(|e| format!("rotation not audited, not applied: {e}"))?;
        }
        let version = next.version;
        let old = self
            .set
            .apply_rotation(next)
            .map_err(|e| format!("rotation not applied: {e}"))?;
        crate::info!(
            signers_rotated,
            "signer set rotated",
            from_version = old.version,
            to_version = version,
            signers = self.set.policy().signers.len()
        );
        Ok(())
    }
}

/// Settles every `rotate_signers` op the journal holds in flight (a crash between its
/// `started` record and its end) from the version `set` holds: at or past the op's
/// `version`, the rename happened and it succeeded; below it, nothing was applied and it
/// failed (never re-executed: a retry needs a fresh signature). Run before Recover.
pub fn recover_rotations(
    journal: &Journal,
    set: &SignerSet,
    clock: &dyn Clock,
) -> Result<usize, JournalError> {
    let held = set.policy().version;
    let mut settled = 0;
    for rec in journal.in_flight() {
        if rec.class != OpClass::RotateSigners {
            continue;
        }
        let asked: Option<u64> = rec.params.get("version").and_then(|v| v.parse().ok());
        let (state, detail) = match asked {
            Some(v) if held >= v => (
                OpState::Succeeded,
                format!("recovered: signers.json holds version {held}"),
            ),
            _ => (
                OpState::Failed,
                format!(
                    "recovered: signers.json holds version {held}; the rotation was not applied and is not re-executed"
                ),
            ),
        };
        let mut done = rec.step(state, clock.now());
        done.detail = Some(detail);
        journal.append(&done)?;
        crate::info!(
            rotation_recovered,
            "in-flight signer rotation settled",
            op_id = rec.op_id,
            state = state.as_str(),
            version = held
        );
        settled += 1;
    }
    Ok(settled)
}
