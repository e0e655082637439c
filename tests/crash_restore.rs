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
use common::RESTORE_BACKUP as BACKUP;
use common::agent::{RunDir, fast_hub, write_signed_agent_config};
use common::sign::{op_blob, ssh_keygen_sign};

use std::collections::HashMap;
use std::time::Duration;

use felhom_agent::base::{Clock, SystemClock};
use felhom_agent::reconcile::{OpClass, OpState};
use felhom_sim::{HubSim, ProxmoxSim};
use serde_json::json;

const VMID: u32 = 105;

struct Lab {
    run: RunDir,
    pve: ProxmoxSim,
    hub: HubSim,
    blob: Vec<u8>,
    sig: String,
}

impl Lab {
    fn new(name: &str, running: bool) -> Lab {
        let dir = common::tempdir("crest", name);
        let pve = common::restore_sim(running, Duration::from_millis(150));
        let hub = fast_hub();
        write_signed_agent_config(&dir, &pve, &hub, &json!({"generation": 1, "guests": []}));
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
            run: RunDir::new(dir),
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

    /// The audit decisions about the guest, oldest first.
    fn decisions(&self) -> Vec<String> {
        self.run.audit_decisions(VMID)
    }

    fn mutations(&self) -> HashMap<(String, String), usize> {
        let mut counts = HashMap::new();
        for m in self.pve.mutations() {
            *counts.entry((m.method, m.path)).or_insert(0) += 1;
        }
        counts
    }

    fn restores(&self) -> usize {
        common::sent(&self.pve, "POST", "/lxc")
    }

    /// Restarts (the op delivered again), waits until nothing is in flight and the
    /// redelivered op was refused as `word`, stops the agent and checks the common
    /// promises. Returns the journal's terminal state of each op class.
    fn finish(&self, word: &str) -> HashMap<String, OpState> {
        self.deliver();
        let before = self.decisions().iter().filter(|d| *d == word).count();
        let mut agent = self.run.start(&[]);
        agent.wait_until(&format!("the redelivery {word}"), |_| {
            self.run.journal().is_some_and(|j| j.in_flight().is_empty())
                && self.decisions().iter().filter(|d| *d == word).count() > before
        });
        agent.stop();
        let view = self.run.journal().expect("the journal reads");
        assert_eq!(view.damaged(), None);
        assert!(view.in_flight().is_empty(), "{:?}", view.in_flight());
        for (k, n) in self.mutations() {
            assert_eq!(n, 1, "{k:?} sent {n} times\n{}", self.run.log());
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
    lab.run.kill_at(point, &[]);
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
        lab.run.log()
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
    lab.run.kill_at(point, &[]);
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
        lab.run.log()
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
