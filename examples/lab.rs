//! The lab: the agent end to end against the bundled Proxmox and hub simulators.
//!
//!     cargo run --example lab
//!
//! It starts both simulators on loopback (real HTTPS), writes a config into a temp
//! directory, and runs the real `felhom-agent` binary as child processes: the Proxmox
//! selftests, an operator's signed op checked offline, one hub report, then the daemon
//! with a desired-state file: drift fixed, an unsigned destroy held, the same destroy
//! signed with a freshly minted key executed once, its replay refused, and a kill -9
//! while a guest that ignores its shutdown waits out the timeout, recovered on restart
//! without re-sending it; the hub as the source of intent; the operator's kit
//! (`status`, `pause`/`resume`, `audit` and the metrics textfile); a guest provisioned
//! from a backup and a signed `restore_overwrite` of it (stopped first); the operator's
//! `op new`; both selftests under exactly the Proxmox role the agent's calls need, and
//! one privilege less; a root disk grown, another's shrink refused, and a signed
//! `backup_delete`; restore tests, passing under exactly the role and failing at stage
//! `restore` without `VM.Allocate`; last, an emergency signer rotation signed by two recovery keys,
//! after which the old operational key is refused and the new one's destroy runs. Each
//! step prints a
//! plain line; any surprise exits non-zero.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use felhom_agent::base::{Clock, SystemClock, Timestamp};
use felhom_agent::reconcile::Journal;
use felhom_sim::{CertChoice, DEFAULT_TOKEN_SECRET, GuestSeed, HubSim, ProxmoxSim};
use serde_json::json;

/// How long the lab's guests get to shut down before Proxmox stops them hard.
const LAB_SHUTDOWN_TIMEOUT_SECONDS: u64 = 3;

fn say(line: impl AsRef<str>) {
    println!("lab: {}", line.as_ref());
}

fn fail(why: impl AsRef<str>) -> ExitCode {
    eprintln!("lab: FAILED: {}", why.as_ref());
    ExitCode::FAILURE
}

/// Builds the agent binary with the same profile as this example and returns its path.
fn agent_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/examples/lab → target/<profile>/felhom-agent
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the target directory")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "--bin", "felhom-agent"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let st = build.status().map_err(|e| format!("cargo build: {e}"))?;
    if !st.success() {
        return Err("cargo build --bin felhom-agent failed".into());
    }
    Ok(profile_dir.join("felhom-agent"))
}

fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .output()
        .expect("the agent binary runs")
}

/// The config digest of guest `vmid` in the last report `hub` received: what an
/// operator signs for.
fn reported_digest(hub: &HubSim, vmid: u32) -> Option<String> {
    hub.reports().last().and_then(|r| {
        r["guests"]
            .as_array()?
            .iter()
            .find(|g| g["vmid"] == vmid)?
            .get("digest")?
            .as_str()
            .map(str::to_owned)
    })
}

fn indent(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect()
}

