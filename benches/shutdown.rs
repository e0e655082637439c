//! How long the daemon takes from SIGTERM to its exit (goal: under 2 s, whatever it is
//! doing), measured on the real binary against the Proxmox and hub simulators in three
//! states: idle after its first report; in the middle of a hub call that never answers;
//! and while reconcile waits on a Proxmox task that runs for an hour. Each state is run
//! [`RUNS`] times; the min, median and max are printed, the worst case last.
//!
//! `cargo bench --bench shutdown` (release profile). Not a test: it asserts only that
//! every run exits 0; `scripts/budgets.sh` holds the shipped binary to the goal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
use common::agent::{Agent, fast_envelope, write_agent_config};

use std::time::{Duration, Instant};

use felhom_sim::{Fault, FaultKind, GuestSeed, HubSim, ProxmoxSim};
use serde_json::json;

const RUNS: usize = 5;
const GOAL: Duration = Duration::from_secs(2);
/// Longer than any run: a call or task held this long never ends within the bench.
const FOREVER: Duration = Duration::from_secs(3600);

/// What the daemon is doing when SIGTERM arrives.
#[derive(Debug, Clone, Copy)]
enum Busy {
    Idle,
    HubCall,
    ProxmoxTask,
}

/// One run: starts the daemon, waits until it is in state `busy`, SIGTERMs it and
/// returns the time to its exit.
fn one_run(busy: Busy, n: usize) -> Duration {
    let pve = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web"))
        .task_duration(FOREVER)
        .start();
    let hub = HubSim::builder().default_envelope(fast_envelope()).start();
    if let Busy::HubCall = busy {
        hub.inject(Fault::new(
            None,
            "/api/v1/host-report",
            FaultKind::Delay(FOREVER),
        ));
    }
    let dir = common::tempdir("bench-stop", &format!("{busy:?}-{n}"));
    let desired = dir.join("desired.json");
    let run = match busy {
        Busy::ProxmoxTask => "running",
        Busy::Idle | Busy::HubCall => "stopped",
    };
    std::fs::write(
        &desired,
        json!({"generation": 1, "guests": [{"vmid": 100, "run": run}]}).to_string(),
    )
    .unwrap();
    let config = write_agent_config(&dir, &pve, &hub, |c| {
        c["log"] = json!({"level": "info"});
        c["hub"]["poll_seconds"] = json!(60);
        c["reconcile"] = json!({"desired_file": desired});
    });
    let mut agent = Agent::spawn(&["run"], &config, &dir.join("stderr.log"), &[]);
    match busy {
        Busy::Idle => {
            agent.wait_for_event("daemon_running", |_| true);
            agent.wait_until("the first report", |_| !hub.reports().is_empty());
        }
        Busy::HubCall => agent.wait_until("the hub call", |_| !hub.requests().is_empty()),
        Busy::ProxmoxTask => agent.wait_until("the wait on the start task", |_| {
            pve.requests()
                .iter()
                .any(|r| r.path.contains("/tasks/") && r.path.ends_with("/status"))
        }),
    }
    let sent = Instant::now();
    agent.signal("TERM");
    let status = agent.wait_exit();
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "{busy:?}:\n{}", agent.log());
    let _ = std::fs::remove_dir_all(&dir);
    took
}

fn main() {
    let mut worst = Duration::ZERO;
    for busy in [Busy::Idle, Busy::HubCall, Busy::ProxmoxTask] {
        let mut took: Vec<Duration> = (0..RUNS).map(|n| one_run(busy, n)).collect();
        took.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "SIGTERM to exit 0, {busy:?}: min {:.0} ms, median {:.0} ms, max {:.0} ms ({RUNS} runs)",
            ms(took[0]),
            ms(took[RUNS / 2]),
            ms(took[RUNS - 1])
        );
        worst = worst.max(took[RUNS - 1]);
    }
    println!(
        "worst SIGTERM to exit: {:.0} ms (goal: under {} ms)",
        worst.as_secs_f64() * 1000.0,
        GOAL.as_millis()
    );
}
