//! Reading a Proxmox answer body: the `{"data": …, "total": …}` envelope of a success,
//! the `message` and `errors` of a failure, and the per-call shapes inside `data`.
//!
//! The client reads every body through these functions; [`decode_answer`] runs any bytes
//! through the same path for one kind of call, so fuzzers and tests reach the exact
//! decoding the client does without a socket. Nothing here does I/O or sees the token:
//! the client scrubs and bounds whatever of an answer it keeps.

use serde_json::Value;

use super::decode::{self, DecodeError, Obj};
use super::error::{Privilege, is_transient_text};
use super::task::{TaskLogLine, TaskStatus, TaskSummary};
use super::types::{
    Guest, GuestConfig, Node, NodeStatus, Snapshot, Storage, StorageStatus, Version, Volume,
};
use super::upid::Upid;
use crate::net::excerpt;

/// A successful answer: `data` and, for paged lists, `total`.
pub(crate) struct Envelope {
    pub(crate) data: Value,
    pub(crate) total: Option<u64>,
}

/// Why a success body is not an answer envelope.
pub(crate) enum EnvelopeProblem {
    /// Not JSON at all.
    NotJson(serde_json::Error),
    /// JSON, but not an object.
    NotAnObject,
    /// An object without a `data` field.
    NoData,
}

impl EnvelopeProblem {
    /// What the body should have been, for [`DecodeError::expected`].
    pub(crate) fn expected(&self) -> &'static str {
        match self {
            EnvelopeProblem::NotJson(_) => "JSON",
            EnvelopeProblem::NotAnObject => "an object {\"data\": ...}",
            EnvelopeProblem::NoData => "an object with a \"data\" field",
        }
    }

    /// A bounded excerpt of `body` with the parser's complaint, for
    /// [`DecodeError::found`] (the caller scrubs it).
    pub(crate) fn found(&self, body: &[u8]) -> String {
        match self {
            EnvelopeProblem::NotJson(e) => format!("{} ({e})", excerpt(body, 64)),
            _ => excerpt(body, 64),
        }
    }
}

/// Splits a success body into `data` and `total` (`total` is read when it is a
/// non-negative integer and ignored otherwise).
pub(crate) fn envelope(body: &[u8]) -> Result<Envelope, EnvelopeProblem> {
    let value: Value = serde_json::from_slice(body).map_err(EnvelopeProblem::NotJson)?;
    let Value::Object(mut map) = value else {
        return Err(EnvelopeProblem::NotAnObject);
    };
    let data = map.remove("data").ok_or(EnvelopeProblem::NoData)?;
    let total = map.get("total").and_then(decode::as_u64);
    Ok(Envelope { data, total })
}

/// `data` as one object decoded with `f`.
pub(crate) fn one<T>(
    data: &Value,
    f: impl Fn(&Obj<'_>) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    Obj::new(data, "data").and_then(|o| f(&o))
}

/// `data` as a task id.
pub(crate) fn upid(data: &Value) -> Result<Upid, DecodeError> {
    data.as_str()
        .and_then(|s| Upid::parse(s).ok())
        .ok_or_else(|| decode::wrong("data".to_string(), "a task id (UPID)", Some(data)))
}

/// `data` as a page of a task log: `[{"n": 1, "t": "text"}, …]`.
pub(crate) fn task_log_lines(data: &Value) -> Result<Vec<TaskLogLine>, DecodeError> {
    decode::list(data, "data", |o| {
        Ok(TaskLogLine {
            n: o.u64("n")?,
            text: o.string("t")?,
        })
    })
}

/// What an error body says, raw: neither scrubbed nor bounded yet.
pub(crate) struct ErrorBody {
    /// The `message` field, trailing whitespace trimmed; `None` when absent or empty.
    pub(crate) message: Option<String>,
    /// The `errors` object (parameter → complaint), values that are not strings
    /// written as JSON.
    pub(crate) errors: Vec<(String, String)>,
}

/// Reads an error body; a body that is not a JSON object says nothing.
pub(crate) fn error_body(body: &[u8]) -> ErrorBody {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let object = parsed.as_ref().and_then(Value::as_object);
    let message = object
        .and_then(|o| o.get("message"))
        .and_then(Value::as_str)
        .map(|m| m.trim_end().to_string())
        .filter(|m| !m.is_empty());
    let errors = object
        .and_then(|o| o.get("errors"))
        .and_then(Value::as_object)
        .map(|errs| {
            errs.iter()
                .map(|(k, v)| {
                    let text = v
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string());
                    (k.clone(), text)
                })
                .collect()
        })
        .unwrap_or_default();
    ErrorBody { message, errors }
}

/// The kinds of answer the client decodes, for [`decode_answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// `GET /version`.
    Version,
    /// `GET /nodes`.
    Nodes,
    /// `GET /nodes/{node}/status`.
    NodeStatus,
    /// `GET /nodes/{node}/lxc`.
    Guests,
    /// `GET …/lxc/{vmid}/status/current`.
    GuestStatus,
    /// `GET …/lxc/{vmid}/config`.
    GuestConfig,
    /// `GET …/lxc/{vmid}/snapshot`.
    Snapshots,
    /// `GET /storage`.
    Storage,
    /// `GET /nodes/{node}/storage`.
    NodeStorage,
    /// `GET /nodes/{node}/storage/{storage}/content`.
    StorageContent,
    /// `GET …/tasks/{upid}/status`.
    TaskStatus,
    /// `GET …/tasks/{upid}/log`.
    TaskLog,
    /// `GET /nodes/{node}/tasks`.
    Tasks,
    /// A mutation that answers a task id (start, stop, destroy, restore, …).
    Task,
    /// `PUT …/lxc/{vmid}/config`: `null` (applied) or a task id.
    SetConfig,
    /// Any call answered with an error status: message, errors, privilege, transience.
    Error,
}

