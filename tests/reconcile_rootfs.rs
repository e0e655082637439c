//! Benign growth of the root disk: `spec.rootfs_bytes` above the current size grows it
//! (`PUT …/resize`, `disk=rootfs`), smaller is never attempted (`shrink_refused`,
//! audited once per size asked for), equal or already grown sends nothing. Pure plan
//! cases, then the engine against the Proxmox simulator.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use felhom_agent::base::Shutdown;
use felhom_agent::proxmox::{GuestConfig, RunState};
use felhom_agent::reconcile::{
    ActionKind, ActualGuest, ActualState, DesiredGuest, DesiredState, Journal, Normalizers,
    ShrinkRefused, Spec, desired_rootfs_bytes, plan,
};
use felhom_sim::{GuestSeed, ProxmoxSim};
use serde_json::{Value, json};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn wants_rootfs(vmid: u32, bytes: u64) -> DesiredGuest {
    DesiredGuest {
        spec: Some(Spec {
            rootfs_bytes: Some(bytes),
            ..Spec::default()
        }),
        ..DesiredGuest::new(vmid)
    }
}

fn actual_with_rootfs(vmid: u32, rootfs: &str) -> ActualState {
    let mut config = GuestConfig {
        digest: Some("d1".into()),
        ..GuestConfig::default()
    };
    config.other.insert("rootfs".into(), json!(rootfs));
    ActualState {
        guests: [(
            vmid,
            ActualGuest {
                vmid,
                status: RunState::Stopped,
                lock: None,
                template: false,
                config: Some(config),
            },
        )]
        .into(),
    }
}

#[test]
fn a_larger_rootfs_plans_one_resize_a_smaller_one_a_refused_shrink_and_equal_nothing() {
    let norm = Normalizers::default();
    let have = actual_with_rootfs(100, "local-lvm:vm-100-disk-0,size=8G");
    // (desired bytes, the resize's size param, the refused shrink's asked size)
    let cases: &[(u64, Option<u64>, Option<u64>)] = &[
        (16 * GIB, Some(16 * GIB), None),
        // Not MiB-aligned: rounded up, so the next pass sees it equal.
        (8 * GIB + 1, Some(8 * GIB + MIB), None),
        (8 * GIB, None, None),
        (4 * GIB, None, Some(4 * GIB)),
        (8 * GIB - 1, None, None),
        (8 * GIB - MIB - 1, None, Some(8 * GIB - MIB)),
    ];
    for &(want, resize, shrink) in cases {
        let p = plan(
            &DesiredState::from_guests(1, [wants_rootfs(100, want)]),
            &have,
            &norm,
        );
        let sizes: Vec<u64> = p
            .actions
            .iter()
            .filter(|a| a.kind == ActionKind::Resize)
            .map(|a| {
                assert_eq!(a.params["disk"], "rootfs");
                assert_eq!(a.digest.as_deref(), Some("d1"));
                a.params["size"].parse().unwrap()
            })
            .collect();
        assert_eq!(sizes, resize.into_iter().collect::<Vec<_>>(), "{want}");
        assert_eq!(p.actions.len(), sizes.len(), "only the resize: {want}");
        let shrinks: Vec<ShrinkRefused> = p.shrink_refused.clone();
        assert_eq!(
            shrinks,
            shrink
                .map(|w| ShrinkRefused {
                    vmid: 100,
                    have_bytes: 8 * GIB,
                    want_bytes: w,
                })
                .into_iter()
                .collect::<Vec<_>>(),
            "{want}"
        );
    }
    assert_eq!(desired_rootfs_bytes(1), MIB);
}

#[test]
fn a_rootfs_without_a_size_or_a_template_is_left_alone() {
    let norm = Normalizers::default();
    let p = plan(
        &DesiredState::from_guests(1, [wants_rootfs(100, 16 * GIB)]),
        &actual_with_rootfs(100, "local-lvm:vm-100-disk-0"),
        &norm,
    );
    assert!(p.actions.is_empty() && p.shrink_refused.is_empty(), "{p:?}");
    let mut tmpl = actual_with_rootfs(100, "local-lvm:vm-100-disk-0,size=8G");
    tmpl.guests.get_mut(&100).unwrap().template = true;
    let p = plan(
        &DesiredState::from_guests(1, [wants_rootfs(100, 16 * GIB)]),
        &tmpl,
        &norm,
    );
    assert!(p.actions.is_empty() && p.shrink_refused.is_empty(), "{p:?}");
}

/// The `shrink_refused` entries in the audit log of `dir`.
fn shrink_audits(dir: &std::path::Path) -> Vec<Value> {
    fs::read_to_string(dir.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|l| l["data"].clone())
        .filter(|d| d["decision"] == json!("shrink_refused"))
        .collect()
}

fn rootfs_of(sim: &ProxmoxSim, vmid: u32) -> String {
    sim.guest_config(vmid).unwrap()["rootfs"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_engine_grows_a_disk_once_and_audits_a_shrink_once_sending_nothing_for_it() {
    let sim = ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "grow").running(true).disk_gib(8))
        .guest(GuestSeed::new(101, "shrink").running(false).disk_gib(8))
        .task_duration(Duration::from_millis(20))
        .start();
    let dir = common::tempdir("rootfs", "engine");
    let journal = Arc::new(Journal::open(&dir.join("journal.log")).unwrap());
    let gate = common::unsigned_gate(&dir, &journal);
    let desired =
        DesiredState::from_guests(1, [wants_rootfs(100, 12 * GIB), wants_rootfs(101, 4 * GIB)]);
    let (engine, queue, _provider) = common::engine_rig(
        &sim,
        gate,
        journal,
        desired,
        Shutdown::new(),
        common::engine_options(),
    );
    let first = engine.pass().unwrap();
    assert_eq!(first.applied(), 1, "{first:?}");
    assert!(
        rootfs_of(&sim, 100).contains("size=12G"),
        "{}",
        rootfs_of(&sim, 100)
    );
    assert!(rootfs_of(&sim, 101).contains("size=8G"), "never shrunk");
    let second = engine.pass().unwrap();
    assert!(second.plan.actions.is_empty(), "converged: {second:?}");
    assert_eq!(second.plan.shrink_refused.len(), 1);
    // One PUT …/resize in all, for 100; nothing ever sent for 101.
    let resizes: Vec<String> = sim
        .mutations()
        .iter()
        .filter(|m| m.path.ends_with("/resize"))
        .map(|m| m.path.clone())
        .collect();
    assert_eq!(
        resizes,
        vec![format!("/nodes/{}/lxc/100/resize", sim.node())]
    );
    assert!(
        sim.mutations().iter().all(|m| !m.path.contains("/lxc/101")),
        "{:?}",
        sim.mutations()
    );
    // Audited once across both passes, naming the guest and the size asked for.
    let audits = shrink_audits(&dir);
    assert_eq!(audits.len(), 1, "{audits:?}");
    assert_eq!(audits[0]["op"], json!("resize"));
    assert_eq!(audits[0]["guest_id"], json!("101"));
    queue.close();
}
