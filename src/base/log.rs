//! Leveled logfmt lines on stderr:
//! `ts=2026-11-22T10:00:00Z level=info event=report_sent msg="..." k=v`.
//!
//! Every line carries a stable `event=` key, a snake_case name of what happened, checked
//! at compile time by the macros. The event and the field keys are the contract that
//! operators alert on and tests assert on; the `msg` wording is for humans and may change.
//! One line per event, written with a single `write_all` so threads never interleave.
//! Values are quoted when they need it and control characters are escaped, so a
//! hostile string (a Proxmox error text, a hub answer) cannot forge a second line.
//! Secrets never reach this module: they are [`crate::base::secret::Secret`]s, which format as
//! `<redacted>`.
//!
//! Use the macros: `crate::info!(report_sent, "report sent", guests = n, hub = url)`.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::base::time::{Clock, SystemClock};

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The agent cannot do what it was asked; an operator should look.
    Error = 1,
    /// Something is wrong or risky but the agent carries on.
    Warn = 2,
    /// Normal operation worth a line.
    Info = 3,
    /// Detail for troubleshooting.
    Debug = 4,
}

impl Level {
    /// The level's name as written in the `level=` field and accepted in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    /// Parses `error`, `warn`, `info` or `debug`.
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "error" => Some(Level::Error),
            "warn" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
/// Whether stderr lines start with a syslog priority (`<3>`…`<7>`) for journald.
static PRIORITY_PREFIX: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static TAPS: Mutex<Vec<Arc<Mutex<Vec<u8>>>>> = Mutex::new(Vec::new());

/// Sets the most verbose level that is written.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Starts (or stops) every stderr line with its syslog priority, `<3>` error, `<4>`
/// warn, `<6>` info, `<7>` debug, which journald strips and keeps as the priority (so
/// `journalctl -p warning` works). For when stderr is the journal; taps never get it.
pub fn set_priority_prefix(on: bool) {
    PRIORITY_PREFIX.store(on, Ordering::Relaxed);
}

/// The syslog priority journald reads from a line's `<N>` prefix.
pub fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug => 7,
    }
}

/// Whether a line at `level` would be written.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Adds a buffer that receives a copy of every line written from now on (tests scan
/// it, e.g. for leaked secrets). Lines still go to stderr.
pub fn tap() -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    if let Ok(mut taps) = TAPS.lock() {
        taps.push(buf.clone());
    }
    buf
}

fn needs_quotes(v: &str) -> bool {
    v.is_empty()
        || v.chars()
            .any(|c| c == ' ' || c == '=' || c == '"' || c == '\\' || c.is_control())
}

/// Appends `c`, escaping a backslash and every control character (`\n`, `\r`, `\t` by
/// name, others as `\u{..}`), so outside text can neither start a new line nor drive a
/// terminal. The one escaper for log values, error excerpts and printed signed ops.
pub fn push_escaped_char(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if c.is_control() => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// Appends `s` with [`push_escaped_char`] applied to every character.
pub fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        push_escaped_char(out, c);
    }
}

/// Appends `v` as a logfmt value: bare when safe, else quoted, with `\"` and the
/// escapes of [`push_escaped_char`].
pub fn push_value(out: &mut String, v: &str) {
    if !needs_quotes(v) {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        if c == '"' {
            out.push_str("\\\"");
        } else {
            push_escaped_char(out, c);
        }
    }
    out.push('"');
}

