//! A small, strict reader of the NUT container as ffmpeg writes it for one
//! raw video stream (`-f nut -c:v rawvideo`): each frame's payload and pts.
//!
//! Why NUT: it carries every frame's pts in a header of a few bytes right in
//! front of the frame, so the broker knows each frame's stream time without a
//! log line per frame, and each frame's size, so a change of resolution is an
//! error instead of a misframed pipe. The payload is read straight into the
//! caller's buffer (the slot, or a scratch frame): no copy is added.
//!
//! Only what ffmpeg's muxer writes for this case is accepted, and everything is
//! checked: the file id, the main and stream headers and their CRCs, exactly
//! one video stream, every frame header's CRC when it carries one (ffmpeg puts
//! one on frames over 64 KiB, twice its `max_distance`; the payload itself has
//! none), and each
//! frame's size against the size the caller expects (before a byte of it is
//! read). Nothing is allocated from a size read off the pipe except header
//! packets, which are bounded by [`MAX_HEADER_PACKET`]. Info and index packets
//! are skipped (their CRC checked while streaming through them).
//!
//! Syntax, after the 25-byte file id: packets that start with an 8-byte
//! startcode (first byte `N`) — `startcode u64, forward_ptr v, [header_crc u32
//! if forward_ptr > 4096], body, crc u32` — and frames, which start with a
//! frame-code byte indexing a table from the main header. `v` is an unsigned
//! big-endian base-128 varint, `s` a signed one, CRCs are CRC-32 with the
//! polynomial 0x04C11DB7, MSB first, initial value 0, stored big-endian.

use std::io::{BufReader, Read};

/// The file id every NUT stream starts with.
pub const FILE_ID: &[u8; 25] = b"nut/multimedia container\0";
/// The biggest main, stream or syncpoint packet we read into memory.
pub const MAX_HEADER_PACKET: u64 = 64 * 1024;

const MAIN_STARTCODE: u64 = 0x4E4D_7A56_1F5F_04AD;
const STREAM_STARTCODE: u64 = 0x4E53_1140_5BF2_F9DB;
const SYNCPOINT_STARTCODE: u64 = 0x4E4B_E4AD_EECA_4569;
const INFO_STARTCODE: u64 = 0x4E49_AB68_B596_BA78;
const INDEX_STARTCODE: u64 = 0x4E58_DD67_2F23_E64E;

const FLAG_CODED_PTS: u64 = 0x8;
const FLAG_STREAM_ID: u64 = 0x10;
const FLAG_SIZE_MSB: u64 = 0x20;
const FLAG_CHECKSUM: u64 = 0x40;
const FLAG_RESERVED: u64 = 0x80;
const FLAG_SM_DATA: u64 = 0x100;
const FLAG_HEADER_IDX: u64 = 0x400;
const FLAG_MATCH_TIME: u64 = 0x800;
const FLAG_CODED: u64 = 0x1000;
const FLAG_INVALID: u64 = 0x2000;

/// What is wrong with the bytes, and where (byte offset from the start).
#[derive(Debug, thiserror::Error)]
pub enum NutError {
    #[error("reading the NUT stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("NUT stream ends inside {what} (byte {offset})")]
    Truncated { what: &'static str, offset: u64 },
    #[error("not a NUT stream: the file id is missing")]
    NotNut,
    #[error("NUT {what} checksum mismatch at byte {offset}: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        what: &'static str,
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error("invalid NUT {what} at byte {offset}")]
    Invalid { what: String, offset: u64 },
    #[error("NUT frame at byte {offset} has {size} bytes, {expected} expected")]
    FrameSize {
        offset: u64,
        size: u64,
        expected: usize,
    },
}

/// The one video stream, from the stream header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// ffmpeg's codec tag for the raw format: `I420`, `NV12`, `BGR\x18`, ...
    pub fourcc: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// Seconds per pts tick: `num / den`.
    pub time_base: (u64, u64),
}

