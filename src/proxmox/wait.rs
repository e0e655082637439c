//! Waiting for a dispatched task: poll its status with backoff until it stops, then
//! judge its exit status. A wait never dispatches anything; it can be abandoned
//! (timeout, shutdown) and resumed later with the same UPID.

use std::fmt;
use std::time::{Duration, Instant};

use super::client::Client;
use super::error::{Privilege, ProxmoxError, is_transient_text};
use super::task::TaskExit;
use super::upid::Upid;
use crate::base::shutdown::Shutdown;

/// How many log lines a failed or warning task carries.
pub const LOG_TAIL_LINES: u64 = 20;

/// Polling schedule of [`Client::wait_task`]: one poll at once, the next after
/// `initial`, then each at twice the time of the one before (the gap at most `cap`), so a
/// task is seen done by twice its duration, or `cap` after it, whichever is sooner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitOptions {
    /// Delay after the first poll.
    pub initial: Duration,
    /// The longest delay between two polls.
    pub cap: Duration,
    /// Give up (the task may still run) after this long.
    pub timeout: Duration,
}

impl Default for WaitOptions {
    /// Polls at 0, 0.1, 0.2, 0.4 … 3.2 s, then every 5 s, for up to an hour (restores
    /// and backups are long): a 0.2 s start is confirmed at 0.2 s, not at 1 s.
    fn default() -> Self {
        WaitOptions {
            initial: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            timeout: Duration::from_secs(3600),
        }
    }
}

/// The shortest delay between polls, so a zero `initial` cannot spin on the API.
pub(crate) const MIN_POLL_DELAY: Duration = Duration::from_millis(1);

impl WaitOptions {
    /// The delay before the first poll after the immediate one: `initial`, at least
    /// `MIN_POLL_DELAY` (1 ms).
    pub fn first_delay(&self) -> Duration {
        self.initial.max(MIN_POLL_DELAY)
    }

    /// The delays between polls, in order (endless; the timeout ends the wait): the
    /// first delay, then each the time waited so far, at most `cap` (a cap below
    /// `initial` keeps every delay at `initial`).
    pub fn delays(&self) -> impl Iterator<Item = Duration> + '_ {
        let first = self.first_delay();
        let cap = self.cap.max(first);
        let mut waited = Duration::ZERO;
        std::iter::from_fn(move || {
            let delay = if waited.is_zero() {
                first
            } else {
                waited.min(cap)
            };
            waited = waited.saturating_add(delay);
            Some(delay)
        })
    }
}

/// A task that ended successfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    /// Exit status `OK`.
    Ok,
    /// Exit status `WARNINGS: n`: success; the warnings were logged.
    Warnings {
        /// How many.
        count: u32,
        /// The end of the task log.
        log_tail: Vec<String>,
    },
}

/// A task that ended with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    /// The task.
    pub upid: Upid,
    /// Its exit status text.
    pub exitstatus: String,
    /// The privilege named, when it failed a permission check while running.
    pub privilege: Option<Privilege>,
    /// The last lines of its log (empty if the log could not be read).
    pub log_tail: Vec<String>,
}

impl TaskError {
    /// Whether the failure passes by itself (a lock held by a running backup, a lock
    /// wait that timed out), so the same action may be dispatched again later.
    pub fn is_transient(&self) -> bool {
        is_transient_text(&self.exitstatus)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "task {} failed: {}",
            self.upid,
            crate::net::excerpt(self.exitstatus.as_bytes(), 512)
        )
    }
}

impl std::error::Error for TaskError {}

/// Why [`Client::wait_task`] returned without a successful outcome.
#[derive(Debug)]
#[non_exhaustive]
pub enum WaitError {
    /// The task stopped with an error.
    Failed(Box<TaskError>),
    /// The wait ran out of time; the task may still be running. Re-attach later with
    /// the same UPID.
    Timeout {
        /// The task.
        upid: Upid,
        /// How long the wait lasted.
        waited: Duration,
        /// The last status read failure, if polls were failing.
        last_error: Option<Box<ProxmoxError>>,
    },
    /// Shutdown was signalled; the task may still be running.
    Shutdown {
        /// The task.
        upid: Upid,
    },
    /// Reading the task status failed in a way retrying will not fix (no such task,
    /// permission denied, an unreadable answer).
    Status {
        /// The task.
        upid: Upid,
        /// What failed.
        source: Box<ProxmoxError>,
    },
}

impl WaitError {
    /// The task waited for.
    pub fn upid(&self) -> &Upid {
        match self {
            WaitError::Failed(e) => &e.upid,
            WaitError::Timeout { upid, .. }
            | WaitError::Shutdown { upid }
            | WaitError::Status { upid, .. } => upid,
        }
    }
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::Failed(e) => write!(f, "{e}"),
            WaitError::Timeout {
                upid,
                waited,
                last_error,
            } => {
                write!(
                    f,
                    "task {upid} still not finished after {}s",
                    waited.as_secs()
                )?;
                if let Some(e) = last_error {
                    write!(f, " (last status read failed: {e})")?;
                }
                Ok(())
            }
            WaitError::Shutdown { upid } => {
                write!(f, "stopped waiting for task {upid}: shutting down")
            }
            WaitError::Status { upid, source } => {
                write!(f, "cannot read status of task {upid}: {source}")
            }
        }
    }
}

