//! The audit log (`state_dir/audit.log`, rotated to `audit.log.1`): one durable entry
//! per gate decision, the tail the host report carries, and the operations still
//! waiting for a signature.
//!
//! This module owns the audit files and what is kept of them in memory. It writes only
//! through [`crate::store::Store`] and never records a signature, a blob or any secret —
//! only the op, the guest, the decision, its reason, the signer's advisory key id and,
//! for a hub delivery, its id, the blob's nonce (read unverified, only to name the op)
//! and the blob's SHA-256 and size.
//!
//! # Bounds
//!
//! * **Entries.** [`AuditLog::record`] is the one way in, and it caps every entry: each
//!   string at most [`AUDIT_STRING_MAX`] bytes, cut at a character boundary, the cut
//!   field named in `truncated` with the SHA-256 and byte length of the full value.
//! * **Disk.** Before an append would take `audit.log` past `max_bytes`, the log is
//!   rotated ([`crate::store::Store::rotate`]): `audit.log` becomes `audit.log.1`
//!   (replacing the older one) and the new `audit.log` is anchored on the last record,
//!   so the chain carries on across the two files. Each file stays at or under
//!   `max_bytes`, the two together under twice that. A file already larger at open (a
//!   smaller cap than before, or a log from before the cap) is rotated at once.
//! * **Memory.** Opening streams the file and keeps only the last [`TAIL_KEPT`] entries
//!   and at most [`PENDING_SIGNATURES_MAX`] pending ones, whatever the file's size.
//!
//! # Pending signatures
//!
//! An operation is keyed by its `op` and `guest_id` (with the full value's hash where
//! one was cut). A `pending_signature` entry makes its key pending — the newest entry
//! for a key replaces an older one — and a later entry for the same key with any other
//! decision (`allowed`, a refusal, `executed` …) resolves it. At most
//! [`PENDING_SIGNATURES_MAX`] keys are kept; a new key beyond that drops the oldest, with
//! a warning (`audit pending signature dropped`). That bound is safe: each key is one
//! destructive op on one guest waiting for an operator, and 64 is more than a host's
//! signing backlog; past it the hub is inventing ops, and the bound keeps memory, each
//! report and the carry-over of a rotation small (64 capped entries are far under the
//! smallest `max_bytes`).
//!
//! A rotation re-appends the pending entries after the new file's anchor, each marked
//! `"carried":true` on disk, so a restart after it still reports them. A carried entry
//! is pending again on replay; it is not a new decision and is not put in the tail.

use crate::base::sync::lock;
use std::collections::VecDeque;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::base::encoding::hex_encode;
use crate::base::time::Timestamp;
use crate::store::{Io, OsIo, RECORD_OVERHEAD, Store, StoreError, SyncMode};

/// The longest string a record holds, in bytes.
pub const AUDIT_STRING_MAX: usize = 256;

/// The most unresolved `pending_signature` records kept.
pub(crate) const PENDING_SIGNATURES_MAX: usize = 64;

/// Entries kept in memory for [`AuditLog::tail`]; the report needs 50.
pub(crate) const TAIL_KEPT: usize = 200;

use crate::config::AUDIT_MAX_BYTES_MAX as MAX_MAX_BYTES;
/// The default `audit.max_bytes` (16 MiB), its floor (1 MiB) and its ceiling (1 GiB);
/// the configuration owns them.
pub use crate::config::{
    AUDIT_MAX_BYTES_DEFAULT as DEFAULT_MAX_BYTES, AUDIT_MAX_BYTES_MIN as MIN_MAX_BYTES,
};

/// The decision word that holds an operation for a signature.
pub const PENDING_SIGNATURE: &str = "pending_signature";

/// One gate decision as `audit.log` stores it: this module's own format, which the app
/// layer translates into the hub's wire entry.
///
/// Every string is at most [`AUDIT_STRING_MAX`] bytes once recorded: [`AuditLog::record`]
/// cuts a longer value at a character boundary and names it in `truncated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the decision was made.
    #[serde(with = "crate::base::time::rfc3339")]
    pub at: Timestamp,
    /// The op class (`guest_destroy`, `set_config` …), or `signed_op` for a delivery
    /// whose op could not be read.
    pub op: String,
    /// The guest the op targets; `None` for a host-wide op.
    pub guest_id: Option<String>,
    /// The gate's word: `allowed`, `pending_signature`, a refusal code, `executed` ….
    pub decision: String,
    /// The reason, in a sentence.
    pub reason: String,
    /// The advisory key id of the signer, when a signature came with the op.
    pub key_id: Option<String>,
    /// The hub delivery this record is about; `None` for the gate's own decisions.
    #[serde(default)]
    pub delivery: Option<AuditDelivery>,
    /// The cut fields, in field order.
    #[serde(default)]
    pub truncated: Vec<Truncation>,
}

