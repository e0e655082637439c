//! The hub protocol's JSON Schemas (`vectors/hub/*.schema.json`) and a small validator
//! for the subset of draft 2020-12 they use.
//!
//! The simulator checks every message it receives and every answer it composes against
//! these schemas, and the conformance example checks a real hub's answers with them, so
//! the published schemas and the simulated hub cannot drift apart.
//!
//! Supported keywords: `type` (a name or an array of names; `integer` means a JSON
//! number written without a fraction or an exponent, as the agent reads it),
//! `properties`, `required`, `additionalProperties` (a boolean or a schema), `items`,
//! `enum`, `const`, `minimum`, `maximum`, `minLength`/`maxLength` (in characters),
//! `minItems`/`maxItems`, `$ref` to `#/$defs/NAME` or to a sibling schema by file name,
//! and `$defs`. Annotations (`$schema`, `$id`, `title`, `description`, `$comment`,
//! `format`, `default`, `examples`) are ignored. Any other keyword is reported as a
//! problem, so a schema never silently asks for a check this validator does not make.
//!
//! Test and demo code: it never talks to the network and never ships in the agent.

use serde_json::{Map, Value};

/// The body of `POST /api/v1/host-report`.
pub const HOST_REPORT: &str = "host-report.schema.json";
/// The answer to a host report.
pub const ENVELOPE: &str = "envelope.schema.json";
/// The answer to `GET /api/v1/events`.
pub const EVENT: &str = "event.schema.json";
/// The answer to `GET /api/v1/desired-state`.
pub const DESIRED_STATE: &str = "desired-state.schema.json";
/// The answer to `GET /api/v1/signed-ops`.
pub const SIGNED_OPS: &str = "signed-ops.schema.json";
/// `ack_signed_op_results`, shared by the envelope and the event.
pub const ACKS: &str = "acks.schema.json";

/// Every schema by file name, as published in `vectors/hub/`.
pub const SCHEMAS: &[(&str, &str)] = &[
    (
        HOST_REPORT,
        include_str!("../../vectors/hub/host-report.schema.json"),
    ),
    (
        ENVELOPE,
        include_str!("../../vectors/hub/envelope.schema.json"),
    ),
    (EVENT, include_str!("../../vectors/hub/event.schema.json")),
    (
        DESIRED_STATE,
        include_str!("../../vectors/hub/desired-state.schema.json"),
    ),
    (
        SIGNED_OPS,
        include_str!("../../vectors/hub/signed-ops.schema.json"),
    ),
    (ACKS, include_str!("../../vectors/hub/acks.schema.json")),
];

/// Keywords that only annotate: never a check.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$defs",
    "title",
    "description",
    "$comment",
    "format",
    "default",
    "examples",
];

/// How deep `$ref`s may nest before the validator calls the schema circular.
const MAX_DEPTH: usize = 64;

/// Checks `instance` against the schema named `schema` (one of [`SCHEMAS`]); returns
/// one line per problem, each starting with the instance path (`$.guests[0].vmid: …`).
/// Empty when it validates.
pub fn validate(schema: &str, instance: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    match document(schema) {
        Ok(doc) => {
            let v = Validator {
                doc_name: schema,
                doc: &doc,
            };
            v.check(&doc, instance, "$", 0, &mut problems);
        }
        Err(e) => problems.push(e),
    }
    problems
}

/// Checks `instance` against `schema`, a schema given as a value whose `$ref`s resolve
/// against itself (and the published siblings by file name). For the validator's tests.
pub fn validate_with(schema: &Value, instance: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let v = Validator {
        doc_name: "(inline)",
        doc: schema,
    };
    v.check(schema, instance, "$", 0, &mut problems);
    problems
}

/// The parsed schema named `name`.
fn document(name: &str) -> Result<Value, String> {
    let (_, text) = SCHEMAS
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| format!("no schema named {name}"))?;
    serde_json::from_str(text).map_err(|e| format!("schema {name} is not JSON: {e}"))
}

struct Validator<'a> {
    doc_name: &'a str,
    doc: &'a Value,
}

