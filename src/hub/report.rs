//! The host report: the wire contract between this agent and the hub.
//!
//! Field names here are frozen by `vectors/host-report.golden.json`; a test fails on any
//! drift, and the hub simulator validates every report it receives against the same file.
//! This module only defines and serializes the shape. It never gathers data (that is
//! [`super::collect`]) and never talks to the network.
//!
//! Shape rules the hub relies on: every collection is a JSON array, never `null`; a
//! guest's `spec` is omitted (not `null`) when the agent could not read it; every other
//! field is always present, `null` where a value may legitimately be unknown.

use serde::{Deserialize, Serialize};

use crate::base::time::Timestamp;

/// One report: everything the hub learns about a host in one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    /// This host's identity (the config's `host_id`); the hub keys its records on it.
    pub host_id: String,
    /// The agent's version string.
    pub agent_version: String,
    /// When the report was collected, RFC 3339 UTC.
    #[serde(with = "crate::base::time::rfc3339")]
    pub reported_at: Timestamp,
    /// Host metrics from the node's status.
    pub host: HostMetrics,
    /// The node's LXC guests, sorted by vmid.
    pub guests: Vec<GuestReport>,
    /// The Cloudflare tunnel daemon's state on the host.
    pub cloudflared: CloudflaredStatus,
    /// The node's storages as Proxmox reports them.
    pub storage_targets: Vec<StorageTarget>,
    /// Backup volumes on non-PBS storages (vzdump archives).
    pub backups: Vec<BackupVolume>,
    /// Results of restore tests. Always empty: the agent does not run restore tests
    /// yet, and the element shape is defined when it does (the type has no values).
    pub restore_tests: Vec<RestoreTest>,
    /// Container snapshots held on Proxmox Backup Server storages.
    pub pbs_snapshots: Vec<PbsSnapshot>,
    /// The most recent gate decisions from the audit log, oldest first.
    pub audit_tail: Vec<AuditEntry>,
    /// Operations held for a signature and not yet resolved: the latest
    /// `pending_signature` entry of each (op, guest) with no later decision of another
    /// kind for the same pair, oldest first, at most [`PENDING_SIGNATURES_MAX`]. Newer
    /// entries in `audit_tail` never push these out.
    pub pending_signatures: Vec<AuditEntry>,
    /// What became of each signed op the hub delivered and has not yet acknowledged
    /// (`ack_signed_op_results` in the envelope), one entry per hub op id, oldest
    /// first, at most [`SIGNED_OP_RESULTS_MAX`].
    pub signed_op_results: Vec<SignedOpResult>,
    /// The host's disks (SMART) and temperature sensors; a probe that failed reads
    /// `unknown` and never holds the report back.
    pub health: Health,
    /// The signer policy this host enforces: its version and the signers' fingerprints,
    /// nothing more, so the hub sees that a rotation landed. Absent when no signer is
    /// configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer_policy: Option<SignerPolicyReport>,
    /// The operator's local pause (`felhom-agent pause`), `null` when not paused. While
    /// it is set the agent holds every mutation, reconcile's and signed ops', and keeps
    /// reporting.
    pub paused: Option<PauseReport>,
}

/// `ok` when a health probe answered, `unknown` when it failed (its list is then
/// empty) or is not wired.
pub const PROBE_OK: &str = "ok";
/// See [`PROBE_OK`].
pub const PROBE_UNKNOWN: &str = "unknown";

/// The host's health: SMART per disk and the temperature sensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// [`PROBE_OK`] when the disks could be listed, else [`PROBE_UNKNOWN`] (and
    /// `disks` is empty).
    pub disks_state: String,
    /// Each whole disk, sorted by device; a disk whose own probe failed is listed
    /// with every reading `null`.
    pub disks: Vec<DiskReport>,
    /// [`PROBE_OK`] when `sensors -j` answered, else [`PROBE_UNKNOWN`] (and `sensors`
    /// is empty).
    pub sensors_state: String,
    /// Each temperature reading.
    pub sensors: Vec<SensorReport>,
}

impl Health {
    /// Nothing known: both probes `unknown`, both lists empty.
    pub fn unknown() -> Health {
        Health {
            disks_state: PROBE_UNKNOWN.to_owned(),
            disks: Vec::new(),
            sensors_state: PROBE_UNKNOWN.to_owned(),
            sensors: Vec::new(),
        }
    }
}

