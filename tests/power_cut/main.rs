//! Power-cut crash consistency: the power goes at every numbered point (each write, fsync,
//! directory fsync, create, rename, truncate and remove) of seven scenarios, in-process
//! against the Proxmox simulator, with every store on one [`PowerCutIo`] (the model of
//! ALICE, CrashMonkey and SQLite's crash-test VFS: what no fsync covered is lost, and a
//! creation or rename that no directory fsync covered is undone).
//!
//! Each scenario first runs uncut to count its points N; the power then goes after its
//! end. Then, for k in 1..=N and for each [`CutMode`] (all unsynced bytes lost, or half
//! of the latest unsynced write kept as a torn tail): fresh state, run with the cut at k,
//! apply the cut, and restart on what survived. The restart reopens every store on the
//! real file system, runs Recover and redelivers the signed op where there is one. It
//! must show that:
//! * every store file replays clean (a torn tail may be cut, nothing inside is damaged);
//! * nothing acknowledged is lost: every append that returned `Ok` is on disk, in order;
//!   across a compaction, every fact the store must keep still holds;
//! * no mutation is dispatched twice: the simulator's POST/PUT/DELETE requests, counted
//!   over both runs, show each intended change once and the signed destroy at most once,
//!   and Recover sends nothing;
//! * no signed op can be replayed: redelivered after the restart, and again, it never
//!   executes a second time.
//!
//! Proxmox's own state (its tasks, its guests) is taken to survive the cut.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod engine;
mod stores;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pinned_client as client;
use felhom_agent::authz::FileNonceStore;
use felhom_agent::base::{Clock, SystemClock, Timestamp};
use felhom_agent::proxmox::WaitOptions;
use felhom_agent::reconcile::AuditLog;
use felhom_agent::reconcile::Queue;
use felhom_agent::reconcile::{Journal, JournalRecord};
use felhom_agent::store::{CutMode, CutPoint, Io, PointOp, PowerCutIo, replay_bytes, verify_file};
use felhom_sim::ProxmoxSim;
use serde_json::Value;

const HOST: &str = "pve-a";
const JOURNAL: &str = "journal.log";
const AUDIT: &str = "audit.log";
const NONCES: &str = "nonces.log";

fn tempdir(name: &str) -> PathBuf {
    common::tempdir("pc", name)
}

fn fast_wait() -> WaitOptions {
    WaitOptions {
        initial: Duration::from_millis(5),
        cap: Duration::from_millis(20),
        timeout: Duration::from_secs(10),
    }
}

