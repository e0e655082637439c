//! Where the outcomes of hub-delivered signed ops meet the hub's wire: reconcile's
//! [`OpResults`] become the report's `signed_op_results` here, and the envelope's
//! `ack_signed_op_results` drop them here.
//!
//! [`ResultsFeed`] is the collector's read-only [`OpResultsSource`], bound to the
//! reconciler's results once they are open (reports before that carry none).
//! [`AckingRound`] wraps the hub round: it notes how far the results went before the
//! report was collected and, once the hub answered, drops the acknowledged ids up to
//! there — an outcome recorded while the report was in flight is kept for the next one,
//! even under an acknowledged id. [`apply_acks`] is the one entry point for
//! acknowledgements, whatever carries them.
//!
//! This module only translates and forwards: it never decides an outcome, never writes
//! but through [`OpResults`], and an acknowledgement never changes what ran — it only
//! stops an entry being reported.

use std::sync::{Arc, OnceLock};

use crate::hub::collect::{OpResultsSource, ReadError};
use crate::hub::envelope::ControlEnvelope;
use crate::hub::poller::Reporter;
use crate::hub::report::SignedOpResult;
use crate::reconcile::op_results::{OpResult, OpResults};

/// The wire entry for one result.
pub fn wire_result(r: OpResult) -> SignedOpResult {
    SignedOpResult {
        id: r.id,
        nonce: r.nonce,
        outcome: r.outcome.as_str().to_string(),
        code: r.code,
        at: r.at,
    }
}

/// The report's `signed_op_results`, bound to the reconciler's results once open.
#[derive(Debug, Default)]
pub struct ResultsFeed(OnceLock<Arc<OpResults>>);

impl ResultsFeed {
    /// Binds the feed to `results`; `false` (and the first kept) if already bound.
    pub fn bind(&self, results: Arc<OpResults>) -> bool {
        self.0.set(results).is_ok()
    }

    /// The results, once bound.
    pub fn results(&self) -> Option<&Arc<OpResults>> {
        self.0.get()
    }
}

impl OpResultsSource for ResultsFeed {
    fn signed_op_results(&self) -> Result<Vec<SignedOpResult>, ReadError> {
        Ok(self.0.get().map_or_else(Vec::new, |r| {
            r.results().into_iter().map(wire_result).collect()
        }))
    }
}

/// Drops the acknowledged `ids` from `results` — only entries last changed at or before
/// `through`, when given (see [`OpResults::acknowledge_through`]) — and logs what it
/// did. A failed save is logged, never fatal: the entries are gone from memory, and
/// after a restart they are reported (and acknowledged) again.
pub fn apply_acks(results: &OpResults, ids: &[String], through: Option<u64>) -> usize {
    if ids.is_empty() {
        return 0;
    }
    match results.acknowledge_through(ids, through.unwrap_or(u64::MAX)) {
        Ok(dropped) => {
            crate::info!(
                signed_op_results_acked,
                "signed op results acknowledged by the hub",
                acked = ids.len(),
                dropped = dropped,
                kept = results.results().len()
            );
            dropped
        }
        Err(e) => {
            crate::error!(
                op_results_not_saved,
                "signed op results: acknowledgement not saved",
                error = e
            );
            0
        }
    }
}

/// A hub round that applies the acknowledgements its envelope carries.
#[derive(Debug)]
pub struct AckingRound<R> {
    inner: R,
    feed: Arc<ResultsFeed>,
}

impl<R> AckingRound<R> {
    /// `inner`, applying acknowledgements to the results `feed` is bound to.
    pub fn new(inner: R, feed: Arc<ResultsFeed>) -> Self {
        AckingRound { inner, feed }
    }
}

impl<R: Reporter> Reporter for AckingRound<R> {
    type Error = R::Error;

    fn round(&mut self) -> Result<ControlEnvelope, R::Error> {
        // Taken before the report is collected: everything at or before it is in it.
        let mark = self.feed.results().map(|r| r.last_seq());
        let envelope = self.inner.round()?;
        if let (Some(results), Some(mark)) = (self.feed.results(), mark) {
            apply_acks(results, &envelope.ack_signed_op_results, Some(mark));
        }
        Ok(envelope)
    }
}
