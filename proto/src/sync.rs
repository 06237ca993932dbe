//! Waiting for the wake word to change, without spinning.
//!
//! Linux: a *shared* futex on the word in the segment (not `FUTEX_PRIVATE_FLAG`:
//! waiter and waker are different processes). `FUTEX_WAIT` works on a read-only
//! mapping, so readers never need write access. Windows segments do not come
//! here: they wait on their own events (`wake_events`, through the `Region`
//! trait). Elsewhere (and for in-process heap rings off Linux): a sleeping poll
//! with a short, growing interval, behind the same API.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Sleeps while `*word == expected`, at most `timeout`. Spurious wake-ups are
/// possible: callers re-check their condition in a loop.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    imp::wait(word, expected, timeout)
}

/// Wakes every waiter on `word`: one system call whatever the number of waiters.
pub fn wake_all(word: &AtomicU32) {
    imp::wake_all(word)
}

/// Bumps the word (so waiters that have not slept yet see a change) and wakes
/// everyone: what the writer does once per frame and on every state change.
pub fn bump_and_wake(word: &AtomicU32) {
    // SYNC: pairs with the Acquire load of the wake word by readers before they wait:
    // a reader that sees the new value also sees the frame published before it.
    word.fetch_add(1, Ordering::Release);
    wake_all(word);
}

#[cfg(all(target_os = "linux", not(miri)))]
mod imp {
    use super::*;

    pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `word` is a live, 4-byte aligned u32 (an AtomicU32 reference) for the
        // whole call; FUTEX_WAIT only reads it. `ts` lives on our stack for the call;
        // the unused uaddr2/val3 arguments are ignored by FUTEX_WAIT.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT,
                expected,
                &ts as *const libc::timespec,
                std::ptr::null::<u32>(),
                0u32,
            );
        }
        // EAGAIN (value already changed), ETIMEDOUT and EINTR all mean "look again".
    }

    pub fn wake_all(word: &AtomicU32) {
        // SAFETY: `word` is a live, aligned u32 for the call; FUTEX_WAKE does not
        // access memory through the pointer beyond hashing its address.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE,
                i32::MAX,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }
}

#[cfg(any(not(target_os = "linux"), miri))]
mod imp {
    //! The portable fallback: sleep in short, growing steps until the word changes.
    //! A waiter costs a few wake-ups per millisecond at most, never a spinning core.
    use super::*;
    use std::time::Instant;

    pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut step = Duration::from_micros(50);
        while word.load(Ordering::Acquire) == expected {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            std::thread::sleep(step.min(deadline - now));
            step = (step * 2).min(Duration::from_millis(2));
        }
    }

    pub fn wake_all(_word: &AtomicU32) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn wait_returns_on_timeout_without_change() {
        let w = AtomicU32::new(5);
        let t = Instant::now();
        wait(&w, 5, Duration::from_millis(30));
        let e = t.elapsed();
        assert!(e >= Duration::from_millis(25), "returned too early: {e:?}");
    }

    #[test]
    fn wait_returns_at_once_when_value_differs() {
        let w = AtomicU32::new(5);
        let t = Instant::now();
        wait(&w, 4, Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn bump_wakes_a_sleeping_waiter() {
        let w = Arc::new(AtomicU32::new(0));
        let w2 = w.clone();
        let t = Instant::now();
        let h = std::thread::spawn(move || {
            while w2.load(Ordering::Acquire) == 0 {
                wait(&w2, 0, Duration::from_secs(10));
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        bump_and_wake(&w);
        h.join().unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "waiter was not woken");
    }
}
