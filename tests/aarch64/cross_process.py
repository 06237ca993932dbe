#!/usr/bin/env python3
"""The aarch64 broker and an aarch64 Rust reader across processes, under qemu-user.

Starts the aarch64 ``framebroker`` (with ``--checksum``) under ``qemu-aarch64``
on a ``testsrc`` stream decoded by the host's ffmpeg (qemu-user runs the x86-64
ffmpeg the broker spawns natively), then two ``fb-reader`` processes on it at
once: the aarch64 one under qemu and a native x86-64 one. Every frame each reads
must carry the CRC-32 the broker stored in its slot, and every frame both read
must have the same CRC: the bytes are the same whatever the reader's machine.

Run by scripts/aarch64.sh:
  cross_process.py AARCH64_BIN_DIR NATIVE_FB_READER [--sysroot /usr/aarch64-linux-gnu]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

FRAMES = 40
URL = "testsrc://?size=160x120&rate=15"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bin_dir", type=Path, help="directory of the aarch64 framebroker and fb-reader")
    ap.add_argument("native_reader", type=Path, help="the host's fb-reader")
    ap.add_argument("--sysroot", default="/usr/aarch64-linux-gnu")
    a = ap.parse_args()
    qemu = ["qemu-aarch64", "-L", a.sysroot]
    with tempfile.TemporaryDirectory(prefix="fbarm-") as d:
        sock = os.path.join(d, "broker.sock")
        log = open(os.path.join(d, "broker.log"), "wb")
        broker = subprocess.Popen(
            [*qemu, str(a.bin_dir / "framebroker"), "serve", "--socket", sock,
             "--shm-prefix", f"fbarm{os.getpid()}-", "--checksum", "--stream", f"t={URL}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"},
        )
        readers: List[subprocess.Popen] = []
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(sock):
                if broker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the aarch64 broker did not come up; log:\n{Path(log.name).read_text()}")
                time.sleep(0.1)
            args = ["--socket", sock, "--stream", "t", "--count", str(FRAMES), "--mode", "next", "--sync-start"]
            for cmd in ([*qemu, str(a.bin_dir / "fb-reader")], [str(a.native_reader)]):
                readers.append(subprocess.Popen([*cmd, *args], stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE, text=True))
            for r in readers:  # both attached before either reads: they start on the same frame
                line = r.stdout.readline().strip()  # type: ignore[union-attr]
                if line != "attached":
                    raise SystemExit(f"a reader did not attach (said {line!r})")
            for r in readers:
                r.stdin.write("\n")  # type: ignore[union-attr]
                r.stdin.flush()  # type: ignore[union-attr]
            got: List[Dict[int, int]] = []
            for name, r in zip(("aarch64", "x86-64"), readers):
                out, _ = r.communicate(timeout=120)
                if r.returncode != 0:
                    raise SystemExit(f"the {name} reader failed (exit {r.returncode})")
                recs = [json.loads(x) for x in out.splitlines()]
                if len(recs) != FRAMES:
                    raise SystemExit(f"the {name} reader read {len(recs)} frames, not {FRAMES}")
                for rec in recs:
                    if rec["slot_crc"] == 0 or rec["crc"] != rec["slot_crc"]:
                        raise SystemExit(f"{name} reader, frame {rec['number']}: CRC {rec['crc']:#x}, "
                                         f"the broker stored {rec['slot_crc']:#x}")
                got.append({rec["number"]: rec["crc"] for rec in recs})
            common = sorted(set(got[0]) & set(got[1]))
            if len(common) < FRAMES // 2:
                raise SystemExit(f"the readers shared only {len(common)} frames: {sorted(got[0])} / {sorted(got[1])}")
            for n in common:
                if got[0][n] != got[1][n]:
                    raise SystemExit(f"frame {n}: aarch64 reader CRC {got[0][n]:#x}, x86-64 {got[1][n]:#x}")
            print(f"aarch64 broker: {FRAMES} frames to each reader, every one with the broker's CRC; "
                  f"{len(common)} frames read by both readers byte-identical (frames {common[0]}..{common[-1]})")
        finally:
            for r in readers:
                if r.poll() is None:
                    r.kill()
                    r.wait()
            broker.send_signal(signal.SIGTERM)
            try:
                broker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
