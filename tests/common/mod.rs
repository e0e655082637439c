//! Helpers shared by the integration tests (each `tests/*.rs` that needs one says
//! `mod common;`; a bench says `#[path = "../tests/common/mod.rs"] mod common;`). Not
//! every test file uses every helper.
#![allow(dead_code, clippy::unwrap_used)]

pub mod agent;
pub mod logfmt;
pub mod rotate;
pub mod sign;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use felhom_agent::app::SignedOpsRunner;
use felhom_agent::authz::{AuthzConfig, FileNonceStore, Verifier};
use felhom_agent::base::Secret;
use felhom_agent::base::Shutdown;
use felhom_agent::base::{ManualClock, SystemClock};
use felhom_agent::net::{Sha256Pin, TlsTrust};
use felhom_agent::proxmox::ConfigChange;
use felhom_agent::proxmox::{Client, ClientOptions, WaitOptions};
use felhom_agent::reconcile::AuditLog;
use felhom_agent::reconcile::Journal;
use felhom_agent::reconcile::{DestructiveExecutor, OnTask, ProxmoxExecutor};
use felhom_agent::reconcile::{Gate, GuestNow, Refusal};
use felhom_agent::reconcile::{Intent, OpClass};
use felhom_agent::reconcile::{Queue, SignedJobs};
use felhom_agent::reconcile::{RecoverReport, recover};
use felhom_sim::{DEFAULT_TOKEN_ID, DEFAULT_TOKEN_SECRET, GuestSeed, ProxmoxSim};

/// Client options for `sim`: its default token, its certificate pinned, the defaults
/// for the rest.
pub fn pinned_options(sim: &ProxmoxSim) -> ClientOptions {
    ClientOptions::new(
        sim.url(),
        sim.node(),
        DEFAULT_TOKEN_ID,
        Secret::new(DEFAULT_TOKEN_SECRET),
        TlsTrust::Pin(Sha256Pin::parse(&sim.fingerprint()).unwrap()),
    )
}

/// A Proxmox client on [`pinned_options`] with a 10 s call timeout (long enough for a
/// loaded machine, short enough to fail a hung test).
pub fn pinned_client(sim: &ProxmoxSim) -> Client {
    let mut o = pinned_options(sim);
    o.timeout = Duration::from_secs(10);
    Client::new(o).unwrap()
}

/// The real Proxmox executor, counting the ops it was asked to execute (the reads and
/// the `unprotect` step are not counted: they are not the destructive op).
pub struct CountingExecutor {
    inner: ProxmoxExecutor,
    calls: AtomicUsize,
}

impl CountingExecutor {
    /// Counts around `inner`.
    pub fn new(inner: ProxmoxExecutor) -> Self {
        CountingExecutor {
            inner,
            calls: AtomicUsize::new(0),
        }
    }

    /// How many ops `execute` was called for.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl DestructiveExecutor for CountingExecutor {
    fn carries(&self, class: &OpClass) -> bool {
        self.inner.carries(class)
    }
    fn guest_now(&self, vmid: u32) -> GuestNow {
        self.inner.guest_now(vmid)
    }
    fn check_target(&self, intent: &Intent) -> Result<(), (Refusal, String)> {
        self.inner.check_target(intent)
    }
    fn unprotect(&self, vmid: u32, digest: &str, on_task: &mut OnTask<'_>) -> Result<(), String> {
        self.inner.unprotect(vmid, digest, on_task)
    }
    fn stop_guest(&self, vmid: u32, on_task: &mut OnTask<'_>) -> Result<(), String> {
        self.inner.stop_guest(vmid, on_task)
    }
    fn execute(&self, intent: &Intent, on_task: &mut OnTask<'_>) -> Result<(), String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.execute(intent, on_task)
    }
}

