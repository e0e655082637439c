//! Request parameters and API errors, shaped like pve-common's JSONSchema and Exception.
//!
//! Owns URL/form decoding, the schema check that yields PVE's `errors` object, and the
//! error type every endpoint returns. It must never touch simulator state.

use serde_json::{Map, Value, json};

/// An error answer: status, message (its first line becomes the reason phrase), and the
/// per-parameter `errors` object for 400s.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub message: String,
    pub errors: Option<Vec<(String, String)>>,
}

impl ApiError {
    /// A plain `die "msg\n"` in PVE: HTTP 500.
    pub fn die(msg: impl Into<String>) -> Self {
        ApiError::status(500, msg)
    }

    /// Any status with a message; a trailing newline is added as Perl's `die` texts have.
    pub fn status(code: u16, msg: impl Into<String>) -> Self {
        let mut message = msg.into();
        if !message.ends_with('\n') {
            message.push('\n');
        }
        ApiError {
            code,
            message,
            errors: None,
        }
    }

    /// `raise_param_exc`: 400 `Parameter verification failed.` with an `errors` object.
    pub fn params(errors: Vec<(String, String)>) -> Self {
        ApiError {
            code: 400,
            message: "Parameter verification failed.\n".to_string(),
            errors: Some(errors),
        }
    }

    /// One parameter error.
    pub fn param(name: &str, msg: impl Into<String>) -> Self {
        ApiError::params(vec![(name.to_string(), msg.into())])
    }

    /// `raise_perm_exc("$path, $privs")`: 403.
    pub fn forbidden(path: &str, privs: &str) -> Self {
        ApiError::status(403, permission_text(path, privs))
    }

    /// 501 for a method and path no handler serves.
    pub fn not_implemented(method: &str, path: &str) -> Self {
        ApiError::status(501, format!("Method '{method} {path}' not implemented"))
    }

    /// The reason phrase: the message's first line.
    pub fn reason(&self) -> &str {
        self.message.lines().next().unwrap_or_default()
    }

    /// The JSON body PVE (libpve-http-server ≥ 5.2) sends with an error.
    pub fn body(&self) -> Value {
        let mut body = json!({"data": null, "message": self.message});
        if let (Some(errors), Some(obj)) = (&self.errors, body.as_object_mut()) {
            let map: Map<String, Value> = errors
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            obj.insert("errors".to_string(), Value::Object(map));
        }
        body
    }
}

/// `Permission check failed (path, privs)`, the text of 403s and task-time failures.
pub(crate) fn permission_text(path: &str, privs: &str) -> String {
    format!("Permission check failed ({path}, {privs})")
}

/// Percent-decodes `s`; with `plus`, `+` means a space (form encoding). Invalid escapes are
/// kept literally, invalid UTF-8 is replaced, as a lenient server would.
pub(crate) fn percent_decode(s: &str, plus: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `a=1&b=x%20y` into pairs, in order.
pub(crate) fn parse_urlencoded(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// A JSON request body as parameter pairs; booleans keep their JSON spelling so the
/// schema check can accept them (PVE accepts true/false only in JSON bodies).
pub(crate) fn parse_json_body(body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::status(400, format!("unable to parse JSON body - {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::status(400, "JSON body is not an object"));
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s,
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (k, s)
        })
        .collect())
}

/// A parameter's type, as far as the simulator checks it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    /// Any string.
    Str,
    /// A string of at most this many characters.
    StrMax(usize),
    /// An integer within the bounds.
    Int(Option<i64>, Option<i64>),
    /// `0`/`1` (and `true`/`false` in JSON bodies).
    Bool,
    /// A decimal number within the bounds; PVE returns these as JSON strings.
    Number(f64, f64),
    /// One of these values.
    Enum(&'static [&'static str]),
}

/// The merged parameters of one request (path, query and body), validated once.
#[derive(Debug, Clone, Default)]
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
    json: bool,
}

impl Params {
    pub fn new(pairs: Vec<(String, String)>, json: bool) -> Self {
        Params { pairs, json }
    }

    /// Adds a parameter taken from the path (`node`, `vmid`, …).
    pub fn push(&mut self, k: &str, v: &str) {
        self.pairs.push((k.to_string(), v.to_string()));
    }

    /// The first value given for `k`.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    /// Every parameter name, first occurrence only, in order.
    pub fn keys(&self) -> Vec<&str> {
        let mut seen: Vec<&str> = Vec::new();
        for (k, _) in &self.pairs {
            if !seen.contains(&k.as_str()) {
                seen.push(k);
            }
        }
        seen
    }

