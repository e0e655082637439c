//! Scenarios (1) and (2): a reconcile pass's benign action, and a signed destroy from
//! the verifier to its journaled outcome, each from a fresh state directory.

use std::fs;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use felhom_agent::authz::{AuthzConfig, FileNonceStore, NonceStore, Verifier};
use felhom_agent::base::Shutdown;
use felhom_agent::base::SystemClock;
use felhom_agent::reconcile::AuditLog;
use felhom_agent::reconcile::Intent;
use felhom_agent::reconcile::Journal;
use felhom_agent::reconcile::Queue;
use felhom_agent::reconcile::recover;
use felhom_agent::reconcile::{
    DesiredGuest, DesiredProvider, DesiredState, Run, Spec, StaticProvider,
};
use felhom_agent::reconcile::{Engine, EngineOptions};
use felhom_agent::reconcile::{Gate, SignedOp};
use felhom_agent::reconcile::{JobOutcome, ProxmoxExecutor, SignedJobs};
use felhom_agent::store::Io;
use felhom_sim::{GuestSeed, ProxmoxSim};

use super::common::sign::{destroy_blob, signer, ssh_keygen_sign};
use super::{
    HOST, Lab, NONCES, Scenario, assert_files_clean, client, err, exercise, fast_wait, now,
    tempdir, with_queue,
};

// ---------------------------------------------------------------------------------
// (1) A benign action: a reconcile pass that starts a stopped guest, or changes its
// cores (a synchronous config PUT, which leaves no task for Recover to find).

#[derive(Debug, Clone, Copy)]
enum Change {
    Start,
    Cores,
}

struct Benign(Change);

const GUEST: u32 = 100;

impl Benign {
    fn desired(&self) -> DesiredState {
        let g = match self.0 {
            Change::Start => DesiredGuest {
                run: Some(Run::Running),
                ..DesiredGuest::new(GUEST)
            },
            Change::Cores => DesiredGuest {
                spec: Some(Spec {
                    cores: Some(4),
                    memory_bytes: None,
                    disk_bytes: None,
                    rootfs_bytes: None,
                }),
                ..DesiredGuest::new(GUEST)
            },
        };
        DesiredState::from_guests(1, [g])
    }

    /// The requests that carry the intended change.
    fn sent(&self, lab: &Lab) -> usize {
        match self.0 {
            Change::Start => lab.count("POST", &format!("{GUEST}/status/start")),
            Change::Cores => lab.count("PUT", &format!("{GUEST}/config")),
        }
    }

    fn converged(&self, lab: &Lab) -> bool {
        match self.0 {
            Change::Start => lab.sim.guest_status(GUEST).as_deref() == Some("running"),
            Change::Cores => {
                let cores = lab.sim.guest_config(GUEST).unwrap()["cores"].clone();
                cores == 4 || cores == "4"
            }
        }
    }

    fn engine(
        &self,
        lab: &Lab,
        queue: &Queue,
        journal: &Arc<Journal>,
        audit: &Arc<AuditLog>,
    ) -> Engine {
        let gate = Gate::new(HOST.into(), None, Arc::clone(journal), Arc::clone(audit));
        let mut opts = EngineOptions::new(HOST);
        opts.wait = fast_wait();
        Engine::new(
            client(&lab.sim),
            queue.clone(),
            Arc::new(gate),
            Arc::clone(journal),
            Arc::new(StaticProvider::new(self.desired())) as Arc<dyn DesiredProvider>,
            Shutdown::new(),
            opts,
        )
    }
}

