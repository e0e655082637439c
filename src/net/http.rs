//! A small blocking HTTPS client on ureq: one request in, one bounded response out.
//! Redirects are never followed, error statuses are answers (the caller reads their
//! bodies), bodies are capped, and every failure is a [`TransportError`] that says
//! whether the request could have reached the server.

use std::fmt;
use std::time::Duration;

use ureq::unversioned::resolver::DefaultResolver;

use super::error::{EXCERPT_LIMIT, HttpError, TimeoutPhase, TransportError, excerpt};
use super::tls::{
    ConnectFailure, TlsConnector, TlsTrust, TrustError, clear_status_line, client_config,
    take_status_line,
};
use crate::base::secret::Secret;

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("felhom-agent/", env!("CARGO_PKG_VERSION"));

/// Default cap on a response body.
pub const DEFAULT_MAX_BODY: u64 = 8 * 1024 * 1024;

/// How an [`HttpClient`] connects and how long it waits.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// How the server's certificate is judged.
    pub trust: TlsTrust,
    /// Time allowed to resolve, connect and finish the TLS handshake.
    pub connect_timeout: Duration,
    /// Time allowed for a whole call, connect to last body byte.
    pub timeout: Duration,
    /// The largest response body read; a longer one is [`TransportError::BodyTooLarge`].
    pub max_body: u64,
    /// Idle keep-alive connections kept per host (size it to the number of threads
    /// calling in parallel, or each pass pays for new handshakes).
    pub max_idle_per_host: usize,
    /// How long an idle connection may be reused. Keep it under the server's own
    /// keep-alive (Proxmox closes after 5 s), so a request is not written into a
    /// connection the server is closing, which would make it look maybe-processed.
    pub max_idle_age: Duration,
}

impl HttpOptions {
    /// Defaults: 10 s connect, 30 s per call, 8 MiB bodies, 8 idle connections per
    /// host reused for up to 4 s.
    pub fn new(trust: TlsTrust) -> Self {
        HttpOptions {
            trust,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            max_body: DEFAULT_MAX_BODY,
            max_idle_per_host: 8,
            max_idle_age: Duration::from_secs(4),
        }
    }
}

/// An HTTP method the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// No body.
    Empty,
    /// `application/x-www-form-urlencoded` pairs, encoded when sent.
    Form(Vec<(String, String)>),
    /// `application/json` bytes.
    Json(Vec<u8>),
}

#[derive(Clone)]
enum HeaderValue {
    Plain(String),
    Secret(Secret),
}

impl HeaderValue {
    fn wire(&self) -> &str {
        match self {
            HeaderValue::Plain(v) => v,
            HeaderValue::Secret(s) => s.expose(),
        }
    }
}

impl fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderValue::Plain(v) => write!(f, "{v:?}"),
            HeaderValue::Secret(s) => write!(f, "{s:?}"),
        }
    }
}

/// One request: method, absolute `https://` URL, extra headers and a body.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, HeaderValue)>,
    body: Body,
}

impl Request {
    /// A request with no extra headers and no body.
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    /// Adds a header whose value is not secret.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers
            .push((name.to_string(), HeaderValue::Plain(value.into())));
        self
    }

    /// Adds a header whose whole value is a secret (e.g. `Bearer KEY`): it is exposed
    /// only when the request is written to the connection.
    pub fn secret_header(mut self, name: &str, value: &Secret) -> Self {
        self.headers
            .push((name.to_string(), HeaderValue::Secret(value.clone())));
        self
    }

    /// Sets a form body.
    pub fn form(mut self, pairs: Vec<(String, String)>) -> Self {
        self.body = Body::Form(pairs);
        self
    }

    /// Sets a JSON body from already serialized bytes.
    pub fn json(mut self, bytes: Vec<u8>) -> Self {
        self.body = Body::Json(bytes);
        self
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The body.
    pub fn body(&self) -> &Body {
        &self.body
    }
}

/// A complete answer of any status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The reason phrase as the server sent it when it could be read (escaped and
    /// bounded), else the standard phrase for the status.
    pub reason: String,
    /// The body, at most the configured cap.
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The response when its status is 2xx, else an [`HttpError`] describing it.
    pub fn into_success(self) -> Result<Response, HttpError> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(self.to_http_error())
        }
    }

    /// Describes this response as an [`HttpError`] (status, reason, body excerpt).
    pub fn to_http_error(&self) -> HttpError {
        HttpError {
            status: self.status,
            reason: self.reason.clone(),
            body_excerpt: excerpt(&self.body, EXCERPT_LIMIT),
        }
    }
}