impl Answer {
    /// Every kind, in declaration order.
    pub const ALL: [Answer; 16] = [
        Answer::Version,
        Answer::Nodes,
        Answer::NodeStatus,
        Answer::Guests,
        Answer::GuestStatus,
        Answer::GuestConfig,
        Answer::Snapshots,
        Answer::Storage,
        Answer::NodeStorage,
        Answer::StorageContent,
        Answer::TaskStatus,
        Answer::TaskLog,
        Answer::Tasks,
        Answer::Task,
        Answer::SetConfig,
        Answer::Error,
    ];
}

/// Decodes `body` as the client decodes the answer to a call of kind `answer`, and
/// discards the result. For fuzzing and tests: the typed reads are the client's own
/// methods. An error answer never fails to decode (a body that says nothing falls back
/// to the status line in the client).
pub fn decode_answer(answer: Answer, body: &[u8]) -> Result<(), DecodeError> {
    if answer == Answer::Error {
        let e = error_body(body);
        if let Some(m) = &e.message {
            let _ = Privilege::parse(m);
            let _ = is_transient_text(m);
        }
        return Ok(());
    }
    let env = envelope(body).map_err(|p| DecodeError {
        field: "body".to_string(),
        expected: p.expected(),
        found: p.found(body),
    })?;
    let data = &env.data;
    let at = "data";
    match answer {
        Answer::Version => one(data, Version::decode).map(drop),
        Answer::Nodes => decode::list(data, at, Node::decode).map(drop),
        Answer::NodeStatus => one(data, NodeStatus::decode).map(drop),
        Answer::Guests => decode::list(data, at, Guest::decode).map(drop),
        Answer::GuestStatus => one(data, Guest::decode).map(drop),
        Answer::GuestConfig => one(data, GuestConfig::decode).map(|c| {
            let _ = c.rootfs_bytes();
        }),
        Answer::Snapshots => decode::list(data, at, Snapshot::decode).map(drop),
        Answer::Storage => decode::list(data, at, Storage::decode).map(drop),
        Answer::NodeStorage => decode::list(data, at, StorageStatus::decode).map(drop),
        Answer::StorageContent => decode::list(data, at, Volume::decode).map(drop),
        Answer::TaskStatus => one(data, TaskStatus::decode).map(|t| {
            let _ = t.exit();
        }),
        Answer::TaskLog => task_log_lines(data).map(drop),
        Answer::Tasks => decode::list(data, at, TaskSummary::decode).map(drop),
        Answer::Task => upid(data).map(drop),
        Answer::SetConfig if data.is_null() => Ok(()),
        Answer::SetConfig => upid(data).map(drop),
        Answer::Error => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_problems_name_what_was_expected() {
        let e = decode_answer(Answer::Version, b"<html>").unwrap_err();
        assert_eq!((e.field.as_str(), e.expected), ("body", "JSON"));
        let e = decode_answer(Answer::Version, b"[1]").unwrap_err();
        assert_eq!(e.expected, "an object {\"data\": ...}");
        let e = decode_answer(Answer::Version, b"{\"total\":1}").unwrap_err();
        assert_eq!(e.expected, "an object with a \"data\" field");
    }

    #[test]
    fn set_config_takes_null_or_a_task_id() {
        assert!(decode_answer(Answer::SetConfig, b"{\"data\":null}").is_ok());
        let upid = "UPID:pve:0000A1B2:0001C3D4:6750A1B2:vzstart:100:root@pam:";
        let body = format!("{{\"data\":\"{upid}\"}}");
        assert!(decode_answer(Answer::SetConfig, body.as_bytes()).is_ok());
        assert!(decode_answer(Answer::Task, body.as_bytes()).is_ok());
        let e = decode_answer(Answer::Task, b"{\"data\":null}").unwrap_err();
        assert_eq!(e.expected, "a task id (UPID)");
    }

    #[test]
    fn error_bodies_never_fail_and_keep_message_and_errors() {
        for body in [&b""[..], b"\xff", b"[]", b"{\"message\":7}"] {
            assert!(decode_answer(Answer::Error, body).is_ok());
        }
        let e = error_body(br#"{"message":"bad\n","errors":{"cores":"too big","x":1}}"#);
        assert_eq!(e.message.as_deref(), Some("bad"));
        assert_eq!(
            e.errors,
            vec![
                ("cores".to_string(), "too big".to_string()),
                ("x".to_string(), "1".to_string())
            ]
        );
        assert!(error_body(br#"{"message":"  "}"#).message.is_none());
    }

    #[test]
    fn task_log_pages_decode_with_their_total() {
        let env = envelope(br#"{"data":[{"n":1,"t":"a"},{"n":2,"t":"b"}],"total":9}"#)
            .ok()
            .unwrap();
        assert_eq!(env.total, Some(9));
        let lines = task_log_lines(&env.data).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].text, "b");
    }
}
