"""The reader (framebroker._ring) against segments written by tests/ringwriter.py."""

from __future__ import annotations

import itertools
import os
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from typing import Callable, Iterator

import numpy as np
import pytest

from framebroker import _layout as L
from framebroker import _ring
from framebroker._errors import ChecksumMismatch, FrameBrokerError, ReadTimeout, SegmentError, StreamEnded, WriterGone
from framebroker._errors import Contended
from framebroker._layout import PixelFormat, StreamState
from framebroker._platform import WINDOWS
from framebroker._ring import FrameMeta, Ring
from framebroker._wait import futex_available

from .ringwriter import RingWriter, frame_bytes

Blocking = Callable[[Ring, np.ndarray, float], FrameMeta]

pytestmark = pytest.mark.skipif(
    not (WINDOWS or os.path.isdir("/dev/shm")), reason="needs /dev/shm (Linux) or named mappings (Windows)"
)
#: Why the fenced read path is not run on Windows.
_NO_LIBATOMIC = "the fence comes from libatomic.so.1, which Windows has not; x64 Windows keeps load order"
#: For the tests of the fence itself.
needs_libatomic = pytest.mark.skipif(WINDOWS, reason=_NO_LIBATOMIC)
#: For the tests that make or inspect segments as /dev/shm files.
linux_files = pytest.mark.skipif(
    WINDOWS, reason="a segment as a /dev/shm file; the Windows equivalents are in test_win32.py"
)

_counter = itertools.count()


def unique_name() -> str:
    return f"/fbpytest-{os.getpid()}-{next(_counter)}"


#: Set to ``required`` where the compiled read path must have been built (CI on
#: Linux): its tests then fail instead of being skipped when it is missing.
COMPILED_ENV = "FRAMEBROKER_TEST_COMPILED"


def compiled_or_skip() -> None:
    if _ring._fastring is None:
        if os.environ.get(COMPILED_ENV) == "required":
            pytest.fail(f"{COMPILED_ENV}=required, but framebroker._fastring was not built")
        pytest.skip(
            "the compiled read path is not built in this install (Windows, or no C compiler when it "
            "was installed); the pure-Python paths below are the ones that run here"
        )


