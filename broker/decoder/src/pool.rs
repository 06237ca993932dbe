//! The frame pool: libavcodec decodes straight into slots of a shared memory
//! file (fd [`POOL_FD`]), so a frame of the decoded size reaches the broker
//! without being copied (see the library's documentation).
//!
//! A slot is free when libavcodec has dropped its last reference to the frame
//! in it (the buffer's free callback) — and the decoder holds one reference for
//! each output the broker has not returned the frame for yet, so both must be
//! done with it. Anything the pool cannot hold (another pixel format or size, a
//! full pool, a failed mapping) is allocated by libavcodec's default allocator
//! and copied to staging as before.

use std::ffi::c_void;
use std::sync::Mutex;

use ffmpeg_next::ffi;
use framebroker_decoder::{PoolLayout, MAX_POOL_SLOTS, POOL_FD};

/// Slots in the pool: H.264's references plus frames in flight. Pages of
/// slots never used are never touched, so they cost no memory.
const SLOTS: u32 = 24;
/// Alignment of every plane and stride (64: AVX-512).
const ALIGN: usize = 64;

/// The pool as set up by the first frame it holds.
struct Plan {
    format: i32,
    width: i32,
    height: i32,
    layout: PoolLayout,
    base: *mut u8,
    len: usize,
    free: Vec<bool>,
}

// SAFETY: `base` points into a shared mapping that lives until the process
// ends (it is never unmapped); the Plan is only reached under the pool's mutex.
unsafe impl Send for Plan {}

pub struct Pool {
    state: Mutex<State>,
}

enum State {
    /// No frame yet.
    Unplanned,
    Planned(Plan),
    /// Setting the pool up failed once: everything goes through staging.
    Off,
}

