//! The one table of commands: each command's name, synopsis, one-line summary, help
//! text and flags. The parser takes the flags a command accepts from here, and
//! `help`, `help COMMAND` and `COMMAND --help` print from here, so a command's help
//! cannot drift from what it parses. This module never parses or runs anything.
//!
//! To add a command: one [`CommandSpec`] in [`COMMANDS`] (in the order `help` lists
//! them), a [`super::Command`] variant, and its arm in `build` and `run`.

/// One flag a command accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag {
    /// The spelling, e.g. `--config`.
    pub name: &'static str,
    /// The value's placeholder (`PATH`, `N`), or `None` for a switch.
    pub value: Option<&'static str>,
    /// Whether it may be given more than once (`--param`).
    pub repeats: bool,
    /// One line on what it does.
    pub help: &'static str,
}

/// One command of the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    /// The command words (`plan`, `op new`, `state acknowledge-damage`).
    pub name: &'static str,
    /// The positional arguments, in order, as placeholders (`OP`, `FILE`); a name in
    /// brackets is optional.
    pub positionals: &'static [&'static str],
    /// The usage line, without the program name.
    pub synopsis: &'static str,
    /// One line for the `help` overview.
    pub summary: &'static str,
    /// The full text `help COMMAND` prints below the usage line.
    pub help: &'static str,
    /// The flags it accepts (besides `--help`/`-h`, which every command takes).
    pub flags: &'static [Flag],
}

const CONFIG: Flag = Flag {
    name: "--config",
    value: Some("PATH"),
    repeats: false,
    help: "the config file (default /etc/felhom-agent/agent.json)",
};

const JSON: Flag = Flag {
    name: "--json",
    value: None,
    repeats: false,
    help: "one JSON document on stdout instead of text (fields in the README)",
};

