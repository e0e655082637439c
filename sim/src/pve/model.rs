//! The simulated host's state: guests with their `.conf`, snapshots, storage, backups and
//! tasks, and the rules by which a task's effect lands on that state when it ends.
//!
//! Owns every mutation of the simulated host. It must never speak HTTP: the routes in
//! `api` decide what a request means and call in here.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::params::{Kind, permission_text};
use super::{Fault, GuestSeed, RecordedRequest};
use crate::clock::{self, SimClock};

/// Logical CPUs of the simulated host.
pub(crate) const HOST_CPUS: u64 = 8;
/// RAM of the simulated host.
pub(crate) const HOST_MEMORY: u64 = 64 << 30;
/// Size of the host's root filesystem.
pub(crate) const HOST_ROOTFS: u64 = 100 << 30;
/// The version string `/version` reports.
pub(crate) const PVE_VERSION: &str = "9.2.11";
/// The repository id `/version` reports.
pub(crate) const PVE_REPOID: &str = "5e1f7a3c9d2b4e60";

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What the host itself uses (kernel, pmxcfs, pveproxy, …) before any guest runs.
const HOST_BASE_USED: u64 = 3 * GIB;
/// What the kernel keeps available however hard the guests press (reclaim and swap
/// start before it is gone): `used` stays below the total by at least this.
const HOST_MIN_AVAILABLE: u64 = 256 * MIB;
/// The host's swap.
pub(crate) const HOST_SWAP: u64 = 8 * GIB;

/// Adds without overflow: a sum past `u64::MAX` reads as `u64::MAX`.
pub(crate) fn saturating_sum(values: impl Iterator<Item = u64>) -> u64 {
    values.fold(0, u64::saturating_add)
}

/// Host memory as pve-manager's node status reports it: `PVE::ProcFSTools::read_meminfo`
/// reads `/proc/meminfo`, and `used` is `MemTotal - MemAvailable`, so it never exceeds
/// `total`. Guests' limits may add up to more than the host has (overcommit); what they
/// actually use beyond what fits is pushed to swap, never counted as RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostMemory {
    /// `MemTotal`.
    pub total: u64,
    /// `MemTotal - MemAvailable`.
    pub used: u64,
    /// `MemFree`: what is available minus the page cache the kernel could drop.
    pub free: u64,
    /// `MemAvailable`.
    pub available: u64,
    /// `SwapTotal`.
    pub swap_total: u64,
    /// `SwapTotal - SwapFree`: the demand that did not fit in RAM.
    pub swap_used: u64,
}

impl HostMemory {
    /// The host with its guests using `guests` bytes between them.
    pub fn of(guests: u64) -> HostMemory {
        let demand = HOST_BASE_USED.saturating_add(guests);
        let used = demand.min(HOST_MEMORY - HOST_MIN_AVAILABLE);
        let available = HOST_MEMORY - used;
        // A quarter of what is available is page cache the kernel can drop.
        let free = available - available / 4;
        HostMemory {
            total: HOST_MEMORY,
            used,
            free,
            available,
            swap_total: HOST_SWAP,
            swap_used: (demand - used).min(HOST_SWAP),
        }
    }
}

/// The type of each config key the simulator knows, for validation and JSON typing.
pub(crate) fn config_key_kind(key: &str) -> Option<Kind> {
    const ARCH: &[&str] = &["amd64", "i386", "arm64", "armhf", "riscv32", "riscv64"];
    const CMODE: &[&str] = &["shell", "console", "tty"];
    const LOCKS: &[&str] = &[
        "backup",
        "create",
        "destroyed",
        "disk",
        "fstrim",
        "migrate",
        "mounted",
        "rollback",
        "snapshot",
        "snapshot-delete",
    ];
    let indexed = |prefix: &str| {
        key.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    Some(match key {
        "cores" => Kind::Int(Some(1), Some(8192)),
        "memory" => Kind::Int(Some(16), None),
        "swap" => Kind::Int(Some(0), None),
        "cpuunits" => Kind::Int(Some(0), Some(500_000)),
        "tty" => Kind::Int(Some(0), Some(6)),
        "cpulimit" => Kind::Number(0.0, 8192.0),
        "onboot" | "protection" | "template" | "unprivileged" | "console" | "debug" => Kind::Bool,
        "description" => Kind::StrMax(8 * 1024),
        "arch" => Kind::Enum(ARCH),
        "cmode" => Kind::Enum(CMODE),
        "lock" => Kind::Enum(LOCKS),
        "hostname" | "ostype" | "rootfs" | "nameserver" | "searchdomain" | "startup" | "tags"
        | "timezone" | "features" | "hookscript" | "entrypoint" | "env" => Kind::Str,
        _ if indexed("net") || indexed("mp") || indexed("unused") || indexed("dev") => Kind::Str,
        _ => return None,
    })
}

/// The privilege PVE requires to change one config key (`check_ct_modify_config_perm`).
pub(crate) fn config_key_priv(key: &str) -> &'static str {
    match key {
        "cores" | "cpulimit" | "cpuunits" => "VM.Config.CPU",
        "memory" | "swap" => "VM.Config.Memory",
        "hostname" | "nameserver" | "searchdomain" => "VM.Config.Network",
        "rootfs" => "VM.Config.Disk",
        k if k.starts_with("net") => "VM.Config.Network",
        k if k.starts_with("mp") || k.starts_with("unused") => "VM.Config.Disk",
        _ => "VM.Config.Options",
    }
}

