//! Windows shared-memory segments: named pagefile-backed file mappings in the
//! session namespace (`Local\fb-cam.1`), created exclusively by the broker with an
//! owner-only DACL, opened read-only by readers, with four wake events beside each
//! (decisions 12 and 13 in `proto/doc/decisions.md`, names in `layout.md`).
//!
//! The same API as the Unix `shm` module, so the broker and the clients use one
//! `framebroker_proto::shm` on both systems. Where Windows differs: names vanish
//! with their last handle, so there is nothing stale to list or remove, and
//! `unlink` has nothing to do.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use windows_sys::Win32::Foundation::{
    GetLastError, ERROR_ALREADY_EXISTS, HANDLE, INVALID_HANDLE_VALUE, WAIT_FAILED,
};
use windows_sys::Win32::System::Memory::{
    CreateFileMappingW, MapViewOfFile, OpenFileMappingW, UnmapViewOfFile, VirtualQuery,
    FILE_MAP_READ, FILE_MAP_WRITE, MEMORY_BASIC_INFORMATION, MEMORY_MAPPED_VIEW_ADDRESS,
    PAGE_READWRITE,
};
use windows_sys::Win32::System::Threading::{
    CreateEventW, OpenEventW, ResetEvent, SetEvent, WaitForSingleObject, INFINITE,
    SYNCHRONIZATION_SYNCHRONIZE,
};

use crate::naming::{windows_object_name, windows_wake_event_name};
use crate::ring::{Region, RegionMut};
use crate::wake_events::{self, WAKE_EVENTS};
use crate::win32::{last_error, wide, OwnedHandle, OwnerOnly};
use crate::Error;