impl std::error::Error for WaitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WaitError::Failed(e) => Some(e.as_ref()),
            WaitError::Status { source, .. } => Some(source.as_ref()),
            WaitError::Timeout {
                last_error: Some(e),
                ..
            } => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl Client {
    /// Waits for a task to stop: polls its status at once, then after `initial`,
    /// doubling to `cap`, until `timeout`. `OK` and `WARNINGS: n` are success (the
    /// warnings are logged with the log tail); any other exit status is a
    /// [`TaskError`] with the privilege it names and the log tail. Transient status
    /// read failures are retried within the timeout. A shutdown ends the wait at once.
    pub fn wait_task(
        &self,
        upid: &Upid,
        options: &WaitOptions,
        shutdown: &Shutdown,
    ) -> Result<TaskOutcome, WaitError> {
        let started = Instant::now();
        let deadline = started + options.timeout;
        let mut delays = options.delays();
        loop {
            if shutdown.is_triggered() {
                return Err(WaitError::Shutdown { upid: upid.clone() });
            }
            let last_error = match self.task_status(upid) {
                Ok(status) => match status.exit() {
                    Some(exit) => return self.judge(upid, exit),
                    None => None,
                },
                Err(e) if e.is_transient() => {
                    crate::debug!(
                        task_status_retry,
                        "task status read failed, retrying",
                        upid = upid,
                        error = e
                    );
                    Some(Box::new(e))
                }
                Err(e) => {
                    return Err(WaitError::Status {
                        upid: upid.clone(),
                        source: Box::new(e),
                    });
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::Timeout {
                    upid: upid.clone(),
                    waited: now - started,
                    last_error,
                });
            }
            // `delays` never ends; the fallback is only for the type.
            let delay = delays.next().unwrap_or(options.cap);
            if shutdown.sleep(delay.min(deadline - now)) {
                return Err(WaitError::Shutdown { upid: upid.clone() });
            }
        }
    }

    fn judge(&self, upid: &Upid, exit: TaskExit) -> Result<TaskOutcome, WaitError> {
        match exit {
            TaskExit::Ok => Ok(TaskOutcome::Ok),
            TaskExit::Warnings(count) => {
                let log_tail = self.tail_or_note(upid);
                crate::warn!(
                    task_warnings,
                    "task finished with warnings",
                    upid = upid,
                    warnings = count,
                    log_tail = log_tail.join("\n")
                );
                Ok(TaskOutcome::Warnings { count, log_tail })
            }
            TaskExit::Failed(exitstatus) => {
                let exitstatus = self.scrub(exitstatus);
                Err(WaitError::Failed(Box::new(TaskError {
                    upid: upid.clone(),
                    privilege: Privilege::parse(&exitstatus),
                    log_tail: self.tail_or_note(upid),
                    exitstatus,
                })))
            }
        }
    }

    /// The log tail; a failure to read it must not hide the task's result.
    fn tail_or_note(&self, upid: &Upid) -> Vec<String> {
        match self.task_log_tail(upid, LOG_TAIL_LINES) {
            Ok(lines) => lines.into_iter().map(|l| self.scrub(l)).collect(),
            Err(e) => {
                crate::warn!(
                    task_log_unreadable,
                    "cannot read task log",
                    upid = upid,
                    error = e
                );
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(v: &[f64]) -> Vec<Duration> {
        v.iter().map(|s| Duration::from_secs_f64(*s)).collect()
    }

    #[test]
    fn the_default_schedule_doubles_the_time_waited_from_100ms_to_a_5s_gap() {
        let d = WaitOptions::default();
        assert_eq!(d.initial, Duration::from_millis(100));
        assert_eq!(d.cap, Duration::from_secs(5));
        assert_eq!(d.timeout, Duration::from_secs(3600));
        let got: Vec<Duration> = d.delays().take(9).collect();
        assert_eq!(
            got,
            secs(&[0.1, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]),
            "polls at 0.1, 0.2, 0.4 … 6.4 s, then every 5 s"
        );
    }

    #[test]
    fn a_task_is_seen_done_by_twice_its_duration_or_a_cap_after() {
        let o = WaitOptions::default();
        for ms in [1u64, 100, 150, 200, 250, 999, 3_000, 7_000, 60_000] {
            let ends = Duration::from_millis(ms);
            let mut at = Duration::ZERO;
            let mut polls = 1; // the immediate one
            for d in o.delays() {
                if at >= ends {
                    break;
                }
                at += d;
                polls += 1;
            }
            let bound = (ends * 2).min(ends + o.cap).max(o.initial);
            assert!(at <= bound, "{ms} ms task seen at {at:?}, bound {bound:?}");
            if ms <= 1_000 {
                assert!(polls <= 6, "{ms} ms task cost {polls} polls");
            }
        }
    }

    #[test]
    fn the_schedule_is_tunable() {
        let o = WaitOptions {
            initial: Duration::from_millis(250),
            cap: Duration::from_secs(3),
            timeout: Duration::from_secs(60),
        };
        let got: Vec<Duration> = o.delays().take(6).collect();
        assert_eq!(got, secs(&[0.25, 0.25, 0.5, 1.0, 2.0, 3.0]));
    }

    #[test]
    fn a_cap_below_initial_holds_initial_and_zero_never_spins() {
        let o = WaitOptions {
            initial: Duration::from_secs(2),
            cap: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
        };
        let got: Vec<Duration> = o.delays().take(3).collect();
        assert_eq!(got, secs(&[2.0, 2.0, 2.0]));

        let zero = WaitOptions {
            initial: Duration::ZERO,
            cap: Duration::ZERO,
            timeout: Duration::from_secs(1),
        };
        assert!(zero.delays().take(3).all(|d| d == MIN_POLL_DELAY));
    }

    #[test]
    fn a_huge_cap_saturates_instead_of_overflowing() {
        let o = WaitOptions {
            initial: Duration::MAX / 2 + Duration::from_secs(1),
            cap: Duration::MAX,
            timeout: Duration::MAX,
        };
        let got: Vec<Duration> = o.delays().take(3).collect();
        assert_eq!(got[1], o.initial, "the time waited so far");
        assert_eq!(got[2], Duration::MAX, "the sum saturates");
    }
}
