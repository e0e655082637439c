//! The reconcile engine: one pass reads desired and actual state, plans, passes each
//! action through the gate, and runs it on the guest's queue lane with every step
//! journaled; [`Engine::run`] repeats passes on the poll cadence.
//!
//! A synchronous config write is success. A failed action
//! is counted and backs its guest off; other guests go on. A journal write that fails
//! ends the pass with [`EngineError::Journal`] (the process must exit: the kernel may
//! have dropped the dirty pages). The engine never mutates Proxmox outside the queue,
//! never re-dispatches an op that is still in flight, and never runs an action the
//! gate refused. It never sees the hub: what paces it from outside comes through
//! [`Pacing`]. One action's journaled lifecycle is `super::action`; the blast-radius
//! limit on disruptive benign actions is `super::blast`.

use crate::base::backoff::doubling;
use crate::base::sync::lock;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::action::{ActionJournalError, Job, Pending, intent_for};
pub(crate) use super::action::{ActionResult, Outcome};
use super::blast::{Admit, Limiter, is_disruptive};
use super::classify::{Intent, OpClass};
use super::desired::{DesiredError, DesiredProvider};
use super::gate::{Decision, Gate, GuestNow, Refusal};
use super::journal::{Journal, JournalError};
use super::normalize::Normalizers;
use super::plan::{Action, ActualGuest, ActualState, Plan, plan};
use super::queue::{Queue, SubmitError};
use crate::base::shutdown::Shutdown;
use crate::base::time::{Clock, SystemClock};
use crate::proxmox::{self, Client, RunState, WaitOptions};

/// How long one pass waits for a task it sent (start and config tasks take seconds; a
/// lock wait can take minutes) before leaving it in flight for the next pass. A stop
/// waits at least its shutdown timeout plus `SHUTDOWN_WAIT_SLACK` (30 s).
pub const PASS_TASK_WAIT: Duration = Duration::from_secs(120);

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// This host's id (the gate's and the signed ops' `host_id`).
    pub host_id: String,
    /// Parallel config reads (mutations are bounded by the queue).
    pub max_parallel: usize,
    /// How a pass waits for the tasks it sent. The timeout bounds how long one slow
    /// task can hold a pass (and so every other guest): a task still running then stays
    /// in flight and is waited for again by the next pass, never re-sent.
    pub wait: WaitOptions,
    /// First back-off of a guest after a failed action; doubles per failure.
    pub backoff_initial: Duration,
    /// The longest back-off.
    pub backoff_cap: Duration,
    /// How often [`Engine::run`] looks for a desired-state change between passes.
    pub check_every: Duration,
    /// The pass interval when no [`Pacing`] says otherwise.
    pub default_interval: Duration,
    /// A stop is a clean shutdown: Proxmox gives the guest this long, then stops it
    /// hard (`status/shutdown` with `timeout` and `forceStop=1`).
    pub shutdown_timeout_seconds: u32,
    /// Disruptive benign actions (stops, reductions of cores or memory) sent per rolling
    /// hour; the rest are held `rate_limited` (see `super::blast`).
    pub max_disruptive_per_hour: u32,
}

impl EngineOptions {
    /// Defaults: 4 parallel reads, task waits polling from 0.1 s to a 5 s gap for at most
    /// [`PASS_TASK_WAIT`] per pass, back-off 30 s doubling to 15 min, a change check
    /// every 0.1 s (a stat of the desired-state file, or a look at the hub's envelope),
    /// a pass every 300 s, 120 s for a guest to shut down, 10 disruptive actions per
    /// rolling hour.
    pub fn new(host_id: impl Into<String>) -> Self {
        EngineOptions {
            host_id: host_id.into(),
            max_parallel: 4,
            wait: WaitOptions {
                timeout: PASS_TASK_WAIT,
                ..WaitOptions::default()
            },
            backoff_initial: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(900),
            check_every: Duration::from_millis(100),
            default_interval: Duration::from_secs(300),
            shutdown_timeout_seconds: u32::try_from(
                crate::config::DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
            )
            .unwrap_or(120),
            max_disruptive_per_hour: u32::try_from(crate::config::DEFAULT_MAX_DISRUPTIVE_PER_HOUR)
                .unwrap_or(10),
        }
    }
}

