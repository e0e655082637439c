//! The simulated disk and volume endpoints: `PUT …/resize` grows only, with
//! pve-container's texts; `DELETE …/storage/{storage}/content/{volume}` removes a backup
//! as an `imgdel` task, and a protected backup fails in the task as pve-storage says.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{call, enc, get, wait_task};
use felhom_sim::{GuestSeed, ProxmoxSim};
use std::time::Duration;

const BACKUP: &str = "local:backup/vzdump-lxc-100-2026_11_20-02_00_00.tar.zst";

fn sim() -> ProxmoxSim {
    ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web").disk_gib(8))
        .backup(100, "2026_11_20-02_00_00")
        .task_duration(Duration::from_millis(30))
        .start()
}

fn rootfs(sim: &ProxmoxSim) -> String {
    sim.guest_config(100).unwrap()["rootfs"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn resize_grows_as_a_task_and_refuses_to_shrink_or_stand_still() {
    let sim = sim();
    // (size, the HTTP status, the message when refused)
    let refused = [
        ("4G", 500, "unable to shrink disk size"),
        ("8G", 500, "disk is already at specified size"),
        ("%2B0", 500, "disk is already at specified size"),
        ("8GB", 400, "Parameter verification failed."),
    ];
    for (size, status, message) in refused {
        let r = call(
            &sim,
            "PUT",
            "/nodes/pve/lxc/100/resize",
            Some(&format!("disk=rootfs&size={size}")),
        );
        assert_eq!(r.status, status, "{size}");
        assert_eq!(
            r.json()["message"].as_str().unwrap().trim_end(),
            message,
            "{size}"
        );
    }
    assert!(
        sim.mutations()
            .iter()
            .all(|m| m.method != "PUT" || m.path.ends_with("/resize"))
    );
    assert!(rootfs(&sim).ends_with("size=8G"), "{}", rootfs(&sim));
    let r = call(
        &sim,
        "PUT",
        "/nodes/pve/lxc/100/resize",
        Some("disk=rootfs&size=%2B4G"),
    );
    assert_eq!(r.status, 200);
    let upid = r.data().as_str().unwrap().to_string();
    assert!(upid.contains(":resize:100:"), "{upid}");
    assert_eq!(wait_task(&sim, &upid)["exitstatus"], "OK");
    assert_eq!(rootfs(&sim), "local-lvm:vm-100-disk-0,size=12G");
    // A stale digest and an unknown disk are refused like Proxmox refuses them.
    let r = call(
        &sim,
        "PUT",
        "/nodes/pve/lxc/100/resize",
        Some("disk=rootfs&size=16G&digest=0000000000000000000000000000000000000000"),
    );
    assert_eq!(r.status, 500);
    assert!(r.reason.starts_with("detected modified configuration"));
    let r = call(
        &sim,
        "PUT",
        "/nodes/pve/lxc/100/resize",
        Some("disk=mp0&size=16G"),
    );
    assert_eq!(r.status, 500);
    assert_eq!(r.reason, "invalid disk 'mp0'");
}

#[test]
fn a_backup_is_deleted_by_an_imgdel_task_and_a_protected_one_fails_in_the_task() {
    let sim = sim();
    assert!(sim.set_backup_protected(BACKUP, true));
    let listed = get(&sim, "/nodes/pve/storage/local/content?content=backup").data();
    assert_eq!(listed[0]["protected"], 1);
    // The volid with its `/` raw, as Proxmox also takes it.
    let r = call(
        &sim,
        "DELETE",
        &format!("/nodes/pve/storage/local/content/{}", enc(BACKUP)),
        None,
    );
    assert_eq!(r.status, 200);
    let upid = r.data().as_str().unwrap().to_string();
    assert!(upid.contains(":imgdel:100@local:"), "{upid}");
    let done = wait_task(&sim, &upid);
    assert_eq!(
        done["exitstatus"],
        "cannot remove protected volume 'backup/vzdump-lxc-100-2026_11_20-02_00_00.tar.zst' on 'local'"
    );
    assert_eq!(sim.backups(), vec![BACKUP.to_string()]);

    assert!(sim.set_backup_protected(BACKUP, false));
    // Now with `/` encoded, as the agent sends it.
    let path = format!(
        "/nodes/pve/storage/local/content/{}",
        enc(BACKUP).replace('/', "%2F")
    );
    let r = call(&sim, "DELETE", &path, None);
    let upid = r.data().as_str().unwrap().to_string();
    assert_eq!(wait_task(&sim, &upid)["exitstatus"], "OK");
    assert!(sim.backups().is_empty());
    // The volume named against another storage is a parameter error.
    let r = call(
        &sim,
        "DELETE",
        &format!("/nodes/pve/storage/other/content/{}", enc(BACKUP)),
        None,
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["errors"]["volume"],
        "storage ID mismatch (local != other)"
    );
}
