//! Revoked keys: `authz.revoked_keys_file`, a list of public keys in the plain-key form
//! `ssh-keygen -Y verify -r FILE` also reads (one `TYPE BASE64 [COMMENT]` per line;
//! blank lines and `#` comments ignored). A key listed here is refused (`revoked`)
//! whatever else lists it, and a rotation may not bring it back.
//!
//! Reading is capped ([`MAX_REVOKED_BYTES`], [`MAX_REVOKED_KEYS`]) and never panics; an
//! error names the line and why. This module never writes a file and never decides
//! what to do with a broken file: the signer set keeps its last good list.

use std::io::Read as _;
use std::path::Path;

use ssh_key::{HashAlg, PublicKey, public::KeyData};

/// Largest revoked-keys file read, in bytes.
pub const MAX_REVOKED_BYTES: usize = 1024 * 1024;
/// Most keys one revoked-keys file may list.
pub const MAX_REVOKED_KEYS: usize = 10_000;

/// A set of revoked keys, compared by key material.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokedKeys {
    keys: Vec<(KeyData, String)>,
}

impl RevokedKeys {
    /// No key revoked.
    pub fn none() -> RevokedKeys {
        RevokedKeys::default()
    }

    /// Parses the file's text; the error names the 1-based line and why.
    pub fn parse(text: &str) -> Result<RevokedKeys, String> {
        let mut keys: Vec<(KeyData, String)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = PublicKey::from_openssh(line)
                .map_err(|e| format!("line {}: not a public key: {e}", i + 1))?;
            if keys.len() >= MAX_REVOKED_KEYS {
                return Err(format!("over {MAX_REVOKED_KEYS} keys"));
            }
            let fp = key.fingerprint(HashAlg::Sha256).to_string();
            keys.push((key.key_data().clone(), fp));
        }
        Ok(RevokedKeys { keys })
    }

    /// Reads and parses `path` (at most [`MAX_REVOKED_BYTES`]).
    pub fn read(path: &Path) -> Result<RevokedKeys, String> {
        let mut buf = Vec::new();
        let cap = u64::try_from(MAX_REVOKED_BYTES).map_or(u64::MAX, |c| c + 1);
        std::fs::File::open(path)
            .and_then(|f| f.take(cap).read_to_end(&mut buf))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if buf.len() > MAX_REVOKED_BYTES {
            return Err(format!(
                "{}: over the {MAX_REVOKED_BYTES}-byte cap",
                path.display()
            ));
        }
        let text = String::from_utf8(buf).map_err(|e| {
            format!(
                "{}: not UTF-8 at byte {}",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        RevokedKeys::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The fingerprint of `key` when it is revoked.
    pub fn find(&self, key: &KeyData) -> Option<&str> {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, fp)| fp.as_str())
    }

    /// The revoked keys' `SHA256:` fingerprints, in file order.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(|(_, fp)| fp.clone()).collect()
    }

    /// How many keys are revoked.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is revoked.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = include_str!("../../vectors/sshsig/keys/ed25519.pub");

    #[test]
    fn plain_keys_comments_and_blank_lines_parse_and_garbage_names_its_line() {
        let r = RevokedKeys::parse(&format!("# revoked\n\n{KEY}")).unwrap();
        assert_eq!(r.len(), 1);
        let k = PublicKey::from_openssh(KEY.trim()).unwrap();
        assert!(r.find(k.key_data()).is_some());
        let e = RevokedKeys::parse(&format!("{}\nssh-ed25519 @@@\n", KEY.trim())).unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
    }
}
