//! Recover against the Proxmox simulator: every in-flight op the journal left behind is
//! resolved from Proxmox's own task records, and nothing is dispatched again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::pinned_client as client;

use std::path::PathBuf;
use std::time::Duration;

use felhom_agent::base::Shutdown;
use felhom_agent::base::{Clock, SystemClock};
use felhom_agent::proxmox::{Client, ConfigChange, Upid, WaitOptions};
use felhom_agent::reconcile::OpClass;
use felhom_agent::reconcile::{Journal, JournalRecord, OpState};
use felhom_sim::{GuestSeed, ProxmoxSim};

fn wait() -> WaitOptions {
    WaitOptions {
        initial: Duration::from_millis(10),
        cap: Duration::from_millis(50),
        timeout: Duration::from_secs(20),
    }
}

struct Setup {
    sim: ProxmoxSim,
    client: Client,
    journal: Journal,
    path: PathBuf,
}

fn setup(name: &str) -> Setup {
    let sim = ProxmoxSim::builder()
        .guest(GuestSeed::new(105, "db").running(false))
        .guest(GuestSeed::new(106, "web").running(true))
        .task_duration(Duration::from_millis(10))
        .start();
    let path = common::fresh_path("recover", name).join("journal.log");
    Setup {
        client: client(&sim),
        sim,
        journal: Journal::open(&path).unwrap(),
        path,
    }
}

impl Setup {
    /// Reopens the journal as a restarted agent would, and recovers.
    fn restart_and_recover(&mut self) -> felhom_agent::reconcile::RecoverReport {
        self.journal = Journal::open(&self.path).unwrap();
        let r = common::recover_sending_nothing(
            &self.journal,
            &self.sim,
            &self.client,
            &wait(),
            "recover dispatches nothing",
        );
        drop(Journal::open(&self.path).unwrap());
        assert!(Journal::open(&self.path).unwrap().in_flight().is_empty());
        r
    }
}

fn started(j: &Journal, class: OpClass, vmid: u32) -> JournalRecord {
    let r = JournalRecord::started(
        j.new_op_id(&format!("{class}-{vmid}")),
        vmid,
        class,
        SystemClock.now(),
    );
    j.append(&r).unwrap();
    r
}

#[test]
fn a_task_left_running_is_waited_for() {
    let mut s = setup("running");
    s.sim.set_task_duration(Duration::from_millis(400));
    let r = started(&s.journal, OpClass::Start, 105);
    let upid = s.client.start(105).unwrap();
    let mut running = r.step(OpState::TaskRunning, SystemClock.now());
    running.upid = Some(upid.as_str().into());
    s.journal.append(&running).unwrap();
    // The agent dies here, the task still running.
    let report = s.restart_and_recover();
    assert_eq!(report.succeeded, vec![r.op_id.clone()]);
    assert_eq!(s.sim.guest_status(105).as_deref(), Some("running"));
    assert_eq!(
        s.journal.latest(&r.op_id).unwrap().state,
        OpState::Succeeded
    );
}

#[test]
fn a_finished_task_is_judged_by_its_exit_status() {
    let mut s = setup("finished");
    let ok = started(&s.journal, OpClass::Stop, 106);
    let u = s.client.stop(106).unwrap();
    let mut rec = ok.step(OpState::TaskRunning, SystemClock.now());
    rec.upid = Some(u.as_str().into());
    s.journal.append(&rec).unwrap();
    s.client.wait_task(&u, &wait(), &Shutdown::new()).unwrap();

    s.sim.fail_next_task("startup for container '105' failed");
    let bad = started(&s.journal, OpClass::Start, 105);
    let u = s.client.start(105).unwrap();
    let mut rec = bad.step(OpState::TaskRunning, SystemClock.now());
    rec.upid = Some(u.as_str().into());
    s.journal.append(&rec).unwrap();

    let report = s.restart_and_recover();
    assert_eq!(report.succeeded, vec![ok.op_id.clone()]);
    assert_eq!(report.failed, vec![bad.op_id.clone()]);
    let b = s.journal.latest(&bad.op_id).unwrap();
    assert_eq!(b.state, OpState::Failed);
    assert!(b.detail.unwrap().contains("failed"));
}

