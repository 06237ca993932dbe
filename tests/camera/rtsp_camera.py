#!/usr/bin/python3
"""A real RTSP test camera on loopback (GStreamer GstRtspServer via PyGObject).

Run with the system interpreter, which can import ``gi``::

    /usr/bin/python3 tests/camera/rtsp_camera.py [--host 127.0.0.1] [--port 0]
        [--path /cam] [--width 640] [--height 480] [--fps 30]
        [--pattern smpte] [--color 0xff0000ff] [--bitrate KBPS] [--timeoverlay]
        [--stamp] [--like-camera] [--auth USER:PASS]

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

``--auth USER:PASS`` requires HTTP Basic credentials, as a camera with a
password does: a client without them (or with others) gets ``401 Unauthorized``.

``--like-camera`` makes the stream cost a decoder what a real IP camera's does
(the default is the cheapest H.264 there is: a static pattern, ultrafast, no
CABAC): ffmpeg's moving ``testsrc2`` picture with temporal noise like a
sensor's, encoded once at start as H.264 High (CABAC), x264 ``veryfast``, a 2 s
GOP, about 0.07 bit per pixel (``--bitrate`` overrides), then replayed in a
loop at the frame rate (encoding live would cost the machine more than the
decoders under test). Needs ffmpeg with libx264. The benchmarks use it.

``--stamp`` replaces videotestsrc by an ``appsrc`` fed from this process: a
scrolling grey gradient with, in the top-left corner, the wall clock (ms since
the epoch, modulo 2^32) at the moment the frame enters the encoder, written as
2 rows x 20 blocks of 16x16 pixels (white = 1, black = 0; 32 bits, most
significant first, then an 8-bit check = XOR of the four bytes ^ 0xA5). The
blocks sit on macroblock boundaries and survive H.264, so any reader on this
host can compute a frame's end-to-end age from the decoded picture alone
(``bench/stamp.py`` decodes it). Needs width >= 320 and height >= 32.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
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
    # The property's value is an instance of the enum's class, whose values
    # PyGObject lists in __enum_values__ (3.42, Debian 12, and 3.50, Debian 13;
    # ParamSpec.enum_class is the enum's value in the first, a GEnumClass in
    # the second).
    return [v.value_nick for v in type(src.get_property("pattern")).__enum_values__.values()]


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
    p.add_argument("--like-camera", action="store_true",
                   help="a stream like a real IP camera's: moving picture with noise, H.264 High, "
                        "veryfast, 2 s GOP, encoded once by ffmpeg and replayed in a loop")
    p.add_argument("--stamp", action="store_true",
                   help="an appsrc picture carrying its capture wall clock as blocks (see above)")
    p.add_argument("--auth", metavar="USER:PASS", default=None,
                   help="require these Basic credentials; others get 401 Unauthorized")
    a = p.parse_args(argv)
    if not a.path.startswith("/"):
        a.path = "/" + a.path
    if not (0 <= a.port <= 65535):
        p.error("--port must be 0..65535")
    for name in ("width", "height", "fps"):
        if getattr(a, name) <= 0:
            p.error(f"--{name} must be positive")
    if a.stamp and (a.width < STAMP_W or a.height < STAMP_H):
        p.error(f"--stamp needs --width >= {STAMP_W} and --height >= {STAMP_H}")
    if a.like_camera and (a.stamp or a.timeoverlay):
        p.error("--like-camera cannot be combined with --stamp or --timeoverlay")
    if a.stamp and a.timeoverlay:
        p.error("--stamp and --timeoverlay cannot be combined")
    if a.color is not None:
        try:
            a.color = int(a.color, 0) & 0xFFFFFFFF
        except ValueError:
            p.error("--color must be an integer such as 0xff0000ff (ARGB)")
    return a


# --stamp geometry: 2 rows x 20 blocks of 16x16 pixels, 40 bits.
STAMP_BLOCK = 16
STAMP_COLS = 20
STAMP_ROWS = 2
STAMP_W = STAMP_BLOCK * STAMP_COLS
STAMP_H = STAMP_BLOCK * STAMP_ROWS


def stamp_bits(ms: int) -> List[int]:
    """The 40 bits written for wall-clock time ``ms``: 32 bits of ``ms mod 2^32``,
    most significant first, then XOR of its four bytes ^ 0xA5."""
    v = ms & 0xFFFFFFFF
    check = ((v >> 24) ^ (v >> 16) ^ (v >> 8) ^ v ^ 0xA5) & 0xFF
    word = (v << 8) | check
    return [(word >> (39 - i)) & 1 for i in range(40)]


class StampSource:
    """Feeds an appsrc with I420 frames at a fixed rate, each stamped with the
    wall clock at which it is pushed; stops when the media goes away."""

    def __init__(self, appsrc: Gst.Element, width: int, height: int, fps: int) -> None:
        self.src, self.w, self.h, self.fps = appsrc, width, height, fps
        # A gradient twice the picture's height, scrolled one line per frame.
        rows = []
        for y in range(2 * height):
            rows.append(bytes(32 + ((x + 2 * (y % height)) % 192) for x in range(width)))
        self.luma2 = b"".join(rows)
        self.chroma = bytes([128]) * (2 * ((width + 1) // 2) * ((height + 1) // 2))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="stamp", daemon=True)

    def frame(self, k: int, ms: int) -> bytes:
        w, h = self.w, self.h
        off = (k % h) * w
        y = bytearray(self.luma2[off:off + w * h])
        bits = stamp_bits(ms)
        for r in range(STAMP_ROWS):
            line = b"".join((b"\xeb" if b else b"\x10") * STAMP_BLOCK
                            for b in bits[r * STAMP_COLS:(r + 1) * STAMP_COLS])
            for dy in range(STAMP_BLOCK):
                row = (r * STAMP_BLOCK + dy) * w
                y[row:row + STAMP_W] = line
        return bytes(y) + self.chroma

    def run(self) -> None:
        period = 1.0 / self.fps
        start = time.monotonic()
        k = 0
        while not self.stop.is_set():
            delay = start + k * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:  # fell far behind (machine overloaded): skip ahead
                k = int((time.monotonic() - start) / period)
            data = self.frame(k, time.time_ns() // 1_000_000)
            ret = self.src.emit("push-buffer", Gst.Buffer.new_wrapped(data))
            if ret != Gst.FlowReturn.OK:
                break
            k += 1


class ReplaySource:
    """``--like-camera``: what a real IP camera sends, for the price of reading a
    file. ffmpeg encodes two seconds of moving test picture with temporal noise
    (like a sensor's) once, as a camera does — H.264 High (CABAC), x264
    ``veryfast``, one closed GOP of two seconds (starting with an IDR frame, so
    the loop is seamless), about 0.07 bit per pixel — and this feeds its access
    units to an appsrc at the frame rate, forever. Decoding it costs what a
    camera's stream costs; encoding it live at 1080p would take more CPU than a
    two-core machine has beside the decoders under test."""

    def __init__(self, width: int, height: int, fps: int, bitrate: Optional[int]) -> None:
        import subprocess
        import tempfile

        self.fps = fps
        kbps = bitrate or max(256, width * height * fps * 7 // 100_000)
        with tempfile.TemporaryDirectory(prefix="rtsp-camera-") as d:
            clip = f"{d}/clip.h264"
            cmd = ["ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi",
                   "-i", f"testsrc2=size={width}x{height}:rate={fps},noise=alls=10:allf=t",
                   "-frames:v", str(2 * fps), "-c:v", "libx264", "-preset", "veryfast",
                   "-tune", "zerolatency", "-profile:v", "high", "-pix_fmt", "yuv420p",
                   "-g", str(2 * fps), "-b:v", f"{kbps}k", "-maxrate", f"{kbps}k",
                   "-bufsize", f"{kbps}k", "-x264-params", "aud=1", "-f", "h264", clip]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise SystemExit(f"rtsp_camera: ffmpeg could not encode the clip: {r.stderr.strip()}")
            with open(clip, "rb") as f:
                data = f.read()
        # Split at the access unit delimiters (aud=1): one buffer per frame.
        aud = b"\x00\x00\x00\x01\x09"
        starts, k = [], data.find(aud)
        while k >= 0:
            starts.append(k)
            k = data.find(aud, k + len(aud))
        self.units = [data[a:b] for a, b in zip(starts, starts[1:] + [len(data)])]
        if len(self.units) != 2 * fps:
            raise SystemExit(f"rtsp_camera: expected {2 * fps} frames in the clip, found {len(self.units)}")
        log(f"like-camera clip: {len(self.units)} frames, {kbps} kbit/s, {len(data)} bytes")

    def feed(self, appsrc: Gst.Element) -> threading.Event:
        """Starts feeding ``appsrc``; set the returned event to stop."""
        stop = threading.Event()

        def run() -> None:
            period = 1.0 / self.fps
            start = time.monotonic()
            k = 0
            while not stop.is_set():
                delay = start + k * period - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -1.0:  # fell far behind (machine overloaded): go on from now
                    start, k = time.monotonic(), 0
                buf = Gst.Buffer.new_wrapped(self.units[k % len(self.units)])
                if appsrc.emit("push-buffer", buf) != Gst.FlowReturn.OK:
                    break
                k += 1

        threading.Thread(target=run, name="replay", daemon=True).start()
        return stop


def build_launch(a: argparse.Namespace) -> str:
    if a.stamp:
        enc = (f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={a.fps}"
               + (f" bitrate={a.bitrate}" if a.bitrate else ""))
        caps = f"video/x-raw,format=I420,width={a.width},height={a.height},framerate={a.fps}/1"
        # At most two frames wait for the encoder; older ones are dropped, as a
        # camera does when its sender cannot keep up.
        return (f"( appsrc name=stampsrc is-live=true do-timestamp=true format=time caps={caps}"
                " max-buffers=2 leaky-type=downstream"
                f" ! videoconvert ! {enc} ! rtph264pay config-interval=1 pt=96 name=pay0 )")
    if a.like_camera:
        # Access units of a clip encoded once at start (ReplaySource), replayed in a loop.
        caps = "video/x-h264,stream-format=byte-stream,alignment=au"
        return (f"( appsrc name=replaysrc is-live=true do-timestamp=true format=time caps={caps}"
                " ! h264parse ! rtph264pay config-interval=1 pt=96 name=pay0 )")
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
    if a.stamp:
        def on_stamp_media(_f: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
            feeder = StampSource(media.get_element().get_by_name("stampsrc"), a.width, a.height, a.fps)
            media.connect("unprepared", lambda _m: feeder.stop.set())
            feeder.thread.start()
        factory.connect("media-configure", on_stamp_media)
    if a.like_camera:
        replay = ReplaySource(a.width, a.height, a.fps, a.bitrate)

        def on_replay_media(_f: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
            stop_feed = replay.feed(media.get_element().get_by_name("replaysrc"))
            media.connect("unprepared", lambda _m: stop_feed.set())
        factory.connect("media-configure", on_replay_media)
    if a.auth:
        user, _, password = a.auth.partition(":")
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
        # The role may see and play the mount; anyone else is refused with 401.
        perms = GstRtspServer.RTSPPermissions()
        perms.add_role_from_structure(Gst.Structure.new_from_string(
            "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))
        factory.set_permissions(perms)
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
