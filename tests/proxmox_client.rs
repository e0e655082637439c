//! The Proxmox client against the simulator over real loopback TLS: every read
//! decodes, every mutation sends the right method, path and parameters, task waits end
//! the right way, and every fault becomes the right typed error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::pinned_client as client;

use std::time::Duration;

use felhom_agent::base::Secret;
use felhom_agent::base::Shutdown;
use felhom_agent::net::{TimeoutPhase, TlsTrust, TransportError};
use felhom_agent::proxmox::{
    BackupMode, Client, ClientOptions, Compression, ConfigChange, ProxmoxError, RunState, TaskExit,
    TaskFilter, TaskOutcome, TaskSource, TaskState, Upid, VzdumpOutcome, WaitError, WaitOptions,
};
use felhom_sim::{
    DEFAULT_TOKEN_ID, DEFAULT_TOKEN_SECRET, Fault, FaultKind, GuestSeed, ProxmoxSim,
    RecordedRequest,
};

/// The shared pinned options with the 10 s call timeout [`common::pinned_client`] uses:
/// the faults below adjust a copy.
fn options(sim: &ProxmoxSim) -> ClientOptions {
    let mut o = common::pinned_options(sim);
    o.timeout = Duration::from_secs(10);
    o
}

fn fast() -> WaitOptions {
    common::fast_wait(Duration::from_secs(20))
}

fn sim() -> ProxmoxSim {
    ProxmoxSim::builder()
        .guest(
            GuestSeed::new(100, "web")
                .running(true)
                .cores(2)
                .memory_mib(512)
                .description("Managed by agent: v1"),
        )
        .guest(GuestSeed::new(101, "db").memory_mib(1024).disk_gib(16))
        .backup(100, "2024_05_01-10_00_00")
        .task_duration(Duration::from_millis(40))
        .start()
}

fn wait_ok(c: &Client, upid: &Upid) {
    let outcome = c.wait_task(upid, &fast(), &Shutdown::new()).unwrap();
    assert_eq!(outcome, TaskOutcome::Ok, "{upid}");
}

fn form(r: &RecordedRequest) -> Vec<(&str, &str)> {
    r.form
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn last_mutation(sim: &ProxmoxSim) -> RecordedRequest {
    sim.mutations().pop().expect("a mutation was recorded")
}

#[test]
fn every_read_decodes() {
    let sim = sim();
    let c = client(&sim);

    let v = c.version().unwrap();
    assert!(!v.version.is_empty() && v.version.starts_with(&v.release));

    let nodes = c.nodes().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].node, "pve");
    assert_eq!(nodes[0].status, "online");

    let st = c.node_status().unwrap();
    assert!(st.memory.total > 0 && st.rootfs.total > 0);
    assert!(st.pve_version().is_some(), "{}", st.pveversion);
    assert!(st.loadavg.iter().all(|l| *l >= 0.0));

    let mut guests = c.list_lxc().unwrap();
    guests.sort_by_key(|g| g.vmid);
    assert_eq!(
        guests.iter().map(|g| g.vmid).collect::<Vec<_>>(),
        [100, 101]
    );
    assert_eq!(guests[0].status, RunState::Running);
    assert_eq!(guests[0].name.as_deref(), Some("web"));
    assert_eq!(guests[0].maxmem, Some(512 << 20));
    assert_eq!(guests[1].status, RunState::Stopped);
    assert_eq!(guests[1].maxdisk, Some(16 << 30));

    let g = c.guest_status(100).unwrap();
    assert_eq!(g.vmid, 100);
    assert_eq!(g.status, RunState::Running);

    let cfg = c.guest_config(100).unwrap();
    assert_eq!(cfg.cores, Some(2));
    assert_eq!(cfg.memory_mib, Some(512));
    assert_eq!(cfg.hostname.as_deref(), Some("web"));
    assert_eq!(
        cfg.description.as_deref(),
        Some("Managed by agent: v1\n"),
        "Proxmox adds a newline to descriptions"
    );
    assert!(cfg.digest.as_deref().is_some_and(|d| d.len() >= 40));
    assert!(cfg.other.contains_key("rootfs"));
    assert_eq!(cfg.rootfs_bytes(), Some(8 << 30));

    let storage = c.list_storage().unwrap();
    let local = storage.iter().find(|s| s.storage == "local").unwrap();
    assert!(local.content.iter().any(|c| c == "backup"));

    let node_storage = c.node_storage().unwrap();
    let local = node_storage.iter().find(|s| s.storage == "local").unwrap();
    assert!(local.active && local.enabled);
    assert!(local.total.unwrap() >= local.used.unwrap());

    let backups = c.storage_content("local", Some("backup")).unwrap();
    let b = backups
        .iter()
        .find(|v| v.volid == "local:backup/vzdump-lxc-100-2024_05_01-10_00_00.tar.zst")
        .expect("the seeded backup is listed");
    assert_eq!(b.content, "backup");
    assert_eq!(b.vmid, Some(100));
    assert!(b.size > 0);

    assert!(c.list_snapshots(100).unwrap().is_empty());
    assert!(
        sim.mutations().is_empty(),
        "reads never mutate: {:?}",
        sim.mutations()
    );
}

