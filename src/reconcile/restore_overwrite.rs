//! The `restore_overwrite` signed op: restore the backup `params.backup` over the
//! existing guest `guest_id` (`POST /nodes/{node}/lxc` with `restore=1`, `force=1`).
//!
//! Its params, all signed: `backup` (required, a `STORAGE:backup/…` volume id),
//! `storage` (where the restored root disk goes; default: the storage of the guest's
//! root disk now), `stop` (`"1"`: a running guest is stopped first, as a journaled op of
//! its own), `unprotect` (`"1"`: a protected guest's flag is cleared first, as for
//! `guest_destroy`). The gate has checked the binding, the guest's digest, its
//! protection and its run state before the nonce was burned; this module owns the stop
//! step's record and the two requests. It never runs unless the gate allowed the op on
//! the guest's lane, never re-sends a request (Recover resolves a crash from the
//! journal), and never overwrites a guest Proxmox sees running (Proxmox refuses it too).

use super::classify::{Intent, OpClass};
use super::gate::GuestNow;
use super::journal::{Journal, JournalError, JournalRecord};
use crate::base::shutdown::Shutdown;
use crate::base::time::Timestamp;
use crate::proxmox::{Client, CreateLxc, WaitOptions};

/// Hands a task's UPID to the journal (the signed job's `OnTask`).
type OnTask<'a> = dyn FnMut(&str) -> Result<(), JournalError> + 'a;

/// The journaled stop step a `restore_overwrite` needs first: `Some` when the op is a
/// restore, the guest runs and the signed params say `stop` (the gate refused it
/// otherwise). The record is a hard stop (`vzstop`), as Recover reads it.
pub(crate) fn stop_step(
    intent: &Intent,
    guest: &GuestNow,
    journal: &Journal,
    at: Timestamp,
) -> Option<JournalRecord> {
    let wants_stop = intent.params.get("stop").map(String::as_str) == Some("1");
    if intent.class != OpClass::RestoreOverwrite
        || !wants_stop
        || !matches!(guest, GuestNow::Present { running: true, .. })
    {
        return None;
    }
    let vmid = intent.vmid()?;
    let mut rec = JournalRecord::started(
        journal.new_op_id(&format!("stop-{vmid}")),
        vmid,
        OpClass::Stop,
        at,
    );
    rec.detail = Some("stop before restore_overwrite".into());
    Some(rec)
}

/// Stops `vmid` at once (`status/stop`) and waits for the task.
pub(crate) fn stop(
    client: &Client,
    wait: &WaitOptions,
    shutdown: &Shutdown,
    vmid: u32,
    on_task: &mut OnTask<'_>,
) -> Result<(), String> {
    let upid = client.stop(vmid).map_err(|e| format!("stop {vmid}: {e}"))?;
    on_task(upid.as_str()).map_err(|e| format!("journal: {e}"))?;
    client
        .wait_task(&upid, wait, shutdown)
        .map(|_| ())
        .map_err(|e| format!("stop {vmid}: {e}"))
}

/// Restores `params.backup` over the guest with `force=1` and waits for the task.
pub(crate) fn execute(
    client: &Client,
    wait: &WaitOptions,
    shutdown: &Shutdown,
    intent: &Intent,
    on_task: &mut OnTask<'_>,
) -> Result<(), String> {
    let vmid = intent
        .vmid()
        .ok_or_else(|| "restore_overwrite needs a numeric guest_id".to_string())?;
    let backup = intent
        .params
        .get("backup")
        .ok_or_else(|| "restore_overwrite needs params.backup".to_string())?;
    let storage = match intent.params.get("storage") {
        Some(s) => s.clone(),
        None => rootfs_storage(client, vmid)?,
    };
    let create = CreateLxc {
        force: true,
        ..CreateLxc::restore(vmid, backup, &storage)
    };
    let upid = client
        .create_lxc(&create)
        .map_err(|e| format!("restore {vmid}: {e}"))?;
    crate::store::faultpoint::reached("signed:after-post");
    on_task(upid.as_str()).map_err(|e| format!("journal: {e}"))?;
    client
        .wait_task(&upid, wait, shutdown)
        .map(|_| ())
        .map_err(|e| format!("restore {vmid}: {e}"))
}

/// The storage of the guest's root disk now (`local-lvm` of
/// `local-lvm:vm-100-disk-0,size=8G`).
fn rootfs_storage(client: &Client, vmid: u32) -> Result<String, String> {
    let cfg = client
        .guest_config(vmid)
        .map_err(|e| format!("restore {vmid}: config unreadable: {e}"))?;
    cfg.other
        .get("rootfs")
        .and_then(|v| v.as_str())
        .and_then(|r| r.split(',').next())
        .and_then(|vol| vol.split_once(':'))
        .map(|(storage, _)| storage.to_string())
        .ok_or_else(|| {
            format!("restore {vmid}: the guest has no rootfs volume; sign params.storage")
        })
}
