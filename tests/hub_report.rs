//! The host-report contract (golden file) and the collector's partial-failure policy,
//! against in-memory fakes of the Proxmox reader, the cloudflared probe and the audit
//! provider.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use felhom_agent::app::wire_entry;
use felhom_agent::base::{ManualClock, Timestamp};
use felhom_agent::hub::{
    AuditEntry, CpuMetrics, GuestSpec, GuestStatus, HostMetrics, HostReport, LoadAverage,
    PENDING_SIGNATURES_MAX, RestoreTest, SIGNED_OP_RESULTS_MAX, SignedOpResult, Usage,
};
use felhom_agent::hub::{
    AuditTail, CloudflaredProbe, CollectError, Collector, HealthProbe, HostReader, NoAudit,
    OpResultsSource, ReadError, RestoreTestsSource, SignerPolicyReport, SignerPolicySource,
};
use felhom_agent::proxmox::{
    DiskHealth, Guest, GuestConfig, RunState, SensorReading, StorageStatus, Volume,
};
use felhom_agent::reconcile::{AuditDelivery, AuditRecord, cap};
use serde_json::Value;

const GOLDEN: &str = include_str!("../vectors/host-report.golden.json");

/// The report's top-level fields that are arrays.
const COLLECTIONS: &[&str] = &[
    "guests",
    "storage_targets",
    "backups",
    "restore_tests",
    "pbs_snapshots",
    "audit_tail",
    "pending_signatures",
    "signed_op_results",
];

fn fail(what: &str) -> ReadError {
    format!("simulated failure: {what}").into()
}

/// A node whose every read can be made to fail.
#[derive(Default)]
struct FakeNode {
    node_fails: bool,
    guests_fail: bool,
    storages_fail: bool,
    guests: Vec<Guest>,
    cores: HashMap<u32, Option<u32>>,
    digests: HashMap<u32, String>,
    config_fails: BTreeSet<u32>,
    storages: Vec<StorageStatus>,
    content: HashMap<String, Vec<Volume>>,
    content_fails: BTreeSet<String>,
    content_reads: Mutex<Vec<String>>,
}

fn metrics() -> HostMetrics {
    HostMetrics {
        node: "pve".into(),
        pve_version: "9.2.11".into(),
        uptime_seconds: 873_421,
        cpu: CpuMetrics {
            usage: 0.0412,
            cpus: 8,
        },
        memory: Usage {
            total_bytes: 34_359_738_368,
            used_bytes: 9_663_676_416,
        },
        rootfs: Usage {
            total_bytes: 100_861_726_720,
            used_bytes: 14_495_514_624,
        },
        load: LoadAverage {
            avg1: 0.12,
            avg5: 0.1,
            avg15: 0.05,
        },
    }
}

impl HostReader for FakeNode {
    fn node(&self) -> String {
        "pve".into()
    }
    fn host_metrics(&self) -> Result<HostMetrics, ReadError> {
        if self.node_fails {
            return Err(fail("node status"));
        }
        Ok(metrics())
    }
    fn guests(&self) -> Result<Vec<Guest>, ReadError> {
        if self.guests_fail {
            return Err(fail("guest list"));
        }
        Ok(self.guests.clone())
    }
    fn guest_config(&self, vmid: u32) -> Result<GuestConfig, ReadError> {
        if self.config_fails.contains(&vmid) {
            return Err(fail("guest config"));
        }
        Ok(GuestConfig {
            cores: self.cores.get(&vmid).copied().flatten(),
            digest: self.digests.get(&vmid).cloned(),
            ..GuestConfig::default()
        })
    }
    fn storages(&self) -> Result<Vec<StorageStatus>, ReadError> {
        if self.storages_fail {
            return Err(fail("storages"));
        }
        Ok(self.storages.clone())
    }
    fn backup_content(&self, storage: &str) -> Result<Vec<Volume>, ReadError> {
        self.content_reads.lock().unwrap().push(storage.to_owned());
        if self.content_fails.contains(storage) {
            return Err(fail("content"));
        }
        Ok(self.content.get(storage).cloned().unwrap_or_default())
    }
}

struct Probe(Result<&'static str, &'static str>);

