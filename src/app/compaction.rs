//! The daemon's compaction workers: the nonce store, pruned of nonces past their
//! expiry, and the journal, compacted once it has grown, each on its own schedule until
//! the shutdown.
//!
//! A compaction that left its store poisoned (a failed fsync, never retried) is returned
//! so the daemon exits and the restart replays from disk; one that failed before the new
//! file replaced the old changed nothing and is only logged. Nothing here decides what
//! is kept: the stores do.

use std::time::Duration;

use crate::app::reconciler::compact_journal;
use crate::authz::{FileNonceStore, NonceStoreError};
use crate::base::shutdown::Shutdown;
use crate::base::time::Clock;
use crate::reconcile::journal::{Journal, JournalError};

/// How often the nonce store drops nonces past their expiry (and once at start).
pub(crate) const NONCE_COMPACT_EVERY: Duration = Duration::from_secs(3600);

/// How often a running daemon checks whether the journal has grown past
/// [`crate::reconcile::journal::COMPACT_OVER`] records and compacts it if so (the start
/// does too). The check is a counter read; a busy host compacts every few minutes.
pub(crate) const JOURNAL_COMPACT_EVERY: Duration = Duration::from_secs(60);

/// Compacts `store` now and then every `every` until the shutdown. A compaction that
/// left the store poisoned (a failed fsync, never retried) is returned: the daemon must
/// exit and replay from disk. Any other failure (the temp file could not be written)
/// changed nothing and is retried at the next round.
pub(crate) fn compact_nonces(
    store: &FileNonceStore,
    shutdown: &Shutdown,
    clock: &dyn Clock,
    every: Duration,
) -> Result<(), NonceStoreError> {
    loop {
        if store.unavailable().is_none() {
            match store.compact(clock.now()) {
                Ok(stats) => crate::info!(
                    nonce_store_compacted,
                    "nonce store compacted",
                    kept = stats.kept,
                    pruned = stats.pruned,
                    trusted = stats.trusted,
                    held_seconds = stats.held_seconds
                ),
                Err(e) if store.unavailable().is_some() => return Err(e),
                Err(e) => crate::warn!(
                    nonce_store_compaction_failed,
                    "nonce store compaction failed; retried later",
                    error = e
                ),
            }
        }
        if shutdown.sleep(every) {
            return Ok(());
        }
    }
}

