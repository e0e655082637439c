//! The operation journal (`state_dir/journal.log`): one durable record per lifecycle
//! step of every mutation (`started → task_running → succeeded | failed`), plus the
//! agent's own provenance records (guests it created in a transaction, guests it tagged
//! as its scratch) that the gate reads.
//!
//! This module owns the journal's record format, its in-memory index (latest record per
//! op id, applied idempotency keys, provenance) and its compaction policy. It writes only
//! through [`crate::store::Store`]; it never talks to Proxmox and never decides whether
//! an op may run. A record is on disk before [`Journal::append`] returns `Ok`; a failed
//! fsync is never retried (the caller exits non-zero).
//!
//! Damage inside the file does not stop the agent: the good prefix is replayed, the
//! damaged file is kept aside as `journal.log.damaged`, a fresh chain carries the state
//! on, and [`Journal::damaged`] reports it — on every open, until an operator archives
//! the `.damaged` file (`felhom-agent state acknowledge-damage FILE`, which each damage
//! log line names as its `recovery`) — so the gate refuses destructive operations
//! meanwhile.

use crate::base::sync::lock;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::base::time::Timestamp;
use crate::reconcile::classify::{OpClass, Provenance};
use crate::store::{Io, OsIo, Store, StoreError, SyncMode, replay_bytes};

/// Above this many records the journal is compacted, at start and by the running daemon's
/// `journal-compact` worker (see [`Journal::compact_if_over`]). What bounds is memory, not
/// replay (`benches/journal.rs` reopens 100 000 records in about a third of a second): the
/// index holds the latest record of every op until a compaction drops the finished ones,
/// about 0.75 KiB each, and the 60-minute soak (500 guests, ~140 ops a minute) grew RSS
/// past +10% over its warm-up with 10 000. A compaction rewrites only what is live
/// (in-flight ops, unexpired signed-op keys, provenance): a few records and two fsyncs.
pub(crate) const COMPACT_OVER: u64 = 2_000;

/// The rolling window of the blast-radius limit (`reconcile.max_disruptive_per_hour`),
/// in seconds: compaction keeps a disruptive op this long after its last record, so the
/// window survives compaction as it survives a restart.
pub(crate) const DISRUPTIVE_WINDOW_SECONDS: i64 = 3600;

/// Where an op is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    /// Durable before the mutation is sent.
    Started,
    /// The mutation was accepted and Proxmox runs it as the task in `upid`.
    TaskRunning,
    /// Done and successful.
    Succeeded,
    /// Done and failed (or never executed; `detail` says why).
    Failed,
}

impl OpState {
    /// Whether the op has reached `succeeded` or `failed`.
    pub fn is_terminal(self) -> bool {
        matches!(self, OpState::Succeeded | OpState::Failed)
    }

    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            OpState::Started => "started",
            OpState::TaskRunning => "task_running",
            OpState::Succeeded => "succeeded",
            OpState::Failed => "failed",
        }
    }
}

/// One lifecycle step of one op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// The op's id, unique in this journal ([`Journal::new_op_id`]).
    pub op_id: String,
    /// The guest (0 for host-wide operations).
    pub vmid: u32,
    /// The operation.
    pub class: OpClass,
    /// The operation's parameters.
    pub params: BTreeMap<String, String>,
    /// The Proxmox task, once known.
    #[serde(default)]
    pub upid: Option<String>,
    /// The lifecycle step this record marks.
    pub state: OpState,
    /// For one-shot ops (a signed op's nonce): once a record with this key succeeded,
    /// [`Journal::already_applied`] answers true until `expires_at`.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Until when the applied key must be remembered.
    #[serde(default, with = "crate::base::time::opt_rfc3339")]
    pub expires_at: Option<Timestamp>,
    /// When this step was recorded.
    #[serde(with = "crate::base::time::rfc3339")]
    pub at: Timestamp,
    /// Free text: why it failed, what was skipped.
    #[serde(default)]
    pub detail: Option<String>,
    /// A benign action the blast-radius limit counts (a stop, or a config write that
    /// lowers cores or memory): [`Journal::disruptive_since`] reads the rolling window
    /// from these, so a restart never resets it. Absent on disk when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disruptive: bool,
}

impl JournalRecord {
    /// A `started` record with no key, UPID or detail.
    pub fn started(op_id: impl Into<String>, vmid: u32, class: OpClass, at: Timestamp) -> Self {
        JournalRecord {
            op_id: op_id.into(),
            vmid,
            class,
            params: BTreeMap::new(),
            upid: None,
            state: OpState::Started,
            idempotency_key: None,
            expires_at: None,
            at,
            detail: None,
            disruptive: false,
        }
    }

