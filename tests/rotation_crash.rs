//! A rotation through the real daemon, SIGKILLed at each of its lifecycle points (the
//! `fault-points` pause: after `started` is durable, after `signers.json` is renamed into
//! place, after the step ended but before its terminal record), then restarted without
//! the pause while the hub delivers the same op again. Whatever the point, the host holds
//! exactly the old set or exactly the new one (never a mix), the journal settles the op
//! as the file says, nothing is left in flight, the replay does not rotate twice, and
//! `selftest offline` passes on the state left behind. Also: the running daemon re-reads
//! `authz.revoked_keys_file` on SIGHUP and keeps the last good list when it breaks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::Path;

use common::agent::{Agent, BIN, fast_hub, write_agent_config};
use common::rotate::{NEW_OPS, OPS, REC1, REC2, REC3, entry, pubkey, rotation_blob, sign_as};
use felhom_agent::authz::{AuthzConfig, SIGNERS_FILE, load_signer_set_os};
use felhom_agent::base::{Clock, SystemClock};
use felhom_agent::reconcile::{Journal, OpClass, OpState};
use felhom_agent::store::{PAUSE_AT_ENV, PAUSE_MARKER_ENV, SECOND_MS_ENV};
use felhom_sim::ProxmoxSim;
use serde_json::{Value, json};

fn authz() -> Value {
    json!({"recovery_threshold": 2, "signers": [
        {"key_id": "ops-2026", "role": "operational", "public_key": pubkey(OPS)},
        {"key_id": "rec-1", "role": "recovery", "public_key": pubkey(REC1)},
        {"key_id": "rec-2", "role": "recovery", "public_key": pubkey(REC2)},
    ]})
}

fn rotation_decisions(state: &Path) -> Vec<String> {
    common::agent::audit_decisions(state, "op", "rotate_signers")
}

