//! The hub side of the agent: the host-report contract, the collector that fills it,
//! the client that posts it, the control envelope that answers it, and the poller that
//! repeats it.
//!
//! Data flows one way: [`collect::Collector`] reads the node (read-only) →
//! [`report::HostReport`] → the hub client posts it → [`envelope::ControlEnvelope`] →
//! [`poller::Poller`] adopts the interval and keeps the envelope for the reconcile
//! engine. The signed-ops feed and the desired-state feed fetch what the envelope
//! announces. Nothing here mutates Proxmox, and the hub's bearer key never leaves the
//! client's request header: not in an error, a log line or a `Debug`.

pub(crate) mod client;
pub(crate) mod collect;
pub(crate) mod desired_feed;
pub(crate) mod envelope;
pub(crate) mod events;
pub(crate) mod ops_feed;
pub(crate) mod poller;
pub(crate) mod report;
pub(crate) mod round;

pub use client::{HubClient, HubClientError, HubClientOptions, HubSetupError};
pub use collect::{
    AuditTail, CloudflaredProbe, CollectError, Collector, HealthProbe, HostReader, NoAudit,
    NoOpResults, NoPause, NoRestoreTests, NoSignerPolicy, OpResultsSource, PauseSource, ReadError,
    RestoreTestsSource, SignerPolicySource,
};
pub use desired_feed::{DesiredFetch, DesiredFetchError, DesiredStateClient, generation_etag};
pub use envelope::{
    ControlEnvelope, EnvelopeError, MAX_ACK_ID_BYTES, MAX_ACKS, MAX_POLL_SECONDS, MIN_POLL_SECONDS,
};
pub use events::{
    AckHook, DEFAULT_EVENT_WAIT, EventError, EventStream, EventsClient, EventsError, HubEvent,
    MAX_CURSOR_BYTES, REPROBE_AFTER_404,
};
pub use ops_feed::{Announcement, DeliveredOp, FetchError, SignedOpsClient};
pub use poller::{Poller, Reporter, SharedEnvelope, Sleeper};
pub use report::{
    AuditEntry, CpuMetrics, DiskReport, GuestSpec, GuestStatus, Health, HostMetrics, HostReport,
    LoadAverage, PENDING_SIGNATURES_MAX, PROBE_OK, PROBE_UNKNOWN, PauseReport, RESTORE_TESTS_MAX,
    RestoreTest, SIGNED_OP_RESULTS_MAX, SensorReport, SignedOpResult, SignerPolicyReport, Usage,
};
pub use round::{HubRound, HubRoundError};
