//! Power cuts for the store's file-system layer, in the manner of ALICE, CrashMonkey and
//! SQLite's crash-test VFS: [`PowerCutIo`] runs on the real file system as [`FaultyIo`]
//! does, numbers every call that changes it (write, fsync, directory fsync, create,
//! rename, truncate, remove) and keeps a model of what a power cut would leave. The model
//! holds each file's content as of its last fsync and each directory's entries as of its
//! last directory fsync. At the chosen point the power goes: that call and every later
//! one fails, as on a dead machine. [`PowerCutIo::apply_cut`] then rewrites the files on
//! disk to exactly what survived, and the test restarts on them with [`OsIo`].
//!
//! Test-only, behind the `fault-points` feature: the agent never builds one. It models
//! the files that pass through it and the directories they sit in. A directory is taken
//! to survive (the state directory exists before any store opens), and so is a file found
//! on disk before its first use.
//!
//! [`FaultyIo`]: super::FaultyIo

use crate::base::sync::lock;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::file_io::{DurableFile, Io, OsIo};

/// What a power cut leaves of the bytes that no fsync covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// All of them are lost: each file is cut back to its last fsync'd content.
    LoseUnsynced,
    /// As [`CutMode::LoseUnsynced`], except for the latest write no fsync covered: the
    /// first half of it reaches the disk, with every earlier unsynced byte of that file.
    /// This is the torn tail a disk that writes pages back in order leaves.
    TornWrite,
}

/// The kind of a numbered point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PointOp {
    /// [`DurableFile::write_all`].
    Write,
    /// [`DurableFile::sync_data`].
    Sync,
    /// [`Io::sync_dir`].
    SyncDir,
    /// [`Io::create_truncate`], or [`Io::open_append`] of a file that does not exist.
    Create,
    /// [`Io::rename`] (the point names the target).
    Rename,
    /// [`Io::truncate`] (which fsyncs the file itself).
    Truncate,
    /// [`Io::remove`].
    Remove,
}

/// One numbered point: what was called, on which file (or directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutPoint {
    /// The call.
    pub op: PointOp,
    /// The file (the target of a rename; the directory of a directory fsync).
    pub path: PathBuf,
}

/// What [`PowerCutIo::apply_cut`] changed on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files whose content or existence differs from what the process last saw.
    pub files_changed: usize,
}

type Ino = usize;

#[derive(Debug, Clone, Copy)]
struct Written {
    start: usize,
    len: usize,
    seq: u64,
}

#[derive(Debug, Default)]
struct Inode {
    /// What the process sees.
    live: Vec<u8>,
    /// What the last fsync made durable.
    durable: Vec<u8>,
    /// The latest write no fsync has covered yet.
    unsynced: Option<Written>,
}

#[derive(Debug, Default)]
struct Dir {
    live: BTreeMap<OsString, Ino>,
    durable: BTreeMap<OsString, Ino>,
}

#[derive(Debug, Default)]
struct Model {
    inodes: Vec<Inode>,
    dirs: BTreeMap<PathBuf, Dir>,
    trace: Vec<CutPoint>,
    cut: bool,
    applied: bool,
    writes: u64,
    /// A real call failed half-way, so the model may no longer match the disk.
    diverged: Option<String>,
}

fn power_off() -> io::Error {
    io::Error::other("power cut: the machine is off")
}

fn split(path: &Path) -> (PathBuf, OsString) {
    let dir = super::parent_dir(path).to_path_buf();
    let name = path.file_name().map(OsString::from).unwrap_or_default();
    (dir, name)
}

impl Model {
    fn alive(&self) -> io::Result<()> {
        if self.cut { Err(power_off()) } else { Ok(()) }
    }

    /// Numbers a point; `Ok(true)` when the power goes during this very call.
    fn point(&mut self, op: PointOp, path: &Path, cut_at: Option<u64>) -> io::Result<bool> {
        self.alive()?;
        self.trace.push(CutPoint {
            op,
            path: path.to_path_buf(),
        });
        if cut_at == Some(self.trace.len() as u64) {
            self.cut = true;
            return Ok(true);
        }
        Ok(false)
    }