fn shm_err(name: &str, reason: impl std::fmt::Display) -> Error {
    Error::Shm {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

/// One of a segment's wake events (a manual-reset kernel event).
#[derive(Debug)]
pub struct WakeEvent(OwnedHandle);

impl wake_events::Event for WakeEvent {
    fn set(&self) {
        // SAFETY: a live event handle with EVENT_MODIFY_STATE (the broker's own).
        unsafe { SetEvent(self.0 .0) };
    }
    fn reset(&self) {
        // SAFETY: as above.
        unsafe { ResetEvent(self.0 .0) };
    }
    fn wait(&self, timeout: Option<Duration>) {
        let ms = timeout.map_or(INFINITE, |t| {
            // Round up: a 0.3 ms remainder must not become a busy 0 ms wait.
            t.as_nanos()
                .div_ceil(1_000_000)
                .min(u128::from(INFINITE - 1)) as u32
        });
        // SAFETY: a live event handle with SYNCHRONIZE access.
        if unsafe { WaitForSingleObject(self.0 .0, ms) } == WAIT_FAILED {
            // Cannot happen with a live handle; never spin if it does.
            std::thread::sleep(timeout.unwrap_or(Duration::from_millis(100)));
        }
    }
}

fn wake_events_of(
    name: &str,
    mut open: impl FnMut(&str) -> Result<HANDLE, String>,
) -> Result<[WakeEvent; WAKE_EVENTS], Error> {
    let mut out = Vec::with_capacity(WAKE_EVENTS);
    for k in 0..WAKE_EVENTS {
        let ev = windows_wake_event_name(name, k);
        let h = open(&ev).map_err(|e| shm_err(name, format!("wake event {ev}: {e}")))?;
        out.push(WakeEvent(OwnedHandle(h)));
    }
    Ok(out.try_into().expect("WAKE_EVENTS events"))
}

/// A mapped view, unmapped on drop.
struct View {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the view is process-wide memory; concurrent access goes through the
// ring's atomics and seqlock.
unsafe impl Send for View {}
// SAFETY: as above.
unsafe impl Sync for View {}

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: `ptr` is the base address MapViewOfFile returned; unmapped once.
        unsafe {
            UnmapViewOfFile(MEMORY_MAPPED_VIEW_ADDRESS {
                Value: self.ptr.cast(),
            })
        };
    }
}

/// A segment the broker created and writes; its names vanish when it is dropped
/// and no reader holds them any more.
pub struct OwnedSegment {
    name: String,
    // Field order is drop order: unmap before closing the mapping handle.
    view: View,
    mapping: Option<OwnedHandle>,
    events: [WakeEvent; WAKE_EVENTS],
    /// One bump at a time: frames and state changes may come from different
    /// threads of the broker, and the event order needs one writer of the word.
    /// Only the broker's own threads take it, never a reader.
    bump_lock: std::sync::Mutex<()>,
}

impl OwnedSegment {
    /// Creates `name` (which must not exist) with `size` bytes, owner-only. `mode`
    /// is the Unix permission and is not used: Windows segments are always
    /// owner-only (decision 12). The memory is committed now, so a full pagefile is
    /// a clear error here rather than a fault while writing frames.
    pub fn create(name: &str, size: u64, _mode: u32) -> Result<Self, Error> {
        let sd = OwnerOnly::new().map_err(|e| shm_err(name, e))?;
        let sa = sd.attributes();
        let wname = wide(&windows_object_name(name));
        // SAFETY: `sa` and `wname` live across the call; INVALID_HANDLE_VALUE asks
        // for a pagefile-backed section of exactly `size` bytes.
        let h = unsafe {
            CreateFileMappingW(
                INVALID_HANDLE_VALUE,
                &sa,
                PAGE_READWRITE,
                (size >> 32) as u32,
                size as u32,
                wname.as_ptr(),
            )
        };
        if h.is_null() {
            return Err(shm_err(
                name,
                format!("CreateFileMappingW of {size} bytes: {}", last_error()),
            ));
        }
        // SAFETY: reads the last error of the call above.
        let existed = unsafe { GetLastError() } == ERROR_ALREADY_EXISTS;
        let mapping = OwnedHandle(h);
        if existed {
            return Err(shm_err(
                name,
                "already exists (another broker, or a reader still holds a dead broker's segment)",
            ));
        }
        // SAFETY: a section handle with read/write access; maps `size` bytes.
        let base = unsafe { MapViewOfFile(h, FILE_MAP_READ | FILE_MAP_WRITE, 0, 0, size as usize) };
        if base.Value.is_null() {
            return Err(shm_err(name, format!("MapViewOfFile: {}", last_error())));
        }
        let view = View {
            ptr: base.Value.cast(),
            len: size as usize,
        };
        let events = wake_events_of(name, |ev| {
            let w = wide(ev);
            // SAFETY: `sa` and `w` live across the call; manual reset, not signalled.
            let h = unsafe { CreateEventW(&sa, 1, 0, w.as_ptr()) };
            if h.is_null() {
                return Err(format!("CreateEventW: {}", last_error()));
            }
            // SAFETY: reads the last error of the call above.
            if unsafe { GetLastError() } == ERROR_ALREADY_EXISTS {
                drop(OwnedHandle(h));
                return Err("already exists".into());
            }
            Ok(h)
        })?;
        Ok(OwnedSegment {
            name: name.to_string(),
            view,
            mapping: Some(mapping),
            events,
            bump_lock: std::sync::Mutex::new(()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keep the names after drop for as long as this process lives (tests that
    /// simulate a broker that crashed while a reader held its segment).
    pub fn leak_name(&mut self) {
        std::mem::forget(self.mapping.take());
    }
}

// SAFETY: MapViewOfFile returns an allocation-granularity (64 KiB) aligned base,
// valid for `len` bytes until unmapped on drop; it never moves.
unsafe impl Region for OwnedSegment {
    fn as_ptr(&self) -> *const u8 {
        self.view.ptr
    }
    fn len(&self) -> usize {
        self.view.len
    }
    fn wait_wake(&self, word: &AtomicU32, expected: u32, timeout: Duration) {
        wake_events::wait(word, expected, &self.events, Some(timeout))
    }
}

// SAFETY: the view was mapped with FILE_MAP_WRITE; same address.
unsafe impl RegionMut for OwnedSegment {
    fn as_mut_ptr(&self) -> *mut u8 {
        self.view.ptr
    }
    fn bump_wake(&self, word: &AtomicU32) {
        let _one_writer = crate::lock::lock(&self.bump_lock);
        wake_events::bump(word, &self.events)
    }
}

/// A segment mapped read-only by a reader, with its wake events opened for
/// waiting only.
pub struct ReadOnlySegment {
    name: String,
    view: View,
    _mapping: OwnedHandle,
    events: [WakeEvent; WAKE_EVENTS],
}

impl ReadOnlySegment {
    /// Opens `name` read-only (`FILE_MAP_READ`) and its wake events
    /// (`SYNCHRONIZE`). Refuses a view shorter than the header page. Only the
    /// broker's user can open the names at all (their DACL), so `trusted_owner`
    /// (a Unix uid) has no use here.
    pub fn open(name: &str, _trusted_owner: Option<u32>) -> Result<Self, Error> {
        let wname = wide(&windows_object_name(name));
        // SAFETY: `wname` is NUL-terminated and lives across the call.
        let h = unsafe { OpenFileMappingW(FILE_MAP_READ, 0, wname.as_ptr()) };
        if h.is_null() {
            // SAFETY: reads the last error of the call above.
            let code = unsafe { GetLastError() };
            return Err(shm_err(
                name,
                if code == windows_sys::Win32::Foundation::ERROR_FILE_NOT_FOUND {
                    "no such segment (stream stopped, or broker restarted)".to_string()
                } else {
                    format!("OpenFileMappingW: {}", last_error())
                },
            ));
        }
        let mapping = OwnedHandle(h);
        // SAFETY: a section handle with read access; 0 maps the whole section.
        let base = unsafe { MapViewOfFile(h, FILE_MAP_READ, 0, 0, 0) };
        if base.Value.is_null() {
            return Err(shm_err(name, format!("MapViewOfFile: {}", last_error())));
        }
        let mut view = View {
            ptr: base.Value.cast(),
            len: 0,
        };
        // SAFETY: an all-zero MEMORY_BASIC_INFORMATION is valid; VirtualQuery fills it
        // for the region at our view's base.
        let mut mbi: MEMORY_BASIC_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: `mbi` is ours and of the size passed.
        let got = unsafe {
            VirtualQuery(
                view.ptr.cast(),
                &mut mbi,
                std::mem::size_of::<MEMORY_BASIC_INFORMATION>(),
            )
        };
        if got == 0 {
            return Err(shm_err(name, format!("VirtualQuery: {}", last_error())));
        }
        view.len = mbi.RegionSize;
        if view.len < crate::layout::HEADER_PAGE {
            return Err(Error::SegmentTooSmall {
                expected: crate::layout::HEADER_PAGE as u64,
                actual: view.len as u64,
            });
        }
        let events = wake_events_of(name, |ev| {
            let w = wide(ev);
            // SAFETY: `w` is NUL-terminated and lives across the call.
            let h = unsafe { OpenEventW(SYNCHRONIZATION_SYNCHRONIZE, 0, w.as_ptr()) };
            if h.is_null() {
                Err(format!("OpenEventW: {}", last_error()))
            } else {
                Ok(h)
            }
        })?;
        Ok(ReadOnlySegment {
            name: name.to_string(),
            view,
            _mapping: mapping,
            events,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

// SAFETY: MapViewOfFile's base is 64 KiB aligned, valid for `len` bytes (the
// region VirtualQuery reports) until unmapped on drop.
unsafe impl Region for ReadOnlySegment {
    fn as_ptr(&self) -> *const u8 {
        self.view.ptr
    }
    fn len(&self) -> usize {
        self.view.len
    }
    fn wait_wake(&self, word: &AtomicU32, expected: u32, timeout: Duration) {
        wake_events::wait(word, expected, &self.events, Some(timeout))
    }
}

/// Nothing to do on Windows: a name goes with its last handle.
pub fn unlink(_name: &str) -> Result<(), Error> {
    Ok(())
}

/// Memory the broker may still commit (the system commit limit left).
pub fn free_bytes() -> Result<u64, Error> {
    use windows_sys::Win32::System::SystemInformation::{GlobalMemoryStatusEx, MEMORYSTATUSEX};
    // SAFETY: an all-zero MEMORYSTATUSEX is valid; dwLength set as required.
    let mut m: MEMORYSTATUSEX = unsafe { std::mem::zeroed() };
    m.dwLength = std::mem::size_of::<MEMORYSTATUSEX>() as u32;
    // SAFETY: `m` is ours, with dwLength set.
    if unsafe { GlobalMemoryStatusEx(&mut m) } == 0 {
        return Err(shm_err("(commit limit)", last_error()));
    }
    Ok(m.ullAvailPageFile)
}

/// Named objects cannot be listed without the native API; there is nothing stale
/// to find anyway (see [`remove_stale`]).
pub fn list(_prefix: &str) -> Vec<String> {
    Vec::new()
}

/// What [`remove_stale`] did with one segment (the Unix type; on Windows there are
/// never any).
#[derive(Debug, PartialEq, Eq)]
pub enum StaleVerdict {
    Removed {
        name: String,
        pid: u32,
        why: &'static str,
    },
    Alive {
        name: String,
        pid: u32,
    },
    Skipped {
        name: String,
        reason: String,
    },
}

/// Nothing to remove: a crashed broker's names vanish with its last handle.
pub fn remove_stale(_prefix: &str) -> Vec<StaleVerdict> {
    Vec::new()
}

#[cfg(test)]
#[path = "shm_test_support.rs"]
mod test_support;

#[cfg(test)]
mod tests {
    use super::test_support::{config, unique};
    use super::*;
    use crate::ring::{HeapRegion, RingReader, RingWriter};

    #[test]
    fn create_is_exclusive_and_names_vanish_with_the_last_handle() {
        let name = unique("excl");
        let c = config();
        let seg = OwnedSegment::create(&name, c.segment_size().unwrap(), 0o600).unwrap();
        let e = OwnedSegment::create(&name, 4096, 0o600).err().unwrap();
        assert!(e.to_string().contains("already exists"), "{e}");
        let mut w = RingWriter::create(&seg, &c).unwrap();
        w.publish(&vec![7u8; 16 * 8 * 3], 1, 2).unwrap();
        let ro = ReadOnlySegment::open(&name, None).unwrap();
        assert!(ro.len() as u64 >= c.segment_size().unwrap());
        let mut r = RingReader::open(&ro).unwrap();
        let mut buf = vec![0; 16 * 8 * 3];
        assert_eq!(r.try_latest(&mut buf).unwrap().unwrap().number, 1);
        assert!(buf.iter().all(|b| *b == 7));
        drop(seg);
        // The reader's handle keeps the mapping, and its name, alive.
        assert_eq!(r.last_frame(), 1);
        assert!(ReadOnlySegment::open(&name, None).is_ok());
        drop(r);
        drop(ro);
        let e = ReadOnlySegment::open(&name, None).err().unwrap();
        assert!(e.to_string().contains("no such segment"), "{e}");
    }

    #[test]
    fn a_reader_cannot_write_the_mapping() {
        let name = unique("ro");
        let seg = OwnedSegment::create(&name, 8192, 0o600).unwrap();
        // The DACL grants the broker's user everything, so what keeps a reader from
        // writing is that it only asks for FILE_MAP_READ: its view is read-only.
        let ro = ReadOnlySegment::open(&name, None).unwrap();
        // SAFETY: an all-zero MEMORY_BASIC_INFORMATION is valid.
        let mut mbi: MEMORY_BASIC_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: `mbi` is ours, of the size passed.
        unsafe {
            VirtualQuery(
                ro.as_ptr().cast(),
                &mut mbi,
                std::mem::size_of::<MEMORY_BASIC_INFORMATION>(),
            )
        };
        assert_eq!(
            mbi.Protect,
            windows_sys::Win32::System::Memory::PAGE_READONLY,
            "the reader's view must be read-only"
        );
        drop(seg);
    }

    #[test]
    fn mappings_with_a_wrong_magic_or_size_are_refused() {
        // Right size, garbage inside.
        let name = unique("bad");
        let seg = OwnedSegment::create(&name, 8192, 0o600).unwrap();
        // SAFETY: our own fresh mapping of 8192 writable bytes, nobody else uses it.
        unsafe { std::ptr::write_bytes(seg.as_mut_ptr(), 0xAB, 8192) };
        let ro = ReadOnlySegment::open(&name, None).unwrap();
        assert!(matches!(RingReader::open(&ro), Err(Error::BadMagic { .. })));
        // A valid header that claims more bytes than the mapping has.
        let c = config();
        let heap = HeapRegion::new(c.segment_size().unwrap() as usize);
        RingWriter::create(&heap, &c).unwrap();
        let small = unique("small");
        let seg2 = OwnedSegment::create(&small, 4096, 0o600).unwrap();
        // SAFETY: copies the 4096-byte header page from the heap ring into our own
        // 4096-byte mapping; nobody else touches either.
        unsafe { std::ptr::copy_nonoverlapping(heap.as_ptr(), seg2.as_mut_ptr(), 4096) };
        let ro2 = ReadOnlySegment::open(&small, None).unwrap();
        let e = RingReader::open(&ro2).err().unwrap();
        assert!(
            matches!(e, Error::SegmentTooSmall { .. }),
            "a header promising {} bytes over a 4096-byte mapping: {e}",
            c.segment_size().unwrap()
        );
    }

    #[test]
    fn a_reader_sleeps_on_the_events_until_a_frame_comes() {
        let name = unique("wait");
        let c = config();
        let seg = std::sync::Arc::new(
            OwnedSegment::create(&name, c.segment_size().unwrap(), 0o600).unwrap(),
        );
        let mut w = RingWriter::create(seg.clone(), &c).unwrap();
        let ro = ReadOnlySegment::open(&name, None).unwrap();
        let mut r = RingReader::open(ro).unwrap();
        let h = std::thread::spawn(move || {
            let t = std::time::Instant::now();
            let mut buf = vec![0; 16 * 8 * 3];
            let m = r.latest(&mut buf, Duration::from_secs(10)).unwrap();
            (m.number, t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        w.publish(&vec![1u8; 16 * 8 * 3], 1, 2).unwrap();
        let (n, waited) = h.join().unwrap();
        assert_eq!(n, 1);
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }
}
