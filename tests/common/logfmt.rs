//! A small reader for the agent's log lines (`ts=… level=… event=… msg="…" k=v`), so
//! tests and the soak match on the `event` name and field values, never on the message
//! wording. It keeps no `msg`: an oracle on wording cannot be written with it.
//! Shared by the tests (`common::logfmt`) and `examples/soak.rs` (by `#[path]`).
#![allow(dead_code)]

use std::collections::BTreeMap;

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `error`, `warn`, `info` or `debug`.
    pub level: String,
    /// The line's `event=` name.
    pub event: String,
    /// Every other key but `ts` and `msg`, values unquoted and unescaped.
    pub fields: BTreeMap<String, String>,
}

impl Event {
    /// Parses one line; `None` for a line that is not a log line of the agent (a
    /// `felhom-agent: …` error print, a panic message) or does not parse.
    pub fn parse(line: &str) -> Option<Event> {
        let mut pairs = pairs(line)?;
        let level = pairs.remove("level")?;
        let event = pairs.remove("event")?;
        pairs.remove("ts")?;
        pairs.remove("msg");
        Some(Event {
            level,
            event,
            fields: pairs,
        })
    }

    /// The value of field `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// Whether field `key` is exactly `value`.
    pub fn is(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }

    /// The value of field `key`, or a panic naming the event and its fields.
    pub fn field(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("{} has no field {key}: {self:?}", self.event))
    }
}

/// Every log line of `text` that parses, in order.
pub fn parse_all(text: &str) -> Vec<Event> {
    text.lines().filter_map(Event::parse).collect()
}

/// The lines of `text` whose event is `name`, in order.
pub fn events(text: &str, name: &str) -> Vec<Event> {
    parse_all(text)
        .into_iter()
        .filter(|e| e.event == name)
        .collect()
}

/// `key=value` pairs separated by single spaces; a value is bare (up to the next space)
/// or quoted, with `\"`, `\\`, `\n`, `\r`, `\t` and `\u{..}` escapes. `None` when the
/// line is not such a list.
fn pairs(line: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut rest = line.trim_end_matches(['\n', '\r']);
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = &rest[..eq];
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
        rest = &rest[eq + 1..];
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let (v, used) = unquote(quoted)?;
            value = v;
            rest = &quoted[used..];
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            value = rest[..end].to_owned();
            rest = &rest[end..];
        }
        out.insert(key.to_owned(), value);
        match rest.strip_prefix(' ') {
            Some(r) => rest = r,
            None if rest.is_empty() => {}
            None => return None,
        }
    }
    Some(out)
}

/// Reads a quoted value after its opening quote: the value and the bytes used,
/// closing quote included.
fn unquote(s: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, i + 1)),
            '\\' => match chars.next()?.1 {
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'u' => {
                    if chars.next()?.1 != '{' {
                        return None;
                    }
                    let mut hex = String::new();
                    loop {
                        match chars.next()?.1 {
                            '}' => break,
                            h => hex.push(h),
                        }
                    }
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                _ => return None,
            },
            c => out.push(c),
        }
    }
    None
}
