//! The one durable-file mechanism of the agent: an append-only file of JSON lines,
//! each bound to the one before it by a SHA-256 chain, so a torn write, a flipped bit,
//! or a deleted, inserted or reordered line is found when the file is replayed.
//!
//! The nonce store sits on it now; the journal and the audit log will. **Nothing else
//! in the crate writes durable state**: a module that needs to remember something across
//! a restart opens a [`Store`]. All file I/O goes through the small [`Io`] trait, so
//! tests can inject faults ([`FaultyIo`]) and fuzzers can replay bytes
//! ([`replay_bytes`]) without touching a disk.
//!
//! # Line format
//!
//! Every line is one compact JSON object ending in `\n`, with its keys in this order and
//! no whitespace:
//!
//! ```text
//! line 1 (anchor): {"seq":S,"anchor":"<64 hex A>"}
//! line n > 1:      {"seq":N,"prev":"<64 hex P>","data":<compact JSON>,"sha256":"<64 hex H>"}
//! ```
//!
//! * The anchor is where the chain starts. A new file has `S = 0` and `A` = 32 zero
//!   bytes; a compacted file has the `seq` and `sha256` of the last record of the file
//!   it replaced, so records keep numbering on and the chain carries on from the old one.
//! * Record `N` is `S + 1` on line 2 and one more on every following line; `P` is `A` on
//!   line 2 and the previous line's `H` after that.
//! * `H = SHA-256(P as 32 raw bytes || N as u64 big-endian || the data bytes exactly as
//!   they appear in the line)`: the hash binds the sequence number, the previous line
//!   and every byte of the data.
//!
//! # Replay
//!
//! [`Store::open`] reads the whole file and hands each record's `seq` and data bytes to
//! the caller's visitor, in order. A torn **last** line (no final newline, or a last line
//! that does not parse) is what an interrupted append leaves: its bytes are appended to
//! `FILE.broken` (fsync'd), cut from the file (fsync'd), and the file goes on. Anything
//! wrong **inside** the file (a line that does not parse, a sequence gap, a broken
//! chain, a hash mismatch, data the visitor rejects) is [`StoreError::Corrupt`] naming
//! the 1-based line number; the caller decides what to refuse.
//!
//! # Append and fsync
//!
//! [`Store::append`] writes the line and `fsync`s (`sync_data`) before it returns `Ok`.
//! Concurrent appenders share fsyncs (group commit): whoever finds no sync in progress
//! syncs for everyone who has written so far, the others wait for it. A failed write or
//! fsync is never retried — the kernel may already have dropped the dirty pages — the
//! store is poisoned, every later call fails with [`StoreError::Poisoned`], and the
//! caller is expected to exit non-zero so the restart replays what is really on disk.
//!
//! # Compaction and new files
//!
//! [`Store::compact`] writes the kept records after a fresh anchor to `FILE.compact.tmp`
//! in the same directory, fsyncs it, renames it over the file and fsyncs the directory.
//! A temp file left by a crash before the rename is removed on the next open; the old
//! file is intact. A new file is created with its anchor line, fsync'd, and the directory
//! fsync'd. Files are created 0600 and a missing directory 0700; looser modes on existing
//! ones are reported with a warning.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use sha2::{Digest as _, Sha256};

use crate::encoding::{hex_decode, hex_encode};

mod file_io;
#[cfg(feature = "fault-points")]
mod powercut;

pub use file_io::{DurableFile, FaultOp, FaultyIo, Io, OsIo};
#[cfg(feature = "fault-points")]
pub use powercut::{CutMode, CutPoint, CutReport, PointOp, PowerCutIo};

