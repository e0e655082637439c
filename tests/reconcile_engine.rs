#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The engine against the Proxmox simulator over loopback TLS: drift fixed, a second
//! pass does nothing, one guest's failure leaves the others converging, every step is
//! journaled, and the run loop wakes on a desired-state change and on shutdown.

mod common;
use common::pinned_client as client;
use common::spec;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use felhom_agent::base::Shutdown;
use felhom_agent::config::{Config, Mode};
use felhom_agent::proxmox::WaitOptions;
use felhom_agent::reconcile::ActionKind;
use felhom_agent::reconcile::Queue;
use felhom_agent::reconcile::{DesiredGuest, DesiredProvider, DesiredState, Run, StaticProvider};
use felhom_agent::reconcile::{Engine, EngineError, EngineOptions, Outcome};
use felhom_agent::reconcile::{Journal, OpState};
use felhom_agent::store::{FaultOp, FaultyIo, Io};
use felhom_sim::{DEFAULT_TOKEN_ID, DEFAULT_TOKEN_SECRET, Fault, FaultKind, GuestSeed, ProxmoxSim};

fn tempdir(name: &str) -> PathBuf {
    common::tempdir("engine", name)
}

struct Rig {
    engine: Arc<Engine>,
    journal_path: PathBuf,
    provider: Arc<StaticProvider>,
    shutdown: Shutdown,
    queue: Queue,
}

fn rig(sim: &ProxmoxSim, name: &str, desired: DesiredState) -> Rig {
    rig_with_io(sim, name, desired, None)
}

fn rig_with_io(
    sim: &ProxmoxSim,
    name: &str,
    desired: DesiredState,
    io: Option<Arc<dyn Io>>,
) -> Rig {
    rig_tuned(sim, name, desired, io, |_| {})
}

/// A rig whose engine options `tune` adjusts after the test defaults.
fn rig_tuned(
    sim: &ProxmoxSim,
    name: &str,
    desired: DesiredState,
    io: Option<Arc<dyn Io>>,
    tune: impl FnOnce(&mut EngineOptions),
) -> Rig {
    let dir = tempdir(name);
    let journal_path = dir.join("journal.log");
    let journal = Arc::new(match io {
        Some(io) => Journal::open_with(&journal_path, io).unwrap(),
        None => Journal::open(&journal_path).unwrap(),
    });
    let gate = common::unsigned_gate(&dir, &journal);
    let shutdown = Shutdown::new();
    let mut opts = common::engine_options();
    opts.check_every = Duration::from_millis(10);
    opts.default_interval = Duration::from_secs(3600);
    tune(&mut opts);
    let (engine, queue, provider) =
        common::engine_rig(sim, gate, journal, desired, shutdown.clone(), opts);
    Rig {
        engine: Arc::new(engine),
        journal_path,
        provider,
        shutdown,
        queue,
    }
}

fn lab_sim(sync_config: bool) -> ProxmoxSim {
    ProxmoxSim::builder()
        .guest(
            GuestSeed::new(100, "web")
                .running(false)
                .cores(2)
                .description("web"),
        )
        .guest(
            GuestSeed::new(101, "db")
                .running(true)
                .cores(1)
                .memory_mib(512),
        )
        .guest(
            GuestSeed::new(102, "cache")
                .running(true)
                .description("cache"),
        )
        .guest(GuestSeed::new(103, "unmanaged").running(true))
        .task_duration(Duration::from_millis(30))
        .sync_config_put(sync_config)
        .start()
}

fn lab_desired() -> DesiredState {
    DesiredState::from_guests(
        7,
        [
            DesiredGuest {
                run: Some(Run::Running),
                description: Some("web".into()),
                ..DesiredGuest::new(100)
            },
            DesiredGuest {
                run: Some(Run::Running),
                // Not MiB-aligned: must still converge in one pass.
                spec: spec(Some(2), Some((1 << 30) + 1)),
                ..DesiredGuest::new(101)
            },
            DesiredGuest {
                // Proxmox hands this back as "cache\n": not drift.
                description: Some("cache".into()),
                ..DesiredGuest::new(102)
            },
            // Desired but absent: provisioning, not planned.
            DesiredGuest {
                run: Some(Run::Running),
                ..DesiredGuest::new(150)
            },
        ],
    )
}