impl AuditRecord {
    /// A record with no delivery; [`AuditLog::record`] caps it.
    pub fn new(
        at: Timestamp,
        op: impl Into<String>,
        guest_id: Option<String>,
        decision: impl Into<String>,
        reason: impl Into<String>,
        key_id: Option<String>,
    ) -> AuditRecord {
        AuditRecord {
            at,
            op: op.into(),
            guest_id,
            decision: decision.into(),
            reason: reason.into(),
            key_id,
            delivery: None,
            truncated: Vec::new(),
        }
    }
}

/// What the audit keeps of one hub delivery: the hash and size of its bytes and the
/// nonce it names, never the bytes. A field is `None` when the entry was skipped before
/// it could be read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDelivery {
    /// The hub's own id for the op, cut like every string.
    pub hub_op_id: Option<String>,
    /// The blob's `nonce`, read from the blob **unverified** only to name the op (the
    /// hub tracks its ops by it); `None` when the blob does not parse or was not read.
    #[serde(default)]
    pub nonce: Option<String>,
    /// Where the op stood in the hub's `ops` array.
    pub index: Option<u64>,
    /// The decoded blob's SHA-256, lowercase hex.
    pub blob_sha256: Option<String>,
    /// The decoded blob's length in bytes.
    pub blob_bytes: Option<u64>,
}

/// A string field of an [`AuditRecord`] that recording may cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AuditField {
    /// The op.
    #[serde(rename = "op")]
    Op,
    /// The guest.
    #[serde(rename = "guest_id")]
    GuestId,
    /// The decision word.
    #[serde(rename = "decision")]
    Decision,
    /// The reason.
    #[serde(rename = "reason")]
    Reason,
    /// The signer's key id.
    #[serde(rename = "key_id")]
    KeyId,
    /// The delivery's hub op id.
    #[serde(rename = "delivery.hub_op_id")]
    DeliveryHubOpId,
    /// The delivery's nonce.
    #[serde(rename = "delivery.nonce")]
    DeliveryNonce,
    /// The delivery's blob hash.
    #[serde(rename = "delivery.blob_sha256")]
    DeliveryBlobSha256,
}

impl AuditField {
    /// The field's name as `truncated` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditField::Op => "op",
            AuditField::GuestId => "guest_id",
            AuditField::Decision => "decision",
            AuditField::Reason => "reason",
            AuditField::KeyId => "key_id",
            AuditField::DeliveryHubOpId => "delivery.hub_op_id",
            AuditField::DeliveryNonce => "delivery.nonce",
            AuditField::DeliveryBlobSha256 => "delivery.blob_sha256",
        }
    }
}

/// A cut: which field, and the SHA-256 and length of the value before it was cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncation {
    /// The field that was cut.
    pub field: AuditField,
    /// SHA-256 of the whole value, lowercase hex.
    pub sha256: String,
    /// The whole value's length in bytes.
    pub bytes: u64,
}

/// Why the audit log failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum AuditError {
    /// Opening, replaying (damage inside the file), rotating or appending failed.
    Store(StoreError),
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditError::Store(e) => write!(f, "audit log: {e}"),
        }
    }
}

impl std::error::Error for AuditError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuditError::Store(e) => Some(e),
        }
    }
}

/// An entry as it is stored: a pending entry a rotation carried into the new file is
/// marked, so replay does not take it for a new decision.
#[derive(Deserialize)]
struct Stored {
    #[serde(flatten)]
    entry: AuditRecord,
    #[serde(default)]
    carried: bool,
}

/// One stored line of an audit log, as its record and whether a rotation carried it
/// (the only reader of the on-disk shape besides [`AuditLog`]'s own replay is the
/// `audit` command, which reads the files without opening the log).
pub(crate) fn decode_stored(data: &[u8]) -> Result<(AuditRecord, bool), String> {
    let s: Stored = serde_json::from_slice(data).map_err(|e| format!("not an audit entry: {e}"))?;
    Ok((s.entry, s.carried))
}