/// One disk's SMART reading; `null` where unknown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskReport {
    /// `/dev/sda`, `/dev/nvme0n1`.
    pub device: String,
    /// The model smartctl names.
    pub model: Option<String>,
    /// smartctl's overall verdict: `true` passed, `false` failing.
    pub smart_ok: Option<bool>,
    /// Current temperature, °C.
    pub temperature_c: Option<i64>,
    /// ATA attribute 5's raw value (`null` for NVMe and SCSI disks).
    pub reallocated_sectors: Option<u64>,
}

/// One temperature sensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorReport {
    /// `CHIP/LABEL`, e.g. `coretemp-isa-0000/Package id 0`.
    pub name: String,
    /// °C.
    pub celsius: f64,
}

/// The signer policy as the report carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerPolicyReport {
    /// 0 for the configured set; one more for each rotation applied.
    pub version: u64,
    /// The signers' `SHA256:` fingerprints, in policy order.
    pub fingerprints: Vec<String>,
}

/// An operator's pause as the report carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PauseReport {
    /// The operator's reason, as given to `pause --reason` (at most 200 bytes).
    pub reason: String,
    /// When the pause was set; `null` when the marker cannot be read (held fail-safe).
    #[serde(with = "crate::base::time::opt_rfc3339")]
    pub since: Option<Timestamp>,
    /// The uid that set it; `null` when the marker cannot be read.
    pub by_uid: Option<u32>,
}

/// Host metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostMetrics {
    /// The node name as Proxmox knows it.
    pub node: String,
    /// The Proxmox VE manager version, e.g. `9.2.11`.
    pub pve_version: String,
    /// Seconds since the node booted.
    pub uptime_seconds: u64,
    /// CPU use and count.
    pub cpu: CpuMetrics,
    /// Memory in bytes.
    pub memory: Usage,
    /// The root filesystem in bytes.
    pub rootfs: Usage,
    /// Load averages (Proxmox sends them as strings; here they are numbers).
    pub load: LoadAverage,
}

/// CPU use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuMetrics {
    /// Fraction of all host CPUs busy, 0.0 to 1.0.
    pub usage: f64,
    /// Logical CPUs on the host.
    pub cpus: u32,
}

/// Capacity and use of a resource, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Total capacity.
    pub total_bytes: u64,
    /// In use.
    pub used_bytes: u64,
}

/// The 1, 5 and 15 minute load averages.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadAverage {
    /// One minute.
    pub avg1: f64,
    /// Five minutes.
    pub avg5: f64,
    /// Fifteen minutes.
    pub avg15: f64,
}

/// A guest's run state on the wire: exactly one of three words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestStatus {
    /// Proxmox says `running`.
    Running,
    /// Proxmox says `stopped`.
    Stopped,
    /// Proxmox said nothing, or something else.
    Unknown,
}

impl GuestStatus {
    /// Maps Proxmox's status text; anything but `running`/`stopped` is `Unknown`.
    pub fn from_proxmox(s: &str) -> Self {
        match s {
            "running" => GuestStatus::Running,
            "stopped" => GuestStatus::Stopped,
            _ => GuestStatus::Unknown,
        }
    }
}

/// One LXC guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestReport {
    /// The guest id.
    pub vmid: u32,
    /// Its name (hostname), or `CT<vmid>` as Proxmox shows a guest without one.
    pub name: String,
    /// Its run state.
    pub status: GuestStatus,
    /// Its resources; absent when the agent could not read its config this round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<GuestSpec>,
    /// Its Proxmox config `digest`, the value an operator puts in a signed op's
    /// `guest_digest`; absent when the agent could not read its config this round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// A guest's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestSpec {
    /// CPU cores from the guest config.
    pub cores: u32,
    /// Memory limit in bytes.
    pub memory_bytes: u64,
    /// Root disk size in bytes.
    pub disk_bytes: u64,
}

/// The `cloudflared` service's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudflaredStatus {
    /// A `systemctl is-active` word (`active`, `inactive`, `failed`, `activating`,
    /// `deactivating`, `reloading`, `maintenance`, `refreshing`), or `unknown` when the
    /// probe failed or answered something else.
    pub status: String,
}

