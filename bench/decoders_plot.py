"""Plots the cpu section of a results file that compared the decoders
(``bench/run.py --only cpu --decoders ffmpeg,libav``): CPU of N consumers of one
camera, cv2 against our Python readers through ffmpeg and through the broker's
own decoder, one panel per camera size.

    .venv/bin/python bench/decoders_plot.py RESULTS.json OUT.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    res = json.loads(Path(sys.argv[1]).read_text())
    rows = res["sections"]["cpu"]["rows"]
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.2), squeeze=False)
    series = [("cv2", "cv2.VideoCapture x N", "o-"), ("py", "ours, Python, ffmpeg decodes", "s--"),
              ("py_libav", "ours, Python, framebroker-decoder", "^-")]
    for ax, size in zip(axes[0], sizes):
        rs = sorted((r for r in rows if r["size"] == size), key=lambda r: r["n"])
        ns = [r["n"] for r in rs]
        for key, label, style in series:
            if all(key in r for r in rs):
                ax.plot(ns, [r[key]["total_pct"]["median"] for r in rs], style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_yscale("log")
        ax.set_xlabel("programs reading the camera (N)")
        ax.set_ylabel("CPU, % of one core (median)")
        ax.set_title(f"{size}, {res.get('camera', 'like-camera')}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"bench/run.py --only cpu --decoders ffmpeg,libav ({res['date']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
