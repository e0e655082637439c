//! The collector: one read-only pass over the node that becomes a [`HostReport`].
//!
//! It reads through two narrow traits, [`HostReader`] (Proxmox reads) and
//! [`CloudflaredProbe`] (the tunnel service's state), plus an [`AuditTail`] provider and
//! an [`OpResultsSource`], so the partial-failure policy is tested without a network:
//!
//! - node status or the guest list unreadable → [`CollectError`], no report this round
//!   (a report without them would tell the hub the host has no guests);
//! - one guest's config unreadable → that guest keeps its run status and loses only its
//!   `spec` and `digest`;
//! - a status other than `running`/`stopped` (including none) → `unknown`;
//! - the cloudflared probe failing → `unknown`;
//! - a [`HealthProbe`] failing (or none wired) → that half of `health` `unknown`, empty;
//! - storages, one storage's content, the audit tail, the pending signatures or the
//!   signed-op results unreadable → that collection (or that storage's part of it) is
//!   empty, with a warning in the log.
//!
//! The collector never writes anything, to Proxmox or elsewhere.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use super::report::{
    AUDIT_TAIL_LEN, AuditEntry, BackupVolume, CloudflaredStatus, GuestReport, GuestSpec,
    GuestStatus, HostMetrics, HostReport, PENDING_SIGNATURES_MAX, PauseReport, PbsSnapshot,
    RestoreTest, SIGNED_OP_RESULTS_MAX, SignedOpResult, SignerPolicyReport, StorageTarget,
};
use super::report::{DiskReport, Health, PROBE_OK, SensorReport};
use crate::base::time::{Clock, Timestamp};
use crate::proxmox::{DiskHealth, Guest, GuestConfig, SensorReading, StorageStatus, Volume};

/// The error a reader, probe or audit provider returns; its `Display` must carry no
/// secret (the Proxmox client's errors never do).
pub type ReadError = Box<dyn StdError + Send + Sync + 'static>;

/// Read-only access to the node, as the collector needs it.
pub trait HostReader {
    /// The node name the reads are about.
    fn node(&self) -> String;
    /// The node's status mapped to metrics.
    fn host_metrics(&self) -> Result<HostMetrics, ReadError>;
    /// The node's LXC guests, in any order.
    fn guests(&self) -> Result<Vec<Guest>, ReadError>;
    /// A guest's config (the report carries its `cores` and `digest`).
    fn guest_config(&self, vmid: u32) -> Result<GuestConfig, ReadError>;
    /// The node's storages.
    fn storages(&self) -> Result<Vec<StorageStatus>, ReadError>;
    /// The backup volumes of one storage.
    fn backup_content(&self, storage: &str) -> Result<Vec<Volume>, ReadError>;
}

/// The state of the `cloudflared` service.
pub trait CloudflaredProbe {
    /// The `systemctl is-active` word.
    fn is_active(&self) -> Result<String, ReadError>;
}

/// The host's health readings (the report's `health`). Each call may run programs;
/// an implementation bounds how long it takes.
pub trait HealthProbe: Send + Sync {
    /// SMART of each whole disk; `Err` when the disks could not be listed.
    fn disks(&self) -> Result<Vec<DiskHealth>, ReadError>;
    /// The temperature sensors; `Err` when the probe failed.
    fn sensors(&self) -> Result<Vec<SensorReading>, ReadError>;
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

/// The source of the report's `signed_op_results`: read only, so collecting a report
/// never changes what is kept (acknowledgements come back through the envelope and are
/// applied by whoever owns the results).
pub trait OpResultsSource: Send + Sync {
    /// The results not yet acknowledged, oldest first.
    fn signed_op_results(&self) -> Result<Vec<SignedOpResult>, ReadError>;
}

/// A results source with no results (a round with no signed-ops channel behind it).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoOpResults;

impl OpResultsSource for NoOpResults {
    fn signed_op_results(&self) -> Result<Vec<SignedOpResult>, ReadError> {
        Ok(Vec::new())
    }
}

/// The source of the report's `signer_policy`: the policy version and fingerprints.
pub trait SignerPolicySource: Send + Sync {
    /// The policy held now; `None` when no signer is configured (or not known yet).
    fn signer_policy(&self) -> Option<SignerPolicyReport>;
}

/// No signer policy to report.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSignerPolicy;

impl SignerPolicySource for NoSignerPolicy {
    fn signer_policy(&self) -> Option<SignerPolicyReport> {
        None
    }
}

/// The source of the report's `paused`: the operator's local pause, if set.
pub trait PauseSource: Send + Sync {
    /// The pause in force now, if any.
    fn paused(&self) -> Option<PauseReport>;
}

/// A pause source that is never paused.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPause;

impl PauseSource for NoPause {
    fn paused(&self) -> Option<PauseReport> {
        None
    }
}

impl SignerPolicySource for crate::authz::SignerSet {
    fn signer_policy(&self) -> Option<SignerPolicyReport> {
        let p = self.policy();
        Some(SignerPolicyReport {
            version: p.version,
            fingerprints: p.fingerprints(),
        })
    }
}

/// The source of the report's `restore_tests`: the newest results, oldest first.
pub trait RestoreTestsSource: Send + Sync {
    /// The results to report (at most [`super::report::RESTORE_TESTS_MAX`] are sent).
    fn restore_tests(&self) -> Vec<RestoreTest>;
}

/// No restore tests (none configured).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRestoreTests;

impl RestoreTestsSource for NoRestoreTests {
    fn restore_tests(&self) -> Vec<RestoreTest> {
        Vec::new()
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
    results: Arc<dyn OpResultsSource>,
    health: Option<Arc<dyn HealthProbe>>,
    signers: Arc<dyn SignerPolicySource>,
    pause: Arc<dyn PauseSource>,
    restore_tests: Arc<dyn RestoreTestsSource>,
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
            results: Arc::new(NoOpResults),
            health: None,
            signers: Arc::new(NoSignerPolicy),
            pause: Arc::new(NoPause),
            restore_tests: Arc::new(NoRestoreTests),
            clock,
            host_id: host_id.into(),
            agent_version: agent_version.into(),
        }
    }

