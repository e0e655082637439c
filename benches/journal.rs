//! Time to reopen a 100 000-record journal (goal: under a second), and journal appends
//! per second from one thread. `cargo bench --bench journal`. Asserts nothing.
//! Set `FELHOM_BENCH_DIR` to measure on a particular file system.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use felhom_agent::reconcile::classify::OpClass;
use felhom_agent::reconcile::journal::{Journal, JournalRecord, OpState};
use felhom_agent::store::Store;
use felhom_agent::time::Timestamp;

const RECORDS: u64 = 100_000;

fn main() {
    let dir = std::env::var_os("FELHOM_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("felhom-bench-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("journal.log");

    // Build the file through the raw store without per-record fsync cost: the records
    // are what the journal writes (25 000 ops × 4 lifecycle steps).
    {
        let j = Journal::open(&path).unwrap();
        drop(j);
        let _ = std::fs::remove_file(&path);
        let s = Store::open_with(
            &path,
            std::sync::Arc::new(felhom_agent::store::OsIo),
            felhom_agent::store::SyncMode::GroupCommit,
            |_, _| Ok(()),
        )
        .unwrap();
        let recs: Vec<serde_json::Value> = (0..RECORDS)
            .map(|i| {
                let op = i / 4;
                let state = [
                    OpState::Started,
                    OpState::TaskRunning,
                    OpState::Succeeded,
                    OpState::Succeeded,
                ][(i % 4) as usize];
                let mut r = JournalRecord::started(
                    format!("start-{}-{op}", 100 + op % 500),
                    (100 + op % 500) as u32,
                    OpClass::Start,
                    Timestamp(1_800_000_000 + i as i64),
                );
                r.state = state;
                r.upid = Some(format!(
                    "UPID:pve-a:{op:08X}:00000000:00000000:vzstart:{}:root@pam:",
                    100 + op % 500
                ));
                let mut v = serde_json::to_value(&r).unwrap();
                v.as_object_mut()
                    .unwrap()
                    .insert("kind".into(), serde_json::Value::from("op"));
                v
            })
            .collect();
        s.compact(recs).unwrap();
    }

    let t = Instant::now();
    let j = Journal::open(&path).unwrap();
    let reopen = t.elapsed();
    assert!(j.damaged().is_none());
    println!(
        "journal reopen: {} records in {:.3} s (goal < 1 s), {} in flight",
        j.records(),
        reopen.as_secs_f64(),
        j.in_flight().len()
    );

    let n = 2_000u64;
    let t = Instant::now();
    for i in 0..n {
        let r = JournalRecord::started(format!("bench-{i}"), 1, OpClass::Stop, Timestamp(0));
        j.append(&r).unwrap();
    }
    println!(
        "journal appends (fsync each, one thread): {:.0}/s",
        n as f64 / t.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
