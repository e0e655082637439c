//! The systemd unit: the hardening the issue requires is present, its credentials are
//! the files the example config reads, and `systemd-analyze verify` accepts it (when
//! systemd-analyze is installed; otherwise that one check is skipped with a reason).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../packaging/felhom-agent.service");
const EXAMPLE_CONFIG: &str = include_str!("../configs/agent.example.json");

/// Every `Key=value` line of the unit, in order (comments and sections skipped).
fn directives() -> Vec<(String, String)> {
    UNIT.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn values(key: &str) -> Vec<String> {
    directives()
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

fn one(key: &str) -> String {
    let v = values(key);
    assert_eq!(v.len(), 1, "{key} should be set exactly once, got {v:?}");
    v[0].clone()
}

#[test]
fn the_required_hardening_is_present() {
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("Restart"), "on-failure");
    assert!(
        values("ReadWritePaths")
            .iter()
            .any(|v| v.split_whitespace().any(|p| p == "/var/lib/felhom-agent")),
        "the state dir is writable"
    );
    assert_eq!(one("StateDirectory"), "felhom-agent");
    assert_eq!(one("StateDirectoryMode"), "0700");
    assert_eq!(one("CapabilityBoundingSet"), "");
    assert_eq!(one("UMask"), "0077");
    assert!(one("ExecStart").ends_with("run --config /etc/felhom-agent/agent.json"));
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
}

#[test]
fn the_credentials_are_the_files_the_example_config_reads() {
    let creds: Vec<String> = values("LoadCredential")
        .iter()
        .map(|v| v.split_once(':').expect("NAME:PATH").0.to_owned())
        .collect();
    assert_eq!(creds, ["pve-token", "hub-key"]);
    let cfg: serde_json::Value = serde_json::from_str(EXAMPLE_CONFIG).unwrap();
    let dir = "/run/credentials/felhom-agent.service/";
    assert_eq!(
        cfg["proxmox"]["token_secret_file"],
        format!("{dir}pve-token")
    );
    assert_eq!(cfg["hub"]["api_key_file"], format!("{dir}hub-key"));
    assert_eq!(
        cfg["state_dir"], "/var/lib/felhom-agent",
        "the writable path is the configured state dir"
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let probe = Command::new("systemd-analyze").arg("--version").output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!("SKIPPED: systemd-analyze is not installed; the unit was not verified");
        return;
    }
    // verify checks that ExecStart exists: point it at the binary this build made.
    let dir = std::env::temp_dir().join(format!("felhom-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("felhom-agent.service");
    let bin = env!("CARGO_BIN_EXE_felhom-agent");
    assert!(Path::new(bin).exists());
    std::fs::write(
        &unit,
        UNIT.replace("/usr/local/bin/felhom-agent", bin)
            .replace("/bin/kill", "/usr/bin/env"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("systemd-analyze runs");
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    assert!(
        !stderr.contains("felhom-agent.service"),
        "verify warned about the unit: {stderr}"
    );
}
