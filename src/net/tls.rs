//! Server trust and the rustls side of every connection: how a server's certificate is
//! judged ([`TlsTrust`]), the certificate verifiers behind each choice, and the ureq
//! connector that wraps a TCP stream in rustls with our own `ClientConfig`.
//!
//! ureq 3 lets a caller choose root certificates or no verification at all, but offers
//! no verifier hook; pinning the SHA-256 of a self-signed Proxmox certificate needs one.
//! So the connector here replaces ureq's own rustls connector: it opens TCP through
//! ureq's `TcpConnector`, runs the handshake with our config, and reports every failure
//! as a connect-phase error, because no byte of the HTTP request has left yet. A
//! connection never falls back to a weaker trust than the one configured.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, StreamOwned};
use sha2::{Digest, Sha256};
use ureq::unversioned::transport::time::{Duration as UreqDuration, Instant as UreqInstant};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, TcpConnector, Transport,
    TransportAdapter,
};

/// Where the system's CA bundle lives on Debian, and so on Proxmox VE.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The SHA-256 fingerprint of a server's leaf certificate (its DER encoding).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Pin([u8; 32]);

impl Sha256Pin {
    /// Wraps a raw 32-byte digest.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Sha256Pin(bytes)
    }

    /// The pin of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Sha256Pin(Sha256::digest(der).into())
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses a fingerprint: 64 hex digits, or 32 colon-separated pairs as
    /// `openssl x509 -noout -fingerprint -sha256` prints them, in either case. The
    /// `sha256 Fingerprint=` prefix openssl puts in front is accepted, as is
    /// surrounding whitespace.
    pub fn parse(input: &str) -> Result<Self, PinError> {
        let lead = input.len() - input.trim_start().len();
        let mut s = input.trim();
        let mut offset = lead;
        if let Some(eq) = s.find('=') {
            let prefix = &s[..eq];
            if prefix.to_ascii_lowercase().ends_with("fingerprint") {
                offset += eq + 1;
                s = &s[eq + 1..];
            }
        }
        if s.is_empty() {
            return Err(PinError::Empty);
        }
        let bytes = s.as_bytes();
        let colons = bytes.contains(&b':');
        let mut digits = Vec::with_capacity(64);
        for (i, &b) in bytes.iter().enumerate() {
            if b == b':' {
                // Colon form: exactly one colon after every pair, none at either end.
                if i % 3 != 2 || i + 1 == bytes.len() {
                    return Err(PinError::Separator { offset: offset + i });
                }
                continue;
            }
            if colons && i % 3 == 2 {
                return Err(PinError::Separator { offset: offset + i });
            }
            let v = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => {
                    return Err(PinError::Character {
                        offset: offset + i,
                        found: s[i..].chars().next().unwrap_or('?'),
                    });
                }
            };
            digits.push(v);
        }
        if digits.len() != 64 {
            return Err(PinError::Length {
                bytes: digits.len() / 2,
                odd_digit: digits.len() % 2 == 1,
            });
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            out[i] = (pair[0] << 4) | pair[1];
        }
        Ok(Sha256Pin(out))
    }

    /// Compares in time independent of where the first difference is.
    pub fn ct_eq(&self, other: &Sha256Pin) -> bool {
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Display for Sha256Pin {
    /// Upper-case hex pairs joined by colons, the way openssl prints fingerprints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sha256Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Pin({self})")
    }
}

impl std::str::FromStr for Sha256Pin {
    type Err = PinError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Sha256Pin::parse(s)
    }
}

