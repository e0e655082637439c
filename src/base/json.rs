//! How an error names a JSON value's type: "got a string", "got null". One wording for
//! every reader of JSON from outside (config, hub answers); it never reads a value's
//! contents, so an error built from it carries no secret.

use serde_json::Value;

/// The JSON type of `v`, with its article: `null`, `a boolean`, ..., `an object`.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