/// Why a pass could not run (per-action failures are not errors; see [`PassReport`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum EngineError {
    /// The desired state could not be had (no good version yet).
    Desired(DesiredError),
    /// The guest list could not be read from Proxmox.
    ListGuests(proxmox::ProxmoxError),
    /// A journal write failed: the process must exit non-zero and replay on restart.
    Journal {
        /// The op whose step could not be recorded.
        op_id: String,
        /// What failed.
        source: JournalError,
    },
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Desired(e) => write!(f, "reconcile pass: {e}"),
            EngineError::ListGuests(e) => write!(f, "reconcile pass: cannot list guests: {e}"),
            EngineError::Journal { op_id, source } => {
                write!(f, "reconcile: cannot journal op {op_id}: {source}")
            }
        }
    }
}

impl From<ActionJournalError> for EngineError {
    fn from(e: ActionJournalError) -> EngineError {
        EngineError::Journal {
            op_id: e.op_id,
            source: e.source,
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EngineError::Desired(e) => Some(e),
            EngineError::ListGuests(e) => Some(e),
            EngineError::Journal { source, .. } => Some(source),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// The desired state's generation.
    pub generation: u64,
    /// The plan.
    pub plan: Plan,
    /// Each planned action, in plan order, with its outcome.
    pub results: Vec<ActionResult>,
    /// Guests whose config could not be read (their spec was not compared).
    pub unreadable: Vec<u32>,
    /// Tasks of earlier passes whose wait had ended early, waited for again (never
    /// re-sent), with how they ended this time.
    pub reattached: Vec<ActionResult>,
    /// Destroy deltas first seen this pass: guests the previous desired state managed,
    /// the new one dropped, and Proxmox still has. Each went to the gate as an unsigned
    /// `guest_destroy` and is never executed by reconcile; the code is the gate's word
    /// (`pending_signature` unless the journal shows the guest is the agent's own).
    pub destroy_deltas: Vec<(u32, String)>,
    /// How many guests Proxmox listed in each run state this pass (`running`,
    /// `stopped`, `other`).
    pub guest_states: BTreeMap<&'static str, usize>,
}

impl PassReport {
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.results.iter().filter(|r| f(&r.outcome)).count()
    }

    /// Actions applied.
    pub fn applied(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Applied))
    }

    /// Actions that failed or are unresolved.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed { .. } | Outcome::Unresolved { .. }))
    }

    /// Actions the gate refused.
    pub fn refused(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Refused { .. }))
    }

    /// Actions not sent this pass.
    pub fn deferred(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Deferred { .. }))
    }

    /// Disruptive actions held by the blast-radius limit.
    pub fn rate_limited(&self) -> usize {
        self.count(|o| matches!(o, Outcome::RateLimited { .. }))
    }
}

/// Per-guest back-off after failed actions.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
}

/// What paces the engine from outside. The daemon implements it over the hub's control
/// envelope; reconcile never sees the hub itself.
pub trait Pacing: Send + Sync {
    /// The pass interval asked for; `None` keeps [`EngineOptions::default_interval`].
    fn interval(&self) -> Option<Duration>;
    /// The desired-state generation announced; a change wakes the engine at once.
    fn generation(&self) -> u64;
    /// Whether every mutation is held (passes still read and plan).
    fn held(&self) -> bool;
    /// Why mutations are held, in a sentence, when the source has more to say than the
    /// hub's `blocked`.
    fn hold_reason(&self) -> Option<String> {
        None
    }
}

/// Told how every pass of [`Engine::run`] ended (for the daemon's status file and
/// metrics); called on the engine's thread after the pass, so it must be quick.
pub trait PassObserver: Send + Sync {
    /// One pass ended with `result`.
    fn pass_done(&self, result: &Result<PassReport, EngineError>);
}

