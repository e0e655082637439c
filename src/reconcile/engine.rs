//! The reconcile engine: one pass reads desired and actual state, plans, passes each
//! action through the gate, and runs it on the guest's queue lane with every step
//! journaled; [`Engine::run`] repeats passes on the poll cadence.
//!
//! The order inside an action is load-bearing: the `started` record is durable before
//! the mutation is sent; the UPID is journaled (`task_running`) before the wait; the
//! terminal record comes last. A synchronous config write is success. A failed action
//! is counted and backs its guest off; other guests go on. A journal write that fails
//! ends the pass with [`EngineError::Journal`] (the process must exit: the kernel may
//! have dropped the dirty pages). The engine never mutates Proxmox outside the queue,
//! never re-dispatches an op that is still in flight, and never runs an action the
//! gate refused. [`plan_report`] is the library side of `felhom-agent plan`: the same
//! reads and plan, the gate's dry-run word, nothing executed.

use crate::base::sync::lock;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::classify::{Intent, OpClass};
use super::desired::{DesiredError, DesiredProvider};
use super::gate::{Decision, Gate, GuestNow};
use super::journal::{Journal, JournalError, JournalRecord, OpState};
use super::normalize::Normalizers;
use super::plan::{Action, ActionKind, ActualGuest, ActualState, Plan, plan};
use super::queue::{Queue, SubmitError};
use crate::base::shutdown::Shutdown;
use crate::base::time::{Clock, SystemClock};
use crate::hub::poller::SharedEnvelope;
use crate::proxmox::{self, Client, ConfigChange, TaskOutcome, Upid, WaitError, WaitOptions};

/// How long one pass waits for a task it sent (start and config tasks take seconds; a
/// lock wait can take minutes) before leaving it in flight for the next pass. A stop
/// waits at least its shutdown timeout plus [`SHUTDOWN_WAIT_SLACK`].
pub const PASS_TASK_WAIT: Duration = Duration::from_secs(120);

/// What a stop's wait allows beyond its shutdown timeout: Proxmox kills the guest at the
/// timeout, and the kill, the worker's exit and the next poll take a few seconds more.
pub const SHUTDOWN_WAIT_SLACK: Duration = Duration::from_secs(30);

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
    /// The pass interval when no hub envelope says otherwise.
    pub default_interval: Duration,
    /// A stop is a clean shutdown: Proxmox gives the guest this long, then stops it
    /// hard (`status/shutdown` with `timeout` and `forceStop=1`).
    pub shutdown_timeout_seconds: u32,
}

impl EngineOptions {
    /// Defaults: 4 parallel reads, task waits polling 1 s → 5 s for at most
    /// [`PASS_TASK_WAIT`] per pass, back-off 30 s doubling to 15 min, a change check
    /// every second, a pass every 300 s, 120 s for a guest to shut down.
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
            check_every: Duration::from_secs(1),
            default_interval: Duration::from_secs(300),
            shutdown_timeout_seconds: u32::try_from(
                crate::config::DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
            )
            .unwrap_or(120),
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
    ListGuests(proxmox::Error),
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

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EngineError::Desired(e) => Some(e),
            EngineError::ListGuests(e) => Some(e),
            EngineError::Journal { source, .. } => Some(source),
        }
    }
}

/// How one action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied (task OK, task with warnings, or a synchronous config write).
    Applied,
    /// The gate refused it; nothing was sent.
    Refused {
        /// The refusal code (`pending_signature`, ...).
        code: String,
    },
    /// Not sent: the guest is backing off after earlier failures, an op for it is
    /// still in flight, an earlier action for it failed in this pass, or the hub asked
    /// to hold mutations.
    Deferred {
        /// Why.
        why: String,
    },
    /// Sent (or tried) and failed.
    Failed {
        /// Whether it should pass by itself (lock, timeout, 5xx).
        transient: bool,
        /// What failed.
        error: String,
    },
    /// Sent, but the wait ended (timeout, shutdown) before the task did: the op stays
    /// in flight in the journal. The next pass waits for the same task again (after a
    /// shutdown, Recover does at the next start); it is never sent twice.
    Unresolved {
        /// The task.
        upid: String,
        /// Why the wait ended.
        why: String,
    },
}

/// One action of a pass and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionResult {
    /// The action.
    pub action: Action,
    /// Its journal op id, when it got that far.
    pub op_id: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
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
}

