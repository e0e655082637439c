//! Where the hub's wire and reconcile's records meet: the audit log's records become
//! the report's `audit_tail` and `pending_signatures` entries here, and the hub's
//! control envelope paces the engine here, and nowhere else.
//!
//! The two formats are separate on purpose: `audit.log` is this host's durable record
//! and the report is a contract with the hub, so either can change without the other.
//! This module only translates; it never writes, and never adds to what a record says.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::hub::collect::{AuditTail, ReadError};
use crate::hub::poller::SharedEnvelope;
use crate::hub::report::{AuditEntry, Delivery, Truncated};
use crate::reconcile::audit::{AuditLog, AuditRecord};
use crate::reconcile::engine::Pacing;

/// The wire entry for one audit record.
pub fn wire_entry(r: AuditRecord) -> AuditEntry {
    AuditEntry {
        at: r.at,
        op: r.op,
        guest_id: r.guest_id,
        decision: r.decision,
        reason: r.reason,
        key_id: r.key_id,
        delivery: r.delivery.map(|d| Delivery {
            hub_op_id: d.hub_op_id,
            nonce: d.nonce,
            index: d.index,
            blob_sha256: d.blob_sha256,
            blob_bytes: d.blob_bytes,
        }),
        truncated: r
            .truncated
            .into_iter()
            .map(|t| Truncated {
                field: t.field.as_str().to_string(),
                sha256: t.sha256,
                bytes: t.bytes,
            })
            .collect(),
    }
}

/// The report's audit collections, bound to the reconciler's audit log once it is
/// open. The poller starts before the reconciler (the hub keeps hearing from the host
/// while Recover waits on a task), so the reports sent until then carry empty ones.
#[derive(Debug, Default)]
pub(crate) struct AuditFeed(OnceLock<Arc<AuditLog>>);

impl AuditFeed {
    /// Binds the feed to `log`; `false` (and the first kept) if it was already bound.
    pub(crate) fn bind(&self, log: Arc<AuditLog>) -> bool {
        self.0.set(log).is_ok()
    }
}

impl AuditTail for AuditFeed {
    fn last(&self, n: usize) -> Result<Vec<AuditEntry>, ReadError> {
        Ok(self.0.get().map_or_else(Vec::new, |log| {
            log.tail(n).into_iter().map(wire_entry).collect()
        }))
    }

    fn pending(&self) -> Result<Vec<AuditEntry>, ReadError> {
        Ok(self.0.get().map_or_else(Vec::new, |log| {
            log.pending().into_iter().map(wire_entry).collect()
        }))
    }
}

/// The hub's last envelope paces the engine: its poll interval, its
/// `desired_generation`, and `blocked`. Before any round succeeded nothing is asked.
impl Pacing for SharedEnvelope {
    fn interval(&self) -> Option<Duration> {
        self.get()
            .and_then(|e| e.poll_interval_seconds)
            .map(Duration::from_secs)
    }

    fn generation(&self) -> u64 {
        self.get().map_or(0, |e| e.desired_generation)
    }

    fn held(&self) -> bool {
        self.get().is_some_and(|e| e.blocked)
    }
}
