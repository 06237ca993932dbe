"""The client's Windows seams, through ``ctypes`` and ``kernel32`` (no extra
package: the wheel stays pure Python). The design is the broker's, in
``proto/doc/decisions.md`` (9, 10 and 11) and ``proto/doc/layout.md`` ("On
Windows"):

- **The ring** of segment ``/fb-cam.1`` is the pagefile-backed file mapping
  ``Local\\fb-cam.1`` (the logon session's namespace), created by the broker with a
  DACL that lets only its own user in. :func:`open_mapping` opens it **read-only**
  and never creates it: ``OpenFileMappingW(FILE_MAP_READ)`` first (a missing name
  is an error, not a new empty mapping), and only while that handle holds the
  section is it mapped with ``mmap.mmap(-1, size, tagname=..., ACCESS_READ)`` (the
  same ``mmap`` object the Linux reader has, with the same rule that a mapping with
  live views is not closed).
- **The wake-up**: four manual-reset events ``Local\\fb-cam.1~wake0`` ... ``~wake3``;
  event ``v % 4`` is set when the wake word leaves ``v``. :class:`EventWaiter` opens
  them with ``SYNCHRONIZE`` only (a reader can wait, never set or reset) and waits
  on the one of the value it read, with ``WaitForSingleObject`` (no polling).
- **The control connection** is the byte-mode named pipe
  ``\\\\.\\pipe\\framebroker-<user>`` (:func:`default_pipe_path`), opened as a file
  with overlapped I/O so that reads and writes can time out (:class:`PipeStream`,
  the part of ``socket.socket`` the client uses).
- **The clock** of ``heartbeat_ns`` and ``mono_ns`` is ``QueryPerformanceCounter``
  in ns, which is ``time.perf_counter_ns()``.

Importing this module anywhere but on Windows raises ``ImportError``.
"""

from __future__ import annotations

import ctypes
import logging
import math
import mmap
import sys
import time
from ctypes import wintypes as W
from typing import Callable, List, Optional

if sys.platform != "win32":  # pragma: no cover - the module is Windows-only
    raise ImportError("framebroker._win32 is for Windows")

from . import _layout as L
from ._errors import SegmentError

log = logging.getLogger("framebroker.ring")

_k32 = ctypes.WinDLL("kernel32", use_last_error=True)
_adv = ctypes.WinDLL("advapi32", use_last_error=True)

FILE_MAP_READ = 0x0004
SYNCHRONIZE = 0x0010_0000
GENERIC_READ = 0x8000_0000
GENERIC_WRITE = 0x4000_0000
OPEN_EXISTING = 3
FILE_FLAG_OVERLAPPED = 0x4000_0000
INFINITE = 0xFFFF_FFFF
WAIT_OBJECT_0 = 0
WAIT_TIMEOUT = 0x102
WAIT_FAILED = 0xFFFF_FFFF
ERROR_FILE_NOT_FOUND = 2
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_HANDLE = 6
ERROR_BROKEN_PIPE = 109
ERROR_SEM_TIMEOUT = 121
ERROR_PIPE_BUSY = 231
ERROR_NO_DATA = 232
ERROR_PIPE_NOT_CONNECTED = 233
ERROR_OPERATION_ABORTED = 995
ERROR_IO_PENDING = 997
_INVALID_HANDLE = W.HANDLE(-1).value
#: What a read gets once the server closed its end (closed the handle, or
#: disconnected the instance): the end of the stream.
_END_OF_PIPE = (ERROR_BROKEN_PIPE, ERROR_PIPE_NOT_CONNECTED)

#: Number of wake events per segment (decision 10).
WAKE_EVENTS = 4
#: Longest single wait of the pipe client, ms (see :meth:`PipeStream._wait`).
_SLICE_MS = 100
#: Prefix of every named pipe path.
PIPE_PREFIX = "\\\\.\\pipe\\"


class _Overlapped(ctypes.Structure):
    _fields_ = [
        ("Internal", ctypes.c_void_p),
        ("InternalHigh", ctypes.c_void_p),
        ("Offset", W.DWORD),
        ("OffsetHigh", W.DWORD),
        ("hEvent", W.HANDLE),
    ]


class _MemoryBasicInformation(ctypes.Structure):
    _fields_ = [
        ("BaseAddress", ctypes.c_void_p),
        ("AllocationBase", ctypes.c_void_p),
        ("AllocationProtect", W.DWORD),
        ("PartitionId", W.WORD),
        ("RegionSize", ctypes.c_size_t),
        ("State", W.DWORD),
        ("Protect", W.DWORD),
        ("Type", W.DWORD),
    ]