#[test]
fn pbs_content_decodes_its_verification_state() {
    let sim = ProxmoxSim::builder()
        .pbs_backup(100, "2024-05-01T10:00:00Z", Some("ok"))
        .pbs_backup(100, "2024-05-02T10:00:00Z", Some("failed"))
        .pbs_backup(100, "2024-05-03T10:00:00Z", None)
        .start();
    let c = client(&sim);
    let pbs = c.list_storage().unwrap();
    assert!(pbs.iter().any(|s| s.storage == "pbs" && s.kind == "pbs"));
    let rows = c.storage_content("pbs", Some("backup")).unwrap();
    let seen: Vec<(&str, &str, Option<&str>)> = rows
        .iter()
        .map(|v| {
            (
                v.volid.as_str(),
                v.format.as_str(),
                v.verification.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "pbs:backup/ct/100/2024-05-01T10:00:00Z",
                "pbs-ct",
                Some("ok")
            ),
            (
                "pbs:backup/ct/100/2024-05-02T10:00:00Z",
                "pbs-ct",
                Some("failed")
            ),
            ("pbs:backup/ct/100/2024-05-03T10:00:00Z", "pbs-ct", None),
        ]
    );
    assert_eq!(rows[0].ctime, Some(1_714_557_600));
    assert_eq!(rows[0].subtype, None);
}

