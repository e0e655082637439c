//! The simulated Proxmox API: shapes, quirks, tasks and their effects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{call, enc, get, sim_with, wait_task};
use felhom_sim::{GuestSeed, ProxmoxSim};
use serde_json::{Value, json};

/// The UPID decode regex of pve-common's UPID.pm, checked field by field:
/// `^UPID:([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8,9}):`
/// `([0-9A-Fa-f]{8}):([^:\s/]+):([^:\s/]*):([^:\s/]+):$`
fn decode_upid(upid: &str) -> Option<Vec<String>> {
    let body = upid.strip_prefix("UPID:")?.strip_suffix(':')?;
    let f: Vec<&str> = body.split(':').collect();
    if f.len() != 7 {
        return None;
    }
    let node = f[0];
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    let node_ok = !node.is_empty()
        && alnum(node.as_bytes()[0])
        && alnum(*node.as_bytes().last()?)
        && node.bytes().all(|b| alnum(b) || b == b'-');
    let hex = |s: &str, lens: &[usize]| {
        lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let free = |s: &str| !s.contains(|c: char| c.is_whitespace() || c == '/');
    let ok = node_ok
        && hex(f[1], &[8])
        && hex(f[2], &[8, 9])
        && hex(f[3], &[8])
        && !f[4].is_empty()
        && free(f[4])
        && free(f[5])
        && !f[6].is_empty()
        && free(f[6]);
    ok.then(|| f.iter().map(|s| s.to_string()).collect())
}

fn post(sim: &ProxmoxSim, path: &str, form: &str) -> String {
    let r = call(sim, "POST", path, Some(form));
    assert_eq!(
        r.status,
        200,
        "{} {:?}",
        r.reason,
        String::from_utf8_lossy(&r.body)
    );
    r.data().as_str().unwrap().to_string()
}

fn task_log(sim: &ProxmoxSim, upid: &str) -> Vec<String> {
    get(sim, &format!("/nodes/pve/tasks/{}/log?limit=0", enc(upid)))
        .data()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["t"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn upids_are_genuine_and_carry_the_token_actor() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    let upid = post(&sim, "/nodes/pve/lxc/100/status/start", "");
    let fields = decode_upid(&upid).unwrap_or_else(|| panic!("bad UPID {upid}"));
    assert_eq!(fields[0], "pve");
    assert_eq!(fields[4], "vzstart");
    assert_eq!(fields[5], "100");
    assert_eq!(fields[6], "felhom-agent@pve!agent");
    // Uppercase hex.
    assert!(
        fields[1..4]
            .iter()
            .all(|h| !h.bytes().any(|b| b.is_ascii_lowercase()))
    );
    let starttime = u64::from_str_radix(&fields[3], 16).unwrap();
    let status = wait_task(&sim, &upid);
    assert_eq!(status["starttime"], starttime);
    assert_eq!(status["user"], "felhom-agent@pve");
    assert_eq!(status["tokenid"], "agent");
    assert_eq!(status["id"], "100");
    assert_eq!(status["type"], "vzstart");
    assert_eq!(status["pid"], u64::from_str_radix(&fields[1], 16).unwrap());
}

#[test]
fn start_runs_then_stops_ok_and_the_guest_runs_only_then() {
    let sim = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web"))
        .task_duration(std::time::Duration::from_secs(30))
        .start();
    let upid = post(&sim, "/nodes/pve/lxc/100/status/start", "");
    let r = get(&sim, &format!("/nodes/pve/tasks/{}/status", enc(&upid)));
    assert_eq!(r.data()["status"], "running");
    assert!(r.data().get("exitstatus").is_none());
    // The effect waits for the task.
    assert_eq!(sim.guest_status(100).as_deref(), Some("stopped"));
    sim.set_task_duration(std::time::Duration::from_millis(20));
    // Only new tasks get the new duration; stop this one through the API instead.
    let r = call(
        &sim,
        "DELETE",
        &format!("/nodes/pve/tasks/{}", enc(&upid)),
        None,
    );
    assert_eq!(r.status, 200);
    let st = wait_task(&sim, &upid);
    assert_eq!(st["exitstatus"], "received interrupt");
    assert_eq!(sim.guest_status(100).as_deref(), Some("stopped"));

    let upid = post(&sim, "/nodes/pve/lxc/100/status/start", "");
    let st = wait_task(&sim, &upid);
    assert_eq!(st["exitstatus"], "OK");
    assert_eq!(sim.guest_status(100).as_deref(), Some("running"));
    assert_eq!(task_log(&sim, &upid).last().unwrap(), "TASK OK");
    let row = get(&sim, "/nodes/pve/lxc/100/status/current").data();
    assert_eq!(row["status"], "running");
    assert!(row["pid"].is_u64());
    assert_eq!(row["ha"], json!({"managed": 0}));

    // Sync errors for the wrong state.
    let r = call(&sim, "POST", "/nodes/pve/lxc/100/status/start", Some(""));
    assert_eq!(r.status, 500);
    assert_eq!(r.reason, "CT 100 already running");
    let upid = post(&sim, "/nodes/pve/lxc/100/status/shutdown", "timeout=10");
    assert!(upid.contains(":vzshutdown:100:"));
    assert_eq!(wait_task(&sim, &upid)["exitstatus"], "OK");
    let r = call(&sim, "POST", "/nodes/pve/lxc/100/status/stop", Some(""));
    assert_eq!(r.reason, "CT 100 not running");
}

#[test]
fn description_reads_back_with_a_trailing_newline() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    let r = call(
        &sim,
        "PUT",
        "/nodes/pve/lxc/100/config",
        Some("description=Managed%20by%20agent%3A%20v1"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"data": null}));
    let cfg = get(&sim, "/nodes/pve/lxc/100/config").data();
    assert_eq!(cfg["description"], "Managed by agent: v1\n");
    assert_eq!(
        sim.guest_config(100).unwrap()["description"],
        "Managed by agent: v1\n"
    );
    assert!(
        sim.guest_conf_text(100)
            .unwrap()
            .starts_with("#Managed by agent%3A v1\n")
    );
    // Writing back what was read does not grow it.
    call(
        &sim,
        "PUT",
        "/nodes/pve/lxc/100/config",
        Some("description=Managed%20by%20agent%3A%20v1%0A"),
    );
    assert_eq!(
        get(&sim, "/nodes/pve/lxc/100/config").data()["description"],
        "Managed by agent: v1\n"
    );
    // Empty removes it.
    call(
        &sim,
        "PUT",
        "/nodes/pve/lxc/100/config",
        Some("description="),
    );
    assert!(
        get(&sim, "/nodes/pve/lxc/100/config")
            .data()
            .get("description")
            .is_none()
    );
}

