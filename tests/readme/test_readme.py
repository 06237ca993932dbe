"""Every example of the README's "## Use it" section, executed for real.

Each fenced block is taken from README.md by its language and run against a
real broker (``framebroker serve``), a real gateway (``framebroker-gateway``) and
real GStreamer RTSP test cameras (``tests/camera/rtsp_camera.py``), all on
127.0.0.1; the broker, gateway and camera helpers are those of
``client-py/tests/conftest.py``. What each block is turned into, and why:

* the camera URLs of a block (``rtsp://…``) become test-camera URLs: the first
  distinct URL of the block the 640x480 camera, the second the 320x240 one (so
  ``door`` and ``lobby`` are two cameras, as in the README);
* ``localhost:8091`` and ``127.0.0.1:8091`` become the test gateway's address;
* ``framebroker`` becomes the built binary with ``--socket`` of the test broker,
  and the Python and Rust programs get ``FRAMEBROKER_SOCKET`` of that broker
  (what the README tells users to set when they use another socket).

Per language (``test_every_language_is_run`` fails when "## Use it" gains a
block in any other language, so no example can go unchecked):

* ``python``: run by the repository's ``.venv`` Python in a subprocess. The
  ``...`` placeholder line becomes code that checks the frame (a uint8 numpy
  array of shape (480, 640, 3)), keeps five of them, checks they were not
  changed afterwards ("yours to keep") and exits 0; a few lines (``import sys``,
  numpy, two lists) are put before the block for that.
* ``sh``: each command line runs (no shell; pure comment lines are not
  commands). ``curl`` gets ``-sS --fail --max-time 20`` so an HTTP error is a
  non-zero exit. The URLs in comment lines are fetched too: MJPEG
  (``http://…/mjpeg``) and WebSocket (``ws://…``, raw and ``?format=jpeg``).
  ``framebroker serve`` is not started again (the fixture's broker *is*
  ``framebroker serve``); ``serve --help`` is run instead. ``framebroker
  doctor`` runs as written and must exit 0.
* ``rust``: compiled as a program of its own depending on ``client-rs`` by
  path (``fn main() -> Result<(), Box<dyn std::error::Error>>`` around it,
  ``Ok(())`` after it), built with ``cargo build --offline`` into
  ``target/readme`` and run; ``loop {`` becomes ``for _ in 0..5 {`` so it ends.
* ``js``: run in headless Chromium (``run_js.mjs``, playwright-core of
  ``web-gateway/tests/browser``) as a module script of a page on the gateway's
  origin with a ``<canvas>``; ``window.readmeClient = client;`` is appended so
  the page can be asked how many frames arrived and what the canvas shows.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterator, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SECTION = "## Use it"
#: The languages this file knows how to run.
RUNNERS = {"python", "sh", "rust", "js"}
VENV_PYTHON = REPO / ".venv" / "bin" / "python"


def _load_client_fixtures() -> ModuleType:
    """client-py/tests/conftest.py as a module (its Broker, Camera and Gateway),
    under a package name of its own so its relative imports work."""
    pkg_dir = REPO / "client-py" / "tests"
    name = "framebroker_client_tests"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, pkg_dir / "__init__.py", submodule_search_locations=[str(pkg_dir)]
        )
        assert spec is not None and spec.loader is not None
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[name] = pkg
        spec.loader.exec_module(pkg)
    return importlib.import_module(f"{name}.conftest")


fx = _load_client_fixtures()
BROKER_BIN: Path = fx.BROKER_BIN
GATEWAY_BIN: Path = fx.GATEWAY_BIN

#: The two test cameras: (width, height).
CAMERA_SIZES = [(640, 480), (320, 240)]


# --- the README ---------------------------------------------------------------


@dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence

    def __str__(self) -> str:
        return f"README.md:{self.line} ```{self.lang}"


def use_it_blocks() -> List[Block]:
    """The fenced blocks of the "## Use it" section, in order."""
    lines = README.read_text().splitlines()
    try:
        start = lines.index(SECTION)
    except ValueError:
        raise AssertionError(f"README.md has no {SECTION!r} section") from None
    blocks: List[Block] = []
    i = start + 1
    while i < len(lines) and not lines[i].startswith("## "):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if m:
            body: List[str] = []
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                body.append(lines[j])
                j += 1
            assert j < len(lines), f"README.md:{i + 1}: unclosed fence"
            blocks.append(Block(m.group(1), "\n".join(body) + "\n", i + 1))
            i = j
        i += 1
    return blocks


def blocks_of(lang: str) -> List[Block]:
    return [b for b in use_it_blocks() if b.lang == lang]


def sh_block(marker: str) -> Block:
    """The ```sh block whose commands contain ``marker``."""
    found = [b for b in blocks_of("sh") if marker in b.code]
    assert len(found) == 1, f"expected one ```sh block with {marker!r} in {SECTION}, found {len(found)}"
    return found[0]


