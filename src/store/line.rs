//! The store's line format and its one replay: parsing a line, hashing a record, and
//! walking a file as a stream, line by line, checking every line and the chain.
//!
//! Replay reads through a [`BufRead`] and keeps one line in memory at a time (at most
//! [`MAX_LINE_BYTES`]), so opening a store costs the same memory whatever the file's
//! size. [`replay_bytes`] (what the fuzzer drives) is the same code over a byte slice.
//! Nothing here writes, and nothing here panics on any input.

use std::io::{self, BufRead};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::{Io, OsIo, StoreError};
use crate::base::encoding::{hex_decode, hex_encode};

/// The longest line (newline included) a store writes or replays. An append that would
/// write a longer one is refused; a longer line inside a file is damage.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The most bytes a record line adds around its data: `{"seq":` and a 20-digit
/// sequence number, the two 64-digit hashes with their keys, and the newline.
pub const RECORD_OVERHEAD: usize = 187;

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Records handed to the visitor.
    pub records: u64,
    /// The anchor's sequence number (0 for a file never compacted).
    pub anchor_seq: u64,
    /// Bytes of a torn last line (cut off on open; only reported by [`verify_file`]).
    pub torn_bytes: usize,
}

/// The outcome of a replay: records were visited; a torn tail may be present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// What was found.
    pub summary: ReplaySummary,
    /// Length of the good prefix: bytes after it are the torn tail.
    pub good_len: usize,
    /// Sequence number of the last record (or the anchor's).
    pub last_seq: u64,
    /// Hash of the last record (or the anchor's).
    pub last_hash: [u8; 32],
    /// Whether a valid anchor line was found (false only for an empty good prefix).
    pub has_anchor: bool,
}

/// A line that is not in the store's format: line number and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Why a streaming replay stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReplayError {
    /// A line inside the file is not in the store's format, or breaks the chain.
    Damage(Damage),
    /// Reading failed at this (1-based) line.
    Io {
        /// The line being read.
        line: usize,
        /// What the OS said.
        source: io::Error,
    },
}

/// The caller's replay callback: a record's `seq` and its data bytes; an `Err` makes
/// the record (and so the file) count as damaged.
pub type Visitor<'a> = dyn FnMut(u64, &[u8]) -> Result<(), String> + 'a;

const HASH_HEX: usize = 64;

enum Line<'a> {
    Anchor {
        seq: u64,
        hash: [u8; 32],
    },
    Record {
        seq: u64,
        prev: [u8; 32],
        data: &'a [u8],
        hash: [u8; 32],
    },
}

fn hex32(b: &[u8]) -> Option<[u8; 32]> {
    if b.len() != HASH_HEX || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let s = std::str::from_utf8(b).ok()?;
    hex_decode(s).ok()?.try_into().ok()
}

fn parse_seq(b: &[u8]) -> Option<(u64, usize)> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 20 || (n > 1 && b[0] == b'0') {
        return None;
    }
    let s = std::str::from_utf8(&b[..n]).ok()?;
    Some((s.parse().ok()?, n))
}

fn parse_line(line: &[u8]) -> Result<Line<'_>, &'static str> {
    let rest = line.strip_prefix(b"{\"seq\":").ok_or("not a store line")?;
    let (seq, n) = parse_seq(rest).ok_or("bad sequence number")?;
    let rest = &rest[n..];
    if let Some(a) = rest.strip_prefix(b",\"anchor\":\"") {
        let a = a.strip_suffix(b"\"}").ok_or("bad anchor line")?;
        let hash = hex32(a).ok_or("bad anchor hash")?;
        return Ok(Line::Anchor { seq, hash });
    }
    let rest = rest.strip_prefix(b",\"prev\":\"").ok_or("missing prev")?;
    if rest.len() < HASH_HEX {
        return Err("bad prev hash");
    }
    let prev = hex32(&rest[..HASH_HEX]).ok_or("bad prev hash")?;
    let rest = rest[HASH_HEX..]
        .strip_prefix(b"\",\"data\":")
        .ok_or("missing data")?;
    let rest = rest.strip_suffix(b"\"}").ok_or("missing sha256")?;
    if rest.len() < HASH_HEX + 11 {
        return Err("missing sha256");
    }
    let (data, tail) = rest.split_at(rest.len() - HASH_HEX - 11);
    let hash_hex = tail
        .strip_prefix(b",\"sha256\":\"")
        .ok_or("missing sha256")?;
    let hash = hex32(hash_hex).ok_or("bad sha256")?;
    if data.is_empty() || serde_json::from_slice::<serde::de::IgnoredAny>(data).is_err() {
        return Err("data is not JSON");
    }
    Ok(Line::Record {
        seq,
        prev,
        data,
        hash,
    })
}

