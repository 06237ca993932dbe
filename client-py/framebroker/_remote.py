"""Remote mode: frames through the web gateway over HTTP, for programs on
another host than the broker. Standard library only (``urllib``).

The gateway keeps the original Go server's API:

- ``POST {server}/api/streams`` with JSON ``{"stream_id", "rtsp_url", "width",
  "height"}`` (or ``"native_size": true`` when no size was asked for: the
  camera's own, as ``cv2.VideoCapture`` gives) starts a stream (an existing one
  is fine: 409 is accepted);
- requests carry ``Authorization: Bearer $FRAMEBROKER_TOKEN`` when it is set;
- ``GET {server}/api/streams/{id}/frame?after=N&wait=MS`` answers the newest
  frame if its number is above N, else waits (up to MS, at most 5 s) for the
  next one, as raw bytes with ``X-Frame-Width``, ``X-Frame-Height``,
  ``X-Pixel-Format``, ``X-Frame-Number`` and ``X-Capture-Time-Ns`` headers; 204
  when none came.

So a read is one request that returns as soon as a frame this reader has not
had exists: it never gets the same frame twice, and never waits longer than
needed (no polling between requests).
"""

from __future__ import annotations

import json
import os
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ._errors import RemoteError
from ._layout import PixelFormat
from ._naming import resolve_source
from ._ring import FrameMeta

log = logging.getLogger("framebroker.remote")

#: Environment variable with the gateway's base URL (``http://host:8091``).
SERVER_ENV = "FRAMEBROKER_SERVER"
#: Environment variable with the gateway's access token (sent as ``Authorization: Bearer``).
TOKEN_ENV = "FRAMEBROKER_TOKEN"
#: Largest frame body accepted (8192 x 8192 x 3).
MAX_FRAME_BYTES = 8192 * 8192 * 3