/// Why a SHA-256 fingerprint did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PinError {
    /// The fingerprint is empty (or only a `Fingerprint=` prefix).
    Empty,
    /// A character that is neither a hex digit nor a separator, at this byte offset.
    Character {
        /// Byte offset in the input.
        offset: usize,
        /// The character found there.
        found: char,
    },
    /// A colon where a hex digit belongs, or a hex digit where a colon belongs, at
    /// this byte offset: colon form is exactly `XX:XX:...:XX`.
    Separator {
        /// Byte offset in the input.
        offset: usize,
    },
    /// The digits do not make exactly 32 bytes.
    Length {
        /// Whole bytes found.
        bytes: usize,
        /// Whether a lone hex digit was left over.
        odd_digit: bool,
    },
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinError::Empty => f.write_str("SHA-256 fingerprint is empty"),
            PinError::Character { offset, found } => write!(
                f,
                "SHA-256 fingerprint has {found:?} at byte {offset}: expected a hex digit or ':'"
            ),
            PinError::Separator { offset } => write!(
                f,
                "SHA-256 fingerprint is malformed at byte {offset}: expected pairs of hex digits separated by single ':'"
            ),
            PinError::Length { bytes, odd_digit } => write!(
                f,
                "SHA-256 fingerprint has {bytes} bytes{}: expected exactly 32",
                if *odd_digit { " and a stray digit" } else { "" }
            ),
        }
    }
}

impl std::error::Error for PinError {}

/// How a server's certificate is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsTrust {
    /// Accept exactly the leaf certificate with this SHA-256 fingerprint; name and
    /// validity dates are not checked (a Proxmox host serves a self-signed
    /// certificate), handshake signatures are.
    Pin(Sha256Pin),
    /// Verify the chain against the CA certificates in this PEM file, with name and
    /// expiry checks.
    CaFile(PathBuf),
    /// Verify the chain against the system bundle ([`SYSTEM_BUNDLE`]).
    SystemBundle,
    /// Accept any certificate. Only when an operator chose it by name; callers log
    /// [`TlsTrust::warning`] on every start.
    InsecureSkipVerify,
}

impl TlsTrust {
    /// The warning a caller must log at every start for this choice, if any.
    pub fn warning(&self) -> Option<&'static str> {
        match self {
            TlsTrust::InsecureSkipVerify => Some(
                "TLS certificate verification is disabled (insecure_skip_verify): \
                 anyone on the network path can impersonate the server",
            ),
            _ => None,
        }
    }

    /// A short description for logs and errors, e.g. `pin 0B:9F:...`.
    pub fn describe(&self) -> String {
        match self {
            TlsTrust::Pin(p) => format!("pin {p}"),
            TlsTrust::CaFile(p) => format!("ca_file {}", p.display()),
            TlsTrust::SystemBundle => format!("system bundle {SYSTEM_BUNDLE}"),
            TlsTrust::InsecureSkipVerify => "insecure_skip_verify".to_string(),
        }
    }
}

/// Why a trust choice could not be turned into a TLS configuration.
#[derive(Debug)]
#[non_exhaustive]
pub enum TrustError {
    /// The CA file (or system bundle) could not be read.
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The CA file is not valid PEM.
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The CA file holds no certificate rustls could use as a trust anchor.
    NoCertificates {
        /// The file.
        path: PathBuf,
        /// PEM certificate blocks found but rejected.
        rejected: usize,
    },
    /// rustls refused the configuration (no usable protocol version or verifier).
    Config {
        /// What rustls said.
        detail: String,
    },
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustError::Unreadable { path, source } => {
                write!(f, "CA file {}: cannot read: {source}", path.display())
            }
            TrustError::BadPem { path, detail } => {
                write!(f, "CA file {}: not valid PEM: {detail}", path.display())
            }
            TrustError::NoCertificates { path, rejected: 0 } => {
                write!(f, "CA file {}: contains no certificates", path.display())
            }
            TrustError::NoCertificates { path, rejected } => write!(
                f,
                "CA file {}: none of its {rejected} certificates is usable as a trust anchor",
                path.display()
            ),
            TrustError::Config { detail } => write!(f, "TLS configuration refused: {detail}"),
        }
    }
}

impl std::error::Error for TrustError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TrustError::Unreadable { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn load_roots(path: &Path) -> Result<RootCertStore, TrustError> {
    let pem = std::fs::read(path).map_err(|source| TrustError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&pem) {
        match item {
            Ok(c) => certs.push(c),
            Err(e) => {
                return Err(TrustError::BadPem {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                });
            }
        }
    }
    let mut roots = RootCertStore::empty();
    let (added, rejected) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TrustError::NoCertificates {
            path: path.to_path_buf(),
            rejected,
        });
    }
    Ok(roots)
}

