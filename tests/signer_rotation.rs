//! Signer lifecycle, in process, over the real gate, signed-job path, journal, nonce
//! store and audit log, with signatures by the real `ssh-keygen -Y sign`:
//! `rotate_signers` (emergency by a threshold of recovery keys, planned by an operational
//! key), each refusal (wrong role, below threshold, duplicate signer, a non-recovery
//! signature that does not count, rollback, skipped version, empty or short recovery
//! set, revoked, expired) with its proof that nothing was burned or written, the
//! replay of an old rotation, revocation re-read keeping the last good list, the
//! expiry warning, and a power cut at every point of a rotation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::rotate::{
    NEW_OPS, OPS, REC1, REC2, REC3, destroy_blob, entry, pubkey, rotation_blob, rotation_params,
    sign_as,
};
use common::tempdir;
use felhom_agent::authz::{
    AuthzConfig, FileNonceStore, NonceStore, OpBlob, Role, SIGNERS_FILE, SignerEntry, SignerSource,
    Verifier, expiry_warnings, load_signer_set, load_signer_set_os,
};
use felhom_agent::base::{ManualClock, Timestamp};
use felhom_agent::reconcile::Queue;
use felhom_agent::reconcile::{
    AuditLog, Decision, DestructiveExecutor, Gate, GuestNow, Intent, JobOutcome, Journal, OpClass,
    OpState, ROTATED, RotationExecutor, SIGNER_ADDED, SIGNER_KEPT, SIGNER_REMOVED, SignedJobs,
    SignedOp, recover_rotations,
};
use felhom_agent::store::{CutMode, Io, OsIo, PowerCutIo};

const NOW: i64 = 1_900_000_000;
const HOST: &str = "pve-a";
const DIGEST: &str = "9c1e4bd07f3f6a25c8e4d1b2a3f5e6d7c8b9a0f1";

fn signer(key_id: &str, role: Role, key: &str) -> SignerEntry {
    SignerEntry {
        key_id: key_id.into(),
        role,
        public_key: pubkey(key),
        valid_before: None,
    }
}

/// `ops-2026` operational, `rec-1` and `rec-2` recovery; threshold `threshold`.
fn config(threshold: u32) -> AuthzConfig {
    AuthzConfig {
        signers: vec![
            signer("ops-2026", Role::Operational, OPS),
            signer("rec-1", Role::Recovery, REC1),
            signer("rec-2", Role::Recovery, REC2),
        ],
        recovery_threshold: threshold,
        ..AuthzConfig::default()
    }
}

/// The new set every rotation here installs: a new operational key and two recovery keys.
fn new_set() -> Vec<serde_json::Value> {
    vec![
        entry("ops-2027", "operational", NEW_OPS),
        entry("rec-1", "recovery", REC1),
        entry("rec-3", "recovery", REC3),
    ]
}

struct Rig {
    dir: PathBuf,
    nonces: Arc<FileNonceStore>,
    journal: Arc<Journal>,
    audit: Arc<AuditLog>,
    gate: Arc<Gate>,
    jobs: SignedJobs,
    exec: Arc<dyn DestructiveExecutor>,
}

fn rig_in(dir: &Path, cfg: &AuthzConfig, io: Arc<dyn Io>) -> Rig {
    try_rig_in(dir, cfg, io).unwrap()
}

/// The rig on `io`; `Err` when a store cannot be opened (the power went meanwhile).
fn try_rig_in(dir: &Path, cfg: &AuthzConfig, io: Arc<dyn Io>) -> Result<Rig, String> {
    let clock = ManualClock::new(Timestamp(NOW));
    let nonces = Arc::new(
        FileNonceStore::open_with(dir.join("nonces.log"), 300, Arc::clone(&io))
            .map_err(|e| e.to_string())?,
    );
    let set = Arc::new(load_signer_set(cfg, Some(dir), Arc::clone(&io)).unwrap());
    let policy = felhom_agent::authz::Policy {
        max_clock_skew_seconds: cfg.max_clock_skew_seconds,
        sk_counter_strict: false,
    };
    let verifier = Verifier::with_set(
        Arc::clone(&set),
        HOST,
        policy,
        Arc::new(clock.clone()),
        nonces.clone(),
    );
    let journal = Arc::new(
        Journal::open_with(&dir.join("journal.log"), Arc::clone(&io)).map_err(|e| e.to_string())?,
    );
    let audit =
        Arc::new(AuditLog::open_with(&dir.join("audit.log"), io).map_err(|e| e.to_string())?);
    let gate = Arc::new(
        Gate::new(HOST.into(), Some(verifier), journal.clone(), audit.clone())
            .with_clock(Arc::new(clock.clone())),
    );
    let jobs =
        SignedJobs::new(gate.clone(), Arc::new(Queue::new(2))).with_clock(Arc::new(clock.clone()));
    let exec: Arc<dyn DestructiveExecutor> =
        Arc::new(RotationExecutor::new(set, audit.clone()).with_clock(Arc::new(clock.clone())));
    Ok(Rig {
        dir: dir.to_path_buf(),
        nonces,
        journal,
        audit,
        gate,
        jobs,
        exec,
    })
}

