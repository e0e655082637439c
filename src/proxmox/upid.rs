//! Proxmox task ids (UPIDs): `UPID:node:PID:PSTART:STARTTIME:type:id:user:`.
//!
//! Parsing follows Proxmox's own decode pattern exactly (pid 8 hex digits, pstart 8
//! or 9, starttime 8, an empty id allowed, the actor possibly `user@realm!token`, and
//! the trailing colon). The original text is kept, so `Display` gives back the very
//! string Proxmox sent, which is what task status and log paths need. A UPID is never
//! built by the agent, only parsed from what Proxmox answered.

use std::fmt;
use std::str::FromStr;

/// The longest UPID accepted; real ones are well under 200 bytes.
const MAX_LEN: usize = 1024;

/// A parsed UPID: the original text plus the numbers and where each text field sits.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Upid {
    raw: String,
    pid: u32,
    starttime: u32,
    pstart: u64,
    node: (u16, u16),
    task_type: (u16, u16),
    id: (u16, u16),
    actor: (u16, u16),
}

/// Why a string is not a UPID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpidError {
    /// Which part is wrong: `prefix`, `format` (field count), `node`, `pid`, `pstart`, `starttime`, `type`,
    /// `id`, `user` or `trailing colon`.
    pub field: &'static str,
    /// Why.
    pub reason: &'static str,
}

impl fmt::Display for UpidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid UPID: {} {}", self.field, self.reason)
    }
}

impl std::error::Error for UpidError {}

fn err(field: &'static str, reason: &'static str) -> UpidError {
    UpidError { field, reason }
}

fn hex_field(s: &str, field: &'static str, min: usize, max: usize) -> Result<u64, UpidError> {
    if s.len() < min || s.len() > max {
        return Err(err(
            field,
            if min == max {
                "must be exactly 8 hex digits"
            } else {
                "must be 8 or 9 hex digits"
            },
        ));
    }
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(err(field, "must be hex digits"));
    }
    u64::from_str_radix(s, 16).map_err(|_| err(field, "must be hex digits"))
}

/// Type, id and user: no `:`, `/` or whitespace.
fn plain_field(s: &str) -> bool {
    !s.chars().any(|c| c == ':' || c == '/' || c.is_whitespace())
}

fn valid_node(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
}

impl Upid {
    /// Parses a UPID string.
    pub fn parse(s: &str) -> Result<Upid, UpidError> {
        if s.len() > MAX_LEN {
            return Err(err("format", "is longer than 1024 bytes"));
        }
        let rest = s
            .strip_prefix("UPID:")
            .ok_or_else(|| err("prefix", "must be \"UPID:\""))?;
        let body = rest
            .strip_suffix(':')
            .ok_or_else(|| err("trailing colon", "is missing"))?;
        let parts: Vec<&str> = body.split(':').collect();
        if parts.len() < 7 {
            return Err(err(
                "format",
                "needs 7 ':'-separated fields after \"UPID:\"",
            ));
        }
        if parts.len() > 7 {
            return Err(err("user", "must not contain ':'"));
        }
        let node = parts[0];
        if !valid_node(node) {
            return Err(err("node", "must be letters, digits and inner hyphens"));
        }
        let pid = hex_field(parts[1], "pid", 8, 8)?;
        let pstart = hex_field(parts[2], "pstart", 8, 9)?;
        let starttime = hex_field(parts[3], "starttime", 8, 8)?;
        let (task_type, id, actor) = (parts[4], parts[5], parts[6]);
        if task_type.is_empty() || !plain_field(task_type) {
            return Err(err("type", "must be non-empty without ':', '/' or spaces"));
        }
        if !plain_field(id) {
            return Err(err("id", "must not contain ':', '/' or spaces"));
        }
        if actor.is_empty() || !plain_field(actor) {
            return Err(err("user", "must be non-empty without ':', '/' or spaces"));
        }
        // Byte ranges of the fields in `s`: after "UPID:", each field and its ':'.
        // MAX_LEN keeps every offset within u16.
        let mut spans = [(0u16, 0u16); 7];
        let mut at = "UPID:".len();
        for (span, part) in spans.iter_mut().zip(&parts) {
            *span = (at as u16, (at + part.len()) as u16);
            at += part.len() + 1;
        }
        Ok(Upid {
            raw: s.to_string(),
            // 8 hex digits always fit in u32.
            pid: pid as u32,
            starttime: starttime as u32,
            pstart,
            node: spans[0],
            task_type: spans[4],
            id: spans[5],
            actor: spans[6],
        })
    }

    fn field(&self, (start, end): (u16, u16)) -> &str {
        self.raw
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }

    /// The node that runs the task.
    pub fn node(&self) -> &str {
        self.field(self.node)
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The worker's start time in clock ticks since boot (`/proc/PID/stat`).
    pub fn pstart(&self) -> u64 {
        self.pstart
    }

    /// When the task started, seconds since the Unix epoch.
    pub fn starttime(&self) -> u32 {
        self.starttime
    }

    /// The task type, e.g. `vzstart`, `vzdump`, `vzrestore`.
    pub fn task_type(&self) -> &str {
        self.field(self.task_type)
    }

    /// The task's object id (a vmid for guest tasks), possibly empty.
    pub fn id(&self) -> &str {
        self.field(self.id)
    }

    /// The user that started the task, without any token name (`root@pam`).
    pub fn user(&self) -> &str {
        let actor = self.actor();
        match actor.rfind('!') {
            Some(i) => &actor[..i],
            None => actor,
        }
    }

    /// The API token name when a token started the task (`agent` of `agent@pve!agent`).
    pub fn token(&self) -> Option<&str> {
        let actor = self.actor();
        actor.rfind('!').map(|i| &actor[i + 1..])
    }

    /// The full actor as written in the UPID (`user@realm` or `user@realm!token`).
    pub fn actor(&self) -> &str {
        self.field(self.actor)
    }

    /// The UPID text exactly as Proxmox wrote it.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Upid({})", self.raw)
    }
}

impl FromStr for Upid {
    type Err = UpidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Upid::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_upids_parse_and_round_trip() {
        let cases = [
            (
                "UPID:example-node:000934AF:0D015579:68BF3A41:vzdump:100:91a1da29-a47d-11f0-84e0-fafbfc944d00@pam!some-token:",
                "example-node",
                "vzdump",
                "100",
                "91a1da29-a47d-11f0-84e0-fafbfc944d00@pam",
                Some("some-token"),
            ),
            (
                "UPID:optiplex2:000137B5:00112EB4:6991F9E1:vzcreate:300:root@pam!opentofu:",
                "optiplex2",
                "vzcreate",
                "300",
                "root@pam",
                Some("opentofu"),
            ),
            (
                "UPID:host01:0000377E:19E15146:5F3C0469:vzshutdown:100:root@pam:",
                "host01",
                "vzshutdown",
                "100",
                "root@pam",
                None,
            ),
            (
                "UPID:pve:0001A2B3:00C0FFEE:66A1B2C3:aptupdate::root@pam:",
                "pve",
                "aptupdate",
                "",
                "root@pam",
                None,
            ),
        ];
        for (s, node, ty, id, user, token) in cases {
            let u = Upid::parse(s).unwrap();
            assert_eq!(u.node(), node);
            assert_eq!(u.task_type(), ty);
            assert_eq!(u.id(), id);
            assert_eq!(u.user(), user);
            assert_eq!(u.token(), token);
            assert_eq!(u.to_string(), s);
            assert_eq!(s.parse::<Upid>().unwrap(), u);
        }
        let u = Upid::parse("UPID:pve:0001A2B3:00C0FFEE:66A1B2C3:vzstart:100:root@pam:").unwrap();
        assert_eq!(u.pid(), 0x0001_A2B3);
        assert_eq!(u.pstart(), 0x00C0_FFEE);
        assert_eq!(u.starttime(), 0x66A1_B2C3);
        let nine =
            Upid::parse("UPID:pve:0001A2B3:1D0C0FFEE:66a1b2c3:vzstart:100:root@pam:").unwrap();
        assert_eq!(nine.pstart(), 0x1_D0C0_FFEE);
    }

    #[test]
    fn malformed_upids_name_the_field() {
        let cases = [
            (
                "PID:pve:0001A2B3:00C0FFEE:66A1B2C3:vzstart:100:root@pam:",
                "prefix",
            ),
            (
                "UPID:pve:0001A2B3:00C0FFEE:66A1B2C3:vzstart:100:root@pam",
                "trailing colon",
            ),
            (
                "UPID:-pve:0001A2B3:00C0FFEE:66A1B2C3:vzstart:100:root@pam:",
                "node",
            ),
            (
                "UPID:pve:1A2B3:00C0FFEE:66A1B2C3:vzstart:100:root@pam:",
                "pid",
            ),
            (
                "UPID:pve:0001A2B3:0C0FFEE:66A1B2C3:vzstart:100:root@pam:",
                "pstart",
            ),
            (
                "UPID:pve:0001A2B3:00C0FFEG:66A1B2C3:vzstart:100:root@pam:",
                "pstart",
            ),
            (
                "UPID:pve:0001A2B3:00C0FFEE:166A1B2C3:vzstart:100:root@pam:",
                "starttime",
            ),
            ("UPID:pve:0001A2B3:00C0FFEE:66A1B2C3::100:root@pam:", "type"),
            (
                "UPID:pve:0001A2B3:00C0FFEE:66A1B2C3:vz start:100:root@pam:",
                "type",
            ),
            (
                "UPID:pve:0001A2B3:00C0FFEE:66A1B2C3:vzstart:1/0:root@pam:",
                "id",
            ),
            ("UPID:pve:0001A2B3:00C0FFEE:66A1B2C3:vzstart:100::", "user"),
            (
                "UPID:pve:0001A2B3:00C0FFEE:66A1B2C3:vzstart:100:root@pam:x:",
                "user",
            ),
            ("UPID:pve:0001A2B3:00C0FFEE:vzstart:100:root@pam:", "format"),
            ("", "prefix"),
        ];
        for (s, field) in cases {
            let e = Upid::parse(s).unwrap_err();
            assert_eq!(e.field, field, "{s}: {e}");
        }
    }
}