@pytest.fixture(
    autouse=True,
    params=[("auto", "auto"), ("python", "auto"), ("python", "always")],
    ids=["compiled", "own-order", "fenced"],
)
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs three times: on the compiled read path (C11
    atomics), on the pure-Python path in this machine's own order (no fence on
    x86-64), and on the fenced pure-Python path that aarch64 and every CPU that
    may reorder loads takes, forced with ``FRAMEBROKER_RING_FENCE=always``.
    (This runs the fenced code; no x86 host, emulated or not, can show a
    reordering: that the fences sit where the protocol needs them rests on
    proto/doc/decisions.md.)"""
    path, fence = request.param
    if path == "auto":
        compiled_or_skip()
    if WINDOWS and fence == "always":
        pytest.skip(_NO_LIBATOMIC)
    monkeypatch.setenv(_ring.READ_PATH_ENV, path)
    monkeypatch.setenv(_ring.FENCE_ENV, fence)
    return "compiled" if path == "auto" else fence


@pytest.fixture
def writer() -> Iterator[RingWriter]:
    w = RingWriter(unique_name(), 8, 4, PixelFormat.GRAY, 4, checksum=True, generation=7)
    yield w
    w.close()


def test_reader_sees_header_as_written(writer: RingWriter) -> None:
    with Ring(writer.name) as r:
        i = r.info
        assert (i.stream_id, i.width, i.height, i.pixel_format) == ("cam-1", 8, 4, PixelFormat.GRAY)
        assert (i.frame_bytes, i.slot_count, i.generation, i.writer_pid) == (32, 4, 7, os.getpid())
        assert i.checksum and i.slot_stride == 128 and i.segment_size == 4096 + 4 * 128
        assert r.state() is StreamState.STARTING
        assert r.last_frame() == 0
        assert r.heartbeat_age_s() < 1.0


def test_latest_skips_to_newest_and_counts_missed(writer: RingWriter) -> None:
    r = Ring(writer.name)
    buf = r.new_array()
    assert r.try_latest(buf) is None
    for n in range(1, 4):
        writer.publish(frame_bytes(n, 32), 100 + n, 200 + n)
    m = r.try_latest(buf)
    assert m is not None
    assert (m.number, m.missed, m.wall_ns, m.mono_ns, m.len) == (3, 2, 103, 203, 32)
    assert buf.tobytes() == frame_bytes(3, 32)
    import zlib

    assert m.checksum == zlib.crc32(buf.tobytes())
    assert r.try_latest(buf) is None, "never the same frame twice"
    r.close()


def test_sequential_returns_every_frame_then_reports_lapping(writer: RingWriter) -> None:
    r = Ring(writer.name)
    buf = r.new_array()
    for n in (1, 2):
        writer.publish(frame_bytes(n, 32))
    for n in (1, 2):
        m = r.try_next(buf)
        assert m is not None and (m.number, m.missed) == (n, 0)
        assert buf.tobytes() == frame_bytes(n, 32)
    assert r.try_next(buf) is None
    for n in range(3, 13):
        writer.publish(frame_bytes(n, 32))
    # 4 slots, last = 12: frames 10, 11, 12 are safe; 3..9 are gone.
    m = r.try_next(buf)
    assert m is not None and (m.number, m.missed) == (10, 7)
    assert buf.tobytes() == frame_bytes(10, 32)
    assert r.try_next(buf).number == 11  # type: ignore[union-attr]
    r.close()


def test_late_reader_starts_at_the_newest_frame(writer: RingWriter) -> None:
    for n in range(1, 6):
        writer.publish(frame_bytes(n, 32))
    r = Ring(writer.name)
    buf = r.new_array()
    assert r.try_latest(buf).number == 5  # type: ignore[union-attr]
    r.close()
    r = Ring(writer.name)
    assert r.try_next(buf).number == 5  # type: ignore[union-attr]
    r.close()


def test_looking_when_nothing_is_new_allocates_nothing() -> None:
    """A reader looks several times per frame before it waits; a frame-sized
    array per look cost a mmap/munmap pair each (a third of a Python reader's
    CPU). A look that finds a frame allocates that frame's array."""
    size = 256 * 128  # 32 KiB: far above what a look needs for its small objects
    w = RingWriter(unique_name(), 256, 128)
    r = Ring(w.name)
    tracemalloc.start()
    try:

        def most_held_above(base: int) -> int:
            return tracemalloc.get_traced_memory()[1] - base

        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        assert r.read_into(None) is None and r.read_into(None, sequential=True) is None
        assert most_held_above(base) < size // 4, "no array for a look that finds nothing"
        w.publish(frame_bytes(1, size))
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        got = r.read_into(None)
        held = most_held_above(base)
        assert got is not None and got[0].number == 1 and got[1].tobytes() == frame_bytes(1, size)
        assert size <= held < 2 * size, "one array for the frame read"
        del got
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        assert r.read_into(None) is None
        assert most_held_above(base) < size // 4, "nor for a look after a frame was read"
    finally:
        tracemalloc.stop()
        r.close()
        w.close()


def test_a_new_array_is_the_readers_own(writer: RingWriter) -> None:
    """Without an array to fill, a read makes one the caller owns: writable,
    C-contiguous, the frame's shape, and not the slot (the writer's next lap
    leaves it alone)."""
    r = Ring(writer.name)
    writer.publish(frame_bytes(1, 32))
    got = r.read_into(None)
    assert got is not None
    frame = got[1]
    assert frame.shape == r.new_array().shape and frame.dtype == np.uint8
    assert frame.flags.writeable and frame.flags.c_contiguous and frame.flags.owndata
    for n in range(2, 2 + writer.slots):  # every slot written again
        writer.publish(frame_bytes(n, 32))
    assert frame.tobytes() == frame_bytes(1, 32)
    frame[...] = 7  # and writing it does not reach the ring
    later = r.read_into(None)
    assert later is not None and later[1].tobytes() == frame_bytes(1 + writer.slots, 32)
    r.close()


