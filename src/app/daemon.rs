//! The daemon: wires the configuration into clients, the reconciler and the
//! long-running loops, and owns their shutdown.
//!
//! Before anything touches the state directory, [`run`] and [`serve`] take its lock
//! ([`StateLock`]): a second daemon on the same directory stops there, with
//! [`DaemonError::StateLock`] naming the holder's PID (exit 2), and changes nothing.
//!
//! [`serve`] follows the design's startup order: one Proxmox client (shared by every
//! worker) and the hub poller are built and the poller starts (it only reads, so the hub
//! keeps hearing from the host while Recover waits); then [`Reconciler::open`] opens the
//! state directory, journal, audit log, nonce store, gate and queue and runs **Recover**
//! before any mutating worker starts, so nothing is mutated before every op left in
//! flight by an earlier process is resolved. Then the workers run on named threads
//! sharing one [`Shutdown`]: `reconcile` (the engine's loop), `journal-compact`, with
//! signers `nonce-compact`, and with a hub `signed-ops` and, unless turned off, the
//! hub's event stream (`hub-events`, never joined: it owns nothing durable and may be
//! in a long poll). SIGTERM or SIGINT triggers the shutdown (see
//! [`super::signals`]): the loops stop, the queue drains, the workers are joined within
//! a grace period and `run` returns `Ok` (exit 0). A journal write that fails ends the worker that wrote it, and an audit log or
//! nonce store poisoned by a failed write or fsync is noticed by the watch: either way
//! the daemon exits non-zero and the restart replays from disk.
//!
//! The daemon never mutates Proxmox itself:
//! every mutation goes through the reconciler's gate and queue.

use crate::base::sync::lock;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::app::bridge::AuditFeed;
use crate::app::compaction::{
    JOURNAL_COMPACT_EVERY, NONCE_COMPACT_EVERY, compact_journal_every, compact_nonces,
};
use crate::app::metrics::Metrics;
use crate::app::notify::Notifier;
use crate::app::pause::{PauseWatch, PausedPacing};
use crate::app::reconciler::{
    Reconciler, StartupError, journal_compact_threshold, prepare_state_dir,
};
use crate::app::results::{AckingRound, ResultsFeed};
use crate::app::signals::{HupHooks, SignalWatcher};
use crate::app::signed_ops::{self, SignedOpsRunner};
use crate::app::status::{StatusBoard, StatusRound};
use crate::app::wiring::{self, LiveSetupError};
use crate::authz::NonceStoreError;
use crate::base::shutdown::Shutdown;
use crate::base::time::{Clock, SystemClock};
use crate::config::Config;
use crate::hub::collect::{AuditTail, OpResultsSource, PauseSource};
use crate::hub::ops_feed::{Announcement, SignedOpsClient};
use crate::hub::poller::Poller;
use crate::proxmox::WaitOptions;
use crate::reconcile::engine::{EngineError, Pacing, PassObserver};
use crate::reconcile::executor::ProxmoxExecutor;
use crate::reconcile::jobs::DestructiveExecutor;
use crate::reconcile::journal::JournalError;
use crate::store::statelock::{StateLock, StateLockError};

/// How long stopping workers get after the shutdown before `run` returns anyway; a
/// worker still inside a network call is abandoned (the calls it makes are reads or
/// journaled, so the next start picks up where it left off).
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(1);

/// How often the main thread checks that every worker is still alive.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// Why the daemon could not start or had to stop.
#[derive(Debug)]
#[non_exhaustive]
pub enum DaemonError {
    /// The state directory could not be locked: another process holds it
    /// ([`StateLockError::Held`], exit 2), or the lock file could not be used. Nothing in the
    /// directory was touched.
    StateLock(StateLockError),
    /// Building the clients from the configuration failed (bad pin, unreadable CA file,
    /// missing section or key).
    Setup(LiveSetupError),
    /// The reconciler could not be set up at startup (state directory, journal, audit
    /// log or signers), or Recover could not journal what it resolved.
    Reconcile(StartupError),
    /// The reconcile loop stopped because a journal write failed; the restart replays
    /// the journal from disk.
    Engine(EngineError),
    /// Compacting the nonce store failed and poisoned it (a failed fsync is never
    /// retried); the restart replays it from disk.
    NonceStore(NonceStoreError),
    /// The signal handlers or their wake-up pipe could not be installed.
    Signals(io::Error),
    /// A worker thread could not be started.
    Spawn {
        /// The worker's name.
        name: String,
        /// What the OS said.
        source: io::Error,
    },
    /// A worker ended while no shutdown was asked for (it panicked).
    WorkerDied {
        /// The worker's name.
        name: String,
    },
    /// The signed-ops worker stopped: a journal append failed while carrying an op.
    SignedOps(signed_ops::SignedOpsError),
    /// Compacting the journal while running failed after the new file replaced the old
    /// one, poisoning it; the restart replays it from disk.
    Journal(JournalError),
    /// A write or fsync of the audit log failed and poisoned it (never retried): no
    /// decision can be recorded any more; the restart replays it from disk.
    AuditPoisoned {
        /// The audit log.
        path: std::path::PathBuf,
    },
}