#[test]
fn no_upid_but_the_task_exists_is_found_in_the_task_list() {
    let mut s = setup("found");
    // A start of another guest must not be taken for this op.
    let other = s.client.stop(106).unwrap();
    let r = started(&s.journal, OpClass::Start, 105);
    // Dispatched, then the agent died before journaling the UPID.
    let upid = s.client.start(105).unwrap();
    let report = s.restart_and_recover();
    assert_eq!(report.succeeded, vec![r.op_id.clone()]);
    let last = s.journal.latest(&r.op_id).unwrap();
    assert_eq!(last.upid.as_deref(), Some(upid.as_str()));
    assert_ne!(last.upid.as_deref(), Some(other.as_str()));
    assert_eq!(s.sim.guest_status(105).as_deref(), Some("running"));
}

#[test]
fn no_upid_and_no_task_is_failed_and_never_re_executed() {
    let mut s = setup("none");
    let destroy = started(&s.journal, OpClass::GuestDestroy, 105);
    let start = started(&s.journal, OpClass::Start, 105);
    let report = s.restart_and_recover();
    assert_eq!(
        report.failed,
        vec![destroy.op_id.clone(), start.op_id.clone()]
    );
    assert!(s.sim.mutations().is_empty(), "nothing dispatched");
    assert_eq!(s.sim.guest_ids(), vec![105, 106]);
    let d = s.journal.latest(&destroy.op_id).unwrap();
    assert_eq!(d.state, OpState::Failed);
    assert!(d.detail.unwrap().contains("not re-executed"));
}

/// Waits for `upid` to end OK.
fn done(s: &Setup, upid: &Upid) {
    s.client.wait_task(upid, &wait(), &Shutdown::new()).unwrap();
}

/// Tasks the lookup must not take for a `start` of 105 journaled after them, each
/// differing from the right task in exactly one way, and each starting earlier than
/// any task the op itself could have started (so the earliest-first pick would take
/// it if its filter were gone):
/// - `vzstart` of 107, in the op's window: another vmid;
/// - `vzstop` of 105, in the op's window: another type;
/// - `vzstart` of 105 a minute before the op: too early.
///
/// Returns the op's journal record; `dispatch` runs between the record and the
/// window decoys (the op's own start, when the test has one).
fn seed_decoys(s: &Setup, dispatch: impl FnOnce(&Setup)) -> JournalRecord {
    // The simulator lists every task whatever the query asks: only the agent's own
    // filtering can tell these apart.
    s.sim.task_list_filters(false);
    s.sim.add_guest(GuestSeed::new(107, "decoy").running(false));
    let early = s.client.start(105).unwrap();
    done(s, &early);
    let early_stop = s.client.stop(105).unwrap();
    done(s, &early_stop);
    s.sim.backdate_task(early.as_str(), 60).unwrap();
    s.sim.backdate_task(early_stop.as_str(), 60).unwrap();

    let r = started(&s.journal, OpClass::Start, 105);
    dispatch(s);
    // In the window the lookup allows (from 5 s before the op), yet earlier than
    // anything the op started: backdated 4 s.
    let other_vmid = s.client.start(107).unwrap();
    done(s, &other_vmid);
    s.sim.backdate_task(other_vmid.as_str(), 4).unwrap();
    s.sim.set_running(105, true);
    let other_type = s.client.stop(105).unwrap();
    done(s, &other_type);
    s.sim.backdate_task(other_type.as_str(), 4).unwrap();
    s.sim.set_running(105, false);
    s.sim.clear_requests();
    r
}

#[test]
fn no_upid_the_lookup_needs_vmid_type_and_start_time_to_pick_the_right_task() {
    let mut s = setup("decoys");
    let mut real: Option<String> = None;
    let r = seed_decoys(&s, |s| {
        let u = s.client.start(105).unwrap();
        done(s, &u);
        real = Some(u.as_str().to_string());
    });
    let report = s.restart_and_recover();
    assert_eq!(report.succeeded, vec![r.op_id.clone()], "{report:?}");
    let last = s.journal.latest(&r.op_id).unwrap();
    assert_eq!(last.upid, real, "a decoy was taken for the op's task");
}