/// Per-guest back-off after failed actions.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
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
    envelope: Option<SharedEnvelope>,
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
}

/// The monotonic time back-off deadlines are measured on.
pub type BackoffClock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// A task this engine dispatched whose wait ended before the task did.
#[derive(Debug, Clone)]
struct Pending {
    action: Action,
    running: JournalRecord,
    upid: Upid,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("host_id", &self.opts.host_id)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// The op class of a planned action.
pub fn class_of(kind: ActionKind) -> OpClass {
    match kind {
        ActionKind::SetConfig => OpClass::SetConfig,
        ActionKind::Start => OpClass::Start,
        ActionKind::Stop => OpClass::Stop,
    }
}

/// The gate's vocabulary for a planned action.
pub fn intent_for(host_id: &str, action: &Action) -> Intent {
    let mut intent = Intent::new(
        class_of(action.kind),
        host_id,
        Some(action.vmid.to_string()),
    );
    intent.params = action.params.clone();
    intent
}

/// Reads the guest list, then every guest's config with up to `max_parallel` reads at
/// once. A config that cannot be read leaves that guest's `config` `None`.
pub fn read_actual(client: &Client, max_parallel: usize) -> Result<ActualState, proxmox::Error> {
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
            envelope: None,
            opts,
            backoff: Mutex::new(HashMap::new()),
            backoff_clock: Arc::new(Instant::now),
            unresolved: Arc::new(Mutex::new(Vec::new())),
            pass_lock: Mutex::new(()),
            last_managed: Mutex::new(None),
            gated_deltas: Mutex::new(BTreeSet::new()),
            skips: Mutex::new(BTreeMap::new()),
        }
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