/// A path for one test's directory that nothing is at: `felhom-{prefix}-{name}-{pid}-{n}`
/// under the system temp dir, so no two tests of a run share one. Not created: for the
/// tests where the code under test makes its own directory.
pub fn fresh_path(prefix: &str, name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "felhom-{prefix}-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A fresh, empty 0700 directory for one test at [`fresh_path`].
pub fn tempdir(prefix: &str, name: &str) -> PathBuf {
    let d = fresh_path(prefix, name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    d
}

/// The gate of host `pve-a` with no verifier (every destructive op is refused) over
/// `journal`, auditing to `dir/audit.log`.
pub fn unsigned_gate(dir: &Path, journal: &Arc<Journal>) -> Arc<Gate> {
    let audit = Arc::new(AuditLog::open(&dir.join("audit.log")).unwrap());
    Arc::new(Gate::new("pve-a".into(), None, Arc::clone(journal), audit))
}

/// Runs Recover on `journal` against `sim` and asserts it dispatched nothing and left
/// nothing in flight; `what` names the case in a failure.
pub fn recover_sending_nothing(
    journal: &Journal,
    sim: &ProxmoxSim,
    client: &Client,
    wait: &WaitOptions,
    what: &str,
) -> RecoverReport {
    let before = sim.mutations().len();
    let report = recover(journal, client, wait, &Shutdown::new(), &SystemClock).unwrap();
    assert_eq!(
        sim.mutations().len(),
        before,
        "{what}: Recover dispatched: {:?}",
        sim.mutations()
    );
    assert!(journal.in_flight().is_empty(), "{what}: {report:?}");
    report
}

/// A report loop's reporter that answers a fixed envelope, as a real round would.
pub struct Fixed(pub felhom_agent::hub::ControlEnvelope);

impl felhom_agent::hub::Reporter for Fixed {
    type Error = std::io::Error;
    fn round(&mut self) -> Result<felhom_agent::hub::ControlEnvelope, std::io::Error> {
        Ok(self.0.clone())
    }
}

/// A task wait for tests: polls after 10 ms, gaps up to 40 ms, gives up after `timeout`.
pub fn fast_wait(timeout: Duration) -> WaitOptions {
    WaitOptions {
        initial: Duration::from_millis(10),
        cap: Duration::from_millis(40),
        timeout,
    }
}

/// The task wait the signed-op tests execute with: polls after 10 ms, gaps up to
/// 20 ms, gives up after 10 s.
pub fn op_wait() -> WaitOptions {
    WaitOptions {
        initial: Duration::from_millis(10),
        cap: Duration::from_millis(20),
        timeout: Duration::from_secs(10),
    }
}

/// The real Proxmox executor on [`pinned_client`] of `sim`, waiting with [`op_wait`],
/// counting the ops it is asked to execute.
pub fn counting_executor(sim: &ProxmoxSim) -> Arc<CountingExecutor> {
    Arc::new(CountingExecutor::new(ProxmoxExecutor::new(
        Arc::new(pinned_client(sim)),
        op_wait(),
        Shutdown::new(),
    )))
}

/// The signed-op rig of host `pve-a` on the state directory `dir`, every part on one
/// clock: the verifier of an `authz` section burning nonces in `dir/nonces.log` (300 s
/// skew), the journal and audit log in `dir`, the gate, a 4-lane queue, the signed jobs
/// on it, and the hub's runner over them executing with a [`counting_executor`].
pub struct SignedRig {
    pub nonces: Arc<FileNonceStore>,
    pub journal: Arc<Journal>,
    pub audit: Arc<AuditLog>,
    pub gate: Arc<Gate>,
    pub queue: Arc<Queue>,
    pub jobs: SignedJobs,
    /// The hub's path: what `SignedOpsRunner` does with a delivered op.
    pub runner: SignedOpsRunner,
    /// What the runner and the jobs execute with.
    pub exec: Arc<CountingExecutor>,
}

impl SignedRig {
    /// Opens (or reopens) the rig in `dir` on `clock`, executing against `sim`.
    pub fn open(dir: &Path, authz: &AuthzConfig, clock: &ManualClock, sim: &ProxmoxSim) -> Self {
        let nonces = Arc::new(FileNonceStore::open(dir.join("nonces.log"), 300).unwrap());
        let verifier =
            Verifier::from_config(authz, "pve-a", Arc::new(clock.clone()), nonces.clone()).unwrap();
        let journal = Arc::new(Journal::open(&dir.join("journal.log")).unwrap());
        let audit = Arc::new(AuditLog::open(&dir.join("audit.log")).unwrap());
        let gate = Arc::new(
            Gate::new(
                "pve-a".into(),
                Some(verifier),
                journal.clone(),
                audit.clone(),
            )
            .with_clock(Arc::new(clock.clone())),
        );
        let queue = Arc::new(Queue::new(4));
        let jobs = SignedJobs::new(gate.clone(), queue.clone()).with_clock(Arc::new(clock.clone()));
        let exec = counting_executor(sim);
        let as_exec: Arc<dyn DestructiveExecutor> = exec.clone();
        let runner = SignedOpsRunner::new(jobs.clone(), gate.clone(), audit.clone(), as_exec)
            .with_clock(Arc::new(clock.clone()));
        SignedRig {
            nonces,
            journal,
            audit,
            gate,
            queue,
            jobs,
            runner,
            exec,
        }
    }
}

/// Takes the snapshot `before_upgrade` of guest `vmid` on `sim`, then sets 4 cores, each
/// task waited for with [`op_wait`]; the simulator's request log is cleared afterwards.
/// A rollback to the snapshot thus changes the guest.
pub fn snapshot_then_four_cores(sim: &ProxmoxSim, vmid: u32) {
    let client = pinned_client(sim);
    let up = client.snapshot(vmid, "before_upgrade", None).unwrap();
    client.wait_task(&up, &op_wait(), &Shutdown::new()).unwrap();
    let change = ConfigChange {
        set: vec![("cores".into(), "4".into())],
        delete: Vec::new(),
        digest: None,
    };
    if let Some(up) = client.set_config(vmid, &change).unwrap() {
        client.wait_task(&up, &op_wait(), &Shutdown::new()).unwrap();
    }
    sim.clear_requests();
}

/// The backup of guest 105 that [`restore_sim`] seeds.
pub const RESTORE_BACKUP: &str = "local:backup/vzdump-lxc-105-2024_05_01-10_00_00.tar.zst";

/// A simulator for restoring guest 105 (`customer-db`, running or not, tasks lasting
/// `task`): backed up at 2 cores to [`RESTORE_BACKUP`], then set to 6 cores, so a
/// restore brings 2 cores back.
pub fn restore_sim(running: bool, task: Duration) -> ProxmoxSim {
    let pve = ProxmoxSim::builder()
        .guest(GuestSeed::new(105, "customer-db").cores(2).running(running))
        .backup(105, "2024_05_01-10_00_00")
        .task_duration(task)
        .start();
    pve.set_config_value(105, "cores", Some("6"));
    pve
}

/// How many `METHOD /nodes/NODE{path}` requests `sim` was sent (`sent(&sim, "POST",
/// "/lxc")`: the creates and restores).
pub fn sent(sim: &ProxmoxSim, method: &str, path: &str) -> usize {
    let path = format!("/nodes/{}{path}", sim.node());
    sim.mutations()
        .iter()
        .filter(|m| m.method == method && m.path == path)
        .count()
}

/// A desired size of `cores` and `memory_bytes`, the disk left alone.
pub fn spec(
    cores: Option<u32>,
    memory_bytes: Option<u64>,
) -> Option<felhom_agent::reconcile::Spec> {
    Some(felhom_agent::reconcile::Spec {
        cores,
        memory_bytes,
        ..Default::default()
    })
}

/// The engine options the reconcile tests start from: host `pve-a`, task waits from
/// [`fast_wait`] for up to 20 s.
pub fn engine_options() -> felhom_agent::reconcile::EngineOptions {
    let mut opts = felhom_agent::reconcile::EngineOptions::new("pve-a");
    opts.wait = fast_wait(Duration::from_secs(20));
    opts
}

/// The engine the reconcile tests drive, over a pinned client of `sim`, toward
/// `desired`: with its queue (4 lanes; the test closes it) and its provider (the test
/// changes the desired state through it).
pub fn engine_rig(
    sim: &ProxmoxSim,
    gate: Arc<Gate>,
    journal: Arc<Journal>,
    desired: felhom_agent::reconcile::DesiredState,
    shutdown: Shutdown,
    opts: felhom_agent::reconcile::EngineOptions,
) -> (
    felhom_agent::reconcile::Engine,
    felhom_agent::reconcile::Queue,
    Arc<felhom_agent::reconcile::StaticProvider>,
) {
    let provider = Arc::new(felhom_agent::reconcile::StaticProvider::new(desired));
    let queue = felhom_agent::reconcile::Queue::new(4);
    let engine = felhom_agent::reconcile::Engine::new(
        pinned_client(sim),
        queue.clone(),
        gate,
        journal,
        Arc::clone(&provider) as Arc<dyn felhom_agent::reconcile::DesiredProvider>,
        shutdown,
        opts,
    );
    (engine, queue, provider)
}