/// A config value as `GET …/config` types it: integers and booleans as numbers, the
/// `number` type (cpulimit) as a string, everything else as a string.
fn typed(key: &str, raw: &str) -> Value {
    match config_key_kind(key) {
        Some(Kind::Int(..) | Kind::Bool) => raw
            .parse::<i64>()
            .map_or_else(|_| Value::String(raw.to_string()), Value::from),
        _ => Value::String(raw.to_string()),
    }
}

/// Perl's `split /\n/`: trailing empty fields are dropped, leading ones kept.
pub(crate) fn split_lines(s: &str) -> Vec<String> {
    let mut lines: Vec<String> = s.split('\n').map(str::to_string).collect();
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines
}

/// pve-common's `encode_text`: %-escape everything outside `\x20-\x24\x26-\x39\x3b-\x7e`.
pub(crate) fn encode_text(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for b in line.bytes() {
        if matches!(b, 0x20..=0x24 | 0x26..=0x39 | 0x3b..=0x7e) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How description lines read back: each line plus `\n` — the trailing-newline quirk.
fn read_back(lines: &[String]) -> Option<String> {
    if lines.is_empty() {
        return None;
    }
    Some(lines.iter().map(|l| format!("{l}\n")).collect())
}

/// A snapshot section of a guest's `.conf`.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub conf: BTreeMap<String, String>,
    pub description: Vec<String>,
    pub snaptime: u64,
}

/// One container.
#[derive(Debug, Clone)]
pub(crate) struct Guest {
    pub vmid: u32,
    /// Every `key: value` line of the main section (including `lock` and `parent`).
    pub conf: BTreeMap<String, String>,
    /// The description, stored line-wise as the `#` comment lines are.
    pub description: Vec<String>,
    pub running: bool,
    pub started: Option<Instant>,
    pub pid: u32,
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Its init ignores a clean shutdown request (only a kill stops it).
    pub ignores_shutdown: bool,
}

impl Guest {
    /// The guest a seed describes, started at `now` when it runs.
    pub fn from_seed(seed: &GuestSeed, now: Instant) -> Guest {
        let mut conf = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            conf.insert(k.to_string(), v);
        };
        set("arch", "amd64".into());
        set("cores", seed.cores.to_string());
        set("features", "nesting=1".into());
        set("hostname", seed.name.clone());
        set("memory", seed.memory_mib.to_string());
        set(
            "net0",
            format!(
                "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:{:02X}:{:02X}:{:02X},ip=dhcp,type=veth",
                (seed.vmid >> 16) & 0xff,
                (seed.vmid >> 8) & 0xff,
                seed.vmid & 0xff
            ),
        );
        set("ostype", "debian".into());
        set(
            "rootfs",
            format!("local-lvm:vm-{}-disk-0,size={}G", seed.vmid, seed.disk_gib),
        );
        set("swap", "512".into());
        set("unprivileged", "1".into());
        Guest {
            vmid: seed.vmid,
            conf,
            description: seed
                .description
                .as_deref()
                .map(split_lines)
                .unwrap_or_default(),
            running: seed.running,
            started: seed.running.then_some(now),
            pid: 10_000 + seed.vmid,
            snapshots: BTreeMap::new(),
            ignores_shutdown: seed.ignores_shutdown,
        }
    }

    pub fn name(&self) -> String {
        self.conf
            .get("hostname")
            .map(|h| h.split_whitespace().collect::<String>())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("CT{}", self.vmid))
    }

    pub fn lock(&self) -> Option<&str> {
        self.conf.get("lock").map(String::as_str)
    }

    pub fn memory_mib(&self) -> u64 {
        self.conf
            .get("memory")
            .and_then(|m| m.parse().ok())
            .unwrap_or(512)
    }

    /// The configured memory limit in bytes (`maxmem`).
    pub fn max_memory(&self) -> u64 {
        self.memory_mib().saturating_mul(MIB)
    }

    /// Memory in use while running: a quarter of its limit, as `mem` reports it.
    pub fn resident_memory(&self) -> u64 {
        if self.running {
            self.max_memory() / 4
        } else {
            0
        }
    }

    /// The rootfs `size=` in bytes, 4 GiB when absent (as `vmstatus` does).
    pub fn disk_bytes(&self) -> u64 {
        self.conf
            .get("rootfs")
            .and_then(|r| r.split(',').find_map(|p| p.strip_prefix("size=")))
            .and_then(parse_size)
            .unwrap_or(4 * GIB)
    }

    pub fn protected(&self) -> bool {
        self.conf.get("protection").is_some_and(|p| p == "1")
    }

    /// The `.conf` file as `write_pct_config` lays it out; its hash is the digest.
    pub fn conf_text(&self) -> String {
        let mut out = String::new();
        for line in &self.description {
            out.push('#');
            out.push_str(&encode_text(line));
            out.push('\n');
        }
        for (k, v) in &self.conf {
            out.push_str(&format!("{k}: {v}\n"));
        }
        for (name, snap) in &self.snapshots {
            out.push_str(&format!("\n[{name}]\n"));
            for line in &snap.description {
                out.push('#');
                out.push_str(&encode_text(line));
                out.push('\n');
            }
            for (k, v) in &snap.conf {
                out.push_str(&format!("{k}: {v}\n"));
            }
            out.push_str(&format!("snaptime: {}\n", snap.snaptime));
        }
        out
    }

    /// 40 hex characters, like PVE's SHA-1 digest of the `.conf` (here: a truncated
    /// SHA-256, since only sha2 is at hand; clients must treat it as opaque anyway).
    pub fn digest(&self) -> String {
        let hash = Sha256::digest(self.conf_text().as_bytes());
        hash.iter().take(20).map(|b| format!("{b:02x}")).collect()
    }

    /// What `GET …/config` returns.
    pub fn config_json(&self) -> Map<String, Value> {
        let mut map: Map<String, Value> = self
            .conf
            .iter()
            .map(|(k, v)| (k.clone(), typed(k, v)))
            .collect();
        if let Some(d) = read_back(&self.description) {
            map.insert("description".into(), Value::String(d));
        }
        map.insert("digest".into(), Value::String(self.digest()));
        map
    }

    /// One `vmstatus` row, as `GET /nodes/{n}/lxc` lists it, at `now`.
    pub fn status_json(&self, now: Instant) -> Map<String, Value> {
        let maxmem = self.max_memory();
        let swap_mib: u64 = self
            .conf
            .get("swap")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let maxdisk = self.disk_bytes();
        let cpus: Value = match (self.conf.get("cores"), self.conf.get("cpulimit")) {
            (Some(c), _) => c.parse::<u64>().map_or(Value::from(HOST_CPUS), Value::from),
            // Perl leaves a cpulimit-only value unnumified.
            (None, Some(l)) => Value::String(l.clone()),
            (None, None) => Value::from(HOST_CPUS),
        };
        let uptime = self
            .started
            .filter(|_| self.running)
            .map_or(0, |s| now.saturating_duration_since(s).as_secs());
        let r = self.running;
        let Value::Object(mut row) = json!({
            "vmid": self.vmid,
            "type": "lxc",
            "status": if r { "running" } else { "stopped" },
            "name": self.name(),
            "cpus": cpus,
            "cpu": if r { 0.0123 } else { 0.0 },
            "mem": self.resident_memory(),
            "maxmem": maxmem,
            "swap": 0,
            "maxswap": swap_mib.saturating_mul(MIB),
            "disk": if r { maxdisk / 5 } else { 0 },
            "maxdisk": maxdisk,
            "diskread": if r { 52_428_800 } else { 0 },
            "diskwrite": if r { 10_485_760 } else { 0 },
            "netin": if r { 1_048_576 } else { 0 },
            "netout": if r { 524_288 } else { 0 },
            "uptime": uptime,
        }) else {
            return Map::new();
        };
        if r {
            row.insert("pid".into(), Value::from(self.pid));
        }
        if let Some(lock) = self.lock() {
            row.insert("lock".into(), Value::String(lock.to_string()));
        }
        if let Some(tags) = self.conf.get("tags") {
            row.insert("tags".into(), Value::String(tags.clone()));
        }
        if self.conf.get("template").is_some_and(|t| t == "1") {
            row.insert("template".into(), Value::from(1));
        }
        row
    }

    /// Applies a validated config change: `set` pairs, then `delete` keys.
    pub fn apply_config(&mut self, set: &[(String, String)], delete: &[String]) {
        for (k, v) in set {
            if k == "description" {
                self.description = split_lines(v);
            } else {
                self.conf.insert(k.clone(), normalize_value(k, v));
            }
        }
        for k in delete {
            if k == "description" {
                self.description.clear();
            } else {
                self.conf.remove(k);
            }
        }
    }
}

