//! The hub's event stream against the hub simulator: each answer lands in the shared
//! envelope (generation, blocked) and raises the signed-ops announcement; the cursor
//! resumes the long poll, which the hub answers as soon as something changes; an older
//! hub's 404 is said once and waits for the re-probe; faults back off, doubling. The
//! stream in the real daemon is in `tests/daemon_process.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::Fixed;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use felhom_agent::base::{Secret, Shutdown};
use felhom_agent::hub::{
    Announcement, ControlEnvelope, EventStream, EventsClient, HubClientOptions, HubSetupError,
    Poller, REPROBE_AFTER_404, SharedEnvelope,
};
use felhom_agent::net::{Sha256Pin, TlsTrust};
use felhom_sim::{EVENTS_PATH, Fault, FaultKind, HubRequest, HubSim};
use serde_json::json;

/// The process-wide copy of every log line, installed before any test logs.
fn tap() -> &'static Arc<Mutex<Vec<u8>>> {
    static TAP: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    TAP.get_or_init(felhom_agent::base::log::tap)
}

fn events_logged(event: &str) -> usize {
    let text = String::from_utf8_lossy(&tap().lock().unwrap()).into_owned();
    let key = format!("event={event}");
    text.lines()
        .filter(|l| l.split(' ').any(|field| field == key))
        .count()
}

fn client(hub: &HubSim, wait: Duration) -> Result<EventsClient, HubSetupError> {
    let options = HubClientOptions {
        url: hub.url(),
        api_key: Secret::new(hub.key()),
        trust: TlsTrust::Pin(Sha256Pin::parse(&hub.fingerprint()).unwrap()),
        timeout: Duration::from_secs(5),
    };
    EventsClient::new(&options, wait)
}

struct Stream {
    stream: EventStream<Shutdown>,
    envelope: SharedEnvelope,
    announcement: Announcement,
}

fn stream(hub: &HubSim, wait: Duration) -> Stream {
    let envelope = SharedEnvelope::default();
    let announcement = Announcement::new();
    let stream = EventStream::new(
        client(hub, wait).unwrap(),
        envelope.clone(),
        announcement.clone(),
        Shutdown::new(),
    )
    .with_jitter(Box::new(|| 0.0));
    Stream {
        stream,
        envelope,
        announcement,
    }
}

fn event_requests(hub: &HubSim) -> Vec<HubRequest> {
    hub.requests()
        .into_iter()
        .filter(|r| r.path == EVENTS_PATH)
        .collect()
}

#[test]
fn each_event_lands_in_the_envelope_and_announces_signed_ops() {
    let _ = tap();
    let hub = HubSim::start();
    let mut s = stream(&hub, Duration::from_secs(30));

    // The first request has no cursor: the hub answers the state now.
    assert_eq!(s.stream.step(), Duration::ZERO);
    let first = s.stream.cursor().unwrap().to_owned();
    let now = s.envelope.get().unwrap();
    assert_eq!(
        (now.desired_generation, now.blocked, now.has_signed_ops),
        (0, false, false)
    );
    assert!(!s.announcement.take(Duration::ZERO));

    // A publish while the next request waits: it answers with the change.
    let answered = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| s.stream.step());
        // The request is held until the change comes (up to its 30 s).
        while event_requests(&hub).len() < 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        hub.publish_desired_state(&json!({"generation": 4, "guests": []}));
        waiting.join().unwrap()
    });
    assert_eq!(answered, Duration::ZERO);
    assert_eq!(s.envelope.get().unwrap().desired_generation, 4);
    let second = s.stream.cursor().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(event_requests(&hub)[1].status, 200);

    // Signed ops queued: announced, after the envelope says so.
    hub.queue_signed_op(b"{}", None);
    s.stream.step();
    assert!(s.envelope.get().unwrap().has_signed_ops);
    assert!(s.announcement.take(Duration::ZERO), "announced");

    // Blocked: in the envelope the engine and the signed-ops worker read.
    hub.set_blocked(true);
    s.stream.step();
    assert!(s.envelope.get().unwrap().blocked);
}

