//! The Proxmox privileges the agent needs, derived from the calls it makes: the table
//! [`API_CALLS`] (`calls.rs`) has one row per API call of [`Client`](super::Client) (per config key where Proxmox checks per key),
//! with the privileges Proxmox's own `permissions` block or handler checks, the ACL path,
//! the source, and the agent features that make the call. From the table come the
//! `FelhomAgent` role ([`role_privileges`], a smallest set that satisfies every check of
//! every feature that exists) and the operator's `pveum` recipe ([`pveum_recipe`]).
//!
//! The ACL paths include a guest's network bridges ([`bridge_acl_paths`]): Proxmox VE 8
//! checks `SDN.Use` on them when a backup is restored or a `net*` changes.
//!
//! A feature that is planned but not yet wired has its rows here already, so wiring it
//! is one flag in [`Feature::wired`]; until then its privileges stay out of the role.
//! This module is data and pure functions: it never talks to Proxmox and never decides
//! whether a call is allowed (Proxmox does; the simulator models it).

use std::collections::BTreeSet;
use std::fmt::Write as _;

mod calls;

pub use calls::API_CALLS;

/// The role's name in the recipe.
pub const ROLE_NAME: &str = "FelhomAgent";
/// The user the recipe creates.
pub const ROLE_USER: &str = "felhom-agent@pve";
/// The token the recipe creates (`ROLE_USER!ROLE_TOKEN` is the config's `token_id`).
pub const ROLE_TOKEN: &str = "agent";

/// A named thing the agent does, by the name operators and tests use for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Feature {
    /// The host report: node status, guests and their config, storages, backups.
    Report,
    /// Reconcile writes a guest's config (cores, memory, description).
    ReconcileConfig,
    /// Reconcile starts a guest.
    ReconcileStart,
    /// Reconcile stops a guest (a clean shutdown, force-stopped at the timeout).
    ReconcileStop,
    /// Waiting for a task: its status and the tail of its log.
    TaskWait,
    /// Recover at start-up: the node's task list and the guests' configs.
    Recover,
    /// The signed op `guest_destroy` (with `unprotect`).
    GuestDestroy,
    /// `selftest read`.
    SelftestRead,
    /// `selftest task --vmid N`: snapshot, rollback, delete, description round trip.
    SelftestTask,
    /// Provisioning a desired guest from a backup or a template (`POST …/lxc`).
    Provision,
    /// Restore tests: restore into a scratch guest, check it, destroy it.
    RestoreTest,
    /// Growing a guest's root disk (`spec.rootfs_bytes`).
    Resize,
    /// The signed op `snapshot_rollback`.
    SnapshotRollback,
    /// The signed op `restore_overwrite`.
    RestoreOverwrite,
    /// The signed op `backup_delete`.
    BackupDelete,
}

impl Feature {
    /// Every feature, in table order.
    pub const ALL: &'static [Feature] = &[
        Feature::Report,
        Feature::ReconcileConfig,
        Feature::ReconcileStart,
        Feature::ReconcileStop,
        Feature::TaskWait,
        Feature::Recover,
        Feature::GuestDestroy,
        Feature::SelftestRead,
        Feature::SelftestTask,
        Feature::Provision,
        Feature::RestoreTest,
        Feature::Resize,
        Feature::SnapshotRollback,
        Feature::RestoreOverwrite,
        Feature::BackupDelete,
    ];

    /// The snake_case name used in docs and test output.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Report => "report",
            Feature::ReconcileConfig => "reconcile_config",
            Feature::ReconcileStart => "reconcile_start",
            Feature::ReconcileStop => "reconcile_stop",
            Feature::TaskWait => "task_wait",
            Feature::Recover => "recover",
            Feature::GuestDestroy => "guest_destroy",
            Feature::SelftestRead => "selftest_read",
            Feature::SelftestTask => "selftest_task",
            Feature::Provision => "provision",
            Feature::RestoreTest => "restore_test",
            Feature::Resize => "resize",
            Feature::SnapshotRollback => "snapshot_rollback",
            Feature::RestoreOverwrite => "restore_overwrite",
            Feature::BackupDelete => "backup_delete",
        }
    }

    /// Does the agent have this feature today? Rows of the others wait for their code;
    /// their privileges stay out of the role until the flag flips.
    pub fn wired(self) -> bool {
        matches!(
            self,
            Feature::Report
                | Feature::ReconcileConfig
                | Feature::ReconcileStart
                | Feature::ReconcileStop
                | Feature::TaskWait
                | Feature::Recover
                | Feature::GuestDestroy
                | Feature::SelftestRead
                | Feature::SelftestTask
                | Feature::Provision
                | Feature::RestoreTest
                | Feature::Resize
                | Feature::SnapshotRollback
                | Feature::RestoreOverwrite
                | Feature::BackupDelete
        )
    }
}

