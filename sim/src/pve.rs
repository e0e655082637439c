//! The Proxmox VE simulator: a real HTTPS server on loopback that answers the subset of
//! `/api2/json` the agent uses, with PVE's shapes, texts and quirks (see the shared
//! `pve/API.md`): token auth, `{"data": …}` envelopes, errors in the reason phrase and a
//! `message` field, genuine UPIDs, tasks that run for a while then stop with an exit
//! status, locks, task-time permission failures, the description newline quirk.
//!
//! Owns the simulated host and the test controls around it (request recording, fault
//! injection, permission denials, task outcomes). It is test and demo code: it must never
//! end up in the agent's release binary, and it never touches the real filesystem or
//! network beyond its own loopback socket.
//!
//! Tasks are settled lazily: each one has a deadline, and any look at the state (a request,
//! an accessor) first ends every task whose deadline has passed, in deadline order. No
//! background thread mutates the host, so what a test observes is always consistent.

mod access;
mod acl;
mod api;
mod create;
mod disk;
mod model;
mod params;
mod perms;

pub use acl::AclSubject;
pub use perms::{ENDPOINT_CHECKS, EndpointCheck, When};

pub use create::{BackupSeed, Broken};

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::http;
use model::{Guest, State};

/// The node name unless the builder sets another.
pub const DEFAULT_NODE: &str = "pve";
/// The API token id (`user@realm!name`) unless the builder sets another.
pub const DEFAULT_TOKEN_ID: &str = "felhom-agent@pve!agent";
/// The token secret unless the builder sets another. Test material: never a real secret.
pub const DEFAULT_TOKEN_SECRET: &str = "5f0c2a9e-7d41-4b8e-a3c6-1e9d8b7f6a50";
/// How long a task runs before it stops, unless set otherwise.
pub const DEFAULT_TASK_DURATION: Duration = Duration::from_millis(300);

/// Which certificate the simulator presents (all from the workspace's `vectors/tls/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertChoice {
    /// `pve-self.crt`: self-signed RSA leaf, the shape a Proxmox host serves. Pin it.
    SelfSigned,
    /// `ca-leaf.crt`: signed by `ca.crt`, SAN `localhost` and `127.0.0.1`.
    CaSigned,
    /// `other-self.crt`: a different self-signed leaf, for "the cert changed under the pin".
    Other,
}

impl CertChoice {
    fn pem(self) -> (&'static [u8], &'static [u8]) {
        match self {
            CertChoice::SelfSigned => (
                include_bytes!("../../vectors/tls/pve-self.crt"),
                include_bytes!("../../vectors/tls/pve-self.key"),
            ),
            CertChoice::CaSigned => (
                include_bytes!("../../vectors/tls/ca-leaf.crt"),
                include_bytes!("../../vectors/tls/ca-leaf.key"),
            ),
            CertChoice::Other => (
                include_bytes!("../../vectors/tls/other-self.crt"),
                include_bytes!("../../vectors/tls/other-self.key"),
            ),
        }
    }

    /// The certificate in PEM.
    pub fn cert_pem(self) -> &'static [u8] {
        self.pem().0
    }

    /// The SHA-256 fingerprint of this certificate, `AB:CD:…` upper hex with colons.
    ///
    /// # Panics
    /// Only if the committed test certificate is not valid PEM.
    pub fn fingerprint(self) -> String {
        #[allow(clippy::expect_used)]
        http::pem_fingerprint(self.cert_pem())
            .expect("the committed test certificates under vectors/tls are valid PEM")
    }

    /// The PEM of the CA that signed [`CertChoice::CaSigned`] (`vectors/tls/ca.crt`).
    pub fn ca_pem() -> &'static [u8] {
        include_bytes!("../../vectors/tls/ca.crt")
    }
}

