#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Store rotation: `FILE` → `FILE.1` with the chain carried on by the new file's anchor,
//! and a crash at every write, fsync, create, remove and rename of a rotation leaving
//! files that open clean with nothing acknowledged lost. Also streaming replay at open:
//! a file far larger than the replay's buffers, a torn tail kept whole in `.broken`.

mod common;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use felhom_agent::store::{
    DurableFile, Io, OsIo, Store, StoreError, SyncMode, replay_bytes, verify_file,
};
use serde_json::{Value, json};

fn tempdir(name: &str) -> PathBuf {
    common::fresh_path("rotate", name)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Every record of a file as (seq, data), its anchor (seq, hash hex) and its last
/// (seq, hash hex), checked by the store's own replay.
struct FileView {
    records: Vec<(u64, Value)>,
    anchor: (u64, String),
    last: (u64, String),
}

fn view(path: &Path) -> FileView {
    let bytes = fs::read(path).unwrap();
    let mut records = Vec::new();
    let r = replay_bytes(&bytes, &mut |seq, data| {
        records.push((seq, serde_json::from_slice(data).unwrap()));
        Ok(())
    })
    .unwrap_or_else(|d| panic!("{}: line {}: {}", path.display(), d.line, d.reason));
    assert_eq!(
        r.summary.torn_bytes,
        0,
        "{} has a torn tail",
        path.display()
    );
    let first: Value =
        serde_json::from_slice(bytes.split(|&b| b == b'\n').next().unwrap()).unwrap();
    let hex = |h: &[u8; 32]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    FileView {
        records,
        anchor: (
            first["seq"].as_u64().unwrap(),
            first["anchor"].as_str().unwrap().to_string(),
        ),
        last: (r.last_seq, hex(&r.last_hash)),
    }
}

fn open(path: &Path) -> (Store, Vec<Value>) {
    let mut seen = Vec::new();
    let s = Store::open(path, |_, data| {
        seen.push(serde_json::from_slice(data).map_err(|e| e.to_string())?);
        Ok(())
    })
    .unwrap();
    (s, seen)
}

#[test]
fn rotation_keeps_the_old_file_and_carries_the_chain_into_the_new_one() {
    let dir = tempdir("basic");
    let path = dir.join("audit.log");
    let (s, _) = open(&path);
    for i in 0..5 {
        s.append(&json!({"r": i})).unwrap();
    }
    let carried = s.rotate([json!({"c": 0}), json!({"c": 1})]).unwrap();
    assert_eq!(carried, 2);
    assert_eq!(s.records(), 2);
    assert_eq!(s.file_len(), fs::metadata(&path).unwrap().len());
    assert_eq!(s.append(&json!({"r": 5})).unwrap(), 8, "numbering goes on");

    let old = view(&sibling(&path, ".1"));
    let new = view(&path);
    assert_eq!(old.records.len(), 5);
    assert_eq!(old.anchor.0, 0);
    assert_eq!(
        new.anchor, old.last,
        "the new file is anchored on the old one's end"
    );
    let data: Vec<&Value> = new.records.iter().map(|(_, v)| v).collect();
    assert_eq!(data, [&json!({"c": 0}), &json!({"c": 1}), &json!({"r": 5})]);
    assert_eq!(new.records[0].0, 6);
    assert!(!sibling(&path, ".rotate.tmp").exists());

    // A second rotation replaces the older `.1`; the chain still links file to file.
    drop(s);
    let (s, seen) = open(&path);
    assert_eq!(seen.len(), 3);
    s.rotate(Vec::<Value>::new()).unwrap();
    let old2 = view(&sibling(&path, ".1"));
    assert_eq!(old2.anchor, old.last);
    assert_eq!(view(&path).anchor, old2.last);
    assert_eq!(verify_file(&path).unwrap().records, 0);
    fs::remove_dir_all(&dir).unwrap();
}

/// An [`Io`] over the real file system that "crashes" at its `at`-th mutating
/// operation (a write, fsync, create, remove, rename, truncate or directory fsync):
/// that one fails (a write after writing half its bytes) and so does every later one,
/// as if the process had died there. Reads pass through.
#[derive(Clone)]
struct CrashAt {
    ops: Arc<AtomicU64>,
    at: Arc<AtomicU64>,
}

impl CrashAt {
    fn new() -> CrashAt {
        CrashAt {
            ops: Arc::new(AtomicU64::new(0)),
            at: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }
    /// Crashes at the `k`-th mutating operation from now.
    fn arm(&self, k: u64) {
        self.at
            .store(self.ops.load(Ordering::SeqCst) + k, Ordering::SeqCst);
    }
    fn crashed(&self) -> bool {
        self.ops.load(Ordering::SeqCst) >= self.at.load(Ordering::SeqCst)
    }
    fn step(&self) -> io::Result<()> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.at.load(Ordering::SeqCst) {
            Err(io::Error::other("crashed here"))
        } else {
            Ok(())
        }
    }
}

struct CrashFile {
    inner: Arc<dyn DurableFile>,
    io: CrashAt,
}

impl DurableFile for CrashFile {
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        if let Err(e) = self.io.step() {
            if !self.io.crashed_before_this() {
                self.inner.write_all(&buf[..buf.len() / 2])?;
            }
            return Err(e);
        }
        self.inner.write_all(buf)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.io.step()?;
        self.inner.sync_data()
    }
}

