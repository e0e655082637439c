//! `POST /nodes/{node}/lxc`: pve-container's `create_vm` (`src/PVE/API2/LXC.pm`), a new
//! container from an OS template (`vzcreate`) or from a backup (`restore=1`,
//! `vzrestore`), and the backup and template volumes it reads.
//!
//! The request-time checks run in `create_vm`'s order: the vmid is unused unless
//! `restore` and `force` overwrite an existing container (never a running one, never a
//! protected one); the permission; each config key's privilege
//! (`check_ct_modify_config_perm`); the volume's content type and access
//! (`check_volume_access`: another guest's backup needs `VM.Backup` on it); the target
//! storage holds
//! container directories; the config lock (`create_and_lock_config`). The rest happens
//! in the worker: a backup whose configuration cannot be read fails before anything was
//! changed (an existing container keeps its config, a new one's placeholder goes); one
//! that breaks while it is extracted fails after the old volumes were replaced, and the
//! container's config is destroyed as well (`destroy_config_on_error`).
//!
//! It never touches the real filesystem: archives are records in the simulated storage.

use super::api::{ApiResult, VMID, upid, vms};
use super::model::{
    Backup, Effect, Failure, Guest, State, TaskSpec, config_key_kind, config_key_priv, parse_size,
};
use super::params::{ApiError, Kind, Params};
use super::perms;
use super::{GuestSeed, ProxmoxSim};
use crate::clock;

/// How a damaged backup fails a restore, at the stage pve-container meets the damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// The archive holds no `./etc/vzdump/pct.conf`: `recover_config` fails before
    /// anything was changed (`ERROR: archive contains no configuration file`).
    NoConfig,
    /// The archive is cut short: `tar` fails while extracting, after the old volumes
    /// were destroyed, so the container is gone afterwards.
    Truncated,
}

/// A backup volume to seed, local vzdump (`local:backup/vzdump-lxc-…`) or Proxmox
/// Backup Server (`pbs:backup/ct/…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSeed {
    vmid: u32,
    storage: String,
    /// vzdump stamp (`2024_05_01-10_00_00`) or PBS time (`2024-05-01T10:00:00Z`).
    time: String,
    pbs: bool,
    guest: Option<GuestSeed>,
    broken: Option<Broken>,
    verification: Option<String>,
}

impl BackupSeed {
    /// A vzdump archive of guest `vmid` in storage `local`, named with `stamp`
    /// (`2024_05_01-10_00_00`): `local:backup/vzdump-lxc-VMID-STAMP.tar.zst`.
    pub fn vzdump(vmid: u32, stamp: &str) -> Self {
        BackupSeed {
            vmid,
            storage: "local".to_string(),
            time: stamp.to_string(),
            pbs: false,
            guest: None,
            broken: None,
            verification: None,
        }
    }

    /// A snapshot of guest `vmid` in the Proxmox Backup Server storage `pbs`, taken at
    /// `time` (`2024-05-01T10:00:00Z`): `pbs:backup/ct/VMID/TIME`, format `pbs-ct`.
    pub fn pbs(vmid: u32, time: &str) -> Self {
        BackupSeed {
            storage: super::PBS_STORAGE.to_string(),
            pbs: true,
            ..BackupSeed::vzdump(vmid, time)
        }
    }

    /// The config the archive carries (default: the seeded guest's, else a default
    /// guest named `ctVMID`).
    pub fn of_guest(mut self, guest: GuestSeed) -> Self {
        self.guest = Some(guest);
        self
    }

    /// Makes a restore from it fail the way `broken` says.
    pub fn broken(mut self, broken: Broken) -> Self {
        self.broken = Some(broken);
        self
    }

    /// PBS only: the last verify job's state (`ok`, `failed`).
    pub fn verification(mut self, state: &str) -> Self {
        self.verification = Some(state.to_string());
        self
    }

    /// The volume id it will have.
    pub fn volid(&self) -> String {
        if self.pbs {
            format!("{}:backup/ct/{}/{}", self.storage, self.vmid, self.time)
        } else {
            format!(
                "{}:backup/vzdump-lxc-{}-{}.tar.zst",
                self.storage, self.vmid, self.time
            )
        }
    }