impl StreamInfo {
    /// A pts in nanoseconds (saturating).
    pub fn pts_ns(&self, pts: i64) -> i64 {
        let (num, den) = self.time_base;
        let ns = i128::from(pts) * i128::from(num) * 1_000_000_000 / i128::from(den);
        ns.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct FrameCode {
    flags: u64,
    pts_delta: i64,
    size_mul: u64,
    size_lsb: u64,
    reserved: u64,
    header_idx: u64,
}

/// The CRC NUT uses (`ff_crc04C11DB7_update`).
fn crc_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = (crc << 8) ^ CRC_TABLE[((crc >> 24) as u8 ^ b) as usize];
    }
    crc
}

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut k = 0;
        while k < 8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x04C1_1DB7
            } else {
                c << 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// Reads a parsed packet body (a bounded byte slice) field by field.
struct Body<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Offset of `bytes[0]` in the stream, for errors.
    offset: u64,
    what: &'static str,
}

impl Body<'_> {
    fn invalid(&self, field: &str) -> NutError {
        NutError::Invalid {
            what: format!("{} ({field})", self.what),
            offset: self.offset + self.pos as u64,
        }
    }
    fn u8(&mut self) -> Result<u8, NutError> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| self.invalid("too short"))?;
        self.pos += 1;
        Ok(b)
    }
    fn v(&mut self) -> Result<u64, NutError> {
        let mut x = 0u64;
        for _ in 0..10 {
            let b = self.u8()?;
            if x >> 57 != 0 {
                return Err(self.invalid("varint overflows 64 bits"));
            }
            x = (x << 7) | u64::from(b & 0x7F);
            if b & 0x80 == 0 {
                return Ok(x);
            }
        }
        Err(self.invalid("varint longer than 10 bytes"))
    }
    fn s(&mut self) -> Result<i64, NutError> {
        let x = self.v()?.wrapping_add(1);
        let m = (x >> 1) as i64;
        Ok(if x & 1 != 0 { m.wrapping_neg() } else { m })
    }
    fn bytes(&mut self, n: u64) -> Result<&[u8], NutError> {
        let n = usize::try_from(n).map_err(|_| self.invalid("length"))?;
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| self.invalid("length beyond the packet"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

/// A frame's header, read up to its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// In [`StreamInfo::time_base`] units.
    pub pts: i64,
    /// Payload bytes that follow.
    pub size: u64,
}

/// Reads frames from ffmpeg's NUT output of one raw video stream.
pub struct NutReader<R: Read> {
    r: BufReader<R>,
    /// Bytes consumed so far.
    pos: u64,
    codes: [FrameCode; 256],
    /// Lengths of the elision headers; index 0 is the empty one.
    header_len: Vec<u64>,
    stream: StreamInfo,
    time_base_id: u64,
    time_base_count: u64,
    msb_pts_shift: u32,
    last_pts: i64,
    /// Payload bytes of the frame whose header was read and payload not yet.
    pending: Option<u64>,
    /// The largest frame [`next_frame`](Self::next_frame) accepts.
    max_frame: u64,
}

impl<R: Read> NutReader<R> {
    /// Reads the file id, the main header and the stream header. Frames bigger
    /// than `max_frame` bytes are refused (the caller knows its geometry).
    pub fn new(inner: R, max_frame: u64) -> Result<Self, NutError> {
        let mut me = NutReader {
            r: BufReader::with_capacity(64 * 1024, inner),
            pos: 0,
            codes: [FrameCode::default(); 256],
            header_len: vec![0],
            stream: StreamInfo {
                fourcc: Vec::new(),
                width: 0,
                height: 0,
                time_base: (1, 1),
            },
            time_base_id: 0,
            time_base_count: 0,
            msb_pts_shift: 0,
            last_pts: 0,
            pending: None,
            max_frame,
        };
        let mut id = [0u8; 25];
        match me.read_exact(&mut id, "the file id") {
            Ok(()) if &id == FILE_ID => {}
            Ok(()) | Err(NutError::Truncated { .. }) => return Err(NutError::NotNut),
            Err(e) => return Err(e),
        }
        let time_bases = me.main_header()?;
        me.stream_header(&time_bases)?;
        Ok(me)
    }

    /// The stream, from its header.
    pub fn stream(&self) -> &StreamInfo {
        &self.stream
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), NutError> {
        let mut done = 0;
        while done < buf.len() {
            match self.r.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(NutError::Truncated {
                        what,
                        offset: self.pos + done as u64,
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// One byte, or `None` at a clean end of the stream.
    fn byte_or_eof(&mut self) -> Result<Option<u8>, NutError> {
        let mut b = [0u8; 1];
        loop {
            match self.r.read(&mut b) {
                Ok(0) => return Ok(None),
                Ok(_) => {
                    self.pos += 1;
                    return Ok(Some(b[0]));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn u8(&mut self, what: &'static str, crc: &mut u32) -> Result<u8, NutError> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b, what)?;
        *crc = crc_update(*crc, &b);
        Ok(b[0])
    }

    /// A varint straight from the stream (frame and packet headers).
    fn v(&mut self, what: &'static str, crc: &mut u32) -> Result<u64, NutError> {
        let start = self.pos;
        let mut x = 0u64;
        for _ in 0..10 {
            let b = self.u8(what, crc)?;
            if x >> 57 != 0 {
                break;
            }
            x = (x << 7) | u64::from(b & 0x7F);
            if b & 0x80 == 0 {
                return Ok(x);
            }
        }
        Err(NutError::Invalid {
            what: format!("varint in {what}"),
            offset: start,
        })
    }

    fn u32_be(&mut self, what: &'static str) -> Result<u32, NutError> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b, what)?;
        Ok(u32::from_be_bytes(b))
    }

    /// After the startcode: forward_ptr and the header checksum. Returns the
    /// body's length (without the final CRC).
    fn packet_header(&mut self, startcode: u64, what: &'static str) -> Result<u64, NutError> {
        let mut crc = crc_update(0, &startcode.to_be_bytes());
        let at = self.pos;
        let forward = self.v(what, &mut crc)?;
        if forward > 4096 {
            let stored = self.u32_be(what)?;
            if stored != crc {
                return Err(NutError::Checksum {
                    what: "packet header",
                    offset: at,
                    stored,
                    computed: crc,
                });
            }
        }
        forward.checked_sub(4).ok_or(NutError::Invalid {
            what: format!("{what} (forward pointer {forward} < 4)"),
            offset: at,
        })
    }

    /// The body of a header packet, its CRC checked.
    fn packet_body(&mut self, len: u64, what: &'static str) -> Result<(Vec<u8>, u64), NutError> {
        let at = self.pos;
        if len > MAX_HEADER_PACKET {
            return Err(NutError::Invalid {
                what: format!("{what} ({len} bytes, at most {MAX_HEADER_PACKET})"),
                offset: at,
            });
        }
        let mut body = vec![0u8; len as usize];
        self.read_exact(&mut body, what)?;
        self.check_crc(crc_update(0, &body), what)?;
        Ok((body, at))
    }

    fn check_crc(&mut self, computed: u32, what: &'static str) -> Result<(), NutError> {
        let at = self.pos;
        let stored = self.u32_be(what)?;
        if stored != computed {
            return Err(NutError::Checksum {
                what,
                offset: at,
                stored,
                computed,
            });
        }
        Ok(())
    }

    /// Skips a packet we do not need (info, index), its CRC checked on the way.
    fn skip_packet(&mut self, len: u64, what: &'static str) -> Result<(), NutError> {
        let mut crc = 0;
        let mut left = len;
        let mut buf = [0u8; 4096];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.read_exact(&mut buf[..n], what)?;
            crc = crc_update(crc, &buf[..n]);
            left -= n as u64;
        }
        self.check_crc(crc, what)
    }

    fn startcode(&mut self, first: u8) -> Result<u64, NutError> {
        let mut rest = [0u8; 7];
        self.read_exact(&mut rest, "a startcode")?;
        let mut b = [first; 8];
        b[1..].copy_from_slice(&rest);
        Ok(u64::from_be_bytes(b))
    }

    fn expect_packet(&mut self, code: u64, what: &'static str) -> Result<(Vec<u8>, u64), NutError> {
        let at = self.pos;
        let mut first = [0u8; 1];
        self.read_exact(&mut first, what)?;
        let got = self.startcode(first[0])?;
        if got != code {
            return Err(NutError::Invalid {
                what: format!("startcode {got:#018x}, {what} expected"),
                offset: at,
            });
        }
        let len = self.packet_header(code, what)?;
        self.packet_body(len, what)
    }

    fn main_header(&mut self) -> Result<Vec<(u64, u64)>, NutError> {
        let (bytes, offset) = self.expect_packet(MAIN_STARTCODE, "main header")?;
        let mut b = Body {
            bytes: &bytes,
            pos: 0,
            offset,
            what: "main header",
        };
        let version = b.v()?;
        if !(3..=4).contains(&version) {
            return Err(b.invalid("version"));
        }
        if version > 3 {
            b.v()?;
        }
        if b.v()? != 1 {
            return Err(b.invalid("stream count: one stream expected"));
        }
        b.v()?; // max_distance
        let tb_count = b.v()?;
        if tb_count == 0 || tb_count > 64 {
            return Err(b.invalid("time base count"));
        }
        let mut time_bases = Vec::new();
        for _ in 0..tb_count {
            let (num, den) = (b.v()?, b.v()?);
            if num == 0 || den == 0 || num > u64::from(u32::MAX) || den > u64::from(u32::MAX) {
                return Err(b.invalid("time base"));
            }
            time_bases.push((num, den));
        }
        self.time_base_count = tb_count;
        // The frame-code table, in runs; pts, mul, stream and header index carry
        // over from run to run, size and reserved count do not.
        let (mut pts, mut mul, mut stream, mut hidx) = (0i64, 1u64, 0u64, 0u64);
        let mut i = 0usize;
        while i < 256 {
            let flags = b.v()?;
            let fields = b.v()?;
            if fields > 0 {
                pts = b.s()?;
            }
            if fields > 1 {
                mul = b.v()?;
            }
            if fields > 2 {
                stream = b.v()?;
            }
            let size = if fields > 3 { b.v()? } else { 0 };
            let reserved = if fields > 4 { b.v()? } else { 0 };
            let count = if fields > 5 {
                b.v()?
            } else {
                mul.checked_sub(size)
                    .ok_or_else(|| b.invalid("frame code size"))?
            };
            if fields > 6 {
                b.s()?;
            }
            if fields > 7 {
                hidx = b.v()?;
            }
            for _ in 8..fields.min(64) {
                b.v()?;
            }
            if fields > 64 {
                return Err(b.invalid("frame code fields"));
            }
            let room = 256 - i - usize::from(i <= usize::from(b'N'));
            if count == 0 || count > room as u64 || stream != 0 {
                return Err(b.invalid("frame code run"));
            }
            let mut j = 0;
            while j < count {
                if i == usize::from(b'N') {
                    self.codes[i].flags = FLAG_INVALID;
                    i += 1;
                    continue;
                }
                self.codes[i] = FrameCode {
                    flags,
                    pts_delta: pts,
                    size_mul: mul,
                    size_lsb: size + j,
                    reserved,
                    header_idx: hidx,
                };
                i += 1;
                j += 1;
            }
        }
        // Elision headers, if any (ffmpeg writes none for rawvideo).
        if bytes.len() > b.pos + 4 {
            let count = b.v()? + 1;
            if count > 128 {
                return Err(b.invalid("header count"));
            }
            for _ in 1..count {
                let len = b.v()?;
                if len == 0 || len > 255 {
                    return Err(b.invalid("elision header"));
                }
                b.bytes(len)?;
                self.header_len.push(len);
            }
        }
        Ok(time_bases)
    }

    fn stream_header(&mut self, time_bases: &[(u64, u64)]) -> Result<(), NutError> {
        let (bytes, offset) = self.expect_packet(STREAM_STARTCODE, "stream header")?;
        let mut b = Body {
            bytes: &bytes,
            pos: 0,
            offset,
            what: "stream header",
        };
        if b.v()? != 0 {
            return Err(b.invalid("stream id"));
        }
        if b.v()? != 0 {
            return Err(b.invalid("class: video expected"));
        }
        let len = b.v()?;
        if !(2..=4).contains(&len) {
            return Err(b.invalid("fourcc length"));
        }
        let fourcc = b.bytes(len)?.to_vec();
        let tb_id = b.v()?;
        let tb = *time_bases
            .get(tb_id as usize)
            .ok_or_else(|| b.invalid("time base id"))?;
        self.time_base_id = tb_id;
        let msb = b.v()?;
        if msb >= 16 {
            return Err(b.invalid("msb_pts_shift"));
        }
        b.v()?; // max_pts_distance
        if b.v()? >= 1000 {
            return Err(b.invalid("decode delay"));
        }
        b.v()?; // stream flags
        let extradata = b.v()?;
        b.bytes(extradata)?;
        let (width, height) = (b.v()?, b.v()?);
        if width == 0 || height == 0 || width > u64::from(u32::MAX) || height > u64::from(u32::MAX)
        {
            return Err(b.invalid("size"));
        }
        self.msb_pts_shift = msb as u32;
        self.stream = StreamInfo {
            fourcc,
            width: width as u32,
            height: height as u32,
            time_base: tb,
        };
        Ok(())
    }

    /// Reads up to the next frame's payload: its pts and size. Returns `None`
    /// at the clean end of the stream (after the index, or between packets).
    /// The payload must then be read with [`read_payload`](Self::read_payload).
    pub fn next_frame(&mut self) -> Result<Option<FrameHeader>, NutError> {
        if let Some(left) = self.pending {
            return Err(NutError::Invalid {
                what: format!("use: {left} payload bytes of the last frame not read"),
                offset: self.pos,
            });
        }
        loop {
            let at = self.pos;
            let Some(first) = self.byte_or_eof()? else {
                return Ok(None);
            };
            if first == b'N' {
                let code = self.startcode(first)?;
                match code {
                    SYNCPOINT_STARTCODE => {
                        let len = self.packet_header(code, "syncpoint")?;
                        let (bytes, offset) = self.packet_body(len, "syncpoint")?;
                        let mut b = Body {
                            bytes: &bytes,
                            pos: 0,
                            offset,
                            what: "syncpoint",
                        };
                        let global = b.v()?;
                        if global % self.time_base_count != self.time_base_id {
                            return Err(b.invalid("time base of the key pts"));
                        }
                        self.last_pts = i64::try_from(global / self.time_base_count)
                            .map_err(|_| b.invalid("key pts"))?;
                    }
                    INFO_STARTCODE | INDEX_STARTCODE => {
                        let what = if code == INFO_STARTCODE {
                            "info packet"
                        } else {
                            "index"
                        };
                        let len = self.packet_header(code, what)?;
                        self.skip_packet(len, what)?;
                    }
                    _ => {
                        return Err(NutError::Invalid {
                            what: format!("startcode {code:#018x}"),
                            offset: at,
                        })
                    }
                }
                continue;
            }
            return self.frame_header(first, at).map(Some);
        }
    }

    fn frame_header(&mut self, code: u8, at: u64) -> Result<FrameHeader, NutError> {
        let what = "frame header";
        let fc = self.codes[code as usize];
        let mut crc = crc_update(0, &[code]);
        let invalid = |why: &str| NutError::Invalid {
            what: format!("{what} ({why})"),
            offset: at,
        };
        let mut flags = fc.flags;
        if flags & FLAG_INVALID != 0 {
            return Err(invalid(&format!("frame code {code:#04x} is invalid")));
        }
        if flags & FLAG_CODED != 0 {
            flags ^= self.v(what, &mut crc)?;
        }
        if flags & FLAG_STREAM_ID != 0 && self.v(what, &mut crc)? != 0 {
            return Err(invalid("stream id"));
        }
        let pts = if flags & FLAG_CODED_PTS != 0 {
            let c = self.v(what, &mut crc)?;
            let top = 1u64 << self.msb_pts_shift;
            if c < top {
                let mask = (top - 1) as i64;
                let delta = self.last_pts.wrapping_sub(mask / 2);
                ((c as i64).wrapping_sub(delta) & mask).wrapping_add(delta)
            } else {
                i64::try_from(c - top).map_err(|_| invalid("pts"))?
            }
        } else {
            self.last_pts.wrapping_add(fc.pts_delta)
        };
        let mut size = fc.size_lsb;
        if flags & FLAG_SIZE_MSB != 0 {
            let msb = self.v(what, &mut crc)?;
            size = msb
                .checked_mul(fc.size_mul)
                .and_then(|m| m.checked_add(size))
                .ok_or_else(|| invalid("size"))?;
        }
        if flags & FLAG_MATCH_TIME != 0 {
            self.v(what, &mut crc)?;
        }
        let mut hidx = fc.header_idx;
        if flags & FLAG_HEADER_IDX != 0 {
            hidx = self.v(what, &mut crc)?;
        }
        let mut reserved = fc.reserved;
        if flags & FLAG_RESERVED != 0 {
            reserved = self.v(what, &mut crc)?;
        }
        if reserved > 256 {
            return Err(invalid("reserved count"));
        }
        for _ in 0..reserved {
            self.v(what, &mut crc)?;
        }
        if size > 4096 {
            hidx = 0;
        }
        let elided = *self
            .header_len
            .get(hidx as usize)
            .ok_or_else(|| invalid("header index"))?;
        if elided != 0 {
            return Err(invalid("elided header bytes in a raw video frame"));
        }
        if flags & FLAG_CHECKSUM != 0 {
            self.check_crc(crc, what)?;
        }
        if flags & FLAG_SM_DATA != 0 {
            return Err(invalid("side data in a raw video frame"));
        }
        if size > self.max_frame {
            return Err(NutError::FrameSize {
                offset: at,
                size,
                expected: self.max_frame as usize,
            });
        }
        self.last_pts = pts;
        self.pending = Some(size);
        Ok(FrameHeader { pts, size })
    }

    /// Reads the payload of the frame [`next_frame`](Self::next_frame) returned
    /// into `dst`, which must be exactly its size.
    pub fn read_payload(&mut self, dst: &mut [u8]) -> Result<(), NutError> {
        let size = self.pending.ok_or_else(|| NutError::Invalid {
            what: "use: no frame header read".into(),
            offset: self.pos,
        })?;
        if size != dst.len() as u64 {
            return Err(NutError::FrameSize {
                offset: self.pos,
                size,
                expected: dst.len(),
            });
        }
        self.read_exact(dst, "a frame's payload")?;
        self.pending = None;
        Ok(())
    }

    /// The next frame into `dst`, which must be exactly the frame's size: its
    /// pts, or `None` at the clean end of the stream.
    pub fn read_frame(&mut self, dst: &mut [u8]) -> Result<Option<i64>, NutError> {
        match self.next_frame()? {
            None => Ok(None),
            Some(h) => {
                self.read_payload(dst)?;
                Ok(Some(h.pts))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_nut_polynomial() {
        // CRC-32/CKSUM's register before its final xor (check 0x765E7680):
        // polynomial 0x04C11DB7, MSB first, initial value 0.
        assert_eq!(crc_update(0, b""), 0);
        assert_eq!(crc_update(0, b"123456789"), 0x89A1_897F);
        // Appending the CRC big-endian gives 0, as nutdec checks headers.
        let c = crc_update(0, b"abc");
        assert_eq!(crc_update(c, &c.to_be_bytes()), 0);
    }

    #[test]
    fn signed_varints() {
        for (bytes, want) in [
            (&[0u8][..], 0i64),
            (&[1], 1),
            (&[2], -1),
            (&[3], 2),
            (&[0x81, 0x00], -64),
        ] {
            let mut b = Body {
                bytes,
                pos: 0,
                offset: 0,
                what: "test",
            };
            assert_eq!(b.s().unwrap(), want, "{bytes:?}");
        }
    }
}
