//! Which privileges each simulated endpoint checks, on which ACL path, and when: one
//! row per endpoint, each naming the `permissions` block (or the in-handler check) of
//! Proxmox's source it follows. The routes in `api` take their privilege lists from the
//! constants here, so a row and its check cannot drift apart.
//!
//! The table is public so that a test can hold the agent's own privilege table against
//! it. Owns the table only. It never decides whether a privilege is held (that is `acl` and
//! the denials in `model`) and never answers a request.

/// `VM.Audit` on `/vms/{vmid}`.
pub(crate) const VM_AUDIT: &[&str] = &["VM.Audit"];
/// `VM.PowerMgmt` on `/vms/{vmid}`.
pub(crate) const VM_POWER: &[&str] = &["VM.PowerMgmt"];
/// `VM.Allocate` on `/vms/{vmid}`.
pub(crate) const VM_ALLOCATE: &[&str] = &["VM.Allocate"];
/// Any of these on `/vms/{vmid}` to restore over an existing container.
pub(crate) const VM_ALLOCATE_OR_BACKUP: &[&str] = &["VM.Allocate", "VM.Backup"];
/// `VM.Snapshot` on `/vms/{vmid}`.
pub(crate) const VM_SNAPSHOT: &[&str] = &["VM.Snapshot"];
/// Any of these on `/vms/{vmid}` for a rollback.
pub(crate) const VM_ROLLBACK: &[&str] = &["VM.Snapshot", "VM.Snapshot.Rollback"];
/// `VM.Backup` on `/vms/{vmid}` (vzdump's worker; a backup volume's owner).
pub(crate) const VM_BACKUP: &[&str] = &["VM.Backup"];
/// Any of these on `/vms/{vmid}` before a config PUT looks at its keys.
pub(crate) const VM_CONFIG_ANY: &[&str] = &[
    "VM.Config.Disk",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
];
/// `VM.Config.Disk` on `/vms/{vmid}`: a disk resize.
pub(crate) const VM_CONFIG_DISK: &[&str] = &["VM.Config.Disk"];
/// `Sys.Audit` on `/nodes/{node}`.
pub(crate) const SYS_AUDIT: &[&str] = &["Sys.Audit"];
/// Any of these on `/storage/{storage}` to see a storage or list its content.
pub(crate) const DATASTORE_SEE: &[&str] = &["Datastore.Audit", "Datastore.AllocateSpace"];
/// `Datastore.AllocateSpace` on `/storage/{storage}`.
pub(crate) const DATASTORE_SPACE: &[&str] = &["Datastore.AllocateSpace"];
/// `Datastore.Allocate` on `/storage/{storage}`: any volume on it.
pub(crate) const DATASTORE_ALLOCATE: &[&str] = &["Datastore.Allocate"];

/// `SDN.Use` on a bridge (or one of its VLANs) in its SDN zone.
pub(crate) const SDN_USE: &[&str] = &["SDN.Use"];

/// The ACL paths pve-guest-common's `check_vnet_access` checks `SDN.Use` on for one
/// `net*` value (`PVE/LXC.pm` `check_bridge_access` parses it first): the VLAN `tag`,
/// each VLAN of `trunks` (`a-b` is every id from a to b), and the whole bridge only when
/// neither is given. No `bridge=`, no check. Every bridge is a plain Linux bridge in the
/// `localnetwork` zone: the simulator has no SDN VNets.
pub(crate) fn vnet_paths(net: &str) -> Vec<String> {
    let opts: std::collections::BTreeMap<&str, &str> =
        net.split(',').filter_map(|kv| kv.split_once('=')).collect();
    let Some(vnet) = opts.get("bridge") else {
        return Vec::new();
    };
    let zone_path = format!("/sdn/zones/localnetwork/{vnet}");
    let mut checked = Vec::new();
    if let Some(tag) = opts.get("tag").filter(|t| !t.is_empty() && **t != "0") {
        checked.push(format!("{zone_path}/{tag}"));
    }
    if let Some(trunks) = opts.get("trunks").filter(|t| !t.is_empty()) {
        let mut ids = std::collections::BTreeSet::new();
        for trunk in trunks.split(';') {
            let mut ends = trunk.splitn(2, '-').map(str::parse::<u32>);
            match (ends.next(), ends.next()) {
                (Some(Ok(from)), Some(Ok(to))) if to > from => ids.extend(from..=to),
                (Some(Ok(id)), _) => {
                    ids.insert(id);
                }
                _ => {}
            }
        }
        checked.extend(ids.into_iter().map(|id| format!("{zone_path}/{id}")));
    }
    if checked.is_empty() {
        checked.push(zone_path);
    }
    checked
}

