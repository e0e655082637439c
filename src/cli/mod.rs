//! The command line: the table of commands ([`table`]), a hand-written parser into
//! [`Command`] ([`parse()`]), and the dispatch of each command to its module in `app`.
//! Nothing here runs a command itself. Output goes to the writers `main` hands in
//! (stdout for results, stderr for errors), never straight to the process's streams,
//! so every mode runs in tests too; each error is printed once, by the one place that
//! handles it.
//!
//! Exit codes: 0 ok; 1 the check or run failed (a refused signature, a failed
//! selftest, a runtime failure); 2 usage or configuration error, or a state directory
//! another process holds.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use crate::app::command::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, load_config};
use crate::app::journal::journal;
use crate::app::resume::resume_rate_limit;
use crate::app::selftest::selftest;
use crate::app::verify::verify;
use crate::config::Mode;

mod parse;
pub mod table;

pub use crate::app::command::Format;
pub use crate::app::op_new::OpNewRequest;
pub use crate::base::version::VERSION;
pub use parse::{Command, UsageError, parse};

/// Runs a command line; returns the exit code. `out` gets results, `err` errors.
pub fn run(args: &[OsString], out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let command = match parse(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "felhom-agent: {e}");
            return EXIT_USAGE;
        }
    };
    match command {
        Command::Version => {
            let _ = writeln!(out, "felhom-agent {VERSION}");
            EXIT_OK
        }
        Command::Help { topic } => {
            let text = match topic.and_then(table::spec) {
                Some(c) => table::command_help(c),
                None => table::overview(),
            };
            let _ = out.write_all(text.as_bytes());
            EXIT_OK
        }
        Command::Run { config } => {
            let cfg = match load_config(&config, Mode::Run, err) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match crate::app::daemon::run(&cfg, &config) {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    // A daemon's stderr is its log: the error is one `daemon_failed`
                    // line. A state-lock failure is logged by the lock itself; a person
                    // starting a second daemon gets one plain line naming the holder.
                    if e.is_state_lock() {
                        let _ = writeln!(err, "felhom-agent: {e}");
                    } else {
                        crate::error!(daemon_failed, "daemon stopped", error = e);
                    }
                    if e.is_configuration() {
                        EXIT_USAGE
                    } else {
                        EXIT_FAILED
                    }
                }
            }
        }
        Command::Selftest { kind, vmid, config } => selftest(kind, vmid, &config, out, err),
        Command::Verify {
            blob,
            sigs,
            format,
            config,
        } => verify(&blob, &sigs, &config, format, out, err),
        Command::Plan { format, config } => {
            let cfg = match load_config(&config, Mode::Plan, err) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match crate::app::plan::plan_report_as(&cfg, format, out) {
                Ok(_) => EXIT_OK,
                Err(e) => {
                    let _ = writeln!(err, "felhom-agent: {e}");
                    EXIT_FAILED
                }
            }
        }
        Command::Journal {
            in_flight,
            tail,
            format,
            config,
        } => {
            let cfg = match load_config(&config, Mode::Journal, err) {
                Ok(c) => c,
                Err(code) => return code,
            };
            journal(
                &cfg.state_dir.join("journal.log"),
                in_flight,
                tail,
                format,
                out,
                err,
            )
        }
        Command::ResumeRateLimit { config } => {
            let cfg = match load_config(&config, Mode::Resume, err) {
                Ok(c) => c,
                Err(code) => return code,
            };
            resume_rate_limit(&cfg.state_dir, out, err)
        }
        Command::Pause { reason, config } => match load_config(&config, Mode::Resume, err) {
            Ok(cfg) => crate::app::pause::pause(&cfg, &reason, out, err),
            Err(code) => code,
        },
        Command::Resume { config } => match load_config(&config, Mode::Resume, err) {
            Ok(cfg) => crate::app::pause::resume(&cfg, out, err),
            Err(code) => code,
        },
        Command::Audit { query, config } => match load_config(&config, Mode::Resume, err) {
            Ok(cfg) => crate::app::audit_cmd::audit(&cfg.state_dir, &query, out, err),
            Err(code) => code,
        },
        Command::Status { format, config } => match load_config(&config, Mode::Resume, err) {
            Ok(cfg) => crate::app::status_cmd::status(
                &cfg,
                &config,
                format == crate::app::command::Format::Json,
                out,
                err,
            ),
            Err(code) => code,
        },
        Command::OpNew { request, config } => {
            crate::app::op_new::op_new(&request, &config, out, err)
        }
        Command::AcknowledgeDamage { file, config } => {
            let cfg = match load_config(&config, Mode::AcknowledgeDamage, err) {
                Ok(c) => c,
                Err(code) => return code,
            };
            crate::app::damage::acknowledge_damage(&cfg, &file, out, err)
        }
    }
}

/// The binary's entry point: runs `args` against the process's stdout and stderr.
pub fn main(args: Vec<OsString>) -> ExitCode {
    // Under systemd with stderr on the journal, each line carries its priority.
    crate::base::log::set_priority_prefix(crate::app::notify::stderr_is_journal());
    // Unlocked handles: holding the stderr lock for the whole run would block every
    // other thread's log line while the daemon runs.
    let code = run(&args, &mut std::io::stdout(), &mut std::io::stderr());
    ExitCode::from(code)
}

#[cfg(test)]
mod tests;
