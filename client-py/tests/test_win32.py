"""The Windows seams of the reader (framebroker._win32) on a Windows CPython: the
named mapping opened read-only and never created, hostile mappings refused, the
wake events (decision 10 of proto/doc/decisions.md) and the clock. Run under Wine
by tests/windows/run_python_tests.sh; the segments come from tests/ringwriter.py,
which creates them as the broker does."""

from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import struct
import subprocess
import sys
import threading
import time
from ctypes import wintypes as W
from typing import Iterator

import numpy as np
import pytest

from framebroker import _layout as L
from framebroker._errors import SegmentError
from framebroker._layout import PixelFormat
from framebroker._platform import WINDOWS, machine
from framebroker._ring import Ring, _TSO, monotonic_ns

from .ringwriter import RingWriter, frame_bytes

pytestmark = pytest.mark.skipif(not WINDOWS, reason="the Windows seams need a Windows CPython (Wine runs one)")

if WINDOWS:
    from framebroker import _win32

    _k32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _k32.OpenFileMappingW.restype = W.HANDLE
    _k32.OpenFileMappingW.argtypes = [W.DWORD, W.BOOL, W.LPCWSTR]
    _k32.CreateFileMappingW.restype = W.HANDLE
    _k32.CreateFileMappingW.argtypes = [W.HANDLE, ctypes.c_void_p, W.DWORD, W.DWORD, W.DWORD, W.LPCWSTR]
    _k32.CloseHandle.argtypes = [W.HANDLE]
    _k32.VirtualQuery.restype = ctypes.c_size_t
    _k32.VirtualQuery.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]

PAGE_READONLY = 0x02
PAGE_READWRITE = 0x04
_counter = itertools.count()


def unique_name() -> str:
    return f"/fbpytest-{os.getpid()}-{next(_counter)}"


def name_exists(segment: str) -> bool:
    h = _k32.OpenFileMappingW(_win32.FILE_MAP_READ, False, _win32.object_name(segment))
    if h:
        _k32.CloseHandle(h)
    return bool(h)


@pytest.fixture
def writer() -> Iterator[RingWriter]:
    w = RingWriter(unique_name(), 8, 4, PixelFormat.GRAY, 4, checksum=True, generation=3)
    w.start_heartbeat()
    yield w
    w.close()


def test_names_follow_the_broker() -> None:
    assert _win32.object_name("/fb-cam.1") == "Local\\fb-cam.1"
    assert _win32.wake_event_name("/fb-cam.1", 3) == "Local\\fb-cam.1~wake3"
    for bad in ["/", "", "/a\\b", "/a/b", "/..", "/x\0y"]:
        with pytest.raises(SegmentError, match="not a shared-memory segment name"):
            _win32.object_name(bad)


def test_machine_is_known_without_wmi() -> None:
    # platform.machine() would ask WMI, which aborts the process under Wine 8.
    assert machine() in ("amd64", "arm64", "x86")
    assert _TSO is (machine() in ("amd64", "x86"))


def test_the_reader_maps_read_only(writer: RingWriter) -> None:
    writer.publish(frame_bytes(1, 32))
    r = Ring(writer.name)
    assert r._mm is not None
    with pytest.raises(TypeError):
        r._mm[0:1] = b"x"  # the mmap itself refuses
    # ... and so do the pages: the view is PAGE_READONLY, whatever the writer has.
    info = _win32._MemoryBasicInformation()
    assert _k32.VirtualQuery(r._base, ctypes.byref(info), ctypes.sizeof(info))
    assert info.Protect == PAGE_READONLY
    buf = r.new_array()
    m = r.try_latest(buf)
    assert m is not None and m.number == 1 and buf.tobytes() == frame_bytes(1, 32)
    r.close()


