//! `felhom-agent plan`: what the next reconcile pass would do, with the gate's word on
//! each action, and nothing executed.
//!
//! It reads the desired state, the guests and the journal (read-only, no lock taken,
//! no torn tail cut), and never sends a mutation, verifies a signature, burns a nonce,
//! audits or writes anything.

use std::collections::HashMap;
use std::fmt;

use super::command::{Format, visible, write_json};
use super::reconciler::read_only_provider;
use super::wiring::{self, LiveSetupError};
use crate::base::time::{Clock, SystemClock};
use crate::config::Config;
use crate::proxmox;
use crate::reconcile::action::intent_for;
use crate::reconcile::blast::is_disruptive;
use crate::reconcile::desired::DesiredError;
use crate::reconcile::engine::read_actual;
use crate::reconcile::gate::{Decision, Refusal, dry_run};
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

/// One planned action as `plan` shows it.
struct Row {
    vmid: u32,
    kind: &'static str,
    /// `allowed` or `refused`.
    decision: &'static str,
    /// The gate's code (`benign`, `pending_signature` …).
    code: String,
    reason: String,
    params: Vec<(String, String)>,
    /// The op in flight on the guest that defers this action.
    deferred_by: Option<String>,
    /// `(disruptive this hour, limit)` when the blast-radius limit would hold it.
    rate_limited: Option<(usize, usize)>,
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
    plan_report_as(cfg, Format::Text, out)
}

/// [`plan_report`] as text or as one JSON document (`plan --json`):
/// `{"generation","managed","guests","node","actions":[{"vmid","kind","decision","code",
/// "reason","params","deferred_by","rate_limited"}],"skipped":[{"vmid","code","why"}],
/// "summary":{"planned","allowed","refused","rate_limited"}}`.
pub fn plan_report_as(
    cfg: &Config,
    format: Format,
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

    let mut allowed = 0;
    let mut refused = Vec::new();
    let mut rate_limited = Vec::new();
    let mut rows = Vec::with_capacity(planned.actions.len());
    let limit = usize::try_from(cfg.reconcile.max_disruptive_per_hour).unwrap_or(usize::MAX);
    let mut in_window = journal.disruptive_since(SystemClock.now());
    for a in &planned.actions {
        let (decision, code) = match dry_run(&intent_for(&cfg.host_id, a), &journal) {
            Decision::Allowed { reason, .. } => {
                allowed += 1;
                ("allowed", reason.code().to_owned())
            }
            Decision::Refused { reason } => {
                refused.push((a.vmid, reason.code().to_owned()));
                ("refused", reason.code().to_owned())
            }
        };
        let mut row = Row {
            vmid: a.vmid,
            kind: a.kind.as_str(),
            decision,
            code,
            reason: a.reason.clone(),
            params: a
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            deferred_by: None,
            rate_limited: None,
        };
        if let Some(op) = in_flight.get(&a.vmid) {
            row.deferred_by = Some(op.clone());
        } else if is_disruptive(
            a,
            actual.guests.get(&a.vmid).and_then(|g| g.config.as_ref()),
        ) {
            if in_window < limit {
                in_window += 1;
            } else {
                rate_limited.push(a.vmid);
                row.rate_limited = Some((in_window, limit));
            }
        }
        rows.push(row);
    }
    // Never attempted: a disk only grows. Counted with the refusals.
    for s in &planned.shrink_refused {
        refused.push((s.vmid, Refusal::ShrinkRefused.code().to_owned()));
        rows.push(Row {
            vmid: s.vmid,
            kind: "resize",
            decision: "refused",
            code: Refusal::ShrinkRefused.code().to_owned(),
            reason: format!(
                "rootfs {} bytes, desired {}: a disk is never shrunk",
                s.have_bytes, s.want_bytes
            ),
            params: Vec::new(),
            deferred_by: None,
            rate_limited: None,
        });
    }
    let skipped: Vec<(u32, String, String)> = planned
        .skipped
        .iter()
        .map(|s| (s.vmid, s.code.to_string(), s.why.to_string()))
        .collect();
    let head = Head {
        generation: desired.generation,
        managed: desired.guests.len(),
        guests: actual.guests.len(),
        node: &section.node,
    };
    let counts = (
        planned.actions.len() + planned.shrink_refused.len(),
        allowed,
        refused.len(),
        rate_limited.len(),
    );
    match format {
        Format::Text => write_text(out, &head, &rows, &skipped, counts),
        Format::Json => write_json(out, &document(&head, &rows, &skipped, counts)),
    }
    .map_err(PlanReportError::Output)?;
    Ok(PlanSummary {
        plan: planned,
        allowed,
        refused,
        rate_limited,
    })
}

/// The plan's first line: what it was computed from.
struct Head<'a> {
    generation: u64,
    managed: usize,
    guests: usize,
    node: &'a str,
}

fn write_text(
    out: &mut dyn std::io::Write,
    head: &Head<'_>,
    rows: &[Row],
    skipped: &[(u32, String, String)],
    (planned, allowed, refused, rate_limited): (usize, usize, usize, usize),
) -> std::io::Result<()> {
    writeln!(
        out,
        "desired generation {}: {} managed guest(s); {} guest(s) on node {}",
        head.generation, head.managed, head.guests, head.node
    )?;
    for r in rows {
        let mut line = format!(
            "{:>6}  {:<10}  {} ({})  {}",
            r.vmid,
            r.kind,
            r.decision,
            r.code,
            visible(&r.reason)
        );
        if !r.params.is_empty() {
            let params: Vec<String> = r
                .params
                .iter()
                .map(|(k, v)| format!("{}={}", visible(k), visible(v)))
                .collect();
            line.push_str(&format!("  [{}]", params.join(", ")));
        }
        if let Some(op) = &r.deferred_by {
            line.push_str(&format!("  (deferred: op {} in flight)", visible(op)));
        }
        if let Some((n, limit)) = r.rate_limited {
            line.push_str(&format!(
                "  (held: rate_limited, {n} of {limit} disruptive this hour)"
            ));
        }
        writeln!(out, "{line}")?;
    }
    for (vmid, code, why) in skipped {
        writeln!(out, "{vmid:>6}  {:<10}  {code}: {}", "skip", visible(why))?;
    }
    writeln!(
        out,
        "{planned} action(s) planned: {allowed} allowed, {refused} refused, {rate_limited} \
         rate_limited; nothing was executed"
    )
}

fn document(
    head: &Head<'_>,
    rows: &[Row],
    skipped: &[(u32, String, String)],
    (planned, allowed, refused, rate_limited): (usize, usize, usize, usize),
) -> serde_json::Value {
    let actions: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let params: serde_json::Map<String, serde_json::Value> = r
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            serde_json::json!({
                "vmid": r.vmid,
                "kind": r.kind,
                "decision": r.decision,
                "code": r.code,
                "reason": r.reason,
                "params": params,
                "deferred_by": r.deferred_by,
                "rate_limited": r.rate_limited.is_some(),
            })
        })
        .collect();
    let skipped: Vec<serde_json::Value> = skipped
        .iter()
        .map(|(vmid, code, why)| serde_json::json!({"vmid": vmid, "code": code, "why": why}))
        .collect();
    serde_json::json!({
        "generation": head.generation,
        "managed": head.managed,
        "guests": head.guests,
        "node": head.node,
        "actions": actions,
        "skipped": skipped,
        "summary": {
            "planned": planned,
            "allowed": allowed,
            "refused": refused,
            "rate_limited": rate_limited,
        },
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
