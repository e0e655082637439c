//! The daemon as a process: the real binary (`felhom-agent run`) against the Proxmox
//! and hub simulators. It posts reports the hub accepts, exits 0 after SIGTERM or
//! SIGINT (even in the middle of a hub call that never answers), re-reads its log level
//! on SIGHUP, rides out a hub that is down for a while, and with a desired-state file
//! fixes drift through the gate, whose decisions the next reports carry. How fast it
//! stops is measured by `benches/shutdown.rs` and budgeted by `scripts/budgets.sh`.
//!
//! The binary built with the test-only feature `fault-points` (this target requires it,
//! in either profile) honours `FELHOM_FAULT_SECOND_MS`, which shortens each second of
//! the poll schedule, so several rounds (60 s apart on the schedule) happen within a
//! test; the shipped build ignores it. Oracles are the simulators' request logs and the
//! log lines' `event=` keys and fields.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::agent::{Agent, PATIENCE, fast_envelope, fast_hub, write_agent_config};
use common::logfmt::Event;

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use felhom_agent::store::SECOND_MS_ENV;
use felhom_sim::{DEFAULT_TOKEN_SECRET, Fault, FaultKind, GuestSeed, HubSim, ProxmoxSim};
use serde_json::{Value, json};

/// How long one schedule second lasts in these tests.
const SECOND_MS: &str = "20";

/// The agent run in its own directory (config, state, log), removed at the end.
struct Daemon {
    agent: Agent,
    dir: PathBuf,
    config: PathBuf,
}

impl Deref for Daemon {
    type Target = Agent;
    fn deref(&self) -> &Agent {
        &self.agent
    }
}

impl DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Agent {
        &mut self.agent
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Daemon {
    fn start(name: &str, pve: &ProxmoxSim, hub: &HubSim) -> Daemon {
        Daemon::start_with(name, pve, hub, |_| {})
    }

    /// Starts the agent on the standard config after `edit` has changed it.
    fn start_with(
        name: &str,
        pve: &ProxmoxSim,
        hub: &HubSim,
        edit: impl FnOnce(&mut Value),
    ) -> Daemon {
        Daemon::start_prepared(name, pve, hub, edit, |_| {})
    }

    /// [`Daemon::start_with`], after `prepare` has seen the (new) state directory.
    fn start_prepared(
        name: &str,
        pve: &ProxmoxSim,
        hub: &HubSim,
        edit: impl FnOnce(&mut Value),
        prepare: impl FnOnce(&Path),
    ) -> Daemon {
        let dir = common::tempdir("daemon", name);
        let config = write_config(&dir, pve, hub, "info", edit);
        // Tests run as root: state goes in the test's own directory, never the default.
        std::fs::create_dir_all(dir.join("state")).unwrap();
        prepare(&dir.join("state"));
        let agent = spawn(&dir, &config);
        Daemon { agent, dir, config }
    }

    /// Starts the agent again on the same config and state directory (after it has
    /// exited), its stderr appended to the same log.
    fn restart(&mut self) {
        assert!(!self.alive(), "restart only a stopped agent");
        self.agent = spawn(&self.dir, &self.config);
    }

    /// Waits for `n` accepted reports; fails at once, with the log, if the agent exits.
    fn wait_for_reports(&mut self, hub: &HubSim, n: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let reports = hub.wait_for_reports(n, Duration::from_millis(100));
            if reports.len() >= n || start.elapsed() > PATIENCE {
                return reports;
            }
            self.assert_alive();
        }
    }

    /// SIGTERM; the exit status, and this run's events `name` logged up to the exit.
    fn stop_then_events(&mut self, name: &str) -> (Option<i32>, Vec<Event>) {
        let status = self.stop_with("TERM");
        (status.code(), self.events(name))
    }
}

fn spawn(dir: &Path, config: &Path) -> Agent {
    Agent::spawn(
        &["run"],
        config,
        &dir.join("stderr.log"),
        &[(SECOND_MS_ENV, SECOND_MS)],
    )
}

