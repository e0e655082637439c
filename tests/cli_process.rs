//! The command line as an operator runs it: the real binary as a child process,
//! against the Proxmox simulator over loopback TLS, with signatures minted by the
//! real `ssh-keygen` at test time. Every run's output is kept and scanned for the
//! token secret at the end of each test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use felhom_agent::base::{Clock, SystemClock, Timestamp};
use felhom_sim::{DEFAULT_TOKEN_SECRET, GuestSeed, HubSim, ProxmoxSim};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_felhom-agent");
const ED25519_PUB: &str = include_str!("../vectors/sshsig/keys/ed25519.pub");
const OTHER_PUB: &str = include_str!("../vectors/sshsig/keys/other-ed25519.pub");

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!(
            "felhom-cli-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        Dir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the agent; returns the output and remembers it for the secret scan.
fn agent(args: &[&str], seen: &mut Vec<String>) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("FELHOM_AGENT_HOST_ID")
        .output()
        .expect("the agent binary runs");
    seen.push(String::from_utf8_lossy(&out.stdout).into_owned());
    seen.push(String::from_utf8_lossy(&out.stderr).into_owned());
    out
}

/// Runs the agent with `args` then `--config cfg`.
fn agent_with(cfg: &Path, args: &[&str], seen: &mut Vec<String>) -> Output {
    let mut all = args.to_vec();
    all.extend(["--config", cfg.to_str().unwrap()]);
    agent(&all, seen)
}

/// Runs `verify` on a blob and a signature file under `cfg`.
fn verify(blob: &Path, sig: &Path, cfg: &Path, seen: &mut Vec<String>) -> Output {
    let (b, s) = (blob.to_str().unwrap(), sig.to_str().unwrap());
    agent_with(cfg, &["verify", "--blob", b, "--sig", s], seen)
}

/// Asserts `verify` refused with the stable `code` (exit 1, the code on the first line).
fn assert_refused(out: &Output, code: &str, case: &str) {
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{case}: {stdout}{}",
        text(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("refused: {code}\n")),
        "{case}: {stdout}"
    );
}

/// Asserts a usage or configuration error (exit 2) whose message names `what`.
fn assert_exit_2_naming(out: &Output, what: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}{stderr}", text(&out.stdout));
    assert!(stderr.contains(what), "{stderr}");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_no_secret(seen: &[String]) {
    for s in seen {
        assert!(
            !s.contains(DEFAULT_TOKEN_SECRET),
            "the token secret leaked into:\n{s}"
        );
    }
}

fn sim() -> ProxmoxSim {
    ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web").running(true).description("web"))
        .guest(GuestSeed::new(101, "db"))
        .task_duration(std::time::Duration::from_millis(40))
        .start()
}

