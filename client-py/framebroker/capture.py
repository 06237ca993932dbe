"""``VideoCapture``: a drop-in for ``cv2.VideoCapture`` that reads camera frames
from framebroker's shared memory.

``rtsp://``, ``rtsps://`` and the broker's ``testsrc://`` URLs go to the local
broker (or, with ``server_url=`` / ``$FRAMEBROKER_SERVER``, to the web gateway
over HTTP); ``framebroker://<id>`` attaches to a running stream by id. Every other
source (files, webcam indexes, http, GStreamer pipelines) is handed to the real
``cv2.VideoCapture`` when OpenCV is installed.

Where this differs from OpenCV on purpose:

- ``read()`` returns the **newest** frame this capture has not returned yet,
  never a frame from a queue of old ones: a program that is slower than the
  camera skips frames instead of falling behind. (``CAP_PROP_BUFFERSIZE`` > 1
  switches to *sequential* mode: every frame in order while the reader keeps up
  within a ring of that depth.)
- When the stream stops or the broker dies, ``read()`` returns ``(False, None)``
  (within about a second) and a later ``read()`` re-attaches by itself when the
  stream or the broker is back; ``isOpened()`` stays true meanwhile.
- ``CAP_PROP_FPS`` is the rate measured by the broker; until it has measured one
  (right after open), the rate the stream declares, as OpenCV reports.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import time
from types import ModuleType
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Type, Union

import numpy as np

from ._errors import FrameBrokerError, FrameOverwritten, OpenCVUnavailable, ReadTimeout
from ._layout import MAX_SLOTS, MIN_SLOTS, PixelFormat
from ._local import LocalStream
from ._naming import ID_SCHEME, goes_to_broker, redact_url, scheme_of
from ._protocol import Transport
from ._remote import SERVER_ENV, RemoteStream
from ._ring import FrameMeta

log = logging.getLogger("framebroker.capture")

# The OpenCV constants this module understands (same numbers as cv2's).
CAP_ANY = 0
CAP_FFMPEG = 1900
CAP_PROP_POS_MSEC = 0
CAP_PROP_POS_FRAMES = 1
CAP_PROP_FRAME_WIDTH = 3
CAP_PROP_FRAME_HEIGHT = 4
CAP_PROP_FPS = 5
CAP_PROP_FORMAT = 8
CAP_PROP_CONVERT_RGB = 16
CAP_PROP_BUFFERSIZE = 38
CAP_PROP_BACKEND = 42
CAP_PROP_OPEN_TIMEOUT_MSEC = 53
CAP_PROP_READ_TIMEOUT_MSEC = 54

#: OpenCV's defaults for the two timeouts (ms).
DEFAULT_OPEN_TIMEOUT_MS = 30000.0
DEFAULT_READ_TIMEOUT_MS = 30000.0
#: Set to 1 to send every source to OpenCV (bypass the broker).
DISABLE_ENV = "FRAMEBROKER_DISABLE"
BACKEND_NAME = "FRAMEBROKER"

_cv2_module: Optional[ModuleType] = None
_cv2_tried = False


def _cv2() -> Optional[ModuleType]:
    """OpenCV if it can be imported (imported once, on first need)."""
    global _cv2_module, _cv2_tried
    if not _cv2_tried:
        _cv2_tried = True
        try:
            import cv2  # type: ignore[import-not-found,unused-ignore]

            _cv2_module = cv2
        except ImportError:
            _cv2_module = None
    return _cv2_module


def _cv_major() -> int:
    cv2 = _cv2()
    if cv2 is None:
        return 5
    try:
        return int(str(cv2.__version__).split(".")[0])
    except ValueError:
        return 5


def _unsupported() -> float:
    """What OpenCV's get() answers for a property the backend does not have: -1 since
    OpenCV 5, 0 before."""
    return -1.0 if _cv_major() >= 5 else 0.0


def _cv_type_8u(channels: int) -> float:
    cv2 = _cv2()
    if cv2 is not None and hasattr(cv2, f"CV_8UC{channels}"):
        return float(getattr(cv2, f"CV_8UC{channels}"))
    return float((channels - 1) << 5)  # OpenCV 5's type encoding


class CaptureError(FrameBrokerError):
    """Raised by a :class:`VideoCapture` in exception mode (``setExceptionMode(True)``)
    where OpenCV raises ``cv2.error``. When OpenCV is installed the raised object is
    also a ``cv2.error``, so ``except cv2.error`` keeps working."""


_cv_error_class: Optional[Type[CaptureError]] = None


def _capture_error(message: str) -> CaptureError:
    global _cv_error_class
    cv2 = _cv2()
    if cv2 is None:
        return CaptureError(message)
    if _cv_error_class is None:
        _cv_error_class = type("CaptureError", (CaptureError, cv2.error), {"__module__": __name__})
    return _cv_error_class(message)


def transport_from_env() -> Transport:
    """The RTSP transport OpenCV's FFmpeg backend would use: ``rtsp_transport`` from
    ``$OPENCV_FFMPEG_CAPTURE_OPTIONS`` (``key;value|key;value``), TCP when unset, as
    OpenCV sets it."""
    opts = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
    if not opts:
        return Transport.TCP
    for item in opts.split("|"):
        key, _, value = item.partition(";")
        if key.strip() == "rtsp_transport":
            return Transport.UDP if value.strip().lower().startswith("udp") else Transport.TCP
    return Transport.TCP


Source = Union[str, int, "os.PathLike[str]"]


class VideoCapture:
    """Video capturing from framebroker streams, with the API of ``cv2.VideoCapture``.

    ``VideoCapture()``, ``VideoCapture(source)``, ``VideoCapture(source, apiPreference)``
    and ``VideoCapture(source, apiPreference, params)`` behave as in OpenCV; ``params``
    is the flat ``[prop, value, prop, value, ...]`` list, honouring
    ``CAP_PROP_OPEN_TIMEOUT_MSEC``, ``CAP_PROP_READ_TIMEOUT_MSEC``,
    ``CAP_PROP_BUFFERSIZE``, ``CAP_PROP_CONVERT_RGB`` and (a framebroker extension)
    ``CAP_PROP_FRAME_WIDTH``/``HEIGHT`` to ask the broker to scale a stream it starts.
    ``apiPreference`` only matters for sources that fall back to OpenCV.

    Keyword-only extensions: ``server_url`` (read through the gateway; default
    ``$FRAMEBROKER_SERVER``), ``socket_path`` (the broker's control socket; default
    ``$FRAMEBROKER_SOCKET`` or the per-user path), ``verify_checksum`` (check each
    frame's CRC-32 when the broker stores them).

    Differences from OpenCV, on purpose: see the module documentation (newest
    frame instead of a stale queue, automatic re-attach, measured FPS).
    """

    def __init__(
        self,
        source: Optional[Source] = None,
        apiPreference: int = CAP_ANY,
        params: Optional[Sequence[int]] = None,
        *,
        server_url: Optional[str] = None,
        socket_path: Optional[str] = None,
        verify_checksum: bool = False,
    ) -> None:
        self._exceptions = False
        self._server_url = server_url
        self._socket_path = socket_path
        self._verify = verify_checksum
        self._cv: Any = None
        self._local: Optional[LocalStream] = None
        self._remote: Optional[RemoteStream] = None
        self._reset_props()
        self._grabbed: Optional[np.ndarray] = None
        self._grabbed_owned = False
        #: Metadata of the last frame returned (number, capture times, frames missed).
        self.frame_meta: Optional[FrameMeta] = None
        #: Frames this capture never returned (skipped for a newer one, or lost).
        self.frames_missed = 0
        #: Why the last open or read failed, if it did.
        self.last_error: Optional[str] = None
        self._first_wall_ns = 0
        self._first_number = 0
        if source is not None:
            self.open(source, apiPreference, params)

    def _reset_props(self) -> None:
        self._open_timeout_ms = DEFAULT_OPEN_TIMEOUT_MS
        self._read_timeout_ms = DEFAULT_READ_TIMEOUT_MS
        self._buffersize = 1
        self._convert_rgb = True
        self._want_w: Optional[int] = None
        self._want_h: Optional[int] = None

    # ------------------------------------------------------------------ opening

    def open(
        self, source: Source, apiPreference: int = CAP_ANY, params: Optional[Sequence[int]] = None
    ) -> bool:
        """Opens ``source`` (after releasing the current one). Returns whether it
        opened; in exception mode a failure raises :class:`CaptureError` instead."""
        self.release()
        self._reset_props()
        self.last_error = None
        if isinstance(source, os.PathLike):
            source = os.fspath(source)
        if isinstance(source, bool) or not isinstance(source, (str, int)):
            raise TypeError(f"source must be a URL, a file name or a camera index, not {type(source).__name__}")
        if not isinstance(apiPreference, numbers.Integral):
            raise TypeError("Argument 'apiPreference' is required to be an integer")
        pairs = self._parse_params(params)
        use_broker = (
            isinstance(source, str)
            and (goes_to_broker(source) or scheme_of(source) == ID_SCHEME)
            and os.environ.get(DISABLE_ENV, "") not in ("1", "true", "yes")
        )
        if not use_broker:
            return self._open_opencv(source, int(apiPreference), params)
        assert isinstance(source, str)
        for prop, value in pairs:
            self._apply_param(prop, value)
        server = self._server_url or os.environ.get(SERVER_ENV) or None
        timeout_s = self._open_timeout_ms / 1000.0
        try:
            if server:
                remote = RemoteStream(server, source, width=self._want_w, height=self._want_h)
                remote.open(timeout_s)
                self._remote = remote
            else:
                local = LocalStream(
                    source,
                    socket_path=self._socket_path,
                    transport=transport_from_env(),
                    width=self._want_w,
                    height=self._want_h,
                    ring_slots=self._ring_slots(),
                    verify_checksum=self._verify,
                )
                local.open(timeout_s)
                self._local = local
        except (FrameBrokerError, ValueError) as e:
            return self._fail_open(source, e)
        log.debug("opened %s through %s", redact_url(source), server or "the local broker")
        return True

    @staticmethod
    def _parse_params(params: Optional[Sequence[int]]) -> List[Tuple[int, int]]:
        if params is None:
            return []
        flat = [int(v) for v in params]
        if len(flat) % 2:
            raise ValueError("params must be pairs: [prop, value, prop, value, ...]")
        return list(zip(flat[0::2], flat[1::2]))

    def _apply_param(self, prop: int, value: int) -> None:
        if prop == CAP_PROP_OPEN_TIMEOUT_MSEC:
            self._open_timeout_ms = float(max(value, 1))
        elif prop == CAP_PROP_READ_TIMEOUT_MSEC:
            self._read_timeout_ms = float(max(value, 1))
        elif prop == CAP_PROP_BUFFERSIZE:
            self._buffersize = max(value, 1)
        elif prop == CAP_PROP_CONVERT_RGB:
            self._convert_rgb = bool(value)
        elif prop == CAP_PROP_FRAME_WIDTH:
            self._want_w = value
        elif prop == CAP_PROP_FRAME_HEIGHT:
            self._want_h = value
        else:
            log.debug("open parameter %d is not used by framebroker streams; ignored", prop)

    def _ring_slots(self) -> Optional[int]:
        # Sequential mode with depth n: frames last-N+2..last are safe, so N = n + 1.
        if self._buffersize <= 1:
            return None
        return min(max(self._buffersize + 1, MIN_SLOTS), MAX_SLOTS)

    def _open_opencv(self, source: Union[str, int], api: int, params: Optional[Sequence[int]]) -> bool:
        cv2 = _cv2()
        if cv2 is None:
            raise OpenCVUnavailable(repr(source))
        cap = cv2.VideoCapture()
        cap.setExceptionMode(self._exceptions)
        ok = cap.open(source, api, list(params)) if params is not None else cap.open(source, api)
        self._cv = cap
        if not ok:
            self.last_error = f"OpenCV could not open {source!r}"
        return bool(ok)

    def _fail_open(self, source: str, e: Exception) -> bool:
        msg = f"cannot open {redact_url(source)}: {e}"
        self.last_error = msg
        if self._exceptions:
            raise _capture_error(msg) from e
        log.warning("%s", msg)
        return False

    def isOpened(self) -> bool:
        """Whether a source is open. Stays true while a broker stream is away and
        being re-attached."""
        if self._cv is not None:
            return bool(self._cv.isOpened())
        return self._local is not None or self._remote is not None

    # ------------------------------------------------------------------ reading

    def _output_needs_conversion(self) -> bool:
        pf = self._pixel_format()
        return self._convert_rgb and pf is not None and pf is not PixelFormat.BGR24

    def _pixel_format(self) -> Optional[PixelFormat]:
        if self._local is not None and self._local.info is not None:
            return self._local.info.pixel_format
        if self._remote is not None:
            return self._remote.pixel_format
        return None

    def _next_frame(self, out: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """The next frame in the output format (BGR unless CONVERT_RGB is off), into
        ``out`` when its shape fits; ``None`` on failure (``last_error`` says why)."""
        timeout = self._read_timeout_ms / 1000.0
        # Frames already in the output format are copied straight into ``out``.
        pf = self._pixel_format()
        direct = out if not self._convert_rgb or pf is None or pf is PixelFormat.BGR24 else None
        if self._local is not None:
            got = self._local.read(direct, timeout, self._buffersize > 1)
            where = self._local.stream_id
        elif self._remote is not None:
            got = self._remote.read(direct, timeout)
            where = self._remote.stream_id
        else:
            self.last_error = "capture is not opened"
            return None
        if got is None:
            reason = self._local.failure if self._local is not None else None
            self.last_error = self._timeout_message(where, reason)
            return None
        meta, raw = got
        self._note(meta)
        pf = self._pixel_format()  # again: a re-attach may have changed it
        if self._convert_rgb and pf is not None and pf is not PixelFormat.BGR24:
            return _to_bgr(raw, pf, out)
        return raw

    def _timeout_message(self, where: str, reason: Optional[str]) -> str:
        return f"stream {where}: no new frame within {self._read_timeout_ms:.0f} ms" + (
            f" ({reason})" if reason else ""
        )

    def _note(self, meta: FrameMeta) -> None:
        if self._first_number == 0 or meta.number < (self.frame_meta.number if self.frame_meta else 0):
            self._first_number, self._first_wall_ns = meta.number, meta.wall_ns
        self.frame_meta = meta
        self.frames_missed += meta.missed

    def read(self, image: Optional[np.ndarray] = None) -> Tuple[bool, Optional[np.ndarray]]:
        """Waits for the newest frame this capture has not returned yet (up to
        ``CAP_PROP_READ_TIMEOUT_MSEC``) and returns ``(True, frame)``, an owned copy
        the caller may keep or modify; ``image`` is filled and returned when its
        shape and dtype fit, as OpenCV does. ``(False, None)`` when no frame came:
        timeout, stream stopped, broker gone (a later read re-attaches)."""
        if self._cv is not None:
            return self._cv.read() if image is None else self._cv.read(image)  # type: ignore[no-any-return]
        # Fast path: a local stream with a frame already published, in the output
        # format. Kept to a few calls: each one costs more right after the reader
        # woke up, with cold caches, than it does in a tight loop.
        local = self._local
        ring = local.ring if local is not None else None
        if ring is not None and (ring.bgr24 or not self._convert_rgb):
            try:
                meta, frame = ring.read_wait(image, self._buffersize > 1, self._read_timeout_ms / 1000.0)
            except ReadTimeout:
                self._grabbed = None
                self.last_error = self._timeout_message(local.stream_id, None)  # type: ignore[union-attr]
                return self._read_failed("read")
            except FrameBrokerError:
                pass  # ended, broker gone, torn: the full path below re-attaches or reports it
            else:
                self._note(meta)
                self._grabbed, self._grabbed_owned = frame, False
                return True, frame
        frame = self._next_frame(image)
        if frame is None:
            self._grabbed = None
            return self._read_failed("read")
        self._grabbed, self._grabbed_owned = frame, False
        return True, frame

    def _read_failed(self, what: str) -> Tuple[bool, None]:
        if self._exceptions:
            raise _capture_error(f"{what}: {self.last_error or 'no frame'}")
        return False, None

    def grab(self) -> bool:
        """Waits for the next frame and keeps it for :meth:`retrieve`."""
        if self._cv is not None:
            return bool(self._cv.grab())
        frame = self._next_frame(None)
        if frame is None:
            self._grabbed = None
            self._read_failed("grab")
            return False
        self._grabbed, self._grabbed_owned = frame, True
        return True

    def retrieve(self, image: Optional[np.ndarray] = None, flag: int = 0) -> Tuple[bool, Optional[np.ndarray]]:
        """The frame of the last :meth:`grab` (``flag`` is ignored for broker streams)."""
        if self._cv is not None:
            return self._cv.retrieve() if image is None else self._cv.retrieve(image, flag)  # type: ignore[no-any-return]
        g = self._grabbed
        if g is None:
            self.last_error = "retrieve: no frame grabbed"
            return self._read_failed("retrieve")
        if image is not None and image.shape == g.shape and image.dtype == g.dtype and image.flags.writeable:
            np.copyto(image, g)
            return True, image
        if self._grabbed_owned:
            self._grabbed_owned = False
            return True, g
        return True, g.copy()

    @contextlib.contextmanager
    def read_view(self) -> Iterator[np.ndarray]:
        """Zero-copy read for advanced users: a read-only array over the frame in
        shared memory, in the stream's own pixel format (no conversion)::

            with cap.read_view() as frame:
                mean = frame.mean()        # use it here, do not keep it

        The writer may overwrite the slot while the block runs (after about
        ``slots - 1`` frame periods); leaving the block checks that it did not and
        raises :class:`FrameOverwritten` otherwise, so results computed inside are
        only trustworthy when the block exits normally. Errors (timeout, stream
        gone) raise :class:`ReadError` subclasses. Local broker streams only."""
        if self._local is None:
            raise FrameBrokerError("read_view() needs a stream of the local broker")
        local = self._local
        meta, view, stamp = local.view(self._read_timeout_ms / 1000.0, self._buffersize > 1)
        self._note(meta)
        ring = local.ring
        yield view
        if ring is None or not ring.still_valid(stamp):
            raise FrameOverwritten(local.stream_id, meta.number)

    @staticmethod
    def waitAny(streams: Sequence["VideoCapture"], timeoutNs: int = 0) -> Tuple[bool, List[int]]:
        """Waits until at least one capture has a new frame, grabs it on every capture
        that has one, and returns ``(True, indexes)``; ``(False, [])`` on timeout
        (``timeoutNs`` 0 waits without limit, as in OpenCV). Use :meth:`retrieve` on
        the ready ones afterwards. Local broker streams only (OpenCV itself supports
        this for V4L cameras only)."""
        caps = list(streams)
        for c in caps:
            if not isinstance(c, VideoCapture) or c._local is None:
                raise _capture_error("waitAny() is supported for local framebroker streams only")
        deadline = None if not timeoutNs else time.monotonic() + timeoutNs / 1e9
        while True:
            ready = [i for i, c in enumerate(caps) if c._local is not None and c._local.has_new_frame()]
            if ready:
                grabbed = [i for i in ready if caps[i].grab()]
                if grabbed:
                    return True, grabbed
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False, []
            # Streams that went away: one re-attach attempt each when their backoff allows.
            for c in caps:
                if c._local is not None and not c._local.attached:
                    c._local.try_reattach(now)
            attached = [c._local.ring for c in caps if c._local is not None and c._local.ring is not None]
            left = None if deadline is None else deadline - time.monotonic()
            if not attached:
                time.sleep(0.1 if left is None else max(min(0.1, left), 0.0))
                continue
            # One stream: sleep on its futex. Several: short futex naps on the first
            # (a sleeping poll of 2 ms for the others; never a busy loop).
            nap = 0.1 if len(attached) == 1 else 0.002
            attached[0].wait_for_change(nap if left is None else max(min(nap, left), 0.0))

    # ------------------------------------------------------------------ properties

    def get(self, propId: int) -> float:
        """A property, as OpenCV returns it (``float``). Unsupported properties give
        what OpenCV gives for them (-1 since OpenCV 5, 0 before)."""
        if isinstance(propId, bool) or not isinstance(propId, numbers.Integral):
            raise TypeError("Argument 'propId' is required to be an integer")
        if self._cv is not None:
            return float(self._cv.get(int(propId)))
        if not self.isOpened():
            return _unsupported()
        p = int(propId)
        if p in (CAP_PROP_FRAME_WIDTH, CAP_PROP_FRAME_HEIGHT):
            shape = self._frame_geometry()
            if shape is None:
                return 0.0
            return float(shape[0] if p == CAP_PROP_FRAME_WIDTH else shape[1])
        if p == CAP_PROP_FPS:
            return self._fps()
        if p == CAP_PROP_POS_FRAMES:
            return float(self.frame_meta.number) if self.frame_meta else 0.0
        if p == CAP_PROP_POS_MSEC:
            return self._pos_msec()
        if p == CAP_PROP_FORMAT:
            pf = self._pixel_format() or PixelFormat.BGR24
            channels = 3 if self._convert_rgb or pf in (PixelFormat.BGR24, PixelFormat.RGB24) else 1
            return _cv_type_8u(channels)
        if p == CAP_PROP_CONVERT_RGB:
            return 1.0 if self._convert_rgb else 0.0
        if p == CAP_PROP_BUFFERSIZE:
            return float(self._buffersize)
        if p == CAP_PROP_OPEN_TIMEOUT_MSEC:
            return self._open_timeout_ms
        if p == CAP_PROP_READ_TIMEOUT_MSEC:
            return self._read_timeout_ms
        if p == CAP_PROP_BACKEND:
            return float(CAP_FFMPEG)
        return _unsupported()

    def _frame_geometry(self) -> Optional[Tuple[int, int]]:
        if self._local is not None and self._local.info is not None:
            return self._local.info.width, self._local.info.height
        if self._remote is not None and self._remote.shape is not None:
            s = self._remote.shape
            if self._remote.pixel_format in (PixelFormat.YUV420P, PixelFormat.NV12):
                return s[1], s[0] * 2 // 3
            return s[1], s[0]
        return None

    def _fps(self) -> float:
        if self._local is not None:
            return float(self._local.fps())
        m = self.frame_meta
        if m is not None and m.wall_ns > self._first_wall_ns and m.number > self._first_number:
            return (m.number - self._first_number) / ((m.wall_ns - self._first_wall_ns) / 1e9)
        # Until two frames give a measured rate: the one the stream declares.
        return self._remote.declared_fps if self._remote is not None else 0.0

    @property
    def stream_time_ns(self) -> Optional[int]:
        """Capture time of the last frame on the stream's own clock, mapped onto the
        wall clock (ns since the Unix epoch); ``None`` when the broker did not learn
        it. ``frame_meta.wall_ns`` beside it is when the broker received the frame."""
        return self.frame_meta.stream_ns if self.frame_meta else None

    def _pos_msec(self) -> float:
        m = self.frame_meta
        if m is None:
            return 0.0
        if m.pts_ns is not None:  # the stream's own timestamp, as OpenCV's ffmpeg backend
            return m.pts_ns / 1e6
        if self._local is not None and self._local.info is not None:
            base = self._local.info.created_wall_ns
        else:
            base = self._first_wall_ns
        return max(m.wall_ns - base, 0) / 1e6

    def set(self, propId: int, value: float) -> bool:
        """Sets a property; ``True`` when it took effect. Supported on broker streams:
        ``CAP_PROP_BUFFERSIZE`` (1: newest frame, the default; n > 1: sequential
        mode, every frame in order within a ring of about n frames; the ring depth
        itself is fixed once the stream runs), ``CAP_PROP_CONVERT_RGB``,
        ``CAP_PROP_OPEN_TIMEOUT_MSEC``, ``CAP_PROP_READ_TIMEOUT_MSEC``."""
        if isinstance(propId, bool) or not isinstance(propId, numbers.Integral):
            raise TypeError("Argument 'propId' is required to be an integer")
        if not isinstance(value, numbers.Real):
            raise TypeError("Argument 'value' can not be treated as a double")
        if self._cv is not None:
            return bool(self._cv.set(int(propId), float(value)))
        if not self.isOpened():
            return False
        p, v = int(propId), float(value)
        if p == CAP_PROP_BUFFERSIZE:
            if v < 1 or v != int(v):
                return False
            self._buffersize = int(v)
            slots = self._local.info.slot_count if self._local and self._local.info else None
            if slots is not None and self._buffersize > slots - 1:
                log.info(
                    "CAP_PROP_BUFFERSIZE %d: the running ring holds %d safe frames; "
                    "frames beyond that are reported in frames_missed", self._buffersize, slots - 1,
                )
            return True
        if p == CAP_PROP_CONVERT_RGB:
            self._convert_rgb = bool(v)
            return True
        if p in (CAP_PROP_OPEN_TIMEOUT_MSEC, CAP_PROP_READ_TIMEOUT_MSEC):
            if v <= 0:
                return False
            if p == CAP_PROP_OPEN_TIMEOUT_MSEC:
                self._open_timeout_ms = v
            else:
                self._read_timeout_ms = v
            return True
        return False

    def getBackendName(self) -> str:
        """``"FRAMEBROKER"`` for broker streams (``"FRAMEBROKER_HTTP"`` through the
        gateway), OpenCV's backend name otherwise. Raises when nothing is open, as
        OpenCV does."""
        if self._cv is not None:
            return str(self._cv.getBackendName())
        if self._local is not None:
            return BACKEND_NAME
        if self._remote is not None:
            return BACKEND_NAME + "_HTTP"
        raise _capture_error("getBackendName: the capture is not opened")

    def setExceptionMode(self, enable: bool) -> None:
        """In exception mode, failures raise :class:`CaptureError` (also a
        ``cv2.error`` when OpenCV is installed) instead of returning ``False``."""
        self._exceptions = bool(enable)
        if self._cv is not None:
            self._cv.setExceptionMode(self._exceptions)

    def getExceptionMode(self) -> bool:
        return self._exceptions

    # ------------------------------------------------------------------ extensions

    @property
    def stream_id(self) -> Optional[str]:
        """The broker's id of the stream being read (``None`` for OpenCV sources)."""
        if self._local is not None:
            return self._local.stream_id
        if self._remote is not None:
            return self._remote.stream_id
        return None

    # ------------------------------------------------------------------ closing

    def release(self) -> None:
        """Closes the source. For a broker stream: detaches and ends the session; the
        broker stops an on-demand stream after its last reader leaves (plus its
        grace period)."""
        self._grabbed = None
        if self._cv is not None:
            cap, self._cv = self._cv, None
            cap.release()
        if self._local is not None:
            local, self._local = self._local, None
            local.close()
        if self._remote is not None:
            remote, self._remote = self._remote, None
            remote.close()
        self.frame_meta = None
        self._first_number = self._first_wall_ns = 0

    def __enter__(self) -> "VideoCapture":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # interpreter shutdown: modules may be gone
            pass

    def __repr__(self) -> str:
        if self._cv is not None:
            return f"<framebroker.VideoCapture via OpenCV {self._cv!r}>"
        if self.stream_id is not None:
            return f"<framebroker.VideoCapture stream {self.stream_id}>"
        return "<framebroker.VideoCapture (not opened)>"


def _to_bgr(raw: np.ndarray, pf: PixelFormat, out: Optional[np.ndarray]) -> np.ndarray:
    """Converts a frame of ``pf`` to BGR (into ``out`` when it fits)."""
    h = raw.shape[0] if pf not in (PixelFormat.YUV420P, PixelFormat.NV12) else raw.shape[0] * 2 // 3
    w = raw.shape[1]
    shape = (h, w, 3)
    dst = out if out is not None and out.shape == shape and out.dtype == np.uint8 and out.flags.writeable else None
    if pf is PixelFormat.RGB24:
        if dst is None:
            return np.ascontiguousarray(raw[..., ::-1])
        np.copyto(dst, raw[..., ::-1])
        return dst
    if pf is PixelFormat.GRAY:
        if dst is None:
            dst = np.empty(shape, np.uint8)
        np.copyto(dst, raw[..., None])
        return dst
    cv2 = _cv2()
    if cv2 is None:
        log.warning("converting %s to BGR needs OpenCV; returning the raw planes", pf.ffmpeg_name)
        return raw
    code = cv2.COLOR_YUV2BGR_I420 if pf is PixelFormat.YUV420P else cv2.COLOR_YUV2BGR_NV12
    return cv2.cvtColor(raw, code, dst=dst) if dst is not None else cv2.cvtColor(raw, code)  # type: ignore[no-any-return]
