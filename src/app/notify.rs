//! systemd integration without a dependency: the `sd_notify` datagram protocol over
//! std's `UnixDatagram`, and journald's priority prefixes.
//!
//! Under `Type=notify` systemd names a datagram socket in `$NOTIFY_SOCKET` (a path, or
//! `@name` for an abstract socket). The daemon sends `READY=1` once Recover is done and
//! the workers run, a one-line `STATUS=` whenever the status file changes its summary,
//! `WATCHDOG=1` from its main loop at half of `$WATCHDOG_USEC` (when `$WATCHDOG_PID`, if
//! set, is this process), and `STOPPING=1` as it stops. Each message is one datagram of
//! `KEY=value` lines. A failed send is logged once per kind and never stops the daemon.
//!
//! When `$JOURNAL_STREAM` (`DEV:INODE`) names the file stderr is, stderr is the
//! journal, so log lines get a `<N>` priority prefix ([`crate::base::log`]).
//!
//! This module never reads from the socket, never sends anything but those keys, and
//! does nothing at all when systemd did not ask for it.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::base::sync::lock;

/// The longest socket name accepted (`sun_path` holds 108 bytes).
const MAX_SOCKET_NAME: usize = 107;
/// The longest `STATUS=` text sent, in bytes.
const MAX_STATUS_BYTES: usize = 200;

/// A connection to systemd's notification socket.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// Half the watchdog interval, when systemd watches this process.
    watchdog_every: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
    last_status: Mutex<String>,
    failed_once: Mutex<bool>,
}

/// Why the notification settings could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotifyEnvError(pub(crate) String);

impl std::fmt::Display for NotifyEnvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotifyEnvError {}

impl Notifier {
    /// From the process environment; `None` when systemd did not ask for notifications,
    /// or (logged) when what it gave cannot be used.
    pub(crate) fn from_env() -> Option<Notifier> {
        let var = |k: &str| std::env::var(k).ok();
        let socket = var("NOTIFY_SOCKET")?;
        match Notifier::from_values(
            &socket,
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        ) {
            Ok(n) => Some(n),
            Err(e) => {
                crate::warn!(notify_unusable, "systemd notification disabled", error = e);
                None
            }
        }
    }

    /// From explicit values: `socket` as in `$NOTIFY_SOCKET`; the watchdog only when
    /// `watchdog_usec` is a positive number and `watchdog_pid` is unset or `pid`.
    pub(crate) fn from_values(
        socket: &str,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Result<Notifier, NotifyEnvError> {
        if socket.is_empty() || socket.len() > MAX_SOCKET_NAME {
            return Err(NotifyEnvError(format!(
                "NOTIFY_SOCKET must be 1 to {MAX_SOCKET_NAME} bytes, got {}",
                socket.len()
            )));
        }
        let addr = if let Some(name) = socket.strip_prefix('@') {
            SocketAddr::from_abstract_name(name.as_bytes())
        } else if socket.starts_with('/') {
            SocketAddr::from_pathname(socket)
        } else {
            return Err(NotifyEnvError(
                "NOTIFY_SOCKET must be an absolute path or start with @".into(),
            ));
        }
        .map_err(|e| NotifyEnvError(format!("NOTIFY_SOCKET: {e}")))?;
        let watchdog_every = match watchdog_usec {
            None => None,
            Some(text) => {
                let usec: u64 = text.trim().parse().map_err(|_| {
                    NotifyEnvError(format!("WATCHDOG_USEC must be a number, got {text:?}"))
                })?;
                let ours = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>() == Ok(pid));
                (usec > 0 && ours).then(|| Duration::from_micros(usec / 2))
            }
        };
        let socket = UnixDatagram::unbound()
            .map_err(|e| NotifyEnvError(format!("notification socket: {e}")))?;
        Ok(Notifier {
            socket,
            addr,
            watchdog_every,
            last_ping: Mutex::new(None),
            last_status: Mutex::new(String::new()),
            failed_once: Mutex::new(false),
        })
    }

