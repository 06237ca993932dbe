#!/usr/bin/python3
"""A real RTSP test camera on loopback (GStreamer GstRtspServer via PyGObject).

Run with the system interpreter, which can import ``gi``::

    /usr/bin/python3 tests/camera/rtsp_camera.py [--host 127.0.0.1] [--port 0]
        [--path /cam] [--width 640] [--height 480] [--fps 30]
        [--pattern smpte] [--color 0xff0000ff] [--bitrate KBPS] [--timeoverlay]

Pipeline (one shared pipeline for all clients)::

    videotestsrc is-live=true pattern=P ! video/x-raw,width=W,height=H,framerate=F/1
      ! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=F
      ! rtph264pay config-interval=1 pt=96 name=pay0

``--port 0`` picks a free port.  When listening, exactly one line
``READY rtsp://<host>:<port><path>`` is printed to stdout (flushed); log lines
go to stderr.  SIGTERM / SIGINT stop the main loop and exit with status 0.
The listening socket uses SO_REUSEADDR, so a restart on the same port works
immediately, even after ``kill -9``.

``--pattern`` is any videotestsrc pattern nick (smpte, ball, solid-color, ...);
``--color`` is the ARGB foreground colour for ``solid-color`` (e.g. 0xff0000ff
is opaque blue).  ``--timeoverlay`` draws the frame number (needs the Pango
plugin, Debian package gstreamer1.0-x); it is off by default because tests
check bar colours.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import List, Optional

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def log(msg: str) -> None:
    print(f"rtsp_camera: {msg}", file=sys.stderr, flush=True)


def pattern_nicks() -> List[str]:
    src = Gst.ElementFactory.make("videotestsrc")
    if src is None:
        raise SystemExit("rtsp_camera: videotestsrc missing (gstreamer1.0-plugins-base)")
    spec = src.find_property("pattern")
    return [v.value_nick for v in spec.enum_class.__enum_values__.values()]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="RTSP test camera (H.264, videotestsrc)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="TCP port, 0 = pick a free one (default)")
    p.add_argument("--path", default="/cam", help="mount path (default /cam)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--pattern", default="smpte", help="videotestsrc pattern nick (default smpte)")
    p.add_argument("--color", default=None,
                   help="ARGB foreground colour for --pattern solid-color, e.g. 0xff0000ff")
    p.add_argument("--bitrate", type=int, default=None, help="x264 bitrate in kbit/s")
    p.add_argument("--timeoverlay", action="store_true",
                   help="draw a frame counter (needs gstreamer1.0-x); default off")
    a = p.parse_args(argv)
    if not a.path.startswith("/"):
        a.path = "/" + a.path
    if not (0 <= a.port <= 65535):
        p.error("--port must be 0..65535")
    for name in ("width", "height", "fps"):
        if getattr(a, name) <= 0:
            p.error(f"--{name} must be positive")
    if a.color is not None:
        try:
            a.color = int(a.color, 0) & 0xFFFFFFFF
        except ValueError:
            p.error("--color must be an integer such as 0xff0000ff (ARGB)")
    return a


def build_launch(a: argparse.Namespace) -> str:
    src = f"videotestsrc is-live=true pattern={a.pattern}"
    if a.color is not None:
        src += f" foreground-color={a.color}"
    enc = (f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={a.fps}"
           + (f" bitrate={a.bitrate}" if a.bitrate else ""))
    overlay = (" ! textoverlay name=counter valignment=top halignment=left font-desc=\"Sans 24\""
               if a.timeoverlay else "")
    return (f"( {src} ! video/x-raw,width={a.width},height={a.height},framerate={a.fps}/1"
            f"{overlay} ! videoconvert ! {enc} ! rtph264pay config-interval=1 pt=96 name=pay0 )")


def on_media_configure(_factory: GstRtspServer.RTSPMediaFactory,
                       media: GstRtspServer.RTSPMedia) -> None:
    """With --timeoverlay: write each buffer's frame number (offset) into the overlay."""
    overlay = media.get_element().get_by_name("counter")
    if overlay is None:
        return

    def probe(_pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        buf = info.get_buffer()
        if buf is not None:
            overlay.set_property("text", f"frame {buf.offset}")
        return Gst.PadProbeReturn.OK

    overlay.get_static_pad("video_sink").add_probe(Gst.PadProbeType.BUFFER, probe)


def main(argv: Optional[List[str]] = None) -> int:
    Gst.init(None)
    a = parse_args(argv)
    if a.pattern not in pattern_nicks():
        log(f"unknown pattern {a.pattern!r}; choose from: {', '.join(pattern_nicks())}")
        return 2
    if a.timeoverlay and Gst.ElementFactory.find("textoverlay") is None:
        log("--timeoverlay needs the Pango plugin (apt-get install gstreamer1.0-x)")
        return 2
    launch = build_launch(a)
    try:  # fail now, not when the first client connects
        Gst.parse_launch(launch[1:-1]).set_state(Gst.State.NULL)
    except GLib.Error as e:
        log(f"bad pipeline: {e.message}\n  {launch}")
        return 2

    server = GstRtspServer.RTSPServer()
    server.set_address(a.host)
    server.set_service(str(a.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    if a.timeoverlay:
        factory.connect("media-configure", on_media_configure)
    server.get_mount_points().add_factory(a.path, factory)

    loop = GLib.MainLoop()
    if server.attach(None) == 0 or server.get_bound_port() <= 0:
        log(f"cannot listen on {a.host}:{a.port}")
        return 1
    port = server.get_bound_port()

    def stop(signame: str) -> bool:
        log(f"{signame}, exiting")
        loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, stop, "SIGTERM")
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, stop, "SIGINT")

    log(launch)
    print(f"READY rtsp://{a.host}:{port}{a.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
