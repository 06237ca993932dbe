//! The broker's time, through one seam: the supervisor's backoff and healthy
//! runs, the ticker's stall, idle and rate decisions, and a stream's uptime all
//! read [`Clocks`]. [`RealClocks`] is `CLOCK_MONOTONIC`; [`SimulatedClocks`]
//! moves only when a test advances it (or something sleeps on it), so those
//! tests are exact and never sleep.
//!
//! Frame timestamps in the ring are not the broker's policy but the protocol's:
//! they stay on the real clock (`proto::ring`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use framebroker_proto::ring::monotonic_ns;

use crate::sync::{wait_timeout, Lock};

/// A source of monotonic time and a way to wait on it.
pub trait Clocks: Send + Sync {
    /// Nanoseconds on a monotonic clock; never 0 (0 means "unset" to callers).
    fn monotonic_ns(&self) -> u64;

    /// Waits up to `d` while `keep_waiting()` holds; [`Wakeup::wake`] makes the
    /// waiter look at `keep_waiting` again at once.
    fn sleep(&self, wakeup: &Wakeup, d: Duration, keep_waiting: &dyn Fn() -> bool);

    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.monotonic_ns())
    }
}

/// The clock every part of a broker shares.
pub type Clock = Arc<dyn Clocks>;

/// The real clock.
pub fn real() -> Clock {
    Arc::new(RealClocks)
}

/// Wakes a [`Clocks::sleep`] early (a stop request).
#[derive(Debug, Default)]
pub struct Wakeup {
    lock: Mutex<()>,
    cv: Condvar,
}

impl Wakeup {
    /// Call after changing what the sleeper's `keep_waiting` reads.
    pub fn wake(&self) {
        // Taken so a sleeper between its check and its wait cannot miss this.
        let _g = self.lock.locked();
        self.cv.notify_all();
    }
}

/// `CLOCK_MONOTONIC`.
#[derive(Debug, Default)]
pub struct RealClocks;

impl Clocks for RealClocks {
    fn monotonic_ns(&self) -> u64 {
        monotonic_ns()
    }

    fn sleep(&self, wakeup: &Wakeup, d: Duration, keep_waiting: &dyn Fn() -> bool) {
        let deadline = self.monotonic() + d;
        let mut g = wakeup.lock.locked();
        while keep_waiting() {
            let now = self.monotonic();
            if now >= deadline {
                return;
            }
            g = wait_timeout(&wakeup.cv, g, deadline - now);
        }
    }
}

/// A clock that stands still until [`advance`](Self::advance)d. A
/// [`sleep`](Clocks::sleep) on it advances it by the whole delay at once and is
/// recorded, so a test can read what was slept.
#[derive(Debug)]
pub struct SimulatedClocks {
    now_ns: AtomicU64,
    sleeps: Mutex<Vec<Duration>>,
}

impl SimulatedClocks {
    /// Starts at 1 s (0 is "unset" to the broker's timestamps).
    pub fn new() -> Arc<Self> {
        Arc::new(SimulatedClocks {
            now_ns: AtomicU64::new(1_000_000_000),
            sleeps: Mutex::new(Vec::new()),
        })
    }

    pub fn advance(&self, d: Duration) {
        self.now_ns.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }

    /// Every sleep so far, in order.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.sleeps.locked().clone()
    }
}

impl Clocks for SimulatedClocks {
    fn monotonic_ns(&self) -> u64 {
        self.now_ns.load(Ordering::SeqCst)
    }

    fn sleep(&self, _wakeup: &Wakeup, d: Duration, keep_waiting: &dyn Fn() -> bool) {
        if keep_waiting() {
            self.sleeps.locked().push(d);
            self.advance(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_time_moves_only_when_told() {
        let c = SimulatedClocks::new();
        let t0 = c.monotonic();
        assert_eq!(c.monotonic(), t0);
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.monotonic() - t0, Duration::from_millis(1500));
        let w = Wakeup::default();
        c.sleep(&w, Duration::from_secs(2), &|| true);
        c.sleep(&w, Duration::from_secs(9), &|| false); // stopping: no sleep
        assert_eq!(c.monotonic() - t0, Duration::from_millis(3500));
        assert_eq!(c.sleeps(), [Duration::from_secs(2)]);
    }

    #[test]
    fn a_real_sleep_ends_early_when_woken() {
        let c = RealClocks;
        let w = Arc::new(Wakeup::default());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (w2, stop2) = (w.clone(), stop.clone());
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            stop2.store(true, Ordering::SeqCst);
            w2.wake();
        });
        let t0 = c.monotonic();
        c.sleep(&w, Duration::from_secs(30), &|| {
            !stop.load(Ordering::SeqCst)
        });
        assert!(c.monotonic() - t0 < Duration::from_secs(30));
        t.join().unwrap();
    }
}
