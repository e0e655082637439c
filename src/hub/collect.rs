//! The collector: one read-only pass over the node that becomes a [`HostReport`].
//!
//! It reads through two narrow traits, [`HostReader`] (Proxmox reads) and
//! [`CloudflaredProbe`] (the tunnel service's state), plus an [`AuditTail`] provider,
//! so the partial-failure policy is tested without a network:
//!
//! - node status or the guest list unreadable → [`CollectError`], no report this round
//!   (a report without them would tell the hub the host has no guests);
//! - one guest's config unreadable → that guest keeps its run status and loses only its
//!   `spec` and `digest`;
//! - a status other than `running`/`stopped` (including none) → `unknown`;
//! - the cloudflared probe failing → `unknown`;
//! - storages, one storage's content, the audit tail or the pending signatures
//!   unreadable → that collection (or that storage's part of it) is empty, with a
//!   warning in the log.
//!
//! The collector never writes anything, to Proxmox or elsewhere.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use super::report::{
    AUDIT_TAIL_LEN, AuditEntry, BackupVolume, CloudflaredStatus, GuestReport, GuestSpec,
    GuestStatus, HostMetrics, HostReport, PENDING_SIGNATURES_MAX, PbsSnapshot, StorageTarget,
};
use crate::base::time::{Clock, Timestamp};

/// The error a reader, probe or audit provider returns; its `Display` must carry no
/// secret (the Proxmox client's errors never do).
pub type ReadError = Box<dyn StdError + Send + Sync + 'static>;

/// One row of the node's LXC list, as the collector needs it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GuestRow {
    /// Guest id.
    pub vmid: u32,
    /// Name, if Proxmox sent one.
    pub name: Option<String>,
    /// Proxmox's status text, if any.
    pub status: Option<String>,
    /// Memory limit in bytes (`maxmem`).
    pub max_memory_bytes: Option<u64>,
    /// Root disk size in bytes (`maxdisk`).
    pub max_disk_bytes: Option<u64>,
    /// Proxmox's effective CPU count (`cpus`) when it is a whole number.
    pub cpus: Option<u32>,
}

/// What the collector reads from one guest's config.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuestConfigRow {
    /// `cores`, when the config sets it.
    pub cores: Option<u32>,
    /// The config `digest`: what an operator signs a destructive op on this guest for.
    pub digest: Option<String>,
}

/// One row of the node's storage list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StorageRow {
    /// Storage id.
    pub storage: String,
    /// Storage type (`dir`, `pbs`, ...).
    pub kind: String,
    /// Content types.
    pub content: Vec<String>,
    /// Active on this node.
    pub active: bool,
    /// Enabled.
    pub enabled: bool,
    /// Shared between nodes.
    pub shared: bool,
    /// Capacity in bytes.
    pub total_bytes: Option<u64>,
    /// Used bytes.
    pub used_bytes: Option<u64>,
    /// Available bytes.
    pub avail_bytes: Option<u64>,
}

/// One volume of a storage's backup content.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VolumeRow {
    /// Volume id.
    pub volid: String,
    /// Content type (`backup`, ...).
    pub content: String,
    /// Format (`tar.zst`, `pbs-ct`, ...).
    pub format: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Creation time, seconds since the epoch.
    pub ctime: Option<i64>,
    /// The guest it belongs to.
    pub vmid: Option<u32>,
    /// First line of its notes.
    pub notes: Option<String>,
    /// Protected from pruning.
    pub protected: bool,
    /// Last verification state (PBS).
    pub verification: Option<String>,
}

/// Read-only access to the node, as the collector needs it.
pub trait HostReader {
    /// The node name the reads are about.
    fn node(&self) -> String;
    /// The node's status mapped to metrics.
    fn host_metrics(&self) -> Result<HostMetrics, ReadError>;
    /// The node's LXC guests, in any order.
    fn guests(&self) -> Result<Vec<GuestRow>, ReadError>;
    /// The parts of a guest's config the report carries.
    fn guest_config(&self, vmid: u32) -> Result<GuestConfigRow, ReadError>;
    /// The node's storages.
    fn storages(&self) -> Result<Vec<StorageRow>, ReadError>;
    /// The backup volumes of one storage.
    fn backup_content(&self, storage: &str) -> Result<Vec<VolumeRow>, ReadError>;
}

/// The state of the `cloudflared` service.
pub trait CloudflaredProbe {
    /// The `systemctl is-active` word.
    fn is_active(&self) -> Result<String, ReadError>;
}

/// The source of the report's `audit_tail` and `pending_signatures`.
pub trait AuditTail: Send + Sync {
    /// The last `n` gate decisions, oldest first.
    fn last(&self, n: usize) -> Result<Vec<AuditEntry>, ReadError>;