/// Why a store operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading, creating, renaming or removing a file failed before anything was
    /// committed; the store (if it was open) is unchanged and still usable.
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A write or fsync of committed state failed. Fatal: the store is now poisoned and
    /// the process should exit non-zero so the restart replays from disk.
    Fatal {
        /// `write`, `fsync`, `directory fsync`, `reopen` …
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// An earlier write or fsync failed; the store refuses every call.
    Poisoned {
        /// The file.
        path: PathBuf,
    },
    /// Damage inside the file found on replay: the line (1-based) and what is wrong.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number of the first bad line.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A record to append could not be encoded as a single JSON line.
    Encode {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { op, path, source } => {
                write!(f, "{}: {op} failed: {source}", path.display())
            }
            StoreError::Fatal { op, path, source } => write!(
                f,
                "{}: {op} failed, store poisoned (never retried): {source}",
                path.display()
            ),
            StoreError::Poisoned { path } => write!(
                f,
                "{}: store poisoned by an earlier write or fsync failure",
                path.display()
            ),
            StoreError::Corrupt { path, line, reason } => {
                write!(f, "{}: line {line}: {reason}", path.display())
            }
            StoreError::Encode { reason } => write!(f, "record not encodable: {reason}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } | StoreError::Fatal { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// How appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Concurrent appenders share one fsync (the default).
    #[default]
    GroupCommit,
    /// Each append is written and fsync'd alone, under the store's lock (for comparison
    /// in benchmarks).
    PerRecord,
}

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Records handed to the visitor.
    pub records: u64,
    /// The anchor's sequence number (0 for a file never compacted).
    pub anchor_seq: u64,
    /// Bytes of a torn last line (cut off on open; only reported by [`verify_file`]).
    pub torn_bytes: usize,
}

/// The outcome of [`replay_bytes`]: records were visited; a torn tail may be present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// What was found.
    pub summary: ReplaySummary,
    /// Length of the good prefix: bytes after it are the torn tail.
    pub good_len: usize,
    /// Sequence number of the last record (or the anchor's).
    pub last_seq: u64,
    /// Hash of the last record (or the anchor's).
    pub last_hash: [u8; 32],
    /// Whether a valid anchor line was found (false only for an empty good prefix).
    pub has_anchor: bool,
}

/// A line that is not in the store's format: line number and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// The caller's replay callback: a record's `seq` and its data bytes; an `Err` makes
/// the record (and so the file) count as damaged.
pub type Visitor<'a> = dyn FnMut(u64, &[u8]) -> Result<(), String> + 'a;

const HASH_HEX: usize = 64;

enum Line<'a> {
    Anchor {
        seq: u64,
        hash: [u8; 32],
    },
    Record {
        seq: u64,
        prev: [u8; 32],
        data: &'a [u8],
        hash: [u8; 32],
    },
}

fn hex32(b: &[u8]) -> Option<[u8; 32]> {
    if b.len() != HASH_HEX || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let s = std::str::from_utf8(b).ok()?;
    hex_decode(s).ok()?.try_into().ok()
}

fn parse_seq(b: &[u8]) -> Option<(u64, usize)> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 20 || (n > 1 && b[0] == b'0') {
        return None;
    }
    let s = std::str::from_utf8(&b[..n]).ok()?;
    Some((s.parse().ok()?, n))
}

fn parse_line(line: &[u8]) -> Result<Line<'_>, &'static str> {
    let rest = line.strip_prefix(b"{\"seq\":").ok_or("not a store line")?;
    let (seq, n) = parse_seq(rest).ok_or("bad sequence number")?;
    let rest = &rest[n..];
    if let Some(a) = rest.strip_prefix(b",\"anchor\":\"") {
        let a = a.strip_suffix(b"\"}").ok_or("bad anchor line")?;
        let hash = hex32(a).ok_or("bad anchor hash")?;
        return Ok(Line::Anchor { seq, hash });
    }
    let rest = rest.strip_prefix(b",\"prev\":\"").ok_or("missing prev")?;
    if rest.len() < HASH_HEX {
        return Err("bad prev hash");
    }
    let prev = hex32(&rest[..HASH_HEX]).ok_or("bad prev hash")?;
    let rest = rest[HASH_HEX..]
        .strip_prefix(b"\",\"data\":")
        .ok_or("missing data")?;
    let rest = rest.strip_suffix(b"\"}").ok_or("missing sha256")?;
    if rest.len() < HASH_HEX + 11 {
        return Err("missing sha256");
    }
    let (data, tail) = rest.split_at(rest.len() - HASH_HEX - 11);
    let hash_hex = tail
        .strip_prefix(b",\"sha256\":\"")
        .ok_or("missing sha256")?;
    let hash = hex32(hash_hex).ok_or("bad sha256")?;
    if data.is_empty() || serde_json::from_slice::<serde::de::IgnoredAny>(data).is_err() {
        return Err("data is not JSON");
    }
    Ok(Line::Record {
        seq,
        prev,
        data,
        hash,
    })
}

fn record_hash(prev: &[u8; 32], seq: u64, data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(data);
    h.finalize().into()
}

fn anchor_line(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    format!("{{\"seq\":{seq},\"anchor\":\"{}\"}}\n", hex_encode(hash)).into_bytes()
}