def test_a_reader_process_never_writes_nor_keeps_the_name(writer: RingWriter) -> None:
    writer.stop_heartbeat()  # nothing but the reader could change a byte now
    writer.publish(frame_bytes(1, 32))
    before = bytes(writer.mm[:])
    code = (
        "import sys; from framebroker import Ring; r = Ring(sys.argv[1]); "
        "b = r.new_array(); assert r.try_latest(b).number == 1; print(r._waiter.use_futex)"
    )
    out = subprocess.run([sys.executable, "-c", code, writer.name], check=True, timeout=60, capture_output=True)
    assert out.stdout.strip() == b"False"
    assert bytes(writer.mm[:]) == before
    assert name_exists(writer.name), "the broker's mapping must outlive a reader"


def test_a_missing_segment_is_refused_and_not_created() -> None:
    name = unique_name()
    with pytest.raises(SegmentError, match="no such segment"):
        Ring(name)
    # mmap(tagname=...) alone would have created an empty mapping under the name,
    # and the broker could then not create its segment there.
    assert not name_exists(name)


@pytest.mark.parametrize(
    "off, fmt, value, message",
    [
        (0, "<Q", 0, "not a framebroker segment"),
        (0, "<Q", 0x0100_474E_4952_4246 ^ 1, "not a framebroker segment"),
        (8, "<I", 99, "layout version 99"),
        (28, "<I", 2, "slot count 2 out of range"),
        (32, "<Q", 33, "frame size or slot stride"),
        (56, "<Q", 10**9, "segment size disagrees"),
    ],
)
def test_hostile_headers_are_refused(off: int, fmt: str, value: int, message: str) -> None:
    w = RingWriter(unique_name(), 8, 4, PixelFormat.GRAY, 3)
    try:
        struct.pack_into(fmt, w.mm, off, value)
        with pytest.raises(SegmentError, match=message):
            Ring(w.name)
    finally:
        w.close()


def _bare_mapping(data: bytes) -> "tuple[str, int]":
    """A mapping of exactly ``len(data)`` bytes holding ``data``, with no wake events."""
    name = unique_name()
    tag = _win32.object_name(name)
    h = _k32.CreateFileMappingW(W.HANDLE(-1), None, PAGE_READWRITE, 0, len(data), tag)
    assert h, ctypes.get_last_error()
    mm = mmap.mmap(-1, len(data), tagname=tag)
    mm[:] = data
    mm.close()
    return name, h


def test_short_mappings_are_refused() -> None:
    # Shorter than a page: the view is the page, all zero past the bytes written.
    name, h = _bare_mapping(b"\0" * 100)
    try:
        with pytest.raises(SegmentError, match="not a framebroker segment"):
            Ring(name)
    finally:
        _k32.CloseHandle(h)
    # A valid header in a mapping shorter than its segment_size.
    w = RingWriter(unique_name(), 8, 4, PixelFormat.GRAY, 3)
    header = bytes(w.mm[: L.HEADER_PAGE])
    w.close()
    name, h = _bare_mapping(header)
    try:
        with pytest.raises(SegmentError, match="too small"):
            Ring(name)
    finally:
        _k32.CloseHandle(h)


def test_missing_wake_events_are_a_clear_error() -> None:
    w = RingWriter(unique_name(), 8, 4, PixelFormat.GRAY, 3)
    name, h = _bare_mapping(bytes(w.mm[:]))
    w.close()
    try:
        with pytest.raises(SegmentError, match=r"wake event Local\\fbpytest-.*~wake0"):
            Ring(name)
        # use_futex=False: the sleeping poll, which needs no events.
        Ring(name, use_futex=False).close()
    finally:
        _k32.CloseHandle(h)


def test_a_blocking_read_sleeps_on_the_events_and_wakes_on_publish(writer: RingWriter) -> None:
    r = Ring(writer.name)
    assert isinstance(r._waiter, _win32.EventWaiter)
    buf = r.new_array()
    published = []

    def later() -> None:
        time.sleep(0.3)
        published.append(time.monotonic())
        writer.publish(frame_bytes(9, 32))

    t = threading.Thread(target=later)
    t.start()
    cpu0 = time.process_time()
    m = r.latest(buf, 5.0)
    woke = time.monotonic()
    cpu = time.process_time() - cpu0
    t.join()
    assert m.number == 1 and buf.tobytes() == frame_bytes(9, 32)
    assert woke - published[0] < 0.1, "the reader must wake when the frame is published"
    assert cpu < 0.1, f"waiting 0.3 s used {cpu:.3f} s of CPU: busy loop?"
    r.close()


