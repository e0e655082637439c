//! The control envelope: the hub's answer to a host report.
//!
//! `{"poll_interval_seconds":300,"blocked":false,"desired_generation":0,"has_signed_ops":false,
//! "ack_signed_op_results":["op-7"]}`.
//! Unknown fields are tolerated (the hub may grow); a field that is present with the
//! wrong type, or a body that is not a JSON object, is an error for that round only.
//! `ack_signed_op_results` lists the ids of the signed-op results the hub has recorded
//! (at most [`MAX_ACKS`], each 1 to [`MAX_ACK_ID_BYTES`] bytes without control
//! characters); absent or `null` means none.
//! This module parses and clamps; it never acts on `blocked`, the generation or the
//! acknowledgements (the reconcile engine reads the first two from the poller's shared
//! copy; the app drops acknowledged results).

use std::fmt;

use serde_json::Value;

use crate::base::json::kind;

/// The shortest poll interval the agent accepts from the hub, in seconds.
pub const MIN_POLL_SECONDS: u64 = 60;
/// The longest poll interval the agent accepts from the hub, in seconds.
pub const MAX_POLL_SECONDS: u64 = 3600;

/// The most ids one envelope may acknowledge (as many as a report carries results).
pub const MAX_ACKS: usize = 256;
/// The longest acknowledged id, in bytes (the longest op id the agent accepts).
pub const MAX_ACK_ID_BYTES: usize = 128;

/// The hub's instructions for this host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ControlEnvelope {
    /// The interval the hub asks for, already clamped to
    /// [`MIN_POLL_SECONDS`]..=[`MAX_POLL_SECONDS`]; `None` if the hub did not say.
    pub poll_interval_seconds: Option<u64>,
    /// The hub asks the agent to hold all mutations.
    pub blocked: bool,
    /// The generation of the desired state the hub holds for this host.
    pub desired_generation: u64,
    /// The hub has signed operations waiting for this host.
    pub has_signed_ops: bool,
    /// The ids of the signed-op results the hub has recorded: the agent stops
    /// reporting them. Never an instruction about the ops themselves.
    pub ack_signed_op_results: Vec<String>,
}

/// Why an answer is not a usable envelope.
#[derive(Debug)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The body is not JSON. Fires on truncated or garbage answers.
    Syntax(serde_json::Error),
    /// The body is JSON but not an object.
    NotAnObject {
        /// The JSON type that arrived instead.
        got: &'static str,
    },
    /// A known field is present with the wrong type or value.
    Field {
        /// The field's name.
        field: &'static str,
        /// What was expected and what arrived.
        problem: String,
    },
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvelopeError::Syntax(e) => write!(f, "control envelope is not JSON: {e}"),
            EnvelopeError::NotAnObject { got } => {
                write!(f, "control envelope must be a JSON object, got {got}")
            }
            EnvelopeError::Field { field, problem } => {
                write!(f, "control envelope field {field}: {problem}")
            }
        }
    }
}

impl std::error::Error for EnvelopeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EnvelopeError::Syntax(e) => Some(e),
            _ => None,
        }
    }
}

/// Clamps a requested interval into [`MIN_POLL_SECONDS`]..=[`MAX_POLL_SECONDS`].
pub(crate) fn clamp_poll_seconds(requested: u64) -> u64 {
    requested.clamp(MIN_POLL_SECONDS, MAX_POLL_SECONDS)
}

impl ControlEnvelope {
    /// Parses a response body. A missing field keeps its default (`null` counts as
    /// missing); `poll_interval_seconds` must be a whole number and is clamped (a
    /// negative one clamps to the minimum).
    pub fn parse(body: &[u8]) -> Result<ControlEnvelope, EnvelopeError> {
        let v: Value = serde_json::from_slice(body).map_err(EnvelopeError::Syntax)?;
        ControlEnvelope::from_value(&v)
    }

