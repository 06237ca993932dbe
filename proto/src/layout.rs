//! The shared-memory layout of one stream's ring: a header page followed by
//! `slot_count` slots. Every offset here is documented in `proto/doc/layout.md`
//! and asserted at compile time at the bottom of this file; the Python client
//! mirrors these numbers and a test checks both sides agree.
//!
//! All integers are little-endian (the only byte order the broker runs on; a
//! big-endian host is refused at compile time). Fields that change after the
//! segment is published are atomics; the rest are written once, before the magic
//! is stored with Release ordering, and never again.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64};

#[cfg(not(target_endian = "little"))]
compile_error!("the framebroker shared-memory layout is little-endian only");

/// `b"FBRING\0\x01"` read as a little-endian u64: stored last, when the segment is ready.
pub const MAGIC: u64 = u64::from_le_bytes(*b"FBRING\0\x01");
/// Bumped on any incompatible change of this file.
pub const LAYOUT_VERSION: u32 = 1;
/// Size of the header page; slot 0 starts here.
pub const HEADER_PAGE: usize = 4096;
/// Size of a slot's own header; the payload follows it.
pub const SLOT_HEADER: usize = 64;
/// Alignment of every payload (and of the slot stride).
pub const PAYLOAD_ALIGN: usize = 64;
/// Longest stream id (bytes), see [`crate::naming`].
pub const MAX_ID_LEN: usize = 64;

/// Fewest slots a ring may have: one being written, one just published, one
/// being read.
pub const MIN_SLOTS: u32 = 3;
/// Most slots a ring may have.
pub const MAX_SLOTS: u32 = 64;
/// Slots when a start request does not say.
pub const DEFAULT_SLOTS: u32 = 4;
/// Largest width or height accepted anywhere.
pub const MAX_DIMENSION: u32 = 8192;

/// Header flag: every slot carries a CRC-32 (IEEE) of its payload.
pub const FLAG_CHECKSUM: u32 = 1;

/// Pixel formats a ring can carry. The numbers are part of the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u32)]
pub enum PixelFormat {
    /// 3 bytes per pixel, B G R: what OpenCV uses.
    Bgr24 = 0,
    /// 3 bytes per pixel, R G B.
    Rgb24 = 1,
    /// 1 byte per pixel, luma.
    Gray = 2,
    /// Planar Y then U then V, chroma at half width and height (even sizes only).
    Yuv420p = 3,
    /// Y plane then interleaved UV at half width and height (even sizes only).
    Nv12 = 4,
}

impl PixelFormat {
    pub const ALL: [PixelFormat; 5] = [
        PixelFormat::Bgr24,
        PixelFormat::Rgb24,
        PixelFormat::Gray,
        PixelFormat::Yuv420p,
        PixelFormat::Nv12,
    ];

    /// The name ffmpeg (`-pix_fmt`) and our CLI use.
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Bgr24 => "bgr24",
            PixelFormat::Rgb24 => "rgb24",
            PixelFormat::Gray => "gray",
            PixelFormat::Yuv420p => "yuv420p",
            PixelFormat::Nv12 => "nv12",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|f| *f as u32 == v)
    }

    /// Bytes of one frame of `width`×`height`, or `None` on overflow or for an
    /// odd size in a subsampled format.
    pub fn frame_bytes(self, width: u32, height: u32) -> Option<u64> {
        let pixels = u64::from(width).checked_mul(u64::from(height))?;
        match self {
            PixelFormat::Bgr24 | PixelFormat::Rgb24 => pixels.checked_mul(3),
            PixelFormat::Gray => Some(pixels),
            PixelFormat::Yuv420p | PixelFormat::Nv12 => {
                if width % 2 != 0 || height % 2 != 0 {
                    None
                } else {
                    Some(pixels / 2 * 3)
                }
            }
        }
    }

    /// Channels of the packed formats (what a numpy array's last axis is).
    pub fn channels(self) -> u32 {
        match self {
            PixelFormat::Bgr24 | PixelFormat::Rgb24 => 3,
            _ => 1,
        }
    }
}

