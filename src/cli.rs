//! The command line: a hand-written parser into [`Command`], and the dispatch of each
//! command to its module in `app`. Nothing here runs a command itself. Output goes to
//! the writers `main` hands in (stdout for results, stderr for errors), never straight
//! to the process's streams, so every mode runs in tests too.
//!
//! Exit codes: 0 ok; 1 the check or run failed (a refused signature, a failed
//! selftest, a runtime failure); 2 usage or configuration error, or a state directory
//! another process holds.

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::app::command::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, load_config};
use crate::app::journal::journal;
use crate::app::resume::resume_rate_limit;
use crate::app::selftest::{SelftestKind, selftest};
use crate::app::verify::verify;
use crate::config::Mode;

pub use crate::base::version::VERSION;

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `run`: the daemon (also when no command is given).
    Run {
        /// Config file.
        config: PathBuf,
    },
    /// `selftest [read|task|hub|offline]`.
    Selftest {
        /// Which one (default `read`).
        kind: SelftestKind,
        /// The guest for `task`.
        vmid: Option<u32>,
        /// Config file.
        config: PathBuf,
    },
    /// `verify --blob FILE --sig FILE`.
    Verify {
        /// The signed op blob.
        blob: PathBuf,
        /// The armored signature.
        sig: PathBuf,
        /// Config file.
        config: PathBuf,
    },
    /// `plan`: a dry run of the next reconcile pass.
    Plan {
        /// Config file.
        config: PathBuf,
    },
    /// `journal [--in-flight] [--tail N]`.
    Journal {
        /// Only ops without a terminal record.
        in_flight: bool,
        /// Only the last N ops.
        tail: Option<usize>,
        /// Config file.
        config: PathBuf,
    },
    /// `resume --rate-limit`: let the actions the blast-radius limit holds through once.
    ResumeRateLimit {
        /// Config file.
        config: PathBuf,
    },
    /// `pause --reason TEXT`: hold every mutation until `resume`.
    Pause {
        /// Why, for the audit, the report and `status`.
        reason: String,
        /// Config file.
        config: PathBuf,
    },
    /// `resume`: lift an operator's pause.
    Resume {
        /// Config file.
        config: PathBuf,
    },
    /// `status [--json]`: what the daemon is doing, read-only.
    Status {
        /// Print the status document as JSON.
        json: bool,
        /// Config file.
        config: PathBuf,
    },
    /// `audit [--tail N] [--pending] [--guest N] [--code C] [--json]`: the gate's
    /// decisions, read-only.
    Audit {
        /// What to show.
        query: crate::app::AuditQuery,
        /// Config file.
        config: PathBuf,
    },
    /// `version` / `--version`.
    Version,
    /// `help` / `--help`.
    Help,
}

/// A command line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The text `help` prints.
pub const HELP: &str = "\
felhom-agent — the felhom host agent for Proxmox VE

Usage:
  felhom-agent [run] [--config PATH]
      The daemon: report to the hub, reconcile guests, wait for SIGTERM. Holds the
      state directory's lock: a second `run` (or `selftest task`) on it exits 2.
  felhom-agent selftest [read|task|hub|offline] [--vmid N] [--config PATH]
      read     read-only report: version, nodes, node status, guests, storage
      task     reversible round trip on guest N (snapshot, rollback, delete snapshot,
               description marker write and restore); needs --vmid
      hub      one host report to the hub; prints the report and the hub's answer
      offline  no network: signature known-answer tests, config, state files
  felhom-agent verify --blob FILE --sig FILE [--config PATH]
      Check a signed op against the configured signers and host; burns no nonce.
  felhom-agent plan [--config PATH]
      Dry run: what the next reconcile pass would do, and the gate's word on it;
      read-only (safe while the daemon runs).
  felhom-agent journal [--in-flight] [--tail N] [--config PATH]
      The op history from the journal, read-only (safe while the daemon runs).
  felhom-agent resume --rate-limit [--config PATH]
      Let the stops and reductions the blast-radius limit holds (rate_limited) through
      once, at the daemon's next pass. Writes only a marker in the state directory;
      safe while the daemon runs.
  felhom-agent pause --reason TEXT [--config PATH]
      Hold every mutation (reconcile and signed ops) until `resume`; reports go on.
      Writes a marker in the state directory; safe while the daemon runs. Audited.
  felhom-agent resume [--config PATH]
      Lift the pause. Audited.
  felhom-agent status [--json] [--config PATH]
      What the daemon is doing, read-only. Exit 0 healthy, 1 degraded, 3 not running.
  felhom-agent audit [--tail N] [--pending] [--guest N] [--code C] [--json] [--config PATH]
      The gate's decisions from audit.log (and audit.log.1), read-only; --pending: ops
      still waiting for a signature.
  felhom-agent version | --version
  felhom-agent help | --help

