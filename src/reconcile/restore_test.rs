//! Restore tests, the proof of backup: the newest backup of each guest, round robin, is
//! restored into a scratch vmid the agent owns, started with no network, checked to have
//! booted, recorded, and destroyed.
//!
//! Every mutation is journaled (`started` durable before it is sent) and passes the
//! gate: the restore (`scratch_restore`, benign: it cannot overwrite), the removal of
//! `net*`, `onboot` and `protection`, the start, and the destroy — benign only by the
//! journal's own `scratch` provenance, recorded before the restore is sent. Each test runs
//! on its scratch vmid's queue lane. [`RestoreTester::clean_up`] at start-up (after
//! Recover) destroys or releases every scratch guest a crash left behind.
//!
//! This module never touches a vmid outside `restore_tests.vmid_range`, never destroys a
//! guest the journal does not say is its scratch, never reads provenance from anything
//! the hub sent, and never restores with `force`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::base::shutdown::Shutdown;
use crate::base::time::Clock;
use crate::config::RestoreTestsConfig;
use crate::proxmox::{
    Client, ConfigChange, CreateLxc, GuestConfig, Privileged, ProxmoxError, RunState, Runner, Upid,
    Volume, WaitError, WaitOptions,
};
use crate::reconcile::classify::{Intent, OpClass};
use crate::reconcile::engine::Pacing;
use crate::reconcile::gate::{Gate, GuestNow};
use crate::reconcile::journal::{Journal, JournalError, JournalRecord, OpState};
use crate::reconcile::queue::Queue;
use crate::reconcile::restore_results::{
    RestoreResults, RestoreTestResult, TestOutcome, TestStage,
};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Proves a started guest booted: in production `pct exec VMID -- /bin/true` through
/// the fenced privileged backend.
pub trait BootCheck: Send + Sync {
    /// `Ok` when the guest ran the program; the error says why not.
    fn boot_check(&self, vmid: u32) -> Result<(), String>;
}

impl<R: Runner> BootCheck for Privileged<R> {
    fn boot_check(&self, vmid: u32) -> Result<(), String> {
        self.exec_true(vmid).map_err(|e| e.to_string())
    }
}

/// Why restore tests stopped: a journal write failed (fatal: the process exits non-zero
/// and the restart cleans up from the journal).
#[derive(Debug)]
#[non_exhaustive]
pub enum RestoreTestError {
    /// A journal append failed.
    Journal(JournalError),
    /// The queue was closed (the daemon is stopping).
    QueueClosed,
}

impl fmt::Display for RestoreTestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreTestError::Journal(e) => write!(f, "restore test: {e}"),
            RestoreTestError::QueueClosed => f.write_str("restore test: the queue is closed"),
        }
    }
}

impl std::error::Error for RestoreTestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RestoreTestError::Journal(e) => Some(e),
            RestoreTestError::QueueClosed => None,
        }
    }
}

impl From<JournalError> for RestoreTestError {
    fn from(e: JournalError) -> Self {
        RestoreTestError::Journal(e)
    }
}

/// How one journaled step ended.
enum StepEnd {
    Applied,
    /// The request failed; `may_have_run` when its answer was lost.
    RequestFailed {
        may_have_run: bool,
        error: String,
    },
    TaskFailed(String),
    /// The wait ended before the task: the op stays in flight for Recover.
    Unresolved(String),
}

impl StepEnd {
    fn error(self) -> Option<String> {
        match self {
            StepEnd::Applied => None,
            StepEnd::RequestFailed { error, .. } => Some(error),
            StepEnd::TaskFailed(e) => Some(format!("task failed: {e}")),
            StepEnd::Unresolved(e) => Some(format!("task still running: {e}")),
        }
    }
}

/// What a test found before cleanup.
struct Exercised {
    stage: Option<TestStage>,
    detail: Option<String>,
    /// Whether a scratch guest may exist to clean up.
    created: bool,
}

