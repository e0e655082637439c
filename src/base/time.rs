//! Wall-clock time as whole UTC seconds: RFC 3339 parsing and formatting, and a
//! [`Clock`] that production reads from the system and tests set by hand; beside it a
//! [`MonotonicClock`] that no one can set, for what must not follow a wall-clock jump.
//!
//! Only what the agent needs: signed-op windows, journal and log timestamps, how much
//! real time has passed. Sub-second digits are accepted on input and dropped; output is
//! always `YYYY-MM-DDTHH:MM:SSZ`. Nothing here sleeps or reads a time zone.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Seconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

/// Why a string is not an RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeParseError {
    /// Byte offset in the input where parsing failed.
    pub offset: usize,
    /// What was expected there.
    pub expected: &'static str,
}

impl fmt::Display for TimeParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not an RFC 3339 timestamp: expected {} at byte {}",
            self.expected, self.offset
        )
    }
}

impl std::error::Error for TimeParseError {}

// Days from 1970-01-01 to the given civil date (proleptic Gregorian); Howard Hinnant's
// algorithm, exact over the whole i64 range we accept (years 0000..=9999).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, n: usize, expected: &'static str) -> Result<i64, TimeParseError> {
        let mut v: i64 = 0;
        for _ in 0..n {
            match self.b.get(self.pos) {
                Some(c) if c.is_ascii_digit() => {
                    v = v * 10 + i64::from(c - b'0');
                    self.pos += 1;
                }
                _ => {
                    return Err(TimeParseError {
                        offset: self.pos,
                        expected,
                    });
                }
            }
        }
        Ok(v)
    }

    fn byte(&mut self, accept: &[u8], expected: &'static str) -> Result<u8, TimeParseError> {
        match self.b.get(self.pos) {
            Some(c) if accept.contains(c) => {
                self.pos += 1;
                Ok(*c)
            }
            _ => Err(TimeParseError {
                offset: self.pos,
                expected,
            }),
        }
    }

    /// Two digits at the cursor, as a number from `lo` to `hi`.
    fn two_digits(
        &mut self,
        lo: i64,
        hi: i64,
        digits: &'static str,
        in_range: &'static str,
    ) -> Result<i64, TimeParseError> {
        let at = self.pos;
        let v = self.digits(2, digits)?;
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(TimeParseError {
                offset: at,
                expected: in_range,
            })
        }
    }
}

impl Timestamp {
    /// Parses RFC 3339 (`2026-11-22T10:00:00Z`, `...T10:00:00.5+01:00`, `t`/`z` allowed).
    pub fn parse_rfc3339(s: &str) -> Result<Timestamp, TimeParseError> {
        let mut c = Cursor {
            b: s.as_bytes(),
            pos: 0,
        };
        let year = c.digits(4, "a 4-digit year")?;
        c.byte(b"-", "'-'")?;
        let month = c.two_digits(1, 12, "a 2-digit month", "a month 01-12")?;
        c.byte(b"-", "'-'")?;
        let day = c.two_digits(
            1,
            days_in_month(year, month),
            "a 2-digit day",
            "a day within the month",
        )?;
        c.byte(b"Tt", "'T'")?;
        let hour = c.two_digits(0, 23, "a 2-digit hour", "an hour 00-23")?;
        c.byte(b":", "':'")?;
        let minute = c.two_digits(0, 59, "2-digit minutes", "minutes 00-59")?;
        c.byte(b":", "':'")?;
        // A leap second (60) is folded into the next second's start.
        let second = c.two_digits(0, 60, "2-digit seconds", "seconds 00-60")?;
        if c.b.get(c.pos) == Some(&b'.') {
            c.pos += 1;
            let start = c.pos;
            while c.b.get(c.pos).is_some_and(u8::is_ascii_digit) {
                c.pos += 1;
            }
            if c.pos == start {
                return Err(TimeParseError {
                    offset: c.pos,
                    expected: "fraction digits",
                });
            }
        }
        let offset_secs = match c.byte(b"Zz+-", "'Z' or a +hh:mm offset")? {
            b'Z' | b'z' => 0,
            sign => {
                let oh = c.two_digits(0, 23, "2-digit offset hours", "offset hours 00-23")?;
                c.byte(b":", "':'")?;
                let om = c.two_digits(0, 59, "2-digit offset minutes", "offset minutes 00-59")?;
                let v = oh * 3600 + om * 60;
                if sign == b'-' { -v } else { v }
            }
        };
        if c.pos != c.b.len() {
            return Err(TimeParseError {
                offset: c.pos,
                expected: "end of input",
            });
        }
        let days = days_from_civil(year, month, day);
        Ok(Timestamp(
            days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs,
        ))
    }

    /// Formats as `YYYY-MM-DDTHH:MM:SSZ`.
    pub fn to_rfc3339(self) -> String {
        self.to_string()
    }

    /// Seconds since the epoch.
    pub fn unix(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(86_400);
        let secs = self.0.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60
        )
    }
}

/// A source of the current time. Production uses [`SystemClock`]; tests use
/// [`ManualClock`] so windows and expiries are decided without sleeping.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let secs = match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            // A clock set before 1970 is reported as negative seconds.
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        Timestamp(secs)
    }
}

