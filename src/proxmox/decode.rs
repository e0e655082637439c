//! Reading Proxmox's JSON the way Perl writes it: a number may arrive as a JSON
//! number or a numeric string, a boolean as `1`/`0` (or a string of it), and an
//! absent field may also be `null`. Every accessor names the field path on failure
//! (`data[3].maxmem`), so a decode error says exactly what did not fit. It never
//! guesses: a value of any other shape is an error, not a default.

use std::fmt;

use serde_json::{Map, Value};

use crate::net::excerpt;

/// A field that is missing or has the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Path of the field, e.g. `data.memory.total`.
    pub field: String,
    /// What was expected there.
    pub expected: &'static str,
    /// What was found (bounded excerpt), or `nothing`.
    pub found: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "field {}: expected {}, found {}",
            self.field, self.expected, self.found
        )
    }
}

impl std::error::Error for DecodeError {}

fn found(v: Option<&Value>) -> String {
    match v {
        None => "nothing".to_string(),
        Some(v) => excerpt(v.to_string().as_bytes(), 64),
    }
}

pub(crate) fn wrong(field: String, expected: &'static str, v: Option<&Value>) -> DecodeError {
    DecodeError {
        field,
        expected,
        found: found(v),
    }
}

/// A non-negative integer from a number (integral) or a decimal string.
pub(crate) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            let f = n.as_f64()?;
            (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 1.8e19).then_some(f as u64)
        }),
        Value::String(s) => {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse().ok()
            } else {
                None
            }
        }
        _ => None,
    }
}

/// A finite float from a number or a numeric string.
pub(crate) fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// A boolean from `true`/`false`, `1`/`0`, or the strings Perl and Proxmox use.
pub(crate) fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_u64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Value::String(s) => match s.as_str() {
            "1" | "true" | "yes" | "on" => Some(true),
            "0" | "false" | "no" | "off" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A string, or a number written as one (Perl numifies some strings).
pub(crate) fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A JSON object being read, with its path for error messages.
pub(crate) struct Obj<'a> {
    map: &'a Map<String, Value>,
    at: String,
}

impl<'a> Obj<'a> {
    /// Views `v` as an object located at `at`.
    pub(crate) fn new(v: &'a Value, at: &str) -> Result<Obj<'a>, DecodeError> {
        match v {
            Value::Object(map) => Ok(Obj {
                map,
                at: at.to_string(),
            }),
            other => Err(wrong(at.to_string(), "an object", Some(other))),
        }
    }

    pub(crate) fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.at)
    }

    /// The raw map.
    pub(crate) fn map(&self) -> &'a Map<String, Value> {
        self.map
    }

    /// The value of `key`; `null` counts as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn req<T>(
        &self,
        key: &str,
        expected: &'static str,
        conv: impl Fn(&Value) -> Option<T>,
    ) -> Result<T, DecodeError> {
        let v = self.get(key);
        v.and_then(&conv)
            .ok_or_else(|| wrong(self.path(key), expected, v))
    }

    fn opt<T>(
        &self,
        key: &str,
        expected: &'static str,
        conv: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<T>, DecodeError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => conv(v)
                .map(Some)
                .ok_or_else(|| wrong(self.path(key), expected, Some(v))),
        }
    }

    pub(crate) fn u64(&self, key: &str) -> Result<u64, DecodeError> {
        self.req(key, "a non-negative integer", as_u64)
    }

    pub(crate) fn opt_u64(&self, key: &str) -> Result<Option<u64>, DecodeError> {
        self.opt(key, "a non-negative integer", as_u64)
    }

    pub(crate) fn u32(&self, key: &str) -> Result<u32, DecodeError> {
        self.req(key, "an integer below 2^32", |v| {
            as_u64(v).and_then(|n| u32::try_from(n).ok())
        })
    }

    pub(crate) fn opt_u32(&self, key: &str) -> Result<Option<u32>, DecodeError> {
        self.opt(key, "an integer below 2^32", |v| {
            as_u64(v).and_then(|n| u32::try_from(n).ok())
        })
    }

    pub(crate) fn f64(&self, key: &str) -> Result<f64, DecodeError> {
        self.req(key, "a number", as_f64)
    }

    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>, DecodeError> {
        self.opt(key, "a number", as_f64)
    }

    /// A boolean that defaults to `false` when absent (Proxmox omits unset flags).
    pub(crate) fn flag(&self, key: &str) -> Result<bool, DecodeError> {
        Ok(self.opt(key, "a boolean (1/0)", as_bool)?.unwrap_or(false))
    }

    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>, DecodeError> {
        self.opt(key, "a boolean (1/0)", as_bool)
    }

    pub(crate) fn string(&self, key: &str) -> Result<String, DecodeError> {
        self.req(key, "a string", as_string)
    }

    pub(crate) fn opt_string(&self, key: &str) -> Result<Option<String>, DecodeError> {
        self.opt(key, "a string", as_string)
    }

    pub(crate) fn obj(&self, key: &str) -> Result<Obj<'a>, DecodeError> {
        match self.get(key) {
            Some(v) => Obj::new(v, &self.path(key)),
            None => Err(wrong(self.path(key), "an object", None)),
        }
    }

    pub(crate) fn opt_obj(&self, key: &str) -> Result<Option<Obj<'a>>, DecodeError> {
        match self.get(key) {
            Some(v) => Obj::new(v, &self.path(key)).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn array(&self, key: &str) -> Result<&'a Vec<Value>, DecodeError> {
        match self.get(key) {
            Some(Value::Array(a)) => Ok(a),
            other => Err(wrong(self.path(key), "an array", other)),
        }
    }
}

/// Decodes each element of an array located at `at` with `f`.
pub(crate) fn list<T>(
    v: &Value,
    at: &str,
    f: impl Fn(&Obj<'_>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let Value::Array(items) = v else {
        return Err(wrong(at.to_string(), "an array", Some(v)));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| f(&Obj::new(item, &format!("{at}[{i}]"))?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn perl_numbers_and_booleans() {
        assert_eq!(as_u64(&json!(42)), Some(42));
        assert_eq!(as_u64(&json!("42")), Some(42));
        assert_eq!(as_u64(&json!(42.0)), Some(42));
        assert_eq!(as_u64(&json!(-1)), None);
        assert_eq!(as_u64(&json!("4x")), None);
        assert_eq!(as_u64(&json!("")), None);
        assert_eq!(as_f64(&json!("0.12")), Some(0.12));
        assert_eq!(as_f64(&json!("NaN")), None);
        assert_eq!(as_bool(&json!(1)), Some(true));
        assert_eq!(as_bool(&json!("0")), Some(false));
        assert_eq!(as_bool(&json!(2)), None);
        assert_eq!(as_string(&json!(100)), Some("100".to_string()));
    }

    #[test]
    fn errors_name_the_field_path() {
        let v = json!({"memory": {"total": "lots"}, "n": null});
        let o = Obj::new(&v, "data").unwrap();
        let e = o.obj("memory").unwrap().u64("total").unwrap_err();
        assert_eq!(e.field, "data.memory.total");
        assert_eq!(e.found, "\"lots\"");
        assert_eq!(o.opt_u64("n").unwrap(), None, "null is absent");
        let e = o.u64("missing").unwrap_err();
        assert_eq!(
            e.to_string(),
            "field data.missing: expected a non-negative integer, found nothing"
        );
        let e = list(&json!([{"a": 1}, {"a": "x"}]), "data", |o| o.u64("a")).unwrap_err();
        assert_eq!(e.field, "data[1].a");
    }
}
