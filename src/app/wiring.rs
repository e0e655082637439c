//! The live wiring of the hub loop: the real Proxmox client as the collector's
//! [`HostReader`], `systemctl is-active cloudflared` through the privileged runner as
//! its [`CloudflaredProbe`], and the construction of both clients from the
//! configuration. Shared by the daemon and `selftest hub`.
//!
//! It also builds the hub's event stream, which feeds the same shared envelope and
//! announcement the report loop does.
//!
//! Only reads happen here: the reader calls read endpoints of the Proxmox client and
//! the probe runs one read-only `systemctl` query. Nothing here mutates Proxmox or
//! writes a file.

use std::fmt;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use super::results::{ResultsFeed, apply_acks};
use crate::base::shutdown::Shutdown;
use crate::base::time::SystemClock;
use crate::config::{Config, ProxmoxConfig};
use crate::hub::client::{HubClient, HubClientError, HubClientOptions, HubSetupError};
use crate::hub::collect::{
    AuditTail, CloudflaredProbe, CollectError, Collector, HostReader, NoOpResults, NoPause,
    OpResultsSource, PauseSource, ReadError,
};
use crate::hub::events::{EventStream, EventsClient};
use crate::hub::ops_feed::Announcement;
use crate::hub::poller::SharedEnvelope;
use crate::hub::report::{CpuMetrics, HostMetrics, LoadAverage, Usage};
use crate::hub::round::HubRound;
use crate::net::TlsTrust;
use crate::proxmox::privileged::{Privileged, Programs, SystemRunner};
use crate::proxmox::{self, Client, ClientOptions};

/// The unit whose state the report carries.
pub(crate) const CLOUDFLARED_UNIT: &str = "cloudflared";

/// How long the cloudflared probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The Proxmox client as the collector reads it.
#[derive(Debug, Clone)]
pub struct ProxmoxReader(pub Client);

fn boxed(e: proxmox::ProxmoxError) -> ReadError {
    Box::new(e)
}

impl HostReader for ProxmoxReader {
    fn node(&self) -> String {
        self.0.node().to_owned()
    }

    fn host_metrics(&self) -> Result<HostMetrics, ReadError> {
        let s = self.0.node_status().map_err(boxed)?;
        let cpus = s
            .cpuinfo
            .as_ref()
            .and_then(|c| c.cpus)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0);
        Ok(HostMetrics {
            node: self.node(),
            pve_version: s.pve_version().unwrap_or(&s.pveversion).to_owned(),
            uptime_seconds: s.uptime,
            cpu: CpuMetrics { usage: s.cpu, cpus },
            memory: Usage {
                total_bytes: s.memory.total,
                used_bytes: s.memory.used,
            },
            rootfs: Usage {
                total_bytes: s.rootfs.total,
                used_bytes: s.rootfs.used,
            },
            load: LoadAverage {
                avg1: s.loadavg[0],
                avg5: s.loadavg[1],
                avg15: s.loadavg[2],
            },
        })
    }

    fn guests(&self) -> Result<Vec<proxmox::Guest>, ReadError> {
        self.0.list_lxc().map_err(boxed)
    }

    fn guest_config(&self, vmid: u32) -> Result<proxmox::GuestConfig, ReadError> {
        self.0.guest_config(vmid).map_err(boxed)
    }

    fn storages(&self) -> Result<Vec<proxmox::StorageStatus>, ReadError> {
        self.0.node_storage().map_err(boxed)
    }

    fn backup_content(&self, storage: &str) -> Result<Vec<proxmox::Volume>, ReadError> {
        self.0
            .storage_content(storage, Some("backup"))
            .map_err(boxed)
    }
}

/// `systemctl is-active cloudflared` through the privileged backend's runner.
#[derive(Debug)]
pub struct SystemctlProbe(Privileged<SystemRunner>);

impl SystemctlProbe {
    /// The probe on the host's `systemctl`, with a short timeout.
    pub fn new() -> Self {
        let runner = SystemRunner {
            timeout: PROBE_TIMEOUT,
            max_output: 4096,
        };
        SystemctlProbe(Privileged::with_programs(runner, Programs::detect()))
    }
}

