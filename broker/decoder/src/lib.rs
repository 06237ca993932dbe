//! What `framebroker-decoder` and the broker say to each other.
//!
//! The decoder process decodes with libavcodec and puts each frame, in the
//! decoder's own layout (planar `yuv420p` or `nv12`, planes packed back to
//! back; scaled first for an output of another size), into one of a few
//! **staging buffers** in a memory file the broker created and handed it: output
//! `k` (0 the stream, then its variants) at file descriptor [`STAGING_FD`]` + k`.
//! The broker converts from there straight into each output's ring. Compared with a pipe, a frame
//! crosses no kernel copy at all; compared with the decoder writing the ring
//! itself, a crashed or misbehaving decoder can damage nothing a reader sees.
//!
//! **The frame pool.** Copying each decoded picture into a staging buffer costs
//! the decoder about 1.4 % of a core at 1080p30. So libavcodec decodes straight
//! into shared memory: the decoder's `get_buffer2` hands it slots of a pool, a
//! memory file the broker created (fd [`POOL_FD`]) that the decoder sizes and
//! seals on the first frame. An output of the decoded size then gets the frame
//! in place ([`Place::Pool`]); the slot goes back to the pool once libavcodec no
//! longer holds it as a reference *and* the broker has returned it. When the
//! pool is full or does not fit a frame, that frame is copied to staging as
//! before.
//!
//! The channels:
//! - **decoder → broker, its stdout:** fixed-size [`Message`]s of
//!   [`MESSAGE_BYTES`] bytes: one [`Message::Geometry`] per output once the
//!   first frame is decoded, then one [`Message::Frame`] per frame and output;
//! - **broker → decoder, its stdin:** single bytes. After the geometries,
//!   [`READY`] says the memory files have their sizes (the broker sizes and seals
//!   them, so the decoder cannot shrink one under the broker's mapping); after
//!   that each [`Ack`] (two bytes) returns a frame the broker has finished
//!   with: a staging buffer, or a slot of the frame pool;
//! - **its stderr:** libav's log in ffmpeg's own `[level] message` form, so the
//!   broker reads and classifies it exactly as ffmpeg's (errors, damaged
//!   frames, the reason it ended).
//!
//! Ordering: the decoder fills a buffer, then writes the frame's message; the
//! broker reads the message, then the buffer. The pipe's write and read are the
//! synchronisation (the kernel orders them), so no atomics are involved. The
//! decoder writes a buffer again only after the broker returned its index.

/// The staging memory file, in the decoder process.
pub const STAGING_FD: i32 = 3;

/// The environment variable that carries the source URL: it may hold
/// credentials, and a command line is visible to every user of the machine.
pub const URL_ENV: &str = "FRAMEBROKER_DECODE_URL";

/// The broker's answer to the geometry: the memory file is ready.
pub const READY: u8 = 0xff;

/// Size of every message on the decoder's stdout.
pub const MESSAGE_BYTES: usize = 96;

/// The frame pool's memory file, in the decoder process (after every output's
/// staging memory).
pub const POOL_FD: i32 = STAGING_FD + MAX_OUTPUTS as i32;

/// The most frames the pool holds (libavcodec keeps up to 16 references for
/// H.264, plus the frames the broker is converting).
pub const MAX_POOL_SLOTS: u32 = 32;

/// Bytes of an [`Ack`] on the decoder's stdin.
pub const ACK_BYTES: usize = 2;

/// The most staging buffers a decoder may ask for, per output.
pub const MAX_BUFFERS: u32 = 8;

/// The most outputs of one decode: the stream and 8 variants.
pub const MAX_OUTPUTS: u32 = 9;

/// Where a frame is: a staging buffer of its output (a copy the decoder made),
/// or a slot of the frame pool (the decoded picture itself, in shared memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Place {
    Staging(u32),
    Pool(u32),
}

/// The broker is done with output `output`'s frame at `place`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ack {
    pub output: u32,
    pub place: Place,
}

impl Ack {
    pub fn encode(self) -> [u8; ACK_BYTES] {
        let (flag, index) = match self.place {
            Place::Staging(b) => (0, b),
            Place::Pool(s) => (0x80, s),
        };
        [flag | self.output as u8, index as u8]
    }

