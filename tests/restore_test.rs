//! Restore tests against the simulator over real loopback TLS: a backup restored into a
//! scratch vmid, its network removed before its start, its boot checked, the result
//! recorded and the scratch guest destroyed unsigned — benign only by the journal's own
//! scratch provenance. Broken backups, failing boot checks, the resource guard, a
//! scratch vmid taken by someone else's guest, start-up cleanup after a crash, and
//! scratch claims from outside all change exactly what they should.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use felhom_agent::base::{Clock, Shutdown, SystemClock};
use felhom_agent::config::{RestoreTestsConfig, parse_vmid_range};
use felhom_agent::reconcile::{
    AuditLog, BootCheck, DesiredState, Gate, GuestNow, Intent, Journal, OpClass, Queue, Refusal,
    RestoreResults, RestoreTestResult, RestoreTester, TestOutcome, TestStage, read_results,
};
use felhom_agent::store::OsIo;
use felhom_sim::{BackupSeed, Broken, GuestSeed, ProxmoxSim};

const RANGE: &str = "9900-9909";

/// A boot check that records the vmids it was asked about and answers `fail_with`.
#[derive(Default)]
struct FakeBoot {
    asked: Mutex<Vec<u32>>,
    fail_with: Option<String>,
}

impl BootCheck for FakeBoot {
    fn boot_check(&self, vmid: u32) -> Result<(), String> {
        self.asked.lock().unwrap().push(vmid);
        match &self.fail_with {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

fn cfg() -> RestoreTestsConfig {
    RestoreTestsConfig {
        every_hours: 24,
        vmid_range: parse_vmid_range(RANGE).unwrap(),
        storage: "local-lvm".into(),
        max_parallel: 1,
        min_free_memory_mib: 16,
        min_free_storage_gib: 1,
    }
}

struct Rig {
    sim: ProxmoxSim,
    journal: Arc<Journal>,
    audit: Arc<AuditLog>,
    gate: Arc<Gate>,
    tester: Arc<RestoreTester>,
    boot: Arc<FakeBoot>,
    dir: std::path::PathBuf,
}

fn rig_with(name: &str, sim: ProxmoxSim, cfg: RestoreTestsConfig, boot: FakeBoot) -> Rig {
    let dir = common::tempdir("restore-test", name);
    rig_in(&dir, sim, cfg, boot)
}

fn rig_in(dir: &Path, sim: ProxmoxSim, cfg: RestoreTestsConfig, boot: FakeBoot) -> Rig {
    let journal = Arc::new(Journal::open(&dir.join("journal.log")).unwrap());
    let audit = Arc::new(AuditLog::open(&dir.join("audit.log")).unwrap());
    let gate = Arc::new(Gate::new(
        "pve-a".into(),
        None,
        Arc::clone(&journal),
        Arc::clone(&audit),
    ));
    let boot = Arc::new(boot);
    let tester = RestoreTester::new(
        "pve-a".into(),
        common::pinned_client(&sim),
        Arc::clone(&journal),
        Arc::clone(&gate),
        Queue::new(2),
        Arc::new(RestoreResults::open(dir, Arc::new(OsIo))),
        Arc::clone(&boot) as Arc<dyn BootCheck>,
        cfg,
        Shutdown::new(),
        Arc::new(SystemClock),
    )
    .with_wait(common::fast_wait(Duration::from_secs(20)));
    Rig {
        sim,
        journal,
        audit,
        gate,
        tester: Arc::new(tester),
        boot,
        dir: dir.to_path_buf(),
    }
}

fn sim_with(seed: BackupSeed) -> ProxmoxSim {
    ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web").running(true).disk_gib(8))
        .backup_seed(seed.of_guest(GuestSeed::new(100, "web").disk_gib(8)))
        .task_duration(Duration::from_millis(30))
        .start()
}

fn good_backup() -> BackupSeed {
    BackupSeed::vzdump(100, "2024_05_01-10_00_00")
}

/// The mutations the simulator saw on `vmid`, as `METHOD suffix` after its path.
fn mutations_on(sim: &ProxmoxSim, vmid: u32) -> Vec<String> {
    let prefix = format!("/nodes/{}/lxc/{vmid}", sim.node());
    sim.mutations()
        .into_iter()
        .filter(|r| {
            r.path.starts_with(&prefix)
                || (r.path == format!("/nodes/{}/lxc", sim.node())
                    && r.form
                        .iter()
                        .any(|(k, v)| k == "vmid" && *v == vmid.to_string()))
        })
        .map(|r| format!("{} {}", r.method, &r.path[r.path.len().min(prefix.len())..]))
        .collect()
}

fn only(results: &[RestoreTestResult]) -> &RestoreTestResult {
    assert_eq!(results.len(), 1, "{results:?}");
    &results[0]
}

#[test]
fn a_restore_test_passes_boots_without_network_and_leaves_nothing_behind() {
    let r = rig_with("pass", sim_with(good_backup()), cfg(), FakeBoot::default());
    let results = r.tester.run_round().unwrap();
    let t = only(&results);
    assert_eq!(t.outcome, TestOutcome::Ok, "{t:?}");
    assert_eq!(t.stage, None);
    assert_eq!(t.vmid, 100);
    assert_eq!(t.scratch_vmid, Some(9900));
    assert!(t.backup_volid.contains("vzdump-lxc-100-"));
    assert!(t.size_bytes.is_some_and(|s| s > 0));
    // Booted, checked, and gone: no guest, no scratch provenance left.
    assert_eq!(*r.boot.asked.lock().unwrap(), [9900]);
    assert!(!r.sim.guest_ids().contains(&9900));
    assert!(r.journal.scratch_vmids().is_empty());
    assert!(r.journal.in_flight().is_empty());
    // The network went before the start; the destroy came last.
    let m = mutations_on(&r.sim, 9900);
    assert_eq!(m.len(), 4, "{m:?}");
    assert!(m[0].starts_with("POST"), "{m:?}");
    assert_eq!(m[1], "PUT /config");
    assert_eq!(m[2], "POST /status/start");
    assert!(m[3].starts_with("DELETE"), "{m:?}");
    let put = r
        .sim
        .mutations()
        .into_iter()
        .find(|q| q.method == "PUT")
        .unwrap();
    let delete = put
        .form
        .iter()
        .find(|(k, _)| k == "delete")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert!(delete.split(',').any(|k| k == "net0"), "{delete}");
    // The unsigned destroy was allowed by the journal's provenance, and audited so.
    let audit = r.audit.tail(50);
    let destroy = audit
        .iter()
        .find(|a| a.op == "guest_destroy")
        .expect("the destroy was audited");
    assert_eq!(destroy.decision, "allowed");
    assert_eq!(destroy.reason, "agent_provenance");
    // The customer's guest was never touched.
    assert!(mutations_on(&r.sim, 100).is_empty());
    // The result is durable for `status` and the report.
    let saved = read_results(&r.dir);
    assert_eq!(saved.results, results);
    assert!(saved.running.is_empty());
    assert_eq!(saved.cursor, Some(100));
}

#[test]
fn a_broken_backup_fails_at_restore_and_leaves_nothing_behind() {
    for broken in [Broken::Truncated, Broken::NoConfig] {
        let r = rig_with(
            "broken",
            sim_with(good_backup().broken(broken)),
            cfg(),
            FakeBoot::default(),
        );
        let results = r.tester.run_round().unwrap();
        let t = only(&results);
        assert_eq!(t.outcome, TestOutcome::Failed, "{broken:?}: {t:?}");
        assert_eq!(t.stage, Some(TestStage::Restore), "{broken:?}");
        assert!(r.boot.asked.lock().unwrap().is_empty());
        assert!(!r.sim.guest_ids().contains(&9900), "{broken:?}");
        assert!(r.journal.scratch_vmids().is_empty(), "{broken:?}");
        assert!(r.journal.in_flight().is_empty(), "{broken:?}");
    }
}

#[test]
fn a_guest_that_does_not_boot_fails_at_boot_check_and_is_still_destroyed() {
    let boot = FakeBoot {
        fail_with: Some("pct exec: exit 255".into()),
        ..FakeBoot::default()
    };
    let r = rig_with("noboot", sim_with(good_backup()), cfg(), boot);
    let results = r.tester.run_round().unwrap();
    let t = only(&results);
    assert_eq!(t.outcome, TestOutcome::Failed);
    assert_eq!(t.stage, Some(TestStage::BootCheck));
    assert!(!r.sim.guest_ids().contains(&9900));
    assert!(r.journal.scratch_vmids().is_empty());
}

#[test]
fn the_guard_holds_a_test_back_when_memory_or_storage_is_short() {
    for (mem, disk, what) in [
        (16 * 1024 * 1024, 1, "memory"),
        (16, 1024 * 1024, "storage"),
    ] {
        let mut c = cfg();
        c.min_free_memory_mib = mem;
        c.min_free_storage_gib = disk;
        let r = rig_with("guard", sim_with(good_backup()), c, FakeBoot::default());
        let results = r.tester.run_round().unwrap();
        let t = only(&results);
        assert_eq!(t.outcome, TestOutcome::Skipped, "{what}");
        assert_eq!(t.stage, Some(TestStage::Guard), "{what}");
        assert!(
            r.sim.mutations().is_empty(),
            "{what}: {:?}",
            r.sim.mutations()
        );
        assert!(r.journal.scratch_vmids().is_empty());
        // Not tested, so the next round starts with it again.
        assert_eq!(read_results(&r.dir).cursor, None, "{what}");
    }
}

#[test]
fn a_scratch_vmid_taken_by_someone_elses_guest_is_skipped_reported_and_never_destroyed() {
    let sim = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web").disk_gib(8))
        .guest(GuestSeed::new(9900, "not-ours").running(true))
        .backup_seed(good_backup().of_guest(GuestSeed::new(100, "web").disk_gib(8)))
        .task_duration(Duration::from_millis(30))
        .start();
    let digest_before = sim.guest_digest(9900);
    let r = rig_with("taken", sim, cfg(), FakeBoot::default());
    let results = r.tester.run_round().unwrap();
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results[0].outcome, TestOutcome::Skipped);
    assert_eq!(results[0].stage, Some(TestStage::ScratchVmid));
    assert_eq!(results[0].scratch_vmid, Some(9900));
    assert_eq!(results[1].outcome, TestOutcome::Ok, "{results:?}");
    assert_eq!(results[1].scratch_vmid, Some(9901));
    assert!(mutations_on(&r.sim, 9900).is_empty());
    assert_eq!(r.sim.guest_status(9900).as_deref(), Some("running"));
    assert_eq!(r.sim.guest_digest(9900), digest_before);
    // Start-up cleanup does not touch it either: it carries no scratch provenance.
    assert!(r.tester.clean_up().unwrap().is_empty());
    assert!(mutations_on(&r.sim, 9900).is_empty());
}

#[test]
fn start_up_cleanup_destroys_tagged_scratch_guests_in_range_and_nothing_else() {
    let sim = ProxmoxSim::builder()
        .guest(GuestSeed::new(9900, "scratch-left-behind").running(true))
        .guest(GuestSeed::new(9901, "untagged"))
        .guest(GuestSeed::new(500, "tagged-but-out-of-range"))
        .task_duration(Duration::from_millis(30))
        .start();
    let r = rig_with("cleanup", sim, cfg(), FakeBoot::default());
    let now = SystemClock.now();
    r.journal.tag_scratch(9900, now).unwrap();
    r.journal.tag_scratch(9905, now).unwrap(); // tagged, never created
    r.journal.tag_scratch(500, now).unwrap();
    r.tester.clean_up().unwrap();
    let ids = r.sim.guest_ids();
    assert!(!ids.contains(&9900), "the scratch guest was destroyed");
    assert!(ids.contains(&9901) && ids.contains(&500), "{ids:?}");
    assert!(mutations_on(&r.sim, 9901).is_empty());
    assert!(mutations_on(&r.sim, 500).is_empty());
    assert_eq!(r.journal.scratch_vmids(), [500], "out of range: left alone");
}

#[test]
fn a_scratch_claim_from_outside_changes_nothing() {
    let sim = ProxmoxSim::builder()
        .guest(GuestSeed::new(9902, "customer"))
        .start();
    let r = rig_with("claim", sim, cfg(), FakeBoot::default());
    // A destroy that claims scratch provenance in its params is still destructive.
    let mut intent = Intent::new(OpClass::GuestDestroy, "pve-a", Some("9902".into()));
    for (k, v) in [
        ("scratch", "1"),
        ("provenance", "scratch"),
        ("txn", "scratch"),
    ] {
        intent.params.insert(k.into(), v.into());
    }
    let d = r.gate.authorize(
        &intent,
        None,
        &GuestNow::Present {
            digest: r.sim.guest_digest(9902),
            protected: false,
            running: false,
        },
    );
    assert_eq!(d.refusal(), Some(&Refusal::PendingSignature));
    // A desired-state document from the hub cannot say "scratch" at all.
    let doc = br#"{"generation": 3, "guests": [{"vmid": 9902, "scratch": true}]}"#;
    assert!(DesiredState::from_json(doc).is_err());
    // Nothing journaled it as scratch, so start-up cleanup leaves it.
    r.tester.clean_up().unwrap();
    assert!(r.sim.mutations().is_empty());
    assert!(r.sim.guest_ids().contains(&9902));
}

#[test]
fn rounds_go_round_robin_from_the_durable_cursor() {
    let sim = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "a").disk_gib(4))
        .guest(GuestSeed::new(101, "b").disk_gib(4))
        .backup_seed(good_backup().of_guest(GuestSeed::new(100, "a").disk_gib(4)))
        .backup_seed(
            BackupSeed::vzdump(101, "2024_05_01-11_00_00")
                .of_guest(GuestSeed::new(101, "b").disk_gib(4)),
        )
        .backup_seed(
            BackupSeed::vzdump(101, "2024_05_02-11_00_00")
                .of_guest(GuestSeed::new(101, "b").disk_gib(4)),
        )
        .task_duration(Duration::from_millis(30))
        .start();
    let dir = common::tempdir("restore-test", "cursor");
    let r = rig_in(&dir, sim, cfg(), FakeBoot::default());
    let first = r.tester.run_round().unwrap();
    let order: Vec<u32> = first.iter().map(|t| t.vmid).collect();
    assert_eq!(order, [100, 101]);
    // The newest of 101's two backups.
    assert!(first[1].backup_volid.contains("2024_05_02"), "{first:?}");
    assert_eq!(read_results(&dir).cursor, Some(101));
    // A round cut short after 100 (the cursor on disk says so): a restarted agent goes
    // on with 101, then wraps around.
    let path = dir.join(felhom_agent::reconcile::RESTORE_TESTS_FILE);
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["cursor"] = serde_json::json!(100);
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    let Rig { sim, .. } = r;
    let r2 = rig_in(&dir, sim, cfg(), FakeBoot::default());
    let second = r2.tester.run_round().unwrap();
    assert_eq!(
        second.iter().map(|t| t.vmid).collect::<Vec<_>>(),
        [101, 100]
    );
}

