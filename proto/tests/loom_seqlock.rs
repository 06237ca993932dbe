//! Loom model of the slot seqlock: every interleaving of one writer and one reader
//! (under the C11 memory model as loom explores it) must either give the reader a
//! whole frame or make `read_validate` fail. Runs the real functions of
//! `framebroker_proto::seqlock` over loom's atomics.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p framebroker-proto --test loom_seqlock --release`
#![cfg(loom)]

use std::sync::atomic::Ordering;

use framebroker_proto::seqlock::{self, SeqWord};
use loom::sync::atomic::AtomicU64;
use loom::sync::Arc;

struct Word(AtomicU64);

impl SeqWord for Word {
    fn load(&self, order: Ordering) -> u64 {
        self.0.load(order)
    }
    fn store(&self, value: u64, order: Ordering) {
        self.0.store(value, order)
    }
    fn fence(order: Ordering) {
        loom::sync::atomic::fence(order)
    }
}

/// A slot: the sequence word and a payload of words written with relaxed stores
/// (the model of the racy byte copy: loom tracks each word's history).
struct Slot {
    seq: Word,
    payload: [AtomicU64; 2],
}

fn write(slot: &Slot, value: u64) {
    let odd = seqlock::write_begin(&slot.seq);
    for w in &slot.payload {
        w.store(value, Ordering::Relaxed);
    }
    seqlock::write_end(&slot.seq, odd);
}

fn read(slot: &Slot) -> Option<[u64; 2]> {
    let stamp = seqlock::read_begin(&slot.seq)?;
    let copy = [
        slot.payload[0].load(Ordering::Relaxed),
        slot.payload[1].load(Ordering::Relaxed),
    ];
    seqlock::read_validate(&slot.seq, stamp).then_some(copy)
}