impl CrashAt {
    /// Whether the crash happened before the current operation (only the operation
    /// at the crash itself writes half its bytes).
    fn crashed_before_this(&self) -> bool {
        self.ops.load(Ordering::SeqCst) > self.at.load(Ordering::SeqCst)
    }
}

impl Io for CrashAt {
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        OsIo.read(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<Option<Box<dyn io::Read + Send>>> {
        OsIo.open_read(path)
    }
    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn DurableFile>> {
        self.step()?;
        Ok(Arc::new(CrashFile {
            inner: OsIo.open_append(path)?,
            io: self.clone(),
        }))
    }
    fn create_truncate(&self, path: &Path) -> io::Result<Arc<dyn DurableFile>> {
        self.step()?;
        Ok(Arc::new(CrashFile {
            inner: OsIo.create_truncate(path)?,
            io: self.clone(),
        }))
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.step()?;
        OsIo.truncate(path, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step()?;
        OsIo.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.step()?;
        OsIo.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.step()?;
        OsIo.sync_dir(dir)
    }
    fn ensure_dir(&self, dir: &Path) -> io::Result<u32> {
        OsIo.ensure_dir(dir)
    }
    fn file_mode(&self, path: &Path) -> io::Result<u32> {
        OsIo.file_mode(path)
    }
}

/// Builds a store that has rotated once already (so `.1` exists) and holds `r0..r5`
/// acknowledged in the current file; returns it on `io`.
fn prepared(path: &Path, io: &CrashAt) -> Store {
    let s = Store::open_with(path, Arc::new(io.clone()), SyncMode::GroupCommit, |_, _| {
        Ok(())
    })
    .unwrap();
    s.append(&json!({"old": 0})).unwrap();
    s.rotate(Vec::<Value>::new()).unwrap();
    for i in 0..6 {
        s.append(&json!({"r": i})).unwrap();
    }
    s
}

#[test]
fn a_crash_at_every_step_of_a_rotation_reopens_clean_and_loses_nothing_acknowledged() {
    let acked: Vec<Value> = (0..6).map(|i| json!({"r": i})).collect();
    let carry = [json!({"c": "pending-105"}), json!({"c": "pending-106"})];
    let mut states = Vec::new();
    for k in 1.. {
        let dir = tempdir("crash");
        let path = dir.join("audit.log");
        let io = CrashAt::new();
        let store = prepared(&path, &io);
        let before = view(&path);
        io.arm(k);
        let res = store.rotate(carry.clone());
        let crashed = io.crashed();
        if !crashed {
            // Past the last operation: the rotation ran whole; every step was covered.
            assert_eq!(res.unwrap(), 2);
            assert!(k > 8, "a rotation has at least 8 writes, syncs and renames");
            fs::remove_dir_all(&dir).unwrap();
            break;
        }
        assert!(res.is_err(), "step {k}: a crashed rotation reports failure");
        if !matches!(res, Err(StoreError::Io { .. })) {
            assert!(store.is_poisoned(), "step {k}: a fatal failure poisons");
        }
        drop(store);

        // Restart on what the crash left: the open settles the rotation.
        let (s, seen) = open(&path);
        assert!(
            !sibling(&path, ".rotate.tmp").exists(),
            "step {k}: the temp file is gone"
        );
        let rotated = sibling(&path, ".1");
        let old = rotated.exists().then(|| view(&rotated));
        let current = view(&path);
        let finished = current.anchor == before.last;
        if finished {
            // Completed: the acknowledged records are all in `.1`, the carried ones
            // lead the new file, and the chain runs on from `.1`'s end.
            let old = old.expect("a finished rotation leaves .1");
            let old_data: Vec<Value> = old.records.iter().map(|(_, v)| v.clone()).collect();
            assert_eq!(old_data, acked, "step {k}");
            assert_eq!(old.last, before.last, "step {k}");
            assert_eq!(seen, carry.to_vec(), "step {k}");
        } else {
            // Discarded: the current file is exactly what it was.
            assert_eq!(current.anchor, before.anchor, "step {k}");
            assert_eq!(current.records, before.records, "step {k}");
            assert_eq!(&seen[..], &acked[..], "step {k}");
        }
        states.push(finished);
        // The store goes on: the next append continues the chain.
        let seq = s.append(&json!({"after": k})).unwrap();
        assert_eq!(seq, before.last.0 + 1 + if finished { 2 } else { 0 });
        assert_eq!(verify_file(&path).unwrap().torn_bytes, 0);
        drop(s);
        fs::remove_dir_all(&dir).unwrap();
    }
    // Both outcomes were reached: crashes before the first rename discard, crashes
    // after it finish.
    assert!(
        states.contains(&true) && states.contains(&false),
        "{states:?}"
    );
}

#[test]
fn open_settles_each_state_a_rotation_can_leave() {
    let dir = tempdir("states");
    let path = dir.join("audit.log");
    let tmp = sibling(&path, ".rotate.tmp");
    let (s, _) = open(&path);
    s.append(&json!({"r": 1})).unwrap();
    drop(s);
    let file = fs::read(&path).unwrap();

    // A temp file beside an intact file, whole or torn: discarded.
    for temp in [file.clone(), file[..file.len() / 2].to_vec()] {
        fs::write(&tmp, &temp).unwrap();
        let (_, seen) = open(&path);
        assert_eq!(seen, [json!({"r": 1})]);
        assert!(!tmp.exists());
    }

    // The file renamed away, the temp still there: finished.
    let (s, _) = open(&path);
    s.rotate([json!({"c": 1})]).unwrap();
    drop(s);
    let new_file = fs::read(&path).unwrap();
    fs::rename(&path, &tmp).unwrap();
    let (s, seen) = open(&path);
    assert_eq!(seen, [json!({"c": 1})]);
    assert!(!tmp.exists());
    assert_eq!(fs::read(&path).unwrap(), new_file);
    assert_eq!(view(&path).anchor, view(&sibling(&path, ".1")).last);
    drop(s);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn open_streams_a_large_file_and_keeps_a_large_torn_tail_whole() {
    let dir = tempdir("stream");
    let path = dir.join("journal.log");
    let (s, _) = open(&path);
    let rows: Vec<Value> = (0..3000)
        .map(|i| json!({"i": i, "pad": "p".repeat(200)}))
        .collect();
    // One compaction writes them all with one fsync.
    s.compact(rows.iter()).unwrap();
    drop(s);
    let good = fs::metadata(&path).unwrap().len();
    assert!(good > 600_000, "several replay buffers long: {good}");
    // A torn tail bigger than the replay's buffer.
    let torn: Vec<u8> = std::iter::repeat_n(b'z', 200_000).collect();
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    io::Write::write_all(&mut f, &torn).unwrap();
    drop(f);

    let (s, seen) = open(&path);
    assert_eq!(seen, rows);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        good,
        "the torn tail is cut"
    );
    assert_eq!(s.file_len(), good);
    assert_eq!(fs::read(sibling(&path, ".broken")).unwrap(), torn);
    assert_eq!(s.append(&json!({"i": "next"})).unwrap(), 3001);
    fs::remove_dir_all(&dir).unwrap();
}
