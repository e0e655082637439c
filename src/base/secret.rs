//! Secrets (the Proxmox token secret, the hub API key) as a type that cannot leak by
//! accident: its `Debug` and `Display` print a fixed placeholder, and the only way to
//! the bytes is [`Secret::expose`], which call sites use exactly where the secret goes
//! on the wire. Nothing in the crate formats an exposed secret into a message.

use std::fmt;

/// What every `Debug`/`Display` of a [`Secret`] prints.
pub const REDACTED: &str = "<redacted>";

/// A secret string. Cloning is allowed (agents hold it in their header builders); the
/// buffer is overwritten with zeros when dropped, to shorten its life in memory.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place it is sent (an HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty (a configuration error wherever one is required).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Safe zeroing: take the String's bytes as a Vec and overwrite them in place.
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        for b in bytes.iter_mut() {
            *b = 0;
        }
        std::hint::black_box(&bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("tok-3f1c9a-very-secret");
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(format!("{s}"), REDACTED);
        assert!(!format!("{:?}", Some(s.clone())).contains("very-secret"));
        assert_eq!(s.expose(), "tok-3f1c9a-very-secret");
    }
}
