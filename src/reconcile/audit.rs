//! The audit log (`state_dir/audit.log`): one durable entry per gate decision, and the
//! tail the host report carries.
//!
//! This module owns the audit file and its in-memory tail. It writes only through
//! [`crate::store::Store`] and never records a signature, a blob or any secret — only
//! the op, the guest, the decision, its reason and the signer's advisory key id.

use std::collections::VecDeque;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::hub::collect::{AuditTail, ReadError};
use crate::hub::report::AuditEntry;
use crate::store::{Io, OsIo, Store, StoreError, SyncMode};

/// Entries kept in memory for [`AuditLog::tail`]; the report needs 50.
const TAIL_KEPT: usize = 200;

/// Why the audit log failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum AuditError {
    /// Opening, replaying (damage inside the file) or appending failed.
    Store(StoreError),
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditError::Store(e) => write!(f, "audit log: {e}"),
        }
    }
}

impl std::error::Error for AuditError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuditError::Store(e) => Some(e),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The durable audit log. `Send + Sync`.
pub struct AuditLog {
    store: Store,
    tail: Mutex<VecDeque<AuditEntry>>,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.store.path())
            .finish()
    }
}

impl AuditLog {
    /// Opens (or creates) the audit log and loads its last entries. Damage inside the
    /// file is an error (the caller decides; the daemon refuses to start the gate).
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::open_with(path, Arc::new(OsIo))
    }

    /// [`AuditLog::open`] with an explicit [`Io`].
    pub fn open_with(path: &Path, io: Arc<dyn Io>) -> Result<AuditLog, AuditError> {
        let mut tail = VecDeque::new();
        let store = Store::open_with(path, io, SyncMode::GroupCommit, |_, data| {
            let e: AuditEntry =
                serde_json::from_slice(data).map_err(|e| format!("not an audit entry: {e}"))?;
            if tail.len() == TAIL_KEPT {
                tail.pop_front();
            }
            tail.push_back(e);
            Ok(())
        })
        .map_err(AuditError::Store)?;
        Ok(AuditLog {
            store,
            tail: Mutex::new(tail),
        })
    }

    /// Whether a failed write or fsync has poisoned the log: every later record fails,
    /// so the daemon stops and the restart replays it from disk.
    pub fn is_poisoned(&self) -> bool {
        self.store.is_poisoned()
    }

    /// Appends `entry`; `Ok` once durable.
    pub fn record(&self, entry: &AuditEntry) -> Result<(), AuditError> {
        self.store.append(entry).map_err(AuditError::Store)?;
        let mut t = lock(&self.tail);
        if t.len() == TAIL_KEPT {
            t.pop_front();
        }
        t.push_back(entry.clone());
        Ok(())
    }

    /// The last `n` entries, oldest first.
    pub fn tail(&self, n: usize) -> Vec<AuditEntry> {
        let t = lock(&self.tail);
        t.iter().skip(t.len().saturating_sub(n)).cloned().collect()
    }
}

impl AuditTail for AuditLog {
    fn last(&self, n: usize) -> Result<Vec<AuditEntry>, ReadError> {
        Ok(self.tail(n))
    }
}
