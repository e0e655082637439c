//! One daemon per state directory, proven with the real binary against the Proxmox and
//! hub simulators.
//!
//! * A daemon runs; a second `run` on the same state directory exits 2 at once, naming
//!   the first one's PID, and changes no byte of the directory; the first daemon runs on
//!   and executes a signed destroy the hub then delivers; restarted, it refuses the same
//!   signed op delivered again — exactly one DELETE reaches Proxmox.
//! * Two daemons spawned back to back on a fresh directory: exactly one runs, the other
//!   exits 2; after SIGTERM every file replays clean.
//! * `selftest task` beside a running daemon exits 2 naming its PID and mutates nothing.
//! * The read-only commands (`journal`, `plan`, `selftest offline`) work beside a
//!   running daemon and leave every file as it was, even a torn last line a writer
//!   would cut.
//!
//! Oracles are exit codes, the simulators' request logs, the files' bytes and the log
//! lines' `event=` keys (`state_lock_acquired`, `state_lock_held`, `daemon_running`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::agent::{Agent, BIN, PATIENCE, fast_hub, write_signed_agent_config};
use common::sign::{destroy_blob, ssh_keygen_sign};

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use felhom_agent::base::{Clock, SystemClock};
use felhom_agent::reconcile::Journal;
use felhom_agent::store::SECOND_MS_ENV;
use felhom_sim::{GuestSeed, HubSim, ProxmoxSim};
use serde_json::{Value, json};

/// One schedule second, in ms: hub rounds come every 1.2 s.
const SECOND_MS: &str = "20";
/// The guest the signed op destroys.
const DOOMED: u32 = 105;
/// The guest the desired state wants running (a benign op that fills the journal).
const WEB: u32 = 100;

