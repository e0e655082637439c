//! Rotation: the store file becomes `FILE.1` and a new `FILE` carries the chain on, so
//! a log that only grows (the audit log) stays within two files.
//!
//! [`Store::rotate`] takes these steps, each made durable before the next:
//!
//! 1. fsync the current file (every record acknowledged so far is on disk);
//! 2. remove an older `FILE.1`, fsync the directory;
//! 3. write the new file to `FILE.rotate.tmp`: an anchor on the current last record's
//!    `seq` and `sha256`, then the records the caller carries over; fsync it, fsync the
//!    directory (fault point `rotate-before-rename`);
//! 4. rename `FILE` → `FILE.1`, fsync the directory (fault point `rotate-between-renames`);
//! 5. rename `FILE.rotate.tmp` → `FILE`, fsync the directory; reopen it for appending.
//!
//! What a crash leaves, and what [`settle`] (run by every [`Store::open`] before the
//! replay) does with it — a rename whose directory was not fsync'd may be undone, which
//! only moves the state back one step:
//!
//! | on disk | meaning | open |
//! |---|---|---|
//! | `FILE`, maybe `FILE.1`, no temp | before step 3, or done | nothing to do |
//! | `FILE` and `FILE.rotate.tmp` | stopped before step 4 took hold | remove the temp (discard the rotation; `FILE` holds every record) |
//! | `FILE.rotate.tmp`, `FILE.1`, no `FILE` | stopped between the renames | finish: rename the temp to `FILE` |
//!
//! The temp file is complete and durable before `FILE` is renamed away (step 3 ends with
//! both fsyncs), so finishing never installs a partial file. Nothing acknowledged is
//! lost in any state: until step 4 every record is in `FILE`; after it, the old records
//! are in `FILE.1` and the carried ones in the new `FILE`. This module never decides
//! *when* to rotate or *what* to carry: the caller does.

use std::path::Path;

use super::{Io, Rewrite, Store, StoreError, exists, io_err, sibling, write_synced};

/// The rotated-out file: `FILE.1`.
pub(super) fn rotated_path(path: &Path) -> std::path::PathBuf {
    sibling(path, ".1")
}

/// The new file while it is being written: `FILE.rotate.tmp`.
pub(super) fn temp_path(path: &Path) -> std::path::PathBuf {
    sibling(path, ".rotate.tmp")
}

/// Completes or discards a rotation a crash interrupted (see the module doc's table).
pub(super) fn settle(io: &dyn Io, path: &Path, dir: &Path) -> Result<(), StoreError> {
    let tmp = temp_path(path);
    if !exists(io, &tmp)? {
        return Ok(());
    }
    if exists(io, path)? {
        crate::warn!(
            rotation_temp_removed,
            "removing a rotation temp file left by a crash before the rename; the store file is intact",
            path = tmp.display()
        );
        io.remove(&tmp).map_err(io_err("remove", &tmp))?;
    } else {
        crate::warn!(
            rotation_resumed,
            "finishing a rotation a crash interrupted between its renames",
            path = path.display(),
            rotated = rotated_path(path).display()
        );
        io.rename(&tmp, path).map_err(io_err("rename", &tmp))?;
    }
    io.sync_dir(dir).map_err(io_err("directory fsync", dir))
}

impl Store {
    /// Rotates the file: it becomes `FILE.1` (replacing an older one), and a new `FILE`
    /// starts with an anchor on the current last record, followed by `carry` (in order)
    /// as new records. Returns how many were carried. See the module doc for the steps
    /// and what a crash at each leaves.
    ///
    /// A failure before `FILE` is renamed leaves it in use and the store usable
    /// (`Io`; nothing changed but a removed `FILE.1`); a failed directory fsync, or any
    /// failure after the first rename, poisons the store (`Fatal`), and the next open
    /// completes the rotation.
    pub fn rotate<T: serde::Serialize>(
        &self,
        carry: impl IntoIterator<Item = T>,
    ) -> Result<u64, StoreError> {
        let mut chain = self.lock_live()?;
        // As in compaction: no appender still waiting on a group sync may be told
        // "durable" for a record only the renamed-away file's unsynced pages hold.
        self.sync_current(&mut chain)?;
        let next = Rewrite::after(&chain, carry)?;

        let old = rotated_path(&self.path);
        let tmp = temp_path(&self.path);
        if exists(self.io.as_ref(), &old)? {
            self.io.remove(&old).map_err(io_err("remove", &old))?;
            if let Err(e) = self.io.sync_dir(&self.dir) {
                return Err(self.poison(&mut chain, "directory fsync", e));
            }
        }
        if let Err(e) = write_synced(self.io.as_ref(), &tmp, &next.bytes) {
            let _ = self.io.remove(&tmp);
            return Err(e);
        }
        if let Err(e) = self.io.sync_dir(&self.dir) {
            return Err(self.poison(&mut chain, "directory fsync", e));
        }
        crate::store::faultpoint::reached_in(&self.path, "rotate-before-rename");
        if let Err(e) = self.io.rename(&self.path, &old) {
            let _ = self.io.remove(&tmp);
            return Err(io_err("rename", &self.path)(e));
        }
        // From here `FILE` is gone until the second rename: failures are fatal, and the
        // next open finishes the rotation.
        if let Err(e) = self.io.sync_dir(&self.dir) {
            return Err(self.poison(&mut chain, "directory fsync", e));
        }
        crate::store::faultpoint::reached_in(&self.path, "rotate-between-renames");
        if let Err(e) = self.io.rename(&tmp, &self.path) {
            return Err(self.poison(&mut chain, "rename", e));
        }
        self.install(&mut chain, next)
    }
}
