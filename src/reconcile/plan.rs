//! The plan: a pure function from desired and actual state to the minimal benign
//! actions (set config, start, stop) that converge them.
//!
//! Rules: guests both desired and present are converged; a desired guest that is
//! absent is created when it names a `source` (`super::provision`), and otherwise
//! skipped as `unprovisionable`; destroy is never planned. Actions are sorted by vmid,
//! config before resize before run state; a config is never written unless it was read
//! first; memory is compared in MiB with the desired size rounded up, so a size that is
//! not MiB-aligned converges in one pass; the root disk (`spec.rootfs_bytes`, rounded up
//! to MiB) only ever grows: a smaller size is reported in [`Plan::shrink_refused`] and
//! never attempted. This module does no I/O and never decides whether an
//! action is allowed — that is the gate's.

use std::collections::BTreeMap;
use std::fmt;

use super::desired::{DesiredGuest, DesiredState, Run};
use super::normalize::Normalizers;
use crate::proxmox::{GuestConfig, RunState};

const MIB: u64 = 1 << 20;

/// The memory Proxmox should hold for a desired size: MiB, rounded up so the guest
/// never gets less than asked. Planning and applying use this one function, which is
/// what makes a non-aligned size converge in one pass.
pub fn desired_memory_mib(memory_bytes: u64) -> u64 {
    memory_bytes.div_ceil(MIB)
}

/// What an action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ActionKind {
    /// Write config keys (`cores`, `memory`, `description`) in one PUT.
    SetConfig,
    /// Grow the root disk (`disk=rootfs`, `size` in bytes): never smaller.
    Resize,
    /// Start the guest.
    Start,
    /// Stop the guest.
    Stop,
    /// Create the absent guest from its desired `source` (provisioning).
    Create,
}

impl ActionKind {
    /// `set_config`, `start`, `stop` or `guest_create`: the op class names the gate uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::SetConfig => "set_config",
            ActionKind::Resize => "resize",
            ActionKind::Start => "start",
            ActionKind::Stop => "stop",
            ActionKind::Create => "guest_create",
        }
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One mutation to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// The guest.
    pub vmid: u32,
    /// What to do.
    pub kind: ActionKind,
    /// Config keys to set (only for [`ActionKind::SetConfig`]), as Proxmox takes them.
    pub params: BTreeMap<String, String>,
    /// The config digest read with the actual state: the write is refused if the
    /// config changed since.
    pub digest: Option<String>,
    /// Why, for people: `cores 2->4, description`.
    pub reason: String,
}

/// A guest the plan left alone, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// The guest.
    pub vmid: u32,
    /// Why, as a stable code: `unprovisionable` (absent, no `source`), `template`,
    /// `locked`, `config_unreadable`, `run_state_other`.
    pub code: &'static str,
    /// Why nothing was planned for it, for people.
    pub why: String,
}

/// A root disk the desired state wants smaller than it is. Proxmox cannot shrink a
/// disk and the agent never tries: the plan reports it and the engine audits it as
/// `shrink_refused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShrinkRefused {
    /// The guest.
    pub vmid: u32,
    /// The root disk's size now, in bytes.
    pub have_bytes: u64,
    /// The size the desired state asks for (rounded up to MiB), in bytes.
    pub want_bytes: u64,
}

/// What one guest is now.
#[derive(Debug, Clone, PartialEq)]
pub struct ActualGuest {
    /// The guest.
    pub vmid: u32,
    /// Running, stopped, or something else.
    pub status: RunState,
    /// A config lock (`backup`, `snapshot`, ...), if one is held.
    pub lock: Option<String>,
    /// Whether it is a template.
    pub template: bool,
    /// Its config, or `None` when it could not be read.
    pub config: Option<GuestConfig>,
}

/// What the host has now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActualState {
    /// Guests by vmid.
    pub guests: BTreeMap<u32, ActualGuest>,
}

/// The plan of one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The actions, sorted by vmid, config before run state.
    pub actions: Vec<Action>,
    /// Desired guests left alone, with the reason.
    pub skipped: Vec<Skip>,
    /// Root disks the desired state wants smaller: never attempted.
    pub shrink_refused: Vec<ShrinkRefused>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// Plans the benign actions that bring `actual` to `desired`.
pub fn plan(desired: &DesiredState, actual: &ActualState, norm: &Normalizers) -> Plan {
    let mut out = Plan::default();
    // BTreeMap iteration is vmid order; within a guest, config is pushed first.
    for (vmid, want) in &desired.guests {
        let skip = |code: &'static str, why: &str| Skip {
            vmid: *vmid,
            code,
            why: why.to_owned(),
        };
        let Some(have) = actual.guests.get(vmid) else {
            match create_action(want) {
                Some(create) => out.actions.push(create),
                None => out.skipped.push(skip(
                    "unprovisionable",
                    "not on this host and no source to create it from",
                )),
            }
            continue;
        };
        if have.template {
            out.skipped
                .push(skip("template", "a template: never started or resized"));
            continue;
        }
        if let Some(lock) = &have.lock {
            out.skipped.push(skip(
                "locked",
                &format!("locked ({lock}): retried next pass"),
            ));
            continue;
        }

        let wants_config = want.spec.is_some() || want.description.is_some();
        match (&have.config, wants_config) {
            (Some(cfg), true) => {
                if let Some(a) = config_action(*vmid, want, cfg, norm) {
                    out.actions.push(a);
                }
            }
            (None, true) => out.skipped.push(skip(
                "config_unreadable",
                "config unreadable: spec and description not compared",
            )),
            (_, false) => {}
        }
        if let (Some(cfg), Some(want_bytes)) =
            (&have.config, want.spec.and_then(|s| s.rootfs_bytes))
        {
            match rootfs_change(*vmid, want_bytes, cfg) {
                Some(Ok(a)) => out.actions.push(a),
                Some(Err(shrink)) => out.shrink_refused.push(shrink),
                None => {}
            }
        }

        if let Some(run) = want.run {
            match (&have.status, run) {
                (RunState::Stopped, Run::Running) => {
                    out.actions
                        .push(simple(*vmid, ActionKind::Start, "stopped->running"))
                }
                (RunState::Running, Run::Stopped) => {
                    out.actions
                        .push(simple(*vmid, ActionKind::Stop, "running->stopped"))
                }
                (RunState::Other(s), _) => out.skipped.push(skip(
                    "run_state_other",
                    &format!("run state {s:?} is neither running nor stopped: not changed"),
                )),
                _ => {}
            }
        }
    }
    out
}