#[test]
fn config_is_typed_like_pve() {
    let sim = sim_with(vec![
        GuestSeed::new(100, "web")
            .cores(4)
            .memory_mib(1024)
            .disk_gib(16),
    ]);
    assert_eq!(
        call(
            &sim,
            "PUT",
            "/nodes/pve/lxc/100/config",
            Some("cpulimit=1.5&onboot=1")
        )
        .status,
        200
    );
    let cfg = get(&sim, "/nodes/pve/lxc/100/config").data();
    assert_eq!(cfg["cores"], 4);
    assert_eq!(cfg["memory"], 1024);
    assert_eq!(cfg["cpulimit"], "1.5");
    assert_eq!(cfg["onboot"], 1);
    assert_eq!(cfg["hostname"], "web");
    assert_eq!(cfg["rootfs"], "local-lvm:vm-100-disk-0,size=16G");
    let digest = cfg["digest"].as_str().unwrap();
    assert_eq!(digest.len(), 40);
    assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
}

#[test]
fn a_locked_guest_refuses_config_put() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    sim.set_lock(100, Some("backup"));
    let r = call(&sim, "PUT", "/nodes/pve/lxc/100/config", Some("cores=4"));
    assert_eq!(r.status, 500);
    assert_eq!(r.reason, "CT is locked (backup)");
    assert_eq!(
        r.json(),
        json!({"data": null, "message": "CT is locked (backup)\n"})
    );
    assert_eq!(sim.guest_config(100).unwrap()["cores"], 2);
    assert_eq!(get(&sim, "/nodes/pve/lxc").data()[0]["lock"], "backup");
    sim.set_lock(100, None);
    assert_eq!(
        call(&sim, "PUT", "/nodes/pve/lxc/100/config", Some("cores=4")).status,
        200
    );
    assert_eq!(sim.guest_config(100).unwrap()["cores"], 4);
}

#[test]
fn config_put_checks_digest_delete_and_emptiness() {
    let sim = sim_with(vec![GuestSeed::new(100, "web").description("x")]);
    let digest = sim.guest_config(100).unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let r = call(
        &sim,
        "PUT",
        "/nodes/pve/lxc/100/config",
        Some("cores=3&digest=0000000000000000000000000000000000000000"),
    );
    assert_eq!(r.status, 500);
    assert_eq!(
        r.reason,
        "detected modified configuration - file changed by other user? Try again."
    );
    let r = call(
        &sim,
        "PUT",
        "/nodes/pve/lxc/100/config",
        Some(&format!("cores=3&digest={digest}")),
    );
    assert_eq!(r.status, 200);
    let r = call(&sim, "PUT", "/nodes/pve/lxc/100/config", Some("delete=foo"));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errors"]["delete"], "unknown option 'foo'");
    let r = call(
        &sim,
        "PUT",
        "/nodes/pve/lxc/100/config",
        Some("delete=memory"),
    );
    assert_eq!(r.reason, "unable to delete required option 'memory'");
    let r = call(
        &sim,
        "PUT",
        "/nodes/pve/lxc/100/config",
        Some("delete=description,swap"),
    );
    assert_eq!(r.status, 200);
    let cfg = sim.guest_config(100).unwrap();
    assert!(cfg.get("description").is_none() && cfg.get("swap").is_none());
    let r = call(&sim, "PUT", "/nodes/pve/lxc/100/config", Some(""));
    assert_eq!(r.reason, "no options specified");
}

