//! The outcomes of the signed ops the hub delivered, kept in `state_dir/op_results.json`
//! until the hub acknowledges them, so the hub can tell which of its queued ops ran.
//!
//! One entry per hub op id: `{id, nonce, outcome, code, at}`. A newer outcome for the same
//! id replaces the older one (and counts as the newest); the same outcome again changes
//! nothing, so an op the hub keeps delivering while it is held is not rewritten each
//! round. At most [`OP_RESULTS_MAX`] entries are kept; past it the oldest is dropped
//! with a warning (`event=op_result_dropped`). An acknowledgement drops the acknowledged
//! ids, and only them.
//!
//! # The file
//!
//! `{"version":1,"results":[…]}`, oldest first, at most [`OP_RESULTS_FILE_MAX`] bytes,
//! replaced whole on every change through [`crate::store::replace_file`] (temp file,
//! fsync, rename, directory fsync), so a crash leaves the old list or the new one. A
//! missing file is an empty list. A file that cannot be read, is too large, or is not
//! that document (an unknown field, an id, nonce or code out of bounds) is **damaged**:
//! it is logged (`event=op_results_damaged`), set aside whole as
//! `op_results.json.damaged` for an operator, and the agent carries on with an empty
//! list. Nothing here ever panics on the file's contents, and no decision depends on it:
//! it only feeds the report.
//!
//! A write that fails leaves the file as it was and the memory changed (the next report
//! still carries the new outcome; the next change writes everything again). It is an
//! error for the caller to log, never fatal: this file is a report, not a record the
//! agent acts on (the journal and the nonce store are).
//!
//! This module never decides an outcome, never holds a blob or a signature (only the
//! nonce the blob names, read unverified by the caller), and never writes except
//! through the store's whole-file replace and set-aside.

use std::collections::VecDeque;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::base::sync::lock;
use crate::base::time::Timestamp;
use crate::store::{Io, replace_file, set_aside};

/// The most results kept (and reported).
pub const OP_RESULTS_MAX: usize = 256;

/// The longest hub op id kept, in bytes (the ops feed accepts no longer one).
pub const OP_RESULT_ID_MAX: usize = 128;

/// The longest nonce kept, in bytes (the blob parser accepts no longer one).
pub const OP_RESULT_NONCE_MAX: usize = crate::authz::blob::MAX_NONCE_CHARS;

/// The longest code kept, in bytes.
pub const OP_RESULT_CODE_MAX: usize = 64;

/// The largest results file read: [`OP_RESULTS_MAX`] entries at their longest fit
/// several times over.
pub const OP_RESULTS_FILE_MAX: u64 = 512 * 1024;

/// The file format's version.
const VERSION: u32 = 1;

/// What became of a delivered op, in one word the hub can count on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultOutcome {
    /// It ran and succeeded.
    Executed,
    /// The gate refused it (`code` says why: `pending_signature`, `guest_changed`,
    /// `replay` …); nothing ran, no nonce was burned.
    Refused,
    /// It ran (or its `unprotect` step did) and failed; its nonce is burned.
    Failed,
    /// Its nonce was already applied: it ran before, nothing ran now.
    Skipped,
    /// The hub holds this host's mutations (`blocked`): not looked at, not burned.
    Held,
    /// The delivery could not be read (a blob that does not parse, an unusable entry).
    Malformed,
    /// Delivered unsigned and allowed without a signature, but this channel runs signed
    /// ops only: nothing ran.
    NotExecuted,
}

impl ResultOutcome {
    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultOutcome::Executed => "executed",
            ResultOutcome::Refused => "refused",
            ResultOutcome::Failed => "failed",
            ResultOutcome::Skipped => "skipped",
            ResultOutcome::Held => "held",
            ResultOutcome::Malformed => "malformed",
            ResultOutcome::NotExecuted => "not_executed",
        }
    }
}

