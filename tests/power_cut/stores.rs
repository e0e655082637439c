//! Scenarios (3) to (6): the stores' own file operations — a journal compaction, a nonce
//! compaction, the audit log's rotation, and a restart over a torn tail — each on files
//! that already hold records.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use felhom_agent::authz::{FileNonceStore, Freshness, NonceStore};
use felhom_agent::base::Shutdown;
use felhom_agent::base::Timestamp;
use felhom_agent::reconcile::AuditLog;
use felhom_agent::reconcile::AuditRecord as AuditEntry;
use felhom_agent::reconcile::{Journal, JournalRecord, OpState};
use felhom_agent::reconcile::{OpClass, Provenance};
use felhom_agent::store::{Io, replay_bytes, verify_file};
use felhom_sim::{GuestSeed, ProxmoxSim};

use super::{
    AUDIT, JOURNAL, Lab, NONCES, Scenario, assert_files_clean, client, err, exercise, fast_wait,
    now, replay_clean, tempdir,
};

// ---------------------------------------------------------------------------------
// (3) A journal compaction, between two appends.

/// A fact the journal must keep, acknowledged during the run.
#[derive(Debug, Clone)]
enum Fact {
    /// This record is the op's latest (or an earlier step of what is latest now).
    Op(JournalRecord),
    /// The guest is tagged as the agent's scratch.
    Scratch(u32),
}

struct JournalWorld {
    lab: Lab,
    /// The op left in flight before the run, its task finished in Proxmox.
    in_flight: JournalRecord,
    acked: Vec<Fact>,
}

const APPLIED_KEY: &str = "applied-before";
const NEW_KEY: &str = "applied-during";

struct JournalCompaction;

impl Scenario for JournalCompaction {
    type World = JournalWorld;
    fn name(&self) -> &'static str {
        "journal_compaction"
    }

    fn world(&self) -> JournalWorld {
        let sim = ProxmoxSim::builder()
            .guest(GuestSeed::new(102, "app").running(false))
            .task_duration(Duration::from_millis(10))
            .start();
        let lab = Lab::new("jcompact", sim);
        let j = Journal::open(&lab.path(JOURNAL)).unwrap();
        let t = now();
        let later = Timestamp(t.0 + 3600);
        // Finished ops, which a compaction drops.
        let r = JournalRecord::started(j.new_op_id("start-100"), 100, OpClass::Start, t);
        j.append(&r).unwrap();
        j.append(&r.step(OpState::Succeeded, t)).unwrap();
        let r = JournalRecord::started(j.new_op_id("stop-101"), 101, OpClass::Stop, t);
        j.append(&r).unwrap();
        j.append(&r.step(OpState::Failed, t)).unwrap();
        // A signed op applied: its key is kept until it expires.
        let mut r = JournalRecord::started(
            j.new_op_id("guest_destroy-107"),
            107,
            OpClass::GuestDestroy,
            t,
        );
        r.idempotency_key = Some(APPLIED_KEY.into());
        r.expires_at = Some(later);
        j.append(&r).unwrap();
        j.append(&r.step(OpState::Succeeded, t)).unwrap();
        // Provenance.
        j.record_guest_created(120, "txn-1", t).unwrap();
        j.tag_scratch(130, t).unwrap();
        // In flight: dispatched, UPID journaled, the task done by the time of the restart.
        let c = client(&lab.sim);
        let upid = c.start(102).unwrap();
        c.wait_task(&upid, &fast_wait(), &Shutdown::new()).unwrap();
        let r = JournalRecord::started(j.new_op_id("start-102"), 102, OpClass::Start, t);
        j.append(&r).unwrap();
        let mut running = r.step(OpState::TaskRunning, t);
        running.upid = Some(upid.to_string());
        j.append(&running).unwrap();
        JournalWorld {
            lab,
            in_flight: running,
            acked: Vec::new(),
        }
    }

    fn run(&self, w: &mut JournalWorld, io: Arc<dyn Io>) -> Result<(), String> {
        let j = Journal::open_with(&w.lab.path(JOURNAL), io).map_err(err)?;
        let t = now();
        let mut a = JournalRecord::started(
            j.new_op_id("guest_destroy-108"),
            108,
            OpClass::GuestDestroy,
            t,
        );
        a.idempotency_key = Some(NEW_KEY.into());
        a.expires_at = Some(Timestamp(t.0 + 3600));
        j.append(&a).map_err(err)?;
        w.acked.push(Fact::Op(a.clone()));
        j.compact(t).map_err(err)?;
        let b = a.step(OpState::Succeeded, t);
        j.append(&b).map_err(err)?;
        w.acked.push(Fact::Op(b));
        j.tag_scratch(140, t).map_err(err)?;
        w.acked.push(Fact::Scratch(140));
        Ok(())
    }

    fn restart_and_check(&self, w: JournalWorld, what: &str) {
        replay_clean(&w.lab.path(JOURNAL), what);
        let j = Journal::open(&w.lab.path(JOURNAL)).unwrap();
        assert_eq!(j.damaged(), None, "{what}");
        // What the journal held before the run, compacted or not.
        assert!(j.already_applied(APPLIED_KEY), "{what}");
        assert_eq!(
            j.provenance(120, Some("txn-1")),
            Some(Provenance::CreatedInTransaction),
            "{what}"
        );
        assert_eq!(
            j.provenance(130, None),
            Some(Provenance::AgentScratch),
            "{what}"
        );
        assert_eq!(
            j.latest(&w.in_flight.op_id).as_ref(),
            Some(&w.in_flight),
            "{what}"
        );
        // What the run acknowledged.
        let rank = |s: OpState| match s {
            OpState::Started => 0,
            OpState::TaskRunning => 1,
            OpState::Succeeded | OpState::Failed => 2,
        };
        // Ids 1 to 4 are the ops from before the run; the run's op is 5.
        let mut min_next = 5;
        for fact in &w.acked {
            match fact {
                Fact::Op(r) => {
                    let got = j.latest(&r.op_id);
                    let got = got.unwrap_or_else(|| panic!("{what}: {} lost", r.op_id));
                    assert!(rank(got.state) >= rank(r.state), "{what}: {got:?} < {r:?}");
                    if r.state == OpState::Succeeded {
                        assert_eq!(got, *r, "{what}");
                        assert!(j.already_applied(NEW_KEY), "{what}");
                    }
                    min_next = 6;
                }
                Fact::Scratch(vmid) => assert_eq!(
                    j.provenance(*vmid, None),
                    Some(Provenance::AgentScratch),
                    "{what}"
                ),
            }
        }
        // Op ids are never handed out twice, though the compaction dropped finished ops.
        let next = j.new_op_id("x");
        let n: u64 = next.rsplit('-').next().unwrap().parse().unwrap();
        assert!(n >= min_next, "{what}: op id {next} reused");
        drop(j);
        let (journal, _audit) = w.lab.restart(what);
        assert_eq!(
            journal.latest(&w.in_flight.op_id).unwrap().state,
            OpState::Succeeded,
            "{what}"
        );
        drop(journal);
        assert_files_clean(&w.lab.dir, what);
    }
}