/// Builds the rustls client configuration for a trust choice, on the ring provider.
pub fn client_config(trust: &TlsTrust) -> Result<Arc<ClientConfig>, TrustError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TrustError::Config {
            detail: e.to_string(),
        })?;
    let config = match trust {
        TlsTrust::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LeafVerifier::pinned(*pin, &provider)))
            .with_no_client_auth(),
        TlsTrust::InsecureSkipVerify => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LeafVerifier::any(&provider)))
            .with_no_client_auth(),
        TlsTrust::CaFile(path) => builder
            .with_root_certificates(load_roots(path)?)
            .with_no_client_auth(),
        TlsTrust::SystemBundle => builder
            .with_root_certificates(load_roots(Path::new(SYSTEM_BUNDLE))?)
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Judges only the leaf: either its fingerprint equals the pin, or (insecure) anything.
/// Handshake signatures are still checked against the presented certificate, so the
/// server must hold the private key of the certificate it shows.
#[derive(Debug)]
struct LeafVerifier {
    pin: Option<Sha256Pin>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl LeafVerifier {
    fn pinned(pin: Sha256Pin, provider: &CryptoProvider) -> Self {
        LeafVerifier {
            pin: Some(pin),
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn any(provider: &CryptoProvider) -> Self {
        LeafVerifier {
            pin: None,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

/// Carried inside a rustls error when the presented certificate does not match the pin.
#[derive(Debug)]
struct PinMismatch {
    expected: Sha256Pin,
    presented: Sha256Pin,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate pin mismatch: pinned {}, server presented {}",
            self.expected, self.presented
        )
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for LeafVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(expected) = self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let presented = Sha256Pin::of_der(end_entity.as_ref());
        if presented.ct_eq(&expected) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch {
                    expected,
                    presented,
                }))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What went wrong in a TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The server's leaf certificate is not the pinned one.
    PinMismatch {
        /// The configured pin.
        expected: Sha256Pin,
        /// The fingerprint of the certificate the server presented.
        presented: Sha256Pin,
    },
    /// The certificate chain did not verify against the CA file or system bundle
    /// (unknown issuer, wrong name, expired, ...).
    Untrusted {
        /// rustls's reason.
        detail: String,
    },
    /// The handshake failed for another reason (protocol, alert, connection closed).
    Handshake {
        /// What happened.
        detail: String,
    },
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::PinMismatch {
                expected,
                presented,
            } => write!(
                f,
                "certificate pin mismatch: pinned {expected}, server presented {presented}"
            ),
            TlsFailure::Untrusted { detail } => {
                write!(f, "server certificate not trusted: {detail}")
            }
            TlsFailure::Handshake { detail } => write!(f, "handshake failed: {detail}"),
        }
    }
}

/// Why a connection could not be set up. Travels through ureq as `Error::Other` so
/// the client can tell a connect-phase failure (request never sent) from the rest.
#[derive(Debug)]
pub(crate) enum ConnectFailure {
    /// The TCP connection (or name resolution) failed; ureq's error inside.
    Tcp(ureq::Error),
    /// The TLS handshake failed.
    Tls(TlsFailure),
    /// The handshake ran out of time.
    Timeout,
    /// The URL asks for plain HTTP; this connector only speaks TLS.
    PlainHttp,
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectFailure::Tcp(e) => write!(f, "{e}"),
            ConnectFailure::Tls(t) => write!(f, "{t}"),
            ConnectFailure::Timeout => f.write_str("TLS handshake timed out"),
            ConnectFailure::PlainHttp => f.write_str("plain http is not allowed"),
        }
    }
}

impl std::error::Error for ConnectFailure {}

fn connect_error(f: ConnectFailure) -> ureq::Error {
    ureq::Error::Other(Box::new(f))
}

