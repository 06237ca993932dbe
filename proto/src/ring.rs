//! The ring: one writer publishing frames into slots, any number of readers taking
//! the newest frame ([`RingReader::latest`]) or every frame in order
//! ([`RingReader::next`]), over any [`Region`] of memory: a shared-memory mapping
//! in production ([`crate::shm`]), a heap buffer in tests ([`HeapRegion`]).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::layout::{
    self, Geometry, Header, PixelFormat, SlotHeader, StreamState, FLAG_CHECKSUM, HEADER_PAGE,
    LAYOUT_VERSION, MAGIC, MAX_ID_LEN, MAX_SLOTS, MIN_SLOTS,
};
use crate::seqlock;
use crate::sync;
use crate::Error;

/// A block of memory a ring lives in.
///
/// # Safety
/// Implementors promise that `as_ptr()` is aligned to 64 bytes, valid for reads of
/// `len()` bytes for as long as the value lives, and never moves.
pub unsafe trait Region {
    fn as_ptr(&self) -> *const u8;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sleeps while the header's wake word `word` is `expected`, at most `timeout`
    /// (spurious returns allowed). The futex (or the portable sleep) by default; a
    /// region with wake events of its own (Windows) waits on those.
    fn wait_wake(&self, word: &AtomicU32, expected: u32, timeout: Duration) {
        sync::wait(word, expected, timeout)
    }
}

/// A [`Region`] the writer may write to.
///
/// # Safety
/// As [`Region`], and `as_mut_ptr()` (the same address) is valid for writes.
pub unsafe trait RegionMut: Region {
    fn as_mut_ptr(&self) -> *mut u8;
    /// Bumps the wake word `word` and wakes its waiters: once per frame and per
    /// state change. The futex by default; Windows regions set their events.
    fn bump_wake(&self, word: &AtomicU32) {
        sync::bump_and_wake(word)
    }
}

/// A ring in ordinary memory, shared between threads of one process: the
/// in-process backend used by unit tests, loom-free property tests and miri.
pub struct HeapRegion {
    words: Box<[AtomicU64]>,
}

impl HeapRegion {
    pub fn new(len: usize) -> Self {
        // AtomicU64 makes the memory interior-mutable (we write through a shared
        // reference) and 8-aligned; we over-allocate to align the start to 64.
        let words = (0..len.div_ceil(8) + 8)
            .map(|_| AtomicU64::new(0))
            .collect();
        HeapRegion { words }
    }

    fn offset(&self) -> usize {
        let base = self.words.as_ptr() as usize;
        base.next_multiple_of(64) - base
    }
}

// SAFETY: the boxed slice never moves while `self` lives; we hand out the first
// 64-aligned address inside it, and `len()` leaves room for that shift.
unsafe impl Region for HeapRegion {
    fn as_ptr(&self) -> *const u8 {
        // SAFETY: `offset()` < 64 bytes and the allocation has 64 spare bytes.
        unsafe { self.words.as_ptr().cast::<u8>().add(self.offset()) }
    }
    fn len(&self) -> usize {
        self.words.len() * 8 - 64
    }
}

// SAFETY: the words are atomics (UnsafeCell), so writing through a pointer derived
// from a shared reference is allowed; same address as `as_ptr`.
unsafe impl RegionMut for HeapRegion {
    fn as_mut_ptr(&self) -> *mut u8 {
        self.as_ptr().cast_mut()
    }
}

// SAFETY: forwards to `R`, whose guarantees hold for as long as the borrow.
unsafe impl<R: Region + ?Sized> Region for &R {
    fn as_ptr(&self) -> *const u8 {
        (**self).as_ptr()
    }
    fn len(&self) -> usize {
        (**self).len()
    }
    fn wait_wake(&self, word: &AtomicU32, expected: u32, timeout: Duration) {
        (**self).wait_wake(word, expected, timeout)
    }
}

// SAFETY: forwards to `R`, whose guarantees hold for as long as the borrow.
unsafe impl<R: RegionMut + ?Sized> RegionMut for &R {
    fn as_mut_ptr(&self) -> *mut u8 {
        (**self).as_mut_ptr()
    }
    fn bump_wake(&self, word: &AtomicU32) {
        (**self).bump_wake(word)
    }
}

