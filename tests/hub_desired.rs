//! The hub as the source of desired state, in process: the engine's passes over
//! `HubDesired` (the hub's desired-state feed and the durable cache) against the hub
//! and Proxmox simulators. A published document converges; an unchanged one costs a
//! `304`; a restart while the hub is down converges from the cache and never toward
//! empty; a rollback, a conflicting rewrite and an invalid document are refused,
//! audited once, and the last good document stays; a guest the hub drops is only ever
//! `pending_signature`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use felhom_agent::app::{FetchBackoff, HubDesired};
use felhom_agent::base::{Secret, Shutdown, SystemClock};
use felhom_agent::hub::{DesiredStateClient, HubClientOptions};
use felhom_agent::net::{Sha256Pin, TlsTrust};
use felhom_agent::proxmox::WaitOptions;
use felhom_agent::reconcile::{
    AuditLog, DesiredCache, DesiredState, Engine, EngineError, EngineOptions, Journal, Pacing,
    Queue,
};
use felhom_agent::store::OsIo;
use felhom_sim::{DESIRED_STATE_PATH, GuestSeed, HubSim, ProxmoxSim};
use serde_json::{Value, json};

/// The hub's envelope as the poller shares it: only the announced generation matters.
#[derive(Default)]
struct Announced(AtomicU64);

impl Announced {
    fn set(&self, generation: u64) {
        self.0.store(generation, Ordering::SeqCst);
    }
}

impl Pacing for Announced {
    fn interval(&self) -> Option<Duration> {
        None
    }
    fn generation(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    fn held(&self) -> bool {
        false
    }
}

struct Lab {
    dir: PathBuf,
    pve: ProxmoxSim,
    announced: Arc<Announced>,
    audit: Arc<AuditLog>,
}

fn pve() -> ProxmoxSim {
    ProxmoxSim::builder()
        .guest(GuestSeed::new(100, "web").running(false).cores(1))
        .guest(GuestSeed::new(101, "db").running(false).cores(1))
        .task_duration(Duration::from_millis(20))
        .start()
}

fn hub_client(hub: &HubSim) -> DesiredStateClient {
    let options = HubClientOptions {
        url: hub.url(),
        api_key: Secret::new(hub.key()),
        trust: TlsTrust::Pin(Sha256Pin::parse(&hub.fingerprint()).unwrap()),
        timeout: Duration::from_secs(5),
    };
    DesiredStateClient::new(&options, 1 << 20).unwrap()
}

fn doc(generation: u64, guests: Value) -> Value {
    json!({"generation": generation, "guests": guests})
}

impl Lab {
    fn new(name: &str) -> Lab {
        let dir = common::tempdir("hubdesired", name);
        Lab {
            audit: Arc::new(AuditLog::open(&dir.join("audit.log")).unwrap()),
            dir,
            pve: pve(),
            announced: Arc::new(Announced::default()),
        }
    }

    fn cache_path(&self) -> PathBuf {
        self.dir.join("desired.json")
    }

    /// A provider as the daemon builds one (a start: nothing fetched yet), retrying
    /// after milliseconds.
    fn provider(&self, hub: &HubSim) -> Arc<HubDesired> {
        let announced: Arc<dyn Pacing> = self.announced.clone();
        Arc::new(
            HubDesired::new(
                hub_client(hub),
                DesiredCache::open(self.cache_path(), Arc::new(OsIo)),
                announced,
                Arc::clone(&self.audit),
                Arc::new(SystemClock),
            )
            .with_backoff(FetchBackoff {
                initial: Duration::from_millis(1),
                cap: Duration::from_millis(1),
            }),
        )
    }

    fn engine(&self, provider: Arc<HubDesired>) -> Engine {
        let journal = Arc::new(Journal::open(&self.dir.join("journal.log")).unwrap());
        let gate = Arc::new(felhom_agent::reconcile::Gate::new(
            "pve-a".into(),
            None,
            Arc::clone(&journal),
            Arc::clone(&self.audit),
        ));
        let mut opts = EngineOptions::new("pve-a");
        opts.wait = WaitOptions {
            timeout: Duration::from_secs(10),
            ..WaitOptions::default()
        };
        Engine::new(
            common::pinned_client(&self.pve),
            Queue::new(2),
            gate,
            journal,
            provider,
            Shutdown::new(),
            opts,
        )
    }