impl DaemonError {
    /// Whether the state directory could not be locked: [`crate::store::StateLock`]
    /// has logged it already (`state_lock_held` / `state_lock_failed`).
    pub fn is_state_lock(&self) -> bool {
        matches!(self, DaemonError::StateLock(_))
    }

    /// Whether the failure is in the configuration (exit 2) rather than at run time
    /// (exit 1). A state directory another process holds counts as configuration: two
    /// daemons were pointed at one directory, and the second must not start.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            DaemonError::Setup(_)
                | DaemonError::Reconcile(StartupError::Signers(_))
                | DaemonError::StateLock(StateLockError::Held { .. })
        )
    }
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonError::StateLock(e) => e.fmt(f),
            DaemonError::Setup(e) => write!(f, "daemon setup failed: {e}"),
            DaemonError::Reconcile(e) => write!(f, "reconcile setup failed: {e}"),
            DaemonError::Engine(e) => e.fmt(f),
            DaemonError::NonceStore(e) => write!(f, "nonce store compaction: {e}"),
            DaemonError::Signals(e) => write!(f, "installing signal handlers failed: {e}"),
            DaemonError::Spawn { name, source } => {
                write!(f, "starting worker {name} failed: {source}")
            }
            DaemonError::WorkerDied { name } => {
                write!(f, "worker {name} stopped unexpectedly")
            }
            DaemonError::SignedOps(e) => e.fmt(f),
            DaemonError::Journal(e) => write!(f, "journal compaction: {e}"),
            DaemonError::AuditPoisoned { path } => write!(
                f,
                "audit log {}: a write or fsync failed; no decision can be recorded",
                path.display()
            ),
        }
    }
}

impl std::error::Error for DaemonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DaemonError::StateLock(e) => Some(e),
            DaemonError::Setup(e) => Some(e),
            DaemonError::Reconcile(e) => Some(e),
            DaemonError::Engine(e) => Some(e),
            DaemonError::NonceStore(e) => Some(e),
            DaemonError::Signals(e) => Some(e),
            DaemonError::Spawn { source, .. } => Some(source),
            DaemonError::WorkerDied { .. } | DaemonError::AuditPoisoned { .. } => None,
            DaemonError::SignedOps(e) => Some(e),
            DaemonError::Journal(e) => Some(e),
        }
    }
}

/// The daemon's long-running threads, each named, all sharing one [`Shutdown`].
#[derive(Debug, Default)]
pub(crate) struct Workers {
    threads: Vec<(String, JoinHandle<()>)>,
}

impl Workers {
    /// No workers yet.
    pub(crate) fn new() -> Self {
        Workers::default()
    }

    /// Starts `body` on a thread named `name`. The body must return once the shared
    /// shutdown fires.
    pub(crate) fn spawn(
        &mut self,
        name: &str,
        body: impl FnOnce() + Send + 'static,
    ) -> Result<(), DaemonError> {
        let handle = thread::Builder::new()
            .name(name.to_owned())
            .spawn(body)
            .map_err(|source| DaemonError::Spawn {
                name: name.to_owned(),
                source,
            })?;
        self.threads.push((name.to_owned(), handle));
        Ok(())
    }

    /// Starts `body` on a thread that is never joined: for a worker that owns nothing
    /// durable and may block past the stop grace (the hub's event stream, in a long
    /// poll); the process ending ends it.
    pub(crate) fn detached(
        name: &str,
        body: impl FnOnce() + Send + 'static,
    ) -> Result<(), DaemonError> {
        thread::Builder::new()
            .name(name.to_owned())
            .spawn(body)
            .map(drop)
            .map_err(|source| DaemonError::Spawn {
                name: name.to_owned(),
                source,
            })
    }

