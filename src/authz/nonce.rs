//! Replay protection: the nonces of accepted ops (until they expire) and the highest
//! signature counter seen per hardware key.
//!
//! [`MemoryNonceStore`] for tests and `verify --offline`; [`FileNonceStore`] on
//! [`crate::store::Store`]: a nonce is on disk (fsync'd) before "fresh" is returned,
//! survives restart, and is pruned only by compaction once past its expiry plus the
//! clock skew. Fail safe: every error is an `Err`, which the verifier reads as "seen";
//! a store that could not be opened (I/O error, damaged file) refuses everything.
//!
//! Pruning never trusts the wall clock alone. A nonce dropped early makes its op
//! replayable once the clock is back, so compaction measures expiry against a *trusted
//! time*: the wall clock, but never more than real time (the monotonic clock) has
//! advanced since the newest trusted time on record, which every compaction writes to
//! the file. A forward jump is therefore not followed (and is logged,
//! `event=nonce_prune_held`); a backward one pulls the trusted time down with it. Time
//! the agent did not run (a restart, a host powered off for a week) cannot be told apart
//! from a jump, so it is never trusted: pruning then lags by that much, never runs early.
//! A store with no trusted time on record (new, or written before it had one) takes the
//! wall clock at its first compaction.

use crate::base::sync::lock;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::base::time::{MonotonicClock, SystemMonotonic, Timestamp};
use crate::store::{Io, OsIo, Store, StoreError, SyncMode};

/// How far the wall clock may run ahead of the trusted time before a compaction says so
/// (`event=nonce_prune_held`), and by how much more it must pull ahead to say so again.
pub(crate) const PRUNE_HELD_NOTICE: Duration = Duration::from_secs(15 * 60);

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
pub(crate) type SkCounter<'a> = (&'a str, u32);

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
    /// The newest trusted time on record (replayed from the file).
    recorded: Option<Timestamp>,
    trust: Trust,
}

/// The trusted time: `at` as of the monotonic reading `mono`; it may advance from there
/// no faster than the monotonic clock, and never past the wall clock.
#[derive(Debug, Clone, Copy, Default)]
struct Trust {
    anchor: Option<(Timestamp, Duration)>,
    /// How far ahead of the trusted time the wall clock was when that was last logged.
    noticed_ahead: i64,
}

impl Trust {
    /// The trusted time now, given the wall clock `wall` and the monotonic reading `mono`.
    fn observe(&mut self, wall: Timestamp, mono: Duration) -> Timestamp {
        let Some((at, since)) = self.anchor else {
            self.anchor = Some((wall, mono));
            return wall;
        };
        let real = i64::try_from(mono.saturating_sub(since).as_secs()).unwrap_or(i64::MAX);
        let bound = Timestamp(at.0.saturating_add(real));
        if wall < bound {
            // The wall clock is behind: trust only it (it may have been set back).
            self.anchor = Some((wall, mono));
            wall
        } else {
            bound
        }
    }
}

impl Index {
    fn raise(&mut self, key: &str, c: u32) {
        let e = self.counters.entry(key.to_string()).or_insert(c);
        *e = (*e).max(c);
    }

