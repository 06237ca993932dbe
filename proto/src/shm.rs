//! POSIX shared-memory segments: created exclusively and owner-only by the
//! broker, opened read-only by readers, cleaned up by their owner (or by the next
//! broker after a crash).
//!
//! On Linux a segment named `/fb-cam.1` is the file `/dev/shm/fb-cam.1`, which is
//! how the Python client opens it. (Windows would sit behind the same
//! [`Region`] trait with the `shared_memory` crate; it is not built yet. The
//! ring's conformance suite, `ring/conformance.rs`, runs every ring test over
//! each region, and is where that one plugs in.)

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use memmap2::{Mmap, MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::{fstat, Mode};

use crate::ring::{Region, RegionMut};
use crate::Error;

/// Where POSIX shared memory lives on Linux.
pub const SHM_DIR: &str = "/dev/shm";

fn shm_err(name: &str, reason: impl std::fmt::Display) -> Error {
    Error::Shm {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

/// A segment the broker created and writes; unlinked when dropped.
pub struct OwnedSegment {
    name: String,
    map: MmapRaw,
    unlink_on_drop: bool,
}

impl OwnedSegment {
    /// Creates `name` (which must not exist) with `size` bytes, mode `mode`
    /// (owner-only `0o600` unless group access is configured), and reserves the
    /// memory up front so a full `/dev/shm` is a clear error now, not a SIGBUS
    /// while writing frames later.
    pub fn create(name: &str, size: u64, mode: u32) -> Result<Self, Error> {
        let mode = Mode::from_bits_truncate(mode & 0o660);
        let fd =
            shm_open(name, OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR, mode).map_err(|e| {
                if e == Errno::EEXIST {
                    shm_err(name, "already exists (another broker, or a stale segment)")
                } else {
                    shm_err(name, format!("shm_open: {e}"))
                }
            })?;
        // From here on, failure must not leave the name behind.
        let cleanup = |e: Error| {
            let _ = shm_unlink(name);
            e
        };
        // shm_open applies the umask; set the mode we were asked for exactly.
        nix::sys::stat::fchmod(fd.as_fd(), mode)
            .map_err(|e| cleanup(shm_err(name, format!("fchmod: {e}"))))?;
        nix::unistd::ftruncate(&fd, size as i64)
            .map_err(|e| cleanup(shm_err(name, format!("ftruncate to {size} bytes: {e}"))))?;
        #[cfg(target_os = "linux")]
        nix::fcntl::posix_fallocate(&fd, 0, size as i64).map_err(|e| {
            cleanup(shm_err(
                name,
                format!(
                    "cannot reserve {size} bytes ({e}): is /dev/shm full? free: {} bytes",
                    free_bytes().unwrap_or(0)
                ),
            ))
        })?;
        let file = File::from(fd);
        let map = MmapOptions::new()
            .len(size as usize)
            .map_raw(&file)
            .map_err(|e| cleanup(shm_err(name, format!("mmap: {e}"))))?;
        if map.as_ptr() as usize % 64 != 0 {
            return Err(cleanup(shm_err(name, "mapping is not 64-byte aligned")));
        }
        Ok(OwnedSegment {
            name: name.to_string(),
            map,
            unlink_on_drop: true,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keep the name after drop (for tests that simulate a crashed broker).
    pub fn leak_name(&mut self) {
        self.unlink_on_drop = false;
    }
}

impl Drop for OwnedSegment {
    fn drop(&mut self) {
        if self.unlink_on_drop {
            let _ = shm_unlink(self.name.as_str());
        }
    }
}

// SAFETY: an mmap is page-aligned (so 64-aligned), valid for `len` bytes and never
// moves while the MmapRaw lives.
unsafe impl Region for OwnedSegment {
    fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}

// SAFETY: the mapping is MAP_SHARED and PROT_READ|PROT_WRITE; same address.
unsafe impl RegionMut for OwnedSegment {
    fn as_mut_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
}

/// A segment mapped read-only by a reader.
pub struct ReadOnlySegment {
    name: String,
    map: Mmap,
}

impl ReadOnlySegment {
    /// Opens `name` read-only. Refuses segments that are too small to hold a
    /// header (so a truncated file cannot SIGBUS us), that anyone but their owner
    /// may write, and that belong to a user other than us or `trusted_owner`.
    pub fn open(name: &str, trusted_owner: Option<u32>) -> Result<Self, Error> {
        let fd = shm_open(name, OFlag::O_RDONLY, Mode::empty()).map_err(|e| {
            if e == Errno::ENOENT {
                shm_err(
                    name,
                    "no such segment (stream stopped, or broker restarted)",
                )
            } else {
                shm_err(name, format!("shm_open: {e}"))
            }
        })?;
        let st = fstat(fd.as_fd()).map_err(|e| shm_err(name, format!("fstat: {e}")))?;
        if st.st_mode & 0o022 != 0 {
            return Err(shm_err(
                name,
                format!(
                    "writable by group or others (mode {:o}): refused",
                    st.st_mode & 0o777
                ),
            ));
        }
        let me = nix::unistd::geteuid().as_raw();
        if st.st_uid != me && Some(st.st_uid) != trusted_owner {
            return Err(shm_err(
                name,
                format!(
                    "owned by uid {}, not by us (uid {me}) or the broker",
                    st.st_uid
                ),
            ));
        }
        let size = st.st_size as u64;
        if size < crate::layout::HEADER_PAGE as u64 {
            return Err(Error::SegmentTooSmall {
                expected: crate::layout::HEADER_PAGE as u64,
                actual: size,
            });
        }
        let file = File::from(fd);
        // SAFETY: a read-only shared mapping. The broker changes the contents while
        // we read (that is the point; every access goes through atomics or the
        // seqlock-validated copy) and never shrinks the file: it only unlinks it,
        // which keeps our mapping valid.
        let map = unsafe { MmapOptions::new().len(size as usize).map(&file) }
            .map_err(|e| shm_err(name, format!("mmap: {e}")))?;
        Ok(ReadOnlySegment {
            name: name.to_string(),
            map,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

// SAFETY: page-aligned mapping, valid for `len` bytes while the Mmap lives.
unsafe impl Region for ReadOnlySegment {
    fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Removes a segment name (mappings stay valid until unmapped).
pub fn unlink(name: &str) -> Result<(), Error> {
    shm_unlink(name).map_err(|e| shm_err(name, format!("shm_unlink: {e}")))
}

/// Free bytes in `/dev/shm`.
pub fn free_bytes() -> Result<u64, Error> {
    let s = nix::sys::statvfs::statvfs(Path::new(SHM_DIR)).map_err(|e| shm_err(SHM_DIR, e))?;
    Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// Segment names (with the leading slash) in `/dev/shm` that start with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(SHM_DIR) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .map(|n| format!("/{n}"))
        .collect()
}

/// Whether a process id is alive (signal 0 reaches it, or it exists but is not ours).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None) {
        Ok(()) => true,
        Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// What [`remove_stale`] did with one segment.
#[derive(Debug, PartialEq, Eq)]
pub enum StaleVerdict {
    /// Its writer is gone: removed (`why` says how that was known).
    Removed {
        name: String,
        pid: u32,
        why: &'static str,
    },
    /// Its writer is alive (another broker): left alone.
    Alive { name: String, pid: u32 },
    /// Could not be read as ours (unpublished, foreign): left alone.
    Skipped { name: String, reason: String },
}

/// A heartbeat this old means the segment's writer is gone even when a process
/// with its pid exists (the pid was reused by another program). Far above
/// [`crate::layout::HEARTBEAT_STALE_MS`], so a broker that was merely slow or
/// stopped for a while keeps its segments. Also how old the file of a segment
/// that never got its magic (its writer crashed while creating it) must be to
/// be removed: a younger one may still be being created.
pub const STALE_SEGMENT_MS: u64 = 60_000;

/// Removes segments with `prefix` whose writer process is gone, and only those.
///
/// A writer is gone when its pid is dead; when its pid is this very process
/// (the caller is a broker starting up, before it created any segment: the
/// segment is from an earlier process that had the same pid, as after a
/// container restart where the broker is pid 1 again); or when its heartbeat
/// has not moved for [`STALE_SEGMENT_MS`] (its pid now belongs to another
/// program). A segment whose header never got its magic (a crash during
/// creation) is removed when its file is older than [`STALE_SEGMENT_MS`].
pub fn remove_stale(prefix: &str) -> Vec<StaleVerdict> {
    let me = std::process::id();
    let now = crate::ring::monotonic_ns();
    let mut out = Vec::new();
    for name in list(prefix) {
        match ReadOnlySegment::open(&name, None) {
            Ok(seg) => {
                // SAFETY: the mapping holds at least HEADER_PAGE bytes (checked at open),
                // page-aligned; the fields read are written once before publication.
                let h = unsafe { &*seg.as_ptr().cast::<crate::layout::Header>() };
                let magic = h.magic.load(std::sync::atomic::Ordering::Acquire);
                let pid = h.writer_pid;
                if magic != crate::layout::MAGIC {
                    let old = std::fs::metadata(Path::new(SHM_DIR).join(&name[1..]))
                        .and_then(|m| m.modified())
                        .map(|t| {
                            t.elapsed()
                                .is_ok_and(|e| e.as_millis() > u128::from(STALE_SEGMENT_MS))
                        })
                        .unwrap_or(false);
                    if old {
                        let _ = unlink(&name);
                        out.push(StaleVerdict::Removed {
                            name,
                            pid: 0,
                            why: "never initialized",
                        });
                    } else {
                        out.push(StaleVerdict::Skipped {
                            name,
                            reason: "no magic yet".into(),
                        });
                    }
                } else if let Some(why) = gone(pid, me, h, now) {
                    let _ = unlink(&name);
                    out.push(StaleVerdict::Removed { name, pid, why });
                } else {
                    out.push(StaleVerdict::Alive { name, pid });
                }
            }
            Err(e) => out.push(StaleVerdict::Skipped {
                name,
                reason: e.to_string(),
            }),
        }
    }
    out
}

/// Why the writer of a segment with header `h` is gone, or `None` if it may live.
fn gone(pid: u32, me: u32, h: &crate::layout::Header, now_ns: u64) -> Option<&'static str> {
    if pid == me {
        return Some("its pid is ours: left by an earlier process with the same pid");
    }
    if !pid_alive(pid) {
        return Some("its writer is dead");
    }
    let beat = h.heartbeat_ns.load(std::sync::atomic::Ordering::Acquire);
    (now_ns.saturating_sub(beat) > STALE_SEGMENT_MS * 1_000_000)
        .then_some("its heartbeat stopped long ago: the pid belongs to another program now")
}

#[cfg(test)]
#[path = "shm_test_support.rs"]
mod test_support;

#[cfg(test)]
mod tests {
    use super::test_support::{config, unique};
    use super::*;
    use crate::ring::{monotonic_ns, RingReader, RingWriter};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_is_exclusive_owner_only_and_unlinked_on_drop() {
        let name = unique("excl");
        let c = config();
        let seg = OwnedSegment::create(&name, c.segment_size().unwrap(), 0o600).unwrap();
        let path = Path::new(SHM_DIR).join(&name[1..]);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            OwnedSegment::create(&name, 4096, 0o600).is_err(),
            "second create must fail"
        );
        let mut w = RingWriter::create(&seg, &c).unwrap();
        w.publish(&vec![7u8; 16 * 8 * 3], 1, 2).unwrap();
        let ro = ReadOnlySegment::open(&name, None).unwrap();
        let mut r = RingReader::open(&ro).unwrap();
        let mut buf = vec![0; 16 * 8 * 3];
        assert_eq!(r.try_latest(&mut buf).unwrap().unwrap().number, 1);
        assert!(buf.iter().all(|b| *b == 7));
        drop(seg);
        assert!(!path.exists());
        // The reader's mapping outlives the unlink.
        assert_eq!(r.last_frame(), 1);
    }

    #[test]
    fn foreign_or_broken_segments_are_refused() {
        let name = unique("bad");
        let path = Path::new(SHM_DIR).join(&name[1..]);
        // Too small to hold a header.
        std::fs::write(&path, [0u8; 100]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            ReadOnlySegment::open(&name, None),
            Err(Error::SegmentTooSmall { .. })
        ));
        // Right size, garbage inside.
        std::fs::write(&path, vec![0xABu8; 8192]).unwrap();
        let seg = ReadOnlySegment::open(&name, None).unwrap();
        assert!(matches!(
            RingReader::open(&seg),
            Err(Error::BadMagic { .. })
        ));
        // Owned by another user (only root can hand a file to someone else; CI runs
        // as root, elsewhere this step is skipped and says so).
        if nix::unistd::geteuid().is_root() {
            std::fs::write(&path, vec![0u8; 8192]).unwrap();
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let e = ReadOnlySegment::open(&name, None).err().unwrap();
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
            assert!(
                ReadOnlySegment::open(&name, Some(65534)).is_ok(),
                "trusted owner accepted"
            );
            std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        } else {
            eprintln!(
                "not root: cannot chown a segment to another user; foreign-owner check not run"
            );
        }
        // World-writable.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = ReadOnlySegment::open(&name, None).err().unwrap();
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn stale_segments_of_dead_writers_are_removed_live_ones_kept() {
        let prefix = format!("fbstale{}-", std::process::id());
        let dead_name = format!("/{prefix}a.1");
        let live_name = format!("/{prefix}b.1");
        let mut c = config();
        // A pid that cannot be alive: beyond pid_max on every Linux.
        c.writer_pid = 4_194_304 + 1;
        let mut dead = OwnedSegment::create(&dead_name, c.segment_size().unwrap(), 0o600).unwrap();
        RingWriter::create(&dead, &c).unwrap();
        dead.leak_name();
        drop(dead);
        c.writer_pid = 1; // init: alive, not us
        let live = OwnedSegment::create(&live_name, c.segment_size().unwrap(), 0o600).unwrap();
        RingWriter::create(&live, &c).unwrap();
        let mut v = remove_stale(&prefix);
        v.sort_by_key(|v| format!("{v:?}"));
        assert!(
            v.contains(&StaleVerdict::Removed {
                name: dead_name.clone(),
                pid: 4_194_305,
                why: "its writer is dead"
            }),
            "{v:?}"
        );
        assert!(
            v.contains(&StaleVerdict::Alive {
                name: live_name.clone(),
                pid: 1
            }),
            "{v:?}"
        );
        assert!(!Path::new(SHM_DIR).join(&dead_name[1..]).exists());
        assert!(Path::new(SHM_DIR).join(&live_name[1..]).exists());
    }

    #[test]
    fn unpublished_segments_are_removed_only_when_old() {
        let prefix = format!("fbunpub{}-", std::process::id());
        let (young, old) = (format!("/{prefix}young.1"), format!("/{prefix}old.1"));
        for name in [&young, &old] {
            // Created but never published: no magic (a crash during creation).
            let mut seg = OwnedSegment::create(name, 8192, 0o600).unwrap();
            seg.leak_name();
        }
        let long_ago = std::time::SystemTime::now()
            - std::time::Duration::from_millis(STALE_SEGMENT_MS + 1_000);
        std::fs::File::options()
            .write(true)
            .open(Path::new(SHM_DIR).join(&old[1..]))
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let v = remove_stale(&prefix);
        assert!(
            v.contains(&StaleVerdict::Removed {
                name: old.clone(),
                pid: 0,
                why: "never initialized"
            }),
            "{v:?}"
        );
        assert!(
            v.contains(&StaleVerdict::Skipped {
                name: young.clone(),
                reason: "no magic yet".into()
            }),
            "{v:?}"
        );
        assert!(!Path::new(SHM_DIR).join(&old[1..]).exists());
        unlink(&young).unwrap();
    }

    #[test]
    fn segments_of_a_reused_pid_are_removed() {
        let prefix = format!("fbreuse{}-", std::process::id());
        let mut c = config();
        // Left by an earlier process with our pid (a container's broker is pid 1
        // after every restart): the caller has not created any segment yet.
        let ours = format!("/{prefix}ours.1");
        c.writer_pid = std::process::id();
        let mut seg = OwnedSegment::create(&ours, c.segment_size().unwrap(), 0o600).unwrap();
        RingWriter::create(&seg, &c).unwrap();
        seg.leak_name();
        drop(seg);
        // Written by a pid that is alive now (init) but whose heartbeat stopped
        // long ago: the pid was reused by another program.
        let reused = format!("/{prefix}reused.1");
        c.writer_pid = 1;
        let mut seg = OwnedSegment::create(&reused, c.segment_size().unwrap(), 0o600).unwrap();
        {
            let w = RingWriter::create(&seg, &c).unwrap();
            let long_ago = monotonic_ns().saturating_sub((STALE_SEGMENT_MS + 1_000) * 1_000_000);
            w.header()
                .heartbeat_ns
                .store(long_ago, std::sync::atomic::Ordering::Release);
        }
        seg.leak_name();
        drop(seg);
        // Alive, heartbeat fresh: kept (the other test covers it too).
        let live = format!("/{prefix}live.1");
        let seg_live = OwnedSegment::create(&live, c.segment_size().unwrap(), 0o600).unwrap();
        RingWriter::create(&seg_live, &c).unwrap();

        let v = remove_stale(&prefix);
        let removed: Vec<_> = v
            .iter()
            .filter_map(|v| match v {
                StaleVerdict::Removed { name, why, .. } => Some((name.as_str(), *why)),
                _ => None,
            })
            .collect();
        assert_eq!(removed.len(), 2, "{v:?}");
        assert!(
            removed
                .iter()
                .any(|(n, w)| *n == ours && w.contains("pid is ours")),
            "{v:?}"
        );
        assert!(
            removed
                .iter()
                .any(|(n, w)| *n == reused && w.contains("heartbeat")),
            "{v:?}"
        );
        assert!(!Path::new(SHM_DIR).join(&ours[1..]).exists());
        assert!(!Path::new(SHM_DIR).join(&reused[1..]).exists());
        assert!(Path::new(SHM_DIR).join(&live[1..]).exists());
    }
}