/// Waits `every`, compacts the journal when it holds more than `threshold` records, and again,
/// until the shutdown (the start already compacted it). A compaction that poisoned the
/// journal is returned: the daemon must exit and replay from disk.
pub(crate) fn compact_journal_every(
    journal: &Journal,
    threshold: u64,
    shutdown: &Shutdown,
    clock: &dyn Clock,
    every: Duration,
) -> Result<(), JournalError> {
    while !shutdown.sleep(every) {
        compact_journal(journal, threshold, clock, "running")?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Instant;

    /// A fresh nonce store in its own temp directory, over `io`.
    pub(crate) fn temp_store(
        name: &str,
        io: Arc<dyn crate::store::Io>,
    ) -> (PathBuf, FileNonceStore) {
        let dir =
            std::env::temp_dir().join(format!("felhom-daemon-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = FileNonceStore::open_with(dir.join("nonces.log"), 0, io).unwrap();
        (dir, store)
    }

    #[test]
    fn a_running_daemon_compacts_a_grown_journal_and_keeps_what_is_in_flight() {
        use crate::base::time::{ManualClock, Timestamp};
        use crate::reconcile::classify::OpClass;
        use crate::reconcile::journal::{JournalRecord, OpState};
        let dir =
            std::env::temp_dir().join(format!("felhom-daemon-unit-jc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let journal = Arc::new(Journal::open(&dir.join("journal.log")).unwrap());
        let at = Timestamp(1_800_000_000);
        for i in 0..5 {
            let mut r = JournalRecord::started(format!("start-{i}"), 100 + i, OpClass::Start, at);
            journal.append(&r).unwrap();
            r.state = OpState::Succeeded;
            journal.append(&r).unwrap();
        }
        let running = JournalRecord::started("stop-7", 107, OpClass::Stop, at);
        journal.append(&running).unwrap();
        assert_eq!(journal.records(), 11);

        let shutdown = Shutdown::new();
        let (j, s) = (Arc::clone(&journal), shutdown.clone());
        let worker = std::thread::spawn(move || {
            compact_journal_every(&j, 4, &s, &ManualClock::new(at), Duration::from_millis(5))
        });
        let start = Instant::now();
        while journal.records() >= 11 && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        shutdown.trigger();
        assert!(worker.join().unwrap().is_ok(), "ends Ok on shutdown");
        assert!(
            journal.records() < 11,
            "compacted while running: {} records",
            journal.records()
        );
        let in_flight: Vec<_> = journal.in_flight().into_iter().map(|r| r.op_id).collect();
        assert_eq!(
            in_flight,
            vec!["stop-7".to_owned()],
            "the op in flight is kept"
        );
        drop(journal);
        let reopened = Journal::open(&dir.join("journal.log")).unwrap();
        assert!(
            reopened.damaged().is_none(),
            "the compacted file replays clean"
        );
        assert_eq!(reopened.in_flight().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nonce_compaction_runs_at_start_and_drops_only_expired_nonces() {
        use crate::authz::NonceStore;
        use crate::base::time::{ManualClock, Timestamp};
        let (dir, store) = temp_store("compact", Arc::new(crate::store::OsIo));
        let now = Timestamp(1_800_000_000);
        store
            .seen_or_record("old", Timestamp(now.0 - 10), None)
            .unwrap();
        store
            .seen_or_record("new", Timestamp(now.0 + 600), None)
            .unwrap();
        let shutdown = Shutdown::new();
        shutdown.trigger();
        // Already shut down: exactly the round at start runs.
        compact_nonces(
            &store,
            &shutdown,
            &ManualClock::new(now),
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(store.len(), 1, "the expired nonce is gone");
        let reopened = FileNonceStore::open(dir.join("nonces.log"), 0).unwrap();
        assert_eq!(reopened.len(), 1, "and gone from the file");
        assert_eq!(
            reopened
                .seen_or_record("new", Timestamp(now.0 + 600), None)
                .unwrap(),
            crate::authz::Freshness::Seen,
            "the live nonce survives compaction"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_compaction_that_poisons_the_nonce_store_ends_the_worker_with_the_error() {
        use crate::base::time::{ManualClock, Timestamp};
        use crate::store::{FaultOp, FaultyIo};
        // Opening a new file costs two syncs; the third is the compaction's fsync of
        // the old file, whose failure is fatal (never retried).
        let io = Arc::new(FaultyIo::new(FaultOp::Sync, 3, false));
        let (dir, store) = temp_store("poison", io);
        let shutdown = Shutdown::new();
        shutdown.trigger();
        let clock = ManualClock::new(Timestamp(1_800_000_000));
        let r = compact_nonces(&store, &shutdown, &clock, Duration::from_secs(3600));
        assert!(matches!(r, Err(NonceStoreError::Store(_))), "{r:?}");
        assert!(store.unavailable().is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_compaction_that_failed_before_the_rename_is_only_logged() {
        use crate::authz::NonceStore;
        use crate::base::time::{ManualClock, Timestamp};
        use crate::store::{FaultOp, FaultyIo};
        // The fourth sync is the new file's, before the rename: the old file stays.
        let io = Arc::new(FaultyIo::new(FaultOp::Sync, 4, false));
        let (dir, store) = temp_store("retry", Arc::clone(&io) as Arc<dyn crate::store::Io>);
        let shutdown = Shutdown::new();
        shutdown.trigger();
        let clock = ManualClock::new(Timestamp(1_800_000_000));
        let r = compact_nonces(&store, &shutdown, &clock, Duration::from_secs(3600));
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(
            io.counts().1,
            4,
            "the compaction stopped at its failed fsync"
        );
        assert_eq!(store.unavailable(), None, "the store still works");
        assert_eq!(
            store
                .seen_or_record("n1", Timestamp(1_800_000_600), None)
                .unwrap(),
            crate::authz::Freshness::Fresh
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
