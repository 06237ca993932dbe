//! The error type of the contract: each variant says enough to find the
//! offending stream, segment, frame or request.

use std::time::Duration;

use crate::layout::{Geometry, StreamState};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid stream id {id:?}: {reason}")]
    InvalidId { id: String, reason: String },
    #[error("invalid segment prefix {prefix:?}: 1-32 characters from A-Z a-z 0-9 _ . -")]
    InvalidPrefix { prefix: String },
    #[error("invalid source URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid geometry {}x{} {}: {reason}", geometry.width, geometry.height, geometry.pixel_format)]
    InvalidGeometry { geometry: Geometry, reason: String },
    #[error(
        "ring slot count {slots} out of range ({}..={})",
        crate::layout::MIN_SLOTS,
        crate::layout::MAX_SLOTS
    )]
    InvalidSlots { slots: u32 },
    #[error("segment too small: need {expected} bytes, have {actual}")]
    SegmentTooSmall { expected: u64, actual: u64 },
    #[error(
        "not a framebroker segment (magic {found:#018x}); it may still be starting, or be foreign"
    )]
    BadMagic { found: u64 },
    #[error("segment layout version {found}, this build reads version {expected}: upgrade the older side")]
    LayoutVersion { found: u32, expected: u32 },
    #[error("bad segment: {0}")]
    BadSegment(String),
    #[error("frame size mismatch: expected {expected} bytes, got {actual}")]
    FrameSize { expected: u64, actual: u64 },
    #[error("stream {stream}: the writer kept overwriting the frame being read (reader too slow for this ring size)")]
    Contended { stream: String },
    #[error("stream {stream}: no new frame within {after:?}")]
    Timeout { stream: String, after: Duration },
    #[error("stream {stream} is {state}: no more frames will come")]
    StreamEnded { stream: String, state: StreamState },
    #[error(
        "stream {stream}: the broker has shown no sign of life for {silent_for:?} (did it die?)"
    )]
    WriterGone {
        stream: String,
        silent_for: Duration,
    },
    #[error("shared memory segment {name}: {reason}")]
    Shm { name: String, reason: String },
    #[error("control frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: u64, max: u32 },
    #[error("malformed control message: {0}")]
    Codec(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
