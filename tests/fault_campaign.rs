#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The network fault campaign: the agent's real loops against both simulators while
//! they misbehave. The reconcile engine (its passes and its run loop) and the hub
//! poller with the live round run in process, their log lines caught by
//! `felhom_agent::base::log::tap()`; one case runs the daemon binary (with the feature
//! `fault-points`).
//!
//! Every fault is checked for the same five things: nothing panics, the loop goes on
//! (the next pass or round happens), a failing guest backs off on its own (others keep
//! converging, and it is not retried before its back-off ends), the log line names the
//! guest or endpoint, the status and Proxmox's message or privilege and holds no
//! secret, and once the fault clears the agent converges.
//!
//! Back-off is measured on a clock the tests step by hand, so retries are asserted by
//! count, never by duration. Each test uses its own node name, vmids and simulator
//! ports, so lines from tests running in parallel are told apart.

#[path = "common/logfmt.rs"]
mod logfmt;
use logfmt::Event;

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use felhom_agent::app::ProxmoxReader;
use felhom_agent::base::Secret;
use felhom_agent::base::Shutdown;
use felhom_agent::base::SystemClock;
use felhom_agent::hub::{CloudflaredProbe, Collector, NoAudit, ReadError};
use felhom_agent::hub::{HubClient, HubClientOptions, HubRound, Poller, Sleeper};
use felhom_agent::net::{Sha256Pin, TlsTrust};
use felhom_agent::proxmox::{Client, ClientOptions, WaitOptions};
use felhom_agent::reconcile::AuditLog;
use felhom_agent::reconcile::Gate;
use felhom_agent::reconcile::Journal;
use felhom_agent::reconcile::Queue;
use felhom_agent::reconcile::{
    DesiredGuest, DesiredProvider, DesiredState, Run, Spec, StaticProvider,
};
use felhom_agent::reconcile::{Engine, EngineError, EngineOptions, Outcome, PassReport};
use felhom_sim::{
    CertChoice, DEFAULT_HUB_KEY, DEFAULT_TOKEN_ID, DEFAULT_TOKEN_SECRET, Fault, FaultKind,
    GuestSeed, HubSim, ProxmoxSim,
};

/// The client's whole-call timeout; slow answers are held well past it.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a slow answer is held.
const SLOW: Duration = Duration::from_secs(5);
/// The Proxmox client's answer cap in these tests.
const MAX_BODY: u64 = 64 * 1024;
/// First back-off of a failed guest, on the stepped clock.
const BACKOFF: Duration = Duration::from_secs(10);
/// The longest back-off, on the stepped clock.
const BACKOFF_CAP: Duration = Duration::from_secs(40);
/// Bound for things that should happen within a few passes or rounds.
const PATIENCE: Duration = Duration::from_secs(30);
/// A hub key the hub does not accept.
const WRONG_HUB_KEY: &str = "hubkey-wrong-5e2d8c71-0a4f-4b3e-9c6d-7f1a2b3c4d5e";

// ---- log lines --------------------------------------------------------------------

/// The process-wide copy of every log line, installed before any test logs.
fn tap() -> &'static Arc<Mutex<Vec<u8>>> {
    static TAP: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    TAP.get_or_init(felhom_agent::base::log::tap)
}

