//! Crash recovery of the real daemon process: killed with SIGKILL while a start task it
//! sent still runs in the Proxmox simulator, restarted on the same state directory, it
//! resolves the op from the journaled UPID (Recover) before any mutation — the journal
//! ends with no op in flight, the op `succeeded`, and the simulator saw exactly one
//! start POST. The same holds when the kill lands while Recover itself is waiting on
//! that task, and a SIGTERM during that wait exits 0 without resolving anything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::agent::{Agent, write_agent_config};

use std::path::PathBuf;
use std::time::Duration;

use felhom_agent::reconcile::OpClass;
use felhom_agent::reconcile::{Journal, JournalRecord, JournalView, OpState};
use felhom_agent::store::SECOND_MS_ENV;
use felhom_sim::{GuestSeed, HubSim, ProxmoxSim};
use serde_json::{Value, json};

/// How long each simulated task runs: long enough to kill the daemon (twice) mid-task.
const TASK: Duration = Duration::from_secs(4);
/// The guest whose start is interrupted.
const VMID: u32 = 100;

/// One test's directory: config, desired state, state dir and the agents' logs.
struct Lab {
    dir: PathBuf,
    pve: ProxmoxSim,
    hub: HubSim,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    fn new(name: &str) -> Lab {
        let dir = common::tempdir("crash", name);
        let pve = ProxmoxSim::builder()
            .guest(GuestSeed::new(VMID, "web"))
            .guest(GuestSeed::new(101, "db").cores(1))
            .task_duration(TASK)
            .start();
        let hub = HubSim::start();
        write_agent_config(&dir, &pve, &hub, |c| {
            c["hub"]["timeout_seconds"] = json!(2);
            c["reconcile"] = json!({"desired_file": dir.join("desired.json")});
        });
        let lab = Lab { dir, pve, hub };
        lab.desire(json!({"generation": 1, "guests": [{"vmid": VMID, "run": "running"}]}));
        lab
    }

    fn desire(&self, desired: Value) {
        // Written aside and renamed, so the daemon never reads half a file.
        let tmp = self.dir.join("desired.json.tmp");
        std::fs::write(&tmp, desired.to_string()).unwrap();
        std::fs::rename(&tmp, self.dir.join("desired.json")).unwrap();
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join("state").join("journal.log")
    }

    /// The journal as on disk now, read without writing (safe while an agent runs).
    fn journal(&self) -> Option<JournalView> {
        Journal::open_read_only(&self.journal_path()).ok()
    }

    /// Starts the agent, its stderr appended to the lab's one log.
    fn start_agent(&self) -> Agent {
        Agent::spawn(
            &["run"],
            &self.dir.join("agent.json"),
            &self.dir.join("stderr.log"),
            &[(SECOND_MS_ENV, "20")],
        )
    }

    /// The start POSTs the simulator saw for `vmid`.
    fn start_posts(&self, vmid: u32) -> usize {
        common::sent(&self.pve, "POST", &format!("/lxc/{vmid}/status/start"))
    }

    /// The one op the journal holds in flight, once its UPID is journaled.
    fn in_flight_with_upid(&self) -> Option<JournalRecord> {
        let view = self.journal()?;
        let in_flight = view.in_flight();
        match in_flight.as_slice() {
            [op] if op.upid.is_some() => Some(op.clone()),
            _ => None,
        }
    }
}

/// Starts the agent and SIGKILLs it once the start task runs and its UPID is durable;
/// returns the op the journal holds in flight.
fn kill_mid_task(lab: &Lab) -> JournalRecord {
    let mut agent = lab.start_agent();
    agent.wait_until("the start POST", |_| lab.start_posts(VMID) == 1);
    agent.wait_until("the UPID journaled", |_| {
        lab.in_flight_with_upid().is_some()
    });
    agent.kill();
    let op = lab
        .in_flight_with_upid()
        .expect("still in flight after the kill");
    assert_eq!(op.vmid, VMID);
    assert_eq!(op.class, OpClass::Start);
    assert_eq!(op.state, OpState::TaskRunning);
    assert!(
        op.upid.as_deref().is_some_and(|u| u.starts_with("UPID:")),
        "{op:?}"
    );
    assert_eq!(
        lab.pve.guest_status(VMID).as_deref(),
        Some("stopped"),
        "the kill came before the task ended"
    );
    op
}

