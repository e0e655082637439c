//! The poller: report at once, then every interval, until shutdown.
//!
//! It owns the schedule and nothing else. A round (collect + post) is a [`Reporter`];
//! waiting is a [`Sleeper`], so tests drive the loop with a fake that records the waits
//! instead of sleeping. A successful round adopts the hub's interval (already clamped
//! to 60..=3600 s by the envelope parser) and publishes the envelope for the reconcile
//! engine through [`SharedEnvelope`]. A failed round is logged and the loop goes on,
//! backing off exponentially with jitter on consecutive failures — never waiting less
//! than the interval, never more than [`BACKOFF_CAP_SECONDS`] (or the interval, if that
//! is longer). Shutdown wakes the wait at once.
//!
//! The poller never acts on the envelope's `blocked`/`desired_generation`/
//! `has_signed_ops`: it only keeps them.

use crate::base::backoff::doubling;
use crate::base::sync::lock;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::envelope::{ControlEnvelope, clamp_poll_seconds};
use super::ops_feed::Announcement;
use crate::base::shutdown::Shutdown;

/// The longest wait between attempts while rounds keep failing, in seconds (unless the
/// interval itself is longer).
pub(crate) const BACKOFF_CAP_SECONDS: u64 = 900;

/// The most jitter added to a backoff wait, as a fraction of it.
pub(crate) const JITTER_FRACTION: f64 = 0.25;

/// One round of the loop: collect, send, return the hub's envelope.
pub trait Reporter {
    /// Why a round failed; logged by its `Display`, which must hold no secret.
    type Error: std::error::Error;
    /// Runs one round.
    fn round(&mut self) -> Result<ControlEnvelope, Self::Error>;
}

/// How the poller waits.
pub trait Sleeper {
    /// Waits up to `d`; returns `true` when the loop must stop (shutdown).
    fn sleep(&self, d: Duration) -> bool;
    /// Whether the loop must stop now, without waiting.
    fn stopped(&self) -> bool;
}

impl Sleeper for Shutdown {
    fn sleep(&self, d: Duration) -> bool {
        Shutdown::sleep(self, d)
    }

    fn stopped(&self) -> bool {
        self.is_triggered()
    }
}

/// The latest control envelope, shared between the poller, the event stream and their
/// readers. The freshest word wins: an event that arrived after a report was sent is
/// newer than that report's answer, so the answer then sets only the interval.
#[derive(Debug, Clone, Default)]
pub struct SharedEnvelope(Arc<Mutex<Shared>>);

#[derive(Debug, Default)]
struct Shared {
    envelope: Option<ControlEnvelope>,
    /// When the last event was taken.
    event_at: Option<Instant>,
}

impl SharedEnvelope {
    /// The last envelope received, if any round has succeeded.
    pub fn get(&self) -> Option<ControlEnvelope> {
        lock(&self.0).envelope.clone()
    }

    /// A report's answer, for a report sent at `sent`.
    fn set_report(&self, e: ControlEnvelope, sent: Instant) {
        let mut slot = lock(&self.0);
        let newer_event = slot.event_at.is_some_and(|at| at > sent);
        let current = slot.envelope.take();
        slot.envelope = Some(match (newer_event, current) {
            (true, Some(current)) => ControlEnvelope {
                poll_interval_seconds: e.poll_interval_seconds,
                ..current
            },
            _ => e,
        });
    }

    /// Takes an event's `desired_generation`, `has_signed_ops` and `blocked`, keeping
    /// the interval the last report's envelope set.
    pub(crate) fn merge_event(&self, event: &ControlEnvelope) {
        let mut slot = lock(&self.0);
        let interval = slot.envelope.as_ref().and_then(|e| e.poll_interval_seconds);
        slot.envelope = Some(ControlEnvelope {
            poll_interval_seconds: interval,
            ..event.clone()
        });
        slot.event_at = Some(Instant::now());
    }
}

/// A jitter source: each call returns a number in `[0, 1)`.
pub(crate) type Jitter = Box<dyn FnMut() -> f64 + Send>;

