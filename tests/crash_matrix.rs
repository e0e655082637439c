//! The crash matrix: the real binary, built with the `fault-points` feature, is paused
//! at one lifecycle point (`FELHOM_FAULT_PAUSE_AT`), SIGKILLed there, and restarted on
//! the same state directory without the pause, against the Proxmox and hub simulators.
//!
//! Two paths: a benign action (start a stopped guest the desired-state file wants
//! running) and a signed destructive job (a destroy signed by the real `ssh-keygen`,
//! delivered through the hub's signed-ops endpoint). The points: after `started` is
//! durable, after the Proxmox request returned but before the UPID is journaled, after
//! the UPID is journaled, after the task ended but before the terminal record; in the
//! middle of a journal compaction and of a nonce-store compaction (temp file written and
//! fsync'd, before the rename), each with an op left in flight; and, compound, a second
//! SIGKILL inside Recover after it found and journaled the task of an op that had none.
//!
//! After the last restart every case asserts: Recover left no op in flight and the op
//! ended as its point implies; the simulator saw no mutation twice (per method and
//! path); a replay of the signed op is refused (no second DELETE; the audit says
//! `skipped` or `replay`); and every store file replays clean (`selftest offline`, and
//! reopening each store through the crate).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::agent::{RunDir, fast_hub, write_signed_agent_config};
use common::sign::{Destroy, ssh_keygen_sign};

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use felhom_agent::authz::FileNonceStore;
use felhom_agent::authz::{Freshness, NonceStore};
use felhom_agent::base::{Clock, SystemClock, Timestamp};
use felhom_agent::reconcile::AuditLog;
use felhom_agent::reconcile::OpClass;
use felhom_agent::reconcile::{Journal, JournalRecord, JournalView, OpState};
use felhom_agent::store::JOURNAL_COMPACT_AT_ENV;
use felhom_sim::{GuestSeed, HubSim, ProxmoxSim};
use serde_json::json;

/// The guest the benign path starts.
const BENIGN_VMID: u32 = 100;
/// The guest the signed path destroys.
const SIGNED_VMID: u32 = 105;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Benign,
    Signed,
}

impl Flow {
    fn prefix(self) -> &'static str {
        match self {
            Flow::Benign => "benign",
            Flow::Signed => "signed",
        }
    }

    fn vmid(self) -> u32 {
        match self {
            Flow::Benign => BENIGN_VMID,
            Flow::Signed => SIGNED_VMID,
        }
    }

    fn class(self) -> OpClass {
        match self {
            Flow::Benign => OpClass::Start,
            Flow::Signed => OpClass::GuestDestroy,
        }
    }
}

struct Lab {
    run: RunDir,
    pve: ProxmoxSim,
    hub: HubSim,
    flow: Flow,
    /// The signed op's exact bytes, signature and nonce (signed flow only).
    signed: Option<(Vec<u8>, String, String)>,
}

impl Lab {
    fn new(name: &str, flow: Flow) -> Lab {
        let dir = common::tempdir("cm", name);
        let pve = ProxmoxSim::builder()
            .guest(GuestSeed::new(BENIGN_VMID, "web"))
            .guest(GuestSeed::new(SIGNED_VMID, "customer-db"))
            .task_duration(Duration::from_millis(150))
            .start();
        let hub = fast_hub();
        let desired = match flow {
            Flow::Benign => json!({"generation": 1, "guests": [
                {"vmid": BENIGN_VMID, "run": "running"}
            ]}),
            Flow::Signed => json!({"generation": 1, "guests": []}),
        };
        write_signed_agent_config(&dir, &pve, &hub, &desired);
        let signed = (flow == Flow::Signed).then(|| {
            let digest = pve
                .guest_digest(SIGNED_VMID)
                .expect("the guest to destroy exists");
            let guest = SIGNED_VMID.to_string();
            let op = Destroy::new("pve-a", &guest, &digest, SystemClock.now().unix());
            let blob = op.blob();
            let sig = ssh_keygen_sign(&dir, &blob);
            (blob, sig, op.nonce)
        });
        let lab = Lab {
            run: RunDir::new(dir),
            pve,
            hub,
            flow,
            signed,
        };
        lab.queue_signed_op();
        lab
    }