/// Canonical spelling of a validated value: `true`/`false` → `1`/`0`, integers re-printed.
pub(crate) fn normalize_value(key: &str, v: &str) -> String {
    match config_key_kind(key) {
        Some(Kind::Bool) => if matches!(v, "1" | "true") { "1" } else { "0" }.to_string(),
        Some(Kind::Int(..)) => v
            .parse::<i64>()
            .map_or_else(|_| v.to_string(), |n| n.to_string()),
        _ => v.to_string(),
    }
}

/// `8G`, `512M`, `1T`, `1024K` or bytes.
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], MIB),
        'G' => (&s[..s.len() - 1], GIB),
        'T' => (&s[..s.len() - 1], 1u64 << 40),
        _ => (s, 1),
    };
    let n: f64 = num.parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some((n * mult as f64) as u64)
}

/// A storage definition and its capacity.
#[derive(Debug, Clone)]
pub(crate) struct Storage {
    pub name: String,
    pub kind: &'static str,
    pub content: &'static str,
    pub path: Option<&'static str>,
    pub total: u64,
    pub base_used: u64,
}

impl Storage {
    /// A Proxmox Backup Server datastore attached as storage `name` (type `pbs`, backups
    /// only, no local path).
    pub fn pbs(name: &str) -> Storage {
        Storage {
            name: name.to_string(),
            kind: "pbs",
            content: "backup",
            path: None,
            total: 2048 * GIB,
            base_used: 0,
        }
    }
}