    /// This record moved to `state` at `at` (everything else kept).
    pub fn step(&self, state: OpState, at: Timestamp) -> Self {
        JournalRecord {
            state,
            at,
            ..self.clone()
        }
    }
}

/// One line's data in the journal file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    /// A lifecycle step.
    Op(JournalRecord),
    /// `created_by_agent`: the agent creates `vmid` in transaction `txn` (durable before
    /// the create is dispatched; the transaction ends once the create is settled).
    #[serde(rename = "created_by_agent", alias = "guest_created")]
    GuestCreated {
        vmid: u32,
        txn: String,
        #[serde(with = "crate::base::time::rfc3339")]
        at: Timestamp,
    },
    /// The agent tagged `vmid` as its own scratch guest.
    ScratchTagged {
        vmid: u32,
        #[serde(with = "crate::base::time::rfc3339")]
        at: Timestamp,
    },
    /// `vmid` is no longer the agent's scratch guest: the agent found it gone, or its
    /// restore never created it (the vmid was someone else's).
    ScratchReleased {
        vmid: u32,
        #[serde(with = "crate::base::time::rfc3339")]
        at: Timestamp,
    },
    /// Transaction `txn` is over: guests it created no longer carry its provenance.
    TxnEnded {
        txn: String,
        #[serde(with = "crate::base::time::rfc3339")]
        at: Timestamp,
    },
    /// Op ids below `next` were handed out before a compaction.
    SeqFloor { next: u64 },
}

/// Why a journal operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum JournalError {
    /// The durable store failed: opening it (I/O), or appending / compacting (a failed
    /// write or fsync poisons it; the caller exits non-zero).
    Store(StoreError),
    /// The journal file could not be read (read-only view).
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The damaged file could not be set aside on open.
    SetAside {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Store(e) => write!(f, "journal: {e}"),
            JournalError::Read { path, source } => {
                write!(f, "journal {}: read failed: {source}", path.display())
            }
            JournalError::SetAside { path, source } => write!(
                f,
                "journal {}: could not keep the damaged file aside: {source}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalError::Store(e) => Some(e),
            JournalError::Read { source, .. } | JournalError::SetAside { source, .. } => {
                Some(source)
            }
        }
    }
}

impl From<StoreError> for JournalError {
    fn from(e: StoreError) -> Self {
        JournalError::Store(e)
    }
}

/// What the journal knows, rebuilt from the lines on open.
#[derive(Debug, Default, Clone)]
struct Index {
    latest: HashMap<String, JournalRecord>,
    /// First-seen order of op ids, for stable listings.
    order: Vec<String>,
    applied: HashMap<String, Option<Timestamp>>,
    created: HashMap<u32, (String, Timestamp)>,
    scratch: HashMap<u32, Timestamp>,
    ended: HashSet<String>,
    next_seq: u64,
}

impl Index {
    fn apply(&mut self, line: Line) {
        match line {
            Line::Op(rec) => self.apply_op(rec),
            Line::GuestCreated { vmid, txn, at } => {
                self.created.insert(vmid, (txn, at));
            }
            Line::ScratchTagged { vmid, at } => {
                self.scratch.insert(vmid, at);
            }
            Line::ScratchReleased { vmid, .. } => {
                self.scratch.remove(&vmid);
            }
            Line::TxnEnded { txn, .. } => {
                self.created.retain(|_, (t, _)| *t != txn);
                self.ended.insert(txn);
            }
            Line::SeqFloor { next } => self.next_seq = self.next_seq.max(next),
        }
    }

    fn apply_op(&mut self, rec: JournalRecord) {
        if let Some(n) = rec
            .op_id
            .rsplit('-')
            .next()
            .and_then(|s| s.parse::<u64>().ok())
        {
            self.next_seq = self.next_seq.max(n.saturating_add(1));
        }
        if rec.state == OpState::Succeeded {
            if let Some(k) = &rec.idempotency_key {
                self.applied.insert(k.clone(), rec.expires_at);
            }
            // A destroyed guest's vmid may be reused for a customer's guest: the agent's
            // provenance must not outlive the guest it was about.
            if rec.class == OpClass::GuestDestroy && rec.vmid != 0 {
                self.created.remove(&rec.vmid);
                self.scratch.remove(&rec.vmid);
            }
        }
        if !self.latest.contains_key(&rec.op_id) {
            self.order.push(rec.op_id.clone());
        }
        self.latest.insert(rec.op_id.clone(), rec);
    }

