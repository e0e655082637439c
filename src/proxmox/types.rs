//! The shapes Proxmox answers with, typed, and the parameters of its mutations.
//! Decoding is tolerant where Proxmox is inconsistent (numbers as strings, `1`/`0`
//! booleans, optional fields) and strict everywhere else. Nothing here does I/O.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::decode::{DecodeError, Obj, wrong};

/// `GET /version`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Version {
    /// Full version, e.g. `9.2.11`.
    pub version: String,
    /// Major.minor, e.g. `9.2`.
    pub release: String,
    /// The repository commit id.
    pub repoid: String,
}

impl Version {
    pub(crate) fn decode(o: &Obj<'_>) -> Result<Self, DecodeError> {
        Ok(Version {
            version: o.string("version")?,
            release: o.opt_string("release")?.unwrap_or_default(),
            repoid: o.opt_string("repoid")?.unwrap_or_default(),
        })
    }
}

/// A row of `GET /nodes`. Statistics are present only with `Sys.Audit` on the node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    /// Node name.
    pub node: String,
    /// `online`, `offline` or `unknown`.
    pub status: String,
    /// CPU use, 0..1 of all cores.
    pub cpu: Option<f64>,
    /// Number of CPUs.
    pub maxcpu: Option<u64>,
    /// Memory used, bytes.
    pub mem: Option<u64>,
    /// Memory total, bytes.
    pub maxmem: Option<u64>,
    /// Root disk used, bytes.
    pub disk: Option<u64>,
    /// Root disk size, bytes.
    pub maxdisk: Option<u64>,
    /// Seconds since boot.
    pub uptime: Option<u64>,
    /// SHA-256 fingerprint of the node's certificate.
    pub ssl_fingerprint: Option<String>,
}

impl Node {
    pub(crate) fn decode(o: &Obj<'_>) -> Result<Self, DecodeError> {
        Ok(Node {
            node: o.string("node")?,
            status: o.opt_string("status")?.unwrap_or_else(|| "unknown".into()),
            cpu: o.opt_f64("cpu")?,
            maxcpu: o.opt_u64("maxcpu")?,
            mem: o.opt_u64("mem")?,
            maxmem: o.opt_u64("maxmem")?,
            disk: o.opt_u64("disk")?,
            maxdisk: o.opt_u64("maxdisk")?,
            uptime: o.opt_u64("uptime")?,
            ssl_fingerprint: o.opt_string("ssl_fingerprint")?,
        })
    }
}

/// Memory or swap figures, bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// All of it, as the node reports `total`.
    pub total: u64,
    /// In use by processes and the kernel (`used`).
    pub used: u64,
    /// Not in use at all, caches excluded (`free`).
    pub free: u64,
    /// Available to new work (memory only, newer servers).
    pub available: Option<u64>,
}

impl MemoryUsage {
    fn decode(o: &Obj<'_>) -> Result<Self, DecodeError> {
        Ok(MemoryUsage {
            total: o.u64("total")?,
            used: o.u64("used")?,
            free: o.u64("free")?,
            available: o.opt_u64("available")?,
        })
    }
}

/// Root filesystem figures, bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsUsage {
    /// The filesystem's size (`total`).
    pub total: u64,
    /// Taken by files (`used`).
    pub used: u64,
    /// Available to unprivileged users.
    pub avail: u64,
}

/// CPU model and counts from `cpuinfo`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuInfo {
    /// Model name.
    pub model: Option<String>,
    /// Logical CPUs.
    pub cpus: Option<u64>,
    /// Sockets.
    pub sockets: Option<u64>,
    /// Cores per socket.
    pub cores: Option<u64>,
    /// Clock, MHz (sent as a string).
    pub mhz: Option<f64>,
}

/// `GET /nodes/{node}/status`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeStatus {
    /// Seconds since boot.
    pub uptime: u64,
    /// 1, 5 and 15 minute load averages (sent as strings).
    pub loadavg: [f64; 3],
    /// CPU use, 0..1 of all cores.
    pub cpu: f64,
    /// I/O wait, 0..1.
    pub wait: Option<f64>,
    /// Memory.
    pub memory: MemoryUsage,
    /// Swap, when reported.
    pub swap: Option<MemoryUsage>,
    /// Root filesystem.
    pub rootfs: FsUsage,
    /// CPU model and counts, when reported.
    pub cpuinfo: Option<CpuInfo>,
    /// Kernel version string.
    pub kversion: Option<String>,
    /// `pve-manager/VERSION/REPOID`.
    pub pveversion: String,
}