/// A config for the simulator, with the token secret in a 0600 file as systemd
/// credentials would deliver it.
fn write_config(dir: &Dir, sim: &ProxmoxSim, pin: &str) -> PathBuf {
    let secret = write_0600(
        dir,
        "pve-token",
        format!("{DEFAULT_TOKEN_SECRET}\n").as_bytes(),
    );
    let cfg = json!({
        "host_id": "pve-a",
        "state_dir": dir.path("state").display().to_string(),
        "proxmox": {
            "url": sim.url(),
            "node": sim.node(),
            "token_id": "felhom-agent@pve!agent",
            "token_secret_file": secret.display().to_string(),
            "tls": {"fingerprint_sha256": pin},
            "timeout_seconds": 5
        },
        "authz": {"signers": [
            {"key_id": "ops-2026", "role": "operational", "public_key": ED25519_PUB.trim()}
        ]}
    });
    write_json(dir, "agent.json", &cfg)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// The config's state dir, made 0700 as the agent wants it.
fn make_state_dir(dir: &Dir) -> PathBuf {
    let state = dir.path("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    state
}

fn write_json(dir: &Dir, name: &str, v: &Value) -> PathBuf {
    write_0600(dir, name, &serde_json::to_vec_pretty(v).unwrap())
}

/// Writes `name` in `dir`, readable by its owner only.
fn write_0600(dir: &Dir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn selftest_read_reports_every_read_and_exits_0() {
    let sim = sim();
    let dir = Dir::new("read");
    let cfg = write_config(&dir, &sim, &sim.fingerprint());
    let mut seen = Vec::new();
    let out = agent_with(&cfg, &["selftest", "read"], &mut seen);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for step in [
        "version",
        "nodes",
        "node status",
        "guests",
        "storage",
        "privileges",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(step)),
            "no ok line for {step}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("2 LXC guests, 1 running [100 101]"),
        "{stdout}"
    );
    assert!(stdout.contains("selftest read: passed"));
    assert!(sim.mutations().is_empty(), "selftest read mutated nothing");
    // The Go agent's spelling runs the same selftest.
    let alias = agent(
        &["--selftest=read", "--config", cfg.to_str().unwrap()],
        &mut seen,
    );
    assert_eq!(alias.status.code(), Some(0));
    assert_no_secret(&seen);
}

#[test]
fn selftest_read_with_the_wrong_pin_fails_every_step_and_exits_1() {
    let sim = sim();
    let dir = Dir::new("pin");
    let other = felhom_sim::CertChoice::Other.fingerprint();
    let cfg = write_config(&dir, &sim, &other);
    let mut seen = Vec::new();
    let out = agent_with(&cfg, &["selftest", "read"], &mut seen);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  version"), "{stdout}");
    assert!(
        stdout.contains("selftest read: 6 step(s) failed"),
        "{stdout}"
    );
    assert!(
        sim.requests().is_empty(),
        "nothing was sent to a server whose pin did not match"
    );
    assert_no_secret(&seen);
}

#[test]
fn selftest_task_round_trips_and_leaves_the_guest_as_it_was() {
    let sim = sim();
    let dir = Dir::new("task");
    let cfg = write_config(&dir, &sim, &sim.fingerprint());
    let before = sim.guest_config(100).unwrap();
    assert_eq!(sim.guest_status(100).as_deref(), Some("running"));
    let mut seen = Vec::new();
    let out = agent_with(&cfg, &["selftest", "task", "--vmid", "100"], &mut seen);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("selftest task: passed"), "{stdout}");
    assert!(
        sim.snapshots(100).is_empty(),
        "the selftest snapshot was deleted"
    );
    let after = sim.guest_config(100).unwrap();
    assert_eq!(
        after.get("description"),
        before.get("description"),
        "description restored"
    );
    // Proxmox stopped the running guest to roll it back; the selftest asked for it
    // to be started again.
    assert_eq!(
        sim.guest_status(100).as_deref(),
        Some("running"),
        "the guest runs as it did before:\n{stdout}"
    );
    let rollback = sim
        .mutations()
        .into_iter()
        .find(|r| r.path.ends_with("/rollback"))
        .expect("a rollback was sent");
    assert_eq!(rollback.form, [("start".to_string(), "1".to_string())]);
    assert!(stdout.contains("run state"), "{stdout}");
    let muts: Vec<(String, String)> = sim
        .mutations()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    let n = sim.node();
    let want_prefixes = [
        ("POST", format!("/nodes/{n}/lxc/100/snapshot")),
        (
            "POST",
            format!("/nodes/{n}/lxc/100/snapshot/felhom_selftest_"),
        ),
        (
            "DELETE",
            format!("/nodes/{n}/lxc/100/snapshot/felhom_selftest_"),
        ),
        ("PUT", format!("/nodes/{n}/lxc/100/config")),
        ("PUT", format!("/nodes/{n}/lxc/100/config")),
    ];
    assert_eq!(muts.len(), want_prefixes.len(), "{muts:?}");
    for ((m, p), (wm, wp)) in muts.iter().zip(want_prefixes.iter()) {
        assert_eq!(m, wm);
        assert!(p.starts_with(wp.as_str()), "{p} vs {wp}");
    }
    assert_no_secret(&seen);
}

#[test]
fn selftest_task_on_a_guest_without_description_deletes_the_marker_key() {
    let sim = sim();
    let dir = Dir::new("task-del");
    let cfg = write_config(&dir, &sim, &sim.fingerprint());
    assert!(sim.guest_config(101).unwrap().get("description").is_none());
    let mut seen = Vec::new();
    let out = agent_with(&cfg, &["selftest", "task", "--vmid", "101"], &mut seen);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(sim.guest_config(101).unwrap().get("description").is_none());
    assert_eq!(
        sim.guest_status(101).as_deref(),
        Some("stopped"),
        "a stopped guest is not started by the rollback"
    );
    let rollback = sim
        .mutations()
        .into_iter()
        .find(|r| r.path.ends_with("/rollback"))
        .expect("a rollback was sent");
    assert_eq!(rollback.form, [("start".to_string(), "0".to_string())]);
    let last = sim.mutations().pop().unwrap();
    assert!(
        last.form
            .iter()
            .any(|(k, v)| k == "delete" && v == "description"),
        "{last:?}"
    );
}

#[test]
fn selftest_task_refused_by_proxmox_exits_1_and_changes_nothing() {
    let sim = sim();
    sim.deny("/vms/100", "VM.Snapshot");
    sim.deny("/vms/100", "VM.Config.Options");
    let dir = Dir::new("task-denied");
    let cfg = write_config(&dir, &sim, &sim.fingerprint());
    let before = sim.guest_config(100).unwrap();
    let mut seen = Vec::new();
    let out = agent_with(&cfg, &["selftest", "task", "--vmid", "100"], &mut seen);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  snapshot"), "{stdout}");
    assert!(stdout.contains("Permission check failed"), "{stdout}");
    assert_eq!(
        sim.guest_config(100).unwrap().get("description"),
        before.get("description")
    );
    assert!(sim.snapshots(100).is_empty());
}

#[test]
fn usage_and_configuration_errors_exit_2_and_name_the_problem() {
    let sim = sim();
    let dir = Dir::new("usage");
    let mut seen = Vec::new();
    let out = agent(&["selftest", "task"], &mut seen);
    assert_exit_2_naming(&out, "needs --vmid");

    let cfg = write_config(&dir, &sim, &sim.fingerprint());
    let mut v = read_json(&cfg);
    v["proxmox"]["url"] = json!("http://127.0.0.1:8006");
    let bad = write_json(&dir, "bad.json", &v);
    let out = agent_with(&bad, &["selftest", "read"], &mut seen);
    assert_exit_2_naming(
        &out,
        "proxmox.url: must be https://HOST[:PORT], got \"http://127.0.0.1:8006\"",
    );
    let missing = Path::new("/nonexistent/agent.json");
    let out = agent_with(missing, &["selftest", "read"], &mut seen);
    assert_exit_2_naming(&out, "/nonexistent/agent.json");
    assert!(sim.requests().is_empty());
    assert_no_secret(&seen);
}

/// Signs `blob` with the test ed25519 key through the real ssh-keygen.
fn sign(dir: &Dir, name: &str, blob: &[u8], namespace: &str) -> PathBuf {
    let key = dir.path("signing-key");
    if !key.exists() {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors/sshsig/keys/ed25519"),
            &key,
        )
        .unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let file = dir.path(name);
    std::fs::write(&file, blob).unwrap();
    let st = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", namespace, "-f"])
        .arg(&key)
        .arg(&file)
        .status()
        .expect("ssh-keygen is installed");
    assert!(st.success());
    dir.path(&format!("{name}.sig"))
}

/// `name` in `dir`: an [`op_blob`] for `host` whose nonce starts with `n`, signed in
/// `namespace`; returns the blob's path and the signature's.
fn signed_op(dir: &Dir, name: &str, host: &str, n: &str, namespace: &str) -> (PathBuf, PathBuf) {
    let blob = op_blob(host, &format!("{n}123456789abcdef0123456789abcdef"));
    let sig = sign(dir, name, &blob, namespace);
    (dir.path(name), sig)
}

fn op_blob(host: &str, nonce: &str) -> Vec<u8> {
    let now = SystemClock.now().unix();
    format!(
        r#"{{"op":"guest_destroy","host_id":"{host}","guest_id":"105","guest_digest":"9c1e4bd07f3f6a25c8e4d1b2a3f5e6d7c8b9a0f1","params":{{"purge":"1"}},"key_id":"ops-2026","nonce":"{nonce}","not_before":"{}","expires_at":"{}"}}"#,
        Timestamp(now - 60),
        Timestamp(now + 3600)
    )
    .into_bytes()
}

#[test]
fn verify_prints_the_op_or_the_typed_refusal_and_burns_no_nonce() {
    let sim = sim();
    let dir = Dir::new("verify");
    let cfg = write_config(&dir, &sim, &sim.fingerprint());
    let mut seen = Vec::new();

    let blob = op_blob("pve-a", "0123456789abcdef0123456789abcdef");
    let sig = sign(&dir, "op.json", &blob, "felhom-op-v1");
    let b = dir.path("op.json");
    for _ in 0..2 {
        let out = verify(&b, &sig, &cfg, &mut seen);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
        assert!(
            stdout.starts_with("verified (no nonce burned)\n"),
            "{stdout}"
        );
        assert!(stdout.contains("guest_destroy"), "{stdout}");
        assert!(stdout.contains("ops-2026"), "{stdout}");
    }

    let (wrong_host, wrong_host_sig) =
        signed_op(&dir, "wrong-host.json", "pve-b", "1", "felhom-op-v1");
    let (wrong_ns, wrong_ns_sig) = signed_op(&dir, "wrong-ns.json", "pve-a", "2", "file");
    // A blob changed after signing: crypto fails over the raw bytes.
    let tampered = dir.path("tampered.json");
    let changed = String::from_utf8(blob)
        .unwrap()
        .replace("\"105\"", "\"106\"");
    std::fs::write(&tampered, changed).unwrap();
    // A signer the config does not list.
    let mut v = read_json(&cfg);
    v["authz"]["signers"][0]["public_key"] = json!(OTHER_PUB.trim());
    let other_cfg = write_json(&dir, "other.json", &v);
    // (case, blob, signature, config, the refusal's stable code)
    let refusals = [
        ("wrong host", &wrong_host, &wrong_host_sig, &cfg, "target"),
        (
            "wrong namespace",
            &wrong_ns,
            &wrong_ns_sig,
            &cfg,
            "namespace",
        ),
        ("tampered", &tampered, &sig, &cfg, "bad_signature"),
        ("unknown signer", &b, &sig, &other_cfg, "unknown_signer"),
    ];
    for (case, blob, sig, cfg, code) in refusals {
        assert_refused(&verify(blob, sig, cfg, &mut seen), code, case);
    }

    // A signer line that is not a key is a configuration error naming the entry.
    v["authz"]["signers"][0]["public_key"] = json!("ssh-ed25519 not-base64 x");
    let bad_cfg = write_json(&dir, "bad-signer.json", &v);
    let out = verify(&b, &sig, &bad_cfg, &mut seen);
    assert_exit_2_naming(&out, "authz.signers[0].public_key");
    assert!(sim.requests().is_empty(), "verify never talks to Proxmox");
    assert_no_secret(&seen);
}

#[test]
fn verify_accepts_each_op_of_the_catalogue_and_refuses_any_other_as_unknown_op() {
    let sim = sim();
    let dir = Dir::new("verify-catalogue");
    let cfg = write_config(&dir, &sim, &sim.fingerprint());
    let mut seen = Vec::new();
    let with_op = |op: &str, n: usize| {
        let blob = String::from_utf8(op_blob("pve-a", &format!("{n:032x}")))
            .unwrap()
            .replace("\"op\":\"guest_destroy\"", &format!("\"op\":\"{op}\""))
            .into_bytes();
        let name = format!("{op}.json");
        let sig = sign(&dir, &name, &blob, "felhom-op-v1");
        (dir.path(&name), sig)
    };
    for (n, op) in felhom_agent::reconcile::SIGNED_CATALOGUE.iter().enumerate() {
        let (b, s) = with_op(op, n + 1);
        let out = verify(&b, &s, &cfg, &mut seen);
        let stdout = text(&out.stdout);
        if *op == "rotate_signers" {
            // Catalogued, so checked as the gate would: a rotation without its params
            // (mode, version, the new set) is one an operational key may not sign.
            assert_refused(&out, "role_denied", op);
            continue;
        }
        assert_eq!(out.status.code(), Some(0), "{op}: {stdout}");
        assert!(
            stdout.starts_with("verified (no nonce burned)\n"),
            "{stdout}"
        );
    }
    for (n, op) in ["storage_wipe", "decommission", "start", "reboot"]
        .iter()
        .enumerate()
    {
        let (b, s) = with_op(op, n + 100);
        assert_refused(&verify(&b, &s, &cfg, &mut seen), "unknown_op", op);
    }
    assert!(sim.requests().is_empty(), "verify never talks to Proxmox");
}

#[test]
fn verify_refuses_oversized_input_as_malformed_after_a_bounded_read() {
    use felhom_agent::authz::MAX_ARMOR_BYTES;
    use felhom_agent::authz::MAX_BLOB_BYTES;
    let sim = sim();
    let dir = Dir::new("verify-caps");
    let cfg = write_config(&dir, &sim, &sim.fingerprint());
    let mut seen = Vec::new();
    let blob = op_blob("pve-a", "3123456789abcdef0123456789abcdef");
    let sig = sign(&dir, "op.json", &blob, "felhom-op-v1");
    let good_blob = dir.path("op.json");
    let junk = |name: &str, len: usize| {
        let p = dir.path(name);
        std::fs::write(&p, vec![b'A'; len]).unwrap();
        p
    };
    // (blob, sig, the input named as over its cap with that cap, or None: read whole
    // and refused by the verifier itself).
    type Case<'a> = (&'a Path, &'a Path, Option<(&'static str, usize)>);
    let big_sig = junk("big.sig", MAX_ARMOR_BYTES + 1);
    let huge_sig = junk("huge.sig", 1 << 20);
    let cap_sig = junk("cap.sig", MAX_ARMOR_BYTES);
    let big_blob = junk("big.json", MAX_BLOB_BYTES + 1);
    let zero = PathBuf::from("/dev/zero");
    let cases: Vec<Case> = vec![
        (&good_blob, &big_sig, Some(("--sig", MAX_ARMOR_BYTES))),
        (&good_blob, &huge_sig, Some(("--sig", MAX_ARMOR_BYTES))),
        (&big_blob, &sig, Some(("--blob", MAX_BLOB_BYTES))),
        // Endless input: only a bounded read ends (and a test that hangs fails).
        (&good_blob, &zero, Some(("--sig", MAX_ARMOR_BYTES))),
        (&zero, &sig, Some(("--blob", MAX_BLOB_BYTES))),
        // At the cap exactly: read whole, handed to the verifier, refused by its parser.
        (&good_blob, &cap_sig, None),
    ];
    for (b, s, over) in cases {
        let out = verify(b, s, &cfg, &mut seen);
        let case = format!("{} / {}", b.display(), s.display());
        assert_refused(&out, "malformed", &case);
        let stdout = text(&out.stdout);
        let detail = stdout.lines().nth(1).unwrap_or_default();
        match over {
            Some((what, cap)) => assert!(
                detail.contains(what) && detail.contains(&cap.to_string()),
                "{case}: the detail names the input and its cap: {detail}"
            ),
            None => assert!(!detail.contains("--sig"), "{case}: {detail}"),
        }
    }
    // The same signature under the cap still verifies: the caps refuse only size.
    let out = verify(&good_blob, &sig, &cfg, &mut seen);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    // A file that cannot be read stays a usage error naming it.
    let missing = dir.path("missing.sig");
    let unreadable = dir.path("a-directory");
    std::fs::create_dir_all(&unreadable).unwrap();
    for (b, s, named) in [
        (&good_blob, &missing, &missing),
        (&missing, &sig, &missing),
        (&good_blob, &unreadable, &unreadable),
    ] {
        let out = verify(b, s, &cfg, &mut seen);
        assert_exit_2_naming(&out, &named.display().to_string());
    }
    assert!(sim.requests().is_empty(), "verify never talks to Proxmox");
    assert_no_secret(&seen);
}

