//! HTTP/1.1 over TLS on loopback: the server core every simulator stands on.
//!
//! Owns the listening socket, one thread per connection, the TLS session (rustls, ring),
//! request parsing (request line, headers, `Content-Length` or chunked bodies, keep-alive)
//! and response framing. A [`Handler`] turns each [`Request`] into a [`Response`]; the core
//! carries out the delivery the response asks for (at once, late, cut off, or not at all).
//!
//! It must never interpret paths, bodies or credentials and never record requests: that is
//! the handler's business, so a hub simulator can reuse this unchanged. What it does keep
//! is its own health: a panic in any of its threads (a handler's or its own) is caught,
//! counted in [`Panics`] and answered `500` where a request was being handled, so a
//! simulator bug fails the test or soak that met it instead of passing as a dropped
//! connection.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown as NetShutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use sha2::{Digest, Sha256};

/// Largest request head (request line + headers) accepted; larger gets `431`.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest request body accepted; larger gets `413`.
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// How long an idle keep-alive connection is kept open (pveproxy uses 5 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// One parsed HTTP request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method token as sent, e.g. `GET`.
    pub method: String,
    /// The request target as sent (path and query, still percent-encoded).
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Header fields in arrival order; names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked if it was sent chunked.
    pub body: Vec<u8>,
    /// The client's address.
    pub peer: SocketAddr,
}

impl Request {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path part of the target, before any `?`, still percent-encoded.
    pub fn raw_path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The query part of the target, after the `?`, if there is one.
    pub fn raw_query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }
}

/// A response body: bytes, or a generated one too large to want in memory.
#[derive(Debug, Clone)]
pub enum Body {
    /// These bytes exactly.
    Bytes(Vec<u8>),
    /// `prefix`, then `fill` repeated, then `suffix`: `len` bytes in all.
    Filler {
        /// Bytes sent first.
        prefix: Vec<u8>,
        /// The byte repeated in the middle.
        fill: u8,
        /// Total length including prefix and suffix.
        len: usize,
        /// Bytes sent last.
        suffix: Vec<u8>,
    },
}

impl Body {
    /// Total length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Body::Bytes(b) => b.len(),
            Body::Filler {
                prefix,
                len,
                suffix,
                ..
            } => (*len).max(prefix.len() + suffix.len()),
        }
    }

    /// True when the body has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the first `limit` bytes of the body (all of it if `limit >= len`).
    fn write_prefix(&self, w: &mut impl Write, limit: usize) -> io::Result<()> {
        match self {
            Body::Bytes(b) => w.write_all(&b[..limit.min(b.len())]),
            Body::Filler {
                prefix,
                fill,
                suffix,
                ..
            } => {
                let total = self.len();
                let limit = limit.min(total);
                let middle = total - prefix.len() - suffix.len();
                let mut left = limit;
                let take = left.min(prefix.len());
                w.write_all(&prefix[..take])?;
                left -= take;
                let chunk = [*fill; 16 * 1024];
                let mut mid_left = left.min(middle);
                left -= mid_left;
                while mid_left > 0 {
                    let n = mid_left.min(chunk.len());
                    w.write_all(&chunk[..n])?;
                    mid_left -= n;
                }
                w.write_all(&suffix[..left.min(suffix.len())])
            }
        }
    }
}

/// How the core should deliver a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Send it now.
    Normal,
    /// Send it after this long (cut short, without an answer, if the server shuts down).
    Delay(Duration),
    /// Send nothing and close the socket.
    DropConnection,
    /// Send the head and about half of the body, then close the socket.
    DropMidBody,
}

/// A response for the core to send.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase; control characters are replaced by spaces on the wire.
    pub reason: String,
    /// Header fields; the core adds `Content-Length` and `Connection` itself.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Body,
    /// How to deliver it.
    pub delivery: Delivery,
    /// Close the connection after this response even when the status is below 400.
    pub close: bool,
}

impl Response {
    /// A response with this status line, no headers and an empty body.
    pub fn new(status: u16, reason: &str) -> Self {
        Response {
            status,
            reason: reason.to_string(),
            headers: Vec::new(),
            body: Body::Bytes(Vec::new()),
            delivery: Delivery::Normal,
            close: false,
        }
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Body::Bytes(body.into());
        self
    }

    /// Replaces the delivery.
    pub fn with_delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }
}

/// Turns requests into responses. Called on the connection's thread, concurrently.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, req: &Request) -> Response;
}

impl<F> Handler for F
where
    F: Fn(&Request) -> Response + Send + Sync + 'static,
{
    fn handle(&self, req: &Request) -> Response {
        self(req)
    }
}

