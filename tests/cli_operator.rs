//! The operator's command line as a person uses it, the real binary as a child process
//! against the simulators: `op new` blobs signed by the real `ssh-keygen` and accepted
//! by `verify`, help for every command in both spellings, `--json`, text shown
//! unescaped, each error printed once, secrets found outside the systemd unit, and a
//! damaged journal acknowledged by the command its log line names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::agent::{Agent, BIN, fast_hub, write_agent_config};
use common::sign::{authz_json, ssh_keygen_sign};
use felhom_agent::base::{Clock, SystemClock, Timestamp};
use felhom_agent::cli::table::COMMANDS;
use felhom_agent::reconcile::{Journal, JournalRecord, OpClass};
use felhom_sim::{DEFAULT_TOKEN_SECRET, GuestSeed, ProxmoxSim};
use serde_json::{Value, json};

/// Runs the agent with `args` (and `env`), every `FELHOM_AGENT_*` and
/// `CREDENTIALS_DIRECTORY` of the test's own environment removed.
fn agent_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("CREDENTIALS_DIRECTORY");
    for (k, _) in std::env::vars() {
        if k.starts_with("FELHOM_AGENT_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("the agent binary runs")
}

fn agent(args: &[&str]) -> Output {
    agent_env(args, &[])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sim() -> ProxmoxSim {
    ProxmoxSim::builder()
        .guest(GuestSeed::new(105, "doomed").description("x"))
        .guest(GuestSeed::new(106, "web").running(true))
        .task_duration(std::time::Duration::from_millis(40))
        .start()
}

/// A config for `pve` (and an unused hub) trusting the test signer; state in
/// `dir/state` (0700).
fn config(dir: &Path, pve: &ProxmoxSim) -> PathBuf {
    let hub = fast_hub();
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    write_agent_config(dir, pve, &hub, |c| c["authz"] = authz_json())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn op_new_prints_a_blob_that_ssh_keygen_signs_and_verify_accepts() {
    let pve = sim();
    let dir = common::tempdir("cliop", "opnew");
    let cfg = config(&dir, &pve);
    let args = [
        "op",
        "new",
        "guest_destroy",
        "--guest",
        "105",
        "--param",
        "purge=1",
        "--valid",
        "30m",
        "--config",
        s(&cfg),
    ];
    let before = SystemClock.now().unix();
    let out = agent(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let blob: Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = pve.guest_digest(105).unwrap();
    assert_eq!(blob["op"], "guest_destroy");
    assert_eq!(blob["host_id"], "pve-a");
    assert_eq!(blob["guest_id"], "105");
    assert_eq!(blob["guest_digest"], digest.as_str(), "read from Proxmox");
    assert_eq!(blob["params"], json!({"purge": "1"}));
    assert_eq!(blob["key_id"], "ops-2026", "the only operational signer");
    let nonce = blob["nonce"].as_str().unwrap();
    assert!(
        nonce.len() == 32 && nonce.bytes().all(|b| b.is_ascii_hexdigit()),
        "128 bits in hex: {nonce}"
    );
    let nbf = Timestamp::parse_rfc3339(blob["not_before"].as_str().unwrap()).unwrap();
    let exp = Timestamp::parse_rfc3339(blob["expires_at"].as_str().unwrap()).unwrap();
    assert!(nbf.unix() >= before);
    assert_eq!(exp.unix() - nbf.unix(), 1800);
    assert!(pve.mutations().is_empty(), "op new only reads");

    // A second blob never repeats the nonce.
    let again: Value = serde_json::from_slice(&agent(&args).stdout).unwrap();
    assert_ne!(again["nonce"], blob["nonce"]);

    // The printed bytes, signed as printed, verify.
    let blob_path = dir.join("op.json");
    std::fs::write(&blob_path, &out.stdout).unwrap();
    let sig_path = dir.join("op.json.sig");
    std::fs::write(&sig_path, ssh_keygen_sign(&dir, &out.stdout)).unwrap();
    let v = agent(&[
        "verify",
        "--blob",
        s(&blob_path),
        "--sig",
        s(&sig_path),
        "--json",
        "--config",
        s(&cfg),
    ]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v.stdout));
    let v: Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(v["result"], "verified");
    assert_eq!(v["guest_digest"], digest.as_str());
    assert_eq!(v["nonce"], nonce);
    assert_eq!(v["signer"], "ops-2026");

    // With --digest and no Proxmox section, nothing is asked of Proxmox.
    let mut offline: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    offline.as_object_mut().unwrap().remove("proxmox");
    let offline_cfg = dir.join("offline.json");
    std::fs::write(&offline_cfg, offline.to_string()).unwrap();
    let requests = pve.requests().len();
    let out = agent(&[
        "op",
        "new",
        "snapshot_rollback",
        "--guest",
        "105",
        "--digest",
        "0123abcd",
        "--param",
        "snapshot=before",
        "--config",
        s(&offline_cfg),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let b: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["guest_digest"], "0123abcd");
    assert_eq!(pve.requests().len(), requests);

    // Outside the catalogue: a usage error that lists it, and no blob.
    let out = agent(&[
        "op",
        "new",
        "storage_wipe",
        "--guest",
        "105",
        "--config",
        s(&cfg),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("guest_destroy, restore_overwrite"));
    // A protected guest: the blob is printed with its new digest, and a note says
    // what the agent would refuse without `unprotect`.
    pve.set_config_value(105, "protection", Some("1"));
    let out = agent(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let b: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["guest_digest"], pve.guest_digest(105).unwrap().as_str());
    assert_ne!(b["guest_digest"], digest.as_str());
    assert!(
        text(&out.stderr).contains("--param unprotect=1"),
        "{}",
        text(&out.stderr)
    );
    let mut unprotect = args.to_vec();
    unprotect.extend(["--param", "unprotect=1"]);
    assert!(agent(&unprotect).stderr.is_empty());

    // More params than the verifier's blob cap holds: refused, no blob.
    let big = format!("note={}", "x".repeat(4000));
    let mut many: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    for i in 0..20 {
        many.extend(["--param".to_owned(), format!("k{i}{big}")]);
    }
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let out = agent(&many);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("65536-byte cap"),
        "{}",
        text(&out.stderr)
    );

    // A guest Proxmox does not have: exit 1, no blob.
    let out = agent(&[
        "op",
        "new",
        "guest_destroy",
        "--guest",
        "999",
        "--config",
        s(&cfg),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_command_answers_help_in_both_spellings_and_dash_v_the_version() {
    for c in COMMANDS {
        let words: Vec<&str> = c.name.split(' ').collect();
        let mut a = vec!["help"];
        a.extend(&words);
        let mut b = words.clone();
        b.push("--help");
        let (ha, hb) = (agent(&a), agent(&b));
        for (o, args) in [(&ha, &a), (&hb, &b)] {
            assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o.stderr));
            assert!(o.stderr.is_empty(), "{args:?}: {}", text(&o.stderr));
        }
        assert_eq!(ha.stdout, hb.stdout, "{}", c.name);
        let help = text(&ha.stdout);
        assert!(
            help.starts_with(&format!("Usage: felhom-agent {}\n", c.synopsis)),
            "{help}"
        );
    }
    let overview = agent(&["--help"]);
    assert_eq!(overview.status.code(), Some(0));
    assert_eq!(overview.stdout, agent(&["help"]).stdout);
    for c in COMMANDS {
        assert!(text(&overview.stdout).contains(c.synopsis), "{}", c.name);
    }
    for v in ["-V", "--version", "version"] {
        let o = agent(&[v]);
        assert_eq!(o.status.code(), Some(0), "{v}");
        assert_eq!(
            text(&o.stdout),
            format!("felhom-agent {}\n", felhom_agent::cli::VERSION)
        );
    }
}

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

#[test]
fn json_output_of_plan_journal_and_verify_carries_the_documented_fields() {
    let pve = sim();
    let dir = common::tempdir("cliop", "json");
    let cfg = config(&dir, &pve);
    let desired = dir.join("desired.json");
    std::fs::write(
        &desired,
        json!({"generation": 4, "guests": [{"vmid": 105, "run": "running"}]}).to_string(),
    )
    .unwrap();
    let mut v: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    v["reconcile"] = json!({"desired_file": desired});
    std::fs::write(&cfg, v.to_string()).unwrap();

    let out = agent(&["plan", "--json", "--config", s(&cfg)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        keys(&plan),
        [
            "actions",
            "generation",
            "guests",
            "managed",
            "node",
            "skipped",
            "summary"
        ]
    );
    assert_eq!(plan["generation"], 4);
    let a = &plan["actions"][0];
    assert_eq!(
        keys(a),
        [
            "code",
            "decision",
            "deferred_by",
            "kind",
            "params",
            "rate_limited",
            "reason",
            "vmid"
        ]
    );
    assert_eq!(
        (a["vmid"].as_u64(), a["kind"].as_str()),
        (Some(105), Some("start"))
    );
    assert_eq!(
        (a["decision"].as_str(), a["code"].as_str()),
        (Some("allowed"), Some("benign"))
    );
    assert_eq!(plan["summary"]["planned"], 1);
    assert!(pve.mutations().is_empty());

    let journal = dir.join("state/journal.log");
    {
        let j = Journal::open(&journal).unwrap();
        let mut r =
            JournalRecord::started("start-105-1", 105, OpClass::Start, Timestamp(1_800_000_000));
        r.detail = Some(r#"the "file" said: a\tb"#.to_owned() + "\x1b[2J\nforged line");
        j.append(&r).unwrap();
    }
    let out = agent(&["journal", "--json", "--config", s(&cfg)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keys(&doc), ["damaged", "records"]);
    let r = &doc["records"][0];
    assert_eq!(
        keys(r),
        ["at", "class", "detail", "op_id", "state", "upid", "vmid"]
    );
    assert_eq!(r["state"], "started");
    assert!(
        r["detail"].as_str().unwrap().contains('\x1b'),
        "JSON keeps the exact text"
    );

    // The text form: quotes as they are, control characters visible, one line.
    let out = agent(&["journal", "--config", s(&cfg)]);
    let t = text(&out.stdout);
    assert!(
        t.contains(r#"the "file" said: a\\tb\u{1b}[2J\nforged line"#),
        "{t}"
    );
    assert!(!t.contains(r#"\""#), "{t}");
    assert_eq!(t.lines().count(), 3, "header, the record, the count: {t}");

    // verify --json on a refusal: result, code, detail; quotes unescaped in text.
    let now = SystemClock.now().unix();
    let blob = format!(
        r#"{{"op":"guest_destroy","host_id":"pve-b","guest_id":"105","guest_digest":"ab","params":{{}},"key_id":"ops-2026","nonce":"00112233445566778899aabbccddeeff","not_before":"{}","expires_at":"{}"}}"#,
        Timestamp(now - 60),
        Timestamp(now + 600)
    );
    let blob_path = dir.join("other-host.json");
    std::fs::write(&blob_path, &blob).unwrap();
    let sig_path = dir.join("other-host.json.sig");
    std::fs::write(&sig_path, ssh_keygen_sign(&dir, blob.as_bytes())).unwrap();
    let verify = |json: bool| {
        let mut a = vec!["verify", "--blob", s(&blob_path), "--sig", s(&sig_path)];
        if json {
            a.push("--json");
        }
        a.extend(["--config", s(&cfg)]);
        agent(&a)
    };
    let out = verify(true);
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keys(&doc), ["code", "detail", "result", "signer_set"]);
    assert_eq!(
        (doc["result"].as_str(), doc["code"].as_str()),
        (Some("refused"), Some("target"))
    );
    let t = text(&verify(false).stdout);
    assert!(t.starts_with("refused: target\ndetail: "), "{t}");
    assert!(t.contains(r#""pve-b""#) && !t.contains(r#"\""#), "{t}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn each_error_is_printed_once() {
    let pve = sim();
    let dir = common::tempdir("cliop", "once");
    let cfg = config(&dir, &pve);

    // A configuration error: one line.
    let out = agent(&["plan", "--config", "/nonexistent/agent.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );

    // A daemon that fails after its start: one `daemon_failed`, the error nowhere else.
    std::fs::create_dir_all(dir.join("state/journal.log")).unwrap();
    let out = agent(&["run", "--config", s(&cfg)]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let failed = common::logfmt::events(&err, "daemon_failed");
    assert_eq!(failed.len(), 1, "{err}");
    let why = failed[0].field("error").to_owned();
    let tail = why.rsplit(": ").next().unwrap();
    assert_eq!(
        err.lines().filter(|l| l.contains(tail)).count(),
        1,
        "the error `{why}` printed more than once:\n{err}"
    );

    // A state directory that cannot be locked: the lock's own event, then one plain
    // line for the person at the terminal; no `daemon_failed` repeating it.
    let mut v: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    v["state_dir"] = json!("/proc/felhom-no-such/state");
    let bad = dir.join("bad-state.json");
    std::fs::write(&bad, v.to_string()).unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = agent(&["run", "--config", s(&bad)]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        common::logfmt::events(&err, "state_lock_failed").len(),
        1,
        "{err}"
    );
    assert!(
        common::logfmt::events(&err, "daemon_failed").is_empty(),
        "{err}"
    );
    let plain: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("felhom-agent: "))
        .collect();
    assert_eq!(plain.len(), 1, "{err}");
    assert_eq!(err.lines().count(), 2, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn selftest_read_finds_the_unit_credential_outside_systemd() {
    const UNIT_PATH: &str = "/run/credentials/felhom-agent.service/pve-token";
    assert!(
        !Path::new(UNIT_PATH).exists(),
        "this test runs outside the unit: {UNIT_PATH} must not exist here"
    );
    let pve = sim();
    let dir = common::tempdir("cliop", "creds");
    let cfg = config(&dir, &pve);
    let mut v: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    v["proxmox"].as_object_mut().unwrap().remove("token_secret");
    v["proxmox"]["token_secret_file"] = json!(UNIT_PATH);
    std::fs::write(&cfg, v.to_string()).unwrap();
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    let token = creds.join("pve-token");
    std::fs::write(&token, format!("{DEFAULT_TOKEN_SECRET}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();

    let out = agent_env(
        &["selftest", "read", "--config", s(&cfg)],
        &[("CREDENTIALS_DIRECTORY", s(&creds))],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("selftest read: passed"));

    // Without it: exit 2 naming the field and every place looked in, before any request.
    let requests = pve.requests().len();
    let out = agent(&["selftest", "read", "--config", s(&cfg)]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("proxmox.token_secret_file: ")
            && err.contains(UNIT_PATH)
            && err.contains("/etc/felhom-agent/credentials/pve-token"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(pve.requests().len(), requests);
    assert!(!text(&out.stdout).contains(DEFAULT_TOKEN_SECRET));
    assert!(!err.contains(DEFAULT_TOKEN_SECRET));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_journal_names_its_recovery_and_acknowledging_it_ends_the_refusal() {
    let pve = sim();
    let dir = common::tempdir("cliop", "ack");
    let cfg = config(&dir, &pve);
    let state = dir.join("state");
    // Damage inside the file (a torn last line alone would only be cut).
    const GARBAGE: &[u8] = b"garbage, not a store line\nnor this\n";
    std::fs::write(state.join("journal.log"), GARBAGE).unwrap();
    let log = dir.join("agent.log");

    let mut a = Agent::spawn(&["run"], &cfg, &log, &[]);
    let found = a.wait_for_event("journal_damage_found", |_| true);
    let damaged = state.join("journal.log.damaged");
    let step = format!(
        "felhom-agent state acknowledge-damage {}",
        damaged.display()
    );
    assert_eq!(found.get("recovery"), Some(step.as_str()), "{}", a.log());
    a.wait_for_event("daemon_running", |_| true);
    // While the daemon runs, the command refuses (the state lock) and moves nothing.
    let mut argv: Vec<&str> = step.split(' ').skip(1).collect();
    argv.extend(["--config", s(&cfg)]);
    let busy = agent(&argv);
    assert_eq!(busy.status.code(), Some(2), "{}", text(&busy.stderr));
    assert!(damaged.exists());
    a.stop();

    // Still refused after a restart until acknowledged.
    let j = Journal::open(&state.join("journal.log")).unwrap();
    assert!(j.damaged().is_some());
    drop(j);

    let out = agent(&argv);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!damaged.exists());
    let archived: Vec<PathBuf> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("journal.log.damaged.acknowledged-")
        })
        .collect();
    assert_eq!(archived.len(), 1, "{archived:?}");
    assert_eq!(
        std::fs::read(&archived[0]).unwrap(),
        GARBAGE,
        "archived, not edited"
    );
    let audit = std::fs::read_to_string(state.join("audit.log")).unwrap();
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let entry = audit
        .lines()
        .find(|l| l.contains("acknowledge_damage"))
        .expect("the acknowledgement is audited");
    assert!(
        entry.contains(&format!("uid {uid} ")) && entry.contains(s(&archived[0])),
        "{entry}"
    );

    // The next start is clean: no damage found, none from earlier.
    let mut a = Agent::spawn(&["run"], &cfg, &log, &[]);
    a.wait_for_event("daemon_running", |_| true);
    assert!(a.events("journal_damage_found").is_empty(), "{}", a.log());
    assert!(
        a.events("journal_damaged_earlier").is_empty(),
        "{}",
        a.log()
    );
    a.stop();
    assert!(
        Journal::open(&state.join("journal.log"))
            .unwrap()
            .damaged()
            .is_none()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
