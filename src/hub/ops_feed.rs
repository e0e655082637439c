//! The signed-ops feed: fetching and parsing the ops the hub holds for this host, and
//! the announcement that there are some.
//!
//! When a control envelope says `has_signed_ops: true`, the report loop raises an
//! [`Announcement`] once that envelope is the shared one, and the app's worker fetches `GET {hub}/api/v1/signed-ops` with
//! the same bearer key and TLS trust as the report. The answer is
//! `{"ops":[{"id":"…","blob_b64":"…","signature":"<armored SSHSIG>"|null,
//! "signatures":["…"]?}]}` (`signatures`, optional, carries further signatures over the
//! same blob: an emergency rotation's recovery keys; at most [`MAX_SIGNATURES`]). The blob
//! travels as base64 of the **exact signed bytes**, so no JSON layer between the
//! operator and the verifier can re-serialize what was signed. Unknown fields are
//! tolerated; an entry that is not usable is returned as a [`SkippedEntry`] naming its
//! index, its id if it had one, and why, and the others go on. At most [`MAX_OPS`]
//! entries are taken per fetch; blobs, signatures and ids are capped in size.
//!
//! This module is transport only: it never reads a blob's fields (the verifier and the
//! gate do, in `reconcile`), never executes or audits anything, and never lets the
//! bearer key into an error, a log line or a `Debug`.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::client::{EndpointError, HubClientOptions, HubEndpoint, HubSetupError};
use crate::base::encoding::{base64_decode, hex_encode};
use crate::base::secret::REDACTED;
use crate::base::sync;
use crate::config::HubConfig;
use crate::net::{EXCERPT_LIMIT, HttpError, Method, TransportError, excerpt};

/// The path of the signed-ops endpoint under the hub's base URL.
pub(crate) const SIGNED_OPS_PATH: &str = "/api/v1/signed-ops";

/// The most entries taken from one answer; the rest are skipped (the hub may send them
/// again).
pub(crate) const MAX_OPS: usize = 32;

/// The largest decoded blob accepted, in bytes.
pub(crate) const MAX_BLOB_BYTES: usize = 8 * 1024;

/// The largest armored signature accepted, in bytes (an RSA-8192 SSHSIG is under 2 KiB).
pub(crate) const MAX_SIGNATURE_BYTES: usize = 16 * 1024;

/// The most signatures one op may carry (`signature` and `signatures` together).
pub(crate) const MAX_SIGNATURES: usize = 8;

/// The longest op id accepted, in bytes.
pub(crate) const MAX_ID_BYTES: usize = 128;

/// The largest answer read from the hub.
const MAX_ANSWER_BYTES: u64 = 2 * 1024 * 1024;

/// One op as the hub delivered it.
#[derive(Clone, PartialEq, Eq)]
pub struct DeliveredOp {
    /// The hub's id for the op (for log lines only; never trusted).
    pub id: String,
    /// The exact signed bytes.
    pub blob: Vec<u8>,
    /// The armored SSHSIG, or `None` when the hub has no signature yet.
    pub signature: Option<String>,
    /// Further signatures over the same blob (distinct texts; empty for most ops).
    pub cosignatures: Vec<String>,
}

impl fmt::Debug for DeliveredOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveredOp")
            .field("id", &self.id)
            .field("blob", &excerpt(&self.blob, EXCERPT_LIMIT))
            .field("signed", &self.signature.is_some())
            .field("cosignatures", &self.cosignatures.len())
            .finish()
    }
}

/// An entry of the answer that was not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEntry {
    /// Its index in the `ops` array.
    pub index: usize,
    /// Why it was skipped, naming the field.
    pub why: String,
    /// Its `id` when that was a string (usable or not), for the audit.
    pub hub_id: Option<String>,
    /// SHA-256 (hex) and size of its blob when `blob_b64` decoded.
    pub blob: Option<(String, u64)>,
    /// Whether it was skipped only for coming after the first [`MAX_OPS`].
    pub over_limit: bool,
}

/// The SHA-256 (lowercase hex) and length of a blob: all the audit keeps of its bytes.
pub(crate) fn blob_digest(blob: &[u8]) -> (String, u64) {
    (hex_encode(&Sha256::digest(blob)), blob.len() as u64)
}

/// A parsed answer: the usable ops and the skipped entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedOps {
    /// The usable ops, in the hub's order.
    pub ops: Vec<DeliveredOp>,
    /// Each usable op's index in the answer's `ops` array (parallel to `ops`).
    pub indexes: Vec<usize>,
    /// The entries that were skipped, in the hub's order.
    pub skipped: Vec<SkippedEntry>,
}