    /// Follows the hub's envelope: its poll interval paces [`Engine::run`], a new
    /// `desired_generation` wakes it, and `blocked` holds every mutation.
    pub fn with_envelope(mut self, envelope: SharedEnvelope) -> Engine {
        self.envelope = Some(envelope);
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
        self.envelope
            .as_ref()
            .and_then(SharedEnvelope::get)
            .is_some_and(|e| e.blocked)
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
        let in_flight: HashMap<u32, String> = self
            .journal
            .in_flight()
            .into_iter()
            .map(|r| (r.vmid, r.op_id))
            .collect();
        let held = self.held();
        let now = (self.backoff_clock)();
        let failed_this_pass = Arc::new(Mutex::new(HashSet::new()));

        enum Slot {
            Done(ActionResult),
            Queued(
                super::queue::JobHandle<Result<ActionResult, EngineError>>,
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
            if held {
                slots.push(deferred("the hub asked to hold mutations".into()));
                continue;
            }
            if let Some(op) = in_flight.get(&action.vmid) {
                slots.push(deferred(format!("op {op} is still in flight")));
                continue;
            }
            if let Some(b) = lock(&self.backoff).get(&action.vmid)
                && b.until > now
            {
                slots.push(deferred(format!(
                    "backing off after {} failure(s), {}s left",
                    b.failures,
                    (b.until - now).as_secs()
                )));
                continue;
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
            let job = Job {
                client: self.client.clone(),
                journal: Arc::clone(&self.journal),
                clock: Arc::clone(&self.clock),
                shutdown: self.shutdown.clone(),
                wait: self.opts.wait,
                shutdown_timeout_seconds: self.opts.shutdown_timeout_seconds,
                failed_this_pass: Arc::clone(&failed_this_pass),
                unresolved: Arc::clone(&self.unresolved),
                action: action.clone(),
            };
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
            return Err(e);
        }
        let report = PassReport {
            generation: desired.generation,
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
                deferred = report.deferred()
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

    /// Waits again, each on its guest's lane, for the tasks whose wait ended early in
    /// an earlier pass; journals how they ended. Never sends anything.
    fn reattach(&self) -> Result<Vec<ActionResult>, EngineError> {
        let pending = std::mem::take(&mut *lock(&self.unresolved));
        let mut handles = Vec::new();
        for p in pending {
            let job = Job {
                client: self.client.clone(),
                journal: Arc::clone(&self.journal),
                clock: Arc::clone(&self.clock),
                shutdown: self.shutdown.clone(),
                wait: self.opts.wait,
                shutdown_timeout_seconds: self.opts.shutdown_timeout_seconds,
                failed_this_pass: Arc::new(Mutex::new(HashSet::new())),
                unresolved: Arc::clone(&self.unresolved),
                action: p.action.clone(),
            };
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
                Ok(Err(e)) => return Err(e),
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
            .map(|s| (s.vmid, s.why.clone()))
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
                let shift = failures.saturating_sub(1).min(16);
                let delay = self
                    .opts
                    .backoff_initial
                    .saturating_mul(1 << shift)
                    .min(self.opts.backoff_cap);
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
            Outcome::Refused { .. } | Outcome::Deferred { .. } => {}
        }
    }

    /// Runs passes until shutdown: one at once, then one per interval (the hub's poll
    /// interval when an envelope is followed), and one at once when the desired state
    /// changes. A failed pass is logged and retried next interval; a journal failure
    /// ends the loop with the error (the caller exits non-zero).
    pub fn run(&self) -> Result<(), EngineError> {
        let mut generation = self.hub_generation();
        while !self.shutdown.is_triggered() {
            match self.pass() {
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
        self.envelope
            .as_ref()
            .and_then(SharedEnvelope::get)
            .map_or(0, |e| e.desired_generation)
    }

    fn interval(&self) -> Duration {
        self.envelope
            .as_ref()
            .and_then(SharedEnvelope::get)
            .and_then(|e| e.poll_interval_seconds)
            .map_or(self.opts.default_interval, Duration::from_secs)
    }
}

/// One action as it runs on its guest's lane.
struct Job {
    client: Client,
    journal: Arc<Journal>,
    clock: Arc<dyn Clock>,
    shutdown: Shutdown,
    wait: WaitOptions,
    shutdown_timeout_seconds: u32,
    failed_this_pass: Arc<Mutex<HashSet<u32>>>,
    unresolved: Arc<Mutex<Vec<Pending>>>,
    action: Action,
}

/// The journal params of a stop, as sent to `status/shutdown`: Recover reads `timeout`
/// to look for a `vzshutdown` task (a stop journaled without it was a `vzstop`).
pub fn shutdown_params(timeout_seconds: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("timeout".to_owned(), timeout_seconds.to_string()),
        ("forceStop".to_owned(), "1".to_owned()),
    ])
}

impl Job {
    /// What the op sends, as journaled: the action's params, and for a stop the
    /// shutdown's `timeout` and `forceStop`.
    fn sent_params(&self) -> BTreeMap<String, String> {
        let mut params = self.action.params.clone();
        if self.action.kind == ActionKind::Stop {
            params.extend(shutdown_params(self.shutdown_timeout_seconds));
        }
        params
    }

    /// How long to wait for the op's task: a shutdown may take its whole timeout (the
    /// guest ignoring it until Proxmox kills it), so its wait covers that; a wait that
    /// still ends first leaves the op in flight, waited again by the next pass.
    fn wait_options(&self) -> WaitOptions {
        let mut wait = self.wait;
        if self.action.kind == ActionKind::Stop {
            let shutdown = Duration::from_secs(u64::from(self.shutdown_timeout_seconds));
            wait.timeout = wait.timeout.max(shutdown + SHUTDOWN_WAIT_SLACK);
        }
        wait
    }

    fn record(&self, rec: &JournalRecord) -> Result<(), EngineError> {
        self.journal
            .append(rec)
            .map_err(|source| EngineError::Journal {
                op_id: rec.op_id.clone(),
                source,
            })
    }

    fn result(&self, op_id: Option<String>, outcome: Outcome) -> ActionResult {
        if !matches!(outcome, Outcome::Applied) {
            lock(&self.failed_this_pass).insert(self.action.vmid);
        }
        ActionResult {
            action: self.action.clone(),
            op_id,
            outcome,
        }
    }

    fn run(self) -> Result<ActionResult, EngineError> {
        let a = &self.action;
        if lock(&self.failed_this_pass).contains(&a.vmid) {
            return Ok(ActionResult {
                action: a.clone(),
                op_id: None,
                outcome: Outcome::Deferred {
                    why: "an earlier action for this guest failed in this pass".into(),
                },
            });
        }
        let class = class_of(a.kind);
        let op_id = self.journal.new_op_id(&format!("{}-{}", a.kind, a.vmid));
        let mut started = JournalRecord::started(&op_id, a.vmid, class, self.clock.now());
        started.params = self.sent_params();
        // Durable before anything reaches Proxmox.
        self.record(&started)?;
        crate::store::faultpoint::reached("benign:after-started");

        let sent = match a.kind {
            ActionKind::SetConfig => self.client.set_config(
                a.vmid,
                &ConfigChange {
                    set: a
                        .params
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    delete: Vec::new(),
                    digest: a.digest.clone(),
                },
            ),
            ActionKind::Start => self.client.start(a.vmid).map(Some),
            // A clean shutdown, hard-stopped by Proxmox once the timeout passes.
            ActionKind::Stop => self
                .client
                .shutdown(a.vmid, Some(self.shutdown_timeout_seconds))
                .map(Some),
        };
        let upid = match sent {
            Ok(upid) => {
                crate::store::faultpoint::reached("benign:after-post");
                upid
            }
            Err(e) => {
                let transient = e.is_transient();
                let mut rec = started.step(OpState::Failed, self.clock.now());
                rec.detail = Some(e.to_string());
                self.record(&rec)?;
                crate::warn!(
                    action_failed,
                    "reconcile action failed",
                    op_id = op_id,
                    vmid = a.vmid,
                    action = a.kind,
                    transient = transient,
                    may_have_run = e.outcome_unknown(),
                    error = e
                );
                let outcome = Outcome::Failed {
                    transient,
                    error: e.to_string(),
                };
                return Ok(self.result(Some(op_id), outcome));
            }
        };
        let Some(upid) = upid else {
            // A synchronous config write: applied when the PUT answered.
            self.record(&started.step(OpState::Succeeded, self.clock.now()))?;
            crate::info!(
                action_applied,
                "reconcile action applied",
                op_id = op_id,
                vmid = a.vmid,
                action = a.kind,
                reason = a.reason
            );
            return Ok(self.result(Some(op_id), Outcome::Applied));
        };
        let mut running = started.step(OpState::TaskRunning, self.clock.now());
        running.upid = Some(upid.to_string());
        // The UPID is durable before the wait, so a crash mid-wait re-attaches to it.
        self.record(&running)?;
        crate::store::faultpoint::reached("benign:after-upid");
        self.finish(&op_id, &running, &upid)
    }

    fn finish(
        &self,
        op_id: &str,
        running: &JournalRecord,
        upid: &Upid,
    ) -> Result<ActionResult, EngineError> {
        let a = &self.action;
        match self
            .client
            .wait_task(upid, &self.wait_options(), &self.shutdown)
        {
            Ok(outcome) => {
                crate::store::faultpoint::reached("benign:after-wait");
                let mut rec = running.step(OpState::Succeeded, self.clock.now());
                if let TaskOutcome::Warnings { count, .. } = outcome {
                    rec.detail = Some(format!("task ended with {count} warning(s)"));
                }
                self.record(&rec)?;
                crate::info!(
                    action_applied,
                    "reconcile action applied",
                    op_id = op_id,
                    vmid = a.vmid,
                    action = a.kind,
                    reason = a.reason
                );
                Ok(self.result(Some(op_id.to_owned()), Outcome::Applied))
            }
            Err(WaitError::Failed(task)) => {
                let mut rec = running.step(OpState::Failed, self.clock.now());
                rec.detail = Some(task.to_string());
                self.record(&rec)?;
                crate::warn!(
                    action_failed,
                    "reconcile task failed",
                    op_id = op_id,
                    vmid = a.vmid,
                    action = a.kind,
                    transient = task.is_transient(),
                    error = task
                );
                let outcome = Outcome::Failed {
                    transient: task.is_transient(),
                    error: task.to_string(),
                };
                Ok(self.result(Some(op_id.to_owned()), outcome))
            }
            Err(e) => {
                // Timeout, shutdown or an unreadable status: the task may still run.
                // Leave the op in flight; it is re-attached, never re-sent.
                crate::warn!(
                    action_wait_abandoned,
                    "stopped waiting for a reconcile task; it stays in flight",
                    op_id = op_id,
                    vmid = a.vmid,
                    upid = upid,
                    error = e
                );
                let outcome = Outcome::Unresolved {
                    upid: upid.to_string(),
                    why: e.to_string(),
                };
                if !matches!(e, WaitError::Shutdown { .. }) {
                    lock(&self.unresolved).push(Pending {
                        action: a.clone(),
                        running: running.clone(),
                        upid: upid.clone(),
                    });
                }
                Ok(self.result(Some(op_id.to_owned()), outcome))
            }
        }
    }
}

/// Why `felhom-agent plan` could not show a plan.
#[derive(Debug)]
#[non_exhaustive]
pub enum PlanReportError {
    /// The configuration lacks what a plan needs (the `proxmox` section, its secret).
    Setup(crate::app::wiring::LiveSetupError),
    /// The desired state could not be read.
    Desired(DesiredError),
    /// The guest list could not be read from Proxmox.
    ListGuests(proxmox::Error),
    /// The journal snapshot the gate reads could not be made.
    Journal(String),
    /// Writing the report failed.
    Output(std::io::Error),
}

impl fmt::Display for PlanReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanReportError::Setup(e) => write!(f, "plan: {e}"),
            PlanReportError::Desired(e) => write!(f, "plan: {e}"),
            PlanReportError::ListGuests(e) => write!(f, "plan: cannot list guests: {e}"),
            PlanReportError::Journal(why) => write!(f, "plan: journal snapshot: {why}"),
            PlanReportError::Output(e) => write!(f, "plan: cannot write the report: {e}"),
        }
    }
}

impl std::error::Error for PlanReportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PlanReportError::Setup(e) => Some(e),
            PlanReportError::Desired(e) => Some(e),
            PlanReportError::ListGuests(e) => Some(e),
            PlanReportError::Output(e) => Some(e),
            PlanReportError::Journal(_) => None,
        }
    }
}

