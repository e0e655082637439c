//! The Proxmox privileges the agent needs, derived from the calls it makes: one row per
//! API call of [`Client`](super::Client) (per config key where Proxmox checks per key),
//! with the privileges Proxmox's own `permissions` block or handler checks, the ACL path,
//! the source, and the agent features that make the call. From the table come the
//! `FelhomAgent` role ([`role_privileges`], a smallest set that satisfies every check of
//! every feature that exists) and the operator's `pveum` recipe ([`pveum_recipe`]).
//!
//! A feature that is planned but not yet wired has its rows here already, so wiring it
//! is one flag in [`Feature::wired`]; until then its privileges stay out of the role.
//! This module is data and pure functions: it never talks to Proxmox and never decides
//! whether a call is allowed (Proxmox does; the simulator models it).

use std::collections::BTreeSet;
use std::fmt::Write as _;

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
}

impl AclPath {
    /// The path as Proxmox's `permissions` block writes it.
    pub fn pattern(self) -> &'static str {
        match self {
            AclPath::Root => "/",
            AclPath::Node => "/nodes/{node}",
            AclPath::Vm => "/vms/{vmid}",
            AclPath::Storage => "/storage/{storage}",
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
        }
    }
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

use AclPath::{Node, Storage, Vm};
use Feature::*;

const NOTHING: &[Requirement] = &[];