fn rig(name: &str, cfg: &AuthzConfig) -> Rig {
    rig_in(&tempdir("rotation", name), cfg, Arc::new(OsIo))
}

fn nonce_of(blob: &[u8]) -> String {
    OpBlob::parse(blob).unwrap().nonce
}

impl Rig {
    fn sign(&self, key: &str, blob: &[u8]) -> String {
        sign_as(&self.dir, key, blob)
    }

    fn rotate(&self, blob: &[u8], keys: &[&str]) -> JobOutcome {
        let sigs: Vec<String> = keys.iter().map(|k| self.sign(k, blob)).collect();
        self.rotate_signed(blob, sigs)
    }

    fn rotate_signed(&self, blob: &[u8], sigs: Vec<String>) -> JobOutcome {
        let mut intent = Intent::new(OpClass::RotateSigners, HOST, None);
        intent.params = rotation_params(blob);
        let signed = SignedOp {
            blob: blob.to_vec(),
            signature: sigs[0].clone(),
            cosignatures: sigs[1..].to_vec(),
        };
        self.jobs
            .run_signed_job(&intent, &signed, Arc::clone(&self.exec))
            .unwrap()
    }

    /// The gate's word on a destroy of guest 105 signed by `key`.
    fn destroy_by(&self, key: &str) -> Decision {
        let blob = destroy_blob(HOST, "105", DIGEST, NOW);
        let sig = self.sign(key, &blob);
        let mut intent = Intent::new(OpClass::GuestDestroy, HOST, Some("105".into()));
        intent.params.insert("purge".into(), "1".into());
        self.gate.authorize(
            &intent,
            Some(&SignedOp::new(blob, sig)),
            &GuestNow::Present {
                digest: Some(DIGEST.into()),
                protected: false,
                running: false,
            },
        )
    }

    fn version(&self) -> u64 {
        self.gate.signer_set().unwrap().policy().version
    }

    fn burned(&self, blob: &[u8]) -> bool {
        self.nonces.is_recorded(&nonce_of(blob)).unwrap()
    }
}

