//! `POST /nodes/{node}/lxc`: a new container from an OS template (`vzcreate`), or from
//! a vzdump or Proxmox Backup Server backup (`restore=1`, `vzrestore`), possibly over an
//! existing container (`force=1`); and the backup volumes a restore reads.
//!
//! Every field is validated before a request is built, with caps on sizes and counts;
//! a combination the API would refuse (`force` or `unique` without `restore`) is refused
//! here first. It never spawns a process: what the API cannot do is the privileged
//! backend's (`Privileged::create_golden_lxc`).

use super::client::{Client, api_path, flag, pair};
use super::error::ProxmoxError;
use super::types::Volume;
use super::upid::Upid;
use super::validate::{self, InvalidArgument, check};
use crate::net::Method;

/// The largest root disk asked for, GiB (128 TiB).
pub const MAX_ROOTFS_GIB: u64 = 128 * 1024;
/// The most cores a container may have (Proxmox's own maximum).
pub const MAX_CORES: u32 = 8192;
/// The least memory Proxmox accepts for a container, MiB.
pub const MIN_MEMORY_MIB: u64 = 16;
/// The most memory asked for, MiB (16 TiB).
pub const MAX_MEMORY_MIB: u64 = 16 * 1024 * 1024;

/// Where a new container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LxcSource {
    /// An OS template volume (`local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst`):
    /// the task is a `vzcreate`.
    Template(String),
    /// A vzdump or Proxmox Backup Server backup volume
    /// (`local:backup/vzdump-lxc-100-….tar.zst`, `pbs:backup/ct/100/…`): `restore=1`,
    /// the task is a `vzrestore`.
    Backup(String),
}

impl LxcSource {
    /// The volume id.
    pub fn volid(&self) -> &str {
        match self {
            LxcSource::Template(v) | LxcSource::Backup(v) => v,
        }
    }

    /// The type of the task Proxmox starts for it.
    pub fn task_type(&self) -> &'static str {
        match self {
            LxcSource::Template(_) => "vzcreate",
            LxcSource::Backup(_) => "vzrestore",
        }
    }
}

/// The parameters of `POST /nodes/{node}/lxc`, as the API takes them. Fields left
/// `None` are not sent: a restore then keeps what the backup says, a create takes
/// Proxmox's defaults (4 GiB root disk, 1 core, 512 MiB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateLxc {
    /// The new container's id (`vmid`).
    pub vmid: u32,
    /// The template or backup it is made from (`ostemplate`, and `restore`).
    pub source: LxcSource,
    /// The storage its root disk goes to (`storage`), e.g. `local-lvm`.
    pub storage: String,
    /// `hostname`.
    pub hostname: Option<String>,
    /// The root disk's size, GiB: `rootfs=STORAGE:GIB`.
    pub rootfs_gib: Option<u64>,
    /// `cores`.
    pub cores: Option<u32>,
    /// `memory`, MiB.
    pub memory_mib: Option<u64>,
    /// `description`.
    pub description: Option<String>,
    /// `unique=1`: the restored container gets new MAC addresses (restore only).
    pub unique: bool,
    /// `force=1`: restore over an existing container; Proxmox destroys its volumes
    /// (restore only).
    pub force: bool,
    /// `start=1`: start it once the task succeeded.
    pub start: bool,
}

impl CreateLxc {
    /// A restore of `backup` into a new container `vmid` on `storage`.
    pub fn restore(vmid: u32, backup: &str, storage: &str) -> Self {
        Self::new(vmid, LxcSource::Backup(backup.to_string()), storage)
    }

    /// A new container `vmid` on `storage` from the OS template `template`.
    pub fn from_template(vmid: u32, template: &str, storage: &str) -> Self {
        Self::new(vmid, LxcSource::Template(template.to_string()), storage)
    }

    /// A request with only the required fields.
    pub fn new(vmid: u32, source: LxcSource, storage: &str) -> Self {
        CreateLxc {
            vmid,
            source,
            storage: storage.to_string(),
            hostname: None,
            rootfs_gib: None,
            cores: None,
            memory_mib: None,
            description: None,
            unique: false,
            force: false,
            start: false,
        }
    }

    /// The form fields, validated; the first bad field is named.
    pub(super) fn params(&self) -> Result<Vec<(String, String)>, InvalidArgument> {
        validate::vmid(self.vmid)?;
        let volid = self.source.volid();
        check("ostemplate", volid, validate::volid)?;
        check("storage", &self.storage, validate::storage_id)?;
        let restore = matches!(self.source, LxcSource::Backup(_));
        let mut params = vec![
            pair("vmid", self.vmid.to_string()),
            pair("ostemplate", volid),
        ];
        if restore {
            params.push(pair("restore", flag(true)));
        }
        params.push(pair("storage", self.storage.as_str()));
        if restore {
            params.push(pair("force", flag(self.force)));
        } else if self.force {
            return Err(InvalidArgument::new(
                "force",
                "1",
                "only a restore can overwrite a container",
            ));
        }
        if let Some(h) = &self.hostname {
            check("hostname", h, validate::hostname)?;
            params.push(pair("hostname", h.as_str()));
        }
        if let Some(gib) = self.rootfs_gib {
            if gib == 0 || gib > MAX_ROOTFS_GIB {
                return Err(InvalidArgument::new(
                    "rootfs_gib",
                    &gib.to_string(),
                    "must be between 1 and 131072 GiB",
                ));
            }
            params.push(pair("rootfs", format!("{}:{gib}", self.storage)));
        }
        if let Some(cores) = self.cores {
            if cores == 0 || cores > MAX_CORES {
                return Err(InvalidArgument::new(
                    "cores",
                    &cores.to_string(),
                    "must be between 1 and 8192",
                ));
            }
            params.push(pair("cores", cores.to_string()));
        }
        if let Some(mib) = self.memory_mib {
            if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
                return Err(InvalidArgument::new(
                    "memory_mib",
                    &mib.to_string(),
                    "must be between 16 MiB and 16 TiB",
                ));
            }
            params.push(pair("memory", mib.to_string()));
        }
        if let Some(d) = &self.description {
            check("description", d, validate::config_value)?;
            params.push(pair("description", d.as_str()));
        }
        if self.unique {
            if !restore {
                return Err(InvalidArgument::new(
                    "unique",
                    "1",
                    "applies only to a restore",
                ));
            }
            params.push(pair("unique", flag(true)));
        }
        if self.start {
            params.push(pair("start", flag(true)));
        }
        Ok(params)
    }
}