    /// How often the watchdog is fed, when systemd watches.
    pub(crate) fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    fn send(&self, message: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.addr)
            .map(drop)
    }

    fn send_logged(&self, what: &str, message: &str) {
        if let Err(e) = self.send(message) {
            let mut failed = lock(&self.failed_once);
            if !*failed {
                *failed = true;
                crate::warn!(
                    notify_failed,
                    "systemd notification not sent",
                    message = what,
                    error = e
                );
            }
        }
    }

    /// `READY=1` with the first `STATUS=`.
    pub(crate) fn ready(&self, status: &str) {
        let line = status_line(status);
        *lock(&self.last_status) = line.clone();
        self.send_logged("ready", &format!("READY=1\nSTATUS={line}\n"));
    }

    /// `STATUS=` when the line changed since the last one sent.
    pub(crate) fn status(&self, status: &str) {
        let line = status_line(status);
        {
            let mut last = lock(&self.last_status);
            if *last == line {
                return;
            }
            *last = line.clone();
        }
        self.send_logged("status", &format!("STATUS={line}\n"));
    }

    /// `WATCHDOG=1` when half the watchdog interval has passed since the last one.
    pub(crate) fn watchdog_tick(&self) {
        let Some(every) = self.watchdog_every else {
            return;
        };
        {
            let mut last = lock(&self.last_ping);
            if last.is_some_and(|t| t.elapsed() < every) {
                return;
            }
            *last = Some(Instant::now());
        }
        self.send_logged("watchdog", "WATCHDOG=1\n");
    }

    /// `STOPPING=1`.
    pub(crate) fn stopping(&self) {
        self.send_logged("stopping", "STOPPING=1\nSTATUS=stopping\n");
    }
}

/// One line of at most [`MAX_STATUS_BYTES`], control characters replaced by spaces.
fn status_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > MAX_STATUS_BYTES {
        let mut end = MAX_STATUS_BYTES;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

/// Whether `$JOURNAL_STREAM` names the file stderr is (then stderr is the journal).
pub(crate) fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    journal_stream_matches(&value, meta.dev(), meta.ino())
}

/// Whether `value` (`DEV:INODE`, decimal) names device `dev` and inode `ino`.
fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_values_are_checked() {
        assert!(Notifier::from_values("/run/systemd/notify", None, None, 1).is_ok());
        assert!(Notifier::from_values("@felhom-test", None, None, 1).is_ok());
        for bad in ["", "relative/path", &format!("/{}", "x".repeat(200))] {
            assert!(
                Notifier::from_values(bad, None, None, 1).is_err(),
                "{bad:?}"
            );
        }
        assert!(Notifier::from_values("/s", Some("soon"), None, 1).is_err());
    }

    #[test]
    fn the_watchdog_is_half_the_interval_and_only_for_our_pid() {
        let every = |usec, pid| {
            Notifier::from_values("/s", Some(usec), pid, 42)
                .unwrap()
                .watchdog_every()
        };
        assert_eq!(every("2000000", None), Some(Duration::from_secs(1)));
        assert_eq!(every("2000000", Some("42")), Some(Duration::from_secs(1)));
        assert_eq!(every("2000000", Some("43")), None);
        assert_eq!(every("0", None), None);
    }

    #[test]
    fn status_lines_are_one_line_and_bounded() {
        assert_eq!(status_line("a\nb\u{1b}c"), "a b c");
        assert_eq!(status_line(&"é".repeat(300)).len(), MAX_STATUS_BYTES);
    }

    #[test]
    fn journal_stream_must_name_stderrs_device_and_inode() {
        assert!(journal_stream_matches("64769:1234", 64769, 1234));
        assert!(!journal_stream_matches("64769:1235", 64769, 1234));
        assert!(!journal_stream_matches("garbage", 64769, 1234));
        assert!(!journal_stream_matches("", 0, 0));
    }
}
