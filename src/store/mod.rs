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
//! [`Store::open`] streams the file, one line at a time (at most [`MAX_LINE_BYTES`]), and
//! hands each record's `seq` and data bytes to the caller's visitor, in order: memory at
//! open does not grow with the file. A torn **last** line (no final newline, or a last
//! line that does not parse) is what an interrupted append leaves: its bytes are
//! appended to `FILE.broken` (fsync'd), cut from the file (fsync'd), and the file goes
//! on. Anything wrong **inside** the file (a line that does not parse or is longer than
//! the cap, a sequence gap, a broken chain, a hash mismatch, data the visitor rejects) is
//! [`StoreError::Corrupt`] naming the 1-based line number; the caller decides what to
//! refuse.
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
//! # Compaction, rotation and new files
//!
//! [`Store::compact`] writes the kept records after a fresh anchor to `FILE.compact.tmp`
//! in the same directory, fsyncs it, renames it over the file and fsyncs the directory.
//! A temp file left by a crash before the rename is removed on the next open; the old
//! file is intact. [`Store::rotate`] keeps the old file as `FILE.1` instead of dropping
//! it, and starts the new one on the same kind of anchor; its steps, and how
//! [`Store::open`] completes or discards a rotation a crash interrupted, are in
//! `rotate.rs`. A new file is created with its anchor line, fsync'd, and the directory
//! fsync'd. Files are created 0600 and a missing directory 0700; looser modes on existing
//! ones are reported with a warning.

use crate::base::sync::lock;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

pub(crate) mod faultpoint;
mod file_io;
mod line;
#[cfg(feature = "fault-points")]
mod powercut;
mod replace;
mod rotate;
pub(crate) mod statelock;
mod take;

pub use faultpoint::{
    FAIL_SYNC_AT_ENV, JOURNAL_COMPACT_AT_ENV, PAUSE_AT_ENV, PAUSE_MARKER_ENV, PCT_ENV,
    SECOND_MS_ENV,
};
pub use file_io::{DurableFile, FaultOp, FaultyIo, Io, OsIo};
pub use line::{
    Damage, MAX_LINE_BYTES, RECORD_OVERHEAD, ReplayError, ReplaySummary, Replayed, Visitor,
    replay_bytes, replay_reader, verify_file,
};
use line::{READ_BUFFER, anchor_line, record_line};
#[cfg(feature = "fault-points")]
pub use powercut::{CutMode, CutPoint, CutReport, PointOp, PowerCutIo};
pub use replace::{replace_file, replace_temp, set_aside};
pub use statelock::{StateLock, StateLockError};
pub use take::{take_file, taken_path};

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

/// `path` with `suffix` appended to its file name: `FILE.tmp` beside `FILE`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// The directory holding `path` (`.` for a bare file name): the one to fsync after a
/// file in it is created or renamed.
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

struct Chain {
    file: Arc<dyn DurableFile>,
    last_seq: u64,
    last_hash: [u8; 32],
    records: u64,
    /// Bytes in the current file: what replay kept, plus every line written since.
    len: u64,
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
        let io = crate::store::faultpoint::store_io(io);
        let path = path.as_ref().to_path_buf();
        let dir = parent_dir(&path).to_path_buf();
        let dir_mode = io
            .ensure_dir(&dir)
            .map_err(io_err("create directory", &dir))?;
        warn_if_open(&dir, dir_mode, "0700");
        let tmp = sibling(&path, ".compact.tmp");
        if exists(io.as_ref(), &tmp)? {
            crate::warn!(
                compaction_temp_removed,
                "removing a compaction temp file left by a crash; the store file is intact",
                path = tmp.display()
            );
            io.remove(&tmp).map_err(io_err("remove", &tmp))?;
        }
        rotate::settle(io.as_ref(), &path, &dir)?;

        let replayed = match io.open_read(&path).map_err(io_err("open", &path))? {
            Some(stream) => {
                let mut reader = io::BufReader::with_capacity(READ_BUFFER, stream);
                let r = replay_reader(&mut reader, &mut visit).map_err(|e| match e {
                    ReplayError::Damage(d) => StoreError::Corrupt {
                        path: path.clone(),
                        line: d.line,
                        reason: d.reason,
                    },
                    ReplayError::Io { source, .. } => StoreError::Io {
                        op: "read",
                        path: path.clone(),
                        source,
                    },
                })?;
                let m = io.file_mode(&path).map_err(io_err("stat", &path))?;
                warn_if_open(&path, m, "0600");
                Some(r)
            }
            None => None,
        };