/// A container that exists when the simulator starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSeed {
    /// The CT id (≥ 100).
    pub vmid: u32,
    /// Its hostname (`name` in lists).
    pub name: String,
    /// Running at start.
    pub running: bool,
    /// `cores`.
    pub cores: u32,
    /// `memory`, MiB.
    pub memory_mib: u64,
    /// The rootfs `size=`, GiB.
    pub disk_gib: u64,
    /// The description; reads back with a trailing `\n` like on a real host.
    pub description: Option<String>,
    /// Its init ignores a clean shutdown request: `status/shutdown` waits out its
    /// `timeout`, then kills it (`forceStop=1`) or fails and leaves it running.
    pub ignores_shutdown: bool,
}

impl GuestSeed {
    /// A stopped guest with 2 cores, 512 MiB, an 8 GiB rootfs and no description.
    pub fn new(vmid: u32, name: &str) -> Self {
        GuestSeed {
            vmid,
            name: name.to_string(),
            running: false,
            cores: 2,
            memory_mib: 512,
            disk_gib: 8,
            description: None,
            ignores_shutdown: false,
        }
    }

    /// Sets `ignores_shutdown`.
    pub fn ignores_shutdown(mut self, ignores: bool) -> Self {
        self.ignores_shutdown = ignores;
        self
    }

    /// Sets `running`.
    pub fn running(mut self, running: bool) -> Self {
        self.running = running;
        self
    }

    /// Sets `cores`.
    pub fn cores(mut self, cores: u32) -> Self {
        self.cores = cores;
        self
    }

    /// Sets `memory_mib`.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Sets `disk_gib`.
    pub fn disk_gib(mut self, gib: u64) -> Self {
        self.disk_gib = gib;
        self
    }

    /// Sets `description`.
    pub fn description(mut self, text: &str) -> Self {
        self.description = Some(text.to_string());
        self
    }
}

/// One request as the simulator received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, `PUT`, `DELETE`, …
    pub method: String,
    /// The decoded path after `/api2/json`, e.g. `/nodes/pve/lxc/100/config`. Requests
    /// outside `/api2/json` keep their whole decoded path.
    pub path: String,
    /// The path as sent, percent-encoding intact, without the query.
    pub raw_path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// Decoded body parameters (form or JSON), in order.
    pub form: Vec<(String, String)>,
    /// The `Authorization` header as sent.
    pub authorization: Option<String>,
    /// When it arrived.
    pub at: Instant,
    /// The status answered; 0 when the connection was dropped without an answer.
    pub status: u16,
}

/// A queued misbehaviour: the first `times` requests that match get `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Only requests with this method (any when `None`).
    pub method: Option<String>,
    /// Only requests whose decoded path (after `/api2/json`) starts with this.
    pub path_prefix: String,
    /// What happens to them.
    pub kind: FaultKind,
    /// How many matching requests it affects; counts down, gone at 0.
    pub times: usize,
}

impl Fault {
    /// A fault for the next matching request (`times` = 1).
    pub fn new(method: Option<&str>, path_prefix: &str, kind: FaultKind) -> Self {
        Fault {
            method: method.map(str::to_string),
            path_prefix: path_prefix.to_string(),
            kind,
            times: 1,
        }
    }

    /// Sets how many matching requests it affects.
    pub fn times(mut self, times: usize) -> Self {
        self.times = times;
        self
    }
}