/// Whether `name` is a valid event name: snake_case ASCII (`a-z`, `0-9`, `_`), starting
/// with a letter. The macros check this at compile time.
pub const fn is_event_name(name: &str) -> bool {
    let b = name.as_bytes();
    if b.is_empty() || !b[0].is_ascii_lowercase() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit() || b[i] == b'_') {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether `key` may name a field: not one of the keys every line already carries.
pub const fn is_field_key(key: &str) -> bool {
    !matches!(key.as_bytes(), b"ts" | b"level" | b"event" | b"msg")
}

/// Formats one line (without writing it); exposed for tests of the format.
pub fn format_line(
    ts: crate::base::time::Timestamp,
    level: Level,
    event: &'static str,
    msg: &str,
    fields: &[(&str, &dyn fmt::Display)],
) -> String {
    let mut line = String::with_capacity(112);
    let _ = write!(line, "ts={ts} level={level} event={event} msg=");
    push_value(&mut line, msg);
    for (k, v) in fields {
        line.push(' ');
        line.push_str(k);
        line.push('=');
        push_value(&mut line, &v.to_string());
    }
    line.push('\n');
    line
}

/// Writes one line if `level` is enabled. Prefer the macros.
pub fn emit(level: Level, event: &'static str, msg: &str, fields: &[(&str, &dyn fmt::Display)]) {
    if !enabled(level) {
        return;
    }
    let line = format_line(SystemClock.now(), level, event, msg, fields);
    // A failed write to stderr has nowhere to be reported; the line is dropped.
    if PRIORITY_PREFIX.load(Ordering::Relaxed) {
        let prefixed = format!("<{}>{line}", syslog_priority(level));
        let _ = std::io::stderr().lock().write_all(prefixed.as_bytes());
    } else {
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
    if let Ok(taps) = TAPS.lock() {
        for t in taps.iter() {
            if let Ok(mut b) = t.lock() {
                b.extend_from_slice(line.as_bytes());
            }
        }
    }
}

/// The macros' common body: checks the event name and the field keys at compile time,
/// then emits. Not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_event {
    ($level:ident, $event:ident, $msg:expr $(, $k:ident = $v:expr)*) => {{
        const _: () = ::std::assert!(
            $crate::base::log::is_event_name(::std::stringify!($event)),
            "log event names are snake_case: a-z, 0-9 and _"
        );
        $(const _: () = ::std::assert!(
            $crate::base::log::is_field_key(::std::stringify!($k)),
            "ts, level, event and msg are written on every line; pick another field key"
        );)*
        $crate::base::log::emit(
            $crate::base::log::Level::$level,
            ::std::stringify!($event),
            $msg,
            &[$((::std::stringify!($k), &$v as &dyn ::std::fmt::Display)),*],
        )
    }};
}

/// Logs at error level: `error!(event_name, "msg", key = value, ...)`.
#[macro_export]
macro_rules! error {
    ($event:ident, $msg:expr $(, $k:ident = $v:expr)* $(,)?) => {
        $crate::__log_event!(Error, $event, $msg $(, $k = $v)*)
    };
}

/// Logs at warn level: `warn!(event_name, "msg", key = value, ...)`.
#[macro_export]
macro_rules! warn {
    ($event:ident, $msg:expr $(, $k:ident = $v:expr)* $(,)?) => {
        $crate::__log_event!(Warn, $event, $msg $(, $k = $v)*)
    };
}

/// Logs at info level: `info!(event_name, "msg", key = value, ...)`.
#[macro_export]
macro_rules! info {
    ($event:ident, $msg:expr $(, $k:ident = $v:expr)* $(,)?) => {
        $crate::__log_event!(Info, $event, $msg $(, $k = $v)*)
    };
}

/// Logs at debug level: `debug!(event_name, "msg", key = value, ...)`.
#[macro_export]
macro_rules! debug {
    ($event:ident, $msg:expr $(, $k:ident = $v:expr)* $(,)?) => {
        $crate::__log_event!(Debug, $event, $msg $(, $k = $v)*)
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::time::Timestamp;

    #[test]
    fn line_format_and_quoting() {
        let n = 3;
        let text = "CT is locked (backup)\nTASK ERROR: x=\"y\"";
        let line = format_line(
            Timestamp(0),
            Level::Warn,
            "task_failed",
            "task failed",
            &[("vmid", &n), ("why", &text), ("empty", &"")],
        );
        assert_eq!(
            line,
            "ts=1970-01-01T00:00:00Z level=warn event=task_failed msg=\"task failed\" vmid=3 \
             why=\"CT is locked (backup)\\nTASK ERROR: x=\\\"y\\\"\" empty=\"\"\n"
        );
        assert_eq!(
            line.matches('\n').count(),
            1,
            "a value cannot start a new line"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut s = String::new();
        push_value(&mut s, "a\u{1b}[31mb");
        assert_eq!(s, "\"a\\u{1b}[31mb\"");
    }

    #[test]
    fn escaping_outside_text_keeps_it_on_one_line() {
        let mut s = String::new();
        push_escaped(&mut s, "a\\b\nc\r\td\u{7}\"e\"");
        assert_eq!(s, "a\\\\b\\nc\\r\\td\\u{7}\"e\"");
        assert!(!s.contains('\n'));
    }

    #[test]
    fn event_names_are_snake_case_and_reserved_keys_are_refused() {
        for good in ["report_sent", "a", "sighup_reload_failed", "v2_ready"] {
            assert!(is_event_name(good), "{good}");
        }
        for bad in [
            "",
            "Report",
            "report-sent",
            "_x",
            "2x",
            "r#type",
            "report sent",
        ] {
            assert!(!is_event_name(bad), "{bad:?}");
        }
        for reserved in ["ts", "level", "event", "msg"] {
            assert!(!is_field_key(reserved), "{reserved}");
        }
        assert!(is_field_key("events"));
        assert!(is_field_key("op_id"));
    }

    #[test]
    fn the_macros_write_the_event_after_the_level() {
        let tap = tap();
        // Error level: written whatever level another test has set.
        crate::error!(log_macro_probe, "probe line", n = 7);
        let seen = tap.lock().map(|b| b.clone()).unwrap_or_default();
        let text = String::from_utf8_lossy(&seen);
        let line = text
            .lines()
            .find(|l| l.contains("event=log_macro_probe"))
            .expect("the tap saw the probe line");
        let after_ts = line.split_once(' ').map(|(_, rest)| rest);
        assert_eq!(
            after_ts,
            Some("level=error event=log_macro_probe msg=\"probe line\" n=7")
        );
    }

    #[test]
    fn levels_parse_and_order() {
        for l in [Level::Error, Level::Warn, Level::Info, Level::Debug] {
            assert_eq!(Level::parse(l.as_str()), Some(l));
        }
        assert_eq!(Level::parse("verbose"), None);
        assert!(Level::Error < Level::Debug);
    }
}