/// Why a fetch produced no list of ops.
#[derive(Debug)]
#[non_exhaustive]
pub enum FetchError {
    /// No complete answer: connect, TLS, timeout, broken connection, oversized body.
    Transport(TransportError),
    /// The hub answered with a status other than 2xx (401 for a wrong key).
    Http(HttpError),
    /// The body is not JSON.
    Syntax(serde_json::Error),
    /// The body is JSON but not `{"ops":[…]}`.
    Shape {
        /// What is wrong, naming the field.
        problem: String,
    },
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Transport(e) => write!(f, "signed ops: hub unreachable: {e}"),
            FetchError::Http(e) => write!(f, "signed ops: hub refused the fetch: {e}"),
            FetchError::Syntax(e) => write!(f, "signed ops: answer is not JSON: {e}"),
            FetchError::Shape { problem } => write!(f, "signed ops: answer {problem}"),
        }
    }
}

impl std::error::Error for FetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FetchError::Transport(e) => Some(e),
            FetchError::Http(e) => Some(e),
            FetchError::Syntax(e) => Some(e),
            FetchError::Shape { .. } => None,
        }
    }
}

/// Parses the hub's answer. Fails only when the whole answer is unusable; a bad entry
/// is reported in [`ParsedOps::skipped`] and the others are kept.
pub(crate) fn parse_ops(body: &[u8]) -> Result<ParsedOps, FetchError> {
    let v: Value = serde_json::from_slice(body).map_err(FetchError::Syntax)?;
    let Value::Object(obj) = v else {
        return Err(FetchError::Shape {
            problem: "must be a JSON object".into(),
        });
    };
    let entries = match obj.get("ops") {
        None | Some(Value::Null) => return Ok(ParsedOps::default()),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(FetchError::Shape {
                problem: "field ops must be an array".into(),
            });
        }
    };
    let mut parsed = ParsedOps::default();
    for (index, entry) in entries.iter().enumerate() {
        let hub_id = entry.get("id").and_then(Value::as_str).map(str::to_owned);
        if index >= MAX_OPS {
            parsed.skipped.push(SkippedEntry {
                index,
                why: format!("more than {MAX_OPS} ops in one answer"),
                hub_id,
                blob: None,
                over_limit: true,
            });
            continue;
        }
        let mut blob = None;
        match parse_entry(entry, &mut blob) {
            Ok(op) => {
                parsed.ops.push(op);
                parsed.indexes.push(index);
            }
            Err(why) => parsed.skipped.push(SkippedEntry {
                index,
                why,
                hub_id,
                blob,
                over_limit: false,
            }),
        }
    }
    Ok(parsed)
}

/// Parses one entry; `digest` is set once its blob has decoded, so a skip after that
/// point can still name the blob by hash and size.
fn parse_entry(entry: &Value, digest: &mut Option<(String, u64)>) -> Result<DeliveredOp, String> {
    let Value::Object(e) = entry else {
        return Err("must be an object".into());
    };
    let id = match e.get("id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_BYTES => {
            if s.chars().any(char::is_control) {
                return Err("id holds control characters".into());
            }
            s.clone()
        }
        Some(Value::String(_)) => {
            return Err(format!("id must be 1 to {MAX_ID_BYTES} bytes"));
        }
        _ => return Err("id must be a string".into()),
    };
    let Some(Value::String(b64)) = e.get("blob_b64") else {
        return Err(format!("op {id}: blob_b64 must be a string"));
    };
    if b64.len() > MAX_BLOB_BYTES.div_ceil(3) * 4 {
        return Err(format!(
            "op {id}: blob_b64 longer than a {MAX_BLOB_BYTES}-byte blob"
        ));
    }
    let blob = base64_decode(b64).map_err(|err| format!("op {id}: blob_b64: {err}"))?;
    if blob.is_empty() {
        return Err(format!("op {id}: blob_b64 is empty"));
    }
    *digest = Some(blob_digest(&blob));
    let signature = match e.get("signature") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() > MAX_SIGNATURE_BYTES => {
            return Err(format!(
                "op {id}: signature longer than {MAX_SIGNATURE_BYTES} bytes"
            ));
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(format!("op {id}: signature must be a string or null")),
    };
    let mut more: Vec<String> = match e.get("signatures") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.len() > MAX_SIGNATURES => {
            return Err(format!(
                "op {id}: signatures holds {} entries, at most {MAX_SIGNATURES}",
                a.len()
            ));
        }
        Some(Value::Array(a)) => {
            let mut out = Vec::with_capacity(a.len());
            for (i, v) in a.iter().enumerate() {
                match v {
                    Value::String(s) if s.len() <= MAX_SIGNATURE_BYTES => out.push(s.clone()),
                    Value::String(_) => {
                        return Err(format!(
                            "op {id}: signatures[{i}] longer than {MAX_SIGNATURE_BYTES} bytes"
                        ));
                    }
                    _ => return Err(format!("op {id}: signatures[{i}] must be a string")),
                }
            }
            out
        }
        Some(_) => return Err(format!("op {id}: signatures must be an array of strings")),
    };
    // `signature` first; the same text twice is one signature.
    let mut signature = signature;
    if signature.is_none() && !more.is_empty() {
        signature = Some(more.remove(0));
    }
    let mut cosignatures: Vec<String> = Vec::with_capacity(more.len());
    for s in more {
        if signature.as_ref() != Some(&s) && !cosignatures.contains(&s) {
            cosignatures.push(s);
        }
    }
    if cosignatures.len() >= MAX_SIGNATURES {
        return Err(format!("op {id}: more than {MAX_SIGNATURES} signatures"));
    }
    Ok(DeliveredOp {
        id,
        blob,
        signature,
        cosignatures,
    })
}

