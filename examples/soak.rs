//! The soak: the real daemon, for minutes or hours, against 500 simulated guests, a
//! desired state that keeps changing, and about 5% of Proxmox requests failing.
//!
//!     scripts/soak.sh [MINUTES]
//!     cargo run --example soak -- [--minutes M] [--seed N] [--bin PATH] [--guests N]
//!                                 [--fault-percent P] [--keep]
//!
//! It starts the Proxmox simulator (500 guests) and the hub simulator on loopback, writes
//! a config and a desired-state file that matches the guests, and runs the
//! `felhom-agent` binary beside this example (or `--bin`) as a child. Then, until the
//! time is up, it rewrites the desired-state file every few seconds (run state, cores,
//! memory, description of random guests out of a fixed random set of 48), keeps injecting random faults (500s, lock
//! timeouts, answers slower than the client's timeout, dropped connections, garbage
//! bodies) into about `--fault-percent` of Proxmox requests, and samples the child's RSS,
//! open fds and threads (every sample goes to `samples.csv` in the state directory).
//!
//! One guest in [`IGNORES_SHUTDOWN_ONE_IN`] ignores a clean shutdown, so its `run:
//! stopped` waits out the shutdown timeout ([`SHUTDOWN_TIMEOUT_SECS`]) until Proxmox
//! stops it hard.
//!
//! It fails when, after the warm-up (the first quarter of the run, at least 90 s), RSS
//! rises more than 10% over the warm-up's highest sample or the fds or threads exceed
//! the warm-up's highest; when the child panics (a `panicked` line on its stderr that is
//! not a log line, or an event named `*_panicked`) or dies;
//! when a simulator thread panics (each simulator counts the panics it caught);
//! when it does not exit 0 on SIGTERM; or when `felhom-agent journal` and
//! `selftest offline` do not succeed on the state it leaves.
//!
//! Threads are counted apart from the guests' queue lanes (`lane-VMID`): a lane lives
//! while its guest has work and ends 30 s after, so their number follows the churn, not
//! time. A lane still alive well past that with no log line about its guest is a leak
//! and fails the soak too.
//!
//! Every random choice comes from one seeded generator: the seed is printed, and `--seed` replays the same
//! choices (timing still varies). Test code: it uses the simulators, a dev-dependency.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/logfmt.rs"]
mod logfmt;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use felhom_agent::store::SECOND_MS_ENV;
use felhom_sim::{DEFAULT_TOKEN_SECRET, Fault, FaultKind, GuestSeed, HubSim, ProxmoxSim};
use serde_json::{Value, json};

/// The Proxmox client's timeout in the soak config; a delay fault answers later than it.
const PROXMOX_TIMEOUT_SECS: u64 = 3;
/// How long a delay fault holds its answer.
const DELAY: Duration = Duration::from_secs(4);
/// How long simulated tasks run.
const TASK_MS: u64 = 100;
/// How often the desired state changes.
const CHURN_EVERY: Duration = Duration::from_secs(4);
/// Guests changed per churn.
const CHURN_GUESTS: usize = 12;
/// The churn draws from this many guests, picked at random at the start. Each is changed
/// about every `HOT_GUESTS / CHURN_GUESTS * CHURN_EVERY` = 16 s, well inside a lane's
/// idle time, so the lanes (a thread and its stack each) stay alive and their number,
/// and with it RSS, is steady once warm: growth after warm-up is a leak, not a busier
/// minute. Every pass still reads all guests.
const HOT_GUESTS: usize = 48;
/// How often the child is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// A guest's lane thread ends after this long without work (the queue's `DEFAULT_IDLE`).
const LANE_IDLE: Duration = felhom_agent::reconcile::DEFAULT_IDLE;
/// Grace on top of [`LANE_IDLE`] before a lane with no logged work counts as leaked: a
/// job's last log line comes a little before its lane goes idle.
const LANE_GRACE: Duration = Duration::from_secs(15);
/// Main loop tick: fault top-ups and liveness checks.
const TICK: Duration = Duration::from_millis(500);
/// Allowed RSS rise over the warm-up's highest sample, in percent.
const RSS_SLACK_PERCENT: u64 = 10;
/// The shortest warm-up: the lanes of the changing guests (and RSS with them) take
/// about 75 s to reach their steady number.
const MIN_WARMUP: Duration = Duration::from_secs(90);
/// A binary built with the test-only feature `fault-points` (what scripts/soak.sh
/// builds) makes one schedule second last this many ms, so hub reports come every 15 s;
/// the shipped binary (`SOAK_BIN`) ignores it and reports once a minute.
const SCHEDULE_SECOND_MS: &str = "250";
/// The soak config's `reconcile.shutdown_timeout_seconds`.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;
/// One guest in this many ignores a clean shutdown (drawn from the seed).
const IGNORES_SHUTDOWN_ONE_IN: u64 = 10;
/// Memory sizes the churn picks from, MiB.
const MEMORY_MIB: [u64; 5] = [256, 512, 768, 1024, 2048];

