//! Writes a full audit log for the start-up memory checks: entries like a hostile hub's
//! flood (each reason cut to 256 bytes with its `truncated` hash and length) and a few
//! pending destroys, hash-chained exactly as the agent writes them, up to a size.
//! Shared by `tests/audit_rss.rs` and `examples/audit_fill.rs` (which
//! `scripts/budgets.sh` runs); test code, never in the agent.
#![allow(dead_code)]

use std::path::Path;

use felhom_agent::base::Timestamp;
use felhom_agent::reconcile::AuditRecord as AuditEntry;
use felhom_agent::reconcile::{PENDING_SIGNATURE, cap};
use felhom_agent::store::{RECORD_OVERHEAD, Store};

/// Bytes of the anchor line a new file starts with.
const ANCHOR_LINE: u64 = 86;

/// Fills `path` (which must not exist yet) with audit entries until one more would
/// take it past `max_bytes`; returns the file's size.
pub fn fill(path: &Path, max_bytes: u64) -> Result<u64, String> {
    if path.exists() {
        return Err(format!("{} exists", path.display()));
    }
    let namespace = "n".repeat(1024);
    let mut entries = Vec::new();
    let mut size = ANCHOR_LINE;
    for i in 0u64.. {
        let at = Timestamp(1_795_000_000 + (i / 32) as i64 * 60);
        let e = if i % 500 == 0 {
            AuditEntry::new(
                at,
                "guest_destroy",
                Some(format!("{}", 300 + (i / 500) % 40)),
                PENDING_SIGNATURE,
                "destructive and unsigned",
                None,
            )
        } else {
            AuditEntry::new(
                at,
                "guest_destroy",
                Some(format!("{}", 200 + i % 32)),
                "namespace",
                format!("signature namespace \"{namespace}\", expected \"felhom-op-v1\""),
                None,
            )
        };
        let e = cap(e);
        // The overhead allows for a 20-digit sequence number; this one has fewer.
        let digits = (entries.len() + 1).to_string().len();
        let data = serde_json::to_vec(&e).map_err(|e| e.to_string())?.len();
        let line = data + RECORD_OVERHEAD - 20 + digits;
        if size + line as u64 > max_bytes {
            break;
        }
        size += line as u64;
        entries.push(e);
    }
    let store = Store::open(path, |_, _| Ok(())).map_err(|e| e.to_string())?;
    store.compact(entries.iter()).map_err(|e| e.to_string())?;
    let len = store.file_len();
    if len > max_bytes {
        return Err(format!("filled {len} bytes, over {max_bytes}"));
    }
    Ok(len)
}
