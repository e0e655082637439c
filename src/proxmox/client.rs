//! The Proxmox VE API client: token auth, typed reads, and mutations that answer a
//! task id (UPID) or, for config writes, possibly nothing (applied synchronously).
//!
//! Every argument is validated before a request is built; path segments and form
//! fields are percent-encoded; booleans go out as `0`/`1`. Error answers become
//! [`ApiError`]s with Proxmox's own message, so policies can read privilege and
//! transience. The token secret lives only in the `Authorization` header value, a
//! [`Secret`]; anything echoed back by the server is scrubbed of it.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::answer::{self, Envelope};
use super::decode::{self, DecodeError, Obj};
use super::error::{ApiError, Privilege, ProxmoxError, is_transient_text};
use super::task::{
    BackupMode, Compression, TaskFilter, TaskLog, TaskSource, TaskStatus, TaskSummary,
    VzdumpOutcome,
};
use super::types::{
    ConfigChange, Guest, GuestConfig, Node, NodeStatus, Snapshot, Storage, StorageStatus, Version,
    Volume,
};
use super::upid::Upid;
use super::validate::{self, check};
use crate::base::secret::{REDACTED, Secret};
use crate::net::{
    DEFAULT_MAX_BODY, HttpClient, HttpOptions, Method, Request, Response, TlsTrust, excerpt,
    form_urlencode, percent_encode,
};

/// How to reach and authenticate to one Proxmox node.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `https://HOST:8006` (a trailing `/` or `/api2/json` is accepted).
    pub base_url: String,
    /// The node this agent manages, e.g. `pve`.
    pub node: String,
    /// The API token id, `USER@REALM!TOKENNAME`.
    pub token_id: String,
    /// The API token secret.
    pub token_secret: Secret,
    /// How the node's certificate is judged.
    pub trust: TlsTrust,
    /// Time allowed for a whole call.
    pub timeout: Duration,
    /// Time allowed to connect and finish the TLS handshake.
    pub connect_timeout: Duration,
    /// The largest answer read.
    pub max_body: u64,
    /// Idle keep-alive connections kept (size it to the parallel lanes).
    pub max_idle_per_host: usize,
}

impl ClientOptions {
    /// Options with defaults: 30 s per call, 10 s to connect, 8 MiB answers, 8 idle
    /// connections.
    pub fn new(
        base_url: impl Into<String>,
        node: impl Into<String>,
        token_id: impl Into<String>,
        token_secret: Secret,
        trust: TlsTrust,
    ) -> Self {
        ClientOptions {
            base_url: base_url.into(),
            node: node.into(),
            token_id: token_id.into(),
            token_secret,
            trust,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_body: DEFAULT_MAX_BODY,
            max_idle_per_host: 8,
        }
    }
}

fn api_base(url: &str) -> Result<String, &'static str> {
    let rest = url
        .strip_prefix("https://")
        .ok_or("must start with https://")?;
    let rest = rest.trim_end_matches('/');
    let rest = rest.strip_suffix("/api2/json").unwrap_or(rest);
    if rest.is_empty() {
        return Err("has no host");
    }
    if rest.contains('@') {
        return Err("must not contain user info (use token_id and token_secret)");
    }
    if rest.contains(['/', '?', '#']) {
        return Err("must be https://HOST[:PORT] without a path, query or fragment");
    }
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters");
    }
    Ok(format!("https://{rest}/api2/json"))
}

fn option(field: &'static str, reason: impl Into<String>) -> ProxmoxError {
    ProxmoxError::Option {
        field,
        reason: reason.into(),
    }
}

/// An API path, encoded for the wire and readable for messages.
pub(super) struct ApiPath {
    encoded: String,
    display: String,
}

pub(super) fn api_path(segments: &[&str]) -> ApiPath {
    let mut encoded = String::new();
    let mut display = String::new();
    for s in segments {
        encoded.push('/');
        encoded.push_str(&percent_encode(s));
        display.push('/');
        display.push_str(s);
    }
    ApiPath { encoded, display }
}

pub(super) fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

pub(super) fn pair(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_string(), v.into())
}

