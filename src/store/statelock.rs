//! One process per state directory: the exclusive lock on `state_dir/lock`.
//!
//! `run`, and every command that writes or compacts a file in the state directory, takes
//! [`StateLock::acquire`] before anything else touches the directory and holds it for its
//! whole life. A second process gets [`StateLockError::Held`], naming the directory and the
//! PID the holder wrote into the lock file, and must exit without touching anything: two
//! writers would compact each other's files out from under their open handles (a nonce
//! appended to an unlinked file is lost, and a signed op replays).
//!
//! The lock is `flock(2)` through std's [`File::try_lock`]: the kernel drops it when the
//! holder's descriptor closes, however the process ends (SIGKILL included), so a stale
//! file never blocks a start, and std opens files close-on-exec, so a spawned child holds
//! it only between its fork and its exec (a start in that instant after a SIGKILL sees
//! the lock held; systemd kills the whole cgroup, orphans included, before a restart). This module never waits for a lock, never removes the lock file (a new
//! inode at the same path could be locked beside the old one), and writes nothing but the
//! holder's PID. The PID is not fsync'd: it is advice for an operator, meaningless once
//! the holder is gone, and no replay ever reads it.

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The lock file's name inside the state directory.
pub(crate) const LOCK_FILE: &str = "lock";

/// Longest PID text read back from a lock file; a PID is at most 10 digits.
const MAX_PID_TEXT: usize = 32;

/// Why the state directory could not be locked.
#[derive(Debug)]
#[non_exhaustive]
pub enum StateLockError {
    /// Another process holds the lock: a daemon, or a writing command, runs on this state
    /// directory. `pid` is what the holder wrote, when it had written it yet.
    Held {
        /// The state directory.
        dir: PathBuf,
        /// The holder's PID, if the lock file names one.
        pid: Option<u32>,
    },
    /// Creating the directory, or opening, checking or locking the lock file failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// The directory or file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
}

impl fmt::Display for StateLockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateLockError::Held { dir, pid } => {
                write!(
                    f,
                    "state directory {} is in use by another felhom-agent process",
                    dir.display()
                )?;
                match pid {
                    Some(pid) => write!(f, " (PID {pid})")?,
                    None => f.write_str(" (its PID is not written yet)")?,
                }
                write!(
                    f,
                    " holding {}; one daemon per state directory",
                    dir.join(LOCK_FILE).display()
                )
            }
            StateLockError::Io { op, path, source } => {
                write!(f, "state lock: cannot {op} {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for StateLockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StateLockError::Held { .. } => None,
            StateLockError::Io { source, .. } => Some(source),
        }
    }
}

/// The held lock. Dropping it clears the PID and releases the lock;
/// [`StateLock::hold_until_exit`] keeps it until the process ends.
#[derive(Debug)]
pub struct StateLock {
    file: File,
    path: PathBuf,
}

impl StateLock {
    /// Locks `dir` (created 0700 when missing) for this process, without waiting, and
    /// writes this process's PID into the lock file (created 0600). The outcome is
    /// logged with a stable `event=` key: `state_lock_acquired` (with `pid`),
    /// `state_lock_held` (with `holder_pid`, `unknown` when not written yet) or
    /// `state_lock_failed`.
    pub fn acquire(dir: &Path) -> Result<StateLock, StateLockError> {
        match Self::try_acquire(dir) {
            Ok(lock) => {
                crate::info!(
                    state_lock_acquired,
                    "state directory locked",
                    state_dir = dir.display(),
                    pid = std::process::id()
                );
                Ok(lock)
            }
            Err(e @ StateLockError::Held { pid, .. }) => {
                crate::error!(
                    state_lock_held,
                    "state directory is held by another process; not starting",
                    state_dir = dir.display(),
                    holder_pid = pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
                );
                Err(e)
            }
            Err(e) => {
                crate::error!(
                    state_lock_failed,
                    "state directory cannot be locked",
                    state_dir = dir.display(),
                    error = e
                );
                Err(e)
            }
        }
    }

