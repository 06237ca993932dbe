//! # framebroker-proto
//!
//! The contract between the framebroker broker and its readers:
//!
//! - [`layout`]: the shared-memory ring (header page, slots), asserted at compile time
//!   and documented byte by byte in `proto/doc/layout.md`;
//! - [`seqlock`] and [`sync`]: the only atomics orderings and futex calls of the ring;
//! - [`lock`]: the one poison policy for the project's mutexes;
//! - [`ring`]: the writer and reader algorithms over any [`ring::Region`];
//! - [`shm`]: shared-memory segments (owner-only, exclusive create, read-only open):
//!   POSIX on Unix, named file mappings with wake events on Windows (`shm_windows.rs`);
//! - [`wake_events`]: the wake-up protocol where there is no futex (Windows);
//! - [`control`]: the length-prefixed bincode control protocol;
//! - [`naming`]: stream ids, segment names, allowed URLs, credential redaction;
//! - `config` (feature `config`): the TOML config file of the broker and the gateway.
//!
//! No I/O here beyond what the layout needs; the library never prints.

#[cfg(feature = "config")]
pub mod config;
pub mod control;
mod error;
pub mod layout;
pub mod lock;
pub mod naming;
pub mod ring;
pub mod seqlock;
#[cfg(unix)]
pub mod shm;
#[cfg(windows)]
#[path = "shm_windows.rs"]
pub mod shm;
pub mod sync;
pub mod wake_events;
#[cfg(windows)]
pub mod win32;

pub use error::Error;
pub use layout::{Geometry, PixelFormat, StreamState};
pub use ring::{
    FrameMeta, ReadMode, RingConfig, RingInfo, RingReader, RingStatus, RingWriter, StreamTime,
};