/// The HTTPS client. Cheap to clone; clones share the connection pool. Safe to use
/// from many threads at once.
#[derive(Clone)]
pub struct HttpClient {
    agent: ureq::Agent,
    max_body: u64,
    trust: String,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("trust", &self.trust)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Builds the client: TLS configuration from `options.trust` (a CA file is read
    /// now), timeouts, pool size, body cap.
    pub fn new(options: &HttpOptions) -> Result<HttpClient, TrustError> {
        let tls = client_config(&options.trust)?;
        let idle_per_host = options.max_idle_per_host.max(1);
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .https_only(true)
            .max_redirects(0)
            // Environment proxies are not honoured: the connector speaks straight TLS.
            .proxy(None)
            .user_agent(USER_AGENT)
            .timeout_connect(Some(options.connect_timeout))
            .timeout_global(Some(options.timeout))
            .max_idle_connections(idle_per_host.saturating_mul(4))
            .max_idle_connections_per_host(idle_per_host)
            .max_idle_age(options.max_idle_age)
            .build();
        let agent =
            ureq::Agent::with_parts(config, TlsConnector::new(tls), DefaultResolver::default());
        Ok(HttpClient {
            agent,
            max_body: options.max_body,
            trust: options.trust.describe(),
        })
    }

    /// Sends one request and reads the whole answer, whatever its status.
    pub fn send(&self, request: Request) -> Result<Response, TransportError> {
        let target = format!("{} {}", request.method, strip_userinfo(&request.url));
        let invalid = |detail: String| TransportError::InvalidRequest {
            target: target.clone(),
            detail,
        };
        let mut builder = ureq::http::Request::builder()
            .method(request.method.as_str())
            .uri(request.url.as_str());
        for (name, value) in &request.headers {
            // Checked here so the error can name the header without echoing its value.
            if value
                .wire()
                .bytes()
                .any(|b| b.is_ascii_control() && b != b'\t')
            {
                return Err(invalid(format!(
                    "header {name} contains control characters"
                )));
            }
            builder = builder.header(name.as_str(), value.wire());
        }
        let has_body = request.body != Body::Empty;
        let built = match request.body {
            Body::Empty => builder.body(Vec::new()),
            Body::Form(pairs) => builder
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form_urlencode(&pairs).into_bytes()),
            Body::Json(bytes) => builder
                .header("content-type", "application/json")
                .body(bytes),
        };
        let built = built.map_err(|e| invalid(e.to_string()))?;
        clear_status_line();
        let answer = if !has_body {
            let (parts, _) = built.into_parts();
            self.agent.run(ureq::http::Request::from_parts(parts, ()))
        } else {
            self.agent.run(built)
        };
        let answer = answer.map_err(|e| self.classify(e, &target))?;
        let status = answer.status().as_u16();
        let reason = take_status_line(status)
            .map(|r| excerpt(r.as_bytes(), EXCERPT_LIMIT))
            .unwrap_or_else(|| {
                answer
                    .status()
                    .canonical_reason()
                    .unwrap_or_default()
                    .to_string()
            });
        let body = answer
            .into_body()
            .with_config()
            .limit(self.max_body)
            .read_to_vec()
            .map_err(|e| self.classify(e, &target))?;
        Ok(Response {
            status,
            reason,
            body,
        })
    }

    fn classify(&self, e: ureq::Error, target: &str) -> TransportError {
        let target = target.to_string();
        match e {
            ureq::Error::Other(inner) => match inner.downcast::<ConnectFailure>() {
                Ok(failure) => connect_failure(*failure, target),
                Err(other) => TransportError::Protocol {
                    target,
                    detail: other.to_string(),
                },
            },
            ureq::Error::Timeout(t) => TransportError::Timeout {
                target,
                phase: match t {
                    ureq::Timeout::Resolve | ureq::Timeout::Connect => TimeoutPhase::Connect,
                    _ => TimeoutPhase::Exchange,
                },
            },
            ureq::Error::HostNotFound => TransportError::Connect {
                target,
                detail: "host not found".to_string(),
                source: None,
            },
            ureq::Error::ConnectionFailed => TransportError::Connect {
                target,
                detail: "connection failed".to_string(),
                source: None,
            },
            ureq::Error::Io(source) => TransportError::Io { target, source },
            ureq::Error::BodyExceedsLimit(_) => TransportError::BodyTooLarge {
                target,
                limit: self.max_body,
            },
            ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::RequireHttpsOnly(_) => {
                TransportError::InvalidRequest {
                    target,
                    detail: e.to_string(),
                }
            }
            other => TransportError::Protocol {
                target,
                detail: other.to_string(),
            },
        }
    }
}

