//! Start-up memory does not depend on the audit log's size: the real daemon binary, run
//! against the Proxmox and hub simulators, once on an empty state directory and once on
//! a full one (an `audit.log` of the default 16 MiB cap), peaks at nearly the same
//! resident size (`VmHWM` of `/proc/PID/status`, read once the daemon logs it is running
//! and the hub has its first report).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/audit_fill.rs"]
mod audit_fill;
mod common;
use common::agent::{Agent, write_agent_config};

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use felhom_agent::reconcile::DEFAULT_MAX_BYTES;
use felhom_agent::store::verify_file;
use felhom_sim::{GuestSeed, HubSim, ProxmoxSim};
use serde_json::json;

/// Bound for the daemon to come up (a debug build replays 16 MiB in a few seconds).
const PATIENCE: Duration = Duration::from_secs(60);

/// The largest start-up peak a full audit log may add.
const MAX_EXTRA_KIB: u64 = 1024;

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Runs the daemon on `dir` until it is running and reported once; its peak RSS in
/// KiB, and how many times it rotated the audit log.
fn peak_at_start(dir: &Path) -> (u64, usize) {
    let pve = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web").running(true).cores(2))
        .start();
    let hub = HubSim::start();
    let config = write_agent_config(dir, &pve, &hub, |c| {
        c["log"] = json!({"level": "info"});
        c["hub"]["poll_seconds"] = json!(60);
    });
    let mut d =
        Agent::spawn(&["run"], &config, &dir.join("stderr.log"), &[]).with_patience(PATIENCE);
    d.wait_until("the daemon running and a report", |a| {
        !a.events("daemon_running").is_empty() && !hub.reports().is_empty()
    });
    let hwm = status_kib(d.pid(), "VmHWM:");
    let rotated = d.events("audit_rotated").len();
    d.kill();
    (hwm, rotated)
}

/// A fresh directory with a 0700 `state` in it.
fn tempdir(name: &str) -> PathBuf {
    let d = common::tempdir("auditrss", name);
    fs::create_dir(d.join("state")).unwrap();
    fs::set_permissions(d.join("state"), fs::Permissions::from_mode(0o700)).unwrap();
    d
}

#[test]
fn a_full_audit_log_adds_almost_nothing_to_the_start_up_peak() {
    let empty = tempdir("empty");
    let full = tempdir("full");
    let audit = full.join("state").join("audit.log");
    let size = audit_fill::fill(&audit, DEFAULT_MAX_BYTES).unwrap();
    assert!(size > DEFAULT_MAX_BYTES - 4096, "full: {size} bytes");
    let records = verify_file(&audit).unwrap().records;

    let (hwm_empty, _) = peak_at_start(&empty);
    let (hwm_full, rotated) = peak_at_start(&full);
    println!(
        "start-up VmHWM: {hwm_empty} KiB with an empty audit log, {hwm_full} KiB with a \
         full one ({size} bytes, {records} entries)"
    );
    // The full log was replayed, not skipped or rotated away.
    assert_eq!(rotated, 0, "the full log was rotated at start");
    assert_eq!(fs::metadata(&audit).unwrap().len(), size);
    assert!(
        hwm_full <= hwm_empty + MAX_EXTRA_KIB,
        "a full audit log raised the start-up peak from {hwm_empty} to {hwm_full} KiB"
    );
    fs::remove_dir_all(&empty).unwrap();
    fs::remove_dir_all(&full).unwrap();
}
