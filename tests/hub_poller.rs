//! The poller's schedule, driven by a scripted reporter and a sleeper that records the
//! waits it is asked for instead of sleeping.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use felhom_agent::base::Shutdown;
use felhom_agent::hub::ControlEnvelope;
use felhom_agent::hub::{Poller, Reporter, Sleeper};

#[derive(Debug)]
struct Injected(u32);

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected failure #{}", self.0)
    }
}

impl std::error::Error for Injected {}

/// Answers rounds from a script; when the script runs out, every round succeeds with
/// an empty envelope. Counts rounds.
struct Script {
    answers: VecDeque<Result<ControlEnvelope, Injected>>,
    rounds: Rc<Cell<u32>>,
}

impl Reporter for Script {
    type Error = Injected;
    fn round(&mut self) -> Result<ControlEnvelope, Injected> {
        self.rounds.set(self.rounds.get() + 1);
        self.answers
            .pop_front()
            .unwrap_or(Ok(ControlEnvelope::default()))
    }
}

/// Records each requested wait with the number of rounds run before it; stops the
/// loop after `limit` waits.
struct Recorder {
    waits: Rc<RefCell<Vec<(u32, Duration)>>>,
    rounds: Rc<Cell<u32>>,
    limit: usize,
}

impl Sleeper for Recorder {
    fn sleep(&self, d: Duration) -> bool {
        let mut w = self.waits.borrow_mut();
        w.push((self.rounds.get(), d));
        w.len() >= self.limit
    }
    fn stopped(&self) -> bool {
        false
    }
}

fn env(interval: Option<u64>) -> ControlEnvelope {
    ControlEnvelope {
        poll_interval_seconds: interval,
        ..ControlEnvelope::default()
    }
}