#[test]
fn selftest_offline_passes_on_a_clean_state_dir_and_fails_on_a_loose_one() {
    let sim = sim();
    let dir = Dir::new("offline");
    let cfg = write_config(&dir, &sim, &sim.fingerprint());
    let state = make_state_dir(&dir);
    let mut seen = Vec::new();
    let out = agent_with(&cfg, &["selftest", "offline"], &mut seen);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("selftest offline: passed"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // A clean pass warns about nothing (the known-answer tests included).
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("level=warn"), "{stderr}");

    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = agent_with(&cfg, &["selftest", "offline"], &mut seen);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("FAIL"));
    assert!(sim.requests().is_empty(), "offline means no network");
    assert_no_secret(&seen);
}

#[test]
fn selftest_offline_reports_an_invalid_signer_on_its_checklist() {
    let sim = sim();
    let dir = Dir::new("offline-bad-signer");
    let cfg = write_config(&dir, &sim, &sim.fingerprint());
    make_state_dir(&dir);
    let mut v = read_json(&cfg);
    v["authz"]["signers"][0]["public_key"] = json!("ssh-ed25519 not-base64 x");
    let cfg = write_json(&dir, "agent.json", &v);
    let mut seen = Vec::new();
    let out = agent_with(&cfg, &["selftest", "offline"], &mut seen);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    let line = stdout
        .lines()
        .find(|l| l.contains("config: authz"))
        .unwrap_or_else(|| panic!("no config line: {stdout}"));
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(line.contains("authz.signers[0].public_key"), "{line}");
    // Only that line failed: the known-answer tests and the state dir still pass.
    assert_eq!(stdout.matches("FAIL").count(), 1, "{stdout}");
    assert!(
        stdout.contains("selftest offline: 1 check(s) failed"),
        "{stdout}"
    );
    // `verify` with the same config still refuses to run (exit 2).
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors/sshsig");
    let out = verify(
        &vectors.join("blobs/op-valid.json"),
        &vectors.join("sigs/op-valid.ed25519.sig"),
        &cfg,
        &mut seen,
    );
    assert_exit_2_naming(&out, "authz.signers[0].public_key");
    assert_no_secret(&seen);
}