    /// The name of a worker that has already ended, if any.
    pub(crate) fn first_finished(&self) -> Option<&str> {
        self.threads
            .iter()
            .find(|(_, h)| h.is_finished())
            .map(|(n, _)| n.as_str())
    }

    /// Joins every worker that ends before `deadline`; returns the names of those that
    /// did not (they are left running and die with the process).
    pub(crate) fn join_until(self, deadline: Instant) -> Vec<String> {
        let mut pending = self.threads;
        while !pending.is_empty() && Instant::now() < deadline {
            let (done, rest): (Vec<_>, Vec<_>) =
                pending.into_iter().partition(|(_, h)| h.is_finished());
            for (name, h) in done {
                if h.join().is_err() {
                    crate::error!(
                        worker_panicked,
                        "worker panicked while stopping",
                        worker = name
                    );
                }
            }
            pending = rest;
            if !pending.is_empty() {
                thread::sleep(Duration::from_millis(10));
            }
        }
        pending.into_iter().map(|(n, _)| n).collect()
    }
}

/// How long one second of the poll schedule lasts: one second, unless a test build
/// (feature `fault-points`) is asked for less ([`crate::store::faultpoint::SECOND_MS_ENV`]).
fn schedule_second() -> Duration {
    let second = crate::store::faultpoint::schedule_second(Duration::from_secs(1));
    if second != Duration::from_secs(1) {
        crate::warn!(
            fault_schedule_shortened,
            "test build: poll schedule seconds shortened",
            second_ms = second.as_millis()
        );
    }
    second
}

/// Runs the daemon until SIGTERM or SIGINT. `config_path` is re-read on SIGHUP for the
/// log level. The state directory's lock is taken first and kept until the process
/// exits: workers abandoned after the grace period die with the process, and no second
/// daemon may start beside them.
pub(crate) fn run(cfg: &Config, config_path: &Path) -> Result<(), DaemonError> {
    let lock = StateLock::acquire(&cfg.state_dir).map_err(DaemonError::StateLock)?;
    let shutdown = Shutdown::new();
    let hooks = HupHooks::default();
    let signals = SignalWatcher::install(shutdown.clone(), config_path.to_owned(), hooks.clone())
        .map_err(DaemonError::Signals)?;
    let result = serve_locked(cfg, config_path, &shutdown, &lock, &hooks);
    shutdown.trigger();
    signals.close();
    lock.hold_until_exit();
    result
}

/// The first fatal error a worker reported before it ended.
type Failure = Arc<Mutex<Option<DaemonError>>>;

fn report_failure(slot: &Failure, e: DaemonError) {
    let mut slot = lock(slot);
    slot.get_or_insert(e);
}

/// Locks the state directory, sets up the reconciler (Recover included), starts the
/// workers and waits for the shutdown; the caller owns the signals. The lock is
/// released when this returns.
pub fn serve(cfg: &Config, shutdown: &Shutdown) -> Result<(), DaemonError> {
    let lock = StateLock::acquire(&cfg.state_dir).map_err(DaemonError::StateLock)?;
    serve_locked(
        cfg,
        Path::new("(given by the caller)"),
        shutdown,
        &lock,
        &HupHooks::default(),
    )
}

