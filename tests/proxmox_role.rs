//! The checked Proxmox role. The agent's table of its API calls
//! (`felhom_agent::proxmox::API_CALLS`) yields the `FelhomAgent` role and the README's
//! `pveum` recipe; here the recipe is applied, line by line, to the Proxmox simulator's
//! allow model (roles, ACL paths, a privilege-separated token), and then:
//!
//! - under exactly that role, every selftest and the daemon (the real binary) do all
//!   they do today: report (node, guests, storages, backups), reconcile config writes,
//!   a start and a stop, provision a guest from another guest's backup (desired
//!   `source`, with host name, root disk size, cores, memory, description), grow a root
//!   disk, and execute the signed ops `guest_destroy` of a protected guest
//!   (`unprotect`), `snapshot_rollback`, `backup_delete` and `restore_overwrite` of a
//!   running guest (`stop`), with no refusal anywhere;
//! - a restore test round (in process, with a stand-in boot check) passes under exactly
//!   the role and fails at a named stage, nothing left behind, without a privilege it
//!   needs;
//! - for each privilege of the role, the same run under the role without it breaks the
//!   feature the table names for it (an `event=` key, an exit code, or what the report
//!   or the simulator holds), so the list is complete and minimal.
//!
//! Also: every API call of the client has a row; the README's recipe and table are the
//! table's output; and the table and the simulator's own endpoint table agree.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::agent::{Agent, fast_hub, write_agent_config};
use common::sign::{authz_json, nonce, op_blob, ssh_keygen_sign};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use felhom_agent::base::Shutdown;
use felhom_agent::base::{Clock as _, SystemClock, Timestamp};
use felhom_agent::proxmox::{
    API_CALLS, Feature, ROLE_NAME, WaitOptions, features_needing, pveum_recipe, role_privileges,
    role_table_markdown,
};
use felhom_agent::store::SECOND_MS_ENV;
use felhom_sim::{AclSubject, ENDPOINT_CHECKS, GuestSeed, HubSim, ProxmoxSim, When};
use serde_json::{Value, json};

/// Applies a `pveum` recipe to the simulator as Proxmox would: roles, the token's
/// privilege separation, and each ACL entry for the user or the token. The user and
/// token themselves exist in the simulator already.
fn apply_recipe(pve: &ProxmoxSim, recipe: &str) {
    for line in recipe.lines() {
        let words = shell_words(line);
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        match w.as_slice() {
            ["pveum", "role", "add", name, "--privs", privs] => {
                let privs: Vec<&str> = privs.split(',').collect();
                pve.set_role(name, &privs);
            }
            ["pveum", "user", "add", ..] => {}
            ["pveum", "user", "token", "add", _, _, "--privsep", p, ..] => {
                pve.set_token_privsep(*p == "1");
            }
            ["pveum", "acl", "modify", path, kind, who, "--roles", role] => {
                let subject = match *kind {
                    "--users" => AclSubject::User,
                    "--tokens" => AclSubject::Token,
                    other => panic!("unknown ACL subject {other} in {line}"),
                };
                assert!(
                    who.starts_with("felhom-agent@pve"),
                    "the recipe grants to its own user and token: {line}"
                );
                // `pveum acl modify` propagates unless told `--propagate 0`.
                pve.acl_modify(path, subject, role, true);
            }
            other => panic!("a recipe line the test does not know: {other:?}"),
        }
    }
}

