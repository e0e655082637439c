//! The `restore_overwrite` signed op through the real verifier, gate, journal and
//! Proxmox executor against the simulator: it restores `params.backup` over the guest
//! (`force=1`) once, and every refusal — the guest changed since it was signed, a
//! protected guest without `unprotect`, a running guest without `stop`, a binding that
//! differs — sends nothing and burns no nonce; a replay never runs it again. Signatures
//! are minted by the real `ssh-keygen -Y sign`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::CountingExecutor;
use common::RESTORE_BACKUP as BACKUP;
use common::sign::{op_blob, ssh_keygen_sign, verifier};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use felhom_agent::base::{Clock, ManualClock, SystemClock};
use felhom_agent::reconcile::{
    AuditLog, DestructiveExecutor, Gate, Intent, JobOutcome, Journal, OpClass, OpState, Queue,
    Refusal, SignedJobs, SignedOp,
};
use felhom_sim::{BackupSeed, Broken, ProxmoxSim};

const VMID: u32 = 105;

struct Lab {
    dir: PathBuf,
    pve: ProxmoxSim,
    jobs: SignedJobs,
    journal: Arc<Journal>,
    exec: Arc<CountingExecutor>,
}

fn lab(name: &str, running: bool) -> Lab {
    let dir = common::tempdir("restore", name);
    let pve = common::restore_sim(running, Duration::from_millis(20));
    let clock = ManualClock::new(SystemClock.now());
    let journal = Arc::new(Journal::open(&dir.join("journal.log")).unwrap());
    let audit = Arc::new(AuditLog::open(&dir.join("audit.log")).unwrap());
    let gate = Arc::new(
        Gate::new(
            "pve-a".into(),
            Some(verifier(&dir, &clock)),
            Arc::clone(&journal),
            audit,
        )
        .with_clock(Arc::new(clock.clone())),
    );
    let jobs = SignedJobs::new(gate, Arc::new(Queue::new(2))).with_clock(Arc::new(clock));
    let exec = common::counting_executor(&pve);
    Lab {
        dir,
        pve,
        jobs,
        journal,
        exec,
    }
}

impl Lab {
    /// A signed `restore_overwrite` of the guest as it is now, with `params`.
    fn signed(&self, params: &[(&str, &str)]) -> (Intent, SignedOp) {
        self.signed_for(&self.pve.guest_digest(VMID).unwrap(), params)
    }

    fn signed_for(&self, digest: &str, params: &[(&str, &str)]) -> (Intent, SignedOp) {
        let guest = VMID.to_string();
        let (blob, _) = op_blob(
            "restore_overwrite",
            "pve-a",
            &guest,
            digest,
            params,
            SystemClock.now().unix(),
        );
        let signature = ssh_keygen_sign(&self.dir, &blob);
        let mut intent = Intent::new(OpClass::RestoreOverwrite, "pve-a", Some(guest));
        intent.params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (intent, SignedOp::new(blob, signature))
    }

    fn run(&self, job: &(Intent, SignedOp)) -> JobOutcome {
        let exec: Arc<dyn DestructiveExecutor> = self.exec.clone();
        self.jobs.run_signed_job(&job.0, &job.1, exec).unwrap()
    }

    fn restores(&self) -> usize {
        common::sent(&self.pve, "POST", "/lxc")
    }

    fn cores(&self) -> String {
        self.pve.guest_config(VMID).unwrap()["cores"].to_string()
    }
}

#[test]
fn a_signed_restore_overwrites_the_stopped_guest_once() {
    let lab = lab("once", false);
    let job = lab.signed(&[("backup", BACKUP)]);
    let JobOutcome::Executed { op_id } = lab.run(&job) else {
        panic!("executed")
    };
    assert_eq!(lab.cores(), "2", "the backup's config is back");
    let rec = lab.journal.latest(&op_id).unwrap();
    assert_eq!(rec.state, OpState::Succeeded);
    assert_eq!(rec.class, OpClass::RestoreOverwrite);
    assert!(rec.upid.as_deref().unwrap().contains(":vzrestore:105:"));
    let form = &lab.pve.mutations()[0].form;
    assert!(form.iter().any(|(k, v)| k == "force" && v == "1"));
    assert!(form.iter().any(|(k, v)| k == "storage" && v == "local-lvm"));
    // The same signed op again: already applied, nothing sent.
    assert_eq!(lab.run(&job), JobOutcome::Skipped);
    assert_eq!(lab.restores(), 1);
    assert_eq!(lab.exec.calls(), 1);
}