RTSP_URL = re.compile(r"rtsp://[^\s'\"]+")


def camera_urls(code: str, cameras: List[fx.Camera]) -> Dict[str, str]:
    """README camera URL -> test camera URL, by order of first appearance."""
    distinct: List[str] = []
    for url in RTSP_URL.findall(code):
        if url not in distinct:
            distinct.append(url)
    assert len(distinct) <= len(cameras), f"more camera URLs than test cameras: {distinct}"
    return {url: cam.url for url, cam in zip(distinct, cameras)}


def substitute(code: str, stack: "Stack") -> str:
    """Camera URLs -> test cameras, the gateway's address -> the test gateway."""
    urls = camera_urls(code, stack.cameras)
    code = RTSP_URL.sub(lambda m: urls[m.group(0)], code)
    host = f"127.0.0.1:{stack.gateway.port}"
    return code.replace("localhost:8091", host).replace("127.0.0.1:8091", host)


# --- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="session")
def cameras() -> Iterator[List[fx.Camera]]:
    missing = [str(p) for p in (BROKER_BIN, GATEWAY_BIN) if not p.exists()]
    if missing:
        pytest.fail(f"build the binaries first (cargo build --workspace --bins): missing {missing}")
    made: List[fx.Camera] = []
    try:
        for w, h in CAMERA_SIZES:
            made.append(fx.Camera("--width", str(w), "--height", str(h), "--fps", "30", "--pattern", "smpte"))
        yield made
    finally:
        for c in made:
            c.kill()


@dataclass
class Stack:
    broker: fx.Broker
    gateway: fx.Gateway
    cameras: List[fx.Camera]

    def env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEBROKER_")}
        env["FRAMEBROKER_SOCKET"] = self.broker.socket
        env["NO_COLOR"] = "1"
        return env

    def logs(self) -> str:
        return f"--- broker log ---\n{self.broker.log()}\n--- gateway log ---\n" + self.gateway.log_path.read_text(
            errors="replace"
        )


@pytest.fixture
def stack(tmp_path: Path, cameras: List[fx.Camera]) -> Iterator[Stack]:
    """A broker of its own (``framebroker serve``) and a gateway in front of it."""
    d = tmp_path / "broker"
    d.mkdir()
    broker = fx.Broker(d, [])
    gateway = None
    try:
        gateway = fx.Gateway(broker)
        yield Stack(broker, gateway, cameras)
    finally:
        if gateway is not None:
            gateway.close()
        broker.close()