/// Writes the standard config to `dir/agent.json` (state in `dir/state`) at log `level`,
/// after `edit` has changed it; returns its path.
fn write_config(
    dir: &Path,
    pve: &ProxmoxSim,
    hub: &HubSim,
    level: &str,
    edit: impl FnOnce(&mut Value),
) -> PathBuf {
    write_agent_config(dir, pve, hub, |v| {
        v["log"] = json!({"level": level});
        v["hub"]["poll_seconds"] = json!(60);
        v["hub"]["timeout_seconds"] = json!(2);
        edit(v);
    })
}

fn sims() -> (ProxmoxSim, HubSim) {
    let pve = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web").running(true).cores(2))
        .guest(GuestSeed::new(101, "db"))
        .start();
    (pve, hub_sim(0))
}

/// A hub simulator on `port` (0: any) asking for the shortest interval, so rounds come
/// every 60 schedule seconds.
fn hub_sim(port: u16) -> HubSim {
    HubSim::builder()
        .port(port)
        .default_envelope(fast_envelope())
        .start()
}

/// Waits, while the hub is down, until `enough` holds; the daemon must stay up meanwhile.
fn wait_while_hub_down(agent: &mut Daemon, what: &str, enough: impl Fn(&Agent) -> bool) {
    agent.wait_until(&format!("{what} while the hub is down"), enough);
    assert!(agent.alive(), "still running while the hub is down");
}

/// Once the hub is back: one more report reaches it, the recovery is logged, and
/// SIGTERM still ends the daemon with 0.
fn reports_again_then_stops(mut agent: Daemon, hub: &HubSim) {
    let reports = agent.wait_for_reports(hub, 1);
    assert_eq!(reports.len(), 1, "reported again once the hub is back");
    let back = agent.wait_for_event("report_recovered", |_| true);
    assert_ne!(back.field("failed_rounds"), "0", "{back:?}");
    let status = agent.stop_with("TERM");
    assert_eq!(status.code(), Some(0), "{}", agent.log());
}

