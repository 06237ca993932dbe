"""Reading a stream's shared-memory ring: the Python twin of ``RingReader`` in
``proto/src/ring.rs``, over the layout of ``proto/doc/layout.md``.

The segment is opened as ``/dev/shm/<name>`` and mapped **read-only** with
``mmap`` (not ``multiprocessing.shared_memory``, whose resource tracker would
unlink the broker's segment when this process exits). Nothing here ever writes
to the mapping.

Seqlock reads, as the layout prescribes, all in :meth:`Ring._read`: read the
slot's ``seq`` (odd: the writer is inside, retry), check the slot holds the
wanted frame, copy the payload into an array the caller owns (or, for a
zero-copy view, leave it in the slot), re-read ``seq``; a change means the frame
was overwritten meanwhile, and it is retried.

Memory ordering (the argument in full: ``proto/doc/decisions.md``, "Seqlock
reads from Python"). The header words are read with single aligned 8- or 4-byte
loads (indexing a ``memoryview`` cast to ``Q``/``I``, which loads the whole word
at once). The protocol needs two orderings on the reader's side: the first
``seq`` load before the payload and metadata loads, and those before the second
``seq`` load. On x86-64 (total store order) loads are never reordered with
other loads, so plain loads give both and the read path has no fence. Anywhere
else (aarch64, ...) a load may pass an earlier one, and pure Python cannot emit
a fence: the read path then calls ``atomic_thread_fence`` of the system's
``libatomic.so.1`` through ``ctypes`` at those two points (a ``dmb ish`` on
aarch64, about 0.2 µs per call). Without ``libatomic`` such a machine gets a
clear error at open instead of reads that could pass a torn frame as whole.
``FRAMEBROKER_RING_FENCE=always`` takes the fenced path on x86-64 too (the tests
run both paths that way).

The read path is the hot path of every client: each attribute lookup, call and
temporary object costs, and more so right after the reader wakes up with cold
caches. So a read is a handful of ``memoryview`` word loads and one copy, and a
read that has to wait first calls a futex wait prepared when the ring was
opened (``Ring._wait_once``). Frames
up to :data:`_MV_COPY_MAX` bytes are copied by ``memoryview`` slice assignment
(a plain ``memcpy``, far less set-up than ``numpy.copyto``); larger frames go
through ``numpy.copyto``, which releases the GIL while it copies so other
threads are not held up for the whole copy.

Where the package was built with its C extension (``_fastring.c``: Linux, a C
compiler at install), the reads that copy a frame, and a blocking read's first
wait, run compiled instead: the same looks, loads and copy, with C11 atomics
for the ordering, and without the interpreter between the wake-up and the copy
(proto/doc/decisions.md, "A compiled read path for Python"). Zero-copy views and
everything past a blocking read's first slice stay here. The pure path is the
reference; ``FRAMEBROKER_READ_PATH=python`` takes it where the compiled one is
built (the ring tests run every test on both).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import mmap
import os
import stat
import sys
import time
import zlib
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Tuple, TypeVar

import numpy as np

from . import _layout as L
from ._errors import (
    ChecksumMismatch,
    Contended,
    FrameBrokerError,
    ReadTimeout,
    SegmentError,
    StreamEnded,
    WriterGone,
)
from ._layout import PixelFormat, StreamState
from ._wait import WordWaiter, futex_retry
from ._platform import WINDOWS, machine

if WINDOWS:
    from . import _win32

try:  # the compiled read path, when the package was built with it
    from . import _fastring
except ImportError:
    _fastring = None  # type: ignore[assignment]

log = logging.getLogger("framebroker.ring")

#: Where POSIX shared memory is visible as files on Linux.
SHM_DIR = "/dev/shm"
#: Attempts at one frame before giving up (the writer lapping the ring under us).
_RETRIES = 64
#: Loads are not reordered with other loads here (total store order), so the
#: seqlock read needs no fence (see the module docstring).
_TSO = machine() in ("x86_64", "amd64", "i386", "i686", "x86")
#: Environment variable choosing where the read path fences: ``auto`` (the
#: default: wherever loads may be reordered, i.e. off x86) or ``always``.
FENCE_ENV = "FRAMEBROKER_RING_FENCE"
#: C11 ``memory_order_acquire``, the argument of ``atomic_thread_fence``.
_MEMORY_ORDER_ACQUIRE = 2
#: Largest frame copied by ``memoryview`` slice assignment, which holds the GIL
#: while it copies (about 60 µs for 2 MiB); larger ones use ``numpy.copyto``.
_MV_COPY_MAX = 2 << 20
#: The first wait of a blocking read before it looks at the stream's health
#: again: the reader's slice, so a dead broker is noticed as soon as before.
_SLICE_S = L.READER_SLICE_MS / 1000
_SLICE_NS = L.READER_SLICE_MS * 1_000_000
#: Environment variable choosing the read path: ``auto`` (the default: compiled
#: where the package was built with it) or ``python``.
READ_PATH_ENV = "FRAMEBROKER_READ_PATH"
#: The ``state`` words after which no frame comes (``StreamState.is_final``).
_FINAL_STATES = frozenset(int(s) for s in StreamState if s.is_final)
_WAKE_D = L.WAKE_OFF // 4
_STATE_D = L.STATE_OFF // 4
#: Word indexes (u64) of header fields, and of slot fields relative to the slot's
#: first word: the read path indexes ``memoryview``\ s with these.
_LAST_FRAME_W = L.LAST_FRAME_OFF // 8
_SEQ_W = L.SLOT_SEQ_OFF // 8
_NUMBER_W = L.SLOT_FRAME_OFF // 8
_WALL_W = L.SLOT_WALL_NS_OFF // 8
_MONO_W = L.SLOT_MONO_NS_OFF // 8
_LEN_W = L.SLOT_LEN_OFF // 8
_CHECKSUM_D = L.SLOT_CHECKSUM_OFF // 4
_PTS_W = L.SLOT_PTS_NS_OFF // 8
_STREAM_W = L.SLOT_STREAM_NS_OFF // 8
#: ``PTS_UNKNOWN`` as the u64 word the slot holds, and the largest i64.
_PTS_UNKNOWN_U64 = L.PTS_UNKNOWN & ((1 << 64) - 1)
_I64_MAX = (1 << 63) - 1

T = TypeVar("T")


def monotonic_ns() -> int:
    """``CLOCK_MONOTONIC`` in ns: the clock of the broker's heartbeat and ``mono_ns``
    (on Windows ``QueryPerformanceCounter`` in ns, which is ``perf_counter_ns``)."""
    if WINDOWS:
        return time.perf_counter_ns()
    if hasattr(time, "clock_gettime_ns") and hasattr(time, "CLOCK_MONOTONIC"):
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    return time.monotonic_ns()


@dataclass(frozen=True)
class RingInfo:
    """Geometry and identity of a ring, from its header (fixed for its life)."""

    segment: str
    stream_id: str
    width: int
    height: int
    pixel_format: PixelFormat
    slot_count: int
    frame_bytes: int
    slot_stride: int
    segment_size: int
    generation: int
    writer_pid: int
    checksum: bool
    created_wall_ns: int

    @property
    def frame_shape(self) -> Tuple[int, ...]:
        return self.pixel_format.frame_shape(self.width, self.height)


class FrameMeta(NamedTuple):
    """What came with one frame. (A named tuple: made once per frame on the hot path.)"""

    #: Frame number in this segment, counting from 1.
    number: int
    #: Capture time, ns since the Unix epoch.
    wall_ns: int
    #: Capture time, ``CLOCK_MONOTONIC`` ns (comparable across processes on the host).
    mono_ns: int
    #: Payload bytes.
    len: int
    #: Frames between the previous one this reader returned and this one that it
    #: never saw (skipped on purpose in latest mode, overwritten in sequential mode).
    missed: int
    #: CRC-32 of the payload when the segment carries checksums, else 0.
    checksum: int
    #: Presentation time on the stream's own clock, ns; ``None`` when unknown.
    pts_ns: Optional[int] = None
    #: Capture time on the stream's clock mapped onto the wall clock, ns since the
    #: Unix epoch (see proto/doc/layout.md); ``None`` when unknown.
    stream_ns: Optional[int] = None


#: Builds a :class:`FrameMeta` from a tuple in one C call (its own ``__new__`` is
#: Python code).
_new_meta = tuple.__new__

#: What :meth:`Ring._read` copies into when the caller gave no array: a new one,
#: made by numpy's ``copy()`` of the slot in one call. That allocates and copies
#: in C, where ``new_array()`` and a copy into it were four calls (the array, a
#: byte view of it, the slice, the copy), each dearer right after the reader
#: woke with cold caches. Taking turns with the four calls on one broker, it
#: saved 20-55 µs of a 640x480 ``read()``'s 330-450 in three runs, and 0-67 µs
#: of 1,130-1,230 at 1080p in two (``bench/reader_cost.py --ways "read()"
#: --against REV``). Never written: only its identity is used.
_NEW_ARRAY = np.empty(0, np.uint8)
#: What a read raises with when the writer laps it every time.
_CONTENDED = "the writer kept overwriting the frame being read"


def segment_path(name: str) -> str:
    """``/dev/shm/<name without its leading slash>``; refuses names that could
    point anywhere else."""
    bare = name[1:] if name.startswith("/") else name
    if not bare or "/" in bare or bare in (".", "..") or "\0" in bare:
        raise SegmentError(name, "not a shared-memory segment name")
    return os.path.join(SHM_DIR, bare)


@functools.lru_cache(maxsize=None)
def _libatomic_fence() -> Callable[[], None]:
    """``atomic_thread_fence(memory_order_acquire)`` from the system's libatomic, as a
    callable of no arguments; raises ``OSError`` when the library is missing."""
    # PyDLL: the call keeps the GIL (it takes nanoseconds; releasing and re-taking
    # the GIL around it would cost more than the fence).
    fn = ctypes.PyDLL("libatomic.so.1").atomic_thread_fence
    fn.argtypes = [ctypes.c_int]
    fn.restype = None
    return functools.partial(fn, _MEMORY_ORDER_ACQUIRE)


def read_fence() -> Optional[Callable[[], None]]:
    """The fence the seqlock read path calls between its loads, or ``None`` where
    loads are not reordered with loads (x86). ``$FRAMEBROKER_RING_FENCE=always``
    asks for the fence on x86 too. Raises :class:`FrameBrokerError` when this
    machine needs a fence and none can be had."""
    mode = os.environ.get(FENCE_ENV, "").strip().lower() or "auto"
    if mode not in ("auto", "always"):
        raise FrameBrokerError(f"{FENCE_ENV}={mode!r}: expected 'auto' or 'always'")
    if mode == "auto" and _TSO:
        return None
    try:
        return _libatomic_fence()
    except (OSError, AttributeError) as e:
        raise FrameBrokerError(
            f"reading frames on {machine() or 'this CPU'} needs a memory fence between "
            f"loads, taken from libatomic.so.1, which cannot be loaded ({e}); install it "
            "(Debian/Ubuntu: apt-get install libatomic1; Fedora: dnf install libatomic)"
        ) from None


def compiled_read_path() -> bool:
    """Whether rings opened now read through the compiled path: built, and not
    turned off with ``$FRAMEBROKER_READ_PATH=python``."""
    mode = os.environ.get(READ_PATH_ENV, "").strip().lower() or "auto"
    if mode not in ("auto", "python"):
        raise FrameBrokerError(f"{READ_PATH_ENV}={mode!r}: expected 'auto' or 'python'")
    return mode == "auto" and _fastring is not None


class Ring:
    """One reader of one segment. Not thread-safe; never writes to the segment.

    ``latest()`` returns the newest frame this reader has not returned yet (the
    first call returns the frame already published at open); ``next()`` returns
    every frame in order while the reader keeps up within the ring, counting the
    ones it lost in ``FrameMeta.missed``.
    """

    def __init__(
        self,
        segment: str,
        *,
        trusted_owner: Optional[int] = None,
        stale_after_s: float = L.HEARTBEAT_STALE_MS / 1000,
        use_futex: Optional[bool] = None,
        verify_checksum: bool = False,
    ) -> None:
        if sys.byteorder != "little":
            raise SegmentError(segment, "the ring layout is little-endian; this host is not")
        #: The fence between the seqlock's loads; ``None`` on x86 (see
        #: :func:`read_fence`). Settled before anything is opened.
        self._fence = read_fence()
        self.name = segment
        self.stale_after_s = stale_after_s
        self.verify_checksum = verify_checksum
        self._mm: Optional[mmap.mmap] = None
        #: The compiled read path over this ring's slots (``None``: pure Python).
        self._fast: "Optional[_fastring.Slots]" = None
        self._mm = self._map(segment, trusted_owner)
        try:
            self.info = self._check_header(segment, self._mm)
            self._make_views(self._mm)
        except BaseException:
            self.close()
            raise
        self._waiter = self._open_waiter(use_futex)
        #: The futex wait of one slice, ready to call (``None``: other waiters).
        self._slice_wait = self._waiter.prepared(_SLICE_S) if isinstance(self._waiter, WordWaiter) else None
        if compiled_read_path():
            self._fast = self._open_fast(self._mm)
        last = self.last_frame()
        #: Number of the last frame this reader returned (0: none).
        self.cursor = max(last - 1, 0)

    # -- opening

    def _open_fast(self, mm: mmap.mmap) -> "_fastring.Slots":
        """The compiled read path over this mapping, told every offset it reads
        (it checks each against the mapping's length). It holds a buffer export
        on the mapping for as long as it lives, like a view."""
        headers = [8 * w for w in self._slot_w]  # the slots' byte offsets, from their word indexes
        return _fastring.Slots(
            mm,
            headers,
            [h + L.SLOT_HEADER for h in headers],
            self._frame_bytes,
            L.WAKE_OFF,
            L.LAST_FRAME_OFF,
            L.STATE_OFF,
            _FINAL_STATES,
            (
                L.SLOT_SEQ_OFF,
                L.SLOT_FRAME_OFF,
                L.SLOT_WALL_NS_OFF,
                L.SLOT_MONO_NS_OFF,
                L.SLOT_LEN_OFF,
                L.SLOT_CHECKSUM_OFF,
                L.SLOT_PTS_NS_OFF,
                L.SLOT_STREAM_NS_OFF,
            ),
            _RETRIES,
        )

    def _open_waiter(self, use_futex: Optional[bool]) -> "WordWaiter | _win32.EventWaiter":
        """What sleeps until the wake word changes: the futex on the word (or the
        sleeping poll with ``use_futex=False``); on Windows the segment's wake events."""
        if WINDOWS and use_futex is not False:
            try:
                return _win32.EventWaiter(self.name)
            except BaseException:
                self.close()
                raise
        return WordWaiter(self._base + L.WAKE_OFF, self.wake_word, use_futex)

    @staticmethod
    def _map(name: str, trusted_owner: Optional[int]) -> mmap.mmap:
        """The segment, mapped read-only. On Windows the named mapping of
        :func:`framebroker._win32.open_mapping`, which only the broker's user can
        open (its DACL), so ``trusted_owner`` is not needed there."""
        if WINDOWS:
            return _win32.open_mapping(name)
        path = segment_path(name)
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise SegmentError(name, "no such segment (stream stopped, or broker restarted)") from None
        except OSError as e:
            raise SegmentError(name, f"cannot open {path}: {e.strerror or e}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SegmentError(name, f"{path} is not a regular file")
            if st.st_mode & 0o022:
                raise SegmentError(
                    name, f"writable by group or others (mode {st.st_mode & 0o777:o}): refused"
                )
            me = os.geteuid()
            if st.st_uid != me and st.st_uid != trusted_owner:
                raise SegmentError(name, f"owned by uid {st.st_uid}, not by us (uid {me}) or the broker")
            # Checked before mapping: reading past the end of the file would SIGBUS.
            if st.st_size < L.HEADER_PAGE:
                raise SegmentError(
                    name, f"segment too small: need {L.HEADER_PAGE} bytes, have {st.st_size}"
                )
            try:
                return mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ)
            except OSError as e:
                raise SegmentError(name, f"mmap: {e.strerror or e}") from None
        finally:
            os.close(fd)

    @staticmethod
    def _check_header(name: str, mm: mmap.mmap) -> RingInfo:
        """Validates the header exactly like ``RingReader::open``."""

        def u32(off: int) -> int:
            return int.from_bytes(mm[off : off + 4], "little")

        def u64(off: int) -> int:
            return int.from_bytes(mm[off : off + 8], "little")

        def bad(reason: str) -> SegmentError:
            return SegmentError(name, f"bad segment: {reason}")

        magic = int(np.frombuffer(mm, dtype="<u8", count=1, offset=L.MAGIC_OFF).item(0))
        if magic != L.MAGIC:
            raise SegmentError(
                name,
                f"not a framebroker segment (magic {magic:#018x}); it may still be starting, or be foreign",
            )
        version = u32(L.LAYOUT_VERSION_OFF)
        if version != L.LAYOUT_VERSION:
            raise SegmentError(
                name,
                f"segment layout version {version}, this client reads version {L.LAYOUT_VERSION}: "
                "upgrade the older side",
            )
        code = u32(L.PIXEL_FORMAT_OFF)
        try:
            pf = PixelFormat(code)
        except ValueError:
            raise bad(f"unknown pixel format {code}") from None
        width, height = u32(L.WIDTH_OFF), u32(L.HEIGHT_OFF)
        try:
            frame_bytes = L.validate_geometry(width, height, pf)
        except ValueError as e:
            raise bad(str(e)) from None
        if u32(L.HEADER_SIZE_OFF) != L.HEADER_PAGE or u64(L.SLOTS_OFFSET_OFF) != L.HEADER_PAGE:
            raise bad("header size or slot offset is not 4096")
        slots = u32(L.SLOT_COUNT_OFF)
        if not L.MIN_SLOTS <= slots <= L.MAX_SLOTS:
            raise bad(f"slot count {slots} out of range")
        stride = u64(L.SLOT_STRIDE_OFF)
        if u64(L.FRAME_BYTES_OFF) != frame_bytes or stride != L.slot_stride(frame_bytes):
            raise bad("frame size or slot stride disagrees with the geometry")
        size = u64(L.SEGMENT_SIZE_OFF)
        if size != L.segment_size(frame_bytes, slots):
            raise bad("segment size disagrees with the geometry")
        if len(mm) < size:
            raise SegmentError(name, f"segment too small: need {size} bytes, have {len(mm)}")
        id_len = min(u32(L.STREAM_ID_LEN_OFF), L.MAX_ID_LEN)
        stream_id = mm[L.STREAM_ID_OFF : L.STREAM_ID_OFF + id_len].decode("utf-8", "replace")
        return RingInfo(
            segment=name,
            stream_id=stream_id,
            width=width,
            height=height,
            pixel_format=pf,
            slot_count=slots,
            frame_bytes=frame_bytes,
            slot_stride=stride,
            segment_size=size,
            generation=u64(L.GENERATION_OFF),
            writer_pid=u32(L.WRITER_PID_OFF),
            checksum=bool(u32(L.FLAGS_OFF) & L.FLAG_CHECKSUM),
            created_wall_ns=u64(L.CREATED_WALL_NS_OFF),
        )

    def _make_views(self, mm: mmap.mmap) -> None:
        i = self.info
        # Every array view derives from one np.frombuffer array, which holds a buffer
        # export on the mmap: while any view (ours or one handed to the caller) lives,
        # the mmap refuses to close, so nothing can be unmapped under a view.
        # (np.ndarray(buffer=mm) alone would not hold the export.)
        raw = np.frombuffer(mm, dtype=np.uint8)
        # Payloads shaped as frames (rows packed, no padding), one per slot.
        shape = self._shape = i.frame_shape
        inner = [1] * len(shape)
        for k in range(len(shape) - 2, -1, -1):
            inner[k] = inner[k + 1] * shape[k + 1]
        self._frames = np.ndarray(
            (i.slot_count,) + shape,
            np.uint8,
            raw,
            L.HEADER_PAGE + L.SLOT_HEADER,
            (i.slot_stride,) + tuple(inner),
        )
        # One ready-made view per slot: indexing a 4-d array costs microseconds per read.
        self._slot_frames = list(self._frames)
        # The same memory as memoryviews, for the read path: the whole segment as
        # u64 and u32 words (one aligned load per index), and each payload as bytes.
        # Each holds a buffer export on the mmap too, and is dropped in close().
        mv = memoryview(mm)[: i.segment_size]
        self._w64 = mv.cast("Q")
        self._w32 = mv.cast("I")
        self._payloads = [
            mv[off : off + i.frame_bytes]
            for off in range(L.HEADER_PAGE + L.SLOT_HEADER, i.segment_size, i.slot_stride)
        ]
        del mv
        #: Word index of each slot's header in ``_w64``.
        self._slot_w = [(L.HEADER_PAGE + k * i.slot_stride) // 8 for k in range(i.slot_count)]
        self._mv_copy = i.frame_bytes <= _MV_COPY_MAX
        #: Whether frames are BGR already (what OpenCV users get without conversion).
        self.bgr24 = i.pixel_format is PixelFormat.BGR24
        self._frame_bytes = i.frame_bytes
        self._checked_dst: Optional[np.ndarray] = None
        self._checked_mv: Optional[memoryview] = None
        self._slots = i.slot_count
        self._base = int(raw.ctypes.data)

    # -- header words

    def last_frame(self) -> int:
        """Number of the newest published frame (0: none yet)."""
        return self._w64[_LAST_FRAME_W]  # type: ignore[no-any-return]

    def heartbeat_ns(self) -> int:
        return self._w64[L.HEARTBEAT_NS_OFF // 8]  # type: ignore[no-any-return]

    def heartbeat_age_s(self) -> float:
        return max(monotonic_ns() - self.heartbeat_ns(), 0) / 1e9

    def state(self) -> StreamState:
        v = self._w32[L.STATE_OFF // 4]
        try:
            return StreamState(v)
        except ValueError:
            return StreamState.FAILED

    def wake_word(self) -> int:
        return self._w32[L.WAKE_OFF // 4]  # type: ignore[no-any-return]

    def fps(self) -> float:
        """Measured input rate the broker publishes (0 until measured)."""
        return self._w32[L.FPS_MILLI_OFF // 4] / 1000.0  # type: ignore[no-any-return]

    def frames_dropped(self) -> int:
        return self._w64[L.FRAMES_DROPPED_OFF // 8]  # type: ignore[no-any-return]

    @property
    def closed(self) -> bool:
        return self._mm is None

    # -- reading

    def new_array(self) -> np.ndarray:
        """An array the shape of one frame, for :meth:`latest` / :meth:`next`."""
        return np.empty(self._shape, np.uint8)

    def fits(self, dst: np.ndarray) -> bool:
        """Whether ``dst`` can receive a frame: writable, C-contiguous uint8 of the
        frame's shape. (The last array that fitted is remembered, with a byte view
        of it for the copy: the check is on the hot path of every read.)"""
        if dst is self._checked_dst and dst.shape == self._shape:
            return True
        ok = (
            dst.shape == self._shape
            and dst.dtype == np.uint8
            and bool(dst.flags.writeable)
            and bool(dst.flags.c_contiguous)
        )
        if ok:
            self._checked_dst = dst
            self._checked_mv = memoryview(dst).cast("B") if self._mv_copy else None
        return ok

    def _check_dst(self, dst: np.ndarray) -> None:
        if not self.fits(dst):
            raise ValueError(
                f"destination must be a writable C-contiguous uint8 array of shape {self._shape}, "
                f"got {dst.dtype} {dst.shape}"
            )

    def _verify(self, meta: FrameMeta, dst: np.ndarray) -> None:
        if self.verify_checksum and self.info.checksum:
            crc = zlib.crc32(dst.data.cast("B")) & 0xFFFFFFFF
            if crc != meta.checksum:
                raise ChecksumMismatch(self.info.stream_id, meta.number, meta.checksum, crc)

    def has_new_frame(self) -> bool:
        """Whether :meth:`try_latest` (or :meth:`try_next`) would find a frame now."""
        return self._w64[_LAST_FRAME_W] > self.cursor  # type: ignore[no-any-return]

    def read_into(
        self, out: Optional[np.ndarray], sequential: bool = False
    ) -> Optional[Tuple[FrameMeta, np.ndarray]]:
        """The newest frame not returned yet (with ``sequential``: the next one in
        order, or the oldest still in the ring when the reader fell behind), copied
        into ``out`` when it :meth:`fits`, else into a new array. Returns the
        metadata and the array, or ``None`` when there is no such frame. Never waits.

        This is the read path of every client: a few word loads around one copy,
        in :meth:`_read` (see the module docstring)."""
        w = self._w64
        if w is None:
            raise SegmentError(self.name, "ring is closed")
        if w[_LAST_FRAME_W] <= self.cursor:
            # Nothing new: the usual answer of the calls a reader makes before it
            # waits, so it allocates nothing (a frame-sized array costs a
            # mmap/munmap pair).
            return None
        dst = out
        if dst is None or (dst is not self._checked_dst and not self.fits(dst)):
            dst = _NEW_ARRAY
        got = self._read(sequential, dst)
        if got is None:
            return None
        meta, frame = got[0], got[3]
        if self.verify_checksum:
            self._verify(meta, frame)
        return meta, frame  # type: ignore[return-value]

    def _read(
        self, sequential: bool, dst: Optional[np.ndarray]
    ) -> Optional[Tuple[FrameMeta, int, int, Optional[np.ndarray]]]:
        """The one seqlock read of the ring, and its retry loop: the frame
        the reader wants, copied into ``dst`` (which :meth:`fits`), into a new
        array when ``dst`` is :data:`_NEW_ARRAY`, or, when ``dst`` is ``None``,
        left in its slot (a zero-copy view). Returns the metadata, the slot
        index, the even sequence the read saw (a view's stamp) and the array the
        frame is in (``None`` for a view), or ``None`` when there is no such
        frame; the cursor moves to it.

        Ordering: on x86 loads keep their program order. Elsewhere ``fence`` (1)
        keeps the loads of ``last_frame`` and the first ``seq`` before every load
        of the slot's frame number, payload and metadata, and (2) keeps those
        before the second ``seq`` load: the reader's side of the protocol's
        Acquire pairs (``proto/doc/decisions.md``, "Seqlock reads from Python")."""
        fast = self._fast
        if fast is not None and dst is not None:
            if dst is _NEW_ARRAY:
                dst = np.empty(self._shape, np.uint8)
            return self._fast_read(fast.read(self.cursor, sequential, dst), dst)
        w = self._w64
        fence = self._fence
        slots = self._slots
        for _ in range(_RETRIES):
            # The frame wanted (numbers start at 1): ``latest`` wants the newest;
            # ``sequential`` the one after the cursor or, when the reader fell
            # behind, the oldest one the writer will not overwrite next.
            want = w[_LAST_FRAME_W]
            cursor = self.cursor
            if want <= cursor:
                return None
            if sequential and cursor + 1 < want:
                want = max(cursor + 1, want + 2 - slots)
            idx = want % slots
            o = self._slot_w[idx]
            # Seqlock read: even sequence, the wanted frame, copy, same sequence after.
            s1 = w[o + _SEQ_W]
            if fence is not None:
                fence()  # (1): pairs with the writer's Release store of the even seq
            if s1 & 1 or w[o + _NUMBER_W] != want:
                continue
            frame = dst
            if dst is _NEW_ARRAY:
                frame = self._slot_frames[idx].copy()
            elif dst is not None:
                if self._mv_copy:
                    self._checked_mv[:] = self._payloads[idx]  # type: ignore[index]
                else:
                    np.copyto(dst, self._slot_frames[idx])
            wall, mono, ln = w[o + _WALL_W], w[o + _MONO_W], w[o + _LEN_W]
            crc = self._w32[2 * o + _CHECKSUM_D]
            pts, sns = w[o + _PTS_W], w[o + _STREAM_W]
            if fence is not None:
                fence()  # (2): pairs with the writer's Release fence after the odd seq
            if w[o + _SEQ_W] != s1:
                continue  # overwritten during the copy
            return self._meta(want, wall, mono, ln, crc, pts, sns), idx, s1, frame
        raise Contended(self.info.stream_id, _CONTENDED)

    def _meta(self, want: int, wall: int, mono: int, ln: int, crc: int, pts: int, sns: int) -> FrameMeta:
        """The metadata of frame ``want`` from its slot's words, as read on either
        path; the cursor moves to it."""
        # The stream clock: both unknown when either is (a call costs more than the test).
        if sns == 0 or pts == _PTS_UNKNOWN_U64:
            pts = sns = None  # type: ignore[assignment]
        elif pts > _I64_MAX:
            pts -= 1 << 64
        fb = self._frame_bytes
        missed = want - self.cursor - 1
        self.cursor = want
        meta = (want, wall, mono, ln if ln < fb else fb, missed, crc, pts, sns)
        return _new_meta(FrameMeta, meta)  # type: ignore[no-any-return]

    def _fast_read(
        self, got: "Optional[Tuple[int, ...] | bool]", dst: np.ndarray
    ) -> Optional[Tuple[FrameMeta, int, int, np.ndarray]]:
        """What :meth:`_read` returns, from what the compiled path returned."""
        if got is None:
            return None
        if got is False:
            raise Contended(self.info.stream_id, _CONTENDED)
        want, idx, s1, wall, mono, ln, crc, pts, sns = got  # type: ignore[misc]
        return self._meta(want, wall, mono, ln, crc, pts, sns), idx, s1, dst

    def read_wait(
        self, out: Optional[np.ndarray], sequential: bool, timeout_s: Optional[float]
    ) -> Tuple[FrameMeta, np.ndarray]:
        """:meth:`read_into`, waiting for a frame as :meth:`latest` / :meth:`next`
        do (and raising what they raise). The one call a capture's ``read()``
        makes per frame: a reader faster than the camera spends most frames here,
        and every layer it skips is saved on each of them."""
        if self._fast_waits(timeout_s):
            if out is None or (out is not self._checked_dst and not self.fits(out)):
                out = np.empty(self._shape, np.uint8)
            return self._fast_wait(out, sequential, timeout_s), out
        since = self._wait_once(timeout_s)
        got = self.read_into(out, sequential)
        if got is not None:
            return got
        return self._wait_for(timeout_s, lambda: self.read_into(out, sequential), since)

    def _fast_wait(self, dst: np.ndarray, sequential: bool, timeout_s: Optional[float]) -> FrameMeta:
        """A blocking read on the compiled path (``dst`` fits): its look, its first
        slice's wait, the look after it and the copy in one call; when that
        brings nothing, :meth:`_wait_for` does the rest as on the pure path."""
        since = time.monotonic()
        try:
            got = self._fast.wait_read(self.cursor, sequential, dst, _SLICE_NS)  # type: ignore[union-attr]
        except OSError as e:
            log.debug("futex wait on %s failed (%s); waiting in Python from now on", self.name, e)
            self._slice_wait = None  # the general waiter finds out and says so
            got = None
        read = self._fast_read(got, dst)
        if read is not None:
            meta = read[0]
            if self.verify_checksum:
                self._verify(meta, dst)
            return meta
        attempt = self.try_next if sequential else self.try_latest
        return self._wait_for(timeout_s, lambda: attempt(dst), since)

    def _fast_waits(self, timeout_s: Optional[float]) -> bool:
        """Whether a blocking read takes :meth:`_fast_wait`: built, the futex
        usable, and a timeout of at least a slice."""
        if self._fast is None or self._slice_wait is None:
            return False
        return timeout_s is None or timeout_s >= _SLICE_S

    def try_latest(self, dst: np.ndarray) -> Optional[FrameMeta]:
        """The newest frame not returned yet, copied into ``dst`` (which must
        :meth:`fit <fits>`); ``None`` when there is none. Never waits."""
        if dst is not self._checked_dst:
            self._check_dst(dst)
        got = self.read_into(dst)
        return None if got is None else got[0]

    def try_next(self, dst: np.ndarray) -> Optional[FrameMeta]:
        """The next frame in order, or the oldest still in the ring when the reader
        fell behind (``missed`` counts the lost ones). Never waits."""
        if dst is not self._checked_dst:
            self._check_dst(dst)
        got = self.read_into(dst, sequential=True)
        return None if got is None else got[0]

    def latest(self, dst: np.ndarray, timeout_s: Optional[float]) -> FrameMeta:
        """Blocks until :meth:`try_latest` has a frame; raises :class:`ReadTimeout`,
        :class:`StreamEnded` or :class:`WriterGone` otherwise."""
        if self._fast_waits(timeout_s):
            if dst is not self._checked_dst:
                self._check_dst(dst)
            return self._fast_wait(dst, False, timeout_s)
        if self._mm is not None:  # fast path: a frame is already there
            m = self.try_latest(dst)
            if m is not None:
                return m
        since = self._wait_once(timeout_s)
        return self._wait_for(timeout_s, lambda: self.try_latest(dst), since)

    def next(self, dst: np.ndarray, timeout_s: Optional[float]) -> FrameMeta:
        """Blocks until :meth:`try_next` has a frame (see :meth:`latest`)."""
        if self._fast_waits(timeout_s):
            if dst is not self._checked_dst:
                self._check_dst(dst)
            return self._fast_wait(dst, True, timeout_s)
        if self._mm is not None:
            m = self.try_next(dst)
            if m is not None:
                return m
        since = self._wait_once(timeout_s)
        return self._wait_for(timeout_s, lambda: self.try_next(dst), since)

    def view(self, sequential: bool, timeout_s: Optional[float]) -> Tuple[FrameMeta, np.ndarray, int]:
        """Zero-copy: waits for a frame like :meth:`latest`/:meth:`next` and returns
        its metadata, a read-only array over the slot, and a stamp for
        :meth:`still_valid`. The array may be overwritten by the writer at any time;
        whatever is computed from it is only trustworthy if :meth:`still_valid`
        says so afterwards."""

        def attempt() -> Optional[Tuple[FrameMeta, np.ndarray, int]]:
            got = self._read(sequential, None)
            if got is None:
                return None
            meta, idx, seq, _ = got
            return meta, self._slot_frames[idx], _stamp(idx, seq)

        if self._mm is not None:  # fast path: a frame is already there
            got = attempt()
            if got is not None:
                return got
        since = self._wait_once(timeout_s)
        return self._wait_for(timeout_s, attempt, since)

    def still_valid(self, stamp: int) -> bool:
        """Whether the slot behind a :meth:`view` was not written since the view was taken."""
        if self._mm is None:
            return False
        idx, seq = stamp >> 64, stamp & ((1 << 64) - 1)
        if self._fence is not None:
            self._fence()  # the caller's loads from the view before this seq load
        return bool(self._w64[self._slot_w[idx] + _SEQ_W] == seq)

    def _wait_once(self, timeout_s: Optional[float]) -> Optional[float]:
        """The first wait of a blocking read, before it looks again: one futex
        wait of a slice, straight away, when nothing new is there and the stream
        has not ended. Returns when it began (``time.monotonic()``, for the read's
        timeout), or ``None`` when it did not wait.

        The usual case of every blocking read: a live stream and a reader faster
        than the camera. The checks of :meth:`_wait_for` (ended, broker gone,
        timeout) follow only when this wait brought nothing; the layers it skips
        were about a seventh of a ``read()`` reader's CPU (``bench/reader_cost.py
        --against``). As there, the wake word is read before looking, so a frame
        published after the look has changed it and the futex returns at once.
        Other waiters (Windows' events, the sleeping poll) leave it all to
        :meth:`_wait_for`."""
        quick = self._slice_wait
        w32 = self._w32
        if quick is None or w32 is None or (timeout_s is not None and timeout_s < _SLICE_S):
            return None
        word = w32[_WAKE_D]
        if self._fence is not None:
            self._fence()  # the wake word's load before the looks below
        if self._w64[_LAST_FRAME_W] > self.cursor or w32[_STATE_D] in _FINAL_STATES:
            return None
        since = time.monotonic()
        futex_wait, timespec = quick
        if futex_wait(word, timespec, None, 0) == -1 and not futex_retry(ctypes.get_errno()):
            self._slice_wait = None  # the general waiter finds out and says so
        return since

    def _wait_for(
        self, timeout_s: Optional[float], attempt: Callable[[], Optional[T]], since: Optional[float] = None
    ) -> T:
        """Calls ``attempt`` until it brings something, sleeping on the wake word
        in between, and raises what a read raises (the timeout counted from
        ``since``, a ``time.monotonic()`` reading, or from now)."""
        if self._mm is None:
            raise SegmentError(self.name, "ring is closed")
        if since is None:
            since = time.monotonic()
        deadline = None if timeout_s is None else since + max(timeout_s, 0.0)
        while True:
            # The wake word is read before looking, so a frame published after the
            # look changes it and the wait below returns at once.
            word = self.wake_word()
            if self._fence is not None:
                self._fence()  # ... and the look really comes after that load
            got = attempt()
            if got is not None:
                return got
            state = self.state()
            if state.is_final:
                raise StreamEnded(self.info.stream_id, state)
            age = self.heartbeat_age_s()
            if age > self.stale_after_s:
                raise WriterGone(self.info.stream_id, age)
            wait = _SLICE_S
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ReadTimeout(
                        self.info.stream_id, f"no new frame within {timeout_s * 1000:.0f} ms"  # type: ignore[operator]
                    )
                wait = min(wait, left)
            # Wake at least every slice to notice a dead broker in time.
            self._waiter.wait(word, wait)

    def wait_for_change(self, timeout_s: float) -> None:
        """Sleeps until the wake word changes or ``timeout_s`` passes (for callers
        that poll several rings)."""
        self._waiter.wait(self.wake_word(), min(timeout_s, _SLICE_S))

    # -- closing

    def close(self) -> None:
        """Unmaps the segment. Arrays handed out by :meth:`view` that are still
        alive keep the mapping until they are garbage-collected."""
        mm, self._mm = self._mm, None
        self._slice_wait = None  # it waits on an address inside the mapping
        self._fast = None  # its export on the mapping goes with it (or with a read still running)
        close_waiter = getattr(getattr(self, "_waiter", None), "close", None)
        if close_waiter is not None:
            close_waiter()  # the wake events' handles (Windows)
        # Views first: an mmap with exported buffers cannot be closed.
        self._w64 = self._w32 = self._frames = None  # type: ignore[assignment]
        self._slot_frames = []
        self._payloads = []
        self._checked_dst = self._checked_mv = None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                log.debug("segment %s still viewed by the caller; unmapped when the views go", self.name)

    def __enter__(self) -> "Ring":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _stamp(idx: int, seq: int) -> int:
    return (idx << 64) | seq

