//! The allow model over HTTP: a token granted a role on ACL paths holds exactly that,
//! as Proxmox computes it; anything else is a 403 with Proxmox's text, a task that fails
//! at its permission check, or a row left out of a listing, each where Proxmox checks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{call, get, sim_with, wait_task};
use felhom_sim::{AclSubject, GuestSeed, ProxmoxSim};
use serde_json::json;

/// Grants role `R` (`privs`) on `path` to the user and the token, propagating.
fn grant(sim: &ProxmoxSim, path: &str, privs: &[&str]) {
    sim.set_role("R", privs);
    for s in [AclSubject::User, AclSubject::Token] {
        sim.acl_modify(path, s, "R", true);
    }
}

fn sim_with_backup() -> ProxmoxSim {
    ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web"))
        .guest(GuestSeed::new(101, "db"))
        .backup(100, "2026_11_20-03_00_00")
        .start()
}

#[test]
fn what_is_not_granted_is_a_403_with_proxmoxs_text() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    grant(&sim, "/vms", &["VM.Audit"]);
    assert_eq!(get(&sim, "/nodes/pve/lxc/100/status/current").status, 200);
    let r = call(&sim, "POST", "/nodes/pve/lxc/100/status/start", Some(""));
    assert_eq!(r.status, 403);
    assert_eq!(r.reason, "Permission check failed (/vms/100, VM.PowerMgmt)");
    let r = get(&sim, "/nodes/pve/status");
    assert_eq!(r.status, 403, "nothing granted on /nodes/pve");
    assert_eq!(r.reason, "Permission check failed (/nodes/pve, Sys.Audit)");
    assert!(sim.tasks().is_empty(), "nothing ran");
    assert_eq!(sim.guest_status(100).as_deref(), Some("stopped"));
}

#[test]
fn a_token_holds_only_what_it_and_its_user_are_both_granted() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    sim.set_role("Power", &["VM.Audit", "VM.PowerMgmt"]);
    sim.set_role("Audit", &["VM.Audit"]);
    sim.acl_modify("/vms", AclSubject::User, "Power", true);
    sim.acl_modify("/vms", AclSubject::Token, "Audit", true);
    let r = call(&sim, "POST", "/nodes/pve/lxc/100/status/start", Some(""));
    assert_eq!(r.status, 403, "the user may, the privsep token may not");
    sim.set_token_privsep(false);
    let r = call(&sim, "POST", "/nodes/pve/lxc/100/status/start", Some(""));
    assert_eq!(r.status, 200, "without privsep the token is its user");
}

#[test]
fn a_check_proxmox_makes_in_the_worker_fails_the_task() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    grant(&sim, "/storage", &["Datastore.AllocateSpace"]);
    let r = call(&sim, "POST", "/nodes/pve/vzdump", Some("vmid=100"));
    assert_eq!(r.status, 200, "vzdump checks VM.Backup in its worker");
    let upid = r.data().as_str().unwrap().to_owned();
    assert_eq!(
        wait_task(&sim, &upid)["exitstatus"],
        "Permission check failed (/vms/100, VM.Backup)"
    );
    assert!(sim.backups().is_empty(), "no archive was made");
}

#[test]
fn listings_leave_out_what_is_not_granted() {
    let sim = sim_with_backup();
    sim.set_role("R", &["VM.Audit", "Datastore.Audit"]);
    for s in [AclSubject::User, AclSubject::Token] {
        sim.acl_modify("/vms/101", s, "R", true);
        sim.acl_modify("/storage", s, "R", true);
    }
    let guests = get(&sim, "/nodes/pve/lxc").data();
    let ids: Vec<_> = guests
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["vmid"].clone())
        .collect();
    assert_eq!(ids, [json!(101)], "only the granted guest");
    let content = "/nodes/pve/storage/local/content?content=backup";
    assert_eq!(
        get(&sim, content).status,
        200,
        "Datastore.Audit lists the storage"
    );
    assert_eq!(
        get(&sim, content).data(),
        json!([]),
        "a backup needs AllocateSpace on its storage and VM.Backup on its guest"
    );
    sim.set_role("R", &["VM.Audit", "VM.Backup", "Datastore.AllocateSpace"]);
    sim.acl_modify("/vms/100", AclSubject::User, "R", true);
    sim.acl_modify("/vms/100", AclSubject::Token, "R", true);
    assert_eq!(get(&sim, content).data().as_array().unwrap().len(), 1);
}

