//! The one place that builds TLS configurations and HTTP agents, for the Proxmox client
//! and the hub client alike.
//!
//! It owns server trust ([`TlsTrust`]: a SHA-256 leaf pin, a CA file, the system bundle,
//! or an explicitly chosen insecure mode), the connection settings (timeouts, no
//! redirects, a response body cap, keep-alive pool size), and the typed failures
//! ([`TransportError`], [`HttpError`]) that tell a caller whether a request could have
//! reached the server. It never sees what a request means, never logs, and never puts
//! a header value into an error: secret headers travel as [`crate::base::secret::Secret`]s.

mod error;
mod http;
mod tls;

pub use error::{EXCERPT_LIMIT, HttpError, TimeoutPhase, TransportError, excerpt};
pub use http::{
    Body, DEFAULT_MAX_BODY, HttpClient, HttpOptions, Method, Request, Response, USER_AGENT,
    form_urlencode, percent_encode, strip_userinfo,
};
pub use tls::{
    PinError, SYSTEM_BUNDLE, Sha256Pin, TlsFailure, TlsTrust, TrustError, client_config,
};