fn record_hash(prev: &[u8; 32], seq: u64, data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(data);
    h.finalize().into()
}

pub(super) fn anchor_line(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    format!("{{\"seq\":{seq},\"anchor\":\"{}\"}}\n", hex_encode(hash)).into_bytes()
}

pub(super) fn record_line(seq: u64, prev: &[u8; 32], data: &[u8]) -> (Vec<u8>, [u8; 32]) {
    let hash = record_hash(prev, seq, data);
    let mut line = Vec::with_capacity(data.len() + RECORD_OVERHEAD);
    line.extend_from_slice(
        format!(
            "{{\"seq\":{seq},\"prev\":\"{}\",\"data\":",
            hex_encode(prev)
        )
        .as_bytes(),
    );
    line.extend_from_slice(data);
    line.extend_from_slice(format!(",\"sha256\":\"{}\"}}\n", hex_encode(&hash)).as_bytes());
    (line, hash)
}

/// Reads one line into `buf` (cleared first), newline included, taking at most `limit`
/// bytes. Returns the bytes taken; 0 at the end of the stream.
fn read_line_capped(r: &mut dyn BufRead, buf: &mut Vec<u8>, limit: usize) -> io::Result<usize> {
    buf.clear();
    let mut limited = io::Read::take(r, limit as u64);
    limited.read_until(b'\n', buf)
}

/// Skips to just past the next newline (or to the end); returns the bytes skipped and
/// whether a newline ended them.
fn skip_line(r: &mut dyn BufRead) -> io::Result<(usize, bool)> {
    let mut skipped = 0usize;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok((skipped, false));
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                return Ok((skipped + i + 1, true));
            }
            None => {
                let n = buf.len();
                r.consume(n);
                skipped += n;
            }
        }
    }
}