#[test]
fn a_kill_at_every_point_of_a_rotation_leaves_the_old_set_or_the_new() {
    let acfg: AuthzConfig = serde_json::from_value(authz()).unwrap();
    let old = load_signer_set_os(&acfg, None)
        .unwrap()
        .policy()
        .fingerprints();
    let set = vec![
        entry("ops-2027", "operational", NEW_OPS),
        entry("rec-1", "recovery", REC1),
        entry("rec-3", "recovery", REC3),
    ];
    for (point, applied) in [
        ("signed:after-started", false),
        ("rotation:after-rename", true),
        ("signed:after-wait", true),
    ] {
        let dir = common::tempdir("rotation-crash", &point.replace(':', "-"));
        let pve = ProxmoxSim::builder().start();
        let hub = fast_hub();
        fs::write(dir.join("desired.json"), r#"{"generation":1,"guests":[]}"#).unwrap();
        let cfg = write_agent_config(&dir, &pve, &hub, |c| {
            c["hub"]["poll_seconds"] = json!(60);
            c["authz"] = authz();
            c["reconcile"] = json!({"desired_file": dir.join("desired.json")});
        });
        let state = dir.join("state");
        let blob = rotation_blob("pve-a", "emergency", "1", &set, SystemClock.now().unix());
        let sigs = [sign_as(&dir, REC1, &blob), sign_as(&dir, REC2, &blob)];
        let queue = || hub.queue_signed_op_cosigned(&blob, &[&sigs[0], &sigs[1]]);
        queue();

        // Run to the point and SIGKILL there.
        let marker = dir.join("paused");
        let marker_env = marker.display().to_string();
        let mut agent = Agent::spawn(
            &["run"],
            &cfg,
            &dir.join("stderr.log"),
            &[
                (SECOND_MS_ENV, "10"),
                (PAUSE_AT_ENV, point),
                (PAUSE_MARKER_ENV, marker_env.as_str()),
            ],
        );
        agent.wait_until(&format!("the pause at {point}"), |_| {
            fs::read_to_string(&marker).is_ok_and(|m| m == point)
        });
        agent.kill();
        assert_eq!(
            state.join(SIGNERS_FILE).exists(),
            applied,
            "{point}: signers.json on disk right after the kill"
        );

        // Restart without the pause; the hub delivers the same op again.
        queue();
        let mut agent = Agent::spawn(
            &["run"],
            &cfg,
            &dir.join("stderr.log"),
            &[(SECOND_MS_ENV, "10")],
        );
        let replay_word = if applied { "skipped" } else { "replay" };
        agent.wait_until("the rotation settled and the replay handled", |_| {
            let settled = Journal::open_read_only(&state.join("journal.log")).is_ok_and(|j| {
                j.in_flight().is_empty()
                    && j.history()
                        .iter()
                        .any(|r| r.class == OpClass::RotateSigners && r.state.is_terminal())
            });
            settled && rotation_decisions(&state).last().map(String::as_str) == Some(replay_word)
        });
        agent.stop();

        let policy = load_signer_set_os(&acfg, Some(&state)).unwrap().policy();
        let fps = policy.fingerprints();
        if applied {
            assert_eq!(policy.version, 1, "{point}");
            assert_ne!(fps, old, "{point}");
            assert_eq!(fps.len(), 3, "{point}");
            assert!(fps.contains(&old[1]) && !fps.contains(&old[0]), "{point}");
        } else {
            assert_eq!((policy.version, fps), (0, old.clone()), "{point}");
        }
        let view = Journal::open_read_only(&state.join("journal.log")).unwrap();
        assert_eq!(view.damaged(), None);
        let ends: Vec<OpState> = view
            .history()
            .iter()
            .filter(|r| r.class == OpClass::RotateSigners && r.state.is_terminal())
            .map(|r| r.state)
            .collect();
        let want = if applied {
            OpState::Succeeded
        } else {
            OpState::Failed
        };
        assert_eq!(ends, vec![want], "{point}: one rotation, settled once");
        // Audited before the apply, and only by the run that applied it.
        let rotated = rotation_decisions(&state)
            .iter()
            .filter(|d| *d == "rotated")
            .count();
        assert_eq!(rotated, usize::from(applied), "{point}: rotation audits");
        let out = std::process::Command::new(BIN)
            .args(["selftest", "offline", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{point}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn sighup_rereads_the_revoked_keys_and_a_broken_file_keeps_the_last_good_list() {
    let dir = common::tempdir("rotation-crash", "sighup");
    let pve = ProxmoxSim::builder().start();
    let hub = fast_hub();
    fs::write(dir.join("desired.json"), r#"{"generation":1,"guests":[]}"#).unwrap();
    let revoked = dir.join("revoked_keys");
    fs::write(&revoked, "# nothing revoked yet\n").unwrap();
    let cfg = write_agent_config(&dir, &pve, &hub, |c| {
        c["hub"]["poll_seconds"] = json!(60);
        let mut a = authz();
        a["revoked_keys_file"] = json!(revoked);
        c["authz"] = a;
        c["reconcile"] = json!({"desired_file": dir.join("desired.json")});
    });
    let mut agent = Agent::spawn(
        &["run"],
        &cfg,
        &dir.join("stderr.log"),
        &[(SECOND_MS_ENV, "10")],
    );
    agent.wait_for_event("signer_policy_loaded", |e| e.is("revoked", "0"));
    agent.wait_for_event("daemon_running", |_| true);
    fs::write(&revoked, format!("{}\n", pubkey(OPS))).unwrap();
    agent.signal("HUP");
    agent.wait_for_event("revoked_keys_reloaded", |e| e.is("revoked", "1"));
    fs::write(&revoked, "ssh-ed25519 this-is-not-base64\n").unwrap();
    agent.signal("HUP");
    agent.wait_for_event("revoked_keys_reload_failed", |e| e.is("kept", "1"));
    agent.stop();
}
