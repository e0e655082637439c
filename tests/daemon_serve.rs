//! The daemon's lifecycle in process (no signals): it reports through its worker
//! until the shared shutdown fires, then returns `Ok`; a configuration it cannot build
//! clients from is a setup error before anything starts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use felhom_agent::config::{Config, Mode};
use felhom_agent::daemon::{DaemonError, serve};
use felhom_agent::hub::collect::NoAudit;
use felhom_agent::net::TlsTrust;
use felhom_agent::shutdown::Shutdown;
use felhom_sim::{DEFAULT_TOKEN_SECRET, GuestSeed, HubSim, ProxmoxSim};
use serde_json::json;

fn config(pve: &ProxmoxSim, hub: &HubSim) -> Config {
    let ca = format!("{}/vectors/tls/ca.crt", env!("CARGO_MANIFEST_DIR"));
    Config::from_value(
        &json!({
            "host_id": "pve-a",
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
    let cfg = config(&pve, &hub);
    let shutdown = Shutdown::new();
    let (tx, rx) = mpsc::channel();
    let s = shutdown.clone();
    std::thread::spawn(move || {
        let _ = tx.send(serve(&cfg, &s, Arc::new(NoAudit)));
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
}

#[test]
fn clients_that_cannot_be_built_are_a_configuration_error() {
    let pve = ProxmoxSim::builder().start();
    let hub = HubSim::start();
    let mut cfg = config(&pve, &hub);
    if let Some(h) = cfg.hub.as_mut() {
        h.tls = TlsTrust::CaFile("/nonexistent/hub-ca.pem".into());
    }
    let e = serve(&cfg, &Shutdown::new(), Arc::new(NoAudit)).unwrap_err();
    assert!(matches!(e, DaemonError::Setup(_)), "{e:?}");
    assert!(e.is_configuration());
    assert!(e.to_string().contains("/nonexistent/hub-ca.pem"), "{e}");
    assert!(hub.requests().is_empty());
}