fn slot() -> Arc<Slot> {
    Arc::new(Slot {
        seq: Word(AtomicU64::new(0)),
        payload: [AtomicU64::new(0), AtomicU64::new(0)],
    })
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    // A preemption bound keeps the state space small enough for CI (seconds, not
    // minutes); 3 preemptions cover every interleaving of one write against one read.
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

#[test]
fn a_validated_read_is_never_torn() {
    model(|| {
        let slot = slot();
        let w = slot.clone();
        let writer = loom::thread::spawn(move || write(&w, 1));
        if let Some([a, b]) = read(&slot) {
            assert_eq!(a, b, "a validated read mixed two frames");
        }
        writer.join().unwrap();
        assert_eq!(
            read(&slot),
            Some([1, 1]),
            "after the writer, its frame is readable"
        );
    });
}

#[test]
fn a_read_across_two_writes_is_never_torn() {
    model(|| {
        let slot = slot();
        let w = slot.clone();
        let writer = loom::thread::spawn(move || {
            write(&w, 1);
            write(&w, 2);
        });
        if let Some([a, b]) = read(&slot) {
            assert_eq!(a, b, "a validated read mixed two frames");
        }
        writer.join().unwrap();
    });
}

// --- The Python reader (client-py/framebroker/_ring.py, `Ring._read`) ---
//
// Python has no Acquire load: off x86 it loads every word plainly (a Relaxed
// load, one aligned word) and calls `atomic_thread_fence` at two points instead.
// This models that read against the real writer functions above, with the
// ring's `last_frame` word, which the writer stores with Release after the slot
// (`FrameGuard::commit_with`) and the Python reader loads before the slot's
// sequence, with no fence in between.

struct Ring {
    last_frame: AtomicU64,
    slot: Slot,
    number: AtomicU64,
}

fn ring() -> Arc<Ring> {
    Arc::new(Ring {
        last_frame: AtomicU64::new(0),
        slot: Slot {
            seq: Word(AtomicU64::new(0)),
            payload: [AtomicU64::new(0), AtomicU64::new(0)],
        },
        number: AtomicU64::new(0),
    })
}

/// The broker publishing frame `n` (payload words = `n`) in the ring's one slot.
fn publish(ring: &Ring, n: u64) {
    let odd = seqlock::write_begin(&ring.slot.seq);
    ring.number.store(0, Ordering::Relaxed);
    for w in &ring.slot.payload {
        w.store(n, Ordering::Relaxed);
    }
    ring.number.store(n, Ordering::Relaxed);
    seqlock::write_end(&ring.slot.seq, odd);
    ring.last_frame.store(n, Ordering::Release);
}

enum PyRead {
    Nothing,
    Retry,
    Frame(u64, [u64; 2]),
}

/// `Ring._read`'s loop body; `fenced` false is the x86 path, which relies on
/// total store order and is wrong under the C11 model (see the control below).
fn python_read(ring: &Ring, fenced: bool) -> PyRead {
    let fence = || {
        if fenced {
            loom::sync::atomic::fence(Ordering::Acquire)
        }
    };
    let want = ring.last_frame.load(Ordering::Relaxed);
    if want == 0 {
        return PyRead::Nothing;
    }
    let s1 = ring.slot.seq.load(Ordering::Relaxed);
    fence(); // (1)
    if s1 & 1 == 1 || ring.number.load(Ordering::Relaxed) != want {
        return PyRead::Retry;
    }
    let copy = [
        ring.slot.payload[0].load(Ordering::Relaxed),
        ring.slot.payload[1].load(Ordering::Relaxed),
    ];
    fence(); // (2)
    if ring.slot.seq.load(Ordering::Relaxed) != s1 {
        return PyRead::Retry;
    }
    PyRead::Frame(want, copy)
}

fn python_reader_model(fenced: bool) {
    model(move || {
        let ring = ring();
        let w = ring.clone();
        let writer = loom::thread::spawn(move || {
            publish(&w, 1);
            publish(&w, 2);
        });
        for _ in 0..2 {
            if let PyRead::Frame(n, [a, b]) = python_read(&ring, fenced) {
                assert!(
                    a == n && b == n,
                    "a validated read mixed two frames: {n} {a} {b}"
                );
            }
        }
        writer.join().unwrap();
        assert!(
            matches!(python_read(&ring, fenced), PyRead::Frame(2, [2, 2])),
            "after the writer, its last frame is readable"
        );
    });
}

#[test]
fn a_fenced_python_read_is_never_torn() {
    python_reader_model(true);
}

/// The control: without the two fences the model finds a torn frame that passes
/// validation, which is what an aarch64 CPU may do to plain loads. (It shows the
/// fences above are what makes the other model pass.)
#[test]
#[should_panic(expected = "a validated read mixed two frames")]
fn an_unfenced_python_read_can_be_torn() {
    python_reader_model(false);
}

/// Once a Python reader has seen `last_frame` = n, every load after its first
/// fence sees slot n whole: the fence also orders the `last_frame` load before
/// them, so `last_frame` cannot run ahead of the slot and a reader cannot spend
/// its retries on a frame it cannot see yet (at most one retry, when the sequence
/// loaded before the fence was older).
#[test]
fn a_fenced_python_read_sees_the_frame_last_frame_names() {
    model(|| {
        let ring = ring();
        let w = ring.clone();
        let writer = loom::thread::spawn(move || publish(&w, 1));
        let want = ring.last_frame.load(Ordering::Relaxed);
        let s1 = ring.slot.seq.load(Ordering::Relaxed);
        loom::sync::atomic::fence(Ordering::Acquire);
        if want == 1 {
            // s1 was loaded before the fence: it may be stale, and then the read is
            // retried; but the loads after the fence must see the frame whole.
            assert_eq!(ring.number.load(Ordering::Relaxed), 1);
            assert_eq!(ring.slot.payload[0].load(Ordering::Relaxed), 1);
            assert_eq!(ring.slot.seq.load(Ordering::Relaxed), 2);
            let _ = s1;
        }
        writer.join().unwrap();
    });
}

// --- The wake word (proto/src/sync.rs `bump_and_wake`, `RingReader::wait_for`) ---
//
// The writer publishes `last_frame` (Release), then bumps the wake word
// (`fetch_add`, Release) and wakes. A reader loads the wake word (Acquire; in
// Python a plain load and a fence), then looks at `last_frame`, then sleeps
// while the word still holds what it loaded. No lost wake-up needs: a reader
// whose wake load saw the bump also sees the frame when it looks.

fn wake_model(python: bool) {
    use loom::sync::atomic::AtomicU32;
    model(move || {
        let words = Arc::new((AtomicU64::new(0), AtomicU32::new(0)));
        let w = words.clone();
        let writer = loom::thread::spawn(move || {
            w.0.store(1, Ordering::Release); // last_frame
            w.1.fetch_add(1, Ordering::Release); // sync::bump_and_wake
        });
        let (wake, last) = if python {
            // `Ring._wait_for`: a plain load of the word, the fence, then the look.
            let wake = words.1.load(Ordering::Relaxed);
            loom::sync::atomic::fence(Ordering::Acquire);
            (wake, words.0.load(Ordering::Relaxed))
        } else {
            // `RingReader::wait_for`.
            let wake = words.1.load(Ordering::Acquire);
            (wake, words.0.load(Ordering::Acquire))
        };
        if wake == 1 {
            assert_eq!(
                last, 1,
                "saw the wake-up but not the frame: it would sleep through it"
            );
        }
        writer.join().unwrap();
    });
}

#[test]
fn a_reader_that_saw_the_wake_bump_sees_the_frame() {
    wake_model(false);
}

#[test]
fn a_python_reader_that_saw_the_wake_bump_sees_the_frame() {
    wake_model(true);
}