#[test]
fn drift_is_fixed_and_a_second_pass_does_nothing() {
    let sim = lab_sim(true);
    let r = rig(&sim, "drift", lab_desired());
    let report = r.engine.pass().unwrap();
    let done: Vec<_> = report
        .results
        .iter()
        .map(|x| (x.action.vmid, x.action.kind, x.outcome.clone()))
        .collect();
    assert_eq!(
        done,
        vec![
            (100, ActionKind::Start, Outcome::Applied),
            (101, ActionKind::SetConfig, Outcome::Applied),
        ],
        "{report:#?}"
    );
    assert_eq!(report.generation, 7);
    assert_eq!(sim.guest_status(100).as_deref(), Some("running"));
    let cfg = sim.guest_config(101).unwrap();
    assert_eq!(cfg["cores"], serde_json::json!(2));
    assert_eq!(cfg["memory"], serde_json::json!(1025));
    // Nothing was sent for the description round-trip, the unmanaged guest or 150.
    let touched: Vec<String> = sim.mutations().iter().map(|m| m.path.clone()).collect();
    assert_eq!(touched.len(), 2, "{touched:?}");
    assert!(
        touched
            .iter()
            .all(|p| !p.contains("/102/") && !p.contains("/103/"))
    );

    sim.clear_requests();
    let again = r.engine.pass().unwrap();
    assert!(again.plan.is_empty(), "{:?}", again.plan);
    assert!(again.results.is_empty());
    assert!(
        sim.mutations().is_empty(),
        "second pass mutated: {:?}",
        sim.mutations()
    );

    // Each op is journaled started → (task_running) → succeeded; none in flight.
    let view = Journal::open_read_only(&r.journal_path).unwrap();
    assert!(view.in_flight().is_empty());
    let start_op = report.results[0].op_id.clone().unwrap();
    let states: Vec<OpState> = view
        .history()
        .iter()
        .filter(|x| x.op_id == start_op)
        .map(|x| x.state)
        .collect();
    assert_eq!(
        states,
        [OpState::Started, OpState::TaskRunning, OpState::Succeeded]
    );
    let running = view
        .history()
        .iter()
        .find(|x| x.op_id == start_op && x.state == OpState::TaskRunning)
        .unwrap();
    assert!(running.upid.as_deref().unwrap().starts_with("UPID:"));
    // The synchronous config write goes straight from started to succeeded.
    let cfg_op = report.results[1].op_id.clone().unwrap();
    let latest = view.latest(&cfg_op).unwrap();
    assert_eq!(latest.state, OpState::Succeeded);
    assert_eq!(latest.upid, None);
    assert_eq!(latest.params.get("cores").map(String::as_str), Some("2"));
    r.queue.close();
}

#[test]
fn async_config_writes_wait_for_their_task() {
    let sim = lab_sim(false);
    let r = rig(&sim, "async", lab_desired());
    let report = r.engine.pass().unwrap();
    assert_eq!(report.applied(), 2, "{report:#?}");
    let cfg_op = report.results[1].op_id.clone().unwrap();
    let view = Journal::open_read_only(&r.journal_path).unwrap();
    let latest = view.latest(&cfg_op).unwrap();
    assert_eq!(latest.state, OpState::Succeeded);
    assert!(
        latest.upid.is_some(),
        "the config task's UPID was journaled"
    );
    assert_eq!(
        sim.guest_config(101).unwrap()["cores"],
        serde_json::json!(2)
    );
    assert!(r.engine.pass().unwrap().plan.is_empty());
    r.queue.close();
}

