//! The gate and signed jobs against the real verifier, with signatures minted here from
//! the real keys in `vectors/sshsig/keys/`, executing against the Proxmox simulator: every
//! refusal is typed, nothing refused reaches the simulator, a valid op runs once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use felhom_agent::authz::{
    AuthzConfig, AuthzError, FileNonceStore, NAMESPACE, Role, SignerEntry, Verifier,
};
use felhom_agent::hub::AuditTail;
use felhom_agent::net::{Sha256Pin, TlsTrust};
use felhom_agent::proxmox::{Client, ClientOptions, WaitOptions};
use felhom_agent::reconcile::audit::AuditLog;
use felhom_agent::reconcile::classify::{Intent, OpClass};
use felhom_agent::reconcile::gate::{AllowReason, Decision, Gate, Refusal, SignedOp};
use felhom_agent::reconcile::jobs::{DestructiveExecutor, JobOutcome, ProxmoxExecutor, SignedJobs};
use felhom_agent::reconcile::journal::{Journal, JournalError, OpState};
use felhom_agent::reconcile::queue::Queue;
use felhom_agent::secret::Secret;
use felhom_agent::shutdown::Shutdown;
use felhom_agent::time::{ManualClock, Timestamp};
use felhom_sim::{DEFAULT_TOKEN_ID, DEFAULT_TOKEN_SECRET, GuestSeed, ProxmoxSim};
use ssh_key::{HashAlg, LineEnding, PrivateKey};

const KEYS: &str = "vectors/sshsig/keys";
const NOW: i64 = 1_800_000_000;

fn tempdir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "felhom-gate-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&d);
    d
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

fn nonce() -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "{:016x}{:016x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

struct Op<'a> {
    op: &'a str,
    host: &'a str,
    guest: &'a str,
    params: &'a [(&'a str, &'a str)],
    expires: i64,
    nonce: String,
}

impl<'a> Op<'a> {
    fn destroy(guest: &'a str) -> Self {
        Op {
            op: "guest_destroy",
            host: "pve-a",
            guest,
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
            "op": self.op, "host_id": self.host, "guest_id": self.guest, "params": params,
            "key_id": "ops-2026", "nonce": self.nonce,
            "not_before": Timestamp(self.expires - 7200).to_rfc3339(),
            "expires_at": Timestamp(self.expires).to_rfc3339(),
        }))
        .unwrap()
    }

    fn signed_by(&self, key: &str) -> SignedOp {
        let blob = self.blob();
        let signature = sign(key, &blob);
        SignedOp { blob, signature }
    }
}

fn destroy_intent(guest: &str) -> Intent {
    let mut i = Intent::new(OpClass::GuestDestroy, "pve-a", Some(guest.into()));
    i.params.insert("purge".into(), "1".into());
    i
}

/// Counts executions and delegates to the real Proxmox executor.
struct Counting {
    inner: ProxmoxExecutor,
    calls: AtomicUsize,
}

impl DestructiveExecutor for Counting {
    fn execute(
        &self,
        intent: &Intent,
        on_task: &mut dyn FnMut(&str) -> Result<(), JournalError>,
    ) -> Result<(), String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.execute(intent, on_task)
    }
}

/// One agent's reconcile state on a state dir; `restart` reopens it all from disk.
struct Agent {
    dir: PathBuf,
    clock: ManualClock,
    journal: Arc<Journal>,
    audit: Arc<AuditLog>,
    gate: Arc<Gate>,
    jobs: SignedJobs,
    exec: Arc<Counting>,
}