#[test]
fn the_daemon_posts_reports_the_hub_accepts_and_exits_0_after_sigterm() {
    let (pve, hub) = sims();
    let mut agent = Daemon::start("reports", &pve, &hub);
    let reports = agent.wait_for_reports(&hub, 2);
    assert!(reports.len() >= 2, "two rounds reported:\n{}", agent.log());
    for r in &reports {
        assert_eq!(r["host_id"], "pve-a");
        let ids: Vec<&Value> = r["guests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| &g["vmid"])
            .collect();
        assert_eq!(ids, [&json!(100), &json!(101)]);
        assert_eq!(r["guests"][0]["status"], "running");
    }
    let posted: Vec<u16> = hub
        .requests()
        .iter()
        .filter(|q| q.path == "/api/v1/host-report")
        .map(|q| q.status)
        .collect();
    assert!(
        posted.len() >= 2 && posted.iter().all(|s| *s == 200),
        "every report was accepted by the contract check: {posted:?}"
    );
    assert!(agent.alive());
    let (code, stopped) = agent.stop_then_events("daemon_stopped");
    assert_eq!(code, Some(0), "{}", agent.log());
    assert_eq!(stopped.len(), 1, "{}", agent.log());
    let log = agent.log();
    assert!(!log.contains(&hub.key()), "the hub key is not logged");
    assert!(
        !log.contains(DEFAULT_TOKEN_SECRET),
        "the token is not logged"
    );
    assert!(
        pve.mutations().is_empty(),
        "the hub loop only reads Proxmox"
    );
}

#[test]
fn sigint_also_stops_the_daemon_cleanly() {
    let (pve, hub) = sims();
    let mut agent = Daemon::start("sigint", &pve, &hub);
    assert!(
        !agent.wait_for_reports(&hub, 1).is_empty(),
        "{}",
        agent.log()
    );
    let status = agent.stop_with("INT");
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    assert_eq!(agent.events("daemon_stopped").len(), 1, "{}", agent.log());
}

#[test]
fn sigterm_during_a_hub_call_that_never_answers_still_exits_0() {
    let (pve, hub) = sims();
    // The hub holds its answer far longer than the test's patience: an agent that
    // waited for it would never exit in time.
    hub.inject(Fault::new(
        None,
        "/api/v1/host-report",
        FaultKind::Delay(Duration::from_secs(3600)),
    ));
    let mut agent = Daemon::start("slow", &pve, &hub);
    agent.wait_until("the first hub request", |_| !hub.requests().is_empty());
    let (code, sent) = agent.stop_then_events("report_sent");
    assert_eq!(code, Some(0), "{}", agent.log());
    assert!(sent.is_empty(), "the agent never had the answer: {sent:?}");
    assert_eq!(agent.events("daemon_stopped").len(), 1, "{}", agent.log());
}

#[test]
fn the_hub_down_for_a_while_does_not_stop_the_daemon_and_it_reports_again() {
    let (pve, hub) = sims();
    hub.inject(Fault::new(None, "", FaultKind::DropConnection).times(usize::MAX));
    let mut agent = Daemon::start("hubdown", &pve, &hub);
    wait_while_hub_down(&mut agent, "three attempts", |_| hub.requests().len() >= 3);
    assert!(hub.reports().is_empty());
    let attempts: Vec<Instant> = hub.requests().iter().map(|r| r.at).collect();
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    println!("gaps between attempts while down: {gaps:?}");
    assert!(
        gaps[1] > gaps[0],
        "waits grow while the hub stays down: {gaps:?}"
    );
    hub.clear_faults();
    reports_again_then_stops(agent, &hub);
}

#[test]
fn the_hub_port_closed_for_a_while_does_not_stop_the_daemon_and_it_reports_again() {
    let (pve, hub) = sims();
    let mut agent = Daemon::start("hubclosed", &pve, &hub);
    assert_eq!(agent.wait_for_reports(&hub, 1).len(), 1, "{}", agent.log());
    let port = hub.port();
    // The hub goes away: nothing listens on its port, so connections are refused.
    hub.shutdown();
    wait_while_hub_down(&mut agent, "two refused rounds", |a| {
        let failed = a.events("report_failed");
        failed.len() >= 2 && failed[1].is("consecutive_failures", "2")
    });
    // The same hub (key, certificate) comes back on the same port.
    let back = hub_sim(port);
    reports_again_then_stops(agent, &back);
}

#[test]
fn sighup_rereads_the_log_level_and_keeps_it_when_the_config_is_broken() {
    let (pve, hub) = sims();
    let mut agent = Daemon::start("sighup", &pve, &hub);
    assert!(
        !agent.wait_for_reports(&hub, 1).is_empty(),
        "{}",
        agent.log()
    );
    assert!(
        agent.all_events().iter().all(|e| e.level != "debug"),
        "info level at start:\n{}",
        agent.log()
    );
    write_config(&agent.dir, &pve, &hub, "debug", |_| {});
    agent.signal("HUP");
    agent.wait_for_event("log_level_changed", |e| e.is("log_level", "debug"));
    agent.wait_for_event("report_sent", |e| e.level == "debug");
    std::fs::write(&agent.config, "{ not json").unwrap();
    agent.signal("HUP");
    let failed = agent.wait_for_event("sighup_reload_failed", |_| true);
    assert_eq!(failed.level, "warn");
    assert!(
        agent.alive(),
        "a broken config on SIGHUP does not stop the agent"
    );
    assert_eq!(
        agent.events("log_level_changed").len(),
        1,
        "the broken config changed no level"
    );
    let status = agent.stop_with("TERM");
    assert_eq!(status.code(), Some(0), "{}", agent.log());
}

/// The `section` of each of this run's warnings that TLS verification is off.
fn insecure_sections(agent: &Agent) -> Vec<String> {
    agent
        .events("tls_verification_disabled")
        .iter()
        .filter(|e| e.level == "warn")
        .map(|e| e.field("section").to_owned())
        .collect()
}

#[test]
fn insecure_tls_is_warned_at_start() {
    let (pve, hub) = sims();
    let mut agent = Daemon::start_with("insecure", &pve, &hub, |v| {
        v["proxmox"]["tls"] = json!({"insecure_skip_verify": true});
    });
    assert!(!agent.wait_for_reports(&hub, 1).is_empty());
    assert_eq!(
        insecure_sections(&agent),
        ["proxmox"],
        "only the insecure section is named:\n{}",
        agent.log()
    );
    let status = agent.stop_with("TERM");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn insecure_hub_tls_is_warned_at_every_start() {
    let (pve, hub) = sims();
    let mut agent = Daemon::start_with("insecure-hub", &pve, &hub, |v| {
        v["hub"]["tls"] = json!({"insecure_skip_verify": true});
    });
    // The hub's certificate is not trusted by anything in this config: only the
    // insecure mode lets the reports through.
    assert!(
        !agent.wait_for_reports(&hub, 1).is_empty(),
        "{}",
        agent.log()
    );
    assert_eq!(insecure_sections(&agent), ["hub"], "{}", agent.log());
    let status = agent.stop_with("TERM");
    assert_eq!(status.code(), Some(0));

    // A restart on the same config and state warns again: nothing remembers it.
    let before = hub.reports().len();
    agent.restart();
    assert!(agent.wait_for_reports(&hub, before + 1).len() > before);
    assert_eq!(insecure_sections(&agent), ["hub"], "{}", agent.log());
    let status = agent.stop_with("TERM");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn the_log_reader_reads_back_what_the_agent_writes() {
    let tap = felhom_agent::base::log::tap();
    let hostile = "CT is locked\nlevel=error event=forged x=\"y\" \\ \u{1b}[31m";
    felhom_agent::error!(
        log_reader_probe,
        "a message",
        vmid = 105,
        why = hostile,
        empty = ""
    );
    let text = String::from_utf8_lossy(&tap.lock().unwrap()).into_owned();
    let events = common::logfmt::events(&text, "log_reader_probe");
    assert_eq!(events.len(), 1, "one line, one event: {text}");
    let e = &events[0];
    assert_eq!(e.level, "error");
    assert_eq!(e.get("vmid"), Some("105"));
    assert_eq!(e.get("why"), Some(hostile), "quotes and escapes undone");
    assert_eq!(e.get("empty"), Some(""));
    assert_eq!(e.get("msg"), None, "the reader keeps no wording");
    assert_eq!(e.fields.len(), 3, "{e:?}");
    assert!(common::logfmt::events(&text, "forged").is_empty(), "{text}");
    assert_eq!(
        common::logfmt::Event::parse("felhom-agent: config error"),
        None
    );
}

#[test]
fn with_a_desired_state_file_the_daemon_fixes_drift_and_reports_the_gate_decisions() {
    let pve = ProxmoxSim::builder()
        .guest(
            GuestSeed::new(100, "web")
                .running(true)
                .cores(2)
                .description("web"),
        )
        .guest(GuestSeed::new(101, "db"))
        .start();
    let hub = fast_hub();
    let mut agent = Daemon::start_with("desired", &pve, &hub, |v| {
        let file = PathBuf::from(v["state_dir"].as_str().unwrap())
            .parent()
            .unwrap()
            .join("desired.json");
        // The description reads back as "web\n" from Proxmox: not drift.
        let desired = json!({"generation": 1, "guests": [
            {"vmid": 100, "run": "running", "spec": {"cores": 4}, "description": "web"},
            {"vmid": 101, "run": "running"}
        ]});
        std::fs::write(&file, desired.to_string()).unwrap();
        v["reconcile"] = json!({"desired_file": file});
    });
    agent.wait_until("guest 101 running", |_| {
        pve.guest_status(101).as_deref() == Some("running")
    });
    agent.wait_until("guest 100 at 4 cores", |_| {
        pve.guest_config(100).and_then(|c| c.get("cores").cloned()) == Some(json!(4))
    });
    // A report made after both decisions carries them in its audit tail.
    let mut tail = Vec::new();
    agent.wait_until("a report whose audit tail has both decisions", |_| {
        tail = hub
            .reports()
            .last()
            .map(|r| r["audit_tail"].as_array().unwrap().clone())
            .unwrap_or_default();
        tail.len() >= 2
    });
    let decisions: Vec<(String, String, String)> = tail
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap().to_owned(),
                e["guest_id"].as_str().unwrap_or("").to_owned(),
                e["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        decisions.contains(&("set_config".into(), "100".into(), "allowed".into())),
        "{decisions:?}"
    );
    assert!(
        decisions.contains(&("start".into(), "101".into(), "allowed".into())),
        "{decisions:?}"
    );
    // Different guests run in parallel: compare as a set.
    let mut mutations: Vec<(String, String)> = pve
        .mutations()
        .into_iter()
        .map(|m| (m.method, m.path))
        .collect();
    mutations.sort();
    let node = pve.node();
    assert_eq!(
        mutations,
        [
            (
                "POST".to_owned(),
                format!("/nodes/{node}/lxc/101/status/start")
            ),
            ("PUT".to_owned(), format!("/nodes/{node}/lxc/100/config")),
        ],
        "one config write and one start, nothing else"
    );
    let put = pve
        .mutations()
        .into_iter()
        .find(|m| m.method == "PUT")
        .unwrap();
    assert!(
        put.form.iter().all(|(k, _)| k != "description"),
        "the description's trailing newline is not drift: {:?}",
        put.form
    );
    let (code, stopped) = agent.stop_then_events("daemon_stopped");
    assert_eq!(code, Some(0), "{}", agent.log());
    assert_eq!(stopped.len(), 1, "{}", agent.log());
}

#[test]
fn while_the_hub_blocks_the_host_a_signed_op_is_held_unburned_and_runs_once_unblocked() {
    use common::sign::{authz_json, destroy_blob, ssh_keygen_sign};
    use felhom_agent::base::{Clock as _, SystemClock};

    let (pve, hub) = sims();
    // The hub blocks the host (its answers and events say so) and has the op queued.
    hub.set_blocked(true);
    let digest = pve.guest_digest(101).unwrap();
    let blob = destroy_blob("pve-a", "101", &digest, SystemClock.now().unix());
    let sign_dir = common::tempdir("daemon", "blocked-sign");
    let sig = ssh_keygen_sign(&sign_dir, &blob);
    hub.queue_signed_op(&blob, Some(&sig));
    let mut agent = Daemon::start_with("blocked", &pve, &hub, |v| {
        v["authz"] = authz_json();
    });

    let held = agent.wait_for_event("signed_op_handled", |e| e.field("outcome") == "held");
    assert_eq!(held.field("guest"), "101", "{held:?}");
    assert!(
        agent
            .events("signed_op_handled")
            .iter()
            .all(|e| e.field("outcome") == "held"),
        "{}",
        agent.log()
    );
    assert!(
        agent.events("gate_decision").is_empty(),
        "the gate never saw it"
    );
    assert!(pve.guest_ids().contains(&101));
    assert!(
        pve.mutations().is_empty(),
        "nothing sent to Proxmox while blocked"
    );

    // The hub lifts the block and delivers it again: the same signature runs, because
    // the held delivery never used its nonce.
    hub.set_blocked(false);
    hub.queue_signed_op(&blob, Some(&sig));
    agent.wait_until("guest 101 destroyed", |_| !pve.guest_ids().contains(&101));
    let handled = agent.wait_for_event("signed_op_handled", |e| e.field("outcome") != "held");
    assert_eq!(handled.field("outcome"), "executed", "{handled:?}");

    // The reports carry both decisions in order: held, then executed.
    let mut decisions = Vec::new();
    agent.wait_until("a report with the held and the executed op", |_| {
        decisions = hub
            .reports()
            .last()
            .and_then(|r| r["audit_tail"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|e| e["guest_id"] == "101")
            .map(|e| e["decision"].as_str().unwrap_or("").to_owned())
            .collect();
        decisions.contains(&"executed".to_owned())
    });
    assert_eq!(
        decisions.first().map(String::as_str),
        Some("held"),
        "{decisions:?}"
    );
    let (code, _) = agent.stop_then_events("daemon_stopped");
    assert_eq!(code, Some(0));
}

#[test]
fn with_source_hub_the_daemon_converges_to_the_hubs_document_then_from_its_cache_with_the_hub_down()
{
    let (pve, hub) = sims();
    hub.publish_desired_state(&json!({"generation": 3, "guests": [
        {"vmid": 101, "run": "running"}
    ]}));
    let mut agent = Daemon::start_with("hubsource", &pve, &hub, |v| {
        v["reconcile"] = json!({"source": "hub"});
    });
    agent.wait_until("guest 101 running", |_| {
        pve.guest_status(101).as_deref() == Some("running")
    });
    let loaded = agent.wait_for_event("desired_loaded", |_| true);
    assert_eq!(loaded.field("source"), "hub", "{loaded:?}");
    assert_eq!(loaded.field("generation"), "3");
    let cache = agent.dir.join("state").join("desired.json");
    assert!(cache.is_file(), "the document is cached");
    let (code, _) = agent.stop_then_events("daemon_stopped");
    assert_eq!(code, Some(0));

    // The hub goes away, the guest is stopped behind the agent's back, the agent
    // restarts: it converges toward the cached document.
    hub.shutdown();
    pve.set_running(101, false);
    agent.restart();
    let cached = agent.wait_for_event("desired_loaded", |_| true);
    assert_eq!(cached.field("source"), "cache", "{cached:?}");
    assert_eq!(cached.field("generation"), "3");
    agent.wait_until("guest 101 running again", |_| {
        pve.guest_status(101).as_deref() == Some("running")
    });
    assert!(
        pve.guest_ids().contains(&100),
        "a guest not in the document is kept"
    );
    agent.wait_for_event("desired_fetch_failed", |_| true);
    let (code, _) = agent.stop_then_events("daemon_stopped");
    assert_eq!(code, Some(0));
}

#[test]
fn the_event_stream_brings_a_hub_change_between_reports() {
    let pve = ProxmoxSim::builder()
        .guest(GuestSeed::new(101, "db").running(false))
        .start();
    // Reports an hour apart on the schedule (72 s here): only the stream can bring the
    // change in time.
    let hub = HubSim::builder()
        .default_envelope(json!({"poll_interval_seconds": 3600, "blocked": false,
            "desired_generation": 0, "has_signed_ops": false}))
        .start();
    hub.publish_desired_state(&json!({"generation": 1, "guests": []}));
    let mut agent = Daemon::start_with("events", &pve, &hub, |v| {
        v["reconcile"] = json!({"source": "hub"});
        v["hub"]["poll_seconds"] = json!(3600);
        v["hub"]["event_wait_seconds"] = json!(30);
    });
    agent.wait_for_event("desired_loaded", |e| e.field("generation") == "1");
    let running = agent.wait_for_event("daemon_running", |_| true);
    assert!(
        running.field("workers").contains("hub-events"),
        "{running:?}"
    );
    let reports = agent.wait_for_reports(&hub, 1).len();

    hub.publish_desired_state(&json!({"generation": 2, "guests": [
        {"vmid": 101, "run": "running"}
    ]}));
    agent.wait_until("guest 101 running", |_| {
        pve.guest_status(101).as_deref() == Some("running")
    });
    assert_eq!(hub.reports().len(), reports, "no report came in between");
    let fetches = hub.desired_state_fetches();
    assert_eq!(
        fetches
            .last()
            .and_then(|r| r.if_none_match.clone())
            .as_deref(),
        Some("\"1\""),
        "fetched because the stream announced generation 2"
    );
    let (code, _) = agent.stop_then_events("daemon_stopped");
    assert_eq!(code, Some(0), "the stop does not wait for the long poll");
}

/// The `signed_op_results` of a report, as `id outcome code` words.
fn results_of(report: &Value) -> Vec<String> {
    report["signed_op_results"]
        .as_array()
        .unwrap_or_else(|| panic!("no signed_op_results: {report}"))
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["id"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
                r["code"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn an_executed_destroys_result_survives_restarts_until_the_hub_acknowledges_it() {
    use common::sign::{authz_json, destroy_blob, ssh_keygen_sign};
    use felhom_agent::base::{Clock as _, SystemClock};

    let (pve, hub) = sims();
    let digest = pve.guest_digest(101).unwrap();
    let blob = destroy_blob("pve-a", "101", &digest, SystemClock.now().unix());
    let sig = ssh_keygen_sign(&common::tempdir("daemon", "results-sign"), &blob);
    let id = hub.queue_signed_op(&blob, Some(&sig));
    let mut agent = Daemon::start_with("results", &pve, &hub, |v| {
        v["authz"] = authz_json();
    });
    let handled = agent.wait_for_event("signed_op_handled", |_| true);
    assert_eq!(handled.field("outcome"), "executed", "{handled:?}");
    let (code, _) = agent.stop_then_events("daemon_stopped");
    assert_eq!(code, Some(0));

    // Whether or not a report carried it before the stop, the restarted agent does.
    let executed = format!("{id} executed executed");
    let before = hub.reports().len();
    agent.restart();
    let reports = agent.wait_for_reports(&hub, before + 1);
    assert_eq!(results_of(&reports[before]), [executed], "after a restart");
    let kept = hub.signed_op_results();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        kept[0]["nonce"].as_str(),
        felhom_agent::app::unverified_nonce(&blob).as_deref()
    );

    // The hub acknowledges it: the report after that answer no longer carries it.
    hub.ack_signed_op_results(&[id.as_str()]);
    agent.wait_until("a report without the acknowledged result", |_| {
        hub.reports()
            .last()
            .is_some_and(|r| results_of(r).is_empty())
    });
    agent.wait_for_event("signed_op_results_acked", |e| e.field("dropped") == "1");
    let (code, _) = agent.stop_then_events("daemon_stopped");
    assert_eq!(code, Some(0));

    // Gone for good: the next start does not bring it back.
    let before = hub.reports().len();
    agent.restart();
    let reports = agent.wait_for_reports(&hub, before + 1);
    assert!(
        results_of(&reports[before]).is_empty(),
        "{}",
        reports[before]
    );
    let (code, _) = agent.stop_then_events("daemon_stopped");
    assert_eq!(code, Some(0));
}

#[test]
fn a_damaged_results_file_is_set_aside_logged_and_the_daemon_runs_on() {
    let (pve, hub) = sims();
    let garbage = b"{\"version\":1,\"results\":[{\"id\"".to_vec();
    let written = garbage.clone();
    let mut agent = Daemon::start_prepared(
        "results-damaged",
        &pve,
        &hub,
        |_| {},
        move |state| std::fs::write(state.join("op_results.json"), &written).unwrap(),
    );
    let damaged = agent.wait_for_event("op_results_damaged", |_| true);
    assert!(
        damaged.field("file").ends_with("op_results.json"),
        "{damaged:?}"
    );
    agent.wait_for_event("daemon_running", |_| true);
    let reports = agent.wait_for_reports(&hub, 1);
    assert!(results_of(&reports[0]).is_empty());
    let aside = agent.dir.join("state/op_results.json.damaged");
    assert_eq!(
        std::fs::read(aside).unwrap(),
        garbage,
        "kept whole for an operator"
    );
    let (code, _) = agent.stop_then_events("daemon_stopped");
    assert_eq!(code, Some(0), "{}", agent.log());
}
