//! The journal on the durable store: lifecycle, restart, idempotency, compaction,
//! damage, provenance and the read-only view.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::PathBuf;

use felhom_agent::base::Timestamp;
use felhom_agent::reconcile::{Journal, JournalRecord, OpState};
use felhom_agent::reconcile::{OpClass, Provenance};

fn tempdir(name: &str) -> PathBuf {
    common::fresh_path("journal", name)
}

const T0: Timestamp = Timestamp(1_800_000_000);

fn keyed(op: &str, key: &str, expires: i64) -> JournalRecord {
    let mut r = JournalRecord::started(op, 105, OpClass::GuestDestroy, T0);
    r.idempotency_key = Some(key.into());
    r.expires_at = Some(Timestamp(expires));
    r
}

#[test]
fn lifecycle_latest_record_wins() {
    let p = tempdir("life").join("journal.log");
    let j = Journal::open(&p).unwrap();
    let id = j.new_op_id("start-105");
    let r = JournalRecord::started(&id, 105, OpClass::Start, T0);
    j.append(&r).unwrap();
    assert_eq!(j.latest(&id).unwrap().state, OpState::Started);
    let mut running = r.step(OpState::TaskRunning, Timestamp(T0.0 + 1));
    running.upid = Some("UPID:pve-a:0001:0002:0003:vzstart:105:root@pam:".into());
    j.append(&running).unwrap();
    assert_eq!(j.in_flight(), vec![running.clone()]);
    j.append(&running.step(OpState::Succeeded, Timestamp(T0.0 + 2)))
        .unwrap();
    let last = j.latest(&id).unwrap();
    assert_eq!(last.state, OpState::Succeeded);
    assert_eq!(last.upid, running.upid, "later steps keep the UPID");
    assert!(j.in_flight().is_empty());
    assert!(j.latest("nope-1").is_none());
}

#[test]
fn in_flight_survives_restart() {
    let p = tempdir("inflight").join("journal.log");
    {
        let j = Journal::open(&p).unwrap();
        let a = JournalRecord::started("stop-101-1", 101, OpClass::Stop, T0);
        let b = JournalRecord::started("start-102-2", 102, OpClass::Start, T0);
        j.append(&a).unwrap();
        j.append(&b).unwrap();
        j.append(&a.step(OpState::Failed, T0)).unwrap();
    }
    let j = Journal::open(&p).unwrap();
    let f = j.in_flight();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].op_id, "start-102-2");
    assert_eq!(j.latest("stop-101-1").unwrap().state, OpState::Failed);
    assert!(j.damaged().is_none());
}

#[test]
fn idempotency_survives_restart_and_a_failed_key_is_not_applied() {
    let p = tempdir("idem").join("journal.log");
    {
        let j = Journal::open(&p).unwrap();
        let ok = keyed("guest_destroy-105-1", "nonce-ok", T0.0 + 3600);
        j.append(&ok).unwrap();
        assert!(!j.already_applied("nonce-ok"), "started is not applied");
        j.append(&ok.step(OpState::Succeeded, T0)).unwrap();
        let bad = keyed("guest_destroy-105-2", "nonce-bad", T0.0 + 3600);
        j.append(&bad).unwrap();
        j.append(&bad.step(OpState::Failed, T0)).unwrap();
        assert!(j.already_applied("nonce-ok"));
    }
    let j = Journal::open(&p).unwrap();
    assert!(j.already_applied("nonce-ok"));
    assert!(!j.already_applied("nonce-bad"));
    assert!(!j.already_applied("never-seen"));
}

#[test]
fn torn_trailing_line_is_skipped() {
    let p = tempdir("torn").join("journal.log");
    {
        let j = Journal::open(&p).unwrap();
        j.append(&JournalRecord::started("start-1-1", 1, OpClass::Start, T0))
            .unwrap();
    }
    let mut bytes = fs::read(&p).unwrap();
    bytes.extend_from_slice(b"{\"seq\":2,\"prev\":\"00");
    fs::write(&p, &bytes).unwrap();
    let j = Journal::open(&p).unwrap();
    assert!(j.damaged().is_none(), "a torn tail is not damage");
    assert_eq!(j.in_flight().len(), 1);
    // The file goes on: appends after the cut replay.
    j.append(&JournalRecord::started("start-2-2", 2, OpClass::Start, T0))
        .unwrap();
    drop(j);
    assert_eq!(Journal::open(&p).unwrap().in_flight().len(), 2);
}