fn at_end(r: &mut dyn BufRead) -> io::Result<bool> {
    loop {
        match r.fill_buf() {
            Ok(b) => return Ok(b.is_empty()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn damage(line: usize, reason: impl Into<String>) -> ReplayError {
    ReplayError::Damage(Damage {
        line,
        reason: reason.into(),
    })
}

/// Replays a store file from a stream: checks every line and the chain, hands each
/// record's `seq` and data to `visit`, and tells where a torn tail begins (the bytes
/// after [`Replayed::good_len`]: a last line without its newline, or a last line that
/// does not parse). Holds one line at a time; a line longer than [`MAX_LINE_BYTES`]
/// inside the file is damage naming it. Never writes and never panics.
pub fn replay_reader(
    r: &mut dyn BufRead,
    visit: &mut Visitor<'_>,
) -> Result<Replayed, ReplayError> {
    let mut out = Replayed {
        summary: ReplaySummary::default(),
        good_len: 0,
        last_seq: 0,
        last_hash: [0; 32],
        has_anchor: false,
    };
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    let mut torn = 0usize;
    loop {
        let io_err = |line: usize| move |source| ReplayError::Io { line, source };
        let n = read_line_capped(r, &mut buf, MAX_LINE_BYTES + 1).map_err(io_err(line_no + 1))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let newline = buf.last() == Some(&b'\n');
        if n > MAX_LINE_BYTES {
            let (more, ended) = if newline {
                (0, true)
            } else {
                skip_line(r).map_err(io_err(line_no))?
            };
            if !ended || at_end(r).map_err(io_err(line_no))? {
                torn = n + more;
                break;
            }
            return Err(damage(
                line_no,
                format!("line longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        if !newline {
            // No final newline: the tail of an interrupted append.
            torn = n;
            break;
        }
        let line = &buf[..n - 1];
        let parsed = match parse_line(line) {
            Ok(p) => p,
            Err(reason) => {
                if at_end(r).map_err(io_err(line_no))? {
                    torn = n;
                    break;
                }
                return Err(damage(line_no, reason));
            }
        };
        match parsed {
            Line::Anchor { seq, hash } => {
                if line_no != 1 {
                    return Err(damage(line_no, "anchor line after line 1"));
                }
                out.last_seq = seq;
                out.last_hash = hash;
                out.has_anchor = true;
                out.summary.anchor_seq = seq;
            }
            Line::Record {
                seq,
                prev,
                data,
                hash,
            } => {
                if line_no == 1 {
                    return Err(damage(
                        1,
                        "first line is not the anchor (lines deleted at the start?)",
                    ));
                }
                let want = out
                    .last_seq
                    .checked_add(1)
                    .ok_or_else(|| damage(line_no, "sequence number overflow"))?;
                if seq != want {
                    return Err(damage(
                        line_no,
                        format!(
                            "sequence gap: expected {want}, found {seq} (line deleted, inserted or reordered)"
                        ),
                    ));
                }
                if prev != out.last_hash {
                    return Err(damage(
                        line_no,
                        "chain broken: prev does not match the line before",
                    ));
                }
                if record_hash(&prev, seq, data) != hash {
                    return Err(damage(line_no, "hash mismatch: line altered"));
                }
                visit(seq, data)
                    .map_err(|e| damage(line_no, format!("record rejected by reader: {e}")))?;
                out.last_seq = seq;
                out.last_hash = hash;
                out.summary.records += 1;
            }
        }
        out.good_len += n;
    }
    // Whatever follows a torn line (nothing, by construction) counts as torn too.
    let rest = io::copy(r, &mut io::sink()).map_err(|source| ReplayError::Io {
        line: line_no,
        source,
    })?;
    out.summary.torn_bytes = torn.saturating_add(usize::try_from(rest).unwrap_or(usize::MAX));
    Ok(out)
}

/// Replays the bytes of a store file: [`replay_reader`] over a slice. Never modifies
/// anything and never panics; this is what the fuzzer drives.
pub fn replay_bytes(bytes: &[u8], visit: &mut Visitor<'_>) -> Result<Replayed, Damage> {
    let mut r: &[u8] = bytes;
    replay_reader(&mut r, visit).map_err(|e| match e {
        ReplayError::Damage(d) => d,
        // A slice never fails to read; kept total rather than unreachable.
        ReplayError::Io { line, source } => Damage {
            line,
            reason: format!("read failed: {source}"),
        },
    })
}

/// Buffer size of a replay's reader: large enough for few system calls, small next to
/// the agent's whole footprint.
pub(super) const READ_BUFFER: usize = 64 * 1024;

/// Replays the file at `path` read-only, streaming (no torn tail is cut, nothing is
/// written): for `selftest offline` and audits. A missing file is an `Io` error.
pub fn verify_file(path: &Path) -> Result<ReplaySummary, StoreError> {
    let read_err = |source| StoreError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    };
    let stream = OsIo
        .open_read(path)
        .map_err(read_err)?
        .ok_or_else(|| read_err(io::Error::from(io::ErrorKind::NotFound)))?;
    let mut r = io::BufReader::with_capacity(READ_BUFFER, stream);
    match replay_reader(&mut r, &mut |_, _| Ok(())) {
        Ok(r) => Ok(r.summary),
        Err(ReplayError::Damage(d)) => Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            line: d.line,
            reason: d.reason,
        }),
        Err(ReplayError::Io { source, .. }) => Err(read_err(source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(records: &[&str]) -> Vec<u8> {
        let mut out = anchor_line(0, &[0; 32]);
        let mut prev = [0u8; 32];
        for (i, r) in records.iter().enumerate() {
            let (line, h) = record_line(i as u64 + 1, &prev, r.as_bytes());
            out.extend_from_slice(&line);
            prev = h;
        }
        out
    }

    #[test]
    fn line_format_is_as_documented() {
        let (line, hash) = record_line(1, &[0; 32], br#"{"a":1}"#);
        let mut h = Sha256::new();
        h.update([0u8; 32]);
        h.update(1u64.to_be_bytes());
        h.update(br#"{"a":1}"#);
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(hash, want);
        let text = String::from_utf8(line).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"seq\":1,\"prev\":\"{}\",\"data\":{{\"a\":1}},\"sha256\":\"{}\"}}\n",
                "0".repeat(64),
                hex_encode(&want)
            )
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["data"]["a"], 1);
    }

    #[test]
    fn record_overhead_bounds_the_longest_sequence_number() {
        let (line, _) = record_line(u64::MAX, &[0; 32], b"1");
        assert_eq!(line.len(), RECORD_OVERHEAD + 1);
    }

    #[test]
    fn replay_visits_in_order_and_finds_torn_tail() {
        let mut bytes = build(&["1", "\"two\"", "{\"x\":[3]}"]);
        let good = bytes.len();
        bytes.extend_from_slice(b"{\"seq\":4,\"pr");
        let mut seen = Vec::new();
        let r = replay_bytes(&bytes, &mut |s, d| {
            seen.push((s, d.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2], (3, b"{\"x\":[3]}".to_vec()));
        assert_eq!(r.good_len, good);
        assert_eq!(r.summary.torn_bytes, 12);
    }

    #[test]
    fn a_last_line_that_does_not_parse_is_torn_but_inside_it_is_damage() {
        let mut bytes = build(&["1", "2"]);
        let good = bytes.len();
        bytes.extend_from_slice(b"{\"seq\":3,garbage}\n");
        let r = replay_bytes(&bytes, &mut |_, _| Ok(())).unwrap();
        assert_eq!((r.good_len, r.summary.torn_bytes), (good, 18));
        assert_eq!(r.summary.records, 2);

        let mut inside = build(&["1"]);
        inside.extend_from_slice(b"{\"seq\":2,garbage}\n");
        inside.extend_from_slice(&build(&["x"])[..10]);
        let d = replay_bytes(&inside, &mut |_, _| Ok(())).unwrap_err();
        assert_eq!(d.line, 3);
    }

    #[test]
    fn an_overlong_line_inside_the_file_is_damage_and_at_the_end_a_torn_tail() {
        let good = build(&["1", "2"]);
        let long = vec![b'x'; MAX_LINE_BYTES + 5];

        let mut inside = good.clone();
        inside.extend_from_slice(&long);
        inside.push(b'\n');
        inside.extend_from_slice(&build(&["3"]));
        let d = replay_bytes(&inside, &mut |_, _| Ok(())).unwrap_err();
        assert_eq!(d.line, 4);
        assert!(d.reason.contains("longer than"), "{}", d.reason);

        for tail in [&long[..], &[&long[..], b"\n"].concat()[..]] {
            let mut at_end = good.clone();
            at_end.extend_from_slice(tail);
            let r = replay_bytes(&at_end, &mut |_, _| Ok(())).unwrap();
            assert_eq!(r.good_len, good.len());
            assert_eq!(r.summary.torn_bytes, tail.len());
            assert_eq!(r.summary.records, 2);
        }
    }

    /// A reader that hands out one byte per call: line handling must not depend on
    /// how the stream is chunked.
    struct Trickle<'a>(&'a [u8]);

    impl io::Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), out.first_mut()) {
                (Some((b, rest)), Some(o)) => {
                    *o = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn streaming_in_tiny_chunks_finds_what_the_slice_replay_finds() {
        let mut bytes = build(&["1", "{\"k\":\"v\"}", "[1,2]"]);
        bytes.extend_from_slice(b"{\"seq\":4");
        let whole = replay_bytes(&bytes, &mut |_, _| Ok(())).unwrap();
        let mut seen = Vec::new();
        let mut r = io::BufReader::with_capacity(3, Trickle(&bytes));
        let streamed = replay_reader(&mut r, &mut |s, d| {
            seen.push((s, d.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(streamed, whole);
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[1], (2, b"{\"k\":\"v\"}".to_vec()));
    }

    #[test]
    fn rejects_seq_with_leading_zero_and_data_that_is_not_json() {
        assert!(parse_line(b"{\"seq\":01,\"anchor\":\"00\"}").is_err());
        let (line, _) = record_line(1, &[0; 32], b"{bad");
        assert_eq!(
            parse_line(&line[..line.len() - 1]).err(),
            Some("data is not JSON")
        );
    }

    #[test]
    fn visitor_rejection_names_the_line() {
        let bytes = build(&["1", "2", "3"]);
        let d = replay_bytes(&bytes, &mut |s, _| {
            if s == 2 { Err("bad".into()) } else { Ok(()) }
        })
        .unwrap_err();
        assert_eq!(d.line, 3);
        assert!(d.reason.contains("bad"));
    }
}