#[derive(Serialize)]
struct CarriedRef<'a> {
    #[serde(flatten)]
    entry: &'a AuditRecord,
    carried: bool,
}

/// Cuts `s` to [`AUDIT_STRING_MAX`] bytes at a character boundary; when it cuts, the
/// full value's hash and length are added to `cuts`.
fn cut(s: &mut String, field: AuditField, cuts: &mut Vec<Truncation>) {
    if s.len() <= AUDIT_STRING_MAX {
        return;
    }
    cuts.push(Truncation {
        field,
        sha256: hex_encode(&Sha256::digest(s.as_bytes())),
        bytes: s.len() as u64,
    });
    let mut end = AUDIT_STRING_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
}

fn cut_opt(s: &mut Option<String>, field: AuditField, cuts: &mut Vec<Truncation>) {
    if let Some(s) = s {
        cut(s, field, cuts);
    }
}

/// The entry as it is recorded: every string capped. A `truncated` item the caller
/// supplied is kept only if well-formed and not contradicted by a cut made here, so
/// capping an already capped entry changes nothing.
pub fn cap(mut e: AuditRecord) -> AuditRecord {
    let mut cuts = Vec::new();
    cut(&mut e.op, AuditField::Op, &mut cuts);
    cut_opt(&mut e.guest_id, AuditField::GuestId, &mut cuts);
    cut(&mut e.decision, AuditField::Decision, &mut cuts);
    cut(&mut e.reason, AuditField::Reason, &mut cuts);
    cut_opt(&mut e.key_id, AuditField::KeyId, &mut cuts);
    if let Some(d) = &mut e.delivery {
        cut_opt(&mut d.hub_op_id, AuditField::DeliveryHubOpId, &mut cuts);
        cut_opt(&mut d.nonce, AuditField::DeliveryNonce, &mut cuts);
        cut_opt(
            &mut d.blob_sha256,
            AuditField::DeliveryBlobSha256,
            &mut cuts,
        );
    }
    let supplied = std::mem::take(&mut e.truncated).into_iter().filter(|t| {
        t.sha256.len() == 64
            && t.sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    cuts.extend(supplied);
    // Stable: for a field cut here and also supplied, the cut made here comes first.
    cuts.sort_by_key(|t| t.field);
    cuts.dedup_by_key(|t| t.field);
    e.truncated = cuts;
    e
}

fn cut_hash(e: &AuditRecord, field: AuditField) -> Option<&str> {
    e.truncated
        .iter()
        .find(|t| t.field == field)
        .map(|t| t.sha256.as_str())
}

/// Whether two entries are about the same operation (see the module doc).
fn same_key(a: &AuditRecord, b: &AuditRecord) -> bool {
    a.op == b.op
        && a.guest_id == b.guest_id
        && cut_hash(a, AuditField::Op) == cut_hash(b, AuditField::Op)
        && cut_hash(a, AuditField::GuestId) == cut_hash(b, AuditField::GuestId)
}

/// What is kept in memory: the tail and the unresolved pending entries.
#[derive(Default)]
struct Kept {
    tail: VecDeque<AuditRecord>,
    pending: VecDeque<AuditRecord>,
    /// Records of the current file that a rotation carried into it.
    carried_in_file: u64,
}

impl Kept {
    /// A new decision: into the tail, and it makes its key pending or resolves it.
    /// Returns a pending entry dropped to stay within the bound.
    fn apply(&mut self, e: AuditRecord) -> Option<AuditRecord> {
        if self.tail.len() == TAIL_KEPT {
            self.tail.pop_front();
        }
        let dropped = if e.decision == PENDING_SIGNATURE {
            self.hold(e.clone())
        } else {
            self.pending.retain(|p| !same_key(p, &e));
            None
        };
        self.tail.push_back(e);
        dropped
    }

    /// Makes `e` the pending entry of its key.
    fn hold(&mut self, e: AuditRecord) -> Option<AuditRecord> {
        self.pending.retain(|p| !same_key(p, &e));
        let dropped = if self.pending.len() >= PENDING_SIGNATURES_MAX {
            self.pending.pop_front()
        } else {
            None
        };
        self.pending.push_back(e);
        dropped
    }
}

fn warn_dropped(e: &AuditRecord) {
    crate::warn!(
        audit_pending_signature_dropped,
        "audit pending signature dropped",
        op = e.op,
        guest = e.guest_id.as_deref().unwrap_or("-"),
        at = e.at,
        max = PENDING_SIGNATURES_MAX
    );
}

/// The durable audit log. `Send + Sync`.
pub struct AuditLog {
    store: Store,
    max_bytes: u64,
    kept: Mutex<Kept>,
    /// Told every record once it is durable (metrics).
    watcher: std::sync::OnceLock<AuditWatcher>,
}

/// A hook told every decision the audit log made durable; must be quick.
pub type AuditWatcher = Arc<dyn Fn(&AuditRecord) + Send + Sync>;

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.store.path())
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl AuditLog {
    /// Opens (or creates) the audit log with the default cap and loads what the report
    /// needs. Damage inside the file is an error (the caller decides; the daemon refuses
    /// to start the gate).
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::open_bounded(path, Arc::new(OsIo), DEFAULT_MAX_BYTES)
    }

    /// [`AuditLog::open`] with an explicit [`Io`].
    pub fn open_with(path: &Path, io: Arc<dyn Io>) -> Result<AuditLog, AuditError> {
        AuditLog::open_bounded(path, io, DEFAULT_MAX_BYTES)
    }

    /// [`AuditLog::open_with`] rotating at `max_bytes` (raised to [`MIN_MAX_BYTES`] if
    /// lower; the configuration refuses a lower value before it gets here).
    pub fn open_bounded(
        path: &Path,
        io: Arc<dyn Io>,
        max_bytes: u64,
    ) -> Result<AuditLog, AuditError> {
        let max_bytes = max_bytes.clamp(MIN_MAX_BYTES, MAX_MAX_BYTES);
        let mut kept = Kept::default();
        let mut dropped = 0u64;
        let store = Store::open_with(path, io, SyncMode::GroupCommit, |_, data| {
            let (entry, carried) = decode_stored(data)?;
            let gone = if carried {
                kept.carried_in_file += 1;
                kept.hold(entry)
            } else {
                kept.apply(entry)
            };
            dropped += u64::from(gone.is_some());
            Ok(())
        })
        .map_err(AuditError::Store)?;
        if dropped > 0 {
            crate::warn!(
                audit_pending_dropped_on_replay,
                "audit pending signatures dropped on replay",
                dropped = dropped,
                max = PENDING_SIGNATURES_MAX
            );
        }
        let log = AuditLog {
            store,
            max_bytes,
            kept: Mutex::new(kept),
            watcher: std::sync::OnceLock::new(),
        };
        if log.store.file_len() > max_bytes {
            let mut kept = lock(&log.kept);
            log.rotate_locked(&mut kept).map_err(AuditError::Store)?;
        }
        Ok(log)
    }

    /// Whether a failed write or fsync has poisoned the log: every later record fails,
    /// so the daemon stops and the restart replays it from disk.
    pub fn is_poisoned(&self) -> bool {
        self.store.is_poisoned()
    }

    /// The cap `audit.log` is rotated at.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Caps `entry` (see the module doc), rotates first if the append would take the
    /// file past the cap, and appends it; `Ok` once durable. A rotation that fails
    /// before anything was renamed is logged and the entry goes to the current file
    /// (the next record tries again); one that fails after is fatal, like a failed
    /// append.
    pub fn record(&self, entry: &AuditRecord) -> Result<(), AuditError> {
        let entry = cap(entry.clone());
        let line = serde_json::to_vec(&entry)
            .map(|d| d.len() + RECORD_OVERHEAD)
            .map_err(|e| {
                AuditError::Store(StoreError::Encode {
                    reason: e.to_string(),
                })
            })? as u64;
        let mut kept = lock(&self.kept);
        // A file of nothing but carried entries would not shrink by rotating.
        let has_decisions = self.store.records() > kept.carried_in_file;
        if has_decisions && self.store.file_len().saturating_add(line) > self.max_bytes {
            match self.rotate_locked(&mut kept) {
                Ok(()) => {}
                Err(e @ StoreError::Io { .. }) => crate::error!(
                    audit_rotation_failed,
                    "audit log rotation failed; appending to the current file",
                    error = e
                ),
                Err(e) => return Err(AuditError::Store(e)),
            }
        }
        self.store.append(&entry).map_err(AuditError::Store)?;
        if let Some(w) = self.watcher.get() {
            w(&entry);
        }
        if let Some(gone) = kept.apply(entry) {
            warn_dropped(&gone);
        }
        Ok(())
    }

    /// Tells `watcher` every record appended from now on; `false` when one is set.
    pub fn watch_records(&self, watcher: AuditWatcher) -> bool {
        self.watcher.set(watcher).is_ok()
    }

    /// Rotates now, whatever the file's size (see the module doc).
    pub fn rotate(&self) -> Result<(), AuditError> {
        let mut kept = lock(&self.kept);
        self.rotate_locked(&mut kept).map_err(AuditError::Store)
    }

    fn rotate_locked(&self, kept: &mut Kept) -> Result<(), StoreError> {
        let before = self.store.file_len();
        let carried = self
            .store
            .rotate(kept.pending.iter().map(|entry| CarriedRef {
                entry,
                carried: true,
            }))?;
        kept.carried_in_file = carried;
        crate::info!(
            audit_rotated,
            "audit log rotated",
            path = self.store.path().display(),
            rotated_bytes = before,
            carried = carried,
            max_bytes = self.max_bytes
        );
        Ok(())
    }

    /// The last `n` entries, oldest first.
    pub fn tail(&self, n: usize) -> Vec<AuditRecord> {
        let k = lock(&self.kept);
        k.tail
            .iter()
            .skip(k.tail.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// The unresolved `pending_signature` entries, oldest first.
    pub fn pending(&self) -> Vec<AuditRecord> {
        lock(&self.kept).pending.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::time::Timestamp;

    fn entry(op: &str, guest: Option<&str>, decision: &str, reason: &str) -> AuditRecord {
        AuditRecord::new(
            Timestamp(1_800_000_000),
            op,
            guest.map(str::to_owned),
            decision,
            reason,
            None,
        )
    }

    fn sha_hex(s: &str) -> String {
        hex_encode(&Sha256::digest(s.as_bytes()))
    }

    #[test]
    fn every_string_is_capped_at_a_char_boundary_with_the_full_hash_and_length() {
        // 'é' is two bytes: 255 bytes of ASCII then 'é' straddles the cap.
        let reason = format!("{}é{}", "r".repeat(255), "x".repeat(11_000));
        let op = "o".repeat(300);
        let id = "i".repeat(257);
        let mut e = entry(&op, Some("105"), "namespace", &reason);
        e.key_id = Some("k".repeat(256));
        e.delivery = Some(AuditDelivery {
            hub_op_id: Some(id.clone()),
            nonce: Some("n".repeat(40)),
            index: Some(3),
            blob_sha256: Some("a".repeat(64)),
            blob_bytes: Some(9),
        });
        let c = cap(e);
        assert_eq!(c.reason.len(), 255, "cut before the two-byte char");
        assert_eq!(c.reason, "r".repeat(255));
        assert_eq!(c.op.len(), 256);
        assert_eq!(
            c.key_id.as_deref().map(str::len),
            Some(256),
            "256 is not cut"
        );
        assert_eq!(c.guest_id.as_deref(), Some("105"));
        let d = c.delivery.as_ref().unwrap();
        assert_eq!(d.hub_op_id.as_deref().map(str::len), Some(256));
        let fields: Vec<AuditField> = c.truncated.iter().map(|t| t.field).collect();
        assert_eq!(
            fields,
            vec![
                AuditField::Op,
                AuditField::Reason,
                AuditField::DeliveryHubOpId
            ]
        );
        let r = &c.truncated[1];
        assert_eq!(
            (r.sha256.clone(), r.bytes),
            (sha_hex(&reason), reason.len() as u64)
        );
        assert_eq!(c.truncated[2].sha256, sha_hex(&id));
        // Capping a capped entry changes nothing.
        assert_eq!(cap(c.clone()), c);
        // The wire names the dotted field.
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["truncated"][2]["field"], "delivery.hub_op_id");
        assert_eq!(v["truncated"][1]["bytes"], reason.len());
    }

    #[test]
    fn the_worst_capped_entry_lets_a_full_carry_over_fit_the_smallest_cap() {
        // Every string at its longest and made of bytes JSON escapes six-fold.
        let nasty = "\u{1}".repeat(10_000);
        let mut e = entry(&nasty, Some(&nasty), &nasty, &nasty);
        e.key_id = Some(nasty.clone());
        e.delivery = Some(AuditDelivery {
            hub_op_id: Some(nasty.clone()),
            nonce: Some(nasty.clone()),
            index: Some(u64::MAX),
            blob_sha256: Some(nasty.clone()),
            blob_bytes: Some(u64::MAX),
        });
        let c = cap(e);
        assert_eq!(c.truncated.len(), 8);
        let stored = serde_json::to_vec(&CarriedRef {
            entry: &c,
            carried: true,
        })
        .unwrap();
        let line = (stored.len() + RECORD_OVERHEAD) as u64;
        assert!(line < 15 * 1024, "{line}");
        assert!(line * PENDING_SIGNATURES_MAX as u64 + line < MIN_MAX_BYTES);
    }

    #[test]
    fn entries_written_before_the_cap_still_replay() {
        let old = br#"{"at":"2026-11-22T09:58:12Z","op":"guest_destroy","guest_id":"105","decision":"pending_signature","reason":"r","key_id":null}"#;
        let (entry, carried) = decode_stored(old).unwrap();
        assert!(!carried);
        assert_eq!(entry.delivery, None);
        assert!(entry.truncated.is_empty());
        assert_eq!(entry.guest_id.as_deref(), Some("105"));
    }

    #[test]
    fn a_supplied_truncated_item_that_is_not_a_hash_is_dropped() {
        let mut e = entry("op", None, "allowed", "ok");
        e.truncated = vec![Truncation {
            field: AuditField::Reason,
            sha256: "x".repeat(5000),
            bytes: 1,
        }];
        assert!(cap(e).truncated.is_empty());
    }

    #[test]
    fn pending_is_keyed_by_op_and_guest_resolved_by_any_other_decision_and_bounded() {
        let mut k = Kept::default();
        k.apply(entry("guest_destroy", Some("105"), PENDING_SIGNATURE, "1"));
        k.apply(entry("guest_destroy", Some("106"), PENDING_SIGNATURE, "2"));
        k.apply(entry(
            "snapshot_rollback",
            Some("105"),
            PENDING_SIGNATURE,
            "3",
        ));
        // The newest entry for a key replaces the older one and moves to the end.
        k.apply(entry("guest_destroy", Some("105"), PENDING_SIGNATURE, "4"));
        let reasons: Vec<&str> = k.pending.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, vec!["2", "3", "4"]);
        // Other decisions for another key leave them; one for the same key resolves it.
        k.apply(entry("guest_destroy", Some("107"), "allowed", "x"));
        k.apply(entry("guest_destroy", None, "bad_signature", "x"));
        assert_eq!(k.pending.len(), 3);
        k.apply(entry("guest_destroy", Some("106"), "bad_signature", "x"));
        let reasons: Vec<&str> = k.pending.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, vec!["3", "4"]);
        // Many newer entries of other kinds never push a pending one out.
        for i in 0..(TAIL_KEPT * 3) {
            k.apply(entry(
                "set_config",
                Some(&i.to_string()),
                "allowed",
                "benign",
            ));
        }
        assert_eq!(k.pending.len(), 2);
        assert_eq!(k.tail.len(), TAIL_KEPT);
        // Only more distinct pending keys than the bound drop the oldest.
        let mut dropped = Vec::new();
        for i in 0..PENDING_SIGNATURES_MAX {
            let g = format!("g{i}");
            if let Some(d) = k.apply(entry("guest_destroy", Some(&g), PENDING_SIGNATURE, "n")) {
                dropped.push(d.reason);
            }
        }
        assert_eq!(k.pending.len(), PENDING_SIGNATURES_MAX);
        assert_eq!(dropped, vec!["3".to_string(), "4".to_string()]);
    }

    #[test]
    fn two_long_ops_with_the_same_prefix_are_different_keys() {
        let mut k = Kept::default();
        let a = format!("{}a", "o".repeat(AUDIT_STRING_MAX));
        let b = format!("{}b", "o".repeat(AUDIT_STRING_MAX));
        k.apply(cap(entry(&a, Some("1"), PENDING_SIGNATURE, "a")));
        k.apply(cap(entry(&b, Some("1"), PENDING_SIGNATURE, "b")));
        assert_eq!(k.pending.len(), 2);
        k.apply(cap(entry(&a, Some("1"), "allowed", "a")));
        assert_eq!(k.pending.len(), 1);
        assert_eq!(k.pending[0].reason, "b");
    }
}
