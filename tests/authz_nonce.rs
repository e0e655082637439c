#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The durable nonce store under the verifier, config validation and the offline selftest.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use felhom_agent::authz::{
    AuthzConfig, AuthzError, FileNonceStore, Freshness, NonceStore, Role, SignerEntry, Verifier,
    offline_selftest,
};
use felhom_agent::base::{Clock, ManualClock, ManualMonotonic, Timestamp};
use felhom_agent::store::{FaultOp, FaultyIo, Store};

const V: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/sshsig");
const NOW: Timestamp = Timestamp(1_893_457_800);

fn tempdir(name: &str) -> PathBuf {
    common::fresh_path("authz", name)
}

fn blob() -> Vec<u8> {
    fs::read(format!("{V}/blobs/op-valid.json")).unwrap()
}
fn sig() -> String {
    fs::read_to_string(format!("{V}/sigs/op-valid.ed25519.sig")).unwrap()
}

fn config() -> AuthzConfig {
    AuthzConfig {
        signers: vec![SignerEntry {
            key_id: "ops-2026".into(),
            role: Role::Operational,
            public_key: fs::read_to_string(format!("{V}/keys/ed25519.pub")).unwrap(),
            valid_before: None,
        }],
        ..AuthzConfig::default()
    }
}

fn verifier(store: Arc<dyn NonceStore>) -> Verifier {
    Verifier::from_config(&config(), "pve-a", Arc::new(ManualClock::new(NOW)), store).unwrap()
}

#[test]
fn replay_is_refused_across_a_restart() {
    let dir = tempdir("restart");
    let path = dir.join("nonces.log");
    {
        let s = Arc::new(FileNonceStore::open(&path, 120).unwrap());
        verifier(s).verify(&blob(), &sig()).unwrap();
    }
    let s = Arc::new(FileNonceStore::open(&path, 120).unwrap());
    assert_eq!(s.len(), 1);
    assert!(matches!(
        verifier(s).verify(&blob(), &sig()),
        Err(AuthzError::Replay(_))
    ));
}

#[test]
fn a_nonce_is_durable_before_fresh_is_returned() {
    let dir = tempdir("durable");
    let path = dir.join("nonces.log");
    let s = FileNonceStore::open(&path, 120).unwrap();
    assert_eq!(
        s.seen_or_record("aa".repeat(16).as_str(), NOW, Some(("SHA256:k", 7)))
            .unwrap(),
        Freshness::Fresh
    );
    // Read the file while the store is still open: the record is already there.
    let mut nonces = Vec::new();
    fs::copy(&path, dir.join("peek.log")).unwrap();
    Store::open(dir.join("peek.log"), |_, d| {
        nonces.push(String::from_utf8(d.to_vec()).unwrap());
        Ok(())
    })
    .unwrap();
    assert_eq!(nonces.len(), 1);
    assert!(nonces[0].contains(&"aa".repeat(16)));
    assert!(nonces[0].contains("\"sk_counter\":7"));
    drop(s);
    let s = FileNonceStore::open(&path, 120).unwrap();
    assert_eq!(s.highest_sk_counter("SHA256:k").unwrap(), Some(7));
}

#[test]
fn an_unwritable_nonce_store_refuses_fail_safe() {
    for op in [FaultOp::Write, FaultOp::Sync] {
        let dir = tempdir("unwritable");
        let path = dir.join("nonces.log");
        // Opening a new file costs one write and two syncs; fail the next one for good.
        let at = if op == FaultOp::Write { 2 } else { 3 };
        let io = Arc::new(FaultyIo::new(op, at, true));
        let s = Arc::new(FileNonceStore::open_with(&path, 120, io).unwrap());
        let v = verifier(s.clone());
        match v.verify(&blob(), &sig()) {
            Err(AuthzError::Replay(d)) => assert!(d.contains("fail safe"), "{d}"),
            other => panic!("{op:?}: {other:?}"),
        }
        // Poisoned: refuses again, and a restart shows the op was not recorded durable
        // only if the write really failed (a failed fsync may have left it on disk).
        assert!(matches!(
            v.verify(&blob(), &sig()),
            Err(AuthzError::Replay(_))
        ));
        assert!(
            s.seen_or_record("bb".repeat(16).as_str(), NOW, None)
                .is_err()
        );
    }
}

