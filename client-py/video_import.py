"""Compatibility with the original Go "RTSP Stream Server" client.

Scripts written for it keep working unchanged::

    from video_import import VideoCapture
    cap = VideoCapture("rtsp://admin:password@192.168.1.100:554/stream1")

``VideoCapture`` is :class:`framebroker.VideoCapture` (local broker through shared
memory; other sources fall back to OpenCV). ``SimpleVideoCapture(url,
server_url=...)`` reads through the framebroker web gateway, which keeps the Go
server's HTTP API (port 8091).
"""

from __future__ import annotations

from typing import Any, Optional

from framebroker import CAP_ANY, VideoCapture

__all__ = ["VideoCapture", "SimpleVideoCapture"]


def SimpleVideoCapture(url: str, server_url: Optional[str] = None, **kwargs: Any) -> VideoCapture:
    """A capture of ``url`` through the gateway at ``server_url`` (for example
    ``"http://localhost:8091"``). Without ``server_url`` (and without
    ``$FRAMEBROKER_SERVER``) it reads from the local broker's shared memory, which
    is faster on the broker's own host."""
    return VideoCapture(url, CAP_ANY, server_url=server_url, **kwargs)
