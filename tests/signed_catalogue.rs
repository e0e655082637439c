//! The signed-op catalogue beyond `guest_destroy`: `snapshot_rollback` and
//! `backup_delete` through the real verifier, gate, journal and Proxmox executor against
//! the Proxmox simulator, with each refusal they can meet (`guest_changed`, `protected`,
//! `binding_mismatch`, `target_missing`, `foreign_volume`, replay) asserted by variant,
//! and that a refusal sends nothing, journals nothing and burns no nonce; and every op
//! word outside the catalogue refused `unknown_op` on the hub's channel before anything
//! is read or burned.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::SignedRig;
use common::sign::nonce;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use felhom_agent::app::OpOutcome;
use felhom_agent::authz::{AuthzConfig, NAMESPACE};
use felhom_agent::base::{ManualClock, Timestamp};
use felhom_agent::hub::DeliveredOp;
use felhom_agent::reconcile::{DestructiveExecutor, JobOutcome};
use felhom_agent::reconcile::{Intent, OpClass, Refusal, SignedOp};
use felhom_agent::reconcile::{Journal, OpState};
use felhom_sim::{GuestSeed, ProxmoxSim};
use ssh_key::{HashAlg, LineEnding, PrivateKey};

const KEYS: &str = "vectors/sshsig/keys";
const NOW: i64 = 1_800_000_000;
/// The backup of guest 105 the simulator is seeded with.
const BACKUP_105: &str = "local:backup/vzdump-lxc-105-2026_11_20-02_00_00.tar.zst";
/// The backup of guest 106.
const BACKUP_106: &str = "local:backup/vzdump-lxc-106-2026_11_20-02_00_00.tar.zst";

fn sign(blob: &[u8]) -> String {
    let key = PrivateKey::from_openssh(fs::read(format!("{KEYS}/ed25519")).unwrap()).unwrap();
    key.sign(NAMESPACE, HashAlg::Sha512, blob)
        .unwrap()
        .to_pem(LineEnding::LF)
        .unwrap()
}

/// An operator's op: `op` on `guest` with `params`, bound to `digest`.
struct Op {
    op: String,
    guest: String,
    digest: String,
    params: Vec<(String, String)>,
    nonce: String,
}

impl Op {
    fn new(op: &str, guest: &str, digest: &str, params: &[(&str, &str)]) -> Op {
        Op {
            op: op.into(),
            guest: guest.into(),
            digest: digest.into(),
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            nonce: nonce(),
        }
    }

    fn blob(&self) -> Vec<u8> {
        let params: serde_json::Map<String, serde_json::Value> = self
            .params
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "op": self.op, "host_id": "pve-a", "guest_id": self.guest,
            "guest_digest": self.digest, "params": params,
            "key_id": "ops-2026", "nonce": self.nonce,
            "not_before": Timestamp(NOW - 60).to_rfc3339(),
            "expires_at": Timestamp(NOW + 1800).to_rfc3339(),
        }))
        .unwrap()
    }

    fn signed(&self) -> SignedOp {
        let blob = self.blob();
        let signature = sign(&blob);
        SignedOp::new(blob, signature)
    }

    /// The action this op asks for, as the hub channel reads it from the blob.
    fn intent(&self) -> Intent {
        let mut i = Intent::new(OpClass::parse(&self.op), "pve-a", Some(self.guest.clone()));
        i.params = self.params.iter().cloned().collect();
        i
    }
}

struct Agent {
    dir: std::path::PathBuf,
    sim: ProxmoxSim,
    rig: SignedRig,
}

/// Guests 105 and 106 (stopped), each with one backup in `local`, 105 with 2 cores, the
/// snapshot `before_upgrade` taken and then 4 cores set; an agent on a fresh state
/// dir; the simulator's request log cleared.
fn agent(name: &str) -> Agent {
    let sim = ProxmoxSim::builder()
        .guest(GuestSeed::new(105, "customer-db").running(false).cores(2))
        .guest(GuestSeed::new(106, "customer-web").running(false))
        .backup(105, "2026_11_20-02_00_00")
        .backup(106, "2026_11_20-02_00_00")
        .task_duration(Duration::from_millis(20))
        .start();
    common::snapshot_then_four_cores(&sim, 105);
    open(&common::tempdir("catalogue", name), sim)
}