impl NodeStatus {
    pub(crate) fn decode(o: &Obj<'_>) -> Result<Self, DecodeError> {
        let load = o.array("loadavg")?;
        let mut loadavg = [0.0; 3];
        if load.len() != 3 {
            return Err(wrong(
                o.path("loadavg"),
                "three load averages",
                o.get("loadavg"),
            ));
        }
        for (i, v) in load.iter().enumerate() {
            loadavg[i] = super::decode::as_f64(v)
                .ok_or_else(|| wrong(format!("{}[{i}]", o.path("loadavg")), "a number", Some(v)))?;
        }
        let rootfs = o.obj("rootfs")?;
        let cpuinfo = match o.opt_obj("cpuinfo")? {
            Some(c) => Some(CpuInfo {
                model: c.opt_string("model")?,
                cpus: c.opt_u64("cpus")?,
                sockets: c.opt_u64("sockets")?,
                cores: c.opt_u64("cores")?,
                mhz: c.opt_f64("mhz")?,
            }),
            None => None,
        };
        Ok(NodeStatus {
            uptime: o.u64("uptime")?,
            loadavg,
            cpu: o.f64("cpu")?,
            wait: o.opt_f64("wait")?,
            memory: MemoryUsage::decode(&o.obj("memory")?)?,
            swap: o
                .opt_obj("swap")?
                .map(|s| MemoryUsage::decode(&s))
                .transpose()?,
            rootfs: FsUsage {
                total: rootfs.u64("total")?,
                used: rootfs.u64("used")?,
                avail: rootfs.u64("avail")?,
            },
            cpuinfo,
            kversion: o.opt_string("kversion")?,
            pveversion: o.string("pveversion")?,
        })
    }

    /// The Proxmox VE version out of `pveversion` (`9.2.11` of
    /// `pve-manager/9.2.11/abcdef`).
    pub fn pve_version(&self) -> Option<&str> {
        self.pveversion.split('/').nth(1).filter(|v| !v.is_empty())
    }
}

/// Whether a guest runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// `running`.
    Running,
    /// `stopped`.
    Stopped,
    /// Any other text Proxmox sent (kept verbatim).
    Other(String),
}

impl RunState {
    fn parse(s: &str) -> RunState {
        match s {
            "running" => RunState::Running,
            "stopped" => RunState::Stopped,
            other => RunState::Other(other.to_string()),
        }
    }

