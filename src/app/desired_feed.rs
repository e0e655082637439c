//! The hub as the source of desired state (`reconcile.source: "hub"`): a
//! [`DesiredProvider`] over the hub's desired-state feed and reconcile's
//! [`DesiredCache`] (`state_dir/desired.json`).
//!
//! It fetches at the first pass after a start (a `304` when the cache is current),
//! whenever the hub's envelope (from a report or the event stream) announces a
//! `desired_generation` above the one held, and, while no document is held at all,
//! until one is. A fetch that fails, a document the cache refuses, and a hub that still
//! announces more than it serves are tried again after a back-off (5 s doubling to
//! 5 min), so neither a hub that is down nor one that lies is hammered by the engine's
//! frequent look for changes; a generation announced above the one announced at the
//! last fetch is news and is fetched at once.
//!
//! A refused document is logged (`desired_refused`) and audited once per distinct
//! document under its code (`desired_rollback`, `desired_conflict`, `desired_invalid`
//! with the path of the bad field, `desired_too_large`, `desired_not_saved`), so the
//! hub sees it in the next report; the last good document stays. This module never
//! gives the engine an empty state for want of a document (with none held, no pass
//! runs), never holds a document the cache did not accept, and never lets the bearer
//! key into an error or a log line.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::base::backoff::doubling;
use crate::base::encoding::hex_encode;
use crate::base::sync::lock;
use crate::base::time::Clock;
use crate::hub::desired_feed::{DesiredFetch, DesiredStateClient};
use crate::reconcile::audit::{AuditLog, AuditRecord};
use crate::reconcile::desired::{DesiredError, DesiredProvider, DesiredState};
use crate::reconcile::desired_cache::{DesiredCache, DesiredOfferError, Offered};
use crate::reconcile::engine::Pacing;

/// The word the audit records as the op of a refused document.
pub(crate) const DESIRED_STATE_OP: &str = "desired_state";

/// How long after a failed or refused fetch the next one waits, doubling per failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchBackoff {
    /// After the first failure.
    pub initial: Duration,
    /// The longest wait.
    pub cap: Duration,
}

impl Default for FetchBackoff {
    /// 5 s doubling to 5 min.
    fn default() -> Self {
        FetchBackoff {
            initial: Duration::from_secs(5),
            cap: Duration::from_secs(300),
        }
    }
}

impl FetchBackoff {
    fn after(&self, failures: u32) -> Duration {
        doubling(self.initial, self.cap, failures)
    }
}

#[derive(Debug, Default)]
struct FeedState {
    /// A fetch has been tried since the start.
    tried: bool,
    /// Fetches in a row that failed, were refused or served less than announced.
    failures: u32,
    /// No fetch before this.
    retry_at: Option<Instant>,
    /// Why the last fetch brought nothing good, for the error when none is held.
    last_problem: Option<String>,
    /// The SHA-256 of the last refused document audited: each is audited once.
    refused_audited: Option<String>,
    /// The generation the hub announced when the last fetch was made: a higher one is
    /// news, fetched at once, back-off or not.
    announced_at_fetch: u64,
}

/// The hub's desired state, cached durably.
pub struct HubDesired {
    client: DesiredStateClient,
    cache: DesiredCache,
    announced: Arc<dyn Pacing>,
    audit: Arc<AuditLog>,
    clock: Arc<dyn Clock>,
    backoff: FetchBackoff,
    state: Mutex<FeedState>,
}