#[test]
fn a_journal_compaction_survives_a_power_cut_at_every_point() {
    exercise(&JournalCompaction);
}

// ---------------------------------------------------------------------------------
// (4) A nonce compaction, between two recorded nonces.

const SK_KEY: &str = "SHA256:power-cut-test-key";

struct NonceWorld {
    dir: PathBuf,
    /// Nonces recorded before the run and not yet expired, which every restart must
    /// still know.
    live: Vec<String>,
    acked: Vec<String>,
}

impl Drop for NonceWorld {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

struct NonceCompaction;

impl Scenario for NonceCompaction {
    type World = NonceWorld;
    fn name(&self) -> &'static str {
        "nonce_compaction"
    }

    fn world(&self) -> NonceWorld {
        let dir = tempdir("ncompact");
        let s = FileNonceStore::open(dir.join(NONCES), 120).unwrap();
        let t = now().0;
        for (nonce, expires, sk) in [
            ("expired-1", t - 3600, None),
            ("live-1", t + 3600, None),
            ("expired-2", t - 3600, None),
            ("live-2", t + 3600, Some((SK_KEY, 7))),
        ] {
            assert_eq!(
                s.seen_or_record(nonce, Timestamp(expires), sk).unwrap(),
                Freshness::Fresh
            );
        }
        NonceWorld {
            dir,
            live: vec!["live-1".into(), "live-2".into()],
            acked: Vec::new(),
        }
    }