    /// The backup record, its config taken from `guest` (or the seed's own guest).
    pub(super) fn build(&self, st: &mut State) -> Backup {
        let now = st.clock.now();
        let guest = match &self.guest {
            Some(seed) => Guest::from_seed(seed, now),
            None => st.guests.get(&self.vmid).cloned().unwrap_or_else(|| {
                Guest::from_seed(&GuestSeed::new(self.vmid, &format!("ct{}", self.vmid)), now)
            }),
        };
        let stamp = if self.pbs {
            // `2024-05-01T10:00:00Z` read as the vzdump stamp `2024-05-01-10_00_00`.
            self.time
                .trim_end_matches('Z')
                .replace('T', "-")
                .replace(':', "_")
        } else {
            self.time.clone()
        };
        let ctime = super::stamp_epoch(&stamp).unwrap_or(st.boot_uptime);
        let mut b = if self.pbs {
            if st.storage(&self.storage).is_none() {
                st.storages.push(super::model::Storage::pbs(&self.storage));
            }
            Backup::pbs(&guest, &self.storage, ctime)
        } else {
            Backup::of(&guest, &self.storage, ctime, ".zst")
        };
        b.volid = self.volid();
        b.verification.clone_from(&self.verification);
        b.broken = self.broken;
        b
    }
}

impl ProxmoxSim {
    /// Adds a backup volume while the simulator runs; answers its volid.
    pub fn add_backup(&self, seed: BackupSeed) -> String {
        let mut st = self.state();
        let b = seed.build(&mut st);
        let volid = b.volid.clone();
        st.backups.retain(|old| old.volid != volid);
        st.backups.push(b);
        volid
    }

    /// Marks an existing backup volume damaged (or whole again with `None`); false when
    /// there is no such volume.
    pub fn set_backup_broken(&self, volid: &str, broken: Option<Broken>) -> bool {
        let mut st = self.state();
        match st.backups.iter_mut().find(|b| b.volid == volid) {
            Some(b) => {
                b.broken = broken;
                true
            }
            None => false,
        }
    }

    /// The node crashes under a running create or restore of `vmid`: the task ends
    /// `unexpected status` (what PVE's task list shows for a worker that died) and the
    /// guest's config stays behind, holding `lock: create` — a partial guest. False
    /// when no such task runs.
    pub fn interrupt_create(&self, vmid: u32) -> bool {
        let mut st = self.state();
        let epoch = st.clock.epoch();
        let id = vmid.to_string();
        let Some(task) = st
            .tasks
            .iter_mut()
            .find(|t| t.running() && t.id == id && matches!(t.kind, "vzcreate" | "vzrestore"))
        else {
            return false;
        };
        task.exitstatus = "unexpected status".to_string();
        task.endtime = Some(epoch.max(task.starttime));
        task.effect = Effect::None;
        task.lock.clear();
        if let Some(g) = st.guests.get_mut(&vmid) {
            g.conf.insert("lock".into(), "create".into());
        }
        true
    }

    /// Adds an OS template volume (`local:vztmpl/NAME`) a create can use.
    pub fn add_template(&self, volid: &str) {
        let mut st = self.state();
        if !st.templates.iter().any(|t| t == volid) {
            st.templates.push(volid.to_string());
        }
    }
}

/// The content type a volume id names (`STORAGE:backup/…` → `backup`).
fn volume_type(volid: &str) -> Option<&str> {
    let (_, name) = volid.split_once(':')?;
    Some(name.split_once('/')?.0)
}

/// The parameters `create_vm` takes out before `check_ct_modify_config_perm` looks at
/// the rest as config keys.
const CREATE_ONLY: &[&str] = &[
    "node",
    "vmid",
    "ostemplate",
    "storage",
    "pool",
    "password",
    "ssh-public-keys",
    "restore",
    "force",
    "unique",
    "start",
    "ignore-unpack-errors",
    "bwlimit",
    "unprivileged",
];

/// pve-storage's `check_volume_access` for the archive or template `volid` of a create
/// of `vmid`: `Datastore.Allocate` on its storage passes anything; a template needs
/// `Datastore.AllocateSpace` or `Datastore.Audit` there; the guest's own backup passes;
/// another guest's backup needs `Datastore.AllocateSpace` there and `VM.Backup` on that
/// guest.
fn check_volume_access(st: &State, vmid: u32, volid: &str) -> Result<(), ApiError> {
    let Some((storage, name)) = volid.split_once(':') else {
        return Ok(());
    };
    let at = format!("/storage/{storage}");
    if st.allowed(&at, perms::DATASTORE_ALLOCATE) {
        return Ok(());
    }
    if volume_type(volid) == Some("vztmpl") {
        return st.check_sync(&at, perms::DATASTORE_SEE);
    }
    let owner = st
        .backups
        .iter()
        .find(|b| b.volid == volid)
        .map(|b| b.vmid)
        .or_else(|| backup_owner(name));
    match owner {
        Some(owner) if owner == vmid => Ok(()),
        Some(owner) => {
            st.check_sync(&at, perms::DATASTORE_SPACE)?;
            st.check_sync(&vms(owner), perms::VM_BACKUP)
        }
        None => Err(ApiError::die(format!(
            "missing privileges to access {volid}"
        ))),
    }
}