impl Scenario for Benign {
    type World = Lab;
    fn name(&self) -> &'static str {
        match self.0 {
            Change::Start => "benign_start",
            Change::Cores => "benign_cores",
        }
    }

    fn world(&self) -> Lab {
        let sim = ProxmoxSim::builder()
            .guest(GuestSeed::new(GUEST, "web").running(false).cores(2))
            .task_duration(Duration::from_millis(10))
            .sync_config_put(true)
            .start();
        Lab::new("benign", sim)
    }

    fn run(&self, lab: &mut Lab, io: Arc<dyn Io>) -> Result<(), String> {
        lab.open_journal_and_audit(&io)?;
        let (journal, audit) = (lab.journal.clone().unwrap(), lab.audit.clone().unwrap());
        recover(
            &journal,
            &client(&lab.sim),
            &fast_wait(),
            &Shutdown::new(),
            &SystemClock,
        )
        .map_err(err)?;
        let report = with_queue(|q| self.engine(lab, q, &journal, &audit).pass()).map_err(err)?;
        match report.applied() {
            1 => Ok(()),
            _ => Err(format!("{report:?}")),
        }
    }

    fn before_cut(&self, lab: &mut Lab) {
        lab.read_written();
    }

    fn restart_and_check(&self, mut lab: Lab, what: &str) {
        lab.check_survivors(what);
        let (journal, audit) = lab.restart(what);
        let report = with_queue(|q| self.engine(&lab, q, &journal, &audit).pass()).unwrap();
        assert_eq!(report.failed(), 0, "{what}: {report:?}");
        assert_eq!(
            self.sent(&lab),
            1,
            "{what}: the change was sent other than once: {:?}",
            lab.sim.mutations()
        );
        assert!(self.converged(&lab), "{what}");
        assert!(journal.in_flight().is_empty(), "{what}");
        drop((journal, audit));
        assert_files_clean(&lab.dir, what);
    }
}

#[test]
fn a_benign_start_survives_a_power_cut_at_every_point() {
    exercise(&Benign(Change::Start));
}

#[test]
fn a_benign_config_change_survives_a_power_cut_at_every_point() {
    exercise(&Benign(Change::Cores));
}

// ---------------------------------------------------------------------------------
// (2) A signed guest_destroy, from the verifier to the journaled outcome.

const DOOMED: u32 = 105;

/// The one place a signed destroy's blob is made: what the operator signs about the
/// guest `vmid` as `sim` shows it.
fn mint_destroy(sim: &ProxmoxSim, vmid: u32) -> (Intent, SignedOp) {
    assert!(
        sim.guest_ids().contains(&vmid),
        "an operator signs the destroy of a guest they see"
    );
    let digest = sim.guest_digest(vmid).expect("the guest exists");
    let blob = destroy_blob(HOST, &vmid.to_string(), &digest, now().unix());
    let dir = tempdir("sign");
    let signature = ssh_keygen_sign(&dir, &blob);
    let _ = fs::remove_dir_all(&dir);
    let intent = felhom_agent::app::unverified_intent(&blob).unwrap();
    (intent, SignedOp::new(blob, signature))
}