    /// [`ControlEnvelope::parse`] of a body already read as JSON (an event carries the
    /// envelope's fields beside its own).
    pub(crate) fn from_value(v: &Value) -> Result<ControlEnvelope, EnvelopeError> {
        let Value::Object(obj) = v else {
            return Err(EnvelopeError::NotAnObject { got: kind(v) });
        };
        let present = |name: &str| obj.get(name).filter(|v| !v.is_null());
        let boolean = |field: &'static str| -> Result<bool, EnvelopeError> {
            match present(field) {
                None => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(EnvelopeError::Field {
                    field,
                    problem: format!("must be true or false, got {}", kind(other)),
                }),
            }
        };
        let poll_interval_seconds = match present("poll_interval_seconds") {
            None => None,
            Some(Value::Number(n)) => {
                if let Some(u) = n.as_u64() {
                    Some(clamp_poll_seconds(u))
                } else if n.as_i64().is_some() {
                    Some(MIN_POLL_SECONDS)
                } else {
                    return Err(EnvelopeError::Field {
                        field: "poll_interval_seconds",
                        problem: format!("must be a whole number of seconds, got {n}"),
                    });
                }
            }
            Some(other) => {
                return Err(EnvelopeError::Field {
                    field: "poll_interval_seconds",
                    problem: format!("must be a number, got {}", kind(other)),
                });
            }
        };
        let desired_generation = match present("desired_generation") {
            None => 0,
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| EnvelopeError::Field {
                field: "desired_generation",
                problem: format!("must be a non-negative whole number, got {n}"),
            })?,
            Some(other) => {
                return Err(EnvelopeError::Field {
                    field: "desired_generation",
                    problem: format!("must be a number, got {}", kind(other)),
                });
            }
        };
        Ok(ControlEnvelope {
            poll_interval_seconds,
            blocked: boolean("blocked")?,
            desired_generation,
            has_signed_ops: boolean("has_signed_ops")?,
            ack_signed_op_results: acks(present("ack_signed_op_results"))?,
        })
    }

    /// The envelope as the agent understood it, for printing: the interval already
    /// clamped, `null` when the hub did not send one.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "poll_interval_seconds": self.poll_interval_seconds,
            "blocked": self.blocked,
            "desired_generation": self.desired_generation,
            "has_signed_ops": self.has_signed_ops,
            "ack_signed_op_results": self.ack_signed_op_results,
        })
    }
}