#[test]
fn a_running_guest_is_refused_without_stop_and_the_nonce_survives() {
    let lab = lab("running", true);
    let job = lab.signed(&[("backup", BACKUP)]);
    assert_eq!(lab.run(&job), JobOutcome::Refused(Refusal::GuestRunning));
    assert!(lab.pve.mutations().is_empty(), "nothing sent");
    assert_eq!(lab.pve.guest_status(VMID).as_deref(), Some("running"));
    // Stopped by someone else, the same signed op runs: its nonce was not burned.
    lab.pve.set_running(VMID, false);
    assert!(matches!(lab.run(&job), JobOutcome::Executed { .. }));
    assert_eq!(lab.restores(), 1);
}

#[test]
fn stop_stops_the_running_guest_as_its_own_journaled_step() {
    let lab = lab("stop", true);
    let job = lab.signed(&[("backup", BACKUP), ("stop", "1")]);
    let JobOutcome::Executed { op_id } = lab.run(&job) else {
        panic!("executed")
    };
    let view = Journal::open_read_only(&lab.dir.join("journal.log")).unwrap();
    let classes: Vec<(OpClass, OpState)> = view
        .history()
        .iter()
        .filter(|r| r.state.is_terminal())
        .map(|r| (r.class.clone(), r.state))
        .collect();
    assert_eq!(
        classes,
        [
            (OpClass::Stop, OpState::Succeeded),
            (OpClass::RestoreOverwrite, OpState::Succeeded)
        ]
    );
    assert_eq!(
        lab.journal.latest(&op_id).unwrap().state,
        OpState::Succeeded
    );
    let paths: Vec<String> = lab.pve.mutations().iter().map(|m| m.path.clone()).collect();
    assert_eq!(
        paths,
        ["/nodes/pve/lxc/105/status/stop", "/nodes/pve/lxc"],
        "stopped, then restored"
    );
    assert_eq!(lab.pve.guest_status(VMID).as_deref(), Some("stopped"));
}

#[test]
fn a_changed_guest_is_refused_and_nothing_is_sent() {
    let lab = lab("changed", false);
    let job = lab.signed(&[("backup", BACKUP)]);
    lab.pve.set_config_value(VMID, "memory", Some("1024"));
    assert_eq!(lab.run(&job), JobOutcome::Refused(Refusal::GuestChanged));
    // Gone altogether: the same.
    let job = lab.signed(&[("backup", BACKUP)]);
    lab.pve.remove_guest(VMID);
    assert_eq!(lab.run(&job), JobOutcome::Refused(Refusal::GuestChanged));
    assert!(lab.pve.mutations().is_empty());
}

#[test]
fn protection_needs_unprotect_which_is_its_own_step() {
    let lab = lab("protected", false);
    lab.pve.set_config_value(VMID, "protection", Some("1"));
    let job = lab.signed(&[("backup", BACKUP)]);
    assert_eq!(lab.run(&job), JobOutcome::Refused(Refusal::Protected));
    assert!(lab.pve.mutations().is_empty());
    let job = lab.signed(&[("backup", BACKUP), ("unprotect", "1")]);
    assert!(matches!(lab.run(&job), JobOutcome::Executed { .. }));
    let paths: Vec<(String, String)> = lab
        .pve
        .mutations()
        .iter()
        .map(|m| (m.method.clone(), m.path.clone()))
        .collect();
    assert_eq!(
        paths,
        [
            ("PUT".to_string(), "/nodes/pve/lxc/105/config".to_string()),
            ("POST".to_string(), "/nodes/pve/lxc".to_string())
        ]
    );
}

#[test]
fn a_binding_that_differs_is_refused() {
    let lab = lab("binding", false);
    let (mut intent, signed) = lab.signed(&[("backup", BACKUP)]);
    intent
        .params
        .insert("backup".into(), "local:backup/other.tar.zst".into());
    assert_eq!(
        lab.run(&(intent, signed)),
        JobOutcome::Refused(Refusal::BindingMismatch)
    );
    assert!(lab.pve.mutations().is_empty());
}

#[test]
fn a_broken_backup_fails_and_the_op_never_runs_again() {
    let lab = lab("broken", false);
    let volid = lab
        .pve
        .add_backup(BackupSeed::vzdump(VMID, "2024_06_01-10_00_00").broken(Broken::NoConfig));
    let job = lab.signed(&[("backup", &volid)]);
    let JobOutcome::Failed { op_id, detail } = lab.run(&job) else {
        panic!("failed")
    };
    assert!(
        detail.contains("archive contains no configuration file"),
        "{detail}"
    );
    assert_eq!(lab.journal.latest(&op_id).unwrap().state, OpState::Failed);
    assert_eq!(lab.cores(), "6", "nothing changed");
    // The nonce was burned by the attempt: the same signed op is a replay.
    let again = lab.run(&job);
    assert!(
        matches!(&again, JobOutcome::Refused(Refusal::Rejected(e)) if e.code() == "replay"),
        "{again:?}"
    );
    assert_eq!(lab.restores(), 1);
}
