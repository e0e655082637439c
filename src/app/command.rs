//! What every command shares: its exit codes and how it loads the configuration.
//! Nothing here runs a command or writes to the process's streams directly; the
//! caller hands in the writer.

use std::io::Write;
use std::path::Path;

use crate::config::{self, Config, Mode};
use crate::store::{StateLock, StateLockError};

/// Exit code: success.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit code: the check or run failed.
pub(crate) const EXIT_FAILED: u8 = 1;
/// Exit code: usage or configuration error.
pub(crate) const EXIT_USAGE: u8 = 2;

/// Loads the config for `mode`, logging its warnings and applying its log level.
/// A failure is printed to `err` and turned into exit code 2.
pub(crate) fn load_config(path: &Path, mode: Mode, err: &mut dyn Write) -> Result<Config, u8> {
    match Config::load(path, &config::process_env(), mode) {
        Ok(cfg) => {
            crate::base::log::set_level(cfg.log_level);
            for w in &cfg.warnings {
                crate::warn!(config_warning, "configuration", problem = w);
            }
            Ok(cfg)
        }
        Err(e) => {
            let _ = writeln!(err, "felhom-agent: configuration error: {e}");
            Err(EXIT_USAGE)
        }
    }
}

/// How a read-only command prints its result: text for a person, or one JSON document
/// whose fields the README documents and keeps stable. Every command with `--json`
/// takes this, so each one switches the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Lines for a person; outside text shown unescaped but with control characters
    /// made visible.
    #[default]
    Text,
    /// One JSON document and a newline on stdout.
    Json,
}

/// Writes `doc` as one line of JSON and a newline.
pub(crate) fn write_json(out: &mut dyn Write, doc: &serde_json::Value) -> std::io::Result<()> {
    let mut line = serde_json::to_string(doc).map_err(std::io::Error::other)?;
    line.push('\n');
    out.write_all(line.as_bytes())
}

/// Writes `doc` as indented JSON and a newline to `out`; a document that does not
/// serialize is printed to `err` and turned into exit code 1.
pub(crate) fn write_pretty_json(
    out: &mut dyn Write,
    err: &mut dyn Write,
    doc: &impl serde::Serialize,
) -> Result<(), u8> {
    match serde_json::to_string_pretty(doc) {
        Ok(text) => {
            let _ = writeln!(out, "{text}");
            Ok(())
        }
        Err(e) => {
            let _ = writeln!(err, "felhom-agent: {e}");
            Err(EXIT_FAILED)
        }
    }
}

/// Takes the state directory's lock for a command that must not run beside the daemon
/// (or another such command). A failure is printed to `err` and turned into exit code 2
/// when another process holds the lock, 1 otherwise.
pub(crate) fn lock_state(dir: &Path, err: &mut dyn Write) -> Result<StateLock, u8> {
    StateLock::acquire(dir).map_err(|e| {
        let _ = writeln!(err, "felhom-agent: {e}");
        match e {
            StateLockError::Held { .. } => EXIT_USAGE,
            _ => EXIT_FAILED,
        }
    })
}

/// `s` for a person to read: quotes and other printable text as they are, control
/// characters (and the backslash that introduces an escape) made visible as `\n`,
/// `\u{1b}` …, so outside text can neither hide nor forge a line.
pub(crate) fn visible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    crate::base::log::push_escaped(&mut out, s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_keeps_quotes_and_shows_control_characters() {
        assert_eq!(visible(r#"the "file" is gone"#), r#"the "file" is gone"#);
        assert_eq!(visible("a\nb\x1b[2J"), "a\\nb\\u{1b}[2J");
        assert_eq!(visible("é ✓"), "é ✓");
    }
}
