//! The wake-up protocol where there is no cross-process futex (Windows): four
//! manual-reset events per segment, `E[k]` meaning "the wake word has left a value
//! `v` with `v mod 4 == k`". The reasons and the race analysis are decision 13 in
//! `proto/doc/decisions.md`; the names are in `proto/doc/layout.md`.
//!
//! The functions are generic over [`WakeWord`] and [`Event`] so that the loom model
//! in `tests/loom_wake_events.rs` checks this exact code with loom's atomics and a
//! mutex-and-condvar event, and the Windows backend (`shm_windows.rs`) runs it with
//! kernel events.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Number of events per segment. It divides 2^32, so `v mod K` stays consistent
/// when the 32-bit wake word wraps.
pub const WAKE_EVENTS: usize = 4;

/// The wake word in the header.
pub trait WakeWord {
    fn load(&self, order: Ordering) -> u32;
    fn store(&self, value: u32, order: Ordering);
}

impl WakeWord for AtomicU32 {
    fn load(&self, order: Ordering) -> u32 {
        AtomicU32::load(self, order)
    }
    fn store(&self, value: u32, order: Ordering) {
        AtomicU32::store(self, value, order)
    }
}

/// A manual-reset event: `set` releases every waiter and stays set until `reset`.
/// Readers only ever call `wait`.
pub trait Event {
    fn set(&self);
    fn reset(&self);
    /// Returns when the event is set or after `timeout` (`None`: no timeout).
    fn wait(&self, timeout: Option<Duration>);
}

/// The event a reader that read `value` waits on, and the one the writer sets when
/// the word leaves `value`.
pub fn event_index(value: u32) -> usize {
    (value % WAKE_EVENTS as u32) as usize
}

/// The writer's bump of the wake word: reset the event of the new value, publish
/// the new value, set the event of the old one. The caller makes sure bumps of
/// one word never run at once (one writer; the Windows segment holds a lock).
pub fn bump<W: WakeWord, E: Event>(word: &W, events: &[E; WAKE_EVENTS]) {
    let old = word.load(Ordering::Relaxed);
    let new = old.wrapping_add(1);
    // Before the store: a reader that sees `new` must find E[new] reset, or it would
    // return at once from a set left over from the bump away from `new - 4`.
    events[event_index(new)].reset();
    // SYNC: pairs with the Acquire load in `wait` (and the ring reader's load before
    // it looks for a frame): a reader that sees `new` sees the frame published before.
    word.store(new, Ordering::Release);
    // Wakes every reader waiting for `old` to change; stays set for readers that
    // loaded `old` and have not reached their wait yet, until the bump to `old + 4`.
    events[event_index(old)].set();
}

/// Sleeps while the word is `expected`, at most `timeout` (`None`: no limit). May
/// return early; callers re-check their condition in a loop.
pub fn wait<W: WakeWord, E: Event>(
    word: &W,
    expected: u32,
    events: &[E; WAKE_EVENTS],
    timeout: Option<Duration>,
) {
    // SYNC: pairs with the Release store in `bump`.
    if word.load(Ordering::Acquire) != expected {
        return;
    }
    events[event_index(expected)].wait(timeout);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};

    /// An in-process manual-reset event, as the kernel's behaves.
    #[derive(Default)]
    struct TestEvent {
        set: Mutex<bool>,
        cv: Condvar,
    }

    impl Event for TestEvent {
        fn set(&self) {
            *self.set.lock().unwrap() = true;
            self.cv.notify_all();
        }
        fn reset(&self) {
            *self.set.lock().unwrap() = false;
        }
        fn wait(&self, timeout: Option<Duration>) {
            let g = self.set.lock().unwrap();
            let t = timeout.unwrap_or(Duration::from_secs(3600));
            let _ = self.cv.wait_timeout_while(g, t, |s| !*s).unwrap();
        }
    }

    fn events() -> [TestEvent; WAKE_EVENTS] {
        Default::default()
    }

    fn is_set(e: &TestEvent) -> bool {
        *e.set.lock().unwrap()
    }

    #[test]
    fn a_bump_sets_the_old_values_event_and_resets_the_new_ones() {
        let word = AtomicU32::new(0);
        let ev = events();
        bump(&word, &ev);
        assert_eq!(word.load(Ordering::Relaxed), 1);
        assert!(is_set(&ev[0]) && !is_set(&ev[1]));
        // Three more bumps: E[0] is reset by the bump to 4, E[1..=3] are set.
        for _ in 0..3 {
            bump(&word, &ev);
        }
        assert_eq!(word.load(Ordering::Relaxed), 4);
        assert!(!is_set(&ev[0]));
        assert!(is_set(&ev[1]) && is_set(&ev[2]) && is_set(&ev[3]));
    }

    #[test]
    fn the_event_order_survives_the_word_wrapping() {
        let word = AtomicU32::new(u32::MAX);
        let ev = events();
        bump(&word, &ev);
        assert_eq!(word.load(Ordering::Relaxed), 0);
        assert!(is_set(&ev[event_index(u32::MAX)]));
        assert!(!is_set(&ev[event_index(0)]));
    }

    #[test]
    fn a_reader_three_bumps_late_still_returns_at_once() {
        let word = AtomicU32::new(7);
        let ev = events();
        for _ in 0..3 {
            bump(&word, &ev);
        }
        let t = std::time::Instant::now();
        // The reader loaded 7 long ago and only now calls the event wait itself.
        ev[event_index(7)].wait(Some(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_waiter_sleeps_until_the_bump() {
        let word = std::sync::Arc::new(AtomicU32::new(0));
        let ev = std::sync::Arc::new(events());
        let (w2, e2) = (word.clone(), ev.clone());
        let h = std::thread::spawn(move || {
            let t = std::time::Instant::now();
            while w2.load(Ordering::Acquire) == 0 {
                wait(&*w2, 0, &e2, Some(Duration::from_secs(10)));
            }
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        bump(&*word, &ev);
        let slept = h.join().unwrap();
        assert!(
            slept >= Duration::from_millis(40),
            "did not sleep: {slept:?}"
        );
        assert!(slept < Duration::from_secs(5), "was not woken: {slept:?}");
    }
}