/// What an injected fault does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer this status instead of processing the request: reason phrase = the message's
    /// first line, body `{"data":null,"message":"<message>\n"}`, `Connection: close`.
    Status {
        /// HTTP status, e.g. 500 or 596.
        code: u16,
        /// e.g. `CT is locked (backup)`.
        message: String,
    },
    /// Answer this 3xx status with `Location: <location>` instead of processing the
    /// request, as a misconfigured proxy in front of pveproxy might. Point `location` at
    /// a path of this simulator that answers 200: the recorded requests then show
    /// whether a client followed it.
    Redirect {
        /// e.g. 302 or 307.
        code: u16,
        /// An absolute URL or a path, sent verbatim.
        location: String,
    },
    /// Process the request at once (its effect lands now) but hold the answer this long:
    /// a client that times out must assume the request was carried out.
    Delay(Duration),
    /// Read the request, do nothing, close the socket without answering.
    DropConnection,
    /// Process the request, send the head and about half the body, then close the socket
    /// (no TLS close_notify): the effect landed, the answer is truncated.
    DropMidBody,
    /// Answer 200 with a JSON content type and a body that is not JSON; nothing processed.
    Garbage,
    /// Answer 200 with a well-formed `{"data":"xxxx…"}` body of exactly this many bytes
    /// (at least 11); nothing processed.
    Oversized(usize),
    /// The handler panics (a simulator bug on demand): the server answers 500 and counts
    /// it, and the simulator fails the test when dropped unless the panic was taken.
    Panic,
}

/// Configures and starts a [`ProxmoxSim`].
#[derive(Debug, Clone)]
pub struct ProxmoxSimBuilder {
    node: String,
    token_id: String,
    secret: String,
    guests: Vec<GuestSeed>,
    backups: Vec<BackupSeed>,
    templates: Vec<String>,
    cert: CertChoice,
    task_duration: Duration,
    sync_config_put: bool,
    auth_delay: Duration,
}

impl Default for ProxmoxSimBuilder {
    fn default() -> Self {
        ProxmoxSimBuilder {
            node: DEFAULT_NODE.to_string(),
            token_id: DEFAULT_TOKEN_ID.to_string(),
            secret: DEFAULT_TOKEN_SECRET.to_string(),
            guests: Vec::new(),
            backups: Vec::new(),
            templates: Vec::new(),
            cert: CertChoice::SelfSigned,
            task_duration: DEFAULT_TASK_DURATION,
            sync_config_put: true,
            auth_delay: Duration::ZERO,
        }
    }
}

impl ProxmoxSimBuilder {
    /// The node name (default `pve`).
    pub fn node(mut self, name: &str) -> Self {
        self.node = name.to_string();
        self
    }

    /// The one API token accepted: `token_id` is `user@realm!name`.
    pub fn token(mut self, token_id: &str, secret: &str) -> Self {
        self.token_id = token_id.to_string();
        self.secret = secret.to_string();
        self
    }

    /// Adds a guest (a later seed with the same vmid replaces an earlier one).
    pub fn guest(mut self, g: GuestSeed) -> Self {
        self.guests.retain(|old| old.vmid != g.vmid);
        self.guests.push(g);
        self
    }

    /// Adds a backup archive of guest `vmid` in storage `local`, named with `stamp`
    /// (`2024_05_01-10_00_00`): `local:backup/vzdump-lxc-VMID-STAMP.tar.zst`. Its config
    /// is the seeded guest's if there is one, else a default guest's.
    pub fn backup(self, vmid: u32, stamp: &str) -> Self {
        self.backup_seed(BackupSeed::vzdump(vmid, stamp))
    }

    /// Adds a backup volume described by `seed` (broken ones, other configs, PBS).
    pub fn backup_seed(mut self, seed: BackupSeed) -> Self {
        self.backups.push(seed);
        self
    }

    /// Adds an OS template volume (`local:vztmpl/NAME.tar.zst`) a create can use.
    pub fn template(mut self, volid: &str) -> Self {
        self.templates.push(volid.to_string());
        self
    }

    /// Adds a snapshot of guest `vmid` on the Proxmox Backup Server storage `pbs` (type
    /// `pbs`, listed only once a snapshot is seeded), taken at `time`
    /// (`2024-05-01T10:00:00Z`): `pbs:backup/ct/VMID/TIME`, format `pbs-ct`.
    /// `verification` is the last verify job's state (`ok`, `failed`), listed as PBS
    /// does (`{"state": …, "upid": …}`); `None` leaves the row without it (never verified).
    pub fn pbs_backup(self, vmid: u32, time: &str, verification: Option<&str>) -> Self {
        let seed = BackupSeed::pbs(vmid, time);
        self.backup_seed(match verification {
            Some(state) => seed.verification(state),
            None => seed,
        })
    }

