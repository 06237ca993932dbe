#!/usr/bin/env python3
"""framebroker benchmark suite: one command, every measurement of issue #6.

    .venv/bin/python bench/run.py [--quick] [--only cpu,parity,age,latency,copy,gateway,scale,memory]
                                  [--memory-minutes 10] [--no-build] [--no-report]
                                  [--decoders ffmpeg,libav]
    .venv/bin/python bench/run.py --report-only bench/results/<file>.json

It builds the release binaries, runs each section against real processes (the
GStreamer RTSP test camera on 127.0.0.1, the broker with real ffmpeg, reader
processes), prints a table, writes ``bench/results/<date>.json`` and regenerates
``docs/BENCHMARKS.md`` with its plots in ``docs/bench/`` (unless ``--no-report``).

Sections:
  cpu      host CPU of N consumers of one camera: N x cv2.VideoCapture, N x our
           Python VideoCapture (+ broker + ffmpeg), N x Rust readers (+ broker + ffmpeg);
           ours once per --decoders entry (`framebroker serve --decoder ffmpeg|libav`)
  parity   one reader (N = 1) against one cv2.VideoCapture on both cameras (like-camera and
           cheap) at 640x480 and 1080p, each way once per round for 6 rounds, the order
           rotating: the ratio cv2/ours of ways measured seconds apart (through libav
           when --decoders has it, else the decoder given); then each of ours beside
           a cv2 reader in the same window, 6 windows each
  age      frame age at read time for a consumer slower than the camera (cv2 vs ours)
  latency  publish->read latency with 1, 8, 64 reader processes (fb-bench)
  copy     read cost per frame: Rust copy / zero-copy (fb-bench), Python read() (bench_read.py)
  gateway  JPEG encode time, CPU and fps with 1..100 WebSocket clients, snapshot, /frame polling
  scale    1..16 cameras: broker RSS, shared memory and CPU per camera
  memory   RSS of broker and gateway under the gateway load for --memory-minutes

``--quick`` runs every section with tiny sizes in about two minutes (a smoke test:
it fails only when a section crashes or yields no data, never on speed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procs  # noqa: E402
from procs import RELEASE, REPO, BenchError, Broker, Camera, Fleet  # noqa: E402

SECTIONS = ["cpu", "parity", "age", "latency", "copy", "gateway", "scale", "memory"]
#: ``framebroker serve --decoder`` values the cpu section compares, in this order.
DECODERS = ["ffmpeg", "libav"]
#: The executable each decoder runs under the broker for an RTSP camera.
DECODER_EXE = {"ffmpeg": "ffmpeg", "libav": "framebroker-decoder"}
PY = sys.executable
CONSUMER = str(Path(__file__).resolve().parent / "consumer.py")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mmm(xs: Sequence[float]) -> Dict[str, Optional[float]]:
    """median, min, max (None when there is no value)."""
    v = [x for x in xs if x is not None and x == x]
    if not v:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(v), "min": min(v), "max": max(v)}


def fmt(s: Optional[Dict[str, Optional[float]]], prec: int = 1) -> str:
    if not s or s.get("median") is None:
        return "n/a"
    return f"{s['median']:.{prec}f} [{s['min']:.{prec}f}–{s['max']:.{prec}f}]"


def med(s: Optional[Dict[str, Optional[float]]]) -> float:
    return float("nan") if not s or s.get("median") is None else float(s["median"])


def pctl(xs: Sequence[float], q: float) -> float:
    v = sorted(xs)
    return v[min(len(v) - 1, max(0, int(round(q * (len(v) - 1)))))]


# ---------------------------------------------------------------------------
# Sizes of the full run and of --quick
# ---------------------------------------------------------------------------

def plan(quick: bool, memory_minutes: float) -> Dict[str, Any]:
    if quick:
        return {
            "reps": 2,
            "cpu": {"sizes": [(320, 240, 15)], "n": [1, 2], "warmup": 0.5, "window": 1.0},
            "parity": {"cameras": ["cheap"], "sizes": [(320, 240, 15)], "rounds": 2, "warmup": 0.5, "window": 1.0},
            "age": {"size": (640, 480, 30), "work_ms": 100, "seconds": 4.0, "keepup_seconds": 2.0},
            "latency": {"readers": "1,8", "fb_args": ["--quick", "--reps", "1"]},
            "copy": {"fb_args": ["--quick", "--reps", "1"], "py": ["--frames", "5", "--reps", "2", "--sizes", "640x480"]},
            "gateway": {"size": (640, 360, 30), "subs": "1,10", "seconds": 1, "warmup": 1,
                        "snapshots": 5, "poll_seconds": 1, "pollers": "1,4"},
            "scale": {"counts": [1, 2], "size": (320, 240, 15), "warmup": 1.0, "window": 1.0},
            "memory": {"minutes": memory_minutes if memory_minutes is not None else 0.2,
                       "subscribers": 10, "size": (640, 360, 30)},
        }
    return {
        "reps": 3,
        "cpu": {"sizes": [(640, 480, 30), (1920, 1080, 30)], "n": [1, 2, 4, 8, 16], "warmup": 2.0, "window": 5.0},
        "parity": {"cameras": ["like-camera", "cheap"], "sizes": [(640, 480, 30), (1920, 1080, 30)], "rounds": 6,
                   "warmup": 2.0, "window": 5.0},
        "age": {"size": (640, 480, 30), "work_ms": 100, "seconds": 60.0, "keepup_seconds": 10.0},
        "latency": {"readers": "1,8,64", "fb_args": ["--reps", "3"]},
        "copy": {"fb_args": ["--reps", "3"], "py": ["--frames", "60", "--reps", "3"]},
        "gateway": {"size": (1280, 720, 30), "subs": "1,10,50,100", "seconds": 5, "warmup": 2,
                    "snapshots": 50, "poll_seconds": 5, "pollers": "1,4"},
        "scale": {"counts": [1, 4, 8, 16], "size": (640, 480, 15), "warmup": 3.0, "window": 5.0},
        "memory": {"minutes": memory_minutes if memory_minutes is not None else 10.0,
                   "subscribers": 50, "size": (1280, 720, 30)},
    }


# ---------------------------------------------------------------------------
# 1. Host CPU for N consumers of one camera
# ---------------------------------------------------------------------------

def cpu_windows(fleets: Sequence[Fleet], groups: Dict[str, Callable[[], List[int]]], reps: int, warmup: float,
                window: float) -> List[Dict[str, Any]]:
    """``reps`` consecutive windows after ``warmup``: CPU % of each process group
    (its pids read at the window's start) and frames per second of each consumer
    of the ``fleets`` (the lowest and the mean over all of them)."""
    time.sleep(warmup)
    out = []
    counts = lambda: [c for f in fleets for c in f.counts]  # noqa: E731
    for _ in range(reps):
        pids = {k: f() for k, f in groups.items()}
        c0 = {k: procs.cpu_seconds(v) for k, v in pids.items()}
        n0, t0 = counts(), time.monotonic()
        time.sleep(window)
        c1 = {k: procs.cpu_seconds(v) for k, v in pids.items()}
        n1, wall = counts(), time.monotonic() - t0
        fps = [(b - a) / wall for a, b in zip(n0, n1)]
        row = {f"{k}_pct": (c1[k] - c0[k]) / wall * 100 for k in pids}
        row.update(fps_min=min(fps), fps_mean=statistics.mean(fps), wall_s=wall)
        out.append(row)
    return out


def decoder_suffix(decoders: Sequence[str], decoder: str) -> str:
    """Suffix of a decoder's keys in a cpu row: none for the first decoder (``py``,
    ``rust``, ``ratio_cv2_over_py``, ... as in results files from before
    ``--decoders``), ``_<name>`` for the others (``py_libav``, ...)."""
    return "" if decoder == decoders[0] else f"_{decoder}"


def variants(row: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(key suffix, decoder) of each decoder a cpu row measured; rows from before
    ``--decoders`` have no ``decoder_of``: ffmpeg, plain keys."""
    return [(k[2:], d) for k, d in row.get("decoder_of", {"py": "ffmpeg"}).items() if k.startswith("py")]


