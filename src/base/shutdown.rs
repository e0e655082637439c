//! A shutdown signal shared by every loop and wait: once triggered it stays triggered,
//! and every sleeper wakes at once instead of finishing its sleep. It never un-triggers
//! and never installs a signal handler itself (the daemon does).

use super::sync::{self, lock};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Cloneable handle; all clones see the same state.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<(Mutex<bool>, Condvar)>);

impl Shutdown {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal and wakes every waiter.
    pub fn trigger(&self) {
        let (lock, cv) = &*self.0;
        // A poisoned lock still holds a valid bool; shutting down must not fail.
        let mut fired = sync::lock(lock);
        *fired = true;
        cv.notify_all();
    }

    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        *lock(&self.0.0)
    }

    /// Sleeps up to `d`; returns `true` at once if the signal fires (or had fired).
    pub fn sleep(&self, d: Duration) -> bool {
        let (lock, cv) = &*self.0;
        let deadline = Instant::now() + d;
        let mut fired = sync::lock(lock);
        while !*fired {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            fired = match cv.wait_timeout(fired, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_runs_out_when_not_triggered() {
        let s = Shutdown::new();
        assert!(!s.sleep(Duration::from_millis(20)));
        assert!(!s.is_triggered());
    }

    #[test]
    fn trigger_wakes_a_sleeper_from_another_thread() {
        let s = Shutdown::new();
        let t = {
            let s = s.clone();
            std::thread::spawn(move || s.sleep(Duration::from_secs(600)))
        };
        std::thread::sleep(Duration::from_millis(20));
        s.trigger();
        assert!(t.join().unwrap(), "the sleeper saw the signal");
        assert!(
            s.sleep(Duration::from_secs(600)),
            "a fired signal returns at once"
        );
    }
}
