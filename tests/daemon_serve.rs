//! The daemon's lifecycle in process (no signals): it opens its state directory, reports
//! through its worker until the shared shutdown fires, then returns `Ok`; a
//! configuration it cannot build clients from, or a state directory it cannot use (or
//! lock), is a setup error before anything starts; while one `serve` holds the state
//! directory a second one on it is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use felhom_agent::app::{DaemonError, serve};
use felhom_agent::base::Shutdown;
use felhom_agent::config::{Config, Mode};
use felhom_agent::net::TlsTrust;
use felhom_agent::store::StateLockError;
use felhom_sim::{DEFAULT_TOKEN_SECRET, GuestSeed, HubSim, ProxmoxSim};
use serde_json::json;

/// A fresh state directory for one test, removed when dropped.
struct StateDir(PathBuf);

impl StateDir {
    fn new(name: &str) -> StateDir {
        let dir = std::env::temp_dir().join(format!("felhom-serve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        StateDir(dir)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The config for these sims; its state directory is `state` (tests run as root:
/// nothing may go to the default).
fn config(pve: &ProxmoxSim, hub: &HubSim, state: &Path) -> Config {
    let ca = format!("{}/vectors/tls/ca.crt", env!("CARGO_MANIFEST_DIR"));
    Config::from_value(
        &json!({
            "host_id": "pve-a",
            "state_dir": state,
            "proxmox": {
                "url": pve.url(), "node": pve.node(),
                "token_id": "felhom-agent@pve!agent", "token_secret": DEFAULT_TOKEN_SECRET,
                "tls": {"fingerprint_sha256": pve.fingerprint()}
            },
            "hub": {"url": hub.url(), "api_key": hub.key(), "tls": {"ca_file": ca}}
        }),
        Mode::Run,
    )
    .unwrap()
}

#[test]
fn serve_reports_at_once_and_returns_ok_when_shut_down() {
    let pve = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web"))
        .start();
    let hub = HubSim::start();
    let state = StateDir::new("reports");
    let cfg = config(&pve, &hub, &state.0);
    let shutdown = Shutdown::new();
    let (tx, rx) = mpsc::channel();
    let s = shutdown.clone();
    std::thread::spawn(move || {
        let _ = tx.send(serve(&cfg, &s));
    });
    let reports = hub.wait_for_reports(1, Duration::from_secs(30));
    assert_eq!(reports.len(), 1, "the first report goes out at once");
    shutdown.trigger();
    let result = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("serve returned after the shutdown");
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        hub.reports().len(),
        1,
        "the next report is 300 s away; none after the shutdown"
    );
    for file in ["journal.log", "audit.log"] {
        assert!(
            state.0.join(file).is_file(),
            "{file} is opened in the configured state_dir"
        );
    }
    assert!(
        pve.mutations().is_empty(),
        "nothing desired, nothing mutated"
    );
}

#[test]
fn a_state_dir_that_cannot_be_used_stops_the_start_before_any_report() {
    let pve = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web"))
        .start();
    let hub = HubSim::start();
    let state = StateDir::new("notadir");
    // A plain file where the directory should be.
    std::fs::write(&state.0, b"not a directory").unwrap();
    let cfg = config(&pve, &hub, &state.0);
    let e = serve(&cfg, &Shutdown::new()).unwrap_err();
    // The lock comes first, and it is where the directory is found unusable.
    assert!(
        matches!(e, DaemonError::StateLock(StateLockError::Io { .. })),
        "{e:?}"
    );
    assert!(!e.is_configuration(), "a runtime failure: exit 1");
    assert!(
        e.to_string().contains(&state.0.display().to_string()),
        "{e}"
    );
    assert!(hub.requests().is_empty(), "no worker started");
    assert!(pve.mutations().is_empty());
    let _ = std::fs::remove_file(&state.0);
}

#[test]
fn clients_that_cannot_be_built_are_a_configuration_error() {
    let pve = ProxmoxSim::builder().start();
    let hub = HubSim::start();
    let state = StateDir::new("badca");
    let mut cfg = config(&pve, &hub, &state.0);
    if let Some(h) = cfg.hub.as_mut() {
        h.tls = TlsTrust::CaFile("/nonexistent/hub-ca.pem".into());
    }
    let e = serve(&cfg, &Shutdown::new()).unwrap_err();
    assert!(matches!(e, DaemonError::Setup(_)), "{e:?}");
    assert!(e.is_configuration());
    assert!(e.to_string().contains("/nonexistent/hub-ca.pem"), "{e}");
    assert!(hub.requests().is_empty());
}

#[test]
fn a_second_serve_on_a_held_state_dir_is_refused_and_the_first_runs_on() {
    let pve = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web"))
        .start();
    let hub = HubSim::start();
    let state = StateDir::new("held");
    let cfg = config(&pve, &hub, &state.0);
    let shutdown = Shutdown::new();
    let (tx, rx) = mpsc::channel();
    let (first_cfg, s) = (cfg.clone(), shutdown.clone());
    std::thread::spawn(move || {
        let _ = tx.send(serve(&first_cfg, &s));
    });
    assert_eq!(hub.wait_for_reports(1, Duration::from_secs(30)).len(), 1);

    let e = serve(&cfg, &Shutdown::new()).unwrap_err();
    match &e {
        DaemonError::StateLock(StateLockError::Held { dir, pid }) => {
            assert_eq!(dir, &state.0);
            assert_eq!(*pid, Some(std::process::id()), "the holder is named");
        }
        other => panic!("expected Held, got {other:?}"),
    }
    assert!(e.is_configuration(), "exit 2");
    assert!(
        rx.try_recv().is_err(),
        "the first serve runs on after the refusal"
    );

    shutdown.trigger();
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("serve returned after the shutdown");
    assert!(first.is_ok(), "{first:?}");
    // Released when serve returned: the next one may take the directory.
    let lock = felhom_agent::store::StateLock::acquire(&state.0).expect("free again");
    drop(lock);
}