    fn live_ino(&self, path: &Path) -> Option<Ino> {
        let (dir, name) = split(path);
        self.dirs.get(&dir)?.live.get(&name).copied()
    }

    fn new_inode(&mut self, content: Vec<u8>) -> Ino {
        self.inodes.push(Inode {
            durable: content.clone(),
            live: content,
            unsynced: None,
        });
        self.inodes.len() - 1
    }

    /// Takes a file found on disk and not yet modelled as durable, as it is.
    fn adopt(&mut self, path: &Path) -> io::Result<()> {
        if self.live_ino(path).is_some() {
            return Ok(());
        }
        let content = match fs::read(path) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let ino = self.new_inode(content);
        let (dir, name) = split(path);
        let d = self.dirs.entry(dir).or_default();
        d.live.insert(name.clone(), ino);
        d.durable.entry(name).or_insert(ino);
        Ok(())
    }

    /// Links a new, empty file at `path` (not durable until its directory is fsync'd).
    fn link_new(&mut self, path: &Path) -> Ino {
        let ino = self.new_inode(Vec::new());
        let (dir, name) = split(path);
        self.dirs.entry(dir).or_default().live.insert(name, ino);
        ino
    }

    fn wrote(&mut self, ino: Ino, buf: &[u8]) {
        self.writes += 1;
        let seq = self.writes;
        let f = &mut self.inodes[ino];
        f.unsynced = Some(Written {
            start: f.live.len(),
            len: buf.len(),
            seq,
        });
        f.live.extend_from_slice(buf);
    }

    fn synced(&mut self, ino: Ino) {
        let f = &mut self.inodes[ino];
        f.durable = f.live.clone();
        f.unsynced = None;
    }

    /// The content `ino` keeps through the cut.
    fn surviving(&self, ino: Ino, torn: Option<Ino>) -> Vec<u8> {
        let f = &self.inodes[ino];
        match f.unsynced {
            Some(w) if torn == Some(ino) => {
                let end = (w.start + w.len / 2).min(f.live.len());
                f.live[..end].to_vec()
            }
            _ => f.durable.clone(),
        }
    }
}

struct Shared {
    mode: CutMode,
    cut_at: Option<u64>,
    model: Mutex<Model>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Model> {
        // Every update of the model is complete before the lock is released.
        lock(&self.model)
    }
}

/// An [`Io`] over the real file system that loses power at a chosen point (see the
/// module doc). Clones share one machine: give every store of a test the same one.
#[derive(Clone)]
pub struct PowerCutIo {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PowerCutIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.shared.lock();
        f.debug_struct("PowerCutIo")
            .field("mode", &self.shared.mode)
            .field("cut_at", &self.shared.cut_at)
            .field("points", &m.trace.len())
            .field("cut", &m.cut)
            .finish()
    }
}

impl PowerCutIo {
    /// A machine that keeps its power until [`PowerCutIo::apply_cut`]: run a scenario on
    /// it to count and list its points.
    pub fn new(mode: CutMode) -> Self {
        PowerCutIo::build(mode, None)
    }

    /// A machine whose power goes during its `at`-th (1-based) point.
    pub fn cut_at(mode: CutMode, at: u64) -> Self {
        PowerCutIo::build(mode, Some(at))
    }

    fn build(mode: CutMode, cut_at: Option<u64>) -> Self {
        PowerCutIo {
            shared: Arc::new(Shared {
                mode,
                cut_at,
                model: Mutex::new(Model::default()),
            }),
        }
    }

    /// Points reached so far (the one the power went at included).
    pub fn points(&self) -> u64 {
        self.shared.lock().trace.len() as u64
    }

    /// Every point reached so far, in order.
    pub fn trace(&self) -> Vec<CutPoint> {
        self.shared.lock().trace.clone()
    }

    /// Whether the power has gone.
    pub fn is_cut(&self) -> bool {
        self.shared.lock().cut
    }