// SAFETY: forwards to `R`; the Arc keeps it alive and in place.
unsafe impl<R: Region + ?Sized> Region for std::sync::Arc<R> {
    fn as_ptr(&self) -> *const u8 {
        (**self).as_ptr()
    }
    fn len(&self) -> usize {
        (**self).len()
    }
    fn wait_wake(&self, word: &AtomicU32, expected: u32, timeout: Duration) {
        (**self).wait_wake(word, expected, timeout)
    }
}

// SAFETY: forwards to `R`; the Arc keeps it alive and in place.
unsafe impl<R: RegionMut + ?Sized> RegionMut for std::sync::Arc<R> {
    fn as_mut_ptr(&self) -> *mut u8 {
        (**self).as_mut_ptr()
    }
    fn bump_wake(&self, word: &AtomicU32) {
        (**self).bump_wake(word)
    }
}

/// What a ring is created with.
#[derive(Clone, Debug)]
pub struct RingConfig {
    pub stream_id: String,
    pub geometry: Geometry,
    pub slot_count: u32,
    pub generation: u64,
    /// Store a CRC-32 of every payload in its slot (costs a pass over each frame).
    pub checksum: bool,
    pub writer_pid: u32,
}

impl RingConfig {
    /// Bytes the ring needs; also validates geometry, id length and slot count.
    pub fn segment_size(&self) -> Result<u64, Error> {
        let frame_bytes = self.geometry.validate()?;
        if !(MIN_SLOTS..=MAX_SLOTS).contains(&self.slot_count) {
            return Err(Error::InvalidSlots {
                slots: self.slot_count,
            });
        }
        if self.stream_id.len() > MAX_ID_LEN {
            return Err(Error::InvalidId {
                id: self.stream_id.chars().take(80).collect(),
                reason: format!("longer than {MAX_ID_LEN} bytes"),
            });
        }
        layout::segment_size(frame_bytes, self.slot_count).ok_or(Error::InvalidGeometry {
            geometry: self.geometry,
            reason: "segment size overflows".into(),
        })
    }
}

/// Metadata of one frame, as a reader received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameMeta {
    /// Frame number in this segment, counting from 1.
    pub number: u64,
    /// Capture time, ns since the Unix epoch.
    pub wall_ns: u64,
    /// Capture time, CLOCK_MONOTONIC ns.
    pub mono_ns: u64,
    /// Payload bytes.
    pub len: u64,
    /// Frames between the previous one this reader returned and this one that it
    /// never saw (overwritten in sequential mode, skipped on purpose in latest mode).
    pub missed: u64,
    /// CRC-32 of the payload (when the segment has checksums, else 0).
    pub checksum: u32,
    /// When the stream's own clock says the frame was captured, if ffmpeg reported it.
    pub stream_time: Option<StreamTime>,
}

/// A frame's time on the stream's own clock (see `proto/doc/layout.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamTime {
    /// Presentation time, ns on the stream's clock.
    pub pts_ns: i64,
    /// That time mapped onto the wall clock, ns since the Unix epoch (never 0).
    pub wall_ns: u64,
}

impl StreamTime {
    fn load(slot: &SlotHeader) -> Option<Self> {
        let wall_ns = slot.stream_ns.load(Ordering::Relaxed);
        let pts_ns = slot.pts_ns.load(Ordering::Relaxed);
        (wall_ns != 0 && pts_ns != layout::PTS_UNKNOWN).then_some(StreamTime { pts_ns, wall_ns })
    }
}

fn header<R: Region + ?Sized>(mem: &R) -> &Header {
    // SAFETY: the region is at least HEADER_PAGE long (checked at construction),
    // 64-aligned, and lives as long as the returned borrow; Header is repr(C) with
    // only integer/atomic fields, so any bit pattern is a valid value.
    unsafe { &*mem.as_ptr().cast::<Header>() }
}