/// The hub's `blocked`, as the engine reads it.
struct Held(bool);

impl felhom_agent::reconcile::Pacing for Held {
    fn interval(&self) -> Option<Duration> {
        None
    }
    fn generation(&self) -> u64 {
        0
    }
    fn held(&self) -> bool {
        self.0
    }
}

#[test]
fn a_host_the_hub_blocks_runs_no_restore_test_and_cleans_nothing_up() {
    let sim = sim_with(good_backup());
    sim.add_guest(GuestSeed::new(9903, "scratch-left-behind"));
    let dir = common::tempdir("restore-test", "held");
    let r = rig_in(&dir, sim, cfg(), FakeBoot::default());
    r.journal.tag_scratch(9903, SystemClock.now()).unwrap();
    let held = Arc::new(
        RestoreTester::new(
            "pve-a".into(),
            common::pinned_client(&r.sim),
            Arc::clone(&r.journal),
            Arc::clone(&r.gate),
            Queue::new(1),
            Arc::new(RestoreResults::open(&dir, Arc::new(OsIo))),
            Arc::new(FakeBoot::default()),
            cfg(),
            Shutdown::new(),
            Arc::new(SystemClock),
        )
        .with_hold(Arc::new(Held(true))),
    );
    assert!(held.clean_up().unwrap().is_empty());
    assert!(held.run_round().unwrap().is_empty());
    assert!(r.sim.mutations().is_empty(), "{:?}", r.sim.mutations());
    assert_eq!(r.journal.scratch_vmids(), [9903]);
}