/// Where Proxmox checks a privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AclPath {
    /// `/`.
    Root,
    /// `/nodes/{node}`, the node the agent runs on.
    Node,
    /// `/vms/{vmid}`, each guest.
    Vm,
    /// `/storage/{storage}`, each storage.
    Storage,
    /// `/sdn/zones/localnetwork/{bridge}` (`…/{bridge}/{tag}` for a VLAN), each bridge
    /// a guest's `net*` names: PVE 8's `SDN.Use` ([`bridge_acl_paths`]).
    Bridge,
}

impl AclPath {
    /// The path as Proxmox's `permissions` block writes it.
    pub fn pattern(self) -> &'static str {
        match self {
            AclPath::Root => "/",
            AclPath::Node => "/nodes/{node}",
            AclPath::Vm => "/vms/{vmid}",
            AclPath::Storage => "/storage/{storage}",
            AclPath::Bridge => "/sdn/zones/localnetwork/{bridge}",
        }
    }

    /// The narrowest path to grant the role at so that it covers every checked path of
    /// this kind on `node` (ACLs propagate downwards).
    pub fn grant_path(self, node: &str) -> String {
        match self {
            AclPath::Root => "/".to_owned(),
            AclPath::Node => format!("/nodes/{node}"),
            AclPath::Vm => "/vms".to_owned(),
            AclPath::Storage => "/storage".to_owned(),
            AclPath::Bridge => format!("/sdn/zones/{LOCAL_ZONE}"),
        }
    }
}

/// The SDN zone Proxmox checks a plain Linux bridge in (a bridge that is not an SDN VNet).
pub const LOCAL_ZONE: &str = "localnetwork";

/// The most VLAN paths one `net*` value yields (a trunk may name a range).
const VLAN_PATHS_MAX: usize = 64;

/// The ACL paths on which PVE 8 checks `SDN.Use` for one `net*` value, as pve-guest-common's
/// `check_vnet_access` does: `/sdn/zones/localnetwork/{bridge}/{tag}` for a VLAN `tag`
/// and for each VLAN of `trunks`, else `/sdn/zones/localnetwork/{bridge}`; nothing when
/// the value names no bridge. Sorted, each once, at most 64 VLAN paths.
///
/// A bridge that is an SDN VNet is checked in its own zone, which only the node's SDN
/// config knows; this assumes `localnetwork`. A bridge or VLAN id that is not a valid
/// path segment yields nothing (Proxmox's own formats never produce one).
pub fn bridge_acl_paths(net: &str) -> Vec<String> {
    let mut bridge = None;
    let mut tags: BTreeSet<u16> = BTreeSet::new();
    let mut vlan = |id: &str| {
        if let Ok(n) = id.parse::<u16>()
            && (1..=4094).contains(&n)
            && tags.len() < VLAN_PATHS_MAX
        {
            tags.insert(n);
        }
    };
    for part in net.split(',') {
        match part.split_once('=') {
            Some(("bridge", b))
                if !b.is_empty()
                    && b.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')) =>
            {
                bridge = Some(b);
            }
            Some(("tag", t)) => vlan(t),
            Some(("trunks", list)) => {
                for trunk in list.split(';') {
                    match trunk.split_once('-') {
                        Some((lo, hi)) => {
                            let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) else {
                                continue;
                            };
                            for n in lo..=hi.min(4094) {
                                vlan(&n.to_string());
                            }
                        }
                        None => vlan(trunk),
                    }
                }
            }
            _ => {}
        }
    }
    let Some(bridge) = bridge else {
        return Vec::new();
    };
    let at = format!("/sdn/zones/{LOCAL_ZONE}/{bridge}");
    if tags.is_empty() {
        return vec![at];
    }
    tags.iter().map(|t| format!("{at}/{t}")).collect()
}