/// A backup archive in a storage.
#[derive(Debug, Clone)]
pub(crate) struct Backup {
    pub volid: String,
    pub storage: String,
    pub vmid: u32,
    pub ctime: u64,
    pub size: u64,
    pub format: String,
    pub notes: Option<String>,
    /// PBS snapshots only: the last verification's state (`ok`, `failed`); `None` when
    /// never verified.
    pub verification: Option<String>,
    /// The guest's config at backup time; a restore brings it back.
    pub conf: BTreeMap<String, String>,
    pub description: Vec<String>,
    /// Protected from removal (`protected: 1` in the listing): an `imgdel` fails.
    pub protected: bool,
    /// How a restore from it fails, when it is damaged.
    pub broken: Option<super::Broken>,
}

impl Backup {
    pub fn of(guest: &Guest, storage: &str, ctime: u64, ext: &str) -> Backup {
        let format = format!("tar{ext}");
        let file = format!(
            "vzdump-lxc-{}-{}.{format}",
            guest.vmid,
            clock::vzdump_stamp(ctime)
        );
        let mut conf = guest.conf.clone();
        conf.remove("lock");
        conf.remove("parent");
        Backup {
            volid: format!("{storage}:backup/{file}"),
            storage: storage.to_string(),
            vmid: guest.vmid,
            ctime,
            // Compressed archives of a mostly empty rootfs: an eighth of the disk.
            size: guest.disk_bytes() / 8 + 12_345,
            format,
            notes: None,
            verification: None,
            conf,
            description: guest.description.clone(),
            protected: false,
            broken: None,
        }
    }

    /// A snapshot of `guest` in the PBS storage `storage`, as pve-storage's PBSPlugin
    /// names it: `STORAGE:backup/ct/VMID/2024-05-01T10:00:00Z`, format `pbs-ct`.
    pub fn pbs(guest: &Guest, storage: &str, ctime: u64) -> Backup {
        let mut b = Backup::of(guest, storage, ctime, ".zst");
        b.volid = format!(
            "{storage}:backup/ct/{}/{}",
            guest.vmid,
            clock::pbs_stamp(ctime)
        );
        b.format = "pbs-ct".to_string();
        b
    }

    /// Whether it lives on a Proxmox Backup Server (listed without `subtype`, with
    /// `verification`).
    pub fn is_pbs(&self) -> bool {
        self.format.starts_with("pbs-")
    }

    pub fn file_name(&self) -> &str {
        self.volid.rsplit('/').next().unwrap_or(&self.volid)
    }
}

/// What a task does to the host when it ends successfully.
#[derive(Debug, Clone)]
pub(crate) enum Effect {
    None,
    Start(u32),
    Stop(u32),
    Reboot(u32),
    Destroy(u32),
    Config {
        vmid: u32,
        set: Vec<(String, String)>,
        delete: Vec<String>,
    },
    Snapshot {
        vmid: u32,
        name: String,
        description: Option<String>,
    },
    Rollback {
        vmid: u32,
        name: String,
        start: bool,
    },
    DelSnapshot {
        vmid: u32,
        name: String,
    },
    /// Restore (or create) the guest as `guest`; `fresh` when it did not exist before,
    /// so a failed task removes the placeholder again. `lose_on_failure`: the worker
    /// fails after it replaced the old volumes, so the guest's config goes as well
    /// (pve-container's `destroy_config_on_error`).
    Restore {
        guest: Box<Guest>,
        fresh: bool,
        lose_on_failure: bool,
        start: bool,
    },
    Backup(Vec<Backup>),
    /// Remove the backup volume with this volid (`imgdel`).
    DeleteVolume(String),
}

/// A task that fails before it does anything (permission, lock, missing snapshot …).
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub exitstatus: String,
    pub log: Vec<String>,
}

impl Failure {
    pub fn new(exitstatus: impl Into<String>) -> Failure {
        Failure {
            exitstatus: exitstatus.into(),
            log: Vec::new(),
        }
    }

    pub fn permission(path: &str, privs: &str) -> Failure {
        Failure::new(permission_text(path, privs))
    }
}

