//! The command line: a hand-written parser and the dispatch to each mode.

use std::ffi::OsString;
use std::process::ExitCode;

/// Runs the command line `args` (without the program name) and returns the exit code.
pub fn main(args: Vec<OsString>) -> ExitCode {
    match args.first().and_then(|a| a.to_str()) {
        Some("version" | "--version") => {
            println!("felhom-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => ExitCode::from(2),
    }
}