class RemoteStream:
    """One stream read through the gateway at ``server_url``."""

    def __init__(
        self,
        server_url: str,
        source: str,
        *,
        width: Optional[int] = None,
        height: Optional[int] = None,
        http_timeout_s: float = 5.0,
        token: Optional[str] = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(server_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"server_url must be http(s)://host[:port], got {server_url!r}")
        self.server = server_url.rstrip("/")
        self.url: Optional[str]
        self.url, self.stream_id, self.display = resolve_source(source)
        self.width = width
        self.height = height
        self.http_timeout_s = http_timeout_s
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self.last_number = 0
        self.shape: Optional[Tuple[int, ...]] = None
        self.pixel_format = PixelFormat.BGR24
        #: The rate the source declares (the gateway's ``declared_fps``; 0.0 unknown).
        self.declared_fps = 0.0
        self._failing = False

    def _frame_url(self, wait_ms: int) -> str:
        q = urllib.parse.urlencode({"after": self.last_number, "wait": wait_ms})
        return f"{self.server}/api/streams/{urllib.parse.quote(self.stream_id)}/frame?{q}"

    def _call(self, req: urllib.request.Request, extra_s: float = 0.0) -> Any:
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(req, timeout=self.http_timeout_s + extra_s)
        except urllib.error.HTTPError as e:
            detail = e.read(512).decode("utf-8", "replace").strip()
            e.close()
            if e.code in (401, 403):
                detail += f" (the gateway wants an access token: set {TOKEN_ENV})"
            raise RemoteError(
                f"gateway {self.server}: {req.get_method()} {urllib.parse.urlsplit(req.full_url).path} "
                f"answered {e.code} {e.reason}" + (f": {detail}" if detail else ""),
                e.code,
            ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RemoteError(
                f"cannot reach the framebroker gateway at {self.server} ({reason}); "
                f"is it running? (set server_url= or {SERVER_ENV})"
            ) from None

    def start(self) -> None:
        """Asks the gateway to start the stream (an already running one is fine)."""
        if self.url is None:
            return
        body: Dict[str, Any] = {"stream_id": self.stream_id, "rtsp_url": self.url}
        if self.width is not None:
            body["width"] = self.width
        if self.height is not None:
            body["height"] = self.height
        if self.width is None and self.height is None:
            # Like cv2.VideoCapture: the camera's own size (the gateway's default
            # is the original server's 640x480).
            body["native_size"] = True
        req = urllib.request.Request(
            f"{self.server}/api/streams",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            self._call(req).close()
        except RemoteError as e:
            if e.status != 409:  # already exists
                raise

    def open(self, timeout_s: float) -> None:
        """Starts the stream and waits for its first frame (404/503 while starting)."""
        self.start()
        deadline = time.monotonic() + timeout_s
        pause = 0.05
        while True:
            try:
                if self._fetch(None, wait_ms=0) is not None:
                    self.declared_fps = self._declared_fps()
                    return
            except RemoteError as e:
                if e.status not in (404, 503) or time.monotonic() >= deadline:
                    raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise RemoteError(
                    f"stream {self.stream_id} ({self.display}) delivered no frame through "
                    f"{self.server} within {timeout_s * 1000:.0f} ms"
                )
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.5)

    def _declared_fps(self) -> float:
        """The stream's declared rate from the gateway's stats (0.0 when it does not say)."""
        url = f"{self.server}/api/streams/{urllib.parse.quote(self.stream_id)}/stats"
        try:
            with self._call(urllib.request.Request(url)) as resp:
                fps = json.loads(resp.read(1 << 20)).get("declared_fps")
        except (RemoteError, ValueError, AttributeError):
            return 0.0
        return float(fps) if isinstance(fps, (int, float)) and fps > 0 else 0.0

    def _fetch(self, out: Optional[np.ndarray], wait_ms: int) -> Optional[Tuple[FrameMeta, np.ndarray]]:
        """One frame request: a frame newer than the last one (waiting up to
        ``wait_ms`` for it), any newest frame with ``wait_ms=0``, or ``None``."""
        req = urllib.request.Request(self._frame_url(wait_ms), headers={"Accept": "application/octet-stream"})
        with self._call(req, extra_s=wait_ms / 1000) as resp:
            if resp.status == 204:  # no new frame within wait_ms (or none yet)
                return None
            h = resp.headers
            try:
                w, hh = int(h["X-Frame-Width"]), int(h["X-Frame-Height"])
                number = int(h["X-Frame-Number"])
                wall = int(h.get("X-Capture-Time-Ns") or 0)
                pf = PixelFormat.from_name(h.get("X-Pixel-Format") or "bgr24")
            except (TypeError, ValueError, KeyError) as e:
                raise RemoteError(f"gateway {self.server}: frame without valid X-Frame-* headers ({e})") from None
            if wait_ms and number == self.last_number:
                return None
            size = pf.frame_bytes(w, hh)
            if size is None or not 0 < size <= MAX_FRAME_BYTES:
                raise RemoteError(f"gateway {self.server}: bad frame geometry {w}x{hh} {pf.ffmpeg_name}")
            shape = pf.frame_shape(w, hh)
            fits = (
                out is not None and out.shape == shape and out.dtype == np.uint8
                and out.flags.c_contiguous and out.flags.writeable
            )
            dst = out if fits else np.empty(shape, np.uint8)
            assert dst is not None
            view = dst.data.cast("B")
            got = 0
            while got < size:
                n = resp.readinto(view[got:])
                if not n:
                    break
                got += n
            if got != size or resp.read(1):
                raise RemoteError(f"gateway {self.server}: frame body is not {size} bytes")
        missed = max(number - self.last_number - 1, 0) if self.last_number else 0
        self.last_number = number
        self.shape, self.pixel_format = shape, pf
        return FrameMeta(number, wall, 0, size, missed, 0), dst

    def read(self, out: Optional[np.ndarray], timeout_s: Optional[float]) -> Optional[Tuple[FrameMeta, np.ndarray]]:
        """The newest frame not returned yet, or ``None`` within the timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            failed = False
            # The gateway waits at most 5 s per request (then 204: ask again).
            left_ms = 5000 if deadline is None else min(int(max(deadline - time.monotonic(), 0) * 1000), 5000)
            try:
                # The gateway answers as soon as a frame newer than ours exists.
                got = self._fetch(out, wait_ms=max(left_ms, 1))
            except RemoteError as e:
                (log.debug if self._failing else log.warning)("%s", e)
                self._failing = failed = True
                got = None
            if got is not None:
                self._failing = False
                return got
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            if failed:  # the gateway is down or refuses: do not spin
                time.sleep(0.5 if deadline is None else min(0.5, deadline - now))

    def close(self) -> None:
        """Nothing to release: the gateway keeps the stream for other readers."""