#[test]
fn no_upid_and_only_decoys_in_the_task_list_is_failed_never_reached() {
    let mut s = setup("only-decoys");
    let r = seed_decoys(&s, |_| {});
    let report = s.restart_and_recover();
    assert_eq!(report.failed, vec![r.op_id.clone()], "{report:?}");
    let last = s.journal.latest(&r.op_id).unwrap();
    assert_eq!(last.state, OpState::Failed);
    assert_eq!(last.upid, None, "a decoy was taken for the op's task");
    assert!(last.detail.unwrap().contains("never reached Proxmox"));
}

fn started_config(j: &Journal, vmid: u32, params: &[(&str, &str)]) -> JournalRecord {
    let mut r = JournalRecord::started(
        j.new_op_id(&format!("set_config-{vmid}")),
        vmid,
        OpClass::SetConfig,
        SystemClock.now(),
    );
    for (k, v) in params {
        r.params.insert((*k).into(), (*v).into());
    }
    j.append(&r).unwrap();
    r
}

#[test]
fn a_sync_config_change_without_a_task_is_judged_by_the_guests_config() {
    let mut s = setup("sync-config");
    let params = [("cores", "4"), ("description", "web")];
    // Killed after the synchronous PUT answered, before `succeeded` was journaled.
    let landed = started_config(&s.journal, 105, &params);
    let change = ConfigChange {
        set: params
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect(),
        ..ConfigChange::default()
    };
    assert_eq!(s.client.set_config(105, &change).unwrap(), None, "sync PUT");
    // Killed before the PUT was sent: the config does not have its values.
    let lost = started_config(&s.journal, 106, &[("cores", "6"), ("memory", "512")]);

    let report = s.restart_and_recover();
    assert_eq!(report.succeeded, vec![landed.op_id.clone()], "{report:?}");
    assert_eq!(report.failed, vec![lost.op_id.clone()], "{report:?}");
    let ok = s.journal.latest(&landed.op_id).unwrap();
    assert_eq!(ok.state, OpState::Succeeded);
    assert!(ok.detail.unwrap().contains("synchronous"));
    let bad = s.journal.latest(&lost.op_id).unwrap();
    assert_eq!(bad.state, OpState::Failed);
    let detail = bad.detail.unwrap();
    assert!(detail.starts_with("outcome unknown"), "{detail}");
    assert!(
        detail.contains("cores"),
        "names the key that differs: {detail}"
    );
    assert!(!detail.contains("never reached"), "{detail}");
}

#[test]
fn no_upid_a_stop_is_looked_up_as_the_shutdown_it_was_sent_as_and_an_old_stop_as_vzstop() {
    use felhom_agent::reconcile::shutdown_params;
    let mut s = setup("shutdown-type");
    s.sim.add_guest(GuestSeed::new(107, "old").running(true));
    // A stop journaled by this agent: sent as status/shutdown, journaled with its params.
    let mut new = JournalRecord::started(
        s.journal.new_op_id("stop-106"),
        106,
        OpClass::Stop,
        SystemClock.now(),
    );
    new.params = shutdown_params(120);
    s.journal.append(&new).unwrap();
    // A hard stop of the same guest in the op's window must not be taken for it.
    let decoy = s.client.stop(106).unwrap();
    done(&s, &decoy);
    s.sim.set_running(106, true);
    let shutdown = s.client.shutdown(106, Some(120)).unwrap();
    // A stop journaled before stops became shutdowns: no params, sent as status/stop.
    let old = started(&s.journal, OpClass::Stop, 107);
    let hard = s.client.stop(107).unwrap();
    // Both agents died before journaling the UPID.
    let report = s.restart_and_recover();
    let mut ok = report.succeeded.clone();
    ok.sort();
    let mut want = vec![new.op_id.clone(), old.op_id.clone()];
    want.sort();
    assert_eq!(ok, want, "{report:?}");
    assert_eq!(
        s.journal.latest(&new.op_id).unwrap().upid.as_deref(),
        Some(shutdown.as_str())
    );
    assert_eq!(
        s.journal.latest(&old.op_id).unwrap().upid.as_deref(),
        Some(hard.as_str())
    );
    assert_eq!(s.sim.guest_status(106).as_deref(), Some("stopped"));
    assert_eq!(s.sim.guest_status(107).as_deref(), Some("stopped"));
}