/// One check: any one of `any_of` on `acl` suffices. An empty list needs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// Where it is checked.
    pub acl: AclPath,
    /// Any one of these suffices (the first is the one the role takes when it must choose).
    pub any_of: &'static [&'static str],
}

const fn need(acl: AclPath, any_of: &'static [&'static str]) -> Requirement {
    Requirement { acl, any_of }
}

/// One API call the agent makes, and what Proxmox requires for it.
#[derive(Debug, Clone, Copy)]
pub struct ApiCall {
    /// The [`Client`](super::Client) method that makes it.
    pub client_fn: &'static str,
    /// The HTTP method.
    pub method: &'static str,
    /// The path after `/api2/json`.
    pub path: &'static str,
    /// What of the call this row is about, when Proxmox checks by parameter (a config
    /// key), or empty.
    pub case: &'static str,
    /// Every one of these must hold.
    pub requires: &'static [Requirement],
    /// Where Proxmox says so.
    pub source: &'static str,
    /// The features that make this call (in this case).
    pub features: &'static [Feature],
}

/// The rows some wired feature uses.
fn wired_calls() -> impl Iterator<Item = &'static ApiCall> {
    API_CALLS
        .iter()
        .filter(|c| c.features.iter().any(|f| f.wired()))
}

/// Every requirement of every wired feature, each with the features behind it.
fn wired_requirements() -> Vec<(Requirement, Vec<Feature>)> {
    let mut out: Vec<(Requirement, Vec<Feature>)> = Vec::new();
    for call in wired_calls() {
        let features: Vec<Feature> = call
            .features
            .iter()
            .copied()
            .filter(|f| f.wired())
            .collect();
        for r in call.requires.iter().filter(|r| !r.any_of.is_empty()) {
            match out.iter_mut().find(|(have, _)| have == r) {
                Some((_, fs)) => {
                    for f in &features {
                        if !fs.contains(f) {
                            fs.push(*f);
                        }
                    }
                }
                None => out.push((*r, features.clone())),
            }
        }
    }
    out
}

/// The `FelhomAgent` role: a smallest set of privileges that meets every requirement of
/// every wired feature. Requirements with one choice come first; a requirement with
/// several is met by one already chosen, else by its first (narrowest) choice. Sorted.
pub fn role_privileges() -> Vec<&'static str> {
    let reqs = wired_requirements();
    let mut chosen: BTreeSet<&'static str> = BTreeSet::new();
    for (r, _) in reqs.iter().filter(|(r, _)| r.any_of.len() == 1) {
        chosen.extend(r.any_of.iter().copied());
    }
    for (r, _) in reqs.iter().filter(|(r, _)| r.any_of.len() > 1) {
        if !r.any_of.iter().any(|p| chosen.contains(p))
            && let Some(first) = r.any_of.first()
        {
            chosen.insert(first);
        }
    }
    chosen.into_iter().collect()
}

/// The ACL paths the role must be granted at: one per kind of path the role's
/// privileges are checked on.
pub fn role_acl_paths() -> Vec<AclPath> {
    let role = role_privileges();
    let paths: BTreeSet<AclPath> = wired_requirements()
        .iter()
        .filter(|(r, _)| r.any_of.iter().any(|p| role.contains(p)))
        .map(|(r, _)| r.acl)
        .collect();
    paths.into_iter().collect()
}

/// The role's privileges Proxmox checks on paths of kind `acl`, sorted.
pub fn role_privileges_on(acl: AclPath) -> Vec<&'static str> {
    let role = role_privileges();
    let on: BTreeSet<&'static str> = wired_requirements()
        .iter()
        .filter(|(r, _)| r.acl == acl)
        .flat_map(|(r, _)| r.any_of.iter().copied())
        .filter(|p| role.contains(p))
        .collect();
    on.into_iter().collect()
}

/// The wired features that break without `privilege` (the role minus it), in table order.
pub fn features_needing(privilege: &str) -> Vec<Feature> {
    let role = role_privileges();
    let mut out = BTreeSet::new();
    for (r, features) in wired_requirements() {
        let held_without = r.any_of.iter().any(|p| *p != privilege && role.contains(p));
        if r.any_of.contains(&privilege) && !held_without {
            out.extend(features);
        }
    }
    Feature::ALL
        .iter()
        .copied()
        .filter(|f| out.contains(f))
        .collect()
}