        if let Some(r) = &replayed
            && r.summary.torn_bytes > 0
        {
            let broken = sibling(&path, ".broken");
            crate::warn!(
                store_torn_line_cut,
                "cutting a torn last line; its bytes are kept",
                path = path.display(),
                bytes = r.summary.torn_bytes,
                kept_in = broken.display()
            );
            keep_torn_tail(io.as_ref(), &path, &broken, r.good_len as u64)?;
            io.sync_dir(&dir).map_err(io_err("directory fsync", &dir))?;
            io.truncate(&path, r.good_len as u64)
                .map_err(io_err("truncate", &path))?;
        }

        let (last_seq, last_hash, records, len) = match &replayed {
            Some(r) if r.has_anchor => (
                r.last_seq,
                r.last_hash,
                r.summary.records,
                r.good_len as u64,
            ),
            _ => {
                // New (or empty after a torn first write): start the chain.
                let anchor = anchor_line(0, &[0; 32]);
                write_synced(io.as_ref(), &path, &anchor)?;
                io.sync_dir(&dir).map_err(io_err("directory fsync", &dir))?;
                (0, [0; 32], 0, anchor.len() as u64)
            }
        };
        let file = io.open_append(&path).map_err(io_err("open", &path))?;
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
                len,
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

    /// The current file's length in bytes, as this store has written it.
    pub fn file_len(&self) -> u64 {
        lock(&self.chain).len
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
            store_poisoned,
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

    /// The chain, unless an earlier failure poisoned the store.
    fn lock_live(&self) -> Result<MutexGuard<'_, Chain>, StoreError> {
        let chain = lock(&self.chain);
        if chain.poisoned {
            return Err(StoreError::Poisoned {
                path: self.path.clone(),
            });
        }
        Ok(chain)
    }

    /// Poisons the store after a failed write, fsync or rename of committed state.
    fn poison(&self, chain: &mut Chain, op: &'static str, source: io::Error) -> StoreError {
        chain.poisoned = true;
        lock(&self.sync).poisoned = true;
        self.synced_cv.notify_all();
        self.fatal(op, source)
    }

    /// After an fsync of the current file under the chain lock: every ticket written so
    /// far is durable.
    fn mark_all_synced(&self) {
        {
            let mut st = lock(&self.sync);
            st.synced = st.synced.max(self.written.load(Ordering::SeqCst));
        }
        self.synced_cv.notify_all();
    }

