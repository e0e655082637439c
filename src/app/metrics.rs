//! Prometheus metrics as a textfile for node_exporter's textfile collector:
//! `state_dir/metrics.textfile`, replaced atomically whenever the status file is
//! (after every hub round, every reconcile pass and every heartbeat).
//!
//! Counters are fed by the daemon's hooks: reconcile passes and their actions (the
//! engine's [`crate::reconcile::PassObserver`], through the status board), hub rounds,
//! every audited decision (gate decisions by code; those about hub-delivered ops are
//! also signed ops by outcome) and every journal record (a task's duration is its
//! terminal record's time minus its `started` record's). Gauges are read from the status
//! document when the file is written. Counters start at zero with the process, as
//! Prometheus expects of counters.
//!
//! Label values are the agent's own code words, never text from outside, and each
//! family keeps at most [`MAX_SERIES`] label sets (more go to `other`), so the file
//! stays small whatever a hub sends. This module never writes anything but its file,
//! and a failed write is logged, never fatal.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::status::{StatusDoc, StatusListener};
use crate::base::sync::lock;
use crate::base::time::Timestamp;
use crate::reconcile::audit::AuditRecord;
use crate::reconcile::engine::{EngineError, PassReport};
use crate::reconcile::journal::{JournalRecord, OpState};
use crate::store::{OsIo, replace_file};

/// The textfile's name inside the state directory.
pub(crate) const METRICS_FILE: &str = "metrics.textfile";
/// At most this many label sets per family.
pub(crate) const MAX_SERIES: usize = 64;
/// At most this many ops whose start is remembered for their duration.
const MAX_STARTED: usize = 4096;
/// The task-duration histogram's upper bounds, in seconds.
pub(crate) const DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0,
];

#[derive(Debug, Default)]
struct Inner {
    passes: BTreeMap<Vec<String>, u64>,
    actions: BTreeMap<Vec<String>, u64>,
    gate: BTreeMap<Vec<String>, u64>,
    rounds: BTreeMap<Vec<String>, u64>,
    signed: BTreeMap<Vec<String>, u64>,
    started: HashMap<String, Timestamp>,
    buckets: Vec<u64>,
    duration_sum: f64,
    duration_count: u64,
}

/// Adds one to `family[labels]`, or to `other` once the family is full.
fn bump(family: &mut BTreeMap<Vec<String>, u64>, labels: &[&str]) {
    let key: Vec<String> = labels.iter().map(|s| (*s).to_owned()).collect();
    if family.len() >= MAX_SERIES && !family.contains_key(&key) {
        let other = vec!["other".to_owned(); labels.len()];
        *family.entry(other).or_insert(0) += 1;
        return;
    }
    *family.entry(key).or_insert(0) += 1;
}

/// The daemon's counters and histogram.
#[derive(Debug)]
pub struct Metrics {
    path: PathBuf,
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Metrics written to `state_dir/metrics.textfile`.
    pub fn new(state_dir: &Path) -> Metrics {
        Metrics {
            path: state_dir.join(METRICS_FILE),
            inner: Mutex::new(Inner {
                buckets: vec![0; DURATION_BUCKETS.len()],
                ..Inner::default()
            }),
        }
    }

    /// Counts one reconcile pass and its actions.
    pub fn record_pass(&self, result: &Result<PassReport, EngineError>) {
        let mut m = lock(&self.inner);
        match result {
            Ok(r) => {
                bump(&mut m.passes, &["ok"]);
                for a in &r.results {
                    let outcome = match &a.outcome {
                        crate::reconcile::action::Outcome::Applied => "applied",
                        crate::reconcile::action::Outcome::Refused { .. } => "refused",
                        crate::reconcile::action::Outcome::Deferred { .. } => "deferred",
                        crate::reconcile::action::Outcome::RateLimited { .. } => "rate_limited",
                        crate::reconcile::action::Outcome::Failed { .. } => "failed",
                        crate::reconcile::action::Outcome::Unresolved { .. } => "unresolved",
                    };
                    bump(&mut m.actions, &[a.action.kind.as_str(), outcome]);
                }
            }
            Err(_) => bump(&mut m.passes, &["failed"]),
        }
    }

    /// Counts one hub round.
    pub fn record_round(&self, ok: bool) {
        bump(
            &mut lock(&self.inner).rounds,
            &[if ok { "ok" } else { "failed" }],
        );
    }

    /// Counts one audited decision (and, for a hub-delivered op, its outcome).
    pub fn record_decision(&self, rec: &AuditRecord) {
        let code = code_word(&rec.decision);
        let mut m = lock(&self.inner);
        bump(&mut m.gate, &[code]);
        if rec.delivery.is_some() {
            bump(&mut m.signed, &[code]);
        }
    }

