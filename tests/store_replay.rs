#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The durable store: replay, torn tails, damage detection, fault injection, compaction.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use felhom_agent::store::{FaultOp, FaultyIo, Store, StoreError, SyncMode, verify_file};
use serde_json::json;

fn tempdir(name: &str) -> PathBuf {
    common::fresh_path("store", name)
}

/// Opens the store and collects every record's (seq, data as JSON value).
fn open_collect(path: &Path) -> Result<(Store, Vec<(u64, serde_json::Value)>), StoreError> {
    let mut seen = Vec::new();
    let s = Store::open(path, |seq, data| {
        seen.push((
            seq,
            serde_json::from_slice(data).map_err(|e| e.to_string())?,
        ));
        Ok(())
    })?;
    Ok((s, seen))
}

fn write_n(path: &Path, n: u64) {
    let (s, _) = open_collect(path).unwrap();
    for i in 0..n {
        s.append(&json!({"i": i, "pad": "x".repeat((i % 7) as usize)}))
            .unwrap();
    }
}

#[test]
fn new_store_makes_0700_dir_0600_file_and_replays_records() {
    let dir = tempdir("new");
    let path = dir.join("sub").join("nonces.log");
    write_n(&path, 5);
    assert_eq!(
        fs::metadata(dir.join("sub")).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (s, seen) = open_collect(&path).unwrap();
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[4], (5, json!({"i": 4, "pad": "xxxx"})));
    assert_eq!(s.append(&json!("next")).unwrap(), 6);
    assert_eq!(verify_file(&path).unwrap().records, 6);
}

#[test]
fn truncation_at_every_offset_of_the_last_record_keeps_all_earlier_records() {
    let dir = tempdir("torn");
    let full = dir.join("full.log");
    write_n(&full, 3);
    let bytes = fs::read(&full).unwrap();
    // Start of the last line = after the second-to-last newline.
    let last_start = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    for cut in last_start..bytes.len() {
        let path = dir.join(format!("cut-{cut}.log"));
        fs::write(&path, &bytes[..cut]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let (s, seen) = open_collect(&path).unwrap();
        assert_eq!(seen.len(), 2, "cut at {cut}");
        assert_eq!(seen[1].0, 2);
        // The file now ends at the good prefix, the cut bytes are kept.
        assert_eq!(fs::read(&path).unwrap(), &bytes[..last_start], "cut {cut}");
        let broken = fs::read(format!("{}.broken", path.display())).unwrap_or_default();
        assert_eq!(broken, &bytes[last_start..cut], "cut at {cut}");
        // And the file goes on: the next record is 3 again and verifies.
        assert_eq!(s.append(&json!({"again": cut})).unwrap(), 3);
        drop(s);
        let (_, seen) = open_collect(&path).unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2].1, json!({"again": cut}));
    }
}

#[test]
fn unparsable_last_line_is_torn_but_a_parsable_bad_last_line_is_damage() {
    let dir = tempdir("lastline");
    let path = dir.join("a.log");
    write_n(&path, 2);
    let good = fs::read(&path).unwrap();
    // Zeros ending in a newline (pages flushed out of order) read as torn.
    let mut torn = good.clone();
    torn.extend_from_slice(&[0u8; 40]);
    torn.push(b'\n');
    fs::write(&path, &torn).unwrap();
    let (_, seen) = open_collect(&path).unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(fs::read(&path).unwrap(), good);

    // A well-formed last line whose hash does not match is tampering, not a torn write.
    let mut text = String::from_utf8(good).unwrap();
    let at = text.rfind("\"i\":1").unwrap() + 4;
    text.replace_range(at..at + 1, "9");
    fs::write(&path, &text).unwrap();
    match open_collect(&path) {
        Err(StoreError::Corrupt { line, reason, .. }) => {
            assert_eq!(line, 3);
            assert!(reason.contains("hash"), "{reason}");
        }
        other => panic!("expected corrupt, got {:?}", other.map(|x| x.1)),
    }
}

fn lines_of(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| format!("{l}\n"))
        .collect()
}

fn corrupt_line(path: &Path) -> (usize, String) {
    match open_collect(path) {
        Err(StoreError::Corrupt { line, reason, .. }) => (line, reason),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok((_, seen)) => panic!("expected Corrupt, replayed {} records", seen.len()),
    }
}

#[test]
fn flipped_byte_anywhere_in_a_middle_line_names_that_line() {
    let dir = tempdir("flip");
    let path = dir.join("a.log");
    write_n(&path, 6);
    let lines = lines_of(&path);
    // Line 4 (the third record): flip every byte except the newline in turn.
    let target = 3;
    let start: usize = lines[..target].iter().map(String::len).sum();
    let len = lines[target].len() - 1;
    let orig = fs::read(&path).unwrap();
    for i in 0..len {
        let mut b = orig.clone();
        b[start + i] ^= 0x01;
        fs::write(&path, &b).unwrap();
        let (line, reason) = corrupt_line(&path);
        assert_eq!(line, target + 1, "byte {i}: {reason}");
    }
}

