//! `felhom-agent journal`: the op history, read-only and safe beside a running daemon.
//! It never takes the state lock, never cuts a torn tail and never writes a file.

use std::io::Write;
use std::path::Path;

use super::command::{EXIT_FAILED, EXIT_OK, Format, visible, write_json};
use crate::reconcile::journal::{Journal, JournalRecord};

/// `journal`: the op history, read-only. Exit 1 when the journal is damaged.
pub(crate) fn journal(
    path: &Path,
    in_flight: bool,
    tail: Option<usize>,
    format: Format,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    if !path.exists() {
        let _ = match format {
            Format::Json => write_json(out, &document(&[], None)),
            Format::Text => writeln!(
                out,
                "no journal at {} yet: no operation has run",
                visible(&path.display().to_string())
            ),
        };
        return EXIT_OK;
    }
    let view = match Journal::open_read_only(path) {
        Ok(v) => v,
        Err(e) => {
            // The error names the file already.
            let _ = writeln!(err, "felhom-agent: {e}");
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
    let damaged = view.damaged();
    let _ = match format {
        Format::Json => write_json(out, &document(&records, damaged)),
        Format::Text => write_text(out, &records, damaged),
    };
    if damaged.is_some() {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

/// The `--json` document: `{"records":[…],"damaged":null|"where and why"}`, each record
/// `{"at","op_id","vmid","class","state","upid","detail"}`.
fn document(records: &[JournalRecord], damaged: Option<&str>) -> serde_json::Value {
    let records: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            serde_json::json!({
                "at": r.at.to_rfc3339(),
                "op_id": r.op_id,
                "vmid": r.vmid,
                "class": r.class.as_str(),
                "state": r.state.as_str(),
                "upid": r.upid,
                "detail": r.detail,
            })
        })
        .collect();
    serde_json::json!({ "records": records, "damaged": damaged })
}

fn write_text(
    out: &mut dyn Write,
    records: &[JournalRecord],
    damaged: Option<&str>,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<20}  {:<24}  {:>9}  {:<17}  {:<12}  detail",
        "at", "op", "vmid", "class", "state"
    )?;
    for r in records {
        let mut detail = String::new();
        if let Some(u) = &r.upid {
            detail.push_str(&visible(u));
        }
        if let Some(d) = &r.detail {
            if !detail.is_empty() {
                detail.push(' ');
            }
            detail.push_str(&visible(d));
        }
        writeln!(
            out,
            "{:<20}  {:<24}  {:>9}  {:<17}  {:<12}  {detail}",
            r.at.to_string(),
            visible(&r.op_id),
            r.vmid,
            visible(r.class.as_str()),
            r.state.as_str()
        )?;
    }
    writeln!(out, "{} record(s)", records.len())?;
    if let Some(why) = damaged {
        writeln!(out, "DAMAGED: {}", visible(why))?;
    }
    Ok(())
}