    /// The unresolved `pending_signature` entries, oldest first (see
    /// [`super::report::HostReport::pending_signatures`]). A provider that keeps none
    /// reports none.
    fn pending(&self) -> Result<Vec<AuditEntry>, ReadError> {
        Ok(Vec::new())
    }
}

/// An audit provider with no entries (until the audit log exists).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAudit;

impl AuditTail for NoAudit {
    fn last(&self, _n: usize) -> Result<Vec<AuditEntry>, ReadError> {
        Ok(Vec::new())
    }
}

impl<F> AuditTail for F
where
    F: Fn(usize) -> Result<Vec<AuditEntry>, ReadError> + Send + Sync,
{
    fn last(&self, n: usize) -> Result<Vec<AuditEntry>, ReadError> {
        self(n)
    }
}

/// Why no report can be built this round.
#[derive(Debug)]
#[non_exhaustive]
pub enum CollectError {
    /// The node's status could not be read: there is nothing to report on the host.
    NodeStatus(ReadError),
    /// The guest list could not be read: a report without it would claim no guests.
    Guests(ReadError),
}

impl fmt::Display for CollectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CollectError::NodeStatus(e) => write!(f, "reading the node status failed: {e}"),
            CollectError::Guests(e) => write!(f, "reading the guest list failed: {e}"),
        }
    }
}

impl StdError for CollectError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            CollectError::NodeStatus(e) | CollectError::Guests(e) => Some(&**e),
        }
    }
}

/// The words `systemctl is-active` prints for a unit's state.
const SYSTEMD_STATES: &[&str] = &[
    "active",
    "inactive",
    "failed",
    "activating",
    "deactivating",
    "reloading",
    "maintenance",
    "refreshing",
];

/// Builds reports from a reader, a probe and an audit provider.
pub struct Collector<R, P> {
    reader: R,
    probe: P,
    audit: Arc<dyn AuditTail>,
    clock: Arc<dyn Clock>,
    host_id: String,
    agent_version: String,
}

impl<R, P> fmt::Debug for Collector<R, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collector")
            .field("host_id", &self.host_id)
            .field("agent_version", &self.agent_version)
            .finish_non_exhaustive()
    }
}

impl<R: HostReader, P: CloudflaredProbe> Collector<R, P> {
    /// A collector reporting as `host_id`, stamping reports with `clock`.
    pub fn new(
        host_id: impl Into<String>,
        agent_version: impl Into<String>,
        reader: R,
        probe: P,
        audit: Arc<dyn AuditTail>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Collector {
            reader,
            probe,
            audit,
            clock,
            host_id: host_id.into(),
            agent_version: agent_version.into(),
        }
    }

    /// The reader, for callers that need it for other reads.
    pub fn reader(&self) -> &R {
        &self.reader
    }

    /// One collection pass.
    pub fn collect(&self) -> Result<HostReport, CollectError> {
        let reported_at = self.clock.now();
        let host = self
            .reader
            .host_metrics()
            .map_err(CollectError::NodeStatus)?;
        let rows = self.reader.guests().map_err(CollectError::Guests)?;
        let guests = self.guests(rows);
        let cloudflared = self.cloudflared();
        let (storage_targets, backups, pbs_snapshots) = self.storage();
        let audit_tail = match self.audit.last(AUDIT_TAIL_LEN) {
            Ok(mut v) => {
                // Keep the newest entries if a provider hands back more than asked.
                let excess = v.len().saturating_sub(AUDIT_TAIL_LEN);
                v.drain(..excess);
                v
            }
            Err(e) => {
                crate::warn!(
                    collect_audit_tail_unreadable,
                    "audit tail unreadable; reporting none",
                    error = e
                );
                Vec::new()
            }
        };
        let pending_signatures = match self.audit.pending() {
            Ok(mut v) => {
                let excess = v.len().saturating_sub(PENDING_SIGNATURES_MAX);
                v.drain(..excess);
                v
            }
            Err(e) => {
                crate::warn!(
                    collect_pending_signatures_unreadable,
                    "pending signatures unreadable; reporting none",
                    error = e
                );
                Vec::new()
            }
        };
        Ok(HostReport {
            host_id: self.host_id.clone(),
            agent_version: self.agent_version.clone(),
            reported_at,
            host,
            guests,
            cloudflared,
            storage_targets,
            backups,
            restore_tests: Vec::new(),
            pbs_snapshots,
            audit_tail,
            pending_signatures,
        })
    }

