"""Writes ``docs/BENCHMARKS.md`` and its plots (``docs/bench/*.png``) from one
results file of ``bench/run.py``. Every number in the text comes from that file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PLOTS = DOCS / "bench"

COLORS = {"cv2": "#c0392b", "py": "#2471a3", "rust": "#1e8449", "fb": "#2471a3"}


def fmt(s: Optional[Dict[str, Any]], prec: int = 1) -> str:
    if not s or s.get("median") is None:
        return "n/a"
    return f"{s['median']:.{prec}f} [{s['min']:.{prec}f}–{s['max']:.{prec}f}]"


def med(s: Optional[Dict[str, Any]]) -> float:
    return float("nan") if not s or s.get("median") is None else float(s["median"])


def variants(row: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(key suffix, decoder) of each decoder a cpu row measured (``bench/run.py
    --decoders``): ("", "ffmpeg") and ("_libav", "libav") for ``py``/``py_libav``.
    Rows from before ``--decoders`` have no ``decoder_of``: ffmpeg, plain keys."""
    return [(k[2:], d) for k, d in row.get("decoder_of", {"py": "ffmpeg"}).items() if k.startswith("py")]


def via(vs: List[Tuple[str, str]], decoder: str) -> str:
    """How a label names the decoder: not at all when ffmpeg, as always, is the only one."""
    return "" if [d for _, d in vs] == ["ffmpeg"] else f" via {decoder}"


def decoder_label(decoder: str) -> str:
    """The process a decoder's CPU is read from."""
    return "ffmpeg" if decoder == "ffmpeg" else f"framebroker-decoder ({decoder})"


def err(ss: List[Dict[str, Any]]):
    lo = [med(s) - (s["min"] if s["min"] is not None else med(s)) for s in ss]
    hi = [(s["max"] if s["max"] is not None else med(s)) - med(s) for s in ss]
    return [lo, hi]


def plain_log(axis) -> None:
    """Tick labels 10, 100, 1000 instead of 10^1, 10^2, 10^3 on a log axis."""
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))


def save(fig, name: str) -> str:
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(PLOTS / name, dpi=90)
    plt.close(fig)
    return f"bench/{name}"


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------

def plot_cpu(cpu: Dict[str, Any], cores: int) -> str:
    sizes = list(dict.fromkeys(r["size"] for r in cpu["rows"]))
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.6 * len(sizes), 3.6), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        rows = [r for r in cpu["rows"] if r["size"] == size]
        ns = [r["n"] for r in rows]
        vs = variants(rows[0])
        series = [("cv2", "N × cv2.VideoCapture", "o", "-")]
        for i, (sfx, dec) in enumerate(vs):
            marker, ls = ("o", "-") if i == 0 else ("s", "--")
            series += [("py" + sfx, f"ours{via(vs, dec)}: N × Python VideoCapture", marker, ls),
                       ("rust" + sfx, f"ours{via(vs, dec)}: N × Rust reader", marker, ls)]
        for key, label, marker, ls in series:
            ss = [r[key]["total_pct"] for r in rows]
            ax.errorbar(ns, [med(s) for s in ss], yerr=err(ss), marker=marker, ms=4, capsize=3, ls=ls,
                        color=COLORS[key.split("_")[0]], label=label)
        ax.axhline(100 * cores, color="grey", ls=":", lw=1)
        ax.text(ns[0], 100 * cores, f" all {cores} cores", va="bottom", fontsize=8, color="grey")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("consumers of one camera (N)")
        ax.set_ylabel("host CPU, % of one core")
        ax.set_title(f"{size} RTSP camera", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8 if len(variants(cpu["rows"][0])) == 1 else 7, loc="center left")
    return save(fig, "cpu.png")


def plot_age(age: Dict[str, Any]) -> str:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for api, label in (("cv2", "cv2.VideoCapture"), ("fb", "framebroker read()")):
        s = age[api]["series"]
        a1.plot([x[0] for x in s], [x[1] for x in s], ".", ms=2.5, color=COLORS[api], label=label)
        v = sorted(x[1] for x in s)
        a2.plot(v, [i / len(v) for i in range(1, len(v) + 1)], color=COLORS[api], label=label)
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    a1.set_yscale("log")
    plain_log(a1.yaxis)
    a1.set_xlabel("time since start, s")
    a1.set_ylabel("frame age at read, ms (log)")
    a1.axhline(age["frame_period_ms"], color="grey", ls=":", lw=1)
    a1.set_title(f"{age['work_ms']:.0f} ms of work per frame, {age['size']}", fontsize=10)
    a1.legend(fontsize=8)
    a2.set_xscale("log")
    plain_log(a2.xaxis)
    a2.set_xlabel("frame age at read, ms (log)")
    a2.set_ylabel("fraction of reads")
    a2.set_title("distribution", fontsize=10)
    return save(fig, "age.png")