/// Pointer to slot `index` (its header); payload at `+SLOT_HEADER`.
fn slot_ptr<R: Region + ?Sized>(mem: &R, stride: u64, index: u64) -> *const u8 {
    let off = HEADER_PAGE as u64 + stride * index;
    debug_assert!(off + stride <= mem.len() as u64);
    // SAFETY: `index` < slot_count and the region was checked to hold
    // HEADER_PAGE + slot_count * stride bytes, so the offset stays inside it.
    unsafe { mem.as_ptr().add(off as usize) }
}

fn slot_header<R: Region + ?Sized>(mem: &R, stride: u64, index: u64) -> &SlotHeader {
    // SAFETY: `slot_ptr` is inside the region, 64-aligned (HEADER_PAGE and the stride
    // are multiples of 64) and SlotHeader is all atomics and padding.
    unsafe { &*slot_ptr(mem, stride, index).cast::<SlotHeader>() }
}

/// CLOCK_MONOTONIC in ns: the clock every process on the host shares.
pub fn monotonic_ns() -> u64 {
    #[cfg(all(windows, not(miri)))]
    {
        crate::win32::monotonic_ns()
    }
    #[cfg(all(unix, not(miri)))]
    {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0)
    }
    #[cfg(any(not(any(unix, windows)), miri))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// Wall clock in ns since the Unix epoch.
pub fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The single writer of a ring.
pub struct RingWriter<R: RegionMut> {
    mem: R,
    stride: u64,
    slots: u64,
    frame_bytes: u64,
    checksum: bool,
    next_frame: u64,
}

impl<R: RegionMut> RingWriter<R> {
    /// Fills in the header of a fresh (zeroed) region and publishes it: every field
    /// first, the magic last with Release.
    pub fn create(mem: R, config: &RingConfig) -> Result<Self, Error> {
        let size = config.segment_size()?;
        if (mem.len() as u64) < size {
            return Err(Error::SegmentTooSmall {
                expected: size,
                actual: mem.len() as u64,
            });
        }
        let frame_bytes = config.geometry.frame_bytes();
        let stride = layout::slot_stride(frame_bytes);
        let h = mem.as_mut_ptr().cast::<Header>();
        // SAFETY: the region is ours alone until the magic is published (nobody opens a
        // segment without a valid magic), it is large enough and 64-aligned; we write
        // the plain fields through the raw pointer without creating references.
        unsafe {
            (*h).layout_version = LAYOUT_VERSION;
            (*h).header_size = HEADER_PAGE as u32;
            (*h).width = config.geometry.width;
            (*h).height = config.geometry.height;
            (*h).pixel_format = config.geometry.pixel_format as u32;
            (*h).slot_count = config.slot_count;
            (*h).frame_bytes = frame_bytes;
            (*h).slot_stride = stride;
            (*h).slots_offset = HEADER_PAGE as u64;
            (*h).segment_size = size;
            (*h).generation = config.generation;
            (*h).writer_pid = config.writer_pid;
            (*h).flags = if config.checksum { FLAG_CHECKSUM } else { 0 };
            (*h).created_wall_ns = wall_ns();
            (*h).stream_id_len = config.stream_id.len() as u32;
            let id = config.stream_id.as_bytes();
            std::ptr::copy_nonoverlapping(id.as_ptr(), (*h).stream_id.as_mut_ptr(), id.len());
        }
        let w = RingWriter {
            mem,
            stride,
            slots: u64::from(config.slot_count),
            frame_bytes,
            checksum: config.checksum,
            next_frame: 1,
        };
        let hdr = w.header();
        hdr.state
            .store(StreamState::Starting as u32, Ordering::Relaxed);
        hdr.heartbeat_ns.store(monotonic_ns(), Ordering::Relaxed);
        // SYNC: pairs with the Acquire load of the magic in `RingReader::open`: a reader
        // that sees the magic sees every header field stored above.
        hdr.magic.store(MAGIC, Ordering::Release);
        Ok(w)
    }

    pub fn header(&self) -> &Header {
        header(&self.mem)
    }

    pub fn frame_bytes(&self) -> usize {
        self.frame_bytes as usize
    }

    pub fn region(&self) -> &R {
        &self.mem
    }