    fn guests(&self, mut rows: Vec<GuestRow>) -> Vec<GuestReport> {
        rows.sort_by_key(|r| r.vmid);
        rows.into_iter()
            .map(|row| {
                let status = GuestStatus::from_proxmox(row.status.as_deref().unwrap_or(""));
                let (spec, digest) = match self.reader.guest_config(row.vmid) {
                    Ok(c) => (spec_of(&row, c.cores), c.digest),
                    Err(e) => {
                        crate::warn!(
                            collect_guest_config_unreadable,
                            "guest config unreadable; reporting it without spec",
                            vmid = row.vmid,
                            error = e
                        );
                        (None, None)
                    }
                };
                GuestReport {
                    vmid: row.vmid,
                    name: row
                        .name
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| format!("CT{}", row.vmid)),
                    status,
                    spec,
                    digest,
                }
            })
            .collect()
    }

    fn cloudflared(&self) -> CloudflaredStatus {
        let status = match self.probe.is_active() {
            Ok(word) => {
                let word = word.trim();
                if SYSTEMD_STATES.contains(&word) {
                    word.to_owned()
                } else {
                    crate::warn!(
                        cloudflared_state_unknown,
                        "cloudflared probe answered an unknown state",
                        state = word
                    );
                    "unknown".to_owned()
                }
            }
            Err(e) => {
                crate::warn!(
                    cloudflared_probe_failed,
                    "cloudflared probe failed; reporting unknown",
                    error = e
                );
                "unknown".to_owned()
            }
        };
        CloudflaredStatus { status }
    }

    fn storage(&self) -> (Vec<StorageTarget>, Vec<BackupVolume>, Vec<PbsSnapshot>) {
        let mut rows = match self.reader.storages() {
            Ok(rows) => rows,
            Err(e) => {
                crate::warn!(
                    collect_storage_list_unreadable,
                    "storage list unreadable; reporting no storages or backups",
                    error = e
                );
                return (Vec::new(), Vec::new(), Vec::new());
            }
        };
        rows.sort_by(|a, b| a.storage.cmp(&b.storage));
        let mut backups = Vec::new();
        let mut pbs = Vec::new();
        for row in &rows {
            let holds_backups = row.content.iter().any(|c| c == "backup");
            if !(holds_backups && row.active && row.enabled) {
                continue;
            }
            let volumes = match self.reader.backup_content(&row.storage) {
                Ok(v) => v,
                Err(e) => {
                    crate::warn!(
                        collect_storage_content_unreadable,
                        "storage content unreadable; its backups are left out",
                        storage = row.storage,
                        error = e
                    );
                    continue;
                }
            };
            for vol in volumes {
                if row.kind == "pbs" {
                    if vol.format == "pbs-ct" {
                        pbs.push(PbsSnapshot {
                            storage: row.storage.clone(),
                            volid: vol.volid,
                            vmid: vol.vmid,
                            size_bytes: vol.size_bytes,
                            created_at: vol.ctime.map(Timestamp),
                            protected: vol.protected,
                            verification: vol.verification,
                            notes: vol.notes,
                        });
                    }
                } else if vol.content == "backup" {
                    backups.push(BackupVolume {
                        storage: row.storage.clone(),
                        volid: vol.volid,
                        vmid: vol.vmid,
                        format: vol.format,
                        size_bytes: vol.size_bytes,
                        created_at: vol.ctime.map(Timestamp),
                        protected: vol.protected,
                        notes: vol.notes,
                    });
                }
            }
        }
        backups.sort_by(|a, b| (&a.storage, &a.volid).cmp(&(&b.storage, &b.volid)));
        pbs.sort_by(|a, b| (&a.storage, &a.volid).cmp(&(&b.storage, &b.volid)));
        let targets = rows
            .into_iter()
            .map(|r| {
                let mut content = r.content;
                content.sort();
                content.dedup();
                StorageTarget {
                    storage: r.storage,
                    kind: r.kind,
                    content,
                    active: r.active,
                    enabled: r.enabled,
                    shared: r.shared,
                    total_bytes: r.total_bytes,
                    used_bytes: r.used_bytes,
                    avail_bytes: r.avail_bytes,
                }
            })
            .collect();
        (targets, backups, pbs)
    }
}

/// A guest's spec when every part of it is known: cores from the config (Proxmox's
/// effective count when the config leaves it unset), memory and disk from the list.
fn spec_of(row: &GuestRow, config_cores: Option<u32>) -> Option<GuestSpec> {
    Some(GuestSpec {
        cores: config_cores.or(row.cpus)?,
        memory_bytes: row.max_memory_bytes?,
        disk_bytes: row.max_disk_bytes?,
    })
}