    fn in_flight(&self) -> Vec<JournalRecord> {
        self.order
            .iter()
            .filter_map(|id| self.latest.get(id))
            .filter(|r| !r.state.is_terminal())
            .cloned()
            .collect()
    }

    fn provenance(&self, vmid: u32, txn: Option<&str>) -> Option<Provenance> {
        if self.scratch.contains_key(&vmid) {
            return Some(Provenance::AgentScratch);
        }
        match (self.created.get(&vmid), txn) {
            (Some((t, _)), Some(want)) if t == want => Some(Provenance::CreatedInTransaction),
            _ => None,
        }
    }

    /// The disruptive ops that count against the rolling window ending at `now`: in
    /// flight or succeeded, last recorded after `now - DISRUPTIVE_WINDOW_SECONDS` (or
    /// later than `now`: a clock set back frees nothing).
    fn disruptive_since(&self, now: Timestamp) -> usize {
        let since = now.0.saturating_sub(DISRUPTIVE_WINDOW_SECONDS);
        self.latest
            .values()
            .filter(|r| r.disruptive && r.state != OpState::Failed && r.at.0 > since)
            .count()
    }

    /// The lines a compaction keeps: the seq floor, in-flight ops, applied keys not yet
    /// expired, disruptive ops still inside the rolling window, and live provenance.
    fn keep(&self, now: Timestamp) -> Vec<Line> {
        let mut out = vec![Line::SeqFloor {
            next: self.next_seq,
        }];
        for id in &self.order {
            let Some(r) = self.latest.get(id) else {
                continue;
            };
            let keep = match r.state {
                OpState::Started | OpState::TaskRunning => true,
                OpState::Succeeded => {
                    (r.idempotency_key.is_some() && r.expires_at.is_none_or(|e| e >= now))
                        || (r.disruptive
                            && r.at.0 > now.0.saturating_sub(DISRUPTIVE_WINDOW_SECONDS))
                }
                OpState::Failed => false,
            };
            if keep {
                out.push(Line::Op(r.clone()));
            }
        }
        let mut created: Vec<_> = self.created.iter().collect();
        created.sort();
        for (vmid, (txn, at)) in created {
            out.push(Line::GuestCreated {
                vmid: *vmid,
                txn: txn.clone(),
                at: *at,
            });
        }
        let mut scratch: Vec<_> = self.scratch.iter().collect();
        scratch.sort();
        for (vmid, at) in scratch {
            out.push(Line::ScratchTagged {
                vmid: *vmid,
                at: *at,
            });
        }
        out
    }

    fn compacted(&self, now: Timestamp) -> Index {
        let mut ix = Index::default();
        for l in self.keep(now) {
            ix.apply(l);
        }
        ix
    }
}

fn decode(data: &[u8]) -> Result<Line, String> {
    serde_json::from_slice::<Line>(data).map_err(|e| format!("not a journal record: {e}"))
}

/// The command that ends the refusal a damaged file causes, once an operator has
/// looked at it: it archives the file and audits who did.
pub(crate) fn recovery_step(damaged: &Path) -> String {
    format!(
        "felhom-agent state acknowledge-damage {}",
        damaged.display()
    )
}

fn damaged_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".damaged");
    PathBuf::from(s)
}

/// The durable operation journal. `Send + Sync`: share it behind an `Arc`.
pub struct Journal {
    store: Store,
    index: Mutex<Index>,
    /// Appends take it shared (so they share fsyncs), compaction exclusively.
    gate: RwLock<()>,
    seq: AtomicU64,
    damaged: Option<String>,
    /// Told every op record once it is durable (metrics).
    watcher: std::sync::OnceLock<RecordWatcher>,
}

/// A hook told every op record the journal made durable; must be quick.
pub type RecordWatcher = Arc<dyn Fn(&JournalRecord) + Send + Sync>;

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.store.path())
            .field("damaged", &self.damaged)
            .finish()
    }
}

