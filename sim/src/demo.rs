//! What the simulator binaries (`felhom-pve-sim`, `felhom-hub-sim`) share: their
//! arguments with the flags every one has, the exit on a usage error, the `--cert` word,
//! numbers, and serving until stdin closes. Demo code only; the simulators themselves
//! never call it.

use std::io;
use std::process::ExitCode;

use crate::pve::CertChoice;

/// Runs a binary's `run` on its arguments: exit 0, or 2 after `name: message` and the
/// `usage` line on stderr.
pub fn main(
    name: &str,
    usage: &str,
    run: impl FnOnce(Vec<String>) -> Result<(), String>,
) -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("{name}: {msg}\n{usage}");
            ExitCode::from(2)
        }
    }
}

/// A binary's arguments, with the flags every one has taken out as they come:
/// `--until-stdin-eof`, and `-h`/`--help`, which ends them.
pub struct Args {
    it: std::vec::IntoIter<String>,
    /// `--until-stdin-eof` was given: serve until stdin closes.
    pub until_stdin_eof: bool,
    /// `-h` or `--help` was given: print the usage and exit 0.
    pub help: bool,
}

impl Args {
    /// The arguments after the program name.
    pub fn new(args: Vec<String>) -> Args {
        Args {
            it: args.into_iter(),
            until_stdin_eof: false,
            help: false,
        }
    }

    /// The next argument that is not a common flag; none after `-h`/`--help`.
    pub fn next_flag(&mut self) -> Option<String> {
        while !self.help {
            match self.it.next()?.as_str() {
                "--until-stdin-eof" => self.until_stdin_eof = true,
                "-h" | "--help" => self.help = true,
                other => return Some(other.to_string()),
            }
        }
        None
    }

    /// The value that must follow `flag`.
    pub fn value(&mut self, flag: &str) -> Result<String, String> {
        self.it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))
    }
}

/// `value` of `flag` as a whole number of `unit`.
pub fn number(flag: &str, value: &str, unit: &str) -> Result<u64, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} {value}: not a number of {unit}"))
}

/// The certificate `--cert self|ca|other` names.
pub fn cert_choice(word: &str) -> Result<CertChoice, String> {
    match word {
        "self" => Ok(CertChoice::SelfSigned),
        "ca" => Ok(CertChoice::CaSigned),
        "other" => Ok(CertChoice::Other),
        other => Err(format!("--cert {other}: expected self, ca or other")),
    }
}

/// Returns once stdin closes when `until_stdin_eof`; otherwise never (the servers run
/// on their own threads until the process is killed).
pub fn serve(until_stdin_eof: bool) {
    if until_stdin_eof {
        let _ = io::copy(&mut io::stdin(), &mut io::sink());
        return;
    }
    loop {
        std::thread::park();
    }
}