    fn run(&self, w: &mut NonceWorld, io: Arc<dyn Io>) -> Result<(), String> {
        let s = FileNonceStore::open_with(w.dir.join(NONCES), 120, io).map_err(err)?;
        let expires = Timestamp(now().0 + 3600);
        let mut record = |nonce: &str| match s.seen_or_record(nonce, expires, None) {
            Ok(Freshness::Fresh) => {
                w.acked.push(nonce.into());
                Ok(())
            }
            other => Err(format!("{nonce}: {other:?}")),
        };
        record("during-1")?;
        let stats = s.compact(now()).map_err(err)?;
        if stats.pruned != 2 {
            return Err(format!("{stats:?}"));
        }
        record("during-2")
    }

    fn restart_and_check(&self, w: NonceWorld, what: &str) {
        replay_clean(&w.dir.join(NONCES), what);
        let s = FileNonceStore::open(w.dir.join(NONCES), 120).unwrap();
        for nonce in w.live.iter().chain(&w.acked) {
            assert_eq!(
                s.seen_or_record(nonce, Timestamp(now().0 + 3600), None)
                    .unwrap(),
                Freshness::Seen,
                "{what}: {nonce} could be replayed"
            );
        }
        assert_eq!(s.highest_sk_counter(SK_KEY).unwrap(), Some(7), "{what}");
        drop(s);
        assert_files_clean(&w.dir, what);
    }
}

#[test]
fn a_nonce_compaction_survives_a_power_cut_at_every_point() {
    exercise(&NonceCompaction);
}

// ---------------------------------------------------------------------------------
// (5) The audit log's rotation.

fn audit_entry(reason: &str) -> AuditEntry {
    AuditEntry::new(
        Timestamp(1_800_000_000),
        "start",
        Some("100".into()),
        "allowed",
        reason,
        None,
    )
}

/// The destroy still waiting for a signature when the rotation runs: it must be
/// reported after the restart whatever the cut left.
fn pending_entry() -> AuditEntry {
    AuditEntry::new(
        Timestamp(1_800_000_000),
        "guest_destroy",
        Some("105".into()),
        "pending_signature",
        "before-pending",
        None,
    )
}

/// The rotated file beside `audit.log`.
const AUDIT_ROTATED: &str = "audit.log.1";

/// The audit log's rotation, the part under the cut: the log opened on the cut I/O, an
/// entry recorded, [`AuditLog::rotate`], an entry recorded; `acked` gets the reason of
/// each entry whose append returned `Ok`.
fn audit_rotation_step(
    path: &Path,
    io: Arc<dyn Io>,
    acked: &mut Vec<String>,
) -> Result<(), String> {
    let a = AuditLog::open_with(path, io).map_err(err)?;
    let first = audit_entry("during-1");
    a.record(&first).map_err(err)?;
    acked.push(first.reason);
    a.rotate().map_err(err)?;
    let second = audit_entry("during-2");
    a.record(&second).map_err(err)?;
    acked.push(second.reason);
    Ok(())
}

struct AuditWorld {
    dir: PathBuf,
    /// Reasons of the entries recorded in `audit.log` before the run, in order.
    before: Vec<String>,
    acked: Vec<String>,
}

impl Drop for AuditWorld {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

struct AuditRotation;

impl Scenario for AuditRotation {
    type World = AuditWorld;
    fn name(&self) -> &'static str {
        "audit_rotation"
    }

    fn world(&self) -> AuditWorld {
        let dir = tempdir("audit");
        let a = AuditLog::open(&dir.join(AUDIT)).unwrap();
        // A first rotation before the run, so the one under the cut also replaces an
        // older `audit.log.1` (what that file held is dropped by design).
        a.record(&audit_entry("before-1")).unwrap();
        a.record(&pending_entry()).unwrap();
        a.rotate().unwrap();
        let mut before = Vec::new();
        for i in 3..=5 {
            let e = audit_entry(&format!("before-{i}"));
            a.record(&e).unwrap();
            before.push(e.reason);
        }
        AuditWorld {
            dir,
            before,
            acked: Vec::new(),
        }
    }

    fn run(&self, w: &mut AuditWorld, io: Arc<dyn Io>) -> Result<(), String> {
        audit_rotation_step(&w.dir.join(AUDIT), io, &mut w.acked)
    }