def wait_idle(brokers: Dict[str, Broker]) -> None:
    """No decoder left under any broker: the next configuration is measured alone."""
    for b in brokers.values():
        b.wait_no_ffmpeg()


def decoder_names(broker: Broker) -> List[str]:
    """Executable names of the processes under the broker (its decoders)."""
    names = set()
    for pid in broker.ffmpeg_pids():
        try:
            names.add(Path(procs.psutil.Process(pid).cmdline()[0]).name)
        except (procs.psutil.Error, IndexError):
            pass
    return sorted(names)


def add_ratios(row: Dict[str, Any], ours: str) -> None:
    """cv2 total / ours total, from the same repetition index, as is and per delivered frame."""
    a, b = row["cv2"]["windows"], row[ours]["windows"]
    # A window with no measurable CPU (psutil counts 10 ms ticks; tiny
    # --quick sizes) has no ratio: it is left out, not divided by zero.
    row[f"ratio_cv2_over_{ours}"] = mmm([x["total_pct"] / y["total_pct"]
                                         for x, y in zip(a, b) if y["total_pct"] > 0])
    # Per delivered frame: a saturated machine delivers fewer cv2 frames.
    row[f"ratio_per_frame_cv2_over_{ours}"] = mmm([
        (x["total_pct"] / max(x["fps_mean"], 1e-9)) / (y["total_pct"] / max(y["fps_mean"], 1e-9))
        for x, y in zip(a, b) if y["total_pct"] > 0])


def cpu_row(size: str, n: int, cam: Camera, brokers: Dict[str, Broker], cfg: Dict[str, Any],
            reps: int) -> Dict[str, Any]:
    """cv2 once, then our Python and Rust readers through each decoder's broker."""
    row: Dict[str, Any] = {"size": size, "n": n, "decoder_of": {}}
    log(f"cpu {size}: {n} x cv2")
    wait_idle(brokers)
    row["cv2"] = cpu_config("cv2", n, cam, None, cfg, reps)
    decoders = list(brokers)
    for d, broker in brokers.items():
        sfx = decoder_suffix(decoders, d)
        for kind in ("py", "rust"):
            log(f"cpu {size}: {n} x {kind}, decoder {d}")
            wait_idle(brokers)
            row[kind + sfx] = cpu_config(kind, n, cam, broker, cfg, reps, d)
            row["decoder_of"][kind + sfx] = d
            add_ratios(row, kind + sfx)
    row["goal_ratio"] = 0.8 * n
    log(f"   cv2 {fmt(row['cv2']['total_pct'])} %  " + "  ".join(
        f"{d}: py {fmt(row['py' + sfx]['total_pct'])} %  rust {fmt(row['rust' + sfx]['total_pct'])} %  "
        f"ratio cv2/py {fmt(row['ratio_cv2_over_py' + sfx], 2)}" for sfx, d in variants(row)))
    return row


def bench_cpu(p: Dict[str, Any]) -> Dict[str, Any]:
    cfg, reps, decoders = p["cpu"], p["reps"], p["decoders"]
    results, floors = [], []
    if "ffmpeg" not in decoders:
        log("cpu: no decode floor: it reruns the broker's ffmpeg command line, and --decoders has no ffmpeg")
    for (w, h, fps) in cfg["sizes"]:
        size = f"{w}x{h}@{fps}"
        cam = Camera(w, h, fps, *p["camera_args"])
        brokers: Dict[str, Broker] = {}
        try:
            for d in decoders:
                brokers[d] = Broker("--idle-grace-ms", "3000", "--decoder", d)
            for n in cfg["n"]:
                results.append(cpu_row(size, n, cam, brokers, cfg, reps))
            if "ffmpeg" in brokers:
                log(f"cpu {size}: the broker's ffmpeg alone, frames thrown away")
                wait_idle(brokers)
                floors.append({"size": size, **decode_floor(cam, brokers["ffmpeg"], cfg, reps)})
        finally:
            for b in brokers.values():
                b.close()
            cam.close()
    return {"window_s": cfg["window"], "warmup_s": cfg["warmup"], "reps": reps, "rows": results,
            "decode_floor": floors}


def decode_floor(cam: Camera, broker: Broker, cfg: Dict[str, Any], reps: int) -> Dict[str, Any]:
    """The broker's own ffmpeg command line for this camera, run alone with its
    output thrown away inside ffmpeg (``-f null``) instead of written to the
    broker's pipe: the cost of decode + conversion, without the hand-over."""
    sid = f"floor{int(time.time() * 1000) % 1000000}"
    broker.add(sid, cam.url)
    try:
        broker.wait_live([sid])
        pids = broker.ffmpeg_pids()
        if len(pids) != 1:
            raise BenchError(f"cpu: expected one ffmpeg under the broker, found {len(pids)}")
        argv = procs.psutil.Process(pids[0]).cmdline()
    finally:
        broker.cli("rm", sid, check=False)
    broker.wait_no_ffmpeg()
    # One output: same graph, same pixel format, nothing written. The NUT
    # hand-over's is `... -c:v rawvideo -f nut pipe:1` (the decoder's own format),
    # the rawvideo one's `... -f rawvideo -pix_fmt bgr24 pipe:1`.
    if argv.count("pipe:1") != 1 or "rawvideo" not in argv:
        raise BenchError(f"cpu: unexpected ffmpeg command line {argv}")
    if "nut" in argv:
        argv = ["null" if a == "nut" else "-" if a == "pipe:1" else a for a in argv]
    else:
        argv = ["null" if a == "rawvideo" else "-" if a == "pipe:1" else a for a in argv]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(cfg["warmup"] + 1.0)  # + the RTSP set-up the broker's ffmpeg had done before
        wins = []
        for _ in range(reps):
            c0, t0 = procs.cpu_seconds([proc.pid]), time.monotonic()
            time.sleep(cfg["window"])
            c1, wall = procs.cpu_seconds([proc.pid]), time.monotonic() - t0
            if proc.poll() is not None:
                raise BenchError(f"cpu: the null-output ffmpeg exited ({proc.returncode})")
            wins.append((c1 - c0) / wall * 100)
    finally:
        procs.stop_process(proc)
    return {"ffmpeg_null_pct": mmm(wins), "argv": argv}