fn connect_failure(failure: ConnectFailure, target: String) -> TransportError {
    match failure {
        ConnectFailure::Tls(failure) => TransportError::Tls { target, failure },
        ConnectFailure::Timeout => TransportError::Timeout {
            target,
            phase: TimeoutPhase::Connect,
        },
        ConnectFailure::PlainHttp => TransportError::InvalidRequest {
            target,
            detail: "only https:// URLs are allowed".to_string(),
        },
        ConnectFailure::Tcp(ureq::Error::Timeout(_)) => TransportError::Timeout {
            target,
            phase: TimeoutPhase::Connect,
        },
        ConnectFailure::Tcp(ureq::Error::Io(source)) => TransportError::Connect {
            target,
            detail: source.to_string(),
            source: Some(source),
        },
        ConnectFailure::Tcp(other) => TransportError::Connect {
            target,
            detail: other.to_string(),
            source: None,
        },
    }
}

/// The URL with any `user:password@` removed, for messages.
pub fn strip_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &url[..scheme_end + 3], &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for a path
/// segment, a query value or a form field.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    out
}

/// `k=v&k=v` with both sides percent-encoded (a space is `%20`, which every decoder
/// reads; `+` would be taken literally by some).
pub fn form_urlencode(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&percent_encode(k));
        out.push('=');
        out.push_str(&percent_encode(v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_of_upids_and_forms() {
        assert_eq!(
            percent_encode("UPID:pve:0001A2B3:00C0FFEE:66A1B2C3:vzstart:100:root@pam!tok:"),
            "UPID%3Apve%3A0001A2B3%3A00C0FFEE%3A66A1B2C3%3Avzstart%3A100%3Aroot%40pam%21tok%3A"
        );
        let pairs = vec![
            ("description".to_string(), "a b\nc&d=e+f/é%".to_string()),
            ("delete".to_string(), "cores,swap".to_string()),
        ];
        assert_eq!(
            form_urlencode(&pairs),
            "description=a%20b%0Ac%26d%3De%2Bf%2F%C3%A9%25&delete=cores%2Cswap"
        );
    }

    #[test]
    fn userinfo_is_stripped() {
        assert_eq!(
            strip_userinfo("https://u:p@hub.example:443/api?x=@"),
            "https://hub.example:443/api?x=@"
        );
        assert_eq!(
            strip_userinfo("https://127.0.0.1:8006/api2/json"),
            "https://127.0.0.1:8006/api2/json"
        );
    }

    #[test]
    fn request_debug_redacts_secret_headers() {
        let r = Request::new(Method::Get, "https://h/")
            .secret_header("authorization", &Secret::new("Bearer s3cr3t-value"));
        let d = format!("{r:?}");
        assert!(!d.contains("s3cr3t"), "{d}");
        assert!(d.contains("<redacted>"));
    }

    #[test]
    fn plain_http_and_control_characters_are_refused_before_sending() {
        let c = HttpClient::new(&HttpOptions::new(TlsTrust::InsecureSkipVerify)).unwrap();
        let e = c
            .send(Request::new(Method::Get, "http://127.0.0.1:9/"))
            .unwrap_err();
        assert!(matches!(e, TransportError::InvalidRequest { .. }), "{e}");
        assert!(e.never_sent());
        let e = c
            .send(
                Request::new(Method::Get, "https://127.0.0.1:9/")
                    .secret_header("authorization", &Secret::new("x\r\nInjected: 1")),
            )
            .unwrap_err();
        assert!(e.to_string().contains("header authorization"), "{e}");
        assert!(!e.to_string().contains("Injected"), "{e}");
    }

    #[test]
    fn refused_connection_is_never_sent() {
        // A port that was just free: nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let c = HttpClient::new(&HttpOptions::new(TlsTrust::InsecureSkipVerify)).unwrap();
        let e = c
            .send(Request::new(
                Method::Post,
                format!("https://127.0.0.1:{port}/x"),
            ))
            .unwrap_err();
        assert!(matches!(e, TransportError::Connect { .. }), "{e:?}");
        assert!(e.never_sent());
        assert!(e.to_string().starts_with("POST https://127.0.0.1:"), "{e}");
    }
}