def test_a_slot_being_written_is_not_read(writer: RingWriter) -> None:
    writer.publish(frame_bytes(1, 32))
    r = Ring(writer.name)
    buf = r.new_array()
    odd = writer.begin()  # writer inside frame 2's slot
    # Frame 2 is not published yet: frame 1 is what we get.
    assert r.try_latest(buf).number == 1  # type: ignore[union-attr]
    # Pretend last_frame already says 2 while the slot is odd: the reader must skip it.
    writer.set_u64(L.LAST_FRAME_OFF, 2)
    with pytest.raises(Exception) as e:
        r.try_latest(buf)
    assert "overwriting" in str(e.value)
    writer.set_u64(L.LAST_FRAME_OFF, 1)
    writer.payload(2)[...] = 0xAA
    writer.commit(odd)
    m = r.try_latest(buf)
    assert m is not None and m.number == 2 and set(buf.tobytes()) == {0xAA}
    r.close()


@pytest.mark.parametrize("copy", ["memoryview", "numpy"])
def test_a_copy_torn_by_the_writer_is_retried(
    writer: RingWriter, monkeypatch: pytest.MonkeyPatch, copy: str, read_path: str
) -> None:
    if read_path == "compiled":
        pytest.skip(
            "laps the ring from inside the pure path's copy, which the compiled path has not; "
            "test_a_writer_in_another_process_never_hands_over_a_torn_frame laps it for real"
        )
    writer.publish(frame_bytes(1, 32))
    if copy == "numpy":  # the copy of large frames
        monkeypatch.setattr(_ring, "_MV_COPY_MAX", 0)
    r = Ring(writer.name)
    assert r._mv_copy is (copy == "memoryview")
    buf = r.new_array()
    calls = []

    def writer_laps() -> None:
        calls.append(1)
        if len(calls) == 1:  # the writer laps the ring during the first copy
            for n in range(2, 6):
                writer.publish(frame_bytes(n, 32))

    if copy == "numpy":
        real_copyto = np.copyto

        def copyto_while_writer_laps(dst: np.ndarray, src: np.ndarray) -> None:
            real_copyto(dst, src)
            writer_laps()

        monkeypatch.setattr(_ring.np, "copyto", copyto_while_writer_laps)
    else:

        class LappedWhileCopied(list):  # type: ignore[type-arg]
            def __getitem__(self, i):  # type: ignore[no-untyped-def]
                writer_laps()  # between the first sequence check and the copy
                return super().__getitem__(i)

        r._payloads = LappedWhileCopied(r._payloads)
    m = r.try_latest(buf)
    assert len(calls) == 2, "the torn first copy must be discarded and retried"
    assert m is not None and m.number == 5 and buf.tobytes() == frame_bytes(5, 32)
    r.close()


@needs_libatomic
@pytest.mark.parametrize("copy", ["memoryview", "numpy"])
def test_fences_sit_between_the_seqlock_loads(
    writer: RingWriter, monkeypatch: pytest.MonkeyPatch, copy: str
) -> None:
    """Where the machine may reorder loads, each read fences after the first
    sequence load (before the copy) and after the copy and metadata loads
    (before the second sequence load); a wait, a view and its validation too."""
    monkeypatch.setenv(_ring.FENCE_ENV, "always")
    monkeypatch.setenv(_ring.READ_PATH_ENV, "python")  # the fences of the pure path
    if copy == "numpy":
        monkeypatch.setattr(_ring, "_MV_COPY_MAX", 0)
    writer.start_heartbeat()
    writer.publish(frame_bytes(1, 32))
    r = Ring(writer.name)
    assert r._fence is not None
    events: list = []
    r._fence = lambda: events.append("fence")
    seq_w = r._slot_w[1 % 4] + _ring._SEQ_W

    class Words:  # the u64 words, with the two sequence loads of slot 1 recorded
        def __init__(self, w: memoryview) -> None:
            self.w = w

        def __getitem__(self, i: int) -> int:
            if i == seq_w:
                events.append("seq")
            return self.w[i]  # type: ignore[no-any-return]

    r._w64 = Words(r._w64)  # type: ignore[assignment]
    if copy == "numpy":
        real_copyto = np.copyto

        def copyto(dst: np.ndarray, src: np.ndarray) -> None:
            events.append("copy")
            real_copyto(dst, src)

        monkeypatch.setattr(_ring.np, "copyto", copyto)
    else:

        class Payloads(list):  # type: ignore[type-arg]
            def __getitem__(self, i):  # type: ignore[no-untyped-def]
                events.append("copy")
                return super().__getitem__(i)

        r._payloads = Payloads(r._payloads)
    buf = r.new_array()
    assert r.try_latest(buf).number == 1  # type: ignore[union-attr]
    assert events == ["seq", "fence", "copy", "fence", "seq"]
    assert buf.tobytes() == frame_bytes(1, 32)
    events.clear()
    for n in range(2, 6):
        writer.publish(frame_bytes(n, 32))  # frame 5 lands in slot 1 again
    meta, view, stamp = r.view(False, 1.0)
    assert meta.number == 5 and view.tobytes() == frame_bytes(5, 32)
    # A frame already there: the seqlock read without a copy, and no wait.
    assert events == ["seq", "fence", "fence", "seq"]
    events.clear()
    assert r.still_valid(stamp) and events == ["fence", "seq"]
    del view
    r.close()