#[test]
fn max_parallel_tests_run_side_by_side_in_distinct_scratch_vmids() {
    let seed = |vmid: u32, name: &str| GuestSeed::new(vmid, name).disk_gib(4);
    let sim = ProxmoxSim::builder()
        .guest(seed(100, "a"))
        .guest(seed(101, "b"))
        .guest(seed(102, "c"))
        .backup_seed(good_backup().of_guest(seed(100, "a")))
        .backup_seed(BackupSeed::vzdump(101, "2024_05_01-11_00_00").of_guest(seed(101, "b")))
        .backup_seed(BackupSeed::vzdump(102, "2024_05_01-12_00_00").of_guest(seed(102, "c")))
        .task_duration(Duration::from_millis(30))
        .start();
    let mut c = cfg();
    c.max_parallel = 2;
    let r = rig_with("parallel", sim, c, FakeBoot::default());
    let results = r.tester.run_round().unwrap();
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(
        results.iter().all(|t| t.outcome == TestOutcome::Ok),
        "{results:?}"
    );
    // The first batch of two took two scratch vmids; the third reused the first.
    let scratch: Vec<_> = results.iter().map(|t| t.scratch_vmid.unwrap()).collect();
    assert_ne!(scratch[0], scratch[1]);
    assert!(
        scratch.iter().all(|v| (9900..=9901).contains(v)),
        "{scratch:?}"
    );
    assert!(r.sim.guest_ids().iter().all(|v| *v < 9900));
    assert!(r.journal.scratch_vmids().is_empty());
}