    /// The certificate presented at start (default [`CertChoice::SelfSigned`]).
    pub fn cert(mut self, c: CertChoice) -> Self {
        self.cert = c;
        self
    }

    /// How long tasks run before they stop (default 300 ms).
    pub fn task_duration(mut self, d: Duration) -> Self {
        self.task_duration = d;
        self
    }

    /// `true` (default, as real PVE): `PUT …/config` answers `{"data":null}` and applies at
    /// once. `false`: it answers a UPID of a task of type `vzconfig` (a name the simulator
    /// makes up, in the `vz*` family of LXC task types; PVE itself only has the async
    /// `qmconfig` for VMs) and the change lands when that task ends OK.
    pub fn sync_config_put(mut self, sync: bool) -> Self {
        self.sync_config_put = sync;
        self
    }

    /// Delay before a `401` answer (real PVE waits 3 s; default 0 to keep tests fast).
    pub fn auth_failure_delay(mut self, d: Duration) -> Self {
        self.auth_delay = d;
        self
    }

    /// Binds 127.0.0.1 on an ephemeral port and starts serving.
    ///
    /// # Panics
    /// If the socket cannot be bound or the committed certificates do not load (test code:
    /// nothing useful can happen without them).
    pub fn start(self) -> ProxmoxSim {
        #[allow(clippy::expect_used)]
        let tls = tls_for(self.cert).expect("the committed test certificates load");
        let mut state = State::new(
            self.node,
            self.token_id,
            self.secret,
            &self.guests,
            self.task_duration,
            self.sync_config_put,
            self.auth_delay,
            self.cert.fingerprint(),
        );
        for seed in &self.backups {
            let b = seed.build(&mut state);
            state.backups.push(b);
        }
        state.templates = self.templates;
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
        });
        let handler_inner = Arc::clone(&inner);
        #[allow(clippy::expect_used)]
        let server = http::Server::start(tls, move |req: &http::Request| {
            api::handle(&handler_inner.state, req)
        })
        .expect("binding 127.0.0.1:0 succeeds");
        ProxmoxSim {
            inner,
            panics: server.panics(),
            server: Some(server),
        }
    }
}

/// The storage that [`ProxmoxSimBuilder::pbs_backup`] seeds snapshots in.
const PBS_STORAGE: &str = "pbs";

/// Parses a vzdump stamp back to epoch seconds (UTC) for a seeded backup's `ctime`.
fn stamp_epoch(stamp: &str) -> Option<u64> {
    let nums: Vec<u64> = stamp
        .split(['_', '-'])
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [y, mo, d, h, mi, s] = nums.as_slice() else {
        return None;
    };
    // Days from civil (Howard Hinnant), the inverse of clock::civil.
    let (y, mo) = (*y as i64, *mo as i64);
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + *d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + (*h * 3600 + *mi * 60 + *s) as i64).ok()
}

fn tls_for(c: CertChoice) -> std::io::Result<Arc<rustls::ServerConfig>> {
    let (cert, key) = c.pem();
    http::tls_config(cert, key)
}

struct Inner {
    state: Mutex<State>,
}

/// A running Proxmox VE simulator. Dropping it (or [`ProxmoxSim::shutdown`]) stops the
/// server and closes every connection — and panics if any of its threads panicked and
/// nobody took the panic ([`ProxmoxSim::take_panics`]), so a simulator bug fails the
/// test that met it.
pub struct ProxmoxSim {
    inner: Arc<Inner>,
    server: Option<http::Server>,
    panics: Arc<http::Panics>,
}

