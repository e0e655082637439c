//! The plan: a pure function from desired and actual state to the minimal benign
//! actions (set config, start, stop) that converge them.
//!
//! Rules: only guests both desired and present are touched (provisioning and destroy
//! are not planned here); actions are sorted by vmid, config before resize before run
//! state; a config is never written unless it was read first; memory is compared in
//! MiB with the desired size rounded up, so a size that is not MiB-aligned converges in
//! one pass; the root disk (`spec.rootfs_bytes`, rounded up to MiB) only ever grows: a
//! smaller size is reported in [`Plan::shrink_refused`] and never attempted. This module does no I/O and never decides whether an
//! action is allowed — that is the gate's.

use std::collections::BTreeMap;
use std::fmt;

use super::desired::{DesiredState, Run};
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
}

impl ActionKind {
    /// `set_config`, `start` or `stop`: the op class names the gate uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::SetConfig => "set_config",
            ActionKind::Resize => "resize",
            ActionKind::Start => "start",
            ActionKind::Stop => "stop",
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
    /// Why nothing was planned for it.
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
        let skip = |why: &str| Skip {
            vmid: *vmid,
            why: why.to_owned(),
        };
        let Some(have) = actual.guests.get(vmid) else {
            out.skipped
                .push(skip("not on this host: provisioning is not planned here"));
            continue;
        };
        if have.template {
            out.skipped
                .push(skip("a template: never started or resized"));
            continue;
        }
        if let Some(lock) = &have.lock {
            out.skipped
                .push(skip(&format!("locked ({lock}): retried next pass")));
            continue;
        }

        let wants_config = want.spec.is_some() || want.description.is_some();
        match (&have.config, wants_config) {
            (Some(cfg), true) => {
                if let Some(a) = config_action(*vmid, want, cfg, norm) {
                    out.actions.push(a);
                }
            }
            (None, true) => out
                .skipped
                .push(skip("config unreadable: spec and description not compared")),
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
                (RunState::Other(s), _) => out.skipped.push(skip(&format!(
                    "run state {s:?} is neither running nor stopped: not changed"
                ))),
                _ => {}
            }
        }
    }
    out
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
