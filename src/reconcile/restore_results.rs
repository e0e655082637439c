//! The restore tests' durable record (`state_dir/restore-tests.json`): the last results,
//! the tests running now (so a crash shows as `interrupted`), and the round-robin
//! cursor. `status` and the host report read it with [`read_results`].
//!
//! This module owns the file's format and its atomic replace (write, fsync, rename,
//! fsync the directory, through `store`). It never talks to Proxmox and never decides
//! anything; a damaged file reads as empty, never as an error that stops the agent.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::base::sync::lock;
use crate::base::time::Timestamp;
use crate::store::{Io, replace_file};

/// The file under `state_dir`.
pub const RESTORE_TESTS_FILE: &str = "restore-tests.json";
/// Results kept (the newest); older ones are dropped.
pub const KEPT_RESULTS: usize = 64;
/// The longest `detail` kept on file, bytes (a task's error text can be long).
pub const RESULT_DETAIL_MAX: usize = 1024;
/// The largest file read back; a bigger one is treated as damaged.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// How a restore test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestOutcome {
    /// The backup restored, the guest started without network and ran a program.
    Ok,
    /// It failed at `stage`.
    Failed,
    /// It did not run (no room, no free scratch vmid, a scratch vmid taken by someone
    /// else's guest).
    Skipped,
}

impl TestOutcome {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            TestOutcome::Ok => "ok",
            TestOutcome::Failed => "failed",
            TestOutcome::Skipped => "skipped",
        }
    }
}

/// Where a restore test failed or was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestStage {
    /// The host lacked the free memory or storage `restore_tests` asks for.
    Guard,
    /// No scratch vmid was free, or one was taken by a guest the agent did not create.
    ScratchVmid,
    /// The restore task (or its request) failed: a broken or missing backup.
    Restore,
    /// Removing the network devices (and `onboot`, `protection`) failed.
    Network,
    /// The start failed, or the guest did not run.
    Start,
    /// The guest ran but `pct exec VMID -- /bin/true` failed.
    BootCheck,
    /// The test passed or failed, but the scratch guest could not be destroyed yet.
    Cleanup,
    /// The agent stopped or crashed while the test ran; the scratch guest was cleaned up.
    Interrupted,
}

impl TestStage {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            TestStage::Guard => "guard",
            TestStage::ScratchVmid => "scratch_vmid",
            TestStage::Restore => "restore",
            TestStage::Network => "network",
            TestStage::Start => "start",
            TestStage::BootCheck => "boot_check",
            TestStage::Cleanup => "cleanup",
            TestStage::Interrupted => "interrupted",
        }
    }
}

/// One restore test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreTestResult {
    /// The guest whose backup was tested.
    pub vmid: u32,
    /// The backup volume restored.
    pub backup_volid: String,
    /// The scratch vmid it was restored into (`None` when none was free).
    pub scratch_vmid: Option<u32>,
    /// When the test started.
    #[serde(with = "crate::base::time::rfc3339")]
    pub started_at: Timestamp,
    /// How long it took, restore to cleanup.
    pub duration_seconds: u64,
    /// How it ended.
    pub outcome: TestOutcome,
    /// Where it failed or was skipped (`None` when ok).
    pub stage: Option<TestStage>,
    /// What failed, in a line.
    pub detail: Option<String>,
    /// The backup volume's size, bytes.
    pub size_bytes: Option<u64>,
}

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreTestsState {
    /// The newest results last, at most [`KEPT_RESULTS`].
    #[serde(default)]
    pub results: Vec<RestoreTestResult>,
    /// Tests started and not yet recorded (outcome and duration not final).
    #[serde(default)]
    pub running: Vec<RestoreTestResult>,
    /// The guest tested last: the next round starts after it.
    #[serde(default)]
    pub cursor: Option<u32>,
}

/// Why the file could not be written (the results are then only in the log).
#[derive(Debug)]
pub struct ResultsWriteError {
    /// The file.
    pub path: PathBuf,
    /// The OS error.
    pub source: std::io::Error,
}

impl fmt::Display for ResultsWriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: write failed: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for ResultsWriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Reads `state_dir/restore-tests.json`: empty when absent, too big or unreadable
/// (restore tests only feed reports; a bad file never stops anything).
pub fn read_results(state_dir: &Path) -> RestoreTestsState {
    let path = state_dir.join(RESTORE_TESTS_FILE);
    let too_big = std::fs::metadata(&path).is_ok_and(|m| m.len() > MAX_FILE_BYTES);
    if too_big {
        return RestoreTestsState::default();
    }
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(_) => RestoreTestsState::default(),
    }
}

/// The live record: the state in memory, each change replaced on disk atomically.
pub struct RestoreResults {
    path: PathBuf,
    io: Arc<dyn Io>,
    state: Mutex<RestoreTestsState>,
}