/// Builds a rustls server configuration (ring, TLS 1.2 + 1.3) from a PEM chain and key.
pub fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> io::Result<Arc<ServerConfig>> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("cert PEM: {e}")))?;
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "cert PEM: no certificate",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("key PEM: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("TLS config: {e}")))?;
    Ok(Arc::new(config))
}

/// The SHA-256 fingerprint of the first certificate in a PEM chain, `AB:CD:…` upper hex.
pub fn pem_fingerprint(cert_pem: &[u8]) -> io::Result<String> {
    let cert = CertificateDer::from_pem_slice(cert_pem)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("cert PEM: {e}")))?;
    Ok(fingerprint(cert.as_ref()))
}

/// The SHA-256 fingerprint of DER bytes, `AB:CD:…` upper hex with colons.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A handler that panicked must not take the whole simulator down with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The panics a server caught in its threads, for its owner to fail on.
#[derive(Debug, Default)]
pub struct Panics {
    caught: Mutex<(usize, Vec<String>)>,
}

impl Panics {
    /// How many messages are kept (the count goes on past it).
    const KEEP: usize = 8;

    fn record(&self, where_: &str, payload: &(dyn std::any::Any + Send)) {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        let mut caught = lock(&self.caught);
        caught.0 += 1;
        if caught.1.len() < Self::KEEP {
            caught.1.push(format!("{where_}: {what}"));
        }
    }

    /// How many panics were caught since the start (or the last [`Panics::take`]).
    pub fn count(&self) -> usize {
        lock(&self.caught).0
    }

    /// The first few panic messages, each prefixed with the thread it happened on.
    pub fn messages(&self) -> Vec<String> {
        lock(&self.caught).1.clone()
    }

    /// Returns the count and messages and forgets them: a test that provoked a panic on
    /// purpose takes it, so its simulator does not fail the test when dropped.
    pub fn take(&self) -> (usize, Vec<String>) {
        std::mem::take(&mut *lock(&self.caught))
    }

    /// A one-line account for a failure message, `None` when nothing was caught.
    pub fn summary(&self) -> Option<String> {
        let (count, messages) = &*lock(&self.caught);
        (*count > 0).then(|| format!("{count} panic(s) caught, first: {}", messages.join(" | ")))
    }
}

struct Shared {
    stopping: Mutex<bool>,
    wake: Condvar,
    tls: RwLock<Arc<ServerConfig>>,
    conns: Mutex<Conns>,
    panics: Arc<Panics>,
}

#[derive(Default)]
struct Conns {
    next_id: u64,
    open: HashMap<u64, TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

impl Shared {
    fn is_stopping(&self) -> bool {
        *lock(&self.stopping)
    }

    /// Sleeps `d`, or less if the server stops; true when the full time passed.
    fn sleep(&self, d: Duration) -> bool {
        let guard = lock(&self.stopping);
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, d, |stopping| !*stopping)
            .unwrap_or_else(PoisonError::into_inner);
        !*guard
    }
}

/// A running HTTPS server on `127.0.0.1`. Dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Server {
    /// Binds an ephemeral port on 127.0.0.1 and starts accepting connections.
    pub fn start(tls: Arc<ServerConfig>, handler: impl Handler) -> io::Result<Server> {
        Server::start_on(0, tls, handler)
    }

    /// Binds 127.0.0.1:`port` (0: an ephemeral one) and starts accepting connections;
    /// a fixed port lets a test bring a server back where a client expects it.
    pub fn start_on(
        port: u16,
        tls: Arc<ServerConfig>,
        handler: impl Handler,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            stopping: Mutex::new(false),
            wake: Condvar::new(),
            tls: RwLock::new(tls),
            conns: Mutex::new(Conns::default()),
            panics: Arc::new(Panics::default()),
        });
        let handler: Arc<dyn Handler> = Arc::new(handler);
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name(format!("sim-accept-{}", addr.port()))
            .spawn(move || {
                let panics = Arc::clone(&accept_shared.panics);
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| {
                    accept_loop(listener, accept_shared, handler)
                })) {
                    panics.record("accept thread", p.as_ref());
                }
            })?;
        Ok(Server {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The panics caught in this server's threads (shared: it outlives the server).
    pub fn panics(&self) -> Arc<Panics> {
        Arc::clone(&self.shared.panics)
    }

    /// New connections use this TLS configuration from now on; open ones keep theirs.
    pub fn set_tls(&self, tls: Arc<ServerConfig>) {
        *self
            .shared
            .tls
            .write()
            .unwrap_or_else(PoisonError::into_inner) = tls;
    }

    /// Stops accepting, closes every open connection and joins every thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        *lock(&self.shared.stopping) = true;
        self.shared.wake.notify_all();
        // Wake the blocking accept(); it sees the flag and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = accept.join();
        let (open, threads) = {
            let mut conns = lock(&self.shared.conns);
            (
                std::mem::take(&mut conns.open),
                std::mem::take(&mut conns.threads),
            )
        };
        for stream in open.values() {
            let _ = stream.shutdown(NetShutdown::Both);
        }
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, handler: Arc<dyn Handler>) {
    for stream in listener.incoming() {
        if shared.is_stopping() {
            return;
        }
        let Ok(stream) = stream else {
            // Out of descriptors or a reset before accept: back off instead of spinning.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        let mut conns = lock(&shared.conns);
        conns.threads.retain(|t| !t.is_finished());
        let id = conns.next_id;
        conns.next_id += 1;
        conns.open.insert(id, clone);
        let conn_shared = Arc::clone(&shared);
        let conn_handler = Arc::clone(&handler);
        let spawned = thread::Builder::new()
            .name(format!("sim-conn-{id}"))
            .spawn(move || {
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| {
                    serve(&conn_shared, conn_handler.as_ref(), stream);
                })) {
                    conn_shared.panics.record("connection thread", p.as_ref());
                }
                lock(&conn_shared.conns).open.remove(&id);
            });
        match spawned {
            Ok(t) => conns.threads.push(t),
            Err(_) => {
                conns.open.remove(&id);
            }
        }
    }
}