/// The JSON type names `v` has (`integer` numbers are `number`s too).
fn is_type(v: &Value, name: &str) -> Option<bool> {
    Some(match name {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        _ => return None,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn child(path: &str, key: &str) -> String {
    format!("{path}.{key}")
}

/// A number as f64 for bounds (exact enough for the bounds the schemas use).
fn number(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn non_negative(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}

/// The problem with `instance` under `minimum`/`maximum` = `arg`, if any.
fn bound_problem(keyword: &str, arg: &Value, instance: &Value, path: &str) -> Option<String> {
    let Some(bound) = number(arg) else {
        return Some(format!("{path}: schema error: {keyword} must be a number"));
    };
    let n = instance.as_number()?;
    // Compare integers exactly; f64 only when either side has a fraction.
    let order = match (n.as_i64(), arg.as_i64(), n.as_u64(), arg.as_u64()) {
        (Some(a), Some(b), _, _) => a.cmp(&b),
        (_, _, Some(a), Some(b)) => a.cmp(&b),
        _ => n
            .as_f64()
            .and_then(|a| a.partial_cmp(&bound))
            .unwrap_or(std::cmp::Ordering::Equal),
    };
    let (bad, word) = if keyword == "minimum" {
        (order.is_lt(), "at least")
    } else {
        (order.is_gt(), "at most")
    };
    bad.then(|| format!("{path}: must be {word} {arg}, got {n}"))
}

/// The problem with `instance` under `minLength`/`maxLength` (a string, counted in
/// characters) or `minItems`/`maxItems` (an array) = `arg`, if any.
fn count_problem(keyword: &str, arg: &Value, instance: &Value, path: &str) -> Option<String> {
    let Some(limit) = non_negative(arg) else {
        return Some(format!(
            "{path}: schema error: {keyword} must be a non-negative integer"
        ));
    };
    let n = match (keyword, instance) {
        ("minLength" | "maxLength", Value::String(s)) => s.chars().count(),
        ("minItems" | "maxItems", Value::Array(items)) => items.len(),
        _ => return None,
    };
    let (bad, bound) = if keyword.starts_with("min") {
        (n < limit, "at least")
    } else {
        (n > limit, "at most")
    };
    bad.then(|| {
        if instance.is_string() {
            format!("{path}: must be {bound} {limit} characters, got {n}")
        } else {
            format!("{path}: must hold {bound} {limit} items, holds {n}")
        }
    })
}

impl Validator<'_> {
    fn check(
        &self,
        schema: &Value,
        instance: &Value,
        path: &str,
        depth: usize,
        out: &mut Vec<String>,
    ) {
        if depth > MAX_DEPTH {
            out.push(format!(
                "{path}: schema $ref nesting deeper than {MAX_DEPTH}"
            ));
            return;
        }
        let schema = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => {
                out.push(format!("{path}: not allowed here"));
                return;
            }
            Value::Object(s) => s,
            other => {
                out.push(format!(
                    "{path}: schema error: a schema must be an object or a boolean, got {}",
                    kind(other)
                ));
                return;
            }
        };
        for (keyword, arg) in schema {
            match keyword.as_str() {
                k if ANNOTATIONS.contains(&k) => {}
                "type" => self.check_type(arg, instance, path, out),
                "enum" => match arg {
                    Value::Array(allowed) if allowed.contains(instance) => {}
                    Value::Array(allowed) => out.push(format!(
                        "{path}: {instance} is not one of {}",
                        Value::Array(allowed.clone())
                    )),
                    _ => out.push(format!("{path}: schema error: enum must be an array")),
                },
                "const" if arg != instance => {
                    out.push(format!("{path}: must be {arg}, got {instance}"));
                }
                "const" => {}
                "minimum" | "maximum" => out.extend(bound_problem(keyword, arg, instance, path)),
                "minLength" | "maxLength" | "minItems" | "maxItems" => {
                    out.extend(count_problem(keyword, arg, instance, path));
                }
                "required" => self.check_required(arg, instance, path, out),
                "properties" => self.check_properties(arg, instance, path, depth, out),
                "additionalProperties" => {
                    self.check_additional(schema, arg, instance, path, depth, out);
                }
                "items" => {
                    if let Value::Array(items) = instance {
                        for (i, item) in items.iter().enumerate() {
                            self.check(arg, item, &format!("{path}[{i}]"), depth + 1, out);
                        }
                    }
                }
                "$ref" => match arg.as_str() {
                    Some(reference) => self.follow(reference, instance, path, depth, out),
                    None => out.push(format!("{path}: schema error: $ref must be a string")),
                },
                other => out.push(format!(
                    "{path}: schema error: keyword {other} is not supported by this validator"
                )),
            }
        }
    }

    fn check_type(&self, arg: &Value, instance: &Value, path: &str, out: &mut Vec<String>) {
        let names: Vec<&str> = match arg {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if names.is_empty() {
            out.push(format!("{path}: schema error: type must name types"));
            return;
        }
        let mut matched = false;
        for name in &names {
            match is_type(instance, name) {
                Some(true) => matched = true,
                Some(false) => {}
                None => out.push(format!("{path}: schema error: unknown type {name}")),
            }
        }
        if !matched {
            out.push(format!(
                "{path}: must be {}, got {}",
                names.join(" or "),
                kind(instance)
            ));
        }
    }

    fn check_required(&self, arg: &Value, instance: &Value, path: &str, out: &mut Vec<String>) {
        let Value::Array(names) = arg else {
            out.push(format!("{path}: schema error: required must be an array"));
            return;
        };
        let Value::Object(obj) = instance else {
            return;
        };
        for name in names.iter().filter_map(Value::as_str) {
            if !obj.contains_key(name) {
                out.push(format!("{}: is required", child(path, name)));
            }
        }
    }

    fn check_properties(
        &self,
        arg: &Value,
        instance: &Value,
        path: &str,
        depth: usize,
        out: &mut Vec<String>,
    ) {
        let Value::Object(props) = arg else {
            out.push(format!(
                "{path}: schema error: properties must be an object"
            ));
            return;
        };
        let Value::Object(obj) = instance else {
            return;
        };
        for (name, value) in obj {
            if let Some(sub) = props.get(name) {
                self.check(sub, value, &child(path, name), depth + 1, out);
            }
        }
    }

    fn check_additional(
        &self,
        schema: &Map<String, Value>,
        arg: &Value,
        instance: &Value,
        path: &str,
        depth: usize,
        out: &mut Vec<String>,
    ) {
        let Value::Object(obj) = instance else {
            return;
        };
        let known = schema.get("properties").and_then(Value::as_object);
        for (name, value) in obj {
            if known.is_some_and(|k| k.contains_key(name)) {
                continue;
            }
            match arg {
                Value::Bool(false) => {
                    out.push(format!(
                        "{}: is not allowed (unknown field)",
                        child(path, name)
                    ));
                }
                _ => self.check(arg, value, &child(path, name), depth + 1, out),
            }
        }
    }

    /// Follows `#/$defs/NAME` in this document, or `FILE[#/$defs/NAME]` among the
    /// published siblings (whose own `$ref`s then resolve in that sibling).
    fn follow(
        &self,
        reference: &str,
        instance: &Value,
        path: &str,
        depth: usize,
        out: &mut Vec<String>,
    ) {
        let (file, pointer) = reference.split_once('#').unwrap_or((reference, ""));
        if file.is_empty() || file == self.doc_name {
            match self.lookup(reference, pointer) {
                Ok(target) => self.check(target, instance, path, depth + 1, out),
                Err(e) => out.push(format!("{path}: schema error: {e}")),
            }
            return;
        }
        let doc = match document(file) {
            Ok(doc) => doc,
            Err(e) => {
                out.push(format!("{path}: schema error: $ref {reference}: {e}"));
                return;
            }
        };
        let sibling = Validator {
            doc_name: file,
            doc: &doc,
        };
        match sibling.lookup(reference, pointer) {
            Ok(target) => sibling.check(target, instance, path, depth + 1, out),
            Err(e) => out.push(format!("{path}: schema error: {e}")),
        }
    }

    /// The schema at `pointer` (empty, or `/$defs/NAME`) in this document.
    fn lookup(&self, reference: &str, pointer: &str) -> Result<&Value, String> {
        if pointer.is_empty() {
            return Ok(self.doc);
        }
        let name = pointer
            .strip_prefix("/$defs/")
            .filter(|n| !n.contains('/'))
            .ok_or_else(|| format!("$ref {reference}: only #/$defs/NAME is supported"))?;
        self.doc
            .get("$defs")
            .and_then(|d| d.get(name))
            .ok_or_else(|| format!("$ref {reference}: no such definition"))
    }
}

#[cfg(test)]
mod tests;