/// What a buffer's free callback needs.
struct Release {
    pool: &'static Pool,
    slot: u32,
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

fn pooled_format(format: i32) -> bool {
    use ffi::AVPixelFormat::*;
    [AV_PIX_FMT_YUV420P, AV_PIX_FMT_YUVJ420P, AV_PIX_FMT_NV12]
        .iter()
        .any(|f| *f as i32 == format)
}

impl Pool {
    /// A pool for the rest of the process (libavcodec may call back into it
    /// until the codec context is gone).
    pub fn leak() -> &'static Pool {
        Box::leak(Box::new(Pool {
            state: Mutex::new(State::Unplanned),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool's layout, once a frame was decoded into it.
    pub fn layout(&self) -> Option<PoolLayout> {
        match &*self.lock() {
            State::Planned(p) => Some(p.layout),
            _ => None,
        }
    }

    /// The slot frame `f` lives in, if it was decoded into the pool with its
    /// planes where the pool's layout says (a frame cropped at the top or left
    /// starts elsewhere: it is copied instead).
    pub fn slot_of(&self, f: &ffmpeg_next::frame::Video) -> Option<u32> {
        // SAFETY: `f` is a valid frame; buf[0] is null or a valid buffer ref,
        // and data/linesize are plain fields.
        let (data, planes, strides) = unsafe {
            let frame = &*f.as_ptr();
            if frame.buf[0].is_null() {
                return None;
            }
            ((*frame.buf[0]).data, frame.data, frame.linesize)
        };
        let State::Planned(p) = &*self.lock() else {
            return None;
        };
        let bytes = p.layout.slot_bytes as usize;
        let off = (data as usize).checked_sub(p.base as usize)?;
        if off >= p.len || off % bytes != 0 {
            return None;
        }
        let in_layout = (0..3).all(|k| {
            let stride = p.layout.strides[k];
            stride == 0
                || (strides[k] == stride as i32
                    && planes[k] as usize == data as usize + p.layout.offsets[k] as usize)
        });
        in_layout.then_some((off / bytes) as u32)
    }

    /// Sizes, seals and maps the pool for frames like `frame`.
    ///
    /// # Safety
    /// `ctx` and `frame` are the valid pointers libavcodec passed to get_buffer2.
    unsafe fn plan(ctx: *mut ffi::AVCodecContext, frame: *const ffi::AVFrame) -> Option<Plan> {
        // SAFETY: valid pointers (the caller's contract).
        let (format, width, height) = unsafe { ((*frame).format, (*frame).width, (*frame).height) };
        if !pooled_format(format) || width <= 0 || height <= 0 {
            return None;
        }
        let (mut w, mut h) = (width, height);
        let mut linesize_align = [0i32; 8];
        // SAFETY: the context is open (get_buffer2 is only called then); the
        // function writes the three out-parameters only.
        unsafe { ffi::avcodec_align_dimensions2(ctx, &mut w, &mut h, linesize_align.as_mut_ptr()) };
        if linesize_align.iter().any(|a| *a as usize > ALIGN) {
            return None;
        }
        let (w, h) = (w as usize, h as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let nv12 = format == ffi::AVPixelFormat::AV_PIX_FMT_NV12 as i32;
        let strides = if nv12 {
            [align(w), align(2 * cw), 0]
        } else {
            [align(w), align(cw), align(cw)]
        };
        let heights = [h, ch, if nv12 { 0 } else { ch }];
        let mut offsets = [0usize; 3];
        let mut at = 0;
        for k in 0..3 {
            offsets[k] = at;
            // + ALIGN: libavcodec's own pools pad every plane for SIMD overreads.
            at = align(at + strides[k] * heights[k] + ALIGN);
        }
        let slot_bytes = at.div_ceil(4096) * 4096;
        let len = slot_bytes.checked_mul(SLOTS as usize)?;
        // SAFETY: POOL_FD is the memory file the broker passed (created with
        // MFD_ALLOW_SEALING); ftruncate and fcntl only act on that descriptor.
        let sealed = unsafe {
            libc::ftruncate(POOL_FD, len as libc::off_t) == 0
                && libc::fcntl(
                    POOL_FD,
                    libc::F_ADD_SEALS,
                    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
                ) == 0
        };
        if !sealed {
            eprintln!("[warning] no frame pool (cannot size the shared memory): frames are copied");
            return None;
        }
        // SAFETY: the memory file was just sized to `len` and sealed; the
        // mapping is never unmapped.
        let Ok(base) = (unsafe { map_shared(POOL_FD, len) }) else {
            eprintln!("[warning] no frame pool (cannot map it): frames are copied");
            return None;
        };
        let u = |n: usize| u32::try_from(n).ok();
        let layout = PoolLayout {
            slots: SLOTS.min(MAX_POOL_SLOTS),
            slot_bytes: slot_bytes as u64,
            offsets: [u(offsets[0])?, u(offsets[1])?, u(offsets[2])?],
            strides: [u(strides[0])?, u(strides[1])?, u(strides[2])?],
        };
        Some(Plan {
            format,
            width,
            height,
            layout,
            base,
            len,
            free: vec![true; SLOTS as usize],
        })
    }

    /// Gives `frame` a free slot; false when the pool cannot hold it.
    ///
    /// # Safety
    /// As [`get_buffer2`].
    unsafe fn take(&'static self, ctx: *mut ffi::AVCodecContext, frame: *mut ffi::AVFrame) -> bool {
        let mut state = self.lock();
        if let State::Unplanned = *state {
            // SAFETY: the caller's contract.
            *state = match unsafe { Pool::plan(ctx, frame) } {
                Some(p) => State::Planned(p),
                None => State::Off,
            };
        }
        let State::Planned(p) = &mut *state else {
            return false;
        };
        // SAFETY: valid frame pointer (the caller's contract).
        let (format, width, height) = unsafe { ((*frame).format, (*frame).width, (*frame).height) };
        if (format, width, height) != (p.format, p.width, p.height) {
            return false;
        }
        let Some(slot) = p.free.iter().position(|f| *f) else {
            return false;
        };
        let bytes = p.layout.slot_bytes as usize;
        // SAFETY: slot < SLOTS, so the slot lies inside the mapping.
        let start = unsafe { p.base.add(slot * bytes) };
        let release = Box::into_raw(Box::new(Release {
            pool: self,
            slot: slot as u32,
        }));
        // SAFETY: `start..start + bytes` is valid shared memory for the life of
        // the process; the buffer does not own it (our callback frees only the
        // Release box and marks the slot free).
        let buf = unsafe {
            ffi::av_buffer_create(
                start,
                bytes,
                Some(release_slot),
                release.cast::<c_void>(),
                0,
            )
        };
        if buf.is_null() {
            // SAFETY: the box was not handed to libavcodec.
            drop(unsafe { Box::from_raw(release) });
            return false;
        }
        p.free[slot] = false;
        // SAFETY: filling the frame as get_buffer2 must: buf[0] owns the slot,
        // data/linesize describe planes inside it (offsets and strides fit in the
        // slot by construction), extended_data points at data for video.
        unsafe {
            (*frame).buf[0] = buf;
            for k in 0..3 {
                let stride = p.layout.strides[k] as usize;
                (*frame).data[k] = if stride == 0 {
                    std::ptr::null_mut()
                } else {
                    start.add(p.layout.offsets[k] as usize)
                };
                (*frame).linesize[k] = stride as i32;
            }
            (*frame).extended_data = (*frame).data.as_mut_ptr();
        }
        true
    }

    fn release(&self, slot: u32) {
        if let State::Planned(p) = &mut *self.lock() {
            if let Some(f) = p.free.get_mut(slot as usize) {
                *f = true;
            }
        }
    }
}

/// The buffer of a pool slot lost its last reference.
unsafe extern "C" fn release_slot(opaque: *mut c_void, _data: *mut u8) {
    // SAFETY: `opaque` is the Release box made in `take`, handed to exactly one
    // buffer, whose free callback runs exactly once.
    let r = unsafe { Box::from_raw(opaque.cast::<Release>()) };
    r.pool.release(r.slot);
}

/// libavcodec's `get_buffer2`: a pool slot when the pool can hold the frame,
/// else libavcodec's own allocation.
///
/// # Safety
/// Called by libavcodec with a context whose `opaque` is a `&'static Pool`.
pub unsafe extern "C" fn get_buffer2(
    ctx: *mut ffi::AVCodecContext,
    frame: *mut ffi::AVFrame,
    flags: i32,
) -> i32 {
    // SAFETY: we set `opaque` to a leaked Pool before opening the codec.
    let pool: &'static Pool = unsafe { &*((*ctx).opaque as *const Pool) };
    // SAFETY: the pointers come from libavcodec (the function's contract).
    if unsafe { pool.take(ctx, frame) } {
        0
    } else {
        // SAFETY: the same pointers, to libavcodec's own allocator.
        unsafe { ffi::avcodec_default_get_buffer2(ctx, frame, flags) }
    }
}

/// Maps `len` bytes of the memory file at descriptor `fd`, shared and writable.
///
/// # Safety
/// The file must be at least `len` bytes long and sealed against shrinking:
/// then every page of the mapping stays backed (touching a page past the end
/// of a shrunk file would raise SIGBUS).
pub(crate) unsafe fn map_shared(fd: i32, len: usize) -> std::io::Result<*mut u8> {
    // SAFETY: a new mapping at an address the kernel picks, so no existing
    // memory is affected; the caller vouches for the file's size.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(p.cast())
}