/// What `felhom-agent plan` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSummary {
    /// The plan.
    pub plan: Plan,
    /// Actions the gate would allow.
    pub allowed: usize,
    /// Actions the gate would refuse (with its code).
    pub refused: Vec<(u32, String)>,
}

/// The desired state as the daemon would read it: the file when one is configured,
/// else nothing managed.
pub fn configured_provider(cfg: &crate::config::Config) -> Arc<dyn DesiredProvider> {
    match &cfg.reconcile.desired_file {
        Some(path) => Arc::new(super::desired::FileProvider::new(path)),
        None => Arc::new(super::desired::EmptyProvider),
    }
}

/// `felhom-agent plan`: reads desired and actual state, and writes each action the
/// next pass would take with the gate's word on it ([`Gate::dry_run`]: no signature
/// verified, no nonce burnt, nothing audited). Executes nothing and writes nothing in
/// the state directory: the gate reads a private copy of the journal.
pub fn plan_report(
    cfg: &crate::config::Config,
    out: &mut dyn std::io::Write,
) -> Result<PlanSummary, PlanReportError> {
    let section = cfg.proxmox.as_ref().ok_or(PlanReportError::Setup(
        crate::app::wiring::LiveSetupError::NoProxmoxSection,
    ))?;
    let client = crate::app::wiring::proxmox_client(section).map_err(PlanReportError::Setup)?;
    let desired = configured_provider(cfg)
        .desired()
        .map_err(PlanReportError::Desired)?;
    let actual =
        read_actual(&client, cfg.reconcile.max_parallel).map_err(PlanReportError::ListGuests)?;
    let planned = plan(&desired, &actual, &Normalizers::default());

    let snapshot = JournalSnapshot::take(&cfg.state_dir.join("journal.log"))?;
    let in_flight: HashMap<u32, String> = snapshot
        .journal
        .in_flight()
        .into_iter()
        .map(|r| (r.vmid, r.op_id))
        .collect();
    let gate = Gate::new(
        cfg.host_id.clone(),
        None,
        Arc::clone(&snapshot.journal),
        Arc::clone(&snapshot.audit),
    );

    let w = |out: &mut dyn std::io::Write, line: String| {
        writeln!(out, "{line}").map_err(PlanReportError::Output)
    };
    w(
        out,
        format!(
            "desired generation {}: {} managed guest(s); {} guest(s) on node {}",
            desired.generation,
            desired.guests.len(),
            actual.guests.len(),
            section.node
        ),
    )?;
    let mut allowed = 0;
    let mut refused = Vec::new();
    for a in &planned.actions {
        let word = match gate.dry_run(&intent_for(&cfg.host_id, a)) {
            Decision::Allowed { reason, .. } => {
                allowed += 1;
                format!("allowed ({})", reason.code())
            }
            Decision::Refused { reason } => {
                refused.push((a.vmid, reason.code().to_owned()));
                format!("refused ({})", reason.code())
            }
        };
        let mut line = format!(
            "{:>6}  {:<10}  {word}  {}",
            a.vmid,
            a.kind.as_str(),
            a.reason
        );
        if !a.params.is_empty() {
            let params: Vec<String> = a
                .params
                .iter()
                .map(|(k, v)| format!("{k}={}", v.escape_debug()))
                .collect();
            line.push_str(&format!("  [{}]", params.join(", ")));
        }
        if let Some(op) = in_flight.get(&a.vmid) {
            line.push_str(&format!("  (deferred: op {op} in flight)"));
        }
        w(out, line)?;
    }
    for s in &planned.skipped {
        w(out, format!("{:>6}  {:<10}  {}", s.vmid, "skip", s.why))?;
    }
    w(
        out,
        format!(
            "{} action(s) planned: {allowed} allowed, {} refused; nothing was executed",
            planned.actions.len(),
            refused.len()
        ),
    )?;
    Ok(PlanSummary {
        plan: planned,
        allowed,
        refused,
    })
}