impl fmt::Display for ResultOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one delivered op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpResult {
    /// The hub's id for the op.
    pub id: String,
    /// The nonce the blob names (read unverified); `None` when the blob does not parse.
    pub nonce: Option<String>,
    /// What became of it.
    pub outcome: ResultOutcome,
    /// The precise word: a refusal code, `executed`, `already_applied` ….
    pub code: String,
    /// When the outcome was reached.
    #[serde(with = "crate::base::time::rfc3339")]
    pub at: Timestamp,
}

impl OpResult {
    /// The result of the hub's op `id` (its blob naming `nonce`), reached at `at`.
    pub fn new(
        id: impl Into<String>,
        nonce: Option<String>,
        outcome: ResultOutcome,
        code: impl Into<String>,
        at: Timestamp,
    ) -> OpResult {
        OpResult {
            id: id.into(),
            nonce,
            outcome,
            code: code.into(),
            at,
        }
    }

    /// The first field out of bounds, and why.
    fn invalid(&self) -> Option<(&'static str, String)> {
        let printable = |s: &str| !s.chars().any(char::is_control);
        if self.id.is_empty() || self.id.len() > OP_RESULT_ID_MAX || !printable(&self.id) {
            return Some((
                "id",
                format!("must be 1 to {OP_RESULT_ID_MAX} bytes without control characters"),
            ));
        }
        if let Some(n) = &self.nonce
            && (n.is_empty() || n.len() > OP_RESULT_NONCE_MAX || !printable(n))
        {
            return Some((
                "nonce",
                format!("must be 1 to {OP_RESULT_NONCE_MAX} bytes without control characters"),
            ));
        }
        let word = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
        if self.code.is_empty()
            || self.code.len() > OP_RESULT_CODE_MAX
            || !self.code.bytes().all(word)
        {
            return Some((
                "code",
                format!("must be 1 to {OP_RESULT_CODE_MAX} bytes of a-z, 0-9 and _"),
            ));
        }
        None
    }

    /// Whether `other` says the same about the op (the time aside).
    fn same_outcome(&self, other: &OpResult) -> bool {
        self.nonce == other.nonce && self.outcome == other.outcome && self.code == other.code
    }
}

/// What [`OpResults::record`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new entry, or a newer outcome replacing the id's older one; saved.
    Saved {
        /// Entries dropped, oldest first, to stay within [`OP_RESULTS_MAX`].
        dropped: Vec<OpResult>,
    },
    /// The id already holds this outcome; nothing written.
    Unchanged,
}

/// Why the results could not be changed or saved.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpResultsError {
    /// A field is out of bounds; nothing was recorded.
    Invalid {
        /// The field: `id`, `nonce` or `code`.
        field: &'static str,
        /// What its bounds are.
        problem: String,
    },
    /// The file could not be replaced: it still holds the list before the change, the
    /// memory the list after it (the next change writes everything again).
    Write {
        /// The results file.
        file: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

impl fmt::Display for OpResultsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpResultsError::Invalid { field, problem } => {
                write!(f, "signed op result: {field} {problem}")
            }
            OpResultsError::Write { file, source } => {
                write!(f, "cannot save {}: {source}", file.display())
            }
        }
    }
}

impl std::error::Error for OpResultsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpResultsError::Write { source, .. } => Some(source),
            OpResultsError::Invalid { .. } => None,
        }
    }
}

/// The file as written.
#[derive(Serialize)]
struct DocRef<'a> {
    version: u32,
    results: Vec<&'a OpResult>,
}

/// The file as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    version: u32,
    results: Vec<OpResult>,
}

/// The list in memory: each entry with the sequence number of its last change.
#[derive(Default)]
struct Kept {
    entries: VecDeque<(u64, OpResult)>,
    last_seq: u64,
}

impl Kept {
    /// Puts `r` last (replacing its id's entry) and drops the oldest past the cap.
    fn put(&mut self, r: OpResult) -> Vec<OpResult> {
        self.entries.retain(|(_, e)| e.id != r.id);
        self.last_seq += 1;
        self.entries.push_back((self.last_seq, r));
        let mut dropped = Vec::new();
        while self.entries.len() > OP_RESULTS_MAX {
            if let Some((_, gone)) = self.entries.pop_front() {
                dropped.push(gone);
            }
        }
        dropped
    }
}

