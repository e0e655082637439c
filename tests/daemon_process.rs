//! The daemon as a process: the real binary (`felhom-agent run`) against the Proxmox
//! and hub simulators. It posts reports the hub accepts, exits 0 within 2 s of SIGTERM
//! or SIGINT, re-reads its log level on SIGHUP, rides out a hub that is down for a
//! while, and with a desired-state file fixes drift through the gate, whose decisions
//! the next reports carry.
//!
//! The binary built with the test-only feature `fault-points` (this target requires it,
//! in either profile) honours `FELHOM_FAULT_SECOND_MS`, which shortens each second of
//! the poll schedule, so several rounds (60 s apart on the schedule) happen within a
//! test; the shipped build ignores it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::agent::{agent_command, fast_envelope, fast_hub, write_agent_config};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use felhom_agent::faultpoint::SECOND_MS_ENV;
use felhom_sim::{DEFAULT_TOKEN_SECRET, Fault, FaultKind, GuestSeed, HubSim, ProxmoxSim};
use serde_json::{Value, json};

/// How long one schedule second lasts in these tests.
const SECOND_MS: &str = "20";
/// Generous bound for things that should happen within a few schedule rounds.
const PATIENCE: Duration = Duration::from_secs(30);

/// A running agent; killed if a test ends without stopping it.
struct Agent {
    child: Child,
    dir: PathBuf,
    config: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Agent {
    fn start(name: &str, pve: &ProxmoxSim, hub: &HubSim) -> Agent {
        Agent::start_with(name, pve, hub, |_| {})
    }

    /// Starts the agent on the standard config after `edit` has changed it.
    fn start_with(
        name: &str,
        pve: &ProxmoxSim,
        hub: &HubSim,
        edit: impl FnOnce(&mut Value),
    ) -> Agent {
        let dir = std::env::temp_dir().join(format!("felhom-daemon-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = write_config(&dir, pve, hub, "info", edit);
        // Tests run as root: state goes in the test's own directory, never the default.
        std::fs::create_dir_all(dir.join("state")).unwrap();
        let stderr = File::create(dir.join("stderr.log")).unwrap();
        let child = agent_command(&["run"], &config, stderr)
            .env(SECOND_MS_ENV, SECOND_MS)
            .spawn()
            .expect("the agent binary starts");
        Agent { child, dir, config }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} delivered");
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Whether the process is alive, without needing `&mut` (signal 0 probes it).
    fn running_now(&self) -> bool {
        Command::new("kill")
            .args(["-0", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts the agent again on the same config and state directory (after it has
    /// exited), its stderr appended to the same log.
    fn restart(&mut self) {
        assert!(!self.running(), "restart only a stopped agent");
        let stderr = File::options()
            .append(true)
            .open(self.dir.join("stderr.log"))
            .unwrap();
        self.child = agent_command(&["run"], &self.config, stderr)
            .env(SECOND_MS_ENV, SECOND_MS)
            .spawn()
            .expect("the agent binary starts again");
    }

    /// Sends `sig` and polls until the process exits; returns its status and how long
    /// it took, or panics after `PATIENCE`.
    fn stop_with(&mut self, sig: &str) -> (ExitStatus, Duration) {
        let sent = Instant::now();
        self.signal(sig);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, sent.elapsed());
            }
            assert!(
                sent.elapsed() < PATIENCE,
                "still running long after {sig}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for `n` accepted reports; fails at once, with the log, if the agent exits.
    fn wait_for_reports(&mut self, hub: &HubSim, n: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let reports = hub.wait_for_reports(n, Duration::from_millis(100));
            if reports.len() >= n || start.elapsed() > PATIENCE {
                return reports;
            }
            self.assert_running();
        }
    }

    /// Fails, with the log, if the agent has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the agent exited ({status}):\n{}", self.log());
        }
    }

    /// Waits until the log contains `text`.
    fn wait_for_log(&self, text: &str) -> bool {
        let start = Instant::now();
        while start.elapsed() < PATIENCE {
            if self.log().contains(text) {
                return true;
            }
            if !self.running_now() {
                return self.log().contains(text);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
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
fn wait_while_hub_down(agent: &mut Agent, what: &str, enough: impl Fn(&Agent) -> bool) {
    let start = Instant::now();
    while !enough(agent) {
        agent.assert_running();
        assert!(
            start.elapsed() < PATIENCE,
            "{what} while the hub is down:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(agent.running(), "still running while the hub is down");
}

/// Once the hub is back: one more report reaches it, the recovery is logged, and
/// SIGTERM still ends the daemon with 0.
fn reports_again_then_stops(mut agent: Agent, hub: &HubSim) {
    let reports = agent.wait_for_reports(hub, 1);
    assert_eq!(reports.len(), 1, "reported again once the hub is back");
    assert!(
        agent.wait_for_log("hub report succeeded again"),
        "{}",
        agent.log()
    );
    let (status, _) = agent.stop_with("TERM");
    assert_eq!(status.code(), Some(0), "{}", agent.log());
}

#[test]
fn the_daemon_posts_reports_the_hub_accepts_and_exits_0_on_sigterm_within_2s() {
    let (pve, hub) = sims();
    let mut agent = Agent::start("reports", &pve, &hub);
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
    assert!(
        hub.requests().iter().all(|q| q.status == 200),
        "every request was accepted by the contract check"
    );
    assert!(agent.running());
    let (status, took) = agent.stop_with("TERM");
    println!("SIGTERM to exit: {took:?}");
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let log = agent.log();
    assert!(log.contains("msg=\"felhom-agent stopped\""), "{log}");
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
    let mut agent = Agent::start("sigint", &pve, &hub);
    assert!(
        !agent.wait_for_reports(&hub, 1).is_empty(),
        "{}",
        agent.log()
    );
    let (status, took) = agent.stop_with("INT");
    println!("SIGINT to exit: {took:?}");
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn sigterm_during_a_slow_hub_call_still_exits_0_within_2s() {
    let (pve, hub) = sims();
    // The hub holds its answer longer than the grace period; the agent must not wait.
    hub.inject(Fault::new(
        None,
        "/api/v1/host-report",
        FaultKind::Delay(Duration::from_secs(20)),
    ));
    let mut agent = Agent::start("slow", &pve, &hub);
    let start = Instant::now();
    while hub.requests().is_empty() {
        agent.assert_running();
        assert!(start.elapsed() < PATIENCE, "{}", agent.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, took) = agent.stop_with("TERM");
    println!("SIGTERM to exit during a hung call: {took:?}");
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn the_hub_down_for_a_while_does_not_stop_the_daemon_and_it_reports_again() {
    let (pve, hub) = sims();
    hub.inject(Fault::new(None, "", FaultKind::DropConnection).times(usize::MAX));
    let mut agent = Agent::start("hubdown", &pve, &hub);
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
    let mut agent = Agent::start("hubclosed", &pve, &hub);
    assert_eq!(agent.wait_for_reports(&hub, 1).len(), 1, "{}", agent.log());
    let port = hub.port();
    // The hub goes away: nothing listens on its port, so connections are refused.
    hub.shutdown();
    wait_while_hub_down(&mut agent, "two refused rounds", |a| {
        a.log().matches("hub round failed").count() >= 2
    });
    // The same hub (key, certificate) comes back on the same port.
    let back = hub_sim(port);
    reports_again_then_stops(agent, &back);
}

#[test]
fn sighup_rereads_the_log_level_and_keeps_it_when_the_config_is_broken() {
    let (pve, hub) = sims();
    let mut agent = Agent::start("sighup", &pve, &hub);
    assert!(
        !agent.wait_for_reports(&hub, 1).is_empty(),
        "{}",
        agent.log()
    );
    assert!(!agent.log().contains("level=debug"), "info level at start");
    write_config(&agent.dir, &pve, &hub, "debug", |_| {});
    agent.signal("HUP");
    assert!(
        agent.wait_for_log("log_level=debug"),
        "reload logged:\n{}",
        agent.log()
    );
    assert!(
        agent.wait_for_log("level=debug event=report_sent "),
        "debug lines appear after the reload:\n{}",
        agent.log()
    );
    std::fs::write(&agent.config, "{ not json").unwrap();
    agent.signal("HUP");
    assert!(
        agent.wait_for_log("re-read on SIGHUP failed; keeping the log level"),
        "{}",
        agent.log()
    );
    assert!(
        agent.running(),
        "a broken config on SIGHUP does not stop the agent"
    );
    let (status, _) = agent.stop_with("TERM");
    assert_eq!(status.code(), Some(0), "{}", agent.log());
}

#[test]
fn insecure_tls_is_warned_at_start() {
    let (pve, hub) = sims();
    let mut agent = Agent::start_with("insecure", &pve, &hub, |v| {
        v["proxmox"]["tls"] = json!({"insecure_skip_verify": true});
    });
    assert!(!agent.wait_for_reports(&hub, 1).is_empty());
    let log = agent.log();
    assert!(
        log.contains("verification is disabled") && log.contains("section=proxmox"),
        "{log}"
    );
    assert!(
        !log.contains("section=hub"),
        "only the insecure section is named"
    );
    let (status, _) = agent.stop_with("TERM");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn insecure_hub_tls_is_warned_at_every_start() {
    let (pve, hub) = sims();
    let mut agent = Agent::start_with("insecure-hub", &pve, &hub, |v| {
        v["hub"]["tls"] = json!({"insecure_skip_verify": true});
    });
    let warnings = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("level=warn")
                    && l.contains("verification is disabled")
                    && l.contains("section=hub")
            })
            .count()
    };
    // The hub's certificate is not trusted by anything in this config: only the
    // insecure mode lets the reports through.
    assert!(
        !agent.wait_for_reports(&hub, 1).is_empty(),
        "{}",
        agent.log()
    );
    assert_eq!(warnings(&agent.log()), 1, "{}", agent.log());
    assert!(
        !agent.log().contains("section=proxmox"),
        "only the insecure section is named"
    );
    let (status, _) = agent.stop_with("TERM");
    assert_eq!(status.code(), Some(0));

    // A restart on the same config and state warns again: nothing remembers it.
    let before = hub.reports().len();
    agent.restart();
    assert!(agent.wait_for_reports(&hub, before + 1).len() > before);
    assert_eq!(warnings(&agent.log()), 2, "{}", agent.log());
    let (status, _) = agent.stop_with("TERM");
    assert_eq!(status.code(), Some(0));
}

/// Polls `check` until it holds; fails with the agent's log after `PATIENCE`.
fn wait_until(agent: &mut Agent, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        agent.assert_running();
        assert!(
            start.elapsed() < PATIENCE,
            "waited for {what}:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let mut agent = Agent::start_with("desired", &pve, &hub, |v| {
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
    wait_until(&mut agent, "guest 101 running", || {
        pve.guest_status(101).as_deref() == Some("running")
    });
    wait_until(&mut agent, "guest 100 at 4 cores", || {
        pve.guest_config(100).and_then(|c| c.get("cores").cloned()) == Some(json!(4))
    });
    // A report made after both decisions carries them in its audit tail.
    let mut tail = Vec::new();
    wait_until(
        &mut agent,
        "a report whose audit tail has both decisions",
        || {
            tail = hub
                .reports()
                .last()
                .map(|r| r["audit_tail"].as_array().unwrap().clone())
                .unwrap_or_default();
            tail.len() >= 2
        },
    );
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
    let (status, _) = agent.stop_with("TERM");
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    assert!(agent.log().contains("msg=\"felhom-agent stopped\""));
}
