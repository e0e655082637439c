//! `GET /access/permissions`: the token's effective privileges, as pve-access-control's
//! `API2/AccessControl.pm` `permissions` answers them (`{PATH: {PRIV: propagate}}`).
//! A user or token may always read its own; another's needs `Sys.Audit` on `/access`.
//!
//! Owns that one endpoint. It never changes the ACL model and never reads a guest.

use serde_json::{Map, Value};

use super::model::State;
use super::params::{ApiError, Kind, Params};

/// Every privilege PVE 9 knows (`PVE::AccessControl` `$privgroups` and the special ones).
pub(crate) const ALL_PRIVILEGES: &[&str] = &[
    "Datastore.Allocate",
    "Datastore.AllocateSpace",
    "Datastore.AllocateTemplate",
    "Datastore.Audit",
    "Group.Allocate",
    "Mapping.Audit",
    "Mapping.Modify",
    "Mapping.Use",
    "Permissions.Modify",
    "Pool.Allocate",
    "Pool.Audit",
    "Realm.Allocate",
    "Realm.AllocateUser",
    "SDN.Allocate",
    "SDN.Audit",
    "SDN.Use",
    "Sys.AccessNetwork",
    "Sys.Audit",
    "Sys.Console",
    "Sys.Incoming",
    "Sys.Modify",
    "Sys.PowerMgmt",
    "Sys.Syslog",
    "User.Modify",
    "VM.Allocate",
    "VM.Audit",
    "VM.Backup",
    "VM.Clone",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Cloudinit",
    "VM.Config.Disk",
    "VM.Config.HWType",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.Console",
    "VM.GuestAgent.Audit",
    "VM.GuestAgent.FileRead",
    "VM.GuestAgent.FileSystemMgmt",
    "VM.GuestAgent.FileWrite",
    "VM.GuestAgent.Unrestricted",
    "VM.Migrate",
    "VM.PowerMgmt",
    "VM.Replicate",
    "VM.Snapshot",
    "VM.Snapshot.Rollback",
];

/// The privileges held on `path`, each with propagate `1`.
fn held_on(st: &State, path: &str) -> Value {
    let map: Map<String, Value> = ALL_PRIVILEGES
        .iter()
        .filter(|p| st.holds(path, p))
        .map(|p| ((*p).to_string(), Value::from(1)))
        .collect();
    Value::Object(map)
}

/// The handler: `path` dumps that path only (`{}` when nothing is held there); without
/// it, every path an ACL entry names (or `/` while the allow model is off).
pub(crate) fn permissions(st: &State, p: &Params) -> Result<Value, ApiError> {
    p.check(|k| matches!(k, "path" | "userid").then_some(Kind::Str), &[])?;
    if let Some(who) = p.get("userid") {
        let own = who == st.token_id || st.token_id.split('!').next() == Some(who);
        if !own && !st.holds("/access", "Sys.Audit") {
            return Err(ApiError::forbidden("/access", "Sys.Audit"));
        }
    }
    let mut out = Map::new();
    match p.get("path") {
        Some(path) => {
            let held = held_on(st, path);
            if held.as_object().is_some_and(|m| !m.is_empty()) {
                out.insert(path.to_string(), held);
            }
        }
        None => {
            let paths = if st.acl.active() {
                st.acl.paths()
            } else {
                vec!["/".to_string()]
            };
            for path in paths {
                let held = held_on(st, &path);
                out.insert(path, held);
            }
        }
    }
    Ok(Value::Object(out))
}