    /// Opens the next slot for writing: its sequence goes odd and stays odd until
    /// [`FrameGuard::commit`]. Dropping the guard without commit abandons the slot
    /// (it is marked empty, readers skip it).
    pub fn begin_frame(&mut self) -> FrameGuard<'_, R> {
        let index = self.next_frame % self.slots;
        let slot = slot_header(&self.mem, self.stride, index);
        let odd = seqlock::write_begin(&slot.seq);
        slot.frame.store(0, Ordering::Relaxed);
        FrameGuard {
            writer: self,
            index,
            odd,
            committed: false,
        }
    }

    /// Copies `data` (exactly one frame) into the next slot and publishes it.
    pub fn publish(&mut self, data: &[u8], wall_ns: u64, mono_ns: u64) -> Result<u64, Error> {
        if data.len() as u64 != self.frame_bytes {
            return Err(Error::FrameSize {
                expected: self.frame_bytes,
                actual: data.len() as u64,
            });
        }
        let mut g = self.begin_frame();
        g.payload_mut().copy_from_slice(data);
        Ok(g.commit(wall_ns, mono_ns))
    }

    /// The live header fields, for use from another thread.
    pub fn status(&self) -> RingStatus<&R> {
        RingStatus { mem: &self.mem }
    }
}

/// The writer's view of a ring's live header fields, for a thread other than the
/// one that owns the [`RingWriter`] (the broker's heartbeat and stall monitor).
pub struct RingStatus<R: RegionMut> {
    mem: R,
}

impl<R: RegionMut> RingStatus<R> {
    /// Wraps a region a [`RingWriter`] has published (checks the magic).
    pub fn new(mem: R) -> Result<Self, Error> {
        if mem.len() < HEADER_PAGE {
            return Err(Error::SegmentTooSmall {
                expected: HEADER_PAGE as u64,
                actual: mem.len() as u64,
            });
        }
        let magic = header(&mem).magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        Ok(RingStatus { mem })
    }

    fn header(&self) -> &Header {
        header(&self.mem)
    }

    /// Sets the state; waiters are woken when it changes.
    pub fn set_state(&self, state: StreamState) {
        let h = self.header();
        if h.state.swap(state as u32, Ordering::Release) != state as u32 {
            self.mem.bump_wake(&h.wake);
        }
    }

    pub fn state(&self) -> StreamState {
        StreamState::from_u32(self.header().state.load(Ordering::Relaxed))
            .unwrap_or(StreamState::Failed)
    }

    /// Refreshes the heartbeat: readers take a stale one for a dead broker.
    pub fn heartbeat(&self) {
        self.header()
            .heartbeat_ns
            .store(monotonic_ns(), Ordering::Release);
    }

    pub fn set_fps(&self, fps: f64) {
        let milli = (fps * 1000.0).clamp(0.0, u32::MAX as f64) as u32;
        self.header().fps_milli.store(milli, Ordering::Relaxed);
    }

    /// Adds `n` to the header's count of dropped or damaged frames.
    pub fn count_dropped_n(&self, n: u64) {
        self.header().frames_dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub fn last_frame(&self) -> u64 {
        self.header().last_frame.load(Ordering::Acquire)
    }
}

/// A slot being written; see [`RingWriter::begin_frame`].
pub struct FrameGuard<'w, R: RegionMut> {
    writer: &'w mut RingWriter<R>,
    index: u64,
    odd: u64,
    committed: bool,
}

