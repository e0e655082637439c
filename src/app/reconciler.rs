//! Reconcile's start-up, in the order of the design: state dir → journal (compacted
//! when large) → audit log → nonce store and verifier (when signers are configured) →
//! gate → queue → signed jobs → **Recover** → engine, and the signed-op results the
//! reports carry.
//!
//! Nothing here mutates Proxmox: Recover only reads it and appends to the journal to
//! resolve the ops a crash left in flight. The engine is paced by whatever [`Pacing`]
//! the caller gives.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::desired_feed::HubDesired;
use crate::base::shutdown::Shutdown;
use crate::base::time::{Clock, SystemClock};
use crate::config::Config;
use crate::config::DesiredSource;
use crate::hub::desired_feed::DesiredStateClient;
use crate::proxmox::{Client, WaitOptions};
use crate::reconcile::audit::{AuditError, AuditLog};
use crate::reconcile::desired::{
    DesiredError, DesiredProvider, DesiredState, EmptyProvider, FileProvider, MAX_FILE_BYTES,
    StaticProvider,
};
use crate::reconcile::desired_cache::DesiredCache;
use crate::reconcile::engine::{Engine, EngineOptions, Pacing};
use crate::reconcile::gate::Gate;
use crate::reconcile::jobs::SignedJobs;
use crate::reconcile::journal::{COMPACT_OVER, Journal, JournalError};
use crate::reconcile::op_results::OpResults;
use crate::reconcile::queue::Queue;
use crate::reconcile::recover::{RecoverError, RecoverReport, recover};
use crate::store::OsIo;

/// The cache of the hub's desired state in `state_dir`.
pub(crate) fn desired_cache_path(cfg: &Config) -> std::path::PathBuf {
    cfg.state_dir.join("desired.json")
}

/// The desired state as a command that only reads would see it: the file when one is
/// configured, the hub's cached document with `reconcile.source: "hub"` (never
/// fetched, never written), else nothing managed.
pub(crate) fn read_only_provider(cfg: &Config) -> Arc<dyn DesiredProvider> {
    match (cfg.reconcile.source, &cfg.reconcile.desired_file) {
        (DesiredSource::Hub, _) => {
            let cache = DesiredCache::open(desired_cache_path(cfg), Arc::new(OsIo));
            match cache.held() {
                Some(state) => Arc::new(StaticProvider::new(state)),
                None => Arc::new(NoDocument(format!(
                    "{} holds no document from the hub yet",
                    cache.path().display()
                ))),
            }
        }
        (DesiredSource::File, Some(path)) => Arc::new(FileProvider::new(path)),
        (DesiredSource::File, None) => Arc::new(EmptyProvider),
    }
}

/// A source with nothing to give: every read is [`DesiredError::NotYet`].
struct NoDocument(String);

impl DesiredProvider for NoDocument {
    fn desired(&self) -> Result<DesiredState, DesiredError> {
        Err(DesiredError::NotYet {
            why: self.0.clone(),
        })
    }
}

/// The daemon's desired state: the file or nothing as [`read_only_provider`] gives it,
/// or with `reconcile.source: "hub"` the hub's document, fetched when `pacing` (the
/// hub's envelope) announces a new generation and cached in `state_dir/desired.json`.
fn daemon_provider(
    cfg: &Config,
    pacing: Option<&Arc<dyn Pacing>>,
    audit: &Arc<AuditLog>,
    clock: &Arc<dyn Clock>,
) -> Result<Arc<dyn DesiredProvider>, StartupError> {
    let (DesiredSource::Hub, Some(hub)) = (cfg.reconcile.source, &cfg.hub) else {
        return Ok(read_only_provider(cfg));
    };
    let client = DesiredStateClient::from_config(hub, MAX_FILE_BYTES)
        .map_err(StartupError::DesiredSource)?;
    let cache = DesiredCache::open(desired_cache_path(cfg), Arc::new(OsIo));
    let announced = pacing.map_or_else(|| Arc::new(Unannounced) as Arc<dyn Pacing>, Arc::clone);
    Ok(Arc::new(HubDesired::new(
        client,
        cache,
        announced,
        Arc::clone(audit),
        Arc::clone(clock),
    )))
}

/// No envelope: nothing is ever announced (the first fetch after the start still runs).
struct Unannounced;

impl Pacing for Unannounced {
    fn interval(&self) -> Option<Duration> {
        None
    }
    fn generation(&self) -> u64 {
        0
    }
    fn held(&self) -> bool {
        false
    }
}