/// Splits a shell line on blanks, honouring '…' and "…" quotes.
fn shell_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut any = false;
    for c in line.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, ' ') => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (_, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// The backup of 100 that 200 is provisioned from.
const BACKUP_100: &str = "local:backup/vzdump-lxc-100-2026_11_20-03_00_00.tar.zst";
/// The backup of 102 a signed `backup_delete` removes.
const BACKUP_102: &str = "local:backup/vzdump-lxc-102-2026_11_19-03_00_00.tar.zst";
/// The backup of 104 a signed `restore_overwrite` restores over it.
const BACKUP_104: &str = "local:backup/vzdump-lxc-104-2026_11_18-03_00_00.tar.zst";
/// The snapshot of 105 a signed `snapshot_rollback` goes back to.
const SNAPSHOT_105: &str = "before_upgrade";
/// The guest the desired state provisions.
const NEW_VMID: u32 = 200;
/// 101's root disk: 8 GiB seeded, 12 GiB desired.
const GROWN_ROOTFS_GIB: u64 = 12;

/// The host every run starts from: 100 running (2 cores, 512 MiB, "web") with a backup
/// on `local`, 101 stopped (8 GiB root disk), 102 running with a backup, 103 stopped and
/// protected (the one a signed op destroys, with `unprotect`), 104 running with a backup
/// (restored over, with `stop`), 105 stopped with the snapshot `before_upgrade` taken
/// and then 4 cores set (rolled back).
fn pve_sim() -> ProxmoxSim {
    let pve = ProxmoxSim::builder()
        .guest(
            GuestSeed::new(100, "web")
                .running(true)
                .cores(2)
                .memory_mib(512)
                .description("web"),
        )
        .guest(GuestSeed::new(101, "db"))
        .guest(GuestSeed::new(102, "cache").running(true))
        .guest(GuestSeed::new(103, "old"))
        .guest(GuestSeed::new(104, "shop").running(true).cores(2))
        .guest(GuestSeed::new(105, "app").cores(2))
        .backup(100, "2026_11_20-03_00_00")
        .backup(102, "2026_11_19-03_00_00")
        .backup(104, "2026_11_18-03_00_00")
        .task_duration(std::time::Duration::from_millis(30))
        .start();
    pve.set_config_value(103, "protection", Some("1"));
    // Set up before the recipe narrows the token: the simulator allows all until then.
    let client = common::pinned_client(&pve);
    let wait = WaitOptions::default();
    let up = client.snapshot(105, SNAPSHOT_105, None).unwrap();
    client.wait_task(&up, &wait, &Shutdown::new()).unwrap();
    pve.set_config_value(105, "cores", Some("4"));
    pve.set_config_value(104, "cores", Some("3"));
    pve
}

/// A simulator under the recipe's role, without `without` (if any).
fn pve_with_role(without: Option<&str>) -> ProxmoxSim {
    let pve = pve_sim();
    apply_recipe(&pve, &pveum_recipe(&pve.node()));
    if let Some(p) = without {
        let rest: Vec<&str> = role_privileges().into_iter().filter(|r| *r != p).collect();
        pve.set_role(ROLE_NAME, &rest);
    }
    pve
}

/// One test's directory, removed at the end.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The daemon's config: signed ops allowed for the test key, reconciling toward a
/// desired file that raises 100's cores and memory, changes its description, starts
/// 101 and grows its root disk, stops 102, and provisions 200 from 100's backup.
fn config(dir: &Path, pve: &ProxmoxSim, hub: &HubSim) -> PathBuf {
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let desired = json!({"generation": 1, "guests": [
        {"vmid": 100, "run": "running", "spec": {"cores": 4, "memory_bytes": 1u64 << 30},
            "description": "web v2"},
        {"vmid": 101, "run": "running", "spec": {"rootfs_bytes": GROWN_ROOTFS_GIB << 30}},
        {"vmid": 102, "run": "stopped"},
        {"vmid": NEW_VMID, "run": "stopped", "source": {"backup": BACKUP_100},
            "storage": "local-lvm", "hostname": "web-copy", "rootfs_bytes": 10u64 << 30,
            "spec": {"cores": 1, "memory_bytes": 256u64 << 20}, "description": "copy"}
    ]});
    std::fs::write(dir.join("desired.json"), desired.to_string()).unwrap();
    write_agent_config(dir, pve, hub, |v| {
        v["hub"]["poll_seconds"] = json!(60);
        v["authz"] = authz_json();
        v["reconcile"] = json!({"desired_file": dir.join("desired.json")});
    })
}

/// `felhom-agent selftest ARGS` under `cfg`.
fn selftest(cfg: &Path, args: &[&str]) -> Output {
    Command::new(common::agent::BIN)
        .arg("selftest")
        .args(args)
        .arg("--config")
        .arg(cfg)
        .output()
        .unwrap()
}

/// A signed `guest_destroy` of protected guest 103 that says `unprotect`: clearing the
/// flag is a config write (`VM.Config.Options`), the destroy needs `VM.Allocate`.
fn destroy_unprotect_blob(digest: &str) -> Vec<u8> {
    let now = SystemClock.now().unix();
    format!(
        "{{\"op\":\"guest_destroy\",\"host_id\":\"pve-a\",\"guest_id\":\"103\",\"guest_digest\":\"{digest}\",\"params\":{{\"purge\":\"1\",\"unprotect\":\"1\"}},\"key_id\":\"ops-2026\",\"nonce\":\"{}\",\"not_before\":\"{}\",\"expires_at\":\"{}\"}}\n",
        nonce(),
        Timestamp(now - 60),
        Timestamp(now + 1800)
    )
    .into_bytes()
}

/// Queues on the hub a signed `op` of `vmid` (bound to its digest now) with `params`.
fn queue_op(
    dir: &Path,
    pve: &ProxmoxSim,
    hub: &HubSim,
    op: &str,
    vmid: u32,
    params: &[(&str, &str)],
) {
    let digest = pve.guest_digest(vmid).unwrap();
    let now = SystemClock.now().unix();
    let (blob, _) = op_blob(op, "pve-a", &vmid.to_string(), &digest, params, now);
    let sig = ssh_keygen_sign(dir, &blob);
    hub.queue_signed_op(&blob, Some(&sig));
}

/// The catalogue's other signed ops, queued behind the destroy: a rollback of 105, the
/// deletion of 102's backup, and a restore of 104's backup over the running 104.
fn queue_catalogue(dir: &Path, pve: &ProxmoxSim, hub: &HubSim) {
    queue_op(
        dir,
        pve,
        hub,
        "snapshot_rollback",
        105,
        &[("snapshot", SNAPSHOT_105)],
    );
    queue_op(
        dir,
        pve,
        hub,
        "backup_delete",
        102,
        &[("volid", BACKUP_102)],
    );
    queue_op(
        dir,
        pve,
        hub,
        "restore_overwrite",
        104,
        &[("backup", BACKUP_104), ("stop", "1")],
    );
}

/// The daemon on `cfg`, with the hub holding a signed destroy of guest 103.
fn daemon(dir: &Path, cfg: &Path, pve: &ProxmoxSim, hub: &HubSim) -> Agent {
    let digest = pve.guest_digest(103).unwrap();
    let blob = destroy_unprotect_blob(&digest);
    let sig = ssh_keygen_sign(dir, &blob);
    hub.queue_signed_op(&blob, Some(&sig));
    spawn(dir, cfg)
}

/// The daemon on `cfg`, whatever the hub holds.
fn spawn(dir: &Path, cfg: &Path) -> Agent {
    Agent::spawn(
        &["run"],
        cfg,
        &dir.join("stderr.log"),
        &[(SECOND_MS_ENV, "20")],
    )
}

fn out_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn cores(pve: &ProxmoxSim, vmid: u32) -> Option<Value> {
    pve.guest_config(vmid).and_then(|c| c.get("cores").cloned())
}

fn rootfs(pve: &ProxmoxSim, vmid: u32) -> String {
    pve.guest_config(vmid)
        .and_then(|c| c.get("rootfs").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn under_exactly_the_role_every_selftest_and_every_op_works() {
    let started = Instant::now();
    let pve = pve_with_role(None);
    let hub = fast_hub();
    let dir = Dir(common::tempdir("role", "full"));
    let cfg = config(&dir.0, &pve, &hub);

    let read = selftest(&cfg, &["read"]);
    assert_eq!(read.status.code(), Some(0), "{}", out_text(&read));
    let stdout = String::from_utf8_lossy(&read.stdout).into_owned();
    assert!(
        stdout.contains("6 LXC guests"),
        "every guest visible: {stdout}"
    );
    let task = selftest(&cfg, &["task", "--vmid", "100"]);
    assert_eq!(task.status.code(), Some(0), "{}", out_text(&task));

    queue_catalogue(&dir.0, &pve, &hub);
    let mut agent = daemon(&dir.0, &cfg, &pve, &hub);
    agent.wait_until("every op of the pass and every signed op done", |a| {
        cores(&pve, 100) == Some(json!(4))
            && pve.guest_config(100).and_then(|c| c.get("memory").cloned()) == Some(json!(1024))
            && pve.guest_status(101).as_deref() == Some("running")
            && pve.guest_status(102).as_deref() == Some("stopped")
            && !pve.guest_ids().contains(&103)
            && a.events("signed_op_handled").len() == 4
            && !a.events("provision_done").is_empty()
            && rootfs(&pve, 101).contains(&format!("size={GROWN_ROOTFS_GIB}G"))
    });
    for handled in agent.events("signed_op_handled") {
        assert_eq!(handled.field("outcome"), "executed", "{handled:?}");
    }
    // Provisioned from 100's backup with what the desired state says.
    let new = pve.guest_config(NEW_VMID).expect("200 exists");
    assert_eq!(new.get("hostname"), Some(&json!("web-copy")), "{new:?}");
    assert_eq!(new.get("cores"), Some(&json!(1)), "{new:?}");
    assert!(rootfs(&pve, NEW_VMID).contains("size=10G"), "{new:?}");
    // Rolled back: 105 has its snapshot's 2 cores again.
    assert_eq!(cores(&pve, 105), Some(json!(2)));
    // Deleted: 102's backup is gone, 100's and 104's stay.
    let backups = pve.backups();
    assert!(!backups.iter().any(|b| b == BACKUP_102), "{backups:?}");
    assert!(backups.iter().any(|b| b == BACKUP_100), "{backups:?}");
    // Restored over: 104 was stopped first, then has its backup's 2 cores again.
    assert_eq!(cores(&pve, 104), Some(json!(2)));
    assert_eq!(pve.guest_status(104).as_deref(), Some("stopped"));
    let description = pve
        .guest_config(100)
        .and_then(|c| c.get("description").cloned());
    assert_eq!(description, Some(json!("web v2\n")));
    let node = pve.node();
    assert!(
        pve.mutations().iter().any(|m| m.method == "PUT"
            && m.path == format!("/nodes/{node}/lxc/103/config")
            && m.form.iter().any(|(k, v)| k == "protection" && v == "0")),
        "the protection was cleared before the destroy"
    );

    let mut report = Value::Null;
    // 100, 101, 102, 104, 105 and the new 200; 103 is gone.
    agent.wait_until("a report made after the destroy", |_| {
        report = hub.reports().last().cloned().unwrap_or(Value::Null);
        report["guests"].as_array().is_some_and(|g| g.len() == 6)
    });
    assert!(report["host"]["memory"]["total_bytes"].as_u64().unwrap() > 0);
    assert!(
        !report["storage_targets"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let backups = report["backups"].as_array().unwrap();
    assert!(
        backups.iter().any(|b| b["vmid"] == 100),
        "the backup of 100 is reported: {report}"
    );
    assert!(
        agent.events("action_failed").is_empty(),
        "no action failed:\n{}",
        agent.log()
    );
    assert!(
        agent.events("report_failed").is_empty(),
        "no report failed:\n{}",
        agent.log()
    );
    assert!(
        pve.requests().iter().all(|q| q.status != 403),
        "no request was refused"
    );
    let status = agent.stop_with("TERM");
    assert_eq!(status.code(), Some(0));
    eprintln!("full role run: {:?}", started.elapsed());
}

/// How a case shows its feature broke.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// `selftest task --vmid 100` exits 1 and leaves no snapshot.
    SelftestTask,
    /// The daemon logs `report_failed` and the hub got no report.
    ReportFails,
    /// The daemon's report lacks this collection (empty) while the guests are there.
    ReportEmpty(&'static str),
    /// The daemon logs `action_failed` for this action on this guest, which stays so.
    ActionFails(&'static str, u32),
    /// The signed destroy of 103 ends `failed` and 103 survives.
    DestroyFails,
    /// The catalogue op (`snapshot_rollback` of 105, `backup_delete` of 102's backup,
    /// `restore_overwrite` of 104 with `stop`), the only one queued, ends with this
    /// outcome code and changes nothing.
    SignedOpFails(&'static str, &'static str),
    /// The signed `restore_overwrite` of 104 with `stop` ends `failed`: 104 was stopped,
    /// then the restore task was refused, so 104 is stopped but not restored over, and
    /// unlocked.
    RestoreFailsAfterStop,
}

/// Each privilege of the role, the feature that breaks without it, and how that shows.
const CASES: &[(&str, Feature, Probe)] = &[
    ("Sys.Audit", Feature::Report, Probe::ReportFails),
    ("VM.Audit", Feature::Report, Probe::ReportEmpty("guests")),
    (
        "Datastore.AllocateSpace",
        Feature::Report,
        Probe::ReportEmpty("storage_targets"),
    ),
    ("VM.Backup", Feature::Report, Probe::ReportEmpty("backups")),
    (
        "VM.Config.CPU",
        Feature::ReconcileConfig,
        Probe::ActionFails("set_config", 100),
    ),
    (
        "VM.Config.Memory",
        Feature::ReconcileConfig,
        Probe::ActionFails("set_config", 100),
    ),
    (
        "VM.Config.Options",
        Feature::SelftestTask,
        Probe::SelftestTask,
    ),
    (
        "VM.PowerMgmt",
        Feature::ReconcileStart,
        Probe::ActionFails("start", 101),
    ),
    ("VM.Allocate", Feature::GuestDestroy, Probe::DestroyFails),
    (
        "VM.Config.Disk",
        Feature::Resize,
        Probe::ActionFails("resize", 101),
    ),
    (
        "VM.Config.Network",
        Feature::Provision,
        Probe::ActionFails("guest_create", NEW_VMID),
    ),
    ("VM.Snapshot", Feature::SelftestTask, Probe::SelftestTask),
    // 200 is provisioned from 100's backup, whose net0 is on vmbr0: the restore task is
    // refused before any disk is made, and the new guest's config is removed.
    (
        "SDN.Use",
        Feature::Provision,
        Probe::ActionFails("guest_create", NEW_VMID),
    ),
];

/// Runs `probe` on a fresh simulator whose role lacks `privilege`; panics unless the
/// feature broke as the probe says.
fn assert_breaks(privilege: &str, probe: Probe) {
    let pve = pve_with_role(Some(privilege));
    let hub = fast_hub();
    let dir = Dir(common::tempdir("role", &privilege.replace('.', "-")));
    let cfg = config(&dir.0, &pve, &hub);
    // `selftest read` reads the token's own privileges and names the one missing.
    let read = selftest(&cfg, &["read"]);
    assert_eq!(read.status.code(), Some(1), "{}", out_text(&read));
    let stdout = String::from_utf8_lossy(&read.stdout).into_owned();
    let failed = stdout
        .lines()
        .find(|l| l.starts_with("FAIL  privileges"))
        .unwrap_or_else(|| panic!("a failed privileges step: {stdout}"));
    assert!(
        failed.split([' ', ';']).any(|w| w == privilege),
        "the step names {privilege}: {failed}"
    );
    assert!(
        stdout.contains(&format!("pveum role add {ROLE_NAME} ")),
        "the fix is printed with the failure: {stdout}"
    );
    match probe {
        Probe::SelftestTask => {
            let out = selftest(&cfg, &["task", "--vmid", "100"]);
            assert_eq!(out.status.code(), Some(1), "{}", out_text(&out));
            assert!(pve.snapshots(100).is_empty(), "no snapshot left behind");
        }
        Probe::ReportFails => {
            let mut agent = daemon(&dir.0, &cfg, &pve, &hub);
            agent.wait_for_event("report_failed", |_| true);
            assert!(hub.reports().is_empty(), "no report reached the hub");
            assert_eq!(agent.stop_with("TERM").code(), Some(0));
        }
        Probe::ReportEmpty(collection) => {
            let mut agent = daemon(&dir.0, &cfg, &pve, &hub);
            let reports = hub.wait_for_reports(1, common::agent::PATIENCE);
            agent.assert_alive();
            let r = reports.first().expect("a report");
            assert_eq!(r[collection], json!([]), "{collection} is empty: {r}");
            if collection != "guests" {
                assert!(!r["guests"].as_array().unwrap().is_empty(), "{r}");
            }
            if collection == "backups" {
                assert!(!r["storage_targets"].as_array().unwrap().is_empty(), "{r}");
            }
            assert_eq!(agent.stop_with("TERM").code(), Some(0));
        }
        Probe::ActionFails(action, vmid) => {
            let before = pve.guest_config(vmid);
            let mut agent = daemon(&dir.0, &cfg, &pve, &hub);
            let failed = agent.wait_for_event("action_failed", |e| {
                e.field("action") == action && e.field("vmid") == vmid.to_string()
            });
            assert_eq!(failed.field("transient"), "false", "{failed:?}");
            assert_eq!(agent.stop_with("TERM").code(), Some(0));
            match action {
                "start" => assert_eq!(pve.guest_status(vmid).as_deref(), Some("stopped")),
                "guest_create" => assert!(!pve.guest_ids().contains(&vmid), "no guest made"),
                _ => assert_eq!(pve.guest_config(vmid), before, "the config is unchanged"),
            }
        }
        Probe::SignedOpFails(op, outcome) => {
            match op {
                "snapshot_rollback" => {
                    queue_op(&dir.0, &pve, &hub, op, 105, &[("snapshot", SNAPSHOT_105)]);
                }
                "backup_delete" => queue_op(&dir.0, &pve, &hub, op, 102, &[("volid", BACKUP_102)]),
                _ => queue_op(
                    &dir.0,
                    &pve,
                    &hub,
                    op,
                    104,
                    &[("backup", BACKUP_104), ("stop", "1")],
                ),
            }
            let mut agent = spawn(&dir.0, &cfg);
            let handled = agent.wait_for_event("signed_op_handled", |_| true);
            assert_eq!(handled.field("op"), op, "{handled:?}");
            assert_eq!(handled.field("outcome"), outcome, "{handled:?}");
            assert_eq!(agent.stop_with("TERM").code(), Some(0));
            assert_eq!(cores(&pve, 105), Some(json!(4)), "105 not rolled back");
            assert!(
                pve.backups().iter().any(|b| b == BACKUP_102),
                "the backup stays"
            );
            assert_eq!(cores(&pve, 104), Some(json!(3)), "104 not restored over");
            assert_eq!(
                pve.guest_status(104).as_deref(),
                Some("running"),
                "nor stopped"
            );
        }
        Probe::RestoreFailsAfterStop => {
            queue_op(
                &dir.0,
                &pve,
                &hub,
                "restore_overwrite",
                104,
                &[("backup", BACKUP_104), ("stop", "1")],
            );
            let mut agent = spawn(&dir.0, &cfg);
            let handled = agent.wait_for_event("signed_op_handled", |_| true);
            assert_eq!(handled.field("op"), "restore_overwrite", "{handled:?}");
            assert_eq!(handled.field("outcome"), "failed", "{handled:?}");
            assert_eq!(agent.stop_with("TERM").code(), Some(0));
            assert_eq!(cores(&pve, 104), Some(json!(3)), "104 not restored over");
            assert_eq!(pve.guest_status(104).as_deref(), Some("stopped"));
            let config = pve.guest_config(104).expect("104 stays");
            assert_eq!(config.get("lock"), None, "no lock left: {config:?}");
            let refused = pve
                .tasks()
                .into_iter()
                .find(|t| t["type"] == "vzrestore" && t["id"] == "104")
                .expect("the restore task ran");
            assert_eq!(
                refused["exitstatus"],
                "unable to restore CT 104 - Permission check failed \
                 (/sdn/zones/localnetwork/vmbr0, SDN.Use)",
                "{refused}"
            );
        }
        Probe::DestroyFails => {
            let mut agent = daemon(&dir.0, &cfg, &pve, &hub);
            let handled = agent.wait_for_event("signed_op_handled", |_| true);
            assert_eq!(handled.field("outcome"), "failed", "{handled:?}");
            assert!(pve.guest_ids().contains(&103), "103 survives");
            assert_eq!(agent.stop_with("TERM").code(), Some(0));
        }
    }
}

#[test]
fn without_any_one_privilege_of_the_role_a_named_feature_breaks() {
    let role = role_privileges();
    let covered: Vec<&str> = CASES.iter().map(|(p, _, _)| *p).collect();
    let mut sorted = covered.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, role, "one case per privilege of the role, no other");
    let took = assert_each_breaks(CASES);
    eprintln!("matrix of {} cases: {took:?}", CASES.len());
}

/// For each case: the table charges the privilege to the feature, and without it the
/// feature breaks as the probe says. Returns how long all took.
fn assert_each_breaks(cases: &[(&str, Feature, Probe)]) -> std::time::Duration {
    let started = Instant::now();
    for (privilege, feature, probe) in cases {
        assert!(
            features_needing(privilege).contains(feature),
            "the table says {privilege} is needed by {}",
            feature.name()
        );
        let case = Instant::now();
        assert_breaks(privilege, *probe);
        eprintln!(
            "without {privilege}: {} broke in {:?}",
            feature.name(),
            case.elapsed()
        );
    }
    started.elapsed()
}

/// Each feature wired after the first role, a privilege it needs, and how it breaks
/// without it (the privilege's own row in [`CASES`] may name another feature).
const WIRED_LATER: &[(&str, Feature, Probe)] = &[
    (
        "VM.Allocate",
        Feature::Provision,
        Probe::ActionFails("guest_create", NEW_VMID),
    ),
    (
        "Datastore.AllocateSpace",
        Feature::Resize,
        Probe::ActionFails("resize", 101),
    ),
    (
        "VM.Snapshot",
        Feature::SnapshotRollback,
        Probe::SignedOpFails("snapshot_rollback", "failed"),
    ),
    // Without VM.Backup the backup is not even listed: refused before the nonce burns.
    (
        "VM.Backup",
        Feature::BackupDelete,
        Probe::SignedOpFails("backup_delete", "target_missing"),
    ),
    (
        "VM.PowerMgmt",
        Feature::RestoreOverwrite,
        Probe::SignedOpFails("restore_overwrite", "failed"),
    ),
    (
        "SDN.Use",
        Feature::RestoreOverwrite,
        Probe::RestoreFailsAfterStop,
    ),
];

#[test]
fn each_feature_wired_later_breaks_without_a_privilege_it_needs() {
    let took = assert_each_breaks(WIRED_LATER);
    eprintln!("{} later features: {took:?}", WIRED_LATER.len());
}

#[test]
fn every_api_call_of_the_client_has_a_row_and_every_row_a_call_or_a_pending_feature() {
    // The client's calls live in client.rs and, for creates and restores, create.rs;
    // storage capacity in capacity.rs and the task log in wait.rs.
    let src = ["client.rs", "create.rs", "capacity.rs", "wait.rs"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(format!("{}/src/proxmox/{f}", env!("CARGO_MANIFEST_DIR")))
                .unwrap()
        })
        .collect::<Vec<_>>()
        .join("\n");
    // A method whose doc opens with "`GET …", "`POST …" etc. makes one API call.
    let mut calls = Vec::new();
    let mut doc_opens_with_call = false;
    let mut in_doc = false;
    for line in src.lines().map(str::trim) {
        if let Some(doc) = line.strip_prefix("///") {
            if !in_doc {
                let d = doc.trim_start();
                doc_opens_with_call = ["`GET ", "`POST ", "`PUT ", "`DELETE "]
                    .iter()
                    .any(|m| d.starts_with(m));
            }
            in_doc = true;
            continue;
        }
        in_doc = false;
        if let Some(rest) = line.strip_prefix("pub fn ")
            && doc_opens_with_call
        {
            calls.push(rest.split('(').next().unwrap().to_owned());
        }
        doc_opens_with_call = false;
    }
    assert!(
        calls.len() >= 20,
        "the parse found the client's calls: {calls:?}"
    );
    for c in &calls {
        assert!(
            API_CALLS.iter().any(|r| r.client_fn == *c),
            "Client::{c} calls the API but has no row in src/proxmox/privileges/calls.rs"
        );
    }
    for row in API_CALLS {
        let exists = calls.iter().any(|c| c == row.client_fn);
        let pending = row.features.iter().all(|f| !f.wired());
        assert!(
            exists || pending,
            "{} is a row of a wired feature but the client has no such call",
            row.client_fn
        );
        assert!(!row.source.is_empty(), "{} names its source", row.client_fn);
    }
}

/// `{snapname}` and `{snap}` are one placeholder; the power verbs are one row there.
fn shape(path: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '{' => {
                depth += 1;
                out.push_str("{}");
            }
            '}' => depth -= 1,
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

#[test]
fn the_agents_table_and_the_simulators_table_agree_on_every_wired_call() {
    for row in API_CALLS
        .iter()
        .filter(|r| r.features.iter().any(|f| f.wired()))
    {
        let want = shape(row.path);
        let sim_rows: Vec<_> = ENDPOINT_CHECKS
            .iter()
            .filter(|s| s.method == row.method)
            .filter(|s| {
                let have = shape(s.path);
                have == want
                    || (have.ends_with("/status/{}")
                        && want.starts_with(have.trim_end_matches("{}")))
            })
            .collect();
        assert!(
            !sim_rows.is_empty(),
            "the simulator has no row for {} {}",
            row.method,
            row.path
        );
        for r in row.requires {
            if r.any_of.iter().all(|p| p.starts_with("VM.Config."))
                && !row.path.ends_with("/resize")
            {
                // A per-key config check: the simulator takes it from config_key_priv,
                // its row names each kind of key.
                let suffix = r.any_of[0].trim_start_matches("VM.Config.");
                assert!(
                    sim_rows.iter().any(|s| s
                        .any_of
                        .iter()
                        .any(|t| t.contains("per") && t.contains(suffix))),
                    "{} {}: no per-key row of the simulator names {suffix}",
                    row.method,
                    row.path
                );
                continue;
            }
            let found = sim_rows.iter().any(|s| {
                s.when != When::None
                    && s.acl == r.acl.pattern()
                    && s.any_of.len() == r.any_of.len()
                    && r.any_of.iter().all(|p| s.any_of.contains(p))
            });
            assert!(
                found,
                "{} {}: the simulator does not check {:?} on {}",
                row.method,
                row.path,
                r.any_of,
                r.acl.pattern()
            );
        }
        if row.requires.is_empty() {
            assert!(
                sim_rows.iter().all(|s| s.when == When::None
                    || (s.when == When::Filter && s.path.ends_with("/tasks"))),
                "{} {} needs nothing in the agent's table: {sim_rows:?}",
                row.method,
                row.path
            );
        }
    }
}

/// The text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in the README,
/// without a surrounding code fence.
fn readme_block(name: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let begin = format!("<!-- {name}:begin -->\n");
    let end = format!("<!-- {name}:end -->");
    let from = readme.find(&begin).expect("the README has the block") + begin.len();
    let to = from + readme[from..].find(&end).expect("the block ends");
    let block = &readme[from..to];
    block
        .strip_prefix("```sh\n")
        .and_then(|b| b.strip_suffix("```\n"))
        .unwrap_or(block)
        .to_owned()
}

#[test]
fn the_readme_recipe_and_table_are_the_tables_output() {
    assert_eq!(readme_block("pveum-recipe"), pveum_recipe("NODE"));
    assert_eq!(readme_block("role-table"), role_table_markdown());
}

/// A boot check that passes: the real one runs `pct exec` as root, which the token's
/// role has nothing to do with.
struct BootsFine;

impl felhom_agent::reconcile::BootCheck for BootsFine {
    fn boot_check(&self, _vmid: u32) -> Result<(), String> {
        Ok(())
    }
}

/// One restore test round, in process, under the recipe's role without `without` (if
/// any): guest 100 (with `net0`) and its backup, scratch vmids 9900–9901. The results
/// of the round, the guests left, and the scratch tags left in the journal.
fn restore_round_under_role(
    without: Option<&str>,
) -> (
    Vec<felhom_agent::reconcile::RestoreTestResult>,
    Vec<u32>,
    Vec<u32>,
) {
    use felhom_agent::config::{RestoreTestsConfig, parse_vmid_range};
    use felhom_agent::reconcile::{AuditLog, Gate, Journal, Queue, RestoreResults, RestoreTester};
    use std::sync::Arc;

    let pve = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web").running(true))
        .backup(100, "2026_11_20-03_00_00")
        .task_duration(std::time::Duration::from_millis(10))
        .start();
    apply_recipe(&pve, &pveum_recipe(&pve.node()));
    if let Some(p) = without {
        let rest: Vec<&str> = role_privileges().into_iter().filter(|r| *r != p).collect();
        pve.set_role(ROLE_NAME, &rest);
    }
    let dir = Dir(common::tempdir(
        "role-rt",
        &without.unwrap_or("all").replace('.', "-"),
    ));
    let journal = Arc::new(Journal::open(&dir.0.join("journal.log")).unwrap());
    let audit = Arc::new(AuditLog::open(&dir.0.join("audit.log")).unwrap());
    let gate = Arc::new(Gate::new("pve-a".into(), None, Arc::clone(&journal), audit));
    let tester = Arc::new(
        RestoreTester::new(
            "pve-a".into(),
            common::pinned_client(&pve),
            Arc::clone(&journal),
            gate,
            Queue::new(1),
            Arc::new(RestoreResults::open(
                &dir.0,
                Arc::new(felhom_agent::store::OsIo),
            )),
            Arc::new(BootsFine),
            RestoreTestsConfig {
                every_hours: 24,
                vmid_range: parse_vmid_range("9900-9901").unwrap(),
                storage: "local-lvm".into(),
                max_parallel: 1,
                min_free_memory_mib: 64,
                min_free_storage_gib: 1,
            },
            Shutdown::new(),
            Arc::new(SystemClock),
        )
        .with_wait(WaitOptions {
            initial: std::time::Duration::from_millis(5),
            cap: std::time::Duration::from_millis(50),
            timeout: std::time::Duration::from_secs(20),
        }),
    );
    let results = tester.run_round().unwrap();
    (results, pve.guest_ids(), journal.scratch_vmids())
}

#[test]
fn restore_tests_pass_under_the_role_and_fail_at_a_named_stage_without_its_privileges() {
    use felhom_agent::reconcile::{TestOutcome, TestStage};
    // Under exactly the role: restored, taken off the network, started, destroyed.
    let (results, guests, tags) = restore_round_under_role(None);
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].outcome, TestOutcome::Ok, "{results:?}");
    assert_eq!(results[0].scratch_vmid, Some(9900), "{results:?}");
    assert_eq!(guests, [100], "the scratch guest was destroyed");
    assert!(tags.is_empty(), "its provenance was released: {tags:?}");

    // Each privilege a restore test needs, and the stage it fails at without it.
    const CASES: &[(&str, TestStage)] = &[
        // Refused at request time: no guest made, nothing to destroy.
        ("VM.Allocate", TestStage::Restore),
        // Restored, but its net0 cannot be deleted: it is never started, and destroyed.
        ("VM.Config.Network", TestStage::Network),
        ("VM.PowerMgmt", TestStage::Start),
        // Refused in the restore task (100's backup has net0 on vmbr0): the new guest's
        // config is removed with it.
        ("SDN.Use", TestStage::Restore),
    ];
    for (privilege, stage) in CASES {
        assert!(
            features_needing(privilege).contains(&Feature::RestoreTest),
            "the table says restore tests need {privilege}"
        );
        let (results, guests, tags) = restore_round_under_role(Some(privilege));
        assert_eq!(results.len(), 1, "without {privilege}: {results:?}");
        let r = &results[0];
        assert_eq!(r.outcome, TestOutcome::Failed, "without {privilege}: {r:?}");
        assert_eq!(r.stage, Some(*stage), "without {privilege}: {r:?}");
        assert_eq!(guests, [100], "without {privilege}: nothing left behind");
        assert!(
            tags.is_empty(),
            "without {privilege}: no tag left: {tags:?}"
        );
    }
}