def test_up_to_three_bumps_between_look_and_wait_lose_no_wake(writer: RingWriter) -> None:
    """Decision 10: event v % 4 stays set from the bump v -> v+1 until the bump to
    v+4 resets it, so a reader that read v and is late to wait still returns at once
    after one, two or three bumps, and sleeps (until the next bump or its slice)
    only after four."""
    r = Ring(writer.name)
    waiter = r._waiter
    for bumps in (1, 2, 3, 4):
        v = r.wake_word()
        for _ in range(bumps):
            writer.bump_and_wake()
        t0 = time.monotonic()
        waiter.wait(v, 2.0)  # a long slice: "at once" and "slept" stay far apart under load
        took = time.monotonic() - t0
        if bumps < 4:
            assert took < 1.0, f"{bumps} bump(s) before the wait: it must return at once, took {took:.3f} s"
        else:
            assert took >= 1.9, f"4 bumps reset event v % 4: the wait sleeps its slice, took {took:.3f} s"
    r.close()


def test_an_idle_wait_sleeps_its_whole_slice_without_cpu(writer: RingWriter) -> None:
    r = Ring(writer.name)
    v = r.wake_word()
    t0, cpu0 = time.monotonic(), time.process_time()
    r._waiter.wait(v, 0.5)
    elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    assert 0.45 < elapsed < 1.0
    assert cpu < 0.05, f"an idle wait of 0.5 s used {cpu:.3f} s of CPU"
    r.close()


def test_closing_the_ring_closes_the_event_handles(writer: RingWriter) -> None:
    r = Ring(writer.name)
    waiter = r._waiter
    assert len(waiter._events) == 4
    r.close()
    assert waiter._events == []
    waiter.wait(0, 0.05)  # a wait after close returns instead of failing


def test_the_clock_is_the_performance_counter() -> None:
    # heartbeat_ns and mono_ns are QueryPerformanceCounter ns on Windows.
    a = time.perf_counter_ns()
    b = monotonic_ns()
    c = time.perf_counter_ns()
    assert a <= b <= c


def test_frames_of_every_slot_read_back_as_numpy_arrays(writer: RingWriter) -> None:
    r = Ring(writer.name, verify_checksum=True)
    buf = r.new_array()
    for n in range(1, 10):
        writer.publish(frame_bytes(n, 32))
        m = r.latest(buf, 1.0)
        assert m.number == n and np.array_equal(buf.ravel(), np.frombuffer(frame_bytes(n, 32), np.uint8))
    r.close()


def test_ctrl_c_ends_a_wait_for_a_silent_broker_at_once() -> None:
    """A request waits up to its timeout for the answer, in slices: a Ctrl-C
    (KeyboardInterrupt) gets through within a slice, the pending read is cancelled
    and the connection can still be closed."""
    import _thread

    from framebroker import BrokerClient

    from .winpipe import PipeServer

    path = f"\\\\.\\pipe\\fbpytest-{os.getpid()}-{next(_counter)}"
    srv = PipeServer(path)
    done = threading.Event()

    def silent() -> None:
        conn = srv.accept()
        done.wait(30)
        conn.close()

    t = threading.Thread(target=silent, daemon=True)
    t.start()
    timer = threading.Timer(0.3, _thread.interrupt_main)
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            timer.start()
            BrokerClient(path, timeout=30.0)  # the Hello is never answered
        assert time.monotonic() - t0 < 5.0, "Ctrl-C must not wait for the 30 s timeout"
    finally:
        timer.cancel()
        done.set()
        t.join(10)