def run(argv: List[str], stack: Stack, timeout: float, cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            argv, cwd=cwd, env=stack.env(), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{shlex.join(argv)}: no end within {timeout} s\n{e.stdout}\n{e.stderr}") from None


def check_ok(p: subprocess.CompletedProcess, what: str, stack: Stack) -> None:
    assert p.returncode == 0, (
        f"{what}: exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}\n{stack.logs()}"
    )


# --- the completeness check ---------------------------------------------------


def test_every_language_is_run() -> None:
    """A block in a language not run here would be an unchecked example."""
    langs = [b.lang for b in use_it_blocks()]
    unknown = sorted({lang for lang in langs if lang not in RUNNERS})
    assert not unknown, (
        f"{SECTION} has blocks in {unknown}, which tests/readme/test_readme.py does not run: "
        "teach it to run them"
    )
    assert set(langs) == RUNNERS, f"expected examples in {sorted(RUNNERS)}, found {sorted(set(langs))}"


# --- Python -------------------------------------------------------------------

PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)\.\.\.(?:[ \t]*#.*)?$", re.M)
PY_FRAMES = 5


def python_program(block: Block, stack: Stack) -> str:
    w, h = CAMERA_SIZES[0]
    code = substitute(block.code, stack)
    m = PLACEHOLDER.search(code)
    assert m, f"{block}: no `...` placeholder line to replace"
    ind = m.group("indent")
    check = "\n".join(
        ind + line
        for line in [
            "assert isinstance(frame, _np.ndarray), type(frame)",
            f"assert frame.shape == ({h}, {w}, 3), frame.shape",
            "assert frame.dtype == _np.uint8, frame.dtype",
            "_frames.append(frame)",
            "_copies.append(frame.copy())",
            f"if len(_frames) >= {PY_FRAMES}:",
            "    assert all(_np.array_equal(a, b) for a, b in zip(_frames, _copies)), 'a kept frame changed'",
            "    assert _frames[0].mean() > 5, 'black frame'",
            "    print('frames', len(_frames), _frames[0].shape, flush=True)",
            "    sys.exit(0)",
        ]
    )
    header = "import sys\nimport numpy as _np\n_frames = []\n_copies = []\n"
    return header + code[: m.start()] + check + code[m.end() :]


def test_python_block(stack: Stack, tmp_path: Path) -> None:
    (block,) = blocks_of("python")
    program = tmp_path / "readme_example.py"
    program.write_text(python_program(block, stack))
    p = run([str(VENV_PYTHON), str(program)], stack, timeout=60, cwd=tmp_path)
    check_ok(p, f"{block} (as {program})", stack)
    assert f"frames {PY_FRAMES} " in p.stdout, p.stdout


# --- sh: HTTP -----------------------------------------------------------------

CURL_EXTRA = ["-sS", "--fail", "--max-time", "20"]


def commands(block: Block) -> Iterator[Tuple[str, List[str]]]:
    """(line, argv) of each command line; pure comment lines are not commands."""
    for line in block.code.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        yield line, shlex.split(line, comments=True)


def comment_urls(block: Block) -> List[str]:
    return [
        url.rstrip('">')
        for line in block.code.splitlines()
        if line.lstrip().startswith("#")
        for url in re.findall(r"(?:https?|wss?)://\S+", line)
    ]


def check_mjpeg(url: str) -> None:
    with urllib.request.urlopen(url, timeout=20) as r:
        assert r.status == 200, url
        assert r.headers.get_content_type() == "multipart/x-mixed-replace", r.headers
        data = b""
        deadline = time.monotonic() + 20
        while data.count(b"\xff\xd8") < 2 and time.monotonic() < deadline:
            data += r.read1(65536)
        assert data.count(b"\xff\xd8") >= 2, f"{url}: fewer than two JPEGs in {len(data)} bytes"


def check_websocket(url: str, width: int, height: int) -> None:
    from websockets.sync.client import connect

    with connect(url, open_timeout=10, max_size=None) as ws:
        msg = ws.recv(timeout=20)
    assert isinstance(msg, bytes), type(msg)
    if "format=jpeg" in url:
        magic, header_len = struct.unpack_from("<4sI", msg)
        assert magic == b"FBJ1", msg[:8]
        assert msg[header_len : header_len + 2] == b"\xff\xd8", "no JPEG after the FBJ1 header"
    else:
        assert len(msg) == width * height * 3, f"{url}: {len(msg)} bytes"


def test_http_block(stack: Stack, tmp_path: Path) -> None:
    block = sh_block("curl")
    code = substitute(block.code, stack)
    w, h = CAMERA_SIZES[0]
    ran = 0
    for line, argv in commands(Block(block.lang, code, block.line)):
        assert argv[0] == "curl", f"{block}: {line!r}: only curl is run in this block"
        p = run(["curl", *CURL_EXTRA, *argv[1:]], stack, timeout=30, cwd=tmp_path)
        check_ok(p, f"{block}: {line}", stack)
        ran += 1
        url = next((a for a in argv[1:] if re.match(r"^(https?://)?[\w.-]+:\d+/", a)), None)
        assert url, f"{block}: {line!r}: no URL"
        out = argv[argv.index("-o") + 1] if "-o" in argv else None
        if url.endswith("/api/streams"):
            answer = json.loads(p.stdout)
            assert "door" in json.dumps(answer), answer
        elif out and out.endswith(".bgr"):
            size = (tmp_path / out).stat().st_size
            assert size == w * h * 3, f"{line}: {out} has {size} bytes, not {w}x{h}x3"
        elif out and out.endswith(".jpg"):
            data = (tmp_path / out).read_bytes()
            assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9", f"{line}: {out} is not a JPEG"
        elif url.endswith("/metrics"):
            assert "# TYPE" in p.stdout, p.stdout[:500]
        else:
            raise AssertionError(f"{block}: {line!r}: the test does not know what this command should give")
    assert ran >= 4, f"{block}: only {ran} commands"
    # The MJPEG and WebSocket URLs of the comment lines.
    urls = comment_urls(Block(block.lang, code, block.line))
    kinds = set()
    for url in urls:
        if url.endswith("/mjpeg"):
            check_mjpeg(url)
            kinds.add("mjpeg")
        elif url.startswith("ws://"):
            check_websocket(url, w, h)
            check_websocket(url + "?format=jpeg", w, h)
            kinds.add("ws")
    assert kinds == {"mjpeg", "ws"}, f"{block}: the MJPEG and WebSocket URLs were not found: {urls}"


# --- sh: command line ---------------------------------------------------------


def test_command_line_block(stack: Stack, tmp_path: Path) -> None:
    block = sh_block("framebroker streams")
    code = substitute(block.code, stack)
    fb = [str(BROKER_BIN), "--socket", stack.broker.socket]
    seen = set()
    for line, argv in commands(Block(block.lang, code, block.line)):
        assert argv[0] == "framebroker", f"{block}: {line!r}: only framebroker is run in this block"
        args = argv[1:]
        if args[0] == "serve":
            # The fixture's broker is `framebroker serve`; a second one would only
            # fight it for the socket. Its flags are checked to exist instead.
            p = run([*fb, "serve", *args[1:], "--help"], stack, timeout=10, cwd=tmp_path)
            check_ok(p, line, stack)
            seen.add("serve")
            continue
        p = run([*fb, *args], stack, timeout=30, cwd=tmp_path)
        check_ok(p, f"{block}: {line}", stack)
        out = p.stdout + p.stderr
        key = " ".join(args[:2])
        seen.add(key)
        if key == "streams add":
            assert args[2] in out, f"{line}: {out}"
        elif key == "streams ls":
            for sid in ("door", "lobby"):
                assert sid in p.stdout, f"{line}: {sid} not listed:\n{p.stdout}"
            assert "pass@" not in p.stdout
        elif key == "streams stats":
            assert args[2] in out and "fps" in out, f"{line}: {out}"
        elif key == "streams rm":
            ls = run([*fb, "streams", "ls"], stack, timeout=30, cwd=tmp_path)
            check_ok(ls, "streams ls after rm", stack)
            assert not re.search(rf"\b{re.escape(args[2])}\b", ls.stdout), f"{args[2]} still listed:\n{ls.stdout}"
        elif args[0] == "doctor":
            assert "ffmpeg" in out, out
        else:
            raise AssertionError(f"{block}: {line!r}: the test does not know what this command should give")
    expected = {"serve", "streams add", "streams ls", "streams stats", "streams rm", "doctor"}
    assert seen == expected, f"{block}: ran {sorted(seen)}"


# --- Rust ---------------------------------------------------------------------

RUST_FRAMES = 5


def rust_program(block: Block, stack: Stack) -> str:
    code = substitute(block.code, stack)
    assert code.count("loop {") == 1, f"{block}: expected one `loop {{` to bound"
    code = code.replace("loop {", f"for _ in 0..{RUST_FRAMES} {{")
    body = "".join(f"    {line}\n" if line else "\n" for line in code.splitlines())
    return f"fn main() -> Result<(), Box<dyn std::error::Error>> {{\n{body}    Ok(())\n}}\n"


def test_rust_block(stack: Stack, tmp_path: Path) -> None:
    (block,) = blocks_of("rust")
    cargo = shutil.which("cargo")
    assert cargo, "cargo is not on PATH"
    project = tmp_path / "readme-example"
    (project / "src").mkdir(parents=True)
    (project / "Cargo.toml").write_text(
        "[package]\n"
        'name = "readme-example"\n'
        'version = "0.0.0"\n'
        'edition = "2021"\n'
        "publish = false\n\n"
        "[dependencies]\n"
        f"framebroker-client = {{ path = {json.dumps(str(REPO / 'client-rs'))} }}\n\n"
        "[workspace]\n"
    )
    # The workspace's lock file: the same dependency versions, all already fetched.
    shutil.copy(REPO / "Cargo.lock", project / "Cargo.lock")
    (project / "src" / "main.rs").write_text(rust_program(block, stack))
    target = REPO / "target" / "readme"
    env = {**stack.env(), "CARGO_TARGET_DIR": str(target)}
    try:
        build = subprocess.run(
            [cargo, "build", "--offline", "--quiet"],
            cwd=project, env=env, capture_output=True, text=True, timeout=900,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{block}: cargo build did not end within 900 s") from None
    assert build.returncode == 0, f"{block} does not compile (as {project}/src/main.rs):\n{build.stderr}"
    p = run([str(target / "debug" / "readme-example")], stack, timeout=60, cwd=tmp_path)
    check_ok(p, str(block), stack)
    lines = p.stdout.splitlines()
    w, h = CAMERA_SIZES[0]
    numbers = []
    for line in lines:
        m = re.fullmatch(rf"frame (\d+) \((\d+) skipped\) {w}x{h}", line)
        assert m, f"{block}: unexpected output line {line!r}"
        numbers.append(int(m.group(1)))
    assert len(numbers) == RUST_FRAMES, p.stdout
    assert numbers == sorted(set(numbers)), f"frame numbers not increasing: {numbers}"


# --- JS -----------------------------------------------------------------------

JS_FRAMES = 5


def test_js_block(stack: Stack, tmp_path: Path) -> None:
    (block,) = blocks_of("js")
    node = shutil.which("node")
    assert node, "node is not on PATH (scripts/setup.sh installs it)"
    code = substitute(block.code, stack)
    assert re.search(r"\bconst client\b", code), f"{block}: no `const client` to hand to the test"
    page_code = code + "window.readmeClient = client;\n"
    script = tmp_path / "readme_example.js"
    script.write_text(page_code)
    runner = Path(__file__).with_name("run_js.mjs")
    p = run([node, str(runner), stack.gateway.url, str(script), str(JS_FRAMES), "30000"], stack, 90, tmp_path)
    check_ok(p, f"{block} (in headless Chromium)", stack)
    result = json.loads(p.stdout.strip().splitlines()[-1])
    w, h = CAMERA_SIZES[0]
    assert result["frames"] >= JS_FRAMES, result
    assert (result["canvasWidth"], result["canvasHeight"]) == (w, h), result
