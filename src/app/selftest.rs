//! The Proxmox selftests: `selftest read` (a read-only health report) and
//! `selftest task --vmid N` (a reversible round trip of mutations on one guest).
//!
//! Each step prints one line, `ok` or `FAIL`, with what it saw, so an operator can
//! run it on a fresh host and see which privilege or endpoint is missing. `task`
//! restores what it changed, even when a later step fails, and says so when it could
//! not. Nothing here touches the agent's state directory.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::io::Write;
use std::time::Duration;

use std::path::{Path, PathBuf};

use super::command::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, load_config, lock_state, visible};
use crate::base::shutdown::Shutdown;
use crate::base::time::{Clock, SystemClock};
use crate::config::Mode;
use crate::proxmox::{
    AclPath, Client, ConfigChange, ROLE_NAME, RunState, TaskOutcome, Upid, WaitError, WaitOptions,
    bridge_acl_paths, pveum_recipe, role_privileges, role_privileges_on,
};

/// The prefix of the description marker `selftest task` writes.
pub(crate) const MARKER_PREFIX: &str = "felhom-selftest";
/// The prefix of its snapshot (a pve-configid: letters, digits, `_`).
pub(crate) const SNAPSHOT_PREFIX: &str = "felhom_selftest_";

/// Counts failures while printing one line per step.
struct Report<'a> {
    out: &'a mut dyn Write,
    failures: usize,
}

impl Report<'_> {
    fn ok(&mut self, step: &str, detail: impl Display) {
        let detail = visible(&detail.to_string());
        let _ = writeln!(self.out, "ok    {step:<18} {detail}");
    }

    fn fail(&mut self, step: &str, detail: impl Display) {
        self.failures += 1;
        let detail = visible(&detail.to_string());
        let _ = writeln!(self.out, "FAIL  {step:<18} {detail}");
    }

    fn check<T, E: Display>(
        &mut self,
        step: &str,
        r: Result<T, E>,
        show: impl FnOnce(&T) -> String,
    ) -> Option<T> {
        match r {
            Ok(v) => {
                let d = show(&v);
                self.ok(step, d);
                Some(v)
            }
            Err(e) => {
                self.fail(step, e);
                None
            }
        }
    }
}

/// `selftest read`: version, nodes, node status, guests, storage, and the token's
/// privileges against the role. Returns whether every step succeeded.
pub(crate) fn read(client: &Client, out: &mut dyn Write) -> bool {
    let mut r = Report { out, failures: 0 };
    let _ = writeln!(
        r.out,
        "selftest read against {} (node {})",
        client.api_url(),
        client.node()
    );
    r.check("version", client.version(), |v| {
        format!("pve {} (release {})", v.version, v.release)
    });
    r.check("nodes", client.nodes(), |nodes| {
        let names: Vec<String> = nodes
            .iter()
            .map(|n| format!("{} ({})", n.node, n.status))
            .collect();
        names.join(", ")
    });
    r.check("node status", client.node_status(), |s| {
        format!(
            "{} uptime {}s load {:.2} {:.2} {:.2} memory {}/{} MiB",
            s.pve_version().unwrap_or("pve ?"),
            s.uptime,
            s.loadavg[0],
            s.loadavg[1],
            s.loadavg[2],
            s.memory.used / (1 << 20),
            s.memory.total / (1 << 20)
        )
    });
    let guests = r.check("guests", client.list_lxc(), |guests| {
        let running = guests
            .iter()
            .filter(|g| g.status == RunState::Running)
            .count();
        let mut ids: Vec<u32> = guests.iter().map(|g| g.vmid).collect();
        ids.sort_unstable();
        let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
        format!(
            "{} LXC guests, {running} running [{}]",
            guests.len(),
            ids.join(" ")
        )
    });
    let storages = r.check("storage", client.node_storage(), |st| {
        let names: Vec<String> = st
            .iter()
            .map(|s| {
                format!(
                    "{} ({}{})",
                    s.storage,
                    s.kind,
                    if s.active { "" } else { ", inactive" }
                )
            })
            .collect();
        names.join(", ")
    });
    let guests: Vec<u32> = guests.unwrap_or_default().iter().map(|g| g.vmid).collect();
    let storages: Vec<String> = storages
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.storage)
        .collect();
    privileges(client, &guests, &storages, &mut r);
    let failures = r.failures;
    let _ = writeln!(
        r.out,
        "{}",
        if failures == 0 {
            "selftest read: passed".to_owned()
        } else {
            format!("selftest read: {failures} step(s) failed")
        }
    );
    failures == 0
}

/// At most this many guests (and as many storages) have their privileges read.
const PRIVILEGE_PATHS_MAX: usize = 32;