#[test]
fn a_damaged_nonce_file_makes_the_verifier_refuse_everything() {
    let dir = tempdir("damaged");
    let path = dir.join("nonces.log");
    {
        let s = FileNonceStore::open(&path, 120).unwrap();
        for i in 0..3u8 {
            s.seen_or_record(&format!("{i:02x}").repeat(16), NOW, None)
                .unwrap();
        }
    }
    let mut lines: Vec<String> = fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| format!("{l}\n"))
        .collect();
    lines.remove(2);
    fs::write(&path, lines.concat()).unwrap();
    let e = FileNonceStore::open(&path, 120).unwrap_err();
    assert!(e.to_string().contains("line 3"), "{e}");
    let s = Arc::new(FileNonceStore::open_fail_safe(&path, 120));
    match verifier(s).verify(&blob(), &sig()) {
        Err(AuthzError::Replay(d)) => assert!(d.contains("line 3"), "{d}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn compaction_prunes_only_nonces_past_expiry_plus_skew() {
    let dir = tempdir("compact");
    let path = dir.join("nonces.log");
    let skew = 120;
    let s = FileNonceStore::open(&path, skew).unwrap();
    let now = Timestamp(10_000);
    let cases = [
        ("a", now.0 - 121, false), // expired beyond the skew: pruned
        ("b", now.0 - 120, true),  // exactly at the skew edge: kept
        ("c", now.0 - 1, true),
        ("d", now.0 + 3600, true),
    ];
    for (n, exp, _) in cases {
        s.seen_or_record(&n.repeat(32), Timestamp(exp), None)
            .unwrap();
    }
    s.seen_or_record(
        &"e".repeat(32),
        Timestamp(now.0 - 5000),
        Some(("SHA256:k", 9)),
    )
    .unwrap();
    let stats = s.compact(now).unwrap();
    assert_eq!((stats.kept, stats.pruned), (3, 2));
    drop(s);
    let s = FileNonceStore::open(&path, skew).unwrap();
    for (n, exp, kept) in cases {
        let again = s
            .seen_or_record(&n.repeat(32), Timestamp(exp), None)
            .unwrap();
        assert_eq!(again == Freshness::Seen, kept, "{n}");
    }
    // The counter of a pruned nonce's key survives compaction.
    assert_eq!(s.highest_sk_counter("SHA256:k").unwrap(), Some(9));
}

#[test]
fn config_errors_name_the_entry() {
    let good = fs::read_to_string(format!("{V}/keys/ed25519.pub")).unwrap();
    let other = fs::read_to_string(format!("{V}/keys/ecdsa-p256.pub")).unwrap();
    let entry = |id: &str, k: &str| SignerEntry {
        key_id: id.into(),
        role: Role::Operational,
        public_key: k.into(),
        valid_before: None,
    };
    let cases = [
        (
            vec![entry("a", &good), entry("b", "ssh-ed25519 AAAA!!")],
            "authz.signers[1].public_key: not an authorized_keys line",
        ),
        (
            vec![entry("a", &good), entry("b", &good)],
            "authz.signers[1].public_key: same key as authz.signers[0]",
        ),
        (
            vec![entry("a", &good), entry("a", &other)],
            "authz.signers[1].key_id: \"a\" is already used by authz.signers[0]",
        ),
        (vec![entry("bad id", &good)], "authz.signers[0].key_id:"),
        (
            vec![entry("a", &format!("restrict {good}"))],
            "authz.signers[0].public_key: authorized_keys options are not supported",
        ),
    ];
    for (signers, want) in cases {
        let cfg = AuthzConfig {
            signers,
            ..AuthzConfig::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.starts_with(want), "{e}\n  want {want}");
    }
    let cfg = AuthzConfig {
        max_clock_skew_seconds: 7200,
        ..AuthzConfig::default()
    };
    assert_eq!(
        cfg.validate().unwrap_err().field,
        "authz.max_clock_skew_seconds"
    );
}

#[test]
fn config_section_parses_with_defaults_and_refuses_unknown_fields() {
    let c: AuthzConfig = serde_json::from_str(
        r#"{"signers":[{"key_id":"ops","role":"recovery","public_key":"ssh-ed25519 AAAA"}]}"#,
    )
    .unwrap();
    assert_eq!(c.max_clock_skew_seconds, 120);
    assert!(!c.sk_counter_strict);
    assert_eq!(c.signers[0].role, Role::Recovery);
    assert!(serde_json::from_str::<AuthzConfig>(r#"{"signer":[]}"#).is_err());
    assert!(
        serde_json::from_str::<AuthzConfig>(
            r#"{"signers":[{"key_id":"o","role":"admin","public_key":"x"}]}"#
        )
        .is_err()
    );
}

fn check<'a>(
    checks: &'a [felhom_agent::authz::Check],
    prefix: &str,
) -> &'a felhom_agent::authz::Check {
    checks
        .iter()
        .find(|c| c.name.starts_with(prefix))
        .unwrap_or_else(|| panic!("no check {prefix}: {checks:?}"))
}

#[test]
fn offline_selftest_runs_the_known_answer_tests_and_inspects_the_state_dir() {
    let dir = tempdir("selftest");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let good = dir.join("nonces.log");
    let torn = dir.join("journal.log");
    let corrupt = dir.join("audit.log");
    for p in [&good, &torn, &corrupt] {
        let s = Store::open(p, |_, _| Ok(())).unwrap();
        for i in 0..3 {
            s.append(&i).unwrap();
        }
    }
    let mut b = fs::read(&torn).unwrap();
    b.extend_from_slice(b"{\"seq\":4,");
    fs::write(&torn, &b).unwrap();
    let text = fs::read_to_string(&corrupt).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    fs::write(
        &corrupt,
        format!("{}\n{}\n{}\n", lines[0], lines[1], lines[3]),
    )
    .unwrap();
    let missing = dir.join("never.log");

    let checks = offline_selftest(
        Some(&config()),
        Some(&dir),
        &[good.clone(), torn.clone(), corrupt.clone(), missing.clone()],
    );
    for c in checks.iter().filter(|c| c.name.starts_with("kat:")) {
        assert!(c.ok, "{c:?}");
    }
    assert_eq!(
        checks.iter().filter(|c| c.name.starts_with("kat:")).count(),
        4
    );
    assert!(check(&checks, "config: authz").ok);
    assert!(check(&checks, "state dir").ok, "{checks:?}");
    let g = check(&checks, &format!("replay: {}", good.display()));
    assert!(g.ok && g.detail.contains("3 records"), "{g:?}");
    let t = check(&checks, &format!("replay: {}", torn.display()));
    assert!(t.ok && t.detail.contains("torn"), "{t:?}");
    let c = check(&checks, &format!("replay: {}", corrupt.display()));
    assert!(!c.ok && c.detail.contains("line 3"), "{c:?}");
    let m = check(&checks, &format!("replay: {}", missing.display()));
    assert!(m.ok && m.detail.contains("absent"), "{m:?}");
    assert_eq!(
        fs::read(&torn).unwrap(),
        b,
        "selftest never modifies a store file"
    );

    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let checks = offline_selftest(None, Some(&dir), &[]);
    let d = check(&checks, "state dir");
    assert!(!d.ok && d.detail.contains("0755"), "{d:?}");
}

#[test]
fn check_burns_nothing_and_consume_burns_the_nonce_once() {
    let dir = tempdir("check-consume");
    let path = dir.join("nonces.log");
    let store = Arc::new(FileNonceStore::open(&path, 120).unwrap());
    let v = verifier(store.clone());
    // `check` passes as often as asked and records nothing, on disk or in memory.
    let op = v.check(&blob(), &sig()).unwrap();
    v.check(&blob(), &sig()).unwrap();
    assert!(store.is_empty());
    assert!(!store.is_recorded(&op.blob.nonce).unwrap());
    // `consume` records it durably, once.
    v.consume(&op).unwrap();
    assert!(matches!(v.consume(&op), Err(AuthzError::Replay(_))));
    // From then on `check` refuses it as a replay, also after a restart.
    assert!(matches!(
        v.check(&blob(), &sig()),
        Err(AuthzError::Replay(_))
    ));
    drop(v);
    drop(store);
    let reopened = Arc::new(FileNonceStore::open(&path, 120).unwrap());
    assert!(reopened.is_recorded(&op.blob.nonce).unwrap());
    assert!(matches!(
        verifier(reopened).check(&blob(), &sig()),
        Err(AuthzError::Replay(_))
    ));
}

/// The store at `path` as a process with its own monotonic clock would open it.
fn open_with_clock(path: &std::path::Path, mono: &ManualMonotonic) -> Arc<FileNonceStore> {
    Arc::new(
        FileNonceStore::open(path, 120)
            .unwrap()
            .with_monotonic(Arc::new(mono.clone())),
    )
}

fn verifier_at(store: Arc<dyn NonceStore>, wall: &ManualClock) -> Verifier {
    Verifier::from_config(&config(), "pve-a", Arc::new(wall.clone()), store).unwrap()
}

const YEAR: i64 = 365 * 86_400;

/// The signed op's nonce expires at 2030-01-01T01:00:00Z, half an hour after `NOW`.
#[test]
fn a_forward_clock_jump_then_a_correction_never_makes_a_live_op_replayable() {
    let dir = tempdir("clock-jump");
    let path = dir.join("nonces.log");
    let wall = ManualClock::new(NOW);
    let mono = ManualMonotonic::new();
    let store = open_with_clock(&path, &mono);
    verifier_at(store.clone(), &wall)
        .verify(&blob(), &sig())
        .unwrap();
    let first = store.compact(wall.now()).unwrap();
    assert_eq!((first.kept, first.trusted), (1, NOW));

    // The wall clock jumps a year ahead; one real minute passes; the hourly compaction.
    let log = felhom_agent::base::log::tap();
    wall.advance(YEAR);
    mono.advance(Duration::from_secs(60));
    let jumped = store.compact(wall.now()).unwrap();
    assert_eq!(
        (jumped.kept, jumped.pruned),
        (1, 0),
        "the live nonce survives the jump"
    );
    assert_eq!(jumped.trusted, Timestamp(NOW.0 + 60), "real time only");
    assert_eq!(jumped.held_seconds, (YEAR - 60) as u64);
    let lines = String::from_utf8(log.lock().unwrap().clone()).unwrap();
    let trusted = format!("trusted={}", Timestamp(NOW.0 + 60));
    assert!(
        lines
            .lines()
            .any(|l| l.contains("event=nonce_prune_held") && l.contains(&trusted)),
        "{lines}"
    );

    // The agent restarts while the clock is still wrong: the trusted time on record holds.
    drop(store);
    let mono = ManualMonotonic::new();
    let store = open_with_clock(&path, &mono);
    assert_eq!(store.recorded_trusted_time(), Some(Timestamp(NOW.0 + 60)));
    let restarted = store.compact(wall.now()).unwrap();
    assert_eq!(
        (restarted.kept, restarted.trusted),
        (1, Timestamp(NOW.0 + 60))
    );

    // The clock is corrected; the hub delivers the same signed op again: still a replay.
    wall.set(Timestamp(NOW.0 + 120));
    mono.advance(Duration::from_secs(60));
    let corrected = store.compact(wall.now()).unwrap();
    assert_eq!(corrected.kept, 1);
    assert_eq!(corrected.held_seconds, 0);
    assert!(matches!(
        verifier_at(store, &wall).verify(&blob(), &sig()),
        Err(AuthzError::Replay(_))
    ));
}

#[test]
fn a_host_powered_off_for_a_week_prunes_late_but_does_prune() {
    let dir = tempdir("downtime");
    let path = dir.join("nonces.log");
    let expires = Timestamp(NOW.0 + 1800);
    {
        let store = open_with_clock(&path, &ManualMonotonic::new());
        store
            .seen_or_record(&"ab".repeat(16), expires, None)
            .unwrap();
        store.compact(NOW).unwrap();
    }
    // A week later the host boots: the wall clock is right, but nothing can tell.
    let week_later = Timestamp(NOW.0 + 7 * 86_400);
    let mono = ManualMonotonic::new();
    let store = open_with_clock(&path, &mono);
    let boot = store.compact(week_later).unwrap();
    assert_eq!(
        (boot.kept, boot.trusted),
        (1, NOW),
        "held, not pruned early"
    );
    // Pruned once real time has carried the trusted time past expiry plus the skew.
    mono.advance(Duration::from_secs(1800 + 120));
    let almost = store.compact(Timestamp(week_later.0 + 1920)).unwrap();
    assert_eq!((almost.kept, almost.pruned), (1, 0));
    mono.advance(Duration::from_secs(1));
    let done = store.compact(Timestamp(week_later.0 + 1921)).unwrap();
    assert_eq!((done.kept, done.pruned), (0, 1));
    assert!(store.is_empty());
}

#[test]
fn a_backward_clock_jump_prunes_nothing_extra_and_real_time_alone_catches_up() {
    let dir = tempdir("backward");
    let path = dir.join("nonces.log");
    let mono = ManualMonotonic::new();
    let store = open_with_clock(&path, &mono);
    let soon = Timestamp(NOW.0 + 100);
    store.seen_or_record(&"cd".repeat(16), soon, None).unwrap();
    store
        .seen_or_record(&"ef".repeat(16), Timestamp(NOW.0 + 10_000), None)
        .unwrap();
    assert_eq!(store.compact(NOW).unwrap().kept, 2);
    // Set back a day: the trusted time follows it down, nothing is pruned.
    mono.advance(Duration::from_secs(300));
    let back = store.compact(Timestamp(NOW.0 - 86_400)).unwrap();
    assert_eq!((back.kept, back.trusted), (2, Timestamp(NOW.0 - 86_400)));
    // Set right again: the trusted time climbs back at real-time speed only, so the
    // nonce that plain wall-clock pruning would drop now (100 + 120 s past expiry) stays.
    mono.advance(Duration::from_secs(100));
    let right = store.compact(Timestamp(NOW.0 + 400)).unwrap();
    assert_eq!(right.kept, 2);
    assert_eq!(right.trusted, Timestamp(NOW.0 - 86_400 + 100));
}

#[test]
fn a_file_without_a_trusted_time_opens_and_takes_the_wall_clock_at_its_first_compaction() {
    let dir = tempdir("old-format");
    let path = dir.join("nonces.log");
    {
        // Nonce records only: what every file written before the trusted time holds.
        let s = FileNonceStore::open(&path, 120).unwrap();
        s.seen_or_record(&"01".repeat(16), Timestamp(NOW.0 - 500), None)
            .unwrap();
        s.seen_or_record(&"02".repeat(16), Timestamp(NOW.0 + 500), None)
            .unwrap();
    }
    assert!(!fs::read_to_string(&path).unwrap().contains("trusted_time"));
    let s = FileNonceStore::open(&path, 120).unwrap();
    assert_eq!((s.len(), s.recorded_trusted_time()), (2, None));
    let stats = s.compact(NOW).unwrap();
    assert_eq!((stats.kept, stats.pruned, stats.trusted), (1, 1, NOW));
    drop(s);
    assert!(
        fs::read_to_string(&path)
            .unwrap()
            .contains("\"kind\":\"trusted_time\"")
    );
    let s = FileNonceStore::open(&path, 120).unwrap();
    assert_eq!(s.recorded_trusted_time(), Some(NOW));
    // Recorded at a stop, it is what the next start holds to.
    assert_eq!(s.record_trusted_time(Timestamp(NOW.0 + YEAR)).unwrap(), NOW);
}