/// What a route asks for when it forks a worker.
#[derive(Debug, Clone)]
pub(crate) struct TaskSpec {
    pub kind: &'static str,
    pub id: String,
    /// Lock these guests with these values while the task runs (only if it gets going).
    pub lock: Vec<(u32, &'static str)>,
    pub effect: Effect,
    /// Set when the worker fails at its first check.
    pub failure: Option<Failure>,
    /// Set when the worker fails after it got going: its locks are held for the run,
    /// and a `Restore` effect's failure rule applies at the end.
    pub late_failure: Option<Failure>,
    /// Log lines the worker prints on its way.
    pub log: Vec<String>,
    /// How long it runs, when not the simulator's task duration.
    pub duration: Option<Duration>,
}

impl TaskSpec {
    pub fn new(kind: &'static str, id: impl Into<String>, effect: Effect) -> TaskSpec {
        TaskSpec {
            kind,
            id: id.into(),
            lock: Vec::new(),
            effect,
            failure: None,
            late_failure: None,
            log: Vec::new(),
            duration: None,
        }
    }
}

/// One worker task.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub upid: String,
    pub pid: u32,
    pub pstart: u64,
    pub starttime: u64,
    pub kind: &'static str,
    pub id: String,
    pub ends: Instant,
    pub endtime: Option<u64>,
    /// The exit status it will have (or has, once `endtime` is set).
    pub exitstatus: String,
    pub log: Vec<String>,
    pub lock: Vec<(u32, &'static str)>,
    pub effect: Effect,
}

impl Task {
    pub fn running(&self) -> bool {
        self.endtime.is_none()
    }

    fn ok(&self) -> bool {
        self.exitstatus == "OK" || self.exitstatus.starts_with("WARNINGS: ")
    }

    /// The fields the task-status object and a task-list row share.
    fn row(&self, node: &str, user: &str, tokenid: Option<&str>) -> Value {
        let mut v = json!({
            "upid": self.upid,
            "node": node,
            "pid": self.pid,
            "pstart": self.pstart,
            "starttime": self.starttime,
            "type": self.kind,
            "id": self.id,
            "user": user,
        });
        if let (Some(obj), Some(t)) = (v.as_object_mut(), tokenid) {
            obj.insert("tokenid".into(), Value::String(t.to_string()));
        }
        v
    }

    /// The task-status object.
    pub fn status_json(&self, node: &str, user: &str, tokenid: Option<&str>) -> Value {
        let mut v = self.row(node, user, tokenid);
        if let Some(obj) = v.as_object_mut() {
            let status = if self.running() { "running" } else { "stopped" };
            obj.insert("status".into(), Value::from(status));
            if !self.running() {
                obj.insert("exitstatus".into(), Value::String(self.exitstatus.clone()));
            }
        }
        v
    }

    /// A `GET /nodes/{n}/tasks` row.
    pub fn list_json(&self, node: &str, user: &str, tokenid: Option<&str>) -> Value {
        let mut v = self.row(node, user, tokenid);
        if let Some(obj) = v.as_object_mut() {
            match self.endtime {
                Some(end) => {
                    obj.insert("endtime".into(), Value::from(end));
                    obj.insert("status".into(), Value::String(self.exitstatus.clone()));
                }
                None => {
                    obj.insert("status".into(), Value::String("RUNNING".into()));
                }
            }
        }
        v
    }

