//! Signed ops delivered by the hub simulator, carried through the real verifier, gate,
//! journal and Proxmox executor against the Proxmox simulator. Signatures are minted by
//! the real `ssh-keygen -Y sign -n felhom-op-v1` with `vectors/sshsig/keys/ed25519`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::sign::{destroy_blob, ssh_keygen_sign, verifier};
use common::{CountingExecutor, Fixed};

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use felhom_agent::app::{OpOutcome, SignedOpsError, SignedOpsRunner, run_worker, unverified_nonce};
use felhom_agent::authz::AuthzError;
use felhom_agent::base::Secret;
use felhom_agent::base::Shutdown;
use felhom_agent::base::base64_encode;
use felhom_agent::base::{Clock, ManualClock, SystemClock};
use felhom_agent::hub::ControlEnvelope;
use felhom_agent::hub::HubClientOptions;
use felhom_agent::hub::{Announcement, DeliveredOp, FetchError, Poller, SignedOpsClient};
use felhom_agent::net::{Sha256Pin, TlsTrust};
use felhom_agent::reconcile::AuditLog;
use felhom_agent::reconcile::Queue;
use felhom_agent::reconcile::{DestructiveExecutor, JobOutcome, SignedJobs};
use felhom_agent::reconcile::{Gate, Refusal};
use felhom_agent::reconcile::{Journal, Pacing};
use felhom_agent::reconcile::{OpResults, ResultOutcome};
use felhom_agent::store::OsIo;
use felhom_sim::{GuestSeed, HubSim, ProxmoxSim, SIGNED_OPS_PATH};
use serde_json::json;

fn tempdir(name: &str) -> PathBuf {
    common::tempdir("signedops", name)
}

struct Lab {
    dir: PathBuf,
    pve: ProxmoxSim,
    hub: HubSim,
    audit: Arc<AuditLog>,
    results: Arc<OpResults>,
    runner: SignedOpsRunner,
    client: SignedOpsClient,
    exec: Arc<CountingExecutor>,
}

fn hub_options(hub: &HubSim, key: &str) -> HubClientOptions {
    HubClientOptions {
        url: hub.url(),
        api_key: Secret::new(key),
        trust: TlsTrust::Pin(Sha256Pin::parse(&hub.fingerprint()).unwrap()),
        timeout: Duration::from_secs(10),
    }
}

fn lab(name: &str) -> Lab {
    lab_held_by(name, None)
}

/// The hub's `blocked`, as the daemon's shared envelope gives it to the runner.
struct Blocked(AtomicBool);