/// A health probe answering fixed readings, or failing.
struct FakeHealth {
    disks: Result<Vec<DiskHealth>, &'static str>,
    sensors: Result<Vec<SensorReading>, &'static str>,
}

impl HealthProbe for FakeHealth {
    fn disks(&self) -> Result<Vec<DiskHealth>, ReadError> {
        self.disks.clone().map_err(fail)
    }
    fn sensors(&self) -> Result<Vec<SensorReading>, ReadError> {
        self.sensors.clone().map_err(fail)
    }
}

/// The golden host's health: an NVMe disk that passes, a SATA disk that fails SMART
/// with reallocated sectors, one CPU package sensor.
fn golden_health() -> FakeHealth {
    FakeHealth {
        disks: Ok(vec![
            DiskHealth {
                device: "/dev/nvme0n1".into(),
                model: Some("Samsung SSD 980 PRO 1TB".into()),
                smart_ok: Some(true),
                temperature_c: Some(38),
                reallocated_sectors: None,
            },
            DiskHealth {
                device: "/dev/sda".into(),
                model: Some("ST4000VN008-2DR166".into()),
                smart_ok: Some(false),
                temperature_c: Some(41),
                reallocated_sectors: Some(112),
            },
        ]),
        sensors: Ok(vec![SensorReading {
            name: "coretemp-isa-0000/Package id 0".into(),
            celsius: 47.0,
        }]),
    }
}

impl CloudflaredProbe for Probe {
    fn is_active(&self) -> Result<String, ReadError> {
        self.0.map(str::to_owned).map_err(fail)
    }
}

/// A guest as the LXC list shows it; `None` is a status Proxmox left empty.
fn guest(vmid: u32, name: &str, status: Option<&str>) -> Guest {
    let status = match status {
        Some("running") => RunState::Running,
        Some("stopped") => RunState::Stopped,
        other => RunState::Other(other.unwrap_or_default().into()),
    };
    Guest {
        vmid,
        name: Some(name.into()),
        status,
        cpus: Some(2.0),
        cpu: None,
        mem: None,
        maxmem: Some(536_870_912),
        swap: None,
        maxswap: None,
        disk: None,
        maxdisk: Some(8_589_934_592),
        uptime: None,
        lock: None,
        tags: None,
        template: false,
        ha_managed: None,
    }
}

fn storage(name: &str, kind: &str, content: &[&str]) -> StorageStatus {
    StorageStatus {
        storage: name.into(),
        kind: kind.into(),
        content: content.iter().map(|s| s.to_string()).collect(),
        active: true,
        enabled: true,
        shared: false,
        total: Some(100_861_726_720),
        used: Some(14_495_514_624),
        avail: Some(81_191_329_792),
        used_fraction: None,
    }
}

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

/// A volume's `ctime` as Proxmox sends it: seconds since the epoch.
fn epoch(s: &str) -> u64 {
    u64::try_from(ts(s).0).unwrap()
}

/// The node behind the golden file: one guest, one dir storage with a backup, one PBS
/// storage with a container snapshot (and a VM snapshot that is not reported).
fn golden_node() -> FakeNode {
    let mut n = FakeNode {
        guests: vec![guest(100, "web", Some("running"))],
        storages: vec![
            StorageStatus {
                shared: true,
                total: Some(4_398_046_511_104),
                used: Some(1_099_511_627_776),
                avail: Some(3_298_534_883_328),
                ..storage("pbs", "pbs", &["backup"])
            },
            storage("local", "dir", &["vztmpl", "iso", "backup"]),
        ],
        ..FakeNode::default()
    };
    n.cores.insert(100, Some(2));
    n.digests
        .insert(100, "2a3f6c1e9b0d4c8a7e5f1b2c3d4e5f60718293a4".into());
    n.content.insert(
        "local".into(),
        vec![Volume {
            volid: "local:backup/vzdump-lxc-100-2026_11_21-02_00_00.tar.zst".into(),
            content: "backup".into(),
            format: "tar.zst".into(),
            size: 734_003_200,
            ctime: Some(epoch("2026-11-21T02:00:00Z")),
            vmid: Some(100),
            notes: Some("web nightly".into()),
            protected: false,
            verification: None,
            ..Volume::default()
        }],
    );
    n.content.insert(
        "pbs".into(),
        vec![
            Volume {
                volid: "pbs:backup/vm/300/2026-11-21T03:00:00Z".into(),
                content: "backup".into(),
                format: "pbs-vm".into(),
                size: 1,
                ctime: Some(0),
                vmid: Some(300),
                ..Volume::default()
            },
            Volume {
                volid: "pbs:backup/ct/100/2026-11-21T03:00:00Z".into(),
                content: "backup".into(),
                format: "pbs-ct".into(),
                size: 812_646_400,
                ctime: Some(epoch("2026-11-21T03:00:00Z")),
                vmid: Some(100),
                notes: None,
                protected: true,
                verification: Some("ok".into()),
                ..Volume::default()
            },
        ],
    );
    n
}