/// A private copy of the journal (and an empty audit log) in a temporary directory, so
/// the dry-run gate can read provenance and damage without touching the state dir.
struct JournalSnapshot {
    dir: std::path::PathBuf,
    journal: Arc<Journal>,
    audit: Arc<super::audit::AuditLog>,
}

impl JournalSnapshot {
    fn take(live: &std::path::Path) -> Result<JournalSnapshot, PlanReportError> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("felhom-plan-{}-{nanos}", std::process::id()));
        let fail = |what: &str, e: &dyn fmt::Display| {
            PlanReportError::Journal(format!("{what} {}: {e}", dir.display()))
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| fail("cannot create", &e))?;
        let snapshot = (|| {
            let copy = dir.join("journal.log");
            match std::fs::copy(live, &copy) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail("cannot copy the journal into", &e)),
            }
            let journal = Journal::open(&copy).map_err(|e| fail("cannot open the copy in", &e))?;
            let audit = super::audit::AuditLog::open(&dir.join("audit.log"))
                .map_err(|e| fail("cannot open a scratch audit log in", &e))?;
            Ok((Arc::new(journal), Arc::new(audit)))
        })();
        match snapshot {
            Ok((journal, audit)) => Ok(JournalSnapshot {
                dir,
                journal,
                audit,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }
}

impl Drop for JournalSnapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Why reconcile could not be set up at startup.
#[derive(Debug)]
#[non_exhaustive]
pub enum SetupError {
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
    Audit(super::audit::AuditError),
    /// The configured signers are not valid.
    Signers(crate::authz::ConfigError),
    /// Recovering in-flight ops failed (a journal write): exit non-zero.
    Recover(super::recover::RecoverError),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::StateDir { dir, source } => {
                write!(f, "state_dir {}: {source}", dir.display())
            }
            SetupError::Journal(e) => write!(f, "journal: {e}"),
            SetupError::Audit(e) => write!(f, "audit log: {e}"),
            SetupError::Signers(e) => write!(f, "authz.signers: {e}"),
            SetupError::Recover(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SetupError::StateDir { source, .. } => Some(source),
            SetupError::Journal(e) => Some(e),
            SetupError::Audit(e) => Some(e),
            SetupError::Signers(e) => Some(e),
            SetupError::Recover(e) => Some(e),
        }
    }
}