/// Fetches signed ops from the hub.
pub struct SignedOpsClient {
    endpoint: HubEndpoint,
}

impl fmt::Debug for SignedOpsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedOpsClient")
            .field("endpoint", &self.endpoint.url())
            .field("authorization", &REDACTED)
            .finish_non_exhaustive()
    }
}

impl SignedOpsClient {
    /// Builds the client (a CA file is read now). The URL rules are the report
    /// client's.
    pub fn new(options: HubClientOptions) -> Result<SignedOpsClient, HubSetupError> {
        Ok(SignedOpsClient {
            endpoint: HubEndpoint::new(&options, SIGNED_OPS_PATH, MAX_ANSWER_BYTES)?,
        })
    }

    /// Builds the client from the `hub` section of the configuration.
    pub fn from_config(hub: &HubConfig) -> Result<SignedOpsClient, HubSetupError> {
        SignedOpsClient::new(HubClientOptions::from_config(hub)?)
    }

    /// The full URL ops are fetched from.
    pub fn endpoint(&self) -> &str {
        self.endpoint.url()
    }

    /// Fetches and parses the queued ops.
    pub fn fetch(&self) -> Result<ParsedOps, FetchError> {
        let answer = self.endpoint.send(Method::Get, None).map_err(|e| match e {
            EndpointError::Transport(e) => FetchError::Transport(e),
            EndpointError::Http(e) => FetchError::Http(e),
        })?;
        parse_ops(&answer)
    }
}

/// The announcement that the hub has ops: set by the report loop, taken by the worker.
#[derive(Debug, Clone, Default)]
pub struct Announcement(Arc<(Mutex<bool>, Condvar)>);

impl Announcement {
    /// A fresh announcement, not raised.
    pub fn new() -> Announcement {
        Announcement::default()
    }

    /// Raises it and wakes the worker.
    pub fn raise(&self) {
        let (lock, cv) = &*self.0;
        *sync::lock(lock) = true;
        cv.notify_all();
    }