/// A clock tests set and advance by hand; clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock reading `t`.
    pub fn new(t: Timestamp) -> Self {
        ManualClock(Arc::new(AtomicI64::new(t.0)))
    }

    /// Sets the time.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }

    /// Moves the time forward (or back, with a negative number) by `secs`.
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// Time elapsed since an arbitrary origin, at real-time speed: setting the wall clock
/// (by hand, NTP stepping it) does not move it. Production reads [`SystemMonotonic`]
/// (`CLOCK_MONOTONIC`, which also stands still while the host is suspended); tests use
/// [`ManualMonotonic`].
pub trait MonotonicClock: Send + Sync {
    /// Time since this clock's origin.
    fn elapsed(&self) -> Duration;
}

/// The system's monotonic clock, from the moment it was made.
#[derive(Debug, Clone, Copy)]
pub struct SystemMonotonic {
    origin: Instant,
}

impl SystemMonotonic {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        SystemMonotonic {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemMonotonic {
    fn default() -> Self {
        SystemMonotonic::new()
    }
}

impl MonotonicClock for SystemMonotonic {
    fn elapsed(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A monotonic clock tests advance by hand; clones share the same reading.
#[derive(Debug, Clone, Default)]
pub struct ManualMonotonic(Arc<AtomicU64>);

impl ManualMonotonic {
    /// A clock reading zero.
    pub fn new() -> Self {
        ManualMonotonic::default()
    }

    /// Moves it forward by `d` (it cannot go back).
    pub fn advance(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add(nanos))
            });
    }
}

impl MonotonicClock for ManualMonotonic {
    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// Serde for a [`Timestamp`] as an RFC 3339 string: `#[serde(with = "crate::base::time::rfc3339")]`.
pub(crate) mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Timestamp;

    /// Writes `t` as RFC 3339 UTC.
    pub(crate) fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(t)
    }

    /// Reads an RFC 3339 string.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

/// [`rfc3339`] for an optional timestamp, `null` when absent.
pub(crate) mod opt_rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Timestamp;

    /// Writes `t` as RFC 3339 UTC, or `null`.
    pub(crate) fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    /// Reads an RFC 3339 string or `null`.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Timestamp>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clocks_only_go_forward() {
        let m = ManualMonotonic::new();
        let shared = m.clone();
        m.advance(Duration::from_secs(3));
        assert_eq!(shared.elapsed(), Duration::from_secs(3));
        m.advance(Duration::MAX);
        assert_eq!(shared.elapsed(), Duration::from_nanos(u64::MAX));
        let s = SystemMonotonic::new();
        let first = s.elapsed();
        assert!(s.elapsed() >= first);
    }

    #[test]
    fn known_instants() {
        assert_eq!(
            Timestamp::parse_rfc3339("1970-01-01T00:00:00Z").unwrap(),
            Timestamp(0)
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-22T10:00:00Z").unwrap(),
            Timestamp(1_795_341_600)
        );
        assert_eq!(Timestamp(1_795_341_600).to_string(), "2026-11-22T10:00:00Z");
        assert_eq!(
            Timestamp::parse_rfc3339("2000-02-29T23:59:59Z")
                .unwrap()
                .to_string(),
            "2000-02-29T23:59:59Z"
        );
        assert_eq!(Timestamp(-1).to_string(), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn offsets_fractions_and_case() {
        let z = Timestamp::parse_rfc3339("2026-11-22T10:00:00Z").unwrap();
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-22T11:00:00+01:00").unwrap(),
            z
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-22T05:30:00-04:30").unwrap(),
            z
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-22t10:00:00.999z").unwrap(),
            z
        );
    }

    #[test]
    fn rejects_with_offset_of_the_fault() {
        let cases = [
            ("2026-13-01T00:00:00Z", 5),
            ("2026-02-29T00:00:00Z", 8),
            ("2026-11-22 10:00:00Z", 10),
            ("2026-11-22T24:00:00Z", 11),
            ("2026-11-22T10:00:00", 19),
            ("2026-11-22T10:00:00Zjunk", 20),
            ("2026-11-22T10:00:00.Z", 20),
            ("", 0),
        ];
        for (input, offset) in cases {
            let err = Timestamp::parse_rfc3339(input).unwrap_err();
            assert_eq!(err.offset, offset, "{input}: {err}");
        }
    }

    #[test]
    fn round_trip_over_four_centuries() {
        let mut t = -2_208_988_800; // 1900-01-01
        while t < 10_413_792_000 {
            // 2300-01-01
            let s = Timestamp(t).to_string();
            assert_eq!(Timestamp::parse_rfc3339(&s).unwrap(), Timestamp(t), "{s}");
            t += 86_400 * 7 + 3_601;
        }
    }

    #[test]
    fn manual_clock_is_shared_by_clones() {
        let c = ManualClock::new(Timestamp(100));
        let d = c.clone();
        c.advance(5);
        assert_eq!(d.now(), Timestamp(105));
        d.set(Timestamp(7));
        assert_eq!(c.now(), Timestamp(7));
    }
}
