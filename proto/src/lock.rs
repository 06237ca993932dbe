//! Locks: the one poison policy of the project.
//!
//! A `std` mutex is poisoned when a thread panics while holding it, and every
//! later `lock()` fails. Nowhere in framebroker does that help: each critical
//! section leaves its data usable at every step (a value stored, taken, cloned
//! or counted, never a half-done multi-step change), so the next user may go
//! on, while turning one panic into a panic in every thread that touches the
//! lock (the broker's supervisors, the gateway's request handlers, a client's
//! connection) would be a crash where one request failed. So locks are taken
//! through [`lock`] and condition variables waited on through [`wait_timeout`],
//! which take the data as the panicking thread left it.
//!
//! A critical section that could leave its data inconsistent on a panic must
//! not use these: it must restore the data, or use its own poison handling and
//! say why.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Locks `m`, ignoring poison (see the module doc).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits on `cv` for at most `timeout` (spurious wake-ups included), ignoring
/// poison (see the module doc); returns the guard, locked again.
pub fn wait_timeout<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    cv.wait_timeout(guard, timeout)
        .unwrap_or_else(|p| p.into_inner())
        .0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn poisoned(value: u32) -> Arc<Mutex<u32>> {
        let m = Arc::new(Mutex::new(value));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poisoning the lock on purpose");
        })
        .join();
        assert!(m.is_poisoned());
        m
    }

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let m = poisoned(7);
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 8);
    }

    #[test]
    fn waiting_on_a_poisoned_lock_times_out_with_the_data() {
        let m = poisoned(3);
        let cv = Condvar::new();
        let g = wait_timeout(&cv, lock(&m), Duration::from_millis(1));
        assert_eq!(*g, 3);
    }
}
