#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Provisioning through the engine against the Proxmox simulator: a desired guest that
//! is absent and names a `source` is created in one journaled transaction whose
//! `created_by_agent` provenance is durable before the create is sent and ends once it
//! is settled; without a source it is `unprovisionable`; an existing vmid is never
//! re-provisioned; and Recover settles a create cut short (task found, none sent,
//! partial guest left behind).

mod common;
use common::pinned_client as client;

use std::sync::Arc;
use std::time::Duration;

use felhom_agent::base::{Clock, Shutdown, SystemClock};
use felhom_agent::proxmox::CreateLxc;
use felhom_agent::reconcile::{
    ActionKind, DesiredGuest, DesiredState, Engine, Journal, JournalRecord, OpClass, OpState,
    Outcome, Provenance, Provision, Queue, Run, Source, Spec,
};
use felhom_sim::{BackupSeed, Broken, GuestSeed, ProxmoxSim};

const BACKUP: &str = "local:backup/vzdump-lxc-100-2024_05_01-10_00_00.tar.zst";
const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";

fn sim() -> ProxmoxSim {
    ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web").cores(2).description("web"))
        .guest(GuestSeed::new(150, "customer"))
        .backup(100, "2024_05_01-10_00_00")
        .template(TEMPLATE)
        .task_duration(Duration::from_millis(30))
        .start()
}

struct Rig {
    engine: Engine,
    journal: Arc<Journal>,
    queue: Queue,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.queue.close();
    }
}

fn rig(sim: &ProxmoxSim, name: &str, desired: DesiredState) -> Rig {
    let dir = common::tempdir("provision", name);
    let journal = Arc::new(Journal::open(&dir.join("journal.log")).unwrap());
    let gate = common::unsigned_gate(&dir, &journal);
    let (engine, queue, _provider) = common::engine_rig(
        sim,
        gate,
        Arc::clone(&journal),
        desired,
        Shutdown::new(),
        common::engine_options(),
    );
    Rig {
        engine,
        journal,
        queue,
    }
}

fn from_backup(vmid: u32, volid: &str) -> DesiredGuest {
    DesiredGuest {
        run: Some(Run::Running),
        spec: Some(Spec {
            cores: Some(3),
            memory_bytes: Some(768 << 20),
            disk_bytes: None,
            rootfs_bytes: None,
        }),
        description: Some("provisioned".into()),
        provision: Provision {
            source: Some(Source::Backup(volid.into())),
            hostname: Some("web-copy".into()),
            storage: Some("local-lvm".into()),
            rootfs_bytes: Some(10 << 30),
        },
        ..DesiredGuest::new(vmid)
    }
}

fn creates(sim: &ProxmoxSim) -> usize {
    common::sent(sim, "POST", "/lxc")
}

#[test]
fn an_absent_guest_with_a_backup_source_is_restored_then_converged() {
    let sim = sim();
    let r = rig(
        &sim,
        "backup",
        DesiredState::from_guests(1, [from_backup(200, BACKUP)]),
    );
    let pass = r.engine.pass().unwrap();
    assert_eq!(pass.results.len(), 1, "{pass:?}");
    let res = &pass.results[0];
    assert_eq!(res.action.kind, ActionKind::Create);
    assert_eq!(res.outcome, Outcome::Applied, "{res:?}");
    let conf = client(&sim).guest_config(200).unwrap();
    assert_eq!(conf.hostname.as_deref(), Some("web-copy"));
    assert_eq!(conf.cores, Some(3));
    assert_eq!(conf.memory_mib, Some(768));
    assert_eq!(conf.description.as_deref(), Some("provisioned\n"));
    assert_eq!(conf.rootfs_bytes(), Some(10 << 30));
    let form = &sim.mutations()[0].form;
    assert!(
        form.iter().any(|(k, v)| k == "force" && v == "0"),
        "never forced: {form:?}"
    );
    // The transaction is over: the guest is the customer's now.
    let op = res.op_id.clone().unwrap();
    assert_eq!(r.journal.provenance(200, Some(&op)), None);

    // Desired running: the create's own task started it; the next pass has nothing
    // to do.
    assert_eq!(sim.guest_status(200).as_deref(), Some("running"));
    assert!(r.engine.pass().unwrap().results.is_empty(), "converged");
    assert_eq!(creates(&sim), 1);
}

#[test]
fn a_template_source_creates_the_guest() {
    let sim = sim();
    let mut g = from_backup(201, TEMPLATE);
    g.provision.source = Some(Source::Template(TEMPLATE.into()));
    g.run = None;
    let r = rig(&sim, "template", DesiredState::from_guests(1, [g]));
    let pass = r.engine.pass().unwrap();
    assert_eq!(pass.results[0].outcome, Outcome::Applied, "{pass:?}");
    let task = sim.tasks().into_iter().find(|t| t["id"] == "201").unwrap();
    assert_eq!(task["type"], "vzcreate");
    assert_eq!(
        client(&sim).guest_config(201).unwrap().hostname.as_deref(),
        Some("web-copy")
    );
}

