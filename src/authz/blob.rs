//! The op blob: the exact JSON bytes an operator signed, parsed only **after** the
//! signature over those bytes verified. Strict: unknown fields, duplicate keys, a
//! nonce under 128 bits, bad timestamps, an over-long window and a `guest_id` without
//! the `guest_digest` that binds it to one configuration of that guest are `Malformed`.
//!
//! It never re-serializes the blob: the bytes that were verified are the bytes parsed.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};

use super::AuthzError;
use crate::base::encoding::{base64_decode, hex_decode};
use crate::base::time::Timestamp;

/// Longest `guest_digest` accepted: Proxmox sends a SHA-1 (40 hex digits); 64 leaves
/// room for a SHA-256 should it change.
pub(crate) const MAX_DIGEST_CHARS: usize = 64;
/// Largest blob accepted, in bytes.
pub const MAX_BLOB_BYTES: usize = 64 * 1024;
/// Longest validity window (`expires_at - not_before`) accepted, in seconds.
pub(crate) const MAX_WINDOW_SECONDS: i64 = 24 * 3600;
/// Fewest nonce bytes accepted (128 bits).
pub(crate) const MIN_NONCE_BYTES: usize = 16;
/// Longest nonce string accepted.
pub(crate) const MAX_NONCE_CHARS: usize = 128;

/// The parsed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpBlob {
    /// Operation name, e.g. `guest_destroy`.
    pub op: String,
    /// The host the op is for; must equal this host's `host_id`.
    pub host_id: String,
    /// The guest the op is for, when it is about one.
    pub guest_id: Option<String>,
    /// The Proxmox config `digest` of that guest as the operator saw it: present exactly
    /// when `guest_id` is. Proxmox reuses vmids, so the id alone does not name a guest.
    pub guest_digest: Option<String>,
    /// Operation parameters: a JSON object of strings (absent = empty).
    pub params: BTreeMap<String, String>,
    /// The key id the operator claims (advisory).
    pub key_id: String,
    /// The nonce, as written.
    pub nonce: String,
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity.
    pub expires_at: Timestamp,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    op: String,
    host_id: String,
    #[serde(default)]
    guest_id: Option<String>,
    #[serde(default)]
    guest_digest: Option<String>,
    #[serde(default)]
    params: Params,
    key_id: String,
    nonce: String,
    not_before: String,
    expires_at: String,
}

#[derive(Default)]
struct Params(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Params;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Params, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!(
                            "duplicate params key {k:?}"
                        )));
                    }
                    out.insert(k, v);
                }
                Ok(Params(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn malformed(detail: impl Into<String>) -> AuthzError {
    AuthzError::Malformed(detail.into())
}

fn check_text(field: &str, v: &str, max: usize) -> Result<(), AuthzError> {
    if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
        return Err(malformed(format!(
            "blob: {field} must be 1-{max} bytes without control characters"
        )));
    }
    Ok(())
}

/// A config digest as Proxmox prints it: 1 to [`MAX_DIGEST_CHARS`] lower-case hex
/// digits. Compared byte for byte with the guest's, so no other spelling is accepted.
fn check_digest(d: &str) -> Result<(), AuthzError> {
    if d.is_empty()
        || d.len() > MAX_DIGEST_CHARS
        || !d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(malformed(format!(
            "blob: guest_digest must be 1-{MAX_DIGEST_CHARS} lower-case hex digits"
        )));
    }
    Ok(())
}

/// How a nonce string was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonceEncoding {
    /// Hex digits (also valid base64 when its length is a multiple of 4).
    Hex,
    /// Standard base64 with padding, containing a non-hex character or of a length
    /// that is not even.
    Base64,
}

impl NonceEncoding {
    /// `hex` or `base64`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NonceEncoding::Hex => "hex",
            NonceEncoding::Base64 => "base64",
        }
    }
}

/// Decoded length of a nonce given in hex or standard base64, and how it was read.
///
/// Hex digits are a subset of the base64 alphabet, so a hex string whose length is a
/// multiple of 4 also decodes as base64, to 1.5× as many bytes: 24 hex digits (96
/// bits) would read as 18 base64 bytes. A string that is valid hex is therefore
/// counted as hex, the smaller of the two, so entropy is never overstated.
pub(crate) fn nonce_bytes(nonce: &str) -> Option<(usize, NonceEncoding)> {
    if let Ok(b) = hex_decode(nonce) {
        return Some((b.len(), NonceEncoding::Hex));
    }
    base64_decode(nonce)
        .ok()
        .map(|b| (b.len(), NonceEncoding::Base64))
}

