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
