#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The plan's rules, one fixture each.

mod common;
use common::spec;

use std::collections::BTreeMap;

use felhom_agent::proxmox::{GuestConfig, RunState};
use felhom_agent::reconcile::Normalizers;
use felhom_agent::reconcile::{
    Action, ActionKind, ActualGuest, ActualState, desired_memory_mib, plan,
};
use felhom_agent::reconcile::{DesiredGuest, DesiredState, Run, Spec};

fn cfg(cores: u32, memory_mib: u64, description: &str) -> GuestConfig {
    GuestConfig {
        cores: Some(cores),
        memory_mib: Some(memory_mib),
        description: Some(description.to_owned()),
        digest: Some(format!("digest-{cores}-{memory_mib}")),
        ..GuestConfig::default()
    }
}

fn guest(vmid: u32, status: RunState, config: Option<GuestConfig>) -> ActualGuest {
    ActualGuest {
        vmid,
        status,
        lock: None,
        template: false,
        config,
    }
}

fn actual(guests: impl IntoIterator<Item = ActualGuest>) -> ActualState {
    ActualState {
        guests: guests.into_iter().map(|g| (g.vmid, g)).collect(),
    }
}

fn want(vmid: u32) -> DesiredGuest {
    DesiredGuest::new(vmid)
}

