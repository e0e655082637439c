#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The bounded audit log under a hostile hub: 24 simulated hours of 32 ops per answer,
//! every 60 s, each signed with an 11 KB namespace. The first hour goes through the real
//! signed-ops runner, verifier and gate; the other 23 record the same refusal straight
//! into the audit log (the verifier costs ~5 ms an op in a debug build, which would make
//! this test take minutes). The audit files stay under twice the cap and replay clean;
//! each entry is capped. Also: pending signatures survive rotations and
//! restarts, an unparseable or skipped delivery is audited by hash and size, and one
//! hostile answer of any length writes a bounded number of entries.

mod common;
use common::sign::{destroy_blob, signer};

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use felhom_agent::app::{OpOutcome, SignedOpsRunner};
use felhom_agent::authz::{AuthzConfig, AuthzError, FileNonceStore, Verifier};
use felhom_agent::base::Secret;
use felhom_agent::base::{Clock, ManualClock, SystemClock, Timestamp};
use felhom_agent::base::{base64_decode, base64_encode};
use felhom_agent::hub::HubClientOptions;
use felhom_agent::hub::{DeliveredOp, SignedOpsClient};
use felhom_agent::net::{Sha256Pin, TlsTrust};
use felhom_agent::reconcile::Journal;
use felhom_agent::reconcile::Queue;
use felhom_agent::reconcile::{AUDIT_STRING_MAX, AuditField, AuditRecord as AuditEntry};
use felhom_agent::reconcile::{AuditLog, MIN_MAX_BYTES, PENDING_SIGNATURE};
use felhom_agent::reconcile::{DestructiveExecutor, JobOutcome, OnTask, SignedJobs};
use felhom_agent::reconcile::{Gate, GuestNow, Refusal};
use felhom_agent::reconcile::{Intent, OpClass};
use felhom_agent::store::{FaultyIo, Io, OsIo, verify_file};
use felhom_sim::HubSim;
use serde_json::json;