    /// The log as it stands: the worker's lines, and the final line once it stopped.
    pub fn log_lines(&self) -> Vec<String> {
        let mut lines = self.log.clone();
        if !self.running() {
            lines.push(if self.exitstatus == "OK" {
                "TASK OK".to_string()
            } else if let Some(n) = self.exitstatus.strip_prefix("WARNINGS: ") {
                format!("TASK WARNINGS: {n}")
            } else {
                format!("TASK ERROR: {}", self.exitstatus.replace('\n', " "))
            });
        }
        lines
    }
}

/// The whole simulated host, behind one mutex.
#[derive(Debug)]
pub(crate) struct State {
    pub node: String,
    pub token_id: String,
    pub secret: String,
    pub guests: BTreeMap<u32, Guest>,
    pub storages: Vec<Storage>,
    pub backups: Vec<Backup>,
    /// OS template volids (`local:vztmpl/NAME.tar.zst`) a create can use.
    pub templates: Vec<String>,
    pub tasks: Vec<Task>,
    pub faults: Vec<Fault>,
    pub denied: Vec<(String, String)>,
    pub denied_at_task: Vec<(String, String)>,
    /// Roles and ACL entries: the allow model (off until a test grants something).
    pub acl: super::acl::Acl,
    pub task_duration: Duration,
    pub next_warnings: Option<u32>,
    pub next_failure: Option<String>,
    pub sync_config_put: bool,
    /// `GET /nodes/{n}/tasks` ignores vmid, typefilter, since and until (a client's
    /// own filtering must then do the work).
    pub task_list_unfiltered: bool,
    pub auth_delay: Duration,
    pub requests: Vec<RecordedRequest>,
    pub fingerprint: String,
    /// The simulated host's clock: every deadline and timestamp reads it.
    pub clock: SimClock,
    pub boot: Instant,
    pub boot_uptime: u64,
    next_pid: u32,
}

fn acl_covers(granted: &str, path: &str) -> bool {
    granted == path
        || granted == "/"
        || path
            .strip_prefix(granted)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl State {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: String,
        token_id: String,
        secret: String,
        seeds: &[GuestSeed],
        task_duration: Duration,
        sync_config_put: bool,
        auth_delay: Duration,
        fingerprint: String,
    ) -> State {
        let clock = SimClock::new();
        let guests = seeds
            .iter()
            .map(|s| (s.vmid, Guest::from_seed(s, clock.now())))
            .collect();
        State {
            node,
            token_id,
            secret,
            guests,
            storages: vec![
                Storage {
                    name: "local".into(),
                    kind: "dir",
                    content: "backup,iso,vztmpl",
                    path: Some("/var/lib/vz"),
                    total: HOST_ROOTFS,
                    base_used: 9 * GIB,
                },
                Storage {
                    name: "local-lvm".into(),
                    kind: "lvmthin",
                    content: "images,rootdir",
                    path: None,
                    total: 400 * GIB,
                    base_used: 0,
                },
            ],
            backups: Vec::new(),
            templates: Vec::new(),
            tasks: Vec::new(),
            faults: Vec::new(),
            denied: Vec::new(),
            denied_at_task: Vec::new(),
            acl: super::acl::Acl::default(),
            task_duration,
            next_warnings: None,
            next_failure: None,
            sync_config_put,
            task_list_unfiltered: false,
            auth_delay,
            requests: Vec::new(),
            fingerprint,
            boot: clock.now(),
            clock,
            boot_uptime: 86_400 * 3 + 1234,
            next_pid: 0x0001_A2B3,
        }
    }

    /// The owner user (`user@realm`) and token name of the configured token.
    pub fn user_and_token(&self) -> (String, Option<String>) {
        match self.token_id.split_once('!') {
            Some((u, t)) => (u.to_string(), Some(t.to_string())),
            None => (self.token_id.clone(), None),
        }
    }

    pub fn storage(&self, name: &str) -> Option<&Storage> {
        self.storages.iter().find(|s| s.name == name)
    }

    pub fn storage_used(&self, s: &Storage) -> u64 {
        let extra: u64 = match s.kind {
            "lvmthin" => saturating_sum(self.guests.values().map(|g| g.disk_bytes() / 4)),
            _ => saturating_sum(
                self.backups
                    .iter()
                    .filter(|b| b.storage == s.name)
                    .map(|b| b.size),
            ),
        };
        s.base_used.saturating_add(extra).min(s.total)
    }

    /// Seconds since the host booted.
    pub fn uptime(&self) -> u64 {
        let up = self.clock.now().saturating_duration_since(self.boot);
        self.boot_uptime.saturating_add(up.as_secs())
    }

    /// The host's memory as `/proc/meminfo` shows it and pve-manager reports it.
    pub fn host_memory(&self) -> HostMemory {
        HostMemory::of(saturating_sum(
            self.guests.values().map(Guest::resident_memory),
        ))
    }

    /// Is `privilege` on `path` denied by an entry of `list` (ACLs propagate downwards)?
    fn denied_in(list: &[(String, String)], path: &str, privilege: &str) -> bool {
        list.iter()
            .any(|(p, pr)| (pr == privilege || pr == "*") && acl_covers(p, path))
    }

    /// Does the token hold `privilege` on `path`: granted by the ACL (when that model
    /// is on) and not denied at request time?
    pub fn holds(&self, path: &str, privilege: &str) -> bool {
        self.acl.holds(path, privilege) && !Self::denied_in(&self.denied, path, privilege)
    }

    /// `check_any(path, privs)` at request time: a 403 when not one of them is held.
    pub fn check_sync(&self, path: &str, privs: &[&str]) -> Result<(), super::params::ApiError> {
        if !privs.iter().any(|p| self.holds(path, p)) {
            return Err(super::params::ApiError::forbidden(path, &privs.join("|")));
        }
        Ok(())
    }

    /// True when the request-time check would pass (for filtering list rows).
    pub fn allowed(&self, path: &str, privs: &[&str]) -> bool {
        self.check_sync(path, privs).is_ok()
    }

    /// The same check made inside a worker: not held, or denied at task time.
    pub fn check_in_task(&self, path: &str, privs: &[&str]) -> Option<Failure> {
        let held = privs
            .iter()
            .any(|p| self.holds(path, p) && !Self::denied_in(&self.denied_at_task, path, p));
        (!held).then(|| Failure::permission(path, &privs.join("|")))
    }

    /// Forks a worker: assigns its UPID, settles its fate, takes its lock.
    pub fn spawn(&mut self, spec: TaskSpec) -> String {
        self.advance();
        let starttime = self.clock.epoch();
        let pid = self.next_pid;
        self.next_pid = self.next_pid.wrapping_add(0x35);
        // /proc starttime is in clock ticks since boot (100 Hz).
        let since_boot = self.clock.now().saturating_duration_since(self.boot);
        let pstart = 0x00C0_FFEE + (since_boot.as_millis() / 10) as u64;
        let upid = format!(
            "UPID:{}:{:08X}:{:08X}:{:08X}:{}:{}:{}:",
            self.node, pid, pstart, starttime, spec.kind, spec.id, self.token_id
        );
        let injected_failure = self.next_failure.take();
        let injected_warnings = self.next_warnings.take();
        let mut log = spec.log;
        let (exitstatus, lock, effect) = if let Some(f) = spec.failure {
            log = f.log;
            (f.exitstatus, Vec::new(), Effect::None)
        } else if let Some(f) = spec.late_failure {
            log.extend(f.log);
            let effect = match spec.effect {
                restore @ Effect::Restore { .. } => restore,
                _ => Effect::None,
            };
            (f.exitstatus, spec.lock, effect)
        } else if let Some(status) = injected_failure {
            // Fails mid-way: the lock was taken, the effect never lands.
            log.push(format!(
                "ERROR: {}",
                status.lines().next().unwrap_or_default()
            ));
            let effect = match spec.effect {
                restore @ Effect::Restore { .. } => restore,
                _ => Effect::None,
            };
            (status, spec.lock, effect)
        } else if let Some(n) = injected_warnings.filter(|n| *n > 0) {
            for i in 1..=n {
                log.push(format!("WARN: simulated warning {i} of {n}"));
            }
            (format!("WARNINGS: {n}"), spec.lock, spec.effect)
        } else {
            ("OK".to_string(), spec.lock, spec.effect)
        };
        for (vmid, value) in &lock {
            if let Some(g) = self.guests.get_mut(vmid) {
                g.conf.insert("lock".into(), (*value).into());
            }
        }
        self.tasks.push(Task {
            upid: upid.clone(),
            pid,
            pstart,
            starttime,
            kind: spec.kind,
            id: spec.id,
            ends: self.clock.now() + spec.duration.unwrap_or(self.task_duration),
            endtime: None,
            exitstatus,
            log,
            lock,
            effect,
        });
        upid
    }

    /// Ends every task whose time is up, oldest deadline first, applying its effect.
    pub fn advance(&mut self) {
        let now = self.clock.now();
        loop {
            let next = self
                .tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| t.running() && t.ends <= now)
                .min_by_key(|(_, t)| t.ends)
                .map(|(i, _)| i);
            let Some(i) = next else {
                return;
            };
            self.finish(i, None);
        }
    }

