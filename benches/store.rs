//! Store appends per second (one thread; 8 threads with group commit vs one fsync per
//! record) and the time to replay a 100 000-record file, raw and as the nonce store.
//!
//! `cargo bench --bench store` (release profile). Set `FELHOM_BENCH_DIR` to measure on
//! a particular file system (default: the system temp dir). Asserts nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use felhom_agent::authz::FileNonceStore;
use felhom_agent::store::{OsIo, Store, SyncMode};
use serde_json::json;

fn appends(path: &Path, mode: SyncMode, threads: u64, per_thread: u64) -> f64 {
    let _ = std::fs::remove_file(path);
    let s = Arc::new(Store::open_with(path, Arc::new(OsIo), mode, |_, _| Ok(())).unwrap());
    let t = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|th| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    s.append(&json!({"t": th, "i": i, "state": "started"}))
                        .unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    (threads * per_thread) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let dir = std::env::var_os("FELHOM_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("felhom-bench-{}", std::process::id()))
        });
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    println!("directory: {}", dir.display());
    let p = dir.join("bench.log");

    for (case, mode, threads, per_thread) in [
        ("1 thread,  group commit", SyncMode::GroupCommit, 1, 500),
        ("1 thread,  per record  ", SyncMode::PerRecord, 1, 500),
        ("8 threads, group commit", SyncMode::GroupCommit, 8, 250),
        ("8 threads, per record  ", SyncMode::PerRecord, 8, 250),
    ] {
        let rate = appends(&p, mode, threads, per_thread);
        println!("{case} : {rate:>9.0} appends/s");
    }

    // 100 000 nonce-shaped records, written in one go by a compaction.
    let _ = std::fs::remove_file(&p);
    let s = Store::open(&p, |_, _| Ok(())).unwrap();
    s.compact((0..100_000u64).map(|i| {
        json!({"kind": "nonce", "nonce": format!("{i:032x}"), "expires_at": "2030-01-01T01:00:00Z"})
    }))
    .unwrap();
    drop(s);
    let size = std::fs::metadata(&p).unwrap().len();
    let t = Instant::now();
    let mut n = 0u64;
    let s = Store::open(&p, |_, _| {
        n += 1;
        Ok(())
    })
    .unwrap();
    let raw = t.elapsed();
    drop(s);
    let t = Instant::now();
    let ns = FileNonceStore::open(&p, 120).unwrap();
    let nonce = t.elapsed();
    println!(
        "replay 100k records ({:.1} MiB): store {:.0} ms, nonce store (parse + index) {:.0} ms ({n} / {} records)",
        size as f64 / (1024.0 * 1024.0),
        raw.as_secs_f64() * 1000.0,
        nonce.as_secs_f64() * 1000.0,
        ns.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
