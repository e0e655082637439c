//! What the Debian package ships beside the binary: the man page and the bash completion
//! name every command and option the binary's `help` lists (and each `COMMAND --help`
//! that the binary answers), and the maintainer scripts, run against recording stubs of
//! the systemd helpers, create the state directory 0700, enable the unit and never start
//! the daemon, and never delete the state directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const MAN_PAGE: &str = include_str!("../packaging/felhom-agent.8");
const COMPLETION: &str = include_str!("../packaging/felhom-agent.bash-completion");
const POSTINST: &str = include_str!("../packaging/debian/postinst");
const PRERM: &str = include_str!("../packaging/debian/prerm");
const POSTRM: &str = include_str!("../packaging/debian/postrm");
const UNIT: &str = "felhom-agent.service";

fn agent(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_felhom-agent"))
        .args(args)
        .output()
        .expect("the agent runs");
    let text = String::from_utf8(out.stdout).expect("help is UTF-8");
    (out.status.code().expect("exited"), text)
}

/// What a help text promises: its commands (the first word after `felhom-agent` on a
/// usage line) and every option it spells (`--word`, `-X`).
#[derive(Debug, Default)]
struct HelpSurface {
    commands: BTreeSet<String>,
    options: BTreeSet<String>,
    exit_codes: BTreeSet<String>,
}

fn is_option_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

fn surface(help: &str) -> HelpSurface {
    let mut s = HelpSurface::default();
    for line in help.lines() {
        // Usage lines are indented; the title line is not.
        if let Some(rest) = line.strip_prefix("  felhom-agent ") {
            let first = rest.split_whitespace().next().unwrap_or("");
            let word = first.trim_matches(|c| c == '[' || c == ']');
            // `COMMAND --help` names a placeholder, not a command.
            let placeholder = word.chars().all(|c| c.is_ascii_uppercase() || c == '_');
            if !word.starts_with('-') && !word.is_empty() && !placeholder {
                s.commands.insert(word.to_owned());
            }
        }
        if let Some(codes) = line.trim_start().strip_prefix("Exit codes:") {
            for part in codes.split(',') {
                if let Some(n) = part.split_whitespace().next()
                    && n.chars().all(|c| c.is_ascii_digit())
                {
                    s.exit_codes.insert(n.to_owned());
                }
            }
        }
        // Options: on a usage line (the synopses name every flag a command takes; prose
        // may quote another program's, like `ssh-keygen -Y sign`), a '-' that starts a
        // word (after a space, '[', '|', '(' or '`').
        if !line.starts_with("  felhom-agent ") && !line.starts_with("Usage: felhom-agent ") {
            continue;
        }
        let chars: Vec<char> = line.chars().collect();
        for i in 0..chars.len() {
            let starts = i == 0 || " [|(`".contains(chars[i - 1]);
            if !starts || chars[i] != '-' {
                continue;
            }
            let word: String = chars[i..]
                .iter()
                .take_while(|c| is_option_char(**c))
                .collect();
            let long = word.len() > 2 && word.starts_with("--");
            let short = word.len() == 2 && word.as_bytes()[1].is_ascii_alphabetic();
            if long || short {
                s.options.insert(word);
            }
        }
    }
    s
}

/// The man page as text: roff's `\-` is a hyphen, font escapes go.
fn man_text() -> String {
    let mut t = MAN_PAGE.replace("\\-", "-");
    for esc in ["\\fB", "\\fI", "\\fR", "\\fP"] {
        t = t.replace(esc, "");
    }
    t
}

/// The lines of one `.SH` section of the man page.
fn man_section(name: &str) -> Vec<String> {
    let text = man_text();
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix(".SH ") {
            inside = h.trim_matches('"') == name;
            continue;
        }
        if inside {
            out.push(line.to_owned());
        }
    }
    out
}

/// Whether `word` stands alone in `text` (not as part of a longer option or word).
fn has_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_option_char) && !after.is_some_and(is_option_char)
    })
}

/// What of the help's surface the man page does not document: each command needs its
/// own `.B COMMAND` entry under COMMANDS, each option and exit code its mention.
fn missing_from_man(help: &HelpSurface, man: &str) -> Vec<String> {
    let commands = man_section("COMMANDS");
    let exit = man_section("EXIT STATUS").join("\n");
    let mut missing = Vec::new();
    for c in &help.commands {
        let entry = format!(".B {c}");
        if !commands
            .iter()
            .any(|l| l == &entry || l.starts_with(&format!("{entry} ")))
        {
            missing.push(format!("command {c}"));
        }
    }
    for o in &help.options {
        if !has_word(man, o) {
            missing.push(format!("option {o}"));
        }
    }
    for n in &help.exit_codes {
        if !exit.lines().any(|l| l == format!(".B {n}")) {
            missing.push(format!("exit code {n}"));
        }
    }
    missing
}

