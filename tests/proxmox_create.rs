//! `POST /nodes/{node}/lxc` against the simulator over real loopback TLS: a container
//! from a template, a restore into a new vmid and over an existing one (`force`), every
//! refusal pve-container makes at request time (its texts), and broken backups failing
//! the task at the stage Proxmox meets the damage — with what is left of the guest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::pinned_client as client;

use std::time::Duration;

use felhom_agent::base::Shutdown;
use felhom_agent::proxmox::{
    Client, CreateLxc, LxcSource, ProxmoxError, TaskOutcome, Upid, WaitError, WaitOptions,
};
use felhom_sim::{BackupSeed, Broken, GuestSeed, ProxmoxSim};

const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";
const BACKUP: &str = "local:backup/vzdump-lxc-100-2024_05_01-10_00_00.tar.zst";

fn fast() -> WaitOptions {
    common::fast_wait(Duration::from_secs(20))
}

fn sim() -> ProxmoxSim {
    ProxmoxSim::builder()
        .guest(
            GuestSeed::new(100, "web")
                .cores(2)
                .memory_mib(512)
                .disk_gib(8)
                .description("web shop"),
        )
        .guest(GuestSeed::new(101, "db").running(true))
        .backup(100, "2024_05_01-10_00_00")
        .template(TEMPLATE)
        .task_duration(Duration::from_millis(40))
        .start()
}

fn wait(c: &Client, upid: &Upid) -> Result<TaskOutcome, WaitError> {
    c.wait_task(upid, &fast(), &Shutdown::new())
}