/// Every API call of the client, with its checks. Sources are Proxmox's Perl: pve-manager
/// (`PVE/API2/…`), pve-container (`src/PVE/API2/LXC…`, `src/PVE/LXC.pm`), pve-storage
/// (`src/PVE/API2/Storage/…`, `src/PVE/Storage.pm`).
pub const API_CALLS: &[ApiCall] = &[
    ApiCall {
        client_fn: "version",
        method: "GET",
        path: "/version",
        case: "",
        requires: NOTHING,
        source: "pve-manager API2/Version.pm version: user => 'all'",
        features: &[SelftestRead],
    },
    ApiCall {
        client_fn: "permissions",
        method: "GET",
        path: "/access/permissions",
        case: "",
        requires: NOTHING,
        source: "pve-access-control API2/AccessControl.pm permissions: user => 'all', one's own",
        features: &[SelftestRead],
    },
    ApiCall {
        client_fn: "nodes",
        method: "GET",
        path: "/nodes",
        case: "",
        requires: NOTHING,
        source: "pve-manager API2/Nodes.pm NodeIndex index: user => 'all' (figures only with Sys.Audit)",
        features: &[SelftestRead],
    },
    ApiCall {
        client_fn: "node_status",
        method: "GET",
        path: "/nodes/{node}/status",
        case: "",
        requires: &[need(Node, &["Sys.Audit"])],
        source: "pve-manager API2/Nodes.pm status: ['perm', '/nodes/{node}', ['Sys.Audit']]; the free-memory guard of a restore test",
        features: &[Report, SelftestRead, RestoreTest],
    },
    ApiCall {
        client_fn: "list_lxc",
        method: "GET",
        path: "/nodes/{node}/lxc",
        case: "",
        requires: &[need(Vm, &["VM.Audit"])],
        source: "pve-container API2/LXC.pm vmlist: only CTs with VM.Audit on /vms/<vmid>; a restore test's guests, free scratch vmids and cleanup",
        features: &[
            Report,
            ReconcileConfig,
            ReconcileStart,
            ReconcileStop,
            SelftestRead,
            Provision,
            Resize,
            RestoreTest,
        ],
    },
    ApiCall {
        client_fn: "guest_status",
        method: "GET",
        path: "/nodes/{node}/lxc/{vmid}/status/current",
        case: "",
        requires: &[need(Vm, &["VM.Audit"])],
        source: "pve-container API2/LXC/Status.pm vm_status: ['perm', '/vms/{vmid}', ['VM.Audit']]; the gate's running check of every signed op, and a failed create's settling",
        features: &[
            SelftestTask,
            GuestDestroy,
            SnapshotRollback,
            BackupDelete,
            RestoreOverwrite,
            Provision,
            RestoreTest,
        ],
    },
    ApiCall {
        client_fn: "guest_config",
        method: "GET",
        path: "/nodes/{node}/lxc/{vmid}/config",
        case: "",
        requires: &[need(Vm, &["VM.Audit"])],
        source: "pve-container API2/LXC/Config.pm vm_config: ['perm', '/vms/{vmid}', ['VM.Audit']]; a restore test reads the scratch guest's keys to strip and its protection",
        features: &[
            Report,
            ReconcileConfig,
            Recover,
            GuestDestroy,
            SelftestTask,
            Resize,
            SnapshotRollback,
            BackupDelete,
            RestoreOverwrite,
            RestoreTest,
        ],
    },
    ApiCall {
        client_fn: "list_snapshots",
        method: "GET",
        path: "/nodes/{node}/lxc/{vmid}/snapshot",
        case: "",
        requires: &[need(Vm, &["VM.Audit"])],
        source: "pve-container API2/LXC/Snapshot.pm list: ['perm', '/vms/{vmid}', ['VM.Audit']]",
        features: &[SnapshotRollback],
    },
    ApiCall {
        client_fn: "list_storage",
        method: "GET",
        path: "/storage",
        case: "",
        requires: &[need(
            Storage,
            &["Datastore.Audit", "Datastore.AllocateSpace"],
        )],
        source: "pve-storage API2/Storage/Config.pm index: rows with Datastore.Audit|AllocateSpace",
        features: &[],
    },
    ApiCall {
        client_fn: "node_storage",
        method: "GET",
        path: "/nodes/{node}/storage",
        case: "",
        requires: &[need(
            Storage,
            &["Datastore.Audit", "Datastore.AllocateSpace"],
        )],
        source: "pve-storage API2/Storage/Status.pm index: rows with Datastore.Audit|AllocateSpace",
        features: &[Report, SelftestRead, RestoreTest],
    },
    ApiCall {
        client_fn: "storage_content",
        method: "GET",
        path: "/nodes/{node}/storage/{storage}/content",
        case: "content=backup",
        requires: &[
            need(Storage, &["Datastore.Audit", "Datastore.AllocateSpace"]),
            // check_volume_access per row: Datastore.Allocate, or AllocateSpace and
            // VM.Backup on the owner. The narrow branch; Allocate could delete anything.
            need(Storage, &["Datastore.AllocateSpace"]),
            need(Vm, &["VM.Backup"]),
        ],
        source: "pve-storage API2/Storage/Content.pm index (any => 1), rows filtered by Storage.pm check_volume_access; backup_delete reads it to find the volume, its owner and its protection",
        features: &[Report, BackupDelete],
    },
    ApiCall {
        client_fn: "backup_volumes",
        method: "GET",
        path: "/nodes/{node}/storage/{storage}/content",
        case: "content=backup",
        requires: &[
            need(Storage, &["Datastore.Audit", "Datastore.AllocateSpace"]),
            need(Storage, &["Datastore.AllocateSpace"]),
            need(Vm, &["VM.Backup"]),
        ],
        source: "pve-storage API2/Storage/Content.pm index, as storage_content: the backups a restore test picks from",
        features: &[RestoreTest],
    },
    ApiCall {
        client_fn: "task_status",
        method: "GET",
        path: "/nodes/{node}/tasks/{upid}/status",
        case: "",
        requires: NOTHING,
        source: "pve-manager API2/Tasks.pm read_task_status: the task's owner needs nothing",
        features: &[TaskWait, Recover, RestoreTest],
    },
    ApiCall {
        client_fn: "task_log",
        method: "GET",
        path: "/nodes/{node}/tasks/{upid}/log",
        case: "",
        requires: NOTHING,
        source: "pve-manager API2/Tasks.pm read_task_log: the task's owner needs nothing",
        features: &[TaskWait, RestoreTest],
    },
    ApiCall {
        client_fn: "list_tasks",
        method: "GET",
        path: "/nodes/{node}/tasks",
        case: "",
        requires: NOTHING,
        source: "pve-manager API2/Tasks.pm node_tasks: own tasks always (others' with Sys.Audit)",
        features: &[Recover],
    },
    ApiCall {
        client_fn: "restore_lxc",
        method: "POST",
        path: "/nodes/{node}/lxc",
        case: "restore=1, a scratch vmid",
        requires: &[
            need(Vm, &["VM.Allocate"]),
            need(Storage, &["Datastore.AllocateSpace"]),
            need(Vm, &["VM.Backup"]),
        ],
        source: "pve-container API2/LXC.pm create_vm: VM.Allocate on the new vmid; Storage.pm check_volume_access on the archive of another guest: Datastore.AllocateSpace on its storage and VM.Backup on its guest (or Datastore.Allocate); Datastore.AllocateSpace on the target storage. No feature calls it: restore tests and restore_overwrite build their create_lxc request themselves",
        features: &[],
    },
    ApiCall {
        client_fn: "create_lxc",
        method: "POST",
        path: "/nodes/{node}/lxc",
        case: "restore=1, a new vmid",
        requires: &[
            need(Vm, &["VM.Allocate"]),
            need(Storage, &["Datastore.AllocateSpace"]),
            need(Vm, &["VM.Backup"]),
        ],
        source: "pve-container API2/LXC.pm create_vm: VM.Allocate on the new vmid; Storage.pm check_volume_access on the backup of another guest: Datastore.AllocateSpace on its storage and VM.Backup on its guest (or Datastore.Allocate, which the role avoids); Datastore.AllocateSpace on the target storage. A privileged CT needs Sys.Modify on /: the agent never asks for one. A restore test passes only restore, unique and storage, which are taken out before check_ct_modify_config_perm, and never force",
        features: &[Provision, RestoreTest],
    },
    ApiCall {
        client_fn: "create_lxc",
        method: "POST",
        path: "/nodes/{node}/lxc",
        case: "ostemplate, a template",
        requires: &[
            need(Vm, &["VM.Allocate"]),
            need(Storage, &["Datastore.AllocateSpace"]),
            need(Storage, &["Datastore.Audit", "Datastore.AllocateSpace"]),
        ],
        source: "pve-container API2/LXC.pm create_vm: VM.Allocate; Storage.pm check_volume_access on a vztmpl volume: Datastore.AllocateSpace or Datastore.Audit on its storage; Datastore.AllocateSpace on the target storage",
        features: &[Provision],
    },
    ApiCall {
        client_fn: "create_lxc",
        method: "POST",
        path: "/nodes/{node}/lxc",
        case: "restore=1 force=1, over the guest",
        requires: &[
            need(Vm, &["VM.Allocate", "VM.Backup"]),
            need(Storage, &["Datastore.AllocateSpace"]),
        ],
        source: "pve-container API2/LXC.pm create_vm: VM.Allocate, or VM.Backup to restore over an existing CT; check_volume_access passes the guest's own backup without a check (another guest's backup: AllocateSpace and VM.Backup as for a new vmid); Datastore.AllocateSpace on the target storage",
        features: &[RestoreOverwrite],
    },
    ApiCall {
        client_fn: "create_lxc",
        method: "POST",
        path: "/nodes/{node}/lxc",
        case: "hostname",
        requires: &[need(Vm, &["VM.Config.Network"])],
        source: "pve-container API2/LXC.pm create_vm → PVE/LXC.pm check_ct_modify_config_perm: hostname, nameserver, searchdomain, net* → VM.Config.Network",
        features: &[Provision],
    },
    ApiCall {
        client_fn: "create_lxc",
        method: "POST",
        path: "/nodes/{node}/lxc",
        case: "rootfs",
        requires: &[
            need(Vm, &["VM.Config.Disk"]),
            need(Storage, &["Datastore.AllocateSpace"]),
        ],
        source: "pve-container PVE/LXC.pm check_ct_modify_config_perm: rootfs, mp* → VM.Config.Disk; a new volume STORAGE:SIZE → Datastore.AllocateSpace on STORAGE",
        features: &[Provision],
    },
    ApiCall {
        client_fn: "create_lxc",
        method: "POST",
        path: "/nodes/{node}/lxc",
        case: "cores",
        requires: &[need(Vm, &["VM.Config.CPU"])],
        source: "pve-container PVE/LXC.pm check_ct_modify_config_perm: cores → VM.Config.CPU",
        features: &[Provision],
    },
    ApiCall {
        client_fn: "create_lxc",
        method: "POST",
        path: "/nodes/{node}/lxc",
        case: "memory",
        requires: &[need(Vm, &["VM.Config.Memory"])],
        source: "pve-container PVE/LXC.pm check_ct_modify_config_perm: memory, swap → VM.Config.Memory",
        features: &[Provision],
    },
    ApiCall {
        client_fn: "create_lxc",
        method: "POST",
        path: "/nodes/{node}/lxc",
        case: "description",
        requires: &[need(Vm, &["VM.Config.Options"])],
        source: "pve-container PVE/LXC.pm check_ct_modify_config_perm: other keys → VM.Config.Options (start, storage, restore, force, unique are taken out before the check)",
        features: &[Provision],
    },
    ApiCall {
        client_fn: "vzdump",
        method: "POST",
        path: "/nodes/{node}/vzdump",
        case: "",
        requires: &[
            need(Storage, &["Datastore.AllocateSpace"]),
            need(Vm, &["VM.Backup"]),
        ],
        source: "pve-manager API2/VZDump.pm vzdump (VM.Backup checked per guest in the worker)",
        features: &[],
    },
    ApiCall {
        client_fn: "snapshot",
        method: "POST",
        path: "/nodes/{node}/lxc/{vmid}/snapshot",
        case: "",
        requires: &[need(Vm, &["VM.Snapshot"])],
        source: "pve-container API2/LXC/Snapshot.pm snapshot: ['perm', '/vms/{vmid}', ['VM.Snapshot']]",
        features: &[SelftestTask],
    },
    ApiCall {
        client_fn: "rollback",
        method: "POST",
        path: "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/rollback",
        case: "",
        requires: &[need(Vm, &["VM.Snapshot", "VM.Snapshot.Rollback"])],
        source: "pve-container API2/LXC/Snapshot.pm rollback: any of VM.Snapshot, VM.Snapshot.Rollback (start=1 starts in the worker, unchecked)",
        features: &[SelftestTask, SnapshotRollback],
    },
    ApiCall {
        client_fn: "delete_snapshot",
        method: "DELETE",
        path: "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}",
        case: "",
        requires: &[need(Vm, &["VM.Snapshot"])],
        source: "pve-container API2/LXC/Snapshot.pm delsnapshot: ['perm', '/vms/{vmid}', ['VM.Snapshot']]",
        features: &[SelftestTask],
    },
    ApiCall {
        client_fn: "set_config",
        method: "PUT",
        path: "/nodes/{node}/lxc/{vmid}/config",
        case: "cores",
        requires: &[need(Vm, &["VM.Config.CPU"])],
        source: "pve-container API2/LXC/Config.pm update_vm (any VM.Config.*), PVE/LXC.pm check_ct_modify_config_perm: cores → VM.Config.CPU",
        features: &[ReconcileConfig],
    },
    ApiCall {
        client_fn: "set_config",
        method: "PUT",
        path: "/nodes/{node}/lxc/{vmid}/config",
        case: "memory",
        requires: &[need(Vm, &["VM.Config.Memory"])],
        source: "pve-container PVE/LXC.pm check_ct_modify_config_perm: memory, swap → VM.Config.Memory",
        features: &[ReconcileConfig],
    },
    ApiCall {
        client_fn: "set_config",
        method: "PUT",
        path: "/nodes/{node}/lxc/{vmid}/config",
        case: "description",
        requires: &[need(Vm, &["VM.Config.Options"])],
        source: "pve-container PVE/LXC.pm check_ct_modify_config_perm: other keys → VM.Config.Options",
        features: &[ReconcileConfig, SelftestTask],
    },
    ApiCall {
        client_fn: "set_config",
        method: "PUT",
        path: "/nodes/{node}/lxc/{vmid}/config",
        case: "protection",
        requires: &[need(Vm, &["VM.Config.Options"])],
        source: "pve-container PVE/LXC.pm check_ct_modify_config_perm: other keys → VM.Config.Options; a signed op's `unprotect`",
        features: &[
            GuestDestroy,
            SnapshotRollback,
            BackupDelete,
            RestoreOverwrite,
        ],
    },
    ApiCall {
        client_fn: "set_config",
        method: "PUT",
        path: "/nodes/{node}/lxc/{vmid}/config",
        case: "delete net*",
        requires: &[need(Vm, &["VM.Config.Network"])],
        source: "pve-container PVE/LXC.pm check_ct_modify_config_perm checks each deleted key as a set one: net\\d+ → VM.Config.Network; a restore test takes the scratch guest off the network",
        features: &[RestoreTest],
    },
    ApiCall {
        client_fn: "set_config",
        method: "PUT",
        path: "/nodes/{node}/lxc/{vmid}/config",
        case: "delete onboot",
        requires: &[need(Vm, &["VM.Config.Options"])],
        source: "pve-container PVE/LXC.pm check_ct_modify_config_perm: a deleted other key → VM.Config.Options; a scratch guest must not start with the host",
        features: &[RestoreTest],
    },
    ApiCall {
        client_fn: "set_config",
        method: "PUT",
        path: "/nodes/{node}/lxc/{vmid}/config",
        case: "delete protection",
        requires: &[need(Vm, &["VM.Config.Options"])],
        source: "pve-container PVE/LXC.pm check_ct_modify_config_perm: a deleted other key → VM.Config.Options; so that the scratch guest's destroy is not refused",
        features: &[RestoreTest],
    },
    ApiCall {
        client_fn: "resize_rootfs",
        method: "PUT",
        path: "/nodes/{node}/lxc/{vmid}/resize",
        case: "rootfs",
        requires: &[
            need(Vm, &["VM.Config.Disk"]),
            need(Storage, &["Datastore.AllocateSpace"]),
        ],
        source: "pve-container API2/LXC.pm resize_vm: VM.Config.Disk, then Datastore.AllocateSpace on the volume's storage",
        features: &[Resize],
    },
    ApiCall {
        client_fn: "delete_volume",
        method: "DELETE",
        path: "/nodes/{node}/storage/{storage}/content/{volume}",
        case: "a backup",
        requires: &[
            need(Storage, &["Datastore.AllocateSpace"]),
            need(Vm, &["VM.Backup"]),
        ],
        source: "pve-storage API2/Storage/Content.pm delete (user => 'all'): a backup volume with an owner needs Datastore.AllocateSpace on its storage and VM.Backup on its guest; any other volume Datastore.Allocate",
        features: &[BackupDelete],
    },
    ApiCall {
        client_fn: "storage_status",
        method: "GET",
        path: "/nodes/{node}/storage/{storage}/status",
        case: "",
        requires: &[need(
            Storage,
            &["Datastore.Audit", "Datastore.AllocateSpace"],
        )],
        source: "pve-storage API2/Storage/Status.pm read_status: ['perm', '/storage/{storage}', ['Datastore.Audit', 'Datastore.AllocateSpace'], any => 1]: the free-storage guard of a restore test",
        features: &[RestoreTest],
    },
    ApiCall {
        client_fn: "start",
        method: "POST",
        path: "/nodes/{node}/lxc/{vmid}/status/start",
        case: "",
        requires: &[need(Vm, &["VM.PowerMgmt"])],
        source: "pve-container API2/LXC/Status.pm vm_start: ['perm', '/vms/{vmid}', ['VM.PowerMgmt']]",
        features: &[ReconcileStart, RestoreTest],
    },
    ApiCall {
        client_fn: "stop",
        method: "POST",
        path: "/nodes/{node}/lxc/{vmid}/status/stop",
        case: "",
        requires: &[need(Vm, &["VM.PowerMgmt"])],
        source: "pve-container API2/LXC/Status.pm vm_stop: ['perm', '/vms/{vmid}', ['VM.PowerMgmt']]; restore_overwrite's `stop`",
        features: &[RestoreOverwrite],
    },
    ApiCall {
        client_fn: "shutdown",
        method: "POST",
        path: "/nodes/{node}/lxc/{vmid}/status/shutdown",
        case: "",
        requires: &[need(Vm, &["VM.PowerMgmt"])],
        source: "pve-container API2/LXC/Status.pm vm_shutdown: ['perm', '/vms/{vmid}', ['VM.PowerMgmt']]",
        features: &[ReconcileStop],
    },
    ApiCall {
        client_fn: "destroy",
        method: "DELETE",
        path: "/nodes/{node}/lxc/{vmid}",
        case: "",
        requires: &[need(Vm, &["VM.Allocate"])],
        source: "pve-container API2/LXC.pm destroy_vm: ['perm', '/vms/{vmid}', ['VM.Allocate']]; purge and force (which stops a running CT in the worker) ask nothing more",
        features: &[GuestDestroy, RestoreTest],
    },
];

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
        // Restore tests need nothing the role did not hold for the features before them.
        assert_eq!(role_privileges().len(), 12);
        for p in [
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
    }

    #[test]
    fn the_recipe_grants_the_role_to_user_and_token_on_each_path() {
        let r = pveum_recipe("pve-a");
        for at in ["/nodes/pve-a", "/storage", "/vms"] {
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
