//! Replay protection: the nonces of accepted ops (until they expire) and the highest
//! signature counter seen per hardware key.
//!
//! [`MemoryNonceStore`] for tests and `verify --offline`; [`FileNonceStore`] on
//! [`crate::store::Store`]: a nonce is on disk (fsync'd) before "fresh" is returned,
//! survives restart, and is pruned only by compaction once past its expiry plus the
//! clock skew. Fail safe: every error is an `Err`, which the verifier reads as "seen";
//! a store that could not be opened (I/O error, damaged file) refuses everything.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::store::{Io, OsIo, Store, StoreError, SyncMode};
use crate::time::Timestamp;

/// Whether a nonce was new (and is now recorded) or already known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Not seen before; recorded (durably, for the file store) before this returned.
    Fresh,
    /// Already recorded: a replay.
    Seen,
}

/// Why the nonce store could not answer. The verifier refuses the op (`Replay`).
#[derive(Debug)]
#[non_exhaustive]
pub enum NonceStoreError {
    /// The durable store failed (I/O, poisoned after a failed fsync).
    Store(StoreError),
    /// The store could not be opened (damaged file, unreadable directory); it refuses
    /// every op until an operator looks.
    Unavailable(String),
}

impl fmt::Display for NonceStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NonceStoreError::Store(e) => write!(f, "nonce store: {e}"),
            NonceStoreError::Unavailable(why) => write!(f, "nonce store unavailable: {why}"),
        }
    }
}

impl std::error::Error for NonceStoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NonceStoreError::Store(e) => Some(e),
            NonceStoreError::Unavailable(_) => None,
        }
    }
}

/// A hardware key's counter to record with a nonce: `(key fingerprint, counter)`.
pub type SkCounter<'a> = (&'a str, u32);

/// Where the verifier records nonces and hardware-key counters.
pub trait NonceStore: Send + Sync {
    /// The highest counter recorded for the hardware key with this fingerprint.
    fn highest_sk_counter(&self, key_fingerprint: &str) -> Result<Option<u32>, NonceStoreError>;

    /// Whether `nonce` is recorded. A read: records nothing.
    fn is_recorded(&self, nonce: &str) -> Result<bool, NonceStoreError>;

    /// Records `nonce` (valid until `expires_at`) unless already recorded, and with it
    /// raises the key's highest counter to `sk_counter` when given — one atomic record.
    fn seen_or_record(
        &self,
        nonce: &str,
        expires_at: Timestamp,
        sk_counter: Option<SkCounter<'_>>,
    ) -> Result<Freshness, NonceStoreError>;
}

#[derive(Default)]
struct Index {
    nonces: HashMap<String, Timestamp>,
    counters: HashMap<String, u32>,
}

impl Index {
    fn raise(&mut self, key: &str, c: u32) {
        let e = self.counters.entry(key.to_string()).or_insert(c);
        *e = (*e).max(c);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Nonces in memory only: for tests and offline verification (burns nothing durable).
#[derive(Default)]
pub struct MemoryNonceStore {
    index: Mutex<Index>,
}

impl MemoryNonceStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl NonceStore for MemoryNonceStore {
    fn highest_sk_counter(&self, key: &str) -> Result<Option<u32>, NonceStoreError> {
        Ok(lock(&self.index).counters.get(key).copied())
    }

    fn is_recorded(&self, nonce: &str) -> Result<bool, NonceStoreError> {
        Ok(lock(&self.index).nonces.contains_key(nonce))
    }

    fn seen_or_record(
        &self,
        nonce: &str,
        expires_at: Timestamp,
        sk: Option<SkCounter<'_>>,
    ) -> Result<Freshness, NonceStoreError> {
        let mut ix = lock(&self.index);
        if ix.nonces.contains_key(nonce) {
            return Ok(Freshness::Seen);
        }
        ix.nonces.insert(nonce.to_string(), expires_at);
        if let Some((k, c)) = sk {
            ix.raise(k, c);
        }
        Ok(Freshness::Fresh)
    }
}

/// One line's data in `nonces.log`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum Record {
    Nonce {
        nonce: String,
        expires_at: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sk_key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sk_counter: Option<u32>,
    },
    SkCounter {
        key: String,
        counter: u32,
    },
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactStats {
    /// Nonces kept.
    pub kept: usize,
    /// Nonces dropped (past expiry plus skew).
    pub pruned: usize,
}

/// The durable nonce store (`nonces.log`).
pub struct FileNonceStore {
    store: Result<Store, String>,
    index: Mutex<Index>,
    skew: i64,
}

impl fmt::Debug for FileNonceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileNonceStore")
            .field("open", &self.store.is_ok())
            .finish()
    }
}