impl std::fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The state of a stream, as readers see it in the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u32)]
pub enum StreamState {
    /// ffmpeg started, no frame yet.
    Starting = 0,
    /// Frames are arriving.
    Live = 1,
    /// The source dropped; the broker is retrying with backoff. Readers stay attached.
    Reconnecting = 2,
    /// The stream was stopped (or this segment was replaced by a new generation).
    Stopped = 3,
    /// The stream gave up after a permanent error; the reason is in the stats.
    Failed = 4,
}

impl StreamState {
    pub fn from_u32(v: u32) -> Option<Self> {
        [
            Self::Starting,
            Self::Live,
            Self::Reconnecting,
            Self::Stopped,
            Self::Failed,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            StreamState::Starting => "starting",
            StreamState::Live => "live",
            StreamState::Reconnecting => "reconnecting",
            StreamState::Stopped => "stopped",
            StreamState::Failed => "failed",
        }
    }

    /// No more frames will ever come into this segment.
    pub fn is_final(self) -> bool {
        matches!(self, StreamState::Stopped | StreamState::Failed)
    }
}

impl std::fmt::Display for StreamState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a segment's frames look like; fixed for the life of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Geometry {
    pub width: u32,
    pub height: u32,
    pub pixel_format: PixelFormat,
}

impl Geometry {
    /// Checks the size limits; returns the frame size in bytes.
    pub fn validate(&self) -> Result<u64, crate::Error> {
        let bad = |why: &str| crate::Error::InvalidGeometry {
            geometry: *self,
            reason: why.to_string(),
        };
        if self.width == 0 || self.height == 0 {
            return Err(bad("width and height must be at least 1"));
        }
        if self.width > MAX_DIMENSION || self.height > MAX_DIMENSION {
            return Err(bad(&format!(
                "width and height must be at most {MAX_DIMENSION}"
            )));
        }
        self.pixel_format
            .frame_bytes(self.width, self.height)
            .ok_or_else(|| bad("subsampled formats need an even width and height"))
    }

    pub fn frame_bytes(&self) -> u64 {
        self.pixel_format
            .frame_bytes(self.width, self.height)
            .unwrap_or(0)
    }
}

/// Distance between two slots for frames of `frame_bytes`: the slot header plus the
/// payload, rounded up to [`PAYLOAD_ALIGN`].
pub const fn slot_stride(frame_bytes: u64) -> u64 {
    let raw = SLOT_HEADER as u64 + frame_bytes;
    raw.div_ceil(PAYLOAD_ALIGN as u64) * PAYLOAD_ALIGN as u64
}

/// Total size of a segment.
pub fn segment_size(frame_bytes: u64, slot_count: u32) -> Option<u64> {
    slot_stride(frame_bytes)
        .checked_mul(u64::from(slot_count))?
        .checked_add(HEADER_PAGE as u64)
}

/// The header at offset 0 of every segment.
///
/// Offsets 0–191 are written once before the segment is published; 192–255
/// change while it lives and are only touched through atomics.
#[repr(C, align(64))]
pub struct Header {
    /// [`MAGIC`], stored last with Release when everything else is in place.
    pub magic: AtomicU64,
    pub layout_version: u32,
    /// [`HEADER_PAGE`].
    pub header_size: u32,
    pub width: u32,
    pub height: u32,
    /// [`PixelFormat`] as a number.
    pub pixel_format: u32,
    pub slot_count: u32,
    pub frame_bytes: u64,
    pub slot_stride: u64,
    /// Offset of slot 0 (= [`HEADER_PAGE`]).
    pub slots_offset: u64,
    /// Total bytes of the segment; a mapping shorter than this is refused.
    pub segment_size: u64,
    // -- 64
    /// Bumped each time the stream gets a new segment (for example a new geometry).
    pub generation: u64,
    /// Process id of the broker that writes this segment (used to clean up after a crash).
    pub writer_pid: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Wall-clock time the segment was created, ns since the Unix epoch.
    pub created_wall_ns: u64,
    pub stream_id_len: u32,
    pub _reserved0: [u8; 36],
    // -- 128
    /// The stream id, `stream_id_len` bytes of ASCII, zero padded.
    pub stream_id: [u8; MAX_ID_LEN],
    // -- 192: the live part
    /// Number of the newest published frame; 0 until the first. Frames count from 1.
    pub last_frame: AtomicU64,
    /// The writer's CLOCK_MONOTONIC in ns, refreshed at least every
    /// [`HEARTBEAT_INTERVAL_MS`], with or without frames.
    pub heartbeat_ns: AtomicU64,
    /// [`StreamState`] as a number.
    pub state: AtomicU32,
    /// The futex word: incremented once per published frame and on every state
    /// change; readers wait on it.
    pub wake: AtomicU32,
    /// Measured input rate in frames per second × 1000.
    pub fps_milli: AtomicU32,
    pub _reserved1: u32,
    /// Frames the writer has dropped (corrupt or short) into this segment.
    pub frames_dropped: AtomicU64,
    pub _reserved2: [u8; 24],
}

