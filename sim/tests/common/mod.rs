//! A deliberately small HTTPS client for testing the simulators byte-for-byte: rustls over
//! a std `TcpStream`, one request per call (or several on one connection), and a response
//! reader that reports truncation instead of hiding it.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use felhom_sim::ProxmoxSim;
use felhom_sim::http::fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use serde_json::Value;

/// Accepts any certificate (signatures still checked) and remembers the leaf's fingerprint,
/// so tests can assert which certificate the server presented.
#[derive(Debug)]
struct Recorder {
    seen: Arc<Mutex<Option<String>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(fingerprint(end_entity.as_ref()));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// False when the connection ended before `Content-Length` bytes arrived.
    pub complete: bool,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn data(&self) -> Value {
        self.json()["data"].clone()
    }
}

/// A TLS connection to a simulator.
pub struct Conn {
    tls: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
    auth: Option<String>,
    pub fingerprint: Arc<Mutex<Option<String>>>,
}

pub fn connect(port: u16, auth: Option<String>) -> io::Result<Conn> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let seen = Arc::new(Mutex::new(None));
    let verifier = Recorder {
        seen: Arc::clone(&seen),
        provider: Arc::clone(&provider),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = ClientConnection::new(
        Arc::new(config),
        ServerName::try_from("localhost").unwrap().to_owned(),
    )
    .unwrap();
    Ok(Conn {
        tls: StreamOwned::new(conn, tcp),
        buf: Vec::new(),
        auth,
        fingerprint: seen,
    })
}

/// A connection to the simulator carrying its accepted token.
pub fn conn(sim: &ProxmoxSim) -> Conn {
    connect(sim.port(), Some(sim.token_header())).unwrap()
}

impl Conn {
    pub fn set_read_timeout(&self, d: Duration) {
        self.tls.sock.set_read_timeout(Some(d)).unwrap();
    }

    /// Sends one request; `body` is `(content type, bytes)`.
    pub fn send(
        &mut self,
        method: &str,
        target: &str,
        body: Option<(&str, &[u8])>,
    ) -> io::Result<()> {
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n");
        if let Some(a) = &self.auth {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        if let Some((ct, bytes)) = body {
            head.push_str(&format!(
                "Content-Type: {ct}\r\nContent-Length: {}\r\n",
                bytes.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if let Some((_, bytes)) = body {
            out.extend_from_slice(bytes);
        }
        self.tls.write_all(&out)?;
        self.tls.flush()
    }

    /// Sends these bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tls.write_all(bytes)?;
        self.tls.flush()
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        match self.tls.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            // A peer that closes without close_notify: treat as EOF, like a truncation.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Reads one response. `Err(UnexpectedEof)` when the connection ends before a head.
    pub fn recv(&mut self) -> io::Result<Reply> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "no response head",
                ));
            }
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).unwrap();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"));
        let status: u16 = parts.next().unwrap().parse().unwrap();
        let reason = parts.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.to_string(), v.trim().to_string())
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut complete = true;
        while self.buf.len() < length {
            if self.fill()? == 0 {
                complete = false;
                break;
            }
        }
        let body: Vec<u8> = self.buf.drain(..length.min(self.buf.len())).collect();
        Ok(Reply {
            status,
            reason,
            headers,
            body,
            complete,
        })
    }

    pub fn call(
        &mut self,
        method: &str,
        target: &str,
        body: Option<(&str, &[u8])>,
    ) -> io::Result<Reply> {
        self.send(method, target, body)?;
        self.recv()
    }

    /// True when the server has closed the connection (EOF on the next read).
    pub fn is_closed(&mut self) -> bool {
        matches!(self.fill(), Ok(0) | Err(_))
    }
}

pub const API: &str = "/api2/json";

/// One request on a fresh connection with the right token.
pub fn call(sim: &ProxmoxSim, method: &str, path: &str, form: Option<&str>) -> Reply {
    let mut c = conn(sim);
    let body = form.map(|f| ("application/x-www-form-urlencoded", f.as_bytes()));
    c.call(method, &format!("{API}{path}"), body).unwrap()
}

pub fn get(sim: &ProxmoxSim, path: &str) -> Reply {
    call(sim, "GET", path, None)
}

/// Percent-encodes a UPID for use as a path segment, as the PVE UI does.
pub fn enc(upid: &str) -> String {
    upid.replace(':', "%3A")
        .replace('@', "%40")
        .replace('!', "%21")
}

/// Polls a task's status until it stops (bounded, so a broken sim fails instead of hanging).
pub fn wait_task(sim: &ProxmoxSim, upid: &str) -> Value {
    for _ in 0..1000 {
        let r = get(
            sim,
            &format!("/nodes/{}/tasks/{}/status", sim.node(), enc(upid)),
        );
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        let data = r.data();
        if data["status"] == "stopped" {
            return data;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("task {upid} never stopped");
}

/// A started simulator with fast tasks and the given guests.
pub fn sim_with(guests: Vec<felhom_sim::GuestSeed>) -> ProxmoxSim {
    let mut b = ProxmoxSim::builder().task_duration(Duration::from_millis(30));
    for g in guests {
        b = b.guest(g);
    }
    b.start()
}