def plot_latency(lat: Dict[str, Any]) -> str:
    rows = lat["by_readers"]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    width = 0.25
    xs = range(len(rows))
    for k, (key, label, c) in enumerate((("age_median_us", "median", "#2471a3"), ("age_p99_us", "p99", "#d68910"),
                                         ("age_max_us", "max", "#c0392b"))):
        ss = [r[key] for r in rows]
        ax.bar([x + (k - 1) * width for x in xs], [med(s) for s in ss], width, yerr=err(ss), capsize=2,
               label=label, color=c)
    ax.axhline(med(lat["memcpy_us"]), color="black", ls="--", lw=1, label="one memcpy of the frame")
    ax.set_yscale("log")
    plain_log(ax.yaxis)
    ax.set_xticks(list(xs), [f"{r['readers']} reader{'s' if r['readers'] > 1 else ''}" for r in rows])
    ax.set_ylabel("publish → read, µs (log)")
    ax.set_title(f"640x480@{lat['fps']}, reader processes in sequential mode", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return save(fig, "latency.png")


def plot_gateway(g: Dict[str, Any]) -> str:
    rows = g["subscribers"]
    ns = [r["subscribers"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ss = [r["gateway_cpu_pct"] for r in rows]
    ax.errorbar(ns, [med(s) for s in ss], yerr=err(ss), marker="o", capsize=3, color="#2471a3",
                label="gateway CPU, % of one core")
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("WebSocket clients (JPEG)")
    ax.set_ylabel("gateway CPU, %", color="#2471a3")
    ax.set_ylim(bottom=0)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    for key, label, ls in (("fps_mean", "fps per client (mean)", "-"), ("fps_min", "fps, slowest client", "--")):
        ss = [r[key] for r in rows]
        ax2.errorbar(ns, [med(s) for s in ss], yerr=err(ss), marker="s", ms=4, capsize=3, ls=ls,
                     color="#1e8449", label=label)
    ax2.set_ylim(0, g["fps"] * 1.15)
    ax2.set_ylabel("frames per second per client", color="#1e8449")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower left")
    ax.set_title(f"{g['width']}x{g['height']}@{g['fps']}, JPEG quality {g['quality']}", fontsize=10)
    return save(fig, "gateway.png")


def plot_scale(sc: Dict[str, Any], cores: int) -> str:
    rows = sc["rows"]
    ns = [r["cameras"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    bottom = [0.0] * len(rows)
    for key, label, c in (("ffmpeg_pct", "ffmpeg decoders", "#7f8c8d"), ("broker_pct", "broker", "#2471a3"),
                          ("camera_pct", "test camera (excluded)", "#e5e8e8")):
        v = [med(r[key]) for r in rows]
        ax.bar([str(n) for n in ns], v, bottom=bottom, label=label, color=c, edgecolor="#999", lw=0.5)
        bottom = [b + x for b, x in zip(bottom, v)]
    ax.axhline(100 * cores, color="grey", ls=":", lw=1)
    ax.set_xlabel(f"cameras ({sc['size']})")
    ax.set_ylabel("CPU, % of one core")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    return save(fig, "scale.png")


def plot_memory(m: Dict[str, Any]) -> str:
    s = m["samples"]
    t = [x["t_s"] / 60 for x in s]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for key, label, c in (("gateway_rss_kib", "gateway RSS", "#c0392b"), ("gateway_anon_kib", "gateway RssAnon", "#e6b0aa"),
                          ("broker_rss_kib", "broker RSS", "#2471a3"), ("broker_anon_kib", "broker RssAnon", "#a9cce3")):
        ax.plot(t, [x[key] / 1024 for x in s], marker=".", color=c, label=label)
    ax.set_xlabel("minutes under load")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, "memory.png")


# ---------------------------------------------------------------------------
# The document
# ---------------------------------------------------------------------------

def decode_ratio(r: Dict[str, Any], sfx: str = "") -> float:
    """Decode work saved, per delivered frame: N cv2 processes (each decodes, so
    their whole CPU is decode work) against framebroker's one decoder process
    (ffmpeg, or framebroker-decoder for the ``_libav`` keys)."""
    cv2 = med(r["cv2"]["total_pct"]) / max(med(r["cv2"]["fps_mean"]), 1e-9)
    ours = med(r["py" + sfx]["ffmpeg_pct"]) / max(med(r["py" + sfx]["fps_mean"]), 1e-9)
    return cv2 / ours if ours > 0 else float("nan")


def goal_sentence(rows: List[Dict[str, Any]], met: List[int], missed: List[int],
                  floor: Optional[Dict[str, Any]], sfx: str = "") -> str:
    """The decode-work goal (saving ≥ 0.8·N) in words: where it is met, and by how much it is not."""
    k = [decode_ratio(r, sfx) / r["n"] for r in rows]
    txt = (f"Decode work saved: {min(k):.2f}–{max(k):.2f}·N against the goal of 0.8·N — "
           + ("met for every N." if not missed else
              f"met for N = {', '.join(map(str, met))}, missed for N = {', '.join(map(str, missed))}."
              if met else "missed for every N, by the hand-over above."))
    if floor is not None and med(floor["ffmpeg_null_pct"]):
        kd = [med(r["cv2"]["total_pct"]) / max(med(r["cv2"]["fps_mean"]), 1e-9)
              / (med(floor["ffmpeg_null_pct"]) / max(med(r["py"]["fps_mean"]), 1e-9)) / r["n"] for r in rows]
        txt += (f" Counting the decode alone (the `-f null` ffmpeg), the saving is "
                f"{min(kd):.2f}–{max(kd):.2f}·N"
                + (": the one decode is shared as intended; what misses is the pipe." if missed and min(kd) >= 0.8
                   else "."))
    return txt


def read_cost_pct(copy: Optional[Dict[str, Any]], size: str, fps: float) -> Optional[float]:
    """% of one core that Python's read() alone costs at ``fps`` (section 4)."""
    for row in (copy or {}).get("python", []) or []:
        if f"{row['width']}x{row['height']}" == size and row["us"].get("read()", {}).get("median"):
            return row["us"]["read()"]["median"] * fps / 1e4
    return None


def section_cpu(cpu: Dict[str, Any], cores: int, out: List[str], camera: str = "cheap",
                copy: Optional[Dict[str, Any]] = None) -> None:
    vs = variants(cpu["rows"][0])
    out.append("## 1. Host CPU: N programs watching one camera\n")
    out.append(
        "Each program reads the same RTSP camera as fast as frames come. **cv2** = N processes each with a "
        "plain `cv2.VideoCapture(url)` (N RTSP sessions, N decoders); **ours, Python** = N processes with "
        "`framebroker.VideoCapture(url)`; **ours, Rust** = N `fb-reader` processes (`latest` mode into one "
        "buffer, `--bare`). Each program tells the runner of every frame with one line on a pipe, and does nothing "
        "else with it. Total = CPU of the readers "
        "+ broker + its ffmpeg (ours), or of the N cv2 processes; the test camera is the same for all and is "
        f"shown apart. {cpu['reps']} consecutive {cpu['window_s']:g} s windows after {cpu['warmup_s']:g} s of "
        "warm-up per configuration; CPU is user + system time of every process (psutil), in % of one core "
        f"({cores} cores = {100 * cores} %). fps = frames per second delivered to the slowest consumer.\n")
    if via(vs, vs[0][1]):
        out.append(
            "Ours is measured through each decoder of `framebroker serve --decoder` ("
            + ", ".join(f"`{d}`" for _, d in vs) + "; cv2 once per camera and N, shared by all): **ffmpeg** = the "
            "system ffmpeg, frames over a pipe; **libav** = framebroker's own decoder process "
            "(`framebroker-decoder`, libavcodec), frames through shared memory. Where ffmpeg is named below, "
            "read the decoder process of that configuration.\n")
    cpu_table(cpu, vs, out)
    out.append(
        "\n*Decode work* compares what the decoders cost per delivered frame: the N cv2 processes (decoding is "
        "all they do) against framebroker's one "
        + ("ffmpeg (" if not via(vs, vs[0][1]) else "decoder process (ffmpeg or `framebroker-decoder`: ")
        + "decode, conversion, and the write to the broker). The "
        "issue's goal is that this saving reaches 0.8·N, and that everything else framebroker adds grows only by "
        "the per-reader copy (see *What this means*).\n")
    cpu_split(cpu, vs, out)
    if camera == "cheap":
        out.append(
            "\nThe test camera (`--camera cheap`) encodes with x264 `ultrafast` (no CABAC, no B-frames) a mostly "
            "static test pattern: about the cheapest H.264 there is to decode. Real cameras send Main/High profile "
            "with motion, which costs more per decode — and every cv2 process pays it again — so these ratios are a "
            "lower bound of the saving.\n")
    else:
        out.append(
            "\nThe test camera runs with `--like-camera`: ffmpeg's moving `testsrc2` picture with temporal noise "
            "(like a sensor's), encoded as an IP camera does — H.264 High (CABAC), x264 `veryfast`, 2 s GOP, about "
            "0.07 bit per pixel — once at start, then replayed in a loop at the frame rate, so the camera itself "
            "costs next to nothing (last column, in no total) while every decoder pays what a real camera's stream "
            "costs.\n")
    floors = {f["size"]: f for f in cpu.get("decode_floor", [])}
    if vs[0][1] == "ffmpeg":
        cpu_handover(cpu, floors, [d for _, d in vs], out)
    out.append("\n![CPU of N consumers](bench/cpu.png)\n")
    out.append("**What this means.**\n\n" + "\n".join(cpu_meaning(cpu, vs, floors, copy)) + "\n")


def cpu_table(cpu: Dict[str, Any], vs: List[Tuple[str, str]], out: List[str]) -> None:
    """The main table: cv2, then each decoder's columns side by side."""
    head, align = ["camera", "N", "cv2 × N: CPU %", "fps"], ["---", "---:", "---", "---:"]
    for _, dec in vs:
        v = via(vs, dec)
        head += [f"ours, Python{v}: CPU %", "fps", f"ours, Rust{v}: CPU %", "fps",
                 f"total cv2 / ours (Python{v})", "per delivered frame",
                 f"decode work cv2 / ours{v} (goal ≥ 0.8·N)"]
        align += ["---", "---:", "---", "---:", "---", "---", "---"]
    head.append("camera CPU %")
    align.append("---")
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(align) + "|")
    for r in cpu["rows"]:
        cells = [r["size"], str(r["n"]), fmt(r["cv2"]["total_pct"]), f"{med(r['cv2']['fps_min']):.1f}"]
        for sfx, _ in vs:
            d = decode_ratio(r, sfx)
            ok = "met" if d >= r["goal_ratio"] else "**missed**"
            cells += [fmt(r["py" + sfx]["total_pct"]), f"{med(r['py' + sfx]['fps_min']):.1f}",
                      fmt(r["rust" + sfx]["total_pct"]), f"{med(r['rust' + sfx]['fps_min']):.1f}",
                      fmt(r["ratio_cv2_over_py" + sfx], 2), fmt(r["ratio_per_frame_cv2_over_py" + sfx], 2),
                      f"{d:.1f} (≥ {r['goal_ratio']:.1f}: {ok})"]
        cells.append(fmt(r["cv2"]["camera_pct"]))
        out.append("| " + " | ".join(cells) + " |")


def cpu_split(cpu: Dict[str, Any], vs: List[Tuple[str, str]], out: List[str]) -> None:
    """Where framebroker's total goes: readers, broker, decoder, for each decoder."""
    out.append("\nWhere framebroker's total goes (median % of one core):\n")
    head = ["camera", "N"]
    for _, dec in vs:
        v = via(vs, dec)
        head += [f"Python readers{v}", "broker", decoder_label(dec), f"Rust readers{v}", "broker", decoder_label(dec)]
    out.append("| " + " | ".join(head) + " |")
    out.append("|---|" + "---:|" * (len(head) - 1))
    for r in cpu["rows"]:
        cells = [r["size"], str(r["n"])]
        for sfx, _ in vs:
            for kind in ("py", "rust"):
                x = r[kind + sfx]
                cells += [f"{med(x['readers_pct']):.1f}", f"{med(x['broker_pct']):.2f}", f"{med(x['ffmpeg_pct']):.1f}"]
        out.append("| " + " | ".join(cells) + " |")


def cpu_handover(cpu: Dict[str, Any], floors: Dict[str, Dict[str, Any]], decoders: List[str],
                 out: List[str]) -> None:
    """Why one reader through ffmpeg costs more than one cv2 process, from the decode floor."""
    why = []
    for size, f in floors.items():
        one = next((r for r in cpu["rows"] if r["size"] == size and r["n"] == 1), None)
        if one is None or not med(f["ffmpeg_null_pct"]):
            continue
        ff, null = med(one["py"]["ffmpeg_pct"]), med(f["ffmpeg_null_pct"])
        why.append(f"at {size} one cv2 process costs {med(one['cv2']['total_pct']):.1f} %, framebroker's ffmpeg "
                   f"{ff:.1f} % and its broker {med(one['py']['broker_pct']):.1f} %; the same ffmpeg command "
                   f"with its output thrown away (`-f null`) costs {null:.1f} % — so decoding and converting "
                   f"is {null / med(one['cv2']['total_pct']):.2f}× what cv2 pays, and handing the frames over "
                   f"costs {ff - null:.1f} % in ffmpeg plus the broker's share")
    out.append(
        "Why one framebroker reader costs more than one cv2 process: the broker's ffmpeg hands each decoded frame "
        "to the broker through a pipe, which copies it twice (into the kernel, then out into the ring) — "
        "copies a cv2 process, decoding in its own memory, does not make. "
        + ("Measured in this run: " + "; ".join(why) + ". " if why else "")
        + "That hand-over is paid once per camera, however many programs read it; each further reader adds "
        "only its own copy of the frame. "
        + ("`--decoder libav` removes the pipe: framebroker's own decoder process (libavcodec) writes the frames "
           "into shared memory; its columns above are measured in the same run."
           if "libav" in decoders else
           "Removing it means decoding inside the broker (linking libavcodec) instead of running the system "
           "ffmpeg — a larger change, not made here.")
        + "\n")


def cpu_meaning(cpu: Dict[str, Any], vs: List[Tuple[str, str]], floors: Dict[str, Dict[str, Any]],
                copy: Optional[Dict[str, Any]]) -> List[str]:
    """One bullet per camera size from the first decoder's figures, a sub-bullet per other decoder."""
    lines = []
    for size in dict.fromkeys(r["size"] for r in cpu["rows"]):
        rows = [r for r in cpu["rows"] if r["size"] == size]
        first, last = rows[0], rows[-1]
        met = [r["n"] for r in rows if decode_ratio(r) >= r["goal_ratio"]]
        missed = [r["n"] for r in rows if not decode_ratio(r) >= r["goal_ratio"]]
        sat = [r["n"] for r in rows if med(r["cv2"]["fps_min"]) < 0.9 * med(rows[0]["cv2"]["fps_min"])]
        grow_py = med(last["py"]["total_pct"]) - med(first["py"]["total_pct"])
        per_reader = grow_py / max(1, last["n"] - first["n"])
        per_reader_rs = ((med(last["rust"]["total_pct"]) - med(first["rust"]["total_pct"]))
                         / max(1, last["n"] - first["n"]))
        dec = med(first["py"]["ffmpeg_pct"])
        txt = (f"- **{size}**{via(vs, vs[0][1])}: with {last['n']} programs, cv2 costs "
               f"{med(last['cv2']['total_pct']):.0f} % and "
               f"framebroker {med(last['py']['total_pct']):.0f} % (Python) / {med(last['rust']['total_pct']):.0f} % "
               f"(Rust): a ratio of {med(last['ratio_cv2_over_py']):.1f}× for Python. The one decode costs "
               f"{dec:.0f} % of a core; each extra Python reader adds about {per_reader:.1f} %"
               + (f", of which its `read()` is {rc:.1f} % (section 4: the copy) and the rest waking up and the "
                  "interpreter's loop" if (rc := read_cost_pct(copy, size.split('@')[0], med(last['py']['fps_mean'])))
                  is not None else "")
               + f"; each Rust reader about {per_reader_rs:.2f} %. "
               + goal_sentence(rows, met, missed, floors.get(size) if vs[0][1] == "ffmpeg" else None))
        if sat:
            txt += (f" With N ≥ {sat[0]} plain cv2 no longer keeps up: the slowest of them gets "
                    f"{med(rows[[r['n'] for r in rows].index(sat[0])]['cv2']['fps_min']):.1f} fps instead of "
                    f"{med(rows[0]['cv2']['fps_min']):.1f} — the machine is saturated by decoding, so its CPU ratio "
                    "understates the saving; the per-delivered-frame ratio shows it.")
        lines.append(txt)
        lines += [other_decoder_line(rows, sfx, d, vs[0][1]) for sfx, d in vs[1:]]
    return lines


def other_decoder_line(rows: List[Dict[str, Any]], sfx: str, decoder: str, base: str) -> str:
    """A decoder beside the first one: totals, its decoder process, the goal."""
    first, last = rows[0], rows[-1]
    met = [r["n"] for r in rows if decode_ratio(r, sfx) >= r["goal_ratio"]]
    missed = [r["n"] for r in rows if not decode_ratio(r, sfx) >= r["goal_ratio"]]
    py, rs = last["py" + sfx], last["rust" + sfx]
    return (f"  - via {decoder}: with {last['n']} programs framebroker costs {med(py['total_pct']):.0f} % (Python) / "
            f"{med(rs['total_pct']):.0f} % (Rust) against {med(last['py']['total_pct']):.0f} % / "
            f"{med(last['rust']['total_pct']):.0f} % via {base}: a ratio of "
            f"{med(last['ratio_cv2_over_py' + sfx]):.1f}× for Python. With {first['n']} program"
            f"{'s' if first['n'] > 1 else ''} its decoder process costs {med(first['py' + sfx]['ffmpeg_pct']):.1f} % "
            f"and the broker {med(first['py' + sfx]['broker_pct']):.1f} %, against "
            f"{med(first['py']['ffmpeg_pct']):.1f} % and {med(first['py']['broker_pct']):.1f} % via {base}. "
            + goal_sentence(rows, met, missed, None, sfx))


def section_parity(par: Dict[str, Any], out: List[str]) -> None:
    """Section 1b: one reader against cv2 on both cameras, in paired rounds."""
    n, cams = par["rounds"], sorted({c["camera"] for c in par["cells"]})
    out.append("## 1b. One reader against one `cv2.VideoCapture`, on both cameras\n")
    out.append(
        "The goal of one program reading a camera through framebroker: it costs no more CPU than the same "
        "program with `cv2.VideoCapture` (readers + broker + decoder against the cv2 process). Section 1 measures "
        "each configuration in a block of consecutive windows, so a drift of the shared machine's speed during "
        f"the run weighs on one more than another. Here every way runs once per round, {n} rounds of one "
        f"{par['window_s']:g} s window after {par['warmup_s']:g} s of warm-up, and each round starts with the "
        "next way; each ratio is cv2 / ours of one round. Cameras: " + ", ".join(f"`{c}`" for c in cams)
        + " (see section 1).\n")
    out.append(
        "*Side by side*: each way of ours once more in as many windows, each beside a cv2 reader of the same "
        "camera measured over the same seconds, so a change of the machine's speed falls on both sides of the "
        "ratio alike (both share the two cores and the caches while measured).\n")
    out.append("| camera | size | cv2: CPU % (fps) | ours | CPU % (readers / broker / decoder) | fps "
               "| cv2 / ours, per round | rounds ours ≤ cv2 | cv2 / ours of the sums "
               "| side by side: cv2 / ours, per window | windows ours ≤ cv2 |")
    out.append("|---|---|---|---|---|---:|---|---:|---:|---|---:|")
    names = {"py": "Python", "rust": "Rust"}
    for c in par["cells"]:
        first = True
        for way, r in c["ratios"].items():
            w = c["ways"][way]
            kind, _, dec = way.partition("_")
            split = " / ".join(f"{med(w[k]):.1f}" for k in ("readers_pct", "broker_pct", "ffmpeg_pct"))
            cv = c["ways"]["cv2"]
            head = ([c["camera"], c["size"], f"{fmt(cv['total_pct'])} ({med(cv['fps_min']):.1f})"] if first
                    else ["", "", ""])
            first = False
            sb = c.get("side_by_side", {}).get(way)  # results from before it have none
            side = ([fmt(sb["ratios"], 2), f"{sb['windows_no_dearer']} of {len(sb['windows'])}"] if sb
                    else ["–", "–"])
            out.append("| " + " | ".join(head + [
                f"{names.get(kind, kind)}" + (f" via {dec}" if dec else ""), f"{fmt(w['total_pct'])} ({split})",
                f"{med(w['fps_min']):.1f}", fmt(r, 2), f"{c['rounds_no_dearer'][way]} of {n}",
                f"{c['ratio_of_sums'][way]:.2f}"] + side) + " |")
    out.append("")


def section_age(a: Dict[str, Any], out: List[str]) -> None:
    out.append("## 2. How old is the frame a slow program gets?\n")
    out.append(
        f"A program that needs {a['work_ms']:.0f} ms per frame reads a {a['size']} camera for {a['seconds']:.0f} s, "
        "once with plain `cv2.VideoCapture` and, at the same time, with `framebroker.VideoCapture` (each from its own "
        "instance of the test camera, so one reader's backlog cannot slow the other's camera). "
        "The camera (`tests/camera/rtsp_camera.py --stamp`) writes its wall clock into every picture as 40 "
        "black/white 16×16 blocks before encoding; each reader decodes it from the picture it got, so *age = "
        "now − moment the camera produced the frame*, measured the same way for both, end to end (encode, RTP, "
        "decode, queueing, copy). Error: 1 ms (the stamp's resolution; same clock, same host); unreadable stamps "
        "are counted, not guessed. The same pair is first run for "
        f"a few seconds keeping up (no work) to show the pipeline's own latency.\n")
    out.append("| reader | reads | median ms | p90 | p99 | max | last 10 % of the run (median) | keeping up (median) | unreadable |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for api, name in (("cv2", "`cv2.VideoCapture`"), ("fb", "`framebroker` `read()`")):
        x, k = a[api], a[f"{api}_keepup"]
        out.append(f"| {name} | {x['reads']} | {x['median_ms']:.1f} | {x['p90_ms']:.1f} | {x['p99_ms']:.1f} "
                   f"| {x['max_ms']:.1f} | {x['last10pct_median_ms']:.1f} | {k['median_ms']:.1f} | {x['unreadable']} |")
    f = a["fb"]
    out.append("\n![Frame age](bench/age.png)\n")
    period = a["frame_period_ms"]
    goal_ok = f.get("since_publish_p99_ms", float("inf")) <= period + 1.0
    out.append(
        f"**What this means.** The slow cv2 reader gets frames whose age keeps growing — "
        f"{a['cv2']['last10pct_median_ms'] / 1000:.1f} s old by the end of the run (max {a['cv2']['max_ms'] / 1000:.1f} s): "
        "OpenCV decodes every frame in order, so a slow loop walks through a growing backlog. framebroker's "
        f"`read()` returns the newest frame: median {f['median_ms']:.0f} ms end to end, of which "
        f"{a['fb_keepup']['median_ms']:.0f} ms is the camera→decode pipeline that any reader pays (see *keeping up*). "
        + (f"Measured from the moment the broker published the frame, the age is median "
           f"{f['since_publish_median_ms']:.1f} ms, p99 {f['since_publish_p99_ms']:.1f} ms, max "
           f"{f['since_publish_max_ms']:.1f} ms against a frame period of {period:.1f} ms: the goal (under one frame "
           f"period plus the copy) is {'met' if goal_ok else '**missed** at p99'}."
           if "since_publish_median_ms" in f else "")
        + "\n")


def section_latency(lat: Dict[str, Any], cores: int, out: List[str]) -> None:
    out.append("## 3. Publish → read latency with many readers\n")
    out.append(
        f"`fb-bench --only latency`: a 640x480@{lat['fps']} stream, 1 to {lat['by_readers'][-1]['readers']} `fb-reader` "
        "processes in sequential mode (every frame), each recording *now − the broker's publish time* after it has "
        f"copied the frame out ({lat['frames_per_reader']} frames per reader per repetition). Beside it: one "
        f"memcpy of the same frame, {fmt(lat['memcpy_us'])} µs — the floor of any copy.\n")
    out.append("| readers | median µs | p99 µs | max µs | first reader woken, median µs | last reader, median µs | median / memcpy |")
    out.append("|---:|---|---|---|---|---|---|")
    for r in lat["by_readers"]:
        out.append(f"| {r['readers']} | {fmt(r['age_median_us'])} | {fmt(r['age_p99_us'])} | {fmt(r['age_max_us'])} "
                   f"| {fmt(r['first_reader_median_us'])} | {fmt(r['last_reader_median_us'])} | {fmt(r['median_over_memcpy'], 1)} |")
    out.append("\n![Latency](bench/latency.png)\n")
    one, many = lat["by_readers"][0], lat["by_readers"][-1]
    out.append(
        f"**What this means.** One reader has its frame {med(one['age_median_us']):.0f} µs after the broker publishes "
        f"it ({med(one['median_over_memcpy']):.1f}× one memcpy: the futex wake-up and scheduling cost more than the copy). "
        f"With {many['readers']} readers the first one woken still gets it in {med(many['first_reader_median_us']):.0f} µs; "
        f"the others queue for the {cores} cores, so the last gets it after {med(many['last_reader_median_us']) / 1000:.1f} ms "
        f"(p99 over all {med(many['age_p99_us']) / 1000:.1f} ms) — every reader still copies each frame well within the "
        f"{1000 / lat['fps']:.1f} ms frame period. The broker wakes all readers with one call; the spread is the machine's "
        f"{cores} cores serving {many['readers']} processes in turn.\n")


def section_copy(c: Dict[str, Any], out: List[str]) -> None:
    out.append("## 4. What one read costs\n")
    out.append(
        "Rust (`fb-bench --only copy`): each call is timed right after a new frame was published (the state a real "
        "reader is in). `latest_into` copies the frame out; `view` gives the bytes in place (here the closure reads "
        "16 bytes); the floors are a plain memcpy of the same size timed under the same conditions (*after wake-up*) "
        "and back to back with hot caches. Python (`client-py/bench/bench_read.py --only read`): `read(buf)` into a "
        "preallocated array, `read()` allocating a new one, beside `numpy.copyto` of the same size after the same "
        "sleep and back to back.\n")
    out.append("| client | size | read (copy) µs | zero-copy view µs | memcpy / copyto after wake-up µs | hot memcpy / copyto µs | read / memcpy after wake-up |")
    out.append("|---|---|---|---|---|---|---|")
    for r in c["rust"]:
        out.append(f"| Rust `latest_into` | {r['size']} | {fmt(r['latest_into_us'])} | {fmt(r['view_sum_us'], 2)} "
                   f"| {fmt(r['memcpy_after_wakeup_us'])} | {fmt(r['memcpy_hot_us'])} "
                   f"| {fmt(r['ratio_latest_over_memcpy_after_wakeup'], 2)} |")
    for r in c["python"]:
        u = r["us"]
        out.append(f"| Python `read(buf)` | {r['width']}x{r['height']} | {fmt(u['read(buf)'])} | — "
                   f"| {fmt(u['copyto after sleep'])} | {fmt(u['copyto hot'])} | {fmt(u['read(buf) / copyto after sleep'], 2)} |")
        out.append(f"| Python `read()` | {r['width']}x{r['height']} | {fmt(u['read()'])} | — "
                   f"| {fmt(u['copyto after sleep'])} | {fmt(u['copyto hot'])} | {fmt(u['read() / copyto after sleep'], 2)} |")
    big = c["rust"][-1]
    pys = c["python"][-1]
    r_big = med(big["ratio_latest_over_memcpy_after_wakeup"])
    out.append(
        f"\n**What this means.** In Rust a {big['size']} "
        f"`latest_into` takes {med(big['latest_into_us']):.0f} µs against {med(big['memcpy_after_wakeup_us']):.0f} µs for "
        f"a memcpy in the same conditions ({r_big:.2f}×: "
        + ("the read is the copy, the protocol adds nothing measurable" if r_big <= 1.1 else
           "within the 1.3× goal" if r_big <= 1.3 else "**above the 1.3× goal**")
        + "), and a zero-copy "
        f"`view` {med(big['view_sum_us']):.1f} µs whatever the size. In Python {pys['width']}x{pys['height']} `read(buf)` "
        f"takes {med(pys['us']['read(buf)']):.0f} µs, {med(pys['us']['read(buf) / copyto after sleep']):.2f}× a "
        "`numpy.copyto` after the same sleep (the rest is the interpreter). Against a back-to-back copy with hot caches "
        "every read looks slower: a frame just written by another core is not in this core's cache, for any reader.\n")
    fence = c.get("python_fence")
    if fence:
        section_fence(fence, out)


def section_fence(fence: List[Dict[str, Any]], out: List[str]) -> None:
    out.append(
        "**The Python read path on aarch64** (and any CPU that may reorder loads) calls a memory fence twice per "
        "read (proto/doc/decisions.md, \"Seqlock reads from Python\"). `bench_read.py --only fence` forces that path "
        "here (`FRAMEBROKER_RING_FENCE=always`; on x86-64 the fence is a `lock or`) and times it beside this "
        "machine's own fence-free path, re-reading the same warm frame, the two paths alternating:\n")
    out.append("| size | own path µs | fenced path µs | fences cost µs per read | fenced / own |")
    out.append("|---|---|---|---|---|")
    for r in fence:
        u = r["us"]
        out.append(f"| {r['width']}x{r['height']} | {fmt(u['own path'], 2)} | {fmt(u['fenced path'], 2)} "
                   f"| {fmt(u['fence cost'], 2)} | {fmt(u['fenced / own'], 2)} |")
    small, big = fence[0], fence[-1]
    out.append(
        f"\nThe fences cost about {med(small['us']['fence cost']):.1f} µs per read "
        f"({med(small['us']['fenced / own']):.2f}× for {small['width']}x{small['height']}, where the copy is cheapest). "
        f"At {big['width']}x{big['height']} they cost {med(big['us']['fence cost']):.1f} µs "
        f"({med(big['us']['fenced / own']):.2f}×): the second fence is a full barrier and waits for the copy's stores to "
        "drain. These are x86-64 figures for the forced path; no ARM board was measured.\n")


def section_gateway(g: Dict[str, Any], cores: int, out: List[str]) -> None:
    out.append("## 5. The gateway: browsers and remote programs\n")
    out.append(
        f"`gateway-bench`: the broker with a {g['width']}x{g['height']}@{g['fps']} stream (its built-in test source), "
        f"the gateway, and 1 to {g['subscribers'][-1]['subscribers']} WebSocket clients in JPEG mode (quality "
        f"{g['quality']}) in the bench process; {g['seconds']} s windows after {g['warmup']} s, {g['reps']} rounds. "
        "Gateway CPU from `/proc` (the clients' own CPU is not in it); JPEG encode time from the gateway's own counters "
        "over each window.\n")
    out.append("| WebSocket clients | gateway CPU % | fps per client (mean) | slowest client fps | JPEG encodes/s | JPEG encode ms/frame | delivered Mbit/s |")
    out.append("|---:|---|---|---|---|---|---|")
    for r in g["subscribers"]:
        out.append(f"| {r['subscribers']} | {fmt(r['gateway_cpu_pct'])} | {fmt(r['fps_mean'])} | {fmt(r['fps_min'])} "
                   f"| {fmt(r['jpeg_encodes_per_s'])} | {fmt(r['jpeg_encode_ms'], 2)} | {fmt(r['mbit_per_s'], 0)} |")
    if g.get("snapshot"):
        s = g["snapshot"]
        out.append(f"\nSnapshot (`GET /api/streams/bench/snapshot.jpg`, {s['requests']} requests, no other client): "
                   f"p50 {s['p50_ms']:.2f} ms, p95 {s['p95_ms']:.2f} ms, max {s['max_ms']:.2f} ms.")
    if g.get("polling"):
        out.append("\nRaw frame polling (`GET /api/streams/bench/frame` back to back with no sleep, BGR24; "
                   "the gateway paces each request to the next new frame, as the original server did): "
                   + "; ".join(f"{q['pollers']} poller{'s' if q['pollers'] > 1 else ''}: {q['requests_per_s']:.0f} "
                               f"requests/s, {q['mb_per_s']:.0f} MB/s ({q['distinct_frames_per_s']:.1f} distinct frames/s, "
                               f"{q['requests_per_s'] / q['pollers'] / max(q['distinct_frames_per_s'], 1e-9):.2f} "
                               "requests per new frame per poller)"
                               for q in g["polling"]) + ".")
    out.append("\n![Gateway](bench/gateway.png)\n")
    rows = g["subscribers"]
    a, b = rows[0], rows[-1]
    out.append(
        f"**What this means.** The gateway encodes each frame once ({med(a['jpeg_encodes_per_s']):.0f} encodes/s with "
        f"{a['subscribers']} client, {med(b['jpeg_encodes_per_s']):.0f}/s with {b['subscribers']}), "
        f"{med(a['jpeg_encode_ms']):.1f} ms per {g['width']}x{g['height']} frame. With one client its CPU is "
        f"{med(a['gateway_cpu_pct']) / max(med(a['jpeg_encode_ms']) * med(a['jpeg_encodes_per_s']) / 10, 1e-9):.2f}× "
        f"its floor (one encode per frame: {med(a['jpeg_encode_ms']) * med(a['jpeg_encodes_per_s']) / 10:.1f} % of "
        f"a core). Going from {a['subscribers']} to "
        f"{b['subscribers']} clients its CPU goes from {med(a['gateway_cpu_pct']):.0f} % to {med(b['gateway_cpu_pct']):.0f} % "
        f"(encoding stays the same; the growth is sending the bytes to each socket), and each client gets {med(b['fps_mean']):.1f} fps (slowest "
        f"{med(b['fps_min']):.1f}) of {g['fps']}. The clients run in one process on the same {cores} cores, so at high "
        "counts they compete with the gateway for CPU; a slow client skips frames, it never queues.\n")


def section_scale(sc: Dict[str, Any], cores: int, out: List[str]) -> None:
    out.append("## 6. Many cameras on one broker\n")
    out.append(
        f"One broker with 1 to {sc['rows'][-1]['cameras']} streams of a {sc['size']} RTSP camera (one GStreamer "
        "camera process encoding once; every stream is its own RTSP session and its own ffmpeg decode, started with "
        f"`--allow-duplicate`). {sc['reps']} windows of {sc['window_s']:.0f} s. Broker memory is `RssAnon` from "
        "`/proc/<pid>/status` (its own heap, without the shared-memory pages it maps); shared memory from the segment "
        "sizes in `/dev/shm`.\n")
    out.append("| cameras | broker RssAnon KiB | broker RSS incl. shm KiB | shm per camera MiB | broker CPU % | ffmpeg CPU % (all) | per camera % | fps per stream (slowest) | camera process CPU % |")
    out.append("|---:|---:|---:|---:|---|---|---|---|---|")
    for r in sc["rows"]:
        out.append(f"| {r['cameras']} | {r['broker_rss_anon_kib']} | {r['broker_rss_kib']} "
                   f"| {(r['shm_bytes_per_camera'] or 0) / 2**20:.2f} | {fmt(r['broker_pct'], 2)} | {fmt(r['ffmpeg_pct'])} "
                   f"| {fmt(r['per_camera_pct'])} | {fmt(r['fps_min'])} | {fmt(r['camera_pct'])} |")
    out.append("\n![Scale](bench/scale.png)\n")
    rows = sc["rows"]
    last = rows[-1]
    total = med(last["broker_pct"]) + med(last["ffmpeg_pct"]) + med(last["camera_pct"])
    share = med(last["broker_pct"]) / max(1e-9, med(last["broker_pct"]) + med(last["ffmpeg_pct"])) * 100
    nominal = float(sc["size"].split("@")[1])
    sat = [r["cameras"] for r in rows if med(r["fps_min"]) < 0.9 * nominal]
    out.append(
        f"**What this means.** Each camera costs about {med(rows[0]['per_camera_pct']):.0f} % of a core, nearly all of "
        f"it ffmpeg's decode; the broker's own share with {last['cameras']} cameras is {med(last['broker_pct']):.1f} % "
        f"({share:.0f} % of the decode+broker total), and its heap grows from {rows[0]['broker_rss_anon_kib']} to "
        f"{last['broker_rss_anon_kib']} KiB. Frames live in shared memory, "
        f"{(rows[0]['shm_bytes_per_camera'] or 0) / 2**20:.1f} MiB per camera (slots × frame). "
        + (f"From {sat[0]} cameras the streams no longer all get {nominal:.0f} fps: with the test camera's own encoder the "
           f"machine runs at {total:.0f} % of {100 * cores} % — decode-bound, as expected on {cores} cores."
           if sat else f"All {last['cameras']} streams kept {nominal:.0f} fps; the machine used {total:.0f} % of "
           f"{100 * cores} % including the test camera, so it did not saturate here. At "
           f"{med(last['per_camera_pct']):.1f} % per camera it would be full near "
           f"{int(100 * cores / max(med(last['per_camera_pct']), 1e-9))} such cameras, and decode-bound: "
           f"{100 - share:.0f} % of that cost is ffmpeg, which scales with cameras, not with the broker.")
        + "\n")


def section_memory(m: Dict[str, Any], out: List[str]) -> None:
    out.append("## 7. Memory under load over time\n")
    out.append(
        f"`gateway-bench --soak-seconds {m['seconds']:.0f}`: {m['subscribers']} JPEG WebSocket clients on a "
        f"{m['size']} stream for {m['seconds'] / 60:.1f} minutes, RSS of the gateway and the broker sampled every "
        f"{m['interval_s']:.0f} s (clients got {fmt(m['fps_per_client'])} fps each).\n")
    out.append("| process | start KiB | end KiB | peak KiB | growth over the 2nd half KiB |")
    out.append("|---|---:|---:|---:|---:|")
    names = {"gateway_rss_kib": "gateway RSS", "gateway_anon_kib": "gateway RssAnon",
             "broker_rss_kib": "broker RSS", "broker_anon_kib": "broker RssAnon"}
    for k, v in m["summary"].items():
        out.append(f"| {names[k]} | {v['start']} | {v['end']} | {v['peak']} | {v.get('second_half_growth', '—')} |")
    out.append("\n![Memory](bench/memory.png)\n")
    g = m["summary"]["gateway_anon_kib"]
    b = m["summary"]["broker_anon_kib"]
    out.append(
        f"**What this means.** Over the second half of the run the gateway's heap changed by {g['second_half_growth']:+d} KiB "
        f"and the broker's by {b['second_half_growth']:+d} KiB; peaks {g['peak'] / 1024:.1f} MiB and {b['peak'] / 1024:.1f} MiB. "
        + ("No growth that would point to a leak." if abs(g["second_half_growth"]) < 1024 and abs(b["second_half_growth"]) < 1024
           else "**It grew**: worth a look with a longer run.")
        + "\n")


#: Everything after this line of BENCHMARKS.md is kept as it is when the page
#: is regenerated.
KEPT = "<!-- Sections below are measured by other scripts and kept when this page is regenerated. -->"


def write(res: Dict[str, Any], results_path: Path) -> None:
    m = res["machine"]
    cores = int(m.get("cores") or 2)
    s = res["sections"]
    try:
        shown = results_path.resolve().relative_to(REPO)
    except ValueError:
        shown = results_path
    out: List[str] = [
        "# Benchmarks\n",
        "How much CPU, latency and memory framebroker costs next to every program opening the camera itself with "
        "OpenCV — measured in one run on one machine, side by side. Regenerated by the command below; every number "
        "and sentence here comes from its results file.\n",
        "The original Go server could not be measured: only its README exists (nothing to build or run).\n",
        "## The run\n",
        f"- Command: `.venv/bin/python {res['command']}` ({'quick smoke run: tiny sizes, not for conclusions' if res['quick'] else 'full run'}), "
        f"{res['date']}, {res['elapsed_s'] / 60:.0f} min; results `{shown}` (not kept in git).",
        f"- Machine: {m['cpu_model']}, {cores} cores, {m.get('memory_gib', '?')} GiB; {m.get('os', '')}, Linux {m['kernel']}; "
        f"{m['ffmpeg'].split(' Copyright')[0]}; OpenCV {m['opencv']}, numpy {m['numpy']}, {m['python']}; {m.get('gstreamer', 'GStreamer ?')}; {m.get('rustc', '')}.",
        f"- Load average (1 min) at start {res['loadavg_start'][0]:.2f}, at end {res['loadavg_end'][0]:.2f}. "
        "The machine is shared (other builds and tests run on the same 2 cores), so figures are noisy: each is the "
        f"median of {res['reps']} repetitions with [min–max], and every comparison is a ratio of figures from the same run.",
        "- Every process is real: the GStreamer RTSP camera on 127.0.0.1 (`tests/camera/rtsp_camera.py`), the release "
        "broker with ffmpeg, reader processes, the gateway. CPU = user + system time of each process over the window.\n",
    ]
    failed = [k for k, v in s.items() if "error" in v]
    if failed:
        out.append("**Sections that failed in this run:** " + ", ".join(f"{k} (`{s[k]['error'].splitlines()[0]}`)" for k in failed) + "\n")
    if "cpu" in s and "rows" in s["cpu"]:
        plot_cpu(s["cpu"], cores)
        section_cpu(s["cpu"], cores, out, res.get("camera", "cheap"), s.get("copy"))
    if "parity" in s and "cells" in s["parity"]:
        section_parity(s["parity"], out)
    if "age" in s and "cv2" in s["age"]:
        plot_age(s["age"])
        section_age(s["age"], out)
    if "latency" in s and "by_readers" in s["latency"]:
        plot_latency(s["latency"])
        section_latency(s["latency"], cores, out)
    if "copy" in s and "rust" in s["copy"]:
        section_copy(s["copy"], out)
    if "gateway" in s and "subscribers" in s["gateway"]:
        plot_gateway(s["gateway"])
        section_gateway(s["gateway"], cores, out)
    if "scale" in s and "rows" in s["scale"]:
        plot_scale(s["scale"], cores)
        section_scale(s["scale"], cores, out)
    if "memory" in s and "summary" in s["memory"]:
        plot_memory(s["memory"])
        section_memory(s["memory"], out)
    out.append("## Running it yourself\n")
    out.append("```sh\n.venv/bin/pip install psutil matplotlib      # once\n"
               ".venv/bin/python bench/run.py                   # everything, ~45 min on 2 cores\n"
               ".venv/bin/python bench/run.py --only cpu,age    # some sections\n"
               ".venv/bin/python bench/run.py --quick --no-report   # ~2 min smoke test (CI)\n"
               ".venv/bin/python bench/run.py --report-only bench/results/<file>.json   # redo this page\n```\n")
    out.append("Sections: `cpu`, `parity`, `age`, `latency`, `copy`, `gateway`, `scale`, `memory` (`--memory-minutes`, default 10). "
               "The parts can be run alone too: `target/release/fb-bench`, `target/release/gateway-bench`, "
               "`client-py/bench/bench_read.py` (each with `--help`).\n")
    DOCS.mkdir(parents=True, exist_ok=True)
    # Sections measured by other scripts (bench/handover.py) sit after KEPT and
    # survive a regeneration of the page.
    page = DOCS / "BENCHMARKS.md"
    old = page.read_text() if page.exists() else ""
    if KEPT in old:
        out.append(KEPT + old.split(KEPT, 1)[1].rstrip("\n") + "\n")
    page.write_text("\n".join(out))
    print(f"wrote {DOCS / 'BENCHMARKS.md'} and {PLOTS}/*.png")