    /// Reads the report's `signed_op_results` from `results` (none without it).
    pub fn with_op_results(mut self, results: Arc<dyn OpResultsSource>) -> Self {
        self.results = results;
        self
    }

    /// Reads the report's `health` from `probe` (both halves `unknown` without it).
    pub fn with_health(mut self, probe: Arc<dyn HealthProbe>) -> Self {
        self.health = Some(probe);
        self
    }

    /// Reads the report's `signer_policy` from `signers` (none without it).
    pub fn with_signer_policy(mut self, signers: Arc<dyn SignerPolicySource>) -> Self {
        self.signers = signers;
        self
    }

    /// Reads the report's `paused` from `pause` (never paused without it).
    pub fn with_pause(mut self, pause: Arc<dyn PauseSource>) -> Self {
        self.pause = pause;
        self
    }

    /// Reads the report's `restore_tests` from `source` (none without it).
    pub fn with_restore_tests(mut self, source: Arc<dyn RestoreTestsSource>) -> Self {
        self.restore_tests = source;
        self
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
        let signed_op_results = match self.results.signed_op_results() {
            Ok(mut v) => {
                let excess = v.len().saturating_sub(SIGNED_OP_RESULTS_MAX);
                v.drain(..excess);
                v
            }
            Err(e) => {
                crate::warn!(
                    collect_signed_op_results_unreadable,
                    "signed op results unreadable; reporting none",
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
            restore_tests: {
                let mut all = self.restore_tests.restore_tests();
                let excess = all.len().saturating_sub(super::report::RESTORE_TESTS_MAX);
                all.drain(..excess);
                all
            },
            pbs_snapshots,
            audit_tail,
            pending_signatures,
            signed_op_results,
            health: self.health(),
            signer_policy: self.signers.signer_policy(),
            paused: self.pause.paused(),
        })
    }

    fn health(&self) -> Health {
        let Some(probe) = &self.health else {
            return Health::unknown();
        };
        let mut health = Health::unknown();
        match probe.disks() {
            Ok(disks) => {
                health.disks_state = PROBE_OK.to_owned();
                health.disks = disks
                    .into_iter()
                    .take(crate::proxmox::MAX_DISKS)
                    .map(|d| DiskReport {
                        device: d.device,
                        model: d.model,
                        smart_ok: d.smart_ok,
                        temperature_c: d.temperature_c,
                        reallocated_sectors: d.reallocated_sectors,
                    })
                    .collect();
            }
            Err(e) => crate::warn!(
                health_disks_unknown,
                "disk health probe failed; reporting unknown",
                error = e
            ),
        }
        match probe.sensors() {
            Ok(sensors) => {
                health.sensors_state = PROBE_OK.to_owned();
                health.sensors = sensors
                    .into_iter()
                    .take(crate::proxmox::MAX_SENSORS)
                    .map(|s| SensorReport {
                        name: s.name,
                        celsius: s.celsius,
                    })
                    .collect();
            }
            Err(e) => crate::warn!(
                health_sensors_unknown,
                "sensors probe failed; reporting unknown",
                error = e
            ),
        }
        health
    }

    fn guests(&self, mut rows: Vec<Guest>) -> Vec<GuestReport> {
        rows.sort_by_key(|r| r.vmid);
        rows.into_iter()
            .map(|row| {
                let status = GuestStatus::from_proxmox(row.status.as_str());
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
                            size_bytes: vol.size,
                            created_at: created_at(vol.ctime),
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
                        size_bytes: vol.size,
                        created_at: created_at(vol.ctime),
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
                    total_bytes: r.total,
                    used_bytes: r.used,
                    avail_bytes: r.avail,
                }
            })
            .collect();
        (targets, backups, pbs)
    }
}

/// A guest's spec when every part of it is known: cores from the config (Proxmox's
/// effective count when the config leaves it unset), memory and disk from the list.
fn spec_of(row: &Guest, config_cores: Option<u32>) -> Option<GuestSpec> {
    // A fractional `cpus` is a CPU limit, not a core count.
    let effective = row
        .cpus
        .filter(|c| c.fract() == 0.0 && *c >= 1.0 && *c <= f64::from(u32::MAX))
        .map(|c| c as u32);
    Some(GuestSpec {
        cores: config_cores.or(effective)?,
        memory_bytes: row.maxmem?,
        disk_bytes: row.maxdisk?,
    })
}

/// A volume's creation time, when Proxmox sent one that fits a timestamp.
fn created_at(ctime: Option<u64>) -> Option<Timestamp> {
    ctime.and_then(|t| i64::try_from(t).ok()).map(Timestamp)
}