/// Every command, in the order `help` lists them.
pub const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "run",
        positionals: &[],
        synopsis: "[run] [--config PATH]",
        summary: "the daemon: report to the hub, reconcile guests, until SIGTERM",
        help: "The daemon (also when no command is given): Recover, then report the host to \
the hub and converge its guests until SIGTERM or SIGINT. Holds the state directory's lock: \
a second `run` (or `selftest task`) on it exits 2 naming the holder's PID.",
        flags: &[CONFIG],
    },
    CommandSpec {
        name: "selftest",
        positionals: &["[KIND]"],
        synopsis: "selftest [read|task|hub|offline] [--vmid N] [--config PATH]",
        summary: "check the setup: Proxmox reads, a reversible task, the hub, or offline",
        help: "read     read-only: version, nodes, node status, guests, storage (the default)\n\
task     reversible round trip on guest N (snapshot, rollback, delete snapshot,\n         \
description marker write and restore); needs --vmid\n\
hub      one host report to the hub; prints the report and the hub's answer\n\
offline  no network: signature known-answer tests, config, state files\n\
`--selftest[=KIND]` is accepted as an alias of `selftest KIND`.",
        flags: &[
            Flag {
                name: "--vmid",
                value: Some("N"),
                repeats: false,
                help: "the guest `selftest task` works on (100-999999999)",
            },
            CONFIG,
        ],
    },
    CommandSpec {
        name: "verify",
        positionals: &[],
        synopsis: "verify --blob FILE --sig FILE [--sig FILE]... [--json] [--config PATH]",
        summary: "check a signed op against the effective signers and host; burns no nonce",
        help: "Runs the whole signature pipeline on a signed op (the blob and its \
`ssh-keygen -Y sign -n felhom-op-v1` signature) against the configured signers and \
host_id, with an in-memory nonce store: nothing is written and no nonce is burned. Prints \
the op, or `refused: CODE` (exit 1) with the reason in snake_case, then the effective \
signer set (its source, version, each key's role, fingerprint and expiry, the revoked \
keys). `--sig` repeats for an op signed by several keys (an emergency rotation).",
        flags: &[
            Flag {
                name: "--blob",
                value: Some("FILE"),
                repeats: false,
                help: "the op blob, exactly the bytes that were signed",
            },
            Flag {
                name: "--sig",
                value: Some("FILE"),
                repeats: true,
                help: "an armored SSH signature over the blob (repeat for several signers)",
            },
            JSON,
            CONFIG,
        ],
    },
    CommandSpec {
        name: "plan",
        positionals: &[],
        synopsis: "plan [--json] [--config PATH]",
        summary: "dry run: what the next reconcile pass would do, and the gate's word on it",
        help: "Reads the desired state, the guests and the journal, and prints each action \
the next pass would take with the gate's word on it. Executes nothing and writes nothing; \
safe while the daemon runs.",
        flags: &[JSON, CONFIG],
    },
    CommandSpec {
        name: "journal",
        positionals: &[],
        synopsis: "journal [--in-flight] [--tail N] [--json] [--config PATH]",
        summary: "the op history from the journal, read-only",
        help: "Prints the op history (started, task_running, succeeded or failed), read-only \
and safe while the daemon runs. Exits 1 and says DAMAGED when the hash chain does not \
verify.",
        flags: &[
            Flag {
                name: "--in-flight",
                value: None,
                repeats: false,
                help: "only ops without a terminal record",
            },
            Flag {
                name: "--tail",
                value: Some("N"),
                repeats: false,
                help: "only the last N ops",
            },
            JSON,
            CONFIG,
        ],
    },
    CommandSpec {
        name: "status",
        positionals: &[],
        synopsis: "status [--json] [--config PATH]",
        summary: "what the daemon is doing; exit 0 healthy, 1 degraded, 3 not running",
        help: "Reads the status file the daemon replaces after each report and each pass \
(state_dir/status.json): up since, version, the last report and pass, ops in flight, \
pending signatures, held, rate-limited or paused state, damage and the command that \
clears it, the signer policy, the last restore tests. Read-only; safe while the daemon \
runs. Exit 0 healthy, 1 degraded (the reasons are printed), 3 not running.",
        flags: &[JSON, CONFIG],
    },
    CommandSpec {
        name: "audit",
        positionals: &[],
        synopsis: "audit [--tail N] [--pending] [--guest N] [--code C] [--json] [--config PATH]",
        summary: "the gate's decisions from audit.log, read-only",
        help: "Prints the gate's decisions from audit.log (and its rotated audit.log.1) as a \
table, or as JSON: when, the op, the guest, the decision code, the signer, the reason. \
Read-only; safe while the daemon runs.",
        flags: &[
            Flag {
                name: "--tail",
                value: Some("N"),
                repeats: false,
                help: "only the last N matching entries (default 50)",
            },
            Flag {
                name: "--pending",
                value: None,
                repeats: false,
                help: "only ops still waiting for a signature",
            },
            Flag {
                name: "--guest",
                value: Some("N"),
                repeats: false,
                help: "only this guest",
            },
            Flag {
                name: "--code",
                value: Some("C"),
                repeats: false,
                help: "only this decision code (allowed, pending_signature, guest_changed …)",
            },
            JSON,
            CONFIG,
        ],
    },
    CommandSpec {
        name: "pause",
        positionals: &[],
        synopsis: "pause --reason TEXT [--config PATH]",
        summary: "hold every mutation (reconcile and signed ops) until `resume`",
        help: "A local operator veto: writes a durable marker in the state directory that \
holds every mutation, reconcile's and signed ops' (a held signed op burns no nonce), until \
`resume`. Reports go on and carry the reason, as `status` does. Audited with the uid and \
time. Safe while the daemon runs: it reads the marker before every pass and signed op.",
        flags: &[
            Flag {
                name: "--reason",
                value: Some("TEXT"),
                repeats: false,
                help: "why (required; at most 200 bytes, no control characters)",
            },
            CONFIG,
        ],
    },
    CommandSpec {
        name: "resume",
        positionals: &[],
        synopsis: "resume [--rate-limit] [--config PATH]",
        summary: "lift the operator's pause, or (--rate-limit) the blast-radius hold once",
        help: "Without --rate-limit: lifts the operator's pause (`pause`); audited. With \
--rate-limit: lets the stops and reductions the blast-radius limit holds (rate_limited) \
through once, at the daemon's next pass. Writes only a marker in the state directory; safe \
while the daemon runs.",
        flags: &[
            Flag {
                name: "--rate-limit",
                value: None,
                repeats: false,
                help: "lift the blast-radius limit's hold instead of the pause",
            },
            CONFIG,
        ],
    },
    CommandSpec {
        name: "op new",
        positionals: &["OP"],
        synopsis: "op new OP [--guest N] [--param KEY=VALUE]... [--valid DURATION] \
[--digest D] [--key-id ID] [--config PATH]",
        summary: "print an op blob ready for `ssh-keygen -Y sign -n felhom-op-v1`",
        help: "Prints a signed-op blob for OP to sign with \
`ssh-keygen -Y sign -n felhom-op-v1 -f KEY FILE`: host_id from the config, a fresh \
128-bit nonce from /dev/urandom, a window from now to now + DURATION, and, for an op on a \
guest, the guest's current config digest read from Proxmox (or --digest). It never signs \
and never reads a private key.",
        flags: &[
            Flag {
                name: "--guest",
                value: Some("N"),
                repeats: false,
                help: "the guest the op is for (every op but rotate_signers)",
            },
            Flag {
                name: "--param",
                value: Some("KEY=VALUE"),
                repeats: true,
                help: "an op parameter (e.g. purge=1); repeat for more",
            },
            Flag {
                name: "--valid",
                value: Some("DURATION"),
                repeats: false,
                help: "how long it stays valid: Ns, Nm or Nh (default 1h, at most 24h)",
            },
            Flag {
                name: "--digest",
                value: Some("D"),
                repeats: false,
                help: "the guest's config digest, instead of reading it from Proxmox",
            },
            Flag {
                name: "--key-id",
                value: Some("ID"),
                repeats: false,
                help: "the advisory key_id (default: the only operational signer's)",
            },
            CONFIG,
        ],
    },
    CommandSpec {
        name: "state acknowledge-damage",
        positionals: &["FILE"],
        synopsis: "state acknowledge-damage FILE [--config PATH]",
        summary: "archive a damaged state file once looked at, and audit who did it",
        help: "FILE is a `*.damaged` file in the state directory (its name, or its path), \
the one a damage log line names. It is renamed to FILE.acknowledged-TIMESTAMP (directory \
fsync'd) and an `acknowledge_damage` entry with the caller's uid goes into audit.log. Takes \
the state directory's lock: stop the daemon first; its next start no longer refuses \
destructive ops for that damage.",
        flags: &[CONFIG],
    },
    CommandSpec {
        name: "version",
        positionals: &[],
        synopsis: "version | --version | -V",
        summary: "print the version",
        help: "Prints `felhom-agent VERSION`.",
        flags: &[],
    },
    CommandSpec {
        name: "help",
        positionals: &["[COMMAND]"],
        synopsis: "help [COMMAND] | --help | -h | COMMAND --help",
        summary: "this overview, or one command's help",
        help: "Without COMMAND, lists every command; with it, prints that command's usage, \
text and flags.",
        flags: &[],
    },
];

