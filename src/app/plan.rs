//! `felhom-agent plan`: what the next reconcile pass would do, with the gate's word on
//! each action, and nothing executed.
//!
//! It reads the desired state, the guests and the journal (read-only, no lock taken,
//! no torn tail cut), and never sends a mutation, verifies a signature, burns a nonce,
//! audits or writes anything.

use std::collections::HashMap;
use std::fmt;

use super::reconciler::read_only_provider;
use super::wiring::{self, LiveSetupError};
use crate::base::time::{Clock, SystemClock};
use crate::config::Config;
use crate::proxmox;
use crate::reconcile::action::intent_for;
use crate::reconcile::blast::is_disruptive;
use crate::reconcile::desired::DesiredError;
use crate::reconcile::engine::read_actual;
use crate::reconcile::gate::{Decision, dry_run};
use crate::reconcile::journal::{Journal, JournalError, JournalView};
use crate::reconcile::normalize::Normalizers;
use crate::reconcile::plan::{Plan, plan};

/// Why `felhom-agent plan` could not show a plan.
#[derive(Debug)]
#[non_exhaustive]
pub enum PlanReportError {
    /// The configuration lacks what a plan needs (the `proxmox` section, its secret).
    Setup(LiveSetupError),
    /// The desired state could not be read.
    Desired(DesiredError),
    /// The guest list could not be read from Proxmox.
    ListGuests(proxmox::ProxmoxError),
    /// The journal could not be read.
    Journal(JournalError),
    /// Writing the report failed.
    Output(std::io::Error),
}

impl fmt::Display for PlanReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanReportError::Setup(e) => write!(f, "plan: {e}"),
            PlanReportError::Desired(e) => write!(f, "plan: {e}"),
            PlanReportError::ListGuests(e) => write!(f, "plan: cannot list guests: {e}"),
            PlanReportError::Journal(e) => write!(f, "plan: {e}"),
            PlanReportError::Output(e) => write!(f, "plan: cannot write the report: {e}"),
        }
    }
}

impl std::error::Error for PlanReportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PlanReportError::Setup(e) => Some(e),
            PlanReportError::Desired(e) => Some(e),
            PlanReportError::ListGuests(e) => Some(e),
            PlanReportError::Output(e) => Some(e),
            PlanReportError::Journal(e) => Some(e),
        }
    }
}

/// What `felhom-agent plan` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSummary {
    /// The plan.
    pub plan: Plan,
    /// Actions the gate would allow.
    pub allowed: usize,
    /// Actions the gate would refuse (with its code).
    pub refused: Vec<(u32, String)>,
    /// Guests whose disruptive action the blast-radius limit would hold `rate_limited`
    /// (counted from the journal's window; a pending `resume --rate-limit` is not).
    pub rate_limited: Vec<u32>,
}

/// `felhom-agent plan`: reads desired and actual state, and writes each action the
/// next pass would take with the gate's word on it (the gate's dry run: no signature
/// verified, no nonce burnt, nothing audited). Executes nothing and writes nothing: the
/// journal is read without a lock and without cutting a torn tail, so it is safe beside
/// a running daemon.
pub fn plan_report(
    cfg: &Config,
    out: &mut dyn std::io::Write,
) -> Result<PlanSummary, PlanReportError> {
    let section = cfg
        .proxmox
        .as_ref()
        .ok_or(PlanReportError::Setup(LiveSetupError::NoProxmoxSection))?;
    let client = wiring::proxmox_client(section).map_err(PlanReportError::Setup)?;
    let desired = read_only_provider(cfg)
        .desired()
        .map_err(PlanReportError::Desired)?;
    let actual =
        read_actual(&client, cfg.reconcile.max_parallel).map_err(PlanReportError::ListGuests)?;
    let planned = plan(&desired, &actual, &Normalizers::default());

    let journal = read_journal(&cfg.state_dir.join("journal.log"))?;
    let in_flight: HashMap<u32, String> = journal
        .in_flight()
        .into_iter()
        .map(|r| (r.vmid, r.op_id))
        .collect();

    let w = |out: &mut dyn std::io::Write, line: String| {
        writeln!(out, "{line}").map_err(PlanReportError::Output)
    };
    w(
        out,
        format!(
            "desired generation {}: {} managed guest(s); {} guest(s) on node {}",
            desired.generation,
            desired.guests.len(),
            actual.guests.len(),
            section.node
        ),
    )?;
    let mut allowed = 0;
    let mut refused = Vec::new();
    let mut rate_limited = Vec::new();
    let limit = usize::try_from(cfg.reconcile.max_disruptive_per_hour).unwrap_or(usize::MAX);
    let mut in_window = journal.disruptive_since(SystemClock.now());
    for a in &planned.actions {
        let word = match dry_run(&intent_for(&cfg.host_id, a), &journal) {
            Decision::Allowed { reason, .. } => {
                allowed += 1;
                format!("allowed ({})", reason.code())
            }
            Decision::Refused { reason } => {
                refused.push((a.vmid, reason.code().to_owned()));
                format!("refused ({})", reason.code())
            }
        };
        let mut line = format!(
            "{:>6}  {:<10}  {word}  {}",
            a.vmid,
            a.kind.as_str(),
            a.reason
        );
        if !a.params.is_empty() {
            let params: Vec<String> = a
                .params
                .iter()
                .map(|(k, v)| format!("{k}={}", v.escape_debug()))
                .collect();
            line.push_str(&format!("  [{}]", params.join(", ")));
        }
        if let Some(op) = in_flight.get(&a.vmid) {
            line.push_str(&format!("  (deferred: op {op} in flight)"));
        } else if is_disruptive(
            a,
            actual.guests.get(&a.vmid).and_then(|g| g.config.as_ref()),
        ) {
            if in_window < limit {
                in_window += 1;
            } else {
                rate_limited.push(a.vmid);
                line.push_str(&format!(
                    "  (held: rate_limited, {in_window} of {limit} disruptive this hour)"
                ));
            }
        }
        w(out, line)?;
    }
    for s in &planned.skipped {
        w(
            out,
            format!("{:>6}  {:<10}  {}: {}", s.vmid, "skip", s.code, s.why),
        )?;
    }
    w(
        out,
        format!(
            "{} action(s) planned: {allowed} allowed, {} refused, {} rate_limited; nothing was executed",
            planned.actions.len(),
            refused.len(),
            rate_limited.len()
        ),
    )?;
    Ok(PlanSummary {
        plan: planned,
        allowed,
        refused,
        rate_limited,
    })
}

/// The journal as it is on disk; a missing one is empty (nothing has run yet).
fn read_journal(path: &std::path::Path) -> Result<JournalView, PlanReportError> {
    match Journal::open_read_only(path) {
        Ok(view) => Ok(view),
        Err(JournalError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(JournalView::default())
        }
        Err(e) => Err(PlanReportError::Journal(e)),
    }
}