/// Why reconcile could not be set up at startup.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartupError {
    /// The state directory could not be created or secured.
    StateDir {
        /// The directory.
        dir: std::path::PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The journal could not be opened.
    Journal(JournalError),
    /// The audit log could not be opened.
    Audit(AuditError),
    /// The configured signers are not valid.
    Signers(crate::authz::SignersConfigError),
    /// Recovering in-flight ops failed (a journal write): exit non-zero.
    Recover(RecoverError),
    /// The hub's desired-state client could not be built.
    DesiredSource(crate::hub::HubSetupError),
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartupError::StateDir { dir, source } => {
                write!(f, "state_dir {}: {source}", dir.display())
            }
            StartupError::Journal(e) => write!(f, "journal: {e}"),
            StartupError::Audit(e) => write!(f, "audit log: {e}"),
            StartupError::Signers(e) => write!(f, "authz.signers: {e}"),
            StartupError::Recover(e) => e.fmt(f),
            StartupError::DesiredSource(e) => write!(f, "reconcile.source: {e}"),
        }
    }
}

impl std::error::Error for StartupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartupError::StateDir { source, .. } => Some(source),
            StartupError::Journal(e) => Some(e),
            StartupError::Audit(e) => Some(e),
            StartupError::Signers(e) => Some(e),
            StartupError::Recover(e) => Some(e),
            StartupError::DesiredSource(e) => Some(e),
        }
    }
}

/// Creates the state directory when missing and sets it 0700: the first step of
/// [`Reconciler::open`], and the daemon's check before it starts any worker, so a state
/// directory that cannot be used stops the start before the hub hears anything.
pub(crate) fn prepare_state_dir(dir: &std::path::Path) -> Result<(), StartupError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir_err = |source| StartupError::StateDir {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(dir_err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)
}

/// The journal size, in records, above which it is compacted:
/// [`COMPACT_OVER`] (a test build with fault points may lower it).
pub(crate) fn journal_compact_threshold() -> u64 {
    crate::store::faultpoint::journal_compact_at(COMPACT_OVER)
}