/// One storage of the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageTarget {
    /// Storage id, e.g. `local`.
    pub storage: String,
    /// Storage type, e.g. `dir`, `zfspool`, `pbs`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Content types it holds, e.g. `["backup", "vztmpl"]`, sorted.
    pub content: Vec<String>,
    /// Whether it is active on this node.
    pub active: bool,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Whether it is shared between nodes.
    pub shared: bool,
    /// Capacity in bytes; `null` when Proxmox does not report it (inactive storage).
    pub total_bytes: Option<u64>,
    /// Used bytes; `null` when not reported.
    pub used_bytes: Option<u64>,
    /// Available bytes; `null` when not reported.
    pub avail_bytes: Option<u64>,
}

/// A backup archive on a non-PBS storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupVolume {
    /// The storage it is on.
    pub storage: String,
    /// Proxmox's volume id, e.g. `local:backup/vzdump-lxc-100-2024_05_01-10_00_00.tar.zst`.
    pub volid: String,
    /// The guest it backs up; `null` if Proxmox does not say.
    pub vmid: Option<u32>,
    /// Archive format, e.g. `tar.zst`.
    pub format: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Creation time; `null` if Proxmox does not say.
    #[serde(with = "crate::base::time::opt_rfc3339")]
    pub created_at: Option<Timestamp>,
    /// Protected from pruning.
    pub protected: bool,
    /// The first line of its notes; `null` when it has none.
    pub notes: Option<String>,
}

/// A container snapshot on a Proxmox Backup Server storage (`format: "pbs-ct"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PbsSnapshot {
    /// The PBS storage it is on.
    pub storage: String,
    /// Proxmox's volume id, e.g. `pbs:backup/ct/100/2024-05-01T10:00:00Z`.
    pub volid: String,
    /// The guest it backs up; `null` if Proxmox does not say.
    pub vmid: Option<u32>,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Creation time; `null` if Proxmox does not say.
    #[serde(with = "crate::base::time::opt_rfc3339")]
    pub created_at: Option<Timestamp>,
    /// Protected from pruning.
    pub protected: bool,
    /// The last verification's state (`ok`, `failed`); `null` if never verified.
    pub verification: Option<String>,
    /// The first line of its notes; `null` when it has none.
    pub notes: Option<String>,
}

/// One restore test: a guest's backup restored into a scratch vmid, started without
/// network, checked to have booted, and destroyed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreTest {
    /// The guest whose backup was tested.
    pub vmid: u32,
    /// The backup volume restored.
    pub backup_volid: String,
    /// The scratch vmid it was restored into; `null` when none was free.
    pub scratch_vmid: Option<u32>,
    /// When the test started, RFC 3339 UTC.
    #[serde(with = "crate::base::time::rfc3339")]
    pub started_at: Timestamp,
    /// Restore to cleanup, seconds.
    pub duration_seconds: u64,
    /// `ok`, `failed` or `skipped`.
    pub outcome: String,
    /// Where it failed or was skipped (`guard`, `scratch_vmid`, `restore`, `network`,
    /// `start`, `boot_check`, `cleanup`, `interrupted`); `null` when ok.
    pub stage: Option<String>,
    /// What failed, at most 256 bytes; `null` when ok.
    pub detail: Option<String>,
    /// The backup volume's size, bytes; `null` when unknown.
    pub size_bytes: Option<u64>,
}

/// How many restore tests a report carries at most (the newest).
pub const RESTORE_TESTS_MAX: usize = 64;

/// One gate decision from the audit log.
///
/// Every string in an entry is at most 256 bytes: the agent cuts a longer value at a
/// character boundary when it records it, and `truncated` then names the field with the
/// SHA-256 and byte length of the full value (which the agent never keeps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the decision was made.
    #[serde(with = "crate::base::time::rfc3339")]
    pub at: Timestamp,
    /// The operation, e.g. `guest_destroy`, `set_config`; `signed_op` for a hub delivery
    /// whose operation could not be read.
    pub op: String,
    /// The guest it targets; `null` for host-wide operations.
    pub guest_id: Option<String>,
    /// The gate's word, e.g. `allowed`, `pending_signature`, `refused`.
    pub decision: String,
    /// Why, in a sentence.
    pub reason: String,
    /// The signer's advisory key id when a signature was presented.
    pub key_id: Option<String>,
    /// The hub delivery the entry is about: set on every entry about an op the hub
    /// delivered (the gate's decision on it included); `null` for decisions on the
    /// agent's own actions.
    #[serde(default)]
    pub delivery: Option<Delivery>,
    /// The fields that were cut, in field order; empty when none was.
    #[serde(default)]
    pub truncated: Vec<Truncated>,
}