--selftest[=MODE] is accepted as an alias of `selftest MODE`.
--config defaults to /etc/felhom-agent/agent.json.
Exit codes: 0 ok, 1 the check or run failed, 2 usage or configuration error.
";

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(format!("{} (see `felhom-agent help`)", msg.into()))
}

/// Parses the arguments after the program name.
pub fn parse(args: &[OsString]) -> Result<Command, UsageError> {
    let mut words = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        match a.to_str() {
            Some(s) => words.push(s.to_owned()),
            None => return Err(usage(format!("argument {} is not valid UTF-8", i + 1))),
        }
    }
    let mut it = words.into_iter().peekable();

    // The command word, or the Go agent's `--selftest[=MODE]` spelling.
    let mut command: Option<String> = None;
    let mut selftest_kind: Option<String> = None;
    match it.peek().map(String::as_str) {
        Some("--selftest") => {
            it.next();
            command = Some("selftest".into());
        }
        Some(w) if w.starts_with("--selftest=") => {
            selftest_kind = Some(w["--selftest=".len()..].to_owned());
            command = Some("selftest".into());
            it.next();
        }
        Some("--version") => {
            it.next();
            command = Some("version".into());
        }
        Some("--help" | "-h") => {
            it.next();
            command = Some("help".into());
        }
        Some(w) if !w.starts_with('-') => command = it.next(),
        _ => {}
    }
    let command = command.unwrap_or_else(|| "run".into());
    if command == "selftest"
        && selftest_kind.is_none()
        && let Some(w) = it.peek().filter(|w| !w.starts_with('-'))
    {
        selftest_kind = Some(w.clone());
        it.next();
    }

    let mut config: Option<PathBuf> = None;
    let mut vmid: Option<u32> = None;
    let mut blob: Option<PathBuf> = None;
    let mut sig: Option<PathBuf> = None;
    let mut in_flight = false;
    let mut rate_limit = false;
    let mut tail: Option<usize> = None;
    let mut reason: Option<String> = None;
    let mut json = false;
    let mut pending = false;
    let mut guest: Option<u32> = None;
    let mut code: Option<String> = None;

    while let Some(word) = it.next() {
        let (flag, inline) = match word.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (word.clone(), None),
        };
        let allowed: &[&str] = match command.as_str() {
            "run" | "plan" => &["--config"],
            "selftest" => &["--config", "--vmid"],
            "verify" => &["--config", "--blob", "--sig"],
            "journal" => &["--config", "--in-flight", "--tail"],
            "resume" => &["--config", "--rate-limit"],
            "pause" => &["--config", "--reason"],
            "status" => &["--config", "--json"],
            "audit" => &[
                "--config",
                "--tail",
                "--pending",
                "--guest",
                "--code",
                "--json",
            ],
            _ => &[],
        };
        if !flag.starts_with('-') {
            return Err(usage(format!(
                "unexpected argument {word:?} for `{command}`"
            )));
        }
        if !allowed.contains(&flag.as_str()) {
            return Err(usage(format!("`{command}` does not take {flag}")));
        }
        if matches!(
            flag.as_str(),
            "--in-flight" | "--rate-limit" | "--json" | "--pending"
        ) {
            if inline.is_some() {
                return Err(usage(format!("{flag} takes no value")));
            }
            match flag.as_str() {
                "--in-flight" => in_flight = true,
                "--rate-limit" => rate_limit = true,
                "--pending" => pending = true,
                _ => json = true,
            }
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .ok_or_else(|| usage(format!("{flag} needs a value")))?,
        };
        if value.is_empty() {
            return Err(usage(format!("{flag} needs a value")));
        }
        let dup = |set: bool| {
            if set {
                Err(usage(format!("{flag} given twice")))
            } else {
                Ok(())
            }
        };
        match flag.as_str() {
            "--config" => {
                dup(config.is_some())?;
                config = Some(PathBuf::from(value));
            }
            "--vmid" => {
                dup(vmid.is_some())?;
                let n: u32 = value.parse().map_err(|_| {
                    usage(format!(
                        "--vmid must be a guest id (100-999999999), got {value:?}"
                    ))
                })?;
                if !(100..=999_999_999).contains(&n) {
                    return Err(usage(format!(
                        "--vmid must be a guest id (100-999999999), got {n}"
                    )));
                }
                vmid = Some(n);
            }
            "--blob" => {
                dup(blob.is_some())?;
                blob = Some(PathBuf::from(value));
            }
            "--sig" => {
                dup(sig.is_some())?;
                sig = Some(PathBuf::from(value));
            }
            "--guest" => {
                dup(guest.is_some())?;
                let n: u32 = value
                    .parse()
                    .ok()
                    .filter(|n| (100..=999_999_999).contains(n))
                    .ok_or_else(|| {
                        usage(format!(
                            "--guest must be a guest id (100-999999999), got {value:?}"
                        ))
                    })?;
                guest = Some(n);
            }
            "--code" => {
                dup(code.is_some())?;
                crate::app::audit_cmd::check_code(&value).map_err(usage)?;
                code = Some(value);
            }
            "--reason" => {
                dup(reason.is_some())?;
                crate::app::pause::check_reason(&value).map_err(usage)?;
                reason = Some(value);
            }
            "--tail" => {
                dup(tail.is_some())?;
                tail =
                    Some(value.parse().map_err(|_| {
                        usage(format!("--tail must be a whole number, got {value:?}"))
                    })?);
            }
            _ => return Err(usage(format!("`{command}` does not take {flag}"))),
        }
    }

    let config = config.unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONFIG_PATH));
    match command.as_str() {
        "run" => Ok(Command::Run { config }),
        "selftest" => {
            let kind = match selftest_kind.as_deref() {
                None | Some("") => SelftestKind::Read,
                Some(k) => SelftestKind::parse(k).ok_or_else(|| {
                    usage(format!(
                        "unknown selftest {k:?} (want read, task, hub or offline)"
                    ))
                })?,
            };
            if kind == SelftestKind::Task && vmid.is_none() {
                return Err(usage(
                    "`selftest task` mutates a guest and needs --vmid N to say which",
                ));
            }
            if kind != SelftestKind::Task && vmid.is_some() {
                return Err(usage("--vmid is only for `selftest task`"));
            }
            Ok(Command::Selftest { kind, vmid, config })
        }
        "verify" => Ok(Command::Verify {
            blob: blob.ok_or_else(|| usage("`verify` needs --blob FILE"))?,
            sig: sig.ok_or_else(|| usage("`verify` needs --sig FILE"))?,
            config,
        }),
        "plan" => Ok(Command::Plan { config }),
        "journal" => Ok(Command::Journal {
            in_flight,
            tail,
            config,
        }),
        "resume" if rate_limit => Ok(Command::ResumeRateLimit { config }),
        "resume" => Ok(Command::Resume { config }),
        "pause" => Ok(Command::Pause {
            reason: reason.ok_or_else(|| usage("`pause` needs --reason TEXT (say why)"))?,
            config,
        }),
        "status" => Ok(Command::Status { json, config }),
        "audit" => Ok(Command::Audit {
            query: crate::app::AuditQuery {
                tail,
                pending,
                guest,
                code,
                json,
            },
            config,
        }),
        "version" => Ok(Command::Version),
        "help" => Ok(Command::Help),
        other => Err(usage(format!("unknown command {other:?}"))),
    }
}

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
        Command::Help => {
            let _ = out.write_all(HELP.as_bytes());
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
                    crate::error!(daemon_failed, "daemon stopped", error = e);
                    let _ = writeln!(err, "felhom-agent: {e}");
                    if e.is_configuration() {
                        EXIT_USAGE
                    } else {
                        EXIT_FAILED
                    }
                }
            }
        }
        Command::Selftest { kind, vmid, config } => selftest(kind, vmid, &config, out, err),
        Command::Verify { blob, sig, config } => verify(&blob, &sig, &config, out, err),
        Command::Plan { config } => {
            let cfg = match load_config(&config, Mode::Plan, err) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match crate::app::plan::plan_report(&cfg, out) {
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
        Command::Status { json, config } => match load_config(&config, Mode::Resume, err) {
            Ok(cfg) => crate::app::status_cmd::status(&cfg, &config, json, out, err),
            Err(code) => code,
        },
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
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, UsageError> {
        parse(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    fn cfg(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn default_is_run_with_the_default_config() {
        assert_eq!(
            p(&[]).unwrap(),
            Command::Run {
                config: cfg(crate::config::DEFAULT_CONFIG_PATH)
            }
        );
        assert_eq!(
            p(&["--config", "/x.json"]).unwrap(),
            Command::Run {
                config: cfg("/x.json")
            }
        );
        assert_eq!(
            p(&["run", "--config=/y.json"]).unwrap(),
            Command::Run {
                config: cfg("/y.json")
            }
        );
    }

    #[test]
    fn selftest_forms_and_the_go_alias() {
        let read = Command::Selftest {
            kind: SelftestKind::Read,
            vmid: None,
            config: cfg(crate::config::DEFAULT_CONFIG_PATH),
        };
        assert_eq!(p(&["selftest"]).unwrap(), read);
        assert_eq!(p(&["selftest", "read"]).unwrap(), read);
        assert_eq!(p(&["--selftest"]).unwrap(), read);
        assert_eq!(p(&["--selftest=read"]).unwrap(), read);
        assert_eq!(
            p(&["--selftest=task", "--vmid", "105", "--config", "/c"]).unwrap(),
            Command::Selftest {
                kind: SelftestKind::Task,
                vmid: Some(105),
                config: cfg("/c")
            }
        );
        assert_eq!(
            p(&["selftest", "offline"]).unwrap(),
            Command::Selftest {
                kind: SelftestKind::Offline,
                vmid: None,
                config: cfg(crate::config::DEFAULT_CONFIG_PATH)
            }
        );
    }

    #[test]
    fn selftest_task_refuses_to_run_without_vmid() {
        let e = p(&["selftest", "task"]).unwrap_err().to_string();
        assert!(e.contains("needs --vmid"), "{e}");
        assert!(p(&["selftest", "read", "--vmid", "100"]).is_err());
        assert!(p(&["selftest", "task", "--vmid", "99"]).is_err());
        assert!(p(&["selftest", "task", "--vmid", "abc"]).is_err());
        assert!(
            p(&["selftest", "bogus"])
                .unwrap_err()
                .0
                .contains("unknown selftest")
        );
    }

    #[test]
    fn verify_plan_journal() {
        assert_eq!(
            p(&["verify", "--blob", "b.json", "--sig", "b.sig"]).unwrap(),
            Command::Verify {
                blob: cfg("b.json"),
                sig: cfg("b.sig"),
                config: cfg(crate::config::DEFAULT_CONFIG_PATH)
            }
        );
        assert!(
            p(&["verify", "--blob", "b.json"])
                .unwrap_err()
                .0
                .contains("--sig")
        );
        assert_eq!(
            p(&["plan", "--config", "/c"]).unwrap(),
            Command::Plan { config: cfg("/c") }
        );
        assert_eq!(
            p(&["resume", "--rate-limit", "--config", "/c"]).unwrap(),
            Command::ResumeRateLimit { config: cfg("/c") }
        );
        assert_eq!(
            p(&["pause", "--reason", "disk swap"]).unwrap(),
            Command::Pause {
                reason: "disk swap".into(),
                config: cfg(crate::config::DEFAULT_CONFIG_PATH)
            }
        );
        assert_eq!(
            p(&["resume", "--config", "/c"]).unwrap(),
            Command::Resume { config: cfg("/c") }
        );
        assert_eq!(
            p(&[
                "audit",
                "--pending",
                "--guest",
                "105",
                "--code",
                "held",
                "--tail",
                "5"
            ])
            .unwrap(),
            Command::Audit {
                query: crate::app::AuditQuery {
                    tail: Some(5),
                    pending: true,
                    guest: Some(105),
                    code: Some("held".into()),
                    json: false,
                },
                config: cfg(crate::config::DEFAULT_CONFIG_PATH)
            }
        );
        assert_eq!(
            p(&["status", "--json"]).unwrap(),
            Command::Status {
                json: true,
                config: cfg(crate::config::DEFAULT_CONFIG_PATH)
            }
        );
        assert_eq!(
            p(&["journal", "--in-flight", "--tail", "20"]).unwrap(),
            Command::Journal {
                in_flight: true,
                tail: Some(20),
                config: cfg(crate::config::DEFAULT_CONFIG_PATH)
            }
        );
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        let cases: &[(&[&str], &str)] = &[
            (&["frobnicate"], "unknown command \"frobnicate\""),
            (&["run", "--vmid", "100"], "`run` does not take --vmid"),
            (&["run", "extra"], "unexpected argument \"extra\""),
            (&["--config"], "--config needs a value"),
            (
                &["--config", "/a", "--config", "/b"],
                "--config given twice",
            ),
            (&["journal", "--tail", "x"], "--tail must be a whole number"),
            (
                &["journal", "--in-flight=yes"],
                "--in-flight takes no value",
            ),
            (&["pause"], "`pause` needs --reason"),
            (&["pause", "--reason", "a\nb"], "control character"),
            (&["status", "--json=1"], "--json takes no value"),
            (&["audit", "--guest", "7"], "--guest must be a guest id"),
            (&["audit", "--code", "Bad Code"], "--code must be"),
            (
                &["audit", "--reason", "x"],
                "`audit` does not take --reason",
            ),
            (&["resume", "--rate-limit=1"], "--rate-limit takes no value"),
            (&["resume", "--tail", "1"], "`resume` does not take --tail"),
            (
                &["version", "--config", "/a"],
                "`version` does not take --config",
            ),
        ];
        for (args, want) in cases {
            let e = p(args).unwrap_err().0;
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn version_and_help_print_to_out_and_exit_0() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(
            run(&[OsString::from("--version")], &mut out, &mut err),
            EXIT_OK
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("felhom-agent {VERSION}\n")
        );
        let mut out = Vec::new();
        assert_eq!(run(&[OsString::from("help")], &mut out, &mut err), EXIT_OK);
        let help = String::from_utf8(out).unwrap();
        for cmd in [
            "run", "selftest", "verify", "plan", "journal", "resume", "version", "help",
        ] {
            assert!(
                help.contains(&format!("felhom-agent {cmd}")) || help.contains(&format!("[{cmd}]")),
                "{cmd}"
            );
        }
        let mut out = Vec::new();
        assert_eq!(
            run(&[OsString::from("nope")], &mut out, &mut err),
            EXIT_USAGE
        );
        assert!(String::from_utf8(err).unwrap().contains("unknown command"));
    }
}