impl Pacing for Blocked {
    fn interval(&self) -> Option<Duration> {
        None
    }
    fn generation(&self) -> u64 {
        0
    }
    fn held(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

fn lab_held_by(name: &str, hold: Option<Arc<Blocked>>) -> Lab {
    let dir = tempdir(name);
    let pve = ProxmoxSim::builder()
        .guest(GuestSeed::new(105, "customer-db").running(false))
        .guest(GuestSeed::new(106, "customer-web").running(false))
        .task_duration(Duration::from_millis(20))
        .start();
    let hub = HubSim::start();
    let clock = ManualClock::new(SystemClock.now());
    let verifier = verifier(&dir, &clock);
    let journal = Arc::new(Journal::open(&dir.join("journal.log")).unwrap());
    let audit = Arc::new(AuditLog::open(&dir.join("audit.log")).unwrap());
    let gate = Arc::new(
        Gate::new("pve-a".into(), Some(verifier), journal, audit.clone())
            .with_clock(Arc::new(clock.clone())),
    );
    let jobs =
        SignedJobs::new(gate.clone(), Arc::new(Queue::new(4))).with_clock(Arc::new(clock.clone()));
    let exec = common::counting_executor(&pve);
    let as_exec: Arc<dyn DestructiveExecutor> = exec.clone();
    let results = Arc::new(OpResults::open(dir.join("op_results.json"), Arc::new(OsIo)));
    let mut runner = SignedOpsRunner::new(jobs, gate, audit.clone(), as_exec)
        .with_clock(Arc::new(clock.clone()))
        .with_results(Arc::clone(&results));
    if let Some(hold) = hold {
        runner = runner.with_hold(hold);
    }
    let client = SignedOpsClient::new(hub_options(&hub, &hub.key())).unwrap();
    Lab {
        dir,
        pve,
        hub,
        audit,
        results,
        runner,
        client,
        exec,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Lab {
    /// A destroy of `guest` on `host`, signed for the guest's config as it is now.
    fn destroy_blob(&self, host: &str, guest: &str) -> Vec<u8> {
        let digest = self
            .pve
            .guest_digest(guest.parse().unwrap())
            .unwrap_or_else(|| "0".repeat(40));
        destroy_blob(host, guest, &digest, SystemClock.now().unix())
    }

    fn deletes(&self) -> usize {
        self.pve
            .mutations()
            .iter()
            .filter(|m| m.method == "DELETE")
            .count()
    }

    /// One fetch-and-run round; the single outcome it produced.
    fn deliver_one(&self) -> OpOutcome {
        let s = self.runner.run_round(&self.client).unwrap();
        assert!(s.skipped.is_empty(), "{:?}", s.skipped);
        assert_eq!(s.outcomes.len(), 1, "{:?}", s.outcomes);
        s.outcomes.into_iter().next().unwrap().1
    }

    fn audit_words(&self) -> Vec<String> {
        self.audit
            .tail(50)
            .into_iter()
            .map(|e| format!("{} {}", e.decision, e.guest_id.unwrap_or_default()))
            .collect()
    }
}

#[test]
fn unsigned_is_held_signed_runs_once_replay_is_skipped_wrong_host_refused() {
    let l = lab("matrix");
    let blob = l.destroy_blob("pve-a", "105");

    // Unsigned: held, nothing sent to Proxmox.
    l.hub.queue_signed_op(&blob, None);
    assert_eq!(
        l.deliver_one(),
        OpOutcome::Job(JobOutcome::Refused(Refusal::PendingSignature))
    );
    assert_eq!(l.deletes(), 0);
    assert_eq!(l.exec.calls(), 0);
    assert!(l.pve.guest_ids().contains(&105));

    // The same bytes signed: executed once, the guest is gone.
    let sig = ssh_keygen_sign(&l.dir, &blob);
    l.hub.queue_signed_op(&blob, Some(&sig));
    assert!(
        matches!(l.deliver_one(), OpOutcome::Job(JobOutcome::Executed { .. })),
        "signed destroy must execute"
    );
    assert_eq!(l.deletes(), 1);
    assert_eq!(l.exec.calls(), 1);
    assert!(!l.pve.guest_ids().contains(&105));

    // Delivered again: skipped by the journal's applied nonce, no second DELETE.
    l.hub.queue_signed_op(&blob, Some(&sig));
    assert_eq!(l.deliver_one(), OpOutcome::Job(JobOutcome::Skipped));
    assert_eq!(l.deletes(), 1);
    assert_eq!(l.exec.calls(), 1);

    // Signed for another host: the verifier's typed rejection, nothing sent.
    let other = l.destroy_blob("pve-b", "106");
    let sig = ssh_keygen_sign(&l.dir, &other);
    l.hub.queue_signed_op(&other, Some(&sig));
    match l.deliver_one() {
        OpOutcome::Job(JobOutcome::Refused(Refusal::Rejected(AuthzError::Target(_)))) => {}
        other => panic!("expected a target rejection, got {other:?}"),
    }
    assert_eq!(l.deletes(), 1);
    assert!(l.pve.guest_ids().contains(&106));

    // A signature over other bytes (guest swapped after signing): refused, nothing sent.
    let swapped = String::from_utf8(l.destroy_blob("pve-a", "106")).unwrap();
    let sig = ssh_keygen_sign(&l.dir, swapped.as_bytes());
    let tampered = swapped.replace("\"106\"", "\"105\"");
    l.hub.queue_signed_op(tampered.as_bytes(), Some(&sig));
    match l.deliver_one() {
        OpOutcome::Job(JobOutcome::Refused(Refusal::Rejected(AuthzError::BadSignature(_)))) => {}
        other => panic!("expected a bad signature, got {other:?}"),
    }
    assert_eq!(l.deletes(), 1);

    // The audit tail (what the next report carries) has each decision, in order.
    let words = l.audit_words();
    assert_eq!(
        words,
        vec![
            "pending_signature 105",
            "allowed 105",
            "executed 105",
            "skipped 105",
            "target 106",
            "bad_signature 105",
        ],
        "{words:?}"
    );
}

#[test]
fn malformed_entries_are_skipped_by_index_and_the_rest_still_run() {
    let l = lab("malformed");
    l.hub
        .queue_signed_op_raw(json!({"id": "bad-b64", "blob_b64": "@@@", "signature": null}));
    l.hub.queue_signed_op_raw(json!({"blob_b64": "eA=="}));
    l.hub.queue_signed_op(b"{not json", None);
    let blob = l.destroy_blob("pve-a", "106");
    let sig = ssh_keygen_sign(&l.dir, &blob);
    l.hub.queue_signed_op(&blob, Some(&sig));
    let s = l.runner.run_round(&l.client).unwrap();
    let idx: Vec<usize> = s.skipped.iter().map(|e| e.index).collect();
    assert_eq!(idx, vec![0, 1]);
    assert_eq!(s.outcomes.len(), 2);
    assert!(matches!(s.outcomes[0].1, OpOutcome::Unparseable { .. }));
    assert!(matches!(
        s.outcomes[1].1,
        OpOutcome::Job(JobOutcome::Executed { .. })
    ));
    assert_eq!(l.deletes(), 1);
    assert!(!l.pve.guest_ids().contains(&106));
}

#[test]
fn a_wrong_key_gets_401_and_the_queue_is_kept() {
    let l = lab("key");
    let blob = l.destroy_blob("pve-a", "105");
    l.hub.queue_signed_op(&blob, None);
    let bad = SignedOpsClient::new(hub_options(&l.hub, "wrong-key-123456")).unwrap();
    match bad.fetch() {
        Err(FetchError::Http(e)) => {
            assert_eq!(e.status, 401);
            assert!(!e.to_string().contains("wrong-key-123456"));
        }
        other => panic!("expected 401, got {other:?}"),
    }
    assert_eq!(l.hub.pending_signed_ops(), 1);
    let got = l.client.fetch().unwrap();
    assert_eq!(
        got.ops,
        vec![DeliveredOp {
            id: got.ops[0].id.clone(),
            blob,
            signature: None,
            cosignatures: Vec::new(),
        }]
    );
    assert_eq!(l.hub.pending_signed_ops(), 0);
    let fetches = l
        .hub
        .requests()
        .iter()
        .filter(|r| r.path == SIGNED_OPS_PATH && r.method == "GET")
        .count();
    assert_eq!(fetches, 2);
}

#[test]
fn an_envelope_with_signed_ops_wakes_the_worker_which_runs_them() {
    let l = lab("worker");
    let blob = l.destroy_blob("pve-a", "105");
    let sig = ssh_keygen_sign(&l.dir, &blob);
    l.hub.queue_signed_op(&blob, Some(&sig));

    let announcement = Announcement::new();
    let mut quiet = Poller::new(Fixed(ControlEnvelope::default()), Shutdown::new(), 60)
        .announcing(announcement.clone());
    quiet.step();
    assert!(!announcement.take(Duration::ZERO), "no ops announced");

    let shutdown = Shutdown::new();
    let Lab {
        runner,
        client,
        pve,
        exec,
        ..
    } = l;
    let (a, s) = (announcement.clone(), shutdown.clone());
    let worker = std::thread::spawn(move || run_worker(&runner, &client, &a, &s));
    let mut loud = Poller::new(
        Fixed(ControlEnvelope {
            has_signed_ops: true,
            ..ControlEnvelope::default()
        }),
        Shutdown::new(),
        60,
    )
    .announcing(announcement);
    loud.step();
    // Waits on the outcome; the deadline only keeps a broken worker from hanging CI.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pve.guest_ids().contains(&105) {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never ran the op"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    shutdown.trigger();
    let r: Result<(), SignedOpsError> = worker.join().unwrap();
    assert!(r.is_ok());
    assert_eq!(exec.calls(), 1);
}

#[test]
fn a_destroy_the_hub_held_back_past_a_vmid_reuse_is_guest_changed_and_deletes_nothing() {
    let l = lab("reuse");
    // Signed for 105 as it is now; the hub holds it back.
    let blob = l.destroy_blob("pve-a", "105");
    let sig = ssh_keygen_sign(&l.dir, &blob);
    // 105 goes away by other means and the number goes to a new customer.
    assert!(l.pve.remove_guest(105));
    l.pve
        .add_guest(GuestSeed::new(105, "new-customer").running(false));
    l.hub.queue_signed_op(&blob, Some(&sig));
    assert_eq!(
        l.deliver_one(),
        OpOutcome::Job(JobOutcome::Refused(Refusal::GuestChanged))
    );
    assert_eq!(l.deletes(), 0);
    assert_eq!(l.exec.calls(), 0);
    assert!(l.pve.guest_ids().contains(&105), "the new guest is kept");
    assert_eq!(l.audit_words(), vec!["guest_changed 105"]);
    // Delivered again, it is refused again — never a replay, because nothing burned it.
    l.hub.queue_signed_op(&blob, Some(&sig));
    assert_eq!(
        l.deliver_one(),
        OpOutcome::Job(JobOutcome::Refused(Refusal::GuestChanged))
    );
    assert_eq!(l.deletes(), 0);
}

#[test]
fn a_blocked_host_holds_signed_ops_unexecuted_and_unburned_until_the_hold_lifts() {
    let blocked = Arc::new(Blocked(AtomicBool::new(true)));
    let l = lab_held_by("blocked", Some(Arc::clone(&blocked)));
    let blob = l.destroy_blob("pve-a", "105");
    let sig = ssh_keygen_sign(&l.dir, &blob);
    // The hub keeps delivering the same op (one id) until it ran.
    let entry = json!({"id": "op-held", "blob_b64": base64_encode(&blob), "signature": sig});

    for _ in 0..3 {
        l.hub.queue_signed_op_raw(entry.clone());
        assert_eq!(l.deliver_one(), OpOutcome::Held);
    }
    assert_eq!(l.deletes(), 0, "nothing reached Proxmox");
    assert_eq!(l.exec.calls(), 0);
    let journal = Journal::open_read_only(&l.dir.join("journal.log")).unwrap();
    assert!(journal.history().is_empty(), "nothing journaled");
    // Audited once for the whole hold, naming the op and the guest.
    assert_eq!(l.audit_words(), vec!["held 105"]);
    let held = l.audit.tail(1).remove(0);
    let delivery = held.delivery.expect("the delivery is recorded");
    assert_eq!(delivery.hub_op_id.as_deref(), Some("op-held"));
    assert_eq!(held.op, "guest_destroy");

    // The hold lifts: the same signature runs, so its nonce was never used.
    blocked.0.store(false, Ordering::SeqCst);
    l.hub.queue_signed_op_raw(entry.clone());
    assert!(
        matches!(l.deliver_one(), OpOutcome::Job(JobOutcome::Executed { .. })),
        "the held op runs once the hold lifts"
    );
    assert_eq!(l.deletes(), 1);
    assert!(!l.pve.guest_ids().contains(&105));

    // Blocked again: a new hold, audited again, and still nothing runs twice.
    blocked.0.store(true, Ordering::SeqCst);
    l.hub.queue_signed_op_raw(entry);
    assert_eq!(l.deliver_one(), OpOutcome::Held);
    assert_eq!(l.deletes(), 1);
    assert_eq!(
        l.audit_words(),
        vec!["held 105", "allowed 105", "executed 105", "held 105"]
    );
}

#[test]
fn each_delivered_op_is_kept_as_a_result_and_every_audit_entry_names_it() {
    let l = lab("results");
    let blob = l.destroy_blob("pve-a", "105");
    let sig = ssh_keygen_sign(&l.dir, &blob);
    // Signed for a config 106 does not have: guest_changed.
    let stale = destroy_blob("pve-a", "106", &"0".repeat(40), SystemClock.now().unix());
    let stale_sig = ssh_keygen_sign(&l.dir, &stale);
    let garbage = b"{not json".to_vec();

    let pending = l.hub.queue_signed_op(&blob, None);
    l.deliver_one();
    let executed = l.hub.queue_signed_op(&blob, Some(&sig));
    l.deliver_one();
    let replay = l.hub.queue_signed_op(&blob, Some(&sig));
    l.deliver_one();
    let changed = l.hub.queue_signed_op(&stale, Some(&stale_sig));
    l.deliver_one();
    let malformed = l.hub.queue_signed_op(&garbage, None);
    l.deliver_one();
    assert_eq!(l.deletes(), 1, "only the signed destroy ran");

    let nonce = unverified_nonce(&blob).expect("the blob names a nonce");
    let stale_nonce = unverified_nonce(&stale).expect("the blob names a nonce");
    assert_ne!(nonce, stale_nonce);
    let got: Vec<(String, Option<String>, ResultOutcome, String)> = l
        .results
        .results()
        .into_iter()
        .map(|r| (r.id, r.nonce, r.outcome, r.code))
        .collect();
    let want = vec![
        (
            pending.clone(),
            Some(nonce.clone()),
            ResultOutcome::Refused,
            "pending_signature".to_string(),
        ),
        (
            executed.clone(),
            Some(nonce.clone()),
            ResultOutcome::Executed,
            "executed".to_string(),
        ),
        (
            replay.clone(),
            Some(nonce.clone()),
            ResultOutcome::Skipped,
            "already_applied".to_string(),
        ),
        (
            changed.clone(),
            Some(stale_nonce.clone()),
            ResultOutcome::Refused,
            "guest_changed".to_string(),
        ),
        (
            malformed.clone(),
            None,
            ResultOutcome::Malformed,
            "malformed".to_string(),
        ),
    ];
    assert_eq!(got, want);

    // Every audit entry, the gate's own decisions included, names its delivery.
    let blobs = [
        (&pending, &blob),
        (&executed, &blob),
        (&replay, &blob),
        (&changed, &stale),
        (&malformed, &garbage),
    ];
    let tail = l.audit.tail(50);
    let decisions: Vec<&str> = tail.iter().map(|e| e.decision.as_str()).collect();
    assert_eq!(
        decisions,
        [
            "pending_signature",
            "allowed",
            "executed",
            "skipped",
            "guest_changed",
            "malformed"
        ]
    );
    for e in &tail {
        let d = e
            .delivery
            .as_ref()
            .unwrap_or_else(|| panic!("no delivery: {e:?}"));
        let id = d.hub_op_id.as_deref().expect("the hub's id");
        let (_, bytes) = blobs
            .iter()
            .find(|(i, _)| i.as_str() == id)
            .expect("a known id");
        assert_eq!(
            d.blob_sha256.as_deref(),
            Some(sha256_hex(bytes).as_str()),
            "{e:?}"
        );
        assert_eq!(d.nonce, unverified_nonce(bytes), "{e:?}");
    }

    // The results survive a restart as they were.
    let reopened = OpResults::open(l.dir.join("op_results.json"), Arc::new(OsIo));
    assert_eq!(reopened.results(), l.results.results());
}

#[test]
fn a_redelivered_id_keeps_one_result_with_its_newest_outcome() {
    let blocked = Arc::new(Blocked(AtomicBool::new(true)));
    let l = lab_held_by("redelivered", Some(Arc::clone(&blocked)));
    let blob = l.destroy_blob("pve-a", "105");
    let sig = ssh_keygen_sign(&l.dir, &blob);
    let entry = json!({"id": "op-again", "blob_b64": base64_encode(&blob), "signature": sig});
    for _ in 0..2 {
        l.hub.queue_signed_op_raw(entry.clone());
        assert_eq!(l.deliver_one(), OpOutcome::Held);
    }
    let held = l.results.results();
    assert_eq!(held.len(), 1);
    assert_eq!(
        (held[0].outcome, held[0].code.as_str()),
        (ResultOutcome::Held, "blocked")
    );
    blocked.0.store(false, Ordering::SeqCst);
    l.hub.queue_signed_op_raw(entry);
    l.deliver_one();
    let now = l.results.results();
    assert_eq!(now.len(), 1, "one entry per hub op id");
    assert_eq!(
        (now[0].outcome, now[0].id.as_str()),
        (ResultOutcome::Executed, "op-again")
    );
}