impl Default for SystemctlProbe {
    fn default() -> Self {
        SystemctlProbe::new()
    }
}

impl CloudflaredProbe for SystemctlProbe {
    fn is_active(&self) -> Result<String, ReadError> {
        self.0
            .service_is_active(CLOUDFLARED_UNIT)
            .map_err(|e| Box::new(e) as ReadError)
    }
}

/// The hub loop's round on the live clients.
pub(crate) type LiveRound = HubRound<ProxmoxReader, SystemctlProbe>;

/// Why the live clients could not be built from the configuration.
#[derive(Debug)]
#[non_exhaustive]
pub enum LiveSetupError {
    /// The configuration has no `proxmox` section.
    NoProxmoxSection,
    /// The `proxmox` section has no token secret.
    NoTokenSecret,
    /// The Proxmox client refused its options or trust (e.g. unreadable CA file).
    Proxmox(proxmox::ProxmoxError),
    /// The hub client could not be built.
    Hub(HubSetupError),
}

impl fmt::Display for LiveSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LiveSetupError::NoProxmoxSection => f.write_str("proxmox: section is missing"),
            LiveSetupError::NoTokenSecret => {
                f.write_str("proxmox.token_secret: no token secret configured")
            }
            LiveSetupError::Proxmox(e) => e.fmt(f),
            LiveSetupError::Hub(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LiveSetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LiveSetupError::Proxmox(e) => Some(e),
            LiveSetupError::Hub(e) => Some(e),
            _ => None,
        }
    }
}

/// Builds the Proxmox client from the `proxmox` section.
pub(crate) fn proxmox_client(cfg: &ProxmoxConfig) -> Result<Client, LiveSetupError> {
    let secret = cfg
        .token_secret
        .clone()
        .ok_or(LiveSetupError::NoTokenSecret)?;
    let trust: TlsTrust = cfg.tls.clone();
    let mut options = ClientOptions::new(&cfg.url, &cfg.node, &cfg.token_id, secret, trust);
    options.timeout = Duration::from_secs(cfg.timeout_seconds);
    options.connect_timeout = options.timeout.min(Duration::from_secs(10));
    Client::new(options).map_err(LiveSetupError::Proxmox)
}

/// Logs, for each section that turns certificate verification off, the warning the
/// operator must see at every start.
pub(crate) fn warn_insecure_tls(cfg: &Config) {
    let sections = [
        ("proxmox", cfg.proxmox.as_ref().map(|p| &p.tls)),
        ("hub", cfg.hub.as_ref().map(|h| &h.tls)),
    ];
    for (section, tls) in sections {
        if tls == Some(&TlsTrust::InsecureSkipVerify)
            && let Some(text) = TlsTrust::InsecureSkipVerify.warning()
        {
            crate::warn!(tls_verification_disabled, text, section = section);
        }
    }
}

/// Builds the hub loop's round from the configuration: the Proxmox reader, the
/// cloudflared probe, `audit` for the audit tail, and the hub client.
pub fn hub_round(cfg: &Config, audit: Arc<dyn AuditTail>) -> Result<LiveRound, LiveSetupError> {
    let proxmox = cfg
        .proxmox
        .as_ref()
        .ok_or(LiveSetupError::NoProxmoxSection)?;
    hub_round_with(
        cfg,
        proxmox_client(proxmox)?,
        audit,
        Arc::new(NoOpResults),
        Arc::new(crate::hub::NoSignerPolicy),
        Arc::new(NoPause),
    )
}

/// [`hub_round`] reading through `proxmox`, a client the caller already has (the
/// daemon shares one, and so its connections, between all its workers), and the
/// signed-op results from `results`.
pub(crate) fn hub_round_with(
    cfg: &Config,
    proxmox: Client,
    audit: Arc<dyn AuditTail>,
    results: Arc<dyn OpResultsSource>,
    signers: Arc<dyn crate::hub::SignerPolicySource>,
    pause: Arc<dyn PauseSource>,
) -> Result<LiveRound, LiveSetupError> {
    let hub = cfg
        .hub
        .as_ref()
        .ok_or(LiveSetupError::Hub(HubSetupError::NoHubSection))?;
    let reader = ProxmoxReader(proxmox);
    let client = HubClient::from_config(hub).map_err(LiveSetupError::Hub)?;
    let collector = Collector::new(
        cfg.host_id.clone(),
        crate::base::version::VERSION,
        reader,
        SystemctlProbe::new(),
        audit,
        Arc::new(SystemClock),
    )
    .with_op_results(results)
    .with_health(Arc::new(super::health::HostHealth::new()))
    .with_signer_policy(signers)
    .with_pause(pause)
    .with_restore_tests(Arc::new(super::restore_tests::RestoreTestsFeed::new(
        cfg.state_dir.clone(),
    )));
    Ok(HubRound::new(collector, client))
}

