//! The hand-written parser: words → [`Command`], with the flags each command accepts
//! taken from [`super::table::COMMANDS`]. It never reads a file or the environment.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use super::table::{COMMANDS, CommandSpec, spec};
use crate::app::command::Format;
use crate::app::op_new::{DEFAULT_VALID_SECONDS, OpNewRequest, parse_param, parse_valid};
use crate::app::selftest::SelftestKind;

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
    /// `verify --blob FILE --sig FILE [--sig FILE]...`.
    Verify {
        /// The signed op blob.
        blob: PathBuf,
        /// The armored signatures over it (one, or several for an emergency rotation).
        sigs: Vec<PathBuf>,
        /// Text or JSON.
        format: Format,
        /// Config file.
        config: PathBuf,
    },
    /// `plan`: a dry run of the next reconcile pass.
    Plan {
        /// Text or JSON.
        format: Format,
        /// Config file.
        config: PathBuf,
    },
    /// `journal [--in-flight] [--tail N]`.
    Journal {
        /// Only ops without a terminal record.
        in_flight: bool,
        /// Only the last N ops.
        tail: Option<usize>,
        /// Text or JSON.
        format: Format,
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
        /// Text or JSON.
        format: Format,
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
    /// `op new OP …`: print an op blob to sign.
    OpNew {
        /// What to print.
        request: OpNewRequest,
        /// Config file.
        config: PathBuf,
    },
    /// `state acknowledge-damage FILE`.
    AcknowledgeDamage {
        /// The damaged file, as given.
        file: PathBuf,
        /// Config file.
        config: PathBuf,
    },
    /// `version` / `--version` / `-V`.
    Version,
    /// `help [COMMAND]` / `--help` / `COMMAND --help`: the overview, or one command's.
    Help {
        /// The command, by its table name; `None` for the overview.
        topic: Option<&'static str>,
    },
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

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(format!("{} (see `felhom-agent help`)", msg.into()))
}

/// What the generic pass found: the command, its positionals and its flag values.
struct Words {
    spec: &'static CommandSpec,
    positionals: Vec<String>,
    values: BTreeMap<&'static str, Vec<String>>,
    help: bool,
}

impl Words {
    fn switch(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }
    fn one(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
    /// `--tail N` when given: a whole number, or the usage error naming it.
    fn tail(&self) -> Result<Option<usize>, UsageError> {
        self.one("--tail")
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| usage(format!("--tail must be a whole number, got {v:?}")))
            })
            .transpose()
    }
    fn config(&self) -> PathBuf {
        PathBuf::from(
            self.one("--config")
                .unwrap_or(crate::config::DEFAULT_CONFIG_PATH),
        )
    }
    fn format(&self) -> Format {
        if self.switch("--json") {
            Format::Json
        } else {
            Format::Text
        }
    }
}

/// The command the leading words name, and how many words that took. A word that
/// starts a two-word command alone is a usage error naming the subcommands.
fn find_command(words: &[String]) -> Result<(&'static CommandSpec, usize), UsageError> {
    let first = words.first().map(String::as_str).unwrap_or("run");
    if let Some(c) = spec(first) {
        return Ok((c, usize::from(!words.is_empty())));
    }
    let subs: Vec<&'static CommandSpec> = COMMANDS
        .iter()
        .filter(|c| c.name.split(' ').next() == Some(first) && c.name.contains(' '))
        .collect();
    if subs.is_empty() {
        return Err(usage(format!("unknown command {first:?}")));
    }
    let second = words.get(1).map(String::as_str).unwrap_or("");
    // `op --help`: the help of its (first) subcommand.
    if let ("--help" | "-h", Some(c)) = (second, subs.first()) {
        return Ok((c, 1));
    }
    if let Some(c) = subs
        .iter()
        .find(|c| c.name.split(' ').nth(1) == Some(second))
    {
        return Ok((c, 2));
    }
    let names: Vec<&str> = subs
        .iter()
        .filter_map(|c| c.name.split(' ').nth(1))
        .collect();
    Err(usage(format!(
        "`{first}` needs a subcommand: {}",
        names.join(", ")
    )))
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
    // The global spellings: `--version`/`-V`, `--help`/`-h`, and the Go agent's
    // `--selftest[=MODE]`.
    match words.first().map(String::as_str) {
        Some("--version" | "-V") => {
            words.remove(0);
            words.insert(0, "version".into());
        }
        Some("--help" | "-h") => {
            words.remove(0);
            words.insert(0, "help".into());
        }
        Some("--selftest") => {
            words[0] = "selftest".into();
        }
        Some(w) if w.starts_with("--selftest=") => {
            let kind = w["--selftest=".len()..].to_owned();
            words[0] = "selftest".into();
            words.insert(1, kind);
        }
        _ => {}
    }
    let starts_with_flag = words.first().is_none_or(|w| w.starts_with('-'));
    let (spec, used) = if starts_with_flag {
        (spec("run").ok_or_else(|| usage("no `run` command"))?, 0)
    } else {
        find_command(&words)?
    };
    let w = collect(spec, &words[used..])?;
    if w.help {
        return Ok(Command::Help {
            topic: Some(spec.name),
        });
    }
    build(w)
}