#[test]
fn mutations_send_the_right_method_path_and_params() {
    let sim = sim();
    let c = client(&sim);
    let archive = "local:backup/vzdump-lxc-100-2024_05_01-10_00_00.tar.zst";

    // Restore a new guest from the archive.
    let upid = c.restore_lxc(200, archive, "local-lvm", false).unwrap();
    assert_eq!(upid.task_type(), "vzrestore");
    assert_eq!(upid.id(), "200");
    assert_eq!(upid.node(), "pve");
    assert_eq!(upid.user(), "felhom-agent@pve");
    assert_eq!(upid.token(), Some("agent"));
    let r = last_mutation(&sim);
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/nodes/pve/lxc")
    );
    assert_eq!(
        form(&r),
        [
            ("vmid", "200"),
            ("ostemplate", archive),
            ("restore", "1"),
            ("storage", "local-lvm"),
            ("force", "0")
        ]
    );
    wait_ok(&c, &upid);
    assert!(sim.guest_ids().contains(&200));

    // Overwrite it again with force.
    let upid = c.restore_lxc(200, archive, "local-lvm", true).unwrap();
    assert!(form(&last_mutation(&sim)).contains(&("force", "1")));
    wait_ok(&c, &upid);

    // Backup.
    let before = sim.backups().len();
    let out = c
        .vzdump(100, "local", BackupMode::Snapshot, Compression::Zstd)
        .unwrap();
    let VzdumpOutcome::Task(upid) = out else {
        panic!("a local guest gets a task: {out:?}")
    };
    assert_eq!(upid.task_type(), "vzdump");
    let r = last_mutation(&sim);
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/nodes/pve/vzdump")
    );
    assert_eq!(
        form(&r),
        [
            ("vmid", "100"),
            ("storage", "local"),
            ("mode", "snapshot"),
            ("compress", "zstd")
        ]
    );
    wait_ok(&c, &upid);
    assert_eq!(sim.backups().len(), before + 1);

    // A guest that is not on this node: Proxmox answers "OK" and runs nothing.
    assert_eq!(
        c.vzdump(4242, "local", BackupMode::Stop, Compression::None)
            .unwrap(),
        VzdumpOutcome::NotLocal
    );

    // Snapshot, rollback, delete.
    let upid = c
        .snapshot(100, "pre_upgrade", Some("before the upgrade"))
        .unwrap();
    assert_eq!(upid.task_type(), "vzsnapshot");
    let r = last_mutation(&sim);
    assert_eq!(r.path, "/nodes/pve/lxc/100/snapshot");
    assert_eq!(
        form(&r),
        [
            ("snapname", "pre_upgrade"),
            ("description", "before the upgrade")
        ]
    );
    wait_ok(&c, &upid);
    assert_eq!(sim.snapshots(100), ["pre_upgrade"]);
    let snaps = c.list_snapshots(100).unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].name, "pre_upgrade");

    // Proxmox stops a running guest before it rolls back; `start` brings it back.
    assert_eq!(sim.guest_status(100).as_deref(), Some("running"));
    let upid = c.rollback(100, "pre_upgrade", true).unwrap();
    assert_eq!(upid.task_type(), "vzrollback");
    let r = last_mutation(&sim);
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/nodes/pve/lxc/100/snapshot/pre_upgrade/rollback")
    );
    assert_eq!(form(&r), [("start", "1")]);
    wait_ok(&c, &upid);
    let log = c.task_log_tail(&upid, 50).unwrap();
    assert!(
        log.iter().any(|l| l == "stopping CT 100"),
        "the rollback stopped the guest first: {log:?}"
    );
    assert_eq!(sim.guest_status(100).as_deref(), Some("running"));

    let upid = c.rollback(100, "pre_upgrade", false).unwrap();
    let r = last_mutation(&sim);
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/nodes/pve/lxc/100/snapshot/pre_upgrade/rollback")
    );
    assert_eq!(form(&r), [("start", "0")]);
    wait_ok(&c, &upid);
    assert_eq!(sim.guest_status(100).as_deref(), Some("stopped"));

    let upid = c.delete_snapshot(100, "pre_upgrade").unwrap();
    assert_eq!(upid.task_type(), "vzdelsnapshot");
    let r = last_mutation(&sim);
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("DELETE", "/nodes/pve/lxc/100/snapshot/pre_upgrade")
    );
    wait_ok(&c, &upid);
    assert!(sim.snapshots(100).is_empty());

    // Power. The rollback stopped the running guest first, as Proxmox does.
    assert_eq!(sim.guest_status(100).as_deref(), Some("stopped"));
    let upid = c.start(100).unwrap();
    assert_eq!(upid.task_type(), "vzstart");
    let r = last_mutation(&sim);
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/nodes/pve/lxc/100/status/start")
    );
    assert!(r.form.is_empty());
    wait_ok(&c, &upid);
    assert_eq!(sim.guest_status(100).as_deref(), Some("running"));

    let upid = c.stop(100).unwrap();
    assert_eq!(upid.task_type(), "vzstop");
    let r = last_mutation(&sim);
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/nodes/pve/lxc/100/status/stop")
    );
    assert!(r.form.is_empty() && r.query.is_empty(), "{r:?}");
    wait_ok(&c, &upid);
    assert_eq!(sim.guest_status(100).as_deref(), Some("stopped"));

    wait_ok(&c, &c.start(100).unwrap());
    let upid = c.shutdown(100, Some(30)).unwrap();
    assert_eq!(upid.task_type(), "vzshutdown");
    let r = last_mutation(&sim);
    assert_eq!(r.path, "/nodes/pve/lxc/100/status/shutdown");
    assert_eq!(form(&r), [("timeout", "30"), ("forceStop", "1")]);
    wait_ok(&c, &upid);
    assert_eq!(sim.guest_status(100).as_deref(), Some("stopped"));

    // Destroy: DELETE takes its parameters in the query, never a body.
    let upid = c.destroy(200, true, true).unwrap();
    assert_eq!(upid.task_type(), "vzdestroy");
    let r = last_mutation(&sim);
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("DELETE", "/nodes/pve/lxc/200")
    );
    assert_eq!(
        r.query,
        [
            ("purge".to_string(), "1".to_string()),
            ("force".to_string(), "1".to_string())
        ]
    );
    assert!(r.form.is_empty());
    wait_ok(&c, &upid);
    assert!(!sim.guest_ids().contains(&200));

    // Task paths carry the UPID percent-encoded (it holds ':', '@' and '!').
    let status_read = sim
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/status") && r.path.contains("/tasks/"))
        .unwrap();
    assert!(
        status_read.raw_path.contains("UPID%3Apve%3A")
            && status_read.raw_path.contains("%40pve%21agent%3A"),
        "{}",
        status_read.raw_path
    );
    assert!(
        sim.requests()
            .iter()
            .all(|r| r.status != 400 && r.status != 501),
        "no request was malformed"
    );
}