#[test]
fn an_event_keeps_the_interval_the_last_report_set() {
    let hub = HubSim::start();
    let mut poller = Poller::new(
        Fixed(ControlEnvelope {
            poll_interval_seconds: Some(600),
            ..ControlEnvelope::default()
        }),
        Shutdown::new(),
        300,
    );
    poller.step();
    let envelope = poller.envelope();
    let mut stream = EventStream::new(
        client(&hub, Duration::from_secs(1)).unwrap(),
        envelope.clone(),
        Announcement::new(),
        Shutdown::new(),
    );
    hub.publish_desired_state(&json!({"generation": 9, "guests": []}));
    stream.step();
    let e = envelope.get().unwrap();
    assert_eq!(e.poll_interval_seconds, Some(600));
    assert_eq!(e.desired_generation, 9);
}

#[test]
fn an_older_hubs_404_is_said_once_and_waits_for_the_reprobe() {
    let _ = tap();
    let hub = HubSim::builder().without_events().start();
    let mut s = stream(&hub, Duration::from_secs(1));
    let before = events_logged("hub_events_unsupported");
    assert_eq!(s.stream.step(), REPROBE_AFTER_404);
    assert_eq!(s.stream.step(), REPROBE_AFTER_404);
    assert_eq!(
        events_logged("hub_events_unsupported") - before,
        1,
        "said once"
    );
    assert_eq!(s.envelope.get(), None, "nothing learned from a 404");
    assert!(event_requests(&hub).iter().all(|r| r.status == 404));
}

#[test]
fn faults_back_off_doubling_and_an_answer_resets_it() {
    let hub = HubSim::start();
    let mut s = stream(&hub, Duration::from_secs(1));
    hub.inject(Fault::new(None, EVENTS_PATH, FaultKind::Garbage).times(3));
    let waits: Vec<Duration> = (0..3).map(|_| s.stream.step()).collect();
    assert_eq!(
        waits,
        [1, 2, 4].map(Duration::from_secs),
        "1 s doubling (no jitter here)"
    );
    assert_eq!(s.stream.step(), Duration::ZERO, "answered");
    hub.inject(Fault::new(
        None,
        EVENTS_PATH,
        FaultKind::Status {
            code: 500,
            message: "Internal Server Error".into(),
        },
    ));
    assert_eq!(
        s.stream.step(),
        Duration::from_secs(1),
        "the count restarted"
    );
    let keyed = format!("Bearer {}", hub.key());
    assert!(
        event_requests(&hub)
            .iter()
            .all(|r| r.authorization.as_deref() == Some(keyed.as_str()))
    );
}

#[test]
fn a_wait_of_zero_seconds_is_asked_as_one() {
    let hub = HubSim::start();
    let c = client(&hub, Duration::ZERO).unwrap();
    let first = c.next(None).unwrap();
    // Same cursor, nothing changes: the hub holds the request the asked second.
    let again = c.next(Some(&first.cursor)).unwrap();
    assert_eq!(again.cursor, first.cursor);
    assert!(c.endpoint().ends_with(EVENTS_PATH));
}

#[test]
fn the_results_an_event_acknowledges_go_to_the_apps_hook() {
    let hub = HubSim::start();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&acked);
    let mut stream = EventStream::new(
        client(&hub, Duration::from_secs(1)).unwrap(),
        SharedEnvelope::default(),
        Announcement::new(),
        Shutdown::new(),
    )
    .with_acks(Box::new(move |ids| {
        seen.lock().unwrap().extend_from_slice(ids)
    }));
    stream.step();
    assert!(acked.lock().unwrap().is_empty(), "nothing acknowledged yet");
    hub.ack_signed_op_results_by_event(&["op-1", "op-7"]);
    stream.step();
    assert_eq!(*acked.lock().unwrap(), ["op-1", "op-7"]);
    stream.step();
    assert_eq!(acked.lock().unwrap().len(), 2, "each acknowledgement once");
}