fn tempdir(name: &str) -> PathBuf {
    common::tempdir("auditflood", name)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// The audit files on disk, in bytes: `audit.log`, `audit.log.1` and a rotation's temp.
fn audit_bytes(path: &Path) -> u64 {
    [
        path.to_path_buf(),
        sibling(path, ".1"),
        sibling(path, ".rotate.tmp"),
    ]
    .iter()
    .filter_map(|p| fs::metadata(p).ok())
    .map(|m| m.len())
    .sum()
}

/// The config digest every destroy blob here carries: made up, as this file runs no
/// Proxmox simulator.
const DIGEST: &str = "9c1e4bd07f3f6a25c8e4d1b2a3f5e6d7c8b9a0f1";

/// A real SSHSIG (from `vectors/sshsig/ok/wrap64.sig`) with its namespace replaced by
/// `len` bytes, re-armored: it parses up to the namespace check, as the hostile hub's
/// did, and stays under the runner's 16 KiB signature cap.
fn hostile_signature(len: usize) -> String {
    let armored = fs::read_to_string("vectors/sshsig/ok/wrap64.sig").unwrap();
    let body: String = armored
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let blob = base64_decode(&body).unwrap();
    // magic(6) version(4) string(publickey) string(namespace) rest…
    let mut pos = 10;
    let pk_len = u32::from_be_bytes(blob[pos..pos + 4].try_into().unwrap()) as usize;
    pos += 4 + pk_len;
    let ns_len = u32::from_be_bytes(blob[pos..pos + 4].try_into().unwrap()) as usize;
    let mut out = blob[..pos].to_vec();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend(std::iter::repeat_n(b'n', len));
    out.extend_from_slice(&blob[pos + 4 + ns_len..]);
    let b64 = base64_encode(&out);
    let mut s = String::from("-----BEGIN SSH SIGNATURE-----\n");
    for chunk in b64.as_bytes().chunks(70) {
        s.push_str(std::str::from_utf8(chunk).unwrap());
        s.push('\n');
    }
    s.push_str("-----END SSH SIGNATURE-----\n");
    s
}

/// The flood never gets past the signature: an executor that would say so if it were
/// ever asked to read a guest or run anything.
struct Unreachable;

impl DestructiveExecutor for Unreachable {
    fn carries(&self, class: &OpClass) -> bool {
        *class == OpClass::GuestDestroy
    }
    fn guest_now(&self, _vmid: u32) -> GuestNow {
        GuestNow::Unreadable("the flood test reads no guest".into())
    }
    fn check_target(&self, _: &Intent) -> Result<(), (Refusal, String)> {
        Ok(())
    }
    fn unprotect(&self, _: u32, _: &str, _: &mut OnTask<'_>) -> Result<(), String> {
        Err("the flood test unprotects nothing".into())
    }
    fn stop_guest(&self, _: u32, _: &mut OnTask<'_>) -> Result<(), String> {
        Err("the flood test stops nothing".into())
    }
    fn execute(&self, _: &Intent, _: &mut OnTask<'_>) -> Result<(), String> {
        Err("the flood test executes nothing".into())
    }
}

struct Agent {
    dir: PathBuf,
    audit: Arc<AuditLog>,
    runner: SignedOpsRunner,
    clock: ManualClock,
}

fn agent(name: &str, io: Arc<dyn Io>, max_bytes: u64) -> Agent {
    let dir = tempdir(name);
    agent_in(dir, io, max_bytes)
}

fn agent_in(dir: PathBuf, io: Arc<dyn Io>, max_bytes: u64) -> Agent {
    let clock = ManualClock::new(SystemClock.now());
    let cfg = AuthzConfig {
        signers: vec![signer()],
        ..AuthzConfig::default()
    };
    let nonces = Arc::new(FileNonceStore::open(dir.join("nonces.log"), 300).unwrap());
    let verifier = Verifier::from_config(&cfg, "pve-a", Arc::new(clock.clone()), nonces).unwrap();
    let journal = Arc::new(Journal::open(&dir.join("journal.log")).unwrap());
    let audit = Arc::new(AuditLog::open_bounded(&dir.join("audit.log"), io, max_bytes).unwrap());
    let gate = Arc::new(
        Gate::new("pve-a".into(), Some(verifier), journal, audit.clone())
            .with_clock(Arc::new(clock.clone())),
    );
    let jobs =
        SignedJobs::new(gate.clone(), Arc::new(Queue::new(2))).with_clock(Arc::new(clock.clone()));
    let runner = SignedOpsRunner::new(jobs, gate, audit.clone(), Arc::new(Unreachable))
        .with_clock(Arc::new(clock.clone()));
    Agent {
        dir,
        audit,
        runner,
        clock,
    }
}

fn assert_capped(e: &AuditEntry) {
    let mut strings = vec![e.op.as_str(), e.decision.as_str(), e.reason.as_str()];
    strings.extend(e.guest_id.as_deref());
    strings.extend(e.key_id.as_deref());
    if let Some(d) = &e.delivery {
        strings.extend(d.hub_op_id.as_deref());
        strings.extend(d.blob_sha256.as_deref());
    }
    for s in strings {
        assert!(s.len() <= AUDIT_STRING_MAX, "{} bytes: {e:?}", s.len());
    }
}

#[test]
fn a_hostile_hub_flood_of_24_simulated_hours_stays_under_twice_the_cap() {
    const ROUNDS: usize = 24 * 60;
    const OPS_PER_ANSWER: usize = 32;
    const NAMESPACE: usize = 11 * 1024;
    const REAL_ROUNDS: usize = 60;
    let cap = MIN_MAX_BYTES;
    let a = agent("flood", Arc::new(FaultyIo::skipping_syncs()), cap);
    let path = a.dir.join("audit.log");
    let signature = hostile_signature(NAMESPACE);
    assert!(signature.len() > NAMESPACE && signature.len() < 16 * 1024);

    // An unsigned destroy held for a signature before the flood: the flood must not
    // push it out of what the hub sees.
    let held = DeliveredOp {
        id: "held".into(),
        blob: destroy_blob("pve-a", "105", DIGEST, a.clock.now().unix()),
        signature: None,
        cosignatures: Vec::new(),
    };
    assert_eq!(
        a.runner.handle(&held).unwrap(),
        OpOutcome::Job(JobOutcome::Refused(Refusal::PendingSignature))
    );

    // What the gate records for each of them, before the audit log caps it.
    let refusal = |guest: String, at: Timestamp| {
        AuditEntry::new(
            at,
            "guest_destroy",
            Some(guest),
            "namespace",
            format!(
                "signature namespace \"{}\", expected \"felhom-op-v1\"",
                "n".repeat(NAMESPACE)
            ),
            None,
        )
    };

    let mut peak = 0u64;
    let mut rotations = 0u32;
    let mut last_anchor_len = fs::metadata(&path).unwrap().len();
    for round in 0..ROUNDS {
        for i in 0..OPS_PER_ANSWER {
            let guest = format!("{}", 200 + i);
            if round >= REAL_ROUNDS {
                a.audit.record(&refusal(guest, a.clock.now())).unwrap();
                continue;
            }
            let op = DeliveredOp {
                id: format!("flood-{round}-{i}"),
                blob: destroy_blob("pve-a", &guest, DIGEST, a.clock.now().unix()),
                signature: Some(signature.clone()),
                cosignatures: Vec::new(),
            };
            match a.runner.handle(&op).unwrap() {
                OpOutcome::Job(JobOutcome::Refused(Refusal::Rejected(AuthzError::Namespace(
                    _,
                )))) => {}
                other => panic!("round {round} op {i}: {other:?}"),
            }
        }
        a.clock.advance(60);
        let total = audit_bytes(&path);
        peak = peak.max(total);
        assert!(
            total < 2 * cap,
            "round {round}: {total} bytes on disk, cap {cap}"
        );
        let len = fs::metadata(&path).unwrap().len();
        assert!(len <= cap, "round {round}: audit.log {len} bytes");
        if len < last_anchor_len {
            rotations += 1;
        }
        last_anchor_len = len;
    }
    // The hostile details alone were 500 MB; what stayed is bounded, and was rotated
    // many times on the way.
    let written = (ROUNDS * OPS_PER_ANSWER * NAMESPACE) as u64;
    assert!(written > 500_000_000);
    assert!(rotations >= 20, "{rotations} rotations");
    println!(
        "audit flood: {} entries, {written} bytes of hostile detail, {rotations} rotations, \
         peak on disk {peak} bytes (cap {cap}, bound {})",
        ROUNDS * OPS_PER_ANSWER + 1,
        2 * cap
    );

    // Every entry is capped, the hostile namespace cut with its hash and length.
    let tail = a.audit.tail(50);
    assert_eq!(tail.len(), 50);
    for e in &tail {
        assert_capped(e);
        assert_eq!(e.decision, "namespace");
        let t = e.truncated.iter().find(|t| t.field == AuditField::Reason);
        assert!(t.is_some_and(|t| t.bytes > NAMESPACE as u64), "{e:?}");
    }
    // The pending destroy of 105 is still reported, 24 hours and many rotations later.
    let pending = a.audit.pending();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].guest_id.as_deref(), Some("105"));

    // Both files replay clean, the chain runs from one into the other, and a restart
    // after all those rotations still reports the pending destroy.
    let old = verify_file(&sibling(&path, ".1")).unwrap();
    let new = verify_file(&path).unwrap();
    assert_eq!((old.torn_bytes, new.torn_bytes), (0, 0));
    assert_eq!(new.anchor_seq, old.anchor_seq + old.records);
    let dir = a.dir.clone();
    drop(a);
    let reopened = AuditLog::open(&path).unwrap();
    let pending = reopened.pending();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].decision, PENDING_SIGNATURE);
    assert_eq!(pending[0].guest_id.as_deref(), Some("105"));
    fs::remove_dir_all(dir).unwrap();
}