/// Why `selftest hub` failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SelftestError {
    /// The clients could not be built from the configuration.
    Setup(LiveSetupError),
    /// No report could be collected.
    Collect(CollectError),
    /// The hub did not accept the report (it was printed first).
    Report(HubClientError),
    /// Writing the output failed.
    Output(std::io::Error),
}

impl SelftestError {
    /// Whether the failure is in the configuration (exit 2) rather than the check
    /// itself (exit 1).
    pub fn is_configuration(&self) -> bool {
        matches!(self, SelftestError::Setup(_))
    }
}

impl fmt::Display for SelftestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelftestError::Setup(e) => write!(f, "selftest hub: {e}"),
            SelftestError::Collect(e) => write!(f, "selftest hub: {e}"),
            SelftestError::Report(e) => write!(f, "selftest hub: {e}"),
            SelftestError::Output(e) => write!(f, "selftest hub: writing output: {e}"),
        }
    }
}

impl std::error::Error for SelftestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SelftestError::Setup(e) => Some(e),
            SelftestError::Collect(e) => Some(e),
            SelftestError::Report(e) => Some(e),
            SelftestError::Output(e) => Some(e),
        }
    }
}

/// `selftest hub`: one collect and one report; prints the report, then the hub's
/// envelope, as pretty JSON under a heading each.
pub fn selftest_hub(cfg: &Config, out: &mut dyn Write) -> Result<(), SelftestError> {
    warn_insecure_tls(cfg);
    let audit: Arc<dyn AuditTail> = Arc::new(crate::hub::collect::NoAudit);
    let round = hub_round(cfg, audit).map_err(SelftestError::Setup)?;
    let report = round.collect().map_err(SelftestError::Collect)?;
    let pretty = serde_json::to_string_pretty(&report)
        .map_err(|e| SelftestError::Report(HubClientError::Encode(e)))?;
    writeln!(out, "host report:\n{pretty}").map_err(SelftestError::Output)?;
    let envelope = round.send(&report).map_err(SelftestError::Report)?;
    let pretty = serde_json::to_string_pretty(&envelope.to_json())
        .map_err(|e| SelftestError::Report(HubClientError::Encode(e)))?;
    writeln!(
        out,
        "control envelope from {}:\n{pretty}",
        round.client().endpoint()
    )
    .map_err(SelftestError::Output)?;
    Ok(())
}

/// The hub's event stream, when the configuration has a hub and
/// `hub.event_wait_seconds` is not 0. Each event updates `envelope` and raises
/// `announcement` as a report's answer would; the results it acknowledges are dropped
/// from `results` (by id: an event answers no particular report).
pub(crate) fn event_stream(
    cfg: &Config,
    envelope: SharedEnvelope,
    announcement: Announcement,
    results: Arc<ResultsFeed>,
    shutdown: &Shutdown,
) -> Result<Option<EventStream<Shutdown>>, LiveSetupError> {
    let Some(hub) = cfg.hub.as_ref().filter(|h| h.event_wait_seconds > 0) else {
        return Ok(None);
    };
    let options = HubClientOptions::from_config(hub).map_err(LiveSetupError::Hub)?;
    let client = EventsClient::new(&options, Duration::from_secs(hub.event_wait_seconds))
        .map_err(LiveSetupError::Hub)?;
    let acks = move |ids: &[String]| {
        if let Some(r) = results.results() {
            apply_acks(r, ids, None);
        }
    };
    Ok(Some(
        EventStream::new(client, envelope, announcement, shutdown.clone())
            .with_acks(Box::new(acks)),
    ))
}