/// SplitMix64: small, seeded, good enough to pick guests and faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Options {
    minutes: f64,
    seed: u64,
    bin: PathBuf,
    guests: u32,
    fault_percent: f64,
    warmup: Option<Duration>,
    keep: bool,
}

const USAGE: &str = "usage: soak [--minutes M] [--seed N] [--bin PATH] [--guests N] \
[--fault-percent P] [--warmup SECONDS] [--keep]";

fn parse_args() -> Result<Options, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/examples/soak → target/<profile>/felhom-agent
    let default_bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("felhom-agent"))
        .ok_or("cannot locate the target directory")?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut o = Options {
        minutes: 3.0,
        seed: now ^ u64::from(std::process::id()),
        bin: default_bin,
        guests: 500,
        fault_percent: 5.0,
        warmup: None,
        keep: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--minutes" => {
                o.minutes = value()?
                    .parse()
                    .ok()
                    .filter(|m: &f64| *m > 0.0)
                    .ok_or("--minutes: a positive number")?;
            }
            "--seed" => {
                let v = value()?;
                o.seed = match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => v.parse(),
                }
                .map_err(|_| format!("--seed {v}: not a number"))?;
            }
            "--bin" => o.bin = PathBuf::from(value()?),
            "--guests" => {
                o.guests = value()?
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or("--guests: 1..=10000")?;
            }
            "--fault-percent" => {
                o.fault_percent = value()?
                    .parse()
                    .ok()
                    .filter(|p: &f64| (0.0..=50.0).contains(p))
                    .ok_or("--fault-percent: 0..=50")?;
            }
            "--warmup" => {
                let secs: u64 = value()?.parse().map_err(|_| "--warmup: whole seconds")?;
                o.warmup = Some(Duration::from_secs(secs));
            }
            "--keep" => o.keep = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if !o.bin.is_file() {
        return Err(format!(
            "no agent binary at {} (build it: cargo build --bin felhom-agent, or pass --bin)",
            o.bin.display()
        ));
    }
    Ok(o)
}

/// What the desired-state file says about one guest.
#[derive(Clone)]
struct Want {
    running: bool,
    cores: u32,
    memory_mib: u64,
    description: String,
}

fn desired_json(generation: u64, wants: &BTreeMap<u32, Want>) -> Value {
    let guests: Vec<Value> = wants
        .iter()
        .map(|(vmid, w)| {
            json!({
                "vmid": vmid,
                "run": if w.running { "running" } else { "stopped" },
                "spec": {"cores": w.cores, "memory_bytes": w.memory_mib << 20},
                "description": w.description,
            })
        })
        .collect();
    json!({"generation": generation, "guests": guests})
}

/// Replaces the file in one rename, so the daemon never reads half of it.
fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Counts from the child's stderr.
#[derive(Default)]
struct LogCounts {
    lines: u64,
    warns: u64,
    errors: u64,
    passes_done: u64,
    passes_failed: u64,
    change_wakeups: u64,
    applied: u64,
    failed_actions: u64,
    panics: Vec<String>,
    last: Vec<String>,
    /// When a line last named each guest (`vmid=` or `guest=`): its lane had work then.
    activity: HashMap<u32, Instant>,
}