fn classify_handshake_error(e: io::Error) -> ConnectFailure {
    let inner_ureq = e.get_ref().map(|i| i.is::<ureq::Error>()).unwrap_or(false);
    if inner_ureq {
        return match ureq::Error::from(e) {
            ureq::Error::Timeout(_) => ConnectFailure::Timeout,
            other => ConnectFailure::Tls(TlsFailure::Handshake {
                detail: other.to_string(),
            }),
        };
    }
    if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock {
        return ConnectFailure::Timeout;
    }
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return ConnectFailure::Tls(TlsFailure::Handshake {
            detail: e.to_string(),
        });
    };
    ConnectFailure::Tls(match tls {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            match other.0.downcast_ref::<PinMismatch>() {
                Some(m) => TlsFailure::PinMismatch {
                    expected: m.expected,
                    presented: m.presented,
                },
                None => TlsFailure::Untrusted {
                    detail: other.0.to_string(),
                },
            }
        }
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
            TlsFailure::Untrusted {
                detail:
                    "issuer not trusted (self-signed, or signed by a CA outside the trust store)"
                        .to_string(),
            }
        }
        rustls::Error::InvalidCertificate(c) => TlsFailure::Untrusted {
            detail: c.to_string(),
        },
        other => TlsFailure::Handshake {
            detail: other.to_string(),
        },
    })
}

/// The connector the HTTP agent runs for every new connection: TCP through ureq's
/// connector, then a rustls handshake with our configuration.
pub(crate) struct TlsConnector {
    config: Arc<ClientConfig>,
    tcp: TcpConnector,
}

impl TlsConnector {
    pub(crate) fn new(config: Arc<ClientConfig>) -> Self {
        TlsConnector {
            config,
            tcp: TcpConnector::default(),
        }
    }
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector").finish_non_exhaustive()
    }
}

/// The timeout left of `t` after the time already spent since `started`.
fn remaining(t: NextTimeout, started: UreqInstant, now: UreqInstant) -> NextTimeout {
    let elapsed = match (started, now) {
        (UreqInstant::Exact(a), UreqInstant::Exact(b)) => b.saturating_duration_since(a),
        _ => std::time::Duration::ZERO,
    };
    let after = match t.after {
        UreqDuration::Exact(d) => UreqDuration::Exact(d.saturating_sub(elapsed)),
        UreqDuration::NotHappening => UreqDuration::NotHappening,
    };
    NextTimeout { after, ..t }
}

impl Connector<()> for TlsConnector {
    type Out = Box<dyn Transport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        if !details.needs_tls() {
            return Err(connect_error(ConnectFailure::PlainHttp));
        }
        let tcp = match Connector::<()>::connect(&self.tcp, details, None) {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Err(connect_error(ConnectFailure::Tcp(
                    ureq::Error::ConnectionFailed,
                )));
            }
            Err(e) => return Err(connect_error(ConnectFailure::Tcp(e))),
        };
        let host = details
            .uri
            .authority()
            .map(|a| a.host().trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or_default();
        let name = ServerName::try_from(host)
            .map_err(|_| {
                connect_error(ConnectFailure::Tls(TlsFailure::Handshake {
                    detail: format!("{host:?} is not a valid server name"),
                }))
            })?
            .to_owned();
        let mut conn = ClientConnection::new(self.config.clone(), name).map_err(|e| {
            connect_error(ConnectFailure::Tls(TlsFailure::Handshake {
                detail: e.to_string(),
            }))
        })?;
        let boxed: Box<dyn Transport> = Box::new(tcp);
        let mut sock = TransportAdapter::new(boxed, details.current_time.clone());
        sock.set_timeout(remaining(
            details.timeout,
            details.now,
            (details.current_time)(),
        ));
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut sock) {
                return Err(connect_error(classify_handshake_error(e)));
            }
        }
        let transport = TlsTransport {
            buffers: LazyBuffers::new(
                details.config.input_buffer_size(),
                details.config.output_buffer_size(),
            ),
            stream: StreamOwned { conn, sock },
            sniffer: StatusSniffer::Idle,
        };
        Ok(Some(Box::new(transport)))
    }
}