    pub fn decode(b: [u8; ACK_BYTES]) -> Ack {
        let (output, index) = (u32::from(b[0] & 0x7f), u32::from(b[1]));
        let place = if b[0] & 0x80 != 0 {
            Place::Pool(index)
        } else {
            Place::Staging(index)
        };
        Ack { output, place }
    }
}

/// Where the planes of a pool slot are: the decoder's own frame layout (rows
/// padded to its strides), the same in every slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolLayout {
    pub slots: u32,
    pub slot_bytes: u64,
    /// Offset of each plane in a slot (Y, U, V; NV12: Y, UV, 0).
    pub offsets: [u32; 3],
    /// Row stride of each plane in bytes (NV12: the third is 0).
    pub strides: [u32; 3],
}

const GEOMETRY: u32 = 0x4f45_4701; // "\x01GEO"
const FRAME: u32 = 0x4d52_4602; // "\x02FRM"

/// Layout of a staged frame: planes packed back to back, chroma planes
/// `ceil(w/2) x ceil(h/2)` (interleaved for NV12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Yuv420p,
    Nv12,
}

impl Layout {
    fn code(self) -> u32 {
        match self {
            Layout::Yuv420p => 0,
            Layout::Nv12 => 1,
        }
    }

    fn from_code(c: u32) -> Option<Self> {
        match c {
            0 => Some(Layout::Yuv420p),
            1 => Some(Layout::Nv12),
            _ => None,
        }
    }

    /// Bytes of one `width`x`height` frame; `None` on overflow.
    pub fn frame_bytes(self, width: u32, height: u32) -> Option<u64> {
        let luma = u64::from(width).checked_mul(u64::from(height))?;
        let chroma = u64::from(width.div_ceil(2)).checked_mul(u64::from(height.div_ceil(2)))?;
        luma.checked_add(chroma.checked_mul(2)?)
    }
}

/// One message from the decoder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Message {
    /// What output `output`'s frames will be; sent once per output, before the
    /// first frame.
    Geometry {
        output: u32,
        width: u32,
        height: u32,
        layout: Layout,
        /// libavutil's `AVColorSpace` of the decoded frames (2: unspecified).
        colorspace: u32,
        /// libavutil's `AVColorRange` (0 unspecified, 1 tv, 2 pc).
        range: u32,
        /// How many staging buffers the decoder uses (1..=[`MAX_BUFFERS`]).
        buffers: u32,
        /// The rate the input declares, in frames per 1000 s (0: none).
        fps_milli: u64,
        /// The frame pool, when the decoder decodes into it; only an output of
        /// the decoded size and layout gets frames from it.
        pool: Option<PoolLayout>,
    },
    /// Output `output`'s next frame is at `place`.
    Frame {
        output: u32,
        place: Place,
        /// Presentation time in ns on the input's clock, if the frame has one.
        pts_ns: Option<i64>,
    },
}

