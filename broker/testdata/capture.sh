#!/usr/bin/env bash
# Re-captures the ffmpeg logs in this directory by running the system ffmpeg with the
# broker's arguments (see ffmpeg_args in broker/src/ffmpeg.rs) against the test camera
# (tests/camera/rtsp_camera.py) and against failing sources. See README.md.
#
#   broker/testdata/capture.sh            # all cases
#   broker/testdata/capture.sh refused    # one case
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tmp=$(mktemp -d /tmp/fbfixture.XXXXXX)
cam_pid=""
cleanup() {
    if [ -n "$cam_pid" ]; then kill -CONT "$cam_pid" 2>/dev/null || true; kill "$cam_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# The broker's arguments for a network source (io_timeout 5 s, bgr24, native size),
# with $1 the URL and the rest extra input options (e.g. -hwaccel vaapi).
net_args() {
    local url=$1; shift
    echo -hide_banner -nostdin -loglevel level+info -copyts "$@" \
        -rtsp_transport tcp -timeout 5000000 -analyzeduration 500000 -probesize 500000 \
        -fflags nobuffer -flags low_delay -i "$url"
}
out_args() {
    echo -filter_complex '[0:v:0]showinfo=checksum=0[o0]' \
        -map '[o0]' -fps_mode passthrough -f rawvideo -pix_fmt bgr24 "$@" pipe:1
}

start_camera() {
    /usr/bin/python3 "$root/tests/camera/rtsp_camera.py" --width 320 --height 240 --fps 15 "$@" \
        >"$tmp/cam.out" 2>"$tmp/cam.err" &
    cam_pid=$!
    for _ in $(seq 100); do
        grep -q READY "$tmp/cam.out" 2>/dev/null && break
        sleep 0.1
    done
    port=$(sed -n 's#^READY rtsp://127.0.0.1:\([0-9]*\)/.*#\1#p' "$tmp/cam.out")
    [ -n "$port" ] || { echo "camera did not start" >&2; cat "$tmp/cam.err" >&2; exit 1; }
}
stop_camera() {
    kill -CONT "$cam_pid" 2>/dev/null || true
    kill "$cam_pid"; wait "$cam_pid" 2>/dev/null || true
    cam_pid=""
}

# Runs ffmpeg with the given arguments, frames to /dev/null, and writes its stderr,
# made machine-independent, to $here/$name.log.
capture() {
    local name=$1; shift
    set +e
    # shellcheck disable=SC2046
    ffmpeg "$@" >/dev/null 2>"$tmp/$name.raw"
    echo "$name: ffmpeg exit status $?" >&2
    set -e
    redact <"$tmp/$name.raw" >"$here/$name.log"
}
redact() {
    sed -e 's/0x[0-9a-f]\{6,\}/0x0/g' \
        -e "s#127\.0\.0\.1:${port:-8554}#127.0.0.1:8554#g" \
        -e "s#$tmp#/tmp/fbfixture#g"
}

cases=("$@")
w() { [ ${#cases[@]} -eq 0 ] || [[ " ${cases[*]} " == *" $1 "* ]]; }

if w camera_ok || w not_found_404 || w vaapi_missing; then
    start_camera
    url="rtsp://127.0.0.1:$port/cam"
    # shellcheck disable=SC2046
    w camera_ok && capture camera_ok $(net_args "$url") $(out_args -frames:v 15)
    # shellcheck disable=SC2046
    w not_found_404 && capture not_found_404 $(net_args "rtsp://127.0.0.1:$port/nope") $(out_args)
    # shellcheck disable=SC2046
    w vaapi_missing && capture vaapi_missing $(net_args "$url" -hwaccel vaapi) $(out_args -frames:v 15)
    stop_camera
fi
if w unauthorized_401; then
    start_camera --auth user:secret
    # Wrong password: ffmpeg prints the URL with it; the fixture keeps it, the parser redacts.
    # shellcheck disable=SC2046
    capture unauthorized_401 $(net_args "rtsp://user:wrong@127.0.0.1:$port/cam") $(out_args)
    stop_camera
fi
if w refused; then
    # Nothing listens on port 9 of loopback.
    port=9
    # shellcheck disable=SC2046
    capture refused $(net_args "rtsp://127.0.0.1:9/cam") $(out_args)
fi
if w stalled; then
    # The camera freezes (SIGSTOP: the socket stays open) after 2 s of frames;
    # ffmpeg's own -timeout ends it some seconds later.
    start_camera
    ( sleep 2; kill -STOP "$cam_pid" ) &
    # shellcheck disable=SC2046
    capture stalled $(net_args "rtsp://127.0.0.1:$port/cam") $(out_args)
    stop_camera
fi
if w damaged; then
    # An H.264 file whose middle is overwritten with garbage: the decoder conceals.
    ffmpeg -hide_banner -loglevel error -f lavfi -i testsrc2=size=320x240:rate=15 -t 2 \
        -c:v libx264 -preset ultrafast -g 15 -bsf:v h264_mp4toannexb -f h264 "$tmp/clip.h264"
    python3 - "$tmp/clip.h264" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
for k in range(8):  # eight runs of 64 bytes across the middle half, fixed places
    at = len(b) // 4 + k * (len(b) // 16)
    b[at:at + 64] = bytes((i * 37 + k) & 0xFF for i in range(64))
open(p, "wb").write(b)
PY
    # shellcheck disable=SC2046
    capture damaged -hide_banner -nostdin -loglevel level+info -copyts -i "$tmp/clip.h264" $(out_args)
fi
if w invalid_data; then
    echo "this is not a video" >"$tmp/not-a-video.h264"
    # shellcheck disable=SC2046
    capture invalid_data -hide_banner -nostdin -loglevel level+info -copyts -i "$tmp/not-a-video.h264" $(out_args)
fi