#[test]
fn set_config_synchronous_and_asynchronous_both_succeed() {
    let sim = sim();
    let c = client(&sim);
    let digest = c.guest_config(101).unwrap().digest;
    let change = ConfigChange {
        set: vec![
            ("cores".into(), "4".into()),
            ("description".into(), "line one\nline: two & 100%".into()),
        ],
        delete: vec!["swap".into()],
        digest: digest.clone(),
    };
    assert_eq!(
        c.set_config(101, &change).unwrap(),
        None,
        "real PVE answers null"
    );
    let r = last_mutation(&sim);
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("PUT", "/nodes/pve/lxc/101/config")
    );
    assert_eq!(
        form(&r),
        [
            ("cores", "4"),
            ("description", "line one\nline: two & 100%"),
            ("delete", "swap"),
            ("digest", digest.as_deref().unwrap())
        ]
    );
    let cfg = c.guest_config(101).unwrap();
    assert_eq!(cfg.cores, Some(4));
    assert_eq!(
        cfg.description.as_deref(),
        Some("line one\nline: two & 100%\n")
    );
    assert_eq!(cfg.swap_mib, None);

    // The old digest no longer matches: Proxmox refuses the write.
    let stale = ConfigChange {
        set: vec![("cores".into(), "1".into())],
        delete: vec![],
        digest,
    };
    let e = c.set_config(101, &stale).unwrap_err();
    let api = e.api().expect("an API error");
    assert!(api.message.contains("file changed by other user"), "{e}");

    let async_sim = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web"))
        .sync_config_put(false)
        .task_duration(Duration::from_millis(40))
        .start();
    let c = client(&async_sim);
    let change = ConfigChange {
        set: vec![("memory".into(), "2048".into())],
        ..ConfigChange::default()
    };
    let upid = c
        .set_config(100, &change)
        .unwrap()
        .expect("an async PUT answers a task");
    let r = last_mutation(&async_sim);
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("PUT", "/nodes/pve/lxc/100/config")
    );
    assert_eq!(form(&r), [("memory", "2048")]);
    assert!(r.query.is_empty(), "a PUT sends its parameters in the body");
    wait_ok(&c, &upid);
    assert_eq!(c.guest_config(100).unwrap().memory_mib, Some(2048));
}