impl FileNonceStore {
    /// Opens (or creates) the store and replays it. A damaged file is an error: the
    /// caller decides (see [`FileNonceStore::open_fail_safe`]).
    pub fn open(path: impl AsRef<Path>, max_clock_skew_seconds: u64) -> Result<Self, StoreError> {
        Self::open_with(path, max_clock_skew_seconds, Arc::new(OsIo))
    }

    /// [`FileNonceStore::open`] with an explicit [`Io`] (fault-injection tests).
    pub fn open_with(
        path: impl AsRef<Path>,
        max_clock_skew_seconds: u64,
        io: Arc<dyn Io>,
    ) -> Result<Self, StoreError> {
        let mut ix = Index::default();
        let store = Store::open_with(path, io, SyncMode::GroupCommit, |_, data| {
            match serde_json::from_slice::<Record>(data).map_err(|e| e.to_string())? {
                Record::Nonce {
                    nonce,
                    expires_at,
                    sk_key,
                    sk_counter,
                } => {
                    let t = Timestamp::parse_rfc3339(&expires_at).map_err(|e| e.to_string())?;
                    ix.nonces.insert(nonce, t);
                    if let (Some(k), Some(c)) = (sk_key, sk_counter) {
                        ix.raise(&k, c);
                    }
                }
                Record::SkCounter { key, counter } => ix.raise(&key, counter),
            }
            Ok(())
        })?;
        Ok(FileNonceStore {
            store: Ok(store),
            index: Mutex::new(ix),
            skew: i64::try_from(max_clock_skew_seconds).unwrap_or(i64::MAX),
        })
    }

    /// Opens the store; if that fails for any reason (damage inside the file, I/O), logs
    /// the error and returns a store that refuses every op, so the verifier refuses
    /// everything until an operator looks.
    pub fn open_fail_safe(path: impl AsRef<Path>, max_clock_skew_seconds: u64) -> Self {
        match Self::open(path.as_ref(), max_clock_skew_seconds) {
            Ok(s) => s,
            Err(e) => {
                crate::error!(
                    "nonce store unusable: every signed op will be refused",
                    path = path.as_ref().display(),
                    error = e
                );
                FileNonceStore {
                    store: Err(e.to_string()),
                    index: Mutex::new(Index::default()),
                    skew: 0,
                }
            }
        }
    }

    fn store(&self) -> Result<&Store, NonceStoreError> {
        self.store
            .as_ref()
            .map_err(|e| NonceStoreError::Unavailable(e.clone()))
    }

    /// Why the store cannot record nonces, if it cannot: it could not be opened
    /// (damaged file, I/O error), or a write or fsync failed since and poisoned it.
    /// `None` while it works. The gate refuses destructive actions while this is `Some`.
    pub fn unavailable(&self) -> Option<String> {
        match &self.store {
            Err(why) => Some(why.clone()),
            Ok(store) if store.is_poisoned() => Some(format!(
                "{}: poisoned by an earlier write or fsync failure",
                store.path().display()
            )),
            Ok(_) => None,
        }
    }