    /// Waits up to `d` for it to be raised; lowers it and returns `true` if it was.
    pub fn take(&self, d: Duration) -> bool {
        let (lock, cv) = &*self.0;
        let guard = sync::lock(lock);
        let (mut raised, _) = cv
            .wait_timeout_while(guard, d, |r| !*r)
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *raised, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::encoding::base64_encode;

    #[test]
    fn good_entries_are_kept_and_bad_ones_skipped_by_index() {
        let body = serde_json::json!({
            "ops": [
                {"id": "a", "blob_b64": base64_encode(b"{\"x\":1}\n"), "signature": "SIG", "extra": 1},
                {"id": "b", "blob_b64": "not base64!", "signature": null},
                {"blob_b64": base64_encode(b"x")},
                "a string",
                {"id": "c", "blob_b64": base64_encode(b"y"), "signature": 7},
                {"id": "d", "blob_b64": base64_encode(b"z")},
            ],
            "next": "tolerated"
        })
        .to_string();
        let p = parse_ops(body.as_bytes()).unwrap();
        assert_eq!(
            p.ops,
            vec![
                DeliveredOp {
                    id: "a".into(),
                    blob: b"{\"x\":1}\n".to_vec(),
                    signature: Some("SIG".into()),
                    cosignatures: Vec::new(),
                },
                DeliveredOp {
                    id: "d".into(),
                    blob: b"z".to_vec(),
                    signature: None,
                    cosignatures: Vec::new(),
                },
            ]
        );
        let idx: Vec<usize> = p.skipped.iter().map(|s| s.index).collect();
        assert_eq!(idx, vec![1, 2, 3, 4]);
        assert!(p.skipped[0].why.contains("blob_b64"), "{:?}", p.skipped);
        assert!(p.skipped[1].why.contains("id"), "{:?}", p.skipped);
        assert!(p.skipped[3].why.contains("signature"), "{:?}", p.skipped);
    }

    #[test]
    fn caps_hold() {
        let big = base64_encode(&vec![b'a'; MAX_BLOB_BYTES + 3]);
        let many: Vec<Value> = (0..MAX_OPS + 2)
            .map(|i| serde_json::json!({"id": format!("o{i}"), "blob_b64": "eA=="}))
            .collect();
        let p = parse_ops(serde_json::json!({ "ops": many }).to_string().as_bytes()).unwrap();
        assert_eq!(p.ops.len(), MAX_OPS);
        assert_eq!(p.skipped.len(), 2);
        let p = parse_ops(
            serde_json::json!({"ops": [{"id": "x", "blob_b64": big}, {"id": "y".repeat(200), "blob_b64": "eA=="}]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert!(p.ops.is_empty());
        assert!(p.skipped[0].why.contains("longer"), "{:?}", p.skipped);
        assert!(p.skipped[1].why.contains("id must be"), "{:?}", p.skipped);
    }

    #[test]
    fn a_skipped_entry_keeps_its_id_and_the_blob_digest_once_known() {
        let body = serde_json::json!({
            "ops": [
                {"id": "x".repeat(MAX_ID_BYTES + 1), "blob_b64": "eA=="},
                {"id": "s", "blob_b64": base64_encode(b"blob"), "signature": 7},
                {"id": 9, "blob_b64": "eA=="},
            ]
        })
        .to_string();
        let p = parse_ops(body.as_bytes()).unwrap();
        assert_eq!(p.skipped.len(), 3);
        assert_eq!(
            p.skipped[0].hub_id.as_deref().map(str::len),
            Some(MAX_ID_BYTES + 1)
        );
        assert_eq!(p.skipped[0].blob, None);
        assert_eq!(p.skipped[1].hub_id.as_deref(), Some("s"));
        assert_eq!(p.skipped[1].blob, Some(blob_digest(b"blob")));
        assert_eq!(
            p.skipped[1].blob.as_ref().map(|b| b.0.len()),
            Some(64),
            "a hex SHA-256"
        );
        assert_eq!(p.skipped[2].hub_id, None);
        assert!(p.skipped.iter().all(|s| !s.over_limit));
    }

    #[test]
    fn signatures_beside_signature_are_kept_once_each_and_capped() {
        let b = base64_encode(b"blob");
        let body = serde_json::json!({"ops": [
            {"id": "a", "blob_b64": b, "signature": "S1", "signatures": ["S1", "S2", "S2", "S3"]},
            {"id": "b", "blob_b64": b, "signature": null, "signatures": ["S1", "S2"]},
            {"id": "c", "blob_b64": b, "signatures": vec!["S"; MAX_SIGNATURES + 1]},
            {"id": "d", "blob_b64": b, "signatures": ["S1", 7]},
            {"id": "e", "blob_b64": b, "signatures": "S1"},
            {"id": "f", "blob_b64": b, "signatures": ["x".repeat(MAX_SIGNATURE_BYTES + 1)]},
        ]})
        .to_string();
        let p = parse_ops(body.as_bytes()).unwrap();
        assert_eq!(p.ops.len(), 2, "{:?}", p.skipped);
        assert_eq!(p.ops[0].signature.as_deref(), Some("S1"));
        assert_eq!(p.ops[0].cosignatures, ["S2", "S3"]);
        assert_eq!(p.ops[1].signature.as_deref(), Some("S1"));
        assert_eq!(p.ops[1].cosignatures, ["S2"]);
        let why: Vec<&str> = p.skipped.iter().map(|s| s.why.as_str()).collect();
        assert!(why[0].contains("at most"), "{why:?}");
        assert!(why[1].contains("signatures[1]"), "{why:?}");
        assert!(why[2].contains("array of strings"), "{why:?}");
        assert!(why[3].contains("longer than"), "{why:?}");
    }

    #[test]
    fn unusable_answers_are_typed() {
        assert!(matches!(parse_ops(b"<html>"), Err(FetchError::Syntax(_))));
        assert!(matches!(parse_ops(b"[]"), Err(FetchError::Shape { .. })));
        assert!(matches!(
            parse_ops(br#"{"ops":{}}"#),
            Err(FetchError::Shape { .. })
        ));
        assert_eq!(parse_ops(br#"{"ops":null}"#).unwrap(), ParsedOps::default());
    }

    #[test]
    fn an_announcement_is_taken_once() {
        let a = Announcement::new();
        assert!(!a.take(Duration::ZERO));
        a.raise();
        a.raise();
        assert!(a.take(Duration::ZERO));
        assert!(!a.take(Duration::ZERO));
    }
}
