//! The live hub round in process: the real Proxmox client against the Proxmox
//! simulator, the real hub client against the hub simulator, built from a configuration
//! the way the daemon builds them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use felhom_agent::app::{hub_round, selftest_hub};
use felhom_agent::base::Timestamp;
use felhom_agent::config::{Config, Mode};
use felhom_agent::hub::AuditEntry;
use felhom_agent::hub::{HubRoundError, Reporter};
use felhom_agent::hub::{NoAudit, ReadError};
use felhom_sim::{Fault, FaultKind, GuestSeed, HubSim, ProxmoxSim};
use serde_json::{Value, json};

fn pve() -> ProxmoxSim {
    ProxmoxSim::builder()
        .guest(
            GuestSeed::new(100, "web")
                .running(true)
                .cores(2)
                .memory_mib(1024)
                .disk_gib(8),
        )
        .guest(
            GuestSeed::new(101, "db")
                .cores(4)
                .memory_mib(2048)
                .disk_gib(16),
        )
        .backup(100, "2026_11_21-02_00_00")
        .start()
}

/// The agent config the process tests use ([`common::agent::write_agent_config`]),
/// polling every 60 s, loaded as the daemon loads it.
fn config(pve: &ProxmoxSim, hub: &HubSim) -> Config {
    let dir = common::tempdir("hublive", "config");
    let path = common::agent::write_agent_config(&dir, pve, hub, |c| {
        c["hub"]["poll_seconds"] = json!(60);
    });
    Config::load(&path, &BTreeMap::new(), Mode::Run).unwrap()
}