#[test]
fn parameter_validation_is_400_with_errors() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    let r = get(&sim, "/nodes/pve/lxc/abc/config");
    assert_eq!(r.status, 400);
    assert_eq!(r.reason, "Parameter verification failed.");
    assert_eq!(
        r.json(),
        json!({"data": null, "errors": {"vmid": "type check ('integer') failed - got 'abc'"},
               "message": "Parameter verification failed.\n"})
    );
    let r = call(
        &sim,
        "PUT",
        "/nodes/pve/lxc/100/config",
        Some("onboot=true&cores=x&bogus=1"),
    );
    assert_eq!(r.status, 400);
    let errors = &r.json()["errors"];
    assert_eq!(
        errors["onboot"],
        "type check ('boolean') failed - got 'true'"
    );
    assert_eq!(errors["cores"], "type check ('integer') failed - got 'x'");
    assert_eq!(
        errors["bogus"],
        "property is not defined in schema and the schema does not allow additional properties"
    );
    // JSON bodies may say true.
    let mut c = common::conn(&sim);
    let r = c
        .call(
            "PUT",
            "/api2/json/nodes/pve/lxc/100/config",
            Some(("application/json", br#"{"onboot":true,"cores":3}"#)),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(sim.guest_config(100).unwrap()["onboot"], 1);
    assert_eq!(sim.guest_config(100).unwrap()["cores"], 3);
}

#[test]
fn unknown_guest_and_unknown_node() {
    let sim = sim_with(vec![]);
    let r = get(&sim, "/nodes/pve/lxc/999/config");
    assert_eq!(r.status, 500);
    assert_eq!(
        r.reason,
        "Configuration file 'nodes/pve/lxc/999.conf' does not exist"
    );
    let r = get(&sim, "/nodes/other/lxc");
    assert_eq!(r.status, 500);
    assert!(r.reason.starts_with("hostname lookup 'other' failed"));
}

#[test]
fn lists_and_node_status_have_pve_shapes() {
    let sim = sim_with(vec![
        GuestSeed::new(100, "web")
            .running(true)
            .memory_mib(2048)
            .disk_gib(10),
        GuestSeed::new(101, "db"),
    ]);
    let rows = get(&sim, "/nodes/pve/lxc").data();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let web = rows.iter().find(|r| r["vmid"] == 100).unwrap();
    assert!(web["vmid"].is_u64());
    assert_eq!(web["type"], "lxc");
    assert_eq!(web["status"], "running");
    assert_eq!(web["name"], "web");
    assert_eq!(web["maxmem"], 2048u64 << 20);
    assert_eq!(web["maxdisk"], 10u64 << 30);
    assert_eq!(web["cpus"], 2);
    let db = rows.iter().find(|r| r["vmid"] == 101).unwrap();
    assert_eq!(db["status"], "stopped");
    assert_eq!(db["mem"], 0);
    assert_eq!(db["uptime"], 0);
    assert!(db.get("pid").is_none());

    let st = get(&sim, "/nodes/pve/status").data();
    assert!(
        st["loadavg"]
            .as_array()
            .unwrap()
            .iter()
            .all(Value::is_string)
    );
    assert!(st["cpuinfo"]["mhz"].is_string());
    assert!(st["cpuinfo"]["cpus"].is_u64());
    for k in ["total", "used", "free", "available"] {
        assert!(st["memory"][k].is_u64(), "memory.{k}");
    }
    for k in ["total", "used", "free", "avail"] {
        assert!(st["rootfs"][k].is_u64(), "rootfs.{k}");
    }
    assert!(
        st["pveversion"]
            .as_str()
            .unwrap()
            .starts_with("pve-manager/9.2.11/")
    );
    assert!(st["uptime"].is_u64());

    let nodes = get(&sim, "/nodes").data();
    assert_eq!(nodes[0]["node"], "pve");
    assert_eq!(nodes[0]["status"], "online");
}

#[test]
fn permissions_at_request_time_and_at_task_time() {
    let sim = sim_with(vec![GuestSeed::new(100, "web"), GuestSeed::new(101, "db")]);
    sim.deny("/vms/100", "VM.PowerMgmt");
    let r = call(&sim, "POST", "/nodes/pve/lxc/100/status/start", Some(""));
    assert_eq!(r.status, 403);
    assert_eq!(r.reason, "Permission check failed (/vms/100, VM.PowerMgmt)");
    assert_eq!(
        r.json()["message"],
        "Permission check failed (/vms/100, VM.PowerMgmt)\n"
    );
    assert!(sim.tasks().is_empty());

    sim.deny_at_task_time("/vms/101", "VM.PowerMgmt");
    let upid = post(&sim, "/nodes/pve/lxc/101/status/start", "");
    let st = wait_task(&sim, &upid);
    assert_eq!(
        st["exitstatus"],
        "Permission check failed (/vms/101, VM.PowerMgmt)"
    );
    assert_eq!(
        task_log(&sim, &upid).last().unwrap(),
        "TASK ERROR: Permission check failed (/vms/101, VM.PowerMgmt)"
    );
    assert_eq!(sim.guest_status(101).as_deref(), Some("stopped"));

    // Lists drop what cannot be audited; ACLs propagate down the path.
    sim.deny("/vms", "VM.Audit");
    assert_eq!(get(&sim, "/nodes/pve/lxc").data(), json!([]));
    sim.allow_all();
    assert_eq!(
        get(&sim, "/nodes/pve/lxc").data().as_array().unwrap().len(),
        2
    );

    // A config PUT needs the per-key privilege.
    sim.deny("/vms/100", "VM.Config.Memory");
    let r = call(
        &sim,
        "PUT",
        "/nodes/pve/lxc/100/config",
        Some("memory=1024"),
    );
    assert_eq!(
        r.reason,
        "Permission check failed (/vms/100, VM.Config.Memory)"
    );
    assert_eq!(
        call(&sim, "PUT", "/nodes/pve/lxc/100/config", Some("cores=3")).status,
        200
    );
}

#[test]
fn lock_is_checked_inside_the_start_task() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    sim.set_lock(100, Some("backup"));
    let upid = post(&sim, "/nodes/pve/lxc/100/status/start", "");
    assert_eq!(
        wait_task(&sim, &upid)["exitstatus"],
        "CT is locked (backup)"
    );
    assert_eq!(sim.guest_status(100).as_deref(), Some("stopped"));
}

#[test]
fn warnings_and_injected_failures() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    sim.task_warnings(2);
    let upid = post(&sim, "/nodes/pve/lxc/100/status/start", "");
    assert_eq!(wait_task(&sim, &upid)["exitstatus"], "WARNINGS: 2");
    let log = task_log(&sim, &upid);
    assert_eq!(log.iter().filter(|l| l.starts_with("WARN: ")).count(), 2);
    assert_eq!(log.last().unwrap(), "TASK WARNINGS: 2");
    // Warnings are success: the guest started.
    assert_eq!(sim.guest_status(100).as_deref(), Some("running"));

    sim.fail_next_task("command 'lxc-stop -n 100' failed: exit code 1");
    let upid = post(&sim, "/nodes/pve/lxc/100/status/stop", "");
    assert_eq!(
        wait_task(&sim, &upid)["exitstatus"],
        "command 'lxc-stop -n 100' failed: exit code 1"
    );
    assert_eq!(
        task_log(&sim, &upid).last().unwrap(),
        "TASK ERROR: command 'lxc-stop -n 100' failed: exit code 1"
    );
    assert_eq!(sim.guest_status(100).as_deref(), Some("running"));
    // One-shot: the next stop works.
    let upid = post(&sim, "/nodes/pve/lxc/100/status/stop", "");
    assert_eq!(wait_task(&sim, &upid)["exitstatus"], "OK");
    assert_eq!(sim.guest_status(100).as_deref(), Some("stopped"));
}