fn now() -> Timestamp {
    SystemClock.now()
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

// ---------------------------------------------------------------------------------
// The driver.

/// One scenario: a fresh world, the part under the cut, and the restart's checks.
trait Scenario {
    type World;
    /// The scenario's name in messages and the summary line.
    fn name(&self) -> &'static str;
    /// A fresh state directory (and simulator) with the scenario's starting state durable.
    fn world(&self) -> Self::World;
    /// The part under test, every store on `io`. Stops at the first error, as a machine
    /// without power does.
    fn run(&self, w: &mut Self::World, io: Arc<dyn Io>) -> Result<(), String>;
    /// Reads what the process saw, before the cut rewrites the disk.
    fn before_cut(&self, _w: &mut Self::World) {}
    /// Restarts on what survived the cut and checks it.
    fn restart_and_check(&self, w: Self::World, what: &str);
}

fn label(p: &CutPoint) -> String {
    let file = match p.op {
        PointOp::SyncDir => "<state dir>".into(),
        _ => p
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    format!("{:?} {file}", p.op)
}

fn labels(t: &[CutPoint]) -> Vec<String> {
    t.iter().map(label).collect()
}

/// Cuts `s` at every point in both modes, restarting and checking after each, and prints
/// the figures.
fn exercise<S: Scenario>(s: &S) {
    let clock = Instant::now();
    let mut w = s.world();
    let io = PowerCutIo::new(CutMode::LoseUnsynced);
    if let Err(e) = s.run(&mut w, Arc::new(io.clone())) {
        panic!("{}: the uncut run failed: {e}", s.name());
    }
    let trace = io.trace();
    s.before_cut(&mut w);
    io.apply_cut().unwrap();
    s.restart_and_check(w, &format!("{}: power lost after the end", s.name()));

    let n = trace.len() as u64;
    assert!(n > 0, "{}: no points", s.name());
    let mut by_op: BTreeMap<PointOp, u64> = BTreeMap::new();
    for p in &trace {
        *by_op.entry(p.op).or_default() += 1;
    }
    let (mut cuts, mut cuts_that_lost_state) = (0u64, 0u64);
    for mode in [CutMode::LoseUnsynced, CutMode::TornWrite] {
        for k in 1..=n {
            let what = format!(
                "{} {mode:?} cut at {k}/{n} ({})",
                s.name(),
                label(&trace[k as usize - 1])
            );
            let mut w = s.world();
            let io = PowerCutIo::cut_at(mode, k);
            let res = s.run(&mut w, Arc::new(io.clone()));
            assert!(io.is_cut(), "{what}: never reached ({res:?})");
            assert_eq!(
                labels(&io.trace()),
                labels(&trace[..k as usize]),
                "{what}: the points came in another order than in the uncut run"
            );
            s.before_cut(&mut w);
            if io.apply_cut().unwrap().files_changed > 0 {
                cuts_that_lost_state += 1;
            }
            cuts += 1;
            s.restart_and_check(w, &what);
        }
    }
    // Some cuts must lose something, or the model is not cutting anything.
    assert!(
        cuts_that_lost_state > 0,
        "{}: no cut lost anything",
        s.name()
    );
    let ops: Vec<String> = by_op.iter().map(|(op, c)| format!("{op:?}={c}")).collect();
    // Straight to stderr, past the test harness's capture, so CI shows the figures.
    let _ = writeln!(
        std::io::stderr(),
        "event=power_cut_summary scenario={} points={} ops={} modes=2 cuts={} cuts_that_lost_state={} secs={:.1}",
        s.name(),
        n,
        ops.join(","),
        cuts,
        cuts_that_lost_state,
        clock.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------
// Reading what is on disk.

/// The data of every record of the store file at `path` (none when it is missing),
/// asserting it replays without damage; a torn tail is allowed and not returned.
fn replay_clean(path: &Path, what: &str) -> Vec<Value> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("{what}: {}: {e}", path.display()),
    };
    let mut out = Vec::new();
    if let Err(d) = replay_bytes(&bytes, &mut |_, data| {
        out.push(serde_json::from_slice(data).map_err(err)?);
        Ok(())
    }) {
        panic!(
            "{what}: {} damaged at line {}: {}",
            path.display(),
            d.line,
            d.reason
        );
    }
    out
}

/// After the restart: every store file verifies with no torn tail left, and no
/// compaction temp file is lying around.
fn assert_files_clean(dir: &Path, what: &str) {
    for name in [JOURNAL, AUDIT, NONCES] {
        let path = dir.join(name);
        if path.exists() {
            let s = verify_file(&path).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(s.torn_bytes, 0, "{what}: {name} still has a torn tail");
        }
    }
    for e in fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".compact.tmp"),
            "{what}: {name} left behind"
        );
    }
}

/// Every acknowledged record (the first `acked` of what the process wrote) survived,
/// in order.
fn assert_acked_survived(name: &str, live: &[Value], acked: usize, survived: &[Value], what: &str) {
    assert!(
        survived.len() >= acked && survived[..acked] == live[..acked],
        "{what}: {name}: {acked} acknowledged record(s) written, the cut left {}:\nwritten:  {live:?}\nsurvived: {survived:?}",
        survived.len()
    );
}

// ---------------------------------------------------------------------------------
// The agent's pieces, assembled as the daemon assembles them.