impl OpBlob {
    /// Parses the verified bytes. Every refusal is [`AuthzError::Malformed`].
    pub fn parse(bytes: &[u8]) -> Result<OpBlob, AuthzError> {
        let w: Wire = serde_json::from_slice(bytes).map_err(|e| malformed(format!("blob: {e}")))?;
        check_text("op", &w.op, 64)?;
        check_text("host_id", &w.host_id, 253)?;
        if let Some(g) = &w.guest_id {
            check_text("guest_id", g, 64)?;
        }
        match (&w.guest_id, &w.guest_digest) {
            (Some(_), None) => {
                return Err(malformed(
                    "blob: guest_digest is required with guest_id (the guest's config digest \
                     as the operator saw it)",
                ));
            }
            (None, Some(_)) => return Err(malformed("blob: guest_digest without guest_id")),
            (Some(_), Some(d)) => check_digest(d)?,
            (None, None) => {}
        }
        check_text("key_id", &w.key_id, 64)?;
        for (k, v) in &w.params.0 {
            check_text("params key", k, 64)?;
            if v.len() > 4096 || v.chars().any(char::is_control) {
                return Err(malformed(format!(
                    "blob: params[{k:?}] must be at most 4096 bytes without control characters"
                )));
            }
        }
        if w.nonce.len() > MAX_NONCE_CHARS {
            return Err(malformed(format!(
                "blob: nonce longer than {MAX_NONCE_CHARS} characters"
            )));
        }
        match nonce_bytes(&w.nonce) {
            Some((n, _)) if n >= MIN_NONCE_BYTES => {}
            Some((n, enc)) => {
                return Err(malformed(format!(
                    "blob: nonce is {} bits (read as {}), at least {} required",
                    n * 8,
                    enc.as_str(),
                    MIN_NONCE_BYTES * 8
                )));
            }
            None => return Err(malformed("blob: nonce is neither hex nor base64")),
        }
        let ts = |field: &str, v: &str| {
            Timestamp::parse_rfc3339(v).map_err(|e| malformed(format!("blob: {field}: {e}")))
        };
        let not_before = ts("not_before", &w.not_before)?;
        let expires_at = ts("expires_at", &w.expires_at)?;
        let window = expires_at.0.saturating_sub(not_before.0);
        if window <= 0 {
            return Err(malformed("blob: expires_at is not after not_before"));
        }
        if window > MAX_WINDOW_SECONDS {
            return Err(malformed(format!(
                "blob: validity window of {window} s exceeds the {MAX_WINDOW_SECONDS} s maximum"
            )));
        }
        Ok(OpBlob {
            op: w.op,
            host_id: w.host_id,
            guest_id: w.guest_id,
            guest_digest: w.guest_digest,
            params: w.params.0,
            key_id: w.key_id,
            nonce: w.nonce,
            not_before,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "6f1c0e5a9b3d47e28c1f0a9d3b5e7c21";
    const DIGEST: &str = "0123456789abcdef0123456789abcdef01234567";

    fn blob(extra: &str, nonce: &str, nbf: &str, exp: &str) -> String {
        format!(
            r#"{{"op":"guest_destroy","host_id":"pve-a","guest_id":"105","guest_digest":"{DIGEST}","params":{{"purge":"1"{extra}}},"key_id":"k","nonce":"{nonce}","not_before":"{nbf}","expires_at":"{exp}"}}"#
        )
    }

    #[test]
    fn parses_a_good_blob() {
        let b = blob("", NONCE, "2030-01-01T00:00:00Z", "2030-01-01T01:00:00Z");
        let op = OpBlob::parse(b.as_bytes()).unwrap();
        assert_eq!(op.params["purge"], "1");
        assert_eq!(op.guest_id.as_deref(), Some("105"));
        assert_eq!(op.guest_digest.as_deref(), Some(DIGEST));
        assert_eq!(op.expires_at.0 - op.not_before.0, 3600);
    }

    #[test]
    fn refuses_duplicates_short_nonces_and_bad_windows() {
        let t0 = "2030-01-01T00:00:00Z";
        let cases = [
            blob(r#","purge":"2""#, NONCE, t0, "2030-01-01T01:00:00Z"),
            blob("", "0123456789abcdef", t0, "2030-01-01T01:00:00Z"),
            blob("", "not a nonce!", t0, "2030-01-01T01:00:00Z"),
            blob("", NONCE, t0, t0),
            blob("", NONCE, t0, "2030-01-02T00:00:01Z"),
            blob("", NONCE, "yesterday", "2030-01-01T01:00:00Z"),
            blob(r#","x":1"#, NONCE, t0, "2030-01-01T01:00:00Z"),
            format!(
                r#"{{"op":"a","op":"b",{}"#,
                &blob("", NONCE, t0, "2030-01-01T01:00:00Z")[1..]
            ),
        ];
        for c in cases {
            assert!(
                matches!(OpBlob::parse(c.as_bytes()), Err(AuthzError::Malformed(_))),
                "{c}"
            );
        }
        // base64 nonce of 16 bytes is fine; exactly 24 h is fine.
        let b = blob("", "q83vASNFZ4mrze8BI0VniQ==", t0, "2030-01-02T00:00:00Z");
        assert!(OpBlob::parse(b.as_bytes()).is_ok());
    }

    fn nonce_refusal(nonce: &str) -> String {
        let b = blob("", nonce, "2030-01-01T00:00:00Z", "2030-01-01T01:00:00Z");
        match OpBlob::parse(b.as_bytes()) {
            Err(AuthzError::Malformed(d)) => d,
            other => panic!("{nonce}: {other:?}"),
        }
    }

    #[test]
    fn a_hex_nonce_counts_as_hex_even_when_it_also_decodes_as_base64() {
        // 24 and 28 hex digits are valid base64 too (18 and 21 bytes); as hex they are
        // 96 and 112 bits, under the floor.
        for (nonce, bits) in [
            ("0123456789abcdef01234567", 96),
            ("0123456789abcdef0123456789ab", 112),
            ("0123456789ABCDEF0123456789AB", 112),
        ] {
            assert!(base64_decode(nonce).unwrap().len() >= MIN_NONCE_BYTES);
            assert_eq!(nonce_bytes(nonce), Some((bits / 8, NonceEncoding::Hex)));
            let d = nonce_refusal(nonce);
            assert_eq!(
                d,
                format!("blob: nonce is {bits} bits (read as hex), at least 128 required"),
                "{nonce}"
            );
        }
        // 32 hex digits: 128 bits. 24 base64 characters with a non-hex one: 16 bytes.
        assert_eq!(nonce_bytes(NONCE), Some((16, NonceEncoding::Hex)));
        assert_eq!(
            nonce_bytes("q83vASNFZ4mrze8BI0VniQ=="),
            Some((16, NonceEncoding::Base64))
        );
        for ok in [
            NONCE,
            "q83vASNFZ4mrze8BI0VniQ==",
            "0123456789abcdef0123456789abcdeX",
        ] {
            let b = blob("", ok, "2030-01-01T00:00:00Z", "2030-01-01T01:00:00Z");
            assert!(OpBlob::parse(b.as_bytes()).is_ok(), "{ok}");
        }
        // Short base64 is still measured as base64.
        assert_eq!(
            nonce_refusal("q83vASNFZ4mrze8B"),
            "blob: nonce is 96 bits (read as base64), at least 128 required"
        );
    }

    #[test]
    fn a_guest_is_named_with_its_digest_or_not_at_all() {
        let good = blob("", NONCE, "2030-01-01T00:00:00Z", "2030-01-01T01:00:00Z");
        let refusal = |b: &str| match OpBlob::parse(b.as_bytes()) {
            Err(AuthzError::Malformed(d)) => d,
            other => panic!("{b}: {other:?}"),
        };
        let without = good.replace(&format!(r#""guest_digest":"{DIGEST}","#), "");
        assert!(refusal(&without).contains("guest_digest is required"));
        let host_wide = without.replace(r#""guest_id":"105","#, "");
        assert_eq!(OpBlob::parse(host_wide.as_bytes()).unwrap().guest_id, None);
        let orphan = good.replace(r#""guest_id":"105","#, "");
        assert!(refusal(&orphan).contains("guest_digest without guest_id"));
        for bad in ["", "ABCDEF", "12 34", &"a".repeat(MAX_DIGEST_CHARS + 1)] {
            let b = good.replace(DIGEST, bad);
            assert!(refusal(&b).contains("guest_digest must be"), "{bad:?}");
        }
    }
}