fn refused(o: &JobOutcome) -> &'static str {
    match o {
        JobOutcome::Refused(r) => r.code(),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn an_emergency_rotation_by_two_recovery_keys_replaces_the_set_durably() {
    let cfg = config(2);
    let r = rig("emergency", &cfg);
    let old_fps = r.gate.signer_set().unwrap().policy().fingerprints();
    let blob = rotation_blob(HOST, "emergency", "1", &new_set(), NOW);
    let out = r.rotate(&blob, &[REC1, REC2]);
    assert!(matches!(out, JobOutcome::Executed { .. }), "{out:?}");
    assert_eq!(r.version(), 1);
    let policy = r.gate.signer_set().unwrap().policy();
    assert_eq!(policy.source, SignerSource::Rotated);

    // Durable: a restart reads the rotated set, not the config's.
    let reread = load_signer_set_os(&cfg, Some(&r.dir)).unwrap().policy();
    assert_eq!(reread.version, 1);
    assert_eq!(reread.fingerprints(), policy.fingerprints());

    // The removed operational key is refused at once; the new one is allowed.
    match r.destroy_by(OPS) {
        Decision::Refused { reason } => assert_eq!(reason.code(), "unknown_signer"),
        d => panic!("old key allowed: {d:?}"),
    }
    assert!(r.destroy_by(NEW_OPS).is_allowed());

    // Audited with the old and the new fingerprints.
    let tail = r.audit.tail(50);
    assert!(
        tail.iter()
            .any(|e| e.decision == ROTATED && e.op == "rotate_signers")
    );
    let about = |fp: &str| {
        tail.iter()
            .filter(|e| e.reason.ends_with(fp))
            .map(|e| e.decision.as_str())
            .collect::<Vec<_>>()
    };
    // ops-2026 and rec-2 removed, rec-1 kept, ops-2027 and rec-3 added.
    let new_fps = policy.fingerprints();
    assert_eq!(about(&old_fps[0]), vec![SIGNER_REMOVED]);
    assert_eq!(about(&old_fps[1]), vec![SIGNER_KEPT]);
    assert_eq!(about(&old_fps[2]), vec![SIGNER_REMOVED]);
    assert_eq!(about(&new_fps[0]), vec![SIGNER_ADDED]);
    assert_eq!(about(&new_fps[2]), vec![SIGNER_ADDED]);
    // The journal holds the step; the nonce is applied, so a replay does nothing.
    assert!(r.journal.in_flight().is_empty());
    assert!(r.journal.already_applied(&nonce_of(&blob)));
    let again = r.rotate(&blob, &[REC1, REC2]);
    assert_eq!(again, JobOutcome::Skipped);
    assert_eq!(r.version(), 1);
}

#[test]
fn a_planned_rotation_by_the_operational_key_runs_and_an_old_rotation_replayed_does_not() {
    let cfg = config(2);
    let r = rig("planned", &cfg);
    let first = rotation_blob(HOST, "planned", "1", &new_set(), NOW);
    assert!(matches!(
        r.rotate(&first, &[OPS]),
        JobOutcome::Executed { .. }
    ));
    // Version 2 back to the first key set, signed by the new operational key.
    let back = vec![
        entry("ops-2026", "operational", OPS),
        entry("rec-1", "recovery", REC1),
        entry("rec-2", "recovery", REC2),
    ];
    let second = rotation_blob(HOST, "planned", "2", &back, NOW);
    assert!(matches!(
        r.rotate(&second, &[NEW_OPS]),
        JobOutcome::Executed { .. }
    ));
    assert_eq!(r.version(), 2);
    // A compromised hub replays the first rotation, signatures and all: it is already
    // applied (skipped), and a fresh copy of it at version 1 would be a rollback.
    assert_eq!(r.rotate(&first, &[OPS]), JobOutcome::Skipped);
    let fresh_old = rotation_blob(HOST, "planned", "1", &new_set(), NOW);
    assert_eq!(refused(&r.rotate(&fresh_old, &[OPS])), "policy_version");
    assert_eq!(r.version(), 2);
}

/// Every refusal: its code, and that it burned no nonce, wrote no signers.json and
/// left the policy where it was.
#[test]
fn every_refusal_burns_nothing_and_leaves_the_set() {
    let ops_only = vec![entry("ops-2027", "operational", NEW_OPS)];
    let one_recovery = vec![
        entry("ops-2027", "operational", NEW_OPS),
        entry("rec-1", "recovery", REC1),
    ];
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        Vec<serde_json::Value>,
        &'static [&'static str],
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "wrong role: operational on an emergency",
            "emergency",
            "1",
            new_set(),
            &[OPS],
            "role_denied",
        ),
        (
            "below threshold",
            "emergency",
            "1",
            new_set(),
            &[REC1],
            "below_threshold",
        ),
        (
            "duplicate signer counts once",
            "emergency",
            "1",
            new_set(),
            &[REC1, REC1],
            "below_threshold",
        ),
        (
            "a non-recovery signature does not count",
            "emergency",
            "1",
            new_set(),
            &[REC1, OPS],
            "below_threshold",
        ),
        (
            "an unknown cosigner refuses the op",
            "emergency",
            "1",
            new_set(),
            &[REC1, REC2, REC3],
            "unknown_signer",
        ),
        (
            "rollback",
            "emergency",
            "0",
            new_set(),
            &[REC1, REC2],
            "policy_version",
        ),
        (
            "skipped version",
            "emergency",
            "2",
            new_set(),
            &[REC1, REC2],
            "policy_version",
        ),
        (
            "empty recovery set",
            "planned",
            "1",
            ops_only,
            &[OPS],
            "policy_invalid",
        ),
        (
            "fewer recovery keys than the threshold",
            "planned",
            "1",
            one_recovery,
            &[OPS],
            "policy_invalid",
        ),
    ];
    let cfg = config(2);
    for (name, mode, version, set, keys, want) in cases {
        let r = rig(&name.replace([' ', ':'], "-"), &cfg);
        let blob = rotation_blob(HOST, mode, version, &set, NOW);
        let out = r.rotate(&blob, keys);
        assert_eq!(refused(&out), want, "{name}");
        assert!(!r.burned(&blob), "{name}: nonce burned");
        assert!(
            !r.dir.join(SIGNERS_FILE).exists(),
            "{name}: signers.json written"
        );
        assert_eq!(r.version(), 0, "{name}");
        assert_eq!(r.journal.records(), 0, "{name}: journaled");
    }
}