/// The token's own privileges (`GET /access/permissions`) against the `FelhomAgent`
/// role, on the node, each guest seen (or `/vms`), each storage seen (or `/storage`)
/// and each bridge or VLAN the guests' `net*` use (or `/sdn/zones/localnetwork`): a
/// missing one fails the step naming the path and the privilege; more than the role is
/// said, not failed.
fn privileges(client: &Client, guests: &[u32], storages: &[String], r: &mut Report<'_>) {
    let mut vms: Vec<String> = guests.iter().map(|v| format!("/vms/{v}")).collect();
    if vms.is_empty() {
        vms.push("/vms".to_owned());
    }
    let mut stores: Vec<String> = storages.iter().map(|s| format!("/storage/{s}")).collect();
    if stores.is_empty() {
        stores.push("/storage".to_owned());
    }
    let mut bridges: Vec<String> = guest_bridges(client, guests).into_iter().collect();
    if bridges.is_empty() {
        bridges.push(AclPath::Bridge.grant_path(client.node()));
    }
    let node = vec![format!("/nodes/{}", client.node())];
    let role = role_privileges();
    let mut missing = Vec::new();
    let mut extra: BTreeSet<String> = BTreeSet::new();
    let mut asked = 0usize;
    for (kind, paths) in [
        (AclPath::Node, node),
        (AclPath::Vm, vms),
        (AclPath::Storage, stores),
        (AclPath::Bridge, bridges),
    ] {
        let needed = role_privileges_on(kind);
        for path in paths.iter().take(PRIVILEGE_PATHS_MAX) {
            let held = match client.permissions(path) {
                Ok(h) => h,
                Err(e) => return r.fail("privileges", e),
            };
            asked += 1;
            let lacks: Vec<&str> = needed
                .iter()
                .copied()
                .filter(|p| !held.iter().any(|h| h == p))
                .collect();
            if !lacks.is_empty() {
                missing.push(format!("{path}: {}", lacks.join(" ")));
            }
            extra.extend(held.into_iter().filter(|h| !role.contains(&h.as_str())));
        }
    }
    if !missing.is_empty() {
        r.fail(
            "privileges",
            format!(
                "the token lacks what the {ROLE_NAME} role grants (README, \"Proxmox role\"): {}",
                missing.join("; ")
            ),
        );
        let _ = writeln!(r.out, "      the role, granted as Proxmox needs it:");
        for line in pveum_recipe(client.node()).lines() {
            let _ = writeln!(r.out, "        {line}");
        }
        return;
    }
    let beyond = if extra.is_empty() {
        String::new()
    } else {
        format!(
            "; {} more than the role needs: {}",
            extra.len(),
            extra.into_iter().collect::<Vec<_>>().join(" ")
        )
    };
    r.ok(
        "privileges",
        format!(
            "the {ROLE_NAME} role's {} held on {asked} path(s){beyond}",
            role.len()
        ),
    );
}

/// The SDN paths Proxmox checks `SDN.Use` on when a backup of one of `guests` is
/// restored: each bridge (or VLAN) their `net*` name, from the first guests' configs. A
/// config that cannot be read (the guest is gone) adds nothing.
fn guest_bridges(client: &Client, guests: &[u32]) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for vmid in guests.iter().take(PRIVILEGE_PATHS_MAX) {
        let Ok(config) = client.guest_config(*vmid) else {
            continue;
        };
        for net in config.nets().filter_map(|(_, v)| v.as_str()) {
            paths.extend(bridge_acl_paths(net));
        }
    }
    paths
}

/// How `task` waits for each Proxmox task.
pub(crate) fn task_wait_options() -> WaitOptions {
    WaitOptions {
        timeout: Duration::from_secs(600),
        ..WaitOptions::default()
    }
}

fn wait(
    client: &Client,
    upid: &Upid,
    opts: &WaitOptions,
    shutdown: &Shutdown,
) -> Result<String, WaitError> {
    match client.wait_task(upid, opts, shutdown)? {
        TaskOutcome::Ok => Ok(format!("{} OK", upid.task_type())),
        TaskOutcome::Warnings { count, .. } => {
            Ok(format!("{} OK with {count} warning(s)", upid.task_type()))
        }
    }
}

/// The description as written, without the trailing newline Proxmox adds on read.
pub(crate) fn description_as_written(read_back: &str) -> &str {
    read_back.strip_suffix('\n').unwrap_or(read_back)
}