impl LogCounts {
    fn see(&mut self, line: &str) {
        self.lines += 1;
        let event = logfmt::Event::parse(line);
        let panicked = match &event {
            Some(e) => e.event.ends_with("_panicked"),
            // The Rust runtime's panic message, not a log line.
            None => line.contains("panicked"),
        };
        if panicked && self.panics.len() < 5 {
            self.panics.push(line.to_string());
        }
        if self.last.len() == 20 {
            self.last.remove(0);
        }
        self.last.push(line.to_string());
        let Some(e) = event else { return };
        let number = |key: &str| e.get(key).and_then(|v| v.parse::<u64>().ok());
        match e.level.as_str() {
            "warn" => self.warns += 1,
            "error" => self.errors += 1,
            _ => {}
        }
        match e.event.as_str() {
            "reconcile_pass_done" => {
                self.passes_done += 1;
                self.applied += number("applied").unwrap_or(0);
                self.failed_actions += number("failed").unwrap_or(0);
            }
            "reconcile_pass_failed" => self.passes_failed += 1,
            "desired_changed" => self.change_wakeups += 1,
            _ => {}
        }
        for key in ["vmid", "guest"] {
            if let Some(vmid) = number(key).and_then(|v| u32::try_from(v).ok()) {
                self.activity.insert(vmid, Instant::now());
            }
        }
    }
}

/// Copies the child's stderr to `log` and counts what matters.
fn follow_stderr(child: &mut Child, log: &Path) -> Arc<Mutex<LogCounts>> {
    let counts = Arc::new(Mutex::new(LogCounts::default()));
    let stderr = child.stderr.take().unwrap();
    let mut file = std::io::BufWriter::new(std::fs::File::create(log).unwrap());
    let c = Arc::clone(&counts);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(file, "{line}");
            c.lock().unwrap().see(&line);
        }
        let _ = file.flush();
    });
    counts
}

#[derive(Clone, Default)]
struct Sample {
    rss_kib: u64,
    fds: u64,
    threads: u64,
    /// The guests whose queue lane (a thread named `lane-VMID`) is alive.
    lanes: Vec<u32>,
}

impl Sample {
    /// Threads other than the guests' lanes: the fixed workers and a pass's readers.
    fn fixed_threads(&self) -> u64 {
        self.threads.saturating_sub(self.lanes.len() as u64)
    }
}

fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let lanes = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter_map(|comm| comm.trim().strip_prefix("lane-")?.parse().ok())
        .collect();
    Some(Sample {
        rss_kib: value("VmRSS:")?,
        fds,
        threads: value("Threads:")?,
        lanes,
    })
}

/// The highest of each figure over `samples`.
#[derive(Clone, Copy, Default)]
struct Peak {
    rss_kib: u64,
    fds: u64,
    fixed_threads: u64,
    lanes: u64,
}

fn peak(samples: &[Sample]) -> Peak {
    samples.iter().fold(Peak::default(), |m, s| Peak {
        rss_kib: m.rss_kib.max(s.rss_kib),
        fds: m.fds.max(s.fds),
        fixed_threads: m.fixed_threads.max(s.fixed_threads()),
        lanes: m.lanes.max(s.lanes.len() as u64),
    })
}

/// The faults the soak injects, by name, in the order of the summary.
const FAULT_NAMES: [&str; 5] = ["500", "lock timeout", "delay", "drop", "garbage"];

fn fault_kind(i: usize, rng: &mut Rng) -> FaultKind {
    match i {
        0 => FaultKind::Status {
            code: 500,
            message: rng
                .pick(&[
                    "Internal Server Error",
                    "CT is locked (backup)",
                    "unable to read config: got EOF",
                ])
                .to_string(),
        },
        1 => FaultKind::Status {
            code: 500,
            message: format!(
                "can't lock file '/run/lock/lxc/pve-config-{}.lock' - got timeout",
                100 + rng.below(500)
            ),
        },
        2 => FaultKind::Delay(DELAY),
        3 => {
            if rng.chance(50) {
                FaultKind::DropConnection
            } else {
                FaultKind::DropMidBody
            }
        }
        _ => FaultKind::Garbage,
    }
}

