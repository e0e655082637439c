//! `felhom-agent audit [--tail N] [--pending] [--guest N] [--code C] [--json]`: the gate's
//! decisions from `audit.log` and its rotated `audit.log.1`, as a table or as JSON.
//!
//! Read-only and safe beside a running daemon: each file is streamed once through the
//! store's replay (the hash chain checked), no lock is taken, and a torn last line is
//! only reported, never cut. Damage inside a file is printed after what could be read,
//! and the exit code is 1. `--pending` shows the operations still waiting for a
//! signature (the latest `pending_signature` of each op and guest with no later
//! decision), as the report's `pending_signatures` does. Entries a rotation carried into
//! the new file are copies and are listed once. This module never writes a file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use super::command::{EXIT_FAILED, EXIT_OK, visible, write_pretty_json};
use crate::reconcile::audit::{AuditRecord, PENDING_SIGNATURE, decode_stored};
use crate::store::{ReplayError, replay_reader};

/// Entries shown when no `--tail` is given.
pub(crate) const DEFAULT_TAIL: usize = 50;
/// The largest `--tail`.
pub(crate) const MAX_TAIL: usize = 100_000;

/// What to show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// The last N matching entries (default 50).
    pub tail: Option<usize>,
    /// Only operations still waiting for a signature.
    pub pending: bool,
    /// Only this guest.
    pub guest: Option<u32>,
    /// Only this decision code.
    pub code: Option<String>,
    /// JSON instead of a table.
    pub json: bool,
}

/// Checks a `--code` value: the agent's own snake_case words only.
pub(crate) fn check_code(code: &str) -> Result<(), String> {
    let ok = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--code must be a snake_case decision code (e.g. pending_signature), got {code:?}"
        ))
    }
}

/// Every entry of `path` in order (with its carried mark); a damage stops the read and
/// is returned beside what came before it.
fn read_file(path: &Path) -> (Vec<(AuditRecord, bool)>, Option<String>) {
    let mut out = Vec::new();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (out, None),
        Err(e) => return (out, Some(format!("{}: {e}", path.display()))),
    };
    let mut reader = BufReader::new(file);
    let result = replay_reader(&mut reader, &mut |_, data| {
        out.push(decode_stored(data)?);
        Ok(())
    });
    let damage = match result {
        Ok(_) => None,
        Err(ReplayError::Damage(d)) => {
            Some(format!("{} line {}: {}", path.display(), d.line, d.reason))
        }
        Err(ReplayError::Io { line, source }) => {
            Some(format!("{} line {line}: {source}", path.display()))
        }
    };
    (out, damage)
}

/// The rotated file of `path`.
fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// The entries `query` selects from `entries` (oldest first, carried marked).
pub(crate) fn select(entries: &[(AuditRecord, bool)], query: &AuditQuery) -> Vec<AuditRecord> {
    let guest = query.guest.map(|g| g.to_string());
    let matches = |e: &AuditRecord| {
        guest
            .as_ref()
            .is_none_or(|g| e.guest_id.as_deref() == Some(g))
            && query.code.as_ref().is_none_or(|c| e.decision == *c)
    };
    let picked: Vec<AuditRecord> = if query.pending {
        // The latest pending entry of each (op, guest) that no later decision resolved.
        let mut open: BTreeMap<(String, Option<String>), (usize, AuditRecord)> = BTreeMap::new();
        for (i, (e, _)) in entries.iter().enumerate() {
            let key = (e.op.clone(), e.guest_id.clone());
            if e.decision == PENDING_SIGNATURE {
                open.insert(key, (i, e.clone()));
            } else {
                open.remove(&key);
            }
        }
        let mut v: Vec<(usize, AuditRecord)> = open.into_values().collect();
        v.sort_by_key(|(i, _)| *i);
        v.into_iter()
            .map(|(_, e)| e)
            .filter(|e| matches(e))
            .collect()
    } else {
        entries
            .iter()
            .filter(|(e, carried)| !carried && matches(e))
            .map(|(e, _)| e.clone())
            .collect()
    };
    let n = query.tail.unwrap_or(DEFAULT_TAIL).min(MAX_TAIL);
    let skip = picked.len().saturating_sub(n);
    picked.into_iter().skip(skip).collect()
}

/// Runs `audit` over `state_dir/audit.log` (and `.1`); returns the exit code.
pub(crate) fn audit(
    state_dir: &Path,
    query: &AuditQuery,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let path = state_dir.join("audit.log");
    // Each file carries its own anchor, so the current one reads even after damage in
    // the rotated one.
    let (mut entries, old_damage) = read_file(&rotated(&path));
    let (current, new_damage) = read_file(&path);
    entries.extend(current);
    let damage = match (old_damage, new_damage) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    };
    let picked = select(&entries, query);
    if query.json {
        if let Err(code) = write_pretty_json(out, err, &picked) {
            return code;
        }
    } else {
        let _ = writeln!(
            out,
            "{:<20}  {:<17}  {:>9}  {:<20}  {:<12}  reason",
            "at", "op", "guest", "decision", "key_id"
        );
        for e in &picked {
            let _ = writeln!(
                out,
                "{:<20}  {:<17}  {:>9}  {:<20}  {:<12}  {}",
                e.at.to_rfc3339(),
                visible(&e.op),
                visible(e.guest_id.as_deref().unwrap_or("-")),
                visible(&e.decision),
                visible(e.key_id.as_deref().unwrap_or("-")),
                visible(&e.reason)
            );
        }
        let _ = writeln!(
            out,
            "{} entr{}",
            picked.len(),
            if picked.len() == 1 { "y" } else { "ies" }
        );
    }
    match damage {
        Some(why) => {
            let _ = writeln!(err, "felhom-agent: audit log DAMAGED: {why}");
            EXIT_FAILED
        }
        None => EXIT_OK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::time::Timestamp;

    fn rec(at: i64, op: &str, guest: Option<&str>, decision: &str) -> AuditRecord {
        AuditRecord::new(
            Timestamp(at),
            op,
            guest.map(str::to_owned),
            decision,
            "why",
            None,
        )
    }

    #[test]
    fn filters_tail_and_pending_select_what_they_say() {
        let entries = vec![
            (
                rec(1, "guest_destroy", Some("105"), "pending_signature"),
                false,
            ),
            (rec(2, "start", Some("101"), "allowed"), false),
            (
                rec(3, "guest_destroy", Some("106"), "pending_signature"),
                false,
            ),
            (rec(4, "guest_destroy", Some("105"), "executed"), false),
            (
                rec(5, "guest_destroy", Some("106"), "pending_signature"),
                true,
            ),
        ];
        let q = |f: fn(&mut AuditQuery)| {
            let mut q = AuditQuery::default();
            f(&mut q);
            select(&entries, &q)
                .iter()
                .map(|e| e.at.unix())
                .collect::<Vec<_>>()
        };
        assert_eq!(q(|_| {}), [1, 2, 3, 4], "carried copies listed once");
        assert_eq!(q(|q| q.tail = Some(2)), [3, 4]);
        assert_eq!(q(|q| q.guest = Some(105)), [1, 4]);
        assert_eq!(q(|q| q.code = Some("allowed".into())), [2]);
        assert_eq!(q(|q| q.pending = true), [5], "105 resolved; 106's latest");
    }

    #[test]
    fn codes_are_checked() {
        assert!(check_code("pending_signature").is_ok());
        for bad in ["", "Allowed", "a b", "x\"y"] {
            assert!(check_code(bad).is_err(), "{bad:?}");
        }
    }
}