fn desired(guests: impl IntoIterator<Item = DesiredGuest>) -> DesiredState {
    DesiredState::from_guests(1, guests)
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn kinds(actions: &[Action]) -> Vec<(u32, ActionKind)> {
    actions.iter().map(|a| (a.vmid, a.kind)).collect()
}

/// Applies actions the way Proxmox would, for convergence checks.
fn apply(state: &mut ActualState, actions: &[Action]) {
    for a in actions {
        let g = state.guests.get_mut(&a.vmid).unwrap();
        match a.kind {
            ActionKind::Start => g.status = RunState::Running,
            ActionKind::Stop => g.status = RunState::Stopped,
            ActionKind::Resize => panic!("no fixture here asks for a root disk size"),
            ActionKind::SetConfig => {
                let c = g.config.as_mut().unwrap();
                for (k, v) in &a.params {
                    match k.as_str() {
                        "cores" => c.cores = Some(v.parse().unwrap()),
                        "memory" => c.memory_mib = Some(v.parse().unwrap()),
                        // Proxmox hands the description back with a newline.
                        "description" => c.description = Some(format!("{v}\n")),
                        other => panic!("unexpected key {other}"),
                    }
                }
            }
            ActionKind::Create => panic!("these plans never provision: {a:?}"),
        }
    }
}

#[test]
fn in_sync_plans_nothing() {
    let d = desired([DesiredGuest {
        run: Some(Run::Running),
        spec: spec(Some(2), Some(512 << 20)),
        description: Some("web".into()),
        ..want(100)
    }]);
    let a = actual([guest(100, RunState::Running, Some(cfg(2, 512, "web\n")))]);
    let p = plan(&d, &a, &Normalizers::default());
    assert!(p.is_empty(), "{p:?}");
}

#[test]
fn sorted_by_vmid_config_before_run_state() {
    let d = desired([
        DesiredGuest {
            run: Some(Run::Running),
            spec: spec(Some(4), None),
            ..want(300)
        },
        DesiredGuest {
            run: Some(Run::Stopped),
            description: Some("db".into()),
            ..want(100)
        },
        DesiredGuest {
            run: Some(Run::Running),
            ..want(200)
        },
    ]);
    let a = actual([
        guest(300, RunState::Stopped, Some(cfg(2, 512, ""))),
        guest(100, RunState::Running, Some(cfg(2, 512, "old\n"))),
        guest(200, RunState::Stopped, Some(cfg(2, 512, ""))),
    ]);
    let p = plan(&d, &a, &Normalizers::default());
    assert_eq!(
        kinds(&p.actions),
        vec![
            (100, ActionKind::SetConfig),
            (100, ActionKind::Stop),
            (200, ActionKind::Start),
            (300, ActionKind::SetConfig),
            (300, ActionKind::Start),
        ]
    );
    assert_eq!(p.actions[0].params, params(&[("description", "db")]));
    assert_eq!(p.actions[3].params, params(&[("cores", "4")]));
    assert_eq!(p.actions[3].reason, "cores 2->4");
}

#[test]
fn one_set_config_carries_every_changed_key_and_the_digest() {
    let d = desired([DesiredGuest {
        spec: spec(Some(4), Some(2 << 30)),
        description: Some("web".into()),
        ..want(100)
    }]);
    let a = actual([guest(100, RunState::Running, Some(cfg(2, 512, "api\n")))]);
    let p = plan(&d, &a, &Normalizers::default());
    assert_eq!(p.actions.len(), 1);
    let act = &p.actions[0];
    assert_eq!(act.kind, ActionKind::SetConfig);
    assert_eq!(
        act.params,
        params(&[("cores", "4"), ("memory", "2048"), ("description", "web")])
    );
    assert_eq!(act.digest.as_deref(), Some("digest-2-512"));
}

#[test]
fn desired_but_absent_without_source_is_unprovisionable_and_skipped() {
    let d = desired([DesiredGuest {
        run: Some(Run::Running),
        spec: spec(Some(2), None),
        ..want(150)
    }]);
    let p = plan(&d, &actual([]), &Normalizers::default());
    assert!(p.actions.is_empty());
    assert_eq!(p.skipped.len(), 1);
    assert_eq!(p.skipped[0].vmid, 150);
    assert_eq!(p.skipped[0].code, "unprovisionable");
}

#[test]
fn actual_but_not_desired_is_never_touched() {
    // A running guest nobody asked for would be a destroy: not planned.
    let d = desired([]);
    let a = actual([
        guest(100, RunState::Running, Some(cfg(2, 512, ""))),
        guest(101, RunState::Stopped, None),
    ]);
    let p = plan(&d, &a, &Normalizers::default());
    assert!(p.actions.is_empty() && p.skipped.is_empty(), "{p:?}");
}

#[test]
fn never_writes_a_config_it_could_not_read() {
    let d = desired([DesiredGuest {
        run: Some(Run::Running),
        spec: spec(Some(4), Some(1 << 30)),
        description: Some("web".into()),
        ..want(100)
    }]);
    let a = actual([guest(100, RunState::Stopped, None)]);
    let p = plan(&d, &a, &Normalizers::default());
    assert_eq!(
        kinds(&p.actions),
        vec![(100, ActionKind::Start)],
        "run state still converges"
    );
    assert!(p.skipped[0].why.contains("config unreadable"));
}

#[test]
fn description_trailing_newline_is_not_drift() {
    let d = desired([DesiredGuest {
        description: Some("line one\nline two".into()),
        ..want(100)
    }]);
    let a = actual([guest(
        100,
        RunState::Running,
        Some(cfg(2, 512, "line one\nline two\n")),
    )]);
    assert!(plan(&d, &a, &Normalizers::default()).is_empty());
    // Without the normalizer the same pair would be drift.
    assert_eq!(plan(&d, &a, &Normalizers::none()).actions.len(), 1);
}

#[test]
fn unmanaged_fields_plan_nothing() {
    let d = desired([
        want(100),
        DesiredGuest {
            spec: spec(None, None),
            ..want(101)
        },
    ]);
    let a = actual([
        guest(100, RunState::Stopped, Some(cfg(1, 128, "x\n"))),
        guest(101, RunState::Running, Some(cfg(1, 128, "x\n"))),
    ]);
    assert!(plan(&d, &a, &Normalizers::default()).is_empty());
}

#[test]
fn memory_compared_in_mib_and_unaligned_sizes_converge_in_one_pass() {
    let unaligned = (1 << 30) + 12_345; // a GiB and a bit: not a whole MiB
    assert_eq!(
        desired_memory_mib(unaligned),
        1025,
        "rounded up, never less"
    );
    assert_eq!(desired_memory_mib(1 << 30), 1024);
    let d = desired([DesiredGuest {
        spec: spec(None, Some(unaligned)),
        ..want(100)
    }]);
    let mut a = actual([guest(100, RunState::Running, Some(cfg(2, 512, "")))]);
    let first = plan(&d, &a, &Normalizers::default());
    assert_eq!(first.actions.len(), 1);
    assert_eq!(first.actions[0].params, params(&[("memory", "1025")]));
    assert_eq!(first.actions[0].reason, "memory 512->1025 MiB");
    apply(&mut a, &first.actions);
    let second = plan(&d, &a, &Normalizers::default());
    assert!(second.is_empty(), "second pass after applying: {second:?}");
    // An aligned size equal in MiB is no drift either.
    let d = desired([DesiredGuest {
        spec: spec(None, Some(512 << 20)),
        ..want(100)
    }]);
    let a = actual([guest(100, RunState::Running, Some(cfg(2, 512, "")))]);
    assert!(plan(&d, &a, &Normalizers::default()).is_empty());
}

#[test]
fn full_drift_converges_in_one_pass() {
    let d = desired([
        DesiredGuest {
            run: Some(Run::Running),
            spec: spec(Some(4), Some(3 * (1 << 30) - 1)),
            description: Some("web".into()),
            ..want(100)
        },
        DesiredGuest {
            run: Some(Run::Stopped),
            spec: spec(Some(1), None),
            ..want(101)
        },
    ]);
    let mut a = actual([
        guest(100, RunState::Stopped, Some(cfg(2, 512, "old\n"))),
        guest(101, RunState::Running, Some(cfg(2, 512, ""))),
    ]);
    let first = plan(&d, &a, &Normalizers::default());
    assert_eq!(first.actions.len(), 4);
    apply(&mut a, &first.actions);
    assert!(plan(&d, &a, &Normalizers::default()).is_empty());
}

#[test]
fn disk_is_not_reconciled() {
    let d = desired([DesiredGuest {
        spec: Some(Spec {
            cores: None,
            memory_bytes: None,
            disk_bytes: Some(64 << 30),
            rootfs_bytes: None,
        }),
        ..want(100)
    }]);
    let mut c = cfg(2, 512, "");
    c.other.insert(
        "rootfs".into(),
        serde_json::json!("local-lvm:vm-100-disk-0,size=8G"),
    );
    let a = actual([guest(100, RunState::Running, Some(c))]);
    assert!(plan(&d, &a, &Normalizers::default()).is_empty());
}

#[test]
fn locked_templates_and_unknown_states_are_left_alone() {
    let d = desired([100, 101, 102].map(|v| DesiredGuest {
        run: Some(Run::Running),
        spec: spec(Some(8), None),
        ..want(v)
    }));
    let mut locked = guest(100, RunState::Stopped, Some(cfg(2, 512, "")));
    locked.lock = Some("backup".into());
    let mut template = guest(101, RunState::Stopped, Some(cfg(2, 512, "")));
    template.template = true;
    let odd = guest(102, RunState::Other("paused".into()), Some(cfg(8, 512, "")));
    let p = plan(
        &d,
        &actual([locked, template, odd]),
        &Normalizers::default(),
    );
    assert!(p.actions.is_empty(), "{p:?}");
    let why: Vec<_> = p.skipped.iter().map(|s| (s.vmid, s.why.as_str())).collect();
    assert!(why[0].1.contains("locked (backup)"), "{why:?}");
    assert!(why[1].1.contains("template"), "{why:?}");
    assert!(why[2].1.contains("\"paused\""), "{why:?}");
}

#[test]
fn the_plan_is_pure_and_deterministic() {
    let d = desired([DesiredGuest {
        run: Some(Run::Running),
        spec: spec(Some(4), Some(1 << 30)),
        ..want(100)
    }]);
    let a = actual([guest(100, RunState::Stopped, Some(cfg(2, 512, "")))]);
    let n = Normalizers::default();
    let p1 = plan(&d, &a, &n);
    let p2 = plan(&d, &a, &n);
    assert_eq!(p1, p2);
    assert_eq!(a.guests[&100].status, RunState::Stopped, "inputs untouched");
}