    /// Appends one record and returns its sequence number once it is on disk (written
    /// and fsync'd). A failure poisons the store (see the module doc).
    pub fn append(&self, value: &impl serde::Serialize) -> Result<u64, StoreError> {
        let data = Store::encode(value)?;
        let mut chain = self.lock_live()?;
        let seq = chain.last_seq + 1;
        let (line, hash) = record_line(seq, &chain.last_hash, &data);
        check_line_len(&line)?;
        if let Err(e) = chain.file.write_all(&line) {
            return Err(self.poison(&mut chain, "write", e));
        }
        chain.last_seq = seq;
        chain.last_hash = hash;
        chain.records += 1;
        chain.len += line.len() as u64;
        if self.mode == SyncMode::PerRecord {
            if let Err(e) = chain.file.sync_data() {
                return Err(self.poison(&mut chain, "fsync", e));
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
                st = crate::base::sync::wait(&self.synced_cv, st);
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
        let mut chain = self.lock_live()?;
        // Everything written to the old file must be durable before it is replaced, so
        // no appender still waiting on a group sync is told "durable" for a record that
        // only the unlinked old inode holds.
        self.sync_current(&mut chain)?;

        let tmp = sibling(&self.path, ".compact.tmp");
        let next = Rewrite::after(&chain, keep)?;
        let written = (|| {
            write_synced(self.io.as_ref(), &tmp, &next.bytes)?;
            crate::store::faultpoint::reached_in(&self.path, "compact-before-rename");
            self.io
                .rename(&tmp, &self.path)
                .map_err(io_err("rename", &tmp))
        })();
        if let Err(e) = written {
            let _ = self.io.remove(&tmp);
            return Err(e);
        }
        // From here the new file is in place: failures are fatal.
        self.install(&mut chain, next)
    }

    /// fsyncs the current file before it is replaced, and marks every record written so
    /// far durable; a failure poisons the store.
    fn sync_current(&self, chain: &mut Chain) -> Result<(), StoreError> {
        if let Err(e) = chain.file.sync_data() {
            return Err(self.poison(chain, "fsync", e));
        }
        self.mark_all_synced();
        Ok(())
    }

    /// Takes `next`, already renamed to the store's path, into use: fsyncs the directory,
    /// reopens the file for appending and carries the chain on from its last record.
    /// Returns how many records it holds after its anchor. A failure poisons the store.
    fn install(&self, chain: &mut Chain, next: Rewrite) -> Result<u64, StoreError> {
        if let Err(e) = self.io.sync_dir(&self.dir) {
            return Err(self.poison(chain, "directory fsync", e));
        }
        match self.io.open_append(&self.path) {
            Ok(f) => chain.file = f,
            Err(e) => return Err(self.poison(chain, "reopen", e)),
        }
        chain.last_seq = next.last_seq;
        chain.last_hash = next.last_hash;
        chain.records = next.records;
        chain.len = next.bytes.len() as u64;
        Ok(next.records)
    }
}

/// A replacement file, built in memory by compaction and rotation: an anchor on the
/// current last record, then the kept records chained on from it.
struct Rewrite {
    bytes: Vec<u8>,
    last_seq: u64,
    last_hash: [u8; 32],
    records: u64,
}

impl Rewrite {
    fn after<T: serde::Serialize>(
        chain: &Chain,
        items: impl IntoIterator<Item = T>,
    ) -> Result<Rewrite, StoreError> {
        let mut next = Rewrite {
            bytes: anchor_line(chain.last_seq, &chain.last_hash),
            last_seq: chain.last_seq,
            last_hash: chain.last_hash,
            records: 0,
        };
        for item in items {
            let data = Store::encode(&item)?;
            next.last_seq += 1;
            let (line, hash) = record_line(next.last_seq, &next.last_hash, &data);
            check_line_len(&line)?;
            next.bytes.extend_from_slice(&line);
            next.last_hash = hash;
            next.records += 1;
        }
        Ok(next)
    }
}

/// An `Io` failure on `p`, before anything was committed.
/// Warns once per open when the state directory or a store file lets group or others
/// in (`want` is the mode the agent creates them with). Nothing is changed: the
/// operator may have a reason.
fn warn_if_open(path: &Path, mode: u32, want: &str) {
    if mode & 0o077 != 0 {
        crate::warn!(
            state_path_permissive,
            "state path is readable or writable by others",
            path = path.display(),
            mode = format_args!("{mode:04o}"),
            want = want
        );
    }
}

fn io_err(op: &'static str, p: &Path) -> impl FnOnce(io::Error) -> StoreError + use<> {
    let p = p.to_path_buf();
    move |source| StoreError::Io {
        op,
        path: p,
        source,
    }
}

fn exists(io: &dyn Io, p: &Path) -> Result<bool, StoreError> {
    Ok(io.open_read(p).map_err(io_err("open", p))?.is_some())
}

/// Creates (or truncates) `path` holding exactly `bytes`, fsync'd; the caller fsyncs
/// the directory.
fn write_synced(io: &dyn Io, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let f = io.create_truncate(path).map_err(io_err("create", path))?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync_data().map_err(io_err("fsync", path))
}

/// Refuses a line longer than replay accepts, before it is written.
fn check_line_len(line: &[u8]) -> Result<(), StoreError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(StoreError::Encode {
            reason: format!(
                "record line of {} bytes is longer than the {MAX_LINE_BYTES}-byte maximum",
                line.len()
            ),
        });
    }
    Ok(())
}

/// Appends the bytes of `path` after `good_len` to `broken` and fsyncs it, streaming,
/// so a torn tail of any size is kept without holding it in memory.
fn keep_torn_tail(
    io: &dyn Io,
    path: &Path,
    broken: &Path,
    good_len: u64,
) -> Result<(), StoreError> {
    use std::io::Read as _;
    let mut stream = io
        .open_read(path)
        .map_err(io_err("open", path))?
        .ok_or_else(|| io_err("open", path)(io::Error::from(io::ErrorKind::NotFound)))?;
    io::copy(&mut (&mut stream).take(good_len), &mut io::sink()).map_err(io_err("read", path))?;
    let f = io.open_append(broken).map_err(io_err("open", broken))?;
    let mut chunk = vec![0u8; READ_BUFFER];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", path)(e)),
        };
        f.write_all(&chunk[..n]).map_err(io_err("write", broken))?;
    }
    f.sync_data().map_err(io_err("fsync", broken))
}
