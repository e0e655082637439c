//! Provisioning cut short by SIGKILL: the real binary (built with `fault-points`) is
//! paused at a point of a create it sends for a desired guest that is absent and names a
//! backup, killed there, and restarted on the same state directory.
//!
//! The cases: killed once the `created_by_agent` provenance is durable but nothing was
//! sent (no task: failed, provenance ended, created anew by the next pass); after the
//! POST before its UPID is journaled (the task found in the node's task list: succeeded);
//! after the UPID is journaled while the task fails on a broken backup (failed, no guest,
//! provenance ended, created once the backup is whole again); and with the node dying
//! under the create, leaving a partial guest (failed, the agent's provenance kept, never
//! provisioned again). After the last start: nothing in flight, no create sent more
//! often than the case implies, and the journal replays clean.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::agent::{RunDir, fast_hub, write_signed_agent_config};

use std::time::Duration;

use felhom_agent::reconcile::{JournalRecord, OpClass, OpState, Provenance};
use felhom_sim::{BackupSeed, Broken, GuestSeed, HubSim, ProxmoxSim};
use serde_json::json;

/// The guest that is provisioned.
const VMID: u32 = 240;

struct Lab {
    run: RunDir,
    pve: ProxmoxSim,
    _hub: HubSim,
    volid: String,
}

impl Lab {
    fn new(name: &str, broken: Option<Broken>) -> Lab {
        let dir = common::tempdir("cprov", name);
        let pve = ProxmoxSim::builder()
            .guest(GuestSeed::new(100, "web"))
            .task_duration(Duration::from_millis(400))
            .start();
        let seed = BackupSeed::vzdump(100, "2024_05_01-10_00_00");
        let volid = pve.add_backup(match broken {
            Some(b) => seed.broken(b),
            None => seed,
        });
        let hub = fast_hub();
        let desired = json!({"generation": 1, "guests": [{
            "vmid": VMID, "source": {"backup": volid}, "storage": "local-lvm",
            "hostname": "restored", "rootfs_bytes": 4294967296u64
        }]});
        write_signed_agent_config(&dir, &pve, &hub, &desired);
        Lab {
            run: RunDir::new(dir),
            pve,
            _hub: hub,
            volid,
        }
    }

    /// The create op in flight now (exactly one).
    fn in_flight_create(&self) -> JournalRecord {
        let ops = self.run.journal().expect("the journal reads").in_flight();
        assert_eq!(ops.len(), 1, "{ops:?}\n{}", self.run.log());
        assert_eq!(ops[0].class, OpClass::GuestCreate);
        assert_eq!(ops[0].vmid, VMID);
        ops[0].clone()
    }

    fn creates(&self) -> usize {
        common::sent(&self.pve, "POST", "/lxc")
    }

    /// Restarts without a pause and waits until `op` is resolved, nothing is in flight
    /// and `settled` holds; stops the agent (SIGTERM, exit 0) and returns its events.
    fn restart_until(&self, op: &JournalRecord, what: &str, settled: impl Fn(&Lab) -> bool) {
        let mut agent = self.run.start(&[]);
        agent.wait_until(what, |_| {
            self.run.journal().is_some_and(|j| {
                j.in_flight().is_empty()
                    && j.latest(&op.op_id).is_some_and(|r| r.state.is_terminal())
            }) && settled(self)
        });
        agent.stop();
        let view = self.run.journal().expect("the journal reads");
        assert_eq!(view.damaged(), None);
        assert!(view.in_flight().is_empty(), "{:?}", view.in_flight());
    }

    fn state_of(&self, op: &JournalRecord) -> JournalRecord {
        self.run.journal().unwrap().latest(&op.op_id).unwrap()
    }

    fn provenance(&self, op: &JournalRecord) -> Option<Provenance> {
        self.run
            .journal()
            .unwrap()
            .provenance(VMID, Some(&op.op_id))
    }

    fn guest_provisioned(&self) -> bool {
        self.pve.guest_ids().contains(&VMID)
            && self
                .pve
                .guest_config(VMID)
                .is_some_and(|c| c.get("lock").is_none() && c["hostname"] == "restored")
    }
}

#[test]
fn killed_after_the_provenance_before_the_post() {
    let lab = Lab::new("provenance", None);
    lab.run.kill_at("provision:after-provenance", &[]);
    let op = lab.in_flight_create();
    // Durable before anything was sent.
    assert_eq!(lab.provenance(&op), Some(Provenance::CreatedInTransaction));
    assert_eq!(lab.creates(), 0, "nothing reached Proxmox");

    lab.restart_until(&op, "a new create done", Lab::guest_provisioned);
    let done = lab.state_of(&op);
    assert_eq!(done.state, OpState::Failed, "{done:?}");
    assert_eq!(done.upid, None);
    assert_eq!(lab.provenance(&op), None, "the transaction ended");
    assert_eq!(lab.creates(), 1, "the next pass created it, once");
}

#[test]
fn killed_after_the_post_before_the_upid() {
    let lab = Lab::new("post", None);
    lab.run.kill_at("benign:after-post", &[]);
    let op = lab.in_flight_create();
    assert_eq!(op.upid, None);
    assert_eq!(lab.creates(), 1);

    lab.restart_until(&op, "the create resolved", Lab::guest_provisioned);
    let done = lab.state_of(&op);
    assert_eq!(done.state, OpState::Succeeded, "{done:?}");
    assert!(done.upid.is_some(), "found in the task list");
    assert_eq!(lab.provenance(&op), None, "the transaction ended");
    assert_eq!(lab.creates(), 1, "never sent twice");
}

#[test]
fn killed_while_the_task_fails_on_a_broken_backup() {
    let lab = Lab::new("broken", Some(Broken::Truncated));
    lab.run.kill_at("benign:after-upid", &[]);
    let op = lab.in_flight_create();
    assert!(op.upid.is_some());
    // Repaired while the agent is down: the next pass may create it.
    assert!(lab.pve.set_backup_broken(&lab.volid, None));

    lab.restart_until(&op, "created after the failure", Lab::guest_provisioned);
    let done = lab.state_of(&op);
    assert_eq!(done.state, OpState::Failed, "{done:?}");
    assert_eq!(
        lab.provenance(&op),
        None,
        "no guest was left: provenance ended"
    );
    assert_eq!(lab.creates(), 2, "the failed one and the new one");
}

#[test]
fn killed_while_the_node_dies_under_the_create_leaves_a_partial_guest() {
    let lab = Lab::new("partial", None);
    lab.run.kill_at("benign:after-upid", &[]);
    let op = lab.in_flight_create();
    assert!(
        lab.pve.interrupt_create(VMID),
        "the create task was running"
    );

    lab.restart_until(&op, "the partial guest seen", |l| {
        common::logfmt::events(&l.run.log(), "provision_partial_guest")
            .iter()
            .any(|e| e.is("vmid", &VMID.to_string()))
    });
    let done = lab.state_of(&op);
    assert_eq!(done.state, OpState::Failed, "{done:?}");
    assert_eq!(
        lab.provenance(&op),
        Some(Provenance::CreatedInTransaction),
        "the partial guest keeps the agent's provenance"
    );
    assert_eq!(lab.creates(), 1, "never provisioned again");
    assert_eq!(
        lab.pve.guest_config(VMID).unwrap()["lock"],
        "create",
        "left for an operator"
    );
}
