//! The Proxmox executor of signed ops: one function per op of the catalogue it carries.
//!
//! This module owns how an authorized destructive op becomes Proxmox calls: the op's
//! own target checked right before dispatch (the snapshot a rollback names exists; the
//! backup volume a deletion names exists, belongs to the op's guest and is not
//! protected), then one dispatch whose UPID reaches the journal before the wait. It
//! never decides whether an op may run (the gate does), never retries a dispatch, and
//! never runs an op outside the queue lane the signed job gives it.

use std::fmt;
use std::sync::Arc;

use crate::base::shutdown::Shutdown;
use crate::proxmox::{Client, ConfigChange, Upid, WaitOptions};
use crate::reconcile::classify::{Intent, OpClass};
use crate::reconcile::gate::{GuestNow, Refusal};
use crate::reconcile::jobs::{DestructiveExecutor, OnTask};

/// Executes the signed ops of the catalogue it carries through the Proxmox API and
/// waits for their tasks: `guest_destroy` (`purge`), `snapshot_rollback` (`snapshot`,
/// optional `start`), `backup_delete` (`volid`) and `restore_overwrite` (`backup`, after
/// the `stop` step when the signed params ask for it). Every other class is refused.
pub struct ProxmoxExecutor {
    client: Arc<Client>,
    wait: WaitOptions,
    shutdown: Shutdown,
}

impl fmt::Debug for ProxmoxExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxmoxExecutor").finish()
    }
}

/// A param the op needs, or why it cannot run.
fn param<'a>(intent: &'a Intent, key: &str) -> Result<&'a str, (Refusal, String)> {
    intent
        .params
        .get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            (
                Refusal::TargetMissing,
                format!("{}: params.{key} is missing", intent.class),
            )
        })
}

impl ProxmoxExecutor {
    /// An executor on `client`, waiting tasks with `wait` until `shutdown`.
    pub fn new(client: Arc<Client>, wait: WaitOptions, shutdown: Shutdown) -> ProxmoxExecutor {
        ProxmoxExecutor {
            client,
            wait,
            shutdown,
        }
    }

    /// Journals `upid` through `on_task`, then waits for it; `what` names the op in an
    /// error.
    fn journal_and_wait(
        &self,
        upid: &Upid,
        what: &str,
        on_task: &mut OnTask<'_>,
    ) -> Result<(), String> {
        crate::store::faultpoint::reached("signed:after-post");
        on_task(upid.as_str()).map_err(|e| format!("journal: {e}"))?;
        self.client
            .wait_task(upid, &self.wait, &self.shutdown)
            .map(|_| ())
            .map_err(|e| format!("{what}: {e}"))
    }

    fn guest_destroy(
        &self,
        vmid: u32,
        intent: &Intent,
        on_task: &mut OnTask<'_>,
    ) -> Result<(), String> {
        let purge = intent.params.get("purge").map(String::as_str) == Some("1");
        let what = format!("destroy {vmid}");
        let upid = self
            .client
            .destroy(vmid, purge, false)
            .map_err(|e| format!("{what}: {e}"))?;
        self.journal_and_wait(&upid, &what, on_task)
    }

    /// The snapshot named by `params.snapshot` exists on the guest now.
    fn rollback_target(&self, vmid: u32, intent: &Intent) -> Result<(), (Refusal, String)> {
        let name = param(intent, "snapshot")?;
        let snaps = self.client.list_snapshots(vmid).map_err(|e| {
            (
                Refusal::TargetMissing,
                format!("guest {vmid}: snapshots could not be read: {e}"),
            )
        })?;
        // `current` is Proxmox's "you are here" row, not a snapshot.
        if name != "current" && snaps.iter().any(|s| s.name == name) {
            Ok(())
        } else {
            Err((
                Refusal::TargetMissing,
                format!("guest {vmid} has no snapshot {name:?}"),
            ))
        }
    }

    fn snapshot_rollback(
        &self,
        vmid: u32,
        intent: &Intent,
        on_task: &mut OnTask<'_>,
    ) -> Result<(), String> {
        let name = param(intent, "snapshot").map_err(|(_, why)| why)?;
        let start = intent.params.get("start").map(String::as_str) == Some("1");
        let what = format!("rollback {vmid} to {name}");
        let upid = self
            .client
            .rollback(vmid, name, start)
            .map_err(|e| format!("{what}: {e}"))?;
        self.journal_and_wait(&upid, &what, on_task)
    }

