//! From a change at the hub to the agent's first request that acts on it, with the
//! event stream and without it, over loopback TLS against the hub simulator.
//!
//! The agent side is the daemon's own hub parts, in process: the report loop (`Poller`,
//! posting the golden report at the default 300 s interval), the event stream
//! (`EventStream`, 55 s long polls) sharing its envelope and announcement, and the
//! signed-ops worker's loop (on each announcement, `GET /api/v1/signed-ops`). A change is
//! a signed op queued at the hub at a random moment; its latency runs from the queueing
//! to the fetch that follows it, as the hub recorded it.
//!
//! With the stream: 200 changes. Without it the latency is the wait for the next
//! report, so the report schedule runs with one schedule second = 10 ms (a 300 s
//! interval takes 3 s) and 40 changes at random moments; those latencies are scaled
//! back to real seconds at the 300 s interval (the request's own few milliseconds are
//! scaled too, which overstates them by a fraction of a percent).
//!
//! `cargo bench --bench events`. Prints p50 and p99 of each, their ratio and the goals
//! (p99 ≤ 1 s with the stream, ≥ 60× faster than without); asserts nothing.
//! Measured on the 2-core build machine: with the stream p50 0.5 ms, p99 1.6 ms over
//! 200 changes; without it p50 159 s, p99 298 s (40 changes); p99 ratio about 180 000×.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use felhom_agent::base::{Secret, Shutdown};
use felhom_agent::hub::{
    Announcement, ControlEnvelope, DEFAULT_EVENT_WAIT, EventStream, EventsClient, HostReport,
    HubClient, HubClientError, HubClientOptions, Poller, Reporter, SignedOpsClient,
};
use felhom_agent::net::TlsTrust;
use felhom_sim::{HubSim, SIGNED_OPS_PATH};

const GOLDEN: &str = include_str!("../vectors/host-report.golden.json");
const WITH_STREAM: usize = 200;
const WITHOUT_STREAM: usize = 40;
/// One schedule second without the stream.
const SCALED_SECOND: Duration = Duration::from_millis(10);
const DEFAULT_INTERVAL_SECONDS: u64 = 300;
/// The goals.
const GOAL_P99: Duration = Duration::from_secs(1);
const GOAL_RATIO: f64 = 60.0;

/// Posts the golden report: the real client, over TLS.
struct Post(HubClient, HostReport);

impl Reporter for Post {
    type Error = HubClientError;
    fn round(&mut self) -> Result<ControlEnvelope, HubClientError> {
        self.0.post_report(&self.1)
    }
}

fn options(hub: &HubSim) -> HubClientOptions {
    HubClientOptions {
        url: hub.url(),
        api_key: Secret::new(hub.key()),
        trust: TlsTrust::CaFile(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors/tls/ca.crt"),
        ),
        timeout: Duration::from_secs(10),
    }
}

/// A small xorshift, seeded from the clock: random moments without a dependency.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
        Rng(seed | 1)
    }

    /// Uniform in `[0, max)`.
    fn below(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        max.mul_f64((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// The agent's hub side; dropped, it stops its threads.
struct Agent {
    shutdown: Shutdown,
    stop_worker: Arc<AtomicBool>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.trigger();
        self.stop_worker.store(true, Ordering::SeqCst);
    }
}

fn start_agent(hub: &HubSim, stream: bool, second: Duration) -> Agent {
    let shutdown = Shutdown::new();
    let announcement = Announcement::new();
    let report: HostReport = serde_json::from_str(GOLDEN).unwrap();
    let opts = options(hub);
    let mut poller = Poller::new(
        Post(HubClient::new(opts.clone()).unwrap(), report),
        shutdown.clone(),
        DEFAULT_INTERVAL_SECONDS,
    )
    .with_second(second)
    .announcing(announcement.clone());
    if stream {
        let mut events = EventStream::new(
            EventsClient::new(&opts, DEFAULT_EVENT_WAIT).unwrap(),
            poller.envelope(),
            announcement.clone(),
            shutdown.clone(),
        );
        std::thread::spawn(move || events.run());
    }
    std::thread::spawn(move || poller.run());
    let ops = SignedOpsClient::new(opts).unwrap();
    let stop_worker = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&stop_worker);
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            if announcement.take(Duration::from_millis(200)) {
                let _ = ops.fetch();
            }
        }
    });
    Agent {
        shutdown,
        stop_worker,
    }
}

/// Queues `n` changes at random moments (each after the last was acted on, then a
/// random pause below `spread`); the latency of each.
fn measure(hub: &HubSim, n: usize, spread: Duration) -> Vec<Duration> {
    let mut rng = Rng::new();
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        std::thread::sleep(rng.below(spread));
        let before = hub.requests().len();
        let changed = Instant::now();
        hub.queue_signed_op(b"{}", None);
        let deadline = changed + Duration::from_secs(60);
        let acted = loop {
            if let Some(r) = hub
                .requests()
                .into_iter()
                .skip(before)
                .find(|r| r.path == SIGNED_OPS_PATH && r.at >= changed)
            {
                break r.at;
            }
            assert!(Instant::now() < deadline, "nothing acted on the change");
            std::thread::sleep(Duration::from_millis(1));
        };
        latencies.push(acted - changed);
    }
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    felhom_agent::base::log::set_level(felhom_agent::base::log::Level::Error);
    let hub = HubSim::start();
    let agent = start_agent(&hub, true, Duration::from_secs(1));
    // The first report and the first event are out before the first change.
    std::thread::sleep(Duration::from_millis(300));
    let mut with = measure(&hub, WITH_STREAM, Duration::from_millis(100));
    drop(agent);
    drop(hub);

    let hub = HubSim::builder().without_events().start();
    let agent = start_agent(&hub, false, SCALED_SECOND);
    std::thread::sleep(Duration::from_millis(300));
    let spread = SCALED_SECOND * u32::try_from(DEFAULT_INTERVAL_SECONDS).unwrap();
    let scale = 1000.0 / SCALED_SECOND.as_millis() as f64;
    let mut without: Vec<Duration> = measure(&hub, WITHOUT_STREAM, spread)
        .into_iter()
        .map(|d| d.mul_f64(scale))
        .collect();
    drop(agent);
    with.sort();
    without.sort();

    let (p50, p99) = (percentile(&with, 0.5), percentile(&with, 0.99));
    let (n50, n99) = (percentile(&without, 0.5), percentile(&without, 0.99));
    println!(
        "hub change → the agent's first request acting on it (a queued signed op → its fetch)"
    );
    println!(
        "{:<44} {:>10} {:>10} {:>8}",
        "case", "p50", "p99", "changes"
    );
    println!(
        "{:<44} {:>9.1}ms {:>9.1}ms {:>8}",
        "event stream (55 s long poll)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        with.len()
    );
    println!(
        "{:<44} {:>9.1}s {:>10.1}s {:>8}",
        "reports only, every 300 s (scaled run)",
        n50.as_secs_f64(),
        n99.as_secs_f64(),
        without.len()
    );
    let ratio = n99.as_secs_f64() / p99.as_secs_f64().max(1e-6);
    let ratio50 = n50.as_secs_f64() / p50.as_secs_f64().max(1e-6);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "p99 with the stream {:.1} ms (goal <= {} s: {}); p99 ratio {ratio:.0}x, p50 ratio {ratio50:.0}x (goal >= {GOAL_RATIO:.0}x: {})",
        p99.as_secs_f64() * 1e3,
        GOAL_P99.as_secs(),
        verdict(p99 <= GOAL_P99),
        verdict(ratio >= GOAL_RATIO)
    );
}