/// Everything a restore test needs; shared by the round and its queued tests.
pub struct RestoreTester {
    host_id: String,
    client: Client,
    journal: Arc<Journal>,
    gate: Arc<Gate>,
    queue: Queue,
    results: Arc<RestoreResults>,
    boot: Arc<dyn BootCheck>,
    cfg: RestoreTestsConfig,
    wait: WaitOptions,
    shutdown: Shutdown,
    clock: Arc<dyn Clock>,
    hold: Option<Arc<dyn Pacing>>,
}

impl fmt::Debug for RestoreTester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestoreTester")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl RestoreTester {
    /// A tester for `cfg` over the agent's own client, journal, gate and queue.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        host_id: String,
        client: Client,
        journal: Arc<Journal>,
        gate: Arc<Gate>,
        queue: Queue,
        results: Arc<RestoreResults>,
        boot: Arc<dyn BootCheck>,
        cfg: RestoreTestsConfig,
        shutdown: Shutdown,
        clock: Arc<dyn Clock>,
    ) -> RestoreTester {
        RestoreTester {
            host_id,
            client,
            journal,
            gate,
            queue,
            results,
            boot,
            cfg,
            wait: WaitOptions::default(),
            shutdown,
            clock,
            hold: None,
        }
    }

    /// Holds every restore test and cleanup while `hold` says mutations are held (the
    /// hub's `blocked`).
    pub fn with_hold(mut self, hold: Arc<dyn Pacing>) -> RestoreTester {
        self.hold = Some(hold);
        self
    }

    /// Whether mutations are held now.
    pub fn held(&self) -> bool {
        self.hold.as_ref().is_some_and(|h| h.held())
    }

    /// Uses `wait` for every task (tests shorten the poll).
    pub fn with_wait(mut self, wait: WaitOptions) -> RestoreTester {
        self.wait = wait;
        self
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &RestoreTestsConfig {
        &self.cfg
    }

    fn in_range(&self, vmid: u32) -> bool {
        self.cfg.vmid_range.contains(&vmid)
    }

    fn record(&self, r: &RestoreTestResult, finished: bool) {
        let written = if finished {
            self.results.finished(r)
        } else {
            self.results.started(r)
        };
        if let Err(e) = written {
            crate::warn!(
                restore_test_results_unwritten,
                "restore test result not saved",
                error = e
            );
        }
    }

    /// At start-up, after Recover: every scratch guest the journal names inside the
    /// range is destroyed (benign by provenance) or, when gone, released; a test the
    /// results file shows running becomes `failed` at stage `interrupted`. A scratch tag
    /// outside the range is left alone and logged.
    pub fn clean_up(self: &Arc<Self>) -> Result<Vec<RestoreTestResult>, RestoreTestError> {
        let mut out = Vec::new();
        if self.held() {
            crate::info!(
                restore_tests_held,
                "restore tests held: the hub holds every mutation"
            );
            return Ok(out);
        }
        for vmid in self.journal.scratch_vmids() {
            if !self.in_range(vmid) {
                crate::warn!(
                    restore_test_scratch_out_of_range,
                    "a scratch tag outside restore_tests.vmid_range is left alone",
                    scratch_vmid = vmid
                );
                continue;
            }
            let me = Arc::clone(self);
            let handle = self
                .queue
                .submit(vmid, move || me.destroy_scratch(vmid))
                .map_err(|_| RestoreTestError::QueueClosed)?;
            let cleaned = handle
                .wait()
                .unwrap_or_else(|p| Ok(Err(format!("cleanup panicked: {}", p.message))))?;
            crate::info!(
                restore_test_scratch_cleaned,
                "scratch guest left by an interrupted restore test",
                scratch_vmid = vmid,
                cleaned = cleaned.is_ok(),
                error = cleaned.as_ref().err().map_or("-", String::as_str)
            );
            if let Some(mut r) = self.results.running_in(vmid) {
                r.outcome = TestOutcome::Failed;
                r.stage = Some(if cleaned.is_ok() {
                    TestStage::Interrupted
                } else {
                    TestStage::Cleanup
                });
                r.detail = Some(match &cleaned {
                    Ok(()) => {
                        "the agent stopped while the test ran; scratch guest cleaned up".to_string()
                    }
                    Err(e) => format!("the agent stopped while the test ran; cleanup: {e}"),
                });
                r.duration_seconds =
                    u64::try_from(self.clock.now().0 - r.started_at.0).unwrap_or(0);
                self.record(&r, true);
                out.push(r);
            }
        }
        let live = self.journal.scratch_vmids();
        if let Err(e) = self.results.settle_running(&live, self.clock.now()) {
            crate::warn!(
                restore_test_results_unwritten,
                "restore test result not saved",
                error = e
            );
        }
        Ok(out)
    }

    /// One round: every guest with a backup, starting after the cursor, at most
    /// `max_parallel` at a time. Stops early on shutdown, on the resource guard, or
    /// when no scratch vmid is free; the next round goes on from the cursor.
    pub fn run_round(self: &Arc<Self>) -> Result<Vec<RestoreTestResult>, RestoreTestError> {
        let mut out = Vec::new();
        let guests = match self.client.list_lxc() {
            Ok(g) => g,
            Err(e) => {
                crate::warn!(
                    restore_test_round_skipped,
                    "restore tests: guests unreadable",
                    error = e
                );
                return Ok(out);
            }
        };
        let newest = self.newest_backups();
        let mut order: Vec<(u32, Volume)> = guests
            .iter()
            .filter(|g| !self.in_range(g.vmid) && !g.template)
            .filter_map(|g| newest.get(&g.vmid).map(|v| (g.vmid, v.clone())))
            .collect();
        order.sort_by_key(|(v, _)| *v);
        if let Some(c) = self.results.snapshot().cursor {
            let at = order.iter().position(|(v, _)| *v > c).unwrap_or(0);
            order.rotate_left(at);
        }
        let existing: BTreeSet<u32> = guests.iter().map(|g| g.vmid).collect();
        let mut reported_taken = BTreeSet::new();
        for batch in order.chunks(self.cfg.max_parallel) {
            if self.shutdown.is_triggered() {
                break;
            }
            if self.held() {
                crate::info!(
                    restore_tests_held,
                    "restore tests held: the hub holds every mutation"
                );
                break;
            }
            let mut handles = Vec::new();
            let mut reserved = BTreeSet::new();
            let mut stop = false;
            for (vmid, backup) in batch {
                let skip =
                    |stage: TestStage, scratch: Option<u32>, detail: String| RestoreTestResult {
                        vmid: *vmid,
                        backup_volid: backup.volid.clone(),
                        scratch_vmid: scratch,
                        started_at: self.clock.now(),
                        duration_seconds: 0,
                        outcome: TestOutcome::Skipped,
                        stage: Some(stage),
                        detail: Some(detail),
                        size_bytes: Some(backup.size),
                    };
                if let Err(why) = self.guard(backup.size) {
                    let r = skip(TestStage::Guard, None, why);
                    self.record(&r, true);
                    out.push(r);
                    stop = true;
                    break;
                }
                let tagged: BTreeSet<u32> = self.journal.scratch_vmids().into_iter().collect();
                for taken in self
                    .cfg
                    .vmid_range
                    .clone()
                    .filter(|v| existing.contains(v) && !tagged.contains(v))
                {
                    if reported_taken.insert(taken) {
                        crate::warn!(
                            restore_test_vmid_taken,
                            "a scratch vmid is taken by a guest the agent did not create; skipped, never destroyed",
                            scratch_vmid = taken
                        );
                        let r = skip(
                            TestStage::ScratchVmid,
                            Some(taken),
                            format!(
                                "scratch vmid {taken} is taken by a guest the agent did not create; skipped"
                            ),
                        );
                        self.record(&r, true);
                        out.push(r);
                    }
                }
                let free = self.cfg.vmid_range.clone().find(|v| {
                    !existing.contains(v) && !tagged.contains(v) && !reserved.contains(v)
                });
                let Some(scratch) = free else {
                    let r = skip(
                        TestStage::ScratchVmid,
                        None,
                        "no free vmid in restore_tests.vmid_range".into(),
                    );
                    self.record(&r, true);
                    out.push(r);
                    stop = true;
                    break;
                };
                reserved.insert(scratch);
                let me = Arc::clone(self);
                let (v, b) = (*vmid, backup.clone());
                let h = self
                    .queue
                    .submit(scratch, move || me.run_one(v, &b, scratch))
                    .map_err(|_| RestoreTestError::QueueClosed)?;
                handles.push(h);
            }
            for h in handles {
                match h.wait() {
                    Ok(r) => out.push(r?),
                    Err(p) => crate::error!(
                        restore_test_panicked,
                        "restore test panicked",
                        panic = p.message
                    ),
                }
            }
            if stop {
                break;
            }
        }
        Ok(out)
    }

    /// The newest backup of each guest, over every active storage holding backups.
    fn newest_backups(&self) -> BTreeMap<u32, Volume> {
        let mut newest: BTreeMap<u32, Volume> = BTreeMap::new();
        let storages = match self.client.node_storage() {
            Ok(s) => s,
            Err(e) => {
                crate::warn!(
                    restore_test_storage_unreadable,
                    "restore tests: storages unreadable",
                    error = e
                );
                return newest;
            }
        };
        for s in storages
            .iter()
            .filter(|s| s.active && s.enabled && s.content.iter().any(|c| c == "backup"))
        {
            let Ok(volumes) = self.client.backup_volumes(&s.storage, None) else {
                continue;
            };
            for v in volumes {
                let is_ct = v.subtype.as_deref().is_none_or(|t| t == "lxc")
                    && (v.subtype.is_some() || v.volid.contains("backup/ct/"));
                let Some(vmid) = v.vmid.filter(|_| is_ct) else {
                    continue;
                };
                let newer = newest
                    .get(&vmid)
                    .is_none_or(|cur| v.ctime.unwrap_or(0) > cur.ctime.unwrap_or(0));
                if newer {
                    newest.insert(vmid, v);
                }
            }
        }
        newest
    }

    /// The host has the free memory and storage `restore_tests` asks for, and room for
    /// the backup; the error says which is short.
    fn guard(&self, backup_size: u64) -> Result<(), String> {
        let node = self
            .client
            .node_status()
            .map_err(|e| format!("node status unreadable: {e}"))?;
        let mem = node.memory.available.unwrap_or(node.memory.free);
        let want_mem = self.cfg.min_free_memory_mib.saturating_mul(MIB);
        if mem < want_mem {
            return Err(format!(
                "node memory available {} MiB, below restore_tests.min_free_memory_mib {}",
                mem / MIB,
                self.cfg.min_free_memory_mib
            ));
        }
        let st = self
            .client
            .storage_status(&self.cfg.storage)
            .map_err(|e| format!("storage {} unreadable: {e}", self.cfg.storage))?;
        let avail = if st.active { st.avail.unwrap_or(0) } else { 0 };
        let want = self
            .cfg
            .min_free_storage_gib
            .saturating_mul(GIB)
            .saturating_add(backup_size);
        if avail < want {
            return Err(format!(
                "storage {} has {} GiB free, below restore_tests.min_free_storage_gib {} plus the backup",
                self.cfg.storage,
                avail / GIB,
                self.cfg.min_free_storage_gib
            ));
        }
        Ok(())
    }

    /// One test, on the scratch vmid's lane.
    fn run_one(
        &self,
        vmid: u32,
        backup: &Volume,
        scratch: u32,
    ) -> Result<RestoreTestResult, RestoreTestError> {
        let t0 = Instant::now();
        let mut r = RestoreTestResult {
            vmid,
            backup_volid: backup.volid.clone(),
            scratch_vmid: Some(scratch),
            started_at: self.clock.now(),
            duration_seconds: 0,
            outcome: TestOutcome::Failed,
            stage: Some(TestStage::Interrupted),
            detail: None,
            size_bytes: Some(backup.size),
        };
        self.record(&r, false);
        crate::info!(
            restore_test_started,
            "restore test started",
            vmid = vmid,
            backup = backup.volid,
            scratch_vmid = scratch
        );
        // The provenance is durable before the restore is sent: a crash from here on
        // leaves a tag that start-up cleanup finds.
        self.journal.tag_scratch(scratch, self.clock.now())?;
        crate::store::faultpoint::reached("restore_test:after-tag");
        let ex = self.exercise(scratch, &backup.volid)?;
        if self.shutdown.is_triggered() {
            // A wait the shutdown cut short is no verdict on the backup: the test stays
            // `running` on file, and the next start cleans up and records it interrupted.
            crate::info!(
                restore_test_interrupted,
                "restore test left to the next start's cleanup",
                vmid = vmid,
                scratch_vmid = scratch
            );
            r.detail = Some("the agent stopped while the test ran".into());
            r.duration_seconds = t0.elapsed().as_secs();
            return Ok(r);
        }
        let mut detail = ex.detail;
        let mut stage = ex.stage;
        let cleaned = if ex.created {
            self.destroy_scratch(scratch)?
        } else {
            Ok(())
        };
        if let Err(e) = cleaned {
            stage = stage.or(Some(TestStage::Cleanup));
            let text = format!("cleanup: {e}");
            detail = Some(match detail {
                Some(d) => format!("{d}; {text}"),
                None => text,
            });
        }
        r.outcome = if stage.is_none() {
            TestOutcome::Ok
        } else {
            TestOutcome::Failed
        };
        r.stage = stage;
        r.detail = detail;
        r.duration_seconds = t0.elapsed().as_secs();
        self.record(&r, true);
        crate::info!(
            restore_test_finished,
            "restore test finished",
            vmid = vmid,
            scratch_vmid = scratch,
            outcome = r.outcome.as_str(),
            stage = r.stage.map_or("-", TestStage::as_str),
            duration_seconds = r.duration_seconds
        );
        Ok(r)
    }

    fn intent(&self, class: OpClass, vmid: u32, params: &BTreeMap<String, String>) -> Intent {
        let mut i = Intent::new(class, self.host_id.as_str(), Some(vmid.to_string()));
        i.params = params.clone();
        i
    }

    /// Restore, strip the network, start, check the boot.
    fn exercise(&self, scratch: u32, volid: &str) -> Result<Exercised, RestoreTestError> {
        let fail = |stage, detail: String, created| Exercised {
            stage: Some(stage),
            detail: Some(detail),
            created,
        };
        let params = BTreeMap::from([
            ("backup".to_string(), volid.to_string()),
            ("storage".to_string(), self.cfg.storage.clone()),
        ]);
        let intent = self.intent(OpClass::ScratchRestore, scratch, &params);
        if let Some(r) = self
            .gate
            .authorize(&intent, None, &GuestNow::NotRead)
            .refusal()
        {
            self.journal.release_scratch(scratch, self.clock.now())?;
            return Ok(fail(
                TestStage::Restore,
                format!("gate: {}", r.code()),
                false,
            ));
        }
        let create = CreateLxc {
            unique: true,
            ..CreateLxc::restore(scratch, volid, &self.cfg.storage)
        };
        match self.step(OpClass::ScratchRestore, scratch, params, || {
            let sent = self.client.create_lxc(&create).map(Some);
            crate::store::faultpoint::reached("restore_test:after-restore-post");
            sent
        })? {
            StepEnd::Applied => {}
            StepEnd::RequestFailed {
                may_have_run: false,
                error,
            } => {
                // Refused at request time: Proxmox made no guest (the vmid may be
                // someone else's), so the tag goes and nothing is destroyed.
                self.journal.release_scratch(scratch, self.clock.now())?;
                return Ok(fail(TestStage::Restore, error, false));
            }
            other => {
                let e = other.error().unwrap_or_default();
                return Ok(fail(TestStage::Restore, e, true));
            }
        }
        crate::store::faultpoint::reached("restore_test:after-restore");

        let cfg = match self.client.guest_config(scratch) {
            Ok(c) => c,
            Err(e) => return Ok(fail(TestStage::Network, e.to_string(), true)),
        };
        let strip = keys_to_strip(&cfg);
        if !strip.is_empty() {
            let params = BTreeMap::from([("delete".to_string(), strip.join(","))]);
            let change = ConfigChange {
                set: Vec::new(),
                delete: strip,
                digest: None,
            };
            let end = self.guarded_step(OpClass::SetConfig, scratch, params, || {
                self.client.set_config(scratch, &change)
            })?;
            if let Some(e) = end.error() {
                return Ok(fail(TestStage::Network, e, true));
            }
        }

        let end = self.guarded_step(OpClass::Start, scratch, BTreeMap::new(), || {
            self.client.start(scratch).map(Some)
        })?;
        if let Some(e) = end.error() {
            return Ok(fail(TestStage::Start, e, true));
        }
        match self.client.guest_status(scratch) {
            Ok(g) if g.status == RunState::Running => {}
            Ok(g) => {
                return Ok(fail(
                    TestStage::Start,
                    format!("the guest is {} after its start", g.status.as_str()),
                    true,
                ));
            }
            Err(e) => return Ok(fail(TestStage::Start, e.to_string(), true)),
        }
        crate::store::faultpoint::reached("restore_test:after-start");
        if let Err(e) = self.boot.boot_check(scratch) {
            return Ok(fail(TestStage::BootCheck, e, true));
        }
        Ok(Exercised {
            stage: None,
            detail: None,
            created: true,
        })
    }

    /// A benign step through the gate, then journaled.
    fn guarded_step(
        &self,
        class: OpClass,
        vmid: u32,
        params: BTreeMap<String, String>,
        send: impl FnOnce() -> Result<Option<Upid>, ProxmoxError>,
    ) -> Result<StepEnd, RestoreTestError> {
        let intent = self.intent(class.clone(), vmid, &params);
        if let Some(r) = self
            .gate
            .authorize(&intent, None, &GuestNow::NotRead)
            .refusal()
        {
            return Ok(StepEnd::RequestFailed {
                may_have_run: false,
                error: format!("gate: {}", r.code()),
            });
        }
        self.step(class, vmid, params, send)
    }

    /// Destroys scratch guest `vmid` (benign by the journal's scratch provenance), or
    /// releases its tag when it is gone. `Ok(Err(why))` when it could not.
    fn destroy_scratch(&self, vmid: u32) -> Result<Result<(), String>, RestoreTestError> {
        if !self.in_range(vmid) {
            return Ok(Err(format!(
                "vmid {vmid} is outside restore_tests.vmid_range"
            )));
        }
        let exists = match self.client.list_lxc() {
            Ok(g) => g.iter().any(|g| g.vmid == vmid),
            Err(e) => return Ok(Err(format!("guests unreadable: {e}"))),
        };
        if !exists {
            self.journal.release_scratch(vmid, self.clock.now())?;
            return Ok(Ok(()));
        }
        let cfg = match self.client.guest_config(vmid) {
            Ok(c) => c,
            Err(e) => return Ok(Err(format!("config unreadable: {e}"))),
        };
        if cfg.protected() {
            let params = BTreeMap::from([("delete".to_string(), "protection".to_string())]);
            let change = ConfigChange {
                set: Vec::new(),
                delete: vec!["protection".into()],
                digest: None,
            };
            let end = self.guarded_step(OpClass::SetConfig, vmid, params, || {
                self.client.set_config(vmid, &change)
            })?;
            if let Some(e) = end.error() {
                return Ok(Err(e));
            }
        }
        let now = match self.client.guest_config(vmid) {
            // Counted as running (it was started): the destroy's `force` stops it.
            Ok(c) => GuestNow::Present {
                protected: c.protected(),
                digest: c.digest,
                running: true,
            },
            Err(e) => GuestNow::Unreadable(e.to_string()),
        };
        let params = BTreeMap::from([
            ("purge".to_string(), "1".to_string()),
            ("force".to_string(), "1".to_string()),
        ]);
        let intent = self.intent(OpClass::GuestDestroy, vmid, &params);
        if let Some(r) = self.gate.authorize(&intent, None, &now).refusal() {
            return Ok(Err(format!("gate: {}", r.code())));
        }
        crate::store::faultpoint::reached("restore_test:before-destroy");
        let end = self.step(OpClass::GuestDestroy, vmid, params, || {
            let sent = self.client.destroy(vmid, true, true).map(Some);
            crate::store::faultpoint::reached("restore_test:after-destroy-post");
            sent
        })?;
        Ok(end.error().map_or(Ok(()), Err))
    }

    /// One mutation's journaled lifecycle: `started` durable before `send`, the UPID
    /// before the wait, the terminal record last. A wait that ends early leaves the op
    /// in flight for Recover; nothing is re-sent.
    fn step(
        &self,
        class: OpClass,
        vmid: u32,
        params: BTreeMap<String, String>,
        send: impl FnOnce() -> Result<Option<Upid>, ProxmoxError>,
    ) -> Result<StepEnd, RestoreTestError> {
        let op_id = self
            .journal
            .new_op_id(&format!("restore-test-{}-{vmid}", class.as_str()));
        let mut started = JournalRecord::started(&op_id, vmid, class, self.clock.now());
        started.params = params;
        self.journal.append(&started)?;
        let upid = match send() {
            Ok(Some(u)) => u,
            Ok(None) => {
                let done = started.step(OpState::Succeeded, self.clock.now());
                self.journal.append(&done)?;
                return Ok(StepEnd::Applied);
            }
            Err(e) => {
                let mut done = started.step(OpState::Failed, self.clock.now());
                done.detail = Some(e.to_string());
                self.journal.append(&done)?;
                return Ok(StepEnd::RequestFailed {
                    may_have_run: e.outcome_unknown(),
                    error: e.to_string(),
                });
            }
        };
        let mut running = started.step(OpState::TaskRunning, self.clock.now());
        running.upid = Some(upid.to_string());
        self.journal.append(&running)?;
        match self.client.wait_task(&upid, &self.wait, &self.shutdown) {
            Ok(_) => {
                let done = running.step(OpState::Succeeded, self.clock.now());
                self.journal.append(&done)?;
                Ok(StepEnd::Applied)
            }
            Err(WaitError::Failed(t)) => {
                let mut done = running.step(OpState::Failed, self.clock.now());
                done.detail = Some(t.to_string());
                self.journal.append(&done)?;
                Ok(StepEnd::TaskFailed(t.exitstatus.clone()))
            }
            Err(e) => Ok(StepEnd::Unresolved(e.to_string())),
        }
    }
}

/// What a scratch guest must not keep: every network device (it must not reach the
/// customer's network with the customer's addresses), `onboot` (a host reboot would
/// start it), and `protection` (its destroy must not be refused).
fn keys_to_strip(cfg: &GuestConfig) -> Vec<String> {
    let mut keys: Vec<String> = cfg
        .nets()
        .map(|(k, _)| k)
        .chain(
            ["onboot", "protection"]
                .into_iter()
                .filter(|k| cfg.other.contains_key(*k)),
        )
        .map(str::to_owned)
        .collect();
    keys.sort();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_network_onboot_and_protection_are_stripped_and_nothing_else() {
        let mut cfg = GuestConfig::default();
        for (k, v) in [
            ("net0", json!("name=eth0,bridge=vmbr0")),
            ("net12", json!("name=eth1,bridge=vmbr1")),
            ("onboot", json!(1)),
            ("protection", json!(1)),
            ("netx", json!("x")),
            ("network", json!("x")),
            ("rootfs", json!("local-lvm:vm-9900-disk-0")),
        ] {
            cfg.other.insert(k.into(), v);
        }
        assert_eq!(
            keys_to_strip(&cfg),
            ["net0", "net12", "onboot", "protection"]
        );
    }
}