/// The guest a backup volume name belongs to, as `parse_volname` reads it:
/// `backup/vzdump-lxc-100-….tar.zst` or `backup/ct/100/…`.
fn backup_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("backup/")?;
    let id = match rest.strip_prefix("ct/") {
        Some(pbs) => pbs.split('/').next()?,
        None => rest.strip_prefix("vzdump-")?.split('-').nth(1)?,
    };
    id.parse().ok()
}

/// `POST /nodes/{node}/lxc`.
pub(super) fn lxc_create(st: &mut State, p: &mut Params) -> ApiResult {
    p.check(
        |k| match k {
            "node" | "ostemplate" | "storage" | "pool" | "password" | "ssh-public-keys" => {
                Some(Kind::Str)
            }
            "vmid" => Some(VMID.1),
            "restore" | "force" | "unique" | "start" | "ignore-unpack-errors" => Some(Kind::Bool),
            "bwlimit" => Some(Kind::Number(0.0, f64::MAX)),
            "lock" | "parent" | "snaptime" => None,
            k => config_key_kind(k),
        },
        &["vmid", "ostemplate"],
    )?;
    let vmid = p
        .int("vmid")
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    let storage = p.get("storage").unwrap_or("local").to_string();
    let restore = p.flag("restore");
    let force = p.flag("force");
    let ostemplate = p.get("ostemplate").unwrap_or_default().to_string();
    let verb = if restore { "restore" } else { "create" };
    let exists = st.guests.contains_key(&vmid);
    if !(exists && restore && force) {
        if exists {
            // PVE::Cluster::check_vmid_unused.
            return Err(ApiError::die(format!(
                "CT {vmid} already exists on node '{}'",
                st.node
            )));
        }
    } else if let Some(g) = st.guests.get(&vmid) {
        if g.running {
            return Err(ApiError::die("can't overwrite running container"));
        }
        if g.protected() {
            return Err(ApiError::die(format!(
                "unable to restore CT {vmid} - protection mode enabled"
            )));
        }
    }
    // VM.Allocate, or VM.Backup to restore over an existing container.
    let privilege = if exists && restore && force && !st.allowed(&vms(vmid), perms::VM_ALLOCATE) {
        "VM.Backup"
    } else {
        "VM.Allocate"
    };
    st.check_sync(&vms(vmid), &[privilege])?;
    // PVE::LXC::check_ct_modify_config_perm over the config keys left in the request.
    for key in p.keys() {
        if !CREATE_ONLY.contains(&key) {
            st.check_sync(&vms(vmid), &[config_key_priv(key)])?;
        }
        // … and check_bridge_access on each net* passed.
        if key.starts_with("net") {
            for path in perms::vnet_paths(p.get(key).unwrap_or_default()) {
                st.check_sync(&path, perms::SDN_USE)?;
            }
        }
    }
    // PVE::Storage::check_volume_access with the content type create_vm asks for.
    let want = if restore { "backup" } else { "vztmpl" };
    if volume_type(&ostemplate) != Some(want) {
        return Err(ApiError::die(format!(
            "unable to use volume {ostemplate} - content type needs to be '{want}'"
        )));
    }
    check_volume_access(st, vmid, &ostemplate)?;
    // The rootfs storage: the one in `rootfs=STORAGE:…`, else `storage`.
    let rootfs_storage = p
        .get("rootfs")
        .and_then(|r| r.split_once(':'))
        .map_or(storage.clone(), |(s, _)| s.to_string());
    let Some(target) = st.storage(&rootfs_storage) else {
        return Err(ApiError::die(format!(
            "storage '{rootfs_storage}' does not exist"
        )));
    };
    if !target.content.split(',').any(|c| c == "rootdir") {
        return Err(ApiError::param(
            "storage",
            format!("storage '{rootfs_storage}' does not support container directories"),
        ));
    }
    st.check_sync(
        &format!("/storage/{rootfs_storage}"),
        &["Datastore.AllocateSpace"],
    )?;
    // create_and_lock_config: an existing config must not be locked.
    if let Some(lock) = st.guests.get(&vmid).and_then(Guest::lock) {
        return Err(ApiError::die(format!(
            "unable to {verb} CT {vmid} - CT is locked ({lock})"
        )));
    }
    let (kind, new_guest, log, late) = if restore {
        restore_worker(st, p, vmid, &ostemplate, &rootfs_storage)
    } else {
        create_worker(st, p, vmid, &ostemplate, &rootfs_storage)
    };
    let fresh = !exists;
    let lose_on_failure = late.as_ref().is_some_and(|(_, lose)| *lose);
    let mut spec = TaskSpec::new(
        kind,
        vmid.to_string(),
        Effect::Restore {
            guest: Box::new(new_guest),
            fresh,
            lose_on_failure,
            start: p.flag("start"),
        },
    );
    spec.lock = vec![(vmid, "create")];
    spec.log = log;
    spec.late_failure = late.map(|(f, _)| f);
    spec.failure = st.check_in_task(&vms(vmid), &[privilege]).or_else(|| {
        st.check_in_task(
            &format!("/storage/{rootfs_storage}"),
            &["Datastore.AllocateSpace"],
        )
    });
    if fresh && spec.failure.is_none() {
        // PVE writes a config holding only `lock: create` before the worker starts.
        let mut placeholder = Guest::from_seed(&GuestSeed::new(vmid, ""), st.clock.now());
        placeholder.conf.clear();
        placeholder.description.clear();
        st.guests.insert(vmid, placeholder);
    }
    upid(st.spawn(spec))
}