#[test]
fn plan_prints_the_next_pass_and_the_gate_word_and_executes_nothing() {
    let sim = sim();
    let dir = Dir::new("plan");
    let cfg = write_config(&dir, &sim, &sim.fingerprint());
    let desired = write_json(
        &dir,
        "desired.json",
        &json!({"generation": 3, "guests": [
            {"vmid": 100, "spec": {"cores": 4}, "description": "web"},
            {"vmid": 101, "run": "running"}
        ]}),
    );
    let mut v = read_json(&cfg);
    v["reconcile"] = json!({"desired_file": desired.display().to_string()});
    let cfg = write_json(&dir, "agent-plan.json", &v);
    let mut seen = Vec::new();
    let out = agent_with(&cfg, &["plan"], &mut seen);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("desired generation 3"), "{stdout}");
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("allowed (benign)"))
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "cores for 100, start for 101 — the description is not drift:\n{stdout}"
    );
    assert!(
        lines[0].contains("100") && lines[1].contains("101"),
        "{stdout}"
    );
    assert!(sim.mutations().is_empty(), "plan executes nothing");
    assert!(
        !dir.path("state").join("journal.log").exists(),
        "plan writes no journal"
    );
    assert_no_secret(&seen);
}

#[test]
fn journal_reads_the_history_without_writing_and_flags_damage() {
    use felhom_agent::reconcile::OpClass;
    use felhom_agent::reconcile::{Journal, JournalRecord, OpState};
    let sim = sim();
    let dir = Dir::new("journal");
    let cfg = write_config(&dir, &sim, &sim.fingerprint());
    let mut seen = Vec::new();
    let out = agent_with(&cfg, &["journal"], &mut seen);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).starts_with("no journal at "),
        "{}",
        text(&out.stdout)
    );

    let state = make_state_dir(&dir);
    let path = state.join("journal.log");
    {
        let j = Journal::open(&path).unwrap();
        let t = Timestamp(1_795_341_600);
        let a = JournalRecord::started("start-101-1", 101, OpClass::Start, t);
        j.append(&a).unwrap();
        j.append(&a.step(OpState::Succeeded, t)).unwrap();
        j.append(&JournalRecord::started(
            "set_config-100-2",
            100,
            OpClass::SetConfig,
            t,
        ))
        .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let out = agent_with(&cfg, &["journal"], &mut seen);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("start-101-1") && stdout.contains("succeeded"),
        "{stdout}"
    );
    assert!(stdout.contains("3 record(s)"), "{stdout}");
    let out = agent_with(&cfg, &["journal", "--in-flight"], &mut seen);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("set_config-100-2") && !stdout.contains("start-101-1"),
        "{stdout}"
    );
    assert!(stdout.contains("1 record(s)"), "{stdout}");
    let out = agent_with(&cfg, &["journal", "--tail", "1"], &mut seen);
    assert!(text(&out.stdout).contains("1 record(s)"));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "journal wrote nothing"
    );

    // Flip one byte inside the first record: the command reports damage and exits 1,
    // and still writes nothing.
    let mut bad = before.clone();
    let i = bad.iter().position(|&b| b == b'1').unwrap();
    bad[i] = b'7';
    std::fs::write(&path, &bad).unwrap();
    let out = agent_with(&cfg, &["journal"], &mut seen);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("DAMAGED"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(std::fs::read(&path).unwrap(), bad);
}

