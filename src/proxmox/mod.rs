//! The Proxmox VE side of the agent: the API client and the fenced privileged backend.
//!
//! [`Client`] owns every conversation with the Proxmox API of the node the agent runs
//! on: token authentication, typed reads, mutations that answer a task id ([`Upid`])
//! or (config writes) nothing, [`Client::wait_task`], and errors classified for the
//! callers' policies ([`ApiError`], [`TaskError`], [`ProxmoxError::never_sent`]). It never
//! spawns a process.
//!
//! [`Privileged`] owns the few root operations the API cannot do, through an argv
//! runner with strictly validated arguments. It never opens a socket. `tests/fence.rs`
//! reads the sources of both to hold that line.

mod answer;
mod capacity;
mod client;
mod create;
mod decode;
mod error;
pub(crate) mod privileged;
mod task;
mod types;
mod upid;
mod validate;
mod wait;

pub use answer::{Answer, decode_answer};
pub use capacity::StorageCapacity;
pub use client::{Client, ClientOptions};
pub use create::{CreateLxc, LxcSource, MAX_CORES, MAX_MEMORY_MIB, MAX_ROOTFS_GIB, MIN_MEMORY_MIB};
pub use decode::DecodeError;
pub use error::{ApiError, Privilege, ProxmoxError, is_transient_text};
pub use privileged::{
    BOOT_CHECK_PROGRAM, GoldenLxc, Output, Privileged, PrivilegedError, Programs, RunError, Runner,
    SystemRunner,
};
pub use task::{
    BackupMode, Compression, TaskExit, TaskFilter, TaskLog, TaskLogLine, TaskSource, TaskState,
    TaskStatus, TaskSummary, VzdumpOutcome,
};
pub use types::{
    ConfigChange, CpuInfo, FsUsage, Guest, GuestConfig, MemoryUsage, Node, NodeStatus, RunState,
    Snapshot, Storage, StorageStatus, Version, Volume,
};
pub use upid::{Upid, UpidError};
pub use validate::{InvalidArgument, VMID_RANGE};
pub use wait::{LOG_TAIL_LINES, TaskError, TaskOutcome, WaitError, WaitOptions};