fn record_line(seq: u64, prev: &[u8; 32], data: &[u8]) -> (Vec<u8>, [u8; 32]) {
    let hash = record_hash(prev, seq, data);
    let mut line = Vec::with_capacity(data.len() + 180);
    line.extend_from_slice(
        format!(
            "{{\"seq\":{seq},\"prev\":\"{}\",\"data\":",
            hex_encode(prev)
        )
        .as_bytes(),
    );
    line.extend_from_slice(data);
    line.extend_from_slice(format!(",\"sha256\":\"{}\"}}\n", hex_encode(&hash)).as_bytes());
    (line, hash)
}

/// Replays the bytes of a store file: checks every line and the chain, hands each
/// record's `seq` and data to `visit`, and tells where a torn tail begins. Never
/// modifies anything and never panics; this is what the fuzzer drives.
pub fn replay_bytes(bytes: &[u8], visit: &mut Visitor<'_>) -> Result<Replayed, Damage> {
    let mut out = Replayed {
        summary: ReplaySummary::default(),
        good_len: 0,
        last_seq: 0,
        last_hash: [0; 32],
        has_anchor: false,
    };
    let mut pos = 0usize;
    let mut line_no = 0usize;
    while pos < bytes.len() {
        line_no += 1;
        let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            // No final newline: the tail of an interrupted append.
            break;
        };
        let line = &bytes[pos..pos + nl];
        let end = pos + nl + 1;
        let is_last = end == bytes.len();
        let parsed = match parse_line(line) {
            Ok(p) => p,
            Err(_) if is_last => break,
            Err(reason) => {
                return Err(Damage {
                    line: line_no,
                    reason: reason.to_string(),
                });
            }
        };
        match parsed {
            Line::Anchor { seq, hash } => {
                if line_no != 1 {
                    return Err(Damage {
                        line: line_no,
                        reason: "anchor line after line 1".into(),
                    });
                }
                out.last_seq = seq;
                out.last_hash = hash;
                out.has_anchor = true;
                out.summary.anchor_seq = seq;
            }
            Line::Record {
                seq,
                prev,
                data,
                hash,
            } => {
                if line_no == 1 {
                    return Err(Damage {
                        line: 1,
                        reason: "first line is not the anchor (lines deleted at the start?)".into(),
                    });
                }
                let want = out.last_seq.checked_add(1).ok_or(Damage {
                    line: line_no,
                    reason: "sequence number overflow".into(),
                })?;
                if seq != want {
                    return Err(Damage {
                        line: line_no,
                        reason: format!(
                            "sequence gap: expected {want}, found {seq} (line deleted, inserted or reordered)"
                        ),
                    });
                }
                if prev != out.last_hash {
                    return Err(Damage {
                        line: line_no,
                        reason: "chain broken: prev does not match the line before".into(),
                    });
                }
                if record_hash(&prev, seq, data) != hash {
                    return Err(Damage {
                        line: line_no,
                        reason: "hash mismatch: line altered".into(),
                    });
                }
                visit(seq, data).map_err(|e| Damage {
                    line: line_no,
                    reason: format!("record rejected by reader: {e}"),
                })?;
                out.last_seq = seq;
                out.last_hash = hash;
                out.summary.records += 1;
            }
        }
        pos = end;
        out.good_len = end;
    }
    out.summary.torn_bytes = bytes.len() - out.good_len;
    Ok(out)
}

