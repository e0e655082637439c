//! Hex and base64 (standard alphabet, RFC 4648), small and strict: decoding names the
//! offending byte offset, and never panics on any input.

use std::fmt;

/// Why a hex or base64 string did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodingError {
    /// A byte that is not in the alphabet, at this offset of the input.
    InvalidByte {
        /// Offset in the input.
        offset: usize,
        /// The byte found there.
        byte: u8,
    },
    /// The input length is impossible for the encoding (odd hex, base64 not a multiple of 4).
    InvalidLength(usize),
    /// Base64 padding in the wrong place, or non-zero bits in the last symbol.
    InvalidPadding,
}

impl fmt::Display for EncodingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodingError::InvalidByte { offset, byte } => {
                write!(f, "invalid byte 0x{byte:02x} at offset {offset}")
            }
            EncodingError::InvalidLength(n) => write!(f, "invalid length {n}"),
            EncodingError::InvalidPadding => f.write_str("invalid padding"),
        }
    }
}

impl std::error::Error for EncodingError {}

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of `bytes`.
pub fn hex_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX_LOWER[(b >> 4) as usize] as char);
        out.push(HEX_LOWER[(b & 0x0f) as usize] as char);
    }
    out
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes hex (either case). The input must have an even length.
pub fn hex_decode(s: &str) -> Result<Vec<u8>, EncodingError> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return Err(EncodingError::InvalidLength(b.len()));
    }
    let mut out = Vec::with_capacity(b.len() / 2);
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = hex_val(pair[0]).ok_or(EncodingError::InvalidByte {
            offset: 2 * i,
            byte: pair[0],
        })?;
        let lo = hex_val(pair[1]).ok_or(EncodingError::InvalidByte {
            offset: 2 * i + 1,
            byte: pair[1],
        })?;
        out.push((hi << 4) | lo);
    }
    Ok(out)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = match chunk.len() {
            3 => (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]),
            2 => (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8),
            _ => u32::from(chunk[0]) << 16,
        };
        out.push(B64[((n >> 18) & 63) as usize] as char);
        out.push(B64[((n >> 12) & 63) as usize] as char);
        if chunk.len() > 1 {
            out.push(B64[((n >> 6) & 63) as usize] as char);
        } else {
            out.push('=');
        }
        if chunk.len() > 2 {
            out.push(B64[(n & 63) as usize] as char);
        } else {
            out.push('=');
        }
    }
    out
}

fn b64_val(b: u8) -> Option<u32> {
    match b {
        b'A'..=b'Z' => Some(u32::from(b - b'A')),
        b'a'..=b'z' => Some(u32::from(b - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(b - b'0') + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decodes canonical padded standard base64: length a multiple of 4, `=` only at the
/// end (at most two), unused bits zero. No whitespace is skipped; callers that accept
/// wrapped text strip line breaks first and keep the offsets they report honest.
pub fn base64_decode(s: &str) -> Result<Vec<u8>, EncodingError> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return Err(EncodingError::InvalidLength(b.len()));
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    let quads = b.len() / 4;
    for (qi, quad) in b.chunks_exact(4).enumerate() {
        let last = qi + 1 == quads;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return Err(EncodingError::InvalidPadding);
        }
        let mut n: u32 = 0;
        for (j, &c) in quad[..4 - pad].iter().enumerate() {
            let v = b64_val(c).ok_or(EncodingError::InvalidByte {
                offset: qi * 4 + j,
                byte: c,
            })?;
            n |= v << (18 - 6 * j);
        }
        match pad {
            0 => out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]),
            1 => {
                if n & 0xff != 0 {
                    return Err(EncodingError::InvalidPadding);
                }
                out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8]);
            }
            _ => {
                if n & 0xffff != 0 {
                    return Err(EncodingError::InvalidPadding);
                }
                out.push((n >> 16) as u8);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        assert_eq!(hex_encode(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(hex_decode("00ABff").unwrap(), vec![0x00, 0xab, 0xff]);
        assert_eq!(hex_decode("abc"), Err(EncodingError::InvalidLength(3)));
        assert_eq!(
            hex_decode("0g"),
            Err(EncodingError::InvalidByte {
                offset: 1,
                byte: b'g'
            })
        );
    }

    #[test]
    fn base64_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in cases {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
            assert_eq!(base64_decode(enc).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn base64_rejects_non_canonical() {
        assert_eq!(base64_decode("Zg="), Err(EncodingError::InvalidLength(3)));
        assert_eq!(base64_decode("Zh=="), Err(EncodingError::InvalidPadding));
        assert_eq!(
            base64_decode("Zg==Zg=="),
            Err(EncodingError::InvalidPadding)
        );
        assert_eq!(base64_decode("Z==="), Err(EncodingError::InvalidPadding));
        assert_eq!(
            base64_decode("Zm9\n"),
            Err(EncodingError::InvalidByte {
                offset: 3,
                byte: b'\n'
            })
        );
    }

    #[test]
    fn base64_round_trips_every_length() {
        let data: Vec<u8> = (0..=255u8).collect();
        for n in 0..data.len() {
            assert_eq!(
                base64_decode(&base64_encode(&data[..n])).unwrap(),
                &data[..n]
            );
        }
    }
}