/// Runs `op` on `a`, then the same signed op on a restarted agent whose fresh state
/// directory `name` holds only `a`'s burnt nonces: asserts the verifier refuses it as a
/// replay and nothing is executed. Returns the restarted agent.
fn replayed_after_restart(a: Agent, op: &Op, name: &str) -> Agent {
    let signed = op.signed();
    assert!(matches!(
        a.run_as(&op.intent(), &signed),
        JobOutcome::Executed { .. }
    ));
    let dir = common::tempdir("catalogue", name);
    fs::copy(a.dir.join("nonces.log"), dir.join("nonces.log")).unwrap();
    let b = open(&dir, a.sim);
    let out = b.run_as(&op.intent(), &signed);
    assert!(
        matches!(
            out,
            JobOutcome::Refused(Refusal::Rejected(felhom_agent::authz::AuthzError::Replay(
                _
            )))
        ),
        "{out:?}"
    );
    assert_eq!(b.rig.exec.calls(), 0);
    b
}

fn open(dir: &Path, sim: ProxmoxSim) -> Agent {
    let clock = ManualClock::new(Timestamp(NOW));
    let cfg = AuthzConfig {
        signers: vec![common::sign::signer()],
        ..AuthzConfig::default()
    };
    let rig = SignedRig::open(dir, &cfg, &clock, &sim);
    Agent {
        dir: dir.to_path_buf(),
        sim,
        rig,
    }
}

impl Agent {
    fn digest(&self, vmid: u32) -> String {
        self.sim.guest_digest(vmid).unwrap()
    }

    /// Runs `signed` as the action `intent`.
    fn run_as(&self, intent: &Intent, signed: &SignedOp) -> JobOutcome {
        let exec: Arc<dyn DestructiveExecutor> = self.rig.exec.clone();
        self.rig.jobs.run_signed_job(intent, signed, exec).unwrap()
    }

    /// Runs `op` signed, as the action it names.
    fn run(&self, op: &Op) -> JobOutcome {
        self.run_as(&op.intent(), &op.signed())
    }

    /// Delivers `op` signed the way the hub's signed-ops channel does.
    fn deliver(&self, op: &Op) -> OpOutcome {
        let s = op.signed();
        let delivered = DeliveredOp {
            id: format!("hub-{}", op.nonce),
            blob: s.blob,
            signature: Some(s.signature),
            cosignatures: Vec::new(),
        };
        self.rig.runner.handle(&delivered).unwrap()
    }

    /// Asserts `outcome` is `want`, and that nothing ran: no executor call, no
    /// mutation at the simulator, nothing journaled, no nonce burned, the decision
    /// audited with the refusal's code.
    fn refused_cleanly(&self, outcome: JobOutcome, want: Refusal) {
        assert_eq!(outcome, JobOutcome::Refused(want.clone()));
        assert_eq!(self.rig.exec.calls(), 0, "executor called");
        assert!(self.rig.nonces.is_empty(), "a refusal burned a nonce");
        assert!(
            self.sim.mutations().is_empty(),
            "{:?}",
            self.sim.mutations()
        );
        assert_eq!(self.rig.journal.records(), 0, "refusals journal nothing");
        let tail = self.rig.audit.tail(1);
        assert_eq!(tail.len(), 1, "the decision was audited");
        assert_eq!(tail[0].decision, want.code());
    }

    fn cores(&self, vmid: u32) -> Option<u64> {
        self.sim
            .guest_config(vmid)
            .and_then(|c| c.get("cores").and_then(serde_json::Value::as_u64))
    }

    fn mutations_to(&self, suffix: &str) -> usize {
        self.sim
            .mutations()
            .iter()
            .filter(|r| r.path.ends_with(suffix) || r.path.contains(suffix))
            .count()
    }
}

fn rollback(a: &Agent, snapshot: &str) -> Op {
    Op::new(
        "snapshot_rollback",
        "105",
        &a.digest(105),
        &[("snapshot", snapshot)],
    )
}

fn backup_delete(a: &Agent, guest: &str, volid: &str) -> Op {
    let vmid: u32 = guest.parse().unwrap();
    Op::new("backup_delete", guest, &a.digest(vmid), &[("volid", volid)])
}

// ---- snapshot_rollback ------------------------------------------------------------