/// Replays the file at `path` read-only (no torn tail is cut, nothing is written):
/// for `selftest offline` and audits. A missing file is an `Io` error.
pub fn verify_file(path: &Path) -> Result<ReplaySummary, StoreError> {
    let bytes = OsIo
        .read(path)
        .map_err(|source| StoreError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| StoreError::Io {
            op: "read",
            path: path.to_path_buf(),
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
    replay_bytes(&bytes, &mut |_, _| Ok(()))
        .map(|r| r.summary)
        .map_err(|d| StoreError::Corrupt {
            path: path.to_path_buf(),
            line: d.line,
            reason: d.reason,
        })
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

struct Chain {
    file: Arc<dyn DurableFile>,
    last_seq: u64,
    last_hash: [u8; 32],
    records: u64,
    poisoned: bool,
}

#[derive(Default)]
struct SyncState {
    synced: u64,
    syncing: bool,
    poisoned: bool,
}

/// An open store file. `Sync`: share it between threads behind an `Arc`.
pub struct Store {
    path: PathBuf,
    dir: PathBuf,
    io: Arc<dyn Io>,
    mode: SyncMode,
    chain: Mutex<Chain>,
    written: AtomicU64,
    sync: Mutex<SyncState>,
    synced_cv: Condvar,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the chain half-updated in a way
    // that matters: every update after a write is guarded by the poisoned flag.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// Opens (or creates) the store at `path` on the real file system, replaying every
    /// record into `visit`. See the module doc for what is cut and what is an error.
    pub fn open(
        path: impl AsRef<Path>,
        visit: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<Store, StoreError> {
        Store::open_with(path, Arc::new(OsIo), SyncMode::GroupCommit, visit)
    }

    /// [`Store::open`] with an explicit [`Io`] and [`SyncMode`].
    pub fn open_with(
        path: impl AsRef<Path>,
        io: Arc<dyn Io>,
        mode: SyncMode,
        mut visit: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<Store, StoreError> {
        #[cfg(feature = "fault-points")]
        let io = crate::faultpoint::store_io(io);
        let path = path.as_ref().to_path_buf();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let ioerr = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| StoreError::Io {
                op,
                path: p,
                source,
            }
        };
        let dir_mode = io
            .ensure_dir(&dir)
            .map_err(ioerr("create directory", &dir))?;
        if dir_mode & 0o077 != 0 {
            crate::warn!(
                "state directory is readable or writable by others",
                dir = dir.display(),
                mode = format_args!("{dir_mode:04o}"),
                want = "0700"
            );
        }
        let tmp = sibling(&path, ".compact.tmp");
        if io.read(&tmp).map_err(ioerr("read", &tmp))?.is_some() {
            crate::warn!(
                "removing a compaction temp file left by a crash; the store file is intact",
                path = tmp.display()
            );
            io.remove(&tmp).map_err(ioerr("remove", &tmp))?;
        }

        let existing = io.read(&path).map_err(ioerr("read", &path))?;
        let (replayed, len) = match &existing {
            Some(bytes) => {
                let r = replay_bytes(bytes, &mut visit).map_err(|d| StoreError::Corrupt {
                    path: path.clone(),
                    line: d.line,
                    reason: d.reason,
                })?;
                (Some(r), bytes.len())
            }
            None => (None, 0),
        };
        if existing.is_some() {
            let m = io.file_mode(&path).map_err(ioerr("stat", &path))?;
            if m & 0o077 != 0 {
                crate::warn!(
                    "store file is readable or writable by others",
                    path = path.display(),
                    mode = format_args!("{m:04o}"),
                    want = "0600"
                );
            }
        }

        if let (Some(r), Some(bytes)) = (&replayed, &existing)
            && r.good_len < len
        {
            let torn = &bytes[r.good_len..];
            let broken = sibling(&path, ".broken");
            crate::warn!(
                "cutting a torn last line; its bytes are kept",
                path = path.display(),
                bytes = torn.len(),
                kept_in = broken.display()
            );
            let f = io.open_append(&broken).map_err(ioerr("open", &broken))?;
            f.write_all(torn).map_err(ioerr("write", &broken))?;
            f.sync_data().map_err(ioerr("fsync", &broken))?;
            io.sync_dir(&dir).map_err(ioerr("directory fsync", &dir))?;
            io.truncate(&path, r.good_len as u64)
                .map_err(ioerr("truncate", &path))?;
        }

        let (last_seq, last_hash, records) = match &replayed {
            Some(r) if r.has_anchor => (r.last_seq, r.last_hash, r.summary.records),
            _ => {
                // New (or empty after a torn first write): start the chain.
                let f = io.create_truncate(&path).map_err(ioerr("create", &path))?;
                f.write_all(&anchor_line(0, &[0; 32]))
                    .map_err(ioerr("write", &path))?;
                f.sync_data().map_err(ioerr("fsync", &path))?;
                io.sync_dir(&dir).map_err(ioerr("directory fsync", &dir))?;
                (0, [0; 32], 0)
            }
        };
        let file = io.open_append(&path).map_err(ioerr("open", &path))?;
        Ok(Store {
            path,
            dir,
            io,
            mode,
            chain: Mutex::new(Chain {
                file,
                last_seq,
                last_hash,
                records,
                poisoned: false,
            }),
            written: AtomicU64::new(0),
            sync: Mutex::new(SyncState::default()),
            synced_cv: Condvar::new(),
        })
    }

    /// The store file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records in the file now (after the last compaction, plus appends).
    pub fn records(&self) -> u64 {
        lock(&self.chain).records
    }

    /// Whether an earlier write or fsync failed.
    pub fn is_poisoned(&self) -> bool {
        lock(&self.chain).poisoned || lock(&self.sync).poisoned
    }

    fn encode(value: &impl serde::Serialize) -> Result<Vec<u8>, StoreError> {
        let data = serde_json::to_vec(value).map_err(|e| StoreError::Encode {
            reason: e.to_string(),
        })?;
        // serde_json's compact output escapes control characters, so it is one line.
        if data.contains(&b'\n') {
            return Err(StoreError::Encode {
                reason: "record contains a newline".into(),
            });
        }
        Ok(data)
    }

    fn fatal(&self, op: &'static str, source: io::Error) -> StoreError {
        crate::error!(
            "store write failed; poisoned, never retried",
            path = self.path.display(),
            op = op,
            error = source
        );
        StoreError::Fatal {
            op,
            path: self.path.clone(),
            source,
        }
    }

    /// Appends one record and returns its sequence number once it is on disk (written
    /// and fsync'd). A failure poisons the store (see the module doc).
    pub fn append(&self, value: &impl serde::Serialize) -> Result<u64, StoreError> {
        let data = Store::encode(value)?;
        let mut chain = lock(&self.chain);
        if chain.poisoned {
            return Err(StoreError::Poisoned {
                path: self.path.clone(),
            });
        }
        let seq = chain.last_seq + 1;
        let (line, hash) = record_line(seq, &chain.last_hash, &data);
        if let Err(e) = chain.file.write_all(&line) {
            chain.poisoned = true;
            lock(&self.sync).poisoned = true;
            self.synced_cv.notify_all();
            return Err(self.fatal("write", e));
        }
        chain.last_seq = seq;
        chain.last_hash = hash;
        chain.records += 1;
        if self.mode == SyncMode::PerRecord {
            if let Err(e) = chain.file.sync_data() {
                chain.poisoned = true;
                lock(&self.sync).poisoned = true;
                return Err(self.fatal("fsync", e));
            }
            return Ok(seq);
        }
        let ticket = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let file = chain.file.clone();
        drop(chain);
        self.wait_durable(ticket, &file)?;
        Ok(seq)
    }

    // Group commit: the first waiter with no sync in flight becomes the leader and syncs
    // for every write ticketed so far; the others wait for a sync that covers them.
    fn wait_durable(&self, ticket: u64, file: &Arc<dyn DurableFile>) -> Result<(), StoreError> {
        let mut st = lock(&self.sync);
        loop {
            if st.poisoned {
                return Err(StoreError::Poisoned {
                    path: self.path.clone(),
                });
            }
            if st.synced >= ticket {
                return Ok(());
            }
            if !st.syncing {
                st.syncing = true;
                let target = self.written.load(Ordering::SeqCst);
                drop(st);
                // `synced < ticket` means no compaction ran since our write (each one
                // syncs the old file and marks every earlier ticket synced), so every
                // ticket up to `target` was written to the same file as ours.
                let res = file.sync_data();
                st = lock(&self.sync);
                st.syncing = false;
                match res {
                    Ok(()) => st.synced = st.synced.max(target),
                    Err(e) => {
                        st.poisoned = true;
                        drop(st);
                        lock(&self.chain).poisoned = true;
                        self.synced_cv.notify_all();
                        return Err(self.fatal("fsync", e));
                    }
                }
                self.synced_cv.notify_all();
            } else {
                st = self.synced_cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// Replaces the file with a new one holding only `keep` (in order), anchored on the
    /// current last record so the chain still verifies. Atomic: a crash leaves either
    /// the old or the new file. The caller must make `keep` include every record it
    /// still needs, including any appended while it collected them (callers serialize
    /// their own appends against compaction).
    ///
    /// A failure before the rename leaves the old file in use and the store usable
    /// (`Io`); a failure after it poisons the store (`Fatal`).
    pub fn compact<T: serde::Serialize>(
        &self,
        keep: impl IntoIterator<Item = T>,
    ) -> Result<u64, StoreError> {
        let mut chain = lock(&self.chain);
        if chain.poisoned {
            return Err(StoreError::Poisoned {
                path: self.path.clone(),
            });
        }
        // Everything written to the old file must be durable before it is replaced, so
        // no appender still waiting on a group sync is told "durable" for a record that
        // only the unlinked old inode holds.
        if let Err(e) = chain.file.sync_data() {
            chain.poisoned = true;
            lock(&self.sync).poisoned = true;
            self.synced_cv.notify_all();
            return Err(self.fatal("fsync", e));
        }
        {
            let mut st = lock(&self.sync);
            st.synced = st.synced.max(self.written.load(Ordering::SeqCst));
        }
        self.synced_cv.notify_all();

        let tmp = sibling(&self.path, ".compact.tmp");
        let ioerr = |op: &'static str| {
            let p = tmp.clone();
            move |source| StoreError::Io {
                op,
                path: p,
                source,
            }
        };
        let anchor_seq = chain.last_seq;
        let anchor_hash = chain.last_hash;
        let mut buf = anchor_line(anchor_seq, &anchor_hash);
        let (mut seq, mut prev, mut n) = (anchor_seq, anchor_hash, 0u64);
        for item in keep {
            let data = Store::encode(&item)?;
            seq += 1;
            let (line, hash) = record_line(seq, &prev, &data);
            buf.extend_from_slice(&line);
            prev = hash;
            n += 1;
        }
        let written = (|| {
            let f = self.io.create_truncate(&tmp).map_err(ioerr("create"))?;
            f.write_all(&buf).map_err(ioerr("write"))?;
            f.sync_data().map_err(ioerr("fsync"))?;
            crate::faultpoint::reached_in(&self.path, "compact-before-rename");
            self.io.rename(&tmp, &self.path).map_err(ioerr("rename"))
        })();
        if let Err(e) = written {
            let _ = self.io.remove(&tmp);
            return Err(e);
        }
        // From here the new file is in place: failures are fatal.
        if let Err(e) = self.io.sync_dir(&self.dir) {
            chain.poisoned = true;
            lock(&self.sync).poisoned = true;
            return Err(self.fatal("directory fsync", e));
        }
        match self.io.open_append(&self.path) {
            Ok(f) => chain.file = f,
            Err(e) => {
                chain.poisoned = true;
                lock(&self.sync).poisoned = true;
                return Err(self.fatal("reopen", e));
            }
        }
        chain.last_seq = seq;
        chain.last_hash = prev;
        chain.records = n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(records: &[&str]) -> Vec<u8> {
        let mut out = anchor_line(0, &[0; 32]);
        let mut prev = [0u8; 32];
        for (i, r) in records.iter().enumerate() {
            let (line, h) = record_line(i as u64 + 1, &prev, r.as_bytes());
            out.extend_from_slice(&line);
            prev = h;
        }
        out
    }

    #[test]
    fn line_format_is_as_documented() {
        let (line, hash) = record_line(1, &[0; 32], br#"{"a":1}"#);
        let mut h = Sha256::new();
        h.update([0u8; 32]);
        h.update(1u64.to_be_bytes());
        h.update(br#"{"a":1}"#);
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(hash, want);
        let text = String::from_utf8(line).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"seq\":1,\"prev\":\"{}\",\"data\":{{\"a\":1}},\"sha256\":\"{}\"}}\n",
                "0".repeat(64),
                hex_encode(&want)
            )
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["data"]["a"], 1);
    }

    #[test]
    fn replay_visits_in_order_and_finds_torn_tail() {
        let mut bytes = build(&["1", "\"two\"", "{\"x\":[3]}"]);
        let good = bytes.len();
        bytes.extend_from_slice(b"{\"seq\":4,\"pr");
        let mut seen = Vec::new();
        let r = replay_bytes(&bytes, &mut |s, d| {
            seen.push((s, d.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2], (3, b"{\"x\":[3]}".to_vec()));
        assert_eq!(r.good_len, good);
        assert_eq!(r.summary.torn_bytes, 12);
    }

    #[test]
    fn rejects_seq_with_leading_zero_and_data_that_is_not_json() {
        assert!(parse_line(b"{\"seq\":01,\"anchor\":\"00\"}").is_err());
        let (line, _) = record_line(1, &[0; 32], b"{bad");
        assert_eq!(
            parse_line(&line[..line.len() - 1]).err(),
            Some("data is not JSON")
        );
    }

    #[test]
    fn visitor_rejection_names_the_line() {
        let bytes = build(&["1", "2", "3"]);
        let d = replay_bytes(&bytes, &mut |s, _| {
            if s == 2 { Err("bad".into()) } else { Ok(()) }
        })
        .unwrap_err();
        assert_eq!(d.line, 3);
        assert!(d.reason.contains("bad"));
    }
}