/// The binary's whole surface: `help`, and `COMMAND --help` for each command that
/// answers it (a CLI that refuses `COMMAND --help` contributes `help` alone).
fn binary_surface() -> HelpSurface {
    let (code, help) = agent(&["help"]);
    assert_eq!(code, 0, "`felhom-agent help` exits 0");
    let mut all = surface(&help);
    assert!(
        all.commands.len() >= 6 && all.options.contains("--config"),
        "the help parser found the usage lines: {all:?}"
    );
    for c in all.commands.clone() {
        let (code, text) = agent(&[&c, "--help"]);
        if code == 0 {
            let sub = surface(&text);
            all.options.extend(sub.options);
        }
    }
    all
}

#[test]
fn the_man_page_documents_every_command_option_and_exit_code_the_binary_lists() {
    let s = binary_surface();
    let missing = missing_from_man(&s, &man_text());
    assert!(
        missing.is_empty(),
        "felhom-agent(8) lacks what `felhom-agent help` lists: {missing:?}"
    );
}

#[test]
fn the_man_page_check_finds_a_command_an_option_and_an_exit_code_left_out() {
    let help = "Usage:\n  felhom-agent frobnicate [--wobble N] [-Q]\n\
                \x20 felhom-agent COMMAND --help\n\
                Exit codes: 0 ok, 7 odd.\n";
    let s = surface(help);
    let missing = missing_from_man(&s, &man_text());
    assert_eq!(
        missing,
        [
            "command frobnicate",
            "option --wobble",
            "option -Q",
            "exit code 7"
        ],
        "the check is real: each kind of gap is found"
    );
}

#[test]
fn the_man_page_documents_the_commands_of_the_design() {
    // DESIGN "Command line" and issue 15: the commands the operator's kit adds.
    let commands = man_section("COMMANDS");
    for c in [
        "run",
        "selftest",
        "verify",
        "plan",
        "journal",
        "status",
        "audit",
        "pause",
        "resume",
        "op new",
        "state acknowledge-damage",
        "version",
        "help",
    ] {
        assert!(
            commands
                .iter()
                .any(|l| l == &format!(".B {c}") || l.starts_with(&format!(".B {c} "))),
            "felhom-agent(8) has no COMMANDS entry for `{c}`"
        );
    }
    let text = man_text();
    for word in [
        "--json",
        "--pending",
        "--guest",
        "--code",
        "--reason",
        "--param",
        "--valid",
        "--digest",
        "-V",
        "FELHOM_AGENT_",
        "CREDENTIALS_DIRECTORY",
        "NOTIFY_SOCKET",
        "JOURNAL_STREAM",
        "/etc/felhom-agent/agent.json",
        "/var/lib/felhom-agent/",
        "status.json",
        "metrics.textfile",
    ] {
        assert!(
            text.contains(word),
            "felhom-agent(8) does not mention {word}"
        );
    }
    let exit = man_section("EXIT STATUS");
    for n in ["0", "1", "2", "3"] {
        assert!(exit.iter().any(|l| l == &format!(".B {n}")), "exit {n}");
    }
}

#[test]
fn the_completion_offers_every_command_and_option_the_binary_lists() {
    let s = binary_surface();
    let commands: BTreeSet<&str> = COMPLETION
        .lines()
        .find_map(|l| l.trim().strip_prefix("local commands=\""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("the completion's command list")
        .split_whitespace()
        .collect();
    let missing: Vec<&String> = s
        .commands
        .iter()
        .filter(|c| !commands.contains(c.as_str()))
        .collect();
    assert!(missing.is_empty(), "not completed: {missing:?}");
    let missing: Vec<&String> = s
        .options
        .iter()
        .filter(|o| !has_word(COMPLETION, o))
        .collect();
    assert!(missing.is_empty(), "options not completed: {missing:?}");
}

#[test]
fn the_completion_completes_a_command_and_its_options_in_bash() {
    let probe = Command::new("bash").arg("--version").output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!("SKIPPED: bash is not installed");
        return;
    }
    // COMP_WORDS as bash fills them for `felhom-agent jour<TAB>` and
    // `felhom-agent journal --<TAB>`.
    let script = format!(
        "{COMPLETION}\n\
         COMP_WORDS=(felhom-agent jour); COMP_CWORD=1; _felhom_agent; echo \"${{COMPREPLY[*]}}\"\n\
         COMP_WORDS=(felhom-agent journal --); COMP_CWORD=2; _felhom_agent; echo \"${{COMPREPLY[*]}}\"\n"
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "journal");
    let offered: BTreeSet<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        offered,
        BTreeSet::from(["--in-flight", "--tail", "--json", "--config", "--help"])
    );
}