/// The generic pass: positionals and the flags `spec` lists, nothing else.
fn collect(spec: &'static CommandSpec, rest: &[String]) -> Result<Words, UsageError> {
    let name = spec.name;
    let mut w = Words {
        spec,
        positionals: Vec::new(),
        values: BTreeMap::new(),
        help: false,
    };
    let mut it = rest.iter();
    while let Some(word) = it.next() {
        if word == "--help" || word == "-h" {
            w.help = true;
            continue;
        }
        if !word.starts_with('-') || word == "-" {
            // `help op new`: a topic may be two words.
            let max = if name == "help" {
                2
            } else {
                spec.positionals.len()
            };
            if w.positionals.len() >= max {
                return Err(usage(format!("unexpected argument {word:?} for `{name}`")));
            }
            w.positionals.push(word.clone());
            continue;
        }
        let (flag, inline) = match word.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (word.as_str(), None),
        };
        let Some(f) = spec.flags.iter().find(|f| f.name == flag) else {
            return Err(usage(format!("`{name}` does not take {flag}")));
        };
        let value = match (f.value, inline) {
            (None, Some(_)) => return Err(usage(format!("{flag} takes no value"))),
            (None, None) => String::new(),
            (Some(_), Some(v)) => v,
            (Some(_), None) => it
                .next()
                .cloned()
                .ok_or_else(|| usage(format!("{flag} needs a value")))?,
        };
        if f.value.is_some() && value.is_empty() {
            return Err(usage(format!("{flag} needs a value")));
        }
        let slot = w.values.entry(f.name).or_default();
        if !slot.is_empty() && !f.repeats {
            return Err(usage(format!("{flag} given twice")));
        }
        slot.push(value);
    }
    Ok(w)
}

fn vmid_arg(flag: &str, value: &str) -> Result<u32, UsageError> {
    let bad = || {
        usage(format!(
            "{flag} must be a guest id (100-999999999), got {value:?}"
        ))
    };
    let n: u32 = value.parse().map_err(|_| bad())?;
    if !(100..=999_999_999).contains(&n) {
        return Err(bad());
    }
    Ok(n)
}