/// Every line logged so far that contains all of `needles`.
fn lines_with(needles: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(&tap().lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// No line logged so far holds a credential, right or wrong.
fn assert_no_secret_logged() {
    for secret in [DEFAULT_TOKEN_SECRET, DEFAULT_HUB_KEY, WRONG_HUB_KEY] {
        let leaked = lines_with(&[secret]);
        assert!(leaked.is_empty(), "a secret was logged: {leaked:#?}");
    }
}

/// Every `name` event logged so far for which `pred` holds.
fn events_where(name: &str, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
    let text = String::from_utf8_lossy(&tap().lock().unwrap()).into_owned();
    logfmt::events(&text, name)
        .into_iter()
        .filter(|e| pred(e))
        .collect()
}

/// Exactly one `name` event for which `pred` holds; returns it.
fn one_event(name: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let found = events_where(name, pred);
    assert_eq!(found.len(), 1, "want one event={name}, got {found:#?}");
    found.into_iter().next().unwrap()
}

/// Whether `e` is about guest `vmid`.
fn about(e: &Event, vmid: u32) -> bool {
    e.is("vmid", &vmid.to_string())
}

/// Whether `e`'s `error` field contains every one of `texts`.
fn error_says(e: &Event, texts: &[&str]) -> bool {
    e.get("error")
        .is_some_and(|err| texts.iter().all(|t| err.contains(t)))
}

// ---- the reconcile rig ------------------------------------------------------------

fn tempdir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "felhom-faults-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    d
}

/// A Proxmox client pinned to `pin`, with the short timeout and body cap.
fn client_pinned(sim: &ProxmoxSim, pin: &str) -> Client {
    let mut o = ClientOptions::new(
        sim.url(),
        sim.node(),
        DEFAULT_TOKEN_ID,
        Secret::new(DEFAULT_TOKEN_SECRET),
        TlsTrust::Pin(Sha256Pin::parse(pin).unwrap()),
    );
    o.timeout = CALL_TIMEOUT;
    o.connect_timeout = CALL_TIMEOUT;
    o.max_body = MAX_BODY;
    Client::new(o).unwrap()
}

fn client(sim: &ProxmoxSim) -> Client {
    client_pinned(sim, &CertChoice::SelfSigned.fingerprint())
}

/// A monotonic clock the test steps by hand.
#[derive(Clone)]
struct Stepped {
    base: Instant,
    offset_ms: Arc<AtomicU64>,
}

impl Stepped {
    fn new() -> Self {
        Stepped {
            base: Instant::now(),
            offset_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn advance(&self, d: Duration) {
        self.offset_ms
            .fetch_add(u64::try_from(d.as_millis()).unwrap(), Ordering::SeqCst);
    }
}

struct Rig {
    engine: Arc<Engine>,
    journal: Arc<Journal>,
    queue: Queue,
    provider: Arc<StaticProvider>,
    shutdown: Shutdown,
    clock: Stepped,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.trigger();
        self.queue.close();
    }
}

/// The engine wired like `Reconciler::open` wires it (journal, audit, gate, queue),
/// with short waits and back-off measured on a stepped clock.
fn rig(client: Client, name: &str, desired: DesiredState, interval: Duration) -> Rig {
    let dir = tempdir(name);
    let journal = Arc::new(Journal::open(&dir.join("journal.log")).unwrap());
    let audit = Arc::new(AuditLog::open(&dir.join("audit.log")).unwrap());
    let gate = Arc::new(Gate::new("pve-a".into(), None, Arc::clone(&journal), audit));
    let provider = Arc::new(StaticProvider::new(desired));
    let shutdown = Shutdown::new();
    let queue = Queue::new(4);
    let mut opts = EngineOptions::new("pve-a");
    opts.wait = WaitOptions {
        initial: Duration::from_millis(5),
        cap: Duration::from_millis(20),
        timeout: Duration::from_secs(10),
    };
    opts.backoff_initial = BACKOFF;
    opts.backoff_cap = BACKOFF_CAP;
    opts.check_every = Duration::from_millis(5);
    opts.default_interval = interval;
    let clock = Stepped::new();
    let c = clock.clone();
    let engine = Engine::new(
        client,
        queue.clone(),
        gate,
        Arc::clone(&journal),
        Arc::clone(&provider) as Arc<dyn DesiredProvider>,
        shutdown.clone(),
        opts,
    )
    .with_backoff_clock(Arc::new(move || {
        c.base + Duration::from_millis(c.offset_ms.load(Ordering::SeqCst))
    }));
    Rig {
        engine: Arc::new(engine),
        journal,
        queue,
        provider,
        shutdown,
        clock,
    }
}

fn running(vmid: u32) -> DesiredGuest {
    DesiredGuest {
        run: Some(Run::Running),
        ..DesiredGuest::new(vmid)
    }
}

fn cores(vmid: u32, n: u32) -> DesiredGuest {
    DesiredGuest {
        spec: Some(Spec {
            cores: Some(n),
            memory_bytes: None,
            disk_bytes: None,
            rootfs_bytes: None,
        }),
        ..DesiredGuest::new(vmid)
    }
}

/// The mutations the simulator saw for one guest (`POST …/status/start`, `PUT …/config`).
fn mutations_of(sim: &ProxmoxSim, vmid: u32) -> usize {
    let mark = format!("/lxc/{vmid}/");
    sim.mutations()
        .iter()
        .filter(|m| m.path.contains(&mark))
        .count()
}

fn outcome_of(report: &PassReport, vmid: u32) -> Outcome {
    report
        .results
        .iter()
        .find(|r| r.action.vmid == vmid)
        .map(|r| r.outcome.clone())
        .unwrap_or_else(|| panic!("no result for {vmid}: {report:#?}"))
}

// ---- Proxmox faults at the mutation -----------------------------------------------

/// One row of the mutation matrix: a guest, how its first mutation goes wrong, whether
/// Proxmox carried it out anyway, and what its log line must say.
struct Row {
    vmid: u32,
    fault: &'static str,
    /// `true` when the effect landed although the agent saw a failure.
    landed: bool,
    /// What the `action_failed` event's error must contain.
    says: Vec<String>,
    /// Fields the event must carry besides `vmid`.
    fields: Vec<(&'static str, &'static str)>,
}

#[test]
fn each_mutation_fault_backs_its_guest_off_alone_and_converges_once_cleared() {
    tap();
    let node = "pve-mut";
    let mut b = ProxmoxSim::builder()
        .node(node)
        .task_duration(Duration::from_millis(20));
    for vmid in 201..=210 {
        b = b.guest(GuestSeed::new(vmid, &format!("ct{vmid}")).cores(1));
    }
    let sim = b.start();
    let start = |vmid: u32| format!("/nodes/{node}/lxc/{vmid}/status/start");
    let fault = |vmid: u32, kind| sim.inject(Fault::new(Some("POST"), &start(vmid), kind));
    let lock_text = "can't lock file '/run/lock/lxc/pve-config-202.lock' - got timeout";

    fault(
        201,
        FaultKind::Status {
            code: 500,
            message: "unable to read /etc/pve/nodes: Transport endpoint is not connected".into(),
        },
    );
    // The config write of 202 meets a config lock held past Proxmox's 10 s wait.
    sim.inject(Fault::new(
        Some("PUT"),
        &format!("/nodes/{node}/lxc/202/config"),
        FaultKind::Status {
            code: 500,
            message: lock_text.into(),
        },
    ));
    sim.deny("/vms/203", "VM.PowerMgmt");
    sim.deny_at_task_time("/vms/204", "VM.PowerMgmt");
    fault(205, FaultKind::Delay(SLOW));
    fault(206, FaultKind::DropConnection);
    fault(207, FaultKind::DropMidBody);
    fault(208, FaultKind::Garbage);
    fault(209, FaultKind::Oversized(4 * MAX_BODY as usize));
    // 210 has no fault: the control that the others do not hold it up.

    let rows = vec![
        Row {
            vmid: 201,
            fault: "500 at the POST",
            landed: false,
            says: vec![
                format!("POST /nodes/{node}/lxc/201/status/start"),
                "HTTP 500".into(),
                "Transport endpoint is not connected".into(),
            ],
            fields: vec![("transient", "true"), ("may_have_run", "false")],
        },
        Row {
            vmid: 202,
            fault: "config lock timeout (500) at the PUT",
            landed: false,
            says: vec![
                format!("PUT /nodes/{node}/lxc/202/config"),
                "HTTP 500".into(),
                lock_text.into(),
            ],
            fields: vec![("transient", "true")],
        },
        Row {
            vmid: 203,
            fault: "403 at the POST",
            landed: false,
            says: vec![
                "HTTP 403".into(),
                "Permission check failed (/vms/203, VM.PowerMgmt)".into(),
            ],
            fields: vec![("transient", "false")],
        },
        Row {
            vmid: 204,
            fault: "403 at task time",
            landed: false,
            says: vec![
                "UPID:".into(),
                "Permission check failed (/vms/204, VM.PowerMgmt)".into(),
            ],
            fields: vec![("transient", "false")],
        },
        Row {
            vmid: 205,
            fault: "answer held past the timeout",
            landed: true,
            says: vec!["timed out waiting for the answer".into()],
            fields: vec![("may_have_run", "true")],
        },
        Row {
            vmid: 206,
            fault: "connection dropped before the answer",
            landed: false,
            says: vec!["connection broken mid-exchange".into()],
            fields: vec![("may_have_run", "true")],
        },
        Row {
            vmid: 207,
            fault: "connection dropped mid-body",
            landed: true,
            says: vec!["connection broken mid-exchange".into()],
            fields: vec![("may_have_run", "true")],
        },
        Row {
            vmid: 208,
            fault: "garbage body",
            landed: false,
            says: vec![
                "unexpected answer".into(),
                "expected JSON".into(),
                "502 Bad Gateway".into(),
            ],
            fields: vec![("may_have_run", "true")],
        },
        Row {
            vmid: 209,
            fault: "oversized body",
            landed: false,
            says: vec![format!("response body exceeds {MAX_BODY} bytes")],
            fields: vec![("may_have_run", "true")],
        },
    ];

    let mut guests: Vec<DesiredGuest> = (201..=210).filter(|v| *v != 202).map(running).collect();
    guests.push(cores(202, 3));
    let r = rig(
        client(&sim),
        "mutations",
        DesiredState::from_guests(1, guests),
        Duration::from_secs(3600),
    );

    // Pass 1: every faulty guest fails on its own; the control guest converges.
    let first = r.engine.pass().unwrap();
    assert_eq!(first.results.len(), 10, "{first:#?}");
    for row in &rows {
        assert!(
            matches!(outcome_of(&first, row.vmid), Outcome::Failed { .. }),
            "{}: {:?}",
            row.fault,
            outcome_of(&first, row.vmid)
        );
        let failed = one_event("action_failed", |e| {
            about(e, row.vmid) && error_says(e, &[node])
        });
        for want in &row.says {
            assert!(
                error_says(&failed, &[want.as_str()]),
                "{}: {want:?} not in {failed:?}",
                row.fault
            );
        }
        for (k, v) in &row.fields {
            assert!(failed.is(k, v), "{}: want {k}={v}: {failed:?}", row.fault);
        }
        one_event("guest_backoff", |e| {
            about(e, row.vmid) && e.is("failures", "1")
        });
    }
    assert_eq!(outcome_of(&first, 210), Outcome::Applied);
    assert_eq!(sim.guest_status(210).as_deref(), Some("running"));
    let mut backing: Vec<u32> = r.engine.backing_off().iter().map(|(v, _)| *v).collect();
    backing.sort_unstable();
    assert_eq!(backing, (201..=209).collect::<Vec<_>>());
    assert!(
        r.journal.in_flight().is_empty(),
        "{:?}",
        r.journal.in_flight()
    );

    // Pass 2, back-off not over: nothing is sent for any failed guest.
    sim.set_running(210, false);
    let before: Vec<usize> = (201..=209).map(|v| mutations_of(&sim, v)).collect();
    let second = r.engine.pass().unwrap();
    for row in &rows {
        if row.landed {
            assert!(
                first.plan.actions.iter().any(|a| a.vmid == row.vmid),
                "{}",
                row.fault
            );
        } else {
            assert!(
                matches!(outcome_of(&second, row.vmid), Outcome::Deferred { .. }),
                "{}: {second:#?}",
                row.fault
            );
        }
    }
    let after: Vec<usize> = (201..=209).map(|v| mutations_of(&sim, v)).collect();
    assert_eq!(before, after, "a guest was retried inside its back-off");
    assert_eq!(
        outcome_of(&second, 210),
        Outcome::Applied,
        "the control guest is not slowed by the others' back-off"
    );

    // The faults clear and the back-off ends: everything converges, and what Proxmox
    // had carried out despite the failure is not sent again.
    sim.allow_all();
    r.clock.advance(BACKOFF);
    let third = r.engine.pass().unwrap();
    assert_eq!(third.failed(), 0, "{third:#?}");
    for row in &rows {
        let want = if row.landed { 1 } else { 2 };
        assert_eq!(
            mutations_of(&sim, row.vmid),
            want,
            "{}: mutations sent",
            row.fault
        );
    }
    for vmid in (201..=210).filter(|v| *v != 202) {
        assert_eq!(sim.guest_status(vmid).as_deref(), Some("running"), "{vmid}");
    }
    assert_eq!(
        sim.guest_config(202).unwrap()["cores"],
        serde_json::json!(3)
    );
    assert!(r.engine.backing_off().is_empty());
    assert!(r.journal.in_flight().is_empty());
    assert!(r.engine.pass().unwrap().plan.is_empty(), "converged");
    assert_no_secret_logged();
}

#[test]
fn a_guest_that_keeps_failing_is_retried_only_when_its_backoff_ends_and_never_slows_another() {
    tap();
    let node = "pve-iso";
    let sim = ProxmoxSim::builder()
        .node(node)
        .guest(GuestSeed::new(301, "stuck"))
        .guest(GuestSeed::new(302, "busy"))
        .task_duration(Duration::from_millis(10))
        .start();
    sim.deny("/vms/301", "VM.PowerMgmt");
    let r = rig(
        client(&sim),
        "isolation",
        DesiredState::from_guests(1, [running(301), running(302)]),
        Duration::from_secs(3600),
    );
    // Stepped time of each pass: back-off 10 s doubling to 40 s from each failure, so
    // 301 is due at 0, 10, 30, 70 and 110.
    let at = [0u64, 5, 10, 20, 29, 30, 50, 70, 100, 110];
    let mut now = 0;
    let mut sent_301 = Vec::new();
    for t in at {
        r.clock.advance(Duration::from_secs(t - now));
        now = t;
        // 302 drifts before every pass: it must be put right every time.
        sim.set_running(302, false);
        let before = (mutations_of(&sim, 301), mutations_of(&sim, 302));
        let report = r.engine.pass().unwrap();
        sent_301.push(mutations_of(&sim, 301) - before.0);
        assert_eq!(mutations_of(&sim, 302) - before.1, 1, "302 at {t}s");
        assert_eq!(outcome_of(&report, 302), Outcome::Applied, "302 at {t}s");
    }
    assert_eq!(
        sent_301,
        [1, 0, 1, 0, 0, 1, 0, 1, 0, 1],
        "301 is sent only when its back-off has ended"
    );
    assert_eq!(r.engine.backing_off(), vec![(301, 5)]);
    let backoffs = events_where("guest_backoff", |e| about(e, 301));
    let seconds: Vec<&str> = backoffs.iter().map(|e| e.field("seconds")).collect();
    assert_eq!(seconds, ["10", "20", "40", "40", "40"], "{backoffs:#?}");
    assert!(events_where("guest_backoff", |e| about(e, 302)).is_empty());

    sim.allow_all();
    r.clock.advance(BACKOFF_CAP);
    let report = r.engine.pass().unwrap();
    assert_eq!(outcome_of(&report, 301), Outcome::Applied);
    assert!(r.engine.backing_off().is_empty());
    assert_eq!(sim.guest_status(301).as_deref(), Some("running"));
    assert_no_secret_logged();
}

// ---- Proxmox faults at the reads --------------------------------------------------

#[test]
fn task_status_faults_never_resend_and_a_failed_task_converges_after_backoff() {
    tap();
    let node = "pve-task";
    let sim = ProxmoxSim::builder()
        .node(node)
        .guest(GuestSeed::new(401, "a"))
        .guest(GuestSeed::new(402, "b"))
        .guest(GuestSeed::new(403, "c"))
        .task_duration(Duration::from_millis(20))
        .start();
    let tasks = format!("/nodes/{node}/tasks/");
    let r = rig(
        client(&sim),
        "tasks",
        DesiredState::from_guests(1, [running(401)]),
        Duration::from_secs(3600),
    );

    // A broken and a cut-off status read are retried within the wait.
    sim.inject(Fault::new(Some("GET"), &tasks, FaultKind::DropConnection));
    sim.inject(Fault::new(Some("GET"), &tasks, FaultKind::DropMidBody));
    let report = r.engine.pass().unwrap();
    assert_eq!(outcome_of(&report, 401), Outcome::Applied, "{report:#?}");
    assert_eq!(mutations_of(&sim, 401), 1);

    // A status answer that is not JSON ends the wait: the op stays in flight, the
    // next pass waits for the same task, and the start is never sent again.
    r.provider
        .set(DesiredState::from_guests(2, [running(401), running(402)]));
    sim.inject(Fault::new(Some("GET"), &tasks, FaultKind::Garbage));
    let report = r.engine.pass().unwrap();
    let Outcome::Unresolved { upid, why } = outcome_of(&report, 402) else {
        panic!("{report:#?}")
    };
    assert!(why.contains("expected JSON"), "{why}");
    one_event("action_wait_abandoned", |e| {
        about(e, 402) && e.is("upid", &upid) && error_says(e, &["expected JSON"])
    });
    assert_eq!(r.journal.in_flight().len(), 1);
    let report = r.engine.pass().unwrap();
    assert_eq!(report.reattached.len(), 1, "{report:#?}");
    assert_eq!(report.reattached[0].outcome, Outcome::Applied);
    assert!(r.journal.in_flight().is_empty());
    assert_eq!(mutations_of(&sim, 402), 1, "the start was sent again");
    assert_eq!(sim.guest_status(402).as_deref(), Some("running"));

    // A task that fails on a backup's lock is transient: logged with its exit status,
    // retried once the back-off ends, then applied.
    r.provider.set(DesiredState::from_guests(
        3,
        [running(401), running(402), running(403)],
    ));
    sim.fail_next_task("CT is locked (backup)");
    let report = r.engine.pass().unwrap();
    assert!(
        matches!(
            outcome_of(&report, 403),
            Outcome::Failed {
                transient: true,
                ..
            }
        ),
        "{report:#?}"
    );
    let failed = one_event("action_failed", |e| about(e, 403));
    assert!(
        error_says(&failed, &["CT is locked (backup)"]) && failed.is("transient", "true"),
        "{failed:?}"
    );
    assert!(matches!(
        outcome_of(&r.engine.pass().unwrap(), 403),
        Outcome::Deferred { .. }
    ));
    r.clock.advance(BACKOFF);
    assert_eq!(outcome_of(&r.engine.pass().unwrap(), 403), Outcome::Applied);
    assert_eq!(mutations_of(&sim, 403), 2);
    assert_no_secret_logged();
}

#[test]
fn a_locked_guest_or_an_unreadable_config_is_left_alone_logged_and_picked_up_later() {
    tap();
    let node = "pve-skip";
    let sim = ProxmoxSim::builder()
        .node(node)
        .guest(GuestSeed::new(501, "locked"))
        .guest(GuestSeed::new(502, "unreadable").cores(1))
        .task_duration(Duration::from_millis(10))
        .start();
    sim.set_lock(501, Some("backup"));
    sim.inject(Fault::new(
        Some("GET"),
        &format!("/nodes/{node}/lxc/502/config"),
        FaultKind::Status {
            code: 500,
            message: "can't lock file '/run/lock/lxc/pve-config-502.lock' - got timeout".into(),
        },
    ));
    let r = rig(
        client(&sim),
        "skips",
        DesiredState::from_guests(1, [running(501), cores(502, 2)]),
        Duration::from_secs(3600),
    );
    let report = r.engine.pass().unwrap();
    assert!(report.plan.is_empty(), "{report:#?}");
    assert_eq!(report.unreadable, vec![502]);
    assert!(sim.mutations().is_empty());
    one_event("guest_left_alone", |e| {
        about(e, 501) && e.get("why").is_some_and(|w| w.contains("locked (backup)"))
    });
    let unreadable = one_event("reconcile_guest_config_unreadable", |e| about(e, 502));
    assert!(
        error_says(
            &unreadable,
            &["HTTP 500", "pve-config-502.lock' - got timeout"]
        ),
        "{unreadable:?}"
    );
    assert!(
        r.engine.backing_off().is_empty(),
        "nothing failed: no back-off"
    );

    // The next pass reads the config again and converges it; the lock's skip is not
    // logged again while it lasts.
    let report = r.engine.pass().unwrap();
    assert_eq!(outcome_of(&report, 502), Outcome::Applied, "{report:#?}");
    assert_eq!(
        sim.guest_config(502).unwrap()["cores"],
        serde_json::json!(2)
    );
    one_event("guest_left_alone", |e| about(e, 501));

    sim.set_lock(501, None);
    let report = r.engine.pass().unwrap();
    assert_eq!(outcome_of(&report, 501), Outcome::Applied, "{report:#?}");
    assert_eq!(sim.guest_status(501).as_deref(), Some("running"));
    assert!(r.engine.pass().unwrap().plan.is_empty(), "converged");
}

#[test]
fn the_run_loop_outlives_failed_passes_and_a_changed_certificate_then_converges() {
    tap();
    let node = "pve-loop";
    let sim = ProxmoxSim::builder()
        .node(node)
        .guest(GuestSeed::new(601, "web"))
        .task_duration(Duration::from_millis(10))
        .start();
    let list = format!("/nodes/{node}/lxc");
    // The host's certificate changed under the pin before the agent's first call.
    sim.set_cert(CertChoice::Other);
    let r = rig(
        client(&sim),
        "loop",
        DesiredState::from_guests(1, [running(601)]),
        Duration::from_millis(10),
    );
    let engine = Arc::clone(&r.engine);
    let worker = std::thread::spawn(move || engine.run());

    let pinned = CertChoice::SelfSigned.fingerprint();
    let presented = CertChoice::Other.fingerprint();
    let deadline = Instant::now() + PATIENCE;
    let pin_line = loop {
        let found = events_where("reconcile_pass_failed", |e| {
            error_says(e, &[&list, "certificate pin mismatch"])
        });
        if let Some(e) = found.into_iter().next() {
            break e;
        }
        assert!(!worker.is_finished(), "the run loop ended");
        assert!(Instant::now() < deadline, "no pin mismatch logged");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        error_says(&pin_line, &[&pinned, &presented]),
        "the line names both fingerprints: {pin_line:?}"
    );
    assert!(
        sim.requests().is_empty(),
        "nothing was sent over the wrong TLS"
    );

    // The certificate is put back; the guest list then fails in every other way once.
    let faults = [
        FaultKind::Status {
            code: 500,
            message: "cluster not ready - no quorum?".into(),
        },
        FaultKind::DropConnection,
        FaultKind::DropMidBody,
        FaultKind::Garbage,
        FaultKind::Oversized(4 * MAX_BODY as usize),
        FaultKind::Delay(SLOW),
    ];
    for kind in faults.clone() {
        sim.inject(Fault::new(Some("GET"), &list, kind));
    }
    sim.set_cert(CertChoice::SelfSigned);
    let deadline = Instant::now() + PATIENCE;
    while sim.guest_status(601).as_deref() != Some("running") {
        assert!(!worker.is_finished(), "the run loop ended");
        assert!(Instant::now() < deadline, "never converged");
        std::thread::sleep(Duration::from_millis(5));
    }
    let lists = sim
        .requests()
        .iter()
        .filter(|q| q.method == "GET" && q.path == list)
        .count();
    assert!(
        lists > faults.len(),
        "each failed pass was followed by another"
    );
    for want in [
        "HTTP 500: cluster not ready - no quorum?",
        "connection broken mid-exchange",
        "expected JSON",
        &format!("response body exceeds {MAX_BODY} bytes"),
        "timed out waiting for the answer",
    ] {
        assert!(
            !events_where("reconcile_pass_failed", |e| error_says(e, &[&list, want])).is_empty(),
            "no line for {want:?}"
        );
    }
    assert_eq!(mutations_of(&sim, 601), 1);
    r.shutdown.trigger();
    assert!(worker.join().unwrap().is_ok(), "the loop ends cleanly");
    assert_no_secret_logged();
}

#[test]
fn a_pass_that_cannot_list_guests_is_an_error_naming_the_endpoint_not_a_panic() {
    tap();
    let sim = ProxmoxSim::builder()
        .node("pve-list")
        .guest(GuestSeed::new(701, "web"))
        .start();
    let r = rig(
        client(&sim),
        "list",
        DesiredState::from_guests(1, [running(701)]),
        Duration::from_secs(3600),
    );
    sim.inject(Fault::new(
        Some("GET"),
        "/nodes/pve-list/lxc",
        FaultKind::Garbage,
    ));
    let e = r.engine.pass().unwrap_err();
    assert!(matches!(e, EngineError::ListGuests(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("GET /nodes/pve-list/lxc") && text.contains("expected JSON"),
        "{text}"
    );
    assert_eq!(r.engine.pass().unwrap().applied(), 1);
}

// ---- hub faults -------------------------------------------------------------------

/// `systemctl` is not asked in process: cloudflared reads as active.
struct ActiveProbe;

impl CloudflaredProbe for ActiveProbe {
    fn is_active(&self) -> Result<String, ReadError> {
        Ok("active".into())
    }
}

type LiveRound = HubRound<ProxmoxReader, ActiveProbe>;

fn hub_round(pve: Client, hub: &HubSim, key: &str) -> LiveRound {
    let ca = format!("{}/vectors/tls/ca.crt", env!("CARGO_MANIFEST_DIR"));
    let client = HubClient::new(HubClientOptions {
        url: hub.url(),
        api_key: Secret::new(key),
        trust: TlsTrust::CaFile(ca.into()),
        timeout: CALL_TIMEOUT,
    })
    .unwrap();
    let collector = Collector::new(
        "pve-a",
        "test",
        ProxmoxReader(pve),
        ActiveProbe,
        Arc::new(NoAudit),
        Arc::new(SystemClock),
    );
    HubRound::new(collector, client)
}

/// A sleeper that does not sleep: it records each wait the poller asks for, runs the
/// test's hook after round `n` (the wait's index), and stops the loop after `limit`.
struct Scripted<F: FnMut(usize)> {
    waits: Rc<RefCell<Vec<Duration>>>,
    hook: RefCell<F>,
    limit: usize,
}

impl<F: FnMut(usize)> Sleeper for Scripted<F> {
    fn sleep(&self, d: Duration) -> bool {
        let n = {
            let mut w = self.waits.borrow_mut();
            w.push(d);
            w.len()
        };
        (self.hook.borrow_mut())(n);
        n >= self.limit
    }

    fn stopped(&self) -> bool {
        false
    }
}

#[test]
fn hub_faults_are_logged_with_the_endpoint_backed_off_and_the_next_round_reports() {
    tap();
    let pve = ProxmoxSim::builder()
        .node("pve-hub")
        .guest(GuestSeed::new(801, "web").running(true))
        .start();
    let hub = HubSim::start();
    let endpoint = format!("{}/api/v1/host-report", hub.url());
    let report_path = "/api/v1/host-report";
    let faults = [
        (
            FaultKind::Status {
                code: 500,
                message: "Internal Server Error".into(),
            },
            vec!["HTTP 500 Internal Server Error"],
        ),
        (
            FaultKind::Status {
                code: 401,
                message: "Unauthorized".into(),
            },
            vec!["HTTP 401 Unauthorized", "hub.api_key"],
        ),
        (FaultKind::Garbage, vec!["control envelope is not JSON"]),
        (
            FaultKind::Oversized(2 << 20),
            vec!["response body exceeds 1048576 bytes"],
        ),
        (
            FaultKind::DropConnection,
            vec!["connection broken mid-exchange"],
        ),
        (
            FaultKind::DropMidBody,
            vec!["connection broken mid-exchange"],
        ),
        (
            FaultKind::Delay(SLOW),
            vec!["timed out waiting for the answer"],
        ),
    ];
    for (kind, _) in &faults {
        hub.inject(Fault::new(None, report_path, kind.clone()));
    }
    // Round 1 also meets Proxmox behind a changed certificate: nothing is sent.
    pve.set_cert(CertChoice::Other);
    let round = hub_round(client(&pve), &hub, DEFAULT_HUB_KEY);
    let restore = {
        let pve_ref = &pve;
        move |n: usize| {
            if n == 1 {
                pve_ref.set_cert(CertChoice::SelfSigned);
            }
        }
    };
    let rounds = 1 + faults.len() + 1;
    let waits = Rc::new(RefCell::new(Vec::new()));
    let sleeper = Scripted {
        waits: Rc::clone(&waits),
        hook: RefCell::new(restore),
        limit: rounds,
    };
    let mut poller = Poller::new(round, sleeper, 60).with_jitter(Box::new(|| 0.0));
    poller.run();
    let envelope = poller.envelope();
    drop(poller);

    // Every round ran; the last one was accepted and reset the back-off.
    let requests = hub.requests();
    assert_eq!(requests.len(), faults.len() + 1, "{requests:#?}");
    assert_eq!(requests.last().unwrap().status, 200);
    assert!(envelope.get().is_some(), "the envelope was published");

    let failed = events_where("report_failed", |e| error_says(e, &[&endpoint]));
    let pin = one_event("report_failed", |e| {
        error_says(e, &["certificate pin mismatch", "pve-hub/status"])
    });
    assert!(pin.is("consecutive_failures", "1"), "{pin:?}");
    for (i, (_, says)) in faults.iter().enumerate() {
        let nth = (i + 2).to_string();
        let event = failed
            .iter()
            .find(|e| e.is("consecutive_failures", &nth))
            .unwrap_or_else(|| panic!("no failure {nth} naming {endpoint}: {failed:#?}"));
        assert!(error_says(event, says), "{says:?} not in {event:?}");
    }
    one_event("report_recovered", |e| e.is("failed_rounds", "8"));
    assert_no_secret_logged();
}

#[test]
fn a_wrong_hub_key_is_a_401_that_names_the_endpoint_and_never_the_key() {
    tap();
    let pve = ProxmoxSim::builder()
        .node("pve-key")
        .guest(GuestSeed::new(901, "web").running(true))
        .start();
    let hub = HubSim::start();
    let endpoint = format!("{}/api/v1/host-report", hub.url());
    let round = hub_round(client(&pve), &hub, WRONG_HUB_KEY);
    let waits = Rc::new(RefCell::new(Vec::new()));
    let sleeper = Scripted {
        waits: Rc::clone(&waits),
        hook: RefCell::new(|_| {}),
        limit: 4,
    };
    let mut poller = Poller::new(round, sleeper, 60).with_jitter(Box::new(|| 0.0));
    poller.run();
    assert_eq!(poller.consecutive_failures(), 4);
    let waits: Vec<u64> = waits.borrow().iter().map(Duration::as_secs).collect();
    assert_eq!(waits, [60, 120, 240, 480], "a refused key is not hammered");
    assert!(hub.reports().is_empty());
    assert!(hub.requests().iter().all(|q| q.status == 401));
    let failed = events_where("report_failed", |e| error_says(e, &[&endpoint]));
    assert_eq!(failed.len(), 4, "{failed:#?}");
    for e in &failed {
        assert!(
            error_says(e, &["HTTP 401", "hub.api_key"]),
            "the line tells the operator which setting to check: {e:?}"
        );
    }
    assert_no_secret_logged();
}

#[test]
fn the_hub_back_off_grows_per_failed_round_and_resets_on_success() {
    tap();
    let pve = ProxmoxSim::builder()
        .node("pve-back")
        .guest(GuestSeed::new(950, "web").running(true))
        .start();
    let hub = HubSim::start();
    hub.inject(
        Fault::new(
            None,
            "/api/v1/host-report",
            FaultKind::Status {
                code: 503,
                message: "Service Unavailable".into(),
            },
        )
        .times(6),
    );
    let round = hub_round(client(&pve), &hub, DEFAULT_HUB_KEY);
    let waits = Rc::new(RefCell::new(Vec::new()));
    let sleeper = Scripted {
        waits: Rc::clone(&waits),
        hook: RefCell::new(|_| {}),
        limit: 8,
    };
    let mut poller = Poller::new(round, sleeper, 60).with_jitter(Box::new(|| 0.0));
    poller.run();
    assert_eq!(poller.consecutive_failures(), 0);
    // Seconds of the schedule: the interval doubles per failed round up to the cap,
    // and the first accepted report brings it back.
    let waits: Vec<u64> = waits.borrow().iter().map(Duration::as_secs).collect();
    assert_eq!(waits, [60, 120, 240, 480, 900, 900, 300, 300]);
    assert_eq!(hub.reports().len(), 2);
}

#[test]
fn a_shutdown_mid_wait_leaves_the_op_in_flight_and_backs_nothing_off() {
    tap();
    let sim = ProxmoxSim::builder()
        .node("pve-stop")
        .guest(GuestSeed::new(960, "slow"))
        // Far longer than the test: the wait is still polling when the shutdown comes.
        .task_duration(Duration::from_secs(600))
        .start();
    let r = rig(
        client(&sim),
        "shutdown",
        DesiredState::from_guests(1, [running(960)]),
        Duration::from_secs(3600),
    );
    let engine = Arc::clone(&r.engine);
    let worker = std::thread::spawn(move || engine.run());
    let deadline = Instant::now() + PATIENCE;
    while r.journal.in_flight().iter().all(|op| op.upid.is_none()) {
        assert!(Instant::now() < deadline, "the start was never journaled");
        std::thread::sleep(Duration::from_millis(5));
    }
    r.shutdown.trigger();
    assert!(worker.join().unwrap().is_ok());
    assert_eq!(r.journal.in_flight().len(), 1, "left for Recover");
    assert!(r.engine.backing_off().is_empty());
    assert!(events_where("guest_backoff", |e| about(e, 960)).is_empty());
    one_event("action_wait_abandoned", |e| {
        about(e, 960) && error_says(e, &["shutting down"])
    });
}

// ---- the daemon process -----------------------------------------------------------
// It waits for several hub rounds, 60 schedule seconds apart: only a binary with the
// test-only feature `fault-points` shortens them (`FELHOM_FAULT_SECOND_MS`).

/// The daemon binary, killed if the test ends without stopping it.
#[cfg(feature = "fault-points")]
struct Daemon {
    child: std::process::Child,
    dir: PathBuf,
}

#[cfg(feature = "fault-points")]
impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(feature = "fault-points")]
impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Polls `check` until it holds; fails with the log if the daemon exits or
    /// `PATIENCE` runs out.
    fn wait_until(&mut self, what: &str, mut check: impl FnMut(&str) -> bool) {
        let start = Instant::now();
        loop {
            let log = self.log();
            if check(&log) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the daemon exited ({status}) waiting for {what}:\n{log}");
            }
            assert!(start.elapsed() < PATIENCE, "waited for {what}:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(feature = "fault-points")]
#[test]
fn the_daemon_rides_out_a_changed_certificate_and_hub_faults_then_converges() {
    use felhom_agent::store::SECOND_MS_ENV;
    use serde_json::json;

    // The host's certificate is not the pinned one when the daemon starts.
    let pve = ProxmoxSim::builder()
        .node("pve-e2e")
        .guest(GuestSeed::new(100, "web"))
        .task_duration(Duration::from_millis(20))
        .cert(CertChoice::Other)
        .start();
    let hub = HubSim::builder()
        .default_envelope(json!({"poll_interval_seconds": 60, "blocked": false,
            "desired_generation": 0, "has_signed_ops": false}))
        .start();
    let report_path = "/api/v1/host-report";
    hub.inject(Fault::new(
        None,
        report_path,
        FaultKind::Status {
            code: 401,
            message: "Unauthorized".into(),
        },
    ));
    hub.inject(Fault::new(None, report_path, FaultKind::Garbage));
    // Accepted reports announce new desired state: the engine wakes for it (enough
    // envelopes for every round the test can see).
    for _ in 0..1000 {
        hub.script_envelope(json!({"poll_interval_seconds": 60, "blocked": false,
            "desired_generation": 1, "has_signed_ops": false}));
    }

    let dir = tempdir("daemon");
    let desired = dir.join("desired.json");
    std::fs::write(
        &desired,
        json!({"generation": 1, "guests": [{"vmid": 100, "run": "running"}]}).to_string(),
    )
    .unwrap();
    let config = dir.join("agent.json");
    let cfg = json!({
        "host_id": "pve-a",
        "state_dir": dir.join("state"),
        "log": {"level": "info"},
        "proxmox": {
            "url": pve.url(), "node": pve.node(),
            "token_id": DEFAULT_TOKEN_ID, "token_secret": DEFAULT_TOKEN_SECRET,
            "tls": {"fingerprint_sha256": CertChoice::SelfSigned.fingerprint()},
            "timeout_seconds": 5
        },
        "hub": {
            "url": hub.url(), "api_key": hub.key(), "poll_seconds": 60,
            "timeout_seconds": 2,
            "tls": {"ca_file": format!("{}/vectors/tls/ca.crt", env!("CARGO_MANIFEST_DIR"))}
        },
        "reconcile": {"desired_file": desired}
    });
    std::fs::write(&config, cfg.to_string()).unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_felhom-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .env(SECOND_MS_ENV, "5")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut daemon = Daemon { child, dir };

    // Both loops name the pin mismatch, and nothing is sent over the wrong TLS.
    let pin_mismatch = |log: &str, event: &str| {
        logfmt::events(log, event)
            .iter()
            .any(|e| error_says(e, &["certificate pin mismatch"]))
    };
    daemon.wait_until("both loops to log the pin mismatch", |log| {
        pin_mismatch(log, "reconcile_pass_failed") && pin_mismatch(log, "report_failed")
    });
    assert!(pve.requests().is_empty());
    assert!(
        hub.requests().iter().all(|q| q.path != report_path),
        "no report without the node status"
    );

    // The certificate is put back: the hub's 401 and garbage are ridden out, the
    // report goes through, and the announced generation brings the guest up.
    pve.set_cert(CertChoice::SelfSigned);
    daemon.wait_until("guest 100 running", |_| {
        pve.guest_status(100).as_deref() == Some("running")
    });
    daemon.wait_until("a report accepted after the faults", |_| {
        !hub.reports().is_empty()
    });
    let log = daemon.log();
    let endpoint = format!("{}{report_path}", hub.url());
    let failed = logfmt::events(&log, "report_failed");
    assert!(
        failed
            .iter()
            .any(|e| error_says(e, &[&endpoint, "HTTP 401", "hub.api_key"])),
        "{log}"
    );
    assert!(
        failed
            .iter()
            .any(|e| error_says(e, &[&endpoint, "control envelope is not JSON"])),
        "{log}"
    );
    assert!(
        !logfmt::events(&log, "report_recovered").is_empty(),
        "{log}"
    );
    for secret in [DEFAULT_TOKEN_SECRET, DEFAULT_HUB_KEY] {
        assert!(!log.contains(secret), "a secret was logged:\n{log}");
    }
    let starts = pve
        .mutations()
        .iter()
        .filter(|m| m.path.ends_with("/100/status/start"))
        .count();
    assert_eq!(starts, 1);

    let ok = std::process::Command::new("kill")
        .args(["-TERM", &daemon.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = daemon.child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < PATIENCE, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
}