impl AuditEntry {
    /// An entry with no delivery and nothing cut (yet: recording caps it).
    pub fn new(
        at: Timestamp,
        op: impl Into<String>,
        guest_id: Option<String>,
        decision: impl Into<String>,
        reason: impl Into<String>,
        key_id: Option<String>,
    ) -> AuditEntry {
        AuditEntry {
            at,
            op: op.into(),
            guest_id,
            decision: decision.into(),
            reason: reason.into(),
            key_id,
            delivery: None,
            truncated: Vec::new(),
        }
    }
}

/// What the agent knows of one op the hub delivered: never its bytes, only their hash
/// and size and the nonce the blob names. Each field is `null` when it is not known (an
/// entry skipped before its id or its blob could be read, a blob that does not parse).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The hub's id for the op, as the hub sent it (cut like every string).
    pub hub_op_id: Option<String>,
    /// The blob's `nonce`, read from the blob unverified only to name the op; `null`
    /// when the blob does not parse or the entry was skipped before it was read.
    pub nonce: Option<String>,
    /// Its position in the `ops` array of the hub's answer.
    pub index: Option<u64>,
    /// SHA-256 of the decoded blob, lowercase hex.
    pub blob_sha256: Option<String>,
    /// Size of the decoded blob in bytes.
    pub blob_bytes: Option<u64>,
}

/// A field that was cut: its name, and the SHA-256 and byte length of the full value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncated {
    /// Which field: `op`, `guest_id`, `decision`, `reason`, `key_id`,
    /// `delivery.hub_op_id`, `delivery.nonce` or `delivery.blob_sha256`.
    pub field: String,
    /// SHA-256 of the full value's UTF-8 bytes, lowercase hex.
    pub sha256: String,
    /// The full value's length in bytes.
    pub bytes: u64,
}

/// The outcome of one signed op the hub delivered, kept (across restarts) until the hub
/// acknowledges its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedOpResult {
    /// The hub's id for the op.
    pub id: String,
    /// The nonce the op's blob names (read unverified, only to name it); `null` when
    /// the blob does not parse.
    pub nonce: Option<String>,
    /// One of `executed`, `refused`, `failed`, `skipped`, `held`, `malformed`,
    /// `not_executed`.
    pub outcome: String,
    /// The precise word: `executed`, `failed`, `already_applied`, `blocked`,
    /// `unsigned`, `malformed`, `malformed_entry`, or the refusal code
    /// (`pending_signature`, `guest_changed`, `replay`, `bad_signature` …).
    pub code: String,
    /// When the outcome was reached, RFC 3339 UTC.
    #[serde(with = "crate::base::time::rfc3339")]
    pub at: Timestamp,
}

/// How many signed-op results a report carries at most.
pub const SIGNED_OP_RESULTS_MAX: usize = 256;

/// How many audit entries a report carries at most.
pub(crate) const AUDIT_TAIL_LEN: usize = 50;

/// How many unresolved `pending_signature` entries a report carries at most.
pub const PENDING_SIGNATURES_MAX: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_status_maps_only_two_words() {
        assert_eq!(GuestStatus::from_proxmox("running"), GuestStatus::Running);
        assert_eq!(GuestStatus::from_proxmox("stopped"), GuestStatus::Stopped);
        for other in ["", "Running", "paused", "unknown"] {
            assert_eq!(GuestStatus::from_proxmox(other), GuestStatus::Unknown);
        }
        assert_eq!(
            serde_json::to_string(&GuestStatus::Unknown).unwrap(),
            "\"unknown\""
        );
    }

    #[test]
    fn spec_and_digest_are_omitted_not_null() {
        let g = GuestReport {
            vmid: 100,
            name: "web".into(),
            status: GuestStatus::Running,
            spec: None,
            digest: None,
        };
        let v = serde_json::to_value(&g).unwrap();
        assert!(v.get("spec").is_none(), "{v}");
        assert!(v.get("digest").is_none(), "{v}");
    }
}