fn open_agent(dir: &Path, sim: &ProxmoxSim) -> Agent {
    let clock = ManualClock::new(Timestamp(NOW));
    let cfg = AuthzConfig {
        signers: vec![
            SignerEntry {
                key_id: "ops-2026".into(),
                role: Role::Operational,
                public_key: pubkey("ed25519"),
            },
            SignerEntry {
                key_id: "break-glass".into(),
                role: Role::Recovery,
                public_key: pubkey("ecdsa-p256"),
            },
        ],
        ..AuthzConfig::default()
    };
    let nonces = Arc::new(FileNonceStore::open(dir.join("nonces.log"), 300).unwrap());
    let verifier = Verifier::from_config(&cfg, "pve-a", Arc::new(clock.clone()), nonces).unwrap();
    let journal = Arc::new(Journal::open(&dir.join("journal.log")).unwrap());
    let audit = Arc::new(AuditLog::open(&dir.join("audit.log")).unwrap());
    let gate = Arc::new(
        Gate::new(
            "pve-a".into(),
            Some(verifier),
            journal.clone(),
            audit.clone(),
        )
        .with_clock(Arc::new(clock.clone())),
    );
    let jobs =
        SignedJobs::new(gate.clone(), Arc::new(Queue::new(4))).with_clock(Arc::new(clock.clone()));
    let mut o = ClientOptions::new(
        sim.url(),
        sim.node(),
        DEFAULT_TOKEN_ID,
        Secret::new(DEFAULT_TOKEN_SECRET),
        TlsTrust::Pin(Sha256Pin::parse(&sim.fingerprint()).unwrap()),
    );
    o.timeout = Duration::from_secs(10);
    let wait = WaitOptions {
        initial: Duration::from_millis(10),
        cap: Duration::from_millis(20),
        timeout: Duration::from_secs(10),
    };
    let exec = Arc::new(Counting {
        inner: ProxmoxExecutor::new(Arc::new(Client::new(o).unwrap()), wait, Shutdown::new()),
        calls: AtomicUsize::new(0),
    });
    Agent {
        dir: dir.to_path_buf(),
        clock,
        journal,
        audit,
        gate,
        jobs,
        exec,
    }
}