#[test]
fn a_token_reads_its_own_effective_privileges() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    let all = get(&sim, "/access/permissions?path=/vms/100").data();
    assert!(
        all["/vms/100"]["VM.Allocate"] == json!(1),
        "no model yet: everything, as root: {all}"
    );
    grant(&sim, "/vms", &["VM.Audit", "VM.PowerMgmt"]);
    assert_eq!(
        get(&sim, "/access/permissions?path=/vms/100").data(),
        json!({"/vms/100": {"VM.Audit": 1, "VM.PowerMgmt": 1}})
    );
    assert_eq!(
        get(&sim, "/access/permissions?path=/nodes/pve").data(),
        json!({}),
        "nothing held there"
    );
    let r = get(&sim, "/access/permissions?userid=root@pam");
    assert_eq!(r.status, 403, "another user's need Sys.Audit on /access");
}

/// Grants role `R` (`privs`) on each of `paths` to the user and the token.
fn grant_on(sim: &ProxmoxSim, paths: &[&str], privs: &[&str]) {
    sim.set_role("R", privs);
    for path in paths {
        for s in [AclSubject::User, AclSubject::Token] {
            sim.acl_modify(path, s, "R", true);
        }
    }
}

const BACKUP_100: &str = "local:backup/vzdump-lxc-100-2026_11_20-03_00_00.tar.zst";

#[test]
fn a_create_checks_each_config_key_and_the_backup_of_another_guest() {
    let base = ["VM.Allocate", "Datastore.AllocateSpace", "VM.Backup"];
    let create = format!(
        "vmid=200&restore=1&storage=local-lvm&start=0&ostemplate={}",
        BACKUP_100.replace(':', "%3A").replace('/', "%2F")
    );
    // Each config key passed needs its own privilege on the new guest.
    for (key, value, privilege) in [
        ("hostname", "copy", "VM.Config.Network"),
        ("cores", "1", "VM.Config.CPU"),
        ("memory", "256", "VM.Config.Memory"),
        ("rootfs", "local-lvm%3A10", "VM.Config.Disk"),
        ("description", "x", "VM.Config.Options"),
    ] {
        let sim = sim_with_backup();
        grant_on(&sim, &["/vms", "/storage"], &base);
        let r = call(
            &sim,
            "POST",
            "/nodes/pve/lxc",
            Some(&format!("{create}&{key}={value}")),
        );
        assert_eq!(r.status, 403, "{key}");
        assert_eq!(
            r.reason,
            format!("Permission check failed (/vms/200, {privilege})")
        );
        assert!(
            sim.tasks().is_empty() && !sim.guest_ids().contains(&200),
            "{key}"
        );
    }
    // Another guest's backup needs VM.Backup on that guest, not on the new one.
    let sim = sim_with_backup();
    grant_on(
        &sim,
        &["/vms/200", "/storage"],
        &["VM.Allocate", "Datastore.AllocateSpace", "VM.Backup"],
    );
    let r = call(&sim, "POST", "/nodes/pve/lxc", Some(&create));
    assert_eq!(r.status, 403);
    assert_eq!(r.reason, "Permission check failed (/vms/100, VM.Backup)");
    // With it (and SDN.Use on the bridge of the backup's net0), the restore runs.
    let sim = sim_with_backup();
    grant_on(
        &sim,
        &["/vms", "/storage", "/sdn/zones/localnetwork"],
        &[&base[..], &["SDN.Use"]].concat(),
    );
    let r = call(&sim, "POST", "/nodes/pve/lxc", Some(&create));
    assert_eq!(r.status, 200, "{}", r.reason);
    let upid = r.data().as_str().unwrap().to_owned();
    assert_eq!(wait_task(&sim, &upid)["exitstatus"], "OK");
    assert!(sim.guest_ids().contains(&200));
}

#[test]
fn a_backup_is_deleted_with_allocate_space_and_its_guests_backup_privilege() {
    let path = format!(
        "/nodes/pve/storage/local/content/{}",
        BACKUP_100.replace(':', "%3A").replace('/', "%2F")
    );
    let sim = sim_with_backup();
    grant_on(
        &sim,
        &["/vms/101", "/storage"],
        &["Datastore.AllocateSpace", "VM.Backup"],
    );
    let r = call(&sim, "DELETE", &path, None);
    assert_eq!(r.status, 403);
    assert_eq!(r.reason, "Permission check failed (/vms/100, VM.Backup)");
    assert_eq!(sim.backups(), [BACKUP_100], "the backup stays");
    let sim = sim_with_backup();
    grant_on(
        &sim,
        &["/vms", "/storage"],
        &["Datastore.AllocateSpace", "VM.Backup"],
    );
    let r = call(&sim, "DELETE", &path, None);
    assert_eq!(r.status, 200, "{}", r.reason);
    let upid = r.data().as_str().unwrap().to_owned();
    assert_eq!(wait_task(&sim, &upid)["exitstatus"], "OK");
    assert!(sim.backups().is_empty());
}