    /// The text as Proxmox sends it.
    pub fn as_str(&self) -> &str {
        match self {
            RunState::Running => "running",
            RunState::Stopped => "stopped",
            RunState::Other(s) => s,
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A container as `GET /nodes/{node}/lxc` lists it, or as its `status/current` reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Guest {
    /// The vmid (sent as a string by servers before 2024).
    pub vmid: u32,
    /// Host name, or `CT<vmid>`.
    pub name: Option<String>,
    /// Running or stopped.
    pub status: RunState,
    /// CPUs allotted (cores, or the CPU limit, a fraction).
    pub cpus: Option<f64>,
    /// CPU use, 0..1 of its CPUs.
    pub cpu: Option<f64>,
    /// Memory used, bytes.
    pub mem: Option<u64>,
    /// Memory limit, bytes (config `memory` MiB × 2^20).
    pub maxmem: Option<u64>,
    /// Swap used, bytes.
    pub swap: Option<u64>,
    /// Swap limit, bytes.
    pub maxswap: Option<u64>,
    /// Root disk used, bytes (0 while stopped).
    pub disk: Option<u64>,
    /// Root disk size, bytes.
    pub maxdisk: Option<u64>,
    /// Seconds since start.
    pub uptime: Option<u64>,
    /// The config lock (`backup`, `snapshot`, `create`, ...), if any.
    pub lock: Option<String>,
    /// Tags, `;`-separated.
    pub tags: Option<String>,
    /// Whether it is a template.
    pub template: bool,
    /// Whether HA manages it (only in `status/current`).
    pub ha_managed: Option<bool>,
}

impl Guest {
    pub(crate) fn decode(o: &Obj<'_>) -> Result<Self, DecodeError> {
        let ha_managed = match o.opt_obj("ha")? {
            Some(ha) => ha.opt_bool("managed")?,
            None => None,
        };
        Ok(Guest {
            vmid: o.u32("vmid")?,
            name: o.opt_string("name")?,
            status: RunState::parse(&o.string("status")?),
            cpus: o.opt_f64("cpus")?,
            cpu: o.opt_f64("cpu")?,
            mem: o.opt_u64("mem")?,
            maxmem: o.opt_u64("maxmem")?,
            swap: o.opt_u64("swap")?,
            maxswap: o.opt_u64("maxswap")?,
            disk: o.opt_u64("disk")?,
            maxdisk: o.opt_u64("maxdisk")?,
            uptime: o.opt_u64("uptime")?,
            lock: o.opt_string("lock")?,
            tags: o.opt_string("tags")?,
            template: o.flag("template")?,
            ha_managed,
        })
    }
}

/// `GET /nodes/{node}/lxc/{vmid}/config`: the keys the agent manages, typed, and
/// every other key kept as sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestConfig {
    /// `cores`.
    pub cores: Option<u32>,
    /// `memory`, MiB.
    pub memory_mib: Option<u64>,
    /// `swap`, MiB.
    pub swap_mib: Option<u64>,
    /// `description` as Proxmox returns it (it always ends with `\n`).
    pub description: Option<String>,
    /// `hostname`.
    pub hostname: Option<String>,
    /// `lock`, when a lock is held.
    pub lock: Option<String>,
    /// `digest` of the config file, for optimistic concurrency on writes.
    pub digest: Option<String>,
    /// Every other key (`rootfs`, `net0`, `cpulimit`, `lxc`, ...).
    pub other: BTreeMap<String, Value>,
}

impl GuestConfig {
    pub(crate) fn decode(o: &Obj<'_>) -> Result<Self, DecodeError> {
        const KNOWN: [&str; 7] = [
            "cores",
            "memory",
            "swap",
            "description",
            "hostname",
            "lock",
            "digest",
        ];
        let other = o
            .map()
            .iter()
            .filter(|(k, _)| !KNOWN.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(GuestConfig {
            cores: o.opt_u32("cores")?,
            memory_mib: o.opt_u64("memory")?,
            swap_mib: o.opt_u64("swap")?,
            description: o.opt_string("description")?,
            hostname: o.opt_string("hostname")?,
            lock: o.opt_string("lock")?,
            digest: o.opt_string("digest")?,
            other,
        })
    }

    /// Whether `protection: 1` is set: Proxmox then refuses to remove the guest or its
    /// volumes, and the agent's gate refuses destructive ops on it.
    pub fn protected(&self) -> bool {
        match self.other.get("protection") {
            Some(Value::Number(n)) => n.as_u64() == Some(1),
            Some(Value::String(s)) => s == "1",
            Some(Value::Bool(b)) => *b,
            _ => false,
        }
    }

    /// The network devices: each `net{N}` key with its value (`name=eth0,bridge=vmbr0,…`).
    pub fn nets(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.other.iter().filter_map(|(k, v)| {
            let digits = k.strip_prefix("net")?;
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then_some((k.as_str(), v))
        })
    }

    /// The root disk size in bytes, from `size=` in `rootfs` (e.g.
    /// `local-lvm:vm-100-disk-0,size=8G`).
    pub fn rootfs_bytes(&self) -> Option<u64> {
        let rootfs = self.other.get("rootfs")?.as_str()?;
        let size = rootfs
            .split(',')
            .find_map(|part| part.strip_prefix("size="))?;
        parse_size(size)
    }
}

/// Parses a Proxmox disk size (`8G`, `512M`, `1.5T`) into bytes; a bare number is
/// bytes, as Proxmox reads it.
fn parse_size(s: &str) -> Option<u64> {
    let (num, unit) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    let value: f64 = num
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)?;
    let bytes = value * (1u64 << shift) as f64;
    (bytes < 1.8e19).then_some(bytes as u64)
}

/// A row of `GET /storage` (the cluster-wide storage configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Storage {
    /// Storage id.
    pub storage: String,
    /// Type: `dir`, `lvmthin`, `zfspool`, `pbs`, `nfs`, ...
    pub kind: String,
    /// Content types it holds (`images`, `rootdir`, `backup`, `vztmpl`, ...).
    pub content: Vec<String>,
    /// Filesystem path, for path-based storages.
    pub path: Option<String>,
    /// Whether all nodes share it.
    pub shared: bool,
    /// Whether it is disabled.
    pub disabled: bool,
    /// The nodes it is limited to (comma list), if limited.
    pub nodes: Option<String>,
}

fn content_list(s: Option<String>) -> Vec<String> {
    s.map(|c| {
        c.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

impl Storage {
    pub(crate) fn decode(o: &Obj<'_>) -> Result<Self, DecodeError> {
        Ok(Storage {
            storage: o.string("storage")?,
            kind: o.string("type")?,
            content: content_list(o.opt_string("content")?),
            path: o.opt_string("path")?,
            shared: o.flag("shared")?,
            disabled: o.flag("disable")?,
            nodes: o.opt_string("nodes")?,
        })
    }
}

/// A row of `GET /nodes/{node}/storage`: a storage as this node sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StorageStatus {
    /// Storage id.
    pub storage: String,
    /// Type.
    pub kind: String,
    /// Content types.
    pub content: Vec<String>,
    /// Whether it is active (mounted, reachable).
    pub active: bool,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Whether it is shared.
    pub shared: bool,
    /// Size, bytes (absent when inactive).
    pub total: Option<u64>,
    /// Used, bytes.
    pub used: Option<u64>,
    /// Available, bytes.
    pub avail: Option<u64>,
    /// Used share, 0..1.
    pub used_fraction: Option<f64>,
}

impl StorageStatus {
    pub(crate) fn decode(o: &Obj<'_>) -> Result<Self, DecodeError> {
        Ok(StorageStatus {
            storage: o.string("storage")?,
            kind: o.string("type")?,
            content: content_list(o.opt_string("content")?),
            active: o.flag("active")?,
            enabled: o.flag("enabled")?,
            shared: o.flag("shared")?,
            total: o.opt_u64("total")?,
            used: o.opt_u64("used")?,
            avail: o.opt_u64("avail")?,
            used_fraction: o.opt_f64("used_fraction")?,
        })
    }
}

/// A row of `GET /nodes/{node}/storage/{storage}/content`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Volume {
    /// Volume id, e.g. `local:backup/vzdump-lxc-100-2024_05_01-10_00_00.tar.zst`.
    pub volid: String,
    /// Content type (`backup`, `images`, `rootdir`, `vztmpl`, `iso`).
    pub content: String,
    /// Format (`tar.zst`, `raw`, `pbs-ct`, ...).
    pub format: String,
    /// Size, bytes (a string on older servers).
    pub size: u64,
    /// Creation time, seconds since the epoch.
    pub ctime: Option<u64>,
    /// The owning guest.
    pub vmid: Option<u32>,
    /// For backups: `lxc` or `qemu`.
    pub subtype: Option<String>,
    /// First line of the backup notes.
    pub notes: Option<String>,
    /// Whether the backup is protected from pruning.
    pub protected: bool,
    /// Bytes in use (thin volumes).
    pub used: Option<u64>,
    /// For Proxmox Backup Server snapshots: the last verification's `state` (`ok`,
    /// `failed`); `None` when never verified.
    pub verification: Option<String>,
}

impl Volume {
    pub(crate) fn decode(o: &Obj<'_>) -> Result<Self, DecodeError> {
        Ok(Volume {
            volid: o.string("volid")?,
            content: o.string("content")?,
            format: o.opt_string("format")?.unwrap_or_default(),
            size: o.opt_u64("size")?.unwrap_or(0),
            ctime: o.opt_u64("ctime")?,
            vmid: o.opt_u32("vmid")?,
            subtype: o.opt_string("subtype")?,
            notes: o.opt_string("notes")?,
            protected: o.flag("protected")?,
            used: o.opt_u64("used")?,
            // PBS hands over `{"state": "ok", "upid": "..."}`; only the state is reported.
            verification: match o.opt_obj("verification")? {
                Some(v) => v.opt_string("state")?,
                None => None,
            },
        })
    }
}

/// A snapshot of a guest (`GET .../snapshot`, without the `current` pseudo-entry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Creation time, seconds since the epoch.
    pub snaptime: Option<u64>,
    /// The snapshot it was taken on top of.
    pub parent: Option<String>,
}

impl Snapshot {
    pub(crate) fn decode(o: &Obj<'_>) -> Result<Self, DecodeError> {
        Ok(Snapshot {
            name: o.string("name")?,
            description: o.opt_string("description")?,
            snaptime: o.opt_u64("snaptime")?,
            parent: o.opt_string("parent")?,
        })
    }
}

/// A config write: keys to set, keys to delete, and optionally the digest the
/// config must still have (else Proxmox refuses: someone else changed it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigChange {
    /// `(key, value)` pairs to set; booleans as `0`/`1`, memory in MiB.
    pub set: Vec<(String, String)>,
    /// Keys to remove.
    pub delete: Vec<String>,
    /// The digest read with the config.
    pub digest: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::proxmox::decode::list;