/// Jitter from the standard library's per-process random hash keys: unpredictable
/// enough to spread hosts apart, with no extra dependency.
pub(crate) fn random_jitter() -> Jitter {
    let state = RandomState::new();
    let mut counter: u64 = 0;
    Box::new(move || {
        counter = counter.wrapping_add(1);
        let mut h = state.build_hasher();
        h.write_u64(counter);
        // 53 high bits make an evenly spread f64 in [0, 1).
        (h.finish() >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// The report loop.
pub struct Poller<R, S> {
    reporter: R,
    sleeper: S,
    interval_seconds: u64,
    second: Duration,
    failures: u32,
    jitter: Jitter,
    latest: SharedEnvelope,
    announcement: Option<Announcement>,
}

impl<R, S> fmt::Debug for Poller<R, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller")
            .field("interval_seconds", &self.interval_seconds)
            .field("second", &self.second)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl<R: Reporter, S: Sleeper> Poller<R, S> {
    /// A poller starting at `initial_seconds` (clamped like the hub's value) until the
    /// hub says otherwise, with random jitter and real seconds.
    pub fn new(reporter: R, sleeper: S, initial_seconds: u64) -> Self {
        Poller {
            reporter,
            sleeper,
            interval_seconds: clamp_poll_seconds(initial_seconds),
            second: Duration::from_secs(1),
            failures: 0,
            jitter: random_jitter(),
            latest: SharedEnvelope::default(),
            announcement: None,
        }
    }

    /// Raises `announcement` after each round whose envelope says the hub has signed
    /// ops, once that envelope is the one [`Poller::envelope`] shows: whoever wakes for
    /// the ops reads the `blocked` that came with them, never the round's before.
    pub fn announcing(mut self, announcement: Announcement) -> Self {
        self.announcement = Some(announcement);
        self
    }

    /// Replaces the jitter source (tests pass a constant).
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// How long one "second" of the schedule lasts. Always one real second in a release
    /// build; debug builds may shorten it so process tests need not wait minutes.
    pub fn with_second(mut self, second: Duration) -> Self {
        self.second = second;
        self
    }

    /// The handle through which readers see the latest envelope.
    pub fn envelope(&self) -> SharedEnvelope {
        self.latest.clone()
    }

    /// The interval in force, in seconds.
    pub fn interval_seconds(&self) -> u64 {
        self.interval_seconds
    }

    /// Consecutive failed rounds so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// The reporter, for inspection.
    pub fn reporter(&self) -> &R {
        &self.reporter
    }

    /// Runs rounds until the sleeper says stop: the first at once, then one per wait.
    pub fn run(&mut self) {
        while !self.sleeper.stopped() {
            let wait = self.step();
            if self.sleeper.sleep(wait) {
                break;
            }
        }
        crate::info!(hub_poller_stopped, "hub poller stopped");
    }

    /// Runs one round and returns how long to wait before the next.
    pub fn step(&mut self) -> Duration {
        let sent = Instant::now();
        match self.reporter.round() {
            Ok(envelope) => {
                if self.failures > 0 {
                    crate::info!(
                        report_recovered,
                        "hub report succeeded again",
                        failed_rounds = self.failures
                    );
                }
                self.failures = 0;
                if let Some(secs) = envelope.poll_interval_seconds
                    && secs != self.interval_seconds
                {
                    crate::info!(
                        poll_interval_adopted,
                        "adopting the hub's poll interval",
                        from_seconds = self.interval_seconds,
                        to_seconds = secs
                    );
                    self.interval_seconds = secs;
                }
                if envelope.blocked {
                    crate::warn!(host_blocked, "the hub marks this host blocked");
                }
                let (generation, has_ops) = (envelope.desired_generation, envelope.has_signed_ops);
                self.latest.set_report(envelope, sent);
                if has_ops && let Some(a) = &self.announcement {
                    a.raise();
                }
                crate::debug!(
                    report_sent,
                    "hub report sent",
                    next_in_seconds = self.interval_seconds,
                    desired_generation = generation,
                    has_signed_ops = has_ops
                );
                self.second * u32::try_from(self.interval_seconds).unwrap_or(u32::MAX)
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let secs = backoff_seconds(self.interval_seconds, self.failures);
                let base = self.second * u32::try_from(secs).unwrap_or(u32::MAX);
                let j = (self.jitter)().clamp(0.0, 1.0);
                let wait = base + base.mul_f64(JITTER_FRACTION * j);
                crate::warn!(
                    report_failed,
                    "hub round failed; will retry",
                    error = e,
                    consecutive_failures = self.failures,
                    retry_in_ms = wait.as_millis()
                );
                wait
            }
        }
    }
}

/// The wait in seconds after `failures` consecutive failed rounds: the interval,
/// doubled per further failure, capped at [`BACKOFF_CAP_SECONDS`] but never below the
/// interval.
pub(crate) fn backoff_seconds(interval_seconds: u64, failures: u32) -> u64 {
    let (interval, cap) = (
        Duration::from_secs(interval_seconds),
        Duration::from_secs(BACKOFF_CAP_SECONDS),
    );
    doubling(interval, cap, failures).as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_never_undercuts_the_interval() {
        let seq: Vec<u64> = (1..=7).map(|k| backoff_seconds(60, k)).collect();
        assert_eq!(seq, [60, 120, 240, 480, 900, 900, 900]);
        assert_eq!(backoff_seconds(3600, 1), 3600);
        assert_eq!(backoff_seconds(3600, 9), 3600);
        assert_eq!(backoff_seconds(600, 2), 900);
        assert_eq!(backoff_seconds(60, u32::MAX), 900);
    }

    struct Answers(ControlEnvelope);

    impl Reporter for Answers {
        type Error = std::io::Error;
        fn round(&mut self) -> Result<ControlEnvelope, std::io::Error> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn a_round_with_signed_ops_shares_its_envelope_and_raises_the_announcement() {
        let blocked_with_ops = ControlEnvelope {
            blocked: true,
            has_signed_ops: true,
            ..ControlEnvelope::default()
        };
        let announcement = Announcement::new();
        let mut poller = Poller::new(Answers(blocked_with_ops.clone()), Shutdown::new(), 60)
            .announcing(announcement.clone());
        poller.step();
        assert!(announcement.take(Duration::ZERO), "announced");
        assert_eq!(poller.envelope().get(), Some(blocked_with_ops.clone()));

        // No ops in the answer, or no announcement asked for: nothing raised.
        let quiet = Announcement::new();
        let mut poller = Poller::new(Answers(ControlEnvelope::default()), Shutdown::new(), 60)
            .announcing(quiet.clone());
        poller.step();
        assert!(!quiet.take(Duration::ZERO));
        let mut unannounced = Poller::new(Answers(blocked_with_ops), Shutdown::new(), 60);
        unannounced.step();
        assert!(!quiet.take(Duration::ZERO));
    }

    /// A report whose answer was computed before an event that arrives while it is in
    /// flight.
    struct Overtaken {
        shared: SharedEnvelope,
        stale: ControlEnvelope,
        event: ControlEnvelope,
    }

    impl Reporter for Overtaken {
        type Error = std::io::Error;
        fn round(&mut self) -> Result<ControlEnvelope, std::io::Error> {
            self.shared.merge_event(&self.event);
            Ok(self.stale.clone())
        }
    }

    #[test]
    fn an_event_that_overtakes_a_report_is_not_undone_by_its_answer() {
        let shared = SharedEnvelope::default();
        let stale = ControlEnvelope {
            poll_interval_seconds: Some(600),
            desired_generation: 1,
            ..ControlEnvelope::default()
        };
        let event = ControlEnvelope {
            desired_generation: 2,
            blocked: true,
            ..ControlEnvelope::default()
        };
        let reporter = Overtaken {
            shared: shared.clone(),
            stale: stale.clone(),
            event,
        };
        let mut poller = Poller::new(reporter, Shutdown::new(), 60);
        poller.latest = shared.clone();
        poller.step();
        let now = shared.get().unwrap();
        assert_eq!(now.desired_generation, 2, "the event's generation");
        assert!(now.blocked, "the event's hold");
        assert_eq!(
            now.poll_interval_seconds,
            Some(600),
            "the report's interval"
        );

        // The next report, sent after that event, is the freshest word again.
        poller.reporter.event = ControlEnvelope::default();
        poller.reporter.shared = SharedEnvelope::default();
        poller.step();
        assert_eq!(shared.get().unwrap(), stale);
    }

    #[test]
    fn random_jitter_stays_in_range_and_varies() {
        let mut j = random_jitter();
        let v: Vec<f64> = (0..64).map(|_| j()).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(v.windows(2).any(|w| w[0] != w[1]));
    }
}
