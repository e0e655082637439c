//! A one-shot marker file taken durably: renamed to `FILE.taken` (the directory
//! fsync'd), read, then removed (the directory fsync'd again), so the caller holds its
//! bytes only once the file is durably gone and a crash can never hand the same marker
//! out twice. A writer that replaces `FILE` while it is being taken is never lost: the
//! rename moves whichever version is there at that instant, and a later one stays for
//! the next take. This module never writes a file's bytes and never follows a marker's
//! meaning; its caller does.

use std::io;
use std::path::{Path, PathBuf};

use super::file_io::Io;
use super::{parent_dir, sibling};

/// Where a take of `path` moves the file before reading it.
pub fn taken_path(path: &Path) -> PathBuf {
    sibling(path, ".taken")
}

/// Takes the file at `path` through `io`: `Ok(None)` when there is none, else its bytes,
/// returned only once its removal is durable. A `FILE.taken` a crash left behind is
/// removed by the next take that finds `FILE` (it was already taken once: never read
/// again).
pub fn take_file(io: &dyn Io, path: &Path) -> io::Result<Option<Vec<u8>>> {
    let dir = parent_dir(path);
    let taken = taken_path(path);
    match io.rename(path, &taken) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    io.sync_dir(dir)?;
    let bytes = io.read(&taken)?.unwrap_or_default();
    io.remove(&taken)?;
    io.sync_dir(dir)?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FaultOp, FaultyIo, OsIo, replace_file};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("felhom-take-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_marker_is_taken_once_and_nothing_is_left() {
        let d = dir("once");
        let path = d.join("marker.json");
        assert_eq!(take_file(&OsIo, &path).unwrap(), None, "no marker yet");
        replace_file(&OsIo, &path, b"{}").unwrap();
        assert_eq!(take_file(&OsIo, &path).unwrap(), Some(b"{}".to_vec()));
        assert!(!path.exists() && !taken_path(&path).exists());
        assert_eq!(take_file(&OsIo, &path).unwrap(), None, "taken once only");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_directory_sync_hands_out_nothing() {
        let d = dir("sync");
        let path = d.join("marker.json");
        replace_file(&OsIo, &path, b"{}").unwrap();
        let io = FaultyIo::new(FaultOp::Sync, 1, false);
        assert!(
            take_file(&io, &path).is_err(),
            "the caller never sees the bytes"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