/// What a worker does: task type, the guest it leaves, its log, and how it fails late
/// (the failure, and whether the container is lost with it).
type Worker = (&'static str, Guest, Vec<String>, Option<(Failure, bool)>);

/// The `vzrestore` worker: recover the config, create disks, extract, merge.
fn restore_worker(st: &State, p: &Params, vmid: u32, volid: &str, storage: &str) -> Worker {
    let now = st.clock.now();
    let mut log = vec![format!("recovering backed-up configuration from '{volid}'")];
    let fail = |log: &mut Vec<String>, text: String, lose: bool| {
        let f = Failure {
            exitstatus: format!("unable to restore CT {vmid} - {text}"),
            log: std::mem::take(log),
        };
        Some((f, lose))
    };
    let placeholder = Guest::from_seed(&GuestSeed::new(vmid, ""), now);
    let Some(backup) = st.backups.iter().find(|b| b.volid == volid) else {
        let path = format!(
            "/var/lib/vz/dump/{}",
            volid.rsplit('/').next().unwrap_or_default()
        );
        let late = fail(
            &mut log,
            format!("ERROR: file '{path}' does not exist"),
            false,
        );
        return ("vzrestore", placeholder, log, late);
    };
    if backup.broken == Some(Broken::NoConfig) {
        let late = fail(
            &mut log,
            "ERROR: archive contains no configuration file".to_string(),
            false,
        );
        return ("vzrestore", placeholder, log, late);
    }
    // The early check_bridge_access, before any disk is made: a net* of the backup that
    // the request does not replace needs SDN.Use on its bridge.
    let denied = backup
        .conf
        .iter()
        .filter(|(k, _)| k.starts_with("net") && p.get(k).is_none())
        .flat_map(|(_, net)| perms::vnet_paths(net))
        .find_map(|path| st.check_in_task(&path, perms::SDN_USE));
    if let Some(denied) = denied {
        let late = fail(&mut log, denied.exitstatus, false);
        return ("vzrestore", placeholder, log, late);
    }
    let mut g = Guest::from_seed(&GuestSeed::new(vmid, "restored"), now);
    g.conf = backup.conf.clone();
    g.description = backup.description.clone();
    let size = g.disk_bytes() >> 30;
    g.conf.insert(
        "rootfs".into(),
        format!("{storage}:vm-{vmid}-disk-0,size={size}G"),
    );
    log.push(format!("restoring '{volid}' now.."));
    log.push(format!(
        "extracting archive '/var/lib/vz/dump/{}'",
        backup.file_name()
    ));
    if backup.broken == Some(Broken::Truncated) {
        log.push("tar: Unexpected EOF in archive".to_string());
        log.push("tar: Error is not recoverable: exiting now".to_string());
        let text = format!(
            "command 'lxc-usernsexec -m u:0:100000:65536 -m g:0:100000:65536 -- tar xpf - \
             --zstd --totals --one-file-system -p --sparse --numeric-owner --acls --xattrs \
             '--xattrs-include=user.*' '--xattrs-include=security.capability' \
             '--warning=no-file-ignored' '--warning=no-xattr-write' -C /var/lib/lxc/{vmid}/rootfs \
             --skip-old-files --anchored --exclude './dev/*'' failed: exit code 2"
        );
        let late = fail(&mut log, text, true);
        return ("vzrestore", g, log, late);
    }
    log.push(format!(
        "Total bytes read: {} ({} MiB, 120 MiB/s)",
        backup.size * 3,
        (backup.size * 3) >> 20
    ));
    log.push("Detected container architecture: amd64".to_string());
    log.push("merging backed-up and given configuration..".to_string());
    if p.flag("unique") {
        regenerate_macs(&mut g, now_salt(st));
    }
    apply_given(&mut g, p, vmid);
    ("vzrestore", g, log, None)
}

/// The `vzcreate` worker: create the disk, extract the template, set up the OS.
fn create_worker(st: &State, p: &Params, vmid: u32, volid: &str, storage: &str) -> Worker {
    let hostname = p
        .get("hostname")
        .map_or(format!("CT{vmid}"), str::to_string);
    let mut g = Guest::from_seed(&GuestSeed::new(vmid, &hostname), st.clock.now());
    g.conf.insert("cores".into(), "1".into());
    // `rootfs` defaults to 4 GiB on `storage`.
    g.conf.insert(
        "rootfs".into(),
        format!("{storage}:vm-{vmid}-disk-0,size=4G"),
    );
    g.description.clear();
    let path = format!(
        "/var/lib/vz/template/cache/{}",
        volid.rsplit('/').next().unwrap_or_default()
    );
    if !st.templates.iter().any(|t| t == volid) {
        let f = Failure {
            exitstatus: format!(
                "unable to create CT {vmid} - failed to open '{path}': No such file or directory"
            ),
            log: Vec::new(),
        };
        return ("vzcreate", g, Vec::new(), Some((f, true)));
    }
    let log = vec![
        format!("extracting archive '{path}'"),
        "Total bytes read: 524288000 (500MiB, 200MiB/s)".to_string(),
        "Detected container architecture: amd64".to_string(),
    ];
    apply_given(&mut g, p, vmid);
    ("vzcreate", g, log, None)
}

/// Given config keys override the archive's (or the defaults); `rootfs` as
/// `STORAGE:SIZE_GIB` allocates a new volume, as `pct create` does.
fn apply_given(g: &mut Guest, p: &Params, vmid: u32) {
    let given: Vec<(String, String)> = p
        .keys()
        .into_iter()
        .filter(|k| config_key_kind(k).is_some() && *k != "rootfs")
        .map(|k| (k.to_string(), p.get(k).unwrap_or_default().to_string()))
        .collect();
    g.apply_config(&given, &[]);
    if let Some(rootfs) = p.get("rootfs") {
        let value = match rootfs.split_once(':') {
            Some((s, size)) if parse_size(size).is_some() && !size.contains(',') => {
                format!("{s}:vm-{vmid}-disk-0,size={size}G")
            }
            _ => rootfs.to_string(),
        };
        g.conf.insert("rootfs".into(), value);
    }
    g.running = false;
    g.started = None;
}

fn now_salt(st: &State) -> u32 {
    u32::try_from(clock::epoch_now() % 0xff_ffff).unwrap_or(0)
        ^ u32::try_from(st.tasks.len()).unwrap_or(0)
}

/// `unique=1`: every `net*` gets a new MAC address, as `restore_configuration` does.
fn regenerate_macs(g: &mut Guest, salt: u32) {
    for (key, value) in g.conf.iter_mut() {
        if !key.starts_with("net") {
            continue;
        }
        let fresh: Vec<String> = value
            .split(',')
            .map(|part| match part.strip_prefix("hwaddr=") {
                Some(_) => format!(
                    "hwaddr=BC:24:11:{:02X}:{:02X}:{:02X}",
                    (salt >> 16) & 0xff,
                    (salt >> 8) & 0xff,
                    salt & 0xff
                ),
                None => part.to_string(),
            })
            .collect();
        *value = fresh.join(",");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_types() {
        assert_eq!(
            volume_type("local:backup/vzdump-lxc-1-x.tar.zst"),
            Some("backup")
        );
        assert_eq!(volume_type("pbs:backup/ct/1/2024"), Some("backup"));
        assert_eq!(volume_type("local:vztmpl/debian.tar.zst"), Some("vztmpl"));
        assert_eq!(volume_type("nonsense"), None);
    }

    #[test]
    fn backup_seed_volids() {
        assert_eq!(
            BackupSeed::vzdump(100, "2024_05_01-10_00_00").volid(),
            "local:backup/vzdump-lxc-100-2024_05_01-10_00_00.tar.zst"
        );
        assert_eq!(
            BackupSeed::pbs(100, "2024-05-01T10:00:00Z").volid(),
            "pbs:backup/ct/100/2024-05-01T10:00:00Z"
        );
    }
}