#[test]
fn damage_inside_is_reported_state_carried_on_and_it_persists_until_cleared() {
    let dir = tempdir("damage");
    let p = dir.join("journal.log");
    {
        let j = Journal::open(&p).unwrap();
        j.append(&JournalRecord::started("start-1-1", 1, OpClass::Start, T0))
            .unwrap();
        j.append(&JournalRecord::started("start-2-2", 2, OpClass::Start, T0))
            .unwrap();
        j.append(&JournalRecord::started("start-3-3", 3, OpClass::Start, T0))
            .unwrap();
    }
    // Flip a byte inside line 3 (the second record): its hash no longer matches.
    let text = fs::read_to_string(&p).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let bad = lines[2].replace("start-2-2", "start-2-9");
    let damaged = format!("{}\n{}\n{}\n{}\n", lines[0], lines[1], bad, lines[3]);
    fs::write(&p, damaged).unwrap();

    let j = Journal::open(&p).expect("damage inside is not fatal");
    let why = j.damaged().expect("damage reported");
    assert!(why.contains("line 3"), "{why}");
    // The good prefix is carried on; the file is usable for benign work.
    assert_eq!(j.in_flight().len(), 1);
    assert_eq!(j.in_flight()[0].op_id, "start-1-1");
    j.append(&JournalRecord::started("start-4-4", 4, OpClass::Start, T0))
        .unwrap();
    drop(j);
    let aside = dir.join("journal.log.damaged");
    assert!(aside.exists(), "the damaged file is kept");
    let j = Journal::open(&p).unwrap();
    assert!(j.damaged().is_some(), "still refused after a restart");
    assert_eq!(j.in_flight().len(), 2);
    drop(j);
    fs::remove_file(&aside).unwrap();
    assert!(Journal::open(&p).unwrap().damaged().is_none());
}

#[test]
fn compaction_keeps_in_flight_and_unexpired_keys_only() {
    let p = tempdir("compact").join("journal.log");
    let j = Journal::open(&p).unwrap();
    let flying = JournalRecord::started("start-1-1", 1, OpClass::Start, T0);
    j.append(&flying).unwrap();
    let done = JournalRecord::started("stop-2-2", 2, OpClass::Stop, T0);
    j.append(&done).unwrap();
    j.append(&done.step(OpState::Succeeded, T0)).unwrap();
    let live = keyed("guest_destroy-3-3", "live", T0.0 + 100);
    j.append(&live.step(OpState::Succeeded, T0)).unwrap();
    let old = keyed("guest_destroy-4-4", "old", T0.0 - 1);
    j.append(&old.step(OpState::Succeeded, T0)).unwrap();
    let before = j.records();

    j.compact(T0).unwrap();
    assert!(j.records() < before);
    assert_eq!(j.records(), 3, "seq floor, in-flight op, live key");
    assert!(j.already_applied("live"));
    assert!(!j.already_applied("old"));
    assert!(j.latest("stop-2-2").is_none());
    let next = j.new_op_id("x");
    drop(j);

    let j = Journal::open(&p).unwrap();
    assert_eq!(j.in_flight(), vec![flying]);
    assert!(j.already_applied("live"));
    assert!(!j.already_applied("old"));
    let after = j.new_op_id("x");
    assert_ne!(
        after, next,
        "op ids stay unique across compaction and restart"
    );
    let n = |s: &str| s.rsplit('-').next().unwrap().parse::<u64>().unwrap();
    assert!(n(&after) > n(&next));
}