    /// A boolean already validated by [`Params::check`]; absent is `false`.
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1" | "true"))
    }

    /// An integer already validated by [`Params::check`].
    pub fn int(&self, k: &str) -> Option<i64> {
        self.get(k).and_then(|v| v.parse().ok())
    }

    /// Checks every parameter against `schema` (name → kind) and the `required` names;
    /// collects every failure into one 400 as PVE does.
    pub fn check(
        &self,
        schema: impl Fn(&str) -> Option<Kind>,
        required: &[&str],
    ) -> Result<(), ApiError> {
        let mut errors: Vec<(String, String)> = Vec::new();
        let mut add = |k: &str, msg: String| {
            if let Some((_, existing)) = errors.iter_mut().find(|(key, _)| key == k) {
                // Two errors on one key are joined by a literal backslash-n in PVE.
                existing.push_str("\\n");
                existing.push_str(&msg);
            } else {
                errors.push((k.to_string(), msg));
            }
        };
        for k in self.keys() {
            let v = self.get(k).unwrap_or_default();
            match schema(k) {
                None => add(
                    k,
                    "property is not defined in schema and the schema does not allow additional properties"
                        .to_string(),
                ),
                Some(kind) => {
                    if let Err(msg) = check_value(kind, v, self.json) {
                        add(k, msg);
                    }
                }
            }
        }
        for r in required {
            if self.get(r).is_none() {
                add(r, "property is missing and it is not optional".to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::params(errors))
        }
    }
}

fn is_integer(v: &str) -> bool {
    let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn check_value(kind: Kind, v: &str, json: bool) -> Result<(), String> {
    match kind {
        Kind::Str => Ok(()),
        Kind::StrMax(max) => {
            if v.chars().count() > max {
                Err(format!("value may only be {max} characters long"))
            } else {
                Ok(())
            }
        }
        Kind::Int(min, max) => {
            if !is_integer(v) {
                return Err(format!("type check ('integer') failed - got '{v}'"));
            }
            let n: i64 = v
                .parse()
                .map_err(|_| format!("type check ('integer') failed - got '{v}'"))?;
            if let Some(min) = min.filter(|m| n < *m) {
                return Err(format!("value must have a minimum value of {min}"));
            }
            if let Some(max) = max.filter(|m| n > *m) {
                return Err(format!("value must have a maximum value of {max}"));
            }
            Ok(())
        }
        Kind::Bool => match v {
            "0" | "1" => Ok(()),
            "true" | "false" if json => Ok(()),
            _ => Err(format!("type check ('boolean') failed - got '{v}'")),
        },
        Kind::Number(min, max) => {
            let n: f64 = v
                .parse()
                .ok()
                .filter(|n: &f64| n.is_finite())
                .ok_or_else(|| format!("type check ('number') failed - got '{v}'"))?;
            if n < min {
                return Err(format!("value must have a minimum value of {min}"));
            }
            if n > max {
                return Err(format!("value must have a maximum value of {max}"));
            }
            Ok(())
        }
        Kind::Enum(values) => {
            if values.contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "value '{v}' does not have a value in the enumeration '{}'",
                    values.join(", ")
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("UPID%3Apve%3A0%21x", false), "UPID:pve:0!x");
        assert_eq!(percent_decode("a+b%2", true), "a b%2");
        assert_eq!(percent_decode("%zz%", false), "%zz%");
        assert_eq!(
            parse_urlencoded("a=1&b=x%20y&c"),
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "x y".to_string()),
                ("c".to_string(), String::new())
            ]
        );
    }

    #[test]
    fn schema_errors_are_collected_with_pve_texts() {
        let p = Params::new(
            vec![
                ("vmid".into(), "abc".into()),
                ("force".into(), "true".into()),
                ("bogus".into(), "1".into()),
            ],
            false,
        );
        let err = p
            .check(
                |k| match k {
                    "vmid" => Some(Kind::Int(Some(100), None)),
                    "force" => Some(Kind::Bool),
                    "storage" => Some(Kind::Str),
                    _ => None,
                },
                &["storage"],
            )
            .unwrap_err();
        assert_eq!(err.code, 400);
        let body = err.body();
        assert_eq!(body["message"], "Parameter verification failed.\n");
        assert_eq!(
            body["errors"]["vmid"],
            "type check ('integer') failed - got 'abc'"
        );
        assert_eq!(
            body["errors"]["force"],
            "type check ('boolean') failed - got 'true'"
        );
        assert_eq!(
            body["errors"]["storage"],
            "property is missing and it is not optional"
        );
        assert!(
            body["errors"]["bogus"]
                .as_str()
                .unwrap()
                .contains("not defined")
        );
        // JSON bodies may use true/false.
        let p = Params::new(vec![("force".into(), "true".into())], true);
        assert!(p.check(|_| Some(Kind::Bool), &[]).is_ok());
    }
}