#[test]
fn a_recovery_key_may_not_sign_an_ordinary_op() {
    let r = rig("recovery-destroy", &config(1));
    match r.destroy_by(REC1) {
        Decision::Refused { reason } => assert_eq!(reason.code(), "role_denied"),
        d => panic!("{d:?}"),
    }
}

#[test]
fn a_revoked_key_is_refused_whatever_lists_it_and_no_rotation_brings_it_back() {
    let dir = tempdir("rotation", "revoked");
    let revoked = dir.join("revoked_keys");
    fs::write(&revoked, format!("# leaked 2026-12\n{}\n", pubkey(OPS))).unwrap();
    let cfg = AuthzConfig {
        revoked_keys_file: Some(revoked),
        ..config(1)
    };
    let r = rig_in(&dir, &cfg, Arc::new(OsIo));
    match r.destroy_by(OPS) {
        Decision::Refused { reason } => assert_eq!(reason.code(), "revoked"),
        d => panic!("{d:?}"),
    }
    let set = vec![
        entry("ops-2026", "operational", OPS),
        entry("rec-1", "recovery", REC1),
    ];
    let blob = rotation_blob(HOST, "emergency", "1", &set, NOW);
    assert_eq!(refused(&r.rotate(&blob, &[REC1])), "policy_invalid");
    assert!(!r.burned(&blob));
}

#[test]
fn an_expired_signer_is_refused() {
    let mut cfg = config(1);
    cfg.signers[0].valid_before = Some(Timestamp(NOW - 1).to_string());
    let r = rig("expired", &cfg);
    let blob = destroy_blob(HOST, "105", DIGEST, NOW);
    match r.destroy_by(OPS) {
        Decision::Refused { reason } => assert_eq!(reason.code(), "signer_expired"),
        d => panic!("{d:?}"),
    }
    assert!(!r.burned(&blob));
}

#[test]
fn a_broken_revoked_file_keeps_the_last_good_list() {
    let dir = tempdir("rotation", "revoked-reload");
    let path = dir.join("revoked_keys");
    fs::write(&path, format!("{}\n", pubkey(OPS))).unwrap();
    let cfg = AuthzConfig {
        revoked_keys_file: Some(path.clone()),
        ..config(1)
    };
    let set = load_signer_set_os(&cfg, Some(&dir)).unwrap();
    assert_eq!(set.revoked().len(), 1);
    fs::write(&path, "ssh-ed25519 not-a-key\n").unwrap();
    assert!(!set.reload_revoked(&path));
    assert_eq!(set.revoked().len(), 1, "the last good list is kept");
    fs::write(&path, format!("{}\n{}\n", pubkey(OPS), pubkey(REC1))).unwrap();
    assert!(set.reload_revoked(&path));
    assert_eq!(set.revoked().len(), 2);
}

#[test]
fn a_signer_expiring_within_fourteen_days_is_warned_of() {
    let mut cfg = config(1);
    cfg.signers[0].valid_before = Some(Timestamp(NOW + 13 * 86_400).to_string());
    cfg.signers[1].valid_before = Some(Timestamp(NOW + 15 * 86_400).to_string());
    cfg.signers[2].valid_before = Some(Timestamp(NOW - 10).to_string());
    let set = load_signer_set_os(&cfg, None).unwrap();
    let w = expiry_warnings(&set.policy(), Timestamp(NOW));
    let ids: Vec<(&str, bool)> = w.iter().map(|w| (w.key_id.as_str(), w.expired)).collect();
    assert_eq!(ids, vec![("ops-2026", false), ("rec-2", true)]);
}