    fn obj<T>(v: Value, f: impl Fn(&Obj<'_>) -> Result<T, DecodeError>) -> Result<T, DecodeError> {
        f(&Obj::new(&v, "data")?)
    }

    #[test]
    fn node_status_with_string_numbers() {
        let v = json!({
            "uptime": 86400, "idle": 0, "loadavg": ["0.12", "0.10", "0.05"],
            "kversion": "Linux 6.8.12-4-pve #1 SMP PREEMPT_DYNAMIC",
            "cpuinfo": {"model": "Intel(R) Xeon(R)", "cpus": 8, "sockets": 1, "cores": 4, "mhz": "2399.998"},
            "cpu": 0.0123, "wait": 0.001,
            "memory": {"free": 1000, "total": 8000, "available": 5000, "used": 7000},
            "ksm": {"shared": 0}, "swap": {"free": 10, "total": 10, "used": 0},
            "pveversion": "pve-manager/9.2.11/1a2b3c4d",
            "rootfs": {"total": 100, "avail": 40, "used": 60, "free": 40},
            "boot-info": {"mode": "efi"}
        });
        let s = obj(v, NodeStatus::decode).unwrap();
        assert_eq!(s.loadavg, [0.12, 0.10, 0.05]);
        assert_eq!(s.cpuinfo.as_ref().unwrap().mhz, Some(2399.998));
        assert_eq!(s.memory.available, Some(5000));
        assert_eq!(s.rootfs.avail, 40);
        assert_eq!(s.pve_version(), Some("9.2.11"));
        let e = obj(
            json!({"uptime": 1, "loadavg": ["0.1", "x", "0"]}),
            NodeStatus::decode,
        )
        .unwrap_err();
        assert_eq!(e.field, "data.loadavg[1]");
    }

    #[test]
    fn guests_old_and_new_shapes() {
        let new = json!({"vmid": 100, "type": "lxc", "status": "running", "name": "web",
            "cpus": 2, "cpu": 0.01, "mem": 1024, "maxmem": 536870912, "swap": 0, "maxswap": 536870912,
            "disk": 100, "maxdisk": 8589934592u64, "uptime": 50, "pid": 1234, "lock": "backup",
            "tags": "a;b", "ha": {"managed": 0}});
        let g = obj(new, Guest::decode).unwrap();
        assert_eq!(g.vmid, 100);
        assert_eq!(g.status, RunState::Running);
        assert_eq!(g.maxmem, Some(512 << 20));
        assert_eq!(g.lock.as_deref(), Some("backup"));
        assert_eq!(g.ha_managed, Some(false));
        assert!(!g.template);
        // Before 2024 vmid was a string; cpus is a string when only cpulimit is set.
        let old = json!({"vmid": "106", "status": "stopped", "cpus": "0.5", "template": 1});
        let g = obj(old, Guest::decode).unwrap();
        assert_eq!(g.vmid, 106);
        assert_eq!(g.cpus, Some(0.5));
        assert!(g.template);
        assert_eq!(g.status, RunState::Stopped);
        let e = obj(json!({"vmid": "abc", "status": "running"}), Guest::decode).unwrap_err();
        assert_eq!(e.field, "data.vmid");
    }

    #[test]
    fn guest_config_known_and_other_keys() {
        let v = json!({"arch": "amd64", "cores": 2, "memory": 512, "swap": 512,
            "hostname": "web", "description": "Managed by agent: v1\n", "cpulimit": "0.5",
            "rootfs": "local-lvm:vm-100-disk-0,size=8G", "unprivileged": 1,
            "digest": "0123456789abcdef0123456789abcdef01234567",
            "lxc": [["lxc.apparmor.profile", "unconfined"]]});
        let c = obj(v, GuestConfig::decode).unwrap();
        assert_eq!(c.cores, Some(2));
        assert_eq!(c.memory_mib, Some(512));
        assert_eq!(c.description.as_deref(), Some("Managed by agent: v1\n"));
        assert_eq!(
            c.digest.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        assert_eq!(c.other["cpulimit"], json!("0.5"));
        assert!(c.other.contains_key("lxc"));
        assert!(
            !c.other.contains_key("cores"),
            "typed keys are not duplicated"
        );
        assert_eq!(c.rootfs_bytes(), Some(8 << 30));
    }

    #[test]
    fn storage_shapes() {
        let s = obj(
            json!({"storage": "local", "type": "dir", "content": "vztmpl,backup,iso",
                   "path": "/var/lib/vz", "digest": "ab", "shared": 0}),
            Storage::decode,
        )
        .unwrap();
        assert_eq!(s.content, vec!["vztmpl", "backup", "iso"]);
        assert!(!s.shared && !s.disabled);
        let st = obj(
            json!({"storage": "local-lvm", "type": "lvmthin", "content": "images,rootdir",
                   "active": 1, "enabled": 1, "shared": 0, "total": 1000, "used": 250,
                   "avail": 750, "used_fraction": 0.25}),
            StorageStatus::decode,
        )
        .unwrap();
        assert!(st.active && st.enabled);
        assert_eq!(st.used_fraction, Some(0.25));
        // Older servers sent size as a string.
        let vol = obj(
            json!({"volid": "local:backup/vzdump-lxc-100-2024_05_01-10_00_00.tar.zst",
                   "content": "backup", "format": "tar.zst", "size": "123456",
                   "ctime": 1714557600, "vmid": 100, "subtype": "lxc", "protected": 1}),
            Volume::decode,
        )
        .unwrap();
        assert_eq!(vol.size, 123_456);
        assert_eq!(vol.vmid, Some(100));
        assert!(vol.protected);
        assert_eq!(vol.verification, None);
    }

    #[test]
    fn pbs_verification_state() {
        let upid =
            "UPID:pbs:000004D2:0000162E:00000000:66324F00:verificationjob:store1\\x3av-1:root@pam:";
        let row = |verification: Value| {
            json!([{"volid": "pbs:backup/ct/100/2024-05-01T10:00:00Z", "content": "backup",
                    "format": "pbs-ct", "size": 1234, "ctime": 1714557600, "vmid": 100,
                    "verification": verification}])
        };
        let one = |v: Value| list(&v, "data", Volume::decode).map(|mut l| l.remove(0));
        let ok = one(row(json!({"state": "ok", "upid": upid}))).unwrap();
        assert_eq!(ok.format, "pbs-ct");
        assert_eq!(ok.verification.as_deref(), Some("ok"));
        let failed = one(row(json!({"state": "failed", "upid": upid}))).unwrap();
        assert_eq!(failed.verification.as_deref(), Some("failed"));
        assert_eq!(one(row(Value::Null)).unwrap().verification, None);
        assert_eq!(one(row(json!({"upid": upid}))).unwrap().verification, None);

        let e = one(row(json!("ok"))).unwrap_err();
        assert_eq!(e.field, "data[0].verification");
        assert_eq!(e.expected, "an object");
        let e = one(row(json!({"state": ["ok"], "upid": upid}))).unwrap_err();
        assert_eq!(e.field, "data[0].verification.state");
        assert_eq!(e.expected, "a string");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8G"), Some(8 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1.5T"), Some(3 << 39));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("8X"), None);
        let mut c = GuestConfig::default();
        c.other.insert(
            "rootfs".into(),
            Value::String("local-lvm:vm-100-disk-0,size=8G".into()),
        );
        assert_eq!(c.rootfs_bytes(), Some(8 << 30));
    }
}
