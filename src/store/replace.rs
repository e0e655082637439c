//! A whole small file replaced durably: written to `FILE.tmp`, fsync'd, renamed over
//! `FILE`, and the directory fsync'd, so a crash or a power cut leaves the old file or
//! the new one, never a mix. A `FILE.tmp` left by a crash is overwritten by the next
//! replace. A damaged file can be set aside whole (renamed, the directory fsync'd) so
//! its bytes stay for an operator when a fresh one takes its place. This module never
//! appends, never reads, and never removes the old file before the new one is durable.

use std::io;
use std::path::{Path, PathBuf};

use super::file_io::Io;
use super::{parent_dir, sibling};

/// The temporary file a replace of `path` writes first.
pub fn replace_temp(path: &Path) -> PathBuf {
    sibling(path, ".tmp")
}

/// Replaces `path` with `bytes` (mode 0600) through `io`.
pub fn replace_file(io: &dyn Io, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = replace_temp(path);
    {
        let file = io.create_truncate(&temp)?;
        file.write_all(bytes)?;
        file.sync_data()?;
    }
    io.rename(&temp, path)?;
    io.sync_dir(parent_dir(path))
}

/// Renames `path` to `path.SUFFIX` (replacing an older file of that name) and fsyncs
/// the directory; returns the new name.
pub fn set_aside(io: &dyn Io, path: &Path, suffix: &str) -> io::Result<PathBuf> {
    let aside = sibling(path, &format!(".{suffix}"));
    io.rename(path, &aside)?;
    io.sync_dir(parent_dir(path))?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FaultOp, FaultyIo, OsIo};
    use std::os::unix::fs::PermissionsExt as _;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("felhom-replace-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_new_bytes_replace_the_old_and_no_temp_is_left() {
        let d = dir("ok");
        let path = d.join("doc.json");
        replace_file(&OsIo, &path, b"one").unwrap();
        replace_file(&OsIo, &path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!replace_temp(&path).exists());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_set_aside_keeps_its_bytes_under_the_new_name() {
        let d = dir("aside");
        let path = d.join("doc.json");
        std::fs::write(&path, b"damaged").unwrap();
        let aside = set_aside(&OsIo, &path, "damaged").unwrap();
        assert_eq!(aside, d.join("doc.json.damaged"));
        assert_eq!(std::fs::read(&aside).unwrap(), b"damaged");
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_fsync_leaves_the_old_file_whole() {
        let d = dir("fsync");
        let path = d.join("doc.json");
        replace_file(&OsIo, &path, b"old").unwrap();
        let io = FaultyIo::new(FaultOp::Sync, 1, false);
        assert!(replace_file(&io, &path, b"new").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old", "never renamed over");
        let _ = std::fs::remove_dir_all(&d);
    }
}