    /// Cuts the power now if it has not gone yet, then rewrites every modelled file on
    /// disk to what survived: a name whose creation, rename or removal no directory fsync
    /// covered is back as it was at that directory's last fsync, and each file holds what
    /// its last fsync covered (more under [`CutMode::TornWrite`]). Once only.
    pub fn apply_cut(&self) -> io::Result<CutReport> {
        let mut m = self.shared.lock();
        if let Some(why) = &m.diverged {
            return Err(io::Error::other(format!(
                "the model no longer matches the disk: {why}"
            )));
        }
        if m.applied {
            return Err(io::Error::other("the cut was already applied"));
        }
        m.cut = true;
        m.applied = true;
        let torn = match self.shared.mode {
            CutMode::LoseUnsynced => None,
            CutMode::TornWrite => m
                .inodes
                .iter()
                .enumerate()
                .filter_map(|(ino, f)| f.unsynced.map(|w| (w.seq, ino)))
                .max()
                .map(|(_, ino)| ino),
        };
        let mut report = CutReport::default();
        for (dir, d) in &m.dirs {
            let names: BTreeSet<&OsString> = d.live.keys().chain(d.durable.keys()).collect();
            for name in names {
                let path = dir.join(name);
                let before = match fs::read(&path) {
                    Ok(b) => Some(b),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e),
                };
                let after = d.durable.get(name).map(|&ino| m.surviving(ino, torn));
                if before == after {
                    continue;
                }
                report.files_changed += 1;
                match after {
                    Some(bytes) => {
                        let mut f = OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(true)
                            .mode(0o600)
                            .open(&path)?;
                        f.write_all(&bytes)?;
                    }
                    None => fs::remove_file(&path)?,
                }
            }
        }
        Ok(report)
    }

    fn handle(&self, ino: Ino, path: &Path, file: Arc<dyn DurableFile>) -> Arc<dyn DurableFile> {
        Arc::new(CutFile {
            shared: Arc::clone(&self.shared),
            ino,
            path: path.to_path_buf(),
            file,
        })
    }
}

/// A file handle: bound to its inode, as a descriptor is, whatever renames follow.
struct CutFile {
    shared: Arc<Shared>,
    ino: Ino,
    path: PathBuf,
    file: Arc<dyn DurableFile>,
}

impl DurableFile for CutFile {
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        let mut m = self.shared.lock();
        if m.point(PointOp::Write, &self.path, self.shared.cut_at)? {
            // The write was under way: what a torn cut keeps of it is in the model only.
            m.wrote(self.ino, buf);
            return Err(power_off());
        }
        match self.file.write_all(buf) {
            Ok(()) => {
                m.wrote(self.ino, buf);
                Ok(())
            }
            Err(e) => {
                m.diverged = Some(format!("write to {}: {e}", self.path.display()));
                Err(e)
            }
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut m = self.shared.lock();
        if m.point(PointOp::Sync, &self.path, self.shared.cut_at)? {
            return Err(power_off());
        }
        self.file.sync_data()?;
        m.synced(self.ino);
        Ok(())
    }
}