def cpu_config(kind: str, n: int, cam: Camera, broker: Optional[Broker], cfg: Dict[str, Any], reps: int,
               decoder: Optional[str] = None) -> Dict[str, Any]:
    """``kind`` = cv2 (no broker), py or rust (through ``broker``, whose ``--decoder`` is ``decoder``)."""
    fleet, sid = consumer_fleet(kind, n, cam, broker)
    try:
        fleet.wait_ready(60 + 5 * n)
        groups: Dict[str, Callable[[], List[int]]] = {
            "readers": lambda: fleet.pids,
            "camera": lambda: [cam.pid],
        }
        exe: List[str] = []
        if broker is not None:
            exe = check_decoder(broker, decoder or "ffmpeg")
            groups["broker"] = lambda: [broker.pid]
            groups["ffmpeg"] = broker.ffmpeg_pids  # the decoder: ffmpeg or framebroker-decoder
        wins = cpu_windows([fleet], groups, reps, cfg["warmup"], cfg["window"])
    finally:
        close_fleet(fleet, sid, broker)
    if max(x["fps_min"] for x in wins) <= 0:
        raise BenchError(f"cpu: a {kind} consumer read no frame in any window (N = {n})")
    for x in wins:
        x["total_pct"] = ours_total(x)
    keys = ["total_pct", "readers_pct", "broker_pct", "ffmpeg_pct", "camera_pct", "fps_mean", "fps_min"]
    out: Dict[str, Any] = {k: mmm([x.get(k, 0.0) for x in wins]) for k in keys}
    if decoder is not None:
        out.update(decoder=decoder, decoder_exe=exe)
    out["windows"] = wins
    return out


def ours_total(row: Dict[str, Any]) -> float:
    """CPU % of everything of ours in a window: readers, broker, decoder (for
    cv2 only the readers, its processes)."""
    return row["readers_pct"] + row.get("broker_pct", 0.0) + row.get("ffmpeg_pct", 0.0)


def consumer_fleet(kind: str, n: int, cam: Camera, broker: Optional[Broker]) -> Tuple[Fleet, Optional[str]]:
    """``n`` consumers of ``kind`` (cv2, py, rust) started on ``cam``, and the
    stream id a Rust reader's stream was added under (close with :func:`close_fleet`)."""
    if kind == "cv2":
        cmds = [[PY, CONSUMER, "--api", "cv2", "--url", cam.url]] * n
        return Fleet(cmds, "ready", sync_start=True), None
    assert broker is not None
    if kind == "py":
        cmds = [[PY, CONSUMER, "--api", "fb", "--url", cam.url, "--socket", broker.socket]] * n
        return Fleet(cmds, "ready", sync_start=True), None
    sid = f"cpu{int(time.time() * 1000) % 1000000}"
    broker.add(sid, cam.url)
    cmds = [[str(RELEASE / "fb-reader"), "--socket", broker.socket, "--stream", sid,
             "--mode", "latest", "--count", "100000000", "--bare"]] * n
    try:
        broker.wait_live([sid])
        return Fleet(cmds, None, sync_start=False), sid
    except BaseException:
        broker.cli("rm", sid, check=False)
        raise


def close_fleet(fleet: Fleet, sid: Optional[str], broker: Optional[Broker]) -> None:
    fleet.close()
    if sid is not None and broker is not None:
        broker.cli("rm", sid, check=False)


def check_decoder(broker: Broker, decoder: str) -> List[str]:
    """The executables decoding under the broker, which must be ``decoder``'s:
    a camera the broker gave to another decoder would be measured under a wrong name."""
    names = decoder_names(broker)
    if DECODER_EXE[decoder] not in names:
        raise BenchError(f"cpu: --decoder {decoder} runs {names or 'nothing'} under the broker, "
                         f"not {DECODER_EXE[decoder]}")
    return names


# ---------------------------------------------------------------------------
# 1b. One reader against cv2, in paired rounds, on both cameras
# ---------------------------------------------------------------------------

#: The test camera's arguments for each ``--camera`` choice.
CAMERA_ARGS = {"like-camera": ["--like-camera"], "cheap": []}