#[test]
fn wait_task_running_then_ok() {
    let sim = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web"))
        .task_duration(Duration::from_millis(500))
        .start();
    let c = client(&sim);
    let upid = c.start(100).unwrap();
    let first = c.task_status(&upid).unwrap();
    assert_eq!(first.state, TaskState::Running);
    assert_eq!(first.exit(), None);
    assert_eq!(
        c.wait_task(&upid, &fast(), &Shutdown::new()).unwrap(),
        TaskOutcome::Ok
    );
    let polls: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/tasks/") && r.path.ends_with("/status"))
        .map(|r| r.at)
        .collect();
    // The first is the test's own read; the wait's polls follow.
    let waits = &polls[1..];
    assert!(
        waits.len() >= 3,
        "the wait polled until the task stopped ({})",
        waits.len()
    );
    // Each gap is at least the schedule's delay (a sleep never ends early, so this
    // lower bound cannot be flaky): 10, 20, 40, 40 ms...
    for (gap, want) in waits.windows(2).map(|w| w[1] - w[0]).zip(fast().delays()) {
        assert!(
            gap >= want,
            "polled after {gap:?}, the schedule says {want:?}"
        );
    }
    let done = c.task_status(&upid).unwrap();
    assert_eq!(done.exit(), Some(TaskExit::Ok));
    assert_eq!(done.upid, upid);

    let log = c.task_log(&upid, 0, 0).unwrap();
    assert_eq!(log.lines.last().unwrap().text, "TASK OK");
    assert_eq!(log.total, Some(log.lines.len() as u64));
    assert_eq!(log.lines[0].n, 1);
    assert_eq!(
        c.task_log_tail(&upid, 1).unwrap(),
        ["TASK OK"],
        "the tail is the end of the log"
    );

    // Recovery finds the task by vmid, type and start time.
    let found = c
        .list_tasks(&TaskFilter {
            vmid: Some(100),
            task_type: Some("vzstart".into()),
            since: Some(u64::from(upid.starttime())),
            source: TaskSource::All,
            ..TaskFilter::default()
        })
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].upid, upid);
    assert_eq!(found[0].status.as_deref(), Some("OK"));
    let r = sim.requests().pop().unwrap();
    assert_eq!(r.path, "/nodes/pve/tasks");
    assert!(r.query.contains(&("typefilter".into(), "vzstart".into())));
    assert!(r.query.contains(&("source".into(), "all".into())));
}

#[test]
fn wait_task_warnings_are_success_and_logged() {
    let tap = felhom_agent::base::log::tap();
    let sim = sim();
    let c = client(&sim);
    sim.task_warnings(2);
    let upid = c.stop(100).unwrap();
    match c.wait_task(&upid, &fast(), &Shutdown::new()).unwrap() {
        TaskOutcome::Warnings { count, log_tail } => {
            assert_eq!(count, 2);
            assert_eq!(
                log_tail.last().map(String::as_str),
                Some("TASK WARNINGS: 2")
            );
            assert_eq!(
                log_tail.iter().filter(|l| l.starts_with("WARN:")).count(),
                2
            );
        }
        other => panic!("expected warnings, got {other:?}"),
    }
    assert_eq!(
        sim.guest_status(100).as_deref(),
        Some("stopped"),
        "it took effect"
    );
    let logged = String::from_utf8(tap.lock().unwrap().clone()).unwrap();
    let line = logged
        .lines()
        .find(|l| l.contains(" event=task_warnings ") && l.contains(upid.as_str()))
        .expect("the warnings were logged");
    assert!(
        line.contains("level=warn") && line.contains("warnings=2"),
        "{line}"
    );
    assert!(
        line.contains("TASK WARNINGS: 2"),
        "with the log tail: {line}"
    );
}