/// The reconcile engine. Share it behind an `Arc`; passes do not overlap.
pub struct Engine {
    client: Client,
    queue: Queue,
    gate: Arc<Gate>,
    journal: Arc<Journal>,
    provider: Arc<dyn DesiredProvider>,
    norm: Arc<Normalizers>,
    clock: Arc<dyn Clock>,
    shutdown: Shutdown,
    pacing: Option<Arc<dyn Pacing>>,
    opts: EngineOptions,
    backoff: Mutex<HashMap<u32, Backoff>>,
    backoff_clock: BackoffClock,
    unresolved: Arc<Mutex<Vec<Pending>>>,
    pass_lock: Mutex<()>,
    /// The guests the last desired state managed, to see which a new one drops.
    last_managed: Mutex<Option<BTreeSet<u32>>>,
    /// Destroy deltas already gated (and audited), so each is decided once.
    gated_deltas: Mutex<BTreeSet<u32>>,
    skips: Mutex<BTreeMap<u32, String>>,
    /// Refused shrinks already audited (vmid → the size asked for), so each is audited
    /// once, not every pass.
    shrinks: Mutex<BTreeMap<u32, u64>>,
    blast: Limiter,
    observer: std::sync::OnceLock<Arc<dyn PassObserver>>,
}

/// The monotonic time back-off deadlines are measured on.
pub(crate) type BackoffClock = Arc<dyn Fn() -> Instant + Send + Sync>;

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("host_id", &self.opts.host_id)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// Reads the guest list, then every guest's config with up to `max_parallel` reads at
/// once. A config that cannot be read leaves that guest's `config` `None`.
pub(crate) fn read_actual(
    client: &Client,
    max_parallel: usize,
) -> Result<ActualState, proxmox::ProxmoxError> {
    let listed = client.list_lxc()?;
    let next = AtomicUsize::new(0);
    let configs: Mutex<BTreeMap<u32, Option<proxmox::GuestConfig>>> = Mutex::new(BTreeMap::new());
    let workers = max_parallel.clamp(1, listed.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(g) = listed.get(i) else { break };
                    let cfg = match client.guest_config(g.vmid) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            crate::warn!(
                                reconcile_guest_config_unreadable,
                                "guest config unreadable; its spec is not reconciled this pass",
                                vmid = g.vmid,
                                error = e
                            );
                            None
                        }
                    };
                    lock(&configs).insert(g.vmid, cfg);
                }
            });
        }
    });
    let mut configs = configs.into_inner().unwrap_or_else(|p| p.into_inner());
    let guests = listed
        .into_iter()
        .map(|g| {
            let config = configs.remove(&g.vmid).flatten();
            let actual = ActualGuest {
                vmid: g.vmid,
                status: g.status,
                lock: g.lock,
                template: g.template,
                config,
            };
            (g.vmid, actual)
        })
        .collect();
    Ok(ActualState { guests })
}

impl Engine {
    /// An engine mutating through `queue` (shared with every other mutation source),
    /// deciding with `gate` and journaling to `journal`.
    pub fn new(
        client: Client,
        queue: Queue,
        gate: Arc<Gate>,
        journal: Arc<Journal>,
        provider: Arc<dyn DesiredProvider>,
        shutdown: Shutdown,
        opts: EngineOptions,
    ) -> Engine {
        Engine {
            client,
            queue,
            gate,
            journal,
            provider,
            norm: Arc::new(Normalizers::default()),
            clock: Arc::new(SystemClock),
            shutdown,
            pacing: None,
            backoff: Mutex::new(HashMap::new()),
            backoff_clock: Arc::new(Instant::now),
            unresolved: Arc::new(Mutex::new(Vec::new())),
            pass_lock: Mutex::new(()),
            last_managed: Mutex::new(None),
            gated_deltas: Mutex::new(BTreeSet::new()),
            skips: Mutex::new(BTreeMap::new()),
            shrinks: Mutex::new(BTreeMap::new()),
            blast: Limiter::new(opts.max_disruptive_per_hour),
            observer: std::sync::OnceLock::new(),
            opts,
        }
    }

    /// Tells `observer` how every pass of [`Engine::run`] ends; `false` (and nothing
    /// changes) when one is already set.
    pub fn observe_passes(&self, observer: Arc<dyn PassObserver>) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// Uses `norm` instead of the default normalizers.
    pub fn with_normalizers(mut self, norm: Normalizers) -> Engine {
        self.norm = Arc::new(norm);
        self
    }

