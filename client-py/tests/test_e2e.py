"""End-to-end: the real broker binary, real ffmpeg, the real RTSP test camera, real
OpenCV and the Rust reader (``fb-reader``), all on loopback."""

from __future__ import annotations

import json
import subprocess
import time
import zlib
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import pytest

import framebroker as fb
from framebroker import (
    CAP_ANY,
    CAP_PROP_BUFFERSIZE,
    CAP_PROP_FPS,
    CAP_PROP_FRAME_HEIGHT,
    CAP_PROP_FRAME_WIDTH,
    CAP_PROP_OPEN_TIMEOUT_MSEC,
    CAP_PROP_POS_FRAMES,
    CAP_PROP_READ_TIMEOUT_MSEC,
    VideoCapture,
    stream_id_for_url,
)
from framebroker._ring import monotonic_ns

from .conftest import BROKER_BIN, FB_READER_BIN, Broker, Camera, closed_port, python_subprocess

cv2 = pytest.importorskip("cv2")

pytestmark = pytest.mark.e2e

SMPTE_BARS_BGR = [(255, 255, 255), (0, 255, 255), (255, 255, 0), (0, 255, 0), (255, 0, 255), (0, 0, 255), (255, 0, 0)]


def bars(frame: np.ndarray) -> List[tuple]:
    h, w = frame.shape[:2]
    y = h // 4
    return [tuple(int(c) for c in frame[y, w * (2 * i + 1) // 14]) for i in range(7)]


def assert_smpte(frame: np.ndarray) -> None:
    for got, want in zip(bars(frame), SMPTE_BARS_BGR):
        assert max(abs(g - w) for g, w in zip(got, want)) <= 24, f"bars {bars(frame)}"


def wait_until(what: str, timeout: float, f: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def streams(b: Broker) -> List[fb.StreamInfo]:
    with b.client() as c:
        return c.list()


# ------------------------------------------------------------------ basics


def test_open_read_release(broker: Broker, camera: Camera) -> None:
    cap = VideoCapture(camera.url)
    assert cap.isOpened(), cap.last_error
    assert cap.getBackendName() == "FRAMEBROKER"
    assert cap.stream_id == stream_id_for_url(camera.url)
    assert (cap.get(CAP_PROP_FRAME_WIDTH), cap.get(CAP_PROP_FRAME_HEIGHT)) == (640.0, 480.0)
    numbers = []
    for _ in range(40):
        ok, frame = cap.read()
        assert ok and frame is not None
        assert frame.shape == (480, 640, 3) and frame.dtype == np.uint8 and frame.flags.writeable
        numbers.append(int(cap.get(CAP_PROP_POS_FRAMES)))
    assert_smpte(frame)
    assert numbers == sorted(set(numbers)), "never the same frame twice, never backwards"
    # The broker measures over a 2 s window (it under-reports during the first 2 s).
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.2:
        assert cap.read()[0]
    assert 26 <= cap.get(CAP_PROP_FPS) <= 34, "FPS is the measured rate of a 30 fps camera"
    (info,) = streams(broker)
    assert info.readers == 1 and info.on_demand and info.state is fb.StreamState.LIVE
    assert len(broker.ffmpeg_children()) == 1
    cap.release()
    assert not cap.isOpened()
    assert cap.read() == (False, None)
    # On demand: the broker stops the stream once its last reader left (+ the grace).
    wait_until("the on-demand stream to stop", 8, lambda: streams(broker) == [])
    wait_until("segments to be unlinked", 5, lambda: broker.segments() == [])


def test_frames_equal_what_the_rust_reader_sees(broker: Broker, camera: Camera) -> None:
    """Python and fb-reader read the same frame numbers; their payload CRCs agree with
    each other and with the CRC the broker stored when writing (--checksum)."""
    if not FB_READER_BIN.exists():
        pytest.fail(f"Rust reader {FB_READER_BIN} not built (cargo build --workspace --bins)")
    cap = VideoCapture(camera.url, CAP_ANY, [CAP_PROP_BUFFERSIZE, 8], verify_checksum=True)
    assert cap.isOpened(), cap.last_error
    rust = subprocess.Popen(
        [str(FB_READER_BIN), "--socket", broker.socket, "--stream", cap.stream_id or "", "--count", "60",
         "--mode", "next", "--sync-start"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert rust.stdout is not None and rust.stdin is not None
    assert rust.stdout.readline().strip() == "attached"
    rust.stdin.write("\n")
    rust.stdin.flush()
    mine: Dict[int, int] = {}
    for _ in range(60):
        ok, frame = cap.read()
        assert ok, cap.last_error
        assert cap.frame_meta is not None
        crc = zlib.crc32(frame) & 0xFFFFFFFF
        assert crc == cap.frame_meta.checksum, "Python's copy differs from what the broker wrote"
        mine[cap.frame_meta.number] = crc
    out, err = rust.communicate(timeout=30)
    assert rust.returncode == 0, err
    theirs = {r["number"]: r for r in map(json.loads, out.splitlines())}
    common = sorted(set(mine) & set(theirs))
    assert len(common) >= 30, f"too few common frames: python {sorted(mine)[:3]}…, rust {sorted(theirs)[:3]}…"
    for n in common:
        assert mine[n] == theirs[n]["crc"] == theirs[n]["slot_crc"], f"frame {n}"
    print(f"\n{len(common)} frames compared byte for byte (CRC-32) with the Rust reader")
    cap.release()


def test_two_python_processes_and_a_rust_reader_share_one_ffmpeg(broker: Broker, camera: Camera) -> None:
    if not FB_READER_BIN.exists():
        pytest.fail(f"Rust reader {FB_READER_BIN} not built (cargo build --workspace --bins)")
    code = (
        "import sys, json\n"
        "from framebroker import VideoCapture\n"
        "cap = VideoCapture(sys.argv[1])\n"
        "assert cap.isOpened(), cap.last_error\n"
        "print('open', cap.stream_id, flush=True)\n"
        "sys.stdin.readline()\n"
        "n = [cap.read()[0] for _ in range(30)]\n"
        "print(json.dumps({'ok': sum(n), 'pos': cap.get(1)}), flush=True)\n"
        "sys.stdin.readline()\n"
        "cap.release()\n"
    )
    procs = [python_subprocess(code, camera.url) for _ in range(2)]
    ids = set()
    for p in procs:
        line = p.stdout.readline().split()  # type: ignore[union-attr]
        assert line and line[0] == "open", p.stderr.read() if p.poll() is not None else line  # type: ignore[union-attr]
        ids.add(line[1])
    (sid,) = ids
    rust = subprocess.Popen(
        [str(FB_READER_BIN), "--socket", broker.socket, "--stream", sid, "--count", "30", "--mode", "latest",
         "--sync-start"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert rust.stdout.readline().strip() == "attached"  # type: ignore[union-attr]
    (info,) = streams(broker)
    assert info.readers == 3, info
    assert len(broker.ffmpeg_children()) == 1, "one camera, one ffmpeg, whatever the readers"
    for p in procs + [rust]:
        p.stdin.write("\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
    for p in procs:
        res = json.loads(p.stdout.readline())  # type: ignore[union-attr]
        assert res["ok"] == 30 and res["pos"] > 0
    out, err = rust.communicate(timeout=30)
    assert rust.returncode == 0 and len(out.splitlines()) == 30, err
    assert len(broker.ffmpeg_children()) == 1
    for p in procs:
        p.communicate("\n", timeout=30)
        assert p.returncode == 0


def test_newest_frame_after_a_pause_unlike_opencv(broker: Broker, camera: Camera) -> None:
    cap = VideoCapture(camera.url)
    assert cap.isOpened(), cap.last_error
    assert cap.read()[0]
    ref = cv2.VideoCapture(camera.url, cv2.CAP_FFMPEG)
    assert ref.isOpened()
    assert ref.read()[0]
    period_ms = 1000 / 30
    time.sleep(2.0)

    t0 = time.monotonic()
    ok, _ = cap.read()
    took_ms = (time.monotonic() - t0) * 1000
    assert ok and cap.frame_meta is not None
    age_ms = (monotonic_ns() - cap.frame_meta.mono_ns) / 1e6
    ring = cap._local.ring  # type: ignore[union-attr]
    assert ring is not None
    newest = cap.frame_meta.number >= ring.last_frame() - 1

    # OpenCV: frames queued during the pause come back at once, one after the other.
    quick, t_start = 0, time.monotonic()
    while quick < 200:
        t = time.monotonic()
        ok2, _ = ref.read()
        if not ok2 or (time.monotonic() - t) * 1000 > period_ms / 2:
            break
        quick += 1
    drain_ms = (time.monotonic() - t_start) * 1000
    ref.release()
    print(
        f"\nafter a 2 s pause: framebroker read() took {took_ms:.1f} ms and returned frame "
        f"#{cap.frame_meta.number}, {age_ms:.1f} ms old (frame period {period_ms:.1f} ms);\n"
        f"plain cv2.VideoCapture returned {quick} buffered frames in {drain_ms:.0f} ms, "
        f"the first of them about {2000:.0f} ms old"
    )
    assert newest, "read() must return the newest published frame"
    assert age_ms < period_ms + 10, f"frame is {age_ms:.1f} ms old"
    cap.release()


@pytest.mark.parametrize("fps", [30, 15])
def test_fps_right_after_open_is_the_declared_rate_like_opencv(
    broker: Broker, camera_factory: Callable[..., Camera], fps: int
) -> None:
    """A script that computes ``1 / cap.get(CAP_PROP_FPS)`` right after open must
    get what OpenCV gives for the same camera: the rate the stream declares (two
    rates, so a constant cannot pass)."""
    cam = camera_factory("--width", "320", "--height", "240", "--fps", str(fps), "--pattern", "smpte")
    ref = cv2.VideoCapture(cam.url, cv2.CAP_FFMPEG)
    assert ref.isOpened()
    want = ref.get(cv2.CAP_PROP_FPS)
    ref.release()
    assert want == float(fps), f"OpenCV reports {want} for a {fps} fps camera"
    cap = VideoCapture(cam.url)
    assert cap.isOpened(), cap.last_error
    got = cap.get(CAP_PROP_FPS)
    # Opened a moment ago: the broker has not measured a rate yet, so this is the
    # declared one, exactly as OpenCV has it. (A loaded machine can be slow enough
    # between open and get() for the broker to have measured the rate, which
    # needs 0.5 s of frames: then it is that one, close to the declared rate.)
    if got != want:
        measured = cap._local.ring.fps()  # type: ignore[union-attr]
        assert measured > 0 and abs(got - want) < 0.1 * want, f"framebroker {got}, OpenCV {want}"
    info = {s.id: s for s in streams(broker)}[cap._local.stream_id]  # type: ignore[union-attr]
    assert info.declared_fps == want
    cap.release()


def test_read_fills_the_given_buffer(broker: Broker, camera: Camera) -> None:
    with VideoCapture(camera.url) as cap:
        buf = np.zeros((480, 640, 3), np.uint8)
        ok, frame = cap.read(buf)
        assert ok and frame is buf
        assert_smpte(buf)
        ok, frame = cap.read(image=buf)
        assert ok and frame is buf
        small = np.zeros((10, 10, 3), np.uint8)
        ok, frame = cap.read(small)
        assert ok and frame is not small and frame.shape == (480, 640, 3), "wrong shape: a new array, like OpenCV"
        # grab/retrieve
        assert cap.grab()
        ok, a = cap.retrieve()
        ok2, b = cap.retrieve()
        assert ok and ok2 and np.array_equal(a, b) and not np.shares_memory(a, b)
        ok, c = cap.retrieve(buf)
        assert ok and c is buf


def test_context_manager_detaches(broker: Broker, camera: Camera) -> None:
    with VideoCapture(camera.url) as cap:
        assert cap.read()[0]
        assert streams(broker)[0].readers == 1
    assert not cap.isOpened()
    wait_until("the stream to lose its reader", 5, lambda: not streams(broker) or streams(broker)[0].readers == 0)


def test_testsrc_and_requested_size(broker: Broker) -> None:
    url = "testsrc://?size=320x240&rate=25"
    with VideoCapture(url) as cap:
        assert cap.isOpened(), cap.last_error
        ok, frame = cap.read()
        assert ok and frame.shape == (240, 320, 3)
    with VideoCapture("testsrc://?size=640x480&rate=25", CAP_ANY,
                      [CAP_PROP_FRAME_WIDTH, 160, CAP_PROP_FRAME_HEIGHT, 120]) as cap:
        ok, frame = cap.read()
        assert ok and frame.shape == (120, 160, 3), "the broker scales a stream it starts"


def test_sequential_mode(broker: Broker) -> None:
    with VideoCapture("testsrc://?size=160x120&rate=30", CAP_ANY, [CAP_PROP_BUFFERSIZE, 6]) as cap:
        assert cap.get(CAP_PROP_BUFFERSIZE) == 6
        nums = []
        for _ in range(20):
            assert cap.read()[0]
            nums.append(cap.frame_meta.number)  # type: ignore[union-attr]
        assert nums == list(range(nums[0], nums[0] + 20)), "every frame, in order, while keeping up"
        assert cap.frames_missed == 0
        time.sleep(0.5)  # ~15 frames, more than the ring holds (7 slots)
        assert cap.read()[0]
        assert cap.frames_missed > 0
        # Back to newest-frame mode.
        assert cap.set(CAP_PROP_BUFFERSIZE, 1)
        time.sleep(0.2)
        assert cap.read()[0]
        assert cap.frame_meta.missed >= 3  # type: ignore[union-attr]


def test_zero_copy_view(broker: Broker) -> None:
    with VideoCapture("testsrc://?size=320x240&rate=30") as cap:
        with cap.read_view() as view:
            assert view.shape == (240, 320, 3) and not view.flags.writeable
            total = int(view.sum())
        assert total > 0
        with pytest.raises(fb.FrameOverwritten):
            with cap.read_view() as view:
                time.sleep(0.3)  # 4 slots at 30 fps: overwritten after ~100 ms


def test_wait_any(broker: Broker) -> None:
    a = VideoCapture("testsrc://?size=160x120&rate=10")
    b = VideoCapture("testsrc://?size=160x120&rate=30")
    try:
        assert a.read()[0] and b.read()[0]
        ok, ready = VideoCapture.waitAny([a, b], 2_000_000_000)
        assert ok and ready
        for i in ready:
            got, frame = (a, b)[i].retrieve()
            assert got and frame.shape == (120, 160, 3)
        cpu0 = time.process_time()
        hits = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            ok, ready = VideoCapture.waitAny([a], 500_000_000)
            hits += ok
        assert 5 <= hits <= 13, hits  # a 10 fps stream
        assert time.process_time() - cpu0 < 0.3, "waitAny must sleep, not spin"
    finally:
        a.release()
        b.release()


# ------------------------------------------------------------------ OpenCV fallback


def test_fallback_to_opencv_for_a_local_file(tmp_path: Any, broker: Broker) -> None:
    path = str(tmp_path / "clip.mp4")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
         "-t", "1", "-pix_fmt", "yuv420p", path],
        check=True, timeout=60,
    )
    mine, ref = VideoCapture(path), cv2.VideoCapture(path)
    assert mine.isOpened() and mine.getBackendName() == ref.getBackendName()
    assert mine.get(CAP_PROP_FRAME_WIDTH) == 320.0
    n = 0
    while True:
        ok, a = mine.read()
        ok2, b = ref.read()
        assert ok == ok2
        if not ok:
            break
        assert np.array_equal(a, b)
        n += 1
    assert n == 25
    assert streams(broker) == [], "a file never reaches the broker"


# ------------------------------------------------------------------ failures


def test_unreachable_camera_respects_the_open_timeout(broker: Broker) -> None:
    url = f"rtsp://127.0.0.1:{closed_port()}/cam"
    t0 = time.monotonic()
    cap = VideoCapture(url, CAP_ANY, [CAP_PROP_OPEN_TIMEOUT_MSEC, 2000])
    elapsed = time.monotonic() - t0
    assert not cap.isOpened()
    assert elapsed < 3.0, f"open took {elapsed:.1f} s with a 2 s open timeout"
    assert cap.last_error and stream_id_for_url(url) in cap.last_error
    assert cap.read() == (False, None)
    # The stream it started for nothing does not linger.
    wait_until("the failed stream to go", 8, lambda: all(s.id != stream_id_for_url(url) for s in streams(broker)))


def test_exception_mode_raises_like_opencv(broker: Broker) -> None:
    url = f"rtsp://127.0.0.1:{closed_port()}/cam"
    cap = VideoCapture()
    cap.setExceptionMode(True)
    assert cap.getExceptionMode()
    with pytest.raises(cv2.error) as e:
        cap.open(url, CAP_ANY, [CAP_PROP_OPEN_TIMEOUT_MSEC, 1000])
    assert isinstance(e.value, fb.CaptureError) and "127.0.0.1" in str(e.value)
    with pytest.raises(cv2.error):
        cap.read()
    # As OpenCV itself does for a source it cannot open:
    ref = cv2.VideoCapture()
    ref.setExceptionMode(True)
    with pytest.raises(cv2.error):
        ref.open("/nonexistent/file.mp4")
    # Exception mode carries over to the OpenCV fallback.
    with pytest.raises(cv2.error):
        cap.open("/nonexistent/file.mp4")


def test_broker_not_running_is_a_clear_error(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    sock = str(tmp_path / "nobody.sock")
    monkeypatch.setenv("FRAMEBROKER_SOCKET", sock)
    cap = VideoCapture("rtsp://127.0.0.1:8554/cam")
    assert not cap.isOpened()
    assert cap.last_error and sock in cap.last_error and "framebroker serve" in cap.last_error
    assert any(sock in r.getMessage() for r in caplog.records), "the failure is logged"


def test_stream_stopped_while_reading_then_back(broker: Broker, camera: Camera) -> None:
    cap = VideoCapture(camera.url, CAP_ANY, [CAP_PROP_READ_TIMEOUT_MSEC, 3000])
    assert cap.read()[0]
    sid = cap.stream_id
    assert sid
    with broker.client() as c:
        c.stop(sid)
    t0 = time.monotonic()
    # A frame published between the read above and the stop is still a new
    # frame (as in the crash test below); the ring holds at most a few.
    got = cap.read()
    for _ in range(8):
        if not got[0]:
            break
        got = cap.read()
    assert got == (False, None)
    assert time.monotonic() - t0 < 1.0
    assert cap.isOpened()
    with broker.client() as c:
        c.start(sid, camera.url)
    wait_until("read() to re-attach", 15, lambda: cap.read()[0])
    cap.release()


def test_broker_crash_and_restart(broker: Broker, camera: Camera) -> None:
    cap = VideoCapture(camera.url, CAP_ANY, [CAP_PROP_READ_TIMEOUT_MSEC, 5000])
    assert cap.read()[0]
    broker.kill()
    t0 = time.monotonic()
    ok, frame = cap.read()
    while ok:  # frames already in the ring
        ok, frame = cap.read()
    noticed = time.monotonic() - t0
    assert frame is None and noticed < 1.5, f"broker death noticed after {noticed:.2f} s"
    # While it is down, read() fails without spinning a core.
    cpu0, t1 = time.process_time(), time.monotonic()
    for _ in range(3):
        assert cap.read() == (False, None)
    assert time.process_time() - cpu0 < 0.2 and time.monotonic() - t1 < 5
    broker.start()  # same socket, same prefix
    wait_until("read() to re-attach to the new broker", 20, lambda: cap.read()[0])
    ok, frame = cap.read()
    assert ok and frame is not None
    assert_smpte(frame)
    cap.release()


def _reading_a_dropped_camera(broker_factory: Callable[..., Broker], camera_factory: Callable[..., Camera],
                              monkeypatch: pytest.MonkeyPatch, broker_args: Sequence[str],
                              read_timeout_ms: int) -> Tuple[Broker, Camera, VideoCapture]:
    """A capture that read a frame from a 30 fps camera, which was then killed:
    returns once its reads have stopped succeeding."""
    b = broker_factory(*broker_args)
    monkeypatch.setenv("FRAMEBROKER_SOCKET", b.socket)
    cam = camera_factory("--fps", "30")
    cap = VideoCapture(cam.url, CAP_ANY, [CAP_PROP_READ_TIMEOUT_MSEC, read_timeout_ms])
    assert cap.read()[0]
    cam.kill()
    wait_until("reads to stop", 5, lambda: not cap.read()[0])
    return b, cam, cap


def test_camera_drop_keeps_the_reader_attached(broker_factory: Callable[..., Broker],
                                               camera_factory: Callable[..., Camera],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    b, cam, cap = _reading_a_dropped_camera(
        broker_factory, camera_factory, monkeypatch,
        ["--backoff-initial-ms", "200", "--backoff-max-ms", "500", "--idle-grace-ms", "3000"], 1000)
    wait_until("state reconnecting", 5, lambda: [s for s in streams(b) if s.state is fb.StreamState.RECONNECTING])
    cam.restart()
    wait_until("frames to come back", 20, lambda: cap.read()[0])
    assert cap.isOpened()
    cap.release()


def test_read_waits_its_timeout_once_and_says_why(broker_factory: Callable[..., Broker],
                                                  camera_factory: Callable[..., Camera],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A read on a stream that stopped sending waits CAP_PROP_READ_TIMEOUT_MSEC
    (once: not again on a second path) and says why in last_error."""
    _, _, cap = _reading_a_dropped_camera(
        broker_factory, camera_factory, monkeypatch, ["--backoff-initial-ms", "5000", "--idle-grace-ms", "30000"], 700)
    t0 = time.monotonic()
    ok, frame = cap.read()
    took = time.monotonic() - t0
    assert (ok, frame) == (False, None)
    assert 0.6 <= took < 1.3, took
    assert "no new frame within 700 ms" in cap.last_error
    cap.release()


def test_rtsp_transport_from_opencv_options(broker: Broker, camera: Camera, monkeypatch: pytest.MonkeyPatch) -> None:
    """OPENCV_FFMPEG_CAPTURE_OPTIONS=rtsp_transport;udp reaches the decoder the broker runs."""

    def transport_of(url: str) -> str:
        with VideoCapture(url) as cap:
            assert cap.isOpened(), cap.last_error
            with broker.client() as c:
                pid = c.stats(cap.stream_id or "").ffmpeg_pid
            args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            # ffmpeg's option, or the broker's own decoder's.
            flag = b"-rtsp_transport" if b"-rtsp_transport" in args else b"--transport"
            return args[args.index(flag) + 1].decode()

    assert transport_of(camera.url) == "tcp"  # OpenCV's default when the variable is unset
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;udp|stimeout;1000000")
    wait_until("the first stream to stop", 8, lambda: streams(broker) == [])
    assert transport_of(camera.url) == "udp"


def test_attach_by_id_and_geometry_of_a_cli_stream(broker: Broker) -> None:
    """A stream added by id (here through the broker's CLI) is read with framebroker://ID;
    opening its URL reads the same decode under the capture's own id (at the
    camera's own size, as OpenCV would give it: a variant of that decode) instead
    of starting a second ffmpeg."""
    url = "testsrc://?size=320x240&rate=30&pattern=smptebars"
    subprocess.run(
        [str(BROKER_BIN), "streams", "--socket", broker.socket, "add", "bars", url,
         "--width", "160", "--height", "120"],
        check=True, timeout=30, capture_output=True,
    )
    with VideoCapture("framebroker://bars") as cap:
        assert cap.isOpened(), cap.last_error
        ok, frame = cap.read()
        assert ok and frame.shape == (120, 160, 3)
    with VideoCapture(url) as cap:
        assert cap.stream_id == stream_id_for_url(url)
        ok, frame = cap.read()
        assert ok and frame.shape == (240, 320, 3), "native size"
        info = {s.id: s for s in streams(broker)}
        assert info[cap.stream_id].parent == "bars", "on the running decode"
        assert len(broker.ffmpeg_children()) == 1
    assert len(broker.ffmpeg_children()) == 1
    with VideoCapture("framebroker://nope", CAP_ANY, [CAP_PROP_OPEN_TIMEOUT_MSEC, 500]) as cap:
        assert not cap.isOpened() and "NOT_FOUND" in (cap.last_error or "")


# ------------------------------------------------------------------ remote mode


def test_remote_mode_through_the_real_gateway(broker: Broker, camera: Camera, gateway_factory: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    gw = gateway_factory()
    import video_import

    cap = video_import.SimpleVideoCapture(camera.url, server_url=gw.url)
    assert cap.isOpened(), cap.last_error
    assert cap.getBackendName() == "FRAMEBROKER_HTTP"
    nums = []
    for _ in range(10):
        ok, frame = cap.read()
        assert ok and frame.shape == (480, 640, 3)
        nums.append(cap.frame_meta.number)  # type: ignore[union-attr]
    assert_smpte(frame)
    assert nums == sorted(set(nums)), "never the same frame twice"
    assert (cap.get(CAP_PROP_FRAME_WIDTH), cap.get(CAP_PROP_FRAME_HEIGHT)) == (640.0, 480.0)
    # The gateway started the stream in the broker under the id every client derives.
    assert [s.id for s in streams(broker)] == [stream_id_for_url(camera.url)]
    cap.release()


def test_remote_mode_gets_the_camera_size_not_the_gateways_default(broker: Broker, gateway_factory: Any) -> None:
    # The gateway's start route gives 640x480 when no size is named (the original
    # server's default); remote mode, like cv2.VideoCapture, asks for the
    # camera's own. A 320x240 source tells the two apart.
    gw = gateway_factory()
    with VideoCapture("testsrc://?size=320x240&rate=30", server_url=gw.url) as cap:
        assert cap.isOpened(), cap.last_error
        assert cap.getBackendName() == "FRAMEBROKER_HTTP"
        ok, frame = cap.read()
        assert ok and frame.shape == (240, 320, 3)
        assert (cap.get(CAP_PROP_FRAME_WIDTH), cap.get(CAP_PROP_FRAME_HEIGHT)) == (320.0, 240.0)
    # A size asked for is still the size given.
    with VideoCapture("testsrc://?size=320x240&rate=25", CAP_ANY,
                      [CAP_PROP_FRAME_WIDTH, 160, CAP_PROP_FRAME_HEIGHT, 96], server_url=gw.url) as cap:
        assert cap.isOpened(), cap.last_error
        ok, frame = cap.read()
        assert ok and frame.shape == (96, 160, 3)


def test_remote_mode_with_a_token(broker: Broker, camera: Camera, gateway_factory: Any,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    gw = gateway_factory("--token", "s3cret")
    monkeypatch.setenv("FRAMEBROKER_SERVER", gw.url)
    monkeypatch.delenv("FRAMEBROKER_TOKEN", raising=False)
    cap = VideoCapture(camera.url, CAP_ANY, [CAP_PROP_OPEN_TIMEOUT_MSEC, 3000])
    assert not cap.isOpened()
    assert "401" in (cap.last_error or "") and "FRAMEBROKER_TOKEN" in (cap.last_error or "")
    monkeypatch.setenv("FRAMEBROKER_TOKEN", "s3cret")
    with VideoCapture(camera.url) as cap:
        assert cap.isOpened(), cap.last_error
        assert cap.read()[0]