#[test]
fn wait_task_failure_carries_the_task_time_privilege() {
    let sim = sim();
    let c = client(&sim);
    sim.deny_at_task_time("/vms/101", "VM.PowerMgmt");
    let upid = c.start(101).expect("the POST itself is allowed");
    let WaitError::Failed(e) = c.wait_task(&upid, &fast(), &Shutdown::new()).unwrap_err() else {
        panic!("expected a failed task")
    };
    assert_eq!(e.upid, upid);
    assert_eq!(
        e.exitstatus,
        "Permission check failed (/vms/101, VM.PowerMgmt)"
    );
    let p = e.privilege.as_ref().expect("the privilege is parsed");
    assert_eq!(p.path, "/vms/101");
    assert_eq!(p.privs, ["VM.PowerMgmt"]);
    assert_eq!(
        e.log_tail.last().map(String::as_str),
        Some("TASK ERROR: Permission check failed (/vms/101, VM.PowerMgmt)")
    );
    assert!(!e.is_transient());
    assert_eq!(sim.guest_status(101).as_deref(), Some("stopped"));

    // A lock held by a backup fails inside the task, and passes by itself.
    sim.allow_all();
    sim.set_lock(101, Some("backup"));
    let upid = c.start(101).unwrap();
    let WaitError::Failed(e) = c.wait_task(&upid, &fast(), &Shutdown::new()).unwrap_err() else {
        panic!("expected a failed task")
    };
    assert_eq!(e.exitstatus, "CT is locked (backup)");
    assert!(e.is_transient());
    assert!(e.privilege.is_none());
}

#[test]
fn wait_task_times_out_with_the_upid_and_can_reattach() {
    let sim = sim();
    let c = client(&sim);
    sim.set_task_duration(Duration::from_millis(900));
    let upid = c.stop(100).unwrap();
    let short = WaitOptions {
        timeout: Duration::from_millis(100),
        ..fast()
    };
    match c.wait_task(&upid, &short, &Shutdown::new()).unwrap_err() {
        WaitError::Timeout {
            upid: timed_out,
            last_error,
            ..
        } => {
            assert_eq!(timed_out, upid);
            assert!(last_error.is_none());
        }
        other => panic!("expected a timeout, got {other}"),
    }
    // Re-attaching to the same UPID finishes the job; nothing is dispatched again.
    let dispatched = sim.mutations().len();
    assert_eq!(
        c.wait_task(&upid, &fast(), &Shutdown::new()).unwrap(),
        TaskOutcome::Ok
    );
    assert_eq!(sim.mutations().len(), dispatched);
}

#[test]
fn shutdown_ends_a_wait_at_once() {
    let sim = sim();
    let c = client(&sim);
    sim.set_task_duration(Duration::from_secs(600));
    let upid = c.stop(100).unwrap();
    let shutdown = Shutdown::new();
    let waiter = {
        let (c, upid, shutdown) = (c.clone(), upid.clone(), shutdown.clone());
        std::thread::spawn(move || {
            let long = WaitOptions {
                initial: Duration::from_secs(30),
                cap: Duration::from_secs(60),
                timeout: Duration::from_secs(600),
            };
            c.wait_task(&upid, &long, &shutdown)
        })
    };
    // Trigger only once the waiter has polled and gone to sleep.
    while !sim
        .requests()
        .iter()
        .any(|r| r.path.contains("/tasks/") && r.path.ends_with("/status"))
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    shutdown.trigger();
    match waiter.join().unwrap() {
        Err(WaitError::Shutdown { upid: u }) => assert_eq!(u, upid),
        other => panic!("expected Shutdown, got {other:?}"),
    }
    // Already shut down: the wait returns before reading anything.
    let reads = sim.requests().len();
    assert!(matches!(
        c.wait_task(&upid, &fast(), &shutdown),
        Err(WaitError::Shutdown { .. })
    ));
    assert_eq!(sim.requests().len(), reads);
}

