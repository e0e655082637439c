//! `felhom-agent status` against a real daemon process: exit 3 before it runs, 0 once
//! it reported and passed, 1 naming why while paused or while the hub is down, 3 again
//! once it stopped; the status file carries what the issue lists and no secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::agent::{Agent, fast_hub, run_command};

use std::path::Path;

use felhom_agent::store::SECOND_MS_ENV;
use felhom_sim::{DEFAULT_TOKEN_SECRET, GuestSeed, ProxmoxSim};
use serde_json::Value;

/// `status --json`: the exit code and the verdict.
fn status(config: &Path) -> (i32, Value) {
    let out = run_command(&["status", "--json"], config);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), v)
}

fn reasons(v: &Value) -> String {
    v["reasons"].to_string()
}

#[test]
fn status_exit_codes_follow_the_daemon_and_the_file_holds_no_secret() {
    let pve = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web").running(true))
        .guest(GuestSeed::new(101, "db"))
        .start();
    let hub = fast_hub();
    let dir = common::tempdir("status", "codes");
    let (_, config) = common::agent::operator_setup(&dir, &pve, &hub, |_| {});
    let state = dir.join("state");

    let (code, v) = status(&config);
    assert_eq!((code, v["state"].as_str()), (3, Some("not_running")), "{v}");

    let mut agent = Agent::spawn(
        &["run"],
        &config,
        &dir.join("stderr.log"),
        &[(SECOND_MS_ENV, "20")],
    );
    let mut last = Value::Null;
    agent.wait_until("status healthy", |_| {
        let (code, v) = status(&config);
        last = v;
        code == 0
    });
    assert_eq!(last["state"], "healthy", "{last}");
    let doc = &last["status"];
    assert_eq!(doc["pid"], agent.pid(), "{doc}");
    assert_eq!(doc["config_path"], config.display().to_string());
    assert_eq!(doc["last_report"]["ok"], true, "{doc}");
    assert!(doc["last_report"]["answer"].is_object(), "{doc}");
    assert!(
        doc["last_pass"]["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["vmid"] == 101 && a["kind"] == "start" && a["outcome"] == "applied"),
        "{doc}"
    );
    for field in [
        "up_since",
        "version",
        "ops_in_flight",
        "pending_signatures",
        "hold",
        "damage",
        "signers",
        "restore_tests",
    ] {
        assert!(doc.get(field).is_some(), "{field} missing: {doc}");
    }

    // Paused: degraded, naming the pause, at once (the marker is read live).
    let out = run_command(&["pause", "--reason", "kernel update"], &config);
    assert_eq!(out.status.code(), Some(0));
    let (code, v) = status(&config);
    assert_eq!(code, 1, "{v}");
    assert!(reasons(&v).contains("kernel update"), "{v}");
    let out = run_command(&["resume"], &config);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(status(&config).0, 0, "resumed: healthy again");

    let hub_key = hub.key().to_string();
    // The hub goes away: degraded once a round failed, naming it.
    hub.shutdown();
    agent.wait_until("status degraded by the failed report", |_| {
        let (code, v) = status(&config);
        last = v;
        code == 1 && reasons(&last).contains("hub report failed")
    });

    // No secret in the file or the output.
    let file = std::fs::read_to_string(state.join("status.json")).unwrap();
    for (what, text) in [("status.json", &file), ("status --json", &last.to_string())] {
        assert!(!text.contains(DEFAULT_TOKEN_SECRET), "token in {what}");
        assert!(!text.contains(&hub_key), "hub key in {what}");
    }

    agent.stop();
    let (code, v) = status(&config);
    assert_eq!((code, v["state"].as_str()), (3, Some("not_running")), "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}