@needs_libatomic
def test_a_machine_that_reorders_loads_needs_the_fence(writer: RingWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_ring.FENCE_ENV, "auto")
    monkeypatch.setattr(_ring, "_TSO", True)
    assert _ring.read_fence() is None, "x86 keeps loads in order: no fence"
    monkeypatch.setattr(_ring, "_TSO", False)
    assert _ring.read_fence() is not None, "off x86 the read path is fenced"

    def missing() -> None:
        raise OSError("libatomic.so.1: cannot open shared object file")

    monkeypatch.setattr(_ring, "_libatomic_fence", missing)
    with pytest.raises(FrameBrokerError, match="apt-get install libatomic1"):
        _ring.read_fence()
    # A reader refuses to open (nothing mapped) rather than read without the fence.
    with pytest.raises(FrameBrokerError, match="needs a memory fence between loads"):
        Ring(writer.name)
    monkeypatch.setenv(_ring.FENCE_ENV, "sometimes")
    with pytest.raises(FrameBrokerError, match="expected 'auto' or 'always'"):
        _ring.read_fence()


def test_checksum_mismatch_is_reported_when_verifying(writer: RingWriter) -> None:
    writer.publish(frame_bytes(1, 32))
    writer.set_u32(writer.slot_off(1) + L.SLOT_CHECKSUM_OFF, 0xDEADBEEF)
    r = Ring(writer.name, verify_checksum=True)
    with pytest.raises(ChecksumMismatch, match="frame 1"):
        r.try_latest(r.new_array())
    r.close()


def _latest(r: Ring, buf: np.ndarray, timeout_s: float) -> FrameMeta:
    return r.latest(buf, timeout_s)


def _next(r: Ring, buf: np.ndarray, timeout_s: float) -> FrameMeta:
    return r.next(buf, timeout_s)


def _read_wait(r: Ring, buf: np.ndarray, timeout_s: float) -> FrameMeta:
    return r.read_wait(buf, False, timeout_s)[0]


def _read_wait_in_order(r: Ring, buf: np.ndarray, timeout_s: float) -> FrameMeta:
    return r.read_wait(buf, True, timeout_s)[0]


#: The blocking reads: ``latest``/``next``, and ``read_wait``, the one call a
#: capture's ``read()`` makes, which waits its first slice on its own.
NEWEST = pytest.mark.parametrize("blocking", [_latest, _read_wait], ids=["latest", "read_wait"])
IN_ORDER = pytest.mark.parametrize("blocking", [_next, _read_wait_in_order], ids=["next", "read_wait"])