impl Journal {
    /// Opens (or creates) the journal at `path` and replays it. Damage inside the file is
    /// not an error: see the module doc and [`Journal::damaged`].
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        Journal::open_with(path, Arc::new(OsIo))
    }

    /// [`Journal::open`] with an explicit [`Io`] (fault-injection tests).
    pub fn open_with(path: &Path, io: Arc<dyn Io>) -> Result<Journal, JournalError> {
        let aside = damaged_path(path);
        let mut ix = Index::default();
        let opened = Store::open_with(path, io.clone(), SyncMode::GroupCommit, |_, data| {
            ix.apply(decode(data)?);
            Ok(())
        });
        let (store, mut damaged) = match opened {
            Ok(s) => (s, None),
            Err(StoreError::Corrupt { line, reason, .. }) => {
                crate::error!(
                    journal_damage_found,
                    "journal damaged: destructive operations refused until an operator looks",
                    path = path.display(),
                    line = line,
                    reason = reason,
                    kept_in = aside.display(),
                    recovery = recovery_step(&aside)
                );
                // Replay the good prefix again (the failed open's index may hold records
                // the store rejected after them), set the file aside, carry on fresh.
                let mut ix2 = Index::default();
                if let Ok(Some(bytes)) = io.read(path) {
                    let _ = replay_bytes(&bytes, &mut |_, data| {
                        ix2.apply(decode(data)?);
                        Ok(())
                    });
                }
                ix = ix2;
                io.rename(path, &aside)
                    .map_err(|source| JournalError::SetAside {
                        path: path.to_path_buf(),
                        source,
                    })?;
                let store =
                    Store::open_with(path, io.clone(), SyncMode::GroupCommit, |_, _| Ok(()))?;
                let keep = ix.keep(Timestamp(i64::MIN));
                store.compact(keep)?;
                (
                    store,
                    Some(format!(
                        "line {line}: {reason} (damaged file kept in {})",
                        aside.display()
                    )),
                )
            }
            Err(e) => return Err(e.into()),
        };
        if damaged.is_none() && io.read(&aside).ok().flatten().is_some() {
            damaged = Some(format!(
                "an earlier damaged journal is kept in {}; once looked at, run: {}",
                aside.display(),
                recovery_step(&aside)
            ));
            crate::warn!(
                journal_damaged_earlier,
                "journal was damaged earlier: destructive operations refused until an operator looks",
                kept_in = aside.display(),
                recovery = recovery_step(&aside)
            );
        }
        let next = ix.next_seq.max(1);
        Ok(Journal {
            store,
            index: Mutex::new(ix),
            gate: RwLock::new(()),
            seq: AtomicU64::new(next),
            damaged,
            watcher: std::sync::OnceLock::new(),
        })
    }

    /// Reads the journal without writing anything (no torn tail cut, nothing created):
    /// for `felhom-agent journal`, safe while the daemon runs.
    pub fn open_read_only(path: &Path) -> Result<JournalView, JournalError> {
        let bytes = std::fs::read(path).map_err(|source| JournalError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut history = Vec::new();
        let mut ix = Index::default();
        let res = replay_bytes(&bytes, &mut |_, data| {
            let line = decode(data)?;
            if let Line::Op(r) = &line {
                history.push(r.clone());
            }
            ix.apply(line);
            Ok(())
        });
        let mut damaged = match res {
            Ok(_) => None,
            Err(d) => Some(format!("line {}: {}", d.line, d.reason)),
        };
        let aside = damaged_path(path);
        if damaged.is_none() && aside.exists() {
            damaged = Some(format!(
                "an earlier damaged journal is kept in {}",
                aside.display()
            ));
        }
        Ok(JournalView {
            history,
            index: ix,
            damaged,
        })
    }

    /// Appends `rec`; `Ok` once it is durable. A write or fsync failure poisons the
    /// journal ([`StoreError::Fatal`]): the caller must stop mutating and exit non-zero.
    pub fn append(&self, rec: &JournalRecord) -> Result<(), JournalError> {
        self.append_line(Line::Op(rec.clone()))?;
        if let Some(w) = self.watcher.get() {
            w(rec);
        }
        Ok(())
    }

    /// Tells `watcher` every op record appended from now on; `false` when one is set.
    pub fn watch_records(&self, watcher: RecordWatcher) -> bool {
        self.watcher.set(watcher).is_ok()
    }

    fn append_line(&self, line: Line) -> Result<(), JournalError> {
        let _shared = self.gate.read().unwrap_or_else(|e| e.into_inner());
        self.store.append(&line)?;
        lock(&self.index).apply(line);
        Ok(())
    }

    /// Records `created_by_agent`: the agent creates `vmid` in transaction `txn` (call
    /// before the create is dispatched). Until [`Journal::end_transaction`], destroying
    /// that guest with the same `txn` is agent-internal.
    pub fn record_guest_created(
        &self,
        vmid: u32,
        txn: &str,
        at: Timestamp,
    ) -> Result<(), JournalError> {
        self.append_line(Line::GuestCreated {
            vmid,
            txn: txn.to_string(),
            at,
        })
    }

    /// Records that the agent tagged `vmid` as its own scratch guest.
    pub fn tag_scratch(&self, vmid: u32, at: Timestamp) -> Result<(), JournalError> {
        self.append_line(Line::ScratchTagged { vmid, at })
    }

    /// Records that `vmid` is no longer the agent's scratch guest (it is gone, or the
    /// agent never created it): from now on its destroy needs a signature again.
    pub fn release_scratch(&self, vmid: u32, at: Timestamp) -> Result<(), JournalError> {
        self.append_line(Line::ScratchReleased { vmid, at })
    }

    /// The vmids tagged as the agent's scratch guests, ascending.
    pub fn scratch_vmids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = lock(&self.index).scratch.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Ends transaction `txn`: guests it created lose their provenance.
    pub fn end_transaction(&self, txn: &str, at: Timestamp) -> Result<(), JournalError> {
        self.append_line(Line::TxnEnded {
            txn: txn.to_string(),
            at,
        })
    }

    /// The agent's own provenance for `vmid`: a scratch tag, or a creation in the open
    /// transaction `txn`. Never derived from anything but journal records.
    pub fn provenance(&self, vmid: u32, txn: Option<&str>) -> Option<Provenance> {
        lock(&self.index).provenance(vmid, txn)
    }

    /// The latest record of `op_id`.
    pub fn latest(&self, op_id: &str) -> Option<JournalRecord> {
        lock(&self.index).latest.get(op_id).cloned()
    }

    /// Ops whose latest record is `started` or `task_running`, in first-seen order.
    pub fn in_flight(&self) -> Vec<JournalRecord> {
        lock(&self.index).in_flight()
    }

    /// How many disruptive benign ops (records marked `disruptive`) are in flight or
    /// succeeded within the hour before `now`, each timed by its latest record: the
    /// blast-radius limit's rolling window. A failed one does not count.
    pub fn disruptive_since(&self, now: Timestamp) -> usize {
        lock(&self.index).disruptive_since(now)
    }

    /// Whether an op with idempotency key `key` succeeded (failed ones do not count).
    pub fn already_applied(&self, key: &str) -> bool {
        lock(&self.index).applied.contains_key(key)
    }

    /// `Some(where and why)` when the journal file was found damaged (now or earlier,
    /// until an operator archives the kept `.damaged` file).
    pub fn damaged(&self) -> Option<String> {
        self.damaged.clone()
    }

    /// Rewrites the file keeping in-flight ops, applied keys until their expiry (checked
    /// against `now`), and live provenance; everything else is dropped.
    pub fn compact(&self, now: Timestamp) -> Result<(), JournalError> {
        let _exclusive = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let mut ix = lock(&self.index);
        ix.next_seq = ix.next_seq.max(self.seq.load(Ordering::SeqCst));
        self.store.compact(ix.keep(now))?;
        *ix = ix.compacted(now);
        Ok(())
    }

    /// [`Journal::compact`] when the file holds more than `threshold` records; returns
    /// whether it compacted. A failure before the new file replaced the old one leaves
    /// the journal usable ([`StoreError::Io`]); one after it poisons the journal.
    pub fn compact_if_over(&self, threshold: u64, now: Timestamp) -> Result<bool, JournalError> {
        if self.store.records() <= threshold {
            return Ok(false);
        }
        self.compact(now)?;
        Ok(true)
    }

    /// A fresh op id, unique in this journal across restarts: `"{prefix}-{seq}"`.
    pub fn new_op_id(&self, prefix: &str) -> String {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        format!("{prefix}-{n}")
    }

    /// Records in the file now.
    pub fn records(&self) -> u64 {
        self.store.records()
    }
}

