//! A signed `restore_overwrite` cut short by SIGKILL at each of its steps: the real
//! binary (built with `fault-points`) gets the op from the hub, pauses at one point, is
//! killed there and restarted on the same state directory while the hub delivers the
//! same op again.
//!
//! The restore alone (a stopped guest): after `started` (nothing sent: failed), after
//! the POST before its UPID (the task found: succeeded), after the UPID, after the task
//! ended (succeeded). With `stop` (a running guest): inside the stop step before and
//! after its UPID, and after the stop succeeded — the restore never started, its nonce
//! is burned, so the redelivered op is a replay and nothing is restored. In every case:
//! Recover leaves nothing in flight, no request is ever sent twice, and the redelivered
//! op never runs again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::agent::{Agent, fast_hub, kill_at_pause, run_fast, write_signed_agent_config};
use common::sign::{op_blob, ssh_keygen_sign};

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use felhom_agent::base::{Clock, SystemClock};
use felhom_agent::reconcile::{Journal, JournalView, OpClass, OpState};
use felhom_sim::{GuestSeed, HubSim, ProxmoxSim};
use serde_json::{Value, json};

const VMID: u32 = 105;
const BACKUP: &str = "local:backup/vzdump-lxc-105-2024_05_01-10_00_00.tar.zst";

struct Lab {
    dir: PathBuf,
    pve: ProxmoxSim,
    hub: HubSim,
    blob: Vec<u8>,
    sig: String,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    fn new(name: &str, running: bool) -> Lab {
        let dir = common::tempdir("crest", name);
        let pve = ProxmoxSim::builder()
            .guest(
                GuestSeed::new(VMID, "customer-db")
                    .cores(2)
                    .running(running),
            )
            .backup(VMID, "2024_05_01-10_00_00")
            .task_duration(Duration::from_millis(150))
            .start();
        pve.set_config_value(VMID, "cores", Some("6"));
        let hub = fast_hub();
        write_signed_agent_config(&dir, &pve, &hub);
        fs::write(
            dir.join("desired.json"),
            json!({"generation": 1, "guests": []}).to_string(),
        )
        .unwrap();
        let mut params = vec![("backup", BACKUP)];
        if running {
            params.push(("stop", "1"));
        }
        let digest = pve.guest_digest(VMID).unwrap();
        let (blob, _) = op_blob(
            "restore_overwrite",
            "pve-a",
            &VMID.to_string(),
            &digest,
            &params,
            SystemClock.now().unix(),
        );
        let sig = ssh_keygen_sign(&dir, &blob);
        let lab = Lab {
            dir,
            pve,
            hub,
            blob,
            sig,
        };
        lab.deliver();
        lab
    }

    fn deliver(&self) {
        self.hub.queue_signed_op(&self.blob, Some(&self.sig));
    }