/// Creates the state directory when missing and sets it 0700: the first step of
/// [`Reconciler::open`], and the daemon's check before it starts any worker, so a state
/// directory that cannot be used stops the start before the hub hears anything.
pub fn prepare_state_dir(dir: &std::path::Path) -> Result<(), SetupError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir_err = |source| SetupError::StateDir {
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
/// [`super::journal::COMPACT_OVER`] (a test build with fault points may lower it).
pub fn journal_compact_threshold() -> u64 {
    crate::store::faultpoint::journal_compact_at(super::journal::COMPACT_OVER)
}

/// Keeps the journal bounded: compacts it (in-flight ops and unexpired applied keys are
/// kept) once it holds more than `threshold` records. The
/// reconciler calls it at start, before Recover; the daemon again every
/// [`crate::app::daemon::JOURNAL_COMPACT_EVERY`]. A compaction that failed before the new file
/// replaced the old one changed nothing: it is logged and `Ok(false)` returned. One that
/// poisoned the journal is the error: the daemon must stop and replay from disk.
/// `at` names the caller in the log line (`at=start` or `at=running`), so an operator
/// (and the crash tests) can tell the start's compaction from the worker's.
pub fn compact_journal(
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
    pub audit: Arc<super::audit::AuditLog>,
    /// The gate every mutation passes.
    pub gate: Arc<Gate>,
    /// The queue every mutation runs on.
    pub queue: Queue,
    /// Signed jobs through the same gate and queue (no destructive executor wired).
    pub jobs: super::jobs::SignedJobs,
    /// The engine.
    pub engine: Arc<Engine>,
    /// What Recover did with the ops left in flight.
    pub recovered: super::recover::RecoverReport,
    /// The durable nonce store behind the verifier (`None` without signers); the
    /// daemon compacts it.
    pub nonces: Option<Arc<crate::authz::FileNonceStore>>,
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
    /// `client` before returning. `envelope`, when given, paces the engine (see
    /// [`Engine::with_envelope`]).
    pub fn open(
        cfg: &crate::config::Config,
        client: Client,
        shutdown: &Shutdown,
        envelope: Option<SharedEnvelope>,
    ) -> Result<Reconciler, SetupError> {
        let dir = &cfg.state_dir;
        prepare_state_dir(dir)?;

        let journal =
            Arc::new(Journal::open(&dir.join("journal.log")).map_err(SetupError::Journal)?);
        if let Some(why) = journal.damaged() {
            crate::error!(
                journal_damaged,
                "journal damaged: destructive operations refused until an operator looks",
                damage = why
            );
        }
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        compact_journal(
            &journal,
            journal_compact_threshold(),
            clock.as_ref(),
            "start",
        )
        .map_err(SetupError::Journal)?;
        let audit = Arc::new(
            super::audit::AuditLog::open_bounded(
                &dir.join("audit.log"),
                Arc::new(crate::store::OsIo),
                cfg.audit.max_bytes,
            )
            .map_err(SetupError::Audit)?,
        );

        let mut nonces: Option<Arc<crate::authz::FileNonceStore>> = None;
        let verifier = match &cfg.authz {
            Some(authz) if !authz.signers.is_empty() => {
                // A store that cannot be opened refuses every op (logged by the call);
                // its health below keeps the gate refusing destructive actions too.
                let store = Arc::new(crate::authz::FileNonceStore::open_fail_safe(
                    dir.join("nonces.log"),
                    authz.max_clock_skew_seconds,
                ));
                nonces = Some(Arc::clone(&store));
                Some(
                    crate::authz::Verifier::from_config(
                        authz,
                        &cfg.host_id,
                        Arc::clone(&clock),
                        store,
                    )
                    .map_err(SetupError::Signers)?,
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
        if let Some(hub) = &cfg.hub {
            opts.default_interval = Duration::from_secs(hub.poll_seconds);
        }
        let recovered =
            // Recover may wait the full hour a restore or backup can take: nothing else
            // mutates until it is done, and the hub poller already runs meanwhile.
            super::recover::recover(
                &journal,
                &client,
                &WaitOptions::default(),
                shutdown,
                clock.as_ref(),
            )
                .map_err(SetupError::Recover)?;
        if !recovered.unresolved.is_empty() {
            crate::warn!(
                recover_ops_unresolved,
                "ops still in flight after recovery: their guests wait until they resolve",
                ops = recovered.unresolved.len()
            );
        }

        let mut engine = Engine::new(
            client,
            queue.clone(),
            Arc::clone(&gate),
            Arc::clone(&journal),
            configured_provider(cfg),
            shutdown.clone(),
            opts,
        )
        .with_clock(clock);
        if let Some(e) = envelope {
            engine = engine.with_envelope(e);
        }
        let jobs = super::jobs::SignedJobs::new(Arc::clone(&gate), Arc::new(queue.clone()));
        Ok(Reconciler {
            journal,
            audit,
            gate,
            queue,
            jobs,
            engine: Arc::new(engine),
            recovered,
            nonces,
        })
    }
}
