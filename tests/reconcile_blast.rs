#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The blast-radius limit against the Proxmox simulator: with a limit of N, a desired
//! state stopping N+3 guests stops exactly N and holds 3 `rate_limited` with nothing
//! sent for them; starts and increases are never held; the rolling hour (a stepped
//! clock) releases the held ones; a restart inside the hour does not reset it; an
//! operator's `resume --rate-limit` marker releases the held ones once; a reduction of
//! cores counts and an increase does not. Oracles: typed outcomes, the simulator's
//! mutation log and the audit log's decisions.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use felhom_agent::base::{Clock, ManualClock, Shutdown, Timestamp};
use felhom_agent::reconcile::{
    ActionKind, AuditLog, DesiredGuest, DesiredState, Engine, Gate, Journal, Outcome, PassReport,
    Queue, Run, Spec, StaticProvider, request_resume, resume_marker_path,
};
use felhom_sim::{GuestSeed, ProxmoxSim};

const T0: i64 = 1_800_000_000;
const HOUR: i64 = 3600;

struct Rig {
    engine: Engine,
    audit: Arc<AuditLog>,
    provider: Arc<StaticProvider>,
    _queue: Queue,
}

/// An engine over `dir`'s journal and audit log with `limit` disruptive actions per
/// hour, on `clock`, taking resume markers from `dir`. Opening it again over the same
/// `dir` is a restart (the journal is compacted at start, as the daemon does).
fn rig(
    sim: &ProxmoxSim,
    dir: &Path,
    limit: u32,
    clock: &ManualClock,
    desired: DesiredState,
) -> Rig {
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    let journal = Arc::new(Journal::open(&dir.join("journal.log")).unwrap());
    journal.compact(clock.now()).unwrap();
    let audit = Arc::new(AuditLog::open(&dir.join("audit.log")).unwrap());
    let gate = Arc::new(
        Gate::new(
            "pve-a".into(),
            None,
            Arc::clone(&journal),
            Arc::clone(&audit),
        )
        .with_clock(Arc::clone(&clock)),
    );
    let mut opts = common::engine_options();
    opts.max_disruptive_per_hour = limit;
    let (engine, queue, provider) =
        common::engine_rig(sim, gate, journal, desired, Shutdown::new(), opts);
    let engine = engine.with_clock(clock).with_rate_limit_resume(dir);
    Rig {
        engine,
        audit,
        provider,
        _queue: queue,
    }
}

fn sim_with(guests: impl IntoIterator<Item = GuestSeed>) -> ProxmoxSim {
    let mut b = ProxmoxSim::builder().task_duration(Duration::from_millis(20));
    for g in guests {
        b = b.guest(g);
    }
    b.start()
}

fn running(vmids: std::ops::Range<u32>) -> Vec<GuestSeed> {
    vmids
        .map(|v| GuestSeed::new(v, &format!("g{v}")).running(true))
        .collect()
}

fn stop_all(generation: u64, vmids: std::ops::Range<u32>) -> DesiredState {
    DesiredState::from_guests(
        generation,
        vmids.map(|v| DesiredGuest {
            run: Some(Run::Stopped),
            ..DesiredGuest::new(v)
        }),
    )
}

/// The guests a run-state or config request was sent for, with the request's last
/// path segment (`shutdown`, `start`, `config`).
fn sent(sim: &ProxmoxSim) -> Vec<(u32, String)> {
    sim.mutations()
        .iter()
        .filter_map(|m| {
            let rest = m.path.split("/lxc/").nth(1)?;
            let vmid = rest.split('/').next()?.parse().ok()?;
            Some((vmid, rest.rsplit('/').next()?.to_owned()))
        })
        .collect()
}

fn outcomes(report: &PassReport) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let mut applied = BTreeSet::new();
    let mut limited = BTreeSet::new();
    for r in &report.results {
        match r.outcome {
            Outcome::Applied => {
                applied.insert(r.action.vmid);
            }
            Outcome::RateLimited { .. } => {
                limited.insert(r.action.vmid);
            }
            ref other => panic!("{}: {other:?}", r.action.vmid),
        }
    }
    (applied, limited)
}

/// The audit log's `rate_limited` entries, as (op, guest).
fn rate_limited_audits(audit: &AuditLog) -> Vec<(String, String)> {
    audit
        .tail(200)
        .into_iter()
        .filter(|r| r.decision == "rate_limited")
        .map(|r| (r.op, r.guest_id.unwrap_or_default()))
        .collect()
}

fn dir(name: &str) -> PathBuf {
    common::tempdir("blast", name)
}