/// `ack_signed_op_results`: an array of at most [`MAX_ACKS`] ids.
fn acks(v: Option<&Value>) -> Result<Vec<String>, EnvelopeError> {
    const FIELD: &str = "ack_signed_op_results";
    let bad = |problem: String| EnvelopeError::Field {
        field: FIELD,
        problem,
    };
    let items = match v {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(bad(format!("must be an array, got {}", kind(other)))),
    };
    if items.len() > MAX_ACKS {
        return Err(bad(format!(
            "holds {} ids, more than {MAX_ACKS}",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(id)
                if !id.is_empty()
                    && id.len() <= MAX_ACK_ID_BYTES
                    && !id.chars().any(char::is_control) =>
            {
                Ok(id.clone())
            }
            Value::String(_) => Err(bad(format!(
                "[{i}] must be 1 to {MAX_ACK_ID_BYTES} bytes without control characters"
            ))),
            other => Err(bad(format!("[{i}] must be a string, got {}", kind(other)))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ControlEnvelope, EnvelopeError> {
        ControlEnvelope::parse(s.as_bytes())
    }

    #[test]
    fn the_design_example_parses() {
        let e = parse(
            r#"{"poll_interval_seconds":300,"blocked":false,"desired_generation":0,"has_signed_ops":false}"#,
        )
        .unwrap();
        assert_eq!(
            e,
            ControlEnvelope {
                poll_interval_seconds: Some(300),
                blocked: false,
                desired_generation: 0,
                has_signed_ops: false,
                ack_signed_op_results: Vec::new(),
            }
        );
    }

    #[test]
    fn acknowledged_result_ids_are_kept_in_order() {
        let e = parse(r#"{"ack_signed_op_results":["op-1","op 2","op-1"]}"#).unwrap();
        assert_eq!(e.ack_signed_op_results, ["op-1", "op 2", "op-1"]);
        let full: Vec<String> = (0..MAX_ACKS).map(|i| format!("op-{i}")).collect();
        let body = serde_json::json!({ "ack_signed_op_results": full }).to_string();
        assert_eq!(parse(&body).unwrap().ack_signed_op_results.len(), MAX_ACKS);
        let longest = "i".repeat(MAX_ACK_ID_BYTES);
        let body = serde_json::json!({ "ack_signed_op_results": [longest] }).to_string();
        assert!(parse(&body).is_ok());
        assert_eq!(
            parse(r#"{"ack_signed_op_results":null}"#).unwrap(),
            ControlEnvelope::default()
        );
    }

    #[test]
    fn flags_and_generation_are_kept() {
        let e = parse(r#"{"blocked":true,"desired_generation":42,"has_signed_ops":true}"#).unwrap();
        assert!(e.blocked && e.has_signed_ops);
        assert_eq!(e.desired_generation, 42);
        assert_eq!(e.poll_interval_seconds, None);
    }

    #[test]
    fn interval_is_clamped_both_ways() {
        for (sent, want) in [
            ("0", 60),
            ("-5", 60),
            ("59", 60),
            ("60", 60),
            ("61", 61),
            ("3600", 3600),
            ("3601", 3600),
            ("18446744073709551615", 3600),
        ] {
            let e = parse(&format!(r#"{{"poll_interval_seconds":{sent}}}"#)).unwrap();
            assert_eq!(e.poll_interval_seconds, Some(want), "{sent}");
        }
    }

    #[test]
    fn unknown_fields_and_nulls_are_tolerated() {
        let e = parse(
            r#"{"poll_interval_seconds":null,"blocked":null,"future":{"x":[1,2]},"desired_state_url":"https://x"}"#,
        )
        .unwrap();
        assert_eq!(e, ControlEnvelope::default());
    }

    #[test]
    fn malformed_answers_are_typed_errors_naming_the_field() {
        assert!(matches!(
            parse("{\"blocked\":"),
            Err(EnvelopeError::Syntax(_))
        ));
        assert!(matches!(parse("<html>"), Err(EnvelopeError::Syntax(_))));
        assert!(matches!(
            parse("[1]"),
            Err(EnvelopeError::NotAnObject { got: "an array" })
        ));
        let cases = [
            (
                r#"{"poll_interval_seconds":"300"}"#,
                "poll_interval_seconds",
            ),
            (r#"{"poll_interval_seconds":1.5}"#, "poll_interval_seconds"),
            (r#"{"blocked":"no"}"#, "blocked"),
            (r#"{"has_signed_ops":1}"#, "has_signed_ops"),
            (r#"{"desired_generation":-1}"#, "desired_generation"),
            (r#"{"desired_generation":"7"}"#, "desired_generation"),
            (
                r#"{"ack_signed_op_results":"op-1"}"#,
                "ack_signed_op_results",
            ),
            (
                r#"{"ack_signed_op_results":{"id":"op-1"}}"#,
                "ack_signed_op_results",
            ),
            (
                r#"{"ack_signed_op_results":["op-1",7]}"#,
                "ack_signed_op_results",
            ),
            (r#"{"ack_signed_op_results":[""]}"#, "ack_signed_op_results"),
            (
                r#"{"ack_signed_op_results":["a\u0001b"]}"#,
                "ack_signed_op_results",
            ),
        ];
        let too_long =
            serde_json::json!({ "ack_signed_op_results": ["i".repeat(MAX_ACK_ID_BYTES + 1)] });
        let too_many = serde_json::json!({ "ack_signed_op_results": vec!["op"; MAX_ACKS + 1] });
        for body in [too_long, too_many] {
            match parse(&body.to_string()) {
                Err(EnvelopeError::Field { field, .. }) => {
                    assert_eq!(field, "ack_signed_op_results")
                }
                other => panic!("{other:?}"),
            }
        }
        for (body, field) in cases {
            match parse(body) {
                Err(EnvelopeError::Field { field: f, .. }) => assert_eq!(f, field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
            assert!(parse(body).unwrap_err().to_string().contains(field));
        }
    }
}