#[test]
fn deleted_swapped_and_duplicated_lines_are_found_with_their_line_number() {
    let dir = tempdir("edit");
    let path = dir.join("a.log");
    write_n(&path, 6);
    let lines = lines_of(&path);

    let mut del = lines.clone();
    del.remove(3);
    fs::write(&path, del.concat()).unwrap();
    let (line, reason) = corrupt_line(&path);
    assert_eq!(line, 4);
    assert!(reason.contains("sequence gap"), "{reason}");

    let mut swap = lines.clone();
    swap.swap(2, 3);
    fs::write(&path, swap.concat()).unwrap();
    assert_eq!(corrupt_line(&path).0, 3);

    let mut dup = lines.clone();
    dup.insert(3, lines[2].clone());
    fs::write(&path, dup.concat()).unwrap();
    assert_eq!(corrupt_line(&path).0, 4);

    // Deleting the first lines (anchor included) is caught too.
    fs::write(&path, lines[2..].concat()).unwrap();
    assert_eq!(corrupt_line(&path).0, 1);

    // A middle line that is not JSON at all.
    let mut junk = lines.clone();
    junk[2] = "garbage\n".into();
    fs::write(&path, junk.concat()).unwrap();
    assert_eq!(corrupt_line(&path).0, 3);
}

/// Appends until failure under a fault, then checks that every append reported
/// durable is on disk after reopen and that the store stayed poisoned.
fn run_fault(op: FaultOp, at: u64, for_good: bool) {
    let dir = tempdir("fault");
    let path = dir.join("f.log");
    let io = Arc::new(FaultyIo::new(op, at, for_good));
    // Creating a new file costs one write and one sync plus a directory sync.
    let store = match Store::open_with(&path, io, SyncMode::GroupCommit, |_, _| Ok(())) {
        Ok(s) => s,
        Err(_) => return, // failed while creating: nothing was reported durable
    };
    let mut durable = Vec::new();
    let mut failed = false;
    for i in 0..10u64 {
        match store.append(&json!({"n": i})) {
            Ok(seq) => {
                assert!(!failed, "an append succeeded after a failure");
                durable.push((seq, i));
            }
            Err(e) => {
                if failed {
                    assert!(matches!(e, StoreError::Poisoned { .. }), "{e}");
                } else {
                    assert!(matches!(e, StoreError::Fatal { .. }), "{e}");
                }
                failed = true;
            }
        }
    }
    assert!(failed, "fault {op:?} at {at} never fired");
    assert!(store.is_poisoned());
    assert!(matches!(
        store.compact(Vec::<u8>::new()),
        Err(StoreError::Poisoned { .. })
    ));
    drop(store);
    let (_, seen) = open_collect(&path).unwrap();
    for (seq, i) in &durable {
        assert!(
            seen.iter().any(|(s, v)| s == seq && v == &json!({"n": i})),
            "record {seq} reported durable but missing after reopen"
        );
    }
}

#[test]
fn write_or_fsync_failing_at_the_nth_call_loses_nothing_reported_durable() {
    for at in 2..8 {
        for for_good in [false, true] {
            run_fault(FaultOp::Write, at, for_good);
            run_fault(FaultOp::Sync, at + 1, for_good);
        }
    }
}

#[test]
fn a_failed_write_leaves_a_torn_line_that_the_restart_cuts() {
    let dir = tempdir("shortwrite");
    let path = dir.join("f.log");
    let io = Arc::new(FaultyIo::new(FaultOp::Write, 4, false));
    let store = Store::open_with(&path, io, SyncMode::GroupCommit, |_, _| Ok(())).unwrap();
    store.append(&json!(1)).unwrap();
    store.append(&json!(2)).unwrap();
    assert!(matches!(
        store.append(&json!({"long": "y".repeat(50)})),
        Err(StoreError::Fatal { .. })
    ));
    // "Once": the next write would succeed, but a poisoned store never retries.
    assert!(matches!(
        store.append(&json!(4)),
        Err(StoreError::Poisoned { .. })
    ));
    drop(store);
    let (s, seen) = open_collect(&path).unwrap();
    assert_eq!(seen.len(), 2);
    assert!(
        fs::metadata(format!("{}.broken", path.display()))
            .unwrap()
            .len()
            > 0
    );
    assert_eq!(s.append(&json!(3)).unwrap(), 3);
}