impl Message {
    pub fn encode(&self) -> [u8; MESSAGE_BYTES] {
        let mut b = [0u8; MESSAGE_BYTES];
        let put32 = |b: &mut [u8; MESSAGE_BYTES], at: usize, v: u32| {
            b[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };
        match *self {
            Message::Geometry {
                output,
                width,
                height,
                layout,
                colorspace,
                range,
                buffers,
                fps_milli,
                pool,
            } => {
                if let Some(p) = pool {
                    put32(&mut b, 40, p.slots);
                    for k in 0..3 {
                        put32(&mut b, 56 + 4 * k, p.offsets[k]);
                        put32(&mut b, 68 + 4 * k, p.strides[k]);
                    }
                    b[48..56].copy_from_slice(&p.slot_bytes.to_le_bytes());
                }
                put32(&mut b, 0, GEOMETRY);
                put32(&mut b, 28, output);
                put32(&mut b, 4, width);
                put32(&mut b, 8, height);
                put32(&mut b, 12, layout.code());
                put32(&mut b, 16, colorspace);
                put32(&mut b, 20, range);
                put32(&mut b, 24, buffers);
                b[32..40].copy_from_slice(&fps_milli.to_le_bytes());
            }
            Message::Frame {
                output,
                place,
                pts_ns,
            } => {
                let (pooled, index) = match place {
                    Place::Staging(b) => (0, b),
                    Place::Pool(s) => (1, s),
                };
                put32(&mut b, 0, FRAME);
                put32(&mut b, 12, output);
                put32(&mut b, 4, index);
                put32(&mut b, 40, pooled);
                put32(&mut b, 8, u32::from(pts_ns.is_some()));
                b[16..24].copy_from_slice(&pts_ns.unwrap_or(0).to_le_bytes());
            }
        }
        b
    }

    /// Reads one message; the error says what was wrong with it.
    pub fn decode(b: &[u8; MESSAGE_BYTES]) -> Result<Message, String> {
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        match u32_at(0) {
            GEOMETRY => {
                let layout = Layout::from_code(u32_at(12))
                    .ok_or_else(|| format!("unknown frame layout {}", u32_at(12)))?;
                let (width, height, buffers) = (u32_at(4), u32_at(8), u32_at(24));
                if width == 0 || height == 0 || layout.frame_bytes(width, height).is_none() {
                    return Err(format!("bad frame size {width}x{height}"));
                }
                if !(1..=MAX_BUFFERS).contains(&buffers) {
                    return Err(format!("bad staging buffer count {buffers}"));
                }
                let output = u32_at(28);
                if output >= MAX_OUTPUTS {
                    return Err(format!("bad output {output}"));
                }
                let slots = u32_at(40);
                let pool = if slots == 0 {
                    None
                } else if slots > MAX_POOL_SLOTS || u64_at(48) == 0 {
                    return Err(format!(
                        "bad frame pool: {slots} slots of {} bytes",
                        u64_at(48)
                    ));
                } else {
                    Some(PoolLayout {
                        slots,
                        slot_bytes: u64_at(48),
                        offsets: [u32_at(56), u32_at(60), u32_at(64)],
                        strides: [u32_at(68), u32_at(72), u32_at(76)],
                    })
                };
                Ok(Message::Geometry {
                    output,
                    width,
                    height,
                    layout,
                    colorspace: u32_at(16),
                    range: u32_at(20),
                    buffers,
                    fps_milli: u64_at(32),
                    pool,
                })
            }
            FRAME => Ok(Message::Frame {
                output: u32_at(12),
                place: if u32_at(40) != 0 {
                    Place::Pool(u32_at(4))
                } else {
                    Place::Staging(u32_at(4))
                },
                pts_ns: (u32_at(8) != 0).then(|| u64_at(16) as i64),
            }),
            tag => Err(format!("unknown message tag {tag:#x}")),
        }
    }
}

/// The largest picture decoded on one thread: a camera's VGA substream, the
/// usual one for computer vision.
const ONE_THREAD_MAX_PIXELS: i64 = 640 * 480;

/// libavcodec's `threads` for a picture of this size. With `low_delay` the
/// threads are slice threads, woken for every frame; on a picture of up to
/// 640x480 a keyframe decodes in about 2 ms on one thread (a 16th of a 30 fps
/// frame period), so the workers only add their wake-ups. Above it, or when
/// the size is not known yet, `auto` (cores + 1) keeps the keyframes of large
/// pictures short on slow cores (docs/BENCHMARKS.md, "The decoder's threads").
pub fn decode_threads(width: i32, height: i32) -> &'static str {
    let pixels = i64::from(width) * i64::from(height);
    if width > 0 && height > 0 && pixels <= ONE_THREAD_MAX_PIXELS {
        "1"
    } else {
        "auto"
    }
}

/// ffmpeg's names for libavutil's colourspace codes, as its log prints them
/// (`None`: unspecified).
pub fn colorspace_name(code: u32) -> Option<&'static str> {
    Some(match code {
        0 => "gbr",
        1 => "bt709",
        2 => return None,
        3 => "reserved",
        4 => "fcc",
        5 => "bt470bg",
        6 => "smpte170m",
        7 => "smpte240m",
        8 => "ycgco",
        9 => "bt2020nc",
        10 => "bt2020c",
        11 => "smpte2085",
        12 => "chroma-derived-nc",
        13 => "chroma-derived-c",
        14 => "ictcp",
        _ => "unknown",
    })
}