fn api_message(e: ProxmoxError) -> (u16, String) {
    match e {
        ProxmoxError::Api(a) => (a.status, a.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn task_failure(r: Result<TaskOutcome, WaitError>) -> String {
    match r {
        Err(WaitError::Failed(t)) => t.exitstatus,
        other => panic!("expected a failed task, got {other:?}"),
    }
}

#[test]
fn a_template_create_makes_the_asked_container() {
    let sim = sim();
    let c = client(&sim);
    let mut create = CreateLxc::from_template(300, TEMPLATE, "local-lvm");
    create.hostname = Some("fresh".into());
    create.rootfs_gib = Some(6);
    create.cores = Some(3);
    create.memory_mib = Some(768);
    create.description = Some("made by the agent".into());
    let upid = c.create_lxc(&create).unwrap();
    assert_eq!(upid.task_type(), "vzcreate");
    assert_eq!(upid.id(), "300");
    // While the worker runs the vmid is taken: a config holding only the create lock.
    let during = sim.guest_config(300).expect("the placeholder exists");
    assert_eq!(during.get("lock").and_then(|v| v.as_str()), Some("create"));
    assert_eq!(wait(&c, &upid).unwrap(), TaskOutcome::Ok);
    let conf = c.guest_config(300).unwrap();
    assert_eq!(conf.hostname.as_deref(), Some("fresh"));
    assert_eq!(conf.cores, Some(3));
    assert_eq!(conf.memory_mib, Some(768));
    assert_eq!(conf.rootfs_bytes(), Some(6 << 30));
    assert_eq!(conf.lock, None);
    assert_eq!(sim.guest_status(300).as_deref(), Some("stopped"));
}

#[test]
fn a_restore_into_a_new_vmid_brings_the_backup_config_back() {
    let sim = sim();
    let c = client(&sim);
    let mut create = CreateLxc::restore(200, BACKUP, "local-lvm");
    create.hostname = Some("web-copy".into());
    create.unique = true;
    let upid = c.create_lxc(&create).unwrap();
    assert_eq!(upid.task_type(), "vzrestore");
    assert_eq!(wait(&c, &upid).unwrap(), TaskOutcome::Ok);
    let conf = c.guest_config(200).unwrap();
    assert_eq!(conf.hostname.as_deref(), Some("web-copy"));
    assert_eq!(conf.cores, Some(2), "the backup's cores come back");
    assert_eq!(conf.rootfs_bytes(), Some(8 << 30), "the backup's disk size");
    let mac = |vmid| {
        sim.guest_config(vmid).unwrap()["net0"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_ne!(mac(200), mac(100), "unique=1 gives new MAC addresses");
}

#[test]
fn a_pbs_snapshot_restores_too() {
    let sim = ProxmoxSim::builder()
        .backup_seed(
            BackupSeed::pbs(100, "2024-05-01T10:00:00Z").of_guest(GuestSeed::new(100, "pbsweb")),
        )
        .task_duration(Duration::from_millis(40))
        .start();
    let c = client(&sim);
    let volid = "pbs:backup/ct/100/2024-05-01T10:00:00Z";
    let upid = c
        .create_lxc(&CreateLxc::restore(210, volid, "local-lvm"))
        .unwrap();
    assert_eq!(wait(&c, &upid).unwrap(), TaskOutcome::Ok);
    assert_eq!(
        c.guest_config(210).unwrap().hostname.as_deref(),
        Some("pbsweb")
    );
}

#[test]
fn force_restores_over_a_stopped_container() {
    let sim = sim();
    let c = client(&sim);
    sim.set_config_value(100, "cores", Some("7"));
    let before = sim.guest_digest(100).unwrap();
    let upid = c.restore_lxc(100, BACKUP, "local-lvm", true).unwrap();
    let during = sim.guest_config(100).unwrap();
    assert_eq!(during.get("lock").and_then(|v| v.as_str()), Some("create"));
    assert_eq!(wait(&c, &upid).unwrap(), TaskOutcome::Ok);
    assert_eq!(
        c.guest_config(100).unwrap().cores,
        Some(2),
        "the backup's config"
    );
    assert_ne!(sim.guest_digest(100).unwrap(), before);
}

#[test]
fn request_time_refusals_use_proxmox_texts_and_change_nothing() {
    let sim = sim();
    let c = client(&sim);
    sim.set_config_value(100, "protection", Some("1"));
    let protected_digest = sim.guest_digest(100).unwrap();
    let cases: Vec<(CreateLxc, u16, String)> = vec![
        (
            CreateLxc::restore(100, BACKUP, "local-lvm"),
            500,
            "CT 100 already exists on node 'pve'".into(),
        ),
        (
            CreateLxc::from_template(101, TEMPLATE, "local-lvm"),
            500,
            "CT 101 already exists on node 'pve'".into(),
        ),
        (
            CreateLxc {
                force: true,
                ..CreateLxc::restore(101, BACKUP, "local-lvm")
            },
            500,
            "can't overwrite running container".into(),
        ),
        (
            CreateLxc {
                force: true,
                ..CreateLxc::restore(100, BACKUP, "local-lvm")
            },
            500,
            "unable to restore CT 100 - protection mode enabled".into(),
        ),
        (
            CreateLxc::new(400, LxcSource::Backup(TEMPLATE.into()), "local-lvm"),
            500,
            format!("unable to use volume {TEMPLATE} - content type needs to be 'backup'"),
        ),
        (
            CreateLxc::restore(400, BACKUP, "local"),
            400,
            "Parameter verification failed.".into(),
        ),
    ];
    for (create, status, message) in cases {
        let e = c.create_lxc(&create).unwrap_err();
        let (got_status, got) = api_message(e);
        assert_eq!(
            (got_status, got.trim_end()),
            (status, message.as_str()),
            "{create:?}"
        );
    }
    assert_eq!(sim.guest_digest(100).unwrap(), protected_digest);
    assert_eq!(sim.guest_status(101).as_deref(), Some("running"));
    assert!(!sim.guest_ids().contains(&400));
    assert!(sim.tasks().is_empty(), "no worker was started");
}

#[test]
fn a_locked_container_is_not_overwritten() {
    let sim = sim();
    let c = client(&sim);
    sim.set_lock(100, Some("backup"));
    let e = c.restore_lxc(100, BACKUP, "local-lvm", true).unwrap_err();
    let (status, message) = api_message(e);
    assert_eq!(
        (status, message.trim_end()),
        (500, "unable to restore CT 100 - CT is locked (backup)")
    );
    assert_eq!(c.guest_config(100).unwrap().lock.as_deref(), Some("backup"));
}

#[test]
fn a_backup_without_config_fails_before_anything_changed() {
    let sim = sim();
    let c = client(&sim);
    let volid =
        sim.add_backup(BackupSeed::vzdump(100, "2024_06_01-10_00_00").broken(Broken::NoConfig));
    let before = sim.guest_digest(100).unwrap();
    let upid = c.restore_lxc(100, &volid, "local-lvm", true).unwrap();
    let status = task_failure(wait(&c, &upid));
    assert_eq!(
        status,
        "unable to restore CT 100 - ERROR: archive contains no configuration file"
    );
    assert_eq!(
        sim.guest_digest(100).unwrap(),
        before,
        "the guest is untouched, unlocked"
    );
    // Into a new vmid: the placeholder goes again.
    let upid = c.restore_lxc(220, &volid, "local-lvm", false).unwrap();
    assert!(wait(&c, &upid).is_err());
    assert!(!sim.guest_ids().contains(&220));
}

#[test]
fn a_truncated_backup_fails_mid_extract_and_loses_the_overwritten_guest() {
    let sim = sim();
    let c = client(&sim);
    let volid =
        sim.add_backup(BackupSeed::vzdump(100, "2024_06_01-10_00_00").broken(Broken::Truncated));
    let upid = c.restore_lxc(100, &volid, "local-lvm", true).unwrap();
    let status = task_failure(wait(&c, &upid));
    assert!(
        status.starts_with("unable to restore CT 100 - command '"),
        "{status}"
    );
    assert!(status.ends_with("failed: exit code 2"), "{status}");
    assert!(
        !sim.guest_ids().contains(&100),
        "pve-container destroys the config once the old volumes are gone"
    );
}

#[test]
fn a_missing_archive_or_template_fails_the_task_and_leaves_no_guest() {
    let sim = sim();
    let c = client(&sim);
    let upid = c
        .restore_lxc(
            230,
            "local:backup/vzdump-lxc-9-2020_01_01-00_00_00.tar.zst",
            "local-lvm",
            false,
        )
        .unwrap();
    let status = task_failure(wait(&c, &upid));
    assert!(
        status.starts_with("unable to restore CT 230 - ERROR: file '"),
        "{status}"
    );
    let upid = c
        .create_lxc(&CreateLxc::from_template(
            231,
            "local:vztmpl/nope.tar.zst",
            "local-lvm",
        ))
        .unwrap();
    let status = task_failure(wait(&c, &upid));
    assert!(
        status.starts_with("unable to create CT 231 - failed to open"),
        "{status}"
    );
    assert!(!sim.guest_ids().contains(&230) && !sim.guest_ids().contains(&231));
}

#[test]
fn backup_volumes_list_what_a_restore_needs() {
    let sim = ProxmoxSim::builder()
        .backup(100, "2024_05_01-10_00_00")
        .backup(101, "2024_05_02-10_00_00")
        .pbs_backup(100, "2024-05-03T10:00:00Z", Some("ok"))
        .template(TEMPLATE)
        .start();
    let c = client(&sim);
    let local = c.backup_volumes("local", Some(100)).unwrap();
    assert_eq!(local.len(), 1, "only guest 100's, no template: {local:?}");
    let b = &local[0];
    assert_eq!(b.volid, BACKUP);
    assert_eq!(
        (b.content.as_str(), b.format.as_str()),
        ("backup", "tar.zst")
    );
    assert_eq!(b.vmid, Some(100));
    assert_eq!(b.ctime, Some(1_714_557_600));
    assert_eq!(b.subtype.as_deref(), Some("lxc"));
    assert!(b.size > 0);
    assert_eq!(c.backup_volumes("local", None).unwrap().len(), 2);
    let pbs = c.backup_volumes("pbs", Some(100)).unwrap();
    assert_eq!(pbs.len(), 1);
    assert_eq!(pbs[0].format, "pbs-ct");
    let templates = c.storage_content("local", Some("vztmpl")).unwrap();
    assert_eq!(templates.len(), 1);
    assert_eq!(templates[0].volid, TEMPLATE);
}

#[test]
fn invalid_fields_are_refused_before_sending() {
    let sim = sim();
    let c = client(&sim);
    let e = c
        .create_lxc(&CreateLxc {
            force: true,
            ..CreateLxc::from_template(300, TEMPLATE, "local-lvm")
        })
        .unwrap_err();
    assert!(
        matches!(e, ProxmoxError::Argument(ref a) if a.name == "force"),
        "{e:?}"
    );
    assert!(sim.mutations().is_empty());
}