/// One test's directory (config, logs, state) and its simulators.
struct Lab {
    dir: PathBuf,
    pve: ProxmoxSim,
    hub: HubSim,
    runs: AtomicU64,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    /// A lab whose desired state wants `running` (vmids) running.
    fn new(name: &str, running: &[u32]) -> Lab {
        let dir = common::tempdir("lock", name);
        let pve = ProxmoxSim::builder()
            .guest(GuestSeed::new(WEB, "web"))
            .guest(GuestSeed::new(DOOMED, "customer-db"))
            .task_duration(Duration::from_millis(50))
            .start();
        let hub = fast_hub();
        let guests: Vec<Value> = running
            .iter()
            .map(|v| json!({"vmid": v, "run": "running"}))
            .collect();
        let desired = json!({"generation": 1, "guests": guests});
        write_signed_agent_config(&dir, &pve, &hub, &desired);
        Lab {
            dir,
            pve,
            hub,
            runs: AtomicU64::new(0),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.join("agent.json")
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Spawns `felhom-agent ARGS --config CFG`, its stderr in a log of its own.
    fn spawn(&self, args: &[&str]) -> Agent {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        let log = self.dir.join(format!("agent-{n}.log"));
        Agent::spawn(args, &self.config(), &log, &[(SECOND_MS_ENV, SECOND_MS)])
    }

    fn daemon(&self) -> Agent {
        self.spawn(&["run"])
    }

    /// Runs a command to its end.
    fn command(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(self.config())
            .output()
            .expect("the agent binary runs")
    }

    fn deletes(&self) -> usize {
        common::sent(&self.pve, "DELETE", &format!("/lxc/{DOOMED}"))
    }

    fn starts(&self) -> usize {
        common::sent(&self.pve, "POST", &format!("/lxc/{WEB}/status/start"))
    }

    /// The audit log's decisions about the doomed guest, oldest first, read from the
    /// file without opening it as a store (a daemon may be running).
    fn decisions(&self) -> Vec<String> {
        common::agent::audit_decisions(&self.state(), "guest_id", &DOOMED.to_string())
    }

    /// A signed destroy of the doomed guest, valid around now, signed by the real
    /// `ssh-keygen -Y sign` (the one place blobs are minted in this file).
    fn signed_destroy(&self) -> (Vec<u8>, String) {
        // The digest the operator saw: Proxmox's answer to GET …/lxc/VMID/config.
        let config = self.pve.guest_config(DOOMED).expect("the guest exists");
        let digest = config["digest"].as_str().expect("the config has a digest");
        let guest = DOOMED.to_string();
        let blob = destroy_blob("pve-a", &guest, digest, SystemClock.now().unix());
        let sig = ssh_keygen_sign(&self.dir, &blob);
        (blob, sig)
    }

    /// Every file under the state directory, by path relative to it: its length,
    /// SHA-256, inode and mtime; except the running daemon's reports (`status.json`,
    /// `metrics.textfile`), which it rewrites on its own schedule.
    fn snapshot(&self) -> BTreeMap<String, String> {
        use sha2::{Digest as _, Sha256};
        let mut out = BTreeMap::new();
        let mut dirs = vec![self.state()];
        while let Some(d) = dirs.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                // The running daemon's own reports, replaced whenever it likes (after a
                // round, a pass, a heartbeat): not the commands' doing, and a temp file
                // may vanish between listing and reading.
                let file = p.file_name().unwrap().to_string_lossy().into_owned();
                if file.starts_with("status.json") || file.starts_with("metrics.textfile") {
                    continue;
                }
                let m = fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    dirs.push(p.clone());
                }
                let hash = if m.is_file() {
                    Sha256::digest(fs::read(&p).unwrap())
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                } else {
                    String::new()
                };
                let name = p.strip_prefix(self.state()).unwrap().display().to_string();
                let what = format!(
                    "len {} sha256 {hash} inode {} mtime {}.{:09}",
                    m.len(),
                    m.ino(),
                    m.mtime(),
                    m.mtime_nsec()
                );
                out.insert(name, what);
            }
        }
        out
    }

    /// Every store file replays clean: the crate's read-only replay, `journal` and
    /// `selftest offline` (both exit 0). `cut`: whether a torn line was cut on purpose
    /// (its `.broken` files are expected), else nothing may have been set aside.
    fn assert_files_replay_clean(&self, cut: bool) {
        for f in ["journal.log", "nonces.log", "audit.log"] {
            let s = felhom_agent::store::verify_file(&self.state().join(f))
                .unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_eq!(s.torn_bytes, 0, "{f}: no torn tail");
            if !cut {
                assert!(
                    !self.state().join(format!("{f}.broken")).exists(),
                    "{f}: nothing was cut"
                );
            }
        }
        for args in [&["journal"][..], &["selftest", "offline"]] {
            let out = self.command(args);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{args:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let journal = Journal::open_read_only(&self.state().join("journal.log")).unwrap();
        assert_eq!(journal.damaged(), None);
    }
}

/// Waits until the daemon holds the lock and its workers run; the lock's line names
/// the daemon's own PID.
fn wait_running(a: &mut Agent) {
    a.wait_for_event("daemon_running", |_| true);
    let acquired = a.events("state_lock_acquired");
    assert_eq!(acquired.len(), 1, "{}", a.log());
    assert_eq!(
        acquired[0].get("pid"),
        Some(a.pid().to_string().as_str()),
        "the holder logs its own PID"
    );
}

/// The refused process: exit 2, one `state_lock_held` line naming `holder` when it
/// names a PID at all (`must_name`: it must), and a last stderr line naming the state
/// directory and that PID.
fn assert_refused(lab: &Lab, status: ExitStatus, refused: &Agent, holder: u32, must_name: bool) {
    let log = refused.log();
    assert_eq!(status.code(), Some(2), "{log}");
    let held = refused.events("state_lock_held");
    assert_eq!(held.len(), 1, "{log}");
    assert_eq!(
        held[0].get("state_dir"),
        Some(lab.state().display().to_string().as_str())
    );
    let named = held[0].field("holder_pid");
    if must_name || named != "unknown" {
        assert_eq!(named, holder.to_string(), "{log}");
        let last = log.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("felhom-agent: ")
                && last.contains(&lab.state().display().to_string())
                && last.contains(&holder.to_string()),
            "the message names the directory and the holder: {last}"
        );
    }
    assert!(
        refused.events("state_lock_acquired").is_empty()
            && refused.events("daemon_running").is_empty(),
        "{log}"
    );
}

