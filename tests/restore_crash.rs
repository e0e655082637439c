//! A daemon running a restore test, SIGKILLed at each stage — provenance journaled,
//! restore sent (its UPID not yet journaled), backup restored, scratch guest started,
//! just before and just after its destroy is sent — and restarted on the same state
//! directory: Recover and the start-up cleanup leave no scratch guest and no scratch
//! provenance behind, record the test as interrupted, destroy only the scratch vmid (at
//! most once), and never touch the customer's guest. Also: a SIGTERM mid-restore, and a
//! round run by the daemon on its schedule and received by the hub.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::agent::{Agent, kill_at_pause, write_agent_config};

use std::path::PathBuf;
use std::time::Duration;

use felhom_agent::reconcile::{Journal, TestStage, read_results};
use felhom_agent::store::{PCT_ENV, SECOND_MS_ENV};
use felhom_sim::{BackupSeed, GuestSeed, HubSim, ProxmoxSim};
use serde_json::json;

const SCRATCH: u32 = 9900;

struct Lab {
    dir: PathBuf,
    pve: ProxmoxSim,
    _hub: HubSim,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    fn new(name: &str) -> Lab {
        let dir = common::tempdir("restore-crash", name);
        let pve = ProxmoxSim::builder()
            .guest(GuestSeed::new(100, "web").running(true).disk_gib(4))
            .backup_seed(
                BackupSeed::vzdump(100, "2024_05_01-10_00_00")
                    .of_guest(GuestSeed::new(100, "web").disk_gib(4)),
            )
            .task_duration(Duration::from_millis(50))
            .start();
        let hub = HubSim::start();
        write_agent_config(&dir, &pve, &hub, |c| {
            c["hub"]["timeout_seconds"] = json!(2);
            c["restore_tests"] = json!({
                "vmid_range": "9900-9909", "storage": "local-lvm",
                "min_free_memory_mib": 16, "min_free_storage_gib": 1
            });
        });
        Lab {
            dir,
            pve,
            _hub: hub,
        }
    }

    fn start(&self, log: &str, env: &[(&str, &str)]) -> Agent {
        let mut all = vec![(SECOND_MS_ENV, "20"), (PCT_ENV, "/bin/true")];
        all.extend_from_slice(env);
        Agent::spawn(
            &["run"],
            &self.dir.join("agent.json"),
            &self.dir.join(log),
            &all,
        )
    }

    fn deletes_of(&self, vmid: u32) -> usize {
        common::sent(&self.pve, "DELETE", &format!("/lxc/{vmid}"))
    }
}

/// `scratch_at_kill`: whether the scratch guest exists when the daemon is killed (`None`:
/// either, a task may end meanwhile).
fn crash_at(point: &str, scratch_at_kill: Option<bool>) {
    let lab = Lab::new(point.rsplit(':').next().unwrap());
    kill_at_pause(point, &lab.dir.join("paused"), |env| {
        lab.start("first.log", env)
    });
    if let Some(want) = scratch_at_kill {
        assert_eq!(
            lab.pve.guest_ids().contains(&SCRATCH),
            want,
            "{point}: the scratch guest at the kill"
        );
    }

    let mut again = lab.start("second.log", &[]);
    again.wait_for_event("restore_tests_ready", |_| true);
    again.stop();

    let ids = lab.pve.guest_ids();
    assert!(
        !ids.contains(&SCRATCH),
        "{point}: scratch guest left: {ids:?}"
    );
    assert!(ids.contains(&100), "{point}");
    assert!(lab.deletes_of(SCRATCH) <= 1, "{point}: destroyed twice");
    assert_eq!(lab.deletes_of(100), 0, "{point}");
    let outside: Vec<_> = lab
        .pve
        .mutations()
        .into_iter()
        .filter(|m| m.method == "DELETE" && !m.path.ends_with(&format!("/lxc/{SCRATCH}")))
        .collect();
    assert!(outside.is_empty(), "{point}: {outside:?}");
    let view = Journal::open_read_only(&lab.dir.join("state").join("journal.log")).unwrap();
    assert!(
        view.in_flight().is_empty(),
        "{point}: {:?}",
        view.in_flight()
    );
    assert_eq!(view.provenance(SCRATCH, None), None, "{point}: tag left");
    let results = read_results(&lab.dir.join("state"));
    assert!(results.running.is_empty(), "{point}");
    let last = results
        .results
        .last()
        .expect("the interrupted test is recorded");
    assert_eq!(last.scratch_vmid, Some(SCRATCH));
    assert_eq!(
        last.stage,
        Some(TestStage::Interrupted),
        "{point}: {last:?}"
    );
}