/// Keeps the journal bounded: compacts it (in-flight ops and unexpired applied keys are
/// kept) once it holds more than `threshold` records. The
/// reconciler calls it at start, before Recover; the daemon again every
/// [`crate::app::compaction::JOURNAL_COMPACT_EVERY`]. A compaction that failed before the new file
/// replaced the old one changed nothing: it is logged and `Ok(false)` returned. One that
/// poisoned the journal is the error: the daemon must stop and replay from disk.
/// `at` names the caller in the log line (`at=start` or `at=running`), so an operator
/// (and the crash tests) can tell the start's compaction from the worker's.
pub(crate) fn compact_journal(
    journal: &Journal,
    threshold: u64,
    clock: &dyn Clock,
    at: &'static str,
) -> Result<bool, JournalError> {
    let before = journal.records();
    match journal.compact_if_over(threshold, clock.now()) {
        Ok(false) => Ok(false),
        Ok(true) => {
            crate::info!(
                journal_compacted,
                "journal compacted",
                at = at,
                records_before = before,
                records_after = journal.records()
            );
            Ok(true)
        }
        Err(JournalError::Store(crate::store::StoreError::Io { op, path, source })) => {
            crate::warn!(
                journal_compaction_failed,
                "journal compaction failed; the old file stays in use",
                at = at,
                op = op,
                path = path.display(),
                error = source
            );
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Reconcile opened in the startup order of the design: state dir → journal (compacted
/// when large) → audit log → nonce store and verifier (when signers are configured) → gate → queue →
/// **Recover** → engine. Nothing has been mutated when [`Reconciler::open`] returns
/// except what Recover journaled; the daemon then runs `engine.run()` on a worker
/// and calls `queue.close()` after the workers stopped.
pub struct Reconciler {
    /// The journal (shared by the engine, the gate and signed jobs).
    pub journal: Arc<Journal>,
    /// The audit log (also the host report's `audit_tail`).
    pub audit: Arc<AuditLog>,
    /// The gate every mutation passes.
    pub gate: Arc<Gate>,
    /// The queue every mutation runs on.
    pub queue: Queue,
    /// Signed jobs through the same gate and queue: the one instance the signed-ops
    /// worker runs ops with.
    pub jobs: SignedJobs,
    /// The engine.
    pub engine: Arc<Engine>,
    /// What Recover did with the ops left in flight.
    pub recovered: RecoverReport,
    /// The durable nonce store behind the verifier (`None` without signers); the
    /// daemon compacts it.
    pub nonces: Option<Arc<crate::authz::FileNonceStore>>,
    /// The outcomes of hub-delivered signed ops, kept for the reports until the hub
    /// acknowledges them (`state_dir/op_results.json`).
    pub results: Arc<OpResults>,
}

impl fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconciler")
            .field("engine", &self.engine)
            .field("recovered", &self.recovered)
            .finish_non_exhaustive()
    }
}

impl Reconciler {
    /// Opens everything under `cfg.state_dir` and recovers in-flight ops through
    /// `client` before returning. `pacing`, when given, paces the engine (see
    /// [`Engine::with_pacing`]).
    pub fn open(
        cfg: &crate::config::Config,
        client: Client,
        shutdown: &Shutdown,
        pacing: Option<Arc<dyn Pacing>>,
    ) -> Result<Reconciler, StartupError> {
        let dir = &cfg.state_dir;
        prepare_state_dir(dir)?;

        let journal =
            Arc::new(Journal::open(&dir.join("journal.log")).map_err(StartupError::Journal)?);
        // A damaged journal was logged once by `Journal::open` (`journal_damage_found`
        // or `journal_damaged_earlier`, each naming the recovery step).
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        compact_journal(
            &journal,
            journal_compact_threshold(),
            clock.as_ref(),
            "start",
        )
        .map_err(StartupError::Journal)?;
        let audit = Arc::new(
            AuditLog::open_bounded(
                &dir.join("audit.log"),
                Arc::new(crate::store::OsIo),
                cfg.audit.max_bytes,
            )
            .map_err(StartupError::Audit)?,
        );

        let mut nonces: Option<Arc<crate::authz::FileNonceStore>> = None;
        let verifier = match &cfg.authz {
            Some(authz) if authz.has_signers() => {
                // A store that cannot be opened refuses every op (logged by the call);
                // its health below keeps the gate refusing destructive actions too.
                let store = Arc::new(crate::authz::FileNonceStore::open_fail_safe(
                    dir.join("nonces.log"),
                    authz.max_clock_skew_seconds,
                ));
                nonces = Some(Arc::clone(&store));
                Some(
                    crate::authz::Verifier::from_config_in(
                        authz,
                        &cfg.host_id,
                        Some(dir),
                        Arc::clone(&clock),
                        store,
                    )
                    .map_err(StartupError::Signers)?,
                )
            }
            _ => {
                crate::info!(
                    no_signers_configured,
                    "no signers configured: only benign operations will run"
                );
                None
            }
        };
        let mut gate = Gate::new(
            cfg.host_id.clone(),
            verifier,
            Arc::clone(&journal),
            Arc::clone(&audit),
        );
        if let Some(store) = &nonces {
            let store = Arc::clone(store);
            gate = gate.with_nonce_health(Arc::new(move || store.unavailable()));
        }
        let gate = Arc::new(gate);
        let queue = Queue::new(cfg.reconcile.max_parallel);

        let mut opts = EngineOptions::new(cfg.host_id.clone());
        opts.max_parallel = cfg.reconcile.max_parallel;
        opts.shutdown_timeout_seconds = cfg.reconcile.shutdown_timeout_seconds;
        opts.max_disruptive_per_hour = cfg.reconcile.max_disruptive_per_hour;
        if let Some(hub) = &cfg.hub {
            opts.default_interval = Duration::from_secs(hub.poll_seconds);
        }
        // A rotation cut short by a crash is settled from signers.json before Recover.
        if let Some(set) = gate.signer_set() {
            let policy = set.policy();
            crate::info!(
                signer_policy_loaded,
                "signer policy loaded",
                source = policy.source.as_str(),
                version = policy.version,
                signers = policy.signers.len(),
                revoked = set.revoked().len()
            );
            crate::authz::warn_expiring(&policy, clock.now());
            crate::reconcile::recover_rotations(&journal, set, clock.as_ref())
                .map_err(StartupError::Journal)?;
        }
        let recovered =
            // Recover may wait the full hour a restore or backup can take: nothing else
            // mutates until it is done, and the hub poller already runs meanwhile.
            recover(
                &journal,
                &client,
                &WaitOptions::default(),
                shutdown,
                clock.as_ref(),
            )
                .map_err(StartupError::Recover)?;
        if !recovered.unresolved.is_empty() {
            crate::warn!(
                recover_ops_unresolved,
                "ops still in flight after recovery: their guests wait until they resolve",
                ops = recovered.unresolved.len()
            );
        }

        let provider = daemon_provider(cfg, pacing.as_ref(), &audit, &clock)?;
        let mut engine = Engine::new(
            client,
            queue.clone(),
            Arc::clone(&gate),
            Arc::clone(&journal),
            provider,
            shutdown.clone(),
            opts,
        )
        .with_clock(clock)
        .with_rate_limit_resume(dir);
        if let Some(p) = pacing {
            engine = engine.with_pacing(p);
        }
        let jobs = SignedJobs::new(Arc::clone(&gate), Arc::new(queue.clone()));
        // Never fails: a damaged file is logged and set aside (it only feeds reports).
        let results = Arc::new(OpResults::open(dir.join("op_results.json"), Arc::new(OsIo)));
        Ok(Reconciler {
            journal,
            audit,
            gate,
            queue,
            jobs,
            engine: Arc::new(engine),
            recovered,
            nonces,
            results,
        })
    }
}
