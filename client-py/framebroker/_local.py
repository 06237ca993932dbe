"""A stream read from the local broker: one control session, one mapped ring, and
the logic that gets them back when the stream or the broker goes away.

:class:`LocalStream` is what :class:`framebroker.VideoCapture` uses for
``rtsp://``, ``rtsps://``, ``testsrc://`` and ``framebroker://<id>`` sources.
"""

from __future__ import annotations

import logging
import time
from typing import Optional, Tuple

import numpy as np

from ._errors import (
    BrokerError,
    ChecksumMismatch,
    Contended,
    FrameBrokerError,
    ReadError,
    ReadTimeout,
    SegmentError,
    StreamEnded,
    WriterGone,
)
from ._layout import PixelFormat, StreamState
from ._naming import resolve_source
from ._protocol import Attachment, BrokerClient, ErrorCode, Transport
from ._ring import FrameMeta, Ring, RingInfo

log = logging.getLogger("framebroker.capture")

#: Longest pause between two re-attach attempts while the stream or broker is away.
MAX_BACKOFF_S = 1.0
_FIRST_BACKOFF_S = 0.1


class OpenFailed(FrameBrokerError):
    """The stream could not be opened within the open timeout."""


class LocalStream:
    """A stream of the local broker, opened by URL (started on demand if it is not
    running; a running decode of the URL is read under this id otherwise) or by id
    (``framebroker://ID``, attach only)."""

    def __init__(
        self,
        source: str,
        *,
        socket_path: Optional[str] = None,
        transport: Transport = Transport.TCP,
        width: Optional[int] = None,
        height: Optional[int] = None,
        ring_slots: Optional[int] = None,
        verify_checksum: bool = False,
    ) -> None:
        self.url: Optional[str]
        self.url, self.stream_id, self.display = resolve_source(source)
        self.socket_path = socket_path
        self.transport = transport
        self.width = width
        self.height = height
        self.ring_slots = ring_slots
        self.verify_checksum = verify_checksum
        self.created = False
        self.client: Optional[BrokerClient] = None
        self.ring: Optional[Ring] = None
        self.attachment: Optional[Attachment] = None
        #: Geometry of the last ring, kept while detached.
        self.info: Optional[RingInfo] = None
        self._fps = 0.0
        #: The rate the stream declares, 0.0 while not known.
        self.declared_fps = 0.0
        self._backoff = _FIRST_BACKOFF_S
        self._next_attempt = 0.0
        self._lost_reason: Optional[str] = None
        #: Why the last read returned no frame (``None``: a plain timeout).
        self.failure: Optional[str] = None

    # -- opening

    def open(self, timeout_s: float) -> None:
        """Connects, starts (by URL) and attaches, waiting while the stream has no
        segment yet (``NotReady``) up to ``timeout_s``. Raises :class:`BrokerNotRunning`,
        :class:`BrokerError` or :class:`OpenFailed`."""
        deadline = time.monotonic() + timeout_s
        self.client = BrokerClient(self.socket_path, timeout=max(min(timeout_s, 10.0), 1.0))
        try:
            if self.url is not None:
                self._start()
            self._attach_until(deadline, timeout_s)
        except BaseException:
            self._abandon_start()
            self.close()
            raise

    def _start(self) -> None:
        assert self.client is not None and self.url is not None
        started = self.client.start(
            self.stream_id,
            self.url,
            width=self.width,
            height=self.height,
            pixel_format=PixelFormat.BGR24,
            ring_slots=self.ring_slots,
            transport=self.transport,
            on_demand=True,
        )
        self.created = started.created
        if started.stream.id != self.stream_id:
            log.info("%s already runs as stream %s; sharing it", self.display, started.stream.id)
        self.stream_id = started.stream.id

    def _attach_until(self, deadline: float, timeout_s: float) -> None:
        pause = 0.02
        restarted = False
        while True:
            try:
                why = self._try_attach()
            except BrokerError as e:
                # Stopped between our Start and Attach (an idle on-demand stream being
                # reaped just then): start it once more.
                if e.code != ErrorCode.NOT_FOUND or self.url is None or restarted:
                    raise
                log.debug("stream %s vanished before attach; starting it again", self.stream_id)
                restarted = True
                self._start()
                continue
            if why is None:
                return
            state, last_error = self._stream_state()
            if state is StreamState.FAILED:
                raise OpenFailed(
                    f"stream {self.stream_id} ({self.display}) failed"
                    + (f": {last_error}" if last_error else "")
                )
            left = deadline - time.monotonic()
            if left <= 0:
                detail = f"; last error: {last_error}" if last_error else ""
                raise OpenFailed(
                    f"stream {self.stream_id} ({self.display}) delivered no frame within "
                    f"{timeout_s * 1000:.0f} ms (state {state.name.lower() if state else 'unknown'}: "
                    f"{why}{detail})"
                )
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.2)

    def _try_attach(self) -> Optional[str]:
        """One Attach and map; ``None`` on success, else why not (not ready yet)."""
        assert self.client is not None
        try:
            att = self.client.attach(self.stream_id)
        except BrokerError as e:
            if e.code == ErrorCode.NOT_READY:
                return "no segment yet"
            raise
        try:
            ring = Ring(att.segment, verify_checksum=self.verify_checksum)
        except SegmentError as e:
            # Replaced between Attach and open (new generation): try again.
            self._detach_quietly()
            return str(e)
        except FrameBrokerError:
            # This machine cannot read rings safely (no fence, see _ring.read_fence):
            # say so, and hold no attachment at the broker.
            self._detach_quietly()
            raise
        i = ring.info
        if (i.width, i.height, i.pixel_format, i.slot_count, i.segment_size, i.generation) != (
            att.width, att.height, att.pixel_format, att.slot_count, att.segment_size, att.generation,
        ):
            ring.close()
            self._detach_quietly()
            return f"segment {att.segment} does not match what the broker announced"
        self.ring, self.attachment, self.info = ring, att, i
        self._learn_declared_fps()
        log.debug(
            "attached %s: %s %dx%d %s", self.stream_id, att.segment, i.width, i.height, i.pixel_format.ffmpeg_name
        )
        return None

    def _learn_declared_fps(self) -> None:
        """The rate the stream declares (ffmpeg's stream information), which
        :meth:`fps` reports until the broker has measured one. Known once the
        stream has a segment, so asked right after each attach."""
        if self.client is None:
            return
        try:
            declared = self.client.stats(self.stream_id).info.declared_fps
        except FrameBrokerError as e:
            log.debug("stats of %s after attach: %s", self.stream_id, e)
            return
        if declared > 0:
            self.declared_fps = declared

    def _stream_state(self) -> Tuple[Optional[StreamState], Optional[str]]:
        if self.client is None:
            return None, None
        try:
            st = self.client.stats(self.stream_id)
        except FrameBrokerError:
            return None, None
        return st.info.state, st.last_error

    def _abandon_start(self) -> None:
        """After a failed open: stop the stream we created if nobody reads it (an
        on-demand stream that never had a reader would otherwise keep retrying)."""
        if not self.created or self.client is None or not self.client.connected:
            return
        try:
            if self.client.stats(self.stream_id).info.readers == 0:
                self.client.stop(self.stream_id)
                log.debug("stopped stream %s that failed to open", self.stream_id)
        except FrameBrokerError:
            pass

    # -- reading

    @property
    def attached(self) -> bool:
        return self.ring is not None

    def fps(self) -> float:
        """The rate the broker measures, or the declared one until a measured one
        exists (as ``cv2.VideoCapture`` reports the declared rate from the start)."""
        if self.ring is not None:
            self._fps = self.ring.fps()
        return self._fps if self._fps > 0 else self.declared_fps

    def read(
        self, out: Optional[np.ndarray], timeout_s: Optional[float], sequential: bool
    ) -> Optional[Tuple[FrameMeta, np.ndarray]]:
        """The next frame (newest, or next in order when ``sequential``), copied into
        ``out`` when it has the frame's shape, else into a new array. ``None`` when
        there is none within the timeout, the stream ended, or the broker is gone;
        a later call re-attaches when they are back."""
        ring = self.ring
        if ring is not None:  # fast path: a frame is already there
            try:
                got = ring.read_into(out, sequential)
            except (Contended, ChecksumMismatch) as e:
                self.failure = str(e)
                log.warning("%s", e)
                return None
            if got is not None:
                return got
        self.failure = None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for _ in range(3):  # at most: re-attach after an end, then read
            if self.ring is None and not self._reattach(deadline):
                self.failure = self._lost_reason or "not attached"
                return None
            ring = self.ring
            assert ring is not None
            dst = out if out is not None and ring.fits(out) else ring.new_array()
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                meta = ring.next(dst, left) if sequential else ring.latest(dst, left)
                self._fps = ring.fps()
                return meta, dst
            except ReadTimeout:
                return None
            except (Contended, ChecksumMismatch) as e:
                self.failure = str(e)
                log.warning("%s", e)
                return None
            except StreamEnded as e:
                self._lost(str(e), session_ok=True)
                # A new generation (geometry change) is attached at once.
                if not self._reattach(deadline, quick=True):
                    return None
            except WriterGone as e:
                self._lost(str(e), session_ok=False)
                return None
        return None

    def view(self, timeout_s: Optional[float], sequential: bool) -> Tuple[FrameMeta, np.ndarray, int]:
        """Zero-copy view (see :meth:`Ring.view`); raises the ring's read errors."""
        if self.ring is None and not self._reattach(None if timeout_s is None else time.monotonic() + timeout_s):
            raise ReadError(self.stream_id, f"not attached ({self._lost_reason or 'stream away'})")
        assert self.ring is not None
        try:
            return self.ring.view(sequential, timeout_s)
        except StreamEnded as e:
            self._lost(str(e), session_ok=True)
            raise
        except WriterGone as e:
            self._lost(str(e), session_ok=False)
            raise

    def has_new_frame(self) -> bool:
        return self.ring is not None and self.ring.has_new_frame()

    @property
    def lost_reason(self) -> Optional[str]:
        """Why the stream is detached (``None`` while attached)."""
        return self._lost_reason

    def try_reattach(self, deadline: Optional[float]) -> bool:
        """One re-attach attempt if the backoff allows it before ``deadline``."""
        return self.ring is not None or self._reattach(deadline)

    # -- losing and finding the stream again

    def _lost(self, reason: str, session_ok: bool) -> None:
        self.failure = reason
        if self._lost_reason is None:
            log.warning("%s: %s; will re-attach when it is back", self.stream_id, reason)
        self._lost_reason = reason
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if session_ok:
            self._detach_quietly()
        elif self.client is not None:
            self.client.close()
        self._backoff = _FIRST_BACKOFF_S
        self._next_attempt = 0.0

    def _reattach(self, deadline: Optional[float], quick: bool = False) -> bool:
        """One attempt to get a ring again, after waiting for the backoff slot
        (never past ``deadline``). A new session (the broker restarted) starts the
        stream again when it was opened by URL; within the same session a stopped
        stream is only attached again once someone starts it."""
        now = time.monotonic()
        if not quick and now < self._next_attempt:
            wake = self._next_attempt if deadline is None else min(self._next_attempt, deadline)
            time.sleep(max(wake - now, 0.0))
            if time.monotonic() < self._next_attempt:
                return False
        try:
            new_session = self.client is None or not self.client.connected
            if new_session:
                if self.client is not None:
                    self.client.close()
                self.client = BrokerClient(self.socket_path, timeout=5.0)
                if self.url is not None:
                    self._start()
            why = self._try_attach()
            if why is not None:
                raise SegmentError(self.stream_id, why)
        except FrameBrokerError as e:
            if not isinstance(e, (BrokerError, SegmentError)) and self.client is not None:
                self.client.close()
            log.debug("re-attach %s failed: %s", self.stream_id, e)
            self._next_attempt = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
            return False
        log.info("%s: re-attached (%s)", self.stream_id, self.ring.name if self.ring else "?")
        self._lost_reason = None
        self._backoff = _FIRST_BACKOFF_S
        return True

    def _detach_quietly(self) -> None:
        if self.client is None or not self.client.connected:
            return
        try:
            self.client.detach(self.stream_id)
        except FrameBrokerError as e:
            log.debug("detach %s: %s", self.stream_id, e)

    def close(self) -> None:
        """Detaches and ends the session (the broker then stops an on-demand stream
        once its grace period passes without readers)."""
        if self.ring is not None:
            self.ring.close()
            self.ring = None
            self._detach_quietly()
        if self.client is not None:
            self.client.close()
            self.client = None