#[test]
fn a_network_device_needs_sdn_use_on_its_bridge_or_its_vlan() {
    let base = [
        "VM.Allocate",
        "Datastore.AllocateSpace",
        "VM.Backup",
        "VM.Config.Network",
        "SDN.Use",
    ];
    let create = format!(
        "vmid=200&restore=1&storage=local-lvm&ostemplate={}",
        BACKUP_100.replace(':', "%3A").replace('/', "%2F")
    );
    // The backup's net0 is on vmbr0: checked in the worker, before any disk is made.
    let sim = sim_with_backup();
    grant_on(
        &sim,
        &["/vms", "/storage", "/sdn/zones/localnetwork/vmbr1"],
        &base,
    );
    let r = call(&sim, "POST", "/nodes/pve/lxc", Some(&create));
    assert_eq!(r.status, 200, "{}", r.reason);
    let upid = r.data().as_str().unwrap().to_owned();
    assert_eq!(
        wait_task(&sim, &upid)["exitstatus"],
        "unable to restore CT 200 - Permission check failed (/sdn/zones/localnetwork/vmbr0, SDN.Use)"
    );
    assert!(!sim.guest_ids().contains(&200), "the new config is removed");
    let log = sim.task_log(&upid).unwrap();
    assert!(
        log[0].starts_with("recovering backed-up configuration"),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.contains("extracting")), "{log:?}");
    // Restored over an existing guest, the same refusal leaves it as it was, unlocked.
    let before = sim.guest_config(100);
    let over = create.replace("vmid=200", "vmid=100") + "&force=1";
    let r = call(&sim, "POST", "/nodes/pve/lxc", Some(&over));
    let upid = r.data().as_str().unwrap().to_owned();
    assert!(
        wait_task(&sim, &upid)["exitstatus"]
            .as_str()
            .unwrap()
            .contains("SDN.Use")
    );
    assert_eq!(sim.guest_config(100), before);
    // A net* given in the request is checked at the request, on its own bridge.
    let r = call(
        &sim,
        "POST",
        "/nodes/pve/lxc",
        Some(&format!("{create}&net0=name%3Deth0%2Cbridge%3Dvmbr2")),
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        r.reason,
        "Permission check failed (/sdn/zones/localnetwork/vmbr2, SDN.Use)"
    );
    // Given on vmbr1 (granted), it replaces the backup's: the restore runs.
    let r = call(
        &sim,
        "POST",
        "/nodes/pve/lxc",
        Some(&format!("{create}&net0=name%3Deth0%2Cbridge%3Dvmbr1")),
    );
    let upid = r.data().as_str().unwrap().to_owned();
    assert_eq!(wait_task(&sim, &upid)["exitstatus"], "OK");

    // Deleting a tagged device checks its VLAN: a grant on another VLAN is not enough,
    // one on the whole bridge propagates to it.
    let sim = sim_with_backup();
    sim.set_config_value(101, "net0", Some("name=eth0,bridge=vmbr1,tag=20"));
    grant_on(&sim, &["/vms", "/sdn/zones/localnetwork/vmbr1/30"], &base);
    let r = call(
        &sim,
        "PUT",
        "/nodes/pve/lxc/101/config",
        Some("delete=net0"),
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        r.reason,
        "Permission check failed (/sdn/zones/localnetwork/vmbr1/20, SDN.Use)"
    );
    assert!(sim.guest_config(101).unwrap().get("net0").is_some());
    grant_on(&sim, &["/sdn/zones/localnetwork/vmbr1"], &base);
    let r = call(
        &sim,
        "PUT",
        "/nodes/pve/lxc/101/config",
        Some("delete=net0"),
    );
    assert_eq!(r.status, 200, "{}", r.reason);
    if let Some(upid) = r.data().as_str() {
        assert_eq!(wait_task(&sim, upid)["exitstatus"], "OK");
    }
    assert!(sim.guest_config(101).unwrap().get("net0").is_none());
}
