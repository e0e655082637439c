//! The agent binary as a child process, for the process tests: the config that points
//! it at the simulators, and [`Agent`], one run of the binary whose log the tests read
//! as events ([`super::logfmt`]), wait on, signal and kill. What to wait for stays with
//! each test; timeouts here only bound a wait that makes no progress.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use felhom_agent::reconcile::{Journal, JournalView};
use felhom_agent::store::{
    FAIL_SYNC_AT_ENV, JOURNAL_COMPACT_AT_ENV, PAUSE_AT_ENV, PAUSE_MARKER_ENV, SECOND_MS_ENV,
};
use felhom_sim::{DEFAULT_TOKEN_SECRET, GuestSeed, HubSim, ProxmoxSim};
use serde_json::{Value, json};

use super::logfmt::{self, Event};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_felhom-agent");

/// Writes `dir/agent.json` (0600) and returns its path: host `pve-a`, state in
/// `dir/state`, `pve` pinned by its fingerprint, `hub` trusted through
/// `vectors/tls/ca.crt`, 5 s timeouts; `edit` then adds or changes what the test needs.
pub fn write_agent_config(
    dir: &Path,
    pve: &ProxmoxSim,
    hub: &HubSim,
    edit: impl FnOnce(&mut Value),
) -> PathBuf {
    let ca = format!("{}/vectors/tls/ca.crt", env!("CARGO_MANIFEST_DIR"));
    let mut config = json!({
        "host_id": "pve-a",
        "state_dir": dir.join("state"),
        "proxmox": {
            "url": pve.url(), "node": pve.node(),
            "token_id": "felhom-agent@pve!agent", "token_secret": DEFAULT_TOKEN_SECRET,
            "tls": {"fingerprint_sha256": pve.fingerprint()}, "timeout_seconds": 5
        },
        "hub": {"url": hub.url(), "api_key": hub.key(), "timeout_seconds": 5,
            "tls": {"ca_file": ca}}
    });
    edit(&mut config);
    let path = dir.join("agent.json");
    fs::write(&path, config.to_string()).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// [`write_agent_config`] for a daemon that polls the hub every 60 s, trusts the test
/// signer and reconciles toward `dir/desired.json`, written here with `desired`.
pub fn write_signed_agent_config(
    dir: &Path,
    pve: &ProxmoxSim,
    hub: &HubSim,
    desired: &Value,
) -> PathBuf {
    fs::write(dir.join("desired.json"), desired.to_string()).unwrap();
    write_agent_config(dir, pve, hub, |c| {
        c["hub"]["poll_seconds"] = json!(60);
        c["authz"] = super::sign::authz_json();
        c["reconcile"] = json!({"desired_file": dir.join("desired.json")});
    })
}

/// A daemon's directory across its runs, laid out as [`write_signed_agent_config`] and
/// [`run_fast`] use it (`agent.json`, `desired.json`, `state/`, `stderr.log`): each run
/// started, or killed at a fault point, and the journal, the audit log and stderr read
/// in between. Removed on drop.
pub struct RunDir {
    pub dir: PathBuf,
    runs: AtomicU64,
}

impl RunDir {
    /// Takes over `dir` (removed when the `RunDir` drops).
    pub fn new(dir: PathBuf) -> RunDir {
        RunDir {
            dir,
            runs: AtomicU64::new(0),
        }
    }

    /// The state directory.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The journal, read-only; `None` while it does not open.
    pub fn journal(&self) -> Option<JournalView> {
        Journal::open_read_only(&self.state().join("journal.log")).ok()
    }

    /// What every run so far wrote to stderr.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Starts a run with `env` added (see [`run_fast`]).
    pub fn start(&self, env: &[(&str, &str)]) -> Agent {
        run_fast(&self.dir, env)
    }

    /// Runs the agent with `env` added until it pauses at `point`, then SIGKILLs it
    /// there (see [`kill_at_pause`]; a fresh marker file per run).
    pub fn kill_at(&self, point: &str, env: &[(&str, &str)]) {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        let marker = self.dir.join(format!("paused-{n}"));
        kill_at_pause(point, &marker, |pause| {
            let mut all = pause.to_vec();
            all.extend_from_slice(env);
            self.start(&all)
        });
    }

    /// The audit log's decisions about guest `guest`, oldest first.
    pub fn audit_decisions(&self, guest: u32) -> Vec<String> {
        audit_decisions(&self.state(), "guest_id", &guest.to_string())
    }
}

/// The decisions of the audit records in `state/audit.log` whose `key` is `value`
/// (`"guest_id", "105"`; `"op", "rotate_signers"`), oldest first; read from the file
/// without opening it as a store, so a daemon may be running.
pub fn audit_decisions(state: &Path, key: &str, value: &str) -> Vec<String> {
    let text = fs::read_to_string(state.join("audit.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["data"][key] == value)
        .filter_map(|l| l["data"]["decision"].as_str().map(str::to_owned))
        .collect()
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `felhom-agent ARGS --config CONFIG` with stdin and stdout closed and stderr into
/// `stderr`; the caller adds its environment and spawns it.
pub fn agent_command(args: &[&str], config: &Path, stderr: File) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    cmd
}

/// Runs `felhom-agent ARGS --config CONFIG` to its end; its output.
pub fn run_command(args: &[&str], config: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// The envelope of a hub that asks for the shortest poll interval the agent adopts
/// (60 s), so the next round, and its announcement of signed ops, comes soon.
pub fn fast_envelope() -> Value {
    json!({"poll_interval_seconds": 60, "blocked": false,
        "desired_generation": 0, "has_signed_ops": false})
}

/// The node of the operator-kit daemon tests: guest 100 (`web`) running, 101 (`db`,
/// desired running by [`operator_setup`]) and 102 (`old`) stopped.
pub fn operator_pve() -> ProxmoxSim {
    ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web").running(true))
        .guest(GuestSeed::new(101, "db"))
        .guest(GuestSeed::new(102, "old"))
        .start()
}

/// A daemon's directory for the operator-kit tests: `dir/desired.json` desiring guest
/// 101 running (generation 1), `dir/agent.json` on `pve` and `hub` polling every 60 s
/// from that file (`edit` adds what the test needs), and the state directory made.
/// Returns the desired file and the config.
pub fn operator_setup(
    dir: &Path,
    pve: &ProxmoxSim,
    hub: &HubSim,
    edit: impl FnOnce(&mut Value),
) -> (PathBuf, PathBuf) {
    let desired_file = dir.join("desired.json");
    fs::write(
        &desired_file,
        json!({"generation": 1, "guests": [{"vmid": 101, "run": "running"}]}).to_string(),
    )
    .unwrap();
    let config = write_agent_config(dir, pve, hub, |v| {
        v["hub"]["poll_seconds"] = json!(60);
        v["reconcile"] = json!({"desired_file": desired_file});
        edit(v);
    });
    fs::create_dir_all(dir.join("state")).unwrap();
    (desired_file, config)
}

/// A hub simulator answering every round with [`fast_envelope`].
pub fn fast_hub() -> HubSim {
    HubSim::builder().default_envelope(fast_envelope()).start()
}

/// How long a wait may go without the awaited thing before the test fails: only keeps
/// a broken agent from hanging the suite.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// One run of the agent binary, its stderr appended to a log file (several runs may
/// share one, as restarts on the same state directory do). Killed if a test ends
/// without stopping it.
pub struct Agent {
    child: Child,
    log: PathBuf,
    /// Where this run's lines start in the log file.
    from: usize,
    patience: Duration,
    /// The config's `state_dir`, when it names one: [`Agent::kill`] waits for its lock.
    state_dir: Option<PathBuf>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Agent {
    /// Starts `felhom-agent ARGS --config CONFIG` with `env` set and every other fault
    /// variable removed (none leaks in from the test's own environment); stderr is
    /// appended to `log`.
    pub fn spawn(args: &[&str], config: &Path, log: &Path, env: &[(&str, &str)]) -> Agent {
        let stderr = File::options().create(true).append(true).open(log).unwrap();
        let from = usize::try_from(stderr.metadata().unwrap().len()).unwrap();
        let mut cmd = agent_command(args, config, stderr);
        for var in [
            SECOND_MS_ENV,
            PAUSE_AT_ENV,
            PAUSE_MARKER_ENV,
            JOURNAL_COMPACT_AT_ENV,
            FAIL_SYNC_AT_ENV,
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied());
        let state_dir = fs::read(config)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|c| c["state_dir"].as_str().map(PathBuf::from));
        Agent {
            child: cmd.spawn().expect("the agent binary starts"),
            log: log.to_path_buf(),
            from,
            patience: PATIENCE,
            state_dir,
        }
    }

    /// Waits up to `patience` (instead of [`PATIENCE`]) for anything.
    pub fn with_patience(mut self, patience: Duration) -> Agent {
        self.patience = patience;
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The whole log file, every run's lines: for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// This run's log lines, parsed.
    pub fn all_events(&self) -> Vec<Event> {
        let bytes = fs::read(&self.log).unwrap_or_default();
        let mine = bytes.get(self.from..).unwrap_or_default();
        logfmt::parse_all(&String::from_utf8_lossy(mine))
    }

    /// This run's lines whose event is `name`.
    pub fn events(&self, name: &str) -> Vec<Event> {
        self.all_events()
            .into_iter()
            .filter(|e| e.event == name)
            .collect()
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Fails, with the log, if the process has exited.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the agent exited ({status}):\n{}", self.log());
        }
    }

    /// Polls until `check` holds; fails, with the log, if the process exits first or
    /// nothing happens for the patience.
    pub fn wait_until(&mut self, what: &str, mut check: impl FnMut(&Agent) -> bool) {
        let start = Instant::now();
        while !check(self) {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Its last lines may be what `check` waits for.
                if check(self) {
                    return;
                }
                panic!("exited ({status}) waiting for {what}:\n{}", self.log());
            }
            assert!(
                start.elapsed() < self.patience,
                "waited for {what}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for this run's first `name` event for which `pred` holds, and returns it.
    pub fn wait_for_event(&mut self, name: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let find = |a: &Agent| a.events(name).into_iter().find(|e| pred(e));
        self.wait_until(&format!("event={name}"), |a| find(a).is_some());
        find(self).expect("wait_until saw it")
    }

    /// Sends `sig` (a name `kill` knows: TERM, INT, HUP, KILL).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} delivered");
    }

    /// Waits for the process to end by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < self.patience,
                "still running:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `sig` once the daemon's signal handlers are in (they are installed before
    /// it takes the state lock; before, SIGTERM's default action would kill it), then
    /// waits for the exit.
    pub fn stop_with(&mut self, sig: &str) -> ExitStatus {
        self.wait_for_event("state_lock_acquired", |_| true);
        self.signal(sig);
        self.wait_exit()
    }

    /// SIGTERM ([`Agent::stop_with`]); the daemon must exit 0.
    pub fn stop(mut self) {
        let status = self.stop_with("TERM");
        assert_eq!(status.code(), Some(0), "{}", self.log());
    }

    /// SIGKILL: no handler runs, nothing is flushed or closed. Returns once the state
    /// directory's lock is free too: a child the agent was forking at the kill (the
    /// cloudflared probe) shares the lock's descriptor until its exec closes it, and a
    /// restart in that instant would find the directory held. systemd kills the whole
    /// cgroup, so on a host the next start never meets such an orphan.
    pub fn kill(mut self) {
        self.signal("KILL");
        let status = self.child.wait().unwrap();
        assert_eq!(status.code(), None, "ended by the signal, not an exit");
        if let Some(dir) = &self.state_dir {
            let path = dir.join("lock");
            let start = Instant::now();
            while File::open(&path).is_ok_and(|f| f.try_lock().is_err()) {
                assert!(
                    start.elapsed() < self.patience,
                    "{} still locked after the kill",
                    path.display()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Starts `felhom-agent run` on `dir/agent.json` (as [`write_signed_agent_config`]
/// writes it), its stderr appended to `dir/stderr.log`, a second lasting 10 ms, and `env`.
pub fn run_fast(dir: &Path, env: &[(&str, &str)]) -> Agent {
    let mut all = vec![(SECOND_MS_ENV, "10")];
    all.extend_from_slice(env);
    Agent::spawn(
        &["run"],
        &dir.join("agent.json"),
        &dir.join("stderr.log"),
        &all,
    )
}

/// Starts a run through `start` with the fault point `point` armed (and `marker` as its
/// marker file), waits until the run has paused there, and SIGKILLs it: the crash lands
/// at exactly `point`. `marker` must not hold `point` already (a fresh name per run).
pub fn kill_at_pause(point: &str, marker: &Path, start: impl FnOnce(&[(&str, &str)]) -> Agent) {
    let marker_env = marker.display().to_string();
    let mut agent = start(&[
        (PAUSE_AT_ENV, point),
        (PAUSE_MARKER_ENV, marker_env.as_str()),
    ]);
    agent.wait_until(&format!("the pause at {point}"), |_| {
        fs::read_to_string(marker).is_ok_and(|m| m == point)
    });
    agent.kill();
}

/// Writes the smallest config an offline command reads, `dir/agent.json` naming host
/// `pve-a` and `dir/state` (created); returns (config, state directory).
pub fn offline_config(dir: &Path) -> (PathBuf, PathBuf) {
    let state = dir.join("state");
    fs::create_dir_all(&state).unwrap();
    let config = dir.join("agent.json");
    fs::write(
        &config,
        json!({"host_id": "pve-a", "state_dir": state}).to_string(),
    )
    .unwrap();
    (config, state)
}