/// When Proxmox makes a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Before the handler runs or in it: a 403.
    Request,
    /// Inside the forked worker: the task ends `Permission check failed (…)`.
    Task,
    /// Per row of a listing: rows failing it are left out.
    Filter,
    /// Never: any authenticated token may call it.
    None,
}

/// One endpoint's checks.
#[derive(Debug, Clone, Copy)]
pub struct EndpointCheck {
    /// The HTTP method.
    pub method: &'static str,
    /// The path after `/api2/json`, with `{…}` for its parameters.
    pub path: &'static str,
    /// When the check is made.
    pub when: When,
    /// The ACL path, with `{vmid}`, `{node}` or `{storage}` filled from the request.
    pub acl: &'static str,
    /// Any one of them suffices.
    pub any_of: &'static [&'static str],
    /// The Proxmox source this row follows.
    pub source: &'static str,
}

const fn row(
    method: &'static str,
    path: &'static str,
    when: When,
    acl: &'static str,
    any_of: &'static [&'static str],
    source: &'static str,
) -> EndpointCheck {
    EndpointCheck {
        method,
        path,
        when,
        acl,
        any_of,
        source,
    }
}

/// Every check the simulator makes (an endpoint with several checks has several rows).
pub const ENDPOINT_CHECKS: &[EndpointCheck] = &[
    row(
        "GET",
        "/version",
        When::None,
        "",
        &[],
        "pve-manager API2/Version.pm version: user => 'all'",
    ),
    row(
        "GET",
        "/access/permissions",
        When::None,
        "",
        &[],
        "pve-access-control API2/AccessControl.pm permissions: user => 'all', one's own (another's needs Sys.Audit on /access)",
    ),
    row(
        "GET",
        "/nodes",
        When::None,
        "",
        &[],
        "pve-manager API2/Nodes.pm NodeIndex index: user => 'all'",
    ),
    row(
        "GET",
        "/storage",
        When::Filter,
        "/storage/{storage}",
        DATASTORE_SEE,
        "pve-storage API2/Storage/Config.pm index: rows need Datastore.Audit|AllocateSpace",
    ),
    row(
        "GET",
        "/nodes/{node}/status",
        When::Request,
        "/nodes/{node}",
        SYS_AUDIT,
        "pve-manager API2/Nodes.pm status",
    ),
    row(
        "GET",
        "/nodes/{node}/lxc",
        When::Filter,
        "/vms/{vmid}",
        VM_AUDIT,
        "pve-container API2/LXC.pm vmlist: only CTs with VM.Audit",
    ),
    row(
        "GET",
        "/nodes/{node}/lxc/{vmid}/status/current",
        When::Request,
        "/vms/{vmid}",
        VM_AUDIT,
        "pve-container API2/LXC/Status.pm vm_status",
    ),
    row(
        "GET",
        "/nodes/{node}/lxc/{vmid}/config",
        When::Request,
        "/vms/{vmid}",
        VM_AUDIT,
        "pve-container API2/LXC/Config.pm vm_config",
    ),
    row(
        "PUT",
        "/nodes/{node}/lxc/{vmid}/config",
        When::Request,
        "/vms/{vmid}",
        VM_CONFIG_ANY,
        "pve-container API2/LXC/Config.pm update_vm (any => 1)",
    ),
    row(
        "PUT",
        "/nodes/{node}/lxc/{vmid}/config",
        When::Request,
        "/vms/{vmid}",
        &["VM.Config.CPU|Memory|Network|Options|…, per key, set or deleted"],
        "pve-container PVE/LXC.pm check_ct_modify_config_perm",
    ),
    row(
        "PUT",
        "/nodes/{node}/lxc/{vmid}/config",
        When::Request,
        "/sdn/zones/localnetwork/{bridge}",
        SDN_USE,
        "pve-container PVE/LXC.pm check_ct_modify_config_perm → check_bridge_access on a net* key's old value and new one (a deleted key: its old value); pve-guest-common check_vnet_access: …/{bridge}, or …/{bridge}/{tag} per VLAN",
    ),
    row(
        "POST",
        "/nodes/{node}/lxc/{vmid}/status/{start|stop|shutdown|reboot}",
        When::Request,
        "/vms/{vmid}",
        VM_POWER,
        "pve-container API2/LXC/Status.pm vm_start, vm_stop, vm_shutdown, vm_reboot",
    ),
    row(
        "DELETE",
        "/nodes/{node}/lxc/{vmid}",
        When::Request,
        "/vms/{vmid}",
        VM_ALLOCATE,
        "pve-container API2/LXC.pm destroy_vm",
    ),
    row(
        "POST",
        "/nodes/{node}/lxc",
        When::Request,
        "/vms/{vmid}",
        VM_ALLOCATE,
        "pve-container API2/LXC.pm create_vm: VM.Allocate on a new vmid",
    ),
    row(
        "POST",
        "/nodes/{node}/lxc",
        When::Request,
        "/vms/{vmid}",
        VM_ALLOCATE_OR_BACKUP,
        "pve-container API2/LXC.pm create_vm: restore=1 force=1 over an existing CT, VM.Allocate or VM.Backup",
    ),
    row(
        "POST",
        "/nodes/{node}/lxc",
        When::Request,
        "/storage/{storage}",
        DATASTORE_SPACE,
        "pve-container API2/LXC.pm create_vm",
    ),
    row(
        "POST",
        "/nodes/{node}/lxc",
        When::Request,
        "/vms/{vmid}",
        &["VM.Config.CPU|Memory|Network|Disk|Options, per config key passed"],
        "pve-container API2/LXC.pm create_vm → PVE/LXC.pm check_ct_modify_config_perm (start, storage, restore, force, unique are not config keys)",
    ),
    row(
        "POST",
        "/nodes/{node}/lxc",
        When::Request,
        "/storage/{storage}",
        DATASTORE_SEE,
        "pve-storage PVE/Storage.pm check_volume_access: an ostemplate (vztmpl) needs Datastore.Audit|AllocateSpace on its storage (or Datastore.Allocate)",
    ),
    row(
        "POST",
        "/nodes/{node}/lxc",
        When::Request,
        "/vms/{vmid}",
        VM_BACKUP,
        "pve-storage PVE/Storage.pm check_volume_access: another guest's backup needs Datastore.AllocateSpace on its storage and VM.Backup on that guest (the guest's own backup passes)",
    ),
    row(
        "POST",
        "/nodes/{node}/lxc",
        When::Request,
        "/sdn/zones/localnetwork/{bridge}",
        SDN_USE,
        "pve-container API2/LXC.pm create_vm → PVE/LXC.pm check_ct_modify_config_perm: check_bridge_access on each net* passed",
    ),
    row(
        "POST",
        "/nodes/{node}/lxc",
        When::Task,
        "/sdn/zones/localnetwork/{bridge}",
        SDN_USE,
        "pve-container API2/LXC.pm create_vm, restore: in the worker, before any disk is made, check_bridge_access on each net* of the backup's config not passed in the request",
    ),
    row(
        "PUT",
        "/nodes/{node}/lxc/{vmid}/resize",
        When::Request,
        "/vms/{vmid}",
        VM_CONFIG_DISK,
        "pve-container API2/LXC.pm resize_vm: ['perm', '/vms/{vmid}', ['VM.Config.Disk']]",
    ),
    row(
        "PUT",
        "/nodes/{node}/lxc/{vmid}/resize",
        When::Request,
        "/storage/{storage}",
        DATASTORE_SPACE,
        "pve-container API2/LXC.pm resize_vm: Datastore.AllocateSpace on the disk's storage",
    ),
    row(
        "DELETE",
        "/nodes/{node}/storage/{storage}/content/{volume}",
        When::Request,
        "/storage/{storage}",
        DATASTORE_SPACE,
        "pve-storage API2/Storage/Content.pm delete: a backup volume with an owner needs Datastore.AllocateSpace (any other volume Datastore.Allocate)",
    ),
    row(
        "DELETE",
        "/nodes/{node}/storage/{storage}/content/{volume}",
        When::Request,
        "/vms/{vmid}",
        VM_BACKUP,
        "pve-storage API2/Storage/Content.pm delete: … and VM.Backup on the backup's guest",
    ),
    row(
        "GET",
        "/nodes/{node}/lxc/{vmid}/snapshot",
        When::Request,
        "/vms/{vmid}",
        VM_AUDIT,
        "pve-container API2/LXC/Snapshot.pm list",
    ),
    row(
        "POST",
        "/nodes/{node}/lxc/{vmid}/snapshot",
        When::Request,
        "/vms/{vmid}",
        VM_SNAPSHOT,
        "pve-container API2/LXC/Snapshot.pm snapshot",
    ),
    row(
        "POST",
        "/nodes/{node}/lxc/{vmid}/snapshot/{snap}/rollback",
        When::Request,
        "/vms/{vmid}",
        VM_ROLLBACK,
        "pve-container API2/LXC/Snapshot.pm rollback (any => 1; start=1 starts inside the worker, unchecked)",
    ),
    row(
        "DELETE",
        "/nodes/{node}/lxc/{vmid}/snapshot/{snap}",
        When::Request,
        "/vms/{vmid}",
        VM_SNAPSHOT,
        "pve-container API2/LXC/Snapshot.pm delsnapshot",
    ),
    row(
        "POST",
        "/nodes/{node}/vzdump",
        When::Request,
        "/storage/{storage}",
        DATASTORE_SPACE,
        "pve-manager API2/VZDump.pm vzdump",
    ),
    row(
        "POST",
        "/nodes/{node}/vzdump",
        When::Task,
        "/vms/{vmid}",
        VM_BACKUP,
        "pve-manager PVE/VZDump.pm: VM.Backup per guest, in the worker",
    ),
    row(
        "GET",
        "/nodes/{node}/storage",
        When::Filter,
        "/storage/{storage}",
        DATASTORE_SEE,
        "pve-storage API2/Storage/Status.pm index",
    ),
    row(
        "GET",
        "/nodes/{node}/storage/{storage}/status",
        When::Request,
        "/storage/{storage}",
        DATASTORE_SEE,
        "pve-storage API2/Storage/Status.pm read_status (any => 1)",
    ),
    row(
        "GET",
        "/nodes/{node}/storage/{storage}/content",
        When::Request,
        "/storage/{storage}",
        DATASTORE_SEE,
        "pve-storage API2/Storage/Content.pm index (any => 1)",
    ),
    row(
        "GET",
        "/nodes/{node}/storage/{storage}/content",
        When::Filter,
        "/storage/{storage}",
        DATASTORE_SPACE,
        "pve-storage PVE/Storage.pm check_volume_access: a backup row needs AllocateSpace on the storage (or Datastore.Allocate)",
    ),
    row(
        "GET",
        "/nodes/{node}/storage/{storage}/content",
        When::Filter,
        "/vms/{vmid}",
        VM_BACKUP,
        "pve-storage PVE/Storage.pm check_volume_access: … and VM.Backup on its guest",
    ),
    row(
        "GET",
        "/nodes/{node}/tasks",
        When::Filter,
        "/nodes/{node}",
        SYS_AUDIT,
        "pve-manager API2/Tasks.pm node_tasks: own tasks always, others with Sys.Audit (not modelled: one token owns every task)",
    ),
    row(
        "GET",
        "/nodes/{node}/tasks/{upid}/status",
        When::None,
        "",
        &[],
        "pve-manager API2/Tasks.pm read_task_status: the owner needs nothing",
    ),
    row(
        "GET",
        "/nodes/{node}/tasks/{upid}/log",
        When::None,
        "",
        &[],
        "pve-manager API2/Tasks.pm read_task_log: the owner needs nothing",
    ),
    row(
        "DELETE",
        "/nodes/{node}/tasks/{upid}",
        When::None,
        "",
        &[],
        "pve-manager API2/Tasks.pm stop_task: the owner needs nothing",
    ),
];