/// ffmpeg's names for libavutil's range codes (`None`: unspecified).
pub fn range_name(code: u32) -> Option<&'static str> {
    match code {
        1 => Some("tv"),
        2 => Some("pc"),
        0 => None,
        _ => Some("unknown"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pictures_up_to_640x480_decode_on_one_thread() {
        use super::decode_threads;
        assert_eq!(decode_threads(640, 480), "1");
        assert_eq!(decode_threads(320, 240), "1");
        assert_eq!(decode_threads(480, 640), "1", "a portrait VGA picture too");
        assert_eq!(decode_threads(642, 480), "auto");
        assert_eq!(decode_threads(1920, 1080), "auto");
        assert_eq!(decode_threads(0, 0), "auto", "size not known yet");
        assert_eq!(decode_threads(-1, 480), "auto");
        assert_eq!(decode_threads(i32::MAX, i32::MAX), "auto");
    }

    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            Message::Geometry {
                output: 3,
                width: 1920,
                height: 1080,
                layout: Layout::Yuv420p,
                colorspace: 1,
                range: 1,
                buffers: 3,
                fps_milli: 29_970,
                pool: Some(PoolLayout {
                    slots: 20,
                    slot_bytes: 3_200_000,
                    offsets: [0, 2_100_000, 2_700_000],
                    strides: [1984, 1024, 1024],
                }),
            },
            Message::Frame {
                output: 1,
                place: Place::Pool(19),
                pts_ns: Some(-5),
            },
            Message::Frame {
                output: 0,
                place: Place::Staging(0),
                pts_ns: None,
            },
        ] {
            assert_eq!(Message::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn bad_messages_are_refused() {
        let mut b = Message::Geometry {
            output: 0,
            width: 2,
            height: 2,
            layout: Layout::Nv12,
            colorspace: 2,
            range: 0,
            buffers: 2,
            fps_milli: 0,
            pool: None,
        }
        .encode();
        b[24] = 0; // no buffers
        assert!(Message::decode(&b).unwrap_err().contains("buffer count"));
        b[24] = 2;
        b[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert!(Message::decode(&b).unwrap_err().contains("frame size"));
        b[4..8].copy_from_slice(&2u32.to_le_bytes());
        b[28] = MAX_OUTPUTS as u8;
        assert!(Message::decode(&b).unwrap_err().contains("bad output"));
        b[0] = 0;
        assert!(Message::decode(&b).unwrap_err().contains("tag"));
    }

    #[test]
    fn acks_carry_output_and_place() {
        for output in 0..MAX_OUTPUTS {
            for place in (0..MAX_BUFFERS)
                .map(Place::Staging)
                .chain((0..MAX_POOL_SLOTS).map(Place::Pool))
            {
                let a = Ack { output, place };
                assert_eq!(Ack::decode(a.encode()), a);
            }
        }
    }

    #[test]
    fn a_bad_pool_is_refused() {
        let mut b = Message::Geometry {
            output: 0,
            width: 2,
            height: 2,
            layout: Layout::Yuv420p,
            colorspace: 2,
            range: 0,
            buffers: 2,
            fps_milli: 0,
            pool: Some(PoolLayout {
                slots: MAX_POOL_SLOTS + 1,
                slot_bytes: 4096,
                offsets: [0; 3],
                strides: [64; 3],
            }),
        }
        .encode();
        assert!(Message::decode(&b).unwrap_err().contains("frame pool"));
        b[40] = 2;
        b[48..56].copy_from_slice(&0u64.to_le_bytes());
        assert!(Message::decode(&b).unwrap_err().contains("frame pool"));
    }

    #[test]
    fn frame_bytes_match_the_packed_layout() {
        assert_eq!(Layout::Yuv420p.frame_bytes(1920, 1080), Some(3_110_400));
        assert_eq!(Layout::Nv12.frame_bytes(3, 3), Some(9 + 2 * 4));
        assert_eq!(Layout::Yuv420p.frame_bytes(u32::MAX, u32::MAX), None);
    }
}