impl<R: RegionMut> FrameGuard<'_, R> {
    /// The slot's payload, `frame_bytes` long, for `read_exact` straight from ffmpeg.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let w = &*self.writer;
        let p = slot_ptr(&w.mem, w.stride, self.index).cast_mut();
        // SAFETY: the payload lies inside the slot (stride ≥ SLOT_HEADER + frame_bytes),
        // the region is writable (RegionMut), and we are the only writer: `&mut self`
        // on the guard borrows the RingWriter mutably. Readers in other processes may
        // read these bytes concurrently; they validate with the seqlock and never
        // write. (In-process readers only ever touch it through `seqlock::copy_racy`.)
        unsafe {
            std::slice::from_raw_parts_mut(p.add(layout::SLOT_HEADER), w.frame_bytes as usize)
        }
    }

    /// Publishes the frame: metadata, sequence even, `last_frame`, one wake.
    pub fn commit(self, wall_ns: u64, mono_ns: u64) -> u64 {
        self.commit_with(wall_ns, mono_ns, None)
    }

    /// [`commit`](Self::commit) with the frame's time on the stream's clock.
    pub fn commit_with(mut self, wall_ns: u64, mono_ns: u64, stream: Option<StreamTime>) -> u64 {
        let crc = if self.writer.checksum {
            crc32fast::hash(self.payload_mut())
        } else {
            0
        };
        let w = &mut *self.writer;
        let number = w.next_frame;
        let slot = slot_header(&w.mem, w.stride, self.index);
        slot.frame.store(number, Ordering::Relaxed);
        slot.wall_ns.store(wall_ns, Ordering::Relaxed);
        slot.mono_ns.store(mono_ns, Ordering::Relaxed);
        slot.len.store(w.frame_bytes, Ordering::Relaxed);
        slot.checksum.store(crc, Ordering::Relaxed);
        let (pts, stream_ns) = stream.map_or((layout::PTS_UNKNOWN, 0), |t| (t.pts_ns, t.wall_ns));
        slot.pts_ns.store(pts, Ordering::Relaxed);
        slot.stream_ns.store(stream_ns, Ordering::Relaxed);
        seqlock::write_end(&slot.seq, self.odd);
        let h = header(&w.mem);
        // SYNC: pairs with the Acquire load of `last_frame` by readers: seeing `number`
        // there means the slot's even sequence is visible too.
        h.last_frame.store(number, Ordering::Release);
        w.mem.bump_wake(&h.wake);
        w.next_frame += 1;
        self.committed = true;
        number
    }
}

impl<R: RegionMut> Drop for FrameGuard<'_, R> {
    fn drop(&mut self) {
        if !self.committed {
            // Abandoned (short read from ffmpeg): frame 0 marks the slot empty.
            let w = &*self.writer;
            let slot = slot_header(&w.mem, w.stride, self.index);
            slot.frame.store(0, Ordering::Relaxed);
            seqlock::write_end(&slot.seq, self.odd);
        }
    }
}

/// Geometry and identity of a ring, read from its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingInfo {
    pub stream_id: String,
    pub geometry: Geometry,
    pub slot_count: u32,
    pub frame_bytes: u64,
    pub slot_stride: u64,
    pub segment_size: u64,
    pub generation: u64,
    pub writer_pid: u32,
    pub checksum: bool,
}

/// The payload of one slot, between `read_begin` and `read_validate` in
/// [`RingReader::read_slot`]: the only two ways the ring reads bytes the writer
/// may be changing at the same moment (see `proto/doc/decisions.md`, "Racy
/// payload copy"). What is read through it may be torn, and is trusted only
/// after `read_slot` validated the slot's sequence; otherwise it is thrown
/// away and the read is retried.
struct RacyPayload<'r> {
    ptr: *const u8,
    len: usize,
    /// Borrows the reader's region: the bytes stay mapped while this lives.
    _region: PhantomData<&'r [u8]>,
}

impl RacyPayload<'_> {
    /// Copies the payload into `dst` (at most `dst.len()` bytes).
    fn copy_to(&self, dst: &mut [u8]) {
        let n = self.len.min(dst.len());
        // SAFETY: `ptr` is valid for reads of `len` ≥ `n` bytes (the payload lies
        // inside the mapped region, which the borrow keeps alive); `dst` is the
        // caller's exclusive buffer, not in the region, so the two do not overlap.
        unsafe { seqlock::copy_racy(self.ptr, dst.as_mut_ptr(), n) }
    }

    /// Calls `f` on the payload in place (zero-copy).
    fn view<T>(&self, f: impl FnOnce(&[u8]) -> T) -> T {
        // SAFETY: `ptr` is valid for reads of `len` bytes for as long as the borrow.
        // The writer (another process) may change these bytes while `f` looks at
        // them; `f`'s result is discarded unless `read_validate` proves no write
        // overlapped (the zero-copy form of the seqlock argument).
        f(unsafe { std::slice::from_raw_parts(self.ptr, self.len) })
    }
}