@NEWEST
@pytest.mark.parametrize("use_futex", [True, False] if futex_available() else [False])
def test_blocking_read_wakes_on_publish(writer: RingWriter, use_futex: bool, blocking: Blocking) -> None:
    writer.start_heartbeat()
    r = Ring(writer.name, use_futex=use_futex)
    buf = r.new_array()
    published = []

    def later() -> None:
        time.sleep(0.3)
        published.append(time.monotonic())
        writer.publish(frame_bytes(9, 32))

    t = threading.Thread(target=later)
    t.start()
    cpu0 = time.process_time()
    m = blocking(r, buf, 5.0)
    woke = time.monotonic()
    cpu = time.process_time() - cpu0
    t.join()
    assert m.number == 1 and buf.tobytes() == frame_bytes(9, 32)
    assert woke - published[0] < 0.1, "the reader must wake when the frame is published"
    assert cpu < 0.1, f"waiting 0.3 s used {cpu:.3f} s of CPU: busy loop?"
    assert r._waiter.use_futex is use_futex, "the futex wait fell back to polling"
    r.close()


@NEWEST
def test_blocking_read_times_out_without_spinning(writer: RingWriter, blocking: Blocking) -> None:
    writer.start_heartbeat()
    r = Ring(writer.name)
    t0, cpu0 = time.monotonic(), time.process_time()
    with pytest.raises(ReadTimeout, match="no new frame within 500 ms"):
        blocking(r, r.new_array(), 0.5)
    elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    assert 0.45 < elapsed < 1.0
    assert cpu < 0.1, f"waiting 0.5 s used {cpu:.3f} s of CPU"
    r.close()


@IN_ORDER
def test_stopped_stream_ends_the_wait_promptly(writer: RingWriter, blocking: Blocking) -> None:
    writer.start_heartbeat()
    r = Ring(writer.name)
    threading.Timer(0.2, writer.set_state, (StreamState.STOPPED,)).start()
    t0 = time.monotonic()
    with pytest.raises(StreamEnded, match="stopped"):
        blocking(r, r.new_array(), 5.0)
    assert time.monotonic() - t0 < 0.5
    # Already stopped: the next read says so at once, without a wait.
    t0 = time.monotonic()
    with pytest.raises(StreamEnded, match="stopped"):
        blocking(r, r.new_array(), 5.0)
    assert time.monotonic() - t0 < 0.05
    r.close()


@NEWEST
def test_dead_writer_is_noticed_within_a_second(writer: RingWriter, blocking: Blocking) -> None:
    writer.heartbeat()  # and never again
    r = Ring(writer.name)
    t0 = time.monotonic()
    with pytest.raises(WriterGone, match="no sign of life"):
        blocking(r, r.new_array(), 10.0)
    assert time.monotonic() - t0 < 1.0
    r.close()


@NEWEST
@pytest.mark.skipif(not futex_available(), reason="the first wait is the futex's; other waiters take the general path")
def test_a_futex_wait_that_fails_leaves_the_reads_to_the_general_path(
    writer: RingWriter, blocking: Blocking
) -> None:
    """A blocking read calls the futex itself for its first slice; a failure
    other than "look again" makes it stop doing so, and the read still gets its
    frame."""
    import ctypes
    import errno

    writer.start_heartbeat()
    r = Ring(writer.name)
    calls = []

    def refused(*args: object) -> int:
        calls.append(args)
        ctypes.set_errno(errno.ENOSYS)
        return -1

    r._slice_wait = (refused, 0)
    r._fast = None  # the pure path's prepared wait (the compiled one calls the futex itself)
    threading.Timer(0.2, writer.publish, (frame_bytes(5, 32),)).start()
    buf = r.new_array()
    meta = blocking(r, buf, 5.0)
    assert meta.number == 1 and buf.tobytes() == frame_bytes(5, 32)
    assert len(calls) == 1 and r._slice_wait is None
    r.close()


@pytest.mark.skipif(not futex_available(), reason="only the futex waiter prepares a wait")
def test_a_prepared_wait_keeps_its_timespec_however_full_the_cache() -> None:
    """The caller of ``WordWaiter.prepared`` holds only the timespec's address:
    the waiter must keep the object even after eight other timeouts filled its
    cache, or the futex would read freed memory."""
    import ctypes

    from framebroker._wait import WordWaiter

    word = ctypes.c_uint32(0)
    waiter = WordWaiter(ctypes.addressof(word), lambda: word.value)
    for k in range(8):
        waiter.wait(1, 0.001 * (k + 1))  # the word is not 1: returns at once, timespec cached
    call, timespec = waiter.prepared(0.05)
    assert timespec in {address for _, address in waiter._timespecs.values()}
    t0 = time.monotonic()
    assert call(0, timespec, None, 0) == -1  # the word stays 0: ETIMEDOUT after 50 ms
    assert 0.04 < time.monotonic() - t0 < 1.0