    /// Queues the signed destroy at the hub (again, for a replay).
    fn queue_signed_op(&self) {
        if let Some((blob, sig, _)) = &self.signed {
            self.hub.queue_signed_op(blob, Some(sig));
        }
    }

    /// The one op of this flow's guest in flight now.
    fn in_flight_op(&self) -> JournalRecord {
        let view = self.run.journal().expect("the journal reads");
        let ops: Vec<JournalRecord> = view
            .in_flight()
            .into_iter()
            .filter(|r| r.vmid == self.flow.vmid())
            .collect();
        assert_eq!(
            ops.len(),
            1,
            "one op in flight: {ops:?}\n{}",
            self.run.log()
        );
        assert_eq!(ops[0].class, self.flow.class());
        ops[0].clone()
    }

    /// Audit decisions for the flow's guest, oldest first.
    fn audit_decisions(&self) -> Vec<String> {
        self.run.audit_decisions(self.flow.vmid())
    }

    fn mutation_counts(&self) -> HashMap<(String, String), usize> {
        let mut counts = HashMap::new();
        for m in self.pve.mutations() {
            *counts.entry((m.method, m.path)).or_insert(0) += 1;
        }
        counts
    }

    fn starts(&self) -> usize {
        let path = format!("/nodes/{}/lxc/{BENIGN_VMID}/status/start", self.pve.node());
        self.mutation_counts()
            .get(&("POST".to_owned(), path))
            .copied()
            .unwrap_or(0)
    }

    fn destroys(&self) -> usize {
        let path = format!("/nodes/{}/lxc/{SIGNED_VMID}", self.pve.node());
        self.mutation_counts()
            .get(&("DELETE".to_owned(), path))
            .copied()
            .unwrap_or(0)
    }

    /// The last start: no pause, the signed op delivered again (a replay). Waits until
    /// nothing is in flight and the flow's end state is reached, stops the agent with
    /// SIGTERM (exit 0), and checks everything the matrix promises. `reached` says
    /// whether the interrupted op had reached Proxmox.
    fn finish(&self, op: &JournalRecord, reached: bool, env: &[(&str, &str)]) {
        self.queue_signed_op();
        let mut agent = self.run.start(env);
        agent.wait_until("the op resolved and nothing in flight", |_| {
            self.run.journal().is_some_and(|j| {
                j.in_flight().is_empty()
                    && j.latest(&op.op_id).is_some_and(|r| r.state.is_terminal())
            })
        });
        let replay_word = if reached { "skipped" } else { "replay" };
        match self.flow {
            Flow::Benign => agent.wait_until("the guest running", |_| {
                self.pve.guest_status(BENIGN_VMID).as_deref() == Some("running")
                    && self.run.journal().is_some_and(|j| j.in_flight().is_empty())
            }),
            Flow::Signed => agent.wait_until("the replay handled", |_| {
                self.audit_decisions().last().map(String::as_str) == Some(replay_word)
            }),
        }
        agent.stop();

        // Recover left nothing in flight; the op ended as its point implies.
        let view = self.run.journal().expect("the journal reads");
        assert_eq!(view.damaged(), None);
        assert!(view.in_flight().is_empty(), "{:?}", view.in_flight());
        let done = view.latest(&op.op_id).unwrap();
        let want = if reached {
            OpState::Succeeded
        } else {
            OpState::Failed
        };
        assert_eq!(done.state, want, "{done:?}\n{}", self.run.log());
        if reached {
            assert!(done.upid.is_some(), "resolved through its task: {done:?}");
        }

        // No mutation dispatched twice.
        for (k, n) in self.mutation_counts() {
            assert_eq!(n, 1, "{k:?} dispatched {n} times");
        }
        match self.flow {
            Flow::Benign => {
                assert_eq!(self.starts(), 1, "one start, ever");
                assert_eq!(
                    self.pve.guest_status(BENIGN_VMID).as_deref(),
                    Some("running")
                );
                // An op that never reached Proxmox is failed; the engine then starts
                // the guest as a new op, which is the one start the simulator saw.
                assert_eq!(ops_for(&view, BENIGN_VMID), if reached { 1 } else { 2 });
            }
            Flow::Signed => {
                assert_eq!(self.destroys(), usize::from(reached));
                assert_eq!(
                    self.pve.guest_ids().contains(&SIGNED_VMID),
                    !reached,
                    "the guest is gone exactly when the one destroy ran"
                );
                let decisions = self.audit_decisions();
                assert_eq!(
                    decisions.iter().filter(|d| *d == "allowed").count(),
                    1,
                    "authorized once: {decisions:?}"
                );
                assert_eq!(decisions.last().map(String::as_str), Some(replay_word));
                assert_eq!(ops_for(&view, SIGNED_VMID), 1, "one signed job, ever");
            }
        }
        self.check_files_replay_clean();
    }