#[test]
fn async_config_put_answers_a_upid_and_applies_at_task_end() {
    let sim = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web"))
        .task_duration(std::time::Duration::from_millis(30))
        .sync_config_put(false)
        .start();
    let r = call(&sim, "PUT", "/nodes/pve/lxc/100/config", Some("cores=6"));
    assert_eq!(r.status, 200);
    let upid = r.data().as_str().unwrap().to_string();
    assert_eq!(decode_upid(&upid).unwrap()[4], "vzconfig");
    assert_eq!(wait_task(&sim, &upid)["exitstatus"], "OK");
    assert_eq!(sim.guest_config(100).unwrap()["cores"], 6);

    // The per-key privilege can fail inside the task; the change then never lands.
    sim.deny_at_task_time("/vms/100", "VM.Config.Memory");
    let r = call(
        &sim,
        "PUT",
        "/nodes/pve/lxc/100/config",
        Some("memory=2048"),
    );
    let upid = r.data().as_str().unwrap().to_string();
    assert_eq!(
        wait_task(&sim, &upid)["exitstatus"],
        "Permission check failed (/vms/100, VM.Config.Memory)"
    );
    assert_eq!(sim.guest_config(100).unwrap()["memory"], 512);
}

#[test]
fn task_status_rejects_junk_and_unknown_upids() {
    let sim = sim_with(vec![]);
    let r = get(&sim, "/nodes/pve/tasks/junk/status");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["errors"],
        json!({"upid": "unable to parse worker upid"})
    );
    let r = get(
        &sim,
        &format!(
            "/nodes/pve/tasks/{}/status",
            enc("UPID:pve:0001A2B3:00C0FFEE:66A1B2C3:vzstart:100:root@pam:")
        ),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errors"], json!({"upid": "no such task"}));
}

#[test]
fn task_log_pages_and_task_list_filters() {
    let sim = sim_with(vec![GuestSeed::new(100, "web"), GuestSeed::new(101, "db")]);
    // A task that outlasts the checks below however slow the machine is; the simulator's
    // clock then ends it.
    sim.set_task_duration(std::time::Duration::from_secs(600));
    let dump = post(
        &sim,
        "/nodes/pve/vzdump",
        "vmid=100&storage=local&mode=snapshot&compress=zstd",
    );
    assert!(dump.contains(":vzdump:100:"));
    // While it runs: locked, listed as active only.
    assert_eq!(sim.guest_config(100).unwrap()["lock"], "backup");
    let active = get(&sim, "/nodes/pve/tasks?source=active").data();
    assert_eq!(active.as_array().unwrap().len(), 1);
    assert_eq!(active[0]["status"], "RUNNING");
    assert_eq!(get(&sim, "/nodes/pve/tasks").data(), json!([]));
    sim.advance_clock(std::time::Duration::from_secs(601));
    sim.set_task_duration(felhom_sim::DEFAULT_TASK_DURATION);
    wait_task(&sim, &dump);
    assert!(sim.guest_config(100).unwrap().get("lock").is_none());

    let all = task_log(&sim, &dump);
    assert!(all[0].starts_with("INFO: starting new backup job: vzdump 100"));
    assert_eq!(all.last().unwrap(), "TASK OK");
    let r = get(
        &sim,
        &format!("/nodes/pve/tasks/{}/log?start=1&limit=2", enc(&dump)),
    );
    let page = r.json();
    assert_eq!(page["total"], all.len());
    assert_eq!(
        page["data"],
        json!([{"n": 2, "t": all[1]}, {"n": 3, "t": all[2]}])
    );

    let start = post(&sim, "/nodes/pve/lxc/101/status/start", "");
    wait_task(&sim, &start);
    let list = get(&sim, "/nodes/pve/tasks").json();
    assert_eq!(list["total"], 2);
    assert_eq!(list["data"][0]["upid"], start.as_str(), "newest first");
    assert_eq!(list["data"][1]["status"], "OK");
    assert!(list["data"][1]["endtime"].is_u64());
    let only = get(&sim, "/nodes/pve/tasks?vmid=100").data();
    assert_eq!(only.as_array().unwrap().len(), 1);
    let only = get(&sim, "/nodes/pve/tasks?typefilter=vzstart").data();
    assert_eq!(only[0]["upid"], start.as_str());
    let none = get(&sim, "/nodes/pve/tasks?since=4000000000").data();
    assert_eq!(none, json!([]));
}

