//! Provisioning: a desired guest that does not exist and names a `source` (a backup to
//! restore, or an OS template) is created, as one journaled transaction.
//!
//! The fields are read by `super::source` and the create action is planned by
//! `super::plan`; this module owns the request that action sends, and the agent's own
//! provenance around it: the `created_by_agent`
//! record (the transaction is the create's op id) is durable before the create is
//! dispatched, and the transaction ends once the create is settled — at success (the
//! guest is then managed like any other), or at a failure that left no guest. A failure
//! that left a partial guest keeps the provenance, so only the agent's own transaction
//! could ever remove that guest unsigned.
//!
//! It never creates over an existing vmid (`force` is never sent: Proxmox refuses a
//! taken vmid), never takes provenance from the desired state, and never talks to
//! Proxmox but through the lane its job runs on.

use super::journal::{Journal, JournalError};
use super::plan::Action;
use crate::base::time::Timestamp;
use crate::proxmox::{Client, CreateLxc, LxcSource, ProxmoxError};

/// The request a create action sends: never `force`; `start` when the guest is
/// desired running (Proxmox starts it at the end of the create's own task).
pub(crate) fn request(action: &Action) -> Result<CreateLxc, ProxmoxError> {
    let p = &action.params;
    let get = |k: &str| p.get(k).map(String::as_str);
    let volid = get("volid").unwrap_or_default().to_owned();
    let source = match get("source") {
        Some("backup") => LxcSource::Backup(volid),
        _ => LxcSource::Template(volid),
    };
    let mut create = CreateLxc::new(action.vmid, source, get("storage").unwrap_or_default());
    create.hostname = get("hostname").map(str::to_owned);
    create.description = get("description").map(str::to_owned);
    let number = |k: &'static str| -> Result<Option<u64>, ProxmoxError> {
        get(k)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ProxmoxError::Argument(crate::proxmox::InvalidArgument::new(
                        k,
                        v,
                        "is not a whole number",
                    ))
                })
            })
            .transpose()
    };
    create.start = get("start") == Some("1");
    create.rootfs_gib = number("rootfs_gib")?;
    create.memory_mib = number("memory")?;
    create.cores = number("cores")?.map(|c| u32::try_from(c).unwrap_or(u32::MAX));
    Ok(create)
}

/// How a create ended, for its provenance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// The task ended OK: the guest exists and is the customer's from now on.
    Succeeded,
    /// The task ran (or the request may have reached Proxmox) and failed.
    TaskFailed,
    /// Proxmox refused the request, or it never reached Proxmox: nothing of the
    /// agent's exists, whatever has the vmid now.
    NeverSent,
}