#[test]
fn a_limit_of_n_stops_exactly_n_and_holds_the_rest_unsent_audited_once() {
    let sim = sim_with(running(100..106));
    let clock = ManualClock::new(Timestamp(T0));
    let d = dir("limit");
    let r = rig(&sim, &d, 3, &clock, stop_all(1, 100..106));

    let report = r.engine.pass().unwrap();
    let (applied, limited) = outcomes(&report);
    assert_eq!(applied, BTreeSet::from([100, 101, 102]));
    assert_eq!(limited, BTreeSet::from([103, 104, 105]));
    assert_eq!(report.rate_limited(), 3);
    for res in &report.results {
        if let Outcome::RateLimited { limit, in_window } = res.outcome {
            assert_eq!((limit, in_window), (3, 3));
        }
    }
    let stops: BTreeSet<u32> = sent(&sim).into_iter().map(|(v, _)| v).collect();
    assert_eq!(
        stops,
        BTreeSet::from([100, 101, 102]),
        "nothing sent for the held"
    );
    for v in 103..106 {
        assert_eq!(sim.guest_status(v).as_deref(), Some("running"));
    }
    let audits = rate_limited_audits(&r.audit);
    assert_eq!(
        audits,
        (103..106)
            .map(|v| ("stop".to_owned(), v.to_string()))
            .collect::<Vec<_>>()
    );

    // The host report carries them in `audit_tail`, within the frozen contract.
    let mut report_doc: serde_json::Value =
        serde_json::from_str(include_str!("../vectors/host-report.golden.json")).unwrap();
    report_doc["audit_tail"] = serde_json::to_value(
        r.audit
            .tail(50)
            .into_iter()
            .map(felhom_agent::app::wire_entry)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let tail = report_doc["audit_tail"].as_array().unwrap();
    assert_eq!(
        tail.iter()
            .filter(|e| e["decision"] == "rate_limited")
            .count(),
        3
    );
    assert_eq!(
        felhom_sim::hub::validate_report(&report_doc),
        Vec::<String>::new()
    );

    // Later passes inside the hour: still held, nothing sent, no new audit entries.
    sim.clear_requests();
    clock.advance(HOUR - 1);
    for _ in 0..2 {
        let again = r.engine.pass().unwrap();
        assert_eq!(outcomes(&again), (BTreeSet::new(), limited.clone()));
    }
    assert!(sent(&sim).is_empty(), "{:?}", sent(&sim));
    assert_eq!(
        rate_limited_audits(&r.audit).len(),
        3,
        "audited once per hold"
    );
}

#[test]
fn an_hour_later_the_held_ones_go_through() {
    let sim = sim_with(running(100..106));
    let clock = ManualClock::new(Timestamp(T0));
    let d = dir("hour");
    let r = rig(&sim, &d, 3, &clock, stop_all(1, 100..106));
    assert_eq!(r.engine.pass().unwrap().rate_limited(), 3);

    sim.clear_requests();
    clock.advance(HOUR);
    let later = r.engine.pass().unwrap();
    assert_eq!(
        outcomes(&later),
        (BTreeSet::from([103, 104, 105]), BTreeSet::new())
    );
    let stops: BTreeSet<u32> = sent(&sim).into_iter().map(|(v, _)| v).collect();
    assert_eq!(stops, BTreeSet::from([103, 104, 105]));
    for v in 100..106 {
        assert_eq!(sim.guest_status(v).as_deref(), Some("stopped"), "{v}");
    }
}

#[test]
fn a_restart_inside_the_window_does_not_reset_it() {
    let sim = sim_with(running(100..106));
    let clock = ManualClock::new(Timestamp(T0));
    let d = dir("restart");
    {
        let r = rig(&sim, &d, 3, &clock, stop_all(1, 100..106));
        assert_eq!(r.engine.pass().unwrap().applied(), 3);
    }
    sim.clear_requests();
    clock.advance(HOUR / 2);
    // A new engine on the same state directory (its journal compacted at start).
    let r = rig(&sim, &d, 3, &clock, stop_all(1, 100..106));
    let report = r.engine.pass().unwrap();
    assert_eq!(
        outcomes(&report),
        (BTreeSet::new(), BTreeSet::from([103, 104, 105]))
    );
    assert!(sent(&sim).is_empty(), "{:?}", sent(&sim));

    clock.advance(HOUR / 2);
    let r = rig(&sim, &d, 3, &clock, stop_all(1, 100..106));
    assert_eq!(r.engine.pass().unwrap().applied(), 3, "the hour is over");
}

#[test]
fn resume_lets_the_held_ones_through_once() {
    let sim = sim_with(running(100..109));
    let clock = ManualClock::new(Timestamp(T0));
    let d = dir("resume");
    let r = rig(&sim, &d, 3, &clock, stop_all(1, 100..106));
    assert_eq!(r.engine.pass().unwrap().rate_limited(), 3);

    let marker = request_resume(&d, Timestamp(T0 + 60)).unwrap();
    assert_eq!(marker, resume_marker_path(&d));
    sim.clear_requests();
    let resumed = r.engine.pass().unwrap();
    assert_eq!(
        outcomes(&resumed),
        (BTreeSet::from([103, 104, 105]), BTreeSet::new())
    );
    assert!(!marker.exists(), "the marker is taken");

    // Once: new stops inside the hour are held again, and a later pass releases nothing.
    r.provider.set(stop_all(2, 100..109));
    sim.clear_requests();
    for _ in 0..2 {
        let after = r.engine.pass().unwrap();
        assert_eq!(
            outcomes(&after),
            (BTreeSet::new(), BTreeSet::from([106, 107, 108]))
        );
    }
    assert!(sent(&sim).is_empty(), "{:?}", sent(&sim));
}

#[test]
fn after_a_restart_a_resume_waits_for_a_pass_that_knows_what_is_held() {
    let sim = sim_with(running(100..106));
    let clock = ManualClock::new(Timestamp(T0));
    let d = dir("resume-restart");
    {
        let r = rig(&sim, &d, 3, &clock, stop_all(1, 100..106));
        assert_eq!(r.engine.pass().unwrap().rate_limited(), 3);
    }
    request_resume(&d, Timestamp(T0 + 60)).unwrap();
    let r = rig(&sim, &d, 3, &clock, stop_all(1, 100..106));
    assert_eq!(
        r.engine.pass().unwrap().rate_limited(),
        3,
        "first pass: held"
    );
    assert!(resume_marker_path(&d).exists(), "not taken yet");
    assert_eq!(
        r.engine.pass().unwrap().applied(),
        3,
        "second pass: released"
    );
    assert!(!resume_marker_path(&d).exists());
}

#[test]
fn starts_and_increases_are_never_limited() {
    let sim = sim_with((100..104).map(|v| {
        GuestSeed::new(v, &format!("g{v}"))
            .running(false)
            .cores(1)
            .memory_mib(512)
    }));
    let clock = ManualClock::new(Timestamp(T0));
    let d = dir("starts");
    let desired = DesiredState::from_guests(
        1,
        (100..104).map(|v| DesiredGuest {
            run: Some(Run::Running),
            spec: Some(Spec {
                cores: Some(2),
                memory_bytes: Some(1 << 30),
                disk_bytes: None,
                rootfs_bytes: None,
            }),
            ..DesiredGuest::new(v)
        }),
    );
    // A limit of 0 holds every disruptive action: none of these is one.
    let r = rig(&sim, &d, 0, &clock, desired);
    let report = r.engine.pass().unwrap();
    assert_eq!(report.applied(), 8, "{report:#?}");
    assert_eq!(report.rate_limited(), 0);
    assert!(rate_limited_audits(&r.audit).is_empty());
    for v in 100..104 {
        assert_eq!(sim.guest_status(v).as_deref(), Some("running"));
    }
}

#[test]
fn a_reduction_of_cores_or_memory_counts_an_increase_does_not() {
    let seed = |v: u32, cores: u32, mib: u64| {
        GuestSeed::new(v, &format!("g{v}"))
            .running(true)
            .cores(cores)
            .memory_mib(mib)
    };
    let sim = sim_with([
        seed(100, 2, 1024), // cores up: not counted
        seed(101, 4, 1024), // cores down: counted (the one the limit allows)
        seed(102, 4, 1024), // memory down: held
        seed(103, 2, 1024), // cores up, memory down: held
        seed(104, 2, 1024), // memory up: not counted
    ]);
    let want = |v: u32, cores: u32, mib: u64| DesiredGuest {
        spec: Some(Spec {
            cores: Some(cores),
            memory_bytes: Some(mib << 20),
            disk_bytes: None,
            rootfs_bytes: None,
        }),
        ..DesiredGuest::new(v)
    };
    let desired = DesiredState::from_guests(
        1,
        [
            want(100, 4, 1024),
            want(101, 2, 1024),
            want(102, 4, 512),
            want(103, 4, 512),
            want(104, 2, 2048),
        ],
    );
    let clock = ManualClock::new(Timestamp(T0));
    let d = dir("cores");
    let r = rig(&sim, &d, 1, &clock, desired);
    let report = r.engine.pass().unwrap();
    assert!(
        report
            .results
            .iter()
            .all(|x| x.action.kind == ActionKind::SetConfig)
    );
    assert_eq!(
        outcomes(&report),
        (BTreeSet::from([100, 101, 104]), BTreeSet::from([102, 103]))
    );
    let configs: BTreeSet<u32> = sent(&sim).into_iter().map(|(v, _)| v).collect();
    assert_eq!(configs, BTreeSet::from([100, 101, 104]));
    assert_eq!(
        rate_limited_audits(&r.audit),
        vec![
            ("set_config".to_owned(), "102".to_owned()),
            ("set_config".to_owned(), "103".to_owned())
        ]
    );
}