def bench_parity(p: Dict[str, Any]) -> Dict[str, Any]:
    """N = 1 on each camera at each size, in one run: cv2, our Python reader
    and our Rust reader, one window each, in rounds.

    Section 1 measures each way in a block of consecutive windows, so a machine
    whose speed drifts during the run (a shared one does, by 10 % within an
    hour) weighs on one way more than another. Here each round runs every way
    once and the next round starts with the next way, so drift falls on all of
    them alike, and each ratio is cv2 / ours of one round: ways measured a few
    seconds apart."""
    cfg = p["parity"]
    # Through the broker's default decoder (`serve --decoder auto` runs libav
    # when it is built) when --decoders has it: the one a user gets.
    dec = "libav" if "libav" in p["decoders"] else p["decoders"][0]
    ways = ["cv2", f"py_{dec}", f"rust_{dec}"]
    cells = []
    for camera in cfg["cameras"]:
        for (w, h, fps) in cfg["sizes"]:
            size = f"{w}x{h}@{fps}"
            cam = Camera(w, h, fps, *CAMERA_ARGS[camera])
            broker: Optional[Broker] = None
            try:
                broker = Broker("--idle-grace-ms", "3000", "--decoder", dec)
                wins: Dict[str, List[Dict[str, Any]]] = {way: [] for way in ways}
                for r in range(cfg["rounds"]):
                    first = r % len(ways)
                    for way in ways[first:] + ways[:first]:
                        log(f"parity {camera} {size}: round {r + 1}/{cfg['rounds']}, {way}")
                        broker.wait_no_ffmpeg()  # nothing of the way before still decoding
                        kind = way.partition("_")[0]
                        ours = (None, None) if kind == "cv2" else (broker, dec)
                        got = cpu_config(kind, 1, cam, ours[0], cfg, 1, ours[1])
                        wins[way].append(got["windows"][0])
                # The same ways of ours once more, each beside a cv2 reader of
                # the same camera in the same window.
                side: Dict[str, List[Dict[str, Any]]] = {way: [] for way in ways[1:]}
                for r in range(cfg["rounds"]):
                    for way in (ways[1:] if r % 2 == 0 else ways[:0:-1]):
                        log(f"parity {camera} {size}: round {r + 1}/{cfg['rounds']}, {way} beside cv2")
                        broker.wait_no_ffmpeg()
                        side[way].append(side_by_side(way.partition("_")[0], cam, broker, dec, cfg))
            finally:
                if broker is not None:
                    broker.close()
                cam.close()
            cell = parity_cell(camera, size, wins, side)
            cells.append(cell)
            log(f"   {camera} {size}: cv2 {fmt(cell['ways']['cv2']['total_pct'])} %  " + "  ".join(
                f"{k} {fmt(cell['ways'][k]['total_pct'])} % (cv2/ours {fmt(cell['ratios'][k], 2)}, "
                f"{cell['rounds_no_dearer'][k]}/{cfg['rounds']} rounds; side by side "
                f"{fmt(cell['side_by_side'][k]['ratios'], 2)})" for k in cell["ratios"]))
    return {"window_s": cfg["window"], "warmup_s": cfg["warmup"], "rounds": cfg["rounds"],
            "decoders": [dec], "cells": cells}


def side_by_side(kind: str, cam: Camera, broker: Broker, decoder: str, cfg: Dict[str, Any]) -> Dict[str, Any]:
    """One window of one cv2 reader and one reader of ours (``kind``: py, rust)
    running at the same time on the same camera: the CPU % of each side over the
    same seconds, so a change of the machine's speed between windows, which the
    rounds above only spread over the ways, falls on both sides of the ratio
    alike. Both sides share the machine's two cores and caches while measured."""
    base, base_sid = consumer_fleet("cv2", 1, cam, None)
    try:
        fleet, sid = consumer_fleet(kind, 1, cam, broker)
        try:
            base.wait_ready(65)
            fleet.wait_ready(65)
            check_decoder(broker, decoder)
            groups: Dict[str, Callable[[], List[int]]] = {
                "cv2": lambda: base.pids,
                "readers": lambda: fleet.pids,
                "broker": lambda: [broker.pid],
                "ffmpeg": broker.ffmpeg_pids,
            }
            win = cpu_windows([base, fleet], groups, 1, cfg["warmup"], cfg["window"])[0]
        finally:
            close_fleet(fleet, sid, broker)
    finally:
        close_fleet(base, base_sid, None)
    if win["fps_min"] <= 0:
        raise BenchError(f"parity: a reader read no frame beside the other ({kind} and cv2)")
    win["total_pct"] = ours_total(win)
    return win


def parity_cell(camera: str, size: str, wins: Dict[str, List[Dict[str, Any]]],
                side: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Any]:
    """One camera and size: each way's figures over the rounds, and per way of
    ours the ratios cv2 / ours of each round (median [min–max]), how many
    rounds ours cost no more than cv2, and the ratio of the sums; the same for
    the side-by-side windows (:func:`side_by_side`)."""
    keys = ["total_pct", "readers_pct", "broker_pct", "ffmpeg_pct", "fps_min"]
    cell: Dict[str, Any] = {"camera": camera, "size": size, "ways": {}, "ratios": {},
                            "rounds_no_dearer": {}, "ratio_of_sums": {}, "side_by_side": {}}
    for way, ws in side.items():
        cv2_side = [x["cv2_pct"] for x in ws]
        ours_side = [x["total_pct"] for x in ws]
        ratios, no_dearer, of_sums = cv2_over_ours(cv2_side, ours_side)
        cell["side_by_side"][way] = {
            "cv2_pct": mmm(cv2_side), "ours_pct": mmm(ours_side), "ratios": ratios,
            "windows_no_dearer": no_dearer, "ratio_of_sums": of_sums, "windows": ws,
        }
    for way, ws in wins.items():
        cell["ways"][way] = {k: mmm([x.get(k, 0.0) for x in ws]) for k in keys}
        cell["ways"][way]["windows"] = ws
    cv2 = [x["total_pct"] for x in wins["cv2"]]
    for way, ws in wins.items():
        if way == "cv2":
            continue
        ours = [x["total_pct"] for x in ws]
        cell["ratios"][way], cell["rounds_no_dearer"][way], cell["ratio_of_sums"][way] = cv2_over_ours(cv2, ours)
    return cell


def cv2_over_ours(cv2: List[float], ours: List[float]) -> Tuple[Dict[str, Optional[float]], int, Optional[float]]:
    """Paired windows' cv2 / ours: median [min–max] of the ratios, how many
    windows ours cost no more than cv2, and the ratio of the sums."""
    ratios = [a / b for a, b in zip(cv2, ours) if b > 0]
    of_sums = sum(cv2) / sum(ours) if sum(ours) > 0 else None
    return mmm(ratios), sum(1 for x in ratios if x >= 1.0), of_sums


# ---------------------------------------------------------------------------
# 2. Frame age for a slow consumer
# ---------------------------------------------------------------------------

def age_run(cams: List[Camera], broker: Broker, seconds: float, work_ms: float) -> Dict[str, Any]:
    cmds = [[PY, CONSUMER, "--api", api, "--url", cam.url, "--socket", broker.socket, "--mode", "age",
             "--duration", str(seconds), "--work-ms", str(work_ms)] for api, cam in zip(("cv2", "fb"), cams)]
    fleet = Fleet(cmds, "ready", sync_start=True)
    try:
        fleet.wait_ready(60)
        fleet.wait_exit(seconds + 60)
        res = {}
        for api, extra in zip(("cv2", "fb"), fleet.extra):
            if not extra:
                raise BenchError(f"age: the {api} consumer printed no result")
            res[api] = json.loads(extra[-1])
        return res
    finally:
        fleet.close()