#[test]
fn vzdump_creates_a_backup_that_restores() {
    let sim = sim_with(vec![
        GuestSeed::new(100, "web").cores(3).description("prod"),
    ]);
    let upid = post(
        &sim,
        "/nodes/pve/vzdump",
        "vmid=100&storage=local&compress=zstd",
    );
    assert_eq!(wait_task(&sim, &upid)["exitstatus"], "OK");
    let content = get(&sim, "/nodes/pve/storage/local/content?content=backup").data();
    let rows = content.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    let volid = rows[0]["volid"].as_str().unwrap().to_string();
    assert!(
        volid.starts_with("local:backup/vzdump-lxc-100-") && volid.ends_with(".tar.zst"),
        "{volid}"
    );
    assert_eq!(rows[0]["format"], "tar.zst");
    assert_eq!(rows[0]["subtype"], "lxc");
    assert!(rows[0]["size"].is_u64());
    assert_eq!(sim.backups(), vec![volid.clone()]);

    // Without force onto an existing guest: refused.
    let r = call(
        &sim,
        "POST",
        "/nodes/pve/lxc",
        Some(&format!("vmid=100&ostemplate={volid}&restore=1")),
    );
    assert_eq!(r.status, 500);
    assert_eq!(r.reason, "CT 100 already exists on node 'pve'");

    // Onto a new vmid: the guest exists with lock create while the task runs.
    let upid = post(
        &sim,
        "/nodes/pve/lxc",
        &format!("vmid=200&ostemplate={volid}&restore=1&storage=local-lvm"),
    );
    assert!(upid.contains(":vzrestore:200:"));
    assert_eq!(sim.guest_config(200).unwrap()["lock"], "create");
    assert_eq!(wait_task(&sim, &upid)["exitstatus"], "OK");
    let cfg = sim.guest_config(200).unwrap();
    assert_eq!(cfg["cores"], 3);
    assert_eq!(cfg["description"], "prod\n");
    assert!(cfg.get("lock").is_none());
    assert_eq!(cfg["rootfs"], "local-lvm:vm-200-disk-0,size=8G");

    // With force onto a stopped existing guest: overwritten.
    call(&sim, "PUT", "/nodes/pve/lxc/100/config", Some("cores=1"));
    let upid = post(
        &sim,
        "/nodes/pve/lxc",
        &format!("vmid=100&ostemplate={volid}&restore=1&force=1&storage=local-lvm"),
    );
    assert_eq!(wait_task(&sim, &upid)["exitstatus"], "OK");
    assert_eq!(sim.guest_config(100).unwrap()["cores"], 3);
}

#[test]
fn seeded_backups_are_listed_and_a_failed_fresh_restore_leaves_nothing() {
    let sim = ProxmoxSim::builder()
        .task_duration(std::time::Duration::from_millis(30))
        .backup(100, "2024_05_01-10_00_00")
        .start();
    let volid = "local:backup/vzdump-lxc-100-2024_05_01-10_00_00.tar.zst";
    assert_eq!(sim.backups(), vec![volid.to_string()]);
    let rows = get(&sim, "/nodes/pve/storage/local/content").data();
    assert_eq!(rows[0]["ctime"], 1_714_557_600u64);
    sim.fail_next_task("unable to restore CT 100 - no space left on device");
    let upid = post(
        &sim,
        "/nodes/pve/lxc",
        &format!("vmid=100&ostemplate={volid}&restore=1&storage=local-lvm"),
    );
    assert!(
        sim.guest_status(100).is_some(),
        "placeholder exists while the task runs"
    );
    wait_task(&sim, &upid);
    assert_eq!(sim.guest_status(100), None);
    // `local` holds no container directories (pve-container's check_and_activate_storage).
    let r = call(
        &sim,
        "POST",
        "/nodes/pve/lxc",
        Some(&format!("vmid=100&ostemplate={volid}&restore=1")),
    );
    assert_eq!(r.status, 400);
    // A missing archive is found missing by the worker, which then fails.
    let upid = post(
        &sim,
        "/nodes/pve/lxc",
        "vmid=100&ostemplate=local:backup/nope.tar&restore=1&storage=local-lvm",
    );
    let status = wait_task(&sim, &upid);
    assert_ne!(status["exitstatus"], "OK");
    assert_eq!(sim.guest_status(100), None);
}