#[test]
fn a_second_daemon_is_refused_and_a_signed_destroy_runs_once_across_a_restart() {
    let lab = Lab::new("two", &[]);
    let mut a = lab.daemon();
    wait_running(&mut a);
    a.wait_until("a first report", |_| !lab.hub.reports().is_empty());

    // B on the same state directory: refused at once, A and the files untouched.
    let before = lab.snapshot();
    let mut b = lab.daemon();
    let status = b.wait_exit();
    assert_refused(&lab, status, &b, a.pid(), true);
    assert!(a.alive(), "the first daemon runs on:\n{}", a.log());
    assert_eq!(
        lab.snapshot(),
        before,
        "B changed no byte of the state directory"
    );

    // The hub delivers a signed destroy: A executes it, once.
    let (blob, sig) = lab.signed_destroy();
    lab.hub.queue_signed_op(&blob, Some(&sig));
    a.wait_until("the destroy executed", |_| {
        lab.decisions().iter().any(|d| d == "executed")
    });
    assert_eq!(lab.deletes(), 1);
    assert!(!lab.pve.guest_ids().contains(&DOOMED));
    a.stop();

    // Restarted, A gets the same signed op again: refused, nothing sent.
    let mut a = lab.daemon();
    wait_running(&mut a);
    let seen = lab.decisions().len();
    lab.hub.queue_signed_op(&blob, Some(&sig));
    a.wait_until("the redelivery refused", |_| {
        lab.decisions()[seen..]
            .iter()
            .any(|d| d == "skipped" || d == "replay")
    });
    a.stop();
    let decisions = lab.decisions();
    assert_eq!(
        decisions.iter().filter(|d| *d == "executed").count(),
        1,
        "{decisions:?}"
    );
    assert_eq!(lab.deletes(), 1, "exactly one DELETE reached Proxmox");
    lab.assert_files_replay_clean(false);
}

#[test]
fn two_daemons_spawned_back_to_back_leave_one_running_and_the_files_clean() {
    for round in 0..3 {
        let lab = Lab::new(&format!("race{round}"), &[WEB]);
        // Back to back on a directory that does not exist yet: both race to create it
        // as well as to lock it.
        let mut first = lab.daemon();
        let mut second = lab.daemon();
        let start = Instant::now();
        let (mut winner, mut loser) = loop {
            if !first.alive() {
                break (second, first);
            }
            if !second.alive() {
                break (first, second);
            }
            assert!(start.elapsed() < PATIENCE, "neither was refused");
            std::thread::sleep(Duration::from_millis(5));
        };
        let status = loser.wait_exit();
        wait_running(&mut winner);
        assert_refused(&lab, status, &loser, winner.pid(), false);
        // The one left does the work: the desired start, once.
        winner.wait_until("the guest started", |_| {
            lab.pve.guest_status(WEB).as_deref() == Some("running")
                && Journal::open_read_only(&lab.state().join("journal.log"))
                    .is_ok_and(|j| j.in_flight().is_empty() && !j.history().is_empty())
        });
        assert!(winner.alive());
        assert!(!loser.alive());
        winner.stop();
        assert_eq!(lab.starts(), 1, "one start, from the one daemon");
        lab.assert_files_replay_clean(false);
    }
}

