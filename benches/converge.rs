//! Convergence against tasks that take 0.2 s: 40 stopped guests each get more cores and
//! memory (one synchronous config write, as PVE answers it for a stopped container) and a
//! start (one task), with `max_parallel` 8 and 4. The wall time of the passes until
//! nothing drifts, divided by the floor: the task time × ⌈40 ÷ max_parallel⌉ × one async
//! task per guest. Run with the production wait schedule and with the earlier one (first
//! poll after 1 s), so the gain is measured in one run; requests per guest beside it.
//!
//! `cargo bench --bench converge` (release profile). Prints a table with the goal
//! (≤ 1.5× the floor for the production schedule); asserts nothing.
//! Measured on the 2-core build machine: at `max_parallel` 8, 1.05 s against a 1.0 s
//! floor (1.05×, 6 requests per guest) with the production schedule, 5.05 s (5.05×, 5
//! requests) with the earlier one; at 4, 2.07 s (1.04×) against 10.05 s (5.03×).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use felhom_agent::base::Shutdown;
use felhom_agent::proxmox::{Client, WaitOptions};
use felhom_agent::reconcile::{DesiredGuest, DesiredState, Run, Spec, StaticProvider};
use felhom_agent::reconcile::{Engine, EngineOptions, Journal, Queue};
use felhom_sim::{GuestSeed, ProxmoxSim};

const GUESTS: u32 = 40;
const TASK: Duration = Duration::from_millis(200);
/// The goal for the production schedule, as a multiple of the floor.
const GOAL: f64 = 1.5;
/// Passes before a case gives up (a pass that leaves drift is followed by another).
const MAX_PASSES: usize = 10;

fn sim() -> ProxmoxSim {
    let mut b = ProxmoxSim::builder().task_duration(TASK);
    for vmid in 100..100 + GUESTS {
        b = b.guest(
            GuestSeed::new(vmid, &format!("ct{vmid}"))
                .running(false)
                .cores(1)
                .memory_mib(512),
        );
    }
    b.start()
}

fn desired() -> DesiredState {
    DesiredState::from_guests(
        1,
        (100..100 + GUESTS).map(|vmid| DesiredGuest {
            run: Some(Run::Running),
            spec: Some(Spec {
                cores: Some(2),
                memory_bytes: Some(1024 << 20),
                disk_bytes: None,
                rootfs_bytes: None,
            }),
            ..DesiredGuest::new(vmid)
        }),
    )
}

fn engine(sim: &ProxmoxSim, parallel: usize, wait: WaitOptions, tag: &str) -> Engine {
    let dir = common::tempdir("bench-converge", tag);
    let journal = Arc::new(Journal::open(&dir.join("journal.log")).unwrap());
    let gate = common::unsigned_gate(&dir, &journal);
    let mut o = common::pinned_options(sim);
    o.max_idle_per_host = parallel;
    let mut opts = EngineOptions::new("pve-a");
    opts.max_parallel = parallel;
    opts.wait = WaitOptions {
        timeout: opts.wait.timeout,
        ..wait
    };
    Engine::new(
        Client::new(o).unwrap(),
        Queue::new(parallel),
        gate,
        journal,
        Arc::new(StaticProvider::new(desired())),
        Shutdown::new(),
        opts,
    )
}

struct Converged {
    seconds: f64,
    passes: usize,
    requests: usize,
}

/// Passes until one applies nothing; the time and requests up to the last one that did.
fn converge(sim: &ProxmoxSim, e: &Engine) -> Converged {
    sim.clear_requests();
    let t = Instant::now();
    let mut done = Converged {
        seconds: 0.0,
        passes: 0,
        requests: 0,
    };
    for n in 1..=MAX_PASSES {
        let report = e.pass().unwrap();
        if report.applied() == 0 {
            break;
        }
        done = Converged {
            seconds: t.elapsed().as_secs_f64(),
            passes: n,
            requests: sim.requests().len(),
        };
    }
    let running = (100..100 + GUESTS)
        .filter(|v| sim.guest_status(*v).as_deref() == Some("running"))
        .count();
    assert_eq!(running, GUESTS as usize, "every guest converged");
    done
}

fn main() {
    felhom_agent::base::log::set_level(felhom_agent::base::log::Level::Warn);
    let earlier = WaitOptions {
        initial: Duration::from_secs(1),
        cap: Duration::from_secs(5),
        timeout: Duration::from_secs(3600),
    };
    println!(
        "convergence: {GUESTS} stopped guests → more cores and memory, then running; \
         tasks take {} ms",
        TASK.as_millis()
    );
    println!(
        "{:<44} {:>8} {:>7} {:>7} {:>10} {:>7}",
        "case", "seconds", "floor", "ratio", "req/guest", "passes"
    );
    for parallel in [8usize, 4] {
        let waves = GUESTS.div_ceil(u32::try_from(parallel).unwrap());
        let floor = TASK.as_secs_f64() * f64::from(waves);
        for (name, wait) in [
            ("0.1 s, doubling (default)", WaitOptions::default()),
            ("1 s, doubling (earlier)", earlier),
        ] {
            let s = sim();
            let e = engine(&s, parallel, wait, &format!("{parallel}-{}", &name[..3]));
            let c = converge(&s, &e);
            let ratio = c.seconds / floor;
            let verdict = if wait == WaitOptions::default() {
                let met = if ratio <= GOAL { "met" } else { "NOT met" };
                format!("   goal <= {GOAL}x: {met}")
            } else {
                String::new()
            };
            println!(
                "{:<44} {:>8.3} {:>7.2} {:>6.2}x {:>10.1} {:>7}{verdict}",
                format!("max_parallel {parallel}, {name}"),
                c.seconds,
                floor,
                ratio,
                c.requests as f64 / f64::from(GUESTS),
                c.passes,
            );
            s.shutdown();
        }
    }
}
