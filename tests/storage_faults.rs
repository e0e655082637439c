//! Storage faults under the three durable files (journal, nonce store, audit log).
//!
//! * The fault-injecting [`FaultyIo`] fails the N-th write or fsync, once or for good:
//!   the append that hit it is `Fatal`, every later one `Poisoned` (never retried), and
//!   after a restart every record that was acknowledged is on disk, in order, with at
//!   most the failed record after it (a half-written one is cut as a torn tail).
//! * No destructive op runs on a journal it could not write, nor on an audit log that
//!   could not record the gate's decision: the Proxmox simulator sees no DELETE, the
//!   restart resolves what was left, and the signed op's replay is refused.
//! * A real full file system (a 256 KiB tmpfs, or a loopback ext4 where tmpfs cannot
//!   be mounted; skipped with a printed reason where neither can): the stores return
//!   errors, claim nothing that is not on disk, and replay clean once space returns.
//! * With the `fault-points` feature, the real binary whose N-th fsync fails exits
//!   non-zero, and its restart replays clean and sends nothing twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::CountingExecutor;
use common::pinned_client as client;
use common::sign::{destroy_blob, signer, ssh_keygen_sign};

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use felhom_agent::authz::{
    AuthzConfig, AuthzError, FileNonceStore, Freshness, NonceStore, NonceStoreError, Verifier,
};
use felhom_agent::base::Shutdown;
use felhom_agent::base::{Clock, SystemClock, Timestamp};
use felhom_agent::reconcile::AuditRecord as AuditEntry;
use felhom_agent::reconcile::Queue;
use felhom_agent::reconcile::recover;
use felhom_agent::reconcile::{AuditError, AuditLog};
use felhom_agent::reconcile::{DestructiveExecutor, JobError, JobOutcome, SignedJobs};
use felhom_agent::reconcile::{Gate, Refusal, SignedOp};
use felhom_agent::reconcile::{Intent, OpClass};
use felhom_agent::reconcile::{Journal, JournalError, JournalRecord, OpState};
use felhom_agent::store::{FaultOp, FaultyIo, Io, OsIo, Store, StoreError};
use felhom_sim::{GuestSeed, ProxmoxSim};
use serde_json::Value;

fn tempdir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "felhom-sf-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
    d
}

/// One of the three durable files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Journal,
    Nonces,
    Audit,
}

const KINDS: [Kind; 3] = [Kind::Journal, Kind::Nonces, Kind::Audit];

enum Opened {
    Journal(Box<Journal>),
    Nonces(FileNonceStore),
    Audit(AuditLog),
}

/// How an append failed, as far as durability goes.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// This append's write or fsync failed; `os` is the OS error code, if any.
    Fatal { os: Option<i32> },
    /// An earlier failure poisoned the store.
    Poisoned,
    /// Anything else (a test bug, or a store answering in an unexpected way).
    Other(String),
}

fn failure(e: &StoreError) -> Failure {
    match e {
        StoreError::Fatal { source, .. } => Failure::Fatal {
            os: source.raw_os_error(),
        },
        StoreError::Poisoned { .. } => Failure::Poisoned,
        other => Failure::Other(other.to_string()),
    }
}

/// The record key of append number `i`.
fn key(i: u64) -> String {
    format!("rec-{i}")
}