/// [`write_config`] plus a hub section trusting the simulators' CA, the bearer key in a
/// 0600 file as systemd credentials deliver it.
fn write_hub_config(dir: &Dir, sim: &ProxmoxSim, hub: &HubSim, key: &str) -> PathBuf {
    let cfg_path = write_config(dir, sim, &sim.fingerprint());
    let mut cfg = read_json(&cfg_path);
    let key_file = write_0600(dir, "hub-key", format!("{key}\n").as_bytes());
    cfg["hub"] = json!({
        "url": hub.url(),
        "api_key_file": key_file.display().to_string(),
        "timeout_seconds": 5,
        "tls": {"ca_file": format!("{}/vectors/tls/ca.crt", env!("CARGO_MANIFEST_DIR"))}
    });
    write_json(dir, "agent.json", &cfg)
}

fn assert_no_hub_key(seen: &[String], keys: &[&str]) {
    for s in seen {
        for k in keys {
            assert!(!s.contains(k), "a hub key leaked into:\n{s}");
        }
    }
}

#[test]
fn selftest_hub_prints_the_report_and_the_envelope_and_exits_0() {
    let sim = sim();
    let hub = HubSim::builder()
        .default_envelope(json!({"poll_interval_seconds": 120, "blocked": false,
            "desired_generation": 3, "has_signed_ops": false}))
        .start();
    let dir = Dir::new("hub");
    let cfg = write_hub_config(&dir, &sim, &hub, &hub.key());
    let mut seen = Vec::new();
    let out = agent_with(&cfg, &["selftest", "hub"], &mut seen);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));

    // Both documents are printed as JSON after their headings.
    let report_at = stdout
        .find("host report:\n")
        .expect("the report is printed");
    let envelope_at = stdout
        .find("control envelope from ")
        .expect("the envelope is printed");
    assert!(report_at < envelope_at, "{stdout}");
    let report: Value =
        serde_json::from_str(&stdout[report_at + "host report:\n".len()..envelope_at]).unwrap();
    assert_eq!(report["host_id"], "pve-a");
    let vmids: Vec<&Value> = report["guests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| &g["vmid"])
        .collect();
    assert_eq!(vmids, [&json!(100), &json!(101)]);
    let envelope_json = stdout[envelope_at..].split_once('\n').unwrap().1;
    let envelope: Value = serde_json::from_str(envelope_json).unwrap();
    assert_eq!(envelope["poll_interval_seconds"], 120);
    assert_eq!(envelope["desired_generation"], 3);

    // The hub accepted exactly the report that was printed.
    let accepted = hub.reports();
    assert_eq!(accepted, [report], "one report, the one printed");
    assert!(sim.mutations().is_empty(), "selftest hub mutates nothing");
    assert_no_secret(&seen);
    assert_no_hub_key(&seen, &[&hub.key()]);
}