/// Restarts on the same state and checks the op resolved once, without a re-send; a
/// second guest's drift, desired only now, proves the engine passed after Recover.
fn restart_and_check_recovered(lab: &Lab, op: &JournalRecord) {
    lab.desire(json!({"generation": 2, "guests": [
        {"vmid": VMID, "run": "running"},
        {"vmid": 101, "spec": {"cores": 2}}
    ]}));
    let mut agent = lab.start_agent();
    agent.wait_until("the op resolved in the journal", |_| {
        lab.journal()
            .and_then(|j| j.latest(&op.op_id))
            .is_some_and(|r| r.state.is_terminal())
    });
    agent.wait_until("an engine pass after Recover", |_| {
        lab.pve
            .guest_config(101)
            .and_then(|c| c.get("cores").cloned())
            == Some(json!(2))
    });
    let resolved = agent.events("recover_op_resolved");
    agent.stop();

    let view = lab.journal().expect("the journal reads");
    assert_eq!(view.damaged(), None);
    assert!(
        view.in_flight().is_empty(),
        "nothing left in flight: {:?}",
        view.in_flight()
    );
    let done = view.latest(&op.op_id).unwrap();
    assert_eq!(done.state, OpState::Succeeded, "{done:?}");
    assert_eq!(done.upid, op.upid, "resolved through the journaled task");
    assert_eq!(
        lab.start_posts(VMID),
        1,
        "the start was sent once, never again"
    );
    assert_eq!(lab.pve.guest_status(VMID).as_deref(), Some("running"));
    let starts = view
        .history()
        .iter()
        .filter(|r| r.vmid == VMID && r.state == OpState::Started)
        .count();
    assert_eq!(starts, 1, "one op for the guest in the journal");
    assert!(
        resolved
            .iter()
            .any(|e| e.is("op_id", &op.op_id) && e.is("state", "succeeded")),
        "Recover, not the engine, resolved it: {resolved:?}"
    );
}

#[test]
fn sigkill_while_a_task_runs_then_restart_recovers_it_without_running_it_twice() {
    let lab = Lab::new("midtask");
    let op = kill_mid_task(&lab);
    restart_and_check_recovered(&lab, &op);
}

#[test]
fn sigkill_while_recover_waits_on_the_task_then_restart_still_recovers_it_once() {
    let lab = Lab::new("inrecover");
    let op = kill_mid_task(&lab);
    let status_path = |upid: &str| format!("/nodes/{}/tasks/{upid}/status", lab.pve.node());
    let want = status_path(op.upid.as_deref().unwrap());
    let seen_before = lab.pve.requests().len();
    let mut agent = lab.start_agent();
    agent.wait_until("Recover polling the task", |_| {
        lab.pve.requests()[seen_before..]
            .iter()
            .any(|r| r.method == "GET" && r.path == want)
    });
    agent.kill();
    let still = lab
        .in_flight_with_upid()
        .expect("Recover was interrupted: the op is still in flight");
    assert_eq!(still.op_id, op.op_id);
    assert_eq!(still.upid, op.upid);
    assert_eq!(lab.start_posts(VMID), 1, "Recover sends nothing");
    restart_and_check_recovered(&lab, &op);
}

#[test]
fn sigterm_while_recover_waits_exits_0_and_leaves_the_op_in_flight_for_the_next_start() {
    let lab = Lab::new("termrecover");
    let op = kill_mid_task(&lab);
    let want = format!(
        "/nodes/{}/tasks/{}/status",
        lab.pve.node(),
        op.upid.as_deref().unwrap()
    );
    let seen_before = lab.pve.requests().len();
    let reports_before = lab.hub.reports().len();
    let mut agent = lab.start_agent();
    agent.wait_until("Recover polling the task", |_| {
        lab.pve.requests()[seen_before..]
            .iter()
            .any(|r| r.method == "GET" && r.path == want)
    });
    // The hub hears from the host while Recover still waits: reports only read.
    agent.wait_until("a report during Recover", |_| {
        lab.hub.reports().len() > reports_before
    });
    assert!(
        lab.in_flight_with_upid().is_some() && agent.events("recover_finished").is_empty(),
        "the report came while Recover was still waiting:\n{}",
        agent.log()
    );
    // A shutdown ends Recover's wait early: the op is neither failed nor re-sent.
    agent.stop();
    let still = lab
        .in_flight_with_upid()
        .expect("an interrupted wait resolves nothing");
    assert_eq!(still.op_id, op.op_id);
    assert_eq!(lab.start_posts(VMID), 1);
    restart_and_check_recovered(&lab, &op);
}
