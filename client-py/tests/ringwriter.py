"""A ring *writer* in Python, for unit tests of the reader: it follows the writer
protocol of ``proto/doc/layout.md`` step by step (the broker's Rust writer is
exercised by the end-to-end tests). On Linux the segment is a file in /dev/shm
woken by a futex; on Windows a named file mapping and its four wake events, as
"On Windows" in layout.md has them."""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import threading
import time
import zlib
from typing import Optional, Union

import numpy as np

from framebroker import _layout as L
from framebroker._layout import PixelFormat, StreamState
from framebroker._platform import WINDOWS, machine
from framebroker._ring import SHM_DIR, monotonic_ns

FUTEX_WAKE = 1
_SYS_FUTEX = -1 if WINDOWS else {"x86_64": 202, "aarch64": 98}.get(machine(), -1)
_libc = None if WINDOWS else ctypes.CDLL(None, use_errno=True)


class _WinObjects:
    """The Windows side of a writer: the named mapping and its wake events,
    created as the broker creates them (``proto/doc/layout.md``, "On Windows")."""

    PAGE_READWRITE = 0x04
    ERROR_ALREADY_EXISTS = 183

    def __init__(self, name: str, size: int) -> None:
        from ctypes import wintypes as W

        from framebroker import _win32

        k32 = ctypes.WinDLL("kernel32", use_last_error=True)
        create_mapping = k32.CreateFileMappingW
        create_mapping.restype = W.HANDLE
        create_mapping.argtypes = [W.HANDLE, ctypes.c_void_p, W.DWORD, W.DWORD, W.DWORD, W.LPCWSTR]
        create_event = k32.CreateEventW
        create_event.restype = W.HANDLE
        create_event.argtypes = [ctypes.c_void_p, W.BOOL, W.BOOL, W.LPCWSTR]
        for f in (k32.SetEvent, k32.ResetEvent, k32.CloseHandle):
            f.restype = W.BOOL
            f.argtypes = [W.HANDLE]
        self._k32 = k32
        self.tagname = _win32.object_name(name)
        self.mapping = create_mapping(W.HANDLE(-1), None, self.PAGE_READWRITE, 0, size, self.tagname)
        err = ctypes.get_last_error()
        assert self.mapping, f"CreateFileMappingW({self.tagname}): error {err}"
        if err == self.ERROR_ALREADY_EXISTS:
            k32.CloseHandle(self.mapping)
            raise FileExistsError(self.tagname)
        self.events = []
        for k in range(_win32.WAKE_EVENTS):
            h = create_event(None, True, False, _win32.wake_event_name(name, k))
            assert h and ctypes.get_last_error() != self.ERROR_ALREADY_EXISTS
            self.events.append(h)

    def wake(self, old: int) -> None:
        """Step 6 on Windows, around the store the caller makes: see :meth:`RingWriter.bump_and_wake`."""
        self._k32.SetEvent(self.events[old % len(self.events)])

    def reset_next(self, old: int) -> None:
        self._k32.ResetEvent(self.events[(old + 1) % len(self.events)])

    def close(self) -> None:
        for h in self.events + [self.mapping]:
            self._k32.CloseHandle(h)
        self.events, self.mapping = [], None