/// The create action for an absent desired guest, or `None` when it has no source.
/// Its params are what the create sends, as journaled (Recover reads `source`).
pub(crate) fn create_action(want: &DesiredGuest) -> Option<Action> {
    let p = &want.provision;
    let source = p.source.as_ref()?;
    let storage = p.storage.as_ref()?;
    let mut params = BTreeMap::from([
        ("source".to_owned(), source.kind().to_owned()),
        ("volid".to_owned(), source.volid().to_owned()),
        ("storage".to_owned(), storage.clone()),
    ]);
    if let Some(h) = &p.hostname {
        params.insert("hostname".to_owned(), h.clone());
    }
    if let Some(bytes) = p.rootfs_bytes {
        params.insert(
            "rootfs_gib".to_owned(),
            bytes.div_ceil(super::source::GIB).to_string(),
        );
    }
    if let Some(spec) = &want.spec {
        if let Some(c) = spec.cores {
            params.insert("cores".to_owned(), c.to_string());
        }
        if let Some(m) = spec.memory_bytes {
            params.insert("memory".to_owned(), desired_memory_mib(m).to_string());
        }
    }
    if let Some(d) = &want.description {
        params.insert("description".to_owned(), d.clone());
    }
    if want.run == Some(Run::Running) {
        // Started by the create's own task (`start=1`), so one pass converges it.
        params.insert("start".to_owned(), "1".to_owned());
    }
    Some(Action {
        vmid: want.vmid,
        kind: ActionKind::Create,
        params,
        digest: None,
        reason: format!("provision from {} {}", source.kind(), source.volid()),
    })
}

fn simple(vmid: u32, kind: ActionKind, reason: &str) -> Action {
    Action {
        vmid,
        kind,
        params: BTreeMap::new(),
        digest: None,
        reason: reason.to_owned(),
    }
}

/// The root disk's size Proxmox should have for a desired size: whole MiB, rounded up
/// so the guest never gets less than asked.
pub fn desired_rootfs_bytes(rootfs_bytes: u64) -> u64 {
    rootfs_bytes.div_ceil(MIB).saturating_mul(MIB)
}

/// A grow of the root disk, a refused shrink, or nothing (same size, or a size that
/// cannot be read from the config).
fn rootfs_change(
    vmid: u32,
    want_bytes: u64,
    have: &GuestConfig,
) -> Option<Result<Action, ShrinkRefused>> {
    let have_bytes = have.rootfs_bytes()?;
    let want_bytes = desired_rootfs_bytes(want_bytes);
    if want_bytes < have_bytes {
        return Some(Err(ShrinkRefused {
            vmid,
            have_bytes,
            want_bytes,
        }));
    }
    if want_bytes == have_bytes {
        return None;
    }
    let params = BTreeMap::from([
        ("disk".to_owned(), "rootfs".to_owned()),
        ("size".to_owned(), want_bytes.to_string()),
    ]);
    Some(Ok(Action {
        vmid,
        kind: ActionKind::Resize,
        params,
        digest: have.digest.clone(),
        reason: format!("rootfs {have_bytes}->{want_bytes} bytes"),
    }))
}

fn config_action(
    vmid: u32,
    want: &super::desired::DesiredGuest,
    have: &GuestConfig,
    norm: &Normalizers,
) -> Option<Action> {
    let mut params = BTreeMap::new();
    let mut reasons = Vec::new();
    let show = |v: Option<u64>| v.map_or_else(|| "unset".to_owned(), |v| v.to_string());
    if let Some(spec) = &want.spec {
        if let Some(cores) = spec.cores
            && have.cores != Some(cores)
        {
            params.insert("cores".to_owned(), cores.to_string());
            reasons.push(format!(
                "cores {}->{cores}",
                show(have.cores.map(u64::from))
            ));
        }
        if let Some(bytes) = spec.memory_bytes {
            let mib = desired_memory_mib(bytes);
            if have.memory_mib != Some(mib) {
                params.insert("memory".to_owned(), mib.to_string());
                reasons.push(format!("memory {}->{mib} MiB", show(have.memory_mib)));
            }
        }
    }
    if let Some(text) = &want.description
        && !norm.equal("description", text, have.description.as_deref())
    {
        params.insert("description".to_owned(), text.clone());
        reasons.push("description".to_owned());
    }
    if params.is_empty() {
        return None;
    }
    Some(Action {
        vmid,
        kind: ActionKind::SetConfig,
        params,
        digest: have.digest.clone(),
        reason: reasons.join(", "),
    })
}