type Tls = StreamOwned<ServerConnection, TcpStream>;

/// Why reading a request stopped.
enum ReadError {
    /// The peer went away, timed out idle, or the socket failed: close quietly.
    Gone,
    /// The bytes are not acceptable HTTP: answer this status, then close.
    Reject(u16, &'static str),
}

fn serve(shared: &Shared, handler: &dyn Handler, tcp: TcpStream) {
    let Ok(peer) = tcp.peer_addr() else {
        return;
    };
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(30)));
    let config = Arc::clone(&shared.tls.read().unwrap_or_else(PoisonError::into_inner));
    let Ok(conn) = ServerConnection::new(config) else {
        return;
    };
    let mut tls = StreamOwned::new(conn, tcp);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if shared.is_stopping() {
            return;
        }
        let req = match read_request(&mut tls, &mut buf, peer) {
            Ok(req) => req,
            Err(ReadError::Gone) => return,
            Err(ReadError::Reject(status, reason)) => {
                let resp = Response::new(status, reason)
                    .with_header("Content-Type", "text/plain")
                    .with_body(format!("{reason}\n"));
                let _ = write_response(&mut tls, &resp, true);
                close_gracefully(&mut tls);
                return;
            }
        };
        let resp = match catch_unwind(AssertUnwindSafe(|| handler.handle(&req))) {
            Ok(resp) => resp,
            Err(p) => {
                shared.panics.record(
                    &format!("handler of {} {}", req.method, req.raw_path()),
                    p.as_ref(),
                );
                Response::new(500, "simulator handler panicked")
                    .with_header("Content-Type", "text/plain")
                    .with_body("simulator handler panicked\n")
            }
        };
        let wants_close = req
            .header("Connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || req.version == "HTTP/1.0";
        let close = wants_close || resp.close || resp.status >= 400;
        match resp.delivery {
            Delivery::Normal => {}
            Delivery::Delay(d) => {
                if !shared.sleep(d) {
                    abort(&mut tls);
                    return;
                }
            }
            Delivery::DropConnection => {
                abort(&mut tls);
                return;
            }
            Delivery::DropMidBody => {
                let half = resp.body.len() / 2;
                let _ = write_head(&mut tls, &resp, true)
                    .and_then(|()| resp.body.write_prefix(&mut tls, half))
                    .and_then(|()| tls.flush());
                abort(&mut tls);
                return;
            }
        }
        if write_response(&mut tls, &resp, close).is_err() {
            abort(&mut tls);
            return;
        }
        if close {
            close_gracefully(&mut tls);
            return;
        }
    }
}

/// Ends the connection with a TLS close_notify, as a well-behaved server does.
fn close_gracefully(tls: &mut Tls) {
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let _ = tls.sock.shutdown(NetShutdown::Write);
}

/// Ends the connection abruptly: no close_notify, so the client sees a truncated stream.
fn abort(tls: &mut Tls) {
    let _ = tls.sock.shutdown(NetShutdown::Both);
}