#[test]
fn one_guest_failing_does_not_stop_the_others_and_backs_off() {
    let sim = lab_sim(true);
    // Guest 100's start fails inside the task (permission checked at run time).
    sim.deny_at_task_time("/vms/100", "VM.PowerMgmt");
    let r = rig(&sim, "isolate", lab_desired());
    let report = r.engine.pass().unwrap();
    assert_eq!(report.applied(), 1, "{report:#?}");
    assert_eq!(report.failed(), 1);
    let failed = &report.results[0];
    assert_eq!(failed.action.vmid, 100);
    assert!(
        matches!(&failed.outcome, Outcome::Failed { transient: false, error } if error.contains("VM.PowerMgmt")),
        "{failed:?}"
    );
    assert_eq!(
        sim.guest_config(101).unwrap()["cores"],
        serde_json::json!(2)
    );
    assert_eq!(sim.guest_status(100).as_deref(), Some("stopped"));
    let view = Journal::open_read_only(&r.journal_path).unwrap();
    let latest = view.latest(failed.op_id.as_deref().unwrap()).unwrap();
    assert_eq!(latest.state, OpState::Failed);
    assert!(latest.detail.unwrap().contains("VM.PowerMgmt"));

    // The failed guest backs off: the next pass does not send it again.
    assert_eq!(r.engine.backing_off(), vec![(100, 1)]);
    sim.clear_requests();
    let next = r.engine.pass().unwrap();
    assert_eq!(next.deferred(), 1, "{next:#?}");
    assert!(sim.mutations().is_empty(), "{:?}", sim.mutations());
    r.queue.close();
}

#[test]
fn a_transient_answer_is_counted_as_transient() {
    let sim = lab_sim(true);
    sim.inject(Fault::new(
        Some("POST"),
        "/nodes/pve/lxc/100/status/start",
        FaultKind::Status {
            code: 500,
            message: "CT 100 is locked (backup)".into(),
        },
    ));
    let r = rig(&sim, "transient", lab_desired());
    let report = r.engine.pass().unwrap();
    let first = &report.results[0];
    assert!(
        matches!(
            first.outcome,
            Outcome::Failed {
                transient: true,
                ..
            }
        ),
        "{first:?}"
    );
    assert_eq!(report.applied(), 1, "the other guest still converged");
    r.queue.close();
}

#[test]
fn a_later_action_of_a_failed_guest_is_not_sent() {
    let sim = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web").running(false).cores(1))
        .task_duration(Duration::from_millis(30))
        .start();
    sim.deny("/vms/100", "VM.Config.CPU");
    let desired = DesiredState::from_guests(
        1,
        [DesiredGuest {
            run: Some(Run::Running),
            spec: spec(Some(4), None),
            ..DesiredGuest::new(100)
        }],
    );
    let r = rig(&sim, "ordered", desired);
    let report = r.engine.pass().unwrap();
    assert!(matches!(report.results[0].outcome, Outcome::Failed { .. }));
    assert!(
        matches!(report.results[1].outcome, Outcome::Deferred { .. }),
        "{report:#?}"
    );
    assert_eq!(sim.guest_status(100).as_deref(), Some("stopped"));
    r.queue.close();
}