/// HTTP over a rustls stream. Besides moving bytes it remembers the status line of
/// each response it reads, because ureq keeps only the status code and Proxmox puts
/// its error text in the reason phrase (see [`take_status_line`]).
struct TlsTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
    sniffer: StatusSniffer,
}

impl fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTransport").finish_non_exhaustive()
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        self.sniffer.arm();
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.sniffer.feed(&input[..amount]);
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

/// The longest status line kept; Proxmox puts one line of message there.
const MAX_STATUS_LINE: usize = 1024;

enum StatusSniffer {
    /// Not waiting for a response head.
    Idle,
    /// A request went out; collecting the first line of the answer.
    Collecting(Vec<u8>),
}

impl StatusSniffer {
    fn arm(&mut self) {
        if matches!(self, StatusSniffer::Idle) {
            *self = StatusSniffer::Collecting(Vec::new());
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        let StatusSniffer::Collecting(line) = self else {
            return;
        };
        let end = bytes.iter().position(|&b| b == b'\n');
        let take = end.unwrap_or(bytes.len());
        let room = MAX_STATUS_LINE.saturating_sub(line.len());
        line.extend_from_slice(&bytes[..take.min(room)]);
        if end.is_some() || line.len() >= MAX_STATUS_LINE {
            let text = String::from_utf8_lossy(line)
                .trim_end_matches('\r')
                .to_string();
            LAST_STATUS_LINE.with(|s| *s.borrow_mut() = Some(text));
            *self = StatusSniffer::Idle;
        }
    }
}

thread_local! {
    // ureq runs a request's I/O on the calling thread, so the status line read by the
    // transport is the one of the request this thread is running.
    static LAST_STATUS_LINE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Forgets any status line remembered on this thread (before a new request).
pub(crate) fn clear_status_line() {
    LAST_STATUS_LINE.with(|s| *s.borrow_mut() = None);
}

/// The reason phrase of the last response head read on this thread, if its status
/// code is `status`.
pub(crate) fn take_status_line(status: u16) -> Option<String> {
    let line = LAST_STATUS_LINE.with(|s| s.borrow_mut().take())?;
    let mut parts = line.splitn(3, ' ');
    let _version = parts.next()?;
    let code: u16 = parts.next()?.parse().ok()?;
    if code != status {
        return None;
    }
    Some(parts.next().unwrap_or("").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PVE_SELF: &str = "0B:9F:FE:ED:3A:31:26:BC:FB:D3:C1:AA:8F:90:EF:F5:A0:47:04:96:79:0B:4D:19:ED:EA:3D:99:26:B2:A1:C6";

    #[test]
    fn pin_parses_openssl_output_plain_hex_and_any_case() {
        let a = Sha256Pin::parse(PVE_SELF).unwrap();
        let b = Sha256Pin::parse(&PVE_SELF.replace(':', "").to_lowercase()).unwrap();
        let c = Sha256Pin::parse(&format!("sha256 Fingerprint={PVE_SELF}\n")).unwrap();
        let d =
            Sha256Pin::parse(&format!("SHA256 Fingerprint={}", PVE_SELF.to_lowercase())).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a, d);
        assert_eq!(a.to_string(), PVE_SELF);
        assert_eq!(a.as_bytes()[0], 0x0b);
    }

    #[test]
    fn pin_matches_the_certificate_file_fingerprint() {
        let pem = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/vectors/tls/pve-self.crt"
        ))
        .unwrap();
        let der = CertificateDer::pem_slice_iter(&pem)
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(Sha256Pin::of_der(der.as_ref()).to_string(), PVE_SELF);
    }