impl Agent {
    fn run(&self, intent: &Intent, signed: &SignedOp) -> JobOutcome {
        let exec: Arc<dyn DestructiveExecutor> = self.exec.clone();
        self.jobs
            .run_signed_job(intent, signed, Some(exec))
            .unwrap()
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

fn refused(outcome: JobOutcome) -> Refusal {
    match outcome {
        JobOutcome::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn adversarial_matrix_refuses_with_typed_reasons_and_nothing_reaches_proxmox() {
    let sim = sim();
    let a = open_agent(&tempdir("matrix"), &sim);
    let intent = destroy_intent("105");

    // Unsigned destructive.
    assert_eq!(
        a.gate.authorize(&intent, None).refusal(),
        Some(&Refusal::PendingSignature)
    );
    // Unknown signer.
    let r = refused(a.run(&intent, &Op::destroy("105").signed_by("other-ed25519")));
    assert!(
        matches!(r, Refusal::Rejected(AuthzError::UnknownSigner(_))),
        "{r:?}"
    );
    // Expired.
    let mut op = Op::destroy("105");
    op.expires = NOW - 3600; // well past the allowed clock skew
    let r = refused(a.run(&intent, &op.signed_by("ed25519")));
    assert!(
        matches!(r, Refusal::Rejected(AuthzError::Expired(_))),
        "{r:?}"
    );
    // Wrong host.
    let mut op = Op::destroy("105");
    op.host = "pve-b";
    let r = refused(a.run(&intent, &op.signed_by("ed25519")));
    assert!(
        matches!(r, Refusal::Rejected(AuthzError::Target(_))),
        "{r:?}"
    );
    // Wrong guest, op, params: the signature is valid for another action.
    let r = refused(a.run(&intent, &Op::destroy("106").signed_by("ed25519")));
    assert_eq!(r, Refusal::BindingMismatch);
    let mut op = Op::destroy("105");
    op.op = "storage_wipe";
    assert_eq!(
        refused(a.run(&intent, &op.signed_by("ed25519"))),
        Refusal::BindingMismatch
    );
    let mut op = Op::destroy("105");
    op.params = &[("purge", "0")];
    assert_eq!(
        refused(a.run(&intent, &op.signed_by("ed25519"))),
        Refusal::BindingMismatch
    );
    // Recovery key on an ordinary destructive op.
    assert_eq!(
        refused(a.run(&intent, &Op::destroy("105").signed_by("ecdsa-p256"))),
        Refusal::RoleDenied
    );
    // A tampered blob under a good signature.
    let mut s = Op::destroy("105").signed_by("ed25519");
    s.blob[2] ^= 1;
    assert!(matches!(
        refused(a.run(&intent, &s)),
        Refusal::Rejected(AuthzError::BadSignature(_) | AuthzError::Malformed(_))
    ));

    assert!(sim.mutations().is_empty(), "{:?}", sim.mutations());
    assert_eq!(a.exec.calls.load(Ordering::SeqCst), 0);
    assert_eq!(sim.guest_ids(), vec![105, 106]);
    assert!(a.journal.in_flight().is_empty());
    assert_eq!(a.journal.records(), 0, "refusals journal nothing");

    // Every decision was audited, with its code, and the report tail carries them.
    let codes: Vec<String> = a.audit.tail(50).into_iter().map(|e| e.decision).collect();
    assert_eq!(codes.len(), 9, "{codes:?}");
    assert_eq!(
        codes[..8],
        [
            "pending_signature",
            "unknown_signer",
            "expired",
            "target",
            "binding_mismatch",
            "binding_mismatch",
            "binding_mismatch",
            "role_denied",
        ]
    );
    assert_eq!(a.audit.last(3).unwrap().len(), 3);
}

#[test]
fn hub_supplied_scratch_tag_is_ignored_but_journal_provenance_counts() {
    let sim = sim();
    let a = open_agent(&tempdir("scratch"), &sim);
    for params in [&[("scratch", "1")][..], &[("txn", "restore-test-1")][..]] {
        let mut i = Intent::new(OpClass::GuestDestroy, "pve-a", Some("105".into()));
        for (k, v) in params {
            i.params.insert((*k).into(), (*v).into());
        }
        assert_eq!(
            a.gate.authorize(&i, None).refusal(),
            Some(&Refusal::PendingSignature),
            "{params:?}"
        );
    }
    // The agent's own records: a scratch tag, a creation in an open transaction.
    a.journal.tag_scratch(105, Timestamp(NOW)).unwrap();
    a.journal
        .record_guest_created(106, "restore-test-1", Timestamp(NOW))
        .unwrap();
    let allowed = |d: Decision| match d {
        Decision::Allowed { reason, .. } => reason,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        allowed(a.gate.authorize(&destroy_intent("105"), None)),
        AllowReason::AgentProvenance
    );
    let mut in_txn = destroy_intent("106");
    assert_eq!(
        a.gate.authorize(&in_txn, None).refusal(),
        Some(&Refusal::PendingSignature),
        "created in a transaction, but the action is not part of it"
    );
    in_txn.params.insert("txn".into(), "restore-test-1".into());
    assert_eq!(
        allowed(a.gate.authorize(&in_txn, None)),
        AllowReason::AgentProvenance
    );
    // Provenance never covers a wipe.
    let wipe = Intent::new(OpClass::StorageWipe, "pve-a", Some("105".into()));
    assert_eq!(
        a.gate.authorize(&wipe, None).refusal(),
        Some(&Refusal::PendingSignature)
    );
    // Unknown classes are destructive; benign ones pass unsigned.
    let unknown = Intent::new(OpClass::parse("reformat"), "pve-a", Some("105".into()));
    assert_eq!(
        a.gate.authorize(&unknown, None).refusal(),
        Some(&Refusal::PendingSignature)
    );
    let start = Intent::new(OpClass::Start, "pve-a", Some("105".into()));
    assert_eq!(allowed(a.gate.authorize(&start, None)), AllowReason::Benign);
    assert!(sim.mutations().is_empty());
}

#[test]
fn valid_op_executes_once_and_its_replay_is_refused_across_restart() {
    let sim = sim();
    let a = open_agent(&tempdir("valid"), &sim);
    let intent = destroy_intent("105");
    let signed = Op::destroy("105").signed_by("ed25519");

    let op_id = match a.run(&intent, &signed) {
        JobOutcome::Executed { op_id } => op_id,
        other => panic!("{other:?}"),
    };
    assert_eq!(sim.guest_ids(), vec![106]);
    let m = sim.mutations();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].method, "DELETE");
    assert_eq!(m[0].path, "/nodes/pve/lxc/105");
    let rec = a.journal.latest(&op_id).unwrap();
    assert_eq!(rec.state, OpState::Succeeded);
    assert!(rec.upid.is_some(), "the UPID was journaled");

    assert_eq!(a.run(&intent, &signed), JobOutcome::Skipped);
    let a = a.restart(&sim);
    assert_eq!(a.run(&intent, &signed), JobOutcome::Skipped);
    assert_eq!(a.exec.calls.load(Ordering::SeqCst), 0, "not after restart");
    assert_eq!(sim.mutations().len(), 1, "executed exactly once");
    assert!(
        a.audit
            .tail(50)
            .iter()
            .any(|e| e.decision == "allowed" && e.key_id.as_deref() == Some("ops-2026"))
    );
}

#[test]
fn a_burned_nonce_is_a_replay_after_restart() {
    let sim = sim();
    let a = open_agent(&tempdir("replay"), &sim);
    // Verified (nonce burned) but bound to another guest: refused.
    let op = Op::destroy("106");
    let signed = op.signed_by("ed25519");
    assert_eq!(
        refused(a.run(&destroy_intent("105"), &signed)),
        Refusal::BindingMismatch
    );
    let a = a.restart(&sim);
    let r = refused(a.run(&destroy_intent("106"), &signed));
    assert!(
        matches!(r, Refusal::Rejected(AuthzError::Replay(_))),
        "{r:?}"
    );
    assert!(sim.mutations().is_empty());
    assert_eq!(sim.guest_ids(), vec![105, 106]);
}

#[test]
fn without_an_executor_an_authorized_op_is_journaled_but_not_applied() {
    let sim = sim();
    let a = open_agent(&tempdir("noexec"), &sim);
    let op = Op::destroy("105");
    let out = a
        .jobs
        .run_signed_job(&destroy_intent("105"), &op.signed_by("ed25519"), None)
        .unwrap();
    let JobOutcome::NotExecuted { op_id } = out else {
        panic!("{out:?}")
    };
    let rec = a.journal.latest(&op_id).unwrap();
    assert_eq!(rec.state, OpState::Failed);
    assert_eq!(rec.idempotency_key.as_deref(), Some(op.nonce.as_str()));
    assert!(!a.journal.already_applied(&op.nonce));
    assert!(sim.mutations().is_empty());
}

#[test]
fn a_failed_execution_is_journaled_failed_and_not_applied() {
    let sim = sim();
    let a = open_agent(&tempdir("fail"), &sim);
    sim.fail_next_task("command 'lxc-destroy' failed: exit code 1");
    let op = Op::destroy("105");
    let out = a.run(&destroy_intent("105"), &op.signed_by("ed25519"));
    let JobOutcome::Failed { op_id, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(a.journal.latest(&op_id).unwrap().state, OpState::Failed);
    assert!(!a.journal.already_applied(&op.nonce));
    assert_eq!(sim.guest_ids(), vec![105, 106]);
}

#[test]
fn damaged_journal_refuses_destructive_but_allows_benign() {
    let sim = sim();
    let dir = tempdir("damaged");
    let a = open_agent(&dir, &sim);
    for i in 0..3 {
        a.journal
            .append(&felhom_agent::reconcile::journal::JournalRecord::started(
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
    assert!(a.journal.damaged().is_some());
    // Even the agent's own scratch tag is not trusted from a damaged journal.
    a.journal.tag_scratch(105, Timestamp(NOW)).unwrap();
    let op = Op::destroy("105");
    assert_eq!(
        refused(a.run(&destroy_intent("105"), &op.signed_by("ed25519"))),
        Refusal::StateDamaged
    );
    assert_eq!(
        a.gate.dry_run(&destroy_intent("105")).refusal(),
        Some(&Refusal::StateDamaged)
    );
    let start = Intent::new(OpClass::Start, "pve-a", Some("105".into()));
    assert!(a.gate.authorize(&start, None).is_allowed());
    assert!(sim.mutations().is_empty());
    // The nonce was not burned: the refusal came before verification.
    fs::remove_file(dir.join("journal.log.damaged")).unwrap();
    let a = a.restart(&sim);
    assert!(matches!(
        a.run(&destroy_intent("105"), &op.signed_by("ed25519")),
        JobOutcome::Executed { .. }
    ));
}

#[test]
fn damaged_nonce_store_refuses_destructive() {
    let sim = sim();
    let a = open_agent(&tempdir("nonce"), &sim);
    let probe: felhom_agent::reconcile::gate::HealthProbe =
        Arc::new(|| Some("line 2: hash mismatch".to_string()));
    let journal = a.journal.clone();
    let gate = Gate::new("pve-a".into(), None, journal, a.audit.clone()).with_nonce_health(probe);
    assert_eq!(
        gate.authorize(&destroy_intent("105"), None).refusal(),
        Some(&Refusal::StateDamaged)
    );
    let stop = Intent::new(OpClass::Stop, "pve-a", Some("105".into()));
    assert!(gate.authorize(&stop, None).is_allowed());
}

#[test]
fn dry_run_never_verifies_or_audits() {
    let sim = sim();
    let a = open_agent(&tempdir("dry"), &sim);
    assert_eq!(
        a.gate.dry_run(&destroy_intent("105")).refusal(),
        Some(&Refusal::PendingSignature)
    );
    assert!(
        a.gate
            .dry_run(&Intent::new(
                OpClass::SetConfig,
                "pve-a",
                Some("105".into())
            ))
            .is_allowed()
    );
    assert!(a.audit.tail(10).is_empty());
}