/// The operator's recipe: the role, the user, its privilege-separated token, and the
/// role on each ACL path for both the user and the token (a privsep token holds only
/// what both are granted). `node` is the node's name as Proxmox knows it.
pub fn pveum_recipe(node: &str) -> String {
    let mut s = String::new();
    let privs = role_privileges().join(",");
    let token = format!("{ROLE_USER}!{ROLE_TOKEN}");
    let _ = writeln!(s, "pveum role add {ROLE_NAME} --privs \"{privs}\"");
    let _ = writeln!(s, "pveum user add {ROLE_USER} --comment \"felhom-agent\"");
    let _ = writeln!(
        s,
        "pveum user token add {ROLE_USER} {ROLE_TOKEN} --privsep 1 --comment \"felhom-agent daemon\""
    );
    for path in role_acl_paths() {
        let at = path.grant_path(node);
        let _ = writeln!(
            s,
            "pveum acl modify {at} --users {ROLE_USER} --roles {ROLE_NAME}"
        );
        let _ = writeln!(
            s,
            "pveum acl modify {at} --tokens '{token}' --roles {ROLE_NAME}"
        );
    }
    s
}

/// The role as a Markdown table: each privilege, the ACL paths it is checked on, and the
/// features that break without it.
pub fn role_table_markdown() -> String {
    let mut s =
        String::from("| privilege | checked on | without it, these break |\n|---|---|---|\n");
    let reqs = wired_requirements();
    for p in role_privileges() {
        let paths: BTreeSet<&str> = reqs
            .iter()
            .filter(|(r, _)| r.any_of.contains(&p))
            .map(|(r, _)| r.acl.pattern())
            .collect();
        let paths: Vec<String> = paths.iter().map(|a| format!("`{a}`")).collect();
        let features: Vec<String> = features_needing(p)
            .iter()
            .map(|f| format!("`{}`", f.name()))
            .collect();
        let _ = writeln!(
            s,
            "| `{p}` | {} | {} |",
            paths.join(", "),
            features.join(", ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_is_the_expected_set_and_each_privilege_is_needed_by_a_feature() {
        let role = role_privileges();
        assert_eq!(
            role,
            [
                "Datastore.AllocateSpace",
                "SDN.Use",
                "Sys.Audit",
                "VM.Allocate",
                "VM.Audit",
                "VM.Backup",
                "VM.Config.CPU",
                "VM.Config.Disk",
                "VM.Config.Memory",
                "VM.Config.Network",
                "VM.Config.Options",
                "VM.PowerMgmt",
                "VM.Snapshot",
            ]
        );
        for p in &role {
            assert!(!features_needing(p).is_empty(), "{p} is needed by nothing");
        }
    }

    #[test]
    fn the_role_meets_every_wired_requirement() {
        let role = role_privileges();
        for (r, fs) in wired_requirements() {
            assert!(
                r.any_of.iter().any(|p| role.contains(p)),
                "{r:?} for {fs:?}"
            );
        }
    }

    #[test]
    fn every_feature_is_wired_and_restore_tests_add_no_privilege() {
        assert!(Feature::ALL.iter().all(|f| f.wired()));
        // Restore tests need nothing the role does not hold for the other features.
        assert_eq!(role_privileges().len(), 13);
        for p in [
            "SDN.Use",
            "VM.Allocate",
            "VM.Audit",
            "VM.Backup",
            "Datastore.AllocateSpace",
            "Sys.Audit",
            "VM.PowerMgmt",
            "VM.Config.Network",
            "VM.Config.Options",
        ] {
            assert!(
                features_needing(p).contains(&Feature::RestoreTest),
                "restore tests break without {p}"
            );
        }
        for p in [
            "VM.Config.CPU",
            "VM.Config.Memory",
            "VM.Config.Disk",
            "VM.Snapshot",
        ] {
            assert!(!features_needing(p).contains(&Feature::RestoreTest), "{p}");
        }
    }

    #[test]
    fn restore_test_rows_are_exactly_the_calls_it_makes() {
        let mut calls: Vec<(&str, &str)> = API_CALLS
            .iter()
            .filter(|c| c.features.contains(&Feature::RestoreTest))
            .map(|c| (c.client_fn, c.case))
            .collect();
        calls.sort_unstable();
        assert_eq!(
            calls,
            [
                ("backup_volumes", "content=backup"),
                ("create_lxc", "restore=1, a new vmid"),
                ("create_lxc", "restore=1, each net* of the backup"),
                ("destroy", ""),
                ("guest_config", ""),
                ("guest_status", ""),
                ("list_lxc", ""),
                ("node_status", ""),
                ("node_storage", ""),
                ("set_config", "delete net*"),
                ("set_config", "delete onboot"),
                ("set_config", "delete protection"),
                ("start", ""),
                ("storage_status", ""),
                ("task_log", ""),
                ("task_status", ""),
            ]
        );
    }

    #[test]
    fn the_new_privileges_are_charged_to_the_features_that_need_them() {
        assert_eq!(
            features_needing("VM.Config.Disk"),
            [Feature::Provision, Feature::Resize]
        );
        assert_eq!(
            features_needing("VM.Config.Network"),
            [Feature::Provision, Feature::RestoreTest]
        );
        // A rollback is allowed by VM.Snapshot, which the selftest needs anyway.
        assert!(!role_privileges().contains(&"VM.Snapshot.Rollback"));
        assert!(features_needing("VM.Snapshot").contains(&Feature::SnapshotRollback));
        // Backup deletion takes the narrow branch: never Datastore.Allocate.
        assert!(!role_privileges().contains(&"Datastore.Allocate"));
        assert!(features_needing("VM.Backup").contains(&Feature::BackupDelete));
        // Restoring over a guest is allowed by VM.Allocate or by VM.Backup: neither
        // alone is needed by restore_overwrite.
        assert!(!features_needing("VM.Allocate").contains(&Feature::RestoreOverwrite));
        assert!(features_needing("VM.PowerMgmt").contains(&Feature::RestoreOverwrite));
        // A backup's network devices: restoring it anywhere needs SDN.Use on its bridge;
        // a guest made from a template gets no net* from the agent.
        assert_eq!(
            features_needing("SDN.Use"),
            [
                Feature::Provision,
                Feature::RestoreTest,
                Feature::RestoreOverwrite
            ]
        );
        assert_eq!(role_privileges_on(AclPath::Bridge), ["SDN.Use"]);
        assert!(!role_privileges_on(AclPath::Vm).contains(&"SDN.Use"));
    }

    #[test]
    fn a_net_value_yields_the_paths_check_vnet_access_checks() {
        let at = |v: &str| bridge_acl_paths(v);
        assert_eq!(
            at("name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:64,ip=dhcp,type=veth"),
            ["/sdn/zones/localnetwork/vmbr0"]
        );
        assert_eq!(
            at("name=eth0,bridge=vmbr1,tag=20"),
            ["/sdn/zones/localnetwork/vmbr1/20"]
        );
        // A tag and trunks: each VLAN, never the whole bridge.
        assert_eq!(
            at("bridge=vmbr0,tag=5,trunks=30;10-12"),
            [
                "/sdn/zones/localnetwork/vmbr0/5",
                "/sdn/zones/localnetwork/vmbr0/10",
                "/sdn/zones/localnetwork/vmbr0/11",
                "/sdn/zones/localnetwork/vmbr0/12",
                "/sdn/zones/localnetwork/vmbr0/30",
            ]
        );
        assert!(at("name=eth0,ip=dhcp").is_empty(), "no bridge, no check");
        assert!(at("bridge=vm/br0").is_empty(), "not a path segment");
        assert!(at("bridge=").is_empty());
        assert_eq!(at("bridge=v,trunks=1-4094").len(), VLAN_PATHS_MAX);
        assert_eq!(
            at("bridge=v,tag=0,trunks=x;4095"),
            ["/sdn/zones/localnetwork/v"],
            "ids outside 1-4094 are not VLANs"
        );
    }

    #[test]
    fn the_recipe_grants_the_role_to_user_and_token_on_each_path() {
        let r = pveum_recipe("pve-a");
        for at in [
            "/nodes/pve-a",
            "/sdn/zones/localnetwork",
            "/storage",
            "/vms",
        ] {
            assert!(
                r.contains(&format!("acl modify {at} --users {ROLE_USER} ")),
                "{r}"
            );
            assert!(
                r.contains(&format!(
                    "acl modify {at} --tokens '{ROLE_USER}!{ROLE_TOKEN}' "
                )),
                "{r}"
            );
        }
        assert!(r.contains("--privsep 1"), "{r}");
        assert!(
            !r.contains("acl modify / "),
            "nothing needs the root path: {r}"
        );
    }
}