/// [`serve`] once the state directory is locked: `_lock` is the proof.
fn serve_locked(
    cfg: &Config,
    config_path: &Path,
    shutdown: &Shutdown,
    _lock: &StateLock,
    hooks: &HupHooks,
) -> Result<(), DaemonError> {
    crate::info!(
        daemon_starting,
        "felhom-agent starting",
        version = crate::base::version::VERSION,
        host_id = cfg.host_id,
        pid = std::process::id()
    );
    wiring::warn_insecure_tls(cfg);
    let proxmox = cfg
        .proxmox
        .as_ref()
        .ok_or(LiveSetupError::NoProxmoxSection)
        .and_then(wiring::proxmox_client)
        .map_err(DaemonError::Setup)?;
    let audit = Arc::new(AuditFeed::default());
    let results = Arc::new(ResultsFeed::default());
    let signer_feed = Arc::new(super::executors::SignerFeed::default());
    let pause = Arc::new(PauseWatch::new(&cfg.state_dir));
    let signers = cfg.authz.as_ref().map_or(0, |a| a.signers.len());
    let board = Arc::new(StatusBoard::new(
        &cfg.state_dir,
        &cfg.host_id,
        config_path,
        signers,
        Arc::clone(&pause),
    ));
    let round = wiring::hub_round_with(
        cfg,
        proxmox.clone(),
        Arc::clone(&audit) as Arc<dyn AuditTail>,
        Arc::clone(&results) as Arc<dyn OpResultsSource>,
        Arc::clone(&signer_feed) as Arc<dyn crate::hub::SignerPolicySource>,
        Arc::clone(&pause) as Arc<dyn PauseSource>,
    )
    .map_err(DaemonError::Setup)?;
    let announcement = Announcement::new();
    let poll_seconds = cfg.hub.as_ref().map_or(300, |h| h.poll_seconds);
    let round = AckingRound::new(round, Arc::clone(&results));
    let round = StatusRound::new(round, Arc::clone(&board));
    let mut poller = Poller::new(round, shutdown.clone(), poll_seconds)
        .with_second(schedule_second())
        .announcing(announcement.clone());

    // The poller only reads, so it reports while Recover waits on a task left in flight
    // (which can take as long as that task): the hub keeps hearing from the host. The
    // audit tail joins its reports once the reconciler has opened the audit log.
    // A state directory that cannot be used is a failed start, before any worker runs.
    prepare_state_dir(&cfg.state_dir).map_err(DaemonError::Reconcile)?;
    let failure: Failure = Arc::new(Mutex::new(None));
    let mut workers = Workers::new();
    let mut names = vec!["hub-poller", "reconcile"];
    let envelope = poller.envelope();
    board.with_envelope(envelope.clone());
    // Counted from the first round on: the poller reports while Recover runs.
    let metrics = Arc::new(Metrics::new(&cfg.state_dir));
    board.with_listener(Arc::clone(&metrics) as Arc<dyn super::status::StatusListener>);
    workers.spawn("hub-poller", move || poller.run())?;
    let events = wiring::event_stream(
        cfg,
        envelope.clone(),
        announcement.clone(),
        Arc::clone(&results),
        shutdown,
    );
    if let Some(mut stream) = events.map_err(DaemonError::Setup)? {
        Workers::detached("hub-events", move || stream.run())?;
        names.push("hub-events");
    }

    crate::info!(
        recover_started,
        "opening reconcile state and recovering ops left in flight",
        state_dir = cfg.state_dir.display()
    );
    // The operator's pause holds exactly as the hub's `blocked` does.
    let hold: Arc<dyn Pacing> = Arc::new(PausedPacing::new(Arc::new(envelope), Arc::clone(&pause)));
    let reconciler = match Reconciler::open(cfg, proxmox.clone(), shutdown, Some(Arc::clone(&hold)))
    {
        Ok(r) => r,
        Err(e) => {
            shutdown.trigger();
            workers.join_until(Instant::now() + STOP_GRACE);
            return Err(DaemonError::Reconcile(e));
        }
    };
    if let Some(set) = reconciler.gate.signer_set() {
        signer_feed.bind(Arc::clone(set));
    }
    if let (Some(set), Some(path)) = (
        reconciler.gate.signer_set(),
        cfg.authz.as_ref().and_then(|a| a.revoked_keys_file.clone()),
    ) {
        let set = Arc::clone(set);
        hooks.add(Box::new(move || {
            set.reload_revoked(&path);
        }));
    }
    let recovered = &reconciler.recovered;
    crate::info!(
        recover_finished,
        "recover finished",
        succeeded = recovered.succeeded.len(),
        failed = recovered.failed.len(),
        unresolved = recovered.unresolved.len()
    );
    let bound = audit.bind(Arc::clone(&reconciler.audit));
    if !(results.bind(Arc::clone(&reconciler.results)) && bound) {
        crate::warn!(
            audit_tail_already_bound,
            "audit tail or results were already bound; keeping the first"
        );
    }

    board.bind(
        Arc::clone(&reconciler.journal),
        Arc::clone(&reconciler.audit),
        reconciler.nonces.clone(),
        reconciler.gate.signer_set().cloned(),
        cfg.restore_tests.as_ref().map(|_| cfg.state_dir.clone()),
    );
    reconciler
        .engine
        .observe_passes(Arc::clone(&board) as Arc<dyn PassObserver>);
    let m = Arc::clone(&metrics);
    reconciler
        .journal
        .watch_records(Arc::new(move |r| m.record_journal(r)));
    let m = Arc::clone(&metrics);
    reconciler
        .audit
        .watch_records(Arc::new(move |r| m.record_decision(r)));
    board.write();
    let notifier = Notifier::from_env().map(Arc::new);
    if let Some(n) = &notifier {
        board.with_notifier(Arc::clone(n));
    }
    let engine = Arc::clone(&reconciler.engine);
    let slot = Arc::clone(&failure);
    workers.spawn("reconcile", move || {
        if let Err(e) = engine.run() {
            report_failure(&slot, DaemonError::Engine(e));
        }
    })?;
    let journal = Arc::clone(&reconciler.journal);
    let (s, slot) = (shutdown.clone(), Arc::clone(&failure));
    workers.spawn("journal-compact", move || {
        if let Err(e) = compact_journal_every(
            &journal,
            journal_compact_threshold(),
            &s,
            &SystemClock,
            JOURNAL_COMPACT_EVERY,
        ) {
            report_failure(&slot, DaemonError::Journal(e));
        }
    })?;
    names.push("journal-compact");
    if let Some(store) = reconciler.nonces.clone() {
        let s = shutdown.clone();
        let slot = Arc::clone(&failure);
        workers.spawn("nonce-compact", move || {
            if let Err(e) = compact_nonces(&store, &s, &SystemClock, NONCE_COMPACT_EVERY) {
                report_failure(&slot, DaemonError::NonceStore(e));
                return;
            }
            // The trusted time as the daemon stops, so the next start holds pruning back
            // only by the time the agent was down. Failing to record it is safe (pruning
            // lags more); the process is exiting, so a poisoned store is never retried.
            if store.unavailable().is_none()
                && let Err(e) = store.record_trusted_time(SystemClock.now())
            {
                crate::error!(
                    nonce_trusted_time_not_saved,
                    "nonce store: trusted time not recorded at stop",
                    error = e
                );
            }
        })?;
        names.push("nonce-compact");
    }
    if let Some(tester) = super::restore_tests::tester(
        cfg,
        proxmox.clone(),
        &reconciler,
        shutdown,
        Arc::clone(&hold),
    ) {
        let (s, slot, dir) = (
            shutdown.clone(),
            Arc::clone(&failure),
            cfg.state_dir.clone(),
        );
        let second = schedule_second();
        workers.spawn("restore-tests", move || {
            let r = super::restore_tests::run_worker(&tester, &dir, &s, second);
            if let Err(crate::reconcile::RestoreTestError::Journal(e)) = r {
                report_failure(&slot, DaemonError::Journal(e));
            }
        })?;
        names.push("restore-tests");
    }
    if let Some(hub) = &cfg.hub {
        let client = SignedOpsClient::from_config(hub)
            .map_err(|e| DaemonError::Setup(LiveSetupError::Hub(e)))?;
        let executor: Arc<dyn DestructiveExecutor> = Arc::new(ProxmoxExecutor::new(
            Arc::new(proxmox),
            WaitOptions::default(),
            shutdown.clone(),
        ));
        let executor =
            super::executors::with_rotation(executor, &reconciler.gate, &reconciler.audit);
        let runner = SignedOpsRunner::new(
            reconciler.jobs.clone(),
            Arc::clone(&reconciler.gate),
            Arc::clone(&reconciler.audit),
            executor,
        )
        .with_hold(hold)
        .with_results(Arc::clone(&reconciler.results));
        let (s, slot) = (shutdown.clone(), Arc::clone(&failure));
        workers.spawn("signed-ops", move || {
            if let Err(e) = signed_ops::run_worker(&runner, &client, &announcement, &s) {
                report_failure(&slot, DaemonError::SignedOps(e));
            }
        })?;
        names.push("signed-ops");
    }
    crate::info!(
        daemon_running,
        "felhom-agent running",
        workers = names.join(",")
    );
    // Recover is done and every worker runs: systemd may consider the start finished.
    if let Some(n) = &notifier {
        n.ready(&board.summary());
        crate::info!(
            notify_ready,
            "told systemd the daemon is ready",
            watchdog_ms = n.watchdog_every().map_or(0, |d| d.as_millis())
        );
    }

    // An audit log, or a nonce store that worked at start, that stops working was
    // poisoned by a failed write or fsync: exit so the restart replays it from disk (one that could not be
    // opened at start keeps refusing signed ops and is not a reason to stop).
    let nonces = reconciler
        .nonces
        .clone()
        .filter(|store| store.unavailable().is_none());
    let audit_log = Arc::clone(&reconciler.audit);
    let audit_path = cfg.state_dir.join("audit.log");
    let watchdog = notifier.clone();
    let health = move || {
        // The pause marker is audited (and logged) here, once per change.
        pause.observe(&audit_log);
        board.heartbeat();
        if let Some(n) = &watchdog {
            n.watchdog_tick();
        }
        if audit_log.is_poisoned() {
            return Some(DaemonError::AuditPoisoned {
                path: audit_path.clone(),
            });
        }
        let why = nonces.as_ref()?.unavailable()?;
        Some(DaemonError::NonceStore(NonceStoreError::Unavailable(why)))
    };
    let outcome = watch(&workers, shutdown, &failure, &health);
    crate::info!(daemon_stopping, "felhom-agent stopping");
    if let Some(n) = &notifier {
        n.stopping();
    }
    let deadline = Instant::now() + STOP_GRACE;
    let stuck = workers.join_until(deadline);
    if !stuck.is_empty() {
        crate::warn!(
            workers_stuck_at_stop,
            "workers still busy after the grace period; leaving them",
            workers = stuck.join(",")
        );
    }
    drain_queue(&reconciler, deadline);
    crate::info!(daemon_stopped, "felhom-agent stopped");
    outcome
}