#[test]
fn a_signed_rollback_runs_once_journaled_and_brings_the_snapshot_back() {
    let a = agent("rollback-ok");
    assert_eq!(a.cores(105), Some(4));
    let op = rollback(&a, "before_upgrade");
    let JobOutcome::Executed { op_id } = a.run(&op) else {
        panic!("not executed")
    };
    assert_eq!(a.cores(105), Some(2), "rolled back");
    assert_eq!(a.mutations_to("/rollback"), 1);
    // Journaled step by step, the UPID before the terminal record.
    assert!(a.rig.journal.in_flight().is_empty());
    assert!(a.rig.journal.already_applied(&op.nonce));
    let view = Journal::open_read_only(&a.dir.join("journal.log")).unwrap();
    let steps: Vec<_> = view
        .history()
        .iter()
        .filter(|r| r.op_id == op_id)
        .map(|r| (r.state, r.upid.is_some()))
        .collect();
    assert_eq!(
        steps,
        vec![
            (OpState::Started, false),
            (OpState::TaskRunning, true),
            (OpState::Succeeded, true)
        ]
    );
    // The same signed op again: skipped, never a second rollback.
    assert_eq!(a.run(&op), JobOutcome::Skipped);
    assert_eq!(a.mutations_to("/rollback"), 1, "never run twice");
}

#[test]
fn a_rollback_to_a_snapshot_the_guest_does_not_have_is_target_missing() {
    let a = agent("rollback-missing");
    let op = rollback(&a, "no-such-snap");
    a.refused_cleanly(a.run(&op), Refusal::TargetMissing);
    assert_eq!(a.cores(105), Some(4));
}

#[test]
fn a_rollback_signed_for_another_config_is_guest_changed() {
    let a = agent("rollback-changed");
    let op = Op::new(
        "snapshot_rollback",
        "105",
        &a.digest(106),
        &[("snapshot", "before_upgrade")],
    );
    a.refused_cleanly(a.run(&op), Refusal::GuestChanged);
}

#[test]
fn a_rollback_of_a_protected_guest_is_refused_unless_signed_unprotect() {
    let a = agent("rollback-protected");
    a.sim.set_config_value(105, "protection", Some("1"));
    let op = rollback(&a, "before_upgrade");
    a.refused_cleanly(a.run(&op), Refusal::Protected);
    // Signed with `unprotect`: the flag is cleared as its own journaled step, then the
    // rollback runs.
    let op = Op::new(
        "snapshot_rollback",
        "105",
        &a.digest(105),
        &[("snapshot", "before_upgrade"), ("unprotect", "1")],
    );
    assert!(matches!(a.run(&op), JobOutcome::Executed { .. }));
    assert_eq!(a.mutations_to("/rollback"), 1);
}

#[test]
fn a_rollback_signed_for_another_snapshot_is_binding_mismatch() {
    let a = agent("rollback-binding");
    let signed = rollback(&a, "before_upgrade").signed();
    let mut intent = rollback(&a, "before_upgrade").intent();
    intent.params.insert("snapshot".into(), "other".into());
    a.refused_cleanly(a.run_as(&intent, &signed), Refusal::BindingMismatch);
}

#[test]
fn a_replayed_rollback_after_a_restart_is_refused_and_not_run_again() {
    let a = agent("rollback-replay");
    let op = rollback(&a, "before_upgrade");
    replayed_after_restart(a, &op, "rollback-replay-2");
}

// ---- backup_delete ----------------------------------------------------------------

#[test]
fn a_signed_backup_delete_removes_that_volume_once() {
    let a = agent("backup-ok");
    let op = backup_delete(&a, "105", BACKUP_105);
    assert!(matches!(a.run(&op), JobOutcome::Executed { .. }));
    assert_eq!(a.sim.backups(), vec![BACKUP_106.to_string()]);
    assert_eq!(a.mutations_to("/content/"), 1);
    assert_eq!(a.run(&op), JobOutcome::Skipped);
    assert_eq!(a.mutations_to("/content/"), 1, "never run twice");
}

#[test]
fn a_backup_delete_of_a_protected_guest_is_refused_unless_signed_unprotect() {
    let a = agent("backup-guest-protected");
    a.sim.set_config_value(105, "protection", Some("1"));
    let op = backup_delete(&a, "105", BACKUP_105);
    a.refused_cleanly(a.run(&op), Refusal::Protected);
    let op = Op::new(
        "backup_delete",
        "105",
        &a.digest(105),
        &[("volid", BACKUP_105), ("unprotect", "1")],
    );
    assert!(matches!(a.run(&op), JobOutcome::Executed { .. }));
    assert_eq!(a.sim.backups(), vec![BACKUP_106.to_string()]);
}