    /// Stops task `i`; `interrupt` overrides its exit status (a DELETE of the task).
    pub fn finish(&mut self, i: usize, interrupt: Option<&str>) {
        let Some(task) = self.tasks.get_mut(i) else {
            return;
        };
        if let Some(status) = interrupt {
            task.exitstatus = status.to_string();
        }
        // A task that ran out is ended at its deadline, however late it is settled.
        let late = match interrupt {
            Some(_) => 0,
            None => self
                .clock
                .now()
                .saturating_duration_since(task.ends)
                .as_secs(),
        };
        task.endtime = Some(self.clock.epoch().saturating_sub(late).max(task.starttime));
        let ok = task.ok();
        let lock = task.lock.clone();
        let effect = std::mem::replace(&mut task.effect, Effect::None);
        for (vmid, value) in lock {
            if let Some(g) = self.guests.get_mut(&vmid)
                && g.lock() == Some(value)
            {
                g.conf.remove("lock");
            }
        }
        if ok {
            self.apply(effect);
        } else if let Effect::Restore {
            guest,
            fresh,
            lose_on_failure,
            ..
        } = effect
            && (fresh || lose_on_failure)
        {
            self.guests.remove(&guest.vmid);
        }
    }

    fn apply(&mut self, effect: Effect) {
        let now = self.clock.now();
        let epoch = self.clock.epoch();
        match effect {
            Effect::None => {}
            Effect::Start(vmid) => {
                if let Some(g) = self.guests.get_mut(&vmid) {
                    g.running = true;
                    g.started = Some(now);
                    g.pid = self.next_pid;
                }
            }
            Effect::Stop(vmid) => {
                if let Some(g) = self.guests.get_mut(&vmid) {
                    g.running = false;
                    g.started = None;
                }
            }
            Effect::Reboot(vmid) => {
                if let Some(g) = self.guests.get_mut(&vmid) {
                    g.running = true;
                    g.started = Some(now);
                }
            }
            Effect::Destroy(vmid) => {
                self.guests.remove(&vmid);
            }
            Effect::Config { vmid, set, delete } => {
                if let Some(g) = self.guests.get_mut(&vmid) {
                    g.apply_config(&set, &delete);
                }
            }
            Effect::Snapshot {
                vmid,
                name,
                description,
            } => {
                if let Some(g) = self.guests.get_mut(&vmid) {
                    let mut conf = g.conf.clone();
                    conf.remove("lock");
                    g.snapshots.insert(
                        name.clone(),
                        Snapshot {
                            conf,
                            description: description
                                .as_deref()
                                .map(split_lines)
                                .unwrap_or_default(),
                            snaptime: epoch,
                        },
                    );
                    g.conf.insert("parent".into(), name);
                }
            }
            Effect::Rollback { vmid, name, start } => {
                if let Some(g) = self.guests.get_mut(&vmid)
                    && let Some(snap) = g.snapshots.get(&name)
                {
                    let mut conf = snap.conf.clone();
                    // Unused volumes survive a rollback, as in PVE.
                    for (k, v) in &g.conf {
                        if k.starts_with("unused") {
                            conf.insert(k.clone(), v.clone());
                        }
                    }
                    conf.insert("parent".into(), name);
                    g.conf = conf;
                    g.running = start;
                    g.started = start.then_some(now);
                }
            }
            Effect::DelSnapshot { vmid, name } => {
                if let Some(g) = self.guests.get_mut(&vmid)
                    && let Some(snap) = g.snapshots.remove(&name)
                {
                    let grandparent = snap.conf.get("parent").cloned();
                    let fix = |conf: &mut BTreeMap<String, String>| {
                        if conf.get("parent") == Some(&name) {
                            match &grandparent {
                                Some(p) => conf.insert("parent".into(), p.clone()),
                                None => conf.remove("parent"),
                            };
                        }
                    };
                    fix(&mut g.conf);
                    for s in g.snapshots.values_mut() {
                        fix(&mut s.conf);
                    }
                }
            }
            Effect::Restore { guest, start, .. } => {
                let mut guest = *guest;
                guest.running = start;
                guest.started = start.then_some(now);
                self.guests.insert(guest.vmid, guest);
            }
            Effect::Backup(backups) => {
                for b in backups {
                    self.backups.retain(|old| old.volid != b.volid);
                    self.backups.push(b);
                }
            }
            Effect::DeleteVolume(volid) => self.backups.retain(|b| b.volid != volid),
        }
    }