/// Which frame a read takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// The newest published frame this reader has not returned yet, skipping
    /// older ones (counted in [`FrameMeta::missed`]): [`RingReader::latest`].
    Latest,
    /// The frame after the last one returned, in order; the oldest still in the
    /// ring when the writer lapped the reader: [`RingReader::next`].
    Next,
}

/// One reader of a ring. Never writes to the region.
pub struct RingReader<R: Region> {
    mem: R,
    info: RingInfo,
    /// Number of the last frame this reader returned (0: none).
    cursor: u64,
    stale_after: Duration,
}

impl<R: Region> RingReader<R> {
    /// Checks the header (magic, version, geometry, sizes against the mapping) and
    /// starts reading at the newest frame: the first `latest()` returns the frame
    /// already published, `next()` the one after it… unless none is published yet.
    pub fn open(mem: R) -> Result<Self, Error> {
        if mem.len() < HEADER_PAGE {
            return Err(Error::SegmentTooSmall {
                expected: HEADER_PAGE as u64,
                actual: mem.len() as u64,
            });
        }
        if mem.as_ptr() as usize % 64 != 0 {
            return Err(Error::BadSegment("region is not 64-byte aligned".into()));
        }
        let h = header(&mem);
        // SYNC: pairs with the Release store of the magic in `RingWriter::create`.
        let magic = h.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        if h.layout_version != LAYOUT_VERSION {
            return Err(Error::LayoutVersion {
                found: h.layout_version,
                expected: LAYOUT_VERSION,
            });
        }
        let bad = |s: &str| Err(Error::BadSegment(s.to_string()));
        let Some(pixel_format) = PixelFormat::from_u32(h.pixel_format) else {
            return bad(&format!("unknown pixel format {}", h.pixel_format));
        };
        let geometry = Geometry {
            width: h.width,
            height: h.height,
            pixel_format,
        };
        let frame_bytes = match geometry.validate() {
            Ok(b) => b,
            Err(e) => return bad(&e.to_string()),
        };
        if h.header_size as usize != HEADER_PAGE || h.slots_offset != HEADER_PAGE as u64 {
            return bad("header size or slot offset is not 4096");
        }
        if !(MIN_SLOTS..=MAX_SLOTS).contains(&h.slot_count) {
            return bad(&format!("slot count {} out of range", h.slot_count));
        }
        if h.frame_bytes != frame_bytes || h.slot_stride != layout::slot_stride(frame_bytes) {
            return bad("frame size or slot stride disagrees with the geometry");
        }
        let expected = layout::segment_size(frame_bytes, h.slot_count);
        if expected != Some(h.segment_size) {
            return bad("segment size disagrees with the geometry");
        }
        if (mem.len() as u64) < h.segment_size {
            return Err(Error::SegmentTooSmall {
                expected: h.segment_size,
                actual: mem.len() as u64,
            });
        }
        let id_len = (h.stream_id_len as usize).min(MAX_ID_LEN);
        let info = RingInfo {
            stream_id: String::from_utf8_lossy(&h.stream_id[..id_len]).into_owned(),
            geometry,
            slot_count: h.slot_count,
            frame_bytes,
            slot_stride: h.slot_stride,
            segment_size: h.segment_size,
            generation: h.generation,
            writer_pid: h.writer_pid,
            checksum: h.flags & FLAG_CHECKSUM != 0,
        };
        let last = h.last_frame.load(Ordering::Acquire);
        Ok(RingReader {
            mem,
            info,
            cursor: last.saturating_sub(1),
            stale_after: Duration::from_millis(layout::HEARTBEAT_STALE_MS),
        })
    }

    pub fn info(&self) -> &RingInfo {
        &self.info
    }

    fn header(&self) -> &Header {
        header(&self.mem)
    }

    /// The stream state as the writer last set it.
    pub fn state(&self) -> StreamState {
        StreamState::from_u32(self.header().state.load(Ordering::Acquire))
            .unwrap_or(StreamState::Failed)
    }

    /// Number of the newest published frame (0: none yet).
    pub fn last_frame(&self) -> u64 {
        self.header().last_frame.load(Ordering::Acquire)
    }