    /// Uses `clock` for journal timestamps.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Engine {
        self.clock = clock;
        self
    }

    /// Measures back-off deadlines on `now` instead of [`Instant::now`], so a test can
    /// step time and count the retries a back-off allows.
    pub fn with_backoff_clock(mut self, now: BackoffClock) -> Engine {
        self.backoff_clock = now;
        self
    }

    /// Takes the operator's `resume --rate-limit` requests from `state_dir`'s marker
    /// (see `super::blast`); without it held actions wait for the window only.
    pub fn with_rate_limit_resume(mut self, state_dir: &std::path::Path) -> Engine {
        self.blast = Limiter::new(self.opts.max_disruptive_per_hour).with_marker(
            super::blast::resume_marker_path(state_dir),
            Arc::new(crate::store::OsIo),
        );
        self
    }

    /// Follows `pacing` (the daemon's is the hub's envelope): its interval paces
    /// [`Engine::run`], a new generation wakes it, and `held` holds every mutation.
    pub fn with_pacing(mut self, pacing: Arc<dyn Pacing>) -> Engine {
        self.pacing = Some(pacing);
        self
    }

    /// Guests backing off now, with their consecutive failures.
    pub fn backing_off(&self) -> Vec<(u32, u32)> {
        let now = (self.backoff_clock)();
        let mut v: Vec<_> = lock(&self.backoff)
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(vmid, b)| (*vmid, b.failures))
            .collect();
        v.sort_unstable();
        v
    }

    fn held(&self) -> bool {
        self.pacing.as_ref().is_some_and(|p| p.held())
    }

    /// Runs one pass: desired + actual → plan → gate → queue → journal, waiting for
    /// every dispatched action. Per-action failures are in the report.
    pub fn pass(&self) -> Result<PassReport, EngineError> {
        let _one_at_a_time = lock(&self.pass_lock);
        let reattached = self.reattach()?;
        let desired = self.provider.desired().map_err(EngineError::Desired)?;
        let actual =
            read_actual(&self.client, self.opts.max_parallel).map_err(EngineError::ListGuests)?;
        let unreadable = actual
            .guests
            .values()
            .filter(|g| g.config.is_none())
            .map(|g| g.vmid)
            .collect();
        let planned = plan(&desired, &actual, &self.norm);
        let destroy_deltas = self.gate_destroy_deltas(&desired, &actual);
        self.log_skips(&planned);
        self.audit_shrinks(&planned);
        let in_flight: HashMap<u32, String> = self
            .journal
            .in_flight()
            .into_iter()
            .map(|r| (r.vmid, r.op_id))
            .collect();
        let held = self.held();
        let now = (self.backoff_clock)();
        let mut budget = self.blast.begin(&self.journal, self.clock.now());
        let failed_this_pass = Arc::new(Mutex::new(HashSet::new()));

        enum Slot {
            Done(ActionResult),
            Queued(
                super::queue::JobHandle<Result<ActionResult, ActionJournalError>>,
                Action,
            ),
        }
        let mut slots = Vec::with_capacity(planned.actions.len());
        for action in &planned.actions {
            let deferred = |why: String| {
                Slot::Done(ActionResult {
                    action: action.clone(),
                    op_id: None,
                    outcome: Outcome::Deferred { why },
                })
            };
            let disruptive = is_disruptive(
                action,
                actual
                    .guests
                    .get(&action.vmid)
                    .and_then(|g| g.config.as_ref()),
            );
            let why = if held {
                Some(
                    self.pacing
                        .as_ref()
                        .and_then(|p| p.hold_reason())
                        .unwrap_or_else(|| "the hub asked to hold mutations".to_owned()),
                )
            } else if let Some(op) = in_flight.get(&action.vmid) {
                Some(format!("op {op} is still in flight"))
            } else {
                lock(&self.backoff)
                    .get(&action.vmid)
                    .filter(|b| b.until > now)
                    .map(|b| {
                        format!(
                            "backing off after {} failure(s), {}s left",
                            b.failures,
                            (b.until - now).as_secs()
                        )
                    })
            };
            if let Some(why) = why {
                if disruptive {
                    budget.carry(action);
                }
                slots.push(deferred(why));
                continue;
            }
            if disruptive {
                match budget.admit(action) {
                    Admit::Go => {}
                    Admit::Released => crate::info!(
                        rate_limit_released,
                        "held disruptive action released by the operator's resume",
                        vmid = action.vmid,
                        action = action.kind
                    ),
                    Admit::Held { first, in_window } => {
                        if first {
                            self.audit_rate_limited(action, budget.limit(), in_window);
                        }
                        slots.push(Slot::Done(ActionResult {
                            action: action.clone(),
                            op_id: None,
                            outcome: Outcome::RateLimited {
                                limit: budget.limit(),
                                in_window,
                            },
                        }));
                        continue;
                    }
                }
            }
            let intent = intent_for(&self.opts.host_id, action);
            if let Decision::Refused { reason } =
                self.gate.authorize(&intent, None, &GuestNow::NotRead)
            {
                crate::error!(
                    planned_action_refused,
                    "gate refused a planned action",
                    vmid = action.vmid,
                    action = action.kind,
                    refusal = reason.code()
                );
                slots.push(Slot::Done(ActionResult {
                    action: action.clone(),
                    op_id: None,
                    outcome: Outcome::Refused {
                        code: reason.code().to_owned(),
                    },
                }));
                continue;
            }
            let job = self.job(action.clone(), Arc::clone(&failed_this_pass), disruptive);
            match self.queue.submit(action.vmid, move || job.run()) {
                Ok(h) => slots.push(Slot::Queued(h, action.clone())),
                Err(e) => {
                    let why = match e {
                        SubmitError::Closed => "the queue is closed (shutting down)".to_owned(),
                        other => other.to_string(),
                    };
                    slots.push(deferred(why));
                }
            }
        }
        self.blast.end(budget);

        let mut results = Vec::with_capacity(slots.len());
        let mut fatal = None;
        for slot in slots {
            let r = match slot {
                Slot::Done(r) => r,
                Slot::Queued(h, action) => match h.wait() {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        fatal.get_or_insert(e);
                        continue;
                    }
                    Err(p) => ActionResult {
                        action,
                        op_id: None,
                        outcome: Outcome::Failed {
                            transient: false,
                            error: p.to_string(),
                        },
                    },
                },
            };
            self.account(&r);
            results.push(r);
        }
        if let Some(e) = fatal {
            return Err(e.into());
        }
        let mut guest_states = BTreeMap::new();
        for g in actual.guests.values() {
            let word = match g.status {
                RunState::Running => "running",
                RunState::Stopped => "stopped",
                RunState::Other(_) => "other",
            };
            *guest_states.entry(word).or_insert(0) += 1;
        }
        let report = PassReport {
            generation: desired.generation,
            guest_states,
            plan: planned,
            results,
            unreadable,
            reattached,
            destroy_deltas,
        };
        if !report.results.is_empty() {
            crate::info!(
                reconcile_pass_done,
                "reconcile pass done",
                generation = report.generation,
                planned = report.plan.actions.len(),
                applied = report.applied(),
                failed = report.failed(),
                refused = report.refused(),
                deferred = report.deferred(),
                rate_limited = report.rate_limited()
            );
        }
        Ok(report)
    }

    /// A guest the previous desired state managed and the new one drops, while Proxmox
    /// still has it, reads as a destroy: the plan never acts on it, but the gate hears
    /// it, unsigned, so the refusal (`pending_signature`) is audited where the hub and
    /// the operator see it. Nothing is ever sent for it; a destroy only runs as an
    /// operator-signed op. Each drop is gated once; a guest desired again is forgotten.
    fn gate_destroy_deltas(
        &self,
        desired: &super::desired::DesiredState,
        actual: &ActualState,
    ) -> Vec<(u32, String)> {
        let managed: BTreeSet<u32> = desired.guests.keys().copied().collect();
        let previous = lock(&self.last_managed).replace(managed.clone());
        let mut gated = lock(&self.gated_deltas);
        gated.retain(|vmid| !managed.contains(vmid) && actual.guests.contains_key(vmid));
        let Some(previous) = previous else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for &vmid in previous.difference(&managed) {
            if !actual.guests.contains_key(&vmid) || !gated.insert(vmid) {
                continue;
            }
            let intent = Intent::new(
                OpClass::GuestDestroy,
                self.opts.host_id.clone(),
                Some(vmid.to_string()),
            );
            let code = match self.gate.authorize(&intent, None, &GuestNow::NotRead) {
                Decision::Refused { reason } => reason.code().to_owned(),
                Decision::Allowed { .. } => "allowed_not_planned".to_owned(),
            };
            crate::warn!(
                guest_dropped_from_desired,
                "desired state dropped a guest that still exists; reconcile never destroys it",
                vmid = vmid,
                generation = desired.generation,
                gate = code
            );
            out.push((vmid, code));
        }
        out
    }

    /// Audits (through the gate, as `rate_limited`, which the gate also logs as its
    /// `gate_decision`) a disruptive action the blast-radius limit holds; called once
    /// per hold, not every pass.
    fn audit_rate_limited(&self, action: &Action, limit: u32, in_window: usize) {
        let intent = intent_for(&self.opts.host_id, action);
        self.gate.refuse(
            &intent,
            Refusal::RateLimited,
            format!(
                "limit of {limit} disruptive actions per rolling hour reached ({in_window} \
                 sent); held until the window allows it or an operator runs \
                 `felhom-agent resume --rate-limit`"
            ),
            None,
        );
    }

    /// A job for `action` on this engine's client, journal and clock; `disruptive`
    /// marks its journal records for the blast-radius window.
    fn job(
        &self,
        action: Action,
        failed_this_pass: Arc<Mutex<HashSet<u32>>>,
        disruptive: bool,
    ) -> Job {
        Job {
            client: self.client.clone(),
            journal: Arc::clone(&self.journal),
            clock: Arc::clone(&self.clock),
            shutdown: self.shutdown.clone(),
            wait: self.opts.wait,
            shutdown_timeout_seconds: self.opts.shutdown_timeout_seconds,
            failed_this_pass,
            unresolved: Arc::clone(&self.unresolved),
            action,
            disruptive,
        }
    }

    /// Waits again, each on its guest's lane, for the tasks whose wait ended early in
    /// an earlier pass; journals how they ended. Never sends anything.
    fn reattach(&self) -> Result<Vec<ActionResult>, EngineError> {
        let pending = std::mem::take(&mut *lock(&self.unresolved));
        let mut handles = Vec::new();
        for p in pending {
            // Only `finish` runs: the records it steps carry the flag they were sent with.
            let job = self.job(
                p.action.clone(),
                Arc::new(Mutex::new(HashSet::new())),
                false,
            );
            crate::info!(
                task_wait_reattached,
                "waiting again for a reconcile task",
                op_id = p.running.op_id,
                upid = p.upid
            );
            let vmid = p.action.vmid;
            match self.queue.submit(vmid, move || {
                job.finish(&p.running.op_id, &p.running, &p.upid)
            }) {
                Ok(h) => handles.push(h),
                // Shutting down: the op stays in flight for Recover at the next start.
                Err(_) => break,
            }
        }
        let mut out = Vec::new();
        for h in handles {
            match h.wait() {
                Ok(Ok(r)) => {
                    self.account(&r);
                    out.push(r);
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(p) => crate::error!(task_wait_panicked, "re-attached wait panicked", error = p),
            }
        }
        Ok(out)
    }

    /// Logs each desired guest the plan leaves alone (locked, absent, config
    /// unreadable) when it starts being skipped or its reason changes, so a guest
    /// stuck behind a stale lock is visible without a line every pass.
    fn log_skips(&self, planned: &Plan) {
        let mut last = lock(&self.skips);
        let now: BTreeMap<u32, String> = planned
            .skipped
            .iter()
            .map(|s| (s.vmid, format!("{}: {}", s.code, s.why)))
            .collect();
        for (vmid, why) in &now {
            if last.get(vmid) != Some(why) {
                crate::info!(
                    guest_left_alone,
                    "guest left alone by reconcile",
                    vmid = vmid,
                    why = why
                );
            }
        }
        *last = now;
    }

    /// Audits (through the gate, as `shrink_refused`, which the gate also logs as its
    /// `gate_decision`) each root disk the desired state wants smaller, once per size
    /// asked for; nothing is ever sent for it.
    fn audit_shrinks(&self, planned: &Plan) {
        let mut audited = lock(&self.shrinks);
        let now: BTreeMap<u32, u64> = planned
            .shrink_refused
            .iter()
            .map(|s| (s.vmid, s.want_bytes))
            .collect();
        for s in &planned.shrink_refused {
            if audited.get(&s.vmid) == Some(&s.want_bytes) {
                continue;
            }
            let mut intent = Intent::new(
                OpClass::Resize,
                self.opts.host_id.clone(),
                Some(s.vmid.to_string()),
            );
            intent.params.insert("disk".into(), "rootfs".into());
            intent
                .params
                .insert("size".into(), s.want_bytes.to_string());
            self.gate.refuse(
                &intent,
                Refusal::ShrinkRefused,
                format!(
                    "rootfs is {} bytes, the desired state asks for {}: a disk is never shrunk",
                    s.have_bytes, s.want_bytes
                ),
                None,
            );
        }
        *audited = now;
    }

    /// Updates the guest's back-off from an action's outcome.
    fn account(&self, r: &ActionResult) {
        let vmid = r.action.vmid;
        let mut backoff = lock(&self.backoff);
        match &r.outcome {
            Outcome::Applied => {
                backoff.remove(&vmid);
            }
            // A wait cut short by the shutdown says nothing about the guest.
            Outcome::Unresolved { .. } if self.shutdown.is_triggered() => {}
            Outcome::Failed { .. } | Outcome::Unresolved { .. } => {
                let failures = backoff.get(&vmid).map_or(0, |b| b.failures) + 1;
                let delay = doubling(self.opts.backoff_initial, self.opts.backoff_cap, failures);
                backoff.insert(
                    vmid,
                    Backoff {
                        failures,
                        until: (self.backoff_clock)() + delay,
                    },
                );
                crate::warn!(
                    guest_backoff,
                    "guest backs off after a failed action",
                    vmid = vmid,
                    failures = failures,
                    seconds = delay.as_secs()
                );
            }
            Outcome::Refused { .. } | Outcome::Deferred { .. } | Outcome::RateLimited { .. } => {}
        }
    }

    /// Runs passes until shutdown: one at once, then one per interval (the hub's poll
    /// interval a [`Pacing`] asks for), and one at once when the desired state
    /// changes. A failed pass is logged and retried next interval; a journal failure
    /// ends the loop with the error (the caller exits non-zero).
    pub fn run(&self) -> Result<(), EngineError> {
        let mut generation = self.hub_generation();
        while !self.shutdown.is_triggered() {
            let result = self.pass();
            if let Some(observer) = self.observer.get() {
                observer.pass_done(&result);
            }
            match result {
                Ok(_) => {}
                Err(e @ EngineError::Journal { .. }) => {
                    crate::error!(
                        reconcile_stopped,
                        "reconcile stops: journal write failed",
                        error = e
                    );
                    return Err(e);
                }
                Err(e) => crate::warn!(reconcile_pass_failed, "reconcile pass failed", error = e),
            }
            let due = Instant::now() + self.interval();
            loop {
                let left = due.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                if self.shutdown.sleep(left.min(self.opts.check_every)) {
                    return Ok(());
                }
                if self.provider.changed() {
                    crate::info!(desired_changed, "desired state changed: reconciling now");
                    break;
                }
                let now_gen = self.hub_generation();
                if now_gen != generation {
                    generation = now_gen;
                    crate::info!(
                        hub_generation_changed,
                        "hub desired generation changed: reconciling now",
                        generation = now_gen
                    );
                    break;
                }
            }
        }
        Ok(())
    }

    fn hub_generation(&self) -> u64 {
        self.pacing.as_ref().map_or(0, |p| p.generation())
    }

    fn interval(&self) -> Duration {
        self.pacing
            .as_ref()
            .and_then(|p| p.interval())
            .unwrap_or(self.opts.default_interval)
    }
}