/// The state directory, the simulator, and the stores a run opened on the cut I/O.
struct Lab {
    dir: PathBuf,
    sim: ProxmoxSim,
    journal: Option<Arc<Journal>>,
    audit: Option<Arc<AuditLog>>,
    nonces: Option<Arc<FileNonceStore>>,
    /// Per store file: what the process wrote and how many of those records were
    /// acknowledged (read before the cut).
    written: Vec<(&'static str, Vec<Value>, usize)>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    fn new(name: &str, sim: ProxmoxSim) -> Lab {
        Lab {
            dir: tempdir(name),
            sim,
            journal: None,
            audit: None,
            nonces: None,
            written: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Opens the journal and the audit log on `io`, as the daemon does first.
    fn open_journal_and_audit(&mut self, io: &Arc<dyn Io>) -> Result<(), String> {
        let journal = Journal::open_with(&self.path(JOURNAL), Arc::clone(io)).map_err(err)?;
        self.journal = Some(Arc::new(journal));
        let audit = AuditLog::open_with(&self.path(AUDIT), Arc::clone(io)).map_err(err)?;
        self.audit = Some(Arc::new(audit));
        Ok(())
    }

    /// Reads each store file as the process left it, and counts what it acknowledged:
    /// the in-memory state of each store moves only after an append returned `Ok`.
    fn read_written(&mut self) {
        let journal = replay_clean(&self.path(JOURNAL), "before the cut");
        let acked = match &self.journal {
            Some(j) => journal
                .iter()
                .enumerate()
                .filter(|(_, v)| v["kind"] == "op")
                .filter(|(_, v)| {
                    let r: JournalRecord = serde_json::from_value((*v).clone()).unwrap();
                    j.latest(&r.op_id).as_ref() == Some(&r)
                })
                .map(|(i, _)| i + 1)
                .max()
                .unwrap_or(0),
            None => 0,
        };
        self.written.push((JOURNAL, journal, acked));

        let audit = replay_clean(&self.path(AUDIT), "before the cut");
        let tail = self
            .audit
            .as_ref()
            .map(|a| a.tail(usize::MAX))
            .unwrap_or_default();
        let tail: Vec<Value> = tail
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect();
        assert_eq!(audit[..tail.len()], tail[..], "the audit log's own tail");
        self.written.push((AUDIT, audit, tail.len()));

        let nonces = replay_clean(&self.path(NONCES), "before the cut");
        let acked = self.nonces.as_ref().map_or(0, |n| n.len());
        self.written.push((NONCES, nonces, acked));
    }

    /// The restart's first look: each file replays clean and holds what was
    /// acknowledged. Drops the dead run's stores.
    fn check_survivors(&mut self, what: &str) {
        self.journal = None;
        self.audit = None;
        self.nonces = None;
        for (name, live, acked) in std::mem::take(&mut self.written) {
            let survived = replay_clean(&self.path(name), what);
            assert_acked_survived(name, &live, acked, &survived, what);
        }
    }

    /// Reopens the journal and the audit log on the real file system and runs Recover,
    /// which must send nothing and leave nothing in flight.
    fn restart(&self, what: &str) -> (Arc<Journal>, Arc<AuditLog>) {
        let journal = Arc::new(Journal::open(&self.path(JOURNAL)).unwrap());
        assert_eq!(journal.damaged(), None, "{what}");
        let audit = Arc::new(AuditLog::open(&self.path(AUDIT)).unwrap());
        let client = client(&self.sim);
        let report =
            common::recover_sending_nothing(&journal, &self.sim, &client, &fast_wait(), what);
        assert!(report.unresolved.is_empty(), "{what}: {report:?}");
        (journal, audit)
    }

    fn count(&self, method: &str, suffix: &str) -> usize {
        let path = format!("/nodes/{}/lxc/{suffix}", self.sim.node());
        self.sim
            .mutations()
            .iter()
            .filter(|m| m.method == method && m.path == path)
            .count()
    }
}

/// Runs `f` with a queue, and closes the queue whatever `f` returned.
fn with_queue<T>(f: impl FnOnce(&Queue) -> T) -> T {
    let queue = Queue::new(2);
    let out = f(&queue);
    queue.close();
    out
}