/// The golden audit entry: a signed destroy the hub delivered that failed with a long
/// task error, recorded as the audit log records it (the reason cut) and carried to
/// the wire by the app's bridge.
fn audit_entry() -> AuditEntry {
    let reason = format!(
        "op-5c1f0e9a failed: task UPID:pve:0001A2B3:00C4D5E6:6740B1A0:vzdestroy:105:felhom-agent@pve!agent: exit status: {}",
        "lvremove 'pve/vm-105-disk-0' error: Logical volume pve/vm-105-disk-0 in use. ".repeat(16)
    );
    let mut e = AuditRecord::new(
        ts("2026-11-22T09:58:12Z"),
        "guest_destroy",
        Some("105".into()),
        "failed",
        reason,
        None,
    );
    e.delivery = Some(AuditDelivery {
        hub_op_id: Some("op-7".into()),
        nonce: Some("5f0c9e2a7b41d8c36e1f90a4b2d7c85e".into()),
        index: Some(0),
        blob_sha256: Some(
            "b9c5de384486f63ec4bce574e21ced2be71368048f46df2f3789371aea7a9f80".into(),
        ),
        blob_bytes: Some(331),
    });
    wire_entry(cap(e))
}

/// The golden pending entry: the gate held an unsigned destroy of 106.
fn pending_entry() -> AuditEntry {
    AuditEntry::new(
        ts("2026-11-22T09:59:40Z"),
        "guest_destroy",
        Some("106".into()),
        "pending_signature",
        "destructive operation without a verified signature",
        None,
    )
}

/// An audit provider with a fixed tail and fixed pending entries.
struct FixedAudit {
    tail: Vec<AuditEntry>,
    pending: Result<Vec<AuditEntry>, String>,
}

impl AuditTail for FixedAudit {
    fn last(&self, _n: usize) -> Result<Vec<AuditEntry>, ReadError> {
        Ok(self.tail.clone())
    }
    fn pending(&self) -> Result<Vec<AuditEntry>, ReadError> {
        self.pending.clone().map_err(|e| fail(&e))
    }
}

/// The golden signed-op result: the failed destroy of the golden audit entry.
fn op_result() -> SignedOpResult {
    SignedOpResult {
        id: "op-7".into(),
        nonce: Some("5f0c9e2a7b41d8c36e1f90a4b2d7c85e".into()),
        outcome: "failed".into(),
        code: "failed".into(),
        at: ts("2026-11-22T09:58:12Z"),
    }
}

/// A results source with fixed results, or a failure.
struct FixedResults(Result<Vec<SignedOpResult>, String>);

impl OpResultsSource for FixedResults {
    fn signed_op_results(&self) -> Result<Vec<SignedOpResult>, ReadError> {
        self.0.clone().map_err(|e| fail(&e))
    }
}

struct FixedRestoreTests(Vec<RestoreTest>);

impl RestoreTestsSource for FixedRestoreTests {
    fn restore_tests(&self) -> Vec<RestoreTest> {
        self.0.clone()
    }
}

/// The golden file's restore test: a boot check that failed.
fn restore_test() -> RestoreTest {
    RestoreTest {
        vmid: 100,
        backup_volid: "local:backup/vzdump-lxc-100-2026_11_21-02_00_00.tar.zst".into(),
        scratch_vmid: Some(9900),
        started_at: Timestamp::parse_rfc3339("2026-11-22T04:00:00Z").unwrap(),
        duration_seconds: 94,
        outcome: "failed".into(),
        stage: Some("boot_check".into()),
        detail: Some("/usr/sbin/pct: exit code 255".into()),
        size_bytes: Some(1_073_741_824),
    }
}

