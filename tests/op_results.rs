//! The signed-op results kept for the hub (`state_dir/op_results.json`): what an
//! acknowledgement drops (exactly the acknowledged ids, for good), the cap, and the
//! acknowledgements a hub round applies. Oracles are the typed results, the report
//! fields and the log's `event=` keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::logfmt;

use std::sync::Arc;

use felhom_agent::app::{AckingRound, ResultsFeed, apply_acks};
use felhom_agent::base::Timestamp;
use felhom_agent::hub::{ControlEnvelope, OpResultsSource, Reporter};
use felhom_agent::reconcile::{OP_RESULTS_MAX, OpResult, OpResults, Recorded, ResultOutcome};
use felhom_agent::store::OsIo;

fn result(id: &str, outcome: ResultOutcome, code: &str) -> OpResult {
    let nonce = Some("5f0c9e2a7b41d8c36e1f90a4b2d7c85e".to_owned());
    OpResult::new(id, nonce, outcome, code, Timestamp(1_800_000_000))
}

fn ids(r: &OpResults) -> Vec<String> {
    r.results().into_iter().map(|r| r.id).collect()
}

#[test]
fn an_ack_drops_exactly_the_acked_ids_and_they_stay_gone_after_a_restart() {
    let dir = common::tempdir("opresults", "ack");
    let path = dir.join("op_results.json");
    let r = OpResults::open(&path, Arc::new(OsIo));
    for (id, outcome, code) in [
        ("op-1", ResultOutcome::Executed, "executed"),
        ("op-2", ResultOutcome::Refused, "guest_changed"),
        ("op-3", ResultOutcome::Refused, "pending_signature"),
        ("op-4", ResultOutcome::Skipped, "already_applied"),
    ] {
        r.record(result(id, outcome, code)).unwrap();
    }
    let acked = apply_acks(
        &r,
        &["op-1".into(), "op-3".into(), "op-unknown".into()],
        None,
    );
    assert_eq!(acked, 2);
    assert_eq!(ids(&r), ["op-2", "op-4"]);
    drop(r);
    let again = OpResults::open(&path, Arc::new(OsIo));
    assert_eq!(
        ids(&again),
        ["op-2", "op-4"],
        "the acked stay gone, the rest stay"
    );
    assert_eq!(again.results()[0].code, "guest_changed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn past_the_cap_the_oldest_result_is_dropped_and_logged() {
    let log = felhom_agent::base::log::tap();
    let dir = common::tempdir("opresults", "cap");
    let r = OpResults::open(dir.join("op_results.json"), Arc::new(OsIo));
    for i in 0..OP_RESULTS_MAX + 2 {
        let got = r
            .record(result(&format!("cap-{i}"), ResultOutcome::Held, "blocked"))
            .unwrap();
        if i < OP_RESULTS_MAX {
            assert_eq!(got, Recorded::Saved { dropped: vec![] });
        }
    }
    let kept = ids(&r);
    assert_eq!(kept.len(), OP_RESULTS_MAX);
    assert_eq!(kept[0], "cap-2", "the oldest two went first");
    assert_eq!(
        kept[OP_RESULTS_MAX - 1],
        format!("cap-{}", OP_RESULTS_MAX + 1)
    );
    let text = String::from_utf8(log.lock().unwrap().clone()).unwrap();
    let dropped: Vec<String> = logfmt::events(&text, "op_result_dropped")
        .iter()
        .filter(|e| e.field("id").starts_with("cap-"))
        .map(|e| e.field("id").to_string())
        .collect();
    assert_eq!(dropped, ["cap-0", "cap-1"]);
    let reopened = OpResults::open(dir.join("op_results.json"), Arc::new(OsIo));
    assert_eq!(ids(&reopened), kept);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A hub round whose answer acknowledges `acks`; while it is "in flight" the agent
/// records `during` (a newer outcome the hub has not seen).
struct Round {
    results: Arc<OpResults>,
    during: Option<OpResult>,
    acks: Vec<String>,
    feed: Arc<ResultsFeed>,
}

impl Reporter for Round {
    type Error = std::io::Error;
    fn round(&mut self) -> Result<ControlEnvelope, std::io::Error> {
        // What the report would carry is read first, as the collector does.
        let _report = self.feed.signed_op_results().unwrap();
        if let Some(r) = self.during.take() {
            self.results.record(r).unwrap();
        }
        Ok(ControlEnvelope {
            ack_signed_op_results: self.acks.clone(),
            ..ControlEnvelope::default()
        })
    }
}

#[test]
fn a_round_applies_the_envelopes_acks_only_to_what_its_report_carried() {
    let dir = common::tempdir("opresults", "round");
    let results = Arc::new(OpResults::open(dir.join("op_results.json"), Arc::new(OsIo)));
    results
        .record(result("op-1", ResultOutcome::Held, "blocked"))
        .unwrap();
    results
        .record(result("op-2", ResultOutcome::Executed, "executed"))
        .unwrap();
    let feed = Arc::new(ResultsFeed::default());
    let round = |during: Option<OpResult>, acks: &[&str]| Round {
        results: Arc::clone(&results),
        during,
        acks: acks.iter().map(|s| s.to_string()).collect(),
        feed: Arc::clone(&feed),
    };

    // Before the results are bound (the reconciler not open yet): nothing reported,
    // nothing dropped.
    let mut early = AckingRound::new(round(None, &["op-1", "op-2"]), Arc::clone(&feed));
    early.round().unwrap();
    assert_eq!(ids(&results), ["op-1", "op-2"]);
    assert!(feed.signed_op_results().unwrap().is_empty());

    assert!(feed.bind(Arc::clone(&results)));
    // op-1 executes while the report that showed it held is in flight; the hub acks
    // both ids it was shown: op-2 goes, op-1's newer outcome stays for the next report.
    let executed = result("op-1", ResultOutcome::Executed, "executed");
    let mut first = AckingRound::new(round(Some(executed), &["op-1", "op-2"]), Arc::clone(&feed));
    first.round().unwrap();
    let results_now: Vec<(String, ResultOutcome)> = results
        .results()
        .into_iter()
        .map(|r| (r.id, r.outcome))
        .collect();
    assert_eq!(results_now, [("op-1".to_string(), ResultOutcome::Executed)]);

    let mut second = AckingRound::new(round(None, &["op-1"]), Arc::clone(&feed));
    second.round().unwrap();
    assert!(results.results().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