def test_reading_a_closed_ring_says_so(writer: RingWriter) -> None:
    r = Ring(writer.name)
    r.close()
    for read in (lambda: r.read_into(None), lambda: r.read_wait(None, False, 1.0), lambda: r.latest(r.new_array(), 1.0)):
        with pytest.raises(SegmentError, match="ring is closed"):
            read()


def test_zero_copy_view_is_validated(writer: RingWriter) -> None:
    writer.start_heartbeat()
    writer.publish(frame_bytes(1, 32))
    r = Ring(writer.name)
    meta, view, stamp = r.view(False, 1.0)
    assert meta.number == 1 and view.tobytes() == frame_bytes(1, 32)
    assert not view.flags.writeable
    assert r.still_valid(stamp)
    for n in range(2, 6):  # lap the 4-slot ring
        writer.publish(frame_bytes(n, 32))
    assert not r.still_valid(stamp)
    # Nothing new: the view waits for the next frame and wakes when it comes.
    assert r.view(False, 1.0)[0].number == 5
    threading.Timer(0.2, writer.publish, (frame_bytes(6, 32),)).start()
    t0 = time.monotonic()
    meta, later, _ = r.view(False, 5.0)
    assert meta.number == 6 and later.tobytes() == frame_bytes(6, 32)
    assert time.monotonic() - t0 < 1.0
    del later
    # Closing with a view still alive neither fails nor unmaps under the view.
    r.close()
    assert view.shape == (4, 8) and len(view.tobytes()) == 32
    del view


@linux_files
def test_readers_never_write_and_never_unlink(writer: RingWriter) -> None:
    writer.publish(frame_bytes(1, 32))
    before = open(writer.path, "rb").read()
    code = (
        "import sys; from framebroker import Ring; r = Ring(sys.argv[1]); "
        "b = r.new_array(); assert r.try_latest(b).number == 1"
    )
    subprocess.run([sys.executable, "-c", code, writer.name], check=True, timeout=30)
    assert os.path.exists(writer.path), "a reader process must never unlink the segment"
    assert open(writer.path, "rb").read() == before


# -- refusing bad segments ----------------------------------------------------------


def _raw_segment(data: bytes, mode: int = 0o600) -> str:
    name = unique_name()
    path = os.path.join("/dev/shm", name[1:])
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    os.fchmod(fd, mode)
    os.write(fd, data)
    os.close(fd)
    return name


def _valid_header() -> bytearray:
    w = RingWriter(unique_name(), 8, 4, PixelFormat.GRAY, 3)
    data = bytearray(w.mm[:])
    w.close()
    return data


@linux_files
@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: struct.pack_into("<Q", b, 0, 0), "not a framebroker segment"),
        (lambda b: struct.pack_into("<I", b, 8, 99), "layout version 99"),
        (lambda b: struct.pack_into("<I", b, 16, 0), "width and height must be at least 1"),
        (lambda b: struct.pack_into("<I", b, 16, 9000), "at most 8192"),
        (lambda b: struct.pack_into("<I", b, 24, 7), "unknown pixel format 7"),
        (lambda b: struct.pack_into("<I", b, 28, 2), "slot count 2 out of range"),
        (lambda b: struct.pack_into("<I", b, 12, 512), "header size"),
        (lambda b: struct.pack_into("<Q", b, 32, 33), "frame size or slot stride"),
        (lambda b: struct.pack_into("<Q", b, 56, 10 ** 6), "segment size disagrees"),
    ],
)
def test_corrupt_or_foreign_headers_are_refused(mutate, message) -> None:  # type: ignore[no-untyped-def]
    data = _valid_header()
    mutate(data)
    name = _raw_segment(bytes(data))
    try:
        with pytest.raises(SegmentError, match=message):
            Ring(name)
    finally:
        os.unlink("/dev/shm/" + name[1:])