fn main() -> ExitCode {
    let bin = match agent_binary() {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let dir = std::env::temp_dir().join(format!("felhom-lab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("state")).unwrap();
    for d in [&dir, &dir.join("state")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let code = lab(&bin, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    code
}

fn lab(bin: &Path, dir: &Path) -> ExitCode {
    let pve = ProxmoxSim::builder()
        .guest(
            GuestSeed::new(100, "web")
                .running(true)
                .cores(2)
                .description("web"),
        )
        .guest(GuestSeed::new(101, "db").cores(4).memory_mib(2048))
        .guest(GuestSeed::new(102, "scratch"))
        .backup(100, "2026_11_21-03_00_00")
        .task_duration(Duration::from_millis(150))
        .start();
    let hub = HubSim::start();
    say(format!(
        "Proxmox simulator at {} (node {}, 3 guests)",
        pve.url(),
        pve.node()
    ));
    say(format!("hub simulator at {}", hub.url()));

    let secret = dir.join("pve-token");
    std::fs::write(&secret, DEFAULT_TOKEN_SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = dir.join("hub-key");
    std::fs::write(&key, hub.key()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ca = dir.join("hub-ca.pem");
    std::fs::write(&ca, CertChoice::ca_pem()).unwrap();
    let signer_pub = include_str!("../vectors/sshsig/keys/ed25519.pub").trim();
    // A freshly minted operator key, allow-listed below next to the committed one.
    let fresh_key = dir.join("fresh-operator");
    let minted = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "lab-operator", "-f"])
        .arg(&fresh_key)
        .stderr(Stdio::null())
        .status();
    if !minted.is_ok_and(|s| s.success()) {
        return fail("ssh-keygen -t ed25519 failed (is openssh-client installed?)");
    }
    let fresh_pub = std::fs::read_to_string(dir.join("fresh-operator.pub")).unwrap();
    let desired = dir.join("desired.json");
    // The description reads back from Proxmox as "web\n": not drift.
    std::fs::write(
        &desired,
        json!({"generation": 1, "guests": [
            {"vmid": 100, "run": "running", "spec": {"cores": 4}, "description": "web"},
            {"vmid": 101, "run": "running"}
        ]})
        .to_string(),
    )
    .unwrap();
    let config = json!({
        "host_id": "pve-a",
        "state_dir": dir.join("state").display().to_string(),
        "log": {"level": "info"},
        "proxmox": {
            "url": pve.url(), "node": pve.node(), "token_id": "felhom-agent@pve!agent",
            "token_secret_file": secret.display().to_string(),
            "tls": {"fingerprint_sha256": pve.fingerprint()}, "timeout_seconds": 10
        },
        "hub": {
            "url": hub.url(), "api_key_file": key.display().to_string(),
            "poll_seconds": 60, "timeout_seconds": 10,
            "tls": {"ca_file": ca.display().to_string()}
        },
        "authz": {"signers": [
            {"key_id": "ops-2026", "role": "operational", "public_key": signer_pub},
            {"key_id": "lab-fresh", "role": "operational", "public_key": fresh_pub.trim()}
        ]},
        "reconcile": {
            "desired_file": desired.display().to_string(),
            "shutdown_timeout_seconds": LAB_SHUTDOWN_TIMEOUT_SECONDS
        }
    });
    let cfg_path = dir.join("agent.json");
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    std::fs::set_permissions(&cfg_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = cfg_path.to_str().unwrap();
    say(format!(
        "config written to {cfg} (secrets in 0600 files, Proxmox pinned by SHA-256)"
    ));

    // 1. Read-only selftest.
    let out = run(bin, &["selftest", "read", "--config", cfg]);
    print!("{}", indent(&out.stdout));
    if out.status.code() != Some(0) {
        return fail(format!("selftest read exited {:?}", out.status.code()));
    }
    say("selftest read passed: every read endpoint decoded");

    // 2. Reversible mutation round trip on guest 100.
    let run_state = pve.guest_status(100);
    let out = run(bin, &["selftest", "task", "--vmid", "100", "--config", cfg]);
    print!("{}", indent(&out.stdout));
    if out.status.code() != Some(0) {
        return fail(format!("selftest task exited {:?}", out.status.code()));
    }
    if !pve.snapshots(100).is_empty() {
        return fail("selftest task left a snapshot behind");
    }
    if pve.guest_status(100) != run_state {
        return fail(format!(
            "selftest task left guest 100 {:?}, it was {run_state:?}",
            pve.guest_status(100)
        ));
    }
    say(format!(
        "selftest task passed: {} mutations, guest 100 left as it was",
        pve.mutations().len()
    ));

    // 3. An operator signs a destroy of guest 102 as it is now (its config digest);
    // the agent checks it offline (burns no nonce).
    let now = SystemClock.now().unix();
    let Some(digest_102) = pve.guest_digest(102) else {
        return fail("the simulator has no guest 102");
    };
    let blob = format!(
        r#"{{"op":"guest_destroy","host_id":"pve-a","guest_id":"102","guest_digest":"{digest_102}","params":{{"purge":"1"}},"key_id":"ops-2026","nonce":"9f86d081884c7d659a2feaa0c55ad015","not_before":"{}","expires_at":"{}"}}"#,
        Timestamp(now - 60),
        Timestamp(now + 1800)
    );
    let blob_path = dir.join("destroy-102.json");
    std::fs::write(&blob_path, &blob).unwrap();
    let signing_key = dir.join("operator-key");
    std::fs::write(&signing_key, include_str!("../vectors/sshsig/keys/ed25519")).unwrap();
    std::fs::set_permissions(&signing_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let signed = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", "felhom-op-v1", "-f"])
        .arg(&signing_key)
        .arg(&blob_path)
        .stderr(Stdio::null())
        .status();
    match signed {
        Ok(s) if s.success() => {}
        _ => return fail("ssh-keygen -Y sign failed (is openssh-client installed?)"),
    }
    let sig = format!("{}.sig", blob_path.display());
    // The hub holds this signature back; step 8 delivers it after the vmid was reused.
    let held_sig = std::fs::read_to_string(&sig).unwrap_or_default();
    let blob_arg = blob_path.display().to_string();
    let out = run(
        bin,
        &[
            "verify", "--blob", &blob_arg, "--sig", &sig, "--config", cfg,
        ],
    );
    print!("{}", indent(&out.stdout));
    if out.status.code() != Some(0) {
        return fail("a freshly signed op was refused");
    }
    std::fs::write(&blob_path, blob.replace("\"102\"", "\"101\"")).unwrap();
    let out = run(
        bin,
        &[
            "verify", "--blob", &blob_arg, "--sig", &sig, "--config", cfg,
        ],
    );
    print!("{}", indent(&out.stdout));
    if out.status.code() != Some(1) {
        return fail("a tampered op was not refused");
    }
    say("verify: the signed destroy verified; the same signature over a changed guest was refused");

    // 4. One host report to the hub.
    let out = run(bin, &["selftest", "hub", "--config", cfg]);
    if out.status.code() != Some(0) {
        print!("{}", indent(&out.stderr));
        return fail("selftest hub failed");
    }
    say(format!(
        "selftest hub: the hub accepted a report of {} guests",
        pve.guest_ids().len()
    ));

    // 5. The daemon with a desired-state file, an unsigned destroy waiting at the hub.
    let now = SystemClock.now().unix();
    let destroy = format!(
        r#"{{"op":"guest_destroy","host_id":"pve-a","guest_id":"102","guest_digest":"{digest_102}","params":{{"purge":"1"}},"key_id":"lab-fresh","nonce":"4b2f0c1d9e8a7b6c5d4e3f2a1b0c9d8e","not_before":"{}","expires_at":"{}"}}"#,
        Timestamp(now - 60),
        Timestamp(now + 1800)
    );
    hub.queue_signed_op(destroy.as_bytes(), None);
    let audit = dir.join("state").join("audit.log");
    let audited = |word: &str| {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .matches(&format!("\"decision\":\"{word}\""))
            .count()
    };
    let deletes = || {
        pve.mutations()
            .iter()
            .filter(|m| m.method == "DELETE" && m.path.ends_with("/lxc/102"))
            .count()
    };
    let mutations_before = pve.mutations().len();
    let reports_before = hub.reports().len();
    let mut daemon = match Daemon::start(bin, cfg) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    if !daemon.wait("a report accepted", || hub.reports().len() > reports_before) {
        return fail(daemon.stop_with_log("the daemon did not report within 20 s"));
    }
    say("daemon: first report accepted by the hub");
    if !daemon.wait("drift fixed", || {
        pve.guest_status(101).as_deref() == Some("running")
            && pve.guest_config(100).and_then(|c| c.get("cores").cloned()) == Some(json!(4))
    }) {
        return fail(daemon.stop_with_log("drift was not fixed within 20 s"));
    }
    let config_writes: Vec<_> = pve
        .mutations()
        .into_iter()
        .skip(mutations_before)
        .filter(|m| m.method == "PUT")
        .collect();
    if config_writes.len() != 1
        || config_writes[0]
            .form
            .iter()
            .any(|(k, _)| k == "description")
    {
        return fail(daemon.stop_with_log("expected one config write without the description"));
    }
    say(
        "reconcile: guest 101 started, guest 100 set to 4 cores; the description's newline was not drift",
    );
    if !daemon.wait("pending_signature audited", || {
        audited("pending_signature") == 1
    }) {
        return fail(daemon.stop_with_log("the unsigned destroy was not held"));
    }
    if deletes() != 0 || !pve.guest_ids().contains(&102) {
        return fail(daemon.stop_with_log("the unsigned destroy reached Proxmox"));
    }
    say(
        "signed ops: the destroy of guest 102 without a signature is held: pending_signature, no DELETE",
    );
    if let Err(e) = daemon.stop() {
        return fail(e);
    }

    // 6. The same destroy signed with the freshly minted key: executed once. The operator
    // signs for the digest the host report shows for guest 102.
    let reported_digest = reported_digest(&hub, 102);
    if reported_digest.as_deref() != Some(digest_102.as_str()) {
        return fail(format!(
            "the report shows guest 102's digest as {reported_digest:?}, not {digest_102}"
        ));
    }
    let blob_path = dir.join("destroy-102-fresh.json");
    std::fs::write(&blob_path, &destroy).unwrap();
    let signed = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", "felhom-op-v1", "-f"])
        .arg(&fresh_key)
        .arg(&blob_path)
        .stderr(Stdio::null())
        .status();
    if !signed.is_ok_and(|s| s.success()) {
        return fail("ssh-keygen -Y sign with the fresh key failed");
    }
    let sig = std::fs::read_to_string(format!("{}.sig", blob_path.display())).unwrap();
    let executed_id = hub.queue_signed_op(destroy.as_bytes(), Some(&sig));
    let mut daemon = match Daemon::start(bin, cfg) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    if !daemon.wait("guest 102 destroyed", || {
        !pve.guest_ids().contains(&102) && audited("executed") == 1
    }) {
        return fail(daemon.stop_with_log("the signed destroy did not run"));
    }
    if deletes() != 1 {
        return fail(daemon.stop_with_log(format!("expected one DELETE, saw {}", deletes())));
    }
    say(
        "signed ops: the same destroy signed with a fresh key for the digest the report shows is executed once (one DELETE, guest 102 gone)",
    );

    // 7. Its replay: delivered again, skipped by the applied nonce.
    hub.queue_signed_op(destroy.as_bytes(), Some(&sig));
    let before = hub.reports().len();
    // The next report announces it; SIGTERM and restart makes that report at once.
    if let Err(e) = daemon.stop() {
        return fail(e);
    }
    let mut daemon = match Daemon::start(bin, cfg) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    if !daemon.wait("replay handled", || {
        hub.reports().len() > before && audited("skipped") == 1
    }) {
        return fail(daemon.stop_with_log("the replay was not refused"));
    }
    if deletes() != 1 {
        return fail(daemon.stop_with_log("the replay reached Proxmox"));
    }
    say("signed ops: the replay is refused (nonce already applied), still one DELETE");
    let mut logs = match daemon.stop() {
        Ok(log) => log,
        Err(e) => return fail(e),
    };

    // 8. Proxmox reuses vmids: 102 goes to a new customer, and the hub delivers the
    // destroy of the old 102 it held back since step 3. Signed for the old guest's
    // digest, it is refused guest_changed and the new guest survives.
    pve.add_guest(GuestSeed::new(102, "new-customer").running(false));
    hub.queue_signed_op(blob.as_bytes(), Some(&held_sig));
    let mut daemon = match Daemon::start(bin, cfg) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    if !daemon.wait("the held destroy refused", || audited("guest_changed") == 1) {
        return fail(daemon.stop_with_log("the held destroy of a reused vmid was not refused"));
    }
    if deletes() != 1 || !pve.guest_ids().contains(&102) {
        return fail(daemon.stop_with_log("the held destroy reached the new guest 102"));
    }
    say(
        "signed ops: vmid 102 reused by a new guest; the held destroy of the old one is refused guest_changed, no DELETE",
    );
    match daemon.stop() {
        Ok(log) => logs.push_str(&log),
        Err(e) => return fail(e),
    }

    // 9. kill -9 while a task runs: the restart's Recover finishes it, nothing runs twice.
    // Guest 101 ignores its shutdown: Proxmox stops it hard once the timeout passes.
    pve.set_task_duration(Duration::from_secs(2));
    pve.set_ignores_shutdown(101, true);
    std::fs::write(
        &desired,
        json!({"generation": 2, "guests": [
            {"vmid": 100, "run": "running", "spec": {"cores": 4}, "description": "web"},
            {"vmid": 101, "run": "stopped"}
        ]})
        .to_string(),
    )
    .unwrap();
    let journal = dir.join("state").join("journal.log");
    let in_flight = || {
        Journal::open_read_only(&journal)
            .map(|view| view.in_flight())
            .unwrap_or_default()
    };
    let posts = |action: &str| {
        let path = format!("/lxc/101/status/{action}");
        pve.mutations()
            .iter()
            .filter(|m| m.method == "POST" && m.path.ends_with(&path))
            .count()
    };
    let stops = || posts("shutdown");
    let mut daemon = match Daemon::start(bin, cfg) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    if !daemon.wait("the shutdown task running, its UPID journaled", || {
        stops() == 1 && matches!(in_flight().as_slice(), [op] if op.upid.is_some())
    }) {
        return fail(daemon.stop_with_log("the stop of guest 101 never got in flight"));
    }
    logs.push_str(&daemon.kill_9());
    let held = in_flight();
    if held.len() != 1 || pve.guest_status(101).as_deref() != Some("running") {
        return fail("expected the stop in flight and guest 101 still running after kill -9");
    }
    say(format!(
        "kill -9: the daemon killed while guest 101 ignores its shutdown ({} in flight, UPID journaled)",
        held[0].op_id
    ));
    let mut daemon = match Daemon::start(bin, cfg) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    if !daemon.wait("the stop recovered", || {
        pve.guest_status(101).as_deref() == Some("stopped") && in_flight().is_empty()
    }) {
        return fail(daemon.stop_with_log("Recover did not resolve the stop"));
    }
    match daemon.stop() {
        Ok(log) => logs.push_str(&log),
        Err(e) => return fail(e),
    }
    if stops() != 1 || posts("stop") != 0 {
        return fail(format!(
            "expected one shutdown POST and no hard stop, saw {} and {}",
            stops(),
            posts("stop")
        ));
    }
    let out = run(bin, &["journal", "--in-flight", "--config", cfg]);
    if out.status.code() != Some(0) {
        print!("{}", indent(&out.stderr));
        return fail("felhom-agent journal --in-flight failed");
    }
    say(format!(
        "restart: Recover resolved the shutdown from its journaled UPID; guest 101 stopped hard at the {LAB_SHUTDOWN_TIMEOUT_SECONDS} s timeout, one shutdown POST; `journal --in-flight`: {}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
    ));
    // 10. The hub becomes the source of intent: reconcile.source "hub". The daemon
    // starts on the hub's generation 3; then, while it runs, the hub publishes
    // generation 4 (guest 100 back to 2 cores, guest 101 running) and the event stream
    // brings it between reports.
    let mut hub_config = config.clone();
    hub_config["reconcile"] = json!({
        "source": "hub",
        "shutdown_timeout_seconds": LAB_SHUTDOWN_TIMEOUT_SECONDS
    });
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&hub_config).unwrap()).unwrap();
    pve.set_task_duration(Duration::from_millis(150));
    pve.set_ignores_shutdown(101, false);
    hub.publish_desired_state(&json!({"generation": 3, "guests": [
        {"vmid": 100, "run": "running", "spec": {"cores": 4}, "description": "web"},
        {"vmid": 101, "run": "stopped"}
    ]}));
    let reports_before = hub.reports().len();
    let mut daemon = match Daemon::start(bin, cfg) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    if !daemon.wait("generation 3 fetched and a report accepted", || {
        hub.desired_state_fetches().len() == 1 && hub.reports().len() > reports_before
    }) {
        return fail(daemon.stop_with_log("the daemon did not fetch the hub's document"));
    }
    let reports_at_publish = hub.reports().len();
    let published = Instant::now();
    hub.publish_desired_state(&json!({"generation": 4, "guests": [
        {"vmid": 100, "run": "running", "spec": {"cores": 2}, "description": "web"},
        {"vmid": 101, "run": "running"}
    ]}));
    let converged = || {
        pve.guest_status(101).as_deref() == Some("running")
            && pve.guest_config(100).and_then(|c| c.get("cores").cloned()) == Some(json!(2))
    };
    if !daemon.wait("the hub's generation 4 converged", converged) {
        return fail(daemon.stop_with_log("the hub's desired state did not converge"));
    }
    let took = published.elapsed();
    let cache = dir.join("state").join("desired.json");
    let cached = std::fs::read(&cache)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["generation"].as_u64());
    if cached != Some(4) {
        return fail(daemon.stop_with_log(format!("state/desired.json holds {cached:?}")));
    }
    say(format!(
        "hub-fed: the hub published generation 4 while the daemon ran; the event stream brought it and guest 100 went to 2 cores, 101 running, {:.2} s after the publish, with {} report(s) in between; cached in state/desired.json",
        took.as_secs_f64(),
        hub.reports().len() - reports_at_publish
    ));

    // 10b. The signed destroy of step 6 reached the hub as an outcome; the hub
    // acknowledges it through the event stream and the agent stops reporting it.
    let reported = hub
        .signed_op_results()
        .into_iter()
        .any(|r| r["id"] == executed_id.as_str() && r["outcome"] == "executed");
    if !reported {
        return fail(daemon.stop_with_log(format!(
            "the hub never heard {executed_id} executed: {:?}",
            hub.signed_op_results()
        )));
    }
    let results_file = dir.join("state").join("op_results.json");
    let kept = |id: &str| {
        std::fs::read_to_string(&results_file)
            .unwrap_or_default()
            .contains(&format!("\"{id}\""))
    };
    let acked = Instant::now();
    hub.ack_signed_op_results_by_event(&[executed_id.as_str()]);
    if !daemon.wait("the acknowledged result dropped", || !kept(&executed_id)) {
        return fail(daemon.stop_with_log("the acknowledgement was not applied"));
    }
    say(format!(
        "outcomes: the hub saw {executed_id} executed in signed_op_results; its acknowledgement (by event) dropped it from state/op_results.json in {:.2} s",
        acked.elapsed().as_secs_f64()
    ));
    match daemon.stop() {
        Ok(log) => logs.push_str(&log),
        Err(e) => return fail(e),
    }

    // 11. A stale document: the hub announces generation 5 but serves generation 2 (a
    // rollback below the 4 the agent holds).
    hub.publish_desired_bytes(
        json!({"generation": 2, "guests": [{"vmid": 100, "run": "running", "spec": {"cores": 8}}]})
            .to_string()
            .into_bytes(),
        5,
    );
    let started = Instant::now();
    let mut daemon = match Daemon::start(bin, cfg) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    if !daemon.wait("the rollback refused", || audited("desired_rollback") == 1) {
        return fail(daemon.stop_with_log("the stale document was not refused"));
    }
    let took = started.elapsed();
    match daemon.stop() {
        Ok(log) => logs.push_str(&log),
        Err(e) => return fail(e),
    }
    if pve.guest_config(100).and_then(|c| c.get("cores").cloned()) != Some(json!(2)) {
        return fail("the stale document's spec was applied");
    }
    say(format!(
        "hub-fed: generation 2 served after 4 is refused and audited desired_rollback in {:.2} s; guest 100 kept at 2 cores",
        took.as_secs_f64()
    ));

    // 12. The hub goes down; guest 101 is stopped behind the agent's back; the agent
    // restarts and converges toward its cached document, never toward empty.
    let hub_key = hub.key();
    hub.shutdown();
    pve.set_running(101, false);
    let started = Instant::now();
    let mut daemon = match Daemon::start(bin, cfg) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    if !daemon.wait("converged from the cache", || {
        pve.guest_status(101).as_deref() == Some("running")
    }) {
        return fail(daemon.stop_with_log("the cached desired state did not converge"));
    }
    let took = started.elapsed();
    match daemon.stop() {
        Ok(log) => logs.push_str(&log),
        Err(e) => return fail(e),
    }
    say(format!(
        "hub-fed: with the hub down, a restart converged from the cache in {:.2} s (guest 101 running again; guests kept: {:?})",
        took.as_secs_f64(),
        pve.guest_ids()
    ));
    // 13. The operator's kit: status, pause/resume, audit and the metrics textfile, on
    // the daemon running with the hub still down.
    let mut daemon = match Daemon::start(bin, cfg) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let status_json = |bin: &Path| {
        let out = run(bin, &["status", "--json", "--config", cfg]);
        let v = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default();
        (out.status.code(), v)
    };
    if !daemon.wait("status says the hub report failed", || {
        let (code, v) = status_json(bin);
        code == Some(1) && v["reasons"].to_string().contains("hub report failed")
    }) {
        return fail(daemon.stop_with_log("status did not turn degraded with the hub down"));
    }
    say("kit: with the hub down, `status` exits 1 (degraded) naming the failed report");
    let out = run(
        bin,
        &["pause", "--reason", "lab maintenance", "--config", cfg],
    );
    if out.status.code() != Some(0) {
        return fail(daemon.stop_with_log(format!("pause: {}", indent(&out.stderr))));
    }
    let (_, v) = status_json(bin);
    if v["status"]["hold"]["paused"]["reason"] != "lab maintenance" {
        return fail(daemon.stop_with_log(format!("status does not show the pause: {v}")));
    }
    let audited_code = |code: &str| {
        let out = run(bin, &["audit", "--json", "--code", code, "--config", cfg]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0)
    };
    if !daemon.wait("the daemon audited the pause", || {
        audited_code("paused") == 1
    }) {
        return fail(daemon.stop_with_log("the pause was not audited"));
    }
    let out = run(bin, &["resume", "--config", cfg]);
    if out.status.code() != Some(0)
        || !daemon.wait("the daemon audited the resume", || {
            audited_code("resumed") == 1
        })
    {
        return fail(daemon.stop_with_log("the resume was not taken or not audited"));
    }
    say(
        "kit: `pause --reason` showed in `status` at once; the running daemon audited the pause and the `resume` (`audit --code paused|resumed`)",
    );
    let metrics = dir.join("state").join("metrics.textfile");
    let counted = |t: &str| {
        t.contains("# TYPE felhom_agent_hub_rounds_total counter")
            && t.contains("felhom_agent_hub_rounds_total{result=\"failed\"}")
    };
    if !daemon.wait("the metrics count the failed hub rounds", || {
        counted(&std::fs::read_to_string(&metrics).unwrap_or_default())
    }) {
        let text = std::fs::read_to_string(&metrics).unwrap_or_default();
        return fail(daemon.stop_with_log(format!("metrics.textfile: {text}")));
    }
    let text = std::fs::read_to_string(&metrics).unwrap_or_default();
    let status_file =
        std::fs::read_to_string(dir.join("state").join("status.json")).unwrap_or_default();
    for (what, t) in [("metrics.textfile", &text), ("status.json", &status_file)] {
        if t.contains(DEFAULT_TOKEN_SECRET) || t.contains(&hub_key) {
            return fail(daemon.stop_with_log(format!("a secret appeared in {what}")));
        }
    }
    say(format!(
        "kit: state/metrics.textfile has {} lines (failed hub rounds counted); no secret in it or in status.json",
        text.lines().count()
    ));
    match daemon.stop() {
        Ok(log) => logs.push_str(&log),
        Err(e) => return fail(e),
    }
    let (code, _) = status_json(bin);
    if code != Some(3) {
        return fail(format!("status after the stop exited {code:?}, not 3"));
    }
    say("kit: after SIGTERM `status` exits 3 (not running)");
    // 14–15. Provisioning from a backup, then a signed restore_overwrite.
    if let Err(e) = guests_from_birth(bin, dir, &pve, &config, &cfg_path, &mut logs) {
        return fail(e);
    }
    if logs.contains(DEFAULT_TOKEN_SECRET) || logs.contains(&hub_key) {
        return fail("a secret appeared in the daemon's log");
    }
    say("daemon: SIGTERM → exit 0 each time; no secret in its log");

    // 16. The operator's kit: `op new` prints the blob to sign (the guest's digest read
    // from Proxmox now, a fresh nonce), the fresh key signs it as printed, `verify`
    // accepts it; every command answers `--help`.
    let out = run(
        bin,
        &[
            "op",
            "new",
            "guest_destroy",
            "--guest",
            "100",
            "--param",
            "purge=1",
            "--valid",
            "10m",
            "--key-id",
            "lab-fresh",
            "--config",
            cfg,
        ],
    );
    if out.status.code() != Some(0) {
        return fail(format!(
            "op new exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let template = dir.join("op-new.json");
    std::fs::write(&template, &out.stdout).unwrap();
    let signed = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", "felhom-op-v1", "-f"])
        .arg(&fresh_key)
        .arg(&template)
        .stderr(Stdio::null())
        .status();
    if !signed.is_ok_and(|s| s.success()) {
        return fail("ssh-keygen -Y sign of the op new blob failed");
    }
    let (t, ts) = (
        template.display().to_string(),
        format!("{}.sig", template.display()),
    );
    let out = run(
        bin,
        &[
            "verify", "--blob", &t, "--sig", &ts, "--json", "--config", cfg,
        ],
    );
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if out.status.code() != Some(0)
        || verdict["result"] != "verified"
        || verdict["guest_digest"].as_str() != pve.guest_digest(100).as_deref()
    {
        return fail(format!("verify refused the op new blob: {verdict}"));
    }
    say(format!(
        "op new: a guest_destroy template for 100 (digest {}, nonce {}) signed as printed by the fresh key, verify --json: verified",
        verdict["guest_digest"].as_str().unwrap_or("?"),
        verdict["nonce"].as_str().unwrap_or("?")
    ));
    for c in felhom_agent::cli::table::COMMANDS {
        let mut args: Vec<&str> = c.name.split(' ').collect();
        args.push("--help");
        let out = run(bin, &args);
        if out.status.code() != Some(0) || !out.stdout.starts_with(b"Usage: felhom-agent ") {
            return fail(format!(
                "`{} --help` exited {:?}",
                c.name,
                out.status.code()
            ));
        }
    }
    say(format!(
        "help: all {} commands answer COMMAND --help",
        felhom_agent::cli::table::COMMANDS.len()
    ));
    // 17. The Proxmox role, on a simulator of its own.
    if let Err(e) = role_step(bin, dir, &secret) {
        return fail(e);
    }
    // 18. The catalogue and the root disk, self-contained: a new hub publishes a
    // document that grows guest 101's root disk and asks to shrink guest 100's (refused
    // shrink_refused, audited once, never sent), and delivers a signed backup_delete of
    // guest 100's backup (executed once); `plan` then shows the refused shrink.
    if let Err(e) = catalogue_step(bin, dir, &pve, &config, &fresh_key) {
        return fail(e);
    }
    // 18b. The role covers what was wired after it: on a simulator of its own, under
    // exactly the role, guest 200 is provisioned from 100's backup with a host name and
    // a 10 GiB root disk, then grown to 12 GiB; without VM.Config.Network the same
    // create is refused naming it, and nothing is made.
    if let Err(e) = role_wired_step() {
        return fail(e);
    }
    // 19–21. Restore tests: a backup proven by restoring and booting it, one that fails, and a
    // scratch guest cleaned up after kill -9 (simulators of their own).
    if let Err(e) = restore_tests_lab(bin, dir) {
        return fail(e);
    }
    // 21b. Restore tests under exactly the role (a simulator of its own): a round passes;
    // without VM.Allocate, or without SDN.Use on the backup's bridge, it fails at stage
    // restore and leaves nothing behind.
    if let Err(e) = role_restore_tests_step(dir) {
        return fail(e);
    }
    // 22, last, since it changes who may sign: signer rotation. After a leak, two recovery
    // keys rotate the signers.
    let rotation = Rotation {
        bin,
        dir,
        pve: &pve,
        cfg_path: &cfg_path,
        base: &hub_config,
        key_file: &key,
    };
    let new_hub_key = match rotation.run() {
        Ok((log, key)) => {
            logs.push_str(&log);
            key
        }
        Err(e) => return fail(e),
    };
    if logs.contains(DEFAULT_TOKEN_SECRET) || logs.contains(&hub_key) || logs.contains(&new_hub_key)
    {
        return fail("a secret appeared in the daemon's log");
    }
    say("all steps passed");
    ExitCode::SUCCESS
}

/// Steps 14 and 15, on a hub of their own (the lab's first hub is down by now) and a
/// desired-state file: guest 120 is provisioned from guest 100's backup (a restore the
/// agent journals as its own `created_by_agent` transaction), then an operator signs a
/// `restore_overwrite` of guest 120 with `stop`, and the daemon stops it and restores
/// the backup over it (reconcile's next pass starts it again: it is desired running).
fn guests_from_birth(
    bin: &Path,
    dir: &Path,
    pve: &ProxmoxSim,
    config: &serde_json::Value,
    cfg_path: &Path,
    logs: &mut String,
) -> Result<(), String> {
    let hub = HubSim::start();
    let key = dir.join("hub-key-2");
    std::fs::write(&key, hub.key()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let backup = "local:backup/vzdump-lxc-100-2026_11_21-03_00_00.tar.zst";
    let desired = dir.join("desired-provision.json");
    std::fs::write(
        &desired,
        json!({"generation": 1, "guests": [
            {"vmid": 120, "source": {"backup": backup}, "storage": "local-lvm",
             "hostname": "web-restored", "rootfs_bytes": 12_u64 << 30,
             "run": "running", "description": "restored from web's backup"}
        ]})
        .to_string(),
    )
    .unwrap();
    let mut cfg = config.clone();
    cfg["hub"]["url"] = json!(hub.url());
    cfg["hub"]["api_key_file"] = json!(key.display().to_string());
    cfg["reconcile"] = json!({
        "desired_file": desired.display().to_string(),
        "shutdown_timeout_seconds": LAB_SHUTDOWN_TIMEOUT_SECONDS
    });
    std::fs::write(cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let cfg = cfg_path.to_str().unwrap();

    let journal_path = dir.join("state").join("journal.log");
    // The op of `class` on guest 120 that ended last, as the journal on disk says.
    let settled = |class: &str| {
        let view = Journal::open_read_only(&journal_path).ok()?;
        if !view.in_flight().is_empty() {
            return None;
        }
        let id = view
            .history()
            .iter()
            .rev()
            .find(|r| r.vmid == 120 && r.class.as_str() == class)?
            .op_id
            .clone();
        view.latest(&id)
    };

    // 14. Provisioned from a backup.
    let started = Instant::now();
    let mut daemon = Daemon::start(bin, cfg)?;
    if !daemon.wait("guest 120 provisioned and running", || {
        pve.guest_status(120).as_deref() == Some("running")
            && settled("guest_create").is_some_and(|r| r.state.is_terminal())
    }) {
        return Err(daemon.stop_with_log("guest 120 was not provisioned"));
    }
    let took = started.elapsed();
    logs.push_str(&daemon.stop()?);
    let conf = pve.guest_config(120).unwrap_or_default();
    if conf.get("hostname") != Some(&json!("web-restored")) {
        return Err(format!("guest 120 has the wrong config: {conf:?}"));
    }
    let create = settled("guest_create").ok_or("no guest_create op journaled")?;
    say(format!(
        "provisioning: guest 120 restored from {backup} in {:.2} s ({}, rootfs {}), then started; op {} {} with its created_by_agent provenance journaled before the POST and ended once settled",
        took.as_secs_f64(),
        conf.get("hostname")
            .map(|v| v.to_string())
            .unwrap_or_default(),
        conf.get("rootfs")
            .map(|v| v.to_string())
            .unwrap_or_default(),
        create.op_id,
        create.state.as_str()
    ));

    // 15. A signed restore_overwrite of the running guest 120, with stop.
    pve.set_config_value(120, "cores", Some("5"));
    let digest = pve.guest_digest(120).ok_or("guest 120 has no digest")?;
    let now = SystemClock.now().unix();
    let blob = format!(
        r#"{{"op":"restore_overwrite","host_id":"pve-a","guest_id":"120","guest_digest":"{digest}","params":{{"backup":"{backup}","stop":"1"}},"key_id":"ops-2026","nonce":"3c59dc048e8850243be8079a5c74d079","not_before":"{}","expires_at":"{}"}}"#,
        Timestamp(now - 60),
        Timestamp(now + 1800)
    );
    let blob_path = dir.join("restore-120.json");
    std::fs::write(&blob_path, &blob).unwrap();
    let signed = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", "felhom-op-v1", "-f"])
        .arg(dir.join("operator-key"))
        .arg(&blob_path)
        .stderr(Stdio::null())
        .status();
    if !signed.is_ok_and(|s| s.success()) {
        return Err("ssh-keygen -Y sign of the restore failed".into());
    }
    let sig = std::fs::read_to_string(format!("{}.sig", blob_path.display())).unwrap();
    let id = hub.queue_signed_op(blob.as_bytes(), Some(&sig));
    let restores = || {
        pve.mutations()
            .iter()
            .filter(|m| m.method == "POST" && m.path == "/nodes/pve/lxc")
            .count()
    };
    let before = restores();
    let started = Instant::now();
    let mut daemon = Daemon::start(bin, cfg)?;
    if !daemon.wait("the restore executed", || {
        settled("restore_overwrite").is_some_and(|r| r.state.is_terminal())
    }) {
        return Err(daemon.stop_with_log("the signed restore_overwrite did not run"));
    }
    let took = started.elapsed();
    logs.push_str(&daemon.stop()?);
    let cores = pve.guest_config(120).and_then(|c| c.get("cores").cloned());
    let status = pve.guest_status(120);
    let outcome = settled("restore_overwrite").map(|r| r.state.as_str());
    if outcome != Some("succeeded") {
        return Err(format!("the restore {id} ended {outcome:?}"));
    }
    if cores != Some(json!(2)) || restores() != before + 1 || status.as_deref() != Some("stopped") {
        return Err(format!(
            "the restore did not bring the backup back once: cores {cores:?}, {} restore POSTs, guest {status:?}",
            restores() - before
        ));
    }
    say(format!(
        "restore_overwrite: signed with stop, executed in {:.2} s — stopped (its own journaled step), restored with force=1 (cores 5 → 2, the backup's), left stopped for reconcile's next pass; one restore POST",
        took.as_secs_f64()
    ));
    Ok(())
}

/// Step 22: an emergency `rotate_signers` signed by two recovery keys (threshold 2),
/// delivered by the hub with both signatures; then a destroy signed by the old
/// operational key is refused and the same destroy signed by the new key runs.
struct Rotation<'a> {
    bin: &'a Path,
    dir: &'a Path,
    pve: &'a ProxmoxSim,
    cfg_path: &'a Path,
    base: &'a serde_json::Value,
    key_file: &'a Path,
}

impl Rotation<'_> {
    /// Mints an ed25519 key `name` in the lab directory; returns its public line.
    fn mint(&self, name: &str) -> Result<String, String> {
        let path = self.dir.join(name);
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .stderr(Stdio::null())
            .status();
        if !st.is_ok_and(|s| s.success()) {
            return Err(format!("ssh-keygen could not mint {name}"));
        }
        std::fs::read_to_string(self.dir.join(format!("{name}.pub")))
            .map(|s| s.trim().to_string())
            .map_err(|e| e.to_string())
    }

    /// Signs the file `blob` with key `name`; returns the signature file's path.
    fn sign(&self, name: &str, blob: &Path) -> Result<PathBuf, String> {
        let out = self.dir.join(format!("{}.{name}.sig", blob.display()));
        let st = Command::new("ssh-keygen")
            .args(["-q", "-Y", "sign", "-n", "felhom-op-v1", "-f"])
            .arg(self.dir.join(name))
            .stdin(std::fs::File::open(blob).map_err(|e| e.to_string())?)
            .stdout(std::fs::File::create(&out).map_err(|e| e.to_string())?)
            .stderr(Stdio::null())
            .status();
        if !st.is_ok_and(|s| s.success()) {
            return Err(format!("ssh-keygen -Y sign with {name} failed"));
        }
        Ok(out)
    }

    fn run(&self) -> Result<(String, String), String> {
        let (bin, dir, pve) = (self.bin, self.dir, self.pve);
        // The hub of step 12 is gone: a new one, its key in the same 0600 file.
        let hub = HubSim::start();
        std::fs::write(self.key_file, hub.key()).map_err(|e| e.to_string())?;
        let rec_a = self.mint("recovery-a")?;
        let rec_b = self.mint("recovery-b")?;
        let next = self.mint("operator-2027")?;
        let mut config = self.base.clone();
        config["hub"]["url"] = json!(hub.url());
        config["authz"] = json!({"recovery_threshold": 2, "signers": [
            config["authz"]["signers"][0], config["authz"]["signers"][1],
            {"key_id": "recovery-a", "role": "recovery", "public_key": rec_a},
            {"key_id": "recovery-b", "role": "recovery", "public_key": rec_b}
        ]});
        let cfg = self.cfg_path.to_str().ok_or("config path is not UTF-8")?;
        std::fs::write(self.cfg_path, serde_json::to_vec_pretty(&config).unwrap())
            .map_err(|e| e.to_string())?;

        // The operator writes the new set (lab-fresh and ops-2026 gone) and signs it twice.
        let now = SystemClock.now().unix();
        let set = json!([
            {"key_id": "operator-2027", "role": "operational", "public_key": next},
            {"key_id": "recovery-a", "role": "recovery", "public_key": rec_a},
            {"key_id": "recovery-b", "role": "recovery", "public_key": rec_b}
        ]);
        let blob = json!({
            "op": "rotate_signers", "host_id": "pve-a",
            "params": {"mode": "emergency", "version": "1", "signers": set.to_string()},
            "key_id": "recovery-a", "nonce": "9d3c2b1a0f9e8d7c6b5a49382716f5e4",
            "not_before": Timestamp(now - 60).to_string(),
            "expires_at": Timestamp(now + 1800).to_string()
        })
        .to_string();
        let blob_path = dir.join("rotate-signers-v1.json");
        std::fs::write(&blob_path, &blob).map_err(|e| e.to_string())?;
        let sig_a = self.sign("recovery-a", &blob_path)?;
        let sig_b = self.sign("recovery-b", &blob_path)?;
        let (b, a, bb) = (
            blob_path.to_str().unwrap(),
            sig_a.to_str().unwrap(),
            sig_b.to_str().unwrap(),
        );
        let one = run(bin, &["verify", "--blob", b, "--sig", a, "--config", cfg]);
        if !String::from_utf8_lossy(&one.stdout).starts_with("refused: below_threshold") {
            print!("{}", indent(&one.stdout));
            return Err("one recovery signature was not refused below_threshold".into());
        }
        let two = run(
            bin,
            &[
                "verify", "--blob", b, "--sig", a, "--sig", bb, "--config", cfg,
            ],
        );
        if two.status.code() != Some(0) {
            print!("{}", indent(&two.stdout));
            return Err("the rotation signed by two recovery keys did not verify".into());
        }
        say(
            "rotation: verify refuses the rotation with one recovery signature (below_threshold) and accepts it with two",
        );

        let read = |f: &str| std::fs::read_to_string(dir.join("state").join(f)).unwrap_or_default();
        let audited = |w: &str| {
            read("audit.log")
                .matches(&format!("\"decision\":\"{w}\""))
                .count()
        };
        let signed_policy = || {
            hub.reports()
                .last()
                .and_then(|r| r["signer_policy"]["version"].as_u64())
        };
        let sigs = [
            std::fs::read_to_string(&sig_a).unwrap(),
            std::fs::read_to_string(&sig_b).unwrap(),
        ];
        let rotation_id = hub.queue_signed_op_cosigned(blob.as_bytes(), &[&sigs[0], &sigs[1]]);
        let mut logs = String::new();
        let mut daemon = Daemon::start(bin, cfg)?;
        // Audited before it is applied; durable once signers.json holds the new set.
        if !daemon.wait("the rotation applied", || {
            audited("rotated") == 1 && read("signers.json").contains("operator-2027")
        }) {
            return Err(daemon.stop_with_log("the emergency rotation did not land"));
        }
        let held = read("signers.json");
        if !held.contains("operator-2027") || held.contains("lab-fresh") {
            return Err(daemon.stop_with_log("state/signers.json does not hold the new set"));
        }
        logs.push_str(&daemon.stop()?);
        say(format!(
            "rotation: {rotation_id} (emergency, 2 of 2 recovery signatures) applied; state/signers.json holds version 1 without the old operational keys"
        ));

        // The old operational key (lab-fresh) signs a destroy of guest 102: refused.
        let digest =
            reported_digest(&hub, 102).ok_or("the report does not show guest 102's digest")?;
        let destroy = |nonce: &str, key_id: &str| {
            json!({
                "op": "guest_destroy", "host_id": "pve-a", "guest_id": "102",
                "guest_digest": digest, "params": {"purge": "1"}, "key_id": key_id,
                "nonce": nonce, "not_before": Timestamp(now - 60).to_string(),
                "expires_at": Timestamp(now + 1800).to_string()
            })
            .to_string()
        };
        let old_blob = destroy("0a1b2c3d4e5f60718293a4b5c6d7e8f9", "lab-fresh");
        let old_path = dir.join("destroy-102-old-key.json");
        std::fs::write(&old_path, &old_blob).map_err(|e| e.to_string())?;
        let old_sig = std::fs::read_to_string(self.sign("fresh-operator", &old_path)?).unwrap();
        hub.queue_signed_op(old_blob.as_bytes(), Some(&old_sig));
        let deletes = || {
            pve.mutations()
                .iter()
                .filter(|m| m.method == "DELETE" && m.path.ends_with("/lxc/102"))
                .count()
        };
        let deletes_before = deletes();
        let mut daemon = Daemon::start(bin, cfg)?;
        if !daemon.wait("the old key refused, version 1 reported", || {
            audited("unknown_signer") == 1 && signed_policy() == Some(1)
        }) {
            return Err(daemon.stop_with_log("the old operational key was not refused"));
        }
        if deletes() != deletes_before {
            return Err(daemon.stop_with_log("the old key's destroy reached Proxmox"));
        }
        logs.push_str(&daemon.stop()?);
        say(
            "rotation: the restarted daemon reports signer_policy version 1; a destroy of guest 102 signed by the removed key lab-fresh is refused unknown_signer, no DELETE",
        );

        // The same destroy signed by the new operational key runs.
        let new_blob = destroy("1b2c3d4e5f60718293a4b5c6d7e8f90a", "operator-2027");
        let new_path = dir.join("destroy-102-new-key.json");
        std::fs::write(&new_path, &new_blob).map_err(|e| e.to_string())?;
        let new_sig = std::fs::read_to_string(self.sign("operator-2027", &new_path)?).unwrap();
        hub.queue_signed_op(new_blob.as_bytes(), Some(&new_sig));
        let mut daemon = Daemon::start(bin, cfg)?;
        if !daemon.wait("the new key's destroy executed", || {
            deletes() == deletes_before + 1 && !pve.guest_ids().contains(&102)
        }) {
            return Err(daemon.stop_with_log("the new operational key's destroy did not run"));
        }
        logs.push_str(&daemon.stop()?);
        say(
            "rotation: the same destroy signed by the new key operator-2027 is executed (one DELETE, guest 102 gone)",
        );
        Ok((logs, hub.key()))
    }
}

/// The daemon as a child process.
struct Daemon {
    child: std::process::Child,
}

impl Daemon {
    fn start(bin: &Path, cfg: &str) -> Result<Daemon, String> {
        Command::new(bin)
            .args(["run", "--config", cfg])
            .stderr(Stdio::piped())
            .spawn()
            .map(|child| Daemon { child })
            .map_err(|e| format!("the daemon did not start: {e}"))
    }

    /// Polls `done` for up to 20 s; `false` if it never held or the daemon exited.
    fn wait(&mut self, _what: &str, mut done: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if done() {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    /// SIGTERM, wait up to 5 s for exit 0; the daemon's log on success.
    fn stop(mut self) -> Result<String, String> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let asked = Instant::now();
        let status = loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                break st;
            }
            if asked.elapsed() > Duration::from_secs(5) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err("the daemon did not stop within 5 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut log = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut log);
        }
        if status.code() != Some(0) {
            print!("{}", indent(log.as_bytes()));
            return Err(format!("the daemon exited {:?} on SIGTERM", status.code()));
        }
        Ok(log)
    }

    /// SIGKILL: no handler runs; returns what the daemon logged before it.
    fn kill_9(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut log = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut log);
        }
        log
    }

    /// Stops the daemon, prints its log, and returns `why` for [`fail`].
    fn stop_with_log(self, why: impl Into<String>) -> String {
        match self.stop() {
            Ok(log) => print!("{}", indent(log.as_bytes())),
            Err(e) => eprintln!("lab: also: {e}"),
        }
        why.into()
    }
}

/// Grants `privs` as the `FelhomAgent` role, as the README's recipe does: on each of its
/// ACL paths, to the user and to the privilege-separated token.
fn grant_role(pve: &ProxmoxSim, privs: &[&str]) {
    use felhom_agent::proxmox::{ROLE_NAME, role_acl_paths};
    use felhom_sim::AclSubject;
    pve.set_role(ROLE_NAME, privs);
    for path in role_acl_paths() {
        for who in [AclSubject::User, AclSubject::Token] {
            pve.acl_modify(&path.grant_path(&pve.node()), who, ROLE_NAME, true);
        }
    }
}

/// A client of `pve` with its token, pinned to its certificate.
fn lab_client(pve: &ProxmoxSim) -> Result<felhom_agent::proxmox::Client, String> {
    use felhom_agent::net::{Sha256Pin, TlsTrust};
    use felhom_agent::proxmox::{Client, ClientOptions};
    let pin = Sha256Pin::parse(&pve.fingerprint()).map_err(|e| e.to_string())?;
    Client::new(ClientOptions::new(
        pve.url(),
        pve.node(),
        felhom_sim::DEFAULT_TOKEN_ID,
        felhom_agent::base::Secret::new(DEFAULT_TOKEN_SECRET),
        TlsTrust::Pin(pin),
    ))
    .map_err(|e| e.to_string())
}

/// An in-process restore tester over `client`, with its journal, audit log and results in
/// `state` (made 0700), scratch vmids `vmid_range`, and the lab's stand-in boot check;
/// tasks waited for with `wait`.
fn lab_tester(
    client: felhom_agent::proxmox::Client,
    state: &Path,
    vmid_range: &str,
    wait: felhom_agent::proxmox::WaitOptions,
) -> Result<
    (
        std::sync::Arc<felhom_agent::reconcile::RestoreTester>,
        std::sync::Arc<Journal>,
    ),
    String,
> {
    use felhom_agent::config::{RestoreTestsConfig, parse_vmid_range};
    use felhom_agent::reconcile::{AuditLog, Gate, Queue, RestoreResults, RestoreTester};
    use std::sync::Arc;
    std::fs::create_dir_all(state).map_err(|e| e.to_string())?;
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    let journal = Arc::new(Journal::open(&state.join("journal.log")).map_err(|e| e.to_string())?);
    let audit = Arc::new(AuditLog::open(&state.join("audit.log")).map_err(|e| e.to_string())?);
    let gate = Arc::new(Gate::new("pve-a".into(), None, Arc::clone(&journal), audit));
    let tester = RestoreTester::new(
        "pve-a".into(),
        client,
        Arc::clone(&journal),
        gate,
        Queue::new(1),
        Arc::new(RestoreResults::open(
            state,
            Arc::new(felhom_agent::store::OsIo),
        )),
        Arc::new(LabBoot),
        RestoreTestsConfig {
            every_hours: 24,
            vmid_range: parse_vmid_range(vmid_range)?,
            storage: "local-lvm".into(),
            max_parallel: 1,
            min_free_memory_mib: 64,
            min_free_storage_gib: 1,
        },
        felhom_agent::base::Shutdown::new(),
        Arc::new(SystemClock),
    )
    .with_wait(wait);
    Ok((Arc::new(tester), journal))
}

/// Step 17: the `FelhomAgent` role from the agent's table of its API calls. A fresh
/// simulator grants exactly that role (to the user and the privilege-separated token,
/// on the recipe's ACL paths); both selftests pass under it; without `VM.Snapshot`
/// `selftest task` fails at its first mutation, naming the privilege.
fn role_step(bin: &Path, dir: &Path, secret: &Path) -> Result<(), String> {
    use felhom_agent::proxmox::{ROLE_NAME, pveum_recipe, role_privileges};

    let pve = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web").running(true))
        .task_duration(Duration::from_millis(30))
        .start();
    say("the Proxmox role, as the README's recipe grants it:");
    print!("{}", indent(pveum_recipe(&pve.node()).as_bytes()));
    let role = role_privileges();
    grant_role(&pve, &role);
    let cfg_path = dir.join("role.json");
    std::fs::create_dir_all(dir.join("role-state")).unwrap();
    std::fs::set_permissions(
        dir.join("role-state"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let config = json!({
        "host_id": "pve-a",
        "state_dir": dir.join("role-state").display().to_string(),
        "proxmox": {
            "url": pve.url(), "node": pve.node(), "token_id": "felhom-agent@pve!agent",
            "token_secret_file": secret.display().to_string(),
            "tls": {"fingerprint_sha256": pve.fingerprint()}, "timeout_seconds": 10
        }
    });
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    std::fs::set_permissions(&cfg_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = cfg_path.to_str().unwrap();
    for args in [&["read"][..], &["task", "--vmid", "100"]] {
        let out = run(bin, &[&["selftest"], args, &["--config", cfg]].concat());
        if out.status.code() != Some(0) {
            print!("{}", indent(&out.stdout));
            return Err(format!(
                "selftest {args:?} under the role exited {:?}",
                out.status.code()
            ));
        }
    }
    say(format!(
        "role: selftest read and selftest task pass under exactly {} privileges",
        role.len()
    ));
    let without: Vec<&str> = role
        .iter()
        .copied()
        .filter(|p| *p != "VM.Snapshot")
        .collect();
    pve.set_role(ROLE_NAME, &without);
    let out = run(bin, &["selftest", "task", "--vmid", "100", "--config", cfg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.code() != Some(1) || !stdout.contains("VM.Snapshot") {
        print!("{}", indent(&out.stdout));
        return Err("selftest task without VM.Snapshot did not fail naming it".into());
    }
    if !pve.snapshots(100).is_empty() {
        return Err("a snapshot was taken without VM.Snapshot".into());
    }
    say(
        "role: without VM.Snapshot, selftest task fails with Permission check failed (/vms/100, VM.Snapshot)",
    );
    Ok(())
}

/// Step 18 (see its comment in [`lab`]); `Err` says what went wrong.
fn catalogue_step(
    bin: &Path,
    dir: &Path,
    pve: &ProxmoxSim,
    config: &serde_json::Value,
    operator_key: &Path,
) -> Result<(), String> {
    let hub = HubSim::start();
    let key = dir.join("hub-key-13");
    std::fs::write(&key, hub.key()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cfg13 = config.clone();
    cfg13["hub"]["url"] = json!(hub.url());
    cfg13["hub"]["api_key_file"] = json!(key.display().to_string());
    cfg13["reconcile"] = json!({
        "source": "hub",
        "shutdown_timeout_seconds": LAB_SHUTDOWN_TIMEOUT_SECONDS
    });
    let cfg_path = dir.join("agent-13.json");
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg13).unwrap()).unwrap();
    std::fs::set_permissions(&cfg_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = cfg_path.to_str().unwrap();

    const GIB: u64 = 1 << 30;
    hub.publish_desired_state(&json!({"generation": 10, "guests": [
        {"vmid": 100, "run": "running", "spec": {"cores": 2, "rootfs_bytes": 4 * GIB}, "description": "web"},
        {"vmid": 101, "run": "running", "spec": {"rootfs_bytes": 12 * GIB}}
    ]}));
    let backups_before = pve.backups();
    let Some(volid) = backups_before
        .iter()
        .find(|v| v.contains("vzdump-lxc-100-"))
        .cloned()
    else {
        return Err(format!(
            "no backup of guest 100 to delete: {backups_before:?}"
        ));
    };
    let digest = pve.guest_digest(100).ok_or("guest 100 is gone")?;
    let now = SystemClock.now().unix();
    let blob = format!(
        r#"{{"op":"backup_delete","host_id":"pve-a","guest_id":"100","guest_digest":"{digest}","params":{{"volid":"{volid}"}},"key_id":"lab-fresh","nonce":"9d8c7b6a5f4e3d2c1b0a99887766554433","not_before":"{}","expires_at":"{}"}}"#,
        Timestamp(now - 60),
        Timestamp(now + 1800)
    );
    let blob_path = dir.join("backup-delete-100.json");
    std::fs::write(&blob_path, &blob).unwrap();
    let signed = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", "felhom-op-v1", "-f"])
        .arg(operator_key)
        .arg(&blob_path)
        .stderr(Stdio::null())
        .status();
    if !signed.is_ok_and(|s| s.success()) {
        return Err("ssh-keygen -Y sign of the backup_delete failed".into());
    }
    let sig = std::fs::read_to_string(format!("{}.sig", blob_path.display())).unwrap();
    hub.queue_signed_op(blob.as_bytes(), Some(&sig));

    let audit = dir.join("state").join("audit.log");
    let count = |word: &str, op: &str| {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["data"]["decision"] == word && l["data"]["op"] == op)
            .count()
    };
    let executed_before = count("allowed", "backup_delete");
    let rootfs = |vmid: u32| {
        pve.guest_config(vmid)
            .and_then(|c| c.get("rootfs").and_then(|r| r.as_str()).map(str::to_owned))
            .unwrap_or_default()
    };
    let started = Instant::now();
    let mut daemon = Daemon::start(bin, cfg)?;
    let done = daemon.wait("grown, shrink refused, backup deleted", || {
        rootfs(101).contains("size=12G")
            && count("shrink_refused", "resize") == 1
            && !pve.backups().contains(&volid)
    });
    if !done {
        return Err(daemon.stop_with_log(format!(
            "step 13 did not converge: rootfs 101 {:?}, shrink audits {}, backups {:?}",
            rootfs(101),
            count("shrink_refused", "resize"),
            pve.backups()
        )));
    }
    let took = started.elapsed();
    daemon.stop()?;
    let requests = |suffix: &str| {
        pve.mutations()
            .iter()
            .filter(|m| m.path.ends_with(suffix) || m.path.contains(suffix))
            .count()
    };
    if !rootfs(100).contains("size=8G") || requests("/lxc/100/resize") != 0 {
        return Err(format!("guest 100's disk was touched: {}", rootfs(100)));
    }
    if requests("/content/") != 1 || count("allowed", "backup_delete") != executed_before + 1 {
        return Err(format!(
            "expected one backup deletion, saw {} request(s)",
            requests("/content/")
        ));
    }
    say(format!(
        "catalogue: guest 101's root disk grown 8G -> 12G (one PUT …/resize); guest 100's asked shrink to 4G refused shrink_refused, audited once, nothing sent; a signed backup_delete of {volid} executed once; all in {:.2} s",
        took.as_secs_f64()
    ));
    let out = run(bin, &["plan", "--config", cfg]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some(line) = text.lines().find(|l| l.contains("shrink_refused")) else {
        print!("{}", indent(&out.stdout));
        return Err("`plan` did not show the refused shrink".into());
    };
    say(format!("catalogue: `plan` shows it: {}", line.trim()));
    hub.shutdown();
    Ok(())
}

/// Step 18b (see its comment in [`lab`]); `Err` says what went wrong.
fn role_wired_step() -> Result<(), String> {
    use felhom_agent::base::Shutdown;
    use felhom_agent::proxmox::{CreateLxc, ROLE_NAME, WaitOptions, role_privileges};

    let pve = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web"))
        .backup(100, "2026_11_20-03_00_00")
        .task_duration(Duration::from_millis(30))
        .start();
    let role = role_privileges();
    grant_role(&pve, &role);
    let client = lab_client(&pve)?;
    let wait = WaitOptions::default();
    let backup = "local:backup/vzdump-lxc-100-2026_11_20-03_00_00.tar.zst";
    let mut create = CreateLxc::restore(200, backup, "local-lvm");
    create.hostname = Some("web-copy".into());
    create.rootfs_gib = Some(10);
    let run = |upid: Result<felhom_agent::proxmox::Upid, _>, what: &str| {
        let upid = upid.map_err(|e| format!("{what} under the role: {e}"))?;
        client
            .wait_task(&upid, &wait, &Shutdown::new())
            .map(|_| ())
            .map_err(|e| format!("{what} under the role: {e}"))
    };
    run(client.create_lxc(&create), "provision 200")?;
    run(client.resize_rootfs(200, 12 << 30), "resize 200")?;
    let rootfs = pve
        .guest_config(200)
        .and_then(|c| c.get("rootfs").and_then(|v| v.as_str()).map(str::to_owned))
        .unwrap_or_default();
    if !rootfs.contains("size=12G") {
        return Err(format!("200's root disk is {rootfs:?}, not 12G"));
    }
    say(format!(
        "role: under exactly {} privileges, 200 provisioned from 100's backup as web-copy and its root disk grown ({rootfs})",
        role.len()
    ));
    let without: Vec<&str> = role
        .iter()
        .copied()
        .filter(|p| *p != "VM.Config.Network")
        .collect();
    pve.set_role(ROLE_NAME, &without);
    create.vmid = 201;
    match client.create_lxc(&create) {
        Err(e) if e.to_string().contains("VM.Config.Network") => {}
        other => {
            return Err(format!(
                "a create with a hostname without VM.Config.Network: {other:?}"
            ));
        }
    }
    if pve.guest_ids().contains(&201) {
        return Err("201 was made without VM.Config.Network".into());
    }
    say(
        "role: without VM.Config.Network, provisioning with a host name is refused: Permission check failed (/vms/201, VM.Config.Network)",
    );
    Ok(())
}

/// Step 21b (see its comment in [`lab`]); `Err` says what went wrong.
fn role_restore_tests_step(dir: &Path) -> Result<(), String> {
    use felhom_agent::proxmox::{WaitOptions, role_privileges};
    use felhom_agent::reconcile::{TestOutcome, TestStage};

    let round = |without: Option<&str>| -> Result<(Vec<_>, Vec<u32>, Vec<u32>), String> {
        let pve = ProxmoxSim::builder()
            .guest(GuestSeed::new(100, "web").running(true))
            .backup(100, "2026_11_20-03_00_00")
            .task_duration(Duration::from_millis(10))
            .start();
        let role: Vec<&str> = role_privileges()
            .into_iter()
            .filter(|p| Some(*p) != without)
            .collect();
        grant_role(&pve, &role);
        let state = dir.join(format!("role-restore-{}", without.unwrap_or("all")));
        let wait = WaitOptions {
            initial: Duration::from_millis(5),
            cap: Duration::from_millis(50),
            timeout: Duration::from_secs(20),
        };
        let (tester, journal) = lab_tester(lab_client(&pve)?, &state, "9900-9901", wait)?;
        let results = tester.run_round().map_err(|e| e.to_string())?;
        Ok((results, pve.guest_ids(), journal.scratch_vmids()))
    };
    let (results, guests, tags) = round(None)?;
    match results.as_slice() {
        [r] if r.outcome == TestOutcome::Ok && guests == [100] && tags.is_empty() => {}
        _ => {
            return Err(format!(
                "restore test under the role: {results:?}, guests {guests:?}"
            ));
        }
    }
    say(format!(
        "role: under exactly {} privileges, a restore test of 100 passed; scratch destroyed",
        role_privileges().len()
    ));
    // VM.Allocate is refused at the request; SDN.Use (100's net0 is on vmbr0) inside
    // the restore task, which removes the new guest's config with it.
    for privilege in ["VM.Allocate", "SDN.Use"] {
        let (results, guests, tags) = round(Some(privilege))?;
        match results.as_slice() {
            [r] if r.outcome == TestOutcome::Failed
                && r.stage == Some(TestStage::Restore)
                && r.detail.as_deref().is_some_and(|d| d.contains(privilege))
                && guests == [100]
                && tags.is_empty() =>
            {
                say(format!(
                    "role: without {privilege}, the restore test failed at stage restore ({}); nothing left behind",
                    r.detail.as_deref().unwrap_or("-")
                ));
            }
            _ => {
                return Err(format!(
                    "restore test without {privilege}: {results:?}, guests {guests:?}"
                ));
            }
        }
    }
    Ok(())
}

/// A boot check for the lab's in-process restore tests: the simulator has no `pct`, so
/// this stands in for `pct exec VMID -- /bin/true` and says yes.
struct LabBoot;

impl felhom_agent::reconcile::BootCheck for LabBoot {
    fn boot_check(&self, _vmid: u32) -> Result<(), String> {
        Ok(())
    }
}

/// Steps 19–21. Restore tests, the proof of backup, on their own simulators and state dir:
/// one passing, one failing on a broken backup (both in process, with a stand-in boot
/// check), then the real daemon SIGKILLed while a restore runs and restarted: the scratch
/// guest is cleaned up, benign by the journal's own provenance.
fn restore_tests_lab(bin: &Path, dir: &Path) -> Result<(), String> {
    use felhom_agent::proxmox::WaitOptions;
    use felhom_agent::reconcile::{TestOutcome, read_results};
    use felhom_sim::{BackupSeed, Broken, DEFAULT_TOKEN_ID};

    // The in-process tester logs to this process's stderr: keep the lab's lines readable.
    felhom_agent::base::log::set_level(felhom_agent::base::log::Level::Warn);

    let web = || GuestSeed::new(200, "shop").disk_gib(4);
    let pve = ProxmoxSim::builder()
        .guest(web().running(true))
        .guest(GuestSeed::new(201, "wiki").disk_gib(4))
        .backup_seed(BackupSeed::vzdump(200, "2026_11_21-03_00_00").of_guest(web()))
        .backup_seed(
            BackupSeed::vzdump(201, "2026_11_21-03_10_00")
                .of_guest(GuestSeed::new(201, "wiki").disk_gib(4))
                .broken(Broken::Truncated),
        )
        .task_duration(Duration::from_millis(100))
        .start();
    let state = dir.join("restore-state");
    {
        let wait = WaitOptions {
            initial: Duration::from_millis(20),
            cap: Duration::from_millis(100),
            timeout: Duration::from_secs(20),
        };
        let (tester, journal) = lab_tester(lab_client(&pve)?, &state, "9900-9909", wait)?;
        let results = tester.run_round().map_err(|e| e.to_string())?;
        let by = |vmid: u32| results.iter().find(|r| r.vmid == vmid).cloned();
        let (Some(ok), Some(broken)) = (by(200), by(201)) else {
            return Err(format!(
                "restore tests: expected two results, got {results:?}"
            ));
        };
        if ok.outcome != TestOutcome::Ok {
            return Err(format!("restore test of 200 did not pass: {ok:?}"));
        }
        say(format!(
            "restore test: 200's newest backup ({} bytes) restored into scratch {}, started without net0, booted; destroyed unsigned (agent_provenance)",
            ok.size_bytes.unwrap_or(0),
            ok.scratch_vmid.unwrap_or(0)
        ));
        if broken.outcome != TestOutcome::Failed
            || broken.stage.map(|s| s.as_str()) != Some("restore")
        {
            return Err(format!(
                "the broken backup did not fail at restore: {broken:?}"
            ));
        }
        say(format!(
            "restore test: 201's truncated backup failed at stage restore ({}); nothing left behind (guests {:?})",
            broken.detail.as_deref().unwrap_or("-"),
            pve.guest_ids()
        ));
        if !journal.scratch_vmids().is_empty() || pve.guest_ids().iter().any(|v| *v >= 9900) {
            return Err("a scratch guest or its provenance was left behind".into());
        }
    }

    // The real daemon, killed with -9 while its restore runs, then restarted.
    // Long enough to kill the daemon while the restore runs.
    pve.set_task_duration(Duration::from_secs(1));
    let hub = HubSim::start();
    let ca = dir.join("hub-ca.pem");
    let daemon_state = dir.join("restore-daemon-state");
    let config = json!({
        "host_id": "pve-a",
        "state_dir": daemon_state.display().to_string(),
        "proxmox": {
            "url": pve.url(), "node": pve.node(), "token_id": DEFAULT_TOKEN_ID,
            "token_secret": DEFAULT_TOKEN_SECRET,
            "tls": {"fingerprint_sha256": pve.fingerprint()}, "timeout_seconds": 10
        },
        "hub": {"url": hub.url(), "api_key": hub.key(), "tls": {"ca_file": ca.display().to_string()}},
        "restore_tests": {"vmid_range": "9900-9909", "storage": "local-lvm",
            "min_free_memory_mib": 64, "min_free_storage_gib": 1}
    });
    let cfg_path = dir.join("restore-agent.json");
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&config).unwrap())
        .map_err(|e| e.to_string())?;
    std::fs::set_permissions(&cfg_path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    let cfg = cfg_path.to_str().unwrap_or_default();
    let mut daemon = Daemon::start(bin, cfg)?;
    if !daemon.wait("a restore in flight", || {
        pve.guest_ids().iter().any(|v| *v >= 9900)
    }) {
        return Err(daemon.stop_with_log("the daemon started no restore test"));
    }
    daemon.kill_9();
    let scratch: Vec<u32> = pve.guest_ids().into_iter().filter(|v| *v >= 9900).collect();
    let tagged = Journal::open_read_only(&daemon_state.join("journal.log"))
        .ok()
        .is_some_and(|j| scratch.iter().all(|v| j.provenance(*v, None).is_some()));
    if !tagged {
        return Err("the scratch guest's provenance was not durable before its restore".into());
    }
    say(format!(
        "restore test: daemon killed -9 while restoring into scratch {scratch:?} (provenance journaled first)"
    ));
    pve.set_task_duration(Duration::from_millis(100));
    let mut daemon = Daemon::start(bin, cfg)?;
    if !daemon.wait("the scratch guest cleaned up", || {
        !pve.guest_ids().iter().any(|v| *v >= 9900)
            && read_results(&daemon_state).running.is_empty()
    }) {
        return Err(daemon.stop_with_log("the scratch guest was not cleaned up"));
    }
    daemon.stop()?;
    let last = read_results(&daemon_state).results.last().cloned();
    let stage = last.as_ref().and_then(|r| r.stage).map(|s| s.as_str());
    if stage != Some("interrupted") {
        return Err(format!("the interrupted test was not recorded: {last:?}"));
    }
    say(format!(
        "restore test: restarted, Recover and the start-up cleanup destroyed it unsigned; recorded interrupted; guests {:?}",
        pve.guest_ids()
    ));
    Ok(())
}