def _fn(dll: ctypes.WinDLL, name: str, restype: object, *argtypes: object) -> Callable[..., object]:
    f = getattr(dll, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f  # type: ignore[no-any-return]


_OpenFileMappingW = _fn(_k32, "OpenFileMappingW", W.HANDLE, W.DWORD, W.BOOL, W.LPCWSTR)
_MapViewOfFile = _fn(_k32, "MapViewOfFile", ctypes.c_void_p, W.HANDLE, W.DWORD, W.DWORD, W.DWORD, ctypes.c_size_t)
_UnmapViewOfFile = _fn(_k32, "UnmapViewOfFile", W.BOOL, ctypes.c_void_p)
_VirtualQuery = _fn(
    _k32, "VirtualQuery", ctypes.c_size_t, ctypes.c_void_p, ctypes.POINTER(_MemoryBasicInformation), ctypes.c_size_t
)
_OpenEventW = _fn(_k32, "OpenEventW", W.HANDLE, W.DWORD, W.BOOL, W.LPCWSTR)
_CreateEventW = _fn(_k32, "CreateEventW", W.HANDLE, ctypes.c_void_p, W.BOOL, W.BOOL, W.LPCWSTR)
_WaitForSingleObject = _fn(_k32, "WaitForSingleObject", W.DWORD, W.HANDLE, W.DWORD)
_CloseHandle = _fn(_k32, "CloseHandle", W.BOOL, W.HANDLE)
_CreateFileW = _fn(
    _k32, "CreateFileW", W.HANDLE, W.LPCWSTR, W.DWORD, W.DWORD, ctypes.c_void_p, W.DWORD, W.DWORD, W.HANDLE
)
_WaitNamedPipeW = _fn(_k32, "WaitNamedPipeW", W.BOOL, W.LPCWSTR, W.DWORD)
_ReadFile = _fn(_k32, "ReadFile", W.BOOL, W.HANDLE, ctypes.c_void_p, W.DWORD, ctypes.c_void_p, ctypes.POINTER(_Overlapped))
_WriteFile = _fn(
    _k32, "WriteFile", W.BOOL, W.HANDLE, ctypes.c_void_p, W.DWORD, ctypes.c_void_p, ctypes.POINTER(_Overlapped)
)
_GetOverlappedResult = _fn(
    _k32, "GetOverlappedResult", W.BOOL, W.HANDLE, ctypes.POINTER(_Overlapped), ctypes.POINTER(W.DWORD), W.BOOL
)
_CancelIoEx = _fn(_k32, "CancelIoEx", W.BOOL, W.HANDLE, ctypes.POINTER(_Overlapped))
_GetUserNameW = _fn(_adv, "GetUserNameW", W.BOOL, W.LPWSTR, ctypes.POINTER(W.DWORD))


def _last_error() -> int:
    return ctypes.get_last_error()


def _win_error(code: int, what: str) -> OSError:
    """An ``OSError`` whose ``winerror`` (and so its subclass: ``FileNotFoundError``,
    ``PermissionError``, ``BrokenPipeError``, ...) is ``code``."""
    e = ctypes.WinError(code)
    e.strerror = f"{what}: {e.strerror}"
    return e


# --------------------------------------------------------------------------- names


def object_name(segment: str) -> str:
    """The mapping's name for segment ``segment`` (``/fb-cam.1`` -> ``Local\\fb-cam.1``),
    as ``naming::windows_object_name`` makes it. Refuses names that could reach
    another namespace or object."""
    bare = segment[1:] if segment.startswith("/") else segment
    if not bare or any(c in bare for c in "/\\\0") or bare in (".", ".."):
        raise SegmentError(segment, "not a shared-memory segment name")
    return "Local\\" + bare


def wake_event_name(segment: str, k: int) -> str:
    """Wake event ``k`` (0..3) of ``segment``: ``Local\\fb-cam.1~wake<k>``."""
    return f"{object_name(segment)}~wake{k}"


def user_name() -> str:
    """``GetUserNameW``: the ``<user>`` of the default pipe name (the broker asks the
    same call)."""
    size = W.DWORD(257)
    buf = ctypes.create_unicode_buffer(size.value)
    if not _GetUserNameW(buf, ctypes.byref(size)):
        raise _win_error(_last_error(), "GetUserNameW")
    return buf.value


def pipe_path(value: str) -> str:
    """A ``--socket`` / ``FRAMEBROKER_SOCKET`` value as a pipe path: a value that
    starts with ``\\\\.\\pipe\\`` is used as it is, any other ``X`` means
    ``\\\\.\\pipe\\X``."""
    return value if value.lower().startswith(PIPE_PREFIX) else PIPE_PREFIX + value


def default_pipe_path() -> str:
    """``\\\\.\\pipe\\framebroker-<user>``."""
    return f"{PIPE_PREFIX}framebroker-{user_name()}"


def perf_counter_ns() -> int:
    """The clock of ``heartbeat_ns`` and ``mono_ns`` on Windows:
    ``QueryPerformanceCounter`` ticks in ns, rounded down."""
    return time.perf_counter_ns()


# --------------------------------------------------------------------------- the mapping


def open_mapping(segment: str) -> mmap.mmap:
    """Maps segment ``segment`` read-only; raises :class:`SegmentError` when it is
    missing, not ours, or shorter than a header page. The header itself is checked
    by the caller, as on Linux."""
    name = object_name(segment)
    handle = _OpenFileMappingW(FILE_MAP_READ, False, name)
    if not handle:
        err = _last_error()
        if err == ERROR_FILE_NOT_FOUND:
            raise SegmentError(segment, "no such segment (stream stopped, or broker restarted)")
        if err == ERROR_ACCESS_DENIED:
            raise SegmentError(segment, f"access to {name} denied: it belongs to another user")
        raise SegmentError(segment, f"cannot open {name}: {ctypes.FormatError(err)}")
    try:
        size = _section_size(segment, handle)
        # While `handle` holds the section, this opens that same section (mmap's
        # CreateFileMappingW finds the name taken and returns the existing one; it
        # can create nothing). PAGE_READONLY / FILE_MAP_READ: the view is read-only.
        try:
            return mmap.mmap(-1, size, tagname=name, access=mmap.ACCESS_READ)
        except OSError as e:
            raise SegmentError(segment, f"cannot map {name}: {e.strerror or e}") from None
    finally:
        _CloseHandle(handle)


def _section_size(segment: str, handle: int) -> int:
    """How much of the section to map: the header's ``segment_size`` when the view
    holds it, else the whole view (the header check then refuses it)."""
    view = _MapViewOfFile(handle, FILE_MAP_READ, 0, 0, 0)
    if not view:
        raise SegmentError(segment, f"MapViewOfFile: {ctypes.FormatError(_last_error())}")
    try:
        info = _MemoryBasicInformation()
        if not _VirtualQuery(view, ctypes.byref(info), ctypes.sizeof(info)):
            raise SegmentError(segment, f"VirtualQuery: {ctypes.FormatError(_last_error())}")
        region = int(info.RegionSize)
        if region < L.HEADER_PAGE:
            raise SegmentError(segment, f"segment too small: need {L.HEADER_PAGE} bytes, have {region}")
        declared = ctypes.c_uint64.from_address(view + L.SEGMENT_SIZE_OFF).value
        return declared if L.HEADER_PAGE <= declared <= region else region
    finally:
        _UnmapViewOfFile(view)


# --------------------------------------------------------------------------- the wake-up


class EventWaiter:
    """Waits until the wake word leaves a value, on the segment's wake events
    (decision 10): ``wait(v, t)`` sleeps on event ``v % 4`` for at most ``t``
    seconds. Spurious and timed-out returns are possible: callers re-check in a
    loop, as with the futex."""

    #: Not a futex (for callers and tests that ask).
    use_futex = False

    def __init__(self, segment: str) -> None:
        self.segment = segment
        self._events: List[int] = []
        for k in range(WAKE_EVENTS):
            name = wake_event_name(segment, k)
            h = _OpenEventW(SYNCHRONIZE, False, name)
            if not h:
                err = _last_error()
                self.close()
                raise SegmentError(
                    segment, f"cannot open its wake event {name}: {ctypes.FormatError(err)}"
                )
            self._events.append(h)

    def wait(self, expected: int, timeout_s: float) -> None:
        if timeout_s <= 0 or not self._events:
            return
        ms = min(math.ceil(timeout_s * 1000), INFINITE - 1)
        # ctypes releases the GIL for the call: other threads run while this one sleeps.
        r = _WaitForSingleObject(self._events[expected % WAKE_EVENTS], ms)
        if r == WAIT_FAILED:
            # Only a closed handle gets here; the caller's loop notices the closed ring.
            log.debug("wait on %s failed: %s", self.segment, ctypes.FormatError(_last_error()))

    def close(self) -> None:
        events, self._events = self._events, []
        for h in events:
            _CloseHandle(h)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


# --------------------------------------------------------------------------- the control pipe


class PipeStream:
    """A client end of a byte-mode named pipe, with the methods of ``socket.socket``
    that :class:`~framebroker.BrokerClient` uses (``sendall``, ``recv``,
    ``settimeout``, ``close``). Each read and write is overlapped and waits at most
    the timeout; a read or write that times out is cancelled and raises
    ``TimeoutError`` (``socket.timeout``)."""

    def __init__(self, path: str, timeout: Optional[float]) -> None:
        self.path = path
        self.timeout = timeout
        self._handle: Optional[int] = None
        self._event = _CreateEventW(None, True, False, None)
        if not self._event:
            raise _win_error(_last_error(), "CreateEventW")
        try:
            self._handle = self._open(path, timeout)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _open(path: str, timeout: Optional[float]) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            h = _CreateFileW(path, GENERIC_READ | GENERIC_WRITE, 0, None, OPEN_EXISTING, FILE_FLAG_OVERLAPPED, None)
            if h != _INVALID_HANDLE:
                return h  # type: ignore[no-any-return]
            err = _last_error()
            if err != ERROR_PIPE_BUSY:
                # ERROR_FILE_NOT_FOUND -> FileNotFoundError, ERROR_ACCESS_DENIED ->
                # PermissionError: the caller tells them apart by type.
                raise _win_error(err, f"cannot open {path}")
            # Every instance is taken: wait for the broker to offer the next one.
            left = INFINITE - 1 if deadline is None else int((deadline - time.monotonic()) * 1000)
            if left <= 0 or (not _WaitNamedPipeW(path, max(left, 1)) and _last_error() == ERROR_SEM_TIMEOUT):
                raise TimeoutError(f"every instance of {path} stayed busy")

    def settimeout(self, timeout: Optional[float]) -> None:
        self.timeout = timeout

    def fileno(self) -> int:
        if self._handle is None:
            raise OSError(ERROR_INVALID_HANDLE, "pipe is closed")
        return self._handle

    def _wait(self, event: int) -> bool:
        """Waits for ``event`` at most the timeout; false when it passed. In slices of
        :data:`_SLICE_MS`: Python runs a Ctrl-C handler only between two calls, and a
        wait for a stuck broker must not hold it back for the whole timeout."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            ms = _SLICE_MS
            if deadline is not None:
                ms = min(ms, max(math.ceil((deadline - time.monotonic()) * 1000), 0))
            if _WaitForSingleObject(event, ms) != WAIT_TIMEOUT:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _io(self, op: Callable[..., object], buf: object, n: int, what: str) -> int:
        """One overlapped ``ReadFile``/``WriteFile`` of up to ``n`` bytes; the byte
        count, 0 for a read at the end of the stream."""
        h = self.fileno()
        ov = _Overlapped()
        ov.hEvent = self._event
        got = W.DWORD(0)
        if not op(h, buf, n, None, ctypes.byref(ov)):
            err = _last_error()
            if err in _END_OF_PIPE and op is _ReadFile:
                return 0
            if err != ERROR_IO_PENDING:
                raise _win_error(err, f"{what} {self.path}")
            done = False
            try:
                done = self._wait(self._event)
            finally:
                if not done:  # timed out, or Ctrl-C (KeyboardInterrupt) between two slices
                    _CancelIoEx(h, ctypes.byref(ov))
                    # The buffer and `ov` must outlive the operation: wait for its end.
                    _GetOverlappedResult(h, ctypes.byref(ov), ctypes.byref(got), True)
            if not done:
                raise TimeoutError(f"{what} {self.path} timed out after {self.timeout} s")
        if not _GetOverlappedResult(h, ctypes.byref(ov), ctypes.byref(got), True):
            err = _last_error()
            if err in _END_OF_PIPE and op is _ReadFile:
                return 0
            raise _win_error(err, f"{what} {self.path}")
        return got.value

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` when the broker closed its end."""
        buf = ctypes.create_string_buffer(n)
        got = self._io(_ReadFile, buf, n, "reading")
        return buf.raw[:got]

    def sendall(self, data: bytes) -> None:
        view = memoryview(bytes(data))
        while view:
            chunk = ctypes.create_string_buffer(view.tobytes(), len(view))
            sent = self._io(_WriteFile, chunk, len(view), "writing")
            if sent <= 0:
                raise BrokenPipeError(f"writing {self.path}: the broker closed the pipe")
            view = view[sent:]

    def close(self) -> None:
        h, self._handle = self._handle, None
        if h is not None:
            _CloseHandle(h)
        ev, self._event = self._event, None
        if ev:
            _CloseHandle(ev)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