/// A read-only snapshot of a journal file, for `felhom-agent journal` and `plan`; the
/// default is an empty journal.
#[derive(Debug, Clone, Default)]
pub struct JournalView {
    history: Vec<JournalRecord>,
    index: Index,
    damaged: Option<String>,
}

impl JournalView {
    /// Every lifecycle record in file order.
    pub fn history(&self) -> &[JournalRecord] {
        &self.history
    }

    /// The last `n` lifecycle records, oldest first.
    pub fn tail(&self, n: usize) -> &[JournalRecord] {
        &self.history[self.history.len().saturating_sub(n)..]
    }

    /// Ops whose latest record is not terminal.
    pub fn in_flight(&self) -> Vec<JournalRecord> {
        self.index.in_flight()
    }

    /// The latest record of `op_id`.
    pub fn latest(&self, op_id: &str) -> Option<JournalRecord> {
        self.index.latest.get(op_id).cloned()
    }

    /// The agent's own provenance for `vmid`, as [`Journal::provenance`] reads it.
    pub fn provenance(&self, vmid: u32, txn: Option<&str>) -> Option<Provenance> {
        self.index.provenance(vmid, txn)
    }

    /// The blast-radius window as [`Journal::disruptive_since`] counts it.
    pub fn disruptive_since(&self, now: Timestamp) -> usize {
        self.index.disruptive_since(now)
    }