#[test]
fn run_wakes_on_a_desired_change_and_ends_on_shutdown() {
    let sim = lab_sim(true);
    let r = rig(&sim, "run", DesiredState::default());
    let engine = Arc::clone(&r.engine);
    let t = std::thread::spawn(move || engine.run());
    // The interval is an hour: only the change can bring the next pass.
    r.provider.set(desire_run(2, 100, Run::Running));
    let deadline = Instant::now() + Duration::from_secs(30);
    while sim.guest_status(100).as_deref() != Some("running") {
        assert!(
            Instant::now() < deadline,
            "the change never woke the engine"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    r.shutdown.trigger();
    t.join().unwrap().unwrap();
    r.queue.close();
}

/// A plan-mode config for `sim` with `state_dir` and the `reconcile` section.
fn plan_config(sim: &ProxmoxSim, state_dir: &Path, reconcile: serde_json::Value) -> Config {
    Config::from_value(
        &serde_json::json!({
            "host_id": "pve-a",
            "state_dir": state_dir,
            "proxmox": {
                "url": sim.url(), "node": sim.node(),
                "token_id": DEFAULT_TOKEN_ID, "token_secret": DEFAULT_TOKEN_SECRET,
                "tls": {"fingerprint_sha256": sim.fingerprint()}
            },
            "reconcile": reconcile
        }),
        Mode::Plan,
    )
    .unwrap()
}

#[test]
fn plan_report_prints_actions_with_the_gates_word_and_executes_nothing() {
    use felhom_agent::app::plan_report;
    let sim = lab_sim(true);
    let dir = tempdir("plan");
    let desired_file = dir.join("desired.json");
    std::fs::write(
        &desired_file,
        br#"{"generation":7,"guests":[
            {"vmid":100,"run":"running","description":"web"},
            {"vmid":101,"run":"running","spec":{"cores":2,"memory_bytes":1073741825}},
            {"vmid":102,"description":"cache"},
            {"vmid":150,"run":"running"}]}"#,
    )
    .unwrap();
    let state_dir = dir.join("state");
    let cfg = plan_config(
        &sim,
        &state_dir,
        serde_json::json!({"desired_file": desired_file}),
    );
    let mut out = Vec::new();
    let summary = plan_report(&cfg, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(summary.allowed, 2, "{text}");
    assert!(summary.refused.is_empty());
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("desired generation 7"), "{text}");
    assert!(
        lines[1].contains("100")
            && lines[1].contains("start")
            && lines[1].contains("allowed (benign)"),
        "{text}"
    );
    assert!(
        lines[2].contains("set_config") && lines[2].contains("cores=2, memory=1025"),
        "{text}"
    );
    assert!(
        lines[3].contains("150") && lines[3].contains("unprovisionable"),
        "{text}"
    );
    assert!(lines[4].ends_with("nothing was executed"), "{text}");
    assert!(
        !lines.iter().any(|l| l.trim_start().starts_with("102 ")),
        "description round-trip is not drift: {text}"
    );
    assert!(
        sim.mutations().is_empty(),
        "plan mutated: {:?}",
        sim.mutations()
    );
    assert!(!state_dir.exists(), "plan wrote into the state dir");
}

#[test]
fn plan_report_shows_what_the_blast_radius_limit_would_hold() {
    use felhom_agent::app::plan_report;
    let sim = lab_sim(true);
    let dir = tempdir("plan-blast");
    let desired_file = dir.join("desired.json");
    std::fs::write(
        &desired_file,
        br#"{"generation":7,"guests":[
            {"vmid":100,"run":"running"},
            {"vmid":101,"run":"stopped"},
            {"vmid":102,"run":"stopped"}]}"#,
    )
    .unwrap();
    let state_dir = dir.join("state");
    let cfg = plan_config(
        &sim,
        &state_dir,
        serde_json::json!({"desired_file": desired_file, "max_disruptive_per_hour": 1}),
    );
    let mut out = Vec::new();
    let summary = plan_report(&cfg, &mut out).unwrap();
    assert_eq!(summary.allowed, 3);
    assert_eq!(summary.rate_limited, vec![102], "the start is never held");
    assert!(sim.mutations().is_empty());
}