/// The results store over one file. `Send + Sync`.
pub struct OpResults {
    path: PathBuf,
    io: Arc<dyn Io>,
    kept: Mutex<Kept>,
}

impl fmt::Debug for OpResults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpResults")
            .field("path", &self.path)
            .field("len", &lock(&self.kept).entries.len())
            .finish()
    }
}

impl OpResults {
    /// Opens the results at `path`. Never fails: a missing file is an empty list, a
    /// damaged one is logged, set aside and replaced by an empty list (see the module
    /// doc). Opening writes only to set a damaged file aside.
    pub fn open(path: impl Into<PathBuf>, io: Arc<dyn Io>) -> OpResults {
        let path = path.into();
        let mut kept = Kept::default();
        match read(io.as_ref(), &path) {
            Ok(list) => {
                let mut dropped = Vec::new();
                for r in list {
                    dropped.extend(kept.put(r));
                }
                for r in &dropped {
                    warn_dropped(r);
                }
            }
            Err(why) => damaged(io.as_ref(), &path, &why),
        }
        OpResults {
            path,
            io,
            kept: Mutex::new(kept),
        }
    }

    /// The results file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `result` for its id (see the module doc), saving the list.
    pub fn record(&self, result: OpResult) -> Result<Recorded, OpResultsError> {
        if let Some((field, problem)) = result.invalid() {
            return Err(OpResultsError::Invalid { field, problem });
        }
        let mut kept = lock(&self.kept);
        if kept
            .entries
            .iter()
            .any(|(_, e)| e.id == result.id && e.same_outcome(&result))
        {
            return Ok(Recorded::Unchanged);
        }
        let dropped = kept.put(result);
        for r in &dropped {
            warn_dropped(r);
        }
        self.save(&kept)?;
        Ok(Recorded::Saved { dropped })
    }

    /// Drops the entries of the acknowledged `ids` and saves the list; returns how many
    /// were dropped. An id it does not hold is ignored. The one way acknowledgements
    /// come in, whatever carried them.
    pub fn acknowledge(&self, ids: &[String]) -> Result<usize, OpResultsError> {
        self.acknowledge_through(ids, u64::MAX)
    }

