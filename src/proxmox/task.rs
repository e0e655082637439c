//! Proxmox tasks as the API shows them: a task's state, exit status, log and list
//! row, the filter for listing them, and what `vzdump` answers. Decoding only: this
//! module never talks to Proxmox and never waits.

use super::decode::{DecodeError, Obj, wrong};
use super::upid::Upid;

/// Whether a task still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// The worker process is alive.
    Running,
    /// It ended; see the exit status.
    Stopped,
}

/// How a stopped task ended, read from its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskExit {
    /// `OK`.
    Ok,
    /// `WARNINGS: n`: success, with `n` warnings in the log.
    Warnings(u32),
    /// Anything else: the error text (`unexpected status` when Proxmox lost track).
    Failed(String),
}

impl TaskExit {
    /// Classifies an exit status text.
    pub fn parse(exitstatus: &str) -> TaskExit {
        if exitstatus == "OK" {
            return TaskExit::Ok;
        }
        if let Some(n) = exitstatus.strip_prefix("WARNINGS:") {
            return TaskExit::Warnings(n.trim().parse().unwrap_or(0));
        }
        TaskExit::Failed(exitstatus.to_string())
    }

    /// Whether the task succeeded (warnings included).
    pub fn is_success(&self) -> bool {
        !matches!(self, TaskExit::Failed(_))
    }
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStatus {
    /// The task.
    pub upid: Upid,
    /// Running or stopped.
    pub state: TaskState,
    /// The exit status, once stopped: `OK`, `WARNINGS: n`, or an error text.
    pub exitstatus: Option<String>,
    /// The task type.
    pub task_type: String,
    /// The object id (vmid), possibly empty.
    pub id: String,
    /// The user (without token).
    pub user: String,
    /// The token name, when a token started it.
    pub tokenid: Option<String>,
    /// Start time, seconds since the epoch.
    pub starttime: u64,
}

impl TaskStatus {
    pub(crate) fn decode(o: &Obj<'_>) -> Result<Self, DecodeError> {
        let raw = o.string("upid")?;
        let upid = Upid::parse(&raw).map_err(|_| wrong(o.path("upid"), "a UPID", o.get("upid")))?;
        let state = match o.string("status")?.as_str() {
            "running" => TaskState::Running,
            "stopped" => TaskState::Stopped,
            _ => {
                return Err(wrong(
                    o.path("status"),
                    "\"running\" or \"stopped\"",
                    o.get("status"),
                ));
            }
        };
        Ok(TaskStatus {
            upid,
            state,
            exitstatus: o.opt_string("exitstatus")?,
            task_type: o.opt_string("type")?.unwrap_or_default(),
            id: o.opt_string("id")?.unwrap_or_default(),
            user: o.opt_string("user")?.unwrap_or_default(),
            tokenid: o.opt_string("tokenid")?,
            starttime: o.opt_u64("starttime")?.unwrap_or(0),
        })
    }

    /// How it ended; `None` while running. A stopped task without an exit status
    /// counts as failed (`unexpected status`), as Proxmox itself reports it.
    pub fn exit(&self) -> Option<TaskExit> {
        match self.state {
            TaskState::Running => None,
            TaskState::Stopped => Some(TaskExit::parse(
                self.exitstatus.as_deref().unwrap_or("unexpected status"),
            )),
        }
    }
}

/// One line of a task log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLogLine {
    /// Line number, from 1.
    pub n: u64,
    /// The text.
    pub text: String,
}

/// A page of a task log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskLog {
    /// The lines of this page.
    pub lines: Vec<TaskLogLine>,
    /// Lines in the whole log, when Proxmox says.
    pub total: Option<u64>,
}

/// A row of `GET /nodes/{node}/tasks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSummary {
    /// The task.
    pub upid: Upid,
    /// The task type.
    pub task_type: String,
    /// The object id (vmid), possibly empty.
    pub id: String,
    /// The user (without token).
    pub user: String,
    /// The token name, when a token started it.
    pub tokenid: Option<String>,
    /// Start time, seconds since the epoch.
    pub starttime: u64,
    /// End time, once finished.
    pub endtime: Option<u64>,
    /// The exit status once finished (`OK`, `WARNINGS: n`, error), `RUNNING` for
    /// active tasks listed with `source=active|all`.
    pub status: Option<String>,
}