fn collector(
    node: FakeNode,
    probe: Probe,
    audit: Arc<dyn AuditTail>,
) -> Collector<FakeNode, Probe> {
    let clock = ManualClock::new(ts("2026-11-22T10:00:00Z"));
    Collector::new("pve-a", "0.1.0", node, probe, audit, Arc::new(clock))
}

fn one_audit_entry() -> Arc<dyn AuditTail> {
    Arc::new(FixedAudit {
        tail: vec![audit_entry()],
        pending: Ok(vec![pending_entry()]),
    })
}

/// The golden signer policy: version 1, an operational and a recovery key.
struct GoldenPolicy;

impl SignerPolicySource for GoldenPolicy {
    fn signer_policy(&self) -> Option<SignerPolicyReport> {
        Some(SignerPolicyReport {
            version: 1,
            fingerprints: vec![
                "SHA256:bMUPVGM/1xrjcyYJDtTpG2qW15E6RFYyMIaj2Mgk6eo".into(),
                "SHA256:pGuOpgfhBD/qphQ0acV51sGwQIbn0O9MXMzmjSMzpmA".into(),
            ],
        })
    }
}

fn golden_collector_with(node: FakeNode) -> Collector<FakeNode, Probe> {
    collector(node, Probe(Ok("active")), one_audit_entry())
        .with_op_results(Arc::new(FixedResults(Ok(vec![op_result()]))))
        .with_health(Arc::new(golden_health()))
        .with_signer_policy(Arc::new(GoldenPolicy))
        .with_pause(Arc::new(GoldenPause))
        .with_restore_tests(Arc::new(FixedRestoreTests(vec![restore_test()])))
}

/// The golden pause: an operator paused the host for a disk swap.
struct GoldenPause;

impl felhom_agent::hub::PauseSource for GoldenPause {
    fn paused(&self) -> Option<felhom_agent::hub::PauseReport> {
        Some(felhom_agent::hub::PauseReport {
            reason: "disk swap in rack 3".into(),
            since: Some(ts("2026-11-22T09:00:00Z")),
            by_uid: Some(0),
        })
    }
}

/// Collects from the golden node after `edit` changed it.
fn collect_with(edit: impl FnOnce(&mut FakeNode)) -> Result<HostReport, CollectError> {
    let mut node = golden_node();
    edit(&mut node);
    golden_collector_with(node).collect()
}

