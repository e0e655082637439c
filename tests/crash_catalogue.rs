//! SIGKILL in the middle of the catalogue's other signed ops: the real binary (built
//! with `fault-points`) runs a signed `snapshot_rollback` or `backup_delete` the hub
//! delivers, is paused at a lifecycle point (`FELHOM_FAULT_PAUSE_AT`) and killed there,
//! then restarted on the same state directory with the same op delivered again.
//!
//! Each case asserts, after the restart: Recover resolved the op through its task (found
//! in the node's task list when the UPID had not been journaled yet: `vzrollback`, or
//! `imgdel` whose task id is `VMID@STORAGE`), nothing is in flight, Proxmox saw the op
//! exactly once, its effect is there, and the replay was skipped (`skipped` audited).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::agent::{RunDir, fast_hub, write_signed_agent_config};
use common::sign::{nonce, ssh_keygen_sign};

use std::time::Duration;

use felhom_agent::base::{Clock, SystemClock, Timestamp};
use felhom_agent::reconcile::{OpClass, OpState};
use felhom_sim::{GuestSeed, HubSim, ProxmoxSim};
use serde_json::{Value, json};

const VMID: u32 = 105;
const BACKUP: &str = "local:backup/vzdump-lxc-105-2026_11_20-02_00_00.tar.zst";
const OTHER_BACKUP: &str = "local:backup/vzdump-lxc-105-2026_11_21-02_00_00.tar.zst";

struct Lab {
    run: RunDir,
    pve: ProxmoxSim,
    hub: HubSim,
    blob: Vec<u8>,
    sig: String,
    class: OpClass,
}

impl Lab {
    /// Guest 105 with 2 cores, a snapshot `before_upgrade`, then 4 cores; two backups;
    /// the op `op` with `params` signed for the guest as it is then, queued at the hub.
    fn new(name: &str, op: &str, params: Value) -> Lab {
        let dir = common::tempdir("cc", name);
        let pve = ProxmoxSim::builder()
            .guest(GuestSeed::new(VMID, "customer-db").running(false).cores(2))
            .backup(VMID, "2026_11_20-02_00_00")
            .backup(VMID, "2026_11_21-02_00_00")
            .task_duration(Duration::from_millis(150))
            .start();
        common::snapshot_then_four_cores(&pve, VMID);
        let hub = fast_hub();
        write_signed_agent_config(&dir, &pve, &hub, &json!({"generation": 1, "guests": []}));
        let now = SystemClock.now().unix();
        let blob = serde_json::to_vec(&json!({
            "op": op, "host_id": "pve-a", "guest_id": VMID.to_string(),
            "guest_digest": pve.guest_digest(VMID).unwrap(), "params": params,
            "key_id": "ops-2026", "nonce": nonce(),
            "not_before": Timestamp(now - 60).to_rfc3339(),
            "expires_at": Timestamp(now + 1800).to_rfc3339(),
        }))
        .unwrap();
        let sig = ssh_keygen_sign(&dir, &blob);
        let lab = Lab {
            run: RunDir::new(dir),
            pve,
            hub,
            blob,
            sig,
            class: OpClass::parse(op),
        };
        lab.hub.queue_signed_op(&lab.blob, Some(&lab.sig));
        lab
    }

    fn audit_decisions(&self) -> Vec<String> {
        self.run.audit_decisions(VMID)
    }

    /// The requests that carried the op (the rollback POST or the volume DELETE).
    fn op_requests(&self) -> usize {
        self.pve
            .mutations()
            .iter()
            .filter(|m| m.path.ends_with("/rollback") || m.path.contains("/content/"))
            .count()
    }

    /// Kills the op at `signed:{point}`, restarts with the op delivered again, and
    /// checks the matrix's promises.
    fn run(&self, point: &str) {
        self.run.kill_at(&format!("signed:{point}"), &[]);
        let view = self.run.journal().unwrap();
        let flight = view.in_flight();
        assert_eq!(flight.len(), 1, "{flight:?}");
        let op = flight[0].clone();
        assert_eq!(op.class, self.class);
        assert_eq!(
            op.upid.is_some(),
            point == "after-upid",
            "the UPID is journaled only from after-upid on: {op:?}"
        );
        assert_eq!(self.op_requests(), 1, "dispatched once before the kill");

        self.hub.queue_signed_op(&self.blob, Some(&self.sig));
        let mut agent = self.run.start(&[]);
        agent.wait_until("the op resolved and the replay skipped", |_| {
            self.run.journal().is_some_and(|j| {
                j.in_flight().is_empty()
                    && j.latest(&op.op_id).is_some_and(|r| r.state.is_terminal())
            }) && self.audit_decisions().last().map(String::as_str) == Some("skipped")
        });
        agent.stop();

        let view = self.run.journal().unwrap();
        let done = view.latest(&op.op_id).unwrap();
        assert_eq!(done.state, OpState::Succeeded, "{done:?}");
        assert!(done.upid.is_some(), "resolved through its task: {done:?}");
        assert_eq!(self.op_requests(), 1, "never run twice");
        let allowed = self
            .audit_decisions()
            .iter()
            .filter(|d| *d == "allowed")
            .count();
        assert_eq!(allowed, 1, "authorized once");
    }
}

fn rollback_case(name: &str, point: &str) {
    let lab = Lab::new(
        name,
        "snapshot_rollback",
        json!({"snapshot": "before_upgrade"}),
    );
    lab.run(point);
    let cores = lab.pve.guest_config(VMID).unwrap()["cores"].as_u64();
    assert_eq!(cores, Some(2), "rolled back to the snapshot");
}

fn backup_delete_case(name: &str, point: &str) {
    let lab = Lab::new(name, "backup_delete", json!({"volid": BACKUP}));
    lab.run(point);
    assert_eq!(lab.pve.backups(), vec![OTHER_BACKUP.to_string()]);
}

#[test]
fn rollback_killed_after_post_before_upid_is_found_by_recover_and_not_resent() {
    rollback_case("rb-post", "after-post");
}

#[test]
fn rollback_killed_after_upid_journaled_is_recovered_through_its_task() {
    rollback_case("rb-upid", "after-upid");
}

#[test]
fn backup_delete_killed_after_post_before_upid_is_found_by_recover_and_not_resent() {
    backup_delete_case("bd-post", "after-post");
}

#[test]
fn backup_delete_killed_after_upid_journaled_is_recovered_through_its_task() {
    backup_delete_case("bd-upid", "after-upid");
}