fn pending_entry(guest: &str, at: i64) -> AuditEntry {
    AuditEntry::new(
        Timestamp(at),
        "guest_destroy",
        Some(guest.into()),
        PENDING_SIGNATURE,
        "destructive operation without a verified signature",
        None,
    )
}

#[test]
fn pending_signatures_are_carried_across_rotations_and_restarts_until_resolved() {
    let dir = tempdir("pending");
    let path = dir.join("audit.log");
    let log = AuditLog::open_bounded(&path, Arc::new(OsIo), MIN_MAX_BYTES).unwrap();
    log.record(&pending_entry("105", 1)).unwrap();
    log.record(&pending_entry("106", 2)).unwrap();
    log.rotate().unwrap();
    log.record(&AuditEntry::new(
        Timestamp(3),
        "guest_destroy",
        Some("106".into()),
        "allowed",
        "signed",
        Some("ops-2026".into()),
    ))
    .unwrap();
    log.rotate().unwrap();
    // Two rotations: the file 105 was recorded in is gone, 106 was resolved.
    drop(log);
    let log = AuditLog::open(&path).unwrap();
    let pending = log.pending();
    assert_eq!(pending, vec![pending_entry("105", 1)]);
    // A carried entry is not a new decision: it is not in the tail.
    assert!(log.tail(50).is_empty(), "{:?}", log.tail(50));
    // On disk it is marked as carried, after the anchor.
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("\"carried\":true"), "{text}");

    log.record(&AuditEntry::new(
        Timestamp(4),
        "guest_destroy",
        Some("105".into()),
        "guest_changed",
        "the guest's config changed since it was signed",
        None,
    ))
    .unwrap();
    assert!(log.pending().is_empty());
    drop(log);
    assert!(AuditLog::open(&path).unwrap().pending().is_empty());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_file_over_the_cap_at_open_is_rotated_at_once() {
    let dir = tempdir("oversize");
    let path = dir.join("audit.log");
    let log = AuditLog::open(&path).unwrap();
    let big = "b".repeat(200);
    let mut n = 0;
    while fs::metadata(&path).unwrap().len() <= MIN_MAX_BYTES {
        let mut e = pending_entry(&format!("{}", n % 3), n);
        e.decision = "allowed".into();
        e.reason = big.clone();
        log.record(&e).unwrap();
        n += 1;
    }
    log.record(&pending_entry("7", n)).unwrap();
    drop(log);
    let log = AuditLog::open_bounded(&path, Arc::new(OsIo), MIN_MAX_BYTES).unwrap();
    assert!(fs::metadata(&path).unwrap().len() < 4096);
    assert_eq!(
        verify_file(&sibling(&path, ".1")).unwrap().records,
        n as u64 + 1
    );
    assert_eq!(log.pending(), vec![pending_entry("7", n)]);
    // The tail read at open is kept in memory across the rotation.
    assert_eq!(log.tail(1), vec![pending_entry("7", n)]);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_hostile_answer_is_audited_by_hash_and_size_in_a_bounded_number_of_entries() {
    let hub = HubSim::start();
    let a = agent("answer", Arc::new(OsIo), MIN_MAX_BYTES);
    let client = SignedOpsClient::new(HubClientOptions {
        url: hub.url(),
        api_key: Secret::new(hub.key()),
        trust: TlsTrust::Pin(Sha256Pin::parse(&hub.fingerprint()).unwrap()),
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    let secretish = "blob-body-that-must-not-be-audited";
    let unparseable = format!("{{\"op\":\"guest_destroy\",\"{secretish}\":1}}");
    hub.queue_signed_op(unparseable.as_bytes(), None);
    hub.queue_signed_op_raw(json!({"id": "bad-b64", "blob_b64": "@@@", "signature": null}));
    hub.queue_signed_op_raw(
        json!({"id": "sig-num", "blob_b64": base64_encode(secretish.as_bytes()), "signature": 7}),
    );
    hub.queue_signed_op_raw(json!({"id": "x".repeat(5000), "blob_b64": "eA=="}));
    let signature = hostile_signature(11 * 1024);
    for i in 0..200 {
        let blob = destroy_blob("pve-a", &format!("{i}"), DIGEST, a.clock.now().unix());
        // The answer is capped at 2 MiB: only the ones the runner takes carry the
        // 15 KB signature.
        hub.queue_signed_op(&blob, (i < 28).then_some(signature.as_str()));
    }
    let s = a.runner.run_round(&client).unwrap();
    assert_eq!(s.outcomes.len(), 29, "32 taken, 3 of them unusable");
    assert_eq!(s.skipped.len(), 3 + 200 - 28);

    let tail = a.audit.tail(200);
    // 28 gate refusals (+1 `malformed` for the blob that does not parse), 3 skipped
    // entries, and one entry for the 172 past the limit: 33 + 172 would be unbounded.
    assert_eq!(tail.len(), 28 + 1 + 3 + 1, "{tail:#?}");
    for e in &tail {
        assert_capped(e);
    }
    let text = fs::read_to_string(a.dir.join("audit.log")).unwrap();
    assert!(!text.contains(secretish), "no blob bytes in the audit");

    let unparsed = tail
        .iter()
        .find(|e| e.reason.starts_with("blob does not parse"))
        .unwrap();
    assert_eq!(
        (unparsed.op.as_str(), unparsed.decision.as_str()),
        ("signed_op", "malformed")
    );
    let d = unparsed.delivery.as_ref().unwrap();
    assert_eq!(d.blob_bytes, Some(unparseable.len() as u64));
    assert_eq!(d.index, Some(0));
    assert_eq!(d.blob_sha256.as_ref().map(String::len), Some(64));

    let skipped: Vec<&AuditEntry> = tail
        .iter()
        .filter(|e| e.reason.starts_with("entry skipped"))
        .collect();
    let idx: Vec<Option<u64>> = skipped
        .iter()
        .map(|e| e.delivery.as_ref().unwrap().index)
        .collect();
    assert_eq!(idx, vec![Some(1), Some(2), Some(3)]);
    assert_eq!(
        skipped[0].delivery.as_ref().unwrap().hub_op_id.as_deref(),
        Some("bad-b64")
    );
    let sig_num = skipped[1].delivery.as_ref().unwrap();
    assert_eq!(
        sig_num.blob_bytes,
        Some(secretish.len() as u64),
        "the blob decoded"
    );
    let long_id = skipped[2];
    assert_eq!(
        long_id
            .delivery
            .as_ref()
            .unwrap()
            .hub_op_id
            .as_ref()
            .map(String::len),
        Some(AUDIT_STRING_MAX)
    );
    assert!(
        long_id
            .truncated
            .iter()
            .any(|t| t.field == AuditField::DeliveryHubOpId && t.bytes == 5000)
    );

    let over = tail.iter().find(|e| e.decision == "over_limit").unwrap();
    assert_eq!(over.delivery.as_ref().unwrap().index, Some(32));
    assert!(over.reason.starts_with("172 entries"), "{}", over.reason);
    fs::remove_dir_all(&a.dir).unwrap();
}