impl fmt::Debug for HubDesired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubDesired")
            .field("client", &self.client)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl HubDesired {
    /// A provider fetching through `client` into `cache` when `announced` (the hub's
    /// envelope) shows a newer generation; refusals are audited to `audit`.
    pub fn new(
        client: DesiredStateClient,
        cache: DesiredCache,
        announced: Arc<dyn Pacing>,
        audit: Arc<AuditLog>,
        clock: Arc<dyn Clock>,
    ) -> HubDesired {
        if let Some(held) = cache.held() {
            crate::info!(
                desired_loaded,
                "desired state loaded from the cache",
                source = "cache",
                file = cache.path().display(),
                generation = held.generation,
                guests = held.guests.len()
            );
        }
        HubDesired {
            client,
            cache,
            announced,
            audit,
            clock,
            backoff: FetchBackoff::default(),
            state: Mutex::new(FeedState::default()),
        }
    }

    /// Replaces the back-off (tests use milliseconds).
    pub fn with_backoff(mut self, backoff: FetchBackoff) -> HubDesired {
        self.backoff = backoff;
        self
    }

    /// The generation held, if any.
    pub fn generation(&self) -> Option<u64> {
        self.cache.generation()
    }

    fn due(&self, st: &FeedState, now: Instant) -> bool {
        let announced = self.announced.generation();
        let news = st.tried && announced > st.announced_at_fetch;
        if st.retry_at.is_some_and(|at| now < at) && !news {
            return false;
        }
        match self.cache.generation() {
            None => true,
            Some(held) => !st.tried || announced > held,
        }
    }

    fn fetch(&self, st: &mut FeedState, now: Instant) {
        st.tried = true;
        st.announced_at_fetch = self.announced.generation();
        let problem = match self.client.fetch(self.cache.generation()) {
            Ok(DesiredFetch::NotModified) => None,
            Ok(DesiredFetch::Document(bytes)) => match self.cache.offer(&bytes) {
                Ok(Offered::Accepted(state)) => {
                    self.loaded(&state);
                    None
                }
                Ok(Offered::Unchanged) => None,
                Err(e) => {
                    self.refused(st, &bytes, &e);
                    Some(format!("the hub's document was refused: {e}"))
                }
            },
            Err(e) => {
                crate::warn!(
                    desired_fetch_failed,
                    "desired state fetch failed; keeping the last good state",
                    url = self.client.endpoint(),
                    error = e,
                    kept_generation = self.held_word()
                );
                Some(format!("fetch failed: {e}"))
            }
        };
        let announced = self.announced.generation();
        let behind = self.cache.generation().is_none_or(|held| announced > held);
        match (problem, behind) {
            (None, false) => {
                st.failures = 0;
                st.retry_at = None;
                st.last_problem = None;
            }
            (problem, _) => {
                if problem.is_none() {
                    crate::warn!(
                        desired_behind,
                        "the hub announces a newer desired state than it serves",
                        announced = announced,
                        held = self.held_word()
                    );
                }
                st.failures = st.failures.saturating_add(1);
                st.retry_at = Some(now + self.backoff.after(st.failures));
                st.last_problem = Some(problem.unwrap_or_else(|| {
                    format!("the hub announced generation {announced} but served less")
                }));
            }
        }
    }

    fn held_word(&self) -> String {
        self.cache
            .generation()
            .map_or_else(|| "none".to_owned(), |g| g.to_string())
    }

    fn loaded(&self, state: &DesiredState) {
        crate::info!(
            desired_loaded,
            "desired state loaded from the hub",
            source = "hub",
            file = self.cache.path().display(),
            generation = state.generation,
            guests = state.guests.len()
        );
    }

    /// Logs a refused document and audits it, once per distinct document.
    fn refused(&self, st: &mut FeedState, bytes: &[u8], e: &DesiredOfferError) {
        crate::warn!(
            desired_refused,
            "desired state from the hub refused; keeping the last good state",
            decision = e.code(),
            error = e,
            kept_generation = self.held_word()
        );
        let sha = hex_encode(&Sha256::digest(bytes));
        if st.refused_audited.as_deref() == Some(sha.as_str()) {
            return;
        }
        let reason = format!("{e} (document sha256 {sha}, {} bytes)", bytes.len());
        let record = AuditRecord::new(
            self.clock.now(),
            DESIRED_STATE_OP,
            None,
            e.code(),
            reason,
            None,
        );
        match self.audit.record(&record) {
            Ok(_) => st.refused_audited = Some(sha),
            Err(err) => crate::error!(
                desired_refusal_audit_failed,
                "refused desired state could not be audited",
                decision = e.code(),
                error = err
            ),
        }
    }
}

impl DesiredProvider for HubDesired {
    fn desired(&self) -> Result<DesiredState, DesiredError> {
        let now = Instant::now();
        let mut st = lock(&self.state);
        if self.due(&st, now) {
            self.fetch(&mut st, now);
        }
        self.cache.held().ok_or_else(|| DesiredError::NotYet {
            why: format!(
                "{} holds none and the hub has served none that was accepted ({})",
                self.cache.path().display(),
                st.last_problem.as_deref().unwrap_or("not fetched yet")
            ),
        })
    }

    fn changed(&self) -> bool {
        self.due(&lock(&self.state), Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_its_cap() {
        let b = FetchBackoff::default();
        let got: Vec<u64> = (1..=8).map(|n| b.after(n).as_secs()).collect();
        assert_eq!(got, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.after(u32::MAX), Duration::from_secs(300));
    }
}