def age_summary(r: Dict[str, Any], period_ms: float) -> Dict[str, Any]:
    rows = r["rows"]
    if not rows:
        raise BenchError(f"age: no readable stamp from {r['api']} ({r['unreadable']} unreadable)")
    ages = [x[1] for x in rows]
    n = len(ages)
    last10 = ages[-max(1, n // 10):]
    out = {
        "reads": n, "unreadable": r["unreadable"], "failed_reads": r["failed_reads"],
        "median_ms": statistics.median(ages), "p90_ms": pctl(ages, 0.9), "p99_ms": pctl(ages, 0.99),
        "max_ms": max(ages), "min_ms": min(ages), "last10pct_median_ms": statistics.median(last10),
        "series": [[round(x[0], 3), round(x[1], 1)] for x in rows],
    }
    pub = [x[2] for x in rows if len(x) > 2]
    if pub:
        out.update(since_publish_median_ms=statistics.median(pub), since_publish_p99_ms=pctl(pub, 0.99),
                   since_publish_max_ms=max(pub), frame_period_ms=period_ms)
    return out


def bench_age(p: Dict[str, Any]) -> Dict[str, Any]:
    cfg = p["age"]
    w, h, fps = cfg["size"]
    # One camera per reader, so that a reader that lags (and its RTSP session
    # backing up) cannot slow down the frames the other one gets.
    cams: List[Camera] = []
    broker = None
    try:
        cams = [Camera(w, h, fps, "--stamp"), Camera(w, h, fps, "--stamp")]
        broker = Broker("--idle-grace-ms", "3000")
        log(f"age: both consumers keeping up (no work), {cfg['keepup_seconds']:.0f} s")
        keep = age_run(cams, broker, cfg["keepup_seconds"], 0)
        broker.wait_no_ffmpeg()
        log(f"age: both consumers with {cfg['work_ms']} ms of work per frame, {cfg['seconds']:.0f} s")
        slow = age_run(cams, broker, cfg["seconds"], cfg["work_ms"])
    finally:
        if broker is not None:
            broker.close()
        for c in cams:
            c.close()
    period = 1000.0 / fps
    out: Dict[str, Any] = {"size": f"{w}x{h}@{fps}", "work_ms": cfg["work_ms"], "seconds": cfg["seconds"],
                           "frame_period_ms": period}
    for api in ("cv2", "fb"):
        out[api] = age_summary(slow[api], period)
        k = age_summary(keep[api], period)
        k.pop("series")
        out[f"{api}_keepup"] = k
    # The pipeline's own latency (encode, RTP, decode) is the keeping-up median;
    # what the slow consumer adds on top of it is the staleness we compare.
    for api in ("cv2", "fb"):
        out[f"{api}_excess_median_ms"] = out[api]["median_ms"] - out[f"{api}_keepup"]["median_ms"]
    return out


# ---------------------------------------------------------------------------
# 3, 4. fb-bench (latency, Rust copy) and bench_read.py (Python read cost)
# ---------------------------------------------------------------------------

def run_tool(cmd: List[str], timeout: float, cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None) -> str:
    log("$ " + " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    if r.returncode != 0:
        raise BenchError(f"{Path(cmd[0]).name} failed ({r.returncode}):\n{r.stderr[-2000:]}\n{r.stdout[-2000:]}")
    return r.stdout


def bench_latency(p: Dict[str, Any], tmp: Path) -> Dict[str, Any]:
    out = tmp / "latency.json"
    run_tool([str(RELEASE / "fb-bench"), "--only", "latency", "--lat-readers", p["latency"]["readers"],
              *p["latency"]["fb_args"], "--json", str(out)], timeout=900)
    js = json.loads(out.read_text())["latency"]
    if "error" in js or not js.get("by_readers"):
        raise BenchError(f"fb-bench latency: {js}")
    return js


def bench_copy(p: Dict[str, Any], tmp: Path) -> Dict[str, Any]:
    out = tmp / "copy.json"
    run_tool([str(RELEASE / "fb-bench"), "--only", "copy", *p["copy"]["fb_args"], "--json", str(out)], timeout=600)
    rust = json.loads(out.read_text())["copy"]
    if not isinstance(rust, list) or not rust:
        raise BenchError(f"fb-bench copy: {rust}")
    pyout = tmp / "pyread.json"
    env = {**os.environ, "FRAMEBROKER_BIN": str(RELEASE / "framebroker")}
    run_tool([PY, "bench/bench_read.py", "--only", "read", *p["copy"]["py"], "--json", str(pyout)],
             timeout=600, cwd=REPO / "client-py", env=env)
    py = json.loads(pyout.read_text())["read"]
    if not py:
        raise BenchError("bench_read.py produced no data")
    # The Python read path's fences (aarch64's path), forced here beside the own path.
    fenceout = tmp / "pyfence.json"
    run_tool([PY, "bench/bench_read.py", "--only", "fence", *p["copy"]["py"], "--json", str(fenceout)],
             timeout=600, cwd=REPO / "client-py", env=env)
    fence = json.loads(fenceout.read_text())["fence"]
    if not fence:
        raise BenchError("bench_read.py --only fence produced no data")
    return {"rust": rust, "python": py, "python_fence": fence}


# ---------------------------------------------------------------------------
# 5, 7. The gateway (gateway-bench), and the memory soak
# ---------------------------------------------------------------------------

def bench_gateway(p: Dict[str, Any], tmp: Path) -> Dict[str, Any]:
    g = p["gateway"]
    w, h, fps = g["size"]
    out = tmp / "gateway.json"
    run_tool([str(RELEASE / "gateway-bench"), "--width", str(w), "--height", str(h), "--fps", str(fps),
              "--subscribers", g["subs"], "--reps", str(p["reps"]), "--seconds", str(g["seconds"]),
              "--warmup", str(g["warmup"]), "--snapshots", str(g["snapshots"]),
              "--poll-seconds", str(g["poll_seconds"]), "--pollers", g["pollers"], "--json", str(out)],
             timeout=1800)
    js = json.loads(out.read_text())
    if not js.get("subscribers"):
        raise BenchError("gateway-bench produced no data")
    return js


def bench_memory(p: Dict[str, Any], tmp: Path) -> Dict[str, Any]:
    m = p["memory"]
    w, h, fps = m["size"]
    seconds = max(6.0, m["minutes"] * 60)
    interval = min(10.0, seconds / 4)
    out = tmp / "memory.json"
    run_tool([str(RELEASE / "gateway-bench"), "--width", str(w), "--height", str(h), "--fps", str(fps),
              "--subscribers", str(m["subscribers"]), "--reps", "1", "--seconds", "2", "--warmup", "1",
              "--snapshots", "0", "--poll-seconds", "0", "--soak-seconds", str(seconds),
              "--soak-interval", str(interval), "--soak-subscribers", str(m["subscribers"]),
              "--json", str(out)], timeout=seconds + 300)
    soak = json.loads(out.read_text()).get("soak")
    if not soak or len(soak.get("samples", [])) < 2:
        raise BenchError("memory soak produced no samples")
    s = soak["samples"]
    summary = {}
    for k in ("gateway_rss_kib", "gateway_anon_kib", "broker_rss_kib", "broker_anon_kib"):
        vals = [x[k] for x in s]
        summary[k] = {"start": vals[0], "end": vals[-1], "peak": max(vals)}
    # Growth over the second half: the first minutes include buffers filling up.
    half = [x for x in s if x["t_s"] >= s[-1]["t_s"] / 2]
    for k in ("gateway_anon_kib", "broker_anon_kib"):
        summary[k]["second_half_growth"] = half[-1][k] - half[0][k]
    client_fps = [x["fps_per_client"] for x in s if x["fps_per_client"] is not None]
    return {"size": f"{w}x{h}@{fps}", "subscribers": m["subscribers"],
            "seconds": seconds, "interval_s": interval, "summary": summary, "samples": s,
            "fps_per_client": mmm(client_fps)}


# ---------------------------------------------------------------------------
# 6. Scale: many cameras on one broker
# ---------------------------------------------------------------------------

def bench_scale(p: Dict[str, Any]) -> Dict[str, Any]:
    cfg, reps = p["scale"], p["reps"]
    w, h, fps = cfg["size"]
    # One camera process, one encoder (a shared GStreamer media): every broker
    # stream is its own RTSP session and its own ffmpeg decode of the same URL.
    cam = Camera(w, h, fps, *p["camera_args"])
    broker = None
    rows = []
    try:
        broker = Broker("--max-streams", "64")
        rss_idle = procs.rss_kib(broker.pid)
        for n in cfg["counts"]:
            log(f"scale: {n} cameras {w}x{h}@{fps}")
            ids = [f"cam{n}x{i}" for i in range(n)]
            for sid in ids:
                broker.add(sid, cam.url, "--allow-duplicate")
            try:
                broker.wait_live(ids, timeout=60 + 5 * n)
                time.sleep(cfg["warmup"])
                wins = []
                for _ in range(reps):
                    f0 = {sid: broker.stats(sid)["frames_written"] for sid in ids}
                    ff = broker.ffmpeg_pids()
                    c0 = (procs.cpu_seconds([broker.pid]), procs.cpu_seconds(ff), procs.cpu_seconds([cam.pid]))
                    t0 = time.monotonic()
                    time.sleep(cfg["window"])
                    c1 = (procs.cpu_seconds([broker.pid]), procs.cpu_seconds(ff), procs.cpu_seconds([cam.pid]))
                    wall = time.monotonic() - t0
                    f1 = {sid: broker.stats(sid)["frames_written"] for sid in ids}
                    per = [(f1[s] - f0[s]) / wall for s in ids]
                    b, f, c = ((y - x) / wall * 100 for x, y in zip(c0, c1))
                    wins.append({"broker_pct": b, "ffmpeg_pct": f, "camera_pct": c,
                                 "per_camera_pct": (b + f) / n, "fps_min": min(per), "fps_mean": statistics.mean(per),
                                 "ffmpeg_processes": len(ff)})
                if max(x["fps_min"] for x in wins) <= 0:
                    raise BenchError(f"scale: a stream published no frame in any window ({n} cameras)")
                rss = procs.rss_kib(broker.pid)
                seg = broker.segments()
                host_load = procs.loadavg()[0]
            finally:
                for sid in ids:
                    broker.cli("rm", sid, check=False)
            broker.wait_no_ffmpeg()
            row = {"cameras": n, "broker_rss_anon_kib": rss.get("RssAnon"), "broker_rss_kib": rss.get("VmRSS"),
                   "broker_rss_shmem_kib": rss.get("RssShmem"),
                   "shm_bytes_per_camera": statistics.mean(seg.values()) if seg else None,
                   "shm_segments": len(seg), "loadavg_1m": host_load, "windows": wins}
            for k in ("broker_pct", "ffmpeg_pct", "camera_pct", "per_camera_pct", "fps_min", "fps_mean"):
                row[k] = mmm([x[k] for x in wins])
            rows.append(row)
            log(f"   broker {fmt(row['broker_pct'])} %, ffmpeg {fmt(row['ffmpeg_pct'])} %, "
                f"fps min {fmt(row['fps_min'])}, broker RssAnon {row['broker_rss_anon_kib']} KiB")
    finally:
        if broker is not None:
            broker.close()
        cam.close()
    return {"size": f"{w}x{h}@{fps}", "broker_rss_idle": rss_idle, "window_s": cfg["window"], "reps": reps,
            "rows": rows}


# ---------------------------------------------------------------------------
# The table printed at the end
# ---------------------------------------------------------------------------

def print_cpu(cpu: Dict[str, Any]) -> None:
    """Section 1: one line per decoder under each (camera, N), then where ours goes."""
    P = print
    P("1. Host CPU, % of one core (camera excluded), and fps per consumer")
    P(f"   {'camera':<14}{'N':>3}  {'cv2 x N':<20}{'decoder':<8}{'ours, Python':<20}{'ours, Rust':<20}"
      f"{'cv2/ours (Py)':<18}{'cv2/ours (Rust)':<18}{'goal':>5}  fps cv2/py/rust")
    for r in cpu["rows"]:
        for i, (sfx, dec) in enumerate(variants(r)):
            py, ru = r["py" + sfx], r["rust" + sfx]
            head = f"{r['size']:<14}{r['n']:>3}  {fmt(r['cv2']['total_pct']):<20}" if i == 0 else " " * 39
            P(f"   {head}{dec:<8}{fmt(py['total_pct']):<20}{fmt(ru['total_pct']):<20}"
              f"{fmt(r['ratio_cv2_over_py' + sfx], 2):<18}{fmt(r.get('ratio_cv2_over_rust' + sfx), 2):<18}"
              f"{r['goal_ratio']:>5.1f}  {r['cv2']['fps_min']['median']:.1f}/{py['fps_min']['median']:.1f}/"
              f"{ru['fps_min']['median']:.1f}")
    P("   where ours goes, median % of one core: readers / broker / decoder")
    for r in cpu["rows"]:
        for sfx, dec in variants(r):
            split = ["/".join(f"{med(r[kind + sfx][k]):.1f}" for k in ("readers_pct", "broker_pct", "ffmpeg_pct"))
                     for kind in ("py", "rust")]
            P(f"   {r['size']:<14}{r['n']:>3}  {dec:<8}Python {split[0]:<18}Rust {split[1]}")
    for f in cpu.get("decode_floor", []):
        P(f"   {f['size']:<14}the broker's ffmpeg alone, output thrown away: {fmt(f['ffmpeg_null_pct'])} %")


def print_parity(par: Dict[str, Any]) -> None:
    """Section 1b: one line per camera and size, each way of ours beside cv2."""
    P = print
    P(f"\n1b. One reader against cv2 (N = 1), {par['rounds']} rounds of one {par['window_s']:.0f} s window per way, "
      "order rotating; % of one core, median [min–max] over the rounds")
    P("    cv2/ours: median [min–max] of the rounds' ratios; no dearer: rounds where ours cost <= cv2")
    for c in par["cells"]:
        cv = c["ways"]["cv2"]
        P(f"   {c['camera']:<12}{c['size']:<14}cv2 {fmt(cv['total_pct'])}  fps {med(cv['fps_min']):.1f}")
        for way, r in c["ratios"].items():
            w = c["ways"][way]
            split = "/".join(f"{med(w[k]):.1f}" for k in ("readers_pct", "broker_pct", "ffmpeg_pct"))
            P(f"   {'':<26}{way:<12}{fmt(w['total_pct']):<20}({split})  cv2/ours {fmt(r, 2):<18}"
              f"no dearer {c['rounds_no_dearer'][way]}/{par['rounds']}  of the sums {c['ratio_of_sums'][way]:.2f}  "
              f"fps {med(w['fps_min']):.1f}")
            sb = c.get("side_by_side", {}).get(way)
            if sb:
                P(f"   {'':<26}{'':<12}side by side: cv2 {fmt(sb['cv2_pct'])}, ours {fmt(sb['ours_pct'])}  "
                  f"cv2/ours {fmt(sb['ratios'], 2)}  no dearer {sb['windows_no_dearer']}/{len(sb['windows'])}  "
                  f"of the sums {sb['ratio_of_sums']:.2f}")


def print_table(res: Dict[str, Any]) -> None:
    P = print
    P(f"\nframebroker benchmarks — {res['date']} — {'quick' if res['quick'] else 'full'} run; "
      f"load average at start {res['loadavg_start'][0]:.2f}, at end {res['loadavg_end'][0]:.2f}")
    P(f"machine: {res['machine']['cpu_model']}, {res['machine']['cores']} cores; "
      f"figures: median [min–max] over {res['reps']} repetitions\n")
    s = res["sections"]
    if "cpu" in s and "rows" in s["cpu"]:
        print_cpu(s["cpu"])
    if "parity" in s and "cells" in s["parity"]:
        print_parity(s["parity"])
    if "age" in s and "cv2" in s["age"]:
        a = s["age"]
        P(f"\n2. Frame age at read time, {a['size']} camera, {a['work_ms']} ms of work per frame, {a['seconds']:.0f} s")
        for api, name in (("cv2", "cv2.VideoCapture"), ("fb", "framebroker")):
            x, k = a[api], a[f"{api}_keepup"]
            P(f"   {name:<17} median {x['median_ms']:8.1f} ms  p99 {x['p99_ms']:8.1f}  max {x['max_ms']:8.1f}  "
              f"last 10 % {x['last10pct_median_ms']:8.1f}   (keeping up: median {k['median_ms']:.1f} ms)")
        if "since_publish_median_ms" in a["fb"]:
            f = a["fb"]
            P(f"   framebroker, age since the broker published: median {f['since_publish_median_ms']:.1f} ms, "
              f"p99 {f['since_publish_p99_ms']:.1f}, max {f['since_publish_max_ms']:.1f} "
              f"(frame period {a['frame_period_ms']:.1f} ms)")
    if "latency" in s and "by_readers" in s["latency"]:
        lat = s["latency"]
        P(f"\n3. Publish->read latency, 640x480@{lat['fps']} (µs); memcpy of one frame {fmt(lat['memcpy_us'])} µs")
        for r in lat["by_readers"]:
            P(f"   {r['readers']:>3} readers: median {fmt(r['age_median_us'])}  p99 {fmt(r['age_p99_us'])}  "
              f"max {fmt(r['age_max_us'])}")
    if "copy" in s and "rust" in s["copy"]:
        P("\n4. Read cost per frame (µs)")
        for r in s["copy"]["rust"]:
            P(f"   Rust {r['size']:<10} latest_into {fmt(r['latest_into_us'])}  view {fmt(r['view_sum_us'], 2)}  "
              f"memcpy after wake-up {fmt(r['memcpy_after_wakeup_us'])}  memcpy hot {fmt(r['memcpy_hot_us'])}")
        for r in s["copy"]["python"]:
            u = r["us"]
            P(f"   Python {r['width']}x{r['height']:<6} read(buf) {fmt(u['read(buf)'])}  read() {fmt(u['read()'])}  "
              f"copyto after sleep {fmt(u['copyto after sleep'])}  copyto hot {fmt(u['copyto hot'])}")
    if "gateway" in s and "subscribers" in s["gateway"]:
        g = s["gateway"]
        P(f"\n5. Gateway, {g['width']}x{g['height']}@{g['fps']} JPEG over WebSocket")
        for r in g["subscribers"]:
            P(f"   {r['subscribers']:>4} clients: gateway CPU {fmt(r['gateway_cpu_pct'])} %  fps per client "
              f"{fmt(r['fps_mean'])} (slowest {fmt(r['fps_min'])})  JPEG encode {fmt(r['jpeg_encode_ms'], 2)} ms")
        if g.get("snapshot"):
            sn = g["snapshot"]
            P(f"   snapshot.jpg: p50 {sn['p50_ms']:.2f} ms, p95 {sn['p95_ms']:.2f}, max {sn['max_ms']:.2f}")
        for q in g.get("polling", []):
            P(f"   /frame polling, {q['pollers']} pollers: {q['requests_per_s']:.0f} req/s, {q['mb_per_s']:.0f} MB/s")
    if "scale" in s and "rows" in s["scale"]:
        sc = s["scale"]
        P(f"\n6. Scale, {sc['size']} cameras on one broker")
        for r in sc["rows"]:
            P(f"   {r['cameras']:>3} cameras: broker RssAnon {r['broker_rss_anon_kib']} KiB, shm/camera "
              f"{(r['shm_bytes_per_camera'] or 0) / 2**20:.2f} MiB, broker {fmt(r['broker_pct'])} %, "
              f"ffmpeg {fmt(r['ffmpeg_pct'])} %, per camera {fmt(r['per_camera_pct'])} %, fps min {fmt(r['fps_min'])}")
    if "memory" in s and "summary" in s["memory"]:
        m = s["memory"]
        P(f"\n7. Memory over {m['seconds'] / 60:.1f} min with {m['subscribers']} WebSocket clients (KiB)")
        for k, v in m["summary"].items():
            P(f"   {k:<18} start {v['start']:>8}  end {v['end']:>8}  peak {v['peak']:>8}"
              + (f"  growth over 2nd half {v['second_half_growth']:+d}" if "second_half_growth" in v else ""))
    for name, v in s.items():
        if "error" in v:
            P(f"\n{name}: FAILED: {v['error'].splitlines()[0] if v['error'] else ''}")


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def build(decoders: Sequence[str]) -> None:
    cmds = [["cargo", "build", "--release", "-p", "framebroker", "-p", "framebroker-gateway",
             "-p", "framebroker-tests", "--bins"]]
    if "libav" in decoders:
        # Its own call: the feature links libavcodec, which the other binaries do not need.
        cmds.append(["cargo", "build", "--release", "-p", "framebroker-decoder", "--features", "libav"])
    for cmd in cmds:
        log("$ " + " ".join(cmd))
        r = subprocess.run(cmd, cwd=REPO, timeout=3600)
        if r.returncode != 0:
            raise SystemExit("bench: the release build failed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, every section, ~2 minutes")
    ap.add_argument("--only", default="", help="comma-separated sections: " + ",".join(SECTIONS))
    ap.add_argument("--memory-minutes", type=float, default=None,
                    help="length of the memory soak (default 10, --quick 0.2)")
    ap.add_argument("--no-build", action="store_true", help="use the release binaries as they are")
    ap.add_argument("--no-report", action="store_true", help="do not touch docs/BENCHMARKS.md and docs/bench/")
    ap.add_argument("--report-only", type=Path, metavar="JSON", help="regenerate the report from a results file")
    ap.add_argument("--out", type=Path, help="results file (default bench/results/<date>.json)")
    ap.add_argument("--camera", choices=["like-camera", "cheap"], default="like-camera",
                    help="stream of the cpu and scale sections: like a real IP camera (H.264 High, motion, "
                         "noise; default) or the cheapest H.264 there is (static pattern, x264 ultrafast)")
    ap.add_argument("--decoders", default="ffmpeg",
                    help="comma-separated decoders of the cpu section, each a `framebroker serve --decoder` "
                         f"({', '.join(DECODERS)}; default ffmpeg): our readers are measured through each, cv2 "
                         "once; the first one's figures keep the plain keys (py, rust, ...), the others' are "
                         "suffixed (py_libav, ...)")
    ap.add_argument("--parity-rounds", type=int, default=None,
                    help="rounds of the parity section (default 6, --quick 2)")
    ap.add_argument("--cpu-n", default="",
                    help="comma-separated N of the cpu section (default 1,2,4,8,16; --quick 1,2), e.g. 1 for a "
                         "before/after of one reader")
    a = ap.parse_args()

    if a.report_only is not None:
        import report
        report.write(json.loads(a.report_only.read_text()), a.report_only)
        return 0
    only = [x.strip() for x in a.only.split(",") if x.strip()] or SECTIONS
    bad = [x for x in only if x not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    asked = [x.strip() for x in a.decoders.split(",") if x.strip()]
    bad = [x for x in asked if x not in DECODERS]
    if bad or not asked:
        ap.error(f"--decoders: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(DECODERS)}")
    decoders = [d for d in DECODERS if d in asked]
    if a.memory_minutes is not None and not (0 < a.memory_minutes <= 24 * 60):
        ap.error("--memory-minutes must be in (0, 1440]")
    if not a.no_report:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            ap.error("matplotlib is missing: .venv/bin/pip install matplotlib (or pass --no-report)")

    if not a.no_build:
        build(decoders)
    bins = ["framebroker", "framebroker-gateway", "fb-reader", "fb-bench", "gateway-bench"]
    for b in bins + (["framebroker-decoder"] if "libav" in decoders else []):
        if not (RELEASE / b).exists():
            raise SystemExit(f"bench: {RELEASE / b} is missing (run without --no-build)")

    p = plan(a.quick, a.memory_minutes)
    p["camera_args"] = CAMERA_ARGS[a.camera]
    p["decoders"] = decoders
    if a.cpu_n:
        try:
            p["cpu"]["n"] = [int(x) for x in a.cpu_n.split(",")]
        except ValueError:
            ap.error("--cpu-n takes numbers, e.g. 1,2,4")
        if any(n < 1 or n > 64 for n in p["cpu"]["n"]):
            ap.error("--cpu-n: each N in 1..64")
    if a.parity_rounds is not None:
        if not 1 <= a.parity_rounds <= 50:
            ap.error("--parity-rounds must be in 1..50")
        p["parity"]["rounds"] = a.parity_rounds
    started = time.monotonic()
    now = dt.datetime.now(dt.timezone.utc)
    res: Dict[str, Any] = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"), "quick": a.quick, "reps": p["reps"],
        "command": "bench/run.py " + " ".join(sys.argv[1:]),
        "camera": a.camera,
        "decoders": decoders,
        "binaries": str(RELEASE),
        "machine": procs.machine(), "loadavg_start": procs.loadavg(), "sections": {},
    }
    log(f"machine {res['machine']['cpu_model']}, load average {res['loadavg_start']}")
    tmp = Path(tempfile.mkdtemp(prefix="fb-bench-out-"))
    runners: Dict[str, Callable[[], Dict[str, Any]]] = {
        "cpu": lambda: bench_cpu(p),
        "parity": lambda: bench_parity(p),
        "age": lambda: bench_age(p),
        "latency": lambda: bench_latency(p, tmp),
        "copy": lambda: bench_copy(p, tmp),
        "gateway": lambda: bench_gateway(p, tmp),
        "scale": lambda: bench_scale(p),
        "memory": lambda: bench_memory(p, tmp),
    }
    ok = True
    for name in SECTIONS:
        if name not in only:
            continue
        t0 = time.monotonic()
        log(f"section {name}")
        try:
            out = runners[name]()
            out["elapsed_s"] = round(time.monotonic() - t0, 1)
            out["loadavg_after"] = procs.loadavg()
            res["sections"][name] = out
        except KeyboardInterrupt:
            res["sections"][name] = {"error": "interrupted"}
            ok = False
            break
        except Exception as e:  # a failing section does not stop the others
            log(f"section {name} FAILED: {e}")
            traceback.print_exc()
            res["sections"][name] = {"error": f"{type(e).__name__}: {e}"}
            ok = False
    res["loadavg_end"] = procs.loadavg()
    res["elapsed_s"] = round(time.monotonic() - started, 1)

    out_path = a.out or (REPO / "bench" / "results" / f"{now.strftime('%Y%m%d-%H%M%S')}{'-quick' if a.quick else ''}.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(res, indent=1) + "\n")
    print_table(res)
    print(f"\nresults: {out_path} ({res['elapsed_s']:.0f} s)")
    if not a.no_report:
        import report
        report.write(res, out_path)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
