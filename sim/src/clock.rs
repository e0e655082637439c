//! Time for the simulators: [`SimClock`], the simulated host's clock, and the UTC calendar
//! arithmetic they print (HTTP `Date` headers, vzdump archive names, Proxmox Backup Server
//! snapshot times).
//!
//! Owns how simulated time relates to real time: the real clocks plus an offset a test can
//! only move forward, so a task that runs for minutes (a shutdown timeout) ends without the
//! test sleeping. It never moves the machine's clocks and never goes backwards.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn epoch_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The simulated host's clock: real time plus how far a test moved it ahead. Task
/// deadlines, uptimes and task start/end times all read it, so they stay consistent when
/// a test skips minutes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimClock {
    ahead: Duration,
}

impl SimClock {
    /// A clock reading real time.
    pub fn new() -> Self {
        SimClock::default()
    }

    /// Now, on the monotonic clock.
    pub fn now(&self) -> Instant {
        let real = Instant::now();
        real.checked_add(self.ahead).unwrap_or(real)
    }

    /// Now, as seconds since the Unix epoch.
    pub fn epoch(&self) -> u64 {
        epoch_now().saturating_add(self.ahead.as_secs())
    }

    /// Moves the clock `d` forward (it never goes back).
    pub fn advance(&mut self, d: Duration) {
        self.ahead = self.ahead.saturating_add(d);
    }

    /// How far ahead of real time it is.
    pub fn ahead(&self) -> Duration {
        self.ahead
    }
}

/// A UTC calendar date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    /// Full year, e.g. 2024.
    pub year: i64,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
    /// 0..=23.
    pub hour: u32,
    /// 0..=59.
    pub minute: u32,
    /// 0..=59.
    pub second: u32,
    /// 0 = Sunday .. 6 = Saturday.
    pub weekday: u32,
}

/// Splits epoch seconds into a UTC calendar date (Howard Hinnant's days-to-civil).
pub fn civil(epoch: u64) -> Civil {
    let days = (epoch / 86_400) as i64;
    let secs = (epoch % 86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: secs / 3600,
        minute: secs / 60 % 60,
        second: secs % 60,
        // 1970-01-01 was a Thursday.
        weekday: ((days + 4).rem_euclid(7)) as u32,
    }
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`, the IMF-fixdate of RFC 9110.
pub fn http_date(epoch: u64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = civil(epoch);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[c.weekday as usize % 7],
        c.day,
        MONTHS[(c.month as usize + 11) % 12],
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

/// `2024_05_01-10_00_00`, the stamp in vzdump archive names (UTC here; PVE uses local time).
pub fn vzdump_stamp(epoch: u64) -> String {
    let c = civil(epoch);
    format!(
        "{:04}_{:02}_{:02}-{:02}_{:02}_{:02}",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// `2024-05-01T10:00:00Z`, the snapshot time in a PBS volid (`strftime("%FT%TZ", gmtime)`
/// in pve-storage's PBSPlugin `print_volid`).
pub fn pbs_stamp(epoch: u64) -> String {
    let c = civil(epoch);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sim_clock_moves_ahead_of_real_time_and_never_back() {
        let mut c = SimClock::new();
        let real = Instant::now();
        c.advance(Duration::from_secs(600));
        assert!(c.now() >= real + Duration::from_secs(600));
        assert!(c.epoch() >= epoch_now() + 600);
        c.advance(Duration::from_secs(1));
        assert_eq!(c.ahead(), Duration::from_secs(601));
    }

    #[test]
    fn known_dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(vzdump_stamp(1_714_557_600), "2024_05_01-10_00_00");
        // Leap day.
        assert_eq!(vzdump_stamp(1_709_164_800), "2024_02_29-00_00_00");
        assert_eq!(pbs_stamp(1_714_557_600), "2024-05-01T10:00:00Z");
    }
}