impl Kind {
    fn file(self) -> &'static str {
        match self {
            Kind::Journal => "journal.log",
            Kind::Nonces => "nonces.log",
            Kind::Audit => "audit.log",
        }
    }

    fn open(self, path: &Path, io: Arc<dyn Io>) -> Result<Opened, String> {
        Ok(match self {
            Kind::Journal => Opened::Journal(Box::new(
                Journal::open_with(path, io).map_err(|e| e.to_string())?,
            )),
            Kind::Nonces => {
                Opened::Nonces(FileNonceStore::open_with(path, 120, io).map_err(|e| e.to_string())?)
            }
            Kind::Audit => Opened::Audit(AuditLog::open_with(path, io).map_err(|e| e.to_string())?),
        })
    }

    /// The key of one replayed record's data.
    fn key_of(self, data: &Value) -> Option<String> {
        let field = match self {
            Kind::Journal => "op_id",
            Kind::Nonces => "nonce",
            Kind::Audit => "reason",
        };
        data[field].as_str().map(str::to_owned)
    }

    /// Restarts on `path` with the real file system: the keys replayed, in order.
    fn replay(self, path: &Path) -> Vec<String> {
        let mut keys = Vec::new();
        Store::open(path, |_, data| {
            let v: Value = serde_json::from_slice(data).map_err(|e| e.to_string())?;
            keys.extend(self.key_of(&v));
            Ok(())
        })
        .unwrap();
        keys
    }

    /// Writes and fsyncs the one-time cost of opening a fresh store of this kind.
    fn open_cost(self, op: FaultOp) -> u64 {
        let dir = tempdir("probe");
        let probe = Arc::new(FaultyIo::new(op, u64::MAX, false));
        self.open(&dir.join(self.file()), Arc::clone(&probe) as Arc<dyn Io>)
            .unwrap();
        let _ = fs::remove_dir_all(&dir);
        match op {
            FaultOp::Write => probe.counts().0,
            FaultOp::Sync => probe.counts().1,
        }
    }
}

impl Opened {
    fn append(&self, i: u64) -> Result<(), Failure> {
        let at = Timestamp(1_800_000_000);
        match self {
            Opened::Journal(j) => {
                let rec = JournalRecord::started(key(i), 100, OpClass::Start, at);
                j.append(&rec).map_err(|e| match e {
                    JournalError::Store(s) => failure(&s),
                    other => Failure::Other(other.to_string()),
                })
            }
            Opened::Nonces(n) => match n.seen_or_record(&key(i), Timestamp(2_000_000_000), None) {
                Ok(Freshness::Fresh) => Ok(()),
                Ok(Freshness::Seen) => Err(Failure::Other("a new nonce reads as seen".into())),
                Err(NonceStoreError::Store(s)) => Err(failure(&s)),
                Err(other) => Err(Failure::Other(other.to_string())),
            },
            Opened::Audit(a) => {
                let entry =
                    AuditEntry::new(at, "start", Some("100".into()), "allowed", key(i), None);
                a.record(&entry).map_err(|e| match e {
                    AuditError::Store(s) => failure(&s),
                    other => Failure::Other(other.to_string()),
                })
            }
        }
    }
}

/// Appends `1..=n` until one fails; returns the acknowledged indices and the failures
/// in order (checks that nothing is acknowledged after the first failure).
fn append_until_failure(store: &Opened, n: u64) -> (Vec<u64>, Vec<Failure>) {
    let mut acked = Vec::new();
    let mut failures = Vec::new();
    for i in 1..=n {
        match store.append(i) {
            Ok(()) => {
                assert!(
                    failures.is_empty(),
                    "append {i} acknowledged after a failure"
                );
                acked.push(i);
            }
            Err(f) => failures.push(f),
        }
    }
    (acked, failures)
}