#[test]
fn pbs_snapshots_are_listed_as_pbsplugin_lists_them() {
    let sim = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web"))
        .pbs_backup(100, "2024-05-01T10:00:00Z", Some("ok"))
        .pbs_backup(100, "2024-05-02T10:00:00Z", Some("failed"))
        .pbs_backup(100, "2024-05-03T10:00:00Z", None)
        .start();
    let storages = get(&sim, "/storage").data();
    let pbs = storages
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["storage"] == "pbs")
        .unwrap();
    assert_eq!(pbs["type"], "pbs");
    assert_eq!(pbs["content"], "backup");
    assert!(pbs.get("path").is_none() && pbs["datastore"] == "store1");
    let rows = get(&sim, "/nodes/pve/storage/pbs/content?content=backup").data();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["volid"], "pbs:backup/ct/100/2024-05-01T10:00:00Z");
    assert_eq!(rows[0]["format"], "pbs-ct");
    assert_eq!(rows[0]["ctime"], 1_714_557_600u64);
    assert!(
        rows[0].get("subtype").is_none(),
        "PBSPlugin sets no subtype"
    );
    assert_eq!(rows[0]["verification"]["state"], "ok");
    assert!(
        rows[0]["verification"]["upid"]
            .as_str()
            .unwrap()
            .starts_with("UPID:pbs:")
    );
    assert_eq!(rows[1]["verification"]["state"], "failed");
    assert!(rows[2].get("verification").is_none(), "never verified");
    // Seeds without PBS keep the two default storages.
    let plain = ProxmoxSim::builder().start();
    assert_eq!(get(&plain, "/storage").data().as_array().unwrap().len(), 2);

    // vzdump onto the PBS storage makes a snapshot there, never verified yet.
    let upid = post(&sim, "/nodes/pve/vzdump", "vmid=100&storage=pbs");
    assert_eq!(wait_task(&sim, &upid)["exitstatus"], "OK");
    let rows = get(&sim, "/nodes/pve/storage/pbs/content").data();
    let new = rows.as_array().unwrap().last().unwrap();
    assert!(
        new["volid"]
            .as_str()
            .unwrap()
            .starts_with("pbs:backup/ct/100/"),
        "{new}"
    );
    assert_eq!(new["format"], "pbs-ct");
    assert!(new.get("verification").is_none());
    assert!(
        task_log(&sim, &upid)
            .iter()
            .any(|l| l.starts_with("INFO: creating Proxmox Backup Server archive 'ct/100/"))
    );
}

#[test]
fn vzdump_permission_is_checked_in_the_task() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    sim.deny("/vms/100", "VM.Backup");
    let upid = post(&sim, "/nodes/pve/vzdump", "vmid=100");
    assert_eq!(
        wait_task(&sim, &upid)["exitstatus"],
        "Permission check failed (/vms/100, VM.Backup)"
    );
    assert!(sim.backups().is_empty());
    sim.deny("/storage/local", "Datastore.AllocateSpace");
    let r = call(&sim, "POST", "/nodes/pve/vzdump", Some("vmid=100"));
    assert_eq!(r.status, 403);
    assert_eq!(
        r.reason,
        "Permission check failed (/storage/local, Datastore.AllocateSpace)"
    );
}

#[test]
fn snapshots_create_rollback_delete() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    let upid = post(
        &sim,
        "/nodes/pve/lxc/100/snapshot",
        "snapname=before&description=pre%20upgrade",
    );
    assert!(upid.contains(":vzsnapshot:100:"));
    assert_eq!(sim.guest_config(100).unwrap()["lock"], "snapshot");
    assert_eq!(wait_task(&sim, &upid)["exitstatus"], "OK");
    assert_eq!(sim.snapshots(100), vec!["before".to_string()]);
    let list = get(&sim, "/nodes/pve/lxc/100/snapshot").data();
    assert_eq!(list[0]["name"], "before");
    assert_eq!(list[0]["description"], "pre upgrade\n");
    assert_eq!(list[1]["name"], "current");
    assert_eq!(list[1]["parent"], "before");
    assert_eq!(list[1]["running"], 0);

    // Same name again: accepted, fails in the task.
    let upid = post(&sim, "/nodes/pve/lxc/100/snapshot", "snapname=before");
    assert_eq!(
        wait_task(&sim, &upid)["exitstatus"],
        "snapshot name 'before' already used"
    );
    let r = call(
        &sim,
        "POST",
        "/nodes/pve/lxc/100/snapshot",
        Some("snapname=current"),
    );
    assert_eq!(
        r.reason,
        "unable to use snapshot name 'current' (reserved name)"
    );

    call(&sim, "PUT", "/nodes/pve/lxc/100/config", Some("cores=8"));
    let upid = post(&sim, "/nodes/pve/lxc/100/snapshot/before/rollback", "");
    assert!(upid.contains(":vzrollback:100:"));
    assert_eq!(wait_task(&sim, &upid)["exitstatus"], "OK");
    assert_eq!(sim.guest_config(100).unwrap()["cores"], 2);
    assert_eq!(sim.guest_config(100).unwrap()["parent"], "before");

    let upid = post(&sim, "/nodes/pve/lxc/100/snapshot/nope/rollback", "");
    assert_eq!(
        wait_task(&sim, &upid)["exitstatus"],
        "snapshot 'nope' does not exist"
    );

    let r = call(&sim, "DELETE", "/nodes/pve/lxc/100/snapshot/before", None);
    let upid = r.data().as_str().unwrap().to_string();
    assert!(upid.contains(":vzdelsnapshot:100:"));
    assert_eq!(wait_task(&sim, &upid)["exitstatus"], "OK");
    assert!(sim.snapshots(100).is_empty());
    assert!(sim.guest_config(100).unwrap().get("parent").is_none());
}

#[test]
fn destroy_refuses_a_running_guest_and_removes_a_stopped_one() {
    let sim = sim_with(vec![
        GuestSeed::new(100, "web").running(true),
        GuestSeed::new(101, "db"),
    ]);
    let r = call(&sim, "DELETE", "/nodes/pve/lxc/100", None);
    assert_eq!(r.status, 500);
    assert_eq!(r.reason, "unable to destroy CT 100 - container is running");
    let r = call(&sim, "DELETE", "/nodes/pve/lxc/101?purge=1", None);
    let upid = r.data().as_str().unwrap().to_string();
    assert!(upid.contains(":vzdestroy:101:"));
    assert_eq!(sim.guest_config(101).unwrap()["lock"], "destroyed");
    assert_eq!(wait_task(&sim, &upid)["exitstatus"], "OK");
    assert_eq!(sim.guest_status(101), None);
    assert_eq!(get(&sim, "/nodes/pve/lxc/101/config").status, 500);
    assert_eq!(sim.guest_ids(), vec![100]);
}

