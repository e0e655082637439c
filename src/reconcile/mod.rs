//! Reconcile: converge this host's guests toward the desired state, one journaled,
//! gated, queued mutation at a time.
//!
//! The flow is desired + actual → [`plan()`] (pure) → [`Gate`] → [`Queue`] (lane per
//! vmid) → Proxmox, with every step in the [`Journal`] and every gate decision in the
//! [`AuditLog`]. This module tree owns that flow; it never executes a destructive
//! change without the gate's verified signature, and nothing in it mutates Proxmox
//! outside the queue. Each file's own doc says what it owns.

pub(crate) mod action;
pub(crate) mod audit;
pub(crate) mod blast;
pub(crate) mod classify;
pub(crate) mod desired;
pub(crate) mod desired_cache;
pub(crate) mod engine;
pub(crate) mod executor;
pub(crate) mod gate;
pub(crate) mod jobs;
pub(crate) mod journal;
pub(crate) mod normalize;
pub(crate) mod op_results;
pub(crate) mod plan;
pub(crate) mod provision;
pub(crate) mod queue;
pub(crate) mod recover;
pub(crate) mod restore_overwrite;
pub(crate) mod restore_results;
pub(crate) mod restore_test;
pub(crate) mod rotation;
pub(crate) mod source;

pub use action::{Outcome, shutdown_params};
pub use audit::{
    AUDIT_STRING_MAX, AuditDelivery, AuditError, AuditField, AuditLog, AuditRecord, AuditWatcher,
    DEFAULT_MAX_BYTES, MIN_MAX_BYTES, PENDING_SIGNATURE, cap,
};
pub use blast::{RESUME_MARKER, is_disruptive, request_resume, resume_marker_path};
pub use classify::{Intent, OpClass, Provenance, SIGNED_CATALOGUE};
pub use desired::{DesiredGuest, DesiredProvider, DesiredState, Run, Spec, StaticProvider};
pub use desired_cache::{DesiredCache, DesiredOfferError, Offered};
pub use engine::{
    Engine, EngineError, EngineOptions, PASS_TASK_WAIT, Pacing, PassObserver, PassReport,
};
pub use executor::ProxmoxExecutor;
pub use gate::{
    AllowReason, Decision, Gate, GuestNow, HealthProbe, History, Refusal, SignedOp, TargetCheck,
};
pub use jobs::{DestructiveExecutor, JobError, JobOutcome, OnTask, SignedJobs};
pub use journal::{Journal, JournalError, JournalRecord, JournalView, OpState, RecordWatcher};
pub use normalize::Normalizers;
pub use op_results::{
    OP_RESULT_CODE_MAX, OP_RESULT_ID_MAX, OP_RESULT_NONCE_MAX, OP_RESULTS_FILE_MAX, OP_RESULTS_MAX,
    OpResult, OpResults, OpResultsError, Recorded, ResultOutcome,
};
pub use plan::{
    Action, ActionKind, ActualGuest, ActualState, Plan, ShrinkRefused, Skip, desired_memory_mib,
    desired_rootfs_bytes, plan,
};
pub use queue::{DEFAULT_IDLE, JobHandle, JobPanicked, Queue, SubmitError};
pub use recover::{RecoverReport, recover};
pub use restore_results::{
    KEPT_RESULTS, RESTORE_TESTS_FILE, RESULT_DETAIL_MAX, RestoreResults, RestoreTestResult,
    RestoreTestsState, ResultsWriteError, TestOutcome, TestStage, read_results,
};
pub use restore_test::{BootCheck, RestoreTestError, RestoreTester};
pub use rotation::{
    ROTATED, RotationExecutor, SIGNER_ADDED, SIGNER_KEPT, SIGNER_REMOVED, recover_rotations,
};
pub use source::{Provision, Source};