    /// Follows an op's journal records to time it from `started` to its end.
    pub fn record_journal(&self, rec: &JournalRecord) {
        let mut m = lock(&self.inner);
        if rec.state == OpState::Started {
            if m.started.len() >= MAX_STARTED {
                m.started.clear();
            }
            m.started.insert(rec.op_id.clone(), rec.at);
            return;
        }
        if !rec.state.is_terminal() {
            return;
        }
        let Some(start) = m.started.remove(&rec.op_id) else {
            return;
        };
        let secs = (rec.at.unix() - start.unix()).max(0) as f64;
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                m.buckets[i] += 1;
            }
        }
        m.duration_sum += secs;
        m.duration_count += 1;
    }

    /// The textfile for `doc`.
    pub fn render(&self, doc: &StatusDoc) -> String {
        let m = lock(&self.inner);
        let mut out = String::new();
        counter(
            &mut out,
            "felhom_agent_passes_total",
            "Reconcile passes, by result.",
            &["result"],
            &m.passes,
        );
        counter(
            &mut out,
            "felhom_agent_actions_total",
            "Reconcile actions, by kind and outcome.",
            &["kind", "outcome"],
            &m.actions,
        );
        counter(
            &mut out,
            "felhom_agent_gate_decisions_total",
            "Audited decisions, by code.",
            &["code"],
            &m.gate,
        );
        counter(
            &mut out,
            "felhom_agent_hub_rounds_total",
            "Hub report rounds, by result.",
            &["result"],
            &m.rounds,
        );
        counter(
            &mut out,
            "felhom_agent_signed_ops_total",
            "Decisions about hub-delivered signed ops, by outcome.",
            &["outcome"],
            &m.signed,
        );
        gauge(
            &mut out,
            "felhom_agent_ops_in_flight",
            "Ops started and not finished.",
            &[(vec![], doc.ops_in_flight.len() as f64)],
        );
        gauge(
            &mut out,
            "felhom_agent_pending_signatures",
            "Operations held for an operator's signature.",
            &[(vec![], doc.pending_signatures.len() as f64)],
        );
        gauge(
            &mut out,
            "felhom_agent_paused",
            "1 while an operator's pause holds every mutation.",
            &[(vec![], f64::from(u8::from(doc.hold.paused.is_some())))],
        );
        gauge(
            &mut out,
            "felhom_agent_blocked",
            "1 while the hub marks the host blocked.",
            &[(vec![], f64::from(u8::from(doc.hold.blocked)))],
        );
        let guests: Vec<_> = ["running", "stopped", "other"]
            .iter()
            .map(|s| {
                let n = doc.guest_states.get(*s).copied().unwrap_or(0);
                (vec![("state", (*s).to_owned())], n as f64)
            })
            .collect();
        gauge(
            &mut out,
            "felhom_agent_guests",
            "Guests Proxmox listed at the last reconcile pass, by run state.",
            &guests,
        );
        let mut last = Vec::new();
        if let Some(t) = doc.last_report.as_ref().and_then(|r| r.last_success) {
            last.push((vec![("what", "report".to_owned())], t.unix() as f64));
        }
        if let Some(t) = doc.last_pass.as_ref().and_then(|p| p.last_success) {
            last.push((vec![("what", "pass".to_owned())], t.unix() as f64));
        }
        if let Some(t) = doc
            .restore_tests
            .as_ref()
            .and_then(|v| v.get("last_success"))
            .and_then(|v| v.as_str())
            .and_then(|s| Timestamp::parse_rfc3339(s).ok())
        {
            last.push((vec![("what", "restore_test".to_owned())], t.unix() as f64));
        }
        gauge(
            &mut out,
            "felhom_agent_last_success_timestamp_seconds",
            "When a report, a pass or a restore test last succeeded (Unix time).",
            &last,
        );
        gauge(
            &mut out,
            "felhom_agent_start_time_seconds",
            "When the daemon started (Unix time).",
            &[(vec![], doc.up_since.unix() as f64)],
        );
        let name = "felhom_agent_task_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Proxmox task durations, from an op's start to its end."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", m.buckets[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", m.duration_count);
        let _ = writeln!(out, "{name}_sum {}", m.duration_sum);
        let _ = writeln!(out, "{name}_count {}", m.duration_count);
        out
    }

    /// Renders for `doc` and replaces the file; a failure is logged only.
    pub fn write(&self, doc: &StatusDoc) {
        let text = self.render(doc);
        if let Err(e) = replace_file(&OsIo, &self.path, text.as_bytes()) {
            crate::warn!(
                metrics_not_written,
                "metrics textfile not written",
                file = self.path.display(),
                error = e
            );
        }
    }
}

impl StatusListener for Metrics {
    fn round_done(&self, ok: bool) {
        self.record_round(ok);
    }

    fn pass_done(&self, result: &Result<PassReport, EngineError>) {
        self.record_pass(result);
    }

    fn written(&self, doc: &StatusDoc) {
        self.write(doc);
    }
}

/// A decision word as a label value: the agent's own snake_case words pass, anything
/// else is `other`.
fn code_word(decision: &str) -> &str {
    let ok = !decision.is_empty()
        && decision.len() <= 64
        && decision
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok { decision } else { "other" }
}

/// A label value in the text format: `\`, `"` and newline escaped.
pub(crate) fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn labels(pairs: &[(&str, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn counter(
    out: &mut String,
    name: &str,
    help: &str,
    keys: &[&str],
    family: &BTreeMap<Vec<String>, u64>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (values, n) in family {
        let pairs: Vec<(&str, String)> = keys.iter().copied().zip(values.iter().cloned()).collect();
        let _ = writeln!(out, "{name}{} {n}", labels(&pairs));
    }
}

fn gauge(out: &mut String, name: &str, help: &str, samples: &[(Vec<(&str, String)>, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (pairs, v) in samples {
        let _ = writeln!(out, "{name}{} {v}", labels(pairs));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_foreign_codes_are_other() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(code_word("pending_signature"), "pending_signature");
        assert_eq!(code_word("Evil\"} 1\n"), "other");
        assert_eq!(code_word(""), "other");
    }

    #[test]
    fn a_family_stops_growing_at_the_cap() {
        let mut f = BTreeMap::new();
        for i in 0..(MAX_SERIES + 10) {
            bump(&mut f, &[&format!("c{i}")]);
        }
        assert_eq!(f.len(), MAX_SERIES + 1, "the cap plus `other`");
        assert_eq!(f.get(&vec!["other".to_owned()]), Some(&10));
    }
}
