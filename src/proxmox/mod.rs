//! The Proxmox VE side of the agent: the API client and the fenced privileged backend.
//!
//! [`Client`] owns every conversation with the Proxmox API of the node the agent runs
//! on: token authentication, typed reads, mutations that answer a task id ([`Upid`])
//! or (config writes) nothing, [`Client::wait_task`], and errors classified for the
//! callers' policies ([`ApiError`], [`TaskError`], [`ProxmoxError::never_sent`]). It never
//! spawns a process.
//!
//! [`role_privileges`] and [`pveum_recipe`] say which Proxmox privileges the agent's
//! calls need, from one table of those calls ([`API_CALLS`]).
//!
//! [`Privileged`] owns the few root operations the API cannot do, through an argv
//! runner with strictly validated arguments; the host-health readings
//! ([`probe_disks`], [`probe_sensors`]) are parsed from its SMART and sensors output.
//! Neither ever opens a socket. `tests/fence.rs`
//! reads the sources of both to hold that line.

mod answer;
mod capacity;
mod client;
mod create;
mod decode;
mod error;
mod health;
pub(crate) mod privileged;
mod privileges;
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
pub use health::{
    DiskHealth, MAX_DISKS, MAX_NAME_BYTES, MAX_SENSORS, ProbeBudget, SensorReading, block_devices,
    is_probed_disk, parse_sensors, parse_smart, probe_disks, probe_sensors,
};
pub use privileged::{
    BOOT_CHECK_PROGRAM, GoldenLxc, Output, Privileged, PrivilegedError, Programs, RunError, Runner,
    SystemRunner,
};
pub use privileges::{
    API_CALLS, AclPath, ApiCall, Feature, LOCAL_ZONE, ROLE_NAME, ROLE_TOKEN, ROLE_USER,
    Requirement, bridge_acl_paths, features_needing, pveum_recipe, role_acl_paths, role_privileges,
    role_privileges_on, role_table_markdown,
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