#[test]
fn a_live_round_reports_the_simulated_host_and_the_hub_accepts_it() {
    let (pve, hub) = (pve(), HubSim::start());
    let mut round = hub_round(&config(&pve, &hub), Arc::new(NoAudit)).unwrap();
    let env = round.round().unwrap();
    assert_eq!(env.poll_interval_seconds, Some(300));
    let reports = hub.reports();
    assert_eq!(reports.len(), 1, "accepted by the contract check");
    let r = &reports[0];
    assert_eq!(r["host_id"], "pve-a");
    assert_eq!(r["host"]["node"], pve.node());
    assert!(r["host"]["load"]["avg1"].is_f64(), "load is a number");
    assert!(r["host"]["memory"]["total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        r["guests"],
        json!([
            {"vmid": 100, "name": "web", "status": "running",
             "spec": {"cores": 2, "memory_bytes": 1u64 << 30, "disk_bytes": 8u64 << 30},
             "digest": pve.guest_digest(100).unwrap()},
            {"vmid": 101, "name": "db", "status": "stopped",
             "spec": {"cores": 4, "memory_bytes": 2u64 << 30, "disk_bytes": 16u64 << 30},
             "digest": pve.guest_digest(101).unwrap()},
        ])
    );
    let backups = r["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 1);
    assert_eq!(
        backups[0]["volid"],
        "local:backup/vzdump-lxc-100-2026_11_21-02_00_00.tar.zst"
    );
    assert_eq!(backups[0]["vmid"], 100);
    assert_eq!(backups[0]["created_at"], "2026-11-21T02:00:00Z");
    assert!(
        r["storage_targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["storage"] == "local")
    );
    assert_eq!(r["restore_tests"], json!([]));
    assert_eq!(r["audit_tail"], json!([]));
    // Only reads reached Proxmox.
    assert!(pve.mutations().is_empty());
}

#[test]
fn pbs_snapshots_report_their_verification_state_live() {
    let pve = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web").disk_gib(8))
        .backup(100, "2026_11_21-02_00_00")
        .pbs_backup(100, "2026-11-21T03:00:00Z", Some("ok"))
        .pbs_backup(100, "2026-11-22T03:00:00Z", Some("failed"))
        .pbs_backup(100, "2026-11-23T03:00:00Z", None)
        .start();
    let hub = HubSim::start();
    let mut round = hub_round(&config(&pve, &hub), Arc::new(NoAudit)).unwrap();
    round.round().unwrap();
    let reports = hub.reports();
    assert_eq!(reports.len(), 1, "accepted by the contract check");
    let r = &reports[0];
    let snap = |day: u32, verification: Value| {
        json!({"storage": "pbs", "volid": format!("pbs:backup/ct/100/2026-11-{day}T03:00:00Z"),
               "vmid": 100, "size_bytes": (8u64 << 30) / 8 + 12_345,
               "created_at": format!("2026-11-{day}T03:00:00Z"), "protected": false,
               "verification": verification, "notes": null})
    };
    assert_eq!(
        r["pbs_snapshots"],
        json!([
            snap(21, json!("ok")),
            snap(22, json!("failed")),
            snap(23, Value::Null)
        ])
    );
    // The vzdump archive stays a backup; PBS snapshots are not counted twice.
    let backups = r["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 1);
    assert_eq!(backups[0]["storage"], "local");
    let targets = r["storage_targets"].as_array().unwrap();
    let pbs = targets.iter().find(|s| s["storage"] == "pbs").unwrap();
    assert_eq!(pbs["type"], "pbs");
    assert!(pve.mutations().is_empty());
}

#[test]
fn one_guest_config_failing_live_keeps_its_status_and_drops_its_spec() {
    let (pve, hub) = (pve(), HubSim::start());
    let mut round = hub_round(&config(&pve, &hub), Arc::new(NoAudit)).unwrap();
    pve.inject(Fault::new(
        Some("GET"),
        "/nodes/pve/lxc/100/config",
        FaultKind::Status {
            code: 500,
            message: "got timeout".into(),
        },
    ));
    round.round().unwrap();
    let g = &hub.reports()[0]["guests"];
    assert_eq!(g[0]["status"], "running");
    assert!(g[0].get("spec").is_none(), "{g}");
    assert!(g[1].get("spec").is_some());
}

#[test]
fn node_status_failing_live_sends_nothing() {
    let (pve, hub) = (pve(), HubSim::start());
    let mut round = hub_round(&config(&pve, &hub), Arc::new(NoAudit)).unwrap();
    pve.inject(Fault::new(
        Some("GET"),
        "/nodes/pve/status",
        FaultKind::Status {
            code: 500,
            message: "node is busy".into(),
        },
    ));
    assert!(matches!(round.round(), Err(HubRoundError::Collect(_))));
    assert!(hub.requests().is_empty(), "no POST without node status");
    round.round().unwrap();
    assert_eq!(hub.reports().len(), 1, "the next round reports again");
}

#[test]
fn the_audit_provider_fills_the_tail() {
    let (pve, hub) = (pve(), HubSim::start());
    let audit = Arc::new(|_n: usize| {
        Ok::<_, ReadError>(vec![AuditEntry::new(
            Timestamp(1_700_000_000),
            "guest_destroy",
            Some("101".into()),
            "pending_signature",
            "no signature",
            None,
        )])
    });
    let mut round = hub_round(&config(&pve, &hub), audit).unwrap();
    round.round().unwrap();
    let tail = &hub.reports()[0]["audit_tail"];
    assert_eq!(tail[0]["op"], "guest_destroy");
    assert_eq!(tail[0]["at"], "2023-11-14T22:13:20Z");
}

#[test]
fn selftest_hub_prints_the_report_and_the_envelope() {
    let (pve, hub) = (pve(), HubSim::start());
    hub.script_envelope(json!({"poll_interval_seconds": 900, "blocked": false,
        "desired_generation": 3, "has_signed_ops": false}));
    let mut out = Vec::new();
    selftest_hub(&config(&pve, &hub), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let (report, envelope) = text
        .strip_prefix("host report:\n")
        .unwrap()
        .split_once("control envelope from ")
        .unwrap();
    let report: Value = serde_json::from_str(report).unwrap();
    assert_eq!(report["guests"].as_array().unwrap().len(), 2);
    let envelope: Value = serde_json::from_str(envelope.split_once(":\n").unwrap().1).unwrap();
    assert_eq!(envelope["desired_generation"], 3);
    assert_eq!(envelope["poll_interval_seconds"], 900);
    assert_eq!(hub.reports().len(), 1);
}

#[test]
fn selftest_hub_fails_on_a_refusing_hub_after_printing_the_report() {
    let (pve, hub) = (pve(), HubSim::start());
    hub.inject(Fault::new(
        None,
        "/api/v1/host-report",
        FaultKind::Delay(Duration::from_secs(10)),
    ));
    let mut cfg = config(&pve, &hub);
    if let Some(h) = cfg.hub.as_mut() {
        h.timeout_seconds = 1;
    }
    let mut out = Vec::new();
    let e = selftest_hub(&cfg, &mut out).unwrap_err();
    assert!(!e.is_configuration());
    assert!(
        String::from_utf8(out)
            .unwrap()
            .starts_with("host report:\n")
    );
    let mut bad = config(&pve, &hub);
    if let Some(p) = bad.proxmox.as_mut() {
        p.tls = felhom_agent::net::TlsTrust::CaFile("/nonexistent/pve-ca.pem".into());
    }
    let e = selftest_hub(&bad, &mut Vec::new()).unwrap_err();
    assert!(e.is_configuration(), "{e}");
    assert!(e.to_string().contains("/nonexistent/pve-ca.pem"), "{e}");
}
