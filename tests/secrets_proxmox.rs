//! The Proxmox token secret appears nowhere but on the wire: not in any error's
//! `Display` or `Debug` (nor their sources), not in any log line, not in the `Debug`
//! of the client or its options, even when the server echoes it back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::error::Error as StdError;
use std::fmt::Debug;
use std::time::Duration;

use felhom_agent::base::Secret;
use felhom_agent::base::Shutdown;
use felhom_agent::base::log::{Level, set_level, tap};
use felhom_agent::net::{Sha256Pin, TlsTrust};
use felhom_agent::proxmox::{Client, ClientOptions, WaitOptions};
use felhom_sim::{DEFAULT_TOKEN_ID, Fault, FaultKind, GuestSeed, ProxmoxSim};

/// Distinctive, so any leak is found by a plain substring search.
const SECRET: &str = "c0ffee00-dead-4bee-8f00-5ec12e7ab1e5";
/// A second secret the server does not accept (the 401 path).
const WRONG: &str = "0ddba11e-f00d-4cab-9e55-b1ab1ab1ab1a";

fn options(sim: &ProxmoxSim, secret: &str) -> ClientOptions {
    let mut o = ClientOptions::new(
        sim.url(),
        sim.node(),
        DEFAULT_TOKEN_ID,
        Secret::new(secret),
        TlsTrust::Pin(Sha256Pin::parse(&sim.fingerprint()).unwrap()),
    );
    o.timeout = Duration::from_secs(10);
    o
}

fn fast(timeout: Duration) -> WaitOptions {
    WaitOptions {
        initial: Duration::from_millis(10),
        cap: Duration::from_millis(40),
        timeout,
    }
}

/// Every text a caller could print for this error: Display, Debug, and the same for
/// each source in the chain.
fn texts(e: &(dyn StdError + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string(), format!("{e:?}")];
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        out.push(format!("{s:?}"));
        cur = s.source();
    }
    out
}

fn collect<T: Debug, E: StdError + 'static>(seen: &mut Vec<String>, r: Result<T, E>) {
    let e = r.expect_err("this step was set up to fail");
    seen.extend(texts(&e));
}

#[test]
fn the_token_secret_never_leaks() {
    set_level(Level::Debug);
    let log = tap();
    let sim = ProxmoxSim::builder()
        .token(DEFAULT_TOKEN_ID, SECRET)
        .guest(GuestSeed::new(100, "web").running(true))
        .guest(GuestSeed::new(101, "db"))
        .task_duration(Duration::from_millis(30))
        .start();
    let opts = options(&sim, SECRET);
    let c = Client::new(opts.clone()).unwrap();
    let mut seen = vec![format!("{opts:?}"), format!("{c:?}")];

    // The secret really is in use: on the wire, and nowhere else.
    c.version().unwrap();
    let header = format!("PVEAPIToken={DEFAULT_TOKEN_ID}={SECRET}");
    assert!(
        sim.requests()
            .iter()
            .all(|r| r.authorization.as_deref() == Some(header.as_str())),
        "every request carried the token"
    );

    // Permission denied at the POST.
    sim.deny("/vms/100", "VM.PowerMgmt");
    collect(&mut seen, c.stop(100));
    sim.allow_all();

    // A server that echoes the secret in its error message.
    sim.inject(Fault::new(
        Some("GET"),
        "/nodes/pve/status",
        FaultKind::Status {
            code: 500,
            message: format!("bad token {SECRET} in request"),
        },
    ));
    let echoed = c.node_status().unwrap_err();
    assert!(
        echoed
            .to_string()
            .contains("bad token <redacted> in request"),
        "{echoed}"
    );
    seen.extend(texts(&echoed));

    // Garbage, a dropped connection, a truncated answer.
    sim.inject(Fault::new(Some("GET"), "/version", FaultKind::Garbage));
    collect(&mut seen, c.version());
    sim.inject(Fault::new(Some("GET"), "/nodes", FaultKind::DropConnection));
    collect(&mut seen, c.nodes());
    sim.inject(Fault::new(
        Some("GET"),
        "/nodes/pve/lxc",
        FaultKind::DropMidBody,
    ));
    collect(&mut seen, c.list_lxc());

    // Too large, too slow.
    let mut small = options(&sim, SECRET);
    small.max_body = 1024;
    let small = Client::new(small).unwrap();
    sim.inject(Fault::new(
        Some("GET"),
        "/storage",
        FaultKind::Oversized(50_000),
    ));
    collect(&mut seen, small.list_storage());
    let mut quick = options(&sim, SECRET);
    quick.timeout = Duration::from_millis(200);
    let quick = Client::new(quick).unwrap();
    sim.inject(Fault::new(
        Some("GET"),
        "/nodes/pve/storage",
        FaultKind::Delay(Duration::from_secs(2)),
    ));
    collect(&mut seen, quick.node_storage());

    // Refused arguments and options (one secret with '=' in it, refused as such).
    collect(&mut seen, c.snapshot(100, "current", None));
    let mut bad = options(&sim, &format!("{SECRET}=x"));
    bad.base_url = sim.url();
    collect(&mut seen, Client::new(bad));

    // Wrong pin; wrong secret (401).
    let mut pinned = options(&sim, SECRET);
    pinned.trust = TlsTrust::Pin(Sha256Pin::from_bytes([7; 32]));
    collect(&mut seen, Client::new(pinned).unwrap().version());
    let wrong = Client::new(options(&sim, WRONG)).unwrap();
    seen.push(format!("{wrong:?}"));
    collect(&mut seen, wrong.version());

    // A task that fails with the secret in its exit status, one with warnings (logged
    // with their log tail), a wait that times out.
    sim.fail_next_task(&format!("unable to use token {SECRET}"));
    let upid = c.start(101).unwrap();
    let failed = c
        .wait_task(&upid, &fast(Duration::from_secs(10)), &Shutdown::new())
        .unwrap_err();
    assert!(failed.to_string().contains("<redacted>"), "{failed}");
    seen.extend(texts(&failed));
    sim.task_warnings(1);
    let upid = c.stop(100).unwrap();
    let warned = c
        .wait_task(&upid, &fast(Duration::from_secs(10)), &Shutdown::new())
        .unwrap();
    seen.push(format!("{warned:?}"));
    sim.set_task_duration(Duration::from_secs(60));
    let upid = c.start(100).unwrap();
    collect(
        &mut seen,
        c.wait_task(&upid, &fast(Duration::from_millis(50)), &Shutdown::new()),
    );

    for text in &seen {
        assert!(!text.contains(SECRET), "secret leaked: {text}");
        assert!(!text.contains(WRONG), "rejected secret leaked: {text}");
    }
    let logged = String::from_utf8(log.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains(" event=proxmox_call ") && logged.contains(" event=task_warnings "),
        "the scan saw the client's log lines:\n{logged}"
    );
    for line in logged.lines() {
        assert!(!line.contains(SECRET), "secret in a log line: {line}");
        assert!(
            !line.contains(WRONG),
            "rejected secret in a log line: {line}"
        );
    }
    assert!(
        seen.len() > 40,
        "the scan covered many errors ({})",
        seen.len()
    );
}