#[test]
fn selftest_hub_refused_by_the_hub_exits_1_and_leaks_no_key() {
    let sim = sim();
    let hub = HubSim::start();
    let dir = Dir::new("hub-401");
    let wrong = "hubkey-wrong-0000-1111-2222-333344445555";
    let cfg = write_hub_config(&dir, &sim, &hub, wrong);
    let mut seen = Vec::new();
    let out = agent_with(&cfg, &["selftest", "hub"], &mut seen);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("host report:"),
        "collected before sending: {stdout}"
    );
    assert!(!stdout.contains("control envelope"), "{stdout}");
    assert!(
        stderr.contains("401"),
        "the refusal names the status: {stderr}"
    );
    let reqs = hub.requests();
    assert_eq!(reqs.len(), 1, "one attempt");
    assert_eq!(
        reqs[0].authorization.as_deref(),
        Some(format!("Bearer {wrong}").as_str()),
        "the key from the file was sent"
    );
    assert!(hub.reports().is_empty());
    assert_no_secret(&seen);
    assert_no_hub_key(&seen, &[wrong, &hub.key()]);
}

#[test]
fn resume_rate_limit_writes_the_marker_without_the_state_lock() {
    let dir = Dir::new("resume");
    let sim = sim();
    let cfg = write_config(&dir, &sim, &sim.fingerprint());
    let mut seen = Vec::new();

    // `resume` alone lifts an operator's pause; with none set it changes nothing.
    let out = agent_with(&cfg, &["resume"], &mut seen);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("not paused"));

    let out = agent_with(&cfg, &["resume", "--rate-limit"], &mut seen);
    assert_eq!(
        out.status.code(),
        Some(1),
        "no state dir yet: {}",
        text(&out.stderr)
    );

    let state = make_state_dir(&dir);
    // A running daemon holds the lock: the command must not need it.
    let _daemon = felhom_agent::store::StateLock::acquire(&state).unwrap();
    let before = SystemClock.now();
    let out = agent_with(&cfg, &["resume", "--rate-limit"], &mut seen);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let marker = felhom_agent::reconcile::resume_marker_path(&state);
    let mode = std::fs::metadata(&marker).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let doc = read_json(&marker);
    let at = Timestamp::parse_rfc3339(doc["requested_at"].as_str().unwrap()).unwrap();
    assert!(at >= before, "{doc}");
    assert!(!felhom_agent::store::replace_temp(&marker).exists());
    assert_no_secret(&seen);
}