    /// [`OpResults::acknowledge`], dropping only entries last changed at or before
    /// `through` (a [`OpResults::last_seq`] taken before the report the acknowledgement
    /// answers was collected): an outcome recorded after that report, which the hub
    /// has not seen, is kept even when its id is acknowledged.
    pub fn acknowledge_through(
        &self,
        ids: &[String],
        through: u64,
    ) -> Result<usize, OpResultsError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut kept = lock(&self.kept);
        let before = kept.entries.len();
        kept.entries
            .retain(|(seq, e)| *seq > through || !ids.contains(&e.id));
        let acked = before - kept.entries.len();
        if acked > 0 {
            self.save(&kept)?;
        }
        Ok(acked)
    }

    /// The sequence number of the latest change (0 before any).
    pub fn last_seq(&self) -> u64 {
        lock(&self.kept).last_seq
    }

    /// The results, oldest first.
    pub fn results(&self) -> Vec<OpResult> {
        lock(&self.kept)
            .entries
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    fn save(&self, kept: &Kept) -> Result<(), OpResultsError> {
        let doc = DocRef {
            version: VERSION,
            results: kept.entries.iter().map(|(_, r)| r).collect(),
        };
        let write = |source| OpResultsError::Write {
            file: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec(&doc).map_err(|e| write(std::io::Error::other(e)))?;
        replace_file(self.io.as_ref(), &self.path, &bytes).map_err(write)
    }
}

/// The list the file holds; `Err(why)` when it is damaged.
fn read(io: &dyn Io, path: &Path) -> Result<Vec<OpResult>, String> {
    let Some(reader) = io.open_read(path).map_err(|e| e.to_string())? else {
        return Ok(Vec::new());
    };
    let mut bytes = Vec::new();
    reader
        .take(OP_RESULTS_FILE_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > OP_RESULTS_FILE_MAX {
        return Err(format!("larger than {OP_RESULTS_FILE_MAX} bytes"));
    }
    let doc: Doc =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a results file: {e}"))?;
    if doc.version != VERSION {
        return Err(format!(
            "version {} (this agent reads version {VERSION})",
            doc.version
        ));
    }
    for (i, r) in doc.results.iter().enumerate() {
        if let Some((field, problem)) = r.invalid() {
            return Err(format!("results[{i}].{field} {problem}"));
        }
    }
    Ok(doc.results)
}

fn damaged(io: &dyn Io, path: &Path, why: &str) {
    let aside = set_aside(io, path, "damaged");
    crate::error!(
        op_results_damaged,
        "signed op results file damaged; set aside, starting with none",
        file = path.display(),
        error = why,
        set_aside = match &aside {
            Ok(p) => p.display().to_string(),
            Err(e) => format!("failed: {e}"),
        },
        recovery = match &aside {
            Ok(p) => crate::reconcile::journal::recovery_step(p),
            Err(_) => format!("move {} out of the way by hand", path.display()),
        }
    );
}

fn warn_dropped(r: &OpResult) {
    crate::warn!(
        op_result_dropped,
        "signed op result dropped unacknowledged: over the limit",
        id = r.id,
        outcome = r.outcome,
        code = r.code,
        at = r.at,
        max = OP_RESULTS_MAX
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FaultOp, FaultyIo, OsIo};

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("felhom-opresults-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn result(id: &str, outcome: ResultOutcome, code: &str) -> OpResult {
        let nonce = Some(format!("{id:0>32}"));
        OpResult::new(id, nonce, outcome, code, Timestamp(1_800_000_000))
    }

    fn ids(r: &OpResults) -> Vec<String> {
        r.results().into_iter().map(|r| r.id).collect()
    }

    #[test]
    fn a_newer_outcome_replaces_the_ids_entry_and_the_same_one_writes_nothing() {
        let d = dir("replace");
        let path = d.join("op_results.json");
        let r = OpResults::open(&path, Arc::new(OsIo));
        let held = result("op-1", ResultOutcome::Held, "blocked");
        assert!(matches!(r.record(held.clone()), Ok(Recorded::Saved { .. })));
        r.record(result("op-2", ResultOutcome::Refused, "guest_changed"))
            .unwrap();
        let later = OpResult {
            at: Timestamp(1_800_000_060),
            ..held.clone()
        };
        assert_eq!(r.record(later).unwrap(), Recorded::Unchanged);
        assert_eq!(r.results()[0].at, held.at, "the first time is kept");
        r.record(result("op-1", ResultOutcome::Executed, "executed"))
            .unwrap();
        assert_eq!(
            ids(&r),
            ["op-2", "op-1"],
            "the newer outcome counts as newest"
        );
        assert_eq!(r.results()[1].outcome, ResultOutcome::Executed);
        let again = OpResults::open(&path, Arc::new(OsIo));
        assert_eq!(again.results(), r.results());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_ack_through_a_mark_keeps_an_outcome_recorded_after_it() {
        let d = dir("mark");
        let r = OpResults::open(d.join("op_results.json"), Arc::new(OsIo));
        r.record(result("op-1", ResultOutcome::Held, "blocked"))
            .unwrap();
        r.record(result("op-2", ResultOutcome::Executed, "executed"))
            .unwrap();
        let mark = r.last_seq();
        r.record(result("op-1", ResultOutcome::Executed, "executed"))
            .unwrap();
        let acked = r
            .acknowledge_through(&["op-1".into(), "op-2".into()], mark)
            .unwrap();
        assert_eq!(acked, 1);
        assert_eq!(ids(&r), ["op-1"], "the hub has not seen op-1 executed yet");
        assert_eq!(r.acknowledge(&["op-1".into()]).unwrap(), 1);
        assert!(r.results().is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn out_of_bounds_fields_are_refused_naming_the_field() {
        let d = dir("bounds");
        let r = OpResults::open(d.join("op_results.json"), Arc::new(OsIo));
        let cases = [
            (
                OpResult {
                    id: String::new(),
                    ..result("x", ResultOutcome::Held, "blocked")
                },
                "id",
            ),
            (
                OpResult {
                    id: "i".repeat(129),
                    ..result("x", ResultOutcome::Held, "blocked")
                },
                "id",
            ),
            (
                OpResult {
                    id: "a\nb".into(),
                    ..result("x", ResultOutcome::Held, "blocked")
                },
                "id",
            ),
            (
                OpResult {
                    nonce: Some("n".repeat(129)),
                    ..result("x", ResultOutcome::Held, "blocked")
                },
                "nonce",
            ),
            (result("x", ResultOutcome::Held, "Blocked"), "code"),
            (result("x", ResultOutcome::Held, ""), "code"),
        ];
        for (bad, field) in cases {
            match r.record(bad) {
                Err(OpResultsError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(r.results().is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_the_new_outcome_in_memory() {
        let d = dir("fsync");
        let path = d.join("op_results.json");
        OpResults::open(&path, Arc::new(OsIo))
            .record(result("op-1", ResultOutcome::Held, "blocked"))
            .unwrap();
        let before = std::fs::read(&path).unwrap();
        let r = OpResults::open(&path, Arc::new(FaultyIo::new(FaultOp::Sync, 1, false)));
        let e = r
            .record(result("op-2", ResultOutcome::Executed, "executed"))
            .unwrap_err();
        assert!(matches!(e, OpResultsError::Write { .. }), "{e}");
        assert_eq!(ids(&r), ["op-1", "op-2"], "the report still carries it");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_file_is_set_aside_and_the_list_starts_empty() {
        let cases: &[(&str, &[u8])] = &[
            ("torn", b"{\"version\":1,\"results\":[{\"id\""),
            ("garbage", b"\x00\xff not json"),
            ("unknown", b"{\"version\":1,\"results\":[],\"x\":1}"),
            ("version", b"{\"version\":2,\"results\":[]}"),
            (
                "badid",
                b"{\"version\":1,\"results\":[{\"id\":\"\",\"nonce\":null,\"outcome\":\"held\",\"code\":\"blocked\",\"at\":\"2026-11-22T10:00:00Z\"}]}",
            ),
            (
                "badoutcome",
                b"{\"version\":1,\"results\":[{\"id\":\"a\",\"nonce\":null,\"outcome\":\"won\",\"code\":\"blocked\",\"at\":\"2026-11-22T10:00:00Z\"}]}",
            ),
        ];
        for (name, bytes) in cases {
            let d = dir(name);
            let path = d.join("op_results.json");
            std::fs::write(&path, bytes).unwrap();
            let r = OpResults::open(&path, Arc::new(OsIo));
            assert!(r.results().is_empty(), "{name}");
            assert_eq!(
                std::fs::read(d.join("op_results.json.damaged")).unwrap(),
                *bytes,
                "{name}: kept whole for an operator"
            );
            r.record(result("op-1", ResultOutcome::Held, "blocked"))
                .unwrap();
            assert_eq!(ids(&OpResults::open(&path, Arc::new(OsIo))), ["op-1"]);
            let _ = std::fs::remove_dir_all(&d);
        }
        let d = dir("huge");
        let path = d.join("op_results.json");
        std::fs::write(&path, vec![b' '; OP_RESULTS_FILE_MAX as usize + 1]).unwrap();
        assert!(OpResults::open(&path, Arc::new(OsIo)).results().is_empty());
        assert!(d.join("op_results.json.damaged").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_longest_full_list_fits_the_file_cap() {
        let d = dir("cap");
        let path = d.join("op_results.json");
        let r = OpResults::open(&path, Arc::new(OsIo));
        for i in 0..OP_RESULTS_MAX {
            let mut x = result(&format!("{i:0>128}"), ResultOutcome::NotExecuted, "x");
            x.nonce = Some("n".repeat(OP_RESULT_NONCE_MAX));
            x.code = "c".repeat(OP_RESULT_CODE_MAX);
            r.record(x).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() < OP_RESULTS_FILE_MAX);
        assert_eq!(
            OpResults::open(&path, Arc::new(OsIo)).results().len(),
            OP_RESULTS_MAX
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