impl fmt::Debug for RestoreResults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestoreResults")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RestoreResults {
    /// Opens the record in `state_dir` (what [`read_results`] reads).
    pub fn open(state_dir: &Path, io: Arc<dyn Io>) -> RestoreResults {
        RestoreResults {
            path: state_dir.join(RESTORE_TESTS_FILE),
            io,
            state: Mutex::new(read_results(state_dir)),
        }
    }

    /// A copy of the state.
    pub fn snapshot(&self) -> RestoreTestsState {
        lock(&self.state).clone()
    }

    fn change(&self, f: impl FnOnce(&mut RestoreTestsState)) -> Result<(), ResultsWriteError> {
        let mut st = lock(&self.state);
        f(&mut st);
        let excess = st.results.len().saturating_sub(KEPT_RESULTS);
        st.results.drain(..excess);
        let bytes = serde_json::to_vec_pretty(&*st).unwrap_or_default();
        replace_file(self.io.as_ref(), &self.path, &bytes).map_err(|source| ResultsWriteError {
            path: self.path.clone(),
            source,
        })
    }

    /// Records that `test` started (durable before its restore is sent).
    pub fn started(&self, test: &RestoreTestResult) -> Result<(), ResultsWriteError> {
        self.change(|st| {
            st.running.retain(|r| r.scratch_vmid != test.scratch_vmid);
            st.running.push(test.clone());
        })
    }

    /// Records a finished (or skipped) test and moves the cursor to its guest (not for
    /// a skipped one); a
    /// `detail` over [`RESULT_DETAIL_MAX`] bytes is cut at a character boundary.
    pub fn finished(&self, test: &RestoreTestResult) -> Result<(), ResultsWriteError> {
        let mut test = test.clone();
        if let Some(d) = test.detail.as_mut() {
            let mut end = d.len().min(RESULT_DETAIL_MAX);
            while !d.is_char_boundary(end) {
                end -= 1;
            }
            d.truncate(end);
        }
        let test = &test;
        self.change(|st| {
            if test.scratch_vmid.is_some() {
                st.running.retain(|r| r.scratch_vmid != test.scratch_vmid);
            }
            st.results.push(test.clone());
            // A skipped guest was not tested: the next round starts with it again.
            if test.outcome != TestOutcome::Skipped {
                st.cursor = Some(test.vmid);
            }
        })
    }

    /// The test that was running in `scratch_vmid` when the agent stopped, if the file
    /// recorded one.
    pub fn running_in(&self, scratch_vmid: u32) -> Option<RestoreTestResult> {
        lock(&self.state)
            .running
            .iter()
            .find(|r| r.scratch_vmid == Some(scratch_vmid))
            .cloned()
    }

    /// Drops running entries whose scratch vmid is not in `live` (their guest was
    /// cleaned up without a trace in the journal), recording each as interrupted.
    pub fn settle_running(&self, live: &[u32], now: Timestamp) -> Result<(), ResultsWriteError> {
        self.change(|st| {
            let (gone, keep): (Vec<_>, Vec<_>) = st
                .running
                .drain(..)
                .partition(|r| r.scratch_vmid.is_none_or(|v| !live.contains(&v)));
            st.running = keep;
            for mut r in gone {
                r.outcome = TestOutcome::Failed;
                r.stage = Some(TestStage::Interrupted);
                r.detail = Some("the agent stopped while the test ran".into());
                r.duration_seconds = u64::try_from(now.0 - r.started_at.0).unwrap_or(0);
                st.results.push(r);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_words_are_the_serde_words() {
        for o in [TestOutcome::Ok, TestOutcome::Failed, TestOutcome::Skipped] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        for s in [
            TestStage::Guard,
            TestStage::ScratchVmid,
            TestStage::Restore,
            TestStage::Network,
            TestStage::Start,
            TestStage::BootCheck,
            TestStage::Cleanup,
            TestStage::Interrupted,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn a_damaged_or_oversized_file_reads_empty_and_results_stay_bounded() {
        let dir = std::env::temp_dir().join(format!(
            "felhom-restore-results-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(RESTORE_TESTS_FILE), b"{not json").unwrap();
        assert_eq!(read_results(&dir), RestoreTestsState::default());
        let live = RestoreResults::open(&dir, Arc::new(crate::store::OsIo));
        let r = RestoreTestResult {
            vmid: 100,
            backup_volid: "local:backup/x.tar.zst".into(),
            scratch_vmid: Some(9900),
            started_at: Timestamp(1),
            duration_seconds: 1,
            outcome: TestOutcome::Ok,
            stage: None,
            detail: None,
            size_bytes: Some(1),
        };
        for _ in 0..KEPT_RESULTS + 5 {
            live.finished(&r).unwrap();
        }
        assert_eq!(read_results(&dir).results.len(), KEPT_RESULTS);
        let long = RestoreTestResult {
            detail: Some("é".repeat(1000)),
            ..r.clone()
        };
        live.finished(&long).unwrap();
        let kept = read_results(&dir)
            .results
            .last()
            .unwrap()
            .detail
            .clone()
            .unwrap();
        assert!(
            kept.len() <= RESULT_DETAIL_MAX && kept.starts_with('é'),
            "{}",
            kept.len()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
