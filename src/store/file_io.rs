//! The store's file-system layer: the few operations a [`super::Store`] performs,
//! behind the [`Io`] trait, so tests inject faults ([`FaultyIo`]) and power cuts without
//! the store knowing. [`OsIo`] is the real file system. Nothing here knows the line
//! format or the hash chain.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A file opened for appending (or a fresh temp file), as the store sees it.
pub trait DurableFile: Send + Sync {
    /// Writes all of `buf` at the end of the file.
    fn write_all(&self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
}

/// The file-system operations the store needs; [`OsIo`] is the real one.
pub trait Io: Send + Sync {
    /// The whole file, or `None` when it does not exist.
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
    /// The file as a stream, or `None` when it does not exist: replay reads through
    /// this, so memory at open does not grow with the file. The default hands out the
    /// bytes of [`Io::read`], which suits in-memory layers; a layer over a real disk
    /// streams ([`OsIo`] does).
    fn open_read(&self, path: &Path) -> io::Result<Option<Box<dyn io::Read + Send>>> {
        Ok(self
            .read(path)?
            .map(|b| Box::new(io::Cursor::new(b)) as Box<dyn io::Read + Send>))
    }
    /// Opens `path` for appending, creating it with mode 0600 if it does not exist.
    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn DurableFile>>;
    /// Creates `path` empty with mode 0600, replacing any existing file.
    fn create_truncate(&self, path: &Path) -> io::Result<Arc<dyn DurableFile>>;
    /// Shortens the file to `len` bytes and makes that durable.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Renames `from` to `to` (atomically replacing `to`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Fsyncs a directory, making renames and creations in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates the directory (and missing parents) with mode 0700 if it does not exist;
    /// returns the permission bits of the directory as it now is.
    fn ensure_dir(&self, dir: &Path) -> io::Result<u32>;
    /// The permission bits of an existing file.
    fn file_mode(&self, path: &Path) -> io::Result<u32>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsIo;

struct OsFile(File);

impl DurableFile for OsFile {
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        (&self.0).write_all(buf)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Io for OsIo {
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn open_read(&self, path: &Path) -> io::Result<Option<Box<dyn io::Read + Send>>> {
        match File::open(path) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn DurableFile>> {
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        Ok(Arc::new(OsFile(f)))
    }
    fn create_truncate(&self, path: &Path) -> io::Result<Arc<dyn DurableFile>> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        Ok(Arc::new(OsFile(f)))
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn ensure_dir(&self, dir: &Path) -> io::Result<u32> {
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => Ok(m.permissions().mode() & 0o7777),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
                Ok(fs::metadata(dir)?.permissions().mode() & 0o7777)
            }
            Err(e) => Err(e),
        }
    }
    fn file_mode(&self, path: &Path) -> io::Result<u32> {
        Ok(fs::metadata(path)?.permissions().mode() & 0o7777)
    }
}

/// Which operation a [`FaultyIo`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// `DurableFile::write_all` (a failing write first writes half its bytes, as a
    /// short write on a full disk would).
    Write,
    /// `DurableFile::sync_data` and `Io::sync_dir`.
    Sync,
}

/// An [`Io`] over the real file system that fails the N-th write or sync: once, or
/// that one and every later one. For tests of the never-retry rule and for benches.
#[derive(Debug)]
pub struct FaultyIo {
    faults: Faults,
}

/// What a [`FaultyIo`] fails, and its counts, shared with every file it opens.
#[derive(Debug, Clone)]
struct Faults {
    op: FaultOp,
    at: u64,
    for_good: bool,
    /// Syncs are counted and skipped: they succeed without reaching the disk.
    skip_syncs: bool,
    writes: Arc<AtomicU64>,
    syncs: Arc<AtomicU64>,
}

impl Faults {
    /// Counts one call of `call`; true when it is the one to fail.
    fn trip(&self, call: FaultOp) -> bool {
        let counter = match call {
            FaultOp::Write => &self.writes,
            FaultOp::Sync => &self.syncs,
        };
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        call == self.op && (n == self.at || (self.for_good && n > self.at))
    }
}

impl FaultyIo {
    /// Fails the `at`-th (1-based) call of `op`; with `for_good`, every later one too.
    pub fn new(op: FaultOp, at: u64, for_good: bool) -> Self {
        FaultyIo {
            faults: Faults {
                op,
                at,
                for_good,
                skip_syncs: false,
                writes: Arc::new(AtomicU64::new(0)),
                syncs: Arc::new(AtomicU64::new(0)),
            },
        }
    }

    /// The real file system with every sync (file and directory) skipped and nothing
    /// failed: for tests of size and replay under a load that fsync'd would take
    /// minutes, never for a test of durability.
    pub fn skipping_syncs() -> Self {
        let mut io = FaultyIo::new(FaultOp::Sync, 0, false);
        io.faults.skip_syncs = true;
        io
    }

    /// How many writes and syncs have been attempted so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.faults.writes.load(Ordering::SeqCst),
            self.faults.syncs.load(Ordering::SeqCst),
        )
    }

    fn wrap(&self, inner: Arc<dyn DurableFile>) -> Arc<dyn DurableFile> {
        Arc::new(FaultyFile {
            inner,
            faults: self.faults.clone(),
        })
    }
}

struct FaultyFile {
    inner: Arc<dyn DurableFile>,
    faults: Faults,
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} failure"))
}

impl DurableFile for FaultyFile {
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        if self.faults.trip(FaultOp::Write) {
            self.inner.write_all(&buf[..buf.len() / 2])?;
            return Err(injected("write"));
        }
        self.inner.write_all(buf)
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.faults.trip(FaultOp::Sync) {
            return Err(injected("fsync"));
        }
        if self.faults.skip_syncs {
            return Ok(());
        }
        self.inner.sync_data()
    }
}

impl Io for FaultyIo {
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        OsIo.read(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<Option<Box<dyn io::Read + Send>>> {
        OsIo.open_read(path)
    }
    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn DurableFile>> {
        Ok(self.wrap(OsIo.open_append(path)?))
    }
    fn create_truncate(&self, path: &Path) -> io::Result<Arc<dyn DurableFile>> {
        Ok(self.wrap(OsIo.create_truncate(path)?))
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        OsIo.truncate(path, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        OsIo.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        OsIo.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.faults.trip(FaultOp::Sync) {
            return Err(injected("directory fsync"));
        }
        if self.faults.skip_syncs {
            return Ok(());
        }
        OsIo.sync_dir(dir)
    }
    fn ensure_dir(&self, dir: &Path) -> io::Result<u32> {
        OsIo.ensure_dir(dir)
    }
    fn file_mode(&self, path: &Path) -> io::Result<u32> {
        OsIo.file_mode(path)
    }
}
