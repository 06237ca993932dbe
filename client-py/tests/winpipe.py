"""The server end of a byte-mode named pipe, for the scripted-peer tests of the
control client on Windows: what ``socket.socket(AF_UNIX)``'s ``bind``/``listen``/
``accept`` give those tests on Linux. Created as the broker creates its pipe
(``proto/doc/decisions.md`` 11): byte mode, local clients only."""

from __future__ import annotations

import ctypes
from ctypes import wintypes as W
from typing import Optional

PIPE_ACCESS_DUPLEX = 0x3
FILE_FLAG_FIRST_PIPE_INSTANCE = 0x0008_0000
PIPE_TYPE_BYTE = 0x0
PIPE_READMODE_BYTE = 0x0
PIPE_WAIT = 0x0
PIPE_REJECT_REMOTE_CLIENTS = 0x8
ERROR_PIPE_CONNECTED = 535
ERROR_BROKEN_PIPE = 109

_k32 = ctypes.WinDLL("kernel32", use_last_error=True)
_create = _k32.CreateNamedPipeW
_create.restype = W.HANDLE
_create.argtypes = [W.LPCWSTR, W.DWORD, W.DWORD, W.DWORD, W.DWORD, W.DWORD, W.DWORD, ctypes.c_void_p]
_connect = _k32.ConnectNamedPipe
_connect.restype = W.BOOL
_connect.argtypes = [W.HANDLE, ctypes.c_void_p]
_read = _k32.ReadFile
_read.restype = W.BOOL
_read.argtypes = [W.HANDLE, ctypes.c_void_p, W.DWORD, ctypes.POINTER(W.DWORD), ctypes.c_void_p]
_write = _k32.WriteFile
_write.restype = W.BOOL
_write.argtypes = [W.HANDLE, ctypes.c_void_p, W.DWORD, ctypes.POINTER(W.DWORD), ctypes.c_void_p]
for _f in (_k32.CloseHandle, _k32.DisconnectNamedPipe, _k32.FlushFileBuffers):
    _f.restype = W.BOOL
    _f.argtypes = [W.HANDLE]
_INVALID = W.HANDLE(-1).value


class PipeConn:
    """One connected client: blocking ``recv``/``sendall``/``close``."""

    def __init__(self, handle: int) -> None:
        self.handle: Optional[int] = handle

    def recv(self, n: int) -> bytes:
        buf = ctypes.create_string_buffer(n)
        got = W.DWORD(0)
        if not _read(self.handle, buf, n, ctypes.byref(got), None):
            if ctypes.get_last_error() == ERROR_BROKEN_PIPE:
                return b""
            raise ctypes.WinError(ctypes.get_last_error())
        return buf.raw[: got.value]

    def sendall(self, data: bytes) -> None:
        while data:
            sent = W.DWORD(0)
            if not _write(self.handle, data, len(data), ctypes.byref(sent), None):
                raise ctypes.WinError(ctypes.get_last_error())
            data = data[sent.value :]

    def close(self) -> None:
        h, self.handle = self.handle, None
        if h is not None:
            _k32.FlushFileBuffers(h)
            _k32.DisconnectNamedPipe(h)
            _k32.CloseHandle(h)


class PipeServer:
    """One pipe instance at ``path``, created at once (clients can connect from
    then on); :meth:`accept` waits for the client."""

    def __init__(self, path: str) -> None:
        h = _create(
            path,
            PIPE_ACCESS_DUPLEX | FILE_FLAG_FIRST_PIPE_INSTANCE,
            PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
            1,
            1 << 16,
            1 << 16,
            0,
            None,
        )
        if h == _INVALID or not h:
            raise ctypes.WinError(ctypes.get_last_error())
        self.handle: Optional[int] = h

    def accept(self) -> PipeConn:
        h, self.handle = self.handle, None
        assert h is not None
        if not _connect(h, None) and ctypes.get_last_error() != ERROR_PIPE_CONNECTED:
            err = ctypes.get_last_error()
            _k32.CloseHandle(h)
            raise ctypes.WinError(err)
        return PipeConn(h)

    def close(self) -> None:
        h, self.handle = self.handle, None
        if h is not None:
            _k32.CloseHandle(h)
