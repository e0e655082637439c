//! `felhom-agent journal`: the op history, read-only and safe beside a running daemon.
//! It never takes the state lock, never cuts a torn tail and never writes a file.

use std::io::Write;
use std::path::Path;

use super::command::{EXIT_FAILED, EXIT_OK};
use crate::reconcile::journal::{Journal, JournalRecord};

/// `journal`: the op history, read-only. Exit 1 when the journal is damaged.
pub(crate) fn journal(
    path: &Path,
    in_flight: bool,
    tail: Option<usize>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    if !path.exists() {
        let _ = writeln!(
            out,
            "no journal at {} yet: no operation has run",
            path.display()
        );
        return EXIT_OK;
    }
    let view = match Journal::open_read_only(path) {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(err, "felhom-agent: {}: {e}", path.display());
            return EXIT_FAILED;
        }
    };
    let records: Vec<JournalRecord> = if in_flight {
        view.in_flight()
    } else {
        match tail {
            Some(n) => view.tail(n).to_vec(),
            None => view.history().to_vec(),
        }
    };
    let records = match (in_flight, tail) {
        (true, Some(n)) => records[records.len().saturating_sub(n)..].to_vec(),
        _ => records,
    };
    let _ = writeln!(
        out,
        "{:<20}  {:<24}  {:>9}  {:<17}  {:<12}  detail",
        "at", "op", "vmid", "class", "state"
    );
    for r in &records {
        let mut detail = String::new();
        if let Some(u) = &r.upid {
            detail.push_str(u);
        }
        if let Some(d) = &r.detail {
            if !detail.is_empty() {
                detail.push(' ');
            }
            detail.push_str(&d.escape_debug().to_string());
        }
        let _ = writeln!(
            out,
            "{:<20}  {:<24}  {:>9}  {:<17}  {:<12}  {detail}",
            r.at.to_string(),
            r.op_id.escape_debug().to_string(),
            r.vmid,
            r.class.as_str().escape_debug().to_string(),
            r.state.as_str()
        );
    }
    let _ = writeln!(out, "{} record(s)", records.len());
    match view.damaged() {
        Some(why) => {
            let _ = writeln!(out, "DAMAGED: {why}");
            EXIT_FAILED
        }
        None => EXIT_OK,
    }
}
