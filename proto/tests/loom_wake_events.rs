//! Loom model of the Windows wake-up (decision 13 in `proto/doc/decisions.md`): the
//! real `framebroker_proto::wake_events::{bump, wait}` over loom's atomics, with each
//! manual-reset kernel event modelled as a mutex-guarded flag and a condvar.
//!
//! The property: a reader that loads the wake word and then waits **without a
//! timeout** is always woken, in every interleaving, while the writer makes up to
//! three bumps (the window the analysis promises); and it never returns while the
//! word still holds the value it waited on (no stale set from an older cycle). A
//! lost wake-up would leave the reader blocked forever, which loom reports as a
//! deadlock.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p framebroker-proto --test loom_wake_events --release`
#![cfg(loom)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use framebroker_proto::wake_events::{self, Event, WakeWord, WAKE_EVENTS};
use loom::sync::atomic::AtomicU32;
use loom::sync::{Arc, Condvar, Mutex};

struct Word(AtomicU32);

impl WakeWord for Word {
    fn load(&self, order: Ordering) -> u32 {
        self.0.load(order)
    }
    fn store(&self, value: u32, order: Ordering) {
        self.0.store(value, order)
    }
}

/// A manual-reset event: what `CreateEventW(.., TRUE, FALSE, ..)` gives.
struct ManualReset {
    set: Mutex<bool>,
    cv: Condvar,
}

impl Event for ManualReset {
    fn set(&self) {
        *self.set.lock().unwrap() = true;
        self.cv.notify_all();
    }
    fn reset(&self) {
        *self.set.lock().unwrap() = false;
    }
    fn wait(&self, timeout: Option<Duration>) {
        assert!(timeout.is_none(), "the model waits without a timeout");
        let mut g = self.set.lock().unwrap();
        while !*g {
            g = self.cv.wait(g).unwrap();
        }
    }
}

fn events() -> [ManualReset; WAKE_EVENTS] {
    std::array::from_fn(|_| ManualReset {
        set: Mutex::new(false),
        cv: Condvar::new(),
    })
}

fn model(start: u32, bumps: u32) {
    loom::model(move || {
        let word = Arc::new(Word(AtomicU32::new(start)));
        let ev = Arc::new(events());
        let (w2, e2) = (word.clone(), ev.clone());
        let reader = loom::thread::spawn(move || {
            let v = w2.load(Ordering::Acquire);
            if v == start.wrapping_add(bumps) {
                return; // every bump already happened: nothing left to wait for
            }
            wake_events::wait(&*w2, v, &e2, None);
            // Woken only by a change of the word, never by an older cycle's set.
            assert_ne!(w2.load(Ordering::Acquire), v, "returned without a change");
        });
        for _ in 0..bumps {
            wake_events::bump(&*word, &ev);
        }
        reader.join().unwrap();
    });
}

#[test]
fn a_waiting_reader_is_woken_by_one_bump() {
    model(0, 1);
}

#[test]
fn a_reader_late_by_up_to_three_bumps_is_still_woken() {
    model(0, 3);
}

#[test]
fn the_same_holds_across_the_word_wrapping() {
    model(u32::MAX - 1, 3);
}

/// The bound is real, and the model sees it: with four bumps between the reader's
/// look at the word and its wait, the event it waits on has been reset again and
/// nothing sets it (in production the next frame or the 100 ms slice would). loom
/// reports that interleaving as a deadlock, and its panic during unwinding aborts
/// the process, so this cannot be a `should_panic` test: run it by hand with
/// `-- --ignored` to see the model fail where the analysis says it must.
#[test]
#[ignore = "fails by design (loom finds the documented four-bump window and aborts)"]
fn four_bumps_inside_the_window_are_the_documented_limit() {
    model(0, 4);
}