/// `selftest task --vmid N`: snapshot → rollback (starting the guest again if it ran)
/// → delete snapshot, then a description marker write → verify → restore the original
/// (or delete the key) → verify.
/// Returns whether every step succeeded.
pub(crate) fn task(
    client: &Client,
    vmid: u32,
    opts: &WaitOptions,
    shutdown: &Shutdown,
    out: &mut dyn Write,
) -> bool {
    let mut r = Report { out, failures: 0 };
    let now = SystemClock.now();
    let _ = writeln!(
        r.out,
        "selftest task on guest {vmid} via {} (node {})",
        client.api_url(),
        client.node()
    );

    // Snapshot round trip. Each step only runs if the one before it succeeded, and the
    // snapshot is deleted whenever it was created. Proxmox stops a running guest
    // before it rolls back, so the run state is read first (without it the round trip
    // is skipped: it could leave a running guest stopped) and restored by the rollback.
    let before = r.check("run state", client.guest_status(vmid), |g| {
        g.status.to_string()
    });
    let snap = format!("{SNAPSHOT_PREFIX}{}", now.unix());
    let created = before.as_ref().and_then(|_| {
        r.check(
            "snapshot",
            client.snapshot(vmid, &snap, Some("felhom-agent selftest")),
            |u| format!("{snap}: {u}"),
        )
        .and_then(|u| r.check("  wait", wait(client, &u, opts, shutdown), String::clone))
    });
    if let (Some(before), Some(_)) = (&before, created) {
        let start = before.status == RunState::Running;
        if let Some(u) = r.check("rollback", client.rollback(vmid, &snap, start), |u| {
            format!("{u} (start={start})")
        }) && r
            .check("  wait", wait(client, &u, opts, shutdown), String::clone)
            .is_some()
        {
            match client.guest_status(vmid) {
                Ok(g) if g.status == before.status => {
                    r.ok("  run state", format!("{} as before", g.status));
                }
                Ok(g) => r.fail(
                    "  run state",
                    format!("{}, was {} before the rollback", g.status, before.status),
                ),
                Err(e) => r.fail("  run state", e),
            }
        }
        if let Some(u) = r.check(
            "delete snapshot",
            client.delete_snapshot(vmid, &snap),
            |u| u.to_string(),
        ) {
            r.check("  wait", wait(client, &u, opts, shutdown), String::clone);
        }
    }

    // Description round trip: remember the original, write a marker, restore.
    let original = r.check("read config", client.guest_config(vmid), |c| {
        format!(
            "description {}",
            if c.description.is_some() {
                "present"
            } else {
                "absent"
            }
        )
    });
    if let Some(original) = original {
        let marker = format!("{MARKER_PREFIX} {now}");
        let write = ConfigChange {
            set: vec![("description".into(), marker.clone())],
            delete: Vec::new(),
            digest: None,
        };
        if set_and_verify(
            client,
            vmid,
            &write,
            Some(&marker),
            opts,
            shutdown,
            &mut r,
            "write marker",
        ) {
            let restore = match &original.description {
                Some(d) => ConfigChange {
                    set: vec![("description".into(), description_as_written(d).to_owned())],
                    delete: Vec::new(),
                    digest: None,
                },
                None => ConfigChange {
                    set: Vec::new(),
                    delete: vec!["description".into()],
                    digest: None,
                },
            };
            let want = original.description.as_deref().map(description_as_written);
            if !set_and_verify(
                client, vmid, &restore, want, opts, shutdown, &mut r, "restore",
            ) {
                let _ = writeln!(
                    r.out,
                    "      guest {vmid} still carries the marker description; restore it by hand"
                );
            }
        }
    }

    let failures = r.failures;
    let _ = writeln!(
        r.out,
        "{}",
        if failures == 0 {
            "selftest task: passed".to_owned()
        } else {
            format!("selftest task: {failures} step(s) failed")
        }
    );
    failures == 0
}

/// Applies `change` (sync or async), then reads the config back and checks the
/// description is `want` (absent when `None`).
#[allow(clippy::too_many_arguments)]
fn set_and_verify(
    client: &Client,
    vmid: u32,
    change: &ConfigChange,
    want: Option<&str>,
    opts: &WaitOptions,
    shutdown: &Shutdown,
    r: &mut Report<'_>,
    step: &str,
) -> bool {
    let applied = match client.set_config(vmid, change) {
        Ok(None) => {
            r.ok(step, "applied synchronously");
            true
        }
        Ok(Some(upid)) => {
            r.ok(step, format!("task {upid}"));
            r.check("  wait", wait(client, &upid, opts, shutdown), String::clone)
                .is_some()
        }
        Err(e) => {
            r.fail(step, e);
            false
        }
    };
    if !applied {
        return false;
    }
    match client.guest_config(vmid) {
        Ok(c) => {
            let got = c.description.as_deref().map(description_as_written);
            if got == want {
                r.ok(
                    "  verify",
                    format!(
                        "description {}",
                        if want.is_some() {
                            "as written"
                        } else {
                            "absent"
                        }
                    ),
                );
                true
            } else {
                r.fail("  verify", {
                    let show =
                        |d: Option<&str>| d.map_or("absent".to_owned(), |d| format!("\"{d}\""));
                    format!("description is {}, expected {}", show(got), show(want))
                });
                false
            }
        }
        Err(e) => {
            r.fail("  verify", e);
            false
        }
    }
}