    fn journal(&self) -> Option<JournalView> {
        Journal::open_read_only(&self.dir.join("state").join("journal.log")).ok()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    fn start(&self, env: &[(&str, &str)]) -> Agent {
        run_fast(&self.dir, env)
    }

    fn kill_at(&self, point: &str) {
        kill_at_pause(point, &self.dir.join("paused"), |env| self.start(env));
    }

    /// The audit decisions about the guest, oldest first.
    fn decisions(&self) -> Vec<String> {
        let text = fs::read_to_string(self.dir.join("state").join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["data"]["guest_id"] == json!(VMID.to_string()))
            .filter_map(|l| l["data"]["decision"].as_str().map(str::to_owned))
            .collect()
    }

    fn mutations(&self) -> HashMap<(String, String), usize> {
        let mut counts = HashMap::new();
        for m in self.pve.mutations() {
            *counts.entry((m.method, m.path)).or_insert(0) += 1;
        }
        counts
    }

    fn restores(&self) -> usize {
        let key = (
            "POST".to_string(),
            format!("/nodes/{}/lxc", self.pve.node()),
        );
        self.mutations().get(&key).copied().unwrap_or(0)
    }

    /// Restarts (the op delivered again), waits until nothing is in flight and the
    /// redelivered op was refused as `word`, stops the agent and checks the common
    /// promises. Returns the journal's terminal state of each op class.
    fn finish(&self, word: &str) -> HashMap<String, OpState> {
        self.deliver();
        let before = self.decisions().iter().filter(|d| *d == word).count();
        let mut agent = self.start(&[]);
        agent.wait_until(&format!("the redelivery {word}"), |_| {
            self.journal().is_some_and(|j| j.in_flight().is_empty())
                && self.decisions().iter().filter(|d| *d == word).count() > before
        });
        agent.stop();
        let view = self.journal().expect("the journal reads");
        assert_eq!(view.damaged(), None);
        assert!(view.in_flight().is_empty(), "{:?}", view.in_flight());
        for (k, n) in self.mutations() {
            assert_eq!(n, 1, "{k:?} sent {n} times\n{}", self.log());
        }
        assert_eq!(
            self.decisions().iter().filter(|d| *d == "allowed").count(),
            1,
            "authorized once: {:?}",
            self.decisions()
        );
        let mut states = HashMap::new();
        for r in view.history() {
            if let Some(latest) = view.latest(&r.op_id) {
                states.insert(latest.class.as_str().to_string(), latest.state);
            }
        }
        states
    }

    fn cores(&self) -> String {
        self.pve.guest_config(VMID).unwrap()["cores"].to_string()
    }
}

/// Kills the restore of a stopped guest at `point`; `reached`: the request got to
/// Proxmox before the kill.
fn restore_killed_at(name: &str, point: &str, reached: bool) {
    let lab = Lab::new(name, false);
    lab.kill_at(point);
    let word = if reached { "skipped" } else { "replay" };
    let states = lab.finish(word);
    let want = if reached {
        OpState::Succeeded
    } else {
        OpState::Failed
    };
    assert_eq!(
        states.get(OpClass::RestoreOverwrite.as_str()),
        Some(&want),
        "{states:?}\n{}",
        lab.log()
    );
    assert_eq!(lab.restores(), usize::from(reached));
    assert_eq!(lab.cores(), if reached { "2" } else { "6" });
}

#[test]
fn restore_killed_after_started() {
    restore_killed_at("started", "signed:after-started", false);
}

#[test]
fn restore_killed_after_post() {
    restore_killed_at("post", "signed:after-post", true);
}

#[test]
fn restore_killed_after_upid() {
    restore_killed_at("upid", "signed:after-upid", true);
}

#[test]
fn restore_killed_after_wait() {
    restore_killed_at("wait", "signed:after-wait", true);
}

/// Kills a restore with `stop` inside or right after its stop step: the restore never
/// started and never starts (its nonce is burned).
fn stop_killed_at(name: &str, point: &str, stopped: bool) {
    let lab = Lab::new(name, true);
    lab.kill_at(point);
    let states = lab.finish("replay");
    let want = if stopped {
        OpState::Succeeded
    } else {
        OpState::Failed
    };
    assert_eq!(
        states.get(OpClass::Stop.as_str()),
        Some(&want),
        "{states:?}\n{}",
        lab.log()
    );
    assert_eq!(states.get(OpClass::RestoreOverwrite.as_str()), None);
    assert_eq!(lab.restores(), 0, "never restored");
    assert_eq!(lab.cores(), "6");
    assert_eq!(
        lab.pve.guest_status(VMID).as_deref(),
        Some(if stopped { "stopped" } else { "running" })
    );
}

#[test]
fn stop_step_killed_after_started() {
    stop_killed_at("stop-started", "signed:after-started", false);
}

#[test]
fn stop_step_killed_after_upid() {
    stop_killed_at("stop-upid", "signed:after-upid", true);
}

#[test]
fn killed_after_the_stop_before_the_restore() {
    stop_killed_at("after-stop", "restore:after-stop", true);
}