    /// The backup volume named by `params.volid` is listed in its storage now, as a
    /// backup of this guest, and is not protected.
    fn backup_target(&self, vmid: u32, intent: &Intent) -> Result<(), (Refusal, String)> {
        let volid = param(intent, "volid")?;
        let Some((storage, _)) = volid.split_once(':') else {
            return Err((
                Refusal::TargetMissing,
                format!("params.volid {volid:?} is not STORAGE:NAME"),
            ));
        };
        let listed = self
            .client
            .storage_content(storage, Some("backup"))
            .map_err(|e| {
                (
                    Refusal::TargetMissing,
                    format!("storage {storage:?}: backups could not be read: {e}"),
                )
            })?;
        let Some(vol) = listed.iter().find(|v| v.volid == volid) else {
            return Err((
                Refusal::TargetMissing,
                format!("no backup {volid:?} in storage {storage:?}"),
            ));
        };
        if vol.vmid != Some(vmid) {
            let owner = vol
                .vmid
                .map_or("no guest".to_string(), |o| format!("guest {o}"));
            return Err((
                Refusal::ForeignVolume,
                format!("backup {volid:?} belongs to {owner}, not guest {vmid}"),
            ));
        }
        if vol.protected {
            return Err((Refusal::Protected, format!("backup {volid:?} is protected")));
        }
        Ok(())
    }

    fn backup_delete(
        &self,
        vmid: u32,
        intent: &Intent,
        on_task: &mut OnTask<'_>,
    ) -> Result<(), String> {
        let volid = param(intent, "volid").map_err(|(_, why)| why)?;
        let what = format!("delete backup {volid} of {vmid}");
        match self
            .client
            .delete_volume(volid)
            .map_err(|e| format!("{what}: {e}"))?
        {
            Some(upid) => self.journal_and_wait(&upid, &what, on_task),
            None => Ok(()),
        }
    }
}

impl DestructiveExecutor for ProxmoxExecutor {
    fn carries(&self, class: &OpClass) -> bool {
        // `rotate_signers` has its own executor (`super::rotation`).
        matches!(
            class,
            OpClass::GuestDestroy
                | OpClass::SnapshotRollback
                | OpClass::BackupDelete
                | OpClass::RestoreOverwrite
        )
    }

    fn guest_now(&self, vmid: u32) -> GuestNow {
        let cfg = match self.client.guest_config(vmid) {
            Ok(cfg) => cfg,
            Err(e) if e.api().is_some_and(|a| a.guest_missing()) => return GuestNow::Gone,
            Err(e) => return GuestNow::Unreadable(e.to_string()),
        };
        // A guest whose run state cannot be read counts as running: fail closed.
        let running = self
            .client
            .guest_status(vmid)
            .map_or(true, |g| g.status != crate::proxmox::RunState::Stopped);
        GuestNow::Present {
            protected: cfg.protected(),
            digest: cfg.digest,
            running,
        }
    }

    fn stop_guest(&self, vmid: u32, on_task: &mut OnTask<'_>) -> Result<(), String> {
        super::restore_overwrite::stop(&self.client, &self.wait, &self.shutdown, vmid, on_task)
    }

    fn check_target(&self, intent: &Intent) -> Result<(), (Refusal, String)> {
        let Some(vmid) = intent.vmid() else {
            return Ok(());
        };
        match intent.class {
            OpClass::SnapshotRollback => self.rollback_target(vmid, intent),
            OpClass::BackupDelete => self.backup_target(vmid, intent),
            _ => Ok(()),
        }
    }

    fn unprotect(&self, vmid: u32, digest: &str, on_task: &mut OnTask<'_>) -> Result<(), String> {
        let change = ConfigChange {
            set: vec![("protection".into(), "0".into())],
            delete: Vec::new(),
            digest: Some(digest.to_string()),
        };
        let upid = self
            .client
            .set_config(vmid, &change)
            .map_err(|e| format!("unprotect {vmid}: {e}"))?;
        let Some(upid) = upid else {
            return Ok(());
        };
        on_task(upid.as_str()).map_err(|e| format!("journal: {e}"))?;
        self.client
            .wait_task(&upid, &self.wait, &self.shutdown)
            .map(|_| ())
            .map_err(|e| format!("unprotect {vmid}: {e}"))
    }

    fn execute(&self, intent: &Intent, on_task: &mut OnTask<'_>) -> Result<(), String> {
        let vmid = intent
            .vmid()
            .ok_or_else(|| format!("{} needs a numeric guest_id", intent.class))?;
        match intent.class {
            OpClass::GuestDestroy => self.guest_destroy(vmid, intent, on_task),
            OpClass::SnapshotRollback => self.snapshot_rollback(vmid, intent, on_task),
            OpClass::BackupDelete => self.backup_delete(vmid, intent, on_task),
            OpClass::RestoreOverwrite => super::restore_overwrite::execute(
                &self.client,
                &self.wait,
                &self.shutdown,
                intent,
                on_task,
            ),
            ref other => Err(format!("no executor for {other}")),
        }
    }
}