#[test]
fn nothing_is_sent_when_the_started_record_cannot_be_made_durable() {
    // Learn how many syncs opening a fresh journal takes, then fail the next one: the
    // fsync of the first `started` record.
    let probe = Arc::new(FaultyIo::new(FaultOp::Sync, u64::MAX, false));
    let probe_dir = tempdir("probe");
    Journal::open_with(
        &probe_dir.join("journal.log"),
        Arc::clone(&probe) as Arc<dyn Io>,
    )
    .unwrap();
    let opening_syncs = probe.counts().1;

    let sim = lab_sim(true);
    let io = Arc::new(FaultyIo::new(FaultOp::Sync, opening_syncs + 1, true));
    let desired = desire_run(1, 100, Run::Running);
    let r = rig_with_io(&sim, "fsync", desired, Some(io as Arc<dyn Io>));
    let err = r.engine.pass().unwrap_err();
    assert!(matches!(err, EngineError::Journal { .. }), "{err}");
    assert!(
        sim.mutations().is_empty(),
        "dispatched without a durable record: {:?}",
        sim.mutations()
    );
    assert_eq!(sim.guest_status(100).as_deref(), Some("stopped"));
    // The run loop stops on it, so the daemon can exit non-zero.
    assert!(matches!(r.engine.run(), Err(EngineError::Journal { .. })));
    assert!(sim.mutations().is_empty());
    r.queue.close();
}