    /// [`StateLock::acquire`] without its log lines: for a command that asks whether a
    /// daemon runs and does something else when one does.
    pub(crate) fn try_acquire(dir: &Path) -> Result<StateLock, StateLockError> {
        let io_err = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| StateLockError::Io { op, path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create directory", dir))?;
        let path = dir.join(LOCK_FILE);
        // Only a writer of the 0700 directory could plant a link here, but the holder
        // truncates the file: refuse to follow one anyway.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(StateLockError::Io {
                    op: "use",
                    path,
                    source: io::Error::new(io::ErrorKind::InvalidInput, "it is a symbolic link"),
                });
            }
            _ => {}
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let meta = file.metadata().map_err(io_err("inspect", &path))?;
        if !meta.is_file() {
            return Err(StateLockError::Io {
                op: "use",
                path,
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StateLockError::Held {
                    dir: dir.to_path_buf(),
                    pid: read_pid(&file),
                });
            }
            Err(TryLockError::Error(source)) => {
                return Err(StateLockError::Io {
                    op: "lock",
                    path,
                    source,
                });
            }
        }
        // Ours now: name the holder. A contender reading between the two calls sees no
        // PID, never a wrong one.
        if meta.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io_err("restrict to 0600", &path))?;
        }
        file.set_len(0).map_err(io_err("truncate", &path))?;
        file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)
            .map_err(io_err("write the PID to", &path))?;
        Ok(StateLock { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the lock until the process exits, when the kernel releases it: for a daemon
    /// whose abandoned workers may still be finishing a write as `main` returns.
    pub fn hold_until_exit(self) {
        std::mem::forget(self);
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        // Best effort: a PID left behind is harmless, the next holder overwrites it.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// The PID the holder wrote, if the file holds one (a bounded read).
fn read_pid(file: &File) -> Option<u32> {
    let mut buf = [0u8; MAX_PID_TEXT];
    let n = file.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn temp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("felhom-statelock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_first_holds_and_names_itself_a_second_is_refused_with_that_pid() {
        let dir = temp("held");
        let first = StateLock::acquire(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        // flock conflicts between two open files even within one process.
        match StateLock::acquire(&dir) {
            Err(StateLockError::Held { dir: d, pid }) => {
                assert_eq!(d, dir);
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        let e = StateLock::acquire(&dir).unwrap_err().to_string();
        assert!(e.contains(&dir.display().to_string()), "{e}");
        assert!(e.contains(&format!("PID {}", std::process::id())), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap(),
            text,
            "a refused contender writes nothing"
        );
        drop(first);
        let again = StateLock::acquire(&dir).expect("released on drop");
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_directory_is_created_0700_and_the_lock_file_0600() {
        let dir = temp("modes").join("nested");
        let lock = StateLock::acquire(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().mode() & 0o7777,
            0o700,
            "directory mode"
        );
        assert_eq!(
            std::fs::metadata(lock.path()).unwrap().mode() & 0o7777,
            0o600,
            "lock file mode"
        );
        drop(lock);
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn a_loose_lock_file_is_tightened_and_a_stale_pid_replaced() {
        let dir = temp("stale");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(LOCK_FILE);
        std::fs::write(&path, "4000000000 and some garbage\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let lock = StateLock::acquire(&dir).expect("a file nobody locks is free");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        drop(lock);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "",
            "released: no PID left behind"
        );
        assert!(path.exists(), "the lock file is never removed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unreadable_pid_is_held_without_one() {
        let dir = temp("nopid");
        let lock = StateLock::acquire(&dir).unwrap();
        for text in ["", "not a pid", "0", "-5"] {
            lock.file.set_len(0).unwrap();
            lock.file.write_all_at(text.as_bytes(), 0).unwrap();
            match StateLock::acquire(&dir) {
                Err(StateLockError::Held { pid: None, .. }) => {}
                other => panic!("{text:?}: expected Held without a PID, got {other:?}"),
            }
        }
        let e = StateLock::acquire(&dir).unwrap_err().to_string();
        assert!(e.contains("PID is not written yet"), "{e}");
        drop(lock);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_symlink_or_a_directory_at_the_lock_path_is_refused_untouched() {
        let dir = temp("link");
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("precious");
        std::fs::write(&target, "keep me").unwrap();
        std::os::unix::fs::symlink(&target, dir.join(LOCK_FILE)).unwrap();
        match StateLock::acquire(&dir) {
            Err(StateLockError::Io {
                op: "use", path, ..
            }) => assert_eq!(path, dir.join(LOCK_FILE)),
            other => panic!("expected Io, got {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
        std::fs::remove_file(dir.join(LOCK_FILE)).unwrap();
        std::fs::create_dir(dir.join(LOCK_FILE)).unwrap();
        assert!(matches!(
            StateLock::acquire(&dir),
            Err(StateLockError::Io { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_state_dir_that_is_a_file_is_an_io_error_naming_it() {
        let dir = temp("file");
        std::fs::write(&dir, "not a directory").unwrap();
        let e = StateLock::acquire(&dir).unwrap_err();
        assert!(
            matches!(&e, StateLockError::Io { op: "create directory", path, .. } if *path == dir),
            "{e:?}"
        );
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        let _ = std::fs::remove_file(&dir);
    }
}