impl Client {
    /// `POST /nodes/{node}/lxc`: creates container `create.vmid` from a template or a
    /// backup. The answer is the task's UPID; whether the container came to be is the
    /// task's exit status (a broken backup fails the task, not the request).
    pub fn create_lxc(&self, create: &CreateLxc) -> Result<Upid, ProxmoxError> {
        let params = create.params()?;
        self.task(
            Method::Post,
            api_path(&["nodes", self.node(), "lxc"]),
            params,
        )
    }

    /// `POST /nodes/{node}/lxc` with `restore=1`: creates container `vmid` from a
    /// backup archive volume, its disks on `storage`; `force` overwrites an existing
    /// container (Proxmox destroys its volumes first).
    pub fn restore_lxc(
        &self,
        vmid: u32,
        archive: &str,
        storage: &str,
        force: bool,
    ) -> Result<Upid, ProxmoxError> {
        self.create_lxc(&CreateLxc {
            force,
            ..CreateLxc::restore(vmid, archive, storage)
        })
    }

    /// `GET /nodes/{node}/storage/{storage}/content?content=backup`, only guest `vmid`'s
    /// when given: the backup volumes a restore can read.
    pub fn backup_volumes(
        &self,
        storage: &str,
        vmid: Option<u32>,
    ) -> Result<Vec<Volume>, ProxmoxError> {
        check("storage", storage, validate::storage_id)?;
        let mut params = vec![pair("content", "backup")];
        if let Some(v) = vmid {
            validate::vmid(v)?;
            params.push(pair("vmid", v.to_string()));
        }
        self.get_list(
            api_path(&["nodes", self.node(), "storage", storage, "content"]),
            params,
            Volume::decode,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &[(String, String)]) -> Vec<&str> {
        p.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn a_restore_sends_what_the_api_takes() {
        let mut c = CreateLxc::restore(200, "local:backup/vzdump-lxc-100-x.tar.zst", "local-lvm");
        c.hostname = Some("web-2".into());
        c.rootfs_gib = Some(12);
        c.cores = Some(2);
        c.memory_mib = Some(1024);
        c.description = Some("restored".into());
        c.unique = true;
        let p = c.params().unwrap();
        assert_eq!(
            names(&p),
            [
                "vmid",
                "ostemplate",
                "restore",
                "storage",
                "force",
                "hostname",
                "rootfs",
                "cores",
                "memory",
                "description",
                "unique"
            ]
        );
        assert!(p.contains(&("rootfs".into(), "local-lvm:12".into())));
        assert!(p.contains(&("force".into(), "0".into())));
    }

    #[test]
    fn a_template_create_has_no_restore_or_force() {
        let p = CreateLxc::from_template(300, "local:vztmpl/debian-12.tar.zst", "local-lvm")
            .params()
            .unwrap();
        assert_eq!(names(&p), ["vmid", "ostemplate", "storage"]);
    }

    #[test]
    fn bad_fields_are_named() {
        let base = CreateLxc::restore(200, "local:backup/a.tar.zst", "local-lvm");
        let cases: &[(CreateLxc, &str)] = &[
            (
                CreateLxc {
                    vmid: 99,
                    ..base.clone()
                },
                "vmid",
            ),
            (
                CreateLxc {
                    source: LxcSource::Backup("../etc/passwd".into()),
                    ..base.clone()
                },
                "ostemplate",
            ),
            (
                CreateLxc {
                    storage: "bad storage".into(),
                    ..base.clone()
                },
                "storage",
            ),
            (
                CreateLxc {
                    hostname: Some("-x".into()),
                    ..base.clone()
                },
                "hostname",
            ),
            (
                CreateLxc {
                    rootfs_gib: Some(0),
                    ..base.clone()
                },
                "rootfs_gib",
            ),
            (
                CreateLxc {
                    rootfs_gib: Some(MAX_ROOTFS_GIB + 1),
                    ..base.clone()
                },
                "rootfs_gib",
            ),
            (
                CreateLxc {
                    cores: Some(0),
                    ..base.clone()
                },
                "cores",
            ),
            (
                CreateLxc {
                    memory_mib: Some(8),
                    ..base.clone()
                },
                "memory_mib",
            ),
            (
                CreateLxc {
                    description: Some("a\0b".into()),
                    ..base.clone()
                },
                "description",
            ),
            (
                CreateLxc {
                    force: true,
                    ..CreateLxc::from_template(300, "local:vztmpl/d.tar.zst", "local-lvm")
                },
                "force",
            ),
            (
                CreateLxc {
                    unique: true,
                    ..CreateLxc::from_template(300, "local:vztmpl/d.tar.zst", "local-lvm")
                },
                "unique",
            ),
        ];
        for (c, field) in cases {
            let e = c.params().unwrap_err();
            assert_eq!(e.name, *field, "{c:?}");
        }
    }
}
