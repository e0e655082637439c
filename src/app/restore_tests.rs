//! Restore tests in the daemon: the tester built from the agent's own client, journal,
//! gate and queue; start-up cleanup of scratch guests a crash left (after Recover); then
//! one round every `restore_tests.every_hours` until the shutdown. Also the bridge from
//! reconcile's durable results to the report's `restore_tests[]`.
//!
//! It holds no policy: the tester and the gate decide. It never runs a round before the
//! start-up cleanup, and never blocks the shutdown longer than the test in progress.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::app::reconciler::Reconciler;
use crate::base::shutdown::Shutdown;
use crate::base::time::{Clock, SystemClock, Timestamp};
use crate::config::Config;
use crate::hub::{RestoreTest, RestoreTestsSource};
use crate::proxmox::{Client, Privileged, Programs, SystemRunner};
use crate::reconcile::{
    BootCheck, Pacing, RestoreResults, RestoreTestError, RestoreTestResult, RestoreTester,
    TestOutcome, read_results,
};
use crate::store::OsIo;

/// The report's longest `detail`, bytes.
const DETAIL_MAX: usize = 256;

/// Reads `state_dir/restore-tests.json` for each report.
#[derive(Debug, Clone)]
pub struct RestoreTestsFeed {
    state_dir: PathBuf,
}

impl RestoreTestsFeed {
    /// A feed over the results kept in `state_dir`.
    pub fn new(state_dir: PathBuf) -> Self {
        RestoreTestsFeed { state_dir }
    }
}

impl RestoreTestsSource for RestoreTestsFeed {
    fn restore_tests(&self) -> Vec<RestoreTest> {
        read_results(&self.state_dir)
            .results
            .iter()
            .map(wire_restore_test)
            .collect()
    }
}

/// One result as the report carries it; `detail` cut at a character boundary.
pub fn wire_restore_test(r: &RestoreTestResult) -> RestoreTest {
    RestoreTest {
        vmid: r.vmid,
        backup_volid: r.backup_volid.clone(),
        scratch_vmid: r.scratch_vmid,
        started_at: r.started_at,
        duration_seconds: r.duration_seconds,
        outcome: r.outcome.as_str().to_string(),
        stage: r.stage.map(|s| s.as_str().to_string()),
        detail: r.detail.as_deref().map(|d| {
            let mut end = d.len().min(DETAIL_MAX);
            while !d.is_char_boundary(end) {
                end -= 1;
            }
            d[..end].to_string()
        }),
        size_bytes: r.size_bytes,
    }
}

/// The tester the daemon runs, when `restore_tests` is configured: the boot check is
/// `pct exec` through the fenced privileged backend.
pub(crate) fn tester(
    cfg: &Config,
    client: Client,
    reconciler: &Reconciler,
    shutdown: &Shutdown,
    hold: Arc<dyn Pacing>,
) -> Option<Arc<RestoreTester>> {
    let rt = cfg.restore_tests.clone()?;
    let mut programs = Programs::detect();
    programs.pct = crate::store::faultpoint::pct_program(programs.pct);
    let boot: Arc<dyn BootCheck> =
        Arc::new(Privileged::with_programs(SystemRunner::default(), programs));
    let results = Arc::new(RestoreResults::open(&cfg.state_dir, Arc::new(OsIo)));
    Some(Arc::new(
        RestoreTester::new(
            cfg.host_id.clone(),
            client,
            Arc::clone(&reconciler.journal),
            Arc::clone(&reconciler.gate),
            reconciler.queue.clone(),
            results,
            boot,
            rt,
            shutdown.clone(),
            Arc::new(SystemClock),
        )
        .with_hold(hold),
    ))
}

/// When the last round started, as far as the results file knows.
fn last_started(state_dir: &std::path::Path) -> Option<Timestamp> {
    let st = read_results(state_dir);
    st.results
        .iter()
        .chain(st.running.iter())
        .map(|r| r.started_at)
        .max()
}

/// Cleans up what a crash left, then runs a round every `every_hours` (counted from
/// the last test the results file shows, so a restart does not start a round early)
/// until the shutdown, each after another cleanup; the hub's `blocked` holds both. `second` is one schedule second (shortened in test builds). A
/// journal write that failed is returned: the daemon exits and the restart cleans up.
pub(crate) fn run_worker(
    tester: &Arc<RestoreTester>,
    state_dir: &std::path::Path,
    shutdown: &Shutdown,
    second: Duration,
) -> Result<(), RestoreTestError> {
    let cleaned = match tester.clean_up() {
        Ok(c) => c,
        Err(RestoreTestError::QueueClosed) => return Ok(()),
        Err(e) => return Err(e),
    };
    crate::info!(
        restore_tests_ready,
        "restore tests scheduled",
        every_hours = tester.config().every_hours,
        interrupted = cleaned.len()
    );
    let every = i64::try_from(tester.config().every_hours.saturating_mul(3600)).unwrap_or(i64::MAX);
    let mut round_started: Option<Timestamp> = None;
    loop {
        let last = last_started(state_dir).max(round_started);
        let now = SystemClock.now();
        let wait = last.map_or(0, |l| {
            l.0.saturating_add(every).saturating_sub(now.0).max(0)
        });
        let wait = second.saturating_mul(u32::try_from(wait).unwrap_or(u32::MAX));
        if shutdown.sleep(wait) {
            return Ok(());
        }
        round_started = Some(SystemClock.now());
        // Scratch guests a failed cleanup (or a hold at start) left go first.
        match tester.clean_up() {
            Ok(_) => {}
            Err(RestoreTestError::QueueClosed) => return Ok(()),
            Err(e) => return Err(e),
        }
        match tester.run_round() {
            Ok(results) => crate::info!(
                restore_test_round,
                "restore test round finished",
                tests = results.len(),
                ok = results
                    .iter()
                    .filter(|r| r.outcome == TestOutcome::Ok)
                    .count(),
                failed = results
                    .iter()
                    .filter(|r| r.outcome == TestOutcome::Failed)
                    .count()
            ),
            Err(RestoreTestError::QueueClosed) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
