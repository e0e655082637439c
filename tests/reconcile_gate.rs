//! The gate and signed jobs against the real verifier, with signatures minted here from
//! the real keys in `vectors/sshsig/keys/`, executing against the Proxmox simulator: every
//! refusal is typed, nothing refused reaches the simulator, a valid op runs once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::SignedRig;
use common::pinned_client as proxmox_client;
use common::sign::nonce;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use felhom_agent::app::OpOutcome;
use felhom_agent::authz::{AuthzConfig, AuthzError, NAMESPACE, NonceStore, Role, SignerEntry};
use felhom_agent::base::Shutdown;
use felhom_agent::base::{ManualClock, Timestamp};
use felhom_agent::hub::DeliveredOp;
use felhom_agent::proxmox::ConfigChange;
use felhom_agent::reconcile::Queue;
use felhom_agent::reconcile::{AllowReason, Decision, Gate, GuestNow, Refusal, SignedOp};
use felhom_agent::reconcile::{DesiredGuest, DesiredProvider, DesiredState, StaticProvider};
use felhom_agent::reconcile::{DestructiveExecutor, JobOutcome};
use felhom_agent::reconcile::{Engine, EngineOptions};
use felhom_agent::reconcile::{Intent, OpClass};
use felhom_agent::reconcile::{Journal, OpState};
use felhom_sim::{GuestSeed, ProxmoxSim};
use ssh_key::{HashAlg, LineEnding, PrivateKey};

const KEYS: &str = "vectors/sshsig/keys";
const NOW: i64 = 1_800_000_000;

fn tempdir(name: &str) -> PathBuf {
    common::fresh_path("gate", name)
}

fn pubkey(name: &str) -> String {
    fs::read_to_string(format!("{KEYS}/{name}.pub")).unwrap()
}

/// Signs `blob` with the private key file `name`, as `ssh-keygen -Y sign` would.
fn sign(name: &str, blob: &[u8]) -> String {
    let key = PrivateKey::from_openssh(fs::read(format!("{KEYS}/{name}")).unwrap()).unwrap();
    key.sign(NAMESPACE, HashAlg::Sha512, blob)
        .unwrap()
        .to_pem(LineEnding::LF)
        .unwrap()
}

struct Op<'a> {
    op: &'a str,
    host: &'a str,
    guest: &'a str,
    /// The config digest the operator saw; by default the seeded guest's.
    digest: String,
    params: &'a [(&'a str, &'a str)],
    expires: i64,
    nonce: String,
}

/// The config digest of a guest of [`sim`] as seeded (every simulator in this file
/// starts from the same seeds, so it is the same in each).
fn seed_digest(guest: &str) -> String {
    static DIGESTS: OnceLock<(String, String)> = OnceLock::new();
    let (d105, d106) = DIGESTS.get_or_init(|| {
        let s = sim();
        (s.guest_digest(105).unwrap(), s.guest_digest(106).unwrap())
    });
    match guest {
        "105" => d105.clone(),
        "106" => d106.clone(),
        other => panic!("no seeded guest {other}"),
    }
}

impl<'a> Op<'a> {
    fn destroy(guest: &'a str) -> Self {
        Op {
            op: "guest_destroy",
            host: "pve-a",
            guest,
            digest: seed_digest(guest),
            params: &[("purge", "1")],
            expires: NOW + 3600,
            nonce: nonce(),
        }
    }

    fn blob(&self) -> Vec<u8> {
        let params: serde_json::Map<String, serde_json::Value> = self
            .params
            .iter()
            .map(|(k, v)| ((*k).to_string(), serde_json::Value::from(*v)))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "op": self.op, "host_id": self.host, "guest_id": self.guest,
            "guest_digest": self.digest, "params": params,
            // Not a configured id: the audit must name the signer found by key
            // material, never what the blob claims.
            "key_id": "claimed-in-blob", "nonce": self.nonce,
            "not_before": Timestamp(self.expires - 7200).to_rfc3339(),
            "expires_at": Timestamp(self.expires).to_rfc3339(),
        }))
        .unwrap()
    }

    fn signed_by(&self, key: &str) -> SignedOp {
        let blob = self.blob();
        let signature = sign(key, &blob);
        SignedOp::new(blob, signature)
    }
}