#[test]
fn selftest_task_beside_a_running_daemon_exits_2_naming_it_and_mutates_nothing() {
    let lab = Lab::new("task", &[]);
    let mut a = lab.daemon();
    wait_running(&mut a);
    let mutations = lab.pve.mutations().len();
    let mut task = lab.spawn(&["selftest", "task", "--vmid", &WEB.to_string()]);
    let status = task.wait_exit();
    assert_refused(&lab, status, &task, a.pid(), true);
    assert_eq!(
        lab.pve.mutations().len(),
        mutations,
        "the selftest sent nothing"
    );
    assert!(a.alive());
    a.stop();

    // With the daemon gone the same command runs: the lock was the only obstacle.
    let out = lab.command(&["selftest", "task", "--vmid", &WEB.to_string()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lab.pve.mutations().len() > mutations);
}

/// The read-only commands, each as the operator types it.
const READ_ONLY: [&[&str]; 4] = [
    &["journal"],
    &["journal", "--in-flight", "--tail", "5"],
    &["plan"],
    &["selftest", "offline"],
];

impl Lab {
    /// Runs every read-only command: each exits 0 and leaves the state directory as
    /// it found it, byte for byte.
    fn read_only_commands_change_nothing(&self, beside: &str) {
        let before = self.snapshot();
        for args in READ_ONLY {
            let out = self.command(args);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{args:?} {beside}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                self.snapshot(),
                before,
                "{args:?} {beside} changed the state directory"
            );
        }
    }
}

#[test]
fn read_only_commands_work_beside_a_running_daemon_and_change_no_file() {
    let lab = Lab::new("readonly", &[WEB]);
    let mut a = lab.daemon();
    wait_running(&mut a);
    // Idle: the desired start is done and the start's nonce compaction has written its
    // trusted time, so from here the daemon writes nothing until it stops.
    a.wait_until("the desired start journaled, the nonces compacted", |_| {
        Journal::open_read_only(&lab.state().join("journal.log"))
            .is_ok_and(|j| j.in_flight().is_empty() && !j.history().is_empty())
            && fs::read_to_string(lab.state().join("nonces.log"))
                .is_ok_and(|t| t.contains(r#""kind":"trusted_time""#))
    });
    // A torn last line in the journal, as an interrupted append leaves it: a writer
    // would cut it (into journal.log.broken); a reader must not.
    let torn = br#"{"seq":99,"prev":"00"#;
    let append_torn = |f: &str| {
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(lab.state().join(f))
            .unwrap();
        std::io::Write::write_all(&mut file, torn).unwrap();
    };
    append_torn("journal.log");
    lab.read_only_commands_change_nothing("beside the running daemon");
    assert!(a.alive(), "{}", a.log());
    let journal_before = fs::read(lab.state().join("journal.log")).unwrap();
    a.stop();
    // The daemon records its trusted time in nonces.log as it stops; the journal it
    // leaves alone.
    assert_eq!(
        fs::read(lab.state().join("journal.log")).unwrap(),
        journal_before,
        "the idle daemon changed the journal"
    );

    // A torn tail in the nonce store too, with no daemon: still nothing is cut.
    append_torn("nonces.log");
    lab.read_only_commands_change_nothing("with no daemon");

    // The torn tails were real: the next writer cuts them.
    let mut a = lab.daemon();
    wait_running(&mut a);
    a.stop();
    for f in ["journal.log", "nonces.log"] {
        assert_eq!(
            fs::read(lab.state().join(format!("{f}.broken"))).unwrap(),
            torn,
            "{f}: the daemon set the torn line aside"
        );
    }
    lab.assert_files_replay_clean(true);
}

#[test]
fn the_lock_file_names_the_running_daemon_and_is_0600() {
    let lab = Lab::new("file", &[]);
    let mut a = lab.daemon();
    wait_running(&mut a);
    let path = lab.state().join("lock");
    assert_eq!(fs::read_to_string(&path).unwrap(), format!("{}\n", a.pid()));
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
    a.stop();
    assert!(
        path.exists(),
        "the lock file stays; the kernel released the lock"
    );
    // And a new daemon takes it over.
    let mut a = lab.daemon();
    wait_running(&mut a);
    assert_eq!(fs::read_to_string(&path).unwrap(), format!("{}\n", a.pid()));
    a.stop();
}