impl TaskSummary {
    pub(crate) fn decode(o: &Obj<'_>) -> Result<Self, DecodeError> {
        let raw = o.string("upid")?;
        let upid = Upid::parse(&raw).map_err(|_| wrong(o.path("upid"), "a UPID", o.get("upid")))?;
        Ok(TaskSummary {
            task_type: o
                .opt_string("type")?
                .unwrap_or_else(|| upid.task_type().to_string()),
            id: o.opt_string("id")?.unwrap_or_else(|| upid.id().to_string()),
            user: o
                .opt_string("user")?
                .unwrap_or_else(|| upid.user().to_string()),
            tokenid: o.opt_string("tokenid")?,
            starttime: o
                .opt_u64("starttime")?
                .unwrap_or(u64::from(upid.starttime())),
            endtime: o.opt_u64("endtime")?,
            status: o.opt_string("status")?,
            upid,
        })
    }
}

/// Which tasks `list_tasks` reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TaskSource {
    /// Finished tasks only (Proxmox's default).
    #[default]
    Archive,
    /// Running tasks only.
    Active,
    /// Both.
    All,
}

/// Filters for `list_tasks`. Recovery looks a dispatched task up by vmid, type and
/// start time, so all three are here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only tasks on this guest.
    pub vmid: Option<u32>,
    /// Only tasks of this type (`vzstart`, `vzdump`, ...).
    pub task_type: Option<String>,
    /// Only tasks started at or after this time (seconds since the epoch).
    pub since: Option<u64>,
    /// Only tasks started at or before this time.
    pub until: Option<u64>,
    /// Finished, running, or both.
    pub source: TaskSource,
    /// At most this many rows (Proxmox's default is 50).
    pub limit: Option<u32>,
}

/// How vzdump takes the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupMode {
    /// Live, from a storage snapshot (default).
    Snapshot,
    /// Suspend the guest during the copy.
    Suspend,
    /// Stop the guest during the copy.
    Stop,
}

impl BackupMode {
    /// The API value.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupMode::Snapshot => "snapshot",
            BackupMode::Suspend => "suspend",
            BackupMode::Stop => "stop",
        }
    }
}

/// Backup archive compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Uncompressed.
    None,
    /// gzip.
    Gzip,
    /// lzo.
    Lzo,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The API value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "0",
            Compression::Gzip => "gzip",
            Compression::Lzo => "lzo",
            Compression::Zstd => "zstd",
        }
    }
}

/// What `vzdump` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VzdumpOutcome {
    /// A backup task runs on this node.
    Task(Upid),
    /// Proxmox answered `OK` without a task: the guest is not on this node.
    NotLocal,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn obj<T>(v: Value, f: impl Fn(&Obj<'_>) -> Result<T, DecodeError>) -> Result<T, DecodeError> {
        f(&Obj::new(&v, "data")?)
    }

    #[test]
    fn task_shapes() {
        let upid = "UPID:dahu-2:00007323:00103625:6419A3D8:vzstart:100:root@pam!tok:";
        let st = obj(
            json!({"id": "100", "pid": 29475, "status": "stopped", "type": "vzstart",
                   "pstart": 1062565, "exitstatus": "WARNINGS: 1", "upid": upid,
                   "starttime": 1679411960, "user": "root@pam", "tokenid": "tok", "node": "dahu-2"}),
            TaskStatus::decode,
        )
        .unwrap();
        assert_eq!(st.state, TaskState::Stopped);
        assert_eq!(st.exit(), Some(TaskExit::Warnings(1)));
        assert_eq!(st.upid.as_str(), upid);
        let running = obj(
            json!({"upid": upid, "status": "running", "id": 100}),
            TaskStatus::decode,
        )
        .unwrap();
        assert_eq!(running.exit(), None);
        assert_eq!(running.id, "100");
        let lost = obj(
            json!({"upid": upid, "status": "stopped"}),
            TaskStatus::decode,
        )
        .unwrap();
        assert_eq!(
            lost.exit(),
            Some(TaskExit::Failed("unexpected status".into()))
        );
        let e = obj(
            json!({"upid": "junk", "status": "stopped"}),
            TaskStatus::decode,
        )
        .unwrap_err();
        assert_eq!(e.field, "data.upid");
        let row = obj(
            json!({"upid": upid, "node": "dahu-2", "pid": 29475, "pstart": 1062565,
                   "starttime": 1679411960, "type": "vzstart", "id": "100", "user": "root@pam",
                   "endtime": 1679411962, "status": "OK"}),
            TaskSummary::decode,
        )
        .unwrap();
        assert_eq!(row.endtime, Some(1_679_411_962));
        assert_eq!(row.status.as_deref(), Some("OK"));
        assert_eq!(row.task_type, "vzstart");
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(TaskExit::parse("OK"), TaskExit::Ok);
        assert_eq!(TaskExit::parse("WARNINGS: 3"), TaskExit::Warnings(3));
        assert!(TaskExit::parse("WARNINGS: 3").is_success());
        assert_eq!(
            TaskExit::parse("job errors"),
            TaskExit::Failed("job errors".into())
        );
        assert!(!TaskExit::parse("unexpected status").is_success());
    }
}