    /// Nonces currently remembered.
    pub fn len(&self) -> usize {
        lock(&self.index).nonces.len()
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rewrites the file without the nonces whose expiry plus the clock skew is before
    /// `now`; the hardware-key counters are kept.
    pub fn compact(&self, now: Timestamp) -> Result<CompactStats, NonceStoreError> {
        let store = self.store()?;
        let mut ix = lock(&self.index);
        let cutoff = now.0.saturating_sub(self.skew);
        let before = ix.nonces.len();
        let mut kept: Vec<(&String, &Timestamp)> =
            ix.nonces.iter().filter(|(_, t)| t.0 >= cutoff).collect();
        kept.sort();
        let mut records: Vec<Record> = kept
            .into_iter()
            .map(|(n, t)| Record::Nonce {
                nonce: n.clone(),
                expires_at: t.to_rfc3339(),
                sk_key: None,
                sk_counter: None,
            })
            .collect();
        let mut counters: Vec<_> = ix.counters.iter().collect();
        counters.sort();
        records.extend(counters.into_iter().map(|(k, c)| Record::SkCounter {
            key: k.clone(),
            counter: *c,
        }));
        store.compact(records).map_err(NonceStoreError::Store)?;
        ix.nonces.retain(|_, t| t.0 >= cutoff);
        Ok(CompactStats {
            kept: ix.nonces.len(),
            pruned: before - ix.nonces.len(),
        })
    }
}

impl NonceStore for FileNonceStore {
    fn highest_sk_counter(&self, key: &str) -> Result<Option<u32>, NonceStoreError> {
        self.store()?;
        Ok(lock(&self.index).counters.get(key).copied())
    }

    fn is_recorded(&self, nonce: &str) -> Result<bool, NonceStoreError> {
        self.store()?;
        Ok(lock(&self.index).nonces.contains_key(nonce))
    }

    fn seen_or_record(
        &self,
        nonce: &str,
        expires_at: Timestamp,
        sk: Option<SkCounter<'_>>,
    ) -> Result<Freshness, NonceStoreError> {
        let store = self.store()?;
        // One lock around check, append and index update: compaction and concurrent
        // verifications see either none or all of a record.
        let mut ix = lock(&self.index);
        if ix.nonces.contains_key(nonce) {
            return Ok(Freshness::Seen);
        }
        let rec = Record::Nonce {
            nonce: nonce.to_string(),
            expires_at: expires_at.to_rfc3339(),
            sk_key: sk.map(|(k, _)| k.to_string()),
            sk_counter: sk.map(|(_, c)| c),
        };
        store.append(&rec).map_err(NonceStoreError::Store)?;
        ix.nonces.insert(nonce.to_string(), expires_at);
        if let Some((k, c)) = sk {
            ix.raise(k, c);
        }
        Ok(Freshness::Fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FaultOp, FaultyIo};

    fn tempdir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("felhom-nonce-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const EXPIRY: Timestamp = Timestamp(2_000_000_000);

    #[test]
    fn a_working_store_is_available() {
        let dir = tempdir("ok");
        let s = FileNonceStore::open(dir.join("nonces.log"), 120).unwrap();
        assert_eq!(s.unavailable(), None);
        s.seen_or_record("aa", EXPIRY, None).unwrap();
        assert_eq!(s.unavailable(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_damaged_at_open_says_why_and_where() {
        let dir = tempdir("damaged");
        let path = dir.join("nonces.log");
        // Garbage before the last line is damage inside the file, not a torn tail.
        std::fs::write(&path, b"not a record\nnor this\n").unwrap();
        let s = FileNonceStore::open_fail_safe(&path, 120);
        let why = s.unavailable().expect("a damaged store is unavailable");
        assert!(why.contains("nonces.log"), "{why}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_fsync_makes_a_store_unavailable_from_then_on() {
        let dir = tempdir("poisoned");
        // Opening a new file costs two syncs; the third is the first record's.
        let io = Arc::new(FaultyIo::new(FaultOp::Sync, 3, false));
        let s = FileNonceStore::open_with(dir.join("nonces.log"), 120, io).unwrap();
        assert_eq!(s.unavailable(), None);
        assert!(s.seen_or_record("aa", EXPIRY, None).is_err());
        let why = s.unavailable().expect("poisoned after the failed fsync");
        assert!(why.contains("poisoned"), "{why}");
        // The fault was one-shot: the store stays unavailable anyway (never retried).
        assert!(s.seen_or_record("bb", EXPIRY, None).is_err());
        assert!(s.unavailable().is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