impl Io for PowerCutIo {
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        self.shared.lock().alive()?;
        OsIo.read(path)
    }

    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn DurableFile>> {
        let mut m = self.shared.lock();
        m.alive()?;
        m.adopt(path)?;
        let existing = m.live_ino(path);
        if existing.is_none() && m.point(PointOp::Create, path, self.shared.cut_at)? {
            return Err(power_off());
        }
        let file = OsIo.open_append(path)?;
        let ino = match existing {
            Some(ino) => ino,
            None => m.link_new(path),
        };
        Ok(self.handle(ino, path, file))
    }

    fn create_truncate(&self, path: &Path) -> io::Result<Arc<dyn DurableFile>> {
        let mut m = self.shared.lock();
        m.alive()?;
        m.adopt(path)?;
        if m.point(PointOp::Create, path, self.shared.cut_at)? {
            return Err(power_off());
        }
        let file = OsIo.create_truncate(path)?;
        let ino = match m.live_ino(path) {
            // O_TRUNC on the same inode: the old content stays durable until an fsync.
            Some(ino) => {
                let f = &mut m.inodes[ino];
                f.live.clear();
                f.unsynced = None;
                ino
            }
            None => m.link_new(path),
        };
        Ok(self.handle(ino, path, file))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut m = self.shared.lock();
        m.alive()?;
        m.adopt(path)?;
        if m.point(PointOp::Truncate, path, self.shared.cut_at)? {
            return Err(power_off());
        }
        OsIo.truncate(path, len)?;
        if let Some(ino) = m.live_ino(path) {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            let f = &mut m.inodes[ino];
            f.live.resize(len, 0);
            // OsIo's truncate fsyncs the file: all of it is durable now.
            f.durable = f.live.clone();
            f.unsynced = None;
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut m = self.shared.lock();
        m.alive()?;
        m.adopt(from)?;
        m.adopt(to)?;
        if m.point(PointOp::Rename, to, self.shared.cut_at)? {
            return Err(power_off());
        }
        OsIo.rename(from, to)?;
        let (from_dir, from_name) = split(from);
        let (to_dir, to_name) = split(to);
        let moved = m
            .dirs
            .get_mut(&from_dir)
            .and_then(|d| d.live.remove(&from_name));
        if let Some(ino) = moved {
            m.dirs.entry(to_dir).or_default().live.insert(to_name, ino);
        }
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut m = self.shared.lock();
        m.alive()?;
        m.adopt(path)?;
        if m.point(PointOp::Remove, path, self.shared.cut_at)? {
            return Err(power_off());
        }
        OsIo.remove(path)?;
        let (dir, name) = split(path);
        if let Some(d) = m.dirs.get_mut(&dir) {
            d.live.remove(&name);
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut m = self.shared.lock();
        if m.point(PointOp::SyncDir, dir, self.shared.cut_at)? {
            return Err(power_off());
        }
        OsIo.sync_dir(dir)?;
        if let Some(d) = m.dirs.get_mut(dir) {
            d.durable = d.live.clone();
        }
        Ok(())
    }

    fn ensure_dir(&self, dir: &Path) -> io::Result<u32> {
        self.shared.lock().alive()?;
        OsIo.ensure_dir(dir)
    }

    fn file_mode(&self, path: &Path) -> io::Result<u32> {
        self.shared.lock().alive()?;
        OsIo.file_mode(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "felhom-powercut-unit-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn read(p: &Path) -> Option<Vec<u8>> {
        fs::read(p).ok()
    }

    #[test]
    fn unsynced_bytes_are_lost_and_synced_ones_survive() {
        let dir = tempdir("bytes");
        let p = dir.join("f");
        let io = PowerCutIo::new(CutMode::LoseUnsynced);
        let f = io.create_truncate(&p).unwrap();
        f.write_all(b"one\n").unwrap();
        f.sync_data().unwrap();
        io.sync_dir(&dir).unwrap();
        f.write_all(b"two\n").unwrap();
        assert_eq!(read(&p).unwrap(), b"one\ntwo\n");
        assert_eq!(io.apply_cut().unwrap().files_changed, 1);
        assert_eq!(read(&p).unwrap(), b"one\n");
        assert_eq!(io.points(), 5);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_creation_without_a_directory_fsync_is_undone() {
        let dir = tempdir("create");
        let p = dir.join("f");
        let io = PowerCutIo::new(CutMode::LoseUnsynced);
        let f = io.open_append(&p).unwrap();
        f.write_all(b"x\n").unwrap();
        f.sync_data().unwrap();
        io.apply_cut().unwrap();
        assert_eq!(read(&p), None, "the name was never made durable");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_rename_without_a_directory_fsync_brings_the_old_file_back() {
        let dir = tempdir("rename");
        let (p, tmp) = (dir.join("f"), dir.join("f.tmp"));
        fs::write(&p, b"old\n").unwrap();
        let io = PowerCutIo::new(CutMode::LoseUnsynced);
        let old = io.open_append(&p).unwrap();
        old.write_all(b"old-synced\n").unwrap();
        old.sync_data().unwrap();
        old.write_all(b"old-unsynced\n").unwrap();
        let new = io.create_truncate(&tmp).unwrap();
        new.write_all(b"new\n").unwrap();
        new.sync_data().unwrap();
        io.rename(&tmp, &p).unwrap();
        let _ = io.open_append(&p).unwrap();
        assert_eq!(read(&p).unwrap(), b"new\n");
        io.apply_cut().unwrap();
        assert_eq!(read(&p).unwrap(), b"old\nold-synced\n");
        assert_eq!(read(&tmp), None);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_rename_covered_by_a_directory_fsync_survives_and_a_removal_without_one_is_undone() {
        let dir = tempdir("rename-synced");
        let (p, tmp, gone) = (dir.join("f"), dir.join("f.tmp"), dir.join("g"));
        fs::write(&p, b"old\n").unwrap();
        fs::write(&gone, b"kept\n").unwrap();
        let io = PowerCutIo::new(CutMode::LoseUnsynced);
        let new = io.create_truncate(&tmp).unwrap();
        new.write_all(b"new\n").unwrap();
        new.sync_data().unwrap();
        io.rename(&tmp, &p).unwrap();
        io.sync_dir(&dir).unwrap();
        io.remove(&gone).unwrap();
        io.apply_cut().unwrap();
        assert_eq!(read(&p).unwrap(), b"new\n");
        assert_eq!(read(&gone).unwrap(), b"kept\n");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_cut_keeps_half_of_the_latest_unsynced_write() {
        let dir = tempdir("torn");
        let (a, b) = (dir.join("a"), dir.join("b"));
        fs::write(&a, b"").unwrap();
        fs::write(&b, b"").unwrap();
        let io = PowerCutIo::new(CutMode::TornWrite);
        let fa = io.open_append(&a).unwrap();
        let fb = io.open_append(&b).unwrap();
        fa.write_all(b"a-unsynced\n").unwrap();
        fb.write_all(b"synced\n").unwrap();
        fb.sync_data().unwrap();
        fb.write_all(b"first\n").unwrap();
        fb.write_all(b"12345678").unwrap();
        io.apply_cut().unwrap();
        assert_eq!(read(&a).unwrap(), b"", "only the latest write is torn");
        assert_eq!(read(&b).unwrap(), b"synced\nfirst\n1234");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_cut_fails_its_call_and_every_later_one() {
        let dir = tempdir("dead");
        let p = dir.join("f");
        fs::write(&p, b"kept\n").unwrap();
        // Points: write 1, sync 2, write 3 (the cut).
        let io = PowerCutIo::cut_at(CutMode::TornWrite, 3);
        let f = io.open_append(&p).unwrap();
        f.write_all(b"a\n").unwrap();
        f.sync_data().unwrap();
        assert!(f.write_all(b"bbbb").is_err());
        assert!(io.is_cut());
        assert_eq!(read(&p).unwrap(), b"kept\na\n", "the cut write never ran");
        assert!(f.sync_data().is_err());
        assert!(io.read(&p).is_err());
        assert!(io.open_append(&p).is_err());
        assert!(io.sync_dir(&dir).is_err());
        assert_eq!(io.points(), 3);
        let ops: Vec<PointOp> = io.trace().iter().map(|c| c.op).collect();
        assert_eq!(ops, [PointOp::Write, PointOp::Sync, PointOp::Write]);
        io.apply_cut().unwrap();
        assert_eq!(read(&p).unwrap(), b"kept\na\nbb", "half the cut write");
        assert!(io.apply_cut().is_err(), "once only");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn truncate_is_durable_at_once() {
        let dir = tempdir("truncate");
        let p = dir.join("f");
        fs::write(&p, b"good\ntorn").unwrap();
        let io = PowerCutIo::new(CutMode::LoseUnsynced);
        io.truncate(&p, 5).unwrap();
        io.apply_cut().unwrap();
        assert_eq!(read(&p).unwrap(), b"good\n");
        let _ = fs::remove_dir_all(&dir);
    }
}
