//! The parser and the help texts, without a process: nothing here spawns or reads a file.

use super::*;
use crate::app::selftest::SelftestKind;
use std::path::PathBuf;

fn p(args: &[&str]) -> Result<Command, UsageError> {
    parse(&args.iter().map(OsString::from).collect::<Vec<_>>())
}

fn cfg(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// Asserts that `args` are refused with a usage error that says `want`.
fn refused(args: &[&str], want: &str) {
    let e = p(args).unwrap_err().0;
    assert!(e.contains(want), "{args:?}: {e}");
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
    refused(&["selftest", "bogus"], "unknown selftest");
}

#[test]
fn verify_plan_journal() {
    assert_eq!(
        p(&["verify", "--blob", "b.json", "--sig", "b.sig"]).unwrap(),
        Command::Verify {
            blob: cfg("b.json"),
            sigs: vec![cfg("b.sig")],
            format: Format::Text,
            config: cfg(crate::config::DEFAULT_CONFIG_PATH)
        }
    );
    assert_eq!(
        p(&["verify", "--blob", "b", "--sig", "s1", "--sig", "s2"]).unwrap(),
        Command::Verify {
            blob: cfg("b"),
            sigs: vec![cfg("s1"), cfg("s2")],
            format: Format::Text,
            config: cfg(crate::config::DEFAULT_CONFIG_PATH)
        }
    );
    let nine: Vec<&str> = ["verify", "--blob", "b"]
        .into_iter()
        .chain(std::iter::repeat_n(["--sig", "s"], 9).flatten())
        .collect();
    refused(&nine, "more than 8 times");
    refused(&["verify", "--blob", "b.json"], "--sig");
    assert_eq!(
        p(&["plan", "--config", "/c"]).unwrap(),
        Command::Plan {
            format: Format::Text,
            config: cfg("/c")
        }
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
            format: Format::Json,
            config: cfg(crate::config::DEFAULT_CONFIG_PATH)
        }
    );
    assert_eq!(
        p(&["journal", "--in-flight", "--tail", "20"]).unwrap(),
        Command::Journal {
            in_flight: true,
            tail: Some(20),
            format: Format::Text,
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
        refused(args, want);
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
        "run", "selftest", "verify", "plan", "journal", "status", "audit", "pause", "resume",
        "version", "help",
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

#[test]
fn every_command_has_help_in_both_spellings_and_as_a_flag() {
    for c in table::COMMANDS {
        let words: Vec<&str> = c.name.split(' ').collect();
        let mut help = vec!["help"];
        help.extend(&words);
        assert_eq!(
            p(&help).unwrap(),
            Command::Help {
                topic: Some(c.name)
            },
            "{}",
            c.name
        );
        for flag in ["--help", "-h"] {
            let mut w = words.clone();
            w.push(flag);
            assert_eq!(
                p(&w).unwrap(),
                Command::Help {
                    topic: Some(c.name)
                },
                "{w:?}"
            );
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let args: Vec<OsString> = help.iter().map(OsString::from).collect();
        assert_eq!(run(&args, &mut out, &mut err), EXIT_OK);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(&format!("Usage: felhom-agent {}", c.synopsis)),
            "{text}"
        );
        for f in c.flags {
            assert!(text.contains(f.name), "{}: {}", c.name, f.name);
        }
        assert!(err.is_empty());
    }
    // A flag's value that looks like help is still the value.
    assert_eq!(
        p(&["plan", "--config", "--help"]).unwrap(),
        Command::Plan {
            format: Format::Text,
            config: cfg("--help")
        }
    );
    assert_eq!(
        p(&["help", "op"]).unwrap(),
        Command::Help {
            topic: Some("op new")
        }
    );
    refused(&["help", "nope"], "not a command");
    for (w, topic) in [
        (&["op", "--help"], "op new"),
        (&["state", "-h"], "state acknowledge-damage"),
    ] {
        assert_eq!(p(w).unwrap(), Command::Help { topic: Some(topic) }, "{w:?}");
    }
}

#[test]
fn dash_v_is_the_version_and_json_is_a_switch() {
    assert_eq!(p(&["-V"]).unwrap(), Command::Version);
    assert_eq!(p(&["--version"]).unwrap(), Command::Version);
    assert_eq!(
        p(&["plan", "--json"]).unwrap(),
        Command::Plan {
            format: Format::Json,
            config: cfg(crate::config::DEFAULT_CONFIG_PATH)
        }
    );
    refused(&["plan", "--json=yes"], "takes no value");
    refused(&["run", "--json"], "does not take --json");
}

#[test]
fn op_new_and_acknowledge_damage_parse() {
    let got = p(&[
        "op",
        "new",
        "guest_destroy",
        "--guest",
        "105",
        "--param",
        "purge=1",
        "--param",
        "unprotect=1",
        "--valid",
        "30m",
        "--digest",
        "ab12",
    ])
    .unwrap();
    let Command::OpNew { request, .. } = got else {
        panic!("{got:?}")
    };
    assert_eq!(request.op, "guest_destroy");
    assert_eq!(request.guest, Some(105));
    assert_eq!(request.params.len(), 2);
    assert_eq!(request.valid_seconds, 1800);
    assert_eq!(request.digest.as_deref(), Some("ab12"));
    let cases: &[(&[&str], &str)] = &[
        (&["op"], "`op` needs a subcommand: new"),
        (&["op", "old"], "`op` needs a subcommand: new"),
        (&["op", "new"], "`op new` needs OP"),
        (
            &["op", "new", "storage_wipe", "--guest", "105"],
            "unknown op \"storage_wipe\"",
        ),
        (&["op", "new", "guest_destroy"], "needs --guest N"),
        (
            &[
                "op",
                "new",
                "guest_destroy",
                "--guest",
                "105",
                "--valid",
                "2d",
            ],
            "--valid must be",
        ),
        (
            &[
                "op",
                "new",
                "guest_destroy",
                "--guest",
                "105",
                "--param",
                "a=1",
                "--param",
                "a=2",
            ],
            "given twice",
        ),
        (
            &[
                "op",
                "new",
                "guest_destroy",
                "--guest",
                "105",
                "--guest",
                "106",
            ],
            "--guest given twice",
        ),
        (&["state"], "`state` needs a subcommand: acknowledge-damage"),
        (&["state", "acknowledge-damage"], "needs FILE"),
        (
            &["state", "acknowledge-damage", "a", "b"],
            "unexpected argument \"b\"",
        ),
    ];
    for (args, want) in cases {
        refused(args, want);
    }
    assert_eq!(
        p(&["state", "acknowledge-damage", "journal.log.damaged"]).unwrap(),
        Command::AcknowledgeDamage {
            file: cfg("journal.log.damaged"),
            config: cfg(crate::config::DEFAULT_CONFIG_PATH)
        }
    );
}