fn write_head(w: &mut impl Write, resp: &Response, close: bool) -> io::Result<()> {
    let reason: String = resp
        .reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason);
    for (k, v) in &resp.headers {
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("connection") {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    head.push_str(if close {
        "Connection: close\r\n"
    } else {
        "Connection: Keep-Alive\r\n"
    });
    head.push_str("\r\n");
    w.write_all(head.as_bytes())
}

fn write_response(tls: &mut Tls, resp: &Response, close: bool) -> io::Result<()> {
    write_head(tls, resp, close)?;
    resp.body.write_prefix(tls, usize::MAX)?;
    tls.flush()
}

/// Reads more bytes into `buf`; `Gone` on EOF, timeout or error.
fn fill(tls: &mut Tls, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    let mut chunk = [0u8; 16 * 1024];
    match tls.read(&mut chunk) {
        Ok(0) | Err(_) => Err(ReadError::Gone),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn read_request(tls: &mut Tls, buf: &mut Vec<u8>, peer: SocketAddr) -> Result<Request, ReadError> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Reject(431, "Request Header Fields Too Large"));
        }
        fill(tls, buf)?;
    };
    if head_end > MAX_HEAD {
        return Err(ReadError::Reject(431, "Request Header Fields Too Large"));
    }
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| ReadError::Reject(400, "Bad Request"))?
        .to_string();
    buf.drain(..head_end + 4);

    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Reject(400, "Bad Request"));
    };
    if !is_token(method) || target.is_empty() || !target.starts_with('/') {
        return Err(ReadError::Reject(400, "Bad Request"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(ReadError::Reject(505, "HTTP Version Not Supported"));
    }
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Reject(400, "Bad Request"));
        };
        if !is_token(name) {
            // Also rejects obsolete line folding (a name starting with whitespace).
            return Err(ReadError::Reject(400, "Bad Request"));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let mut req = Request {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers,
        body: Vec::new(),
        peer,
    };

    let chunked = match req.header("Transfer-Encoding") {
        None => false,
        Some(te) if te.eq_ignore_ascii_case("chunked") => true,
        Some(_) => return Err(ReadError::Reject(501, "Not Implemented")),
    };
    let lengths: Vec<&str> = req
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    if chunked && !lengths.is_empty() {
        return Err(ReadError::Reject(400, "Bad Request"));
    }
    let length = match lengths.as_slice() {
        [] => 0,
        [first, rest @ ..] => {
            if rest.iter().any(|v| v != first) || !first.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ReadError::Reject(400, "Bad Request"));
            }
            first
                .parse::<usize>()
                .map_err(|_| ReadError::Reject(413, "Content Too Large"))?
        }
    };
    if length > MAX_BODY {
        return Err(ReadError::Reject(413, "Content Too Large"));
    }
    if (chunked || length > 0)
        && req
            .header("Expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        tls.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .and_then(|()| tls.flush())
            .map_err(|_| ReadError::Gone)?;
    }
    req.body = if chunked {
        read_chunked(tls, buf)?
    } else {
        while buf.len() < length {
            fill(tls, buf)?;
        }
        buf.drain(..length).collect()
    };
    Ok(req)
}

fn read_line(tls: &mut Tls, buf: &mut Vec<u8>) -> Result<String, ReadError> {
    loop {
        if let Some(i) = find(buf, b"\r\n") {
            let line = String::from_utf8(buf[..i].to_vec())
                .map_err(|_| ReadError::Reject(400, "Bad Request"))?;
            buf.drain(..i + 2);
            return Ok(line);
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Reject(400, "Bad Request"));
        }
        fill(tls, buf)?;
    }
}

fn read_chunked(tls: &mut Tls, buf: &mut Vec<u8>) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(tls, buf)?;
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| ReadError::Reject(400, "Bad Request"))?;
        if body.len() + size > MAX_BODY {
            return Err(ReadError::Reject(413, "Content Too Large"));
        }
        if size == 0 {
            // Trailer fields, up to the empty line.
            while !read_line(tls, buf)?.is_empty() {}
            return Ok(body);
        }
        while buf.len() < size + 2 {
            fill(tls, buf)?;
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(ReadError::Reject(400, "Bad Request"));
        }
        buf.drain(..size + 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filler_body_writes_exact_prefix() {
        let body = Body::Filler {
            prefix: b"{\"data\":\"".to_vec(),
            fill: b'x',
            len: 20,
            suffix: b"\"}".to_vec(),
        };
        let mut all = Vec::new();
        body.write_prefix(&mut all, usize::MAX).unwrap();
        assert_eq!(all, b"{\"data\":\"xxxxxxxxx\"}");
        assert_eq!(all.len(), 20);
        let mut part = Vec::new();
        body.write_prefix(&mut part, 10).unwrap();
        assert_eq!(part, b"{\"data\":\"x");
    }

    #[test]
    fn fingerprint_is_colon_upper_hex() {
        let fp = fingerprint(b"abc");
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.starts_with("BA:78:16:BF"));
    }
}