#[test]
fn provenance_comes_from_journal_records_and_ends_with_the_guest_or_transaction() {
    let p = tempdir("prov").join("journal.log");
    let j = Journal::open(&p).unwrap();
    assert_eq!(j.provenance(900, Some("txn-1")), None);
    j.record_guest_created(900, "txn-1", T0).unwrap();
    assert_eq!(
        j.provenance(900, Some("txn-1")),
        Some(Provenance::CreatedInTransaction)
    );
    assert_eq!(
        j.provenance(900, Some("txn-2")),
        None,
        "another transaction"
    );
    assert_eq!(j.provenance(900, None), None);
    j.tag_scratch(901, T0).unwrap();
    j.compact(T0).unwrap();
    drop(j);

    let j = Journal::open(&p).unwrap();
    assert_eq!(j.provenance(901, None), Some(Provenance::AgentScratch));
    assert_eq!(
        j.provenance(900, Some("txn-1")),
        Some(Provenance::CreatedInTransaction)
    );
    j.end_transaction("txn-1", T0).unwrap();
    assert_eq!(j.provenance(900, Some("txn-1")), None);
    // A destroyed scratch guest's vmid may be reused: the tag goes with the guest.
    let d = JournalRecord::started("guest_destroy-901-9", 901, OpClass::GuestDestroy, T0);
    j.append(&d).unwrap();
    assert_eq!(j.provenance(901, None), Some(Provenance::AgentScratch));
    j.append(&d.step(OpState::Succeeded, T0)).unwrap();
    assert_eq!(j.provenance(901, None), None);
}

#[test]
fn a_released_scratch_tag_is_gone_across_restarts_and_compaction() {
    let p = tempdir("scratch-release").join("journal.log");
    let j = Journal::open(&p).unwrap();
    j.tag_scratch(9900, T0).unwrap();
    j.tag_scratch(9901, T0).unwrap();
    assert_eq!(j.scratch_vmids(), [9900, 9901]);
    j.release_scratch(9900, T0).unwrap();
    assert_eq!(j.provenance(9900, None), None);
    assert_eq!(j.scratch_vmids(), [9901]);
    drop(j);

    let j = Journal::open(&p).unwrap();
    assert_eq!(j.provenance(9900, None), None, "replayed");
    assert_eq!(j.provenance(9901, None), Some(Provenance::AgentScratch));
    j.compact(T0).unwrap();
    drop(j);
    let j = Journal::open(&p).unwrap();
    assert_eq!(j.scratch_vmids(), [9901], "compaction keeps live tags only");
    let v = Journal::open_read_only(&p).unwrap();
    assert_eq!(v.provenance(9900, None), None);
    assert_eq!(v.provenance(9901, None), Some(Provenance::AgentScratch));
}

#[test]
fn read_only_view_writes_nothing_and_shows_history() {
    let dir = tempdir("view");
    let p = dir.join("journal.log");
    assert!(
        Journal::open_read_only(&p).is_err(),
        "missing file is an error"
    );
    assert!(!p.exists(), "the view creates nothing");
    let j = Journal::open(&p).unwrap();
    let r = JournalRecord::started("start-1-1", 1, OpClass::Start, T0);
    j.append(&r).unwrap();
    j.append(&r.step(OpState::Succeeded, T0)).unwrap();
    j.append(&JournalRecord::started("stop-2-2", 2, OpClass::Stop, T0))
        .unwrap();
    let mut bytes = fs::read(&p).unwrap();
    bytes.extend_from_slice(b"{\"torn");
    fs::write(&p, &bytes).unwrap();

    let v = Journal::open_read_only(&p).unwrap();
    assert_eq!(v.history().len(), 3);
    assert_eq!(v.tail(1)[0].op_id, "stop-2-2");
    assert_eq!(v.tail(10).len(), 3);
    assert_eq!(v.in_flight().len(), 1);
    assert_eq!(v.latest("start-1-1").unwrap().state, OpState::Succeeded);
    assert!(v.damaged().is_none());
    assert_eq!(fs::read(&p).unwrap(), bytes, "the torn tail is not cut");
}

#[test]
fn unknown_class_round_trips_through_the_file() {
    let p = tempdir("unknown").join("journal.log");
    {
        let j = Journal::open(&p).unwrap();
        let mut r = JournalRecord::started("x-1", 7, OpClass::parse("format_disk"), T0);
        r.params.insert("disk".into(), "rootfs".into());
        r.detail = Some("why".into());
        j.append(&r).unwrap();
    }
    let j = Journal::open(&p).unwrap();
    let r = j.latest("x-1").unwrap();
    assert_eq!(r.class, OpClass::Unknown("format_disk".into()));
    assert_eq!(r.params.get("disk").map(String::as_str), Some("rootfs"));
}