/// The N-th write or fsync fails (the 4th append's): that append is fatal, every later
/// one is refused as poisoned; the restart finds every acknowledged record, in order,
/// with at most the failed one after them; the store then works again.
fn injected_fault(kind: Kind, op: FaultOp, for_good: bool) {
    const FAILING_APPEND: u64 = 4;
    let dir = tempdir("inject");
    let path = dir.join(kind.file());
    let at = kind.open_cost(op) + FAILING_APPEND;
    let io = Arc::new(FaultyIo::new(op, at, for_good));
    let store = kind.open(&path, Arc::clone(&io) as Arc<dyn Io>).unwrap();
    let (acked, failures) = append_until_failure(&store, 8);
    let what = format!("{kind:?} {op:?} for_good={for_good}");
    assert_eq!(acked, (1..FAILING_APPEND).collect::<Vec<_>>(), "{what}");
    assert!(
        matches!(failures[0], Failure::Fatal { .. }),
        "{what}: {failures:?}"
    );
    assert!(
        failures[1..].iter().all(|f| *f == Failure::Poisoned),
        "never retried: {what}: {failures:?}"
    );
    if kind == Kind::Nonces
        && let Opened::Nonces(n) = &store
    {
        assert!(
            n.unavailable().is_some(),
            "the gate sees the nonce store down"
        );
    }
    drop(store);

    if for_good {
        // The fault is still there: a restart on it fails or keeps failing, never
        // claims an append it could not make durable.
        match (op, kind.open(&path, Arc::clone(&io) as Arc<dyn Io>)) {
            // Cutting the torn tail needs a write to `FILE.broken`.
            (FaultOp::Write, reopened) => assert!(reopened.is_err(), "{what}"),
            (FaultOp::Sync, reopened) => assert!(
                matches!(reopened.unwrap().append(50), Err(Failure::Fatal { .. })),
                "{what}: an append on a dead disk must fail"
            ),
        }
    }

    let replayed = kind.replay(&path);
    let want: Vec<String> = acked.iter().map(|i| key(*i)).collect();
    assert_eq!(replayed[..want.len()], want[..], "{what}");
    match op {
        // Half the line was written: a torn tail, cut and kept aside.
        FaultOp::Write => {
            assert_eq!(replayed, want, "{what}");
            let broken = fs::read(dir.join(format!("{}.broken", kind.file()))).unwrap();
            assert!(!broken.is_empty() && !broken.ends_with(b"\n"), "{what}");
        }
        // Written but not known durable: it may be there (and so may the append tried
        // on the dead disk); nothing else may.
        FaultOp::Sync => {
            let unacked = [key(FAILING_APPEND), key(50)];
            let extra = &replayed[want.len()..];
            assert!(
                extra.len() <= 2 && extra.iter().zip(&unacked).all(|(a, b)| a == b),
                "{what}: {replayed:?}"
            );
        }
    }
    let store = kind.open(&path, Arc::new(OsIo)).unwrap();
    store.append(100).unwrap();
    drop(store);
    assert_eq!(kind.replay(&path).last(), Some(&key(100)), "{what}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_write_or_fsync_poisons_each_store_and_the_restart_replays_what_was_acknowledged() {
    for kind in KINDS {
        for op in [FaultOp::Write, FaultOp::Sync] {
            for for_good in [false, true] {
                injected_fault(kind, op, for_good);
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// No destructive op on a journal (or audit log) that could not be written.

/// A destroy of `guest` signed for its config as `sim` has it now.
fn destroy_op(sim: &ProxmoxSim, dir: &Path, guest: u32) -> (Intent, SignedOp) {
    let digest = sim.guest_digest(guest).unwrap_or_else(|| "0".repeat(40));
    let blob = destroy_blob(
        "pve-a",
        &guest.to_string(),
        &digest,
        SystemClock.now().unix(),
    );
    let signature = ssh_keygen_sign(dir, &blob);
    let intent = felhom_agent::app::unverified_intent(&blob).unwrap();
    (intent, SignedOp::new(blob, signature))
}

/// A gate and signed jobs on the files in `dir`, the journal and audit log on the
/// given I/O, the nonce store on the real file system.
struct Rig {
    gate: Arc<Gate>,
    jobs: SignedJobs,
    exec: Arc<CountingExecutor>,
}

fn rig(sim: &ProxmoxSim, dir: &Path, journal_io: Arc<dyn Io>, audit_io: Arc<dyn Io>) -> Rig {
    let cfg = AuthzConfig {
        signers: vec![signer()],
        ..AuthzConfig::default()
    };
    let nonces = Arc::new(FileNonceStore::open(dir.join("nonces.log"), 300).unwrap());
    let verifier = Verifier::from_config(&cfg, "pve-a", Arc::new(SystemClock), nonces).unwrap();
    let journal = Arc::new(Journal::open_with(&dir.join("journal.log"), journal_io).unwrap());
    let audit = Arc::new(AuditLog::open_with(&dir.join("audit.log"), audit_io).unwrap());
    let gate = Arc::new(Gate::new("pve-a".into(), Some(verifier), journal, audit));
    let jobs = SignedJobs::new(Arc::clone(&gate), Arc::new(Queue::new(2)));
    let exec = common::counting_executor(sim);
    Rig { gate, jobs, exec }
}

impl Rig {
    fn run(&self, intent: &Intent, op: &SignedOp) -> Result<JobOutcome, JobError> {
        let exec: Arc<dyn DestructiveExecutor> = self.exec.clone();
        self.jobs.run_signed_job(intent, op, exec)
    }
}

fn deletes(sim: &ProxmoxSim) -> usize {
    sim.mutations()
        .iter()
        .filter(|m| m.method == "DELETE")
        .count()
}

fn sim() -> ProxmoxSim {
    ProxmoxSim::builder()
        .guest(GuestSeed::new(105, "customer-db"))
        .task_duration(Duration::from_millis(20))
        .start()
}

/// How the journal fails under a signed destroy.
#[derive(Debug, Clone, Copy)]
enum JournalFault {
    /// The `started` record's write (half of it reaches the file).
    StartedWrite,
    /// The `started` record's fsync (the line is in the file, not known durable).
    StartedSync,
    /// An earlier append already failed: the journal is poisoned before the job.
    AlreadyPoisoned,
}

fn signed_destroy_on_a_failing_journal(fault: JournalFault) {
    let sim = sim();
    let dir = tempdir("jfail");
    let (op, at) = match fault {
        JournalFault::StartedWrite => (FaultOp::Write, 1),
        JournalFault::StartedSync | JournalFault::AlreadyPoisoned => (FaultOp::Sync, 1),
    };
    let io = Arc::new(FaultyIo::new(op, Kind::Journal.open_cost(op) + at, false));
    let r = rig(&sim, &dir, io as Arc<dyn Io>, Arc::new(OsIo));
    if let JournalFault::AlreadyPoisoned = fault {
        let rec = JournalRecord::started("start-100-1", 100, OpClass::Start, SystemClock.now());
        assert!(
            r.gate.journal().append(&rec).is_err(),
            "the fault hits here"
        );
    }
    let (intent, signed) = destroy_op(&sim, &dir, 105);
    let res = r.run(&intent, &signed);
    assert!(
        matches!(res, Err(JobError::Journal(_))),
        "{fault:?}: {res:?}"
    );
    assert_eq!(r.exec.calls(), 0, "{fault:?}");
    assert_eq!(deletes(&sim), 0, "{fault:?}: no DELETE reached Proxmox");
    assert!(sim.guest_ids().contains(&105));
    drop(r);

    // Restart: Recover resolves whatever reached the file, sending nothing.
    let journal = Journal::open(&dir.join("journal.log")).unwrap();
    let shutdown = Shutdown::new();
    let report = recover(
        &journal,
        &client(&sim),
        &common::op_wait(),
        &shutdown,
        &SystemClock,
    )
    .unwrap();
    assert!(report.succeeded.is_empty(), "{report:?}");
    assert!(journal.in_flight().is_empty(), "{report:?}");
    for id in &report.failed {
        assert_eq!(journal.latest(id).unwrap().state, OpState::Failed);
    }
    drop(journal);
    // The verifier burnt the nonce before the journal failed: the same signed op is
    // refused as a replay; a fresh signature is needed.
    let r = rig(&sim, &dir, Arc::new(OsIo), Arc::new(OsIo));
    match r.run(&intent, &signed) {
        Ok(JobOutcome::Refused(Refusal::Rejected(AuthzError::Replay(_)))) => {}
        other => panic!("{fault:?}: expected a replay refusal, got {other:?}"),
    }
    assert_eq!(deletes(&sim), 0, "{fault:?}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn no_destroy_runs_when_the_started_record_cannot_be_written() {
    signed_destroy_on_a_failing_journal(JournalFault::StartedWrite);
}

#[test]
fn no_destroy_runs_when_the_started_record_cannot_be_made_durable() {
    signed_destroy_on_a_failing_journal(JournalFault::StartedSync);
}

#[test]
fn no_destroy_runs_on_a_journal_poisoned_earlier() {
    signed_destroy_on_a_failing_journal(JournalFault::AlreadyPoisoned);
}

#[test]
fn no_destroy_runs_when_the_gate_cannot_audit_its_decision() {
    let sim = sim();
    let dir = tempdir("afail");
    let io = Arc::new(FaultyIo::new(
        FaultOp::Sync,
        Kind::Audit.open_cost(FaultOp::Sync) + 1,
        false,
    ));
    let r = rig(&sim, &dir, Arc::new(OsIo), io as Arc<dyn Io>);
    let (intent, signed) = destroy_op(&sim, &dir, 105);
    assert_eq!(
        r.run(&intent, &signed).unwrap(),
        JobOutcome::Refused(Refusal::StateDamaged)
    );
    assert_eq!(r.exec.calls(), 0);
    assert_eq!(deletes(&sim), 0);
    assert!(r.gate.journal().in_flight().is_empty(), "nothing journaled");
    let _ = fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------
// A real full file system.

/// A small file system mounted for one test; unmounted (and its directory removed) on
/// drop.
struct SmallFs {
    dir: PathBuf,
    image: Option<PathBuf>,
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = fs::remove_dir(&self.dir);
        if let Some(img) = &self.image {
            let _ = fs::remove_file(img);
        }
    }
}

fn run_quiet(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Mounts a 256 KiB tmpfs, or failing that a 2 MiB loopback ext4; `Err` says why
/// neither could be mounted.
fn small_fs(name: &str) -> Result<SmallFs, String> {
    let dir = std::env::temp_dir().join(format!("felhom-sf-mnt-{name}-{}", std::process::id()));
    let _ = Command::new("umount").arg(&dir).output();
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let tmpfs = run_quiet(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
            .arg(&dir),
    );
    let Err(tmpfs_err) = tmpfs else {
        return Ok(SmallFs { dir, image: None });
    };
    let image = dir.with_extension("img");
    let ext4 = (|| {
        let f = fs::File::create(&image).map_err(|e| e.to_string())?;
        f.set_len(2 * 1024 * 1024).map_err(|e| e.to_string())?;
        run_quiet(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
        run_quiet(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&dir),
        )
    })();
    match ext4 {
        Ok(()) => Ok(SmallFs {
            dir,
            image: Some(image),
        }),
        Err(ext4_err) => {
            let _ = fs::remove_file(&image);
            let _ = fs::remove_dir(&dir);
            Err(format!("tmpfs: {tmpfs_err}; loopback ext4: {ext4_err}"))
        }
    }
}

/// Fills the file system holding `dir` with a file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&[0]).is_ok() {}
    let _ = f.sync_all();
    path
}

const ENOSPC: i32 = 28;

#[test]
fn a_full_file_system_fails_appends_without_claiming_them_and_replays_clean_after() {
    let mnt = match small_fs("full") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: no small file system could be mounted here: {why}");
            return;
        }
    };
    for kind in KINDS {
        let path = mnt.dir.join(kind.file());
        let store = kind.open(&path, Arc::new(OsIo)).unwrap();
        let early = [901, 902, 903];
        for i in early {
            store.append(i).unwrap();
        }
        let filler = fill(&mnt.dir);

        // A new store on the full disk cannot even be created.
        let fresh = mnt.dir.join(format!("fresh-{}", kind.file()));
        assert!(
            kind.open(&fresh, Arc::new(OsIo)).is_err(),
            "{kind:?}: a store opened on a full disk"
        );

        // Appends go on while the file's last page has room, then fail for good.
        let (acked, failures) = append_until_failure(&store, 400);
        let what = format!("{kind:?}: acked {} then {failures:?}", acked.len());
        assert!(!failures.is_empty(), "{what}: the disk never filled");
        assert_eq!(failures[0], Failure::Fatal { os: Some(ENOSPC) }, "{what}");
        assert!(
            failures[1..].iter().all(|f| *f == Failure::Poisoned),
            "{what}"
        );
        drop(store);

        // Space returns; the restart replays exactly what was acknowledged.
        fs::remove_file(&filler).unwrap();
        let _ = fs::remove_file(&fresh);
        let replayed = kind.replay(&path);
        let want: Vec<String> = early.iter().chain(&acked).map(|i| key(*i)).collect();
        assert_eq!(replayed, want, "{what}");
        let store = kind.open(&path, Arc::new(OsIo)).unwrap();
        store.append(1000).unwrap();
        drop(store);
        assert_eq!(kind.replay(&path).last(), Some(&key(1000)), "{kind:?}");
        felhom_agent::store::verify_file(&path).unwrap();
        for f in fs::read_dir(&mnt.dir).unwrap() {
            let _ = fs::remove_file(f.unwrap().path());
        }
    }
}

// ---------------------------------------------------------------------------------
// The real binary with an fsync that fails.

#[cfg(feature = "fault-points")]
mod binary {
    use super::*;
    use common::agent::{Agent, fast_hub, write_agent_config};
    use common::logfmt::Event;
    use common::sign::authz_json;

    use felhom_agent::reconcile::JournalView;
    use felhom_agent::store::{FAIL_SYNC_AT_ENV, SECOND_MS_ENV};
    use felhom_sim::HubSim;
    use serde_json::json;

    struct Lab {
        dir: PathBuf,
        pve: ProxmoxSim,
        hub: HubSim,
        /// The signed destroy of guest 105 queued at the hub, when there is one.
        signed: Option<(Intent, SignedOp)>,
    }

    impl Drop for Lab {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    impl Lab {
        /// Guest 100 stopped and desired running; no signers, so the only stores are
        /// the journal and the audit log and their fsyncs come in a fixed order.
        fn new() -> Lab {
            Lab::build(false)
        }

        /// Signers configured, nothing desired, and a signed destroy of guest 105
        /// queued at the hub: the nonce store takes part.
        fn with_signed_destroy() -> Lab {
            Lab::build(true)
        }

        fn build(signed: bool) -> Lab {
            let dir = tempdir("bin");
            let pve = ProxmoxSim::builder()
                .guest(GuestSeed::new(100, "web"))
                .guest(GuestSeed::new(105, "customer-db"))
                .task_duration(Duration::from_millis(100))
                .start();
            // A signed op queued after the first report is announced by the next one.
            let hub = fast_hub();
            write_agent_config(&dir, &pve, &hub, |c| {
                c["reconcile"] = json!({"desired_file": dir.join("desired.json")});
                if signed {
                    c["authz"] = authz_json();
                }
            });
            let desired = if signed {
                json!({"generation": 1, "guests": []})
            } else {
                json!({"generation": 1, "guests": [{"vmid": 100, "run": "running"}]})
            };
            fs::write(dir.join("desired.json"), desired.to_string()).unwrap();
            let signed = signed.then(|| destroy_op(&pve, &dir, 105));
            Lab {
                dir,
                pve,
                hub,
                signed,
            }
        }

        fn queue_signed_op(&self) {
            if let Some((_, op)) = &self.signed {
                self.hub.queue_signed_op(&op.blob, Some(&op.signature));
            }
        }

        fn audit_has(&self, decision: &str) -> bool {
            fs::read_to_string(self.dir.join("state").join("audit.log"))
                .unwrap_or_default()
                .contains(&format!("\"decision\":\"{decision}\""))
        }

        /// Starts the agent, its stderr appended to the lab's one log; with
        /// `fail_sync_at`, its fsync number N (`N` or `N:forever`) fails.
        fn start(&self, fail_sync_at: Option<&str>) -> Agent {
            let mut env = vec![(SECOND_MS_ENV, "10")];
            env.extend(fail_sync_at.map(|at| (FAIL_SYNC_AT_ENV, at)));
            Agent::spawn(
                &["run"],
                &self.dir.join("agent.json"),
                &self.dir.join("stderr.log"),
                &env,
            )
        }

        fn journal(&self) -> Option<JournalView> {
            Journal::open_read_only(&self.dir.join("state").join("journal.log")).ok()
        }

        fn starts(&self) -> usize {
            crate::common::sent(&self.pve, "POST", "/lxc/100/status/start")
        }

        /// Restarts without the fault: the guest ends up running (or, with the
        /// signed destroy, its replay is refused) with nothing in flight, SIGTERM exits
        /// 0, nothing was sent twice, and the files replay clean.
        fn restart_and_check(&self) {
            self.queue_signed_op();
            let mut agent = self.start(None);
            let done = |lab: &Lab| match lab.signed {
                None => lab.pve.guest_status(100).as_deref() == Some("running"),
                Some(_) => lab.audit_has("replay"),
            };
            agent.wait_until("the restart running, done, nothing in flight", |a| {
                !a.events("daemon_running").is_empty()
                    && done(self)
                    && self.journal().is_some_and(|j| j.in_flight().is_empty())
            });
            agent.stop();
            if self.signed.is_none() {
                assert_eq!(self.starts(), 1, "the start was sent once, ever");
            } else {
                assert_eq!(deletes(&self.pve), 0, "the burnt op never ran");
                assert!(self.pve.guest_ids().contains(&105));
            }
            let view = self.journal().unwrap();
            assert_eq!(view.damaged(), None);
            assert!(view.in_flight().is_empty());
            let out = Command::new(env!("CARGO_BIN_EXE_felhom-agent"))
                .args(["selftest", "offline", "--config"])
                .arg(self.dir.join("agent.json"))
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }

    /// The fsyncs of a fresh start, in order: journal file + directory (1, 2), audit
    /// log file + directory (3, 4), the gate's audit entry (5), the `started` record
    /// (6), the `task_running` record (7).
    const STARTED_SYNC: u64 = 6;
    const TASK_RUNNING_SYNC: u64 = 7;

    /// Whether `agent` logged that the store in `file` failed an fsync and is poisoned.
    fn poisoned_by_fsync(agent: &Agent, file: &str) -> bool {
        agent
            .events("store_poisoned")
            .iter()
            .any(|e: &Event| e.field("path").ends_with(&format!("/{file}")) && e.is("op", "fsync"))
    }

    fn failed_sync_exits_non_zero(at: &str, sent_before_exit: usize) {
        let lab = Lab::new();
        let mut agent = lab.start(Some(at));
        let status = agent.wait_exit();
        let log = agent.log();
        assert_eq!(status.code(), Some(1), "exit 1, not a crash:\n{log}");
        assert!(poisoned_by_fsync(&agent, "journal.log"), "{log}");
        assert_eq!(lab.starts(), sent_before_exit, "{log}");
        lab.restart_and_check();
    }

    #[test]
    fn a_failed_fsync_of_the_started_record_exits_1_before_anything_is_sent() {
        failed_sync_exits_non_zero(&format!("{STARTED_SYNC}:forever"), 0);
    }

    #[test]
    fn a_failed_fsync_of_the_upid_exits_1_and_the_restart_resolves_the_task_once() {
        failed_sync_exits_non_zero(&TASK_RUNNING_SYNC.to_string(), 1);
    }

    /// Sync 5 is the gate's audit entry for the start: it fails, the audit log is
    /// poisoned, and the daemon stops with exit 1 naming it (whether the benign start
    /// got out first is a race, so only "at most once" is asserted); the restart
    /// replays every file clean and the start is sent once in all.
    #[test]
    fn a_failed_fsync_of_the_audit_log_exits_1_and_the_restart_replays_clean() {
        let lab = Lab::new();
        let mut agent = lab.start(Some("5"));
        let status = agent.wait_exit();
        let log = agent.log();
        assert_eq!(status.code(), Some(1), "exit 1, not a crash:\n{log}");
        assert!(
            poisoned_by_fsync(&agent, "audit.log"),
            "the audit entry's fsync failed:\n{log}"
        );
        assert!(
            agent
                .events("store_failed")
                .iter()
                .any(|e| e.field("error").contains("/audit.log")),
            "the daemon names the poisoned audit log:\n{log}"
        );
        assert!(lab.starts() <= 1, "{log}");
        lab.restart_and_check();
    }

    /// With signers, syncs 1 to 6 open the journal, the audit log and the nonce store,
    /// and 7 to 9 are the nonce compaction at start; the signed op is queued only after
    /// it, so the 10th is the fsync of its nonce. It fails: the verifier refuses the op
    /// (a nonce store that cannot answer reads as a replay), the daemon notices the
    /// poisoned store and exits 1, and the destroy never runs.
    #[test]
    fn a_failed_fsync_of_a_nonce_exits_1_and_nothing_is_destroyed() {
        let lab = Lab::with_signed_destroy();
        let mut agent = lab.start(Some("10"));
        agent.wait_for_event("nonce_store_compacted", |_| true);
        lab.queue_signed_op();
        let status = agent.wait_exit();
        let log = agent.log();
        assert_eq!(status.code(), Some(1), "exit 1, not a crash:\n{log}");
        assert!(
            poisoned_by_fsync(&agent, "nonces.log"),
            "the nonce's fsync failed:\n{log}"
        );
        assert_eq!(
            agent.events("store_failed").len(),
            1,
            "the daemon stops on the poisoned nonce store:\n{log}"
        );
        assert_eq!(deletes(&lab.pve), 0, "{log}");
        assert!(!lab.audit_has("allowed"), "never authorized:\n{log}");
        lab.restart_and_check();
    }
}