/// The per-command pass: required flags, values, combinations.
fn build(w: Words) -> Result<Command, UsageError> {
    let config = w.config();
    match w.spec.name {
        "run" => Ok(Command::Run { config }),
        "selftest" => {
            let vmid = w.one("--vmid").map(|v| vmid_arg("--vmid", v)).transpose()?;
            let kind = match w.positionals.first().map(String::as_str) {
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
            blob: PathBuf::from(
                w.one("--blob")
                    .ok_or_else(|| usage("`verify` needs --blob FILE"))?,
            ),
            sigs: {
                let sigs: Vec<PathBuf> = w
                    .values
                    .get("--sig")
                    .map(|v| v.iter().map(PathBuf::from).collect())
                    .unwrap_or_default();
                if sigs.is_empty() {
                    return Err(usage("`verify` needs --sig FILE"));
                }
                if sigs.len() > crate::authz::MAX_SIGNATURES {
                    return Err(usage(format!(
                        "--sig given more than {} times",
                        crate::authz::MAX_SIGNATURES
                    )));
                }
                sigs
            },
            format: w.format(),
            config,
        }),
        "plan" => Ok(Command::Plan {
            format: w.format(),
            config,
        }),
        "journal" => {
            let tail = w.tail()?;
            Ok(Command::Journal {
                in_flight: w.switch("--in-flight"),
                tail,
                format: w.format(),
                config,
            })
        }
        "resume" if w.switch("--rate-limit") => Ok(Command::ResumeRateLimit { config }),
        "resume" => Ok(Command::Resume { config }),
        "pause" => {
            let reason = w
                .one("--reason")
                .ok_or_else(|| usage("`pause` needs --reason TEXT (say why)"))?;
            crate::app::pause::check_reason(reason).map_err(usage)?;
            Ok(Command::Pause {
                reason: reason.to_owned(),
                config,
            })
        }
        "status" => Ok(Command::Status {
            format: w.format(),
            config,
        }),
        "audit" => {
            let tail = w.tail()?;
            let guest = w
                .one("--guest")
                .map(|v| vmid_arg("--guest", v))
                .transpose()?;
            let code = w.one("--code").map(str::to_owned);
            if let Some(c) = &code {
                crate::app::audit_cmd::check_code(c).map_err(usage)?;
            }
            Ok(Command::Audit {
                query: crate::app::AuditQuery {
                    tail,
                    pending: w.switch("--pending"),
                    guest,
                    code,
                    json: w.format() == Format::Json,
                },
                config,
            })
        }
        "op new" => {
            let op = w
                .positionals
                .first()
                .cloned()
                .ok_or_else(|| usage("`op new` needs OP (see `felhom-agent help op new`)"))?;
            let guest = w
                .one("--guest")
                .map(|v| vmid_arg("--guest", v))
                .transpose()?;
            let mut params = BTreeMap::new();
            for p in w.values.get("--param").into_iter().flatten() {
                let (k, v) = parse_param(p).map_err(|e| usage(format!("--param {e}")))?;
                if params.insert(k.clone(), v).is_some() {
                    return Err(usage(format!("--param {k:?} given twice")));
                }
            }
            let valid_seconds = match w.one("--valid") {
                Some(v) => parse_valid(v).map_err(|e| usage(format!("--valid {e}")))?,
                None => DEFAULT_VALID_SECONDS,
            };
            let request = OpNewRequest {
                op,
                guest,
                params,
                valid_seconds,
                digest: w.one("--digest").map(str::to_owned),
                key_id: w.one("--key-id").map(str::to_owned),
            };
            request.check().map_err(usage)?;
            Ok(Command::OpNew { request, config })
        }
        "state acknowledge-damage" => Ok(Command::AcknowledgeDamage {
            file: PathBuf::from(w.positionals.first().ok_or_else(|| {
                usage("`state acknowledge-damage` needs FILE (the damaged file a log line names)")
            })?),
            config,
        }),
        "version" => Ok(Command::Version),
        "help" => {
            let topic = match w.positionals.is_empty() {
                true => None,
                false => Some(help_topic(&w.positionals.join(" "))?),
            };
            Ok(Command::Help { topic })
        }
        other => Err(usage(format!("unknown command {other:?}"))),
    }
}

/// `help op` and `help op new` both name `op new`; `help --selftest` is not a topic.
fn help_topic(t: &str) -> Result<&'static str, UsageError> {
    if let Some(c) = spec(t) {
        return Ok(c.name);
    }
    COMMANDS
        .iter()
        .find(|c| c.name.split(' ').next() == Some(t))
        .map(|c| c.name)
        .ok_or_else(|| usage(format!("no help for {t:?}: not a command")))
}