#[test]
fn storage_endpoints() {
    let sim = sim_with(vec![GuestSeed::new(100, "web")]);
    let cfg = get(&sim, "/storage").data();
    let names: Vec<&str> = cfg
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["storage"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["local", "local-lvm"]);
    let node = get(&sim, "/nodes/pve/storage?content=backup").data();
    assert_eq!(node.as_array().unwrap().len(), 1);
    assert_eq!(node[0]["storage"], "local");
    assert_eq!(node[0]["active"], 1);
    assert!(node[0]["total"].is_u64() && node[0]["used"].is_u64() && node[0]["avail"].is_u64());
    assert!(node[0]["used_fraction"].is_f64());
    let r = get(&sim, "/nodes/pve/storage?storage=nope");
    assert_eq!(r.json()["errors"], json!({"storage": "No such storage."}));
    let lvm = get(&sim, "/nodes/pve/storage/local-lvm/content").data();
    assert_eq!(lvm[0]["volid"], "local-lvm:vm-100-disk-0");
}

#[test]
fn concurrent_clients_each_get_consistent_answers() {
    let sim = sim_with(
        (100..108)
            .map(|id| GuestSeed::new(id, &format!("ct{id}")))
            .collect(),
    );
    std::thread::scope(|s| {
        for id in 100..108u32 {
            let sim = &sim;
            s.spawn(move || {
                let mut c = common::conn(sim);
                for cores in 1..=10 {
                    let body = format!("cores={cores}");
                    let r = c
                        .call(
                            "PUT",
                            &format!("/api2/json/nodes/pve/lxc/{id}/config"),
                            Some(("application/x-www-form-urlencoded", body.as_bytes())),
                        )
                        .unwrap();
                    assert_eq!(r.status, 200);
                    let r = c
                        .call(
                            "GET",
                            &format!("/api2/json/nodes/pve/lxc/{id}/config"),
                            None,
                        )
                        .unwrap();
                    assert_eq!(r.data()["cores"], cores);
                }
            });
        }
    });
    assert_eq!(sim.requests().len(), 8 * 20);
    assert!((100..108).all(|id| sim.guest_config(id).unwrap()["cores"] == 10));
}

#[test]
fn config_of_a_snapshot_and_node_audit() {
    let sim = sim_with(vec![GuestSeed::new(100, "web").cores(2)]);
    let upid = post(&sim, "/nodes/pve/lxc/100/snapshot", "snapname=s1");
    wait_task(&sim, &upid);
    call(&sim, "PUT", "/nodes/pve/lxc/100/config", Some("cores=6"));
    let snap = get(&sim, "/nodes/pve/lxc/100/config?snapshot=s1").data();
    assert_eq!(snap["cores"], 2);
    assert!(snap["snaptime"].is_u64());
    assert_eq!(get(&sim, "/nodes/pve/lxc/100/config").data()["cores"], 6);
    let r = get(&sim, "/nodes/pve/lxc/100/config?snapshot=nope");
    assert_eq!(r.reason, "snapshot 'nope' does not exist");
    assert!(sim.guest_conf_text(100).unwrap().contains("\n[s1]\n"));

    sim.deny("/nodes/pve", "Sys.Audit");
    let r = get(&sim, "/nodes/pve/status");
    assert_eq!(r.status, 403);
    assert_eq!(r.reason, "Permission check failed (/nodes/pve, Sys.Audit)");
}

/// One shutdown case: the guest obeys (`Some(seconds it takes)`) or ignores (`None`) a
/// clean shutdown; the request's form; how long the task must still run and when it
/// ends; how it ends; whether the guest is stopped then; whether lxc-stop's failure is
/// in the log.
struct ShutdownCase {
    name: &'static str,
    clean_secs: Option<u64>,
    form: &'static str,
    still_running_at: u64,
    ends_by: u64,
    exitstatus: &'static str,
    stopped: bool,
    lxc_stop_failed: bool,
}

const SHUTDOWN_CASES: &[ShutdownCase] = &[
    ShutdownCase {
        name: "a clean guest stops by itself",
        clean_secs: Some(20),
        form: "timeout=120&forceStop=1",
        still_running_at: 19,
        ends_by: 21,
        exitstatus: "OK",
        stopped: true,
        lxc_stop_failed: false,
    },
    ShutdownCase {
        name: "forceStop kills a guest that ignores it at the timeout",
        clean_secs: None,
        form: "timeout=120&forceStop=1",
        still_running_at: 119,
        ends_by: 121,
        exitstatus: "OK",
        stopped: true,
        lxc_stop_failed: false,
    },
    ShutdownCase {
        name: "without forceStop the worker gives up after the timeout plus its own wait",
        clean_secs: None,
        form: "timeout=60",
        still_running_at: 124,
        ends_by: 126,
        exitstatus: "container did not stop",
        stopped: false,
        lxc_stop_failed: true,
    },
    ShutdownCase {
        name: "Proxmox's default timeout is 60 s",
        clean_secs: None,
        form: "forceStop=1",
        still_running_at: 59,
        ends_by: 61,
        exitstatus: "OK",
        stopped: true,
        lxc_stop_failed: false,
    },
    ShutdownCase {
        name: "a slow clean guest still counts while the worker polls after lxc-stop gave up",
        clean_secs: Some(90),
        form: "timeout=60",
        still_running_at: 89,
        ends_by: 91,
        exitstatus: "OK",
        stopped: true,
        lxc_stop_failed: true,
    },
];