/// Request counts, read from the simulator's log (cleared each time so it stays small).
#[derive(Default)]
struct Requests {
    total: u64,
    /// Answered 5xx, or dropped without an answer.
    visible_failures: u64,
    mutations: u64,
}

/// Where a fault modelled on request `method path` is aimed, so that it lands on a
/// request of the same kind soon: the same config or list read, any task poll, any
/// mutation with that method. (Faults queued for "any request" would all land on the
/// first requests of the next pass, failing its guest list nearly every time.)
fn fault_target(method: &str, path: &str) -> (String, String) {
    if method != "GET" {
        return (method.to_string(), "/nodes/".to_string());
    }
    match path.find("/tasks/") {
        Some(i) => ("GET".to_string(), path[..i + "/tasks/".len()].to_string()),
        None => ("GET".to_string(), path.to_string()),
    }
}

impl Requests {
    /// Counts the requests since the last call and returns them as fault targets.
    fn drain(&mut self, pve: &ProxmoxSim) -> Vec<(String, String)> {
        let seen = pve.requests();
        pve.clear_requests();
        let mut targets = Vec::with_capacity(seen.len());
        for r in &seen {
            targets.push(fault_target(&r.method, &r.path));
            self.total += 1;
            if r.status == 0 || r.status >= 500 {
                self.visible_failures += 1;
            }
            if r.method != "GET" {
                self.mutations += 1;
            }
        }
        targets
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// A failure line when either simulator caught a panic in one of its threads.
fn panic_failure(pve: &(usize, Vec<String>), hub: &(usize, Vec<String>)) -> Option<String> {
    let mut parts = Vec::new();
    for (name, (count, messages)) in [("Proxmox", pve), ("hub", hub)] {
        if *count > 0 {
            parts.push(format!(
                "the {name} simulator caught {count}: {}",
                messages.join(" | ")
            ));
        }
    }
    (!parts.is_empty()).then(|| format!("a simulator thread panicked: {}", parts.join("; ")))
}

/// The same check while running, without taking the panics (the summary takes them).
fn sim_panics(pve: &ProxmoxSim, hub: &HubSim) -> Option<String> {
    panic_failure(&pve.panics(), &hub.panics())
}

/// Kills the child if the soak ends before it could stop it properly.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    let duration = Duration::from_secs_f64(o.minutes * 60.0);
    let warmup = o.warmup.unwrap_or((duration / 4).max(MIN_WARMUP));
    if warmup >= duration {
        eprintln!(
            "soak: a run of {:.0} s leaves no time after the {} s warm-up; run longer or pass --warmup",
            duration.as_secs_f64(),
            warmup.as_secs()
        );
        return ExitCode::from(2);
    }
    let mut rng = Rng(o.seed);
    println!(
        "soak: seed {:#x}, {:.1} min, {} guests, {}% faults, warm-up {} s, binary {}",
        o.seed,
        o.minutes,
        o.guests,
        o.fault_percent,
        warmup.as_secs(),
        o.bin.display()
    );

    // Guests and a desired state that matches them: later changes are the churn's.
    let mut wants = BTreeMap::new();
    let mut builder = ProxmoxSim::builder().task_duration(Duration::from_millis(TASK_MS));
    for vmid in 100..100 + o.guests {
        let w = Want {
            running: rng.chance(50),
            cores: 1 + rng.below(4) as u32,
            memory_mib: *rng.pick(&MEMORY_MIB),
            description: format!("soak guest {vmid}"),
        };
        builder = builder.guest(
            GuestSeed::new(vmid, &format!("ct{vmid}"))
                .running(w.running)
                .cores(w.cores)
                .memory_mib(w.memory_mib)
                .description(&w.description)
                .ignores_shutdown(rng.below(IGNORES_SHUTDOWN_ONE_IN) == 0),
        );
        wants.insert(vmid, w);
    }
    let pve = builder.start();
    let mut hot: Vec<u32> = Vec::new();
    let mut pool: Vec<u32> = wants.keys().copied().collect();
    while hot.len() < HOT_GUESTS && !pool.is_empty() {
        hot.push(pool.swap_remove(rng.below(pool.len() as u64) as usize));
    }
    let hub = HubSim::builder()
        .default_envelope(json!({"poll_interval_seconds": 60, "blocked": false,
            "desired_generation": 0, "has_signed_ops": false}))
        .start();

    let dir = std::env::temp_dir().join(format!("felhom-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let desired = dir.join("desired.json");
    let mut generation = 1;
    write_atomic(
        &desired,
        desired_json(generation, &wants).to_string().as_bytes(),
    );
    let config = dir.join("agent.json");
    let cfg = json!({
        "host_id": "soak",
        "state_dir": dir.join("state"),
        "log": {"level": "info"},
        "proxmox": {
            "url": pve.url(),
            "node": pve.node(),
            "token_id": "felhom-agent@pve!agent",
            "token_secret": DEFAULT_TOKEN_SECRET,
            "tls": {"fingerprint_sha256": pve.fingerprint()},
            "timeout_seconds": PROXMOX_TIMEOUT_SECS
        },
        "hub": {
            "url": hub.url(),
            "api_key": hub.key(),
            "poll_seconds": 60,
            "timeout_seconds": 5,
            "tls": {"fingerprint_sha256": hub.fingerprint()}
        },
        "reconcile": {
            "desired_file": desired,
            "max_parallel": 4,
            "shutdown_timeout_seconds": SHUTDOWN_TIMEOUT_SECS
        }
    });
    std::fs::write(&config, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();

    let child = Command::new(&o.bin)
        .args(["run", "--config"])
        .arg(&config)
        .env(SECOND_MS_ENV, SCHEDULE_SECOND_MS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut agent = match child {
        Ok(c) => Agent(c),
        Err(e) => {
            eprintln!("soak: cannot start {}: {e}", o.bin.display());
            return ExitCode::FAILURE;
        }
    };
    let pid = agent.0.id();
    let log_path = dir.join("agent.log");
    let counts = follow_stderr(&mut agent.0, &log_path);
    println!("soak: daemon pid {pid}, state and log in {}", dir.display());

    let start = Instant::now();
    let mut next_churn = start + CHURN_EVERY;
    let mut next_sample = start;
    let mut warm: Vec<Sample> = Vec::new();
    let mut after: Vec<Sample> = Vec::new();
    let mut requests = Requests::default();
    let mut injected = [0u64; 5];
    let mut churned = 0u64;
    let mut failures: Vec<String> = Vec::new();
    let target = o.fault_percent / 100.0;
    let mut csv = std::fs::File::create(dir.join("samples.csv")).unwrap();
    writeln!(csv, "seconds,rss_kib,fds,threads,lanes").unwrap();

    while start.elapsed() < duration {
        std::thread::sleep(TICK);
        if let Ok(Some(status)) = agent.0.try_wait() {
            failures.push(format!(
                "the daemon exited on its own after {:.0} s ({status})",
                start.elapsed().as_secs_f64()
            ));
            break;
        }
        if !counts.lock().unwrap().panics.is_empty() {
            failures.push("the daemon panicked".into());
            break;
        }
        if let Some(f) = sim_panics(&pve, &hub) {
            failures.push(f);
            break;
        }

        // Keep the injected faults at the target share of the requests seen so far,
        // each aimed like a request picked at random from this tick's.
        let targets = requests.drain(&pve);
        let total_injected: u64 = injected.iter().sum();
        let due = (requests.total as f64 * target) as u64;
        if !targets.is_empty() {
            for _ in total_injected..due {
                let i = rng.below(FAULT_NAMES.len() as u64) as usize;
                let (method, path) = rng.pick(&targets);
                pve.inject(Fault::new(Some(method), path, fault_kind(i, &mut rng)));
                injected[i] += 1;
            }
        }

        if Instant::now() >= next_churn {
            next_churn += CHURN_EVERY;
            let mut ids = hot.clone();
            for _ in 0..CHURN_GUESTS.min(ids.len()) {
                let vmid = ids.swap_remove(rng.below(ids.len() as u64) as usize);
                let w = wants.get_mut(&vmid).unwrap();
                match rng.below(4) {
                    0 => w.running = !w.running,
                    1 => w.cores = 1 + rng.below(8) as u32,
                    2 => w.memory_mib = *rng.pick(&MEMORY_MIB),
                    _ => w.description = format!("soak guest {vmid} rev {}", rng.below(1000)),
                }
            }
            generation += 1;
            churned += 1;
            write_atomic(
                &desired,
                desired_json(generation, &wants).to_string().as_bytes(),
            );
        }

        if Instant::now() >= next_sample {
            next_sample += SAMPLE_EVERY;
            let Some(mut s) = sample(pid) else { continue };
            let _ = writeln!(
                csv,
                "{:.1},{},{},{},{}",
                start.elapsed().as_secs_f64(),
                s.rss_kib,
                s.fds,
                s.threads,
                s.lanes.len()
            );
            if start.elapsed() < warmup {
                warm.push(s);
                continue;
            }
            let base = peak(&warm);
            // A new lane names itself once running: for a moment it carries its parent's
            // name. A thread over the limit counts only if it is still there a little later.
            for _ in 0..3 {
                if s.fixed_threads() <= base.fixed_threads {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
                match sample(pid) {
                    Some(again) if again.fixed_threads() < s.fixed_threads() => s = again,
                    _ => {}
                }
            }
            let rss_limit = base.rss_kib + base.rss_kib * RSS_SLACK_PERCENT / 100;
            let t = start.elapsed().as_secs();
            {
                let c = counts.lock().unwrap();
                for vmid in &s.lanes {
                    let idle = c.activity.get(vmid).map(Instant::elapsed);
                    if idle.is_none_or(|d| d > LANE_IDLE + LANE_GRACE) {
                        failures.push(format!(
                            "lane-{vmid} is alive at {t} s, {} after guest {vmid} was last in the log; lanes end {} s after their last job",
                            idle.map_or("never".to_string(), |d| format!("{} s", d.as_secs())),
                            LANE_IDLE.as_secs()
                        ));
                    }
                }
            }
            if s.rss_kib > rss_limit {
                failures.push(format!(
                    "RSS {} KiB at {t} s is over the limit {rss_limit} KiB (warm-up max {} KiB + {RSS_SLACK_PERCENT}%)",
                    s.rss_kib, base.rss_kib
                ));
            }
            if s.fds > base.fds {
                failures.push(format!(
                    "{} open fds at {t} s, more than the warm-up max {}",
                    s.fds, base.fds
                ));
            }
            if s.fixed_threads() > base.fixed_threads {
                failures.push(format!(
                    "{} threads besides the guests' lanes at {t} s, more than the warm-up max {}",
                    s.fixed_threads(),
                    base.fixed_threads
                ));
            }
            after.push(s);
            if !failures.is_empty() {
                break;
            }
        }
    }
    let ran = start.elapsed();
    requests.drain(&pve);

    // Stop: SIGTERM, exit 0, then the state it leaves must read back clean.
    let mut stop_line = "not stopped (already gone)".to_string();
    if matches!(agent.0.try_wait(), Ok(None)) {
        let sent = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let status = loop {
            if let Ok(Some(st)) = agent.0.try_wait() {
                break Some(st);
            }
            if sent.elapsed() > Duration::from_secs(30) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        match status {
            Some(st) if st.success() => {
                stop_line = format!("exit 0 {:.1} s after SIGTERM", sent.elapsed().as_secs_f64());
            }
            Some(st) => {
                stop_line = format!("{st} after SIGTERM");
                failures.push(format!("the daemon did not exit 0 on SIGTERM: {st}"));
            }
            None => {
                stop_line = "still running 30 s after SIGTERM".into();
                failures.push(stop_line.clone());
            }
        }
    }
    // The stderr reader may still be draining the last lines.
    std::thread::sleep(Duration::from_millis(200));
    let mut checks = Vec::new();
    for args in [&["journal"][..], &["selftest", "offline"][..]] {
        let out = Command::new(&o.bin)
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let name = args.join(" ");
        if out.status.success() {
            checks.push(format!("{name}: ok"));
        } else {
            checks.push(format!("{name}: FAILED ({})", out.status));
            failures.push(format!(
                "`felhom-agent {name}` failed on the state left behind: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }

    let c = counts.lock().unwrap();
    if !c.panics.is_empty() && !failures.iter().any(|f| f.contains("panicked")) {
        failures.push("the daemon panicked".into());
    }
    let (pve_panics, hub_panics) = (pve.take_panics(), hub.take_panics());
    if !failures
        .iter()
        .any(|f| f.starts_with("a simulator thread panicked"))
        && let Some(f) = panic_failure(&pve_panics, &hub_panics)
    {
        failures.push(f);
    }
    let (w, a) = (peak(&warm), peak(&after));
    let rss_limit = w.rss_kib + w.rss_kib * RSS_SLACK_PERCENT / 100;
    let verdict = |ok: bool| if ok { "ok" } else { "FAIL" };
    let total_injected: u64 = injected.iter().sum();
    println!();
    println!(
        "soak summary: seed {:#x}, ran {:.0} s ({} s warm-up), {} guests ({} changing)",
        o.seed,
        ran.as_secs_f64(),
        warmup.as_secs(),
        o.guests,
        hot.len()
    );
    println!(
        "  {:<10} {:>12} {:>12} {:>12} {:>8}",
        "metric", "warm-up max", "after max", "limit", "result"
    );
    println!(
        "  {:<10} {:>12} {:>12} {:>12} {:>8}",
        "rss KiB",
        w.rss_kib,
        a.rss_kib,
        rss_limit,
        verdict(a.rss_kib <= rss_limit)
    );
    println!(
        "  {:<10} {:>12} {:>12} {:>12} {:>8}",
        "fds",
        w.fds,
        a.fds,
        w.fds,
        verdict(a.fds <= w.fds)
    );
    println!(
        "  {:<10} {:>12} {:>12} {:>12} {:>8}",
        "threads",
        w.fixed_threads,
        a.fixed_threads,
        w.fixed_threads,
        verdict(a.fixed_threads <= w.fixed_threads)
    );
    let lanes_ok = !failures.iter().any(|f| f.starts_with("lane-"));
    println!(
        "  {:<10} {:>12} {:>12} {:>12} {:>8}",
        "lanes",
        w.lanes,
        a.lanes,
        format!("idle {}s", (LANE_IDLE + LANE_GRACE).as_secs()),
        verdict(lanes_ok)
    );
    println!(
        "  samples: {} in warm-up, {} after; threads = workers and pass readers, lanes = one per busy guest",
        warm.len(),
        after.len()
    );
    println!(
        "  desired: {churned} changes of {CHURN_GUESTS} of {} guests (generation {generation})",
        hot.len()
    );
    println!(
        "  passes: {} done, {} failed, {} woken by a desired-state change; actions {} applied, {} failed",
        c.passes_done, c.passes_failed, c.change_wakeups, c.applied, c.failed_actions
    );
    println!(
        "  proxmox: {} requests ({} mutations); faults injected {} ({:.2}%): {}",
        requests.total,
        requests.mutations,
        total_injected,
        percent(total_injected, requests.total),
        FAULT_NAMES
            .iter()
            .zip(injected)
            .map(|(n, k)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  proxmox: answered 5xx or dropped {} ({:.2}% of requests; delays and garbage answer 200)",
        requests.visible_failures,
        percent(requests.visible_failures, requests.total)
    );
    println!(
        "  hub: {} reports accepted; daemon log: {} lines, {} warn, {} error, {} panic",
        hub.reports().len(),
        c.lines,
        c.warns,
        c.errors,
        c.panics.len()
    );
    println!(
        "  simulators: {} panic(s) in the Proxmox simulator, {} in the hub simulator",
        pve_panics.0, hub_panics.0
    );
    println!("  stop: {stop_line}; {}", checks.join("; "));
    for p in &c.panics {
        println!("  panic: {p}");
    }
    if failures.is_empty() {
        println!("soak: PASS");
        if !o.keep {
            let _ = std::fs::remove_dir_all(&dir);
        }
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            println!("soak: FAIL: {f}");
        }
        println!("soak: last daemon lines:");
        for l in &c.last {
            println!("    {l}");
        }
        println!("soak: state and full log kept in {}", dir.display());
        ExitCode::FAILURE
    }
}
