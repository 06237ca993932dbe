"""Sleeping until the ring's wake word changes, without spinning.

Linux on x86-64 and aarch64: ``FUTEX_WAIT`` on the word inside the read-only
mapping, through ``ctypes``. It is a *shared* futex (no ``FUTEX_PRIVATE_FLAG``):
the broker wakes it from another process, and the kernel keys it by the shared
file's page, so it works on a read-only mapping. ``ctypes`` releases the GIL for
the call, so other Python threads keep running.

Windows has no futex across processes: there the ring waits on the segment's
wake events instead (``_win32.EventWaiter``, the same ``wait(expected, timeout)``).

Elsewhere (or when the system call is refused): a sleeping poll with short,
growing steps, like the Rust fallback in ``proto/src/sync.rs``.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import sys
import time
from typing import Callable, Optional, Tuple

from ._platform import machine

log = logging.getLogger("framebroker.ring")

FUTEX_WAIT = 0
#: ``SYS_futex`` per architecture (the generic table is used by aarch64).
_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _load_syscall() -> "Optional[Callable[..., int]]":
    if not sys.platform.startswith("linux"):
        return None
    if machine() not in _SYS_FUTEX or ctypes.sizeof(ctypes.c_long) != 8:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    # Declared once: the call then converts plain ints instead of taking seven
    # ctypes objects built per wait (about 20 us less per frame on a woken reader).
    fn.argtypes = [
        ctypes.c_long,
        ctypes.c_void_p,
        ctypes.c_long,
        ctypes.c_long,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_long,
    ]
    return fn


_syscall = _load_syscall()
_SYS_FUTEX_NR = _SYS_FUTEX.get(machine(), -1)


def futex_retry(err: int) -> bool:
    """Whether a futex wait that returned -1 with ``err`` simply ended: EAGAIN
    (the word had changed already), ETIMEDOUT, EINTR (a signal). All: look again."""
    return err in (errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR)


def futex_available() -> bool:
    """Whether this platform waits with a futex (else: the sleeping poll)."""
    return _syscall is not None


class WordWaiter:
    """Waits on one 32-bit word at ``address`` (read by ``read_word`` for the
    portable path). The memory must stay mapped while a wait runs."""

    def __init__(self, address: int, read_word: Callable[[], int], use_futex: Optional[bool] = None) -> None:
        if use_futex is None:
            use_futex = futex_available()
        if use_futex and not futex_available():
            raise OSError("futex waits need Linux on x86-64 or aarch64")
        if address % 4:
            raise ValueError(f"futex word at {address:#x} is not 4-byte aligned")
        self.address = address
        self.read_word = read_word
        self.use_futex = use_futex
        #: Timespecs by timeout: readers wait for the same slice (the heartbeat
        #: interval, or what is left of their timeout) over and over. Never
        #: written after creation, so threads may share them.
        self._timespecs: "dict[float, Tuple[_Timespec, int]]" = {}

    def prepared(self, timeout_s: float) -> "Optional[Tuple[Callable[..., int], int]]":
        """The futex wait for ``timeout_s`` as ``(call, timespec)``, for a caller
        that waits that long on every frame: ``call(expected, timespec, None, 0)``
        returns -1 with ``errno`` set when it did not sleep (see
        :func:`futex_retry`). ``None`` when this waiter does not use the futex."""
        if not self.use_futex or _syscall is None:
            return None
        cached = self._timespec(timeout_s)
        # Kept whatever the cache's bound: the caller holds only its address.
        self._timespecs[timeout_s] = cached
        return functools.partial(_syscall, _SYS_FUTEX_NR, self.address, FUTEX_WAIT), cached[1]

    def _timespec(self, timeout_s: float) -> "Tuple[_Timespec, int]":
        """The timespec of ``timeout_s`` and its address (kept for the slice and
        a few other timeouts waited for over and over; never written after)."""
        cached = self._timespecs.get(timeout_s)
        if cached is None:
            sec = int(timeout_s)
            ts = _Timespec(sec, int((timeout_s - sec) * 1e9))
            cached = (ts, ctypes.addressof(ts))
            if len(self._timespecs) < 8:  # the slice; other timeouts are one-offs
                self._timespecs[timeout_s] = cached
        return cached

    def wait(self, expected: int, timeout_s: float) -> None:
        """Sleeps while the word equals ``expected``, at most ``timeout_s`` seconds.
        Spurious returns are possible: callers re-check in a loop."""
        if timeout_s <= 0:
            return
        if self.use_futex:
            self._futex_wait(expected, timeout_s)
        else:
            self._poll_wait(expected, timeout_s)

    def _futex_wait(self, expected: int, timeout_s: float) -> None:
        assert _syscall is not None
        cached = self._timespec(timeout_s)
        # The timespec object stays referenced by ``cached`` for the whole call.
        r = _syscall(_SYS_FUTEX_NR, self.address, FUTEX_WAIT, expected & 0xFFFFFFFF, cached[1], None, 0)
        if r == -1:
            err = ctypes.get_errno()
            if not futex_retry(err):
                log.warning(
                    "futex wait failed (%s); falling back to a sleeping poll", errno.errorcode.get(err, err)
                )
                self.use_futex = False
                self._poll_wait(expected, timeout_s)

    def _poll_wait(self, expected: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        step = 50e-6
        while self.read_word() == expected:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(step, left))
            step = min(step * 2, 2e-3)