#[test]
fn an_absent_guest_without_source_is_unprovisionable_and_nothing_is_sent() {
    let sim = sim();
    let mut g = DesiredGuest::new(300);
    g.run = Some(Run::Running);
    g.provision.storage = Some("local-lvm".into());
    let r = rig(&sim, "nosource", DesiredState::from_guests(1, [g]));
    let pass = r.engine.pass().unwrap();
    assert!(pass.results.is_empty(), "{pass:?}");
    let skip = &pass.plan.skipped[0];
    assert_eq!((skip.vmid, skip.code), (300, "unprovisionable"));
    assert!(sim.mutations().is_empty());
}

#[test]
fn an_existing_vmid_the_agent_did_not_create_is_never_reprovisioned() {
    let sim = sim();
    // 150 exists (a customer's); the desired entry names a source anyway.
    let before = sim.guest_digest(150).unwrap();
    let mut g = from_backup(150, BACKUP);
    g.spec = None;
    g.description = None;
    g.run = None;
    let r = rig(&sim, "existing", DesiredState::from_guests(1, [g]));
    for _ in 0..2 {
        let pass = r.engine.pass().unwrap();
        assert!(pass.results.is_empty(), "{pass:?}");
    }
    assert_eq!(creates(&sim), 0);
    assert_eq!(sim.guest_digest(150).unwrap(), before, "untouched");
    assert_eq!(r.journal.provenance(150, None), None);
}

#[test]
fn a_broken_backup_fails_the_create_leaves_nothing_and_ends_the_transaction() {
    let sim = sim();
    let volid =
        sim.add_backup(BackupSeed::vzdump(100, "2024_06_01-10_00_00").broken(Broken::Truncated));
    let r = rig(
        &sim,
        "broken",
        DesiredState::from_guests(1, [from_backup(202, &volid)]),
    );
    let pass = r.engine.pass().unwrap();
    let res = &pass.results[0];
    assert!(
        matches!(
            &res.outcome,
            Outcome::Failed {
                transient: false,
                ..
            }
        ),
        "{res:?}"
    );
    assert!(!sim.guest_ids().contains(&202));
    let op = res.op_id.clone().unwrap();
    assert_eq!(
        r.journal.provenance(202, Some(&op)),
        None,
        "no guest, no provenance"
    );
    // Backing off: the next pass sends nothing.
    let pass = r.engine.pass().unwrap();
    assert!(
        matches!(pass.results[0].outcome, Outcome::Deferred { .. }),
        "{pass:?}"
    );
    assert_eq!(creates(&sim), 1);
}

/// Journals a create as the engine would up to `state`, and returns its record.
fn journal_create(journal: &Journal, vmid: u32, upid: Option<&str>) -> JournalRecord {
    let op = journal.new_op_id(&format!("guest_create-{vmid}"));
    let mut started = JournalRecord::started(&op, vmid, OpClass::GuestCreate, SystemClock.now());
    started.params.insert("source".into(), "backup".into());
    started.params.insert("volid".into(), BACKUP.into());
    started.params.insert("storage".into(), "local-lvm".into());
    journal.append(&started).unwrap();
    journal
        .record_guest_created(vmid, &op, SystemClock.now())
        .unwrap();
    match upid {
        None => started,
        Some(u) => {
            let mut running = started.step(OpState::TaskRunning, SystemClock.now());
            running.upid = Some(u.into());
            journal.append(&running).unwrap();
            running
        }
    }
}

#[test]
fn recover_settles_every_half_done_create() {
    let sim = sim();
    let c = client(&sim);
    let dir = common::tempdir("provision", "recover");
    let journal = Journal::open(&dir.join("journal.log")).unwrap();
    let wait = common::fast_wait(Duration::from_secs(20));

    // Never sent: failed, provenance ended.
    let never = journal_create(&journal, 210, None);
    assert_eq!(
        journal.provenance(210, Some(&never.op_id)),
        Some(Provenance::CreatedInTransaction)
    );
    // Sent, UPID not journaled: found in the task list, waited, succeeded.
    let found = journal_create(&journal, 211, None);
    c.create_lxc(&CreateLxc::restore(211, BACKUP, "local-lvm"))
        .unwrap();
    // Sent with the UPID journaled, and the node died under it: a partial guest.
    let upid = c
        .create_lxc(&CreateLxc::restore(212, BACKUP, "local-lvm"))
        .unwrap();
    let partial = journal_create(&journal, 212, Some(upid.as_str()));
    assert!(sim.interrupt_create(212));

    let report = common::recover_sending_nothing(&journal, &sim, &c, &wait, "creates");
    assert_eq!(report.succeeded, std::slice::from_ref(&found.op_id));
    assert_eq!(report.failed.len(), 2, "{report:?}");

    assert_eq!(journal.latest(&never.op_id).unwrap().state, OpState::Failed);
    assert_eq!(journal.provenance(210, Some(&never.op_id)), None);
    let done = journal.latest(&found.op_id).unwrap();
    assert_eq!(done.state, OpState::Succeeded);
    assert!(done.upid.is_some());
    assert_eq!(journal.provenance(211, Some(&found.op_id)), None);
    assert!(sim.guest_ids().contains(&211));
    // The partial guest keeps the agent's provenance: only its own transaction could
    // remove it unsigned; nothing re-creates it.
    assert_eq!(
        journal.latest(&partial.op_id).unwrap().state,
        OpState::Failed
    );
    assert_eq!(
        journal.provenance(212, Some(&partial.op_id)),
        Some(Provenance::CreatedInTransaction)
    );
    assert_eq!(c.guest_config(212).unwrap().lock.as_deref(), Some("create"));
}