/// A power cut at every numbered file-system point of an emergency rotation (journal,
/// nonce store, audit log and signers.json on one [`PowerCutIo`]): after the restart the
/// set is exactly the old one or exactly the new one, the journal holds the rotation
/// settled (succeeded exactly when the new set is held) and nothing in flight.
#[test]
fn a_power_cut_at_every_point_of_a_rotation_leaves_the_old_set_or_the_new() {
    let cfg = config(2);
    let seed = tempdir("rotation-cut", "seed");
    // Sign once: every case runs the same bytes.
    let blob = rotation_blob(HOST, "emergency", "1", &new_set(), NOW);
    let sigs = vec![sign_as(&seed, REC1, &blob), sign_as(&seed, REC2, &blob)];
    let old = load_signer_set_os(&cfg, None)
        .unwrap()
        .policy()
        .fingerprints();

    let count = {
        let io = PowerCutIo::new(CutMode::LoseUnsynced);
        let dir = tempdir("rotation-cut", "count");
        let r = rig_in(&dir, &cfg, Arc::new(io.clone()));
        let out = r.rotate_signed(&blob, sigs.clone());
        assert!(matches!(out, JobOutcome::Executed { .. }), "{out:?}");
        io.points()
    };
    assert!(count > 5, "a rotation has {count} points");
    let new = {
        let dir = tempdir("rotation-cut", "new");
        let r = rig_in(&dir, &cfg, Arc::new(OsIo));
        r.rotate_signed(&blob, sigs.clone());
        r.gate.signer_set().unwrap().policy().fingerprints()
    };
    let mut saw = (0, 0);
    for mode in [CutMode::LoseUnsynced, CutMode::TornWrite] {
        for at in 1..=count {
            let dir = tempdir("rotation-cut", &format!("{mode:?}-{at}"));
            let io = PowerCutIo::cut_at(mode, at);
            if let Ok(r) = try_rig_in(&dir, &cfg, Arc::new(io.clone())) {
                // Whatever the job says once the power is gone is not trusted.
                let mut intent = Intent::new(OpClass::RotateSigners, HOST, None);
                intent.params = rotation_params(&blob);
                let signed = SignedOp {
                    blob: blob.clone(),
                    signature: sigs[0].clone(),
                    cosignatures: sigs[1..].to_vec(),
                };
                let _ = r.jobs.run_signed_job(&intent, &signed, Arc::clone(&r.exec));
            }
            io.apply_cut().unwrap();
            // Restart on what survived.
            let set = load_signer_set_os(&cfg, Some(&dir))
                .unwrap_or_else(|e| panic!("{mode:?} cut at {at}: set unreadable: {e}"));
            let p = set.policy();
            let fps = p.fingerprints();
            match p.version {
                0 => {
                    assert_eq!(fps, old, "{mode:?} cut at {at}");
                    saw.0 += 1;
                }
                1 => {
                    assert_eq!(fps, new, "{mode:?} cut at {at}");
                    saw.1 += 1;
                }
                v => panic!("{mode:?} cut at {at}: version {v}"),
            }
            let journal = Journal::open(&dir.join("journal.log")).unwrap();
            recover_rotations(&journal, &set, &felhom_agent::base::SystemClock).unwrap();
            assert!(journal.in_flight().is_empty(), "{mode:?} cut at {at}");
            let applied = journal.already_applied(&nonce_of(&blob));
            drop(journal);
            let view = Journal::open_read_only(&dir.join("journal.log")).unwrap();
            let succeeded = view
                .history()
                .iter()
                .any(|r| r.class == OpClass::RotateSigners && r.state == OpState::Succeeded);
            assert_eq!(succeeded, p.version == 1, "{mode:?} cut at {at}");
            if applied {
                assert_eq!(p.version, 1, "{mode:?} cut at {at}: applied but old set");
            }
        }
    }
    assert!(saw.0 > 0 && saw.1 > 0, "both outcomes reached: {saw:?}");
}