    /// Number of the last frame this reader returned.
    pub fn position(&self) -> u64 {
        self.cursor
    }

    /// Measured input rate the writer publishes.
    pub fn fps(&self) -> f64 {
        f64::from(self.header().fps_milli.load(Ordering::Relaxed)) / 1000.0
    }

    pub fn frames_dropped(&self) -> u64 {
        self.header().frames_dropped.load(Ordering::Relaxed)
    }

    /// How long since the writer last showed it was alive.
    pub fn heartbeat_age(&self) -> Duration {
        let hb = self.header().heartbeat_ns.load(Ordering::Acquire);
        Duration::from_nanos(monotonic_ns().saturating_sub(hb))
    }

    /// A heartbeat older than this makes blocking reads fail with
    /// [`Error::WriterGone`] (default [`layout::HEARTBEAT_STALE_MS`]).
    pub fn set_stale_after(&mut self, d: Duration) {
        self.stale_after = d;
    }

    /// Which frame a read in `mode` takes now, given the newest published one;
    /// `None` when there is none this reader has not returned.
    fn wanted(&self, mode: ReadMode) -> Option<u64> {
        let last = self.last_frame();
        match mode {
            ReadMode::Latest => (last > self.cursor).then_some(last),
            ReadMode::Next => self.next_wanted(last),
        }
    }

