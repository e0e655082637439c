//! Time to reopen a 100 000-record journal (goal: under a second), and journal appends
//! per second against a plain `write` + `fdatasync` loop writing the same lines on the
//! same file system: one lane (goal ≥ 0.9×), and 8 lanes at once, where the journal's
//! shared fsync (group commit) races one fdatasync per record (goal ≥ 3×).
//! `cargo bench --bench journal`. Asserts nothing.
//! Set `FELHOM_BENCH_DIR` to measure on a particular file system.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use felhom_agent::base::Timestamp;
use felhom_agent::reconcile::OpClass;
use felhom_agent::reconcile::{Journal, JournalRecord, OpState};
use felhom_agent::store::Store;

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

    drop(j);

    // Appends against the floor: the same lines written by a plain write + fdatasync
    // loop on the same file system, one thread, then 8 lanes at once.
    // The disk's fsync latency drifts (shared machine), so the two are measured in
    // alternating rounds and each reported as its median.
    let line = sample_line(&dir);
    let rounds = 7;
    let n = 400u64;
    let (mut journal_1, mut raw_1, mut journal_8, mut raw_8) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        journal_1.push(journal_appends(&dir, 1, n));
        raw_1.push(raw_appends(&dir, &line, 1, n));
        journal_8.push(journal_appends(&dir, 8, n / 8));
        raw_8.push(raw_appends(&dir, &line, 8, n / 8));
    }
    let (journal_1, raw_1) = (median(journal_1), median(raw_1));
    let (journal_8, raw_8) = (median(journal_8), median(raw_8));
    println!(
        "appends/s, median of {rounds} alternating rounds, {} bytes a line:",
        line.len()
    );
    println!(
        "1 lane : journal {journal_1:>8.0}/s, plain write+fdatasync {raw_1:>8.0}/s, ratio {:.2}× (goal ≥ 0.9×)",
        journal_1 / raw_1
    );
    println!(
        "8 lanes: journal (group commit) {journal_8:>8.0}/s, one fdatasync per record {raw_8:>8.0}/s, ratio {:.2}× (goal ≥ 3×)",
        journal_8 / raw_8
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A record as the journal appends it, one per lane and index.
fn record(lane: u64, i: u64) -> JournalRecord {
    JournalRecord::started(
        format!("stop-{}-{i}", 100 + lane),
        (100 + lane) as u32,
        OpClass::Stop,
        Timestamp(1_800_000_000),
    )
}

/// The bytes one journal line takes on disk, for the plain loop to write the same amount.
fn sample_line(dir: &Path) -> Vec<u8> {
    let path = dir.join("sample.log");
    let _ = std::fs::remove_file(&path);
    Journal::open(&path).unwrap().append(&record(0, 0)).unwrap();
    let mut line = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    if line.last() != Some(&b'\n') {
        line.push(b'\n');
    }
    line
}

/// Journal appends per second from `lanes` threads appending `per_lane` records each.
fn journal_appends(dir: &Path, lanes: u64, per_lane: u64) -> f64 {
    let path = dir.join("appends.log");
    let _ = std::fs::remove_file(&path);
    let j = Arc::new(Journal::open(&path).unwrap());
    let t = Instant::now();
    let hs: Vec<_> = (0..lanes)
        .map(|lane| {
            let j = j.clone();
            std::thread::spawn(move || {
                for i in 0..per_lane {
                    j.append(&record(lane, i)).unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    (lanes * per_lane) as f64 / t.elapsed().as_secs_f64()
}

/// The floor: `write` + `fdatasync` per line on one shared file, `lanes` threads taking
/// turns (what a journal without group commit does).
fn raw_appends(dir: &Path, line: &[u8], lanes: u64, per_lane: u64) -> f64 {
    let path = dir.join("raw.log");
    let _ = std::fs::remove_file(&path);
    let file = Arc::new(Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap(),
    ));
    let t = Instant::now();
    let hs: Vec<_> = (0..lanes)
        .map(|_| {
            let file = file.clone();
            let line = line.to_vec();
            std::thread::spawn(move || {
                for _ in 0..per_lane {
                    let mut f = file.lock().unwrap();
                    f.write_all(&line).unwrap();
                    f.sync_data().unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    (lanes * per_lane) as f64 / t.elapsed().as_secs_f64()
}
