//! systemd integration of the real daemon process, captured on test sockets: `READY=1`
//! only after Recover (its log line is already written), `STATUS=` with a one-line
//! summary, `WATCHDOG=1` while `WATCHDOG_USEC` is set, `STOPPING=1` at SIGTERM, over a
//! path socket and an abstract one; and journald priority prefixes exactly when
//! `JOURNAL_STREAM` names the stderr file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::agent::{Agent, PATIENCE, fast_hub, write_agent_config};

use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::{Duration, Instant};

use felhom_agent::store::SECOND_MS_ENV;
use felhom_sim::{GuestSeed, ProxmoxSim};
use serde_json::json;

/// Receives datagrams until `done` says so (or PATIENCE runs out); all of them.
fn collect(sock: &UnixDatagram, mut done: impl FnMut(&[String]) -> bool) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&got) {
        assert!(start.elapsed() < PATIENCE, "gave up waiting; got {got:?}");
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

fn count(got: &[String], line: &str) -> usize {
    got.iter().filter(|m| m.lines().any(|l| l == line)).count()
}

/// Starts the daemon with `env`, its stderr in `dir/stderr.log` (created first, so the
/// caller can name it in `JOURNAL_STREAM`).
fn start(dir: &Path, env: &[(&str, &str)]) -> (Agent, ProxmoxSim, felhom_sim::HubSim) {
    let pve = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web").running(true))
        .start();
    let hub = fast_hub();
    let config = write_agent_config(dir, &pve, &hub, |v| {
        v["hub"]["poll_seconds"] = json!(60);
    });
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let mut all = vec![(SECOND_MS_ENV, "20")];
    all.extend_from_slice(env);
    let agent = Agent::spawn(&["run"], &config, &dir.join("stderr.log"), &all);
    (agent, pve, hub)
}

#[test]
fn ready_after_recover_status_watchdog_and_stopping_with_journal_priorities() {
    let dir = common::tempdir("notify", "path");
    let log = dir.join("stderr.log");
    std::fs::write(&log, b"").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    let journal = format!("{}:{}", meta.dev(), meta.ino());
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let (mut agent, _pve, _hub) = start(
        &dir,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
            ("JOURNAL_STREAM", &journal),
        ],
    );

    let got = collect(&sock, |g| count(g, "READY=1") == 1);
    // The log line is written before READY is sent, by the same thread.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("event=recover_finished"), "{text}");
    assert!(text.contains("event=daemon_running"), "{text}");
    let ready = got.iter().find(|m| m.contains("READY=1")).unwrap();
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .expect("READY carries a STATUS");
    assert!(status.contains("in flight"), "{status}");
    assert!(!status.contains('\n'));

    let got = collect(&sock, |g| count(g, "WATCHDOG=1") >= 2);
    assert!(
        got.iter().all(|m| !m.contains("READY=1")),
        "READY once: {got:?}"
    );

    // journald priorities: every line starts with <N>; info is <6>.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .all(|l| l.starts_with('<') && l[1..].starts_with(|c: char| c.is_ascii_digit())),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("<6>") && l.contains("level=info")),
        "{text}"
    );

    agent.signal("TERM");
    let got = collect(&sock, |g| count(g, "STOPPING=1") == 1);
    assert_eq!(count(&got, "STOPPING=1"), 1);
    assert_eq!(agent.wait_exit().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_abstract_socket_works_and_a_foreign_journal_stream_adds_no_prefix() {
    let dir = common::tempdir("notify", "abstract");
    let name = format!("felhom-notify-test-{}", std::process::id());
    let sock =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let at_name = format!("@{name}");
    let (agent, _pve, _hub) = start(
        &dir,
        &[
            ("NOTIFY_SOCKET", at_name.as_str()),
            // Some other file's device and inode: stderr is not the journal.
            ("JOURNAL_STREAM", "1:1"),
        ],
    );
    let got = collect(&sock, |g| count(g, "READY=1") == 1);
    assert!(
        got.iter().all(|m| !m.contains("WATCHDOG=1")),
        "no WATCHDOG_USEC, no pings: {got:?}"
    );
    let text = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    assert!(text.lines().all(|l| l.starts_with("ts=")), "{text}");
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