fn destroy_intent(guest: &str) -> Intent {
    let mut i = Intent::new(OpClass::GuestDestroy, "pve-a", Some(guest.into()));
    i.params.insert("purge".into(), "1".into());
    i
}

/// One agent's reconcile state on a state dir; `restart` reopens it all from disk.
struct Agent {
    dir: PathBuf,
    clock: ManualClock,
    rig: SignedRig,
    desired: Arc<StaticProvider>,
}

fn open_agent(dir: &Path, sim: &ProxmoxSim) -> Agent {
    let clock = ManualClock::new(Timestamp(NOW));
    let cfg = AuthzConfig {
        signers: vec![
            common::sign::signer(),
            SignerEntry {
                key_id: "break-glass".into(),
                role: Role::Recovery,
                public_key: pubkey("ecdsa-p256"),
                valid_before: None,
            },
        ],
        ..AuthzConfig::default()
    };
    let rig = SignedRig::open(dir, &cfg, &clock, sim);
    Agent {
        dir: dir.to_path_buf(),
        clock,
        rig,
        desired: Arc::new(StaticProvider::new(DesiredState::default())),
    }
}

impl Agent {
    fn run(&self, intent: &Intent, signed: &SignedOp) -> JobOutcome {
        let exec: Arc<dyn DestructiveExecutor> = self.rig.exec.clone();
        self.rig.jobs.run_signed_job(intent, signed, exec).unwrap()
    }

    /// Runs `signed` as the intent to destroy `guest`.
    fn destroy(&self, guest: &str, signed: &SignedOp) -> JobOutcome {
        self.run(&destroy_intent(guest), signed)
    }

    /// Delivers `blob` (with `signature`, if any) the way the hub's signed-ops channel
    /// does: unsigned ops reach the gate alone, signed ones `run_signed_job`.
    fn deliver(&self, blob: &[u8], signature: Option<&SignedOp>) -> OpOutcome {
        let op = DeliveredOp {
            id: "hub-op-1".into(),
            blob: blob.to_vec(),
            signature: signature.map(|s| s.signature.clone()),
            cosignatures: Vec::new(),
        };
        self.rig.runner.handle(&op).unwrap()
    }

    /// A reconcile engine on this agent's gate, journal and queue, desiring `vmids`
    /// (no fields) until the test changes `self.desired`.
    fn engine(&self, sim: &ProxmoxSim, vmids: &[u32]) -> Engine {
        self.desired.set(DesiredState::from_guests(
            1,
            vmids.iter().map(|v| DesiredGuest::new(*v)),
        ));
        let mut opts = EngineOptions::new("pve-a");
        opts.wait = common::op_wait();
        Engine::new(
            proxmox_client(sim),
            Queue::clone(&self.rig.queue),
            self.rig.gate.clone(),
            self.rig.journal.clone(),
            self.desired.clone() as Arc<dyn DesiredProvider>,
            Shutdown::new(),
            opts,
        )
    }

    /// Whether the verifier burned `nonce`.
    fn burned(&self, nonce: &str) -> bool {
        self.rig.nonces.is_recorded(nonce).unwrap()
    }

    fn restart(self, sim: &ProxmoxSim) -> Agent {
        let dir = self.dir.clone();
        drop(self);
        open_agent(&dir, sim)
    }
}

fn sim() -> ProxmoxSim {
    ProxmoxSim::builder()
        .guest(GuestSeed::new(105, "customer-db").running(false))
        .guest(GuestSeed::new(106, "customer-web").running(false))
        .task_duration(Duration::from_millis(20))
        .start()
}