    fn restart_and_check(&self, w: AuditWorld, what: &str) {
        // Open settles whatever state the rotation was cut in.
        let a = AuditLog::open(&w.dir.join(AUDIT)).unwrap();
        let pending: Vec<String> = a.pending().into_iter().map(|e| e.reason).collect();
        assert_eq!(
            pending,
            ["before-pending"],
            "{what}: the held op is still reported"
        );
        drop(a);
        let rotated = replay_clean(&w.dir.join(AUDIT_ROTATED), what);
        let live = replay_clean(&w.dir.join(AUDIT), what);
        // The two files are one chain: the live file is anchored on the rotated one's
        // last record.
        if w.dir.join(AUDIT_ROTATED).exists() {
            let last = |name: &str| {
                let bytes = fs::read(w.dir.join(name)).unwrap();
                replay_bytes(&bytes, &mut |_, _| Ok(())).unwrap()
            };
            let (one, now) = (last(AUDIT_ROTATED), last(AUDIT));
            assert_eq!(
                now.summary.anchor_seq, one.last_seq,
                "{what}: audit.log does not carry on from audit.log.1"
            );
        }
        // Every decision recorded before or acknowledged during the run is there once,
        // in order, across both files (carried copies are not decisions).
        let decisions: Vec<&str> = rotated
            .iter()
            .chain(&live)
            .filter(|v| v.get("carried") != Some(&serde_json::Value::Bool(true)))
            .filter_map(|v| v["reason"].as_str())
            .collect();
        let mut rest = decisions.iter();
        for want in w.before.iter().chain(&w.acked) {
            assert!(
                rest.any(|r| r == want),
                "{what}: {want:?} lost or out of order in {decisions:?}"
            );
        }
        for name in [AUDIT, AUDIT_ROTATED] {
            let path = w.dir.join(name);
            if path.exists() {
                let s = verify_file(&path).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(s.torn_bytes, 0, "{what}: {name} still has a torn tail");
            }
        }
        for e in fs::read_dir(&w.dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.ends_with(".tmp"), "{what}: {name} left behind");
        }
    }
}

#[test]
fn an_audit_rotation_survives_a_power_cut_at_every_point() {
    exercise(&AuditRotation);
}

// ---------------------------------------------------------------------------------
// (6) A restart that is itself cut: the journal reopened over a torn last line and a
// compaction temp file an earlier crash left, then one append.

const TORN: &[u8] = b"{\"seq\":3,\"prev\":\"00";

struct ReopenWorld {
    dir: PathBuf,
    before: Vec<JournalRecord>,
    acked: Vec<JournalRecord>,
}

impl Drop for ReopenWorld {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

struct ReopenAfterCrash;

impl Scenario for ReopenAfterCrash {
    type World = ReopenWorld;
    fn name(&self) -> &'static str {
        "reopen_after_crash"
    }

    fn world(&self) -> ReopenWorld {
        let dir = tempdir("reopen");
        let path = dir.join(JOURNAL);
        let j = Journal::open(&path).unwrap();
        let t = now();
        let r = JournalRecord::started(j.new_op_id("start-100"), 100, OpClass::Start, t);
        let done = r.step(OpState::Failed, t);
        j.append(&r).unwrap();
        j.append(&done).unwrap();
        drop(j);
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(TORN).unwrap();
        fs::write(
            dir.join(format!("{JOURNAL}.compact.tmp")),
            b"half a compaction",
        )
        .unwrap();
        ReopenWorld {
            dir,
            before: vec![done],
            acked: Vec::new(),
        }
    }

    fn run(&self, w: &mut ReopenWorld, io: Arc<dyn Io>) -> Result<(), String> {
        let j = Journal::open_with(&w.dir.join(JOURNAL), io).map_err(err)?;
        let r = JournalRecord::started(j.new_op_id("stop-101"), 101, OpClass::Stop, now());
        j.append(&r).map_err(err)?;
        w.acked.push(r);
        Ok(())
    }

    fn restart_and_check(&self, w: ReopenWorld, what: &str) {
        replay_clean(&w.dir.join(JOURNAL), what);
        let j = Journal::open(&w.dir.join(JOURNAL)).unwrap();
        assert_eq!(j.damaged(), None, "{what}");
        for r in w.before.iter().chain(&w.acked) {
            assert_eq!(j.latest(&r.op_id).as_ref(), Some(r), "{what}");
        }
        drop(j);
        // The torn bytes are kept aside, never dropped.
        let broken = fs::read(w.dir.join(format!("{JOURNAL}.broken"))).unwrap();
        assert!(
            broken.windows(TORN.len()).any(|b| b == TORN),
            "{what}: the torn tail was not kept"
        );
        assert_files_clean(&w.dir, what);
    }
}

#[test]
fn a_restart_over_a_torn_tail_survives_a_power_cut_at_every_point() {
    exercise(&ReopenAfterCrash);
}