    /// Where the file is damaged, if it is (the records before the damage are shown).
    pub fn damaged(&self) -> Option<&str> {
        self.damaged.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_by_agent_is_written_under_its_name_and_the_old_name_still_reads() {
        let line = Line::GuestCreated {
            vmid: 120,
            txn: "guest_create-120-1".into(),
            at: Timestamp(1_800_000_000),
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.contains("\"kind\":\"created_by_agent\""), "{text}");
        let old = text.replace("created_by_agent", "guest_created");
        let mut ix = Index::default();
        ix.apply(decode(old.as_bytes()).unwrap());
        assert_eq!(
            ix.provenance(120, Some("guest_create-120-1")),
            Some(Provenance::CreatedInTransaction)
        );
        assert_eq!(ix.provenance(120, Some("another")), None);
    }

    #[test]
    fn compacts_at_start_only_over_the_threshold_and_keeps_what_is_in_flight() {
        let dir = std::env::temp_dir().join(format!("felhom-journal-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("journal.log");
        let j = Journal::open(&path).unwrap();
        let t = Timestamp(1_800_000_000);
        let done = JournalRecord::started("start-100-1", 100, OpClass::Start, t);
        j.append(&done).unwrap();
        j.append(&done.step(OpState::Succeeded, t)).unwrap();
        let open = JournalRecord::started("stop-101-2", 101, OpClass::Stop, t);
        j.append(&open).unwrap();
        assert!(!j.compact_if_over(3, t).unwrap(), "3 records: not over 3");
        assert_eq!(j.records(), 3);
        assert!(j.compact_if_over(2, t).unwrap());
        // The seq floor and the op still in flight; the finished op is dropped.
        assert_eq!(j.records(), 2);
        let reopened = Journal::open(&path).unwrap();
        assert_eq!(reopened.in_flight(), vec![open]);
        assert_eq!(reopened.latest("start-100-1"), None);
        assert_eq!(reopened.new_op_id("x"), "x-3", "op ids keep counting");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_disruptive_window_counts_the_hour_and_survives_compaction_for_it() {
        let dir = std::env::temp_dir().join(format!("felhom-journal-blast-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("journal.log");
        let j = Journal::open(&path).unwrap();
        let t = Timestamp(1_800_000_000);
        let mut stop = JournalRecord::started("stop-100-1", 100, OpClass::Stop, t);
        stop.disruptive = true;
        j.append(&stop).unwrap();
        j.append(&stop.step(OpState::Succeeded, t)).unwrap();
        let mut failed = JournalRecord::started("stop-101-2", 101, OpClass::Stop, t);
        failed.disruptive = true;
        j.append(&failed).unwrap();
        j.append(&failed.step(OpState::Failed, t)).unwrap();
        let start = JournalRecord::started("start-102-3", 102, OpClass::Start, t);
        j.append(&start.step(OpState::Succeeded, t)).unwrap();
        assert_eq!(
            j.disruptive_since(t),
            1,
            "failed and benign ones do not count"
        );

        let half = Timestamp(t.0 + DISRUPTIVE_WINDOW_SECONDS / 2);
        j.compact(half).unwrap();
        let reopened = Journal::open(&path).unwrap();
        assert_eq!(
            reopened.disruptive_since(half),
            1,
            "kept through compaction"
        );
        let hour = Timestamp(t.0 + DISRUPTIVE_WINDOW_SECONDS);
        assert_eq!(reopened.disruptive_since(hour), 0, "the hour is over");
        reopened.compact(hour).unwrap();
        assert_eq!(reopened.latest("stop-100-1"), None, "dropped once outside");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