/// The op id of an executed job.
fn executed(outcome: JobOutcome) -> String {
    match outcome {
        JobOutcome::Executed { op_id } => op_id,
        other => panic!("expected an execution, got {other:?}"),
    }
}

fn refused(outcome: JobOutcome) -> Refusal {
    match outcome {
        JobOutcome::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Asserts that a refused case left no trace of execution: the executor was never
/// called, the simulator saw no mutation, both guests are still there, nothing was
/// journaled, no nonce was burned, and the last audited decision is the refusal's
/// code (the report's tail).
fn assert_nothing_ran(a: &Agent, sim: &ProxmoxSim, r: &Refusal) {
    assert_eq!(a.rig.exec.calls(), 0, "executor called");
    assert!(a.rig.nonces.is_empty(), "a refusal burned a nonce");
    assert!(sim.mutations().is_empty(), "{:?}", sim.mutations());
    assert_eq!(sim.guest_ids(), vec![105, 106]);
    assert!(a.rig.journal.in_flight().is_empty());
    assert_eq!(a.rig.journal.records(), 0, "refusals journal nothing");
    let tail = a.rig.audit.tail(1);
    assert_eq!(tail.len(), 1, "the decision was audited");
    assert_eq!(tail[0].decision, r.code());
}

/// [`refused`] as `want`, and [`assert_nothing_ran`].
fn refused_cleanly(a: &Agent, sim: &ProxmoxSim, outcome: JobOutcome, want: &Refusal) {
    let r = refused(outcome);
    assert_eq!(&r, want);
    assert_nothing_ran(a, sim, &r);
}

/// A fresh simulator and an agent on a fresh state dir.
fn fresh_agent(name: &str) -> (ProxmoxSim, Agent) {
    let sim = sim();
    let a = open_agent(&tempdir(name), &sim);
    (sim, a)
}

/// One matrix case on a fresh simulator and state dir: `act` produces the outcome
/// through the real job path; the refusal is returned after [`assert_nothing_ran`].
fn matrix_case(name: &str, act: impl FnOnce(&Agent) -> JobOutcome) -> Refusal {
    let (sim, a) = fresh_agent(name);
    let r = refused(act(&a));
    assert_nothing_ran(&a, &sim, &r);
    r
}

/// The destroy of 105 signed by `key` after `edit` changed what the op says, run as the
/// intent to destroy 105.
fn run_edited(a: &Agent, key: &str, edit: impl FnOnce(&mut Op)) -> JobOutcome {
    let mut op = Op::destroy("105");
    edit(&mut op);
    a.destroy("105", &op.signed_by(key))
}

/// One test per row: `name(tag, act) => want` runs [`matrix_case`] (a fresh agent, the
/// real job path, no trace of execution) and asserts the refusal matches `want`.
macro_rules! refusal_matrix {
    ($($name:ident($tag:literal, $act:expr) => $want:pat,)+) => {$(
        #[test]
        fn $name() {
            let r = matrix_case($tag, $act);
            assert!(matches!(r, $want), "{r:?}");
        }
    )+};
}

refusal_matrix! {
    matrix_unsigned_destructive_job_is_pending_signature("unsigned", |a| {
        match a.deliver(&Op::destroy("105").blob(), None) {
            OpOutcome::Job(j) => j,
            other => panic!("{other:?}"),
        }
    }) => Refusal::PendingSignature,
    matrix_unknown_signer_is_rejected("unknown", |a| run_edited(a, "other-ed25519", |_| {}))
        => Refusal::Rejected(AuthzError::UnknownSigner(_)),
    // Well past the allowed clock skew.
    matrix_expired_is_rejected("expired", |a| {
        run_edited(a, "ed25519", |op| op.expires = NOW - 3600)
    }) => Refusal::Rejected(AuthzError::Expired(_)),
    matrix_wrong_host_is_rejected("host", |a| run_edited(a, "ed25519", |op| op.host = "pve-b"))
        => Refusal::Rejected(AuthzError::Target(_)),
    matrix_wrong_guest_is_binding_mismatch("guest", |a| {
        run_edited(a, "ed25519", |op| *op = Op::destroy("106"))
    }) => Refusal::BindingMismatch,
    matrix_wrong_op_is_binding_mismatch("op", |a| {
        run_edited(a, "ed25519", |op| op.op = "storage_wipe")
    }) => Refusal::BindingMismatch,
    matrix_wrong_params_is_binding_mismatch("params", |a| {
        run_edited(a, "ed25519", |op| op.params = &[("purge", "0")])
    }) => Refusal::BindingMismatch,
    matrix_recovery_key_on_ordinary_destructive_is_role_denied("role", |a| {
        run_edited(a, "ecdsa-p256", |_| {})
    }) => Refusal::RoleDenied,
    matrix_tampered_blob_under_a_good_signature_is_rejected("tampered", |a| {
        let mut s = Op::destroy("105").signed_by("ed25519");
        s.blob[2] ^= 1;
        a.destroy("105", &s)
    }) => Refusal::Rejected(AuthzError::BadSignature(_) | AuthzError::Malformed(_)),
    an_op_no_executor_carries_is_unknown_op_and_burns_nothing("unknownop", |a| {
        let mut op = Op::destroy("105");
        op.op = "storage_wipe";
        let mut intent = destroy_intent("105");
        intent.class = OpClass::Unknown("storage_wipe".into());
        a.run(&intent, &op.signed_by("ed25519"))
    }) => Refusal::UnknownOp,
}

#[test]
fn a_refusal_burns_no_nonce_so_the_same_signature_runs_for_its_own_action() {
    let (sim, a) = fresh_agent("replay");
    // Verified, but bound to another guest: refused, nothing burned.
    let op = Op::destroy("106");
    let signed = op.signed_by("ed25519");
    assert_eq!(refused(a.destroy("105", &signed)), Refusal::BindingMismatch);
    assert!(!a.burned(&op.nonce));
    // The same signature, after a restart, for the action it names: it runs once.
    let a = a.restart(&sim);
    executed(a.destroy("106", &signed));
    assert!(a.burned(&op.nonce), "burned once it ran");
    assert_eq!(sim.guest_ids(), vec![105]);
    // And never again, across another restart.
    let a = a.restart(&sim);
    assert_eq!(a.destroy("106", &signed), JobOutcome::Skipped);
    assert_eq!(sim.mutations().len(), 1, "one DELETE");
}

#[test]
fn a_role_refusal_burns_no_nonce_so_the_same_blob_signed_by_the_right_key_runs() {
    let (sim, a) = fresh_agent("rolenonce");
    let op = Op::destroy("105");
    assert_eq!(
        refused(a.destroy("105", &op.signed_by("ecdsa-p256"))),
        Refusal::RoleDenied
    );
    assert!(!a.burned(&op.nonce));
    executed(a.destroy("105", &op.signed_by("ed25519")));
    assert_eq!(sim.guest_ids(), vec![106]);
}

#[test]
fn a_reused_vmid_is_guest_changed_and_the_held_signature_destroys_nothing() {
    let (sim, a) = fresh_agent("reuse");
    // The operator signs the destroy of 105 as it is now; the hub holds it back.
    let held = Op::destroy("105");
    let signed = held.signed_by("ed25519");
    // Meanwhile 105 is destroyed by other means and the number goes to a new customer.
    assert!(sim.remove_guest(105));
    sim.add_guest(GuestSeed::new(105, "new-customer").cores(2));
    assert_ne!(sim.guest_digest(105).unwrap(), held.digest);
    refused_cleanly(&a, &sim, a.destroy("105", &signed), &Refusal::GuestChanged);
    assert!(
        sim.guest_config(105).is_some(),
        "the new guest is still there"
    );
    let audited = a.rig.audit.tail(1);
    assert!(audited[0].reason.contains(&held.digest), "{audited:?}");
    // Only a signature over the new guest's digest removes the new guest.
    let mut fresh = Op::destroy("105");
    fresh.digest = sim.guest_digest(105).unwrap();
    executed(a.destroy("105", &fresh.signed_by("ed25519")));
    assert_eq!(sim.guest_ids(), vec![106]);
}

#[test]
fn a_config_changed_between_signing_and_delivery_is_guest_changed() {
    let (sim, a) = fresh_agent("changed");
    let op = Op::destroy("105");
    let signed = op.signed_by("ed25519");
    let cores = sim.guest_config(105).unwrap()["cores"].to_string();
    sim.set_config_value(105, "cores", Some("8"));
    refused_cleanly(&a, &sim, a.destroy("105", &signed), &Refusal::GuestChanged);
    // Changed back, the digest is the signed one again and the op runs.
    sim.set_config_value(105, "cores", Some(&cores));
    assert_eq!(sim.guest_digest(105).unwrap(), op.digest);
    executed(a.destroy("105", &signed));
}

#[test]
fn a_guest_gone_before_delivery_is_guest_changed() {
    let (sim, a) = fresh_agent("gone");
    let signed = Op::destroy("105").signed_by("ed25519");
    assert!(sim.remove_guest(105));
    let r = refused(a.destroy("105", &signed));
    assert_eq!(r, Refusal::GuestChanged);
    assert_eq!(a.rig.exec.calls(), 0);
    assert!(sim.mutations().is_empty());
    assert!(a.rig.nonces.is_empty());
    assert!(a.rig.audit.tail(1)[0].reason.contains("no longer exists"));
}

#[test]
fn a_protected_guest_is_refused_before_any_request() {
    let sim = sim();
    sim.set_config_value(105, "protection", Some("1"));
    let a = open_agent(&tempdir("protected"), &sim);
    let mut op = Op::destroy("105");
    op.digest = sim.guest_digest(105).unwrap();
    sim.clear_requests();
    refused_cleanly(
        &a,
        &sim,
        a.destroy("105", &op.signed_by("ed25519")),
        &Refusal::Protected,
    );
    let sent: Vec<_> = sim.requests().into_iter().map(|q| q.method).collect();
    assert!(
        sent.iter().all(|m| m == "GET"),
        "only the config read went out: {sent:?}"
    );
}

#[test]
fn unprotect_signed_clears_the_flag_as_its_own_journaled_step_then_destroys() {
    let sim = sim();
    sim.set_config_value(105, "protection", Some("1"));
    let a = open_agent(&tempdir("unprotect"), &sim);
    let mut op = Op::destroy("105");
    op.digest = sim.guest_digest(105).unwrap();
    op.params = &[("purge", "1"), ("unprotect", "1")];
    let mut intent = destroy_intent("105");
    intent.params.insert("unprotect".into(), "1".into());
    let destroy_id = executed(a.run(&intent, &op.signed_by("ed25519")));
    assert_eq!(sim.guest_ids(), vec![106]);
    let m = sim.mutations();
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(
        (m[0].method.as_str(), m[0].path.as_str()),
        ("PUT", "/nodes/pve/lxc/105/config")
    );
    let form = |k: &str| {
        m[0].form
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(form("protection").as_deref(), Some("0"), "{:?}", m[0].form);
    assert_eq!(form("digest"), Some(op.digest.clone()), "{:?}", m[0].form);
    assert_eq!(
        (m[1].method.as_str(), m[1].path.as_str()),
        ("DELETE", "/nodes/pve/lxc/105")
    );
    let view = Journal::open_read_only(&a.dir.join("journal.log")).unwrap();
    let unprotect = view
        .history()
        .iter()
        .rev()
        .find(|r| r.op_id.starts_with("unprotect-105"))
        .expect("the unprotect step was journaled");
    assert_eq!(unprotect.state, OpState::Succeeded);
    assert_eq!(
        unprotect.params.get("protection").map(String::as_str),
        Some("0")
    );
    assert_eq!(
        a.rig.journal.latest(&destroy_id).unwrap().state,
        OpState::Succeeded
    );
}

/// The tag a hub (or anyone with API access) can put on a guest to call it scratch.
const HUB_SCRATCH_TAG: &str = "felhom-scratch";

/// Tags guest 105 as scratch in its Proxmox config, as the hub would, and forgets that
/// request so the test sees only what the agent sends.
fn hub_tags_scratch(sim: &ProxmoxSim) {
    let change = ConfigChange {
        set: vec![("tags".into(), HUB_SCRATCH_TAG.into())],
        ..ConfigChange::default()
    };
    proxmox_client(sim).set_config(105, &change).unwrap();
    assert_eq!(
        sim.guest_config(105).unwrap().get("tags"),
        Some(&serde_json::Value::from(HUB_SCRATCH_TAG))
    );
    sim.clear_requests();
}

/// A hub op destroying 105 that claims scratch in every way a hub can.
fn hub_scratch_op() -> Op<'static> {
    let mut op = Op::destroy("105");
    op.params = &[("purge", "1"), ("scratch", "1"), ("tags", HUB_SCRATCH_TAG)];
    op
}

/// Runs an engine pass desiring both guests, then one desiring only 106; returns the
/// second pass's destroy deltas after asserting it sent nothing and both guests remain.
fn drop_105_from_desired(a: &Agent, sim: &ProxmoxSim) -> Vec<(u32, String)> {
    let engine = a.engine(sim, &[105, 106]);
    engine.pass().unwrap();
    a.desired
        .set(DesiredState::from_guests(2, vec![DesiredGuest::new(106)]));
    let pass = engine.pass().unwrap();
    assert!(sim.mutations().is_empty(), "{:?}", sim.mutations());
    assert_eq!(sim.guest_ids(), vec![105, 106]);
    pass.destroy_deltas
}

#[test]
fn matrix_hub_supplied_scratch_tag_is_pending_signature() {
    let sim = sim();
    hub_tags_scratch(&sim);
    let a = open_agent(&tempdir("hubtag"), &sim);
    // Unsigned, through the hub's path: the guest's tag and the op's params both claim
    // scratch, and neither is provenance.
    let out = a.deliver(&hub_scratch_op().blob(), None);
    let r = match out {
        OpOutcome::Job(j) => refused(j),
        other => panic!("a hub-claimed scratch guest was not held: {other:?}"),
    };
    assert_eq!(r, Refusal::PendingSignature);
    assert_nothing_ran(&a, &sim, &r);
    // The desired state dropping the tagged guest is a destroy delta: held too.
    assert_eq!(
        drop_105_from_desired(&a, &sim),
        vec![(105, "pending_signature".to_string())]
    );
    assert_eq!(a.rig.exec.calls(), 0);
}

#[test]
fn journal_scratch_record_makes_the_same_destroy_benign_but_the_hub_path_still_runs_nothing() {
    let sim = sim();
    hub_tags_scratch(&sim);
    let a = open_agent(&tempdir("ownscratch"), &sim);
    let op = hub_scratch_op();
    let mut intent = destroy_intent("105");
    intent.params.insert("scratch".into(), "1".into());
    intent.params.insert("tags".into(), HUB_SCRATCH_TAG.into());
    // The agent's own journaled record is what counts.
    a.rig.journal.tag_scratch(105, Timestamp(NOW)).unwrap();
    match a.rig.gate.authorize(&intent, None, &GuestNow::NotRead) {
        Decision::Allowed { reason, .. } => assert_eq!(reason, AllowReason::AgentProvenance),
        other => panic!("{other:?}"),
    }
    // Provenance is the agent's for its own intents only: the same destroy delivered
    // unsigned through the hub's channel needs a signature, and runs nothing.
    assert_eq!(
        a.deliver(&op.blob(), None),
        OpOutcome::Job(JobOutcome::Refused(Refusal::PendingSignature))
    );
    assert!(sim.mutations().is_empty(), "{:?}", sim.mutations());
    assert_eq!(a.rig.exec.calls(), 0);
    // And a guest the desired state drops reads as allowed, yet is never planned.
    assert_eq!(
        drop_105_from_desired(&a, &sim),
        vec![(105, "allowed_not_planned".to_string())]
    );
}

#[test]
fn valid_op_executes_once_and_its_replay_is_refused_across_restart() {
    let (sim, a) = fresh_agent("valid");
    let intent = destroy_intent("105");
    let signed = Op::destroy("105").signed_by("ed25519");

    let op_id = executed(a.run(&intent, &signed));
    assert_eq!(sim.guest_ids(), vec![106]);
    let m = sim.mutations();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].method, "DELETE");
    assert_eq!(m[0].path, "/nodes/pve/lxc/105");
    let rec = a.rig.journal.latest(&op_id).unwrap();
    assert_eq!(rec.state, OpState::Succeeded);
    assert!(rec.upid.is_some(), "the UPID was journaled");

    assert_eq!(a.run(&intent, &signed), JobOutcome::Skipped);
    let a = a.restart(&sim);
    assert_eq!(a.run(&intent, &signed), JobOutcome::Skipped);
    assert_eq!(a.rig.exec.calls(), 0, "not after restart");
    assert_eq!(sim.mutations().len(), 1, "executed exactly once");
    assert!(
        a.rig
            .audit
            .tail(50)
            .iter()
            .any(|e| e.decision == "allowed" && e.key_id.as_deref() == Some("ops-2026"))
    );
    assert!(
        a.rig
            .audit
            .tail(50)
            .iter()
            .all(|e| e.key_id.as_deref() != Some("claimed-in-blob")),
        "the blob's claimed key_id reached the audit log"
    );
}