    #[test]
    fn pin_errors_name_the_problem() {
        assert_eq!(Sha256Pin::parse("  "), Err(PinError::Empty));
        assert_eq!(Sha256Pin::parse("Fingerprint="), Err(PinError::Empty));
        assert_eq!(
            Sha256Pin::parse(&PVE_SELF[..PVE_SELF.len() - 3]),
            Err(PinError::Length {
                bytes: 31,
                odd_digit: false
            })
        );
        let plain = PVE_SELF.replace(':', "");
        assert_eq!(
            Sha256Pin::parse(&plain[..63]),
            Err(PinError::Length {
                bytes: 31,
                odd_digit: true
            })
        );
        assert_eq!(
            Sha256Pin::parse(&format!("{plain}00")),
            Err(PinError::Length {
                bytes: 33,
                odd_digit: false
            })
        );
        let mut bad = PVE_SELF.to_string();
        bad.replace_range(4..5, "g");
        assert_eq!(
            Sha256Pin::parse(&bad),
            Err(PinError::Character {
                offset: 4,
                found: 'g'
            })
        );
        assert_eq!(
            Sha256Pin::parse("0B9:F"),
            Err(PinError::Separator { offset: 2 })
        );
        assert_eq!(
            Sha256Pin::parse("0B::9F"),
            Err(PinError::Separator { offset: 3 })
        );
        assert_eq!(
            Sha256Pin::parse(&format!("{PVE_SELF}:")),
            Err(PinError::Separator { offset: 95 })
        );
        assert_eq!(
            Sha256Pin::parse(" x"),
            Err(PinError::Character {
                offset: 1,
                found: 'x'
            })
        );
        assert!(
            PinError::Length {
                bytes: 31,
                odd_digit: false
            }
            .to_string()
            .contains("31 bytes")
        );
    }

    #[test]
    fn ct_eq_compares_all_bytes() {
        let a = Sha256Pin::from_bytes([7; 32]);
        let mut last = [7; 32];
        last[31] = 8;
        assert!(a.ct_eq(&Sha256Pin::from_bytes([7; 32])));
        assert!(!a.ct_eq(&Sha256Pin::from_bytes(last)));
    }

    #[test]
    fn ca_file_errors_name_the_file_and_why() {
        let missing = PathBuf::from("/nonexistent/felhom-ca.pem");
        let e = client_config(&TlsTrust::CaFile(missing.clone())).unwrap_err();
        assert!(matches!(e, TrustError::Unreadable { ref path, .. } if path == &missing));
        assert!(e.to_string().contains("/nonexistent/felhom-ca.pem"));

        let key_only = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/tls/ca.key"));
        let e = client_config(&TlsTrust::CaFile(key_only)).unwrap_err();
        assert!(
            matches!(e, TrustError::NoCertificates { rejected: 0, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("no certificates"));

        let ok = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/tls/ca.crt"));
        assert!(client_config(&TlsTrust::CaFile(ok)).is_ok());
    }

    #[test]
    fn only_insecure_warns() {
        assert!(TlsTrust::InsecureSkipVerify.warning().is_some());
        assert!(TlsTrust::SystemBundle.warning().is_none());
        assert!(
            TlsTrust::Pin(Sha256Pin::from_bytes([0; 32]))
                .warning()
                .is_none()
        );
    }

    #[test]
    fn sniffer_keeps_the_final_status_line_across_reads() {
        clear_status_line();
        let mut s = StatusSniffer::Idle;
        s.feed(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(take_status_line(200), None, "not armed: nothing kept");
        s.arm();
        s.feed(b"HTTP/1.1 500 CT is lo");
        s.feed(b"cked (backup)\r\nContent-Length: 0\r\n");
        s.feed(b"HTTP/1.1 200 not a status line: already collected\r\n");
        assert_eq!(
            take_status_line(500).as_deref(),
            Some("CT is locked (backup)")
        );
        s.arm();
        s.feed(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(take_status_line(404), None, "a different status is ignored");
        s.arm();
        s.feed(b"HTTP/1.1 403 Permission check failed (/vms/100, VM.PowerMgmt)\r\n");
        assert_eq!(
            take_status_line(403).as_deref(),
            Some("Permission check failed (/vms/100, VM.PowerMgmt)")
        );
        assert_eq!(take_status_line(403), None, "taken once");
    }
}