fn golden_collector() -> Collector<FakeNode, Probe> {
    golden_collector_with(golden_node())
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

/// Every object in `got` has exactly the keys of the object at the same place in
/// `want`; arrays are compared element-wise against `want`'s first element.
fn same_shape(path: &str, got: &Value, want: &Value, problems: &mut Vec<String>) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            let (gk, wk) = (keys(got), keys(want));
            for k in wk.difference(&gk) {
                problems.push(format!("{path}.{k}: missing"));
            }
            for k in gk.difference(&wk) {
                problems.push(format!("{path}.{k}: not in the golden file"));
            }
            for (k, gv) in g {
                if let Some(wv) = w.get(k) {
                    same_shape(&format!("{path}.{k}"), gv, wv, problems);
                }
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            if let Some(w0) = w.first() {
                for (i, gv) in g.iter().enumerate() {
                    same_shape(&format!("{path}[{i}]"), gv, w0, problems);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn golden_file_round_trips_byte_for_byte() {
    let report: HostReport = serde_json::from_str(GOLDEN).expect("golden parses as a HostReport");
    let again = serde_json::to_string_pretty(&report).unwrap() + "\n";
    assert_eq!(again, GOLDEN, "serializing the golden report changes it");
}

#[test]
fn the_contract_field_names_are_frozen() {
    // The wire contract, written out a third time on purpose: changing a field means
    // changing the type, the golden file and this list together.
    let golden: Value = serde_json::from_str(GOLDEN).unwrap();
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let mut top = set(&[
        "host_id",
        "agent_version",
        "reported_at",
        "host",
        "cloudflared",
        "health",
        "signer_policy",
        "paused",
    ]);
    assert_eq!(
        keys(&golden["health"]),
        set(&["disks_state", "disks", "sensors_state", "sensors"])
    );
    assert_eq!(
        keys(&golden["health"]["disks"][0]),
        set(&[
            "device",
            "model",
            "smart_ok",
            "temperature_c",
            "reallocated_sectors"
        ])
    );
    assert_eq!(
        keys(&golden["health"]["sensors"][0]),
        set(&["name", "celsius"])
    );
    top.extend(set(COLLECTIONS));
    assert_eq!(keys(&golden), top);
    for entry in [&golden["audit_tail"][0], &golden["pending_signatures"][0]] {
        assert_eq!(
            keys(entry),
            set(&[
                "at",
                "op",
                "guest_id",
                "decision",
                "reason",
                "key_id",
                "delivery",
                "truncated"
            ])
        );
    }
    assert_eq!(
        keys(&golden["audit_tail"][0]["delivery"]),
        set(&["hub_op_id", "nonce", "index", "blob_sha256", "blob_bytes"])
    );
    assert_eq!(
        keys(&golden["audit_tail"][0]["truncated"][0]),
        set(&["field", "sha256", "bytes"])
    );
    assert_eq!(
        keys(&golden["signed_op_results"][0]),
        set(&["id", "nonce", "outcome", "code", "at"])
    );
    assert_eq!(
        keys(&golden["signer_policy"]),
        set(&["version", "fingerprints"])
    );
    assert_eq!(
        keys(&golden["restore_tests"][0]),
        set(&[
            "vmid",
            "backup_volid",
            "scratch_vmid",
            "started_at",
            "duration_seconds",
            "outcome",
            "stage",
            "detail",
            "size_bytes"
        ])
    );
    assert_eq!(
        keys(&golden["host"]),
        set(&[
            "node",
            "pve_version",
            "uptime_seconds",
            "cpu",
            "memory",
            "rootfs",
            "load"
        ])
    );
    assert_eq!(keys(&golden["host"]["cpu"]), set(&["usage", "cpus"]));
    assert_eq!(
        keys(&golden["host"]["load"]),
        set(&["avg1", "avg5", "avg15"])
    );
    for usage in ["memory", "rootfs"] {
        assert_eq!(
            keys(&golden["host"][usage]),
            set(&["total_bytes", "used_bytes"])
        );
    }
    assert_eq!(
        keys(&golden["guests"][0]),
        set(&["vmid", "name", "status", "spec", "digest"])
    );
    assert_eq!(
        keys(&golden["guests"][0]["spec"]),
        set(&["cores", "memory_bytes", "disk_bytes"])
    );
}

#[test]
fn a_collected_report_has_exactly_the_golden_shape_and_values() {
    let report = golden_collector().collect().unwrap();
    let got = serde_json::to_value(&report).unwrap();
    let want: Value = serde_json::from_str(GOLDEN).unwrap();
    let mut problems = Vec::new();
    same_shape("report", &got, &want, &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
    // The golden node's data reproduces the golden file exactly.
    assert_eq!(got, want);
}

#[test]
fn a_failing_health_probe_reads_unknown_and_never_holds_the_report_back() {
    // (disks fail, sensors fail) → (disks_state, sensors_state)
    let cases = [
        (true, false, "unknown", "ok"),
        (false, true, "ok", "unknown"),
        (true, true, "unknown", "unknown"),
    ];
    for (disks_fail, sensors_fail, disks_state, sensors_state) in cases {
        let golden = golden_health();
        let probe = FakeHealth {
            disks: if disks_fail {
                Err("smartctl")
            } else {
                golden.disks
            },
            sensors: if sensors_fail {
                Err("sensors")
            } else {
                golden.sensors
            },
        };
        let report = golden_collector_with(golden_node())
            .with_health(Arc::new(probe))
            .collect()
            .expect("the report is still built");
        assert_eq!(report.health.disks_state, disks_state);
        assert_eq!(report.health.sensors_state, sensors_state);
        assert_eq!(report.health.disks.is_empty(), disks_fail);
        assert_eq!(report.health.sensors.is_empty(), sensors_fail);
        // Everything else is the golden report's.
        assert_eq!(report.guests.len(), 1);
        assert_eq!(report.cloudflared.status, "active");
    }
    // No probe wired: both unknown.
    let report = collector(golden_node(), Probe(Ok("active")), Arc::new(NoAudit))
        .collect()
        .unwrap();
    assert_eq!(report.health.disks_state, "unknown");
    assert_eq!(report.health.sensors_state, "unknown");
}

#[test]
fn empty_collections_are_arrays_never_null() {
    let node = FakeNode::default();
    let report = collector(node, Probe(Ok("inactive")), Arc::new(NoAudit))
        .collect()
        .unwrap();
    let v = serde_json::to_value(&report).unwrap();
    for field in COLLECTIONS {
        assert_eq!(v[field], Value::Array(Vec::new()), "{field}");
    }
    assert_eq!(v["paused"], Value::Null, "not paused: null, never absent");
    let mut v = v;
    v.as_object_mut().unwrap().remove("paused");
    let text = serde_json::to_string(&v).unwrap();
    assert!(!text.contains("null"), "{text}");
}

#[test]
fn spec_is_omitted_when_unknown_and_present_when_known() {
    let mut node = golden_node();
    node.guests.push(Guest {
        maxmem: None,
        maxdisk: Some(1),
        cpus: Some(1.0),
        ..guest(101, "db", Some("stopped"))
    });
    let report = collector(node, Probe(Ok("active")), Arc::new(NoAudit))
        .collect()
        .unwrap();
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(
        v["guests"][0]["spec"],
        serde_json::json!({"cores": 2, "memory_bytes": 536870912u64, "disk_bytes": 8589934592u64})
    );
    assert!(
        v["guests"][1].get("spec").is_none(),
        "unknown memory: spec omitted, not null: {}",
        v["guests"][1]
    );
}

// ---- partial-failure policy, case by case ----

#[test]
fn node_status_failing_means_no_report() {
    let err = collect_with(|n| n.node_fails = true).unwrap_err();
    assert!(matches!(err, CollectError::NodeStatus(_)), "{err:?}");
    assert!(err.to_string().contains("node status"), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn guest_list_failing_means_no_report() {
    let err = collect_with(|n| n.guests_fail = true).unwrap_err();
    assert!(matches!(err, CollectError::Guests(_)), "{err:?}");
}

#[test]
fn one_guest_config_failing_keeps_its_status_and_drops_only_its_spec() {
    let report = collect_with(|n| {
        n.guests = vec![
            guest(102, "c", Some("running")),
            guest(100, "a", Some("running")),
            guest(101, "b", Some("stopped")),
        ];
        n.cores = HashMap::from([(100, Some(2)), (101, Some(4)), (102, Some(1))]);
        n.config_fails.insert(101);
    })
    .unwrap();
    let ids: Vec<u32> = report.guests.iter().map(|g| g.vmid).collect();
    assert_eq!(ids, [100, 101, 102], "sorted by vmid, none dropped");
    let b = &report.guests[1];
    assert_eq!(b.status, GuestStatus::Stopped, "status kept");
    assert_eq!(b.spec, None, "only the spec is lost");
    assert_eq!(b.digest, None, "and the digest");
    assert_eq!(
        report.guests[0].spec,
        Some(GuestSpec {
            cores: 2,
            memory_bytes: 536_870_912,
            disk_bytes: 8_589_934_592
        })
    );
    assert_eq!(report.guests[2].spec.map(|s| s.cores), Some(1));
}

#[test]
fn empty_or_odd_status_reads_unknown() {
    let report = collect_with(|n| {
        n.guests = vec![
            guest(100, "a", None),
            guest(101, "b", Some("")),
            guest(102, "c", Some("paused")),
            guest(103, "d", Some("running")),
        ];
    })
    .unwrap();
    let statuses: Vec<GuestStatus> = report.guests.iter().map(|g| g.status).collect();
    assert_eq!(
        statuses,
        [
            GuestStatus::Unknown,
            GuestStatus::Unknown,
            GuestStatus::Unknown,
            GuestStatus::Running
        ]
    );
}

#[test]
fn cores_fall_back_to_the_effective_count_when_the_config_leaves_them_unset() {
    let report = collect_with(|n| {
        n.cores.insert(100, None);
        n.guests[0].cpus = Some(8.0);
    })
    .unwrap();
    assert_eq!(report.guests[0].spec.map(|s| s.cores), Some(8));
}

#[test]
fn a_guest_without_a_name_is_shown_as_proxmox_shows_it() {
    let report = collect_with(|n| n.guests[0].name = None).unwrap();
    assert_eq!(report.guests[0].name, "CT100");
}

#[test]
fn cloudflared_probe_failure_or_odd_answer_reads_unknown() {
    for (probe, want) in [
        (Probe(Ok("active")), "active"),
        (Probe(Ok("inactive\n")), "inactive"),
        (Probe(Ok("failed")), "failed"),
        (Probe(Ok("")), "unknown"),
        (Probe(Ok("Active; rm -rf /")), "unknown"),
        (Probe(Err("systemctl timed out")), "unknown"),
    ] {
        let report = collector(golden_node(), probe, Arc::new(NoAudit))
            .collect()
            .unwrap();
        assert_eq!(report.cloudflared.status, want);
    }
}

#[test]
fn storage_list_failing_empties_storage_collections_only() {
    let report = collect_with(|n| n.storages_fail = true).unwrap();
    assert!(report.storage_targets.is_empty());
    assert!(report.backups.is_empty());
    assert!(report.pbs_snapshots.is_empty());
    assert_eq!(report.guests.len(), 1, "the rest of the report is intact");
    assert_eq!(report.audit_tail.len(), 1);
}

#[test]
fn one_storage_content_failing_drops_only_its_volumes() {
    let report = collect_with(|n| {
        n.content_fails.insert("local".into());
    })
    .unwrap();
    assert_eq!(report.storage_targets.len(), 2, "storages still listed");
    assert!(report.backups.is_empty(), "local's backups left out");
    assert_eq!(report.pbs_snapshots.len(), 1, "pbs unaffected");
}

#[test]
fn content_is_read_only_from_active_enabled_backup_storages() {
    let mut node = golden_node();
    node.storages
        .push(storage("images", "zfspool", &["images", "rootdir"]));
    let mut off = storage("offline", "dir", &["backup"]);
    off.active = false;
    off.total = None;
    node.storages.push(off);
    let mut disabled = storage("disabled", "nfs", &["backup"]);
    disabled.enabled = false;
    node.storages.push(disabled);
    let c = golden_collector_with(node);
    let report = c.collect().unwrap();
    let mut reads = c.reader().content_reads.lock().unwrap().clone();
    reads.sort();
    assert_eq!(reads, ["local", "pbs"]);
    assert_eq!(report.storage_targets.len(), 5);
    let offline = report
        .storage_targets
        .iter()
        .find(|s| s.storage == "offline")
        .unwrap();
    assert_eq!(offline.total_bytes, None, "unknown capacity stays null");
}

#[test]
fn pbs_storages_yield_container_snapshots_and_others_yield_backups() {
    let report = golden_collector().collect().unwrap();
    assert_eq!(report.backups.len(), 1);
    assert_eq!(report.backups[0].storage, "local");
    assert_eq!(
        report.pbs_snapshots.len(),
        1,
        "the pbs-vm volume is not reported"
    );
    assert_eq!(report.pbs_snapshots[0].vmid, Some(100));
    assert_eq!(report.pbs_snapshots[0].verification.as_deref(), Some("ok"));
}

#[test]
fn audit_tail_failure_is_empty_and_an_oversized_tail_keeps_the_newest_50() {
    let failing = collector(
        golden_node(),
        Probe(Ok("active")),
        Arc::new(|_n: usize| Err::<Vec<AuditEntry>, ReadError>(fail("audit"))),
    );
    assert!(failing.collect().unwrap().audit_tail.is_empty());

    let asked = Arc::new(Mutex::new(0usize));
    let seen = asked.clone();
    let many = collector(
        golden_node(),
        Probe(Ok("active")),
        Arc::new(move |n: usize| {
            *seen.lock().unwrap() = n;
            Ok::<_, ReadError>(
                (0..70)
                    .map(|i| AuditEntry {
                        at: Timestamp(i),
                        ..audit_entry()
                    })
                    .collect(),
            )
        }),
    );
    let tail = many.collect().unwrap().audit_tail;
    assert_eq!(*asked.lock().unwrap(), 50);
    assert_eq!(tail.len(), 50);
    assert_eq!(tail[0].at, Timestamp(20));
    assert_eq!(tail[49].at, Timestamp(69));
}

#[test]
fn pending_signatures_are_reported_beside_the_tail_bounded_and_empty_when_unreadable() {
    let pending: Vec<AuditEntry> = (0..PENDING_SIGNATURES_MAX as i64 + 5)
        .map(|i| AuditEntry {
            at: Timestamp(i),
            ..pending_entry()
        })
        .collect();
    let many = collector(
        golden_node(),
        Probe(Ok("active")),
        Arc::new(FixedAudit {
            tail: Vec::new(),
            pending: Ok(pending),
        }),
    );
    let report = many.collect().unwrap();
    assert!(report.audit_tail.is_empty());
    assert_eq!(report.pending_signatures.len(), PENDING_SIGNATURES_MAX);
    assert_eq!(
        report.pending_signatures[0].at,
        Timestamp(5),
        "the newest kept"
    );

    let failing = collector(
        golden_node(),
        Probe(Ok("active")),
        Arc::new(FixedAudit {
            tail: vec![audit_entry()],
            pending: Err("pending".into()),
        }),
    );
    let report = failing.collect().unwrap();
    assert!(report.pending_signatures.is_empty());
    assert_eq!(report.audit_tail.len(), 1, "the tail is still reported");
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["pending_signatures"], Value::Array(Vec::new()));
}

#[test]
fn signed_op_results_are_reported_bounded_to_the_newest_and_empty_when_unreadable() {
    let many: Vec<SignedOpResult> = (0..SIGNED_OP_RESULTS_MAX + 3)
        .map(|i| SignedOpResult {
            id: format!("op-{i}"),
            ..op_result()
        })
        .collect();
    let report = collector(golden_node(), Probe(Ok("active")), one_audit_entry())
        .with_op_results(Arc::new(FixedResults(Ok(many))))
        .collect()
        .unwrap();
    assert_eq!(report.signed_op_results.len(), SIGNED_OP_RESULTS_MAX);
    assert_eq!(
        report.signed_op_results[0].id, "op-3",
        "the oldest go first"
    );

    let report = collector(golden_node(), Probe(Ok("active")), one_audit_entry())
        .with_op_results(Arc::new(FixedResults(Err("results".into()))))
        .collect()
        .unwrap();
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["signed_op_results"], Value::Array(Vec::new()));
    assert_eq!(report.audit_tail.len(), 1, "the rest is still reported");
}

/// The operator's pause reaches the report from the marker in the state directory,
/// fail-safe when the marker is unreadable, and both shapes validate against the
/// published schema (the one the hub simulator checks every report with).
#[test]
fn the_operator_pause_is_reported_and_validates() {
    use felhom_agent::app::PauseWatch;
    let dir = std::env::temp_dir().join(format!("felhom-report-pause-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let report = |dir: &std::path::Path| {
        let r = golden_collector()
            .with_pause(Arc::new(PauseWatch::new(dir)))
            .collect()
            .unwrap();
        let v = serde_json::to_value(&r).unwrap();
        let problems = felhom_sim::schema::validate(felhom_sim::schema::HOST_REPORT, &v);
        assert!(problems.is_empty(), "{problems:#?}");
        r
    };
    assert_eq!(report(&dir).paused, None, "no marker: not paused");
    std::fs::write(
        dir.join("pause.json"),
        r#"{"paused":true,"reason":"disk swap","by_uid":0,"at":"2026-11-22T09:00:00Z","audited":false}"#,
    )
    .unwrap();
    let paused = report(&dir).paused.expect("paused");
    assert_eq!(paused.reason, "disk swap");
    assert_eq!(paused.by_uid, Some(0));
    assert_eq!(paused.since, Some(ts("2026-11-22T09:00:00Z")));
    std::fs::write(dir.join("pause.json"), b"{not json").unwrap();
    let unreadable = report(&dir).paused.expect("an unreadable marker holds");
    assert_eq!((unreadable.since, unreadable.by_uid), (None, None));
    std::fs::write(
        dir.join("pause.json"),
        r#"{"paused":false,"reason":null,"by_uid":0,"at":"2026-11-22T09:30:00Z","audited":true}"#,
    )
    .unwrap();
    assert_eq!(report(&dir).paused, None, "resumed: not paused");
    let _ = std::fs::remove_dir_all(&dir);
}