/// How often the writer refreshes `heartbeat_ns`. The broker's ticker wakes
/// this often whatever its streams do, so with one camera each of its wake-ups
/// is a visible part of the broker's CPU (250 instead of 100 ms: 0.06 % of a
/// core less at 640x480@30, `proto/doc/decisions.md`, 17). More than three
/// intervals still fit under [`HEARTBEAT_STALE_MS`], for a ticker delayed by load.
pub const HEARTBEAT_INTERVAL_MS: u64 = 250;
/// A heartbeat older than this means the writer is gone.
pub const HEARTBEAT_STALE_MS: u64 = 800;
/// The longest a reader sleeps on the wake word before it looks at the
/// stream's state and heartbeat again: a reader notices a dead writer at most
/// this long after the heartbeat went stale. Not a poll for frames, which wake
/// it; on Windows also the bound of the rare late wake-up of decision 13.
pub const READER_SLICE_MS: u64 = 100;

/// The header at the start of every slot; the payload follows at +64.
#[repr(C, align(64))]
pub struct SlotHeader {
    /// Seqlock word: odd while the writer is filling the slot.
    pub seq: AtomicU64,
    /// Frame number stored in this slot (0: never written or abandoned).
    pub frame: AtomicU64,
    /// Capture time, wall clock, ns since the Unix epoch.
    pub wall_ns: AtomicU64,
    /// Capture time, CLOCK_MONOTONIC ns (comparable across processes on one host).
    pub mono_ns: AtomicU64,
    /// Bytes of payload (= frame_bytes for a complete frame).
    pub len: AtomicU64,
    /// CRC-32 (IEEE) of the payload when the header has [`FLAG_CHECKSUM`], else 0.
    pub checksum: AtomicU32,
    pub _reserved0: u32,
    /// Presentation time of the frame on the stream's own clock (ffmpeg's pts with
    /// `-copyts`), ns; [`PTS_UNKNOWN`] when ffmpeg did not report it. Only valid
    /// when `stream_ns` is not 0.
    pub pts_ns: AtomicI64,
    /// Capture time on the stream's clock mapped onto the wall clock, ns since the
    /// Unix epoch; 0 when unknown (then `pts_ns` means nothing either). See
    /// `proto/doc/layout.md` for what this clock is.
    pub stream_ns: AtomicU64,
}

/// `pts_ns` of a slot whose frame has no known presentation time.
pub const PTS_UNKNOWN: i64 = i64::MIN;

/// Byte offsets of every header field, for other languages and for the docs.
pub mod offsets {
    use super::{Header, SlotHeader};
    use std::mem::offset_of;

