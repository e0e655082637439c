//! Back-off that doubles per failure: the one rule every retry loop follows (the hub's
//! report loop, its event stream, the desired-state fetch, a failing guest). It only
//! computes a delay; it never sleeps, counts failures or adds jitter itself.

use std::time::Duration;

/// The wait after `failures` failures in a row (1 for the first): `initial`, doubled per
/// further failure, at most `cap` (a cap below `initial` keeps `initial`).
pub(crate) fn doubling(initial: Duration, cap: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    initial.saturating_mul(1 << doublings).min(cap.max(initial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_doubles_from_initial_to_the_cap_and_never_overflows() {
        let s = Duration::from_secs;
        let got: Vec<Duration> = (0..=6).map(|n| doubling(s(5), s(60), n)).collect();
        assert_eq!(got, [5, 5, 10, 20, 40, 60, 60].map(s));
        assert_eq!(doubling(s(5), s(60), u32::MAX), s(60));
        assert_eq!(
            doubling(s(90), s(60), 3),
            s(90),
            "a cap below initial keeps initial"
        );
        assert_eq!(doubling(Duration::MAX, Duration::MAX, 9), Duration::MAX);
    }
}