impl std::fmt::Debug for ProxmoxSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxmoxSim")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl ProxmoxSim {
    /// A builder with the defaults: node `pve`, the default token, no guests, the
    /// self-signed certificate, 300 ms tasks, synchronous config PUT.
    pub fn builder() -> ProxmoxSimBuilder {
        ProxmoxSimBuilder::default()
    }

    /// Locks the state and settles every task whose time is up.
    fn state(&self) -> MutexGuard<'_, State> {
        let mut st = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        st.advance();
        st
    }

    /// `https://127.0.0.1:PORT`, no path.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port())
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.server.as_ref().map_or(0, |s| s.addr().port())
    }

    /// The node name.
    pub fn node(&self) -> String {
        self.state().node.clone()
    }

    /// SHA-256 of the leaf new connections get, `AB:CD:…` upper hex with colons.
    pub fn fingerprint(&self) -> String {
        self.state().fingerprint.clone()
    }

    /// The exact `Authorization` value accepted: `PVEAPIToken=USER@REALM!NAME=SECRET`.
    pub fn token_header(&self) -> String {
        let st = self.state();
        format!("PVEAPIToken={}={}", st.token_id, st.secret)
    }

    /// Every request received, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    /// The recorded POST, PUT and DELETE requests, in arrival order.
    pub fn mutations(&self) -> Vec<RecordedRequest> {
        self.state()
            .requests
            .iter()
            .filter(|r| matches!(r.method.as_str(), "POST" | "PUT" | "DELETE"))
            .cloned()
            .collect()
    }

    /// Queues a fault; queued faults are tried in order and the first match is used.
    pub fn inject(&self, fault: Fault) {
        if fault.times > 0 {
            self.state().faults.push(fault);
        }
    }

    /// New connections present this certificate from now on; open ones keep theirs.
    pub fn set_cert(&self, c: CertChoice) {
        #[allow(clippy::expect_used)]
        let tls = tls_for(c).expect("the committed test certificates load");
        if let Some(server) = &self.server {
            server.set_tls(tls);
        }
        self.state().fingerprint = c.fingerprint();
    }

    /// The guest's config exactly as `GET …/config` returns it (with `digest`).
    pub fn guest_config(&self, vmid: u32) -> Option<Map<String, Value>> {
        self.state().guests.get(&vmid).map(Guest::config_json)
    }

    /// The guest's `.conf` file as PVE would write it (description comments, sorted keys,
    /// snapshot sections).
    pub fn guest_conf_text(&self, vmid: u32) -> Option<String> {
        self.state().guests.get(&vmid).map(Guest::conf_text)
    }

    /// `running` or `stopped`.
    pub fn guest_status(&self, vmid: u32) -> Option<String> {
        self.state()
            .guests
            .get(&vmid)
            .map(|g| if g.running { "running" } else { "stopped" }.to_string())
    }

    /// The vmids that exist, ascending.
    pub fn guest_ids(&self) -> Vec<u32> {
        self.state().guests.keys().copied().collect()
    }

    /// Adds (or replaces) a guest behind the agent's back.
    pub fn add_guest(&self, g: GuestSeed) {
        let mut st = self.state();
        let now = st.clock.now();
        st.guests.insert(g.vmid, Guest::from_seed(&g, now));
    }

    /// Removes a guest behind the agent's back; true if it existed.
    pub fn remove_guest(&self, vmid: u32) -> bool {
        self.state().guests.remove(&vmid).is_some()
    }

    /// Starts or stops a guest behind the agent's back (drift); false if it does not exist.
    pub fn set_running(&self, vmid: u32, running: bool) -> bool {
        let mut st = self.state();
        let now = st.clock.now();
        match st.guests.get_mut(&vmid) {
            Some(g) => {
                g.running = running;
                g.started = running.then_some(now);
                true
            }
            None => false,
        }
    }

    /// Makes the guest ignore (or again obey) a clean shutdown request; false if it does
    /// not exist. See [`GuestSeed::ignores_shutdown`].
    pub fn set_ignores_shutdown(&self, vmid: u32, ignores: bool) -> bool {
        match self.state().guests.get_mut(&vmid) {
            Some(g) => {
                g.ignores_shutdown = ignores;
                true
            }
            None => false,
        }
    }

    /// Moves the simulated host's clock `d` forward and ends every task whose time came:
    /// a shutdown's minutes-long timeout passes without the test sleeping. Task start
    /// and end times and uptimes move with it; the clock never goes back.
    pub fn advance_clock(&self, d: Duration) {
        let mut st = self.state();
        st.clock.advance(d);
        st.advance();
    }

    /// Panics caught in the simulator's threads so far, with the first messages.
    pub fn panics(&self) -> (usize, Vec<String>) {
        (self.panics.count(), self.panics.messages())
    }

    /// Returns and forgets the caught panics (for a test that provoked one on purpose).
    pub fn take_panics(&self) -> (usize, Vec<String>) {
        self.panics.take()
    }

    /// Sets or clears the guest's `lock` (e.g. `Some("backup")`).
    pub fn set_lock(&self, vmid: u32, lock: Option<&str>) {
        if let Some(g) = self.state().guests.get_mut(&vmid) {
            match lock {
                Some(l) => g.conf.insert("lock".into(), l.into()),
                None => g.conf.remove("lock"),
            };
        }
    }

    /// Sets (`Some`) or removes (`None`) one key of the guest's config behind the agent's
    /// back, as another administrator would (e.g. `protection` to `1`): its digest changes.
    pub fn set_config_value(&self, vmid: u32, key: &str, value: Option<&str>) {
        if let Some(g) = self.state().guests.get_mut(&vmid) {
            match value {
                Some(v) => g.conf.insert(key.into(), v.into()),
                None => g.conf.remove(key),
            };
        }
    }

    /// The guest's config `digest`, as `GET …/config` returns it.
    pub fn guest_digest(&self, vmid: u32) -> Option<String> {
        self.state().guests.get(&vmid).map(Guest::digest)
    }

    /// Denies `privilege` (or `*` for all) on ACL `path` and below: requests that need it
    /// get `403 Permission check failed (PATH, PRIV)`; list rows needing it disappear;
    /// checks PVE makes inside the worker (vzdump's `VM.Backup`) fail the task instead.
    pub fn deny(&self, path: &str, privilege: &str) {
        self.state()
            .denied
            .push((path.to_string(), privilege.to_string()));
    }

    /// Denies `privilege` on `path` at task time only: the POST answers a UPID and the task
    /// ends `Permission check failed (PATH, PRIV)`.
    pub fn deny_at_task_time(&self, path: &str, privilege: &str) {
        self.state()
            .denied_at_task
            .push((path.to_string(), privilege.to_string()));
    }

    /// `pveum role add|modify NAME --privs …`: the role holds exactly `privs` from now
    /// on (a role granted before changes at once, as in PVE).
    pub fn set_role(&self, name: &str, privs: &[&str]) {
        self.state().acl.set_role(name, privs);
    }

    /// `pveum acl modify PATH --users|--tokens … --roles ROLE --propagate P`. The first
    /// grant switches the simulator to the allow model: from then on the token holds a
    /// privilege on a path only if its user and (with privilege separation, the default)
    /// the token itself are granted it there, as pve-access-control computes it;
    /// anything else is a 403 with Proxmox's text, a task-time failure, or a row left out
    /// of a listing, each where Proxmox makes that check. Denials still apply on top.
    pub fn acl_modify(&self, path: &str, subject: AclSubject, role: &str, propagate: bool) {
        self.state().acl.grant(path, subject, role, propagate);
    }

    /// `pveum user token modify … --privsep 0|1`: without privilege separation the token
    /// holds exactly its user's privileges.
    pub fn set_token_privsep(&self, privsep: bool) {
        self.state().acl.set_privsep(privsep);
    }

    /// Lifts every denial.
    pub fn allow_all(&self) {
        let mut st = self.state();
        st.denied.clear();
        st.denied_at_task.clear();
    }

    /// How long tasks started from now on run before they stop.
    pub fn set_task_duration(&self, d: std::time::Duration) {
        self.state().task_duration = d;
    }

    /// The next task ends `WARNINGS: n` (its log has n `WARN: …` lines); it still succeeds.
    pub fn task_warnings(&self, n: u32) {
        self.state().next_warnings = Some(n);
    }

    /// The next task ends with this exit status, and its effect does not land.
    pub fn fail_next_task(&self, exitstatus: &str) {
        self.state().next_failure = Some(exitstatus.to_string());
    }

    /// With `false`, `GET /nodes/{n}/tasks` ignores its `vmid`, `typefilter`, `since`
    /// and `until` filters and lists every task: a client must filter what it gets.
    pub fn task_list_filters(&self, on: bool) {
        self.state().task_list_unfiltered = !on;
    }

    /// Moves task `upid`'s start `secs` into the past (its `starttime` and the start
    /// field of its UPID, which stay equal as on a real host); returns the new UPID.
    /// `None` when no such task exists.
    pub fn backdate_task(&self, upid: &str, secs: u64) -> Option<String> {
        let mut st = self.state();
        let t = st.tasks.iter_mut().find(|t| t.upid == upid)?;
        t.starttime = t.starttime.saturating_sub(secs);
        let mut fields: Vec<String> = t.upid.split(':').map(str::to_string).collect();
        // UPID:node:pid:pstart:starttime:type:id:user: — field 4 is the start time.
        *fields.get_mut(4)? = format!("{:08X}", t.starttime);
        t.upid = fields.join(":");
        Some(t.upid.clone())
    }

    /// Every task, oldest first, as task-status objects.
    pub fn tasks(&self) -> Vec<Value> {
        let st = self.state();
        let (user, tokenid) = st.user_and_token();
        st.tasks
            .iter()
            .map(|t| t.status_json(&st.node, &user, tokenid.as_deref()))
            .collect()
    }

    /// A task's full log (with the final `TASK …` line once it stopped).
    pub fn task_log(&self, upid: &str) -> Option<Vec<String>> {
        self.state()
            .tasks
            .iter()
            .find(|t| t.upid == upid)
            .map(model::Task::log_lines)
    }

    /// The volids of every backup archive, oldest first.
    pub fn backups(&self) -> Vec<String> {
        self.state()
            .backups
            .iter()
            .map(|b| b.volid.clone())
            .collect()
    }

    /// The guest's snapshot names, sorted.
    pub fn snapshots(&self, vmid: u32) -> Vec<String> {
        self.state()
            .guests
            .get(&vmid)
            .map(|g| g.snapshots.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Stops the server: no new connections, open ones closed, threads joined. Panics
    /// (as dropping does) if a simulator thread panicked and nobody took it.
    pub fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

impl Drop for ProxmoxSim {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
        // Threads are joined: every panic is counted. Never panic while unwinding.
        if let Some(what) = self.panics.summary()
            && !std::thread::panicking()
        {
            panic!("the Proxmox simulator failed: {what}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let e = stamp_epoch("2024_05_01-10_00_00").unwrap();
        assert_eq!(crate::clock::vzdump_stamp(e), "2024_05_01-10_00_00");
        assert_eq!(stamp_epoch("junk"), None);
    }

    #[test]
    fn fingerprints_match_the_committed_list() {
        let list = include_str!("../../vectors/tls/fingerprints.txt");
        for (choice, file) in [
            (CertChoice::SelfSigned, "pve-self.crt"),
            (CertChoice::CaSigned, "ca-leaf.crt"),
            (CertChoice::Other, "other-self.crt"),
        ] {
            let line = list.lines().find(|l| l.starts_with(file)).unwrap();
            assert_eq!(line.split(' ').nth(1).unwrap(), choice.fingerprint());
        }
    }
}