@linux_files
def test_short_files_are_refused_before_mapping() -> None:
    name = _raw_segment(b"\0" * 100)
    try:
        with pytest.raises(SegmentError, match="too small: need 4096 bytes, have 100"):
            Ring(name)
    finally:
        os.unlink("/dev/shm/" + name[1:])
    # A valid header whose file is shorter than its segment_size: refused, no SIGBUS.
    name = _raw_segment(bytes(_valid_header()[:4096]))
    try:
        with pytest.raises(SegmentError, match="too small"):
            Ring(name)
    finally:
        os.unlink("/dev/shm/" + name[1:])


@linux_files
def test_group_writable_segments_are_refused() -> None:
    name = _raw_segment(bytes(_valid_header()), mode=0o620)
    try:
        with pytest.raises(SegmentError, match="writable by group or others"):
            Ring(name)
    finally:
        os.unlink("/dev/shm/" + name[1:])


def test_missing_segment_and_bad_names() -> None:
    with pytest.raises(SegmentError, match="no such segment"):
        Ring("/fbpytest-does-not-exist.1")
    for bad in ["/", "/a/b", "/../etc/passwd", "..", ""]:
        with pytest.raises(SegmentError, match="not a shared-memory segment name"):
            Ring(bad)


def test_unpublished_segment_is_not_ready() -> None:
    w = RingWriter(unique_name(), publish_magic=False)
    try:
        with pytest.raises(SegmentError, match="may still be starting"):
            Ring(w.name)
    finally:
        w.close()


def test_bgr_frames_have_opencv_shape() -> None:
    w = RingWriter(unique_name(), 6, 4, PixelFormat.BGR24, 3)
    try:
        data = np.arange(72, dtype=np.uint8).reshape(4, 6, 3)
        w.publish(data.tobytes())
        r = Ring(w.name)
        out = r.new_array()
        assert out.shape == (4, 6, 3)
        r.try_latest(out)
        assert np.array_equal(out, data)
        with pytest.raises(ValueError, match="shape"):
            r.try_latest(np.empty((4, 6), np.uint8))
        r.close()
    finally:
        w.close()


@linux_files
@pytest.mark.parametrize("sequential", [False, True], ids=["latest", "in-order"])
def test_a_writer_in_another_process_never_hands_over_a_torn_frame(read_path: str, sequential: bool) -> None:
    """A writer process publishes large frames flat out into a ring of the fewest slots,
    each frame one byte value throughout; the reader must only ever hand over
    whole frames, with their own numbers. On the compiled path the writer must
    also be seen lapping the reader's copy at least once, so the retry ran."""
    w = RingWriter(unique_name(), 1024, 1024, PixelFormat.GRAY, L.MIN_SLOTS)
    stop = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: a real second process, as the broker is
        try:
            os.close(stop[1])
            os.set_blocking(stop[0], False)
            for _ in range(100_000):  # bounded; normally stopped long before
                try:
                    if os.read(stop[0], 1) == b"":
                        break
                except BlockingIOError:
                    pass
                odd = w.begin()
                w.payload(w.next_frame)[...] = w.next_frame & 0xFF
                w.commit(odd)
        finally:
            os._exit(0)
    os.close(stop[0])
    try:
        r = Ring(w.name)
        assert (r._fast is not None) == (read_path == "compiled")
        buf = r.new_array()
        frames = 0
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and (frames < 300 or (r._fast is not None and r._fast.lapped < 3)):
            try:
                m = r.read_wait(buf, sequential, 1.0)[0]
            except Contended:
                continue  # lapped on every attempt: refused, never handed over torn
            flat = buf.reshape(-1)
            assert flat[0] == flat[-1] == m.number & 0xFF and flat.min() == flat.max(), f"frame {m.number} is torn"
            frames += 1
        assert frames >= 300
        if r._fast is not None:
            assert r._fast.lapped >= 3, "the writer never lapped a copy: the retry was not exercised"
        r.close()
    finally:
        os.close(stop[1])
        os.waitpid(pid, 0)
        w.close()
