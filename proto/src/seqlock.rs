//! The seqlock protocol of a slot, and the one raw copy out of shared memory.
//!
//! All atomics orderings of the ring live here, with their pairs marked.
//!
//! Writer (one per slot, the broker):
//! 1. [`write_begin`]: sequence `s` (even) → `s + 1` (odd), then a Release fence,
//!    so no payload store can become visible before the odd sequence.
//! 2. write payload and slot metadata;
//! 3. [`write_end`]: store `s + 2` with Release, so the payload is visible before it.
//!
//! Reader:
//! 1. [`read_begin`]: Acquire-load the sequence; odd → the writer is inside, give up.
//! 2. copy or use the payload;
//! 3. [`read_validate`]: Acquire fence, Relaxed re-load; equal → nothing was
//!    written in between and the copy is a whole frame.
//!
//! The functions are generic over [`SeqWord`] so the loom model in
//! `tests/loom_seqlock.rs` checks the exact same code with loom's atomics.

use std::sync::atomic::{self, AtomicU64, Ordering};

/// A 64-bit atomic word and the fence that goes with it.
pub trait SeqWord {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
    fn fence(order: Ordering);
}

impl SeqWord for AtomicU64 {
    #[inline(always)]
    fn load(&self, order: Ordering) -> u64 {
        AtomicU64::load(self, order)
    }
    #[inline(always)]
    fn store(&self, value: u64, order: Ordering) {
        AtomicU64::store(self, value, order)
    }
    #[inline(always)]
    fn fence(order: Ordering) {
        atomic::fence(order)
    }
}

/// Marks the slot as being written; returns the odd sequence to pass to [`write_end`].
/// Only the single writer may call this.
#[inline]
pub fn write_begin<S: SeqWord>(seq: &S) -> u64 {
    // Only the writer stores to `seq`, so a Relaxed load sees its own last store.
    let even = seq.load(Ordering::Relaxed) & !1;
    let odd = even.wrapping_add(1);
    seq.store(odd, Ordering::Relaxed);
    // SYNC: pairs with the Acquire fence in `read_validate`: a reader that sees any
    // payload store made after this fence also sees the odd sequence (or a later one).
    S::fence(Ordering::Release);
    odd
}

/// Publishes the slot written since [`write_begin`].
#[inline]
pub fn write_end<S: SeqWord>(seq: &S, odd: u64) {
    debug_assert!(odd & 1 == 1, "write_end without write_begin");
    // SYNC: pairs with the Acquire load in `read_begin`: a reader that sees this even
    // value sees every payload store made before it.
    seq.store(odd.wrapping_add(1), Ordering::Release);
}

/// Starts a read; `None` while the writer is inside the slot.
#[inline]
pub fn read_begin<S: SeqWord>(seq: &S) -> Option<u64> {
    // SYNC: pairs with the Release store in `write_end`.
    let s = seq.load(Ordering::Acquire);
    (s & 1 == 0).then_some(s)
}

/// Ends a read started with [`read_begin`]: `true` when the data read in between
/// is a consistent frame.
#[inline]
pub fn read_validate<S: SeqWord>(seq: &S, stamp: u64) -> bool {
    // SYNC: pairs with the Release fence in `write_begin`: if any byte we copied came
    // from a write after that fence, this load sees the odd (or a later) sequence.
    S::fence(Ordering::Acquire);
    seq.load(Ordering::Relaxed) == stamp
}

/// Copies `len` bytes of a payload that the writer may be changing at the same time.
///
/// This is the only place the ring reads payload bytes without atomics. The bytes
/// may be torn; the caller must call [`read_validate`] after it and throw the copy
/// away when that fails. A plain (SIMD) memcpy is used because the validated copy is
/// the hot path of every reader, and a byte-wise atomic copy would cost several
/// times a memcpy; see `proto/doc/decisions.md`, "Racy payload copy".
///
/// # Safety
/// `src` must be valid for reads of `len` bytes for the whole call (the segment
/// stays mapped while the reader lives), `dst` valid for writes of `len` bytes,
/// and the two must not overlap (`dst` is the caller's private buffer).
#[inline]
pub unsafe fn copy_racy(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: validity and non-overlap are the caller's contract above. Concurrent
    // writes to `src` come from the writer (in another process in production); the
    // value read is only trusted after `read_validate`, which is the seqlock argument.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_while_writing_even_after() {
        let seq = AtomicU64::new(0);
        let stamp = read_begin(&seq).unwrap();
        let odd = write_begin(&seq);
        assert_eq!(odd, 1);
        assert!(
            read_begin(&seq).is_none(),
            "a reader must not start inside a write"
        );
        assert!(
            !read_validate(&seq, stamp),
            "a read overlapping a write is torn"
        );
        write_end(&seq, odd);
        let stamp2 = read_begin(&seq).unwrap();
        assert_eq!(stamp2, 2);
        assert!(read_validate(&seq, stamp2));
    }

    #[test]
    fn a_read_spanning_a_whole_write_is_torn() {
        let seq = AtomicU64::new(10);
        let stamp = read_begin(&seq).unwrap();
        let odd = write_begin(&seq);
        write_end(&seq, odd);
        assert!(!read_validate(&seq, stamp));
    }

    #[test]
    fn abandoned_write_recovers_parity() {
        // A writer that crashed mid-write leaves an odd word; the next writer
        // rounds down and goes on.
        let seq = AtomicU64::new(7);
        let odd = write_begin(&seq);
        assert_eq!(odd, 7);
        write_end(&seq, odd);
        assert_eq!(read_begin(&seq), Some(8));
    }
}