    fn cores(&self, vmid: u32) -> Option<Value> {
        self.pve
            .guest_config(vmid)
            .and_then(|c| c.get("cores").cloned())
    }

    fn audit_decisions(&self) -> Vec<(String, String)> {
        self.audit
            .tail(100)
            .into_iter()
            .map(|e| (e.decision, e.reason))
            .collect()
    }

    fn decisions_named(&self, code: &str) -> Vec<String> {
        self.audit_decisions()
            .into_iter()
            .filter(|(d, _)| d == code)
            .map(|(_, r)| r)
            .collect()
    }
}

fn cached_generation(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    DesiredState::from_json(&bytes).ok().map(|s| s.generation)
}

#[test]
fn a_published_document_converges_is_cached_and_an_unchanged_one_costs_a_304() {
    let lab = Lab::new("converge");
    let hub = HubSim::start();
    let first = doc(1, json!([{"vmid": 100, "spec": {"cores": 2}}]));
    hub.publish_desired_state(&first);
    lab.announced.set(1);
    let provider = lab.provider(&hub);
    let engine = lab.engine(Arc::clone(&provider));

    let report = engine.pass().unwrap();
    assert_eq!(report.applied(), 1, "{report:?}");
    assert_eq!(lab.cores(100), Some(json!(2)));
    assert_eq!(cached_generation(&lab.cache_path()), Some(1));
    let fetches = hub.desired_state_fetches();
    assert_eq!(fetches.len(), 1);
    assert_eq!(fetches[0].if_none_match, None, "nothing held to name");
    assert_eq!(fetches[0].status, 200);

    // Nothing new announced: passes fetch nothing.
    engine.pass().unwrap();
    assert_eq!(hub.desired_state_fetches().len(), 1);

    // A new generation is announced: fetched once, naming the one held.
    hub.publish_desired_state(&doc(2, json!([{"vmid": 100, "spec": {"cores": 3}}])));
    lab.announced.set(2);
    assert!(provider.generation() == Some(1));
    engine.pass().unwrap();
    assert_eq!(lab.cores(100), Some(json!(3)));
    let fetches = hub.desired_state_fetches();
    assert_eq!(fetches.len(), 2);
    assert_eq!(fetches[1].if_none_match.as_deref(), Some("\"1\""));
    assert_eq!(cached_generation(&lab.cache_path()), Some(2));

    // A start with a current cache checks once, and the hub answers 304.
    let restarted = lab.provider(&hub);
    let engine = lab.engine(Arc::clone(&restarted));
    engine.pass().unwrap();
    let last = hub.desired_state_fetches().pop().unwrap();
    assert_eq!(last.if_none_match.as_deref(), Some("\"2\""));
    assert_eq!(last.status, 304);
    assert_eq!(restarted.generation(), Some(2));
}

#[test]
fn a_restart_while_the_hub_is_down_converges_from_the_cache_never_toward_empty() {
    let lab = Lab::new("down");
    let hub = HubSim::start();
    hub.publish_desired_state(&doc(4, json!([{"vmid": 101, "run": "running"}])));
    lab.announced.set(4);
    lab.engine(lab.provider(&hub)).pass().unwrap();
    assert_eq!(lab.pve.guest_status(101).as_deref(), Some("running"));
    // Someone stops the guest behind the agent's back; the agent restarts while the
    // hub is down.
    lab.pve.set_running(101, false);
    let provider = lab.provider(&hub);
    hub.shutdown();
    let engine = lab.engine(Arc::clone(&provider));
    let report = engine.pass().unwrap();
    assert_eq!(report.applied(), 1, "{report:?}");
    assert_eq!(lab.pve.guest_status(101).as_deref(), Some("running"));
    assert_eq!(provider.generation(), Some(4), "the cached document");
    // Guest 100 is not in the document: it was never touched, never destroyed.
    assert!(lab.pve.guest_ids().contains(&100));
}

#[test]
fn with_no_cache_and_no_hub_no_pass_runs() {
    let lab = Lab::new("nothing");
    let hub = HubSim::start();
    let provider = lab.provider(&hub);
    hub.shutdown();
    let engine = lab.engine(provider);
    match engine.pass() {
        Err(EngineError::Desired(e)) => {
            let text = e.to_string();
            assert!(text.starts_with("no desired state yet"), "{text}");
        }
        other => panic!("expected no desired state, got {other:?}"),
    }
    assert!(
        lab.pve.mutations().is_empty(),
        "nothing planned toward empty"
    );
    assert!(!lab.cache_path().exists());
}

#[test]
fn a_rollback_a_rewrite_and_an_invalid_document_are_refused_audited_once_and_the_good_one_stays() {
    let lab = Lab::new("refuse");
    let hub = HubSim::start();
    hub.publish_desired_state(&doc(5, json!([{"vmid": 100, "spec": {"cores": 2}}])));
    lab.announced.set(5);
    let provider = lab.provider(&hub);
    let engine = lab.engine(Arc::clone(&provider));
    engine.pass().unwrap();
    assert_eq!(lab.cores(100), Some(json!(2)));

    // Rollback: the hub (or someone in between) serves generation 3 and announces 6.
    hub.publish_desired_bytes(
        doc(3, json!([{"vmid": 100, "spec": {"cores": 8}}]))
            .to_string()
            .into_bytes(),
        6,
    );
    lab.announced.set(6);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(5)); // past the back-off
        engine.pass().unwrap();
    }
    assert!(
        hub.desired_state_fetches().len() >= 3,
        "retried after the back-off"
    );
    assert_eq!(
        lab.cores(100),
        Some(json!(2)),
        "the rolled-back spec never applied"
    );
    assert_eq!(provider.generation(), Some(5));
    let rollbacks = lab.decisions_named("desired_rollback");
    assert_eq!(rollbacks.len(), 1, "audited once: {rollbacks:?}");
    assert!(rollbacks[0].contains("generation 3 is below the generation held (5)"));

    // The same generation with other content.
    hub.publish_desired_bytes(
        doc(5, json!([{"vmid": 100, "spec": {"cores": 9}}]))
            .to_string()
            .into_bytes(),
        6,
    );
    std::thread::sleep(Duration::from_millis(5));
    engine.pass().unwrap();
    assert_eq!(lab.decisions_named("desired_conflict").len(), 1);

    // Invalid as a whole: refused with the path of the bad field.
    hub.publish_desired_bytes(
        br#"{"generation":6,"guests":[{"vmid":100,"spec":{"cores":"many"}}]}"#.to_vec(),
        6,
    );
    std::thread::sleep(Duration::from_millis(5));
    engine.pass().unwrap();
    let invalid = lab.decisions_named("desired_invalid");
    assert_eq!(invalid.len(), 1, "{invalid:?}");
    assert!(
        invalid[0].contains("guests[0].spec.cores"),
        "{}",
        invalid[0]
    );

    assert_eq!(lab.cores(100), Some(json!(2)));
    assert_eq!(
        cached_generation(&lab.cache_path()),
        Some(5),
        "the file holds the good one"
    );
    let requests = hub.requests();
    assert!(
        requests
            .iter()
            .filter(|r| r.path == DESIRED_STATE_PATH)
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {}", hub.key()))),
        "the hub's bearer key on every fetch"
    );
}

#[test]
fn a_guest_the_hub_drops_is_pending_signature_and_never_destroyed() {
    let lab = Lab::new("dropped");
    let hub = HubSim::start();
    hub.publish_desired_state(&doc(
        1,
        json!([{"vmid": 100, "run": "stopped"}, {"vmid": 101, "run": "stopped"}]),
    ));
    lab.announced.set(1);
    let engine = lab.engine(lab.provider(&hub));
    engine.pass().unwrap();

    hub.publish_desired_state(&doc(2, json!([{"vmid": 100, "run": "stopped"}])));
    lab.announced.set(2);
    engine.pass().unwrap();
    engine.pass().unwrap();
    assert!(lab.pve.guest_ids().contains(&101), "never destroyed");
    assert!(
        lab.pve.mutations().iter().all(|m| m.method != "DELETE"),
        "no DELETE"
    );
    let pending: Vec<_> = lab
        .audit
        .pending()
        .into_iter()
        .map(|e| (e.op, e.guest_id))
        .collect();
    assert_eq!(
        pending,
        vec![("guest_destroy".to_owned(), Some("101".to_owned()))]
    );
}