/// A scratch host for the maintainer scripts: `root` stands for `/` (dpkg's DPKG_ROOT),
/// `bin` holds stubs of the systemd helpers and chown that record each call, and
/// `systemd_running` is the directory the scripts test for a running systemd.
struct Host {
    dir: PathBuf,
}

impl Host {
    fn new(name: &str) -> Host {
        let dir = std::env::temp_dir().join(format!("felhom-pkg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root")).unwrap();
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        for tool in [
            "deb-systemd-helper",
            "deb-systemd-invoke",
            "systemctl",
            "chown",
        ] {
            // `was-enabled` answers as the marker file says: a first install, or a unit
            // the operator disabled.
            let stub = format!(
                "#!/bin/sh\necho \"{tool} $*\" >>'{log}'\n\
                 if [ \"$1\" = --quiet ] && [ \"$2\" = was-enabled ]; then\n\
                 [ ! -e '{disabled}' ]; exit $?\nfi\nexit 0\n",
                log = dir.join("calls").display(),
                disabled = dir.join("operator-disabled").display(),
            );
            let p = dir.join("bin").join(tool);
            std::fs::write(&p, stub).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Host { dir }
    }

    fn root(&self, path: &str) -> PathBuf {
        self.dir.join("root").join(path.trim_start_matches('/'))
    }

    fn systemd_running(&self) {
        std::fs::create_dir_all(self.dir.join("run-systemd-system")).unwrap();
    }

    fn operator_disabled(&self) {
        std::fs::write(self.dir.join("operator-disabled"), "").unwrap();
    }

    /// Runs a maintainer script with /bin/sh (dash on Debian), as dpkg would, with the
    /// one path that says "systemd is running" pointed into the scratch host.
    fn run(&self, script: &str, args: &[&str]) {
        let marker = self.dir.join("run-systemd-system");
        let text = script.replace("/run/systemd/system", &marker.display().to_string());
        assert_ne!(text, script, "the script tests for a running systemd");
        let path = format!("{}:/usr/bin:/bin", self.dir.join("bin").display());
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(&text)
            .arg("maintainer-script")
            .args(args)
            .env_clear()
            .env("PATH", path)
            .env("DPKG_ROOT", self.dir.join("root"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn mode(&self, path: &str) -> u32 {
        std::fs::metadata(self.root(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .permissions()
            .mode()
            & 0o7777
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A call that could start the daemon: any verb but the ones that cannot.
fn starts(call: &str) -> bool {
    let words: Vec<&str> = call.split_whitespace().collect();
    match words.first() {
        Some(&"deb-systemd-invoke") => words.get(1) != Some(&"stop"),
        Some(&"systemctl") => !words.contains(&"daemon-reload"),
        _ => call.contains("--now"),
    }
}

#[test]
fn postinst_on_a_fresh_host_creates_the_state_dir_enables_and_never_starts() {
    let host = Host::new("fresh");
    host.systemd_running();
    host.run(POSTINST, &["configure", ""]);
    assert_eq!(host.mode("/var/lib/felhom-agent"), 0o700);
    assert_eq!(host.mode("/etc/felhom-agent/credentials"), 0o700);
    let calls = host.calls();
    let state = host.root("/var/lib/felhom-agent").display().to_string();
    assert!(
        calls.contains(&format!("chown root:root {state}")),
        "{calls:?}"
    );
    assert!(
        calls.contains(&format!("deb-systemd-helper enable {UNIT}")),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"systemctl --system daemon-reload".to_owned()),
        "{calls:?}"
    );
    let started: Vec<&String> = calls.iter().filter(|c| starts(c)).collect();
    assert!(
        started.is_empty(),
        "postinst started the daemon: {started:?}"
    );
    assert!(
        !calls.iter().any(|c| c.starts_with("deb-systemd-invoke")),
        "a first install touches no running unit: {calls:?}"
    );
}

#[test]
fn postinst_on_an_upgrade_restarts_only_a_running_daemon_and_keeps_the_operators_choices() {
    let host = Host::new("upgrade");
    host.systemd_running();
    host.operator_disabled();
    let state = host.root("/var/lib/felhom-agent");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(state.join("journal.log"), "kept\n").unwrap();
    let creds = host.root("/etc/felhom-agent/credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o750)).unwrap();

    host.run(POSTINST, &["configure", "0.0.9-1"]);

    assert_eq!(host.mode("/var/lib/felhom-agent"), 0o700, "tightened");
    assert_eq!(
        std::fs::read_to_string(state.join("journal.log")).unwrap(),
        "kept\n"
    );
    assert_eq!(
        host.mode("/etc/felhom-agent/credentials"),
        0o750,
        "the operator's own mode is kept"
    );
    let calls = host.calls();
    assert!(
        !calls.contains(&format!("deb-systemd-helper enable {UNIT}")),
        "a unit the operator disabled stays disabled: {calls:?}"
    );
    assert!(
        calls.contains(&format!("deb-systemd-helper update-state {UNIT}")),
        "{calls:?}"
    );
    let invoked: Vec<&String> = calls
        .iter()
        .filter(|c| c.starts_with("deb-systemd-invoke"))
        .collect();
    assert_eq!(
        invoked,
        [&format!("deb-systemd-invoke try-restart {UNIT}")],
        "try-restart restarts a running daemon and never starts a stopped one"
    );
}

#[test]
fn postinst_without_a_running_systemd_enables_and_calls_no_systemctl() {
    let host = Host::new("chroot");
    host.run(POSTINST, &["configure", "0.0.9-1"]);
    assert_eq!(host.mode("/var/lib/felhom-agent"), 0o700);
    let calls = host.calls();
    assert!(
        calls.contains(&format!("deb-systemd-helper enable {UNIT}")),
        "{calls:?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("systemctl") || c.starts_with("deb-systemd-invoke")),
        "{calls:?}"
    );
}

#[test]
fn prerm_stops_the_daemon_on_remove_and_leaves_it_running_on_upgrade() {
    let host = Host::new("prerm");
    host.systemd_running();
    host.run(PRERM, &["upgrade", "0.2.0-1"]);
    assert!(host.calls().is_empty(), "{:?}", host.calls());
    host.run(PRERM, &["remove"]);
    assert_eq!(host.calls(), [format!("deb-systemd-invoke stop {UNIT}")]);
}

#[test]
fn postrm_purge_forgets_the_unit_and_keeps_the_state_directory() {
    let host = Host::new("purge");
    host.systemd_running();
    let state = host.root("/var/lib/felhom-agent");
    std::fs::create_dir_all(&state).unwrap();
    for f in ["journal.log", "nonces.log", "audit.log"] {
        std::fs::write(state.join(f), f).unwrap();
    }
    host.run(POSTRM, &["remove"]);
    host.run(POSTRM, &["purge"]);
    for f in ["journal.log", "nonces.log", "audit.log"] {
        assert_eq!(
            std::fs::read_to_string(state.join(f)).unwrap(),
            f,
            "{f} survives a purge: the nonces refuse a replayed op after a reinstall"
        );
    }
    assert_eq!(
        host.calls(),
        [
            "systemctl --system daemon-reload".to_owned(),
            format!("deb-systemd-helper mask {UNIT}"),
            format!("deb-systemd-helper purge {UNIT}"),
            format!("deb-systemd-helper unmask {UNIT}"),
        ]
    );
}

#[test]
fn the_maintainer_scripts_are_posix_sh_that_stop_on_errors() {
    for (name, text) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        assert!(text.starts_with("#!/bin/sh\n"), "{name}");
        assert!(text.contains("\nset -e\n"), "{name} stops on an error");
        let out = Command::new("/bin/sh")
            .args(["-n", "-c", text])
            .output()
            .unwrap();
        assert!(out.status.success(), "{name} does not parse: {out:?}");
    }
    let mode =
        std::fs::metadata(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/debian/postinst"))
            .unwrap()
            .permissions()
            .mode();
    assert_eq!(
        mode & 0o111,
        0o111,
        "the scripts are executable in the tree"
    );
}