/// Which selftest to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelftestKind {
    /// Read-only health report against Proxmox.
    Read,
    /// A reversible mutation round trip on one guest.
    Task,
    /// One collect + report to the hub.
    Hub,
    /// No network: signature known-answer tests, config, state files.
    Offline,
}

impl SelftestKind {
    /// Parses `read`, `task`, `hub` or `offline`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(SelftestKind::Read),
            "task" => Some(SelftestKind::Task),
            "hub" => Some(SelftestKind::Hub),
            "offline" => Some(SelftestKind::Offline),
            _ => None,
        }
    }

    /// The config mode this selftest validates for.
    pub fn mode(self) -> Mode {
        match self {
            SelftestKind::Read => Mode::SelftestRead,
            SelftestKind::Task => Mode::SelftestTask,
            SelftestKind::Hub => Mode::SelftestHub,
            SelftestKind::Offline => Mode::SelftestOffline,
        }
    }
}

/// Runs `selftest KIND`; returns the exit code.
pub(crate) fn selftest(
    kind: SelftestKind,
    vmid: Option<u32>,
    config: &Path,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let cfg = match load_config(config, kind.mode(), err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let passed = match kind {
        SelftestKind::Hub => match crate::app::wiring::selftest_hub(&cfg, out) {
            Ok(()) => true,
            Err(e) => {
                let _ = writeln!(err, "felhom-agent: {e}");
                if e.is_configuration() {
                    return EXIT_USAGE;
                }
                false
            }
        },
        SelftestKind::Offline => {
            let state = &cfg.state_dir;
            let files: Vec<PathBuf> = ["journal.log", "nonces.log", "audit.log", "audit.log.1"]
                .iter()
                .map(|f| state.join(f))
                .collect();
            let checks = crate::authz::offline_selftest(cfg.authz.as_ref(), Some(state), &files);
            let _ = writeln!(out, "selftest offline (no network)");
            for c in &checks {
                let mark = if c.ok { "ok  " } else { "FAIL" };
                let _ = writeln!(out, "{mark}  {:<28} {}", c.name, visible(&c.detail));
            }
            let failed = checks.iter().filter(|c| !c.ok).count();
            if failed == 0 {
                let _ = writeln!(out, "selftest offline: passed");
            } else {
                let _ = writeln!(out, "selftest offline: {failed} check(s) failed");
            }
            failed == 0
        }
        SelftestKind::Read | SelftestKind::Task => {
            let Some(pcfg) = cfg.proxmox.as_ref() else {
                let _ = writeln!(
                    err,
                    "felhom-agent: configuration error: proxmox: section is missing"
                );
                return EXIT_USAGE;
            };
            let client = match crate::app::wiring::proxmox_client(pcfg) {
                Ok(c) => c,
                Err(e) => {
                    let _ = writeln!(err, "felhom-agent: configuration error: {e}");
                    return EXIT_USAGE;
                }
            };
            if let Some(w) = pcfg.tls.warning() {
                crate::warn!(tls_verification_disabled, w, section = "proxmox");
            }
            match (kind, vmid) {
                (SelftestKind::Task, Some(vmid)) => {
                    // A round trip beside a running daemon could race its reconcile of
                    // the same guest: the same lock as `run`.
                    let _lock = match lock_state(&cfg.state_dir, err) {
                        Ok(l) => l,
                        Err(code) => return code,
                    };
                    crate::app::selftest::task(
                        &client,
                        vmid,
                        &crate::app::selftest::task_wait_options(),
                        &crate::base::shutdown::Shutdown::new(),
                        out,
                    )
                }
                _ => crate::app::selftest::read(&client, out),
            }
        }
    };
    if passed { EXIT_OK } else { EXIT_FAILED }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_newline_is_the_only_thing_stripped() {
        assert_eq!(description_as_written("web\n"), "web");
        assert_eq!(description_as_written("web"), "web");
        assert_eq!(description_as_written("a\nb\n"), "a\nb");
        assert_eq!(description_as_written("web\n\n"), "web\n");
    }
}