/// Waits for the shutdown while every worker lives and `health` finds nothing wrong. A
/// worker that ends first triggers the shutdown; its reported failure (or
/// [`DaemonError::WorkerDied`]) is returned; so is what `health` reports.
fn watch(
    workers: &Workers,
    shutdown: &Shutdown,
    failure: &Failure,
    health: &dyn Fn() -> Option<DaemonError>,
) -> Result<(), DaemonError> {
    while !shutdown.sleep(WATCH_INTERVAL) {
        if let Some(e) = health() {
            crate::error!(
                store_failed,
                "a durable store failed; shutting down",
                error = e
            );
            shutdown.trigger();
            return Err(e);
        }
        if let Some(name) = workers.first_finished() {
            let reported = lock(failure).take();
            // A worker that ended because a stop was asked for meanwhile (the checks
            // above take a moment) has not died.
            if reported.is_none() && shutdown.is_triggered() {
                return Ok(());
            }
            let e = reported.unwrap_or_else(|| DaemonError::WorkerDied {
                name: name.to_owned(),
            });
            crate::error!(
                worker_failed,
                "worker stopped; shutting down",
                worker = name,
                error = e
            );
            shutdown.trigger();
            return Err(e);
        }
    }
    Ok(())
}

/// Closes the queue (what is queued still runs: every job's wait returns at once on
/// the shutdown) and waits for its lanes until `deadline`.
fn drain_queue(reconciler: &Reconciler, deadline: Instant) {
    let queue = reconciler.queue.clone();
    let mut drain = Workers::new();
    if drain.spawn("queue-drain", move || queue.close()).is_err() {
        crate::warn!(
            queue_drain_not_started,
            "could not start the queue drain; queued jobs die with the process"
        );
        return;
    }
    if !drain
        .join_until(deadline.max(Instant::now() + STOP_GRACE / 2))
        .is_empty()
    {
        crate::warn!(
            queue_drain_stuck,
            "queue still draining after the grace period; leaving it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::compaction::tests::temp_store;
    use std::sync::mpsc;

    /// A worker that sleeps until shutdown, and the shutdown that ends it.
    fn one_sleeping_worker() -> (Shutdown, Workers) {
        let shutdown = Shutdown::new();
        let mut w = Workers::new();
        let s = shutdown.clone();
        w.spawn("loop", move || {
            s.sleep(Duration::from_secs(600));
        })
        .unwrap();
        (shutdown, w)
    }

    #[test]
    fn a_worker_that_ends_is_noticed_and_stuck_ones_are_named_at_the_deadline() {
        let mut w = Workers::new();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        w.spawn("quick", || {}).unwrap();
        w.spawn("stuck", move || {
            let _ = release_rx.recv();
        })
        .unwrap();
        while w.first_finished().is_none() {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(w.first_finished(), Some("quick"));
        let left = w.join_until(Instant::now() + Duration::from_millis(50));
        assert_eq!(left, ["stuck"]);
        drop(release_tx);
    }

    #[test]
    fn a_worker_that_reports_a_failure_ends_the_watch_with_that_failure() {
        let shutdown = Shutdown::new();
        let failure: Failure = Arc::new(Mutex::new(None));
        let mut w = Workers::new();
        let slot = Arc::clone(&failure);
        w.spawn("reconcile", move || {
            report_failure(
                &slot,
                DaemonError::NonceStore(NonceStoreError::Unavailable("disk gone".into())),
            );
        })
        .unwrap();
        let e = watch(&w, &shutdown, &failure, &|| None).unwrap_err();
        assert!(matches!(e, DaemonError::NonceStore(_)), "{e:?}");
        assert!(!e.is_configuration(), "a runtime failure: exit 1");
        assert!(shutdown.is_triggered(), "the others are told to stop");
    }

    #[test]
    fn a_worker_that_ends_silently_is_reported_by_name() {
        let shutdown = Shutdown::new();
        let mut w = Workers::new();
        w.spawn("hub-poller", || {}).unwrap();
        let e = watch(&w, &shutdown, &Arc::new(Mutex::new(None)), &|| None).unwrap_err();
        assert!(
            matches!(&e, DaemonError::WorkerDied { name } if name == "hub-poller"),
            "{e:?}"
        );
    }

    #[test]
    fn a_nonce_store_poisoned_while_running_ends_the_watch_with_its_error() {
        use crate::authz::NonceStore;
        use crate::base::time::Timestamp;
        use crate::store::{FaultOp, FaultyIo};
        // Opening a new file costs two syncs; the third is the first nonce's.
        let io = Arc::new(FaultyIo::new(FaultOp::Sync, 3, false));
        let (dir, store) = temp_store("watch", io);
        let store = Arc::new(store);
        let (shutdown, w) = one_sleeping_worker();
        let probe = Arc::clone(&store);
        let health = move || {
            let why = probe.unavailable()?;
            Some(DaemonError::NonceStore(NonceStoreError::Unavailable(why)))
        };
        assert!(
            store
                .seen_or_record("n1", Timestamp(1_800_000_600), None)
                .is_err()
        );
        let e = watch(&w, &shutdown, &Arc::new(Mutex::new(None)), &health).unwrap_err();
        assert!(
            matches!(&e, DaemonError::NonceStore(NonceStoreError::Unavailable(why)) if why.contains("poisoned")),
            "{e:?}"
        );
        assert!(!e.is_configuration(), "a runtime failure: exit 1");
        assert!(shutdown.is_triggered(), "the workers are told to stop");
        assert!(
            w.join_until(Instant::now() + Duration::from_secs(60))
                .is_empty()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_worker_that_ends_because_of_a_stop_is_not_a_death() {
        let shutdown = Shutdown::new();
        let mut w = Workers::new();
        w.spawn("hub-poller", || {}).unwrap();
        while w.first_finished().is_none() {
            thread::sleep(Duration::from_millis(1));
        }
        // The stop arrives while the watch is busy with its checks.
        let s = shutdown.clone();
        let health = move || {
            s.trigger();
            None
        };
        assert!(watch(&w, &shutdown, &Arc::new(Mutex::new(None)), &health).is_ok());
    }

    #[test]
    fn the_watch_returns_ok_on_shutdown() {
        let (shutdown, w) = one_sleeping_worker();
        shutdown.trigger();
        assert!(watch(&w, &shutdown, &Arc::new(Mutex::new(None)), &|| None).is_ok());
    }

    #[test]
    fn workers_that_stop_in_time_are_all_joined() {
        let shutdown = Shutdown::new();
        let mut w = Workers::new();
        for name in ["a", "b"] {
            let s = shutdown.clone();
            w.spawn(name, move || {
                s.sleep(Duration::from_secs(600));
            })
            .unwrap();
        }
        assert_eq!(w.first_finished(), None);
        shutdown.trigger();
        assert!(
            w.join_until(Instant::now() + Duration::from_secs(60))
                .is_empty()
        );
    }
}