#[test]
fn reconciler_opens_in_order_and_recovers_before_the_first_pass() {
    use felhom_agent::app::Reconciler;
    use felhom_agent::base::{Clock, SystemClock};
    use felhom_agent::reconcile::JournalRecord;
    use felhom_agent::reconcile::OpClass;
    use std::os::unix::fs::PermissionsExt;

    let sim = lab_sim(true);
    let dir = tempdir("reconciler");
    let state_dir = dir.join("state");
    let desired_file = dir.join("desired.json");
    std::fs::write(
        &desired_file,
        br#"{"generation":3,"guests":[{"vmid":100,"run":"running"}]}"#,
    )
    .unwrap();
    // A previous run started guest 100 and died while its task ran.
    std::fs::create_dir_all(&state_dir).unwrap();
    let c = client(&sim);
    let upid = c.start(100).unwrap();
    {
        let j = Journal::open(&state_dir.join("journal.log")).unwrap();
        let op = j.new_op_id("start-100");
        let started = JournalRecord::started(&op, 100, OpClass::Start, SystemClock.now());
        j.append(&started).unwrap();
        let mut running = started.step(OpState::TaskRunning, SystemClock.now());
        running.upid = Some(upid.to_string());
        j.append(&running).unwrap();
    }
    let cfg = plan_config(
        &sim,
        &state_dir,
        serde_json::json!({"desired_file": desired_file, "max_parallel": 2}),
    );
    let shutdown = Shutdown::new();
    let r = Reconciler::open(&cfg, client(&sim), &shutdown, None).unwrap();
    assert_eq!(r.recovered.succeeded.len(), 1, "{:?}", r.recovered);
    assert!(r.journal.in_flight().is_empty());
    let mode = std::fs::metadata(&state_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert_eq!(r.queue.max_parallel(), 2);

    // The recovered start is not sent again: the guest already runs.
    let before = sim.mutations().len();
    let report = r.engine.pass().unwrap();
    assert!(report.plan.is_empty(), "{:?}", report.plan);
    assert_eq!(sim.mutations().len(), before, "something ran twice");
    r.queue.close();
}

#[test]
fn a_wait_that_ends_early_is_reattached_never_resent() {
    let sim = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web").running(false))
        .task_duration(Duration::from_millis(400))
        .start();
    let desired = desire_run(1, 100, Run::Running);
    let mut r = rig(&sim, "reattach", desired);
    // Rebuild the engine with a wait far shorter than the task.
    let dir = tempdir("reattach-2");
    let journal_path = dir.join("journal.log");
    let journal = Arc::new(Journal::open(&journal_path).unwrap());
    let gate = common::unsigned_gate(&dir, &journal);
    let mut opts = EngineOptions::new("pve-a");
    opts.wait = WaitOptions {
        initial: Duration::from_millis(5),
        cap: Duration::from_millis(10),
        timeout: Duration::from_millis(30),
    };
    r.engine = Arc::new(Engine::new(
        client(&sim),
        r.queue.clone(),
        gate,
        Arc::clone(&journal),
        Arc::clone(&r.provider) as Arc<dyn DesiredProvider>,
        r.shutdown.clone(),
        opts,
    ));
    let first = r.engine.pass().unwrap();
    assert!(
        matches!(first.results[0].outcome, Outcome::Unresolved { .. }),
        "{first:#?}"
    );
    let op = first.results[0].op_id.clone().unwrap();
    assert_eq!(journal.latest(&op).unwrap().state, OpState::TaskRunning);

    // Later passes wait for the same task until it ends; the guest is never started twice.
    let deadline = Instant::now() + Duration::from_secs(30);
    let applied = loop {
        let p = r.engine.pass().unwrap();
        assert!(
            p.results
                .iter()
                .all(|x| matches!(x.outcome, Outcome::Deferred { .. })),
            "{p:#?}"
        );
        if let Some(done) = p.reattached.iter().find(|x| x.outcome == Outcome::Applied) {
            break done.clone();
        }
        assert!(Instant::now() < deadline, "the task never resolved");
    };
    assert_eq!(applied.op_id.as_deref(), Some(op.as_str()));
    assert_eq!(journal.latest(&op).unwrap().state, OpState::Succeeded);
    assert!(journal.in_flight().is_empty());
    let starts = sim
        .mutations()
        .iter()
        .filter(|m| m.path.ends_with("/status/start"))
        .count();
    assert_eq!(starts, 1, "the start was sent again");
    assert!(r.engine.pass().unwrap().plan.is_empty());
    r.queue.close();
}

#[test]
fn a_guest_dropped_from_the_desired_state_is_an_unsigned_destroy_held_pending_signature() {
    let sim = lab_sim(true);
    let r = rig(&sim, "destroy-delta", lab_desired());
    let first = r.engine.pass().unwrap();
    assert!(
        first.destroy_deltas.is_empty(),
        "no earlier state: no delta"
    );

    // Generation 8 drops 101 (exists) and 150 (never existed): a destroy delta for 101.
    let mut dropped = lab_desired();
    dropped.generation = 8;
    dropped.guests.remove(&101);
    dropped.guests.remove(&150);
    r.provider.set(dropped.clone());
    let mutations_before = sim.mutations().len();
    let second = r.engine.pass().unwrap();
    assert_eq!(
        second.destroy_deltas,
        vec![(101, "pending_signature".to_owned())],
        "{second:#?}"
    );
    assert_eq!(
        sim.mutations().len(),
        mutations_before,
        "nothing was sent for the dropped guest: {:?}",
        sim.mutations()
    );
    assert!(sim.guest_ids().contains(&101), "the guest still exists");
    let audit_path = r.journal_path.with_file_name("audit.log");
    let held = || {
        std::fs::read_to_string(&audit_path)
            .unwrap()
            .lines()
            .filter(|l| {
                l.contains(r#""decision":"pending_signature""#)
                    && l.contains("guest_destroy")
                    && l.contains(r#""101""#)
            })
            .count()
    };
    assert_eq!(held(), 1, "the gate's refusal is in the audit log");

    // The same state again: decided once, not re-audited every pass.
    let third = r.engine.pass().unwrap();
    assert!(third.destroy_deltas.is_empty(), "{third:#?}");
    assert_eq!(held(), 1);

    // Desired again, then dropped again: a new delta, gated again.
    r.provider.set(lab_desired());
    r.engine.pass().unwrap();
    r.provider.set(dropped);
    let again = r.engine.pass().unwrap();
    assert_eq!(
        again.destroy_deltas,
        vec![(101, "pending_signature".to_owned())]
    );
    assert_eq!(held(), 2);
    assert!(
        !sim.mutations().iter().any(|m| m.method == "DELETE"),
        "no destroy ever reached Proxmox"
    );
}

#[test]
fn a_pass_reads_guest_configs_in_parallel_under_the_global_bound() {
    const BOUND: usize = 3;
    // The simulator holds each config answer this long: a read is in flight from its
    // arrival until at least HOLD later, and a reader's next read arrives only after
    // that answer. So reads whose hold windows overlap were in flight at once, and
    // one reader's windows never overlap each other. Counted, not timed.
    const HOLD: Duration = Duration::from_millis(250);
    let mut b = ProxmoxSim::builder();
    for vmid in 100..109 {
        b = b.guest(GuestSeed::new(vmid, &format!("ct{vmid}")).cores(2));
    }
    let sim = b.start();
    let prefix = format!("/nodes/{}/lxc/", sim.node());
    sim.inject(Fault::new(Some("GET"), &prefix, FaultKind::Delay(HOLD)).times(usize::MAX));
    let dir = tempdir("parallel-reads");
    let journal = Arc::new(Journal::open(&dir.join("journal.log")).unwrap());
    let gate = common::unsigned_gate(&dir, &journal);
    let desired = DesiredState::from_guests(
        1,
        (100..109).map(|vmid| DesiredGuest {
            spec: spec(Some(2), None),
            ..DesiredGuest::new(vmid)
        }),
    );
    let mut opts = EngineOptions::new("pve-a");
    opts.max_parallel = BOUND;
    let engine = Engine::new(
        client(&sim),
        Queue::new(BOUND),
        gate,
        journal,
        Arc::new(StaticProvider::new(desired)),
        Shutdown::new(),
        opts,
    );
    let report = engine.pass().unwrap();
    assert!(report.plan.actions.is_empty(), "{report:#?}");
    assert!(report.unreadable.is_empty(), "{report:#?}");

    let arrivals: Vec<Instant> = sim
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/config"))
        .map(|r| r.at)
        .collect();
    assert_eq!(arrivals.len(), 9, "one config read per guest");
    let in_flight_at = |t: Instant| {
        arrivals
            .iter()
            .filter(|a| **a <= t && t < **a + HOLD)
            .count()
    };
    let most = arrivals.iter().map(|t| in_flight_at(*t)).max().unwrap();
    assert!(
        most > 1,
        "config reads were sequential (at most {most} at once)"
    );
    assert!(
        most <= BOUND,
        "{most} config reads at once, above the bound {BOUND}"
    );
}

/// Generation `generation` of a desired state that asks only for `vmid` to be in `run`.
fn desire_run(generation: u64, vmid: u32, run: Run) -> DesiredState {
    DesiredState::from_guests(
        generation,
        [DesiredGuest {
            run: Some(run),
            ..DesiredGuest::new(vmid)
        }],
    )
}

/// A simulator with one running guest, 101, that `ignores_shutdown` or not.
fn running_db(ignores_shutdown: bool) -> ProxmoxSim {
    ProxmoxSim::builder()
        .guest(
            GuestSeed::new(101, "db")
                .running(true)
                .ignores_shutdown(ignores_shutdown),
        )
        .task_duration(Duration::from_millis(30))
        .start()
}

fn stopped(vmid: u32) -> DesiredState {
    desire_run(3, vmid, Run::Stopped)
}

/// The recorded `POST …/status/ACTION` requests for `vmid`.
fn power_posts(sim: &ProxmoxSim, vmid: u32, action: &str) -> Vec<felhom_sim::RecordedRequest> {
    let path = format!("/nodes/pve/lxc/{vmid}/status/{action}");
    sim.mutations()
        .into_iter()
        .filter(|m| m.method == "POST" && m.path == path)
        .collect()
}

fn form_value<'a>(r: &'a felhom_sim::RecordedRequest, key: &str) -> Option<&'a str> {
    r.form
        .iter()
        .chain(&r.query)
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[test]
fn run_stopped_shuts_the_guest_down_with_a_timeout_and_force_stop_never_a_hard_stop() {
    let sim = running_db(false);
    let r = rig_tuned(&sim, "shutdown", stopped(101), None, |o| {
        o.shutdown_timeout_seconds = 45;
    });
    let report = r.engine.pass().unwrap();
    assert_eq!(report.applied(), 1, "{report:#?}");
    assert_eq!(report.results[0].action.kind, ActionKind::Stop);
    assert_eq!(sim.guest_status(101).as_deref(), Some("stopped"));
    let sent = power_posts(&sim, 101, "shutdown");
    assert_eq!(sent.len(), 1, "{:?}", sim.mutations());
    assert_eq!(form_value(&sent[0], "timeout"), Some("45"));
    assert_eq!(form_value(&sent[0], "forceStop"), Some("1"));
    assert!(
        sim.mutations()
            .iter()
            .all(|m| !m.path.ends_with("/status/stop")),
        "a hard stop was sent: {:?}",
        sim.mutations()
    );
    // The journal holds what was sent, so Recover looks for a vzshutdown task.
    let op = report.results[0].op_id.clone().unwrap();
    let view = Journal::open_read_only(&r.journal_path).unwrap();
    let rec = view.latest(&op).unwrap();
    assert_eq!(rec.state, OpState::Succeeded);
    assert_eq!(rec.params.get("timeout").map(String::as_str), Some("45"));
    assert_eq!(rec.params.get("forceStop").map(String::as_str), Some("1"));
    assert!(rec.upid.as_deref().unwrap().contains(":vzshutdown:101:"));
    r.queue.close();
}

#[test]
fn a_stop_waits_out_its_shutdown_timeout_while_proxmox_kills_a_guest_that_ignores_it() {
    let sim = running_db(true);
    // A pass wait far shorter than the shutdown timeout: the stop's own wait covers it.
    let r = rig_tuned(&sim, "shutdown-forced", stopped(101), None, |o| {
        o.shutdown_timeout_seconds = 1;
        o.wait.timeout = Duration::from_millis(50);
    });
    let report = r.engine.pass().unwrap();
    assert_eq!(report.results[0].outcome, Outcome::Applied, "{report:#?}");
    assert_eq!(sim.guest_status(101).as_deref(), Some("stopped"));
    assert_eq!(power_posts(&sim, 101, "shutdown").len(), 1);
    assert!(power_posts(&sim, 101, "stop").is_empty());
    assert!(
        r.engine.backing_off().is_empty(),
        "not counted as a failure"
    );
    r.queue.close();
}

#[test]
fn a_shutdown_whose_wait_ends_early_stays_in_flight_and_is_never_sent_again() {
    let sim = running_db(true);
    let r = rig_tuned(&sim, "shutdown-reattach", stopped(101), None, |o| {
        o.shutdown_timeout_seconds = 600;
        o.backoff_initial = Duration::ZERO;
    });
    // The first status poll is refused: the wait ends while the guest still runs.
    sim.inject(Fault::new(
        Some("GET"),
        "/nodes/pve/tasks/",
        FaultKind::Status {
            code: 403,
            message: "Permission check failed (/nodes/pve, Sys.Audit)".into(),
        },
    ));
    let first = r.engine.pass().unwrap();
    assert!(
        matches!(first.results[0].outcome, Outcome::Unresolved { .. }),
        "{first:#?}"
    );
    let op = first.results[0].op_id.clone().unwrap();
    // Proxmox kills the guest at the timeout, ten simulated minutes later.
    sim.advance_clock(Duration::from_secs(601));
    let second = r.engine.pass().unwrap();
    assert!(
        second
            .results
            .iter()
            .all(|x| matches!(x.outcome, Outcome::Deferred { .. })),
        "{second:#?}"
    );
    let reattached: Vec<_> = second
        .reattached
        .iter()
        .map(|x| (x.op_id.clone(), x.outcome.clone()))
        .collect();
    assert_eq!(reattached, vec![(Some(op), Outcome::Applied)]);
    assert_eq!(sim.guest_status(101).as_deref(), Some("stopped"));
    assert_eq!(power_posts(&sim, 101, "shutdown").len(), 1, "sent once");
    assert!(power_posts(&sim, 101, "stop").is_empty());
    assert!(r.engine.pass().unwrap().plan.is_empty());
    r.queue.close();
}