#[test]
fn wait_task_retries_transient_status_failures_and_stops_on_permanent_ones() {
    let sim = sim();
    let c = client(&sim);
    let upid = c.stop(100).unwrap();
    sim.inject(
        Fault::new(
            Some("GET"),
            "/nodes/pve/tasks/",
            FaultKind::Status {
                code: 596,
                message: "Errors during TLS negotiation, request sending and header processing"
                    .into(),
            },
        )
        .times(2),
    );
    sim.inject(Fault::new(
        Some("GET"),
        "/nodes/pve/tasks/",
        FaultKind::DropConnection,
    ));
    assert_eq!(
        c.wait_task(&upid, &fast(), &Shutdown::new()).unwrap(),
        TaskOutcome::Ok
    );
    let failed_reads = sim
        .requests()
        .iter()
        .filter(|r| r.path.contains("/tasks/") && (r.status == 596 || r.status == 0))
        .count();
    assert_eq!(failed_reads, 3, "all three faults were met and retried");

    // A task this node does not know: 400, no retry.
    let unknown =
        Upid::parse("UPID:pve:0000FFFF:0000FFFF:66A1B2C3:vzstart:100:felhom-agent@pve!agent:")
            .unwrap();
    match c
        .wait_task(&unknown, &fast(), &Shutdown::new())
        .unwrap_err()
    {
        WaitError::Status { upid, source } => {
            assert_eq!(upid, unknown);
            let api = source.api().expect("an API error");
            assert_eq!(api.status, 400);
            assert_eq!(
                api.errors.get("upid").map(String::as_str),
                Some("no such task")
            );
        }
        other => panic!("expected a status error, got {other}"),
    }
}

#[test]
fn forbidden_post_names_the_privilege() {
    let sim = sim();
    let c = client(&sim);
    sim.deny("/vms/100", "VM.PowerMgmt");
    let e = c.stop(100).unwrap_err();
    let ProxmoxError::Api(api) = &e else {
        panic!("expected an API error, got {e:?}")
    };
    assert_eq!(api.status, 403);
    assert_eq!(api.path, "/nodes/pve/lxc/100/status/stop");
    let p = api.privilege.as_ref().expect("the privilege is parsed");
    assert_eq!(
        (p.path.as_str(), p.privs.as_slice()),
        ("/vms/100", &["VM.PowerMgmt".to_string()][..])
    );
    assert_eq!(e.privilege(), api.privilege.as_ref());
    assert!(!api.transient && !e.is_transient());
    assert!(!e.never_sent(), "Proxmox answered: it was received");
    assert!(
        e.to_string()
            .contains("Permission check failed (/vms/100, VM.PowerMgmt)"),
        "{e}"
    );
    assert_eq!(sim.guest_status(100).as_deref(), Some("running"));
}

#[test]
fn api_errors_read_message_errors_and_transience() {
    let sim = sim();
    let c = client(&sim);

    sim.inject(Fault::new(
        Some("POST"),
        "/nodes/pve/lxc/100/status/",
        FaultKind::Status {
            code: 500,
            message: "CT is locked (backup)".into(),
        },
    ));
    let e = c.stop(100).unwrap_err();
    let api = e.api().unwrap();
    assert_eq!(
        (api.status, api.message.as_str()),
        (500, "CT is locked (backup)")
    );
    assert!(api.transient && e.is_transient());

    sim.inject(Fault::new(
        None,
        "/nodes/pve/lxc/100/config",
        FaultKind::Status {
            code: 500,
            message: "can't lock file '/run/lock/lxc/pve-config-100.lock' - got timeout".into(),
        },
    ));
    assert!(c.guest_config(100).unwrap_err().is_transient());

    // A guest that does not exist: Proxmox has no 404, it dies with 500.
    let e = c.guest_config(999).unwrap_err();
    let api = e.api().unwrap();
    assert_eq!(api.status, 500);
    assert!(api.guest_missing(), "{}", api.message);

    // Starting a running guest is refused before any task.
    let e = c.start(100).unwrap_err();
    assert!(e.api().unwrap().message.contains("already running"), "{e}");

    // Without a body the message comes from the status line (401 has none).
    let mut wrong = options(&sim);
    wrong.token_secret = Secret::new("00000000-0000-0000-0000-000000000000");
    let e = Client::new(wrong).unwrap().version().unwrap_err();
    let api = e.api().unwrap();
    assert_eq!(
        (api.status, api.message.as_str()),
        (401, "Authentication failed!")
    );
    assert!(!api.transient);
}