/// The spec named `name` exactly.
pub fn spec(name: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// The text `help` prints: every command's synopsis and summary.
pub fn overview() -> String {
    let mut s = String::from("felhom-agent — the felhom host agent for Proxmox VE\n\nUsage:\n");
    for c in COMMANDS {
        s.push_str(&format!(
            "  felhom-agent {}\n      {}\n",
            c.synopsis, c.summary
        ));
    }
    s.push_str(
        "\n`felhom-agent help COMMAND` or `felhom-agent COMMAND --help` shows one command.\n\
--config defaults to /etc/felhom-agent/agent.json.\n\
Exit codes: 0 ok, 1 the check or run failed, 2 usage or configuration error.\n",
    );
    s
}

/// `text` with each line longer than `width` broken at spaces; a line's own breaks
/// (the selftest table) are kept. Ends with a newline.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.lines() {
        let mut col = 0;
        for (i, word) in line.split(' ').enumerate() {
            if i > 0 && col + 1 + word.chars().count() > width && col > 0 {
                out.push('\n');
                col = 0;
            } else if i > 0 {
                out.push(' ');
                col += 1;
            }
            out.push_str(word);
            col += word.chars().count();
        }
        out.push('\n');
    }
    out
}

/// The text `help COMMAND` and `COMMAND --help` print.
pub fn command_help(c: &CommandSpec) -> String {
    let mut s = format!("Usage: felhom-agent {}\n\n{}", c.synopsis, wrap(c.help, 88));
    if !c.flags.is_empty() {
        s.push_str("\nOptions:\n");
        for f in c.flags {
            let left = match f.value {
                Some(v) => format!("{} {v}", f.name),
                None => f.name.to_owned(),
            };
            s.push_str(&format!("  {left:<22}  {}\n", f.help));
        }
    }
    if c.name == "op new" {
        s.push_str(&format!(
            "\nOP is one of: {}.\n",
            crate::reconcile::SIGNED_CATALOGUE.join(", ")
        ));
    }
    s.push_str("\nExit codes: 0 ok, 1 the check or run failed, 2 usage or configuration error.\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_synopsis_names_its_command_and_every_flag() {
        for c in COMMANDS {
            let first = c.name.split(' ').next().unwrap_or_default();
            assert!(c.synopsis.contains(first), "{}", c.name);
            for f in c.flags {
                assert!(c.synopsis.contains(f.name), "{}: {}", c.name, f.name);
            }
            assert!(overview().contains(c.synopsis), "{}", c.name);
            let flat = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(flat(&command_help(c)).contains(&flat(c.help)), "{}", c.name);
            assert!(
                command_help(c)
                    .lines()
                    .skip(1)
                    .all(|l| l.chars().count() <= 100),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn names_are_unique() {
        for (i, c) in COMMANDS.iter().enumerate() {
            assert!(
                COMMANDS[i + 1..].iter().all(|o| o.name != c.name),
                "{}",
                c.name
            );
        }
    }
}