/// Ends the create's transaction once it is settled — unless its task failed and left
/// a guest behind: such a partial guest keeps the agent's provenance. The guest's
/// presence is read only after a failed task; an unreadable answer keeps the
/// provenance too (the next start's Recover does not come back to it: an operator
/// looks at the `provision_partial_guest` / `provision_settle_unread` event).
pub(crate) fn settle(
    journal: &Journal,
    client: &Client,
    vmid: u32,
    txn: &str,
    settled: Settled,
    at: Timestamp,
) -> Result<(), JournalError> {
    match settled {
        Settled::Succeeded => {
            crate::info!(
                provision_done,
                "guest provisioned; its creation transaction ends",
                vmid = vmid,
                txn = txn
            );
            return journal.end_transaction(txn, at);
        }
        Settled::NeverSent => {
            crate::info!(
                provision_failed_clean,
                "provisioning never reached Proxmox; its creation transaction ends",
                vmid = vmid,
                txn = txn
            );
            return journal.end_transaction(txn, at);
        }
        Settled::TaskFailed => {}
    }
    match client.guest_status(vmid) {
        Err(e) if e.api().is_some_and(|a| a.guest_missing()) => {
            crate::info!(
                provision_failed_clean,
                "provisioning failed and left no guest; its creation transaction ends",
                vmid = vmid,
                txn = txn
            );
            journal.end_transaction(txn, at)
        }
        Ok(_) => {
            crate::warn!(
                provision_partial_guest,
                "provisioning failed and left a partial guest; the agent's provenance is kept",
                vmid = vmid,
                txn = txn
            );
            Ok(())
        }
        Err(e) => {
            crate::warn!(
                provision_settle_unread,
                "provisioning failed and the guest could not be read; provenance kept",
                vmid = vmid,
                txn = txn,
                error = e
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::desired::{DesiredGuest, DesiredState};
    use crate::reconcile::plan::{ActionKind, create_action};
    use crate::reconcile::source::{Provision, Source};

    #[test]
    fn provisioning_fields_parse() {
        let s = DesiredState::from_json(
            br#"{"guests":[{"vmid":200,"source":{"backup":"local:backup/vzdump-lxc-100-x.tar.zst"},
            "hostname":"web-2","storage":"local-lvm","rootfs_bytes":5368709121,"run":"running"},
            {"vmid":201,"source":{"template":"local:vztmpl/debian-12.tar.zst"},"storage":"local-lvm"},
            {"vmid":202,"source":{"backup":"pbs:backup/ct/100/2024-05-01T10:00:00Z"},"storage":"local-lvm"}]}"#,
        )
        .unwrap();
        let g = &s.guests[&200];
        assert_eq!(
            g.provision.source,
            Some(Source::Backup(
                "local:backup/vzdump-lxc-100-x.tar.zst".into()
            ))
        );
        let a = create_action(g).unwrap();
        assert_eq!(a.kind, ActionKind::Create);
        assert_eq!(a.params["rootfs_gib"], "6", "rounded up to whole GiB");
        assert_eq!(a.params["hostname"], "web-2");
        assert!(!a.params.contains_key("force"));
        assert_eq!(
            create_action(&s.guests[&201]).unwrap().params["source"],
            "template"
        );
        assert!(create_action(&s.guests[&202]).is_some());
    }

    #[test]
    fn bad_provisioning_fields_name_the_path() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"vmid":200,"source":"local:backup/x"}"#,
                "guests[0].source",
            ),
            (
                r#"{"vmid":200,"source":{"backup":"a","template":"b"},"storage":"s"}"#,
                "guests[0].source",
            ),
            (
                r#"{"vmid":200,"source":{"iso":"local:iso/x"},"storage":"s"}"#,
                "guests[0].source.iso",
            ),
            (
                r#"{"vmid":200,"source":{"backup":"local:vztmpl/x"},"storage":"s"}"#,
                "guests[0].source.backup",
            ),
            (
                r#"{"vmid":200,"source":{"template":"local:backup/x"},"storage":"s"}"#,
                "guests[0].source.template",
            ),
            (
                r#"{"vmid":200,"source":{"backup":"local:backup/x"}}"#,
                "guests[0].storage",
            ),
            (r#"{"vmid":200,"hostname":"-bad"}"#, "guests[0].hostname"),
            (r#"{"vmid":200,"storage":"a b"}"#, "guests[0].storage"),
            (r#"{"vmid":200,"rootfs_bytes":0}"#, "guests[0].rootfs_bytes"),
            (
                r#"{"vmid":200,"rootfs_bytes":999999999999999999}"#,
                "guests[0].rootfs_bytes",
            ),
        ];
        for (guest, path) in cases {
            let doc = format!(r#"{{"guests":[{guest}]}}"#);
            let e = DesiredState::from_json(doc.as_bytes()).unwrap_err();
            assert_eq!(e.path, *path, "{guest}: {e}");
        }
    }

    #[test]
    fn an_absent_guest_without_source_has_no_create() {
        let mut g = DesiredGuest::new(300);
        g.provision.storage = Some("local-lvm".into());
        assert_eq!(create_action(&g), None);
    }

    #[test]
    fn the_request_never_forces_and_starts_only_a_guest_desired_running() {
        let mut g = DesiredGuest::new(200);
        g.provision = Provision {
            source: Some(Source::Backup("local:backup/a.tar.zst".into())),
            storage: Some("local-lvm".into()),
            ..Provision::default()
        };
        let r = request(&create_action(&g).unwrap()).unwrap();
        assert!(!r.force && !r.start && !r.unique);
        assert_eq!(r.source, LxcSource::Backup("local:backup/a.tar.zst".into()));
        g.run = Some(crate::reconcile::desired::Run::Running);
        let r = request(&create_action(&g).unwrap()).unwrap();
        assert!(!r.force && r.start);
    }
}