    /// One more start that compacts the journal first: the applied op's nonce survived
    /// the compaction, so its replay is skipped again and nothing is sent.
    fn replay_after_compaction(&self) {
        let skipped = |lab: &Lab| {
            lab.audit_decisions()
                .iter()
                .filter(|d| *d == "skipped")
                .count()
        };
        let before = skipped(self);
        self.queue_signed_op();
        let mut agent = self.run.start(&[(JOURNAL_COMPACT_AT_ENV, "0")]);
        agent.wait_until("the replay skipped again", |_| skipped(self) == before + 1);
        let compacted = agent.events("journal_compacted");
        agent.stop();
        assert!(
            compacted.iter().any(|e| e.is("at", "start")),
            "{compacted:?}\n{}",
            self.run.log()
        );
        assert_eq!(self.destroys(), 1, "still one destroy");
        self.check_files_replay_clean();
    }

    /// `selftest offline` passes, and each store reopens through the crate.
    fn check_files_replay_clean(&self) {
        let out = Command::new(env!("CARGO_BIN_EXE_felhom-agent"))
            .args(["selftest", "offline", "--config"])
            .arg(self.run.dir.join("agent.json"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{text}");
        for f in ["journal.log", "nonces.log", "audit.log"] {
            let line = text
                .lines()
                .find(|l| l.contains(&format!("/{f} ")))
                .unwrap_or_default();
            assert!(line.contains("chain verified"), "{f}: {text}");
            assert!(
                !self.run.state().join(format!("{f}.compact.tmp")).exists(),
                "a compaction temp file was left: {f}"
            );
        }
        let journal = Journal::open(&self.run.state().join("journal.log")).unwrap();
        assert_eq!(journal.damaged(), None);
        assert!(journal.in_flight().is_empty());
        AuditLog::open(&self.run.state().join("audit.log")).unwrap();
        let nonces = FileNonceStore::open(self.run.state().join("nonces.log"), 120).unwrap();
        if let Some((_, _, n)) = &self.signed {
            assert_eq!(
                nonces
                    .seen_or_record(n, Timestamp(SystemClock.now().unix() + 1800), None)
                    .unwrap(),
                Freshness::Seen,
                "the signed op's nonce is still burnt"
            );
        }
    }
}

/// Distinct ops for `vmid` in the journal's history (a compaction keeps an op's latest
/// record only, so its `started` line may be gone).
fn ops_for(view: &JournalView, vmid: u32) -> usize {
    let mut ids: Vec<&str> = view
        .history()
        .iter()
        .filter(|r| r.vmid == vmid)
        .map(|r| r.op_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len()
}

/// Kills the flow's op at `{flow}:{point}`; checks what the journal holds then.
fn kill_in_lifecycle(lab: &Lab, point: &str) -> JournalRecord {
    lab.run
        .kill_at(&format!("{}:{point}", lab.flow.prefix()), &[]);
    let op = lab.in_flight_op();
    let (state, upid) = match point {
        "after-started" | "after-post" => (OpState::Started, false),
        _ => (OpState::TaskRunning, true),
    };
    assert_eq!(op.state, state, "{op:?}");
    assert_eq!(op.upid.is_some(), upid, "{op:?}");
    if lab.flow == Flow::Signed {
        assert!(op.idempotency_key.is_some(), "the nonce rides on the op");
    }
    let sent = match lab.flow {
        Flow::Benign => lab.starts(),
        Flow::Signed => lab.destroys(),
    };
    assert_eq!(sent, usize::from(point != "after-started"), "{point}");
    op
}

fn lifecycle_case(name: &str, flow: Flow, point: &str) {
    let lab = Lab::new(name, flow);
    let op = kill_in_lifecycle(&lab, point);
    lab.finish(&op, point != "after-started", &[]);
}

/// An op left in flight, then a SIGKILL in the middle of a compaction of `store`.
fn compaction_case(name: &str, flow: Flow, store: &str) {
    let lab = Lab::new(name, flow);
    let op = kill_in_lifecycle(&lab, "after-upid");
    // Journal compaction runs at start once the file is over the threshold; 0 makes
    // it run on every start. The nonce store compacts at every start anyway.
    let compact_always: &[(&str, &str)] = match store {
        "journal" => &[(JOURNAL_COMPACT_AT_ENV, "0")],
        _ => &[],
    };
    lab.run
        .kill_at(&format!("{store}:compact-before-rename"), compact_always);
    let file = lab.run.state().join(format!("{store}.log"));
    assert!(
        lab.run
            .state()
            .join(format!("{store}.log.compact.tmp"))
            .exists(),
        "the kill came after the temp file was written"
    );
    felhom_agent::store::verify_file(&file).expect("the old file is intact");
    if store == "journal" {
        let still = lab.in_flight_op();
        assert_eq!(still.op_id, op.op_id, "the journal still holds the op");
    }
    // With the journal, the last start compacts it for real (the in-flight op is kept
    // for Recover).
    lab.finish(&op, true, compact_always);
    if store == "journal" && flow == Flow::Signed {
        lab.replay_after_compaction();
    }
}

/// An op killed before its UPID was journaled; the next start's Recover finds the task
/// in the node's task list, journals it, and is killed there too.
fn recover_case(name: &str, flow: Flow) {
    let lab = Lab::new(name, flow);
    let op = kill_in_lifecycle(&lab, "after-post");
    lab.run.kill_at("recover:after-found", &[]);
    let found = lab.in_flight_op();
    assert_eq!(found.op_id, op.op_id);
    assert_eq!(found.state, OpState::TaskRunning);
    assert!(found.upid.is_some(), "Recover journaled the task it found");
    lab.finish(&op, true, &[]);
}

#[test]
fn benign_killed_after_started() {
    lifecycle_case("b-started", Flow::Benign, "after-started");
}

#[test]
fn benign_killed_after_post_before_upid() {
    lifecycle_case("b-post", Flow::Benign, "after-post");
}

#[test]
fn benign_killed_after_upid_journaled() {
    lifecycle_case("b-upid", Flow::Benign, "after-upid");
}

#[test]
fn benign_killed_after_task_ended_before_terminal_record() {
    lifecycle_case("b-wait", Flow::Benign, "after-wait");
}

#[test]
fn signed_killed_after_started() {
    lifecycle_case("s-started", Flow::Signed, "after-started");
}

#[test]
fn signed_killed_after_post_before_upid() {
    lifecycle_case("s-post", Flow::Signed, "after-post");
}

#[test]
fn signed_killed_after_upid_journaled() {
    lifecycle_case("s-upid", Flow::Signed, "after-upid");
}

#[test]
fn signed_killed_after_task_ended_before_terminal_record() {
    lifecycle_case("s-wait", Flow::Signed, "after-wait");
}

#[test]
fn benign_in_flight_then_killed_mid_journal_compaction() {
    compaction_case("b-jcompact", Flow::Benign, "journal");
}

#[test]
fn signed_in_flight_then_killed_mid_journal_compaction() {
    compaction_case("s-jcompact", Flow::Signed, "journal");
}

#[test]
fn benign_in_flight_then_killed_mid_nonce_compaction() {
    compaction_case("b-ncompact", Flow::Benign, "nonces");
}

#[test]
fn signed_in_flight_then_killed_mid_nonce_compaction() {
    compaction_case("s-ncompact", Flow::Signed, "nonces");
}

#[test]
fn benign_killed_again_inside_recover() {
    recover_case("b-recover", Flow::Benign);
}

#[test]
fn signed_killed_again_inside_recover() {
    recover_case("s-recover", Flow::Signed);
}
