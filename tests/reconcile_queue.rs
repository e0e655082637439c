#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The per-guest queue: ordering, parallelism, the global bound, drain, close, panics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use felhom_agent::reconcile::{JobHandle, Queue, SubmitError};

/// Tracks how many jobs run at once and the highest count seen.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A reusable rendezvous for `n` jobs, like `std::sync::Barrier` but with a watchdog:
/// a job that waits longer than [`WATCHDOG`] gets `Err`, so lanes serialized by a
/// regression fail the test with a message instead of hanging CI. The watchdog is not
/// a timing assertion: a working queue meets it in microseconds.
struct Rendezvous {
    n: usize,
    /// Jobs waiting now, the generation, and whether a watchdog already fired (then
    /// every later arrival fails at once instead of waiting out its own watchdog).
    state: Mutex<(usize, u64, bool)>,
    cv: Condvar,
}

const WATCHDOG: Duration = Duration::from_secs(30);

impl Rendezvous {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Rendezvous {
            n,
            state: Mutex::new((0, 0, false)),
            cv: Condvar::new(),
        })
    }

    /// Waits until `n` jobs arrived; `Ok(true)` for the one that completed the group.
    fn arrive(&self) -> Result<bool, String> {
        let deadline = Instant::now() + WATCHDOG;
        let mut st = self.state.lock().unwrap();
        if st.2 {
            return Err("deadlock: jobs were serialized (an earlier rendezvous timed out)".into());
        }
        let generation = st.1;
        st.0 += 1;
        if st.0 == self.n {
            *st = (0, generation + 1, false);
            self.cv.notify_all();
            return Ok(true);
        }
        while st.1 == generation {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                st.0 -= 1;
                st.2 = true;
                return Err(format!(
                    "deadlock: jobs were serialized (only {} of {} ran at once for {WATCHDOG:?})",
                    st.0 + 1,
                    self.n
                ));
            }
            st = self.cv.wait_timeout(st, left).unwrap().0;
        }
        Ok(false)
    }
}

#[test]
fn same_guest_runs_one_at_a_time_in_submit_order() {
    let q = Queue::new(8);
    let gauge = Arc::new(Gauge::default());
    let order = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<JobHandle<usize>> = (0..50)
        .map(|i| {
            let gauge = Arc::clone(&gauge);
            let order = Arc::clone(&order);
            q.submit(105, move || {
                gauge.enter();
                // Yield so an overlapping job, if the lane allowed one, would show.
                std::thread::sleep(Duration::from_micros(200));
                order.lock().unwrap().push(i);
                gauge.leave();
                i
            })
            .unwrap()
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.wait().unwrap(), i);
    }
    assert_eq!(gauge.max.load(Ordering::SeqCst), 1, "same guest overlapped");
    assert_eq!(*order.lock().unwrap(), (0..50).collect::<Vec<_>>());
}

#[test]
fn different_guests_run_in_parallel() {
    // Each job waits for the other: serialized lanes would deadlock here, and the
    // rendezvous's watchdog turns that into a failure.
    let q = Queue::new(2);
    let meet = Rendezvous::new(2);
    let a = {
        let m = Arc::clone(&meet);
        q.submit(100, move || m.arrive().map(|_| "a")).unwrap()
    };
    let b = {
        let m = Arc::clone(&meet);
        q.submit(101, move || m.arrive().map(|_| "b")).unwrap()
    };
    assert_eq!(a.wait().unwrap(), Ok("a"));
    assert_eq!(b.wait().unwrap(), Ok("b"));
}

#[test]
fn global_bound_holds_across_guests() {
    // Every job waits until three run at once: a bound below 3 would deadlock (the
    // watchdog fails it), and the gauge shows it never goes above 3.
    let q = Queue::new(3);
    let gauge = Arc::new(Gauge::default());
    let meet = Rendezvous::new(3);
    let handles: Vec<_> = (0..12u32)
        .map(|i| {
            let gauge = Arc::clone(&gauge);
            let meet = Arc::clone(&meet);
            q.submit(200 + i, move || {
                gauge.enter();
                let met = meet.arrive();
                std::thread::sleep(Duration::from_millis(2));
                gauge.leave();
                met.map(|_| ())
            })
            .unwrap()
        })
        .collect();
    for h in handles {
        h.wait().unwrap().unwrap();
    }
    assert_eq!(gauge.max.load(Ordering::SeqCst), 3);
}

#[test]
fn close_drains_queued_jobs_then_refuses() {
    let q = Queue::new(1);
    let done = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..20u32)
        .map(|i| {
            let done = Arc::clone(&done);
            q.submit(i % 4, move || {
                std::thread::sleep(Duration::from_millis(1));
                done.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap()
        })
        .collect();
    q.close();
    assert_eq!(
        done.load(Ordering::SeqCst),
        20,
        "close returned before the drain"
    );
    assert_eq!(q.live_lanes(), 0);
    for h in handles {
        h.wait().unwrap();
    }
    let refused = q.submit(1, || ());
    assert!(matches!(refused, Err(SubmitError::Closed)), "{refused:?}");
    q.close();
}

#[test]
fn a_panicking_job_fails_only_itself() {
    let q = Queue::new(2);
    let before = q.submit(7, || 1).unwrap();
    let boom = q.submit(7, || -> i32 { panic!("job exploded") }).unwrap();
    let after = q.submit(7, || 3).unwrap();
    assert_eq!(before.wait().unwrap(), 1);
    let err = boom.wait().unwrap_err();
    assert_eq!(err.vmid, 7);
    assert!(err.message.contains("job exploded"), "{err}");
    assert_eq!(after.wait().unwrap(), 3, "the lane went on after the panic");
    // The panic gave its permit back: both permits are usable.
    let meet = Rendezvous::new(2);
    let (m1, m2) = (Arc::clone(&meet), Arc::clone(&meet));
    let x = q.submit(8, move || m1.arrive()).unwrap();
    let y = q.submit(9, move || m2.arrive()).unwrap();
    let (x, y) = (x.wait().unwrap().unwrap(), y.wait().unwrap().unwrap());
    assert_ne!(x, y, "exactly one job completes the rendezvous");
}

#[test]
fn idle_lanes_end_and_come_back() {
    let q = Queue::with_idle(2, Duration::from_millis(20));
    q.submit(1, || ()).unwrap().wait().unwrap();
    q.submit(2, || ()).unwrap().wait().unwrap();
    let mut waited = 0;
    while q.live_lanes() > 0 {
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
        assert!(waited < 500, "idle lanes never ended");
    }
    assert_eq!(q.submit(1, || 5).unwrap().wait().unwrap(), 5);
}