#[test]
fn concurrent_appenders_share_fsyncs_and_every_record_lands() {
    let dir = tempdir("group");
    let path = dir.join("g.log");
    for mode in [SyncMode::GroupCommit, SyncMode::PerRecord] {
        let _ = fs::remove_file(&path);
        let store = Arc::new(
            Store::open_with(
                &path,
                Arc::new(FaultyIo::new(FaultOp::Sync, u64::MAX, false)),
                mode,
                |_, _| Ok(()),
            )
            .unwrap(),
        );
        let mut handles = Vec::new();
        for t in 0..8u64 {
            let s = store.clone();
            handles.push(std::thread::spawn(move || {
                (0..50u64)
                    .map(|i| s.append(&json!({"t": t, "i": i})).unwrap())
                    .collect::<Vec<_>>()
            }));
        }
        let mut seqs: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
        drop(store);
        let (_, seen) = open_collect(&path).unwrap();
        assert_eq!(seen.len(), 400);
        for t in 0..8 {
            let mine: Vec<_> = seen
                .iter()
                .filter(|(_, v)| v["t"] == t)
                .map(|(_, v)| v["i"].as_u64().unwrap())
                .collect();
            assert_eq!(mine, (0..50).collect::<Vec<_>>(), "thread {t} order");
        }
    }
}

#[test]
fn compaction_keeps_the_chain_verifiable_and_survives_reopen() {
    let dir = tempdir("compact");
    let path = dir.join("c.log");
    write_n(&path, 10);
    let (s, _) = open_collect(&path).unwrap();
    assert_eq!(s.compact([json!("kept-a"), json!("kept-b")]).unwrap(), 2);
    assert_eq!(s.records(), 2);
    // Numbering carries on after the old file's last record.
    assert_eq!(s.append(&json!("after")).unwrap(), 13);
    drop(s);
    assert!(!Path::new(&format!("{}.compact.tmp", path.display())).exists());
    let (s, seen) = open_collect(&path).unwrap();
    assert_eq!(
        seen,
        vec![
            (11, json!("kept-a")),
            (12, json!("kept-b")),
            (13, json!("after"))
        ]
    );
    let sum = verify_file(&path).unwrap();
    assert_eq!((sum.anchor_seq, sum.records), (10, 3));
    // The anchor binds the chain: editing it breaks line 2.
    drop(s);
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text.replacen("\"seq\":10,", "\"seq\":11,", 1)).unwrap();
    assert_eq!(corrupt_line(&path).0, 2);
}

#[test]
fn a_crash_between_temp_write_and_rename_leaves_the_old_file_intact() {
    let dir = tempdir("crash");
    let path = dir.join("c.log");
    write_n(&path, 4);
    let before = fs::read(&path).unwrap();
    let tmp = PathBuf::from(format!("{}.compact.tmp", path.display()));
    fs::write(&tmp, b"{\"seq\":4,\"anchor\":\"half-written").unwrap();
    let (s, seen) = open_collect(&path).unwrap();
    assert_eq!(seen.len(), 4);
    assert!(!tmp.exists(), "leftover temp file removed");
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(s.append(&json!("5")).unwrap(), 5);
}

#[test]
fn compaction_that_fails_before_rename_keeps_the_store_usable() {
    let dir = tempdir("compactfail");
    let path = dir.join("c.log");
    // Syncs: 1 new file, 2 dir, 3 and 4 the appends, 5 the pre-compaction sync,
    // 6 the temp file's fsync: fail that one.
    let io = Arc::new(FaultyIo::new(FaultOp::Sync, 6, false));
    let s = Store::open_with(&path, io, SyncMode::GroupCommit, |_, _| Ok(())).unwrap();
    s.append(&json!(1)).unwrap();
    s.append(&json!(2)).unwrap();
    assert!(matches!(s.compact([json!(2)]), Err(StoreError::Io { .. })));
    assert!(!s.is_poisoned());
    assert_eq!(s.append(&json!(3)).unwrap(), 3);
    drop(s);
    let (_, seen) = open_collect(&path).unwrap();
    assert_eq!(seen.len(), 3);
}

#[test]
fn verify_file_reports_torn_and_corrupt_without_modifying() {
    let dir = tempdir("verify");
    let path = dir.join("v.log");
    write_n(&path, 3);
    let mut b = fs::read(&path).unwrap();
    b.extend_from_slice(b"{\"seq\":4");
    fs::write(&path, &b).unwrap();
    let sum = verify_file(&path).unwrap();
    assert_eq!((sum.records, sum.torn_bytes), (3, 8));
    assert_eq!(fs::read(&path).unwrap(), b, "read-only");
    b[120] ^= 0x20;
    fs::write(&path, &b).unwrap();
    assert!(matches!(
        verify_file(&path),
        Err(StoreError::Corrupt { line: 2, .. })
    ));
}
