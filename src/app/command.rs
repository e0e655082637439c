//! What every command shares: its exit codes and how it loads the configuration.
//! Nothing here runs a command or writes to the process's streams directly; the
//! caller hands in the writer.

use std::io::Write;
use std::path::Path;

use crate::config::{self, Config, Mode};

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
