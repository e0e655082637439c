//! The operator's pause as processes: `felhom-agent pause` before the daemon starts
//! (the command audits it itself), a daemon that holds every mutation while paused
//! (reconcile's and a signed op's, whose nonce is not burned) and keeps reporting the
//! pause, `resume` while the daemon runs (the daemon audits it), and the held work
//! running after the resume. Oracles: the simulators' logs, the reports, `event=` keys
//! and the audit log's records.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::agent::{Agent, fast_hub, run_command};
use common::sign::{authz_json, destroy_blob, ssh_keygen_sign};

use std::path::Path;

use felhom_agent::base::{Clock as _, SystemClock};
use felhom_agent::store::SECOND_MS_ENV;
use serde_json::{Value, json};

/// Runs a short command of the binary; its exit code and stdout.
fn cli(args: &[&str], config: &Path) -> (i32, String) {
    let out = run_command(args, config);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The audit log's records about the pause, in order: (decision, reason).
fn pause_audit(state: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(state.join("audit.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["data"]["op"] == "operator_pause")
        .map(|v| {
            (
                v["data"]["decision"].as_str().unwrap().to_owned(),
                v["data"]["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_pause_holds_reconcile_and_signed_ops_is_reported_and_resume_lets_them_run() {
    let pve = common::agent::operator_pve();
    let hub = fast_hub();
    let dir = common::tempdir("pause", "flow");
    let desired = |generation: u64| {
        json!({"generation": generation, "guests": [{"vmid": 101, "run": "running"}]}).to_string()
    };
    let (desired_file, config) = common::agent::operator_setup(&dir, &pve, &hub, |v| {
        v["authz"] = authz_json();
    });
    let state = dir.join("state");

    // Paused before the daemon starts: the command holds the state lock and audits.
    let (code, out) = cli(&["pause", "--reason", "disk swap in rack 3"], &config);
    assert_eq!(code, 0, "{out}");
    let audited = pause_audit(&state);
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0].0, "paused");
    assert!(audited[0].1.contains("disk swap in rack 3"), "{audited:?}");
    assert!(audited[0].1.contains("uid "), "who: {audited:?}");

    // A signed destroy of 102 is queued at the hub.
    let digest = pve.guest_digest(102).unwrap();
    let blob = destroy_blob("pve-a", "102", &digest, SystemClock.now().unix());
    let sig = ssh_keygen_sign(&dir, &blob);
    hub.queue_signed_op(&blob, Some(&sig));
    let mut agent = Agent::spawn(
        &["run"],
        &config,
        &dir.join("stderr.log"),
        &[(SECOND_MS_ENV, "20")],
    );

    let pass = agent.wait_for_event("reconcile_pass_done", |_| true);
    assert_eq!(pass.field("deferred"), "1", "{pass:?}");
    assert_eq!(pass.field("applied"), "0", "{pass:?}");
    let held = agent.wait_for_event("signed_op_handled", |e| e.field("outcome") == "held");
    assert!(held.field("reason").contains("paused"), "{held:?}");
    agent.wait_until("a report carrying the pause", |_| {
        hub.reports()
            .last()
            .is_some_and(|r| r["paused"]["reason"] == "disk swap in rack 3")
    });
    assert!(
        agent.events("gate_decision").is_empty(),
        "nothing reached the gate: {}",
        agent.log()
    );
    assert!(pve.mutations().is_empty(), "nothing sent while paused");
    // The daemon logs the pause it found (the command had audited it already).
    let found = agent.wait_for_event("operator_paused", |_| true);
    assert_eq!(found.field("reason"), "disk swap in rack 3", "{found:?}");

    // Resume while the daemon holds the lock: the daemon audits it.
    let (code, out) = cli(&["resume"], &config);
    assert_eq!(code, 0, "{out}");
    agent.wait_for_event("operator_resumed", |_| true);
    std::fs::write(&desired_file, desired(2)).unwrap();
    agent.wait_until("guest 101 started after the resume", |_| {
        pve.guest_status(101).as_deref() == Some("running")
    });
    // The held delivery never used its nonce: the same signature runs now.
    hub.queue_signed_op(&blob, Some(&sig));
    agent.wait_until("guest 102 destroyed after the resume", |_| {
        !pve.guest_ids().contains(&102)
    });
    agent.wait_until("a report without the pause", |_| {
        hub.reports().last().is_some_and(|r| r["paused"].is_null())
    });
    let audited = pause_audit(&state);
    assert_eq!(
        audited.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>(),
        ["paused", "resumed"],
        "each audited once: {audited:?}"
    );
    assert!(audited[1].1.contains("uid "), "who: {audited:?}");
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pause_refuses_a_bad_reason_and_resume_without_a_pause_changes_nothing() {
    let dir = common::tempdir("pause", "usage");
    let (config, state) = common::agent::offline_config(&dir);
    for args in [
        &["pause"][..],
        &["pause", "--reason", ""],
        &["pause", "--reason", "line\nbreak"],
    ] {
        let (code, _) = cli(args, &config);
        assert_eq!(code, 2, "{args:?}");
    }
    let (code, out) = cli(&["resume"], &config);
    assert_eq!(code, 0);
    assert!(out.contains("not paused"), "{out}");
    assert!(
        !state.join("pause.json").exists(),
        "no marker written by a refused pause or an idle resume"
    );
    assert!(pause_audit(&state).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
