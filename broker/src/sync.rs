//! The broker's locks: one poison policy, and the order of the two locks that may
//! be held together.
//!
//! **Poison policy.** The project's one policy, [`framebroker_proto::lock`]: a
//! panic while a lock is held is a bug; the supervisor catches it and fails the
//! stream, and the rest of the broker goes on. Every value behind the broker's
//! locks is whole between any two statements (plain fields, each written in one
//! assignment), so a poisoned lock is used as it is. [`Lock::locked`] is that
//! policy as a method.
//!
//! **Lock order.** The stream table ([`Rank::Streams`]) may be held while taking
//! a stream's status ([`Rank::Status`]), never the other way round, and no two
//! locks of the same rank are held at once. [`RankedMutex`] checks this in debug
//! builds (every test) and costs nothing in release builds. Nothing else is
//! held while taking either. Under the table the broker may also take a
//! stream's stop machinery (its kill handle, and under it the kill reason and
//! the source's `alive` flag; its wakeup), a decode's list of variants, a
//! decode's supervisor thread (and under it the list of stopping ones) and the
//! allocator's byte count; none of those is held while taking the table or a
//! status.

use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};

pub use framebroker_proto::lock::wait_timeout;

/// `lock()` with the poison policy above.
pub trait Lock<T: ?Sized> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Lock<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        framebroker_proto::lock::lock(self)
    }
}

/// The locks that may be held together, outermost first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Rank {
    /// The broker's table of streams.
    Streams = 1,
    /// One stream's [`Status`](crate::supervisor::Status).
    Status = 2,
}

#[cfg(debug_assertions)]
thread_local! {
    /// Bit `r` set while this thread holds a lock of rank `r`.
    static HELD: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// A mutex with a place in the lock order (see the module doc).
#[derive(Debug)]
pub struct RankedMutex<T> {
    rank: Rank,
    inner: Mutex<T>,
}

impl<T> RankedMutex<T> {
    pub const fn new(rank: Rank, value: T) -> Self {
        RankedMutex {
            rank,
            inner: Mutex::new(value),
        }
    }

    /// Locks, with the poison policy; panics (debug builds) when the thread
    /// already holds a lock of this rank or a later one.
    pub fn locked(&self) -> RankedGuard<'_, T> {
        #[cfg(debug_assertions)]
        HELD.with(|held| {
            let bit = 1u8 << self.rank as u8;
            assert!(
                held.get() < bit,
                "lock order: {:?} taken while holding a lock of its rank or a later one \
                 (see broker/src/sync.rs)",
                self.rank
            );
            held.set(held.get() | bit);
        });
        RankedGuard {
            guard: self.inner.locked(),
            rank: self.rank,
        }
    }
}

/// The guard of a [`RankedMutex`].
pub struct RankedGuard<'a, T> {
    guard: MutexGuard<'a, T>,
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    rank: Rank,
}

impl<T> Drop for RankedGuard<'_, T> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        HELD.with(|held| held.set(held.get() & !(1u8 << self.rank as u8)));
    }
}

impl<T> Deref for RankedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for RankedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_used_as_it_is() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let mut g = m2.lock().unwrap();
            *g = 2;
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*m.locked(), 2);
    }

    #[test]
    fn the_table_then_a_status_is_the_order() {
        let streams = RankedMutex::new(Rank::Streams, ());
        let status = RankedMutex::new(Rank::Status, 0);
        let other = RankedMutex::new(Rank::Status, 0);
        {
            let _t = streams.locked();
            *status.locked() += 1;
            *other.locked() += 1; // one status after the other, not both at once
        }
        let _s = status.locked();
        drop(_s);
        let _t = streams.locked();
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "lock order: Streams")]
    fn the_table_under_a_status_is_refused() {
        let streams = RankedMutex::new(Rank::Streams, ());
        let status = RankedMutex::new(Rank::Status, ());
        let _s = status.locked();
        let _t = streams.locked();
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "lock order: Status")]
    fn two_statuses_at_once_are_refused() {
        let a = RankedMutex::new(Rank::Status, ());
        let b = RankedMutex::new(Rank::Status, ());
        let _a = a.locked();
        let _b = b.locked();
    }
}
