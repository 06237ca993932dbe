"""The Python client as a wheel: `python -m build --wheel client-py`, installed in a
fresh venv of the system's python3 (numpy from the package index), reads frames
from a real broker."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from .helpers import BROKER_BIN, REPO, clean_env, run, unique, wait_for

pytestmark = pytest.mark.usefixtures("binaries")

READER = textwrap.dedent(
    """
    import sys, framebroker
    assert framebroker.__file__.startswith(sys.prefix), framebroker.__file__  # the wheel, not the tree
    from framebroker import _ring
    assert _ring.compiled_read_path(), "the wheel's compiled read path does not load"
    cap = framebroker.VideoCapture("framebroker://t")
    numbers, shapes = [], set()
    for _ in range(100):  # read() blocks for a frame; a failed one is retried, 100 at most
        ok, frame = cap.read()
        if ok:
            numbers.append(int(cap.get(framebroker.CAP_PROP_POS_FRAMES)))
            shapes.add(frame.shape)
            if len(numbers) == 5:
                break
    cap.release()
    print("shapes", *sorted(shapes))
    print("numbers", *numbers)
    """
)


def test_the_wheel_installs_in_a_fresh_venv_and_reads_frames(tmp_path: Path) -> None:
    # Build the wheel (with the `build` frontend the test venv has) from a copy of
    # the package, so setuptools' build/ directory never lands in the work tree.
    src = tmp_path / "client-py"
    shutil.copytree(REPO / "client-py", src,
                    ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "*.so"))
    dist = tmp_path / "dist"
    r = run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)], timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels = list(dist.glob("framebroker-*.whl"))
    assert len(wheels) == 1, wheels
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "framebroker/py.typed" in names and "video_import.py" in names, names
    assert not any(n.startswith("tests/") for n in names), names
    # Built here, with a C compiler: the compiled read path is in it, and used below.
    assert any(n.startswith("framebroker/_fastring") and n.endswith(".so") for n in names), names

    # A fresh venv of the system's python3: nothing of the repo's venvs.
    python3 = shutil.which("python3", path=os.environ.get("PATH", "").replace(str(Path(sys.executable).parent), ""))
    assert python3, "python3 on PATH"
    venv = tmp_path / "venv"
    r = run([python3, "-m", "venv", str(venv)], timeout=300)
    assert r.returncode == 0, r.stderr
    py = venv / "bin" / "python"
    r = run([str(py), "-m", "pip", "install", "-q", str(wheels[0])], timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    # A real broker with the built-in test source.
    sock = tmp_path / "s.sock"
    prefix = f"{unique('fbw')}-"
    broker = subprocess.Popen(
        [str(BROKER_BIN), "serve", "--socket", str(sock), "--shm-prefix", prefix,
         "--stream", "t=testsrc://?size=320x240&rate=30"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )
    try:
        assert wait_for(20, lambda: True if sock.exists() else None), "broker socket"
        r = run([str(py), "-c", READER], timeout=120, cwd=tmp_path,
                env=clean_env(FRAMEBROKER_SOCKET=str(sock)))
        assert r.returncode == 0, r.stdout + r.stderr
        lines = dict(l.split(" ", 1) for l in r.stdout.strip().splitlines())
        assert lines["shapes"] == "(240, 320, 3)"
        numbers = [int(n) for n in lines["numbers"].split()]
        assert len(numbers) == 5, numbers
        assert all(a < b for a, b in zip(numbers, numbers[1:])), f"frames advance: {numbers}"
    finally:
        broker.send_signal(signal.SIGTERM)
        try:
            broker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()
    assert not list(Path("/dev/shm").glob(prefix + "*")), "the broker removed its segments"