    /// The one read loop of the ring: takes the frame `mode` wants, hands its
    /// payload to `take` (a copy or a zero-copy view, see [`RacyPayload`]) and
    /// returns the result only if the seqlock proves no write overlapped; else
    /// tries again. A frame can be overwritten while it is read only if the
    /// writer laps the whole ring meanwhile, and each retry targets the frame
    /// wanted then, so a few retries suffice; 64 failures in a row are
    /// [`Error::Contended`].
    fn read<T>(
        &mut self,
        mode: ReadMode,
        mut take: impl FnMut(&FrameMeta, &RacyPayload<'_>) -> T,
    ) -> Result<Option<(FrameMeta, T)>, Error> {
        for _ in 0..64 {
            let Some(want) = self.wanted(mode) else {
                return Ok(None);
            };
            if let Some(read) = self.read_slot(want, &mut take) {
                self.cursor = want;
                return Ok(Some(read));
            }
            std::hint::spin_loop();
        }
        Err(Error::Contended {
            stream: self.info.stream_id.clone(),
        })
    }

    /// Tries once to read frame `number`: its metadata (the one place a
    /// [`FrameMeta`] is built) and `take` on its payload, between
    /// `read_begin` and `read_validate`. `None`: the slot no longer (or not yet)
    /// holds that frame, or was written meanwhile; whatever `take` did is then
    /// to be thrown away.
    fn read_slot<T>(
        &self,
        number: u64,
        take: &mut impl FnMut(&FrameMeta, &RacyPayload<'_>) -> T,
    ) -> Option<(FrameMeta, T)> {
        let index = number % u64::from(self.info.slot_count);
        let slot = slot_header(&self.mem, self.info.slot_stride, index);
        let stamp = seqlock::read_begin(&slot.seq)?;
        if slot.frame.load(Ordering::Relaxed) != number {
            return None;
        }
        let len = slot.len.load(Ordering::Relaxed).min(self.info.frame_bytes);
        let meta = FrameMeta {
            number,
            wall_ns: slot.wall_ns.load(Ordering::Relaxed),
            mono_ns: slot.mono_ns.load(Ordering::Relaxed),
            len,
            missed: number - self.cursor - 1,
            checksum: slot.checksum.load(Ordering::Relaxed),
            stream_time: StreamTime::load(slot),
        };
        let payload = RacyPayload {
            // SAFETY: `slot_ptr` is inside the region and the payload starts
            // SLOT_HEADER bytes into the slot (stride ≥ SLOT_HEADER + frame_bytes).
            ptr: unsafe {
                slot_ptr(&self.mem, self.info.slot_stride, index).add(layout::SLOT_HEADER)
            },
            len: len as usize,
            _region: PhantomData,
        };
        let out = take(&meta, &payload);
        seqlock::read_validate(&slot.seq, stamp).then_some((meta, out))
    }

    /// The newest frame this reader has not returned yet, copied into `dst`
    /// (`dst.len()` ≥ frame_bytes), without waiting. `Ok(None)` when there is none.
    pub fn try_latest(&mut self, dst: &mut [u8]) -> Result<Option<FrameMeta>, Error> {
        self.try_copy(ReadMode::Latest, dst)
    }

    /// The next frame in order (`position() + 1`), or the oldest one still in the
    /// ring when the reader fell behind, with `missed` counting the frames lost.
    pub fn try_next(&mut self, dst: &mut [u8]) -> Result<Option<FrameMeta>, Error> {
        self.try_copy(ReadMode::Next, dst)
    }

    fn try_copy(&mut self, mode: ReadMode, dst: &mut [u8]) -> Result<Option<FrameMeta>, Error> {
        self.check_dst(dst)?;
        Ok(self.read(mode, |_, p| p.copy_to(dst))?.map(|(m, ())| m))
    }

    /// Frame to read next in sequential mode given the newest published one: frames
    /// `last - slots + 2 ..= last` are safe (the writer may be filling the slot of
    /// `last + 1`, which is the slot of `last + 1 - slots`).
    fn next_wanted(&self, last: u64) -> Option<u64> {
        let want = self.cursor + 1;
        if want > last {
            return None;
        }
        let oldest_safe = (last + 2)
            .saturating_sub(u64::from(self.info.slot_count))
            .max(1);
        Some(want.max(oldest_safe))
    }

    fn check_dst(&self, dst: &[u8]) -> Result<(), Error> {
        if (dst.len() as u64) < self.info.frame_bytes {
            return Err(Error::FrameSize {
                expected: self.info.frame_bytes,
                actual: dst.len() as u64,
            });
        }
        Ok(())
    }

    /// Blocks until [`try_latest`](Self::try_latest) has a frame, the timeout
    /// passes, the stream ends or the writer dies.
    pub fn latest(&mut self, dst: &mut [u8], timeout: Duration) -> Result<FrameMeta, Error> {
        self.wait_for(timeout, |r| r.try_latest(dst))
    }

    /// Blocks until [`try_next`](Self::try_next) has a frame (see [`latest`](Self::latest)).
    pub fn next(&mut self, dst: &mut [u8], timeout: Duration) -> Result<FrameMeta, Error> {
        self.wait_for(timeout, |r| r.try_next(dst))
    }

    /// Zero-copy: waits for a frame like [`latest`](Self::latest) or
    /// [`next`](Self::next), then calls `f` on the payload in place. `f` may run more
    /// than once when the writer overwrote the slot under it; only the result of a
    /// validated call is returned.
    pub fn view<T>(
        &mut self,
        mode: ReadMode,
        timeout: Duration,
        mut f: impl FnMut(&FrameMeta, &[u8]) -> T,
    ) -> Result<(FrameMeta, T), Error> {
        self.wait_for(timeout, |r| {
            r.read(mode, |m, p| p.view(|bytes| f(m, bytes)))
        })
    }

    fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut attempt: impl FnMut(&mut Self) -> Result<Option<T>, Error>,
    ) -> Result<T, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            // Read the wake word before looking, so a frame published after the look
            // changes it and the wait below returns at once.
            let word = self.header().wake.load(Ordering::Acquire);
            if let Some(v) = attempt(self)? {
                return Ok(v);
            }
            let state = self.state();
            if state.is_final() {
                return Err(Error::StreamEnded {
                    stream: self.info.stream_id.clone(),
                    state,
                });
            }
            let age = self.heartbeat_age();
            if age > self.stale_after {
                return Err(Error::WriterGone {
                    stream: self.info.stream_id.clone(),
                    silent_for: age,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    stream: self.info.stream_id.clone(),
                    after: timeout,
                });
            }
            // Wake at least every slice to notice a dead writer in time.
            let slice = (deadline - now).min(Duration::from_millis(layout::READER_SLICE_MS));
            self.mem.wait_wake(&self.header().wake, word, slice);
        }
    }
}

/// The ring's tests, one suite run over every [`Region`] backend.
#[cfg(test)]
mod conformance;