fn task_status(sim: &ProxmoxSim, upid: &str) -> Value {
    get(sim, &format!("/nodes/pve/tasks/{}/status", enc(upid))).data()
}

#[test]
fn shutdown_waits_for_the_guest_then_kills_it_only_with_force_stop() {
    for case in SHUTDOWN_CASES {
        let sim = ProxmoxSim::builder()
            .guest(
                GuestSeed::new(100, "web")
                    .running(true)
                    .ignores_shutdown(case.clean_secs.is_none()),
            )
            .task_duration(std::time::Duration::from_secs(case.clean_secs.unwrap_or(1)))
            .start();
        let upid = post(&sim, "/nodes/pve/lxc/100/status/shutdown", case.form);
        assert!(upid.contains(":vzshutdown:100:"), "{}", case.name);
        sim.advance_clock(std::time::Duration::from_secs(case.still_running_at));
        assert_eq!(
            task_status(&sim, &upid)["status"],
            "running",
            "{}",
            case.name
        );
        assert_eq!(
            sim.guest_status(100).as_deref(),
            Some("running"),
            "{}",
            case.name
        );
        sim.advance_clock(std::time::Duration::from_secs(
            case.ends_by - case.still_running_at,
        ));
        let st = task_status(&sim, &upid);
        assert_eq!(st["status"], "stopped", "{}", case.name);
        assert_eq!(st["exitstatus"], case.exitstatus, "{}", case.name);
        let want = if case.stopped { "stopped" } else { "running" };
        assert_eq!(
            sim.guest_status(100).as_deref(),
            Some(want),
            "{}",
            case.name
        );
        let log = task_log(&sim, &upid);
        let lxc_stop = "command 'lxc-stop -n 100 --nokill --timeout 60' failed: exit code 1";
        assert_eq!(
            log.iter().any(|l| l == lxc_stop),
            case.lxc_stop_failed,
            "{}: {log:?}",
            case.name
        );
        let last = if case.exitstatus == "OK" {
            "TASK OK".to_string()
        } else {
            format!("TASK ERROR: {}", case.exitstatus)
        };
        assert_eq!(log.last(), Some(&last), "{}", case.name);
        // The task's times move with the simulated clock, as Proxmox's would.
        let row = get(&sim, "/nodes/pve/tasks?typefilter=vzshutdown").data()[0].clone();
        let took = row["endtime"].as_u64().unwrap() - row["starttime"].as_u64().unwrap();
        assert!(
            (case.still_running_at..=case.ends_by).contains(&took),
            "{}: {took}",
            case.name
        );
    }
}

#[test]
fn shutdown_with_timeout_zero_neither_waits_nor_kills() {
    let sim = ProxmoxSim::builder()
        .guest(
            GuestSeed::new(100, "web")
                .running(true)
                .ignores_shutdown(true),
        )
        .start();
    let upid = post(
        &sim,
        "/nodes/pve/lxc/100/status/shutdown",
        "timeout=0&forceStop=1",
    );
    sim.advance_clock(std::time::Duration::from_secs(86_400));
    assert_eq!(task_status(&sim, &upid)["status"], "running");
    assert_eq!(sim.guest_status(100).as_deref(), Some("running"));
    // The guest obeys again: the waiting worker sees it go once it does.
    let sim = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web").running(true))
        .task_duration(std::time::Duration::from_secs(5))
        .start();
    let upid = post(&sim, "/nodes/pve/lxc/100/status/shutdown", "timeout=0");
    sim.advance_clock(std::time::Duration::from_secs(6));
    assert_eq!(task_status(&sim, &upid)["exitstatus"], "OK");
    assert_eq!(sim.guest_status(100).as_deref(), Some("stopped"));
}

#[test]
fn node_memory_used_never_exceeds_the_host_however_far_guests_overcommit() {
    // 300 running guests of 2 GiB: their limits are 600 GiB, their use 150 GiB, on a
    // 64 GiB host.
    let mut b = ProxmoxSim::builder();
    for vmid in 100..400 {
        b = b.guest(GuestSeed::new(vmid, "big").running(true).memory_mib(2048));
    }
    let sim = b.start();
    let st = get(&sim, "/nodes/pve/status").data();
    let m = &st["memory"];
    let (total, used) = (m["total"].as_u64().unwrap(), m["used"].as_u64().unwrap());
    let (free, available) = (
        m["free"].as_u64().unwrap(),
        m["available"].as_u64().unwrap(),
    );
    assert!(used < total, "{m}");
    assert_eq!(
        used + available,
        total,
        "used is total minus available: {m}"
    );
    assert!(free <= available, "{m}");
    let swap = &st["swap"];
    assert_eq!(
        swap["used"].as_u64().unwrap() + swap["free"].as_u64().unwrap(),
        swap["total"].as_u64().unwrap()
    );
    assert!(
        swap["used"].as_u64().unwrap() > 0,
        "the excess is in swap: {swap}"
    );
    let node = get(&sim, "/nodes").data()[0].clone();
    assert!(node["mem"].as_u64().unwrap() <= node["maxmem"].as_u64().unwrap());
    assert_eq!(node["mem"].as_u64().unwrap(), used);

    // An idle host reports its own use only, and nothing swapped.
    let idle = sim_with(vec![GuestSeed::new(100, "web")]);
    let st = get(&idle, "/nodes/pve/status").data();
    assert!(st["memory"]["used"].as_u64().unwrap() < st["memory"]["total"].as_u64().unwrap() / 2);
    assert_eq!(st["swap"]["used"], 0);
}