#[test]
fn transport_faults_become_typed_errors() {
    let sim = sim();
    let c = client(&sim);

    sim.inject(Fault::new(Some("GET"), "/version", FaultKind::Garbage));
    let e = c.version().unwrap_err();
    assert!(matches!(e, ProxmoxError::Decode { .. }), "{e:?}");
    assert!(e.to_string().contains("GET /version"), "{e}");

    sim.inject(Fault::new(
        Some("GET"),
        "/nodes/pve/lxc",
        FaultKind::DropConnection,
    ));
    let e = c.list_lxc().unwrap_err();
    assert!(
        matches!(
            e,
            ProxmoxError::Transport(TransportError::Io { .. } | TransportError::Protocol { .. })
        ),
        "{e:?}"
    );
    assert!(
        !e.never_sent(),
        "the request went out: it may have been processed"
    );
    assert!(e.is_transient());

    sim.inject(Fault::new(
        Some("POST"),
        "/nodes/pve/lxc/100/status/stop",
        FaultKind::DropMidBody,
    ));
    let e = c.stop(100).unwrap_err();
    assert!(matches!(e, ProxmoxError::Transport(_)), "{e:?}");
    assert!(!e.never_sent());
    // The stop was carried out although its answer was cut: never dispatch twice.
    let tasks = sim.tasks();
    assert_eq!(tasks.last().unwrap()["type"], "vzstop");

    let mut small = options(&sim);
    small.max_body = 64 * 1024;
    let small = Client::new(small).unwrap();
    sim.inject(Fault::new(
        Some("GET"),
        "/nodes",
        FaultKind::Oversized(200_000),
    ));
    let e = small.nodes().unwrap_err();
    assert!(
        matches!(
            e,
            ProxmoxError::Transport(TransportError::BodyTooLarge { limit: 65_536, .. })
        ),
        "{e:?}"
    );

    let mut quick = options(&sim);
    quick.timeout = Duration::from_millis(300);
    let quick = Client::new(quick).unwrap();
    sim.inject(Fault::new(
        Some("GET"),
        "/nodes/pve/status",
        FaultKind::Delay(Duration::from_secs(3)),
    ));
    let e = quick.node_status().unwrap_err();
    assert!(
        matches!(
            e,
            ProxmoxError::Transport(TransportError::Timeout {
                phase: TimeoutPhase::Exchange,
                ..
            })
        ),
        "{e:?}"
    );
    assert!(!e.never_sent());

    // After all that the client still works.
    assert!(c.version().is_ok());
}

#[test]
fn a_refused_connection_is_never_sent() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let o = ClientOptions::new(
        format!("https://127.0.0.1:{port}"),
        "pve",
        DEFAULT_TOKEN_ID,
        Secret::new(DEFAULT_TOKEN_SECRET),
        TlsTrust::InsecureSkipVerify,
    );
    let e = Client::new(o).unwrap().start(100).unwrap_err();
    assert!(
        matches!(e, ProxmoxError::Transport(TransportError::Connect { .. })),
        "{e:?}"
    );
    assert!(e.never_sent(), "safe to dispatch again");
}