class RingWriter:
    def __init__(
        self,
        name: str,
        width: int = 8,
        height: int = 4,
        pixel_format: PixelFormat = PixelFormat.GRAY,
        slots: int = 4,
        *,
        checksum: bool = False,
        generation: int = 1,
        stream_id: str = "cam-1",
        mode: int = 0o600,
        publish_magic: bool = True,
    ) -> None:
        self.name = name
        self.path = os.path.join(SHM_DIR, name.lstrip("/"))
        self.frame_bytes = pixel_format.frame_bytes(width, height)
        assert self.frame_bytes is not None
        self.stride = L.slot_stride(self.frame_bytes)
        self.slots = slots
        self.size = L.segment_size(self.frame_bytes, slots)
        self.checksum = checksum
        self.shape = pixel_format.frame_shape(width, height)
        self._win: Optional[_WinObjects] = None
        if WINDOWS:
            self._win = _WinObjects(name, self.size)
            self.mm = mmap.mmap(-1, self.size, tagname=self._win.tagname)
        else:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
            try:
                os.fchmod(fd, mode)
                os.ftruncate(fd, self.size)
                self.mm = mmap.mmap(fd, self.size)
            finally:
                os.close(fd)
        mm = self.mm
        struct.pack_into("<IIIIII", mm, 8, L.LAYOUT_VERSION, L.HEADER_PAGE, width, height, int(pixel_format), slots)
        struct.pack_into("<QQQQQ", mm, 32, self.frame_bytes, self.stride, L.HEADER_PAGE, self.size, generation)
        struct.pack_into("<II", mm, 72, os.getpid(), L.FLAG_CHECKSUM if checksum else 0)
        struct.pack_into("<QI", mm, 80, time.time_ns(), len(stream_id))
        mm[128 : 128 + len(stream_id)] = stream_id.encode()
        self._u32 = np.frombuffer(mm, np.uint32)
        self.wake_addr = int(self._u32.ctypes.data) + L.WAKE_OFF
        self.set_u32(L.STATE_OFF, int(StreamState.STARTING))
        self.heartbeat()
        if publish_magic:
            self.publish_magic()
        self.next_frame = 1
        self._hb_stop: Optional[threading.Event] = None
        self._hb_thread: Optional[threading.Thread] = None

    # -- raw access
    def set_u32(self, off: int, v: int) -> None:
        struct.pack_into("<I", self.mm, off, v)

    def set_u64(self, off: int, v: int) -> None:
        struct.pack_into("<Q", self.mm, off, v)

    def get_u64(self, off: int) -> int:
        return int(struct.unpack_from("<Q", self.mm, off)[0])

    def get_u32(self, off: int) -> int:
        return int(struct.unpack_from("<I", self.mm, off)[0])

    def publish_magic(self) -> None:
        self.set_u64(0, L.MAGIC)

    def slot_off(self, n: int) -> int:
        return L.HEADER_PAGE + (n % self.slots) * self.stride

    # -- writer protocol
    def begin(self) -> int:
        """Step 1: the next slot's seq goes odd. Returns the odd value."""
        off = self.slot_off(self.next_frame)
        odd = (self.get_u64(off) & ~1) + 1
        self.set_u64(off, odd)
        self.set_u64(off + L.SLOT_FRAME_OFF, 0)
        return odd

    def payload(self, n: int) -> np.ndarray:
        off = self.slot_off(n) + L.SLOT_HEADER
        return np.frombuffer(self.mm, np.uint8, self.frame_bytes, off).reshape(self.shape)

    def commit(self, odd: int, wall_ns: Optional[int] = None, mono_ns: Optional[int] = None) -> int:
        n = self.next_frame
        off = self.slot_off(n)
        crc = zlib.crc32(self.payload(n).tobytes()) if self.checksum else 0
        self.set_u64(off + L.SLOT_FRAME_OFF, n)
        self.set_u64(off + L.SLOT_WALL_NS_OFF, time.time_ns() if wall_ns is None else wall_ns)
        self.set_u64(off + L.SLOT_MONO_NS_OFF, monotonic_ns() if mono_ns is None else mono_ns)
        self.set_u64(off + L.SLOT_LEN_OFF, self.frame_bytes)
        self.set_u32(off + L.SLOT_CHECKSUM_OFF, crc)
        self.set_u64(off, odd + 1)
        self.set_u64(L.LAST_FRAME_OFF, n)
        self.next_frame += 1
        self.bump_and_wake()
        return n

    def publish(
        self, data: Union[bytes, np.ndarray], wall_ns: Optional[int] = None, mono_ns: Optional[int] = None
    ) -> int:
        odd = self.begin()
        self.payload(self.next_frame)[...] = np.frombuffer(bytes(data), np.uint8).reshape(self.shape)
        return self.commit(odd, wall_ns, mono_ns)

    def bump_and_wake(self) -> None:
        old = self.get_u32(L.WAKE_OFF)
        if self._win is not None:
            # Reset the event of the new value, store it, set the event of the old one.
            self._win.reset_next(old)
            self.set_u32(L.WAKE_OFF, (old + 1) & 0xFFFFFFFF)
            self._win.wake(old)
            return
        self.set_u32(L.WAKE_OFF, (old + 1) & 0xFFFFFFFF)
        if _SYS_FUTEX > 0 and _libc is not None:
            _libc.syscall(
                ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(self.wake_addr), ctypes.c_long(FUTEX_WAKE),
                ctypes.c_long(0x7FFFFFFF), ctypes.c_void_p(None), ctypes.c_void_p(None), ctypes.c_long(0),
            )

    def set_state(self, state: StreamState) -> None:
        self.set_u32(L.STATE_OFF, int(state))
        self.bump_and_wake()

    def heartbeat(self) -> None:
        self.set_u64(L.HEARTBEAT_NS_OFF, monotonic_ns())

    def set_fps(self, fps: float) -> None:
        self.set_u32(L.FPS_MILLI_OFF, int(fps * 1000))

    def start_heartbeat(self, interval_s: float = 0.05) -> None:
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(interval_s):
                self.heartbeat()

        self._hb_stop = stop
        self._hb_thread = threading.Thread(target=run, daemon=True)
        self._hb_thread.start()

    def stop_heartbeat(self) -> None:
        if self._hb_stop is not None:
            self._hb_stop.set()
            assert self._hb_thread is not None
            self._hb_thread.join()
            self._hb_stop = None

    def close(self, unlink: bool = True) -> None:
        self.stop_heartbeat()
        self._u32 = None  # type: ignore[assignment]
        try:
            self.mm.close()
        except BufferError:
            pass
        if self._win is not None:
            # A named mapping goes with its last handle (readers may still hold it).
            self._win.close()
            return
        if unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def frame_bytes(n: int, size: int) -> bytes:
    """A frame whose bytes depend on ``n`` (like the Rust tests' ``frame``)."""
    return bytes(((n * 31) + i) & 0xFF for i in range(size))