#[test]
fn sigkill_after_the_scratch_tag_is_durable() {
    crash_at("restore_test:after-tag", Some(false));
}

#[test]
fn sigkill_after_the_restore_was_sent_before_its_upid_was_journaled() {
    // Recover finds the restore in the node's task list, waits for it; the cleanup then
    // destroys what it made.
    crash_at("restore_test:after-restore-post", Some(true));
}

#[test]
fn sigkill_after_the_restore() {
    crash_at("restore_test:after-restore", Some(true));
}

#[test]
fn sigkill_after_the_start() {
    crash_at("restore_test:after-start", Some(true));
}

#[test]
fn sigkill_before_the_destroy() {
    crash_at("restore_test:before-destroy", Some(true));
}

#[test]
fn sigkill_after_the_destroy_was_sent() {
    // The destroy task runs on: gone by the restart, resolved by Recover, not re-sent.
    crash_at("restore_test:after-destroy-post", None);
}

#[test]
fn the_daemon_runs_a_round_on_its_schedule_and_reports_it_to_the_hub() {
    let lab = Lab::new("daemon");
    let mut agent = lab.start("daemon.log", &[]);
    let round = agent.wait_for_event("restore_test_round", |_| true);
    assert_eq!(round.field("ok"), "1", "{round:?}");
    // The next report carries it, shaped as the schema says (the hub sim validates).
    agent.wait_until("a report with the restore test", |_| {
        lab._hub.reports().iter().any(|r| {
            r["restore_tests"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["outcome"] == "ok"))
        })
    });
    let report = lab
        ._hub
        .reports()
        .into_iter()
        .rev()
        .find(|r| r["restore_tests"].as_array().is_some_and(|t| !t.is_empty()))
        .unwrap();
    let t = &report["restore_tests"][0];
    assert_eq!(t["vmid"], 100);
    assert_eq!(t["scratch_vmid"], SCRATCH);
    assert_eq!(t["stage"], serde_json::Value::Null);
    // Only one round: the next is every_hours (24 h) after this one.
    assert_eq!(agent.events("restore_test_round").len(), 1);
    agent.stop();
    assert!(!lab.pve.guest_ids().contains(&SCRATCH));
    assert_eq!(lab.deletes_of(100), 0);
}

#[test]
fn sigterm_mid_restore_exits_0_and_the_next_start_records_it_interrupted_not_failed() {
    let lab = Lab::new("sigterm");
    lab.pve.set_task_duration(Duration::from_secs(3));
    let mut agent = lab.start("first.log", &[]);
    agent.wait_until("the restore in flight", |_| {
        lab.pve.guest_ids().contains(&SCRATCH)
    });
    agent.stop();
    let state = lab.dir.join("state");
    let on_file = read_results(&state);
    assert!(
        on_file.results.is_empty(),
        "no verdict: {:?}",
        on_file.results
    );
    assert_eq!(on_file.running.len(), 1, "{on_file:?}");

    lab.pve.set_task_duration(Duration::from_millis(50));
    let mut again = lab.start("second.log", &[]);
    again.wait_for_event("restore_tests_ready", |_| true);
    again.stop();
    assert!(!lab.pve.guest_ids().contains(&SCRATCH));
    let results = read_results(&state).results;
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].stage, Some(TestStage::Interrupted));
}