fn digest(sim: &ProxmoxSim) -> String {
    sim.guest_config(DOOMED).unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn destroy_sim() -> ProxmoxSim {
    ProxmoxSim::builder()
        .guest(GuestSeed::new(DOOMED, "customer-db"))
        .task_duration(Duration::from_millis(10))
        .start()
}

/// The signed op, minted once: every world starts with a fresh nonce store and a fresh
/// simulator seeded alike, so the same signature is new to each.
struct SignedDestroy {
    intent: Intent,
    op: SignedOp,
    /// The config digest of the guest the operator saw when signing.
    digest: String,
    /// After each restart: the destroy ran before the cut, ran once on redelivery, or
    /// never ran (its nonce was burnt: a fresh signature is needed).
    ran: Mutex<[u64; 3]>,
}

impl SignedDestroy {
    fn new() -> SignedDestroy {
        let sim = destroy_sim();
        let (intent, op) = mint_destroy(&sim, DOOMED);
        SignedDestroy {
            intent,
            op,
            digest: digest(&sim),
            ran: Mutex::new([0; 3]),
        }
    }

    /// The gate (verifier on `nonces`, nonce health probed) and signed jobs on `queue`.
    fn jobs(
        queue: &Queue,
        journal: &Arc<Journal>,
        audit: &Arc<AuditLog>,
        nonces: &Arc<FileNonceStore>,
    ) -> SignedJobs {
        let cfg = AuthzConfig {
            signers: vec![signer()],
            ..AuthzConfig::default()
        };
        let store: Arc<dyn NonceStore> = Arc::clone(nonces) as Arc<dyn NonceStore>;
        let verifier = Verifier::from_config(&cfg, HOST, Arc::new(SystemClock), store).unwrap();
        let health = Arc::clone(nonces);
        let gate = Gate::new(
            HOST.into(),
            Some(verifier),
            Arc::clone(journal),
            Arc::clone(audit),
        )
        .with_nonce_health(Arc::new(move || health.unavailable()));
        SignedJobs::new(Arc::new(gate), Arc::new(queue.clone()))
    }

    fn deliver(&self, lab: &Lab, jobs: &SignedJobs) -> Result<JobOutcome, String> {
        let exec = ProxmoxExecutor::new(Arc::new(client(&lab.sim)), fast_wait(), Shutdown::new());
        jobs.run_signed_job(&self.intent, &self.op, Arc::new(exec))
            .map_err(err)
    }
}

fn deletes(lab: &Lab) -> usize {
    lab.count("DELETE", &DOOMED.to_string())
}

impl Scenario for SignedDestroy {
    type World = Lab;
    fn name(&self) -> &'static str {
        "signed_destroy"
    }

    fn world(&self) -> Lab {
        let sim = destroy_sim();
        assert_eq!(
            digest(&sim),
            self.digest,
            "each world holds the guest as signed"
        );
        Lab::new("signed", sim)
    }

    fn run(&self, lab: &mut Lab, io: Arc<dyn Io>) -> Result<(), String> {
        lab.open_journal_and_audit(&io)?;
        let nonces = FileNonceStore::open_with(lab.path(NONCES), 300, io).map_err(err)?;
        let nonces = Arc::new(nonces);
        lab.nonces = Some(Arc::clone(&nonces));
        let (journal, audit) = (lab.journal.clone().unwrap(), lab.audit.clone().unwrap());
        let outcome = with_queue(|q| self.deliver(lab, &Self::jobs(q, &journal, &audit, &nonces)))?;
        match outcome {
            JobOutcome::Executed { .. } => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }

    fn before_cut(&self, lab: &mut Lab) {
        lab.read_written();
    }

    fn restart_and_check(&self, mut lab: Lab, what: &str) {
        lab.check_survivors(what);
        let sent_before = deletes(&lab);
        assert!(sent_before <= 1, "{what}");
        let (journal, audit) = lab.restart(what);
        let nonces = Arc::new(FileNonceStore::open(lab.path(NONCES), 300).unwrap());
        let (first, second) = with_queue(|q| {
            let jobs = Self::jobs(q, &journal, &audit, &nonces);
            let first = self.deliver(&lab, &jobs).unwrap();
            let second = self.deliver(&lab, &jobs).unwrap();
            (first, second)
        });
        let executed = |o: &JobOutcome| matches!(o, JobOutcome::Executed { .. });
        if sent_before > 0 {
            assert!(
                !executed(&first),
                "{what}: ran again after the restart: {first:?}"
            );
        }
        assert!(!executed(&second), "{what}: a replay ran: {second:?}");
        let sent = deletes(&lab);
        assert!(sent <= 1, "{what}: {sent} DELETEs from one signature");
        assert_eq!(sent, sent_before + usize::from(executed(&first)), "{what}");
        assert_eq!(lab.sim.guest_ids().contains(&DOOMED), sent == 0, "{what}");
        let slot = match (sent_before, sent) {
            (1, _) => 0,
            (_, 1) => 1,
            _ => 2,
        };
        self.ran.lock().unwrap()[slot] += 1;
        assert!(journal.in_flight().is_empty(), "{what}");
        drop((journal, audit, nonces));
        assert_files_clean(&lab.dir, what);
    }
}

#[test]
fn a_signed_destroy_survives_a_power_cut_at_every_point_and_never_runs_twice() {
    let s = SignedDestroy::new();
    exercise(&s);
    let [before, redelivered, never] = *s.ran.lock().unwrap();
    let _ = writeln!(
        std::io::stderr(),
        "event=power_cut_signed_outcomes ran_before_cut={before} ran_on_redelivery={redelivered} never_ran_needs_new_signature={never}"
    );
}