#[test]
fn a_replayed_backup_delete_after_a_restart_is_refused_and_not_run_again() {
    let a = agent("backup-replay");
    let op = backup_delete(&a, "105", BACKUP_105);
    let b = replayed_after_restart(a, &op, "backup-replay-2");
    assert_eq!(
        b.sim
            .mutations()
            .iter()
            .filter(|m| m.path.contains("/content/"))
            .count(),
        1,
        "one DELETE in all"
    );
}

#[test]
fn a_backup_delete_of_another_guests_backup_is_foreign_volume() {
    let a = agent("backup-foreign");
    let op = backup_delete(&a, "105", BACKUP_106);
    a.refused_cleanly(a.run(&op), Refusal::ForeignVolume);
    assert_eq!(a.sim.backups().len(), 2);
}

#[test]
fn a_backup_delete_of_a_volume_that_is_not_there_is_target_missing() {
    let a = agent("backup-missing");
    let op = backup_delete(
        &a,
        "105",
        "local:backup/vzdump-lxc-105-2020_01_01-00_00_00.tar.zst",
    );
    a.refused_cleanly(a.run(&op), Refusal::TargetMissing);
    // No volid at all is refused the same way, naming the param.
    let op = Op::new("backup_delete", "105", &a.digest(105), &[]);
    let out = a.run(&op);
    assert_eq!(out, JobOutcome::Refused(Refusal::TargetMissing));
}

#[test]
fn a_backup_delete_of_a_protected_backup_is_protected() {
    let a = agent("backup-protected");
    assert!(a.sim.set_backup_protected(BACKUP_105, true));
    let op = backup_delete(&a, "105", BACKUP_105);
    a.refused_cleanly(a.run(&op), Refusal::Protected);
    assert_eq!(a.sim.backups().len(), 2);
}

#[test]
fn a_backup_delete_signed_for_another_config_is_guest_changed() {
    let a = agent("backup-changed");
    let op = Op::new(
        "backup_delete",
        "105",
        &a.digest(106),
        &[("volid", BACKUP_105)],
    );
    a.refused_cleanly(a.run(&op), Refusal::GuestChanged);
}

#[test]
fn a_backup_delete_signed_for_another_volume_is_binding_mismatch() {
    let a = agent("backup-binding");
    let signed = backup_delete(&a, "105", BACKUP_105).signed();
    let mut intent = backup_delete(&a, "105", BACKUP_105).intent();
    intent.params.insert("volid".into(), BACKUP_106.into());
    a.refused_cleanly(a.run_as(&intent, &signed), Refusal::BindingMismatch);
}

#[test]
fn a_backup_delete_delivered_by_the_hub_runs_through_the_same_checks() {
    let a = agent("backup-hub");
    let foreign = backup_delete(&a, "105", BACKUP_106);
    assert_eq!(
        a.deliver(&foreign),
        OpOutcome::Job(JobOutcome::Refused(Refusal::ForeignVolume))
    );
    assert!(a.rig.nonces.is_empty());
    let own = backup_delete(&a, "105", BACKUP_105);
    assert!(matches!(
        a.deliver(&own),
        OpOutcome::Job(JobOutcome::Executed { .. })
    ));
    assert_eq!(a.sim.backups(), vec![BACKUP_106.to_string()]);
}

// ---- outside the catalogue ----------------------------------------------------------

#[test]
fn every_op_outside_the_catalogue_is_unknown_op_on_the_hub_channel_and_burns_nothing() {
    let a = agent("unknown");
    for word in [
        "storage_wipe",
        "decommission",
        "reboot",
        "set_config",
        "start",
    ] {
        let op = Op::new(word, "105", &a.digest(105), &[]);
        assert_eq!(
            a.deliver(&op),
            OpOutcome::Job(JobOutcome::Refused(Refusal::UnknownOp)),
            "{word}"
        );
    }
    assert_eq!(a.rig.exec.calls(), 0);
    assert!(a.rig.nonces.is_empty(), "no nonce burned");
    assert!(a.sim.mutations().is_empty());
    assert_eq!(a.rig.journal.records(), 0);
    assert!(
        a.rig
            .audit
            .tail(5)
            .iter()
            .all(|r| r.decision == Refusal::UnknownOp.code())
    );
}