    pub const MAGIC: usize = offset_of!(Header, magic);
    pub const LAYOUT_VERSION: usize = offset_of!(Header, layout_version);
    pub const HEADER_SIZE: usize = offset_of!(Header, header_size);
    pub const WIDTH: usize = offset_of!(Header, width);
    pub const HEIGHT: usize = offset_of!(Header, height);
    pub const PIXEL_FORMAT: usize = offset_of!(Header, pixel_format);
    pub const SLOT_COUNT: usize = offset_of!(Header, slot_count);
    pub const FRAME_BYTES: usize = offset_of!(Header, frame_bytes);
    pub const SLOT_STRIDE: usize = offset_of!(Header, slot_stride);
    pub const SLOTS_OFFSET: usize = offset_of!(Header, slots_offset);
    pub const SEGMENT_SIZE: usize = offset_of!(Header, segment_size);
    pub const GENERATION: usize = offset_of!(Header, generation);
    pub const WRITER_PID: usize = offset_of!(Header, writer_pid);
    pub const FLAGS: usize = offset_of!(Header, flags);
    pub const CREATED_WALL_NS: usize = offset_of!(Header, created_wall_ns);
    pub const STREAM_ID_LEN: usize = offset_of!(Header, stream_id_len);
    pub const STREAM_ID: usize = offset_of!(Header, stream_id);
    pub const LAST_FRAME: usize = offset_of!(Header, last_frame);
    pub const HEARTBEAT_NS: usize = offset_of!(Header, heartbeat_ns);
    pub const STATE: usize = offset_of!(Header, state);
    pub const WAKE: usize = offset_of!(Header, wake);
    pub const FPS_MILLI: usize = offset_of!(Header, fps_milli);
    pub const FRAMES_DROPPED: usize = offset_of!(Header, frames_dropped);

    pub const SLOT_SEQ: usize = offset_of!(SlotHeader, seq);
    pub const SLOT_FRAME: usize = offset_of!(SlotHeader, frame);
    pub const SLOT_WALL_NS: usize = offset_of!(SlotHeader, wall_ns);
    pub const SLOT_MONO_NS: usize = offset_of!(SlotHeader, mono_ns);
    pub const SLOT_LEN: usize = offset_of!(SlotHeader, len);
    pub const SLOT_CHECKSUM: usize = offset_of!(SlotHeader, checksum);
    pub const SLOT_PTS_NS: usize = offset_of!(SlotHeader, pts_ns);
    pub const SLOT_STREAM_NS: usize = offset_of!(SlotHeader, stream_ns);

    /// Every named offset, for the layout test and the Python cross-check.
    pub const ALL: &[(&str, usize)] = &[
        ("MAGIC", MAGIC),
        ("LAYOUT_VERSION", LAYOUT_VERSION),
        ("HEADER_SIZE", HEADER_SIZE),
        ("WIDTH", WIDTH),
        ("HEIGHT", HEIGHT),
        ("PIXEL_FORMAT", PIXEL_FORMAT),
        ("SLOT_COUNT", SLOT_COUNT),
        ("FRAME_BYTES", FRAME_BYTES),
        ("SLOT_STRIDE", SLOT_STRIDE),
        ("SLOTS_OFFSET", SLOTS_OFFSET),
        ("SEGMENT_SIZE", SEGMENT_SIZE),
        ("GENERATION", GENERATION),
        ("WRITER_PID", WRITER_PID),
        ("FLAGS", FLAGS),
        ("CREATED_WALL_NS", CREATED_WALL_NS),
        ("STREAM_ID_LEN", STREAM_ID_LEN),
        ("STREAM_ID", STREAM_ID),
        ("LAST_FRAME", LAST_FRAME),
        ("HEARTBEAT_NS", HEARTBEAT_NS),
        ("STATE", STATE),
        ("WAKE", WAKE),
        ("FPS_MILLI", FPS_MILLI),
        ("FRAMES_DROPPED", FRAMES_DROPPED),
        ("SLOT_SEQ", SLOT_SEQ),
        ("SLOT_FRAME", SLOT_FRAME),
        ("SLOT_WALL_NS", SLOT_WALL_NS),
        ("SLOT_MONO_NS", SLOT_MONO_NS),
        ("SLOT_LEN", SLOT_LEN),
        ("SLOT_CHECKSUM", SLOT_CHECKSUM),
        ("SLOT_PTS_NS", SLOT_PTS_NS),
        ("SLOT_STREAM_NS", SLOT_STREAM_NS),
    ];
}