    /// Takes the first queued fault matching this request, counting it down.
    pub fn take_fault(&mut self, method: &str, path: &str) -> Option<super::FaultKind> {
        let i = self.faults.iter().position(|f| {
            f.times > 0
                && f.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
                && path.starts_with(&f.path_prefix)
        })?;
        let fault = &mut self.faults[i];
        fault.times -= 1;
        let kind = fault.kind.clone();
        if fault.times == 0 {
            self.faults.remove(i);
        }
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_memory_never_reports_more_used_than_the_host_has() {
        // Idle, busy, overcommitted far past RAM and swap, and the sum saturated.
        for guests in [0, 8 * GIB, HOST_MEMORY, 4 * HOST_MEMORY, u64::MAX] {
            let m = HostMemory::of(guests);
            assert_eq!(m.total, HOST_MEMORY);
            assert!(m.used < m.total, "{guests}: {m:?}");
            assert_eq!(m.used + m.available, m.total, "{guests}");
            assert!(m.free <= m.available, "{guests}");
            assert!(m.swap_used <= m.swap_total, "{guests}");
        }
        let idle = HostMemory::of(0);
        assert_eq!((idle.used, idle.swap_used), (HOST_BASE_USED, 0));
        let over = HostMemory::of(HOST_MEMORY);
        assert_eq!(over.available, HOST_MIN_AVAILABLE);
        assert_eq!(over.swap_used, HOST_BASE_USED + HOST_MIN_AVAILABLE);
    }

    #[test]
    fn description_round_trip_gains_newline() {
        let mut g = Guest::from_seed(&GuestSeed::new(100, "web"), Instant::now());
        g.apply_config(
            &[("description".into(), "Managed by agent: v1".into())],
            &[],
        );
        assert_eq!(g.description, vec!["Managed by agent: v1".to_string()]);
        assert_eq!(g.config_json()["description"], "Managed by agent: v1\n");
        assert!(
            g.conf_text()
                .starts_with("#Managed by agent%3A v1\narch: amd64\n")
        );
        g.apply_config(&[("description".into(), "a\n\nb\n\n".into())], &[]);
        assert_eq!(g.config_json()["description"], "a\n\nb\n");
        g.apply_config(&[("description".into(), String::new())], &[]);
        assert!(g.config_json().get("description").is_none());
    }

    #[test]
    fn encode_text_matches_pve() {
        assert_eq!(
            encode_text("100% sure: \t ok é"),
            "100%25 sure%3A %09 ok %C3%A9"
        );
    }

    #[test]
    fn config_typing() {
        let mut g = Guest::from_seed(&GuestSeed::new(100, "web"), Instant::now());
        g.apply_config(
            &[
                ("cpulimit".into(), "0.5".into()),
                ("onboot".into(), "true".into()),
                ("cores".into(), "04".into()),
            ],
            &[],
        );
        let c = g.config_json();
        assert_eq!(c["cpulimit"], Value::String("0.5".into()));
        assert_eq!(c["onboot"], Value::from(1));
        assert_eq!(c["cores"], Value::from(4));
        assert_eq!(c["memory"], Value::from(512));
        assert_eq!(c["digest"].as_str().unwrap().len(), 40);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8G"), Some(8 * GIB));
        assert_eq!(parse_size("512M"), Some(512 * MIB));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn acl_paths_propagate() {
        assert!(acl_covers("/vms", "/vms/100"));
        assert!(acl_covers("/", "/vms/100"));
        assert!(!acl_covers("/vms/10", "/vms/100"));
    }
}