    /// Burns `nonce` unless it is on record: `persist` makes it durable first, and the
    /// index changes only once it did. The caller holds the index lock throughout, so
    /// compaction and concurrent verifications see none or all of a record.
    fn admit(
        &mut self,
        nonce: &str,
        expires_at: Timestamp,
        sk: Option<SkCounter<'_>>,
        persist: impl FnOnce() -> Result<(), NonceStoreError>,
    ) -> Result<Freshness, NonceStoreError> {
        if self.nonces.contains_key(nonce) {
            return Ok(Freshness::Seen);
        }
        persist()?;
        self.nonces.insert(nonce.to_string(), expires_at);
        if let Some((k, c)) = sk {
            self.raise(k, c);
        }
        Ok(Freshness::Fresh)
    }
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
        lock(&self.index).admit(nonce, expires_at, sk, || Ok(()))
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
    /// The trusted time when the file was compacted (the last one in the file counts).
    TrustedTime {
        at: String,
    },
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactStats {
    /// Nonces kept.
    pub kept: usize,
    /// Nonces dropped (past expiry plus skew, measured against `trusted`).
    pub pruned: usize,
    /// The trusted time the expiries were measured against (and that is now recorded).
    pub trusted: Timestamp,
    /// How far the wall clock was ahead of `trusted`, in seconds (0 when behind or equal).
    pub held_seconds: u64,
}

/// The durable nonce store (`nonces.log`).
pub struct FileNonceStore {
    store: Result<Store, String>,
    index: Mutex<Index>,
    skew: i64,
    mono: Arc<dyn MonotonicClock>,
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
                Record::TrustedTime { at } => {
                    let t = Timestamp::parse_rfc3339(&at).map_err(|e| e.to_string())?;
                    ix.recorded = Some(t);
                }
            }
            Ok(())
        })?;
        let mono: Arc<dyn MonotonicClock> = Arc::new(SystemMonotonic::new());
        ix.trust.anchor = ix.recorded.map(|t| (t, mono.elapsed()));
        Ok(FileNonceStore {
            store: Ok(store),
            index: Mutex::new(ix),
            skew: i64::try_from(max_clock_skew_seconds).unwrap_or(i64::MAX),
            mono,
        })
    }

    /// Measures real time on `mono` instead of the system's monotonic clock (tests step
    /// it by hand). The trusted time on record counts from this clock's reading now.
    pub fn with_monotonic(mut self, mono: Arc<dyn MonotonicClock>) -> Self {
        let now = mono.elapsed();
        let ix = self.index.get_mut().unwrap_or_else(|e| e.into_inner());
        ix.trust.anchor = ix.recorded.map(|t| (t, now));
        self.mono = mono;
        self
    }

    /// The newest trusted time on record in the file (as of open or the last compaction).
    pub fn recorded_trusted_time(&self) -> Option<Timestamp> {
        lock(&self.index).recorded
    }

    /// Opens the store; if that fails for any reason (damage inside the file, I/O), logs
    /// the error and returns a store that refuses every op, so the verifier refuses
    /// everything until an operator looks.
    pub fn open_fail_safe(path: impl AsRef<Path>, max_clock_skew_seconds: u64) -> Self {
        match Self::open(path.as_ref(), max_clock_skew_seconds) {
            Ok(s) => s,
            Err(e) => {
                crate::error!(
                    nonce_store_unusable,
                    "nonce store unusable: every signed op will be refused",
                    path = path.as_ref().display(),
                    error = e
                );
                FileNonceStore {
                    store: Err(e.to_string()),
                    index: Mutex::new(Index::default()),
                    skew: 0,
                    mono: Arc::new(SystemMonotonic::new()),
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
    /// the trusted time (the wall clock `now`, held back to real time since the newest
    /// trusted time on record; see the module doc), and records that trusted time; the
    /// hardware-key counters are kept.
    pub fn compact(&self, now: Timestamp) -> Result<CompactStats, NonceStoreError> {
        let store = self.store()?;
        let mut ix = lock(&self.index);
        let trusted = ix.trust.observe(now, self.mono.elapsed());
        let ahead = now.0.saturating_sub(trusted.0).max(0);
        ix.trust.noticed_ahead = ix.trust.noticed_ahead.min(ahead);
        let notice = i64::try_from(PRUNE_HELD_NOTICE.as_secs()).unwrap_or(i64::MAX);
        if ahead > notice && ahead > ix.trust.noticed_ahead.saturating_add(notice) {
            ix.trust.noticed_ahead = ahead;
            crate::warn!(
                nonce_prune_held,
                "nonce pruning held back: the wall clock is ahead of the trusted time; nonces are pruned against the trusted time only",
                now = now,
                trusted = trusted,
                ahead_seconds = ahead
            );
        }
        let cutoff = trusted.0.saturating_sub(self.skew);
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
        records.push(Record::TrustedTime {
            at: trusted.to_rfc3339(),
        });
        store.compact(records).map_err(NonceStoreError::Store)?;
        ix.nonces.retain(|_, t| t.0 >= cutoff);
        ix.recorded = Some(trusted);
        Ok(CompactStats {
            kept: ix.nonces.len(),
            pruned: before - ix.nonces.len(),
            trusted,
            held_seconds: u64::try_from(ahead).unwrap_or(0),
        })
    }

    /// Appends the trusted time as of the wall clock `now` to the file without
    /// compacting (the daemon does it as it stops), so the next start does not lose the
    /// real time that passed since the last compaction.
    pub fn record_trusted_time(&self, now: Timestamp) -> Result<Timestamp, NonceStoreError> {
        let store = self.store()?;
        let mut ix = lock(&self.index);
        let trusted = ix.trust.observe(now, self.mono.elapsed());
        store
            .append(&Record::TrustedTime {
                at: trusted.to_rfc3339(),
            })
            .map_err(NonceStoreError::Store)?;
        ix.recorded = Some(trusted);
        Ok(trusted)
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
        lock(&self.index).admit(nonce, expires_at, sk, || {
            let rec = Record::Nonce {
                nonce: nonce.to_string(),
                expires_at: expires_at.to_rfc3339(),
                sk_key: sk.map(|(k, _)| k.to_string()),
                sk_counter: sk.map(|(_, c)| c),
            };
            store.append(&rec).map(drop).map_err(NonceStoreError::Store)
        })
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
    fn the_trusted_time_follows_the_wall_clock_down_but_up_only_at_real_time_speed() {
        const T: i64 = 1_900_000_000;
        let secs = Duration::from_secs;
        // (wall, monotonic reading, trusted time), in order, on one store's clock.
        const STEPS: &[(i64, u64, i64)] = &[
            (T, 10, T),                 // first look: taken as it is
            (T + 50, 60, T + 50),       // 50 s of real time, 50 s on the wall: follows
            (T + 10_000, 70, T + 60),   // a jump: only the 10 real seconds count
            (T + 10_010, 80, T + 70),   // still held back, still advancing
            (T - 500, 90, T - 500),     // set back: follows it down at once
            (T + 10_000, 100, T - 490), // and climbs back at real-time speed only
            (T - 490, 100, T - 490),    // the wall equal to it: unchanged
        ];
        let mut trust = Trust::default();
        for (i, &(wall, mono, want)) in STEPS.iter().enumerate() {
            let got = trust.observe(Timestamp(wall), secs(mono));
            assert_eq!(got, Timestamp(want), "step {i}");
        }
    }

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