// The layout, asserted at compile time: a change here is a change of the
// contract and must bump LAYOUT_VERSION and proto/doc/layout.md.
const _: () = {
    use std::mem::{align_of, size_of};
    assert!(size_of::<Header>() == 256);
    assert!(align_of::<Header>() == 64);
    assert!(size_of::<Header>() <= HEADER_PAGE);
    assert!(size_of::<SlotHeader>() == SLOT_HEADER);
    assert!(align_of::<SlotHeader>() == 64);
    assert!(offsets::MAGIC == 0);
    assert!(offsets::LAYOUT_VERSION == 8);
    assert!(offsets::HEADER_SIZE == 12);
    assert!(offsets::WIDTH == 16);
    assert!(offsets::HEIGHT == 20);
    assert!(offsets::PIXEL_FORMAT == 24);
    assert!(offsets::SLOT_COUNT == 28);
    assert!(offsets::FRAME_BYTES == 32);
    assert!(offsets::SLOT_STRIDE == 40);
    assert!(offsets::SLOTS_OFFSET == 48);
    assert!(offsets::SEGMENT_SIZE == 56);
    assert!(offsets::GENERATION == 64);
    assert!(offsets::WRITER_PID == 72);
    assert!(offsets::FLAGS == 76);
    assert!(offsets::CREATED_WALL_NS == 80);
    assert!(offsets::STREAM_ID_LEN == 88);
    assert!(offsets::STREAM_ID == 128);
    assert!(offsets::LAST_FRAME == 192);
    assert!(offsets::HEARTBEAT_NS == 200);
    assert!(offsets::STATE == 208);
    assert!(offsets::WAKE == 212);
    assert!(offsets::FPS_MILLI == 216);
    assert!(offsets::FRAMES_DROPPED == 224);
    assert!(offsets::SLOT_SEQ == 0);
    assert!(offsets::SLOT_FRAME == 8);
    assert!(offsets::SLOT_WALL_NS == 16);
    assert!(offsets::SLOT_MONO_NS == 24);
    assert!(offsets::SLOT_LEN == 32);
    assert!(offsets::SLOT_CHECKSUM == 40);
    assert!(offsets::SLOT_PTS_NS == 48);
    assert!(offsets::SLOT_STREAM_NS == 56);
    assert!(HEADER_PAGE % PAYLOAD_ALIGN == 0);
    assert!(SLOT_HEADER % PAYLOAD_ALIGN == 0);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stride_is_aligned_and_holds_the_frame() {
        for bytes in [0u64, 1, 63, 64, 65, 640 * 480 * 3, 1920 * 1080 * 3] {
            let s = slot_stride(bytes);
            assert_eq!(s % PAYLOAD_ALIGN as u64, 0);
            assert!(s >= SLOT_HEADER as u64 + bytes);
            assert!(s < SLOT_HEADER as u64 + bytes + PAYLOAD_ALIGN as u64);
        }
    }

    #[test]
    fn frame_bytes_per_format() {
        assert_eq!(PixelFormat::Bgr24.frame_bytes(640, 480), Some(921_600));
        assert_eq!(PixelFormat::Gray.frame_bytes(640, 480), Some(307_200));
        assert_eq!(PixelFormat::Nv12.frame_bytes(640, 480), Some(460_800));
        assert_eq!(PixelFormat::Yuv420p.frame_bytes(641, 480), None);
    }

    #[test]
    fn geometry_limits() {
        let g = |w, h| Geometry {
            width: w,
            height: h,
            pixel_format: PixelFormat::Bgr24,
        };
        assert!(g(0, 480).validate().is_err());
        assert!(g(640, 0).validate().is_err());
        assert!(g(8193, 480).validate().is_err());
        assert_eq!(g(8192, 8192).validate().unwrap(), 8192 * 8192 * 3);
    }

    #[test]
    fn names_round_trip() {
        for f in PixelFormat::ALL {
            assert_eq!(PixelFormat::from_name(f.name()), Some(f));
            assert_eq!(PixelFormat::from_u32(f as u32), Some(f));
        }
        assert_eq!(StreamState::from_u32(4), Some(StreamState::Failed));
        assert_eq!(StreamState::from_u32(5), None);
    }
}