/// pve-storage's `check_volume_access` for a backup volume of guest `owner` on
/// `storage`: `Datastore.Allocate` there, or `Datastore.AllocateSpace` there and
/// `VM.Backup` on the guest.
pub(crate) fn backup_volume_visible(
    holds: impl Fn(&str, &str) -> bool,
    storage: &str,
    owner: u32,
) -> bool {
    let at = format!("/storage/{storage}");
    DATASTORE_ALLOCATE.iter().any(|p| holds(&at, p))
        || (DATASTORE_SPACE.iter().all(|p| holds(&at, p))
            && VM_BACKUP.iter().all(|p| holds(&format!("/vms/{owner}"), p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnet_paths_follow_check_vnet_access() {
        assert_eq!(
            vnet_paths("name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:64,ip=dhcp,type=veth"),
            ["/sdn/zones/localnetwork/vmbr0"]
        );
        assert_eq!(
            vnet_paths("bridge=vmbr1,tag=7"),
            ["/sdn/zones/localnetwork/vmbr1/7"]
        );
        assert_eq!(
            vnet_paths("bridge=vmbr1,trunks=3;1-2"),
            [
                "/sdn/zones/localnetwork/vmbr1/1",
                "/sdn/zones/localnetwork/vmbr1/2",
                "/sdn/zones/localnetwork/vmbr1/3"
            ]
        );
        assert!(vnet_paths("name=eth0,ip=dhcp").is_empty());
    }

    #[test]
    fn every_row_names_its_source_and_a_check_has_an_acl_path() {
        for r in ENDPOINT_CHECKS {
            assert!(!r.source.is_empty(), "{r:?}");
            assert_eq!(r.when == When::None, r.any_of.is_empty(), "{r:?}");
            assert_eq!(r.acl.is_empty(), r.any_of.is_empty(), "{r:?}");
        }
    }
}