/// The client for one Proxmox node. Cheap to clone (clones share connections) and
/// safe to use from many threads.
#[derive(Clone)]
pub struct Client {
    http: HttpClient,
    api: String,
    node: String,
    token_id: String,
    authorization: Secret,
    token_secret: Secret,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("api", &self.api)
            .field("node", &self.node)
            .field("token_id", &self.token_id)
            .field("authorization", &self.authorization)
            .field("http", &self.http)
            .finish()
    }
}

impl Client {
    /// Checks the options and builds the client (a CA file is read now). Nothing is
    /// sent yet.
    pub fn new(options: ClientOptions) -> Result<Client, ProxmoxError> {
        let api = api_base(&options.base_url).map_err(|r| option("base_url", r))?;
        validate::node_name(&options.node).map_err(|r| option("node", r))?;
        validate::token_id(&options.token_id).map_err(|r| option("token_id", r))?;
        let secret = options.token_secret.expose();
        if secret.is_empty() {
            return Err(option("token_secret", "is empty"));
        }
        // Proxmox splits the header value at the last '=', so the secret cannot hold one.
        if secret
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '=')
        {
            return Err(option(
                "token_secret",
                "must not contain whitespace, control characters or '='",
            ));
        }
        if options.timeout.is_zero() {
            return Err(option("timeout", "must be more than zero"));
        }
        if options.connect_timeout.is_zero() {
            return Err(option("connect_timeout", "must be more than zero"));
        }
        let http = HttpClient::new(&HttpOptions {
            trust: options.trust.clone(),
            connect_timeout: options.connect_timeout,
            timeout: options.timeout,
            max_body: options.max_body,
            max_idle_per_host: options.max_idle_per_host,
            max_idle_age: Duration::from_secs(4),
        })
        .map_err(ProxmoxError::Trust)?;
        let authorization = Secret::new(format!("PVEAPIToken={}={}", options.token_id, secret));
        Ok(Client {
            http,
            api,
            node: options.node,
            token_id: options.token_id,
            authorization,
            token_secret: options.token_secret,
        })
    }

    /// The node this client manages.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The API base URL, `https://HOST:PORT/api2/json`.
    pub fn api_url(&self) -> &str {
        &self.api
    }

    /// The token id in use (not secret).
    pub fn token_id(&self) -> &str {
        &self.token_id
    }

    /// Replaces the token secret, should the server ever echo it, by `<redacted>`.
    pub(super) fn scrub(&self, text: String) -> String {
        let secret = self.token_secret.expose();
        if !secret.is_empty() && text.contains(secret) {
            text.replace(secret, REDACTED)
        } else {
            text
        }
    }

    fn call(
        &self,
        method: Method,
        path: &ApiPath,
        params: Vec<(String, String)>,
    ) -> Result<Envelope, ProxmoxError> {
        let mut url = format!("{}{}", self.api, path.encoded);
        let request = match method {
            Method::Get | Method::Delete => {
                if !params.is_empty() {
                    url.push('?');
                    url.push_str(&form_urlencode(&params));
                }
                Request::new(method, url)
            }
            Method::Post | Method::Put => Request::new(method, url).form(params),
        };
        let request = request
            .header("accept", "application/json")
            .secret_header("authorization", &self.authorization);
        let response = self.http.send(request).map_err(ProxmoxError::Transport)?;
        crate::debug!(
            proxmox_call,
            "proxmox call",
            method = method,
            path = path.display,
            status = response.status
        );
        if !response.is_success() {
            return Err(ProxmoxError::Api(Box::new(self.api_error(
                method,
                &path.display,
                &response,
            ))));
        }
        answer::envelope(&response.body).map_err(|problem| ProxmoxError::Decode {
            method,
            path: path.display.clone(),
            detail: DecodeError {
                field: "body".to_string(),
                expected: problem.expected(),
                found: self.scrub(problem.found(&response.body)),
            },
        })
    }

    fn api_error(&self, method: Method, path: &str, response: &Response) -> ApiError {
        let body = answer::error_body(&response.body);
        let raw_message = body.message.unwrap_or_else(|| {
            if response.reason.is_empty() {
                format!("HTTP {}", response.status)
            } else {
                response.reason.clone()
            }
        });
        let raw_message = self.scrub(raw_message);
        let errors = body
            .errors
            .into_iter()
            .map(|(k, text)| {
                (
                    excerpt(k.as_bytes(), 64),
                    excerpt(self.scrub(text).as_bytes(), 256),
                )
            })
            .collect();
        let status = response.status;
        ApiError {
            method,
            path: path.to_string(),
            status,
            privilege: Privilege::parse(&raw_message),
            transient: (status >= 500 && status != 501) || is_transient_text(&raw_message),
            message: excerpt(raw_message.as_bytes(), 2048),
            errors,
        }
    }

    fn decoded<T>(
        &self,
        method: Method,
        path: &ApiPath,
        result: Result<T, DecodeError>,
    ) -> Result<T, ProxmoxError> {
        result.map_err(|mut detail| {
            detail.found = self.scrub(detail.found);
            ProxmoxError::Decode {
                method,
                path: path.display.clone(),
                detail,
            }
        })
    }

    pub(super) fn get_one<T>(
        &self,
        path: ApiPath,
        params: Vec<(String, String)>,
        f: impl Fn(&Obj<'_>) -> Result<T, DecodeError>,
    ) -> Result<T, ProxmoxError> {
        let env = self.call(Method::Get, &path, params)?;
        let r = answer::one(&env.data, f);
        self.decoded(Method::Get, &path, r)
    }

    pub(super) fn get_list<T>(
        &self,
        path: ApiPath,
        params: Vec<(String, String)>,
        f: impl Fn(&Obj<'_>) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, ProxmoxError> {
        let env = self.call(Method::Get, &path, params)?;
        let r = decode::list(&env.data, "data", f);
        self.decoded(Method::Get, &path, r)
    }

    fn expect_upid(
        &self,
        method: Method,
        path: &ApiPath,
        data: &Value,
    ) -> Result<Upid, ProxmoxError> {
        self.decoded(method, path, answer::upid(data))
    }

    pub(super) fn task(
        &self,
        method: Method,
        path: ApiPath,
        params: Vec<(String, String)>,
    ) -> Result<Upid, ProxmoxError> {
        let env = self.call(method, &path, params)?;
        let upid = self.expect_upid(method, &path, &env.data)?;
        crate::debug!(
            proxmox_task_dispatched,
            "proxmox task dispatched",
            path = path.display,
            upid = upid
        );
        Ok(upid)
    }

    fn vmid_str(vmid: u32) -> Result<String, ProxmoxError> {
        validate::vmid(vmid)?;
        Ok(vmid.to_string())
    }

    // ---- reads -------------------------------------------------------------

    /// `GET /version`.
    pub fn version(&self) -> Result<Version, ProxmoxError> {
        self.get_one(api_path(&["version"]), vec![], Version::decode)
    }

    /// `GET /nodes`.
    pub fn nodes(&self) -> Result<Vec<Node>, ProxmoxError> {
        self.get_list(api_path(&["nodes"]), vec![], Node::decode)
    }

    /// `GET /nodes/{node}/status`.
    pub fn node_status(&self) -> Result<NodeStatus, ProxmoxError> {
        self.get_one(
            api_path(&["nodes", &self.node, "status"]),
            vec![],
            NodeStatus::decode,
        )
    }

    /// `GET /nodes/{node}/lxc`: the containers on this node, in no particular order.
    pub fn list_lxc(&self) -> Result<Vec<Guest>, ProxmoxError> {
        self.get_list(
            api_path(&["nodes", &self.node, "lxc"]),
            vec![],
            Guest::decode,
        )
    }

    /// `GET /nodes/{node}/lxc/{vmid}/status/current`.
    pub fn guest_status(&self, vmid: u32) -> Result<Guest, ProxmoxError> {
        let id = Self::vmid_str(vmid)?;
        self.get_one(
            api_path(&["nodes", &self.node, "lxc", &id, "status", "current"]),
            vec![],
            Guest::decode,
        )
    }

    /// `GET /nodes/{node}/lxc/{vmid}/config` (pending values merged, as Proxmox does
    /// by default).
    pub fn guest_config(&self, vmid: u32) -> Result<GuestConfig, ProxmoxError> {
        let id = Self::vmid_str(vmid)?;
        self.get_one(
            api_path(&["nodes", &self.node, "lxc", &id, "config"]),
            vec![],
            GuestConfig::decode,
        )
    }

    /// `GET /nodes/{node}/lxc/{vmid}/snapshot`, without the `current` pseudo-entry.
    pub fn list_snapshots(&self, vmid: u32) -> Result<Vec<Snapshot>, ProxmoxError> {
        let id = Self::vmid_str(vmid)?;
        let all = self.get_list(
            api_path(&["nodes", &self.node, "lxc", &id, "snapshot"]),
            vec![],
            Snapshot::decode,
        )?;
        Ok(all.into_iter().filter(|s| s.name != "current").collect())
    }

    /// `GET /storage`: the storage configuration.
    pub fn list_storage(&self) -> Result<Vec<Storage>, ProxmoxError> {
        self.get_list(api_path(&["storage"]), vec![], Storage::decode)
    }

    /// `GET /nodes/{node}/storage`: each storage's state on this node.
    pub fn node_storage(&self) -> Result<Vec<StorageStatus>, ProxmoxError> {
        self.get_list(
            api_path(&["nodes", &self.node, "storage"]),
            vec![],
            StorageStatus::decode,
        )
    }

    /// `GET /nodes/{node}/storage/{storage}/content`, optionally only one content
    /// type (`backup`, `vztmpl`, `rootdir`, ...).
    pub fn storage_content(
        &self,
        storage: &str,
        content: Option<&str>,
    ) -> Result<Vec<Volume>, ProxmoxError> {
        check("storage", storage, validate::storage_id)?;
        let mut params = vec![];
        if let Some(c) = content {
            check("content", c, validate::word)?;
            params.push(pair("content", c));
        }
        self.get_list(
            api_path(&["nodes", &self.node, "storage", storage, "content"]),
            params,
            Volume::decode,
        )
    }

    /// `GET /access/permissions?path=PATH`: the privileges the token itself holds on
    /// `path`, sorted (a user or token may always read its own).
    pub fn permissions(&self, path: &str) -> Result<Vec<String>, ProxmoxError> {
        check("path", path, validate::acl_path)?;
        self.get_one(
            api_path(&["access", "permissions"]),
            vec![pair("path", path)],
            |o| match o.get(path) {
                None => Ok(Vec::new()),
                Some(v) => {
                    let held = Obj::new(v, &o.path(path))?;
                    let mut privs: Vec<String> = held.map().keys().cloned().collect();
                    privs.sort();
                    Ok(privs)
                }
            },
        )
    }

    /// `GET /nodes/{node}/tasks/{upid}/status`, on the node named in the UPID.
    pub fn task_status(&self, upid: &Upid) -> Result<TaskStatus, ProxmoxError> {
        self.get_one(
            api_path(&["nodes", upid.node(), "tasks", upid.as_str(), "status"]),
            vec![],
            TaskStatus::decode,
        )
    }

    /// `GET /nodes/{node}/tasks/{upid}/log`: `limit` lines from line `start`
    /// (0-based); `limit` 0 reads the whole log.
    pub fn task_log(&self, upid: &Upid, start: u64, limit: u64) -> Result<TaskLog, ProxmoxError> {
        let path = api_path(&["nodes", upid.node(), "tasks", upid.as_str(), "log"]);
        let env = self.call(
            Method::Get,
            &path,
            vec![
                pair("start", start.to_string()),
                pair("limit", limit.to_string()),
            ],
        )?;
        let lines = self.decoded(Method::Get, &path, answer::task_log_lines(&env.data))?;
        Ok(TaskLog {
            lines,
            total: env.total,
        })
    }

    /// The last `n` lines of a task log (two reads: the length, then the tail).
    pub fn task_log_tail(&self, upid: &Upid, n: u64) -> Result<Vec<String>, ProxmoxError> {
        let head = self.task_log(upid, 0, 1)?;
        let total = head.total.unwrap_or(head.lines.len() as u64);
        if total <= 1 {
            return Ok(head.lines.into_iter().map(|l| l.text).collect());
        }
        let tail = self.task_log(upid, total.saturating_sub(n), n)?;
        Ok(tail.lines.into_iter().map(|l| l.text).collect())
    }

    /// `GET /nodes/{node}/tasks` with filters.
    pub fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskSummary>, ProxmoxError> {
        let mut params = vec![];
        if let Some(vmid) = filter.vmid {
            params.push(pair("vmid", Self::vmid_str(vmid)?));
        }
        if let Some(t) = &filter.task_type {
            check("task_type", t, validate::word)?;
            params.push(pair("typefilter", t.as_str()));
        }
        if let Some(since) = filter.since {
            params.push(pair("since", since.to_string()));
        }
        if let Some(until) = filter.until {
            params.push(pair("until", until.to_string()));
        }
        params.push(pair(
            "source",
            match filter.source {
                TaskSource::Archive => "archive",
                TaskSource::Active => "active",
                TaskSource::All => "all",
            },
        ));
        if let Some(limit) = filter.limit {
            params.push(pair("limit", limit.to_string()));
        }
        self.get_list(
            api_path(&["nodes", &self.node, "tasks"]),
            params,
            TaskSummary::decode,
        )
    }

    // ---- mutations ---------------------------------------------------------

    /// `POST /nodes/{node}/vzdump` for one guest.
    pub fn vzdump(
        &self,
        vmid: u32,
        storage: &str,
        mode: BackupMode,
        compress: Compression,
    ) -> Result<VzdumpOutcome, ProxmoxError> {
        let id = Self::vmid_str(vmid)?;
        check("storage", storage, validate::storage_id)?;
        let path = api_path(&["nodes", &self.node, "vzdump"]);
        let env = self.call(
            Method::Post,
            &path,
            vec![
                pair("vmid", id),
                pair("storage", storage),
                pair("mode", mode.as_str()),
                pair("compress", compress.as_str()),
            ],
        )?;
        if env.data.as_str() == Some("OK") {
            return Ok(VzdumpOutcome::NotLocal);
        }
        Ok(VzdumpOutcome::Task(self.expect_upid(
            Method::Post,
            &path,
            &env.data,
        )?))
    }

    /// `POST .../lxc/{vmid}/snapshot`.
    pub fn snapshot(
        &self,
        vmid: u32,
        name: &str,
        description: Option<&str>,
    ) -> Result<Upid, ProxmoxError> {
        let id = Self::vmid_str(vmid)?;
        check("snapshot", name, validate::snapshot_name)?;
        let mut params = vec![pair("snapname", name)];
        if let Some(d) = description {
            check("description", d, validate::config_value)?;
            params.push(pair("description", d));
        }
        self.task(
            Method::Post,
            api_path(&["nodes", &self.node, "lxc", &id, "snapshot"]),
            params,
        )
    }

    /// `POST .../lxc/{vmid}/snapshot/{name}/rollback`. Proxmox stops a running
    /// container first and leaves it stopped unless `start` asks it to start the
    /// container once the rollback succeeded; whether the snapshot exists is checked
    /// inside the task.
    pub fn rollback(&self, vmid: u32, name: &str, start: bool) -> Result<Upid, ProxmoxError> {
        let id = Self::vmid_str(vmid)?;
        check("snapshot", name, validate::snapshot_name)?;
        self.task(
            Method::Post,
            api_path(&[
                "nodes", &self.node, "lxc", &id, "snapshot", name, "rollback",
            ]),
            vec![pair("start", flag(start))],
        )
    }

    /// `DELETE .../lxc/{vmid}/snapshot/{name}`.
    pub fn delete_snapshot(&self, vmid: u32, name: &str) -> Result<Upid, ProxmoxError> {
        let id = Self::vmid_str(vmid)?;
        check("snapshot", name, validate::snapshot_name)?;
        self.task(
            Method::Delete,
            api_path(&["nodes", &self.node, "lxc", &id, "snapshot", name]),
            vec![],
        )
    }

    /// `PUT .../lxc/{vmid}/resize` of the root disk to `bytes` (an absolute size, in
    /// whole KiB). Proxmox runs it as a `resize` task and refuses a smaller size
    /// (`unable to shrink disk size`).
    pub fn resize_rootfs(&self, vmid: u32, bytes: u64) -> Result<Upid, ProxmoxError> {
        let id = Self::vmid_str(vmid)?;
        let kib = bytes / 1024;
        if kib == 0 || !bytes.is_multiple_of(1024) {
            return Err(validate::InvalidArgument::new(
                "size",
                &bytes.to_string(),
                "must be a positive whole number of KiB",
            )
            .into());
        }
        self.task(
            Method::Put,
            api_path(&["nodes", &self.node, "lxc", &id, "resize"]),
            vec![pair("disk", "rootfs"), pair("size", format!("{kib}K"))],
        )
    }

    /// `DELETE /nodes/{node}/storage/{storage}/content/{volid}`: removes the volume as an
    /// `imgdel` task (`Ok(Some(upid))`); `Ok(None)` when Proxmox answers without a task.
    pub fn delete_volume(&self, volid: &str) -> Result<Option<Upid>, ProxmoxError> {
        check("volid", volid, validate::volid)?;
        let (storage, _) = volid.split_once(':').unwrap_or((volid, ""));
        let path = api_path(&["nodes", &self.node, "storage", storage, "content", volid]);
        let env = self.call(Method::Delete, &path, vec![])?;
        if env.data.is_null() {
            return Ok(None);
        }
        self.expect_upid(Method::Delete, &path, &env.data).map(Some)
    }

    /// `PUT .../lxc/{vmid}/config`. Proxmox applies most changes synchronously and
    /// answers `{"data": null}` (`Ok(None)`); an answer with a task id
    /// (`Ok(Some(upid))`) must be waited for. Both are success.
    pub fn set_config(
        &self,
        vmid: u32,
        change: &ConfigChange,
    ) -> Result<Option<Upid>, ProxmoxError> {
        let id = Self::vmid_str(vmid)?;
        if change.set.is_empty() && change.delete.is_empty() {
            return Err(
                validate::InvalidArgument::new("config", "", "sets and deletes nothing").into(),
            );
        }
        let mut params = Vec::with_capacity(change.set.len() + 2);
        for (k, v) in &change.set {
            check("config key", k, validate::config_key)?;
            if k == "delete" || k == "digest" || k == "revert" {
                return Err(validate::InvalidArgument::new(
                    "config key",
                    k,
                    "is a parameter of the call, not a config key",
                )
                .into());
            }
            check("config value", v, validate::config_value)?;
            if change.delete.contains(k) {
                return Err(validate::InvalidArgument::new(
                    "config key",
                    k,
                    "is both set and deleted",
                )
                .into());
            }
            params.push(pair(k, v.as_str()));
        }
        for k in &change.delete {
            check("config delete", k, validate::config_key)?;
        }
        if !change.delete.is_empty() {
            params.push(pair("delete", change.delete.join(",")));
        }
        if let Some(d) = &change.digest {
            check("digest", d, validate::digest)?;
            params.push(pair("digest", d.as_str()));
        }
        let path = api_path(&["nodes", &self.node, "lxc", &id, "config"]);
        let env = self.call(Method::Put, &path, params)?;
        if env.data.is_null() {
            return Ok(None);
        }
        self.expect_upid(Method::Put, &path, &env.data).map(Some)
    }

    /// `POST .../lxc/{vmid}/status/start`.
    pub fn start(&self, vmid: u32) -> Result<Upid, ProxmoxError> {
        let id = Self::vmid_str(vmid)?;
        self.task(
            Method::Post,
            api_path(&["nodes", &self.node, "lxc", &id, "status", "start"]),
            vec![],
        )
    }

    /// `POST .../lxc/{vmid}/status/stop`: immediate stop.
    pub fn stop(&self, vmid: u32) -> Result<Upid, ProxmoxError> {
        let id = Self::vmid_str(vmid)?;
        self.task(
            Method::Post,
            api_path(&["nodes", &self.node, "lxc", &id, "status", "stop"]),
            vec![],
        )
    }

    /// `POST .../lxc/{vmid}/status/shutdown`: clean shutdown, force-stopped after
    /// `timeout_secs` (Proxmox's default 60 when `None`).
    pub fn shutdown(&self, vmid: u32, timeout_secs: Option<u32>) -> Result<Upid, ProxmoxError> {
        let id = Self::vmid_str(vmid)?;
        let mut params = vec![];
        if let Some(t) = timeout_secs {
            params.push(pair("timeout", t.to_string()));
            params.push(pair("forceStop", flag(true)));
        }
        self.task(
            Method::Post,
            api_path(&["nodes", &self.node, "lxc", &id, "status", "shutdown"]),
            params,
        )
    }

    /// `DELETE /nodes/{node}/lxc/{vmid}`: `purge` also removes it from backup jobs
    /// and HA; `force` stops it first if running.
    pub fn destroy(&self, vmid: u32, purge: bool, force: bool) -> Result<Upid, ProxmoxError> {
        let id = Self::vmid_str(vmid)?;
        self.task(
            Method::Delete,
            api_path(&["nodes", &self.node, "lxc", &id]),
            vec![pair("purge", flag(purge)), pair("force", flag(force))],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ClientOptions {
        ClientOptions::new(
            "https://127.0.0.1:8006",
            "pve",
            "felhom-agent@pve!agent",
            Secret::new("0a1b2c3d-aaaa-bbbb-cccc-123456789abc"),
            TlsTrust::InsecureSkipVerify,
        )
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            api_base("https://pve.lan:8006/").unwrap(),
            "https://pve.lan:8006/api2/json"
        );
        assert_eq!(
            api_base("https://[::1]:8006/api2/json").unwrap(),
            "https://[::1]:8006/api2/json"
        );
        for bad in [
            "http://pve:8006",
            "https://",
            "https://u:p@pve:8006",
            "https://pve:8006/x",
            "https://pve:8006?a",
            "https://pve 1:8006",
        ] {
            assert!(api_base(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_are_checked_and_name_the_field() {
        let field_of = |o: ClientOptions| match Client::new(o) {
            Err(ProxmoxError::Option { field, .. }) => field,
            other => panic!("expected an option error, got {other:?}"),
        };
        let mut o = opts();
        o.token_id = "agent".into();
        assert_eq!(field_of(o), "token_id");
        let mut o = opts();
        o.node = "pve/x".into();
        assert_eq!(field_of(o), "node");
        let mut o = opts();
        o.base_url = "http://x".into();
        assert_eq!(field_of(o), "base_url");
        let mut o = opts();
        o.token_secret = Secret::new("abc=def");
        let e = Client::new(o).unwrap_err();
        assert!(matches!(
            e,
            ProxmoxError::Option {
                field: "token_secret",
                ..
            }
        ));
        assert!(!e.to_string().contains("abc=def"));
        let mut o = opts();
        o.token_secret = Secret::new("");
        assert_eq!(field_of(o), "token_secret");
        let mut o = opts();
        o.timeout = Duration::ZERO;
        assert_eq!(field_of(o), "timeout");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = Client::new(opts()).unwrap();
        let d = format!("{c:?} {:?}", opts());
        assert!(!d.contains("0a1b2c3d"), "{d}");
        assert!(d.contains("felhom-agent@pve!agent"));
    }

    #[test]
    fn invalid_arguments_are_refused_before_sending() {
        let c = Client::new(opts()).unwrap();
        let name = |e: ProxmoxError| match e {
            ProxmoxError::Argument(a) => a.name,
            other => panic!("expected an argument error, got {other:?}"),
        };
        assert_eq!(name(c.start(42).unwrap_err()), "vmid");
        assert_eq!(
            name(c.snapshot(100, "current", None).unwrap_err()),
            "snapshot"
        );
        assert_eq!(
            name(c.rollback(100, "../x", false).unwrap_err()),
            "snapshot"
        );
        assert_eq!(
            name(
                c.restore_lxc(100, "/etc/passwd", "local", false)
                    .unwrap_err()
            ),
            "ostemplate"
        );
        assert_eq!(
            name(c.storage_content("local/../x", None).unwrap_err()),
            "storage"
        );
        assert_eq!(
            name(c.set_config(100, &ConfigChange::default()).unwrap_err()),
            "config"
        );
        let both = ConfigChange {
            set: vec![("cores".into(), "2".into())],
            delete: vec!["cores".into()],
            digest: None,
        };
        assert_eq!(name(c.set_config(100, &both).unwrap_err()), "config key");
        let injected = ConfigChange {
            set: vec![("delete".into(), "rootfs".into())],
            ..ConfigChange::default()
        };
        assert_eq!(
            name(c.set_config(100, &injected).unwrap_err()),
            "config key"
        );
        assert!(c.start(42).unwrap_err().never_sent());
    }
}