#[test]
fn a_failed_execution_is_journaled_failed_and_not_applied() {
    let (sim, a) = fresh_agent("fail");
    sim.fail_next_task("command 'lxc-destroy' failed: exit code 1");
    let op = Op::destroy("105");
    let out = a.destroy("105", &op.signed_by("ed25519"));
    let JobOutcome::Failed { op_id, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(a.rig.journal.latest(&op_id).unwrap().state, OpState::Failed);
    assert!(!a.rig.journal.already_applied(&op.nonce));
    assert_eq!(sim.guest_ids(), vec![105, 106]);
    // The nonce was burned before the dispatch: the same signature cannot try again.
    assert!(a.burned(&op.nonce));
    let r = refused(a.destroy("105", &op.signed_by("ed25519")));
    assert!(
        matches!(r, Refusal::Rejected(AuthzError::Replay(_))),
        "{r:?}"
    );
    assert_eq!(sim.mutations().len(), 1, "one DELETE, the failed one");
}

#[test]
fn damaged_journal_refuses_destructive_but_allows_benign() {
    let sim = sim();
    let dir = tempdir("damaged");
    let a = open_agent(&dir, &sim);
    for i in 0..3 {
        a.rig
            .journal
            .append(&felhom_agent::reconcile::JournalRecord::started(
                format!("start-1-{i}"),
                1,
                OpClass::Start,
                Timestamp(NOW),
            ))
            .unwrap();
    }
    a.clock.advance(1);
    drop(a);
    let p = dir.join("journal.log");
    let text = fs::read_to_string(&p)
        .unwrap()
        .replace("start-1-1", "start-1-7");
    fs::write(&p, text).unwrap();
    let a = open_agent(&dir, &sim);
    assert!(a.rig.journal.damaged().is_some());
    // Even the agent's own scratch tag is not trusted from a damaged journal.
    a.rig.journal.tag_scratch(105, Timestamp(NOW)).unwrap();
    let op = Op::destroy("105");
    assert_eq!(
        refused(a.destroy("105", &op.signed_by("ed25519"))),
        Refusal::StateDamaged
    );
    assert_eq!(
        a.rig.gate.dry_run(&destroy_intent("105")).refusal(),
        Some(&Refusal::StateDamaged)
    );
    let start = Intent::new(OpClass::Start, "pve-a", Some("105".into()));
    assert!(
        a.rig
            .gate
            .authorize(&start, None, &GuestNow::NotRead)
            .is_allowed()
    );
    assert!(sim.mutations().is_empty());
    // The nonce was not burned: the refusal came before verification.
    fs::remove_file(dir.join("journal.log.damaged")).unwrap();
    let a = a.restart(&sim);
    executed(a.destroy("105", &op.signed_by("ed25519")));
}

#[test]
fn damaged_nonce_store_refuses_destructive() {
    let (_sim, a) = fresh_agent("nonce");
    let probe: felhom_agent::reconcile::HealthProbe =
        Arc::new(|| Some("line 2: hash mismatch".to_string()));
    let journal = a.rig.journal.clone();
    let gate =
        Gate::new("pve-a".into(), None, journal, a.rig.audit.clone()).with_nonce_health(probe);
    assert_eq!(
        gate.authorize(&destroy_intent("105"), None, &GuestNow::NotRead)
            .refusal(),
        Some(&Refusal::StateDamaged)
    );
    let stop = Intent::new(OpClass::Stop, "pve-a", Some("105".into()));
    assert!(gate.authorize(&stop, None, &GuestNow::NotRead).is_allowed());
}

#[test]
fn dry_run_never_verifies_or_audits() {
    let (_sim, a) = fresh_agent("dry");
    assert_eq!(
        a.rig.gate.dry_run(&destroy_intent("105")).refusal(),
        Some(&Refusal::PendingSignature)
    );
    assert!(
        a.rig
            .gate
            .dry_run(&Intent::new(
                OpClass::SetConfig,
                "pve-a",
                Some("105".into())
            ))
            .is_allowed()
    );
    assert!(a.rig.audit.tail(10).is_empty());
}

#[test]
fn provenance_is_never_read_from_an_operators_op_however_it_is_signed() {
    let (sim, a) = fresh_agent("provclaim");
    // The agent's own records: an open create transaction on 105, scratch on 106.
    a.rig
        .journal
        .record_guest_created(105, "txn-open", Timestamp(NOW))
        .unwrap();
    a.rig.journal.tag_scratch(106, Timestamp(NOW)).unwrap();
    // The agent's own intents read them: benign by provenance.
    let mut own = destroy_intent("105");
    own.params.insert("txn".into(), "txn-open".into());
    match a.rig.gate.authorize(&own, None, &GuestNow::NotRead) {
        Decision::Allowed { reason, .. } => assert_eq!(reason, AllowReason::AgentProvenance),
        other => panic!("{other:?}"),
    }
    // An operator's op naming that transaction in its params, signed by a key whose
    // role may not destroy: the signature is checked as for any destroy, so refused.
    let mut claim = Op::destroy("105");
    claim.params = &[("purge", "1"), ("txn", "txn-open")];
    let r = refused(a.run(&own, &claim.signed_by("ecdsa-p256")));
    assert_eq!(r.code(), "role_denied");
    // A destroy of the agent's scratch guest with a signature that is no signature.
    let scratch = Op::destroy("106");
    let forged = SignedOp::new(
        scratch.blob(),
        "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n".into(),
    );
    let r = refused(a.run(&destroy_intent("106"), &forged));
    assert_eq!(r.code(), "malformed");
    assert_eq!(a.rig.exec.calls(), 0, "executor called");
    assert!(a.rig.nonces.is_empty(), "a refusal burned a nonce");
    assert!(sim.mutations().is_empty(), "{:?}", sim.mutations());
    assert_eq!(sim.guest_ids(), vec![105, 106]);
}