/// Runs a poller over `answers` for `limit` waits; returns the waits and the poller.
fn drive(
    answers: Vec<Result<ControlEnvelope, Injected>>,
    initial: u64,
    limit: usize,
    jitter: f64,
) -> (Vec<(u32, Duration)>, Poller<Script, Recorder>) {
    let rounds = Rc::new(Cell::new(0));
    let waits = Rc::new(RefCell::new(Vec::new()));
    let script = Script {
        answers: answers.into(),
        rounds: rounds.clone(),
    };
    let sleeper = Recorder {
        waits: waits.clone(),
        rounds,
        limit,
    };
    let mut p = Poller::new(script, sleeper, initial).with_jitter(Box::new(move || jitter));
    p.run();
    let w = waits.borrow().clone();
    (w, p)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn the_first_report_is_sent_before_any_wait() {
    let (waits, _) = drive(vec![], 300, 1, 0.0);
    assert_eq!(
        waits,
        [(1, secs(300))],
        "one round ran, then the first wait"
    );
}

#[test]
fn the_hubs_interval_is_adopted_and_clamped() {
    let (waits, p) = drive(
        vec![
            Ok(env(Some(120))),
            Ok(env(None)),
            // The parser clamps; the poller trusts the envelope's clamped value, and a
            // raw out-of-range value from elsewhere is clamped at construction.
            Ok(ControlEnvelope::parse(br#"{"poll_interval_seconds":5}"#).unwrap()),
            Ok(ControlEnvelope::parse(br#"{"poll_interval_seconds":99999}"#).unwrap()),
        ],
        300,
        4,
        0.0,
    );
    let d: Vec<Duration> = waits.iter().map(|w| w.1).collect();
    assert_eq!(d, [secs(120), secs(120), secs(60), secs(3600)]);
    assert_eq!(p.interval_seconds(), 3600);
    let (_, p) = drive(vec![], 5, 1, 0.0);
    assert_eq!(
        p.interval_seconds(),
        60,
        "the configured start is clamped too"
    );
}

#[test]
fn the_loop_goes_on_after_errors_with_backoff_never_below_the_interval() {
    let (waits, p) = drive(
        vec![
            Err(Injected(1)),
            Err(Injected(2)),
            Err(Injected(3)),
            Ok(env(None)),
            Err(Injected(4)),
        ],
        60,
        6,
        0.0,
    );
    let d: Vec<Duration> = waits.iter().map(|w| w.1).collect();
    assert_eq!(
        d,
        [secs(60), secs(120), secs(240), secs(60), secs(60), secs(60)],
        "doubling while failing, back to the interval after a success"
    );
    assert_eq!(
        waits.last().unwrap().0,
        6,
        "a round per wait, errors included"
    );
    assert_eq!(p.consecutive_failures(), 0);
}

#[test]
fn backoff_is_capped_and_jitter_only_lengthens_it() {
    let failures: Vec<_> = (1..=8).map(|i| Err(Injected(i))).collect();
    let (waits, p) = drive(failures, 300, 8, 1.0);
    let d: Vec<Duration> = waits.iter().map(|w| w.1).collect();
    // 300, 600, then the 900 s cap; full jitter adds 25 %.
    assert_eq!(d[0], secs(375));
    assert_eq!(d[1], secs(750));
    assert!(
        d[2..]
            .iter()
            .all(|w| *w == Duration::from_millis(1_125_000))
    );
    assert_eq!(p.consecutive_failures(), 8);
    let (waits, _) = drive(vec![Ok(env(None))], 300, 1, 1.0);
    assert_eq!(waits[0].1, secs(300), "no jitter on the regular schedule");
}

#[test]
fn the_envelope_is_kept_for_the_reconcile_engine() {
    let blocked = ControlEnvelope {
        poll_interval_seconds: Some(60),
        blocked: true,
        desired_generation: 7,
        has_signed_ops: true,
        ack_signed_op_results: vec!["op-1".into()],
    };
    let (_, p) = drive(vec![Ok(blocked.clone()), Err(Injected(1))], 60, 2, 0.0);
    assert_eq!(
        p.envelope().get(),
        Some(blocked),
        "a failed round keeps the last good envelope"
    );
    let (_, p) = drive(vec![Err(Injected(1))], 60, 1, 0.0);
    assert_eq!(p.envelope().get(), None);
}

#[test]
fn a_second_can_be_shortened_for_process_tests() {
    let rounds = Rc::new(Cell::new(0));
    let waits = Rc::new(RefCell::new(Vec::new()));
    let mut p = Poller::new(
        Script {
            answers: VecDeque::new(),
            rounds: rounds.clone(),
        },
        Recorder {
            waits: waits.clone(),
            rounds,
            limit: 1,
        },
        60,
    )
    .with_second(Duration::from_millis(10));
    p.run();
    assert_eq!(waits.borrow()[0].1, Duration::from_millis(600));
}

/// A reporter that can cross threads: counts rounds through a channel.
struct Counting(mpsc::Sender<()>);

impl Reporter for Counting {
    type Error = Injected;
    fn round(&mut self) -> Result<ControlEnvelope, Injected> {
        let _ = self.0.send(());
        Ok(env(Some(3600)))
    }
}

#[test]
fn shutdown_wakes_the_wait_at_once() {
    let shutdown = Shutdown::new();
    let (round_tx, round_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let s = shutdown.clone();
    std::thread::spawn(move || {
        let mut p = Poller::new(Counting(round_tx), s, 3600);
        p.run();
        let _ = done_tx.send(());
    });
    round_rx.recv().unwrap();
    shutdown.trigger();
    // The poller is in an hour-long wait; only the trigger can end it. The bound is a
    // watchdog against a hang, not a timing claim.
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the poller stopped after the trigger");
    assert!(round_rx.try_recv().is_err(), "no round after shutdown");
}

#[test]
fn a_triggered_shutdown_runs_no_round_at_all() {
    let shutdown = Shutdown::new();
    shutdown.trigger();
    let (tx, rx) = mpsc::channel();
    let mut p = Poller::new(Counting(tx), shutdown, 60);
    p.run();
    assert!(rx.try_recv().is_err());
}
