"""The Dockerfile and the container's entrypoint.

Building the image needs the base images rust:1.95-bookworm and
debian:bookworm-slim from a container registry. The machines this suite runs on
reach the package registries only (crates.io, PyPI, Debian, npm), not a container
registry, so `test_the_image_builds_and_turns_healthy` is skipped there with
the pull error as its reason (FRAMEBROKER_REQUIRE_DOCKER=1 turns that skip into
a failure). Everything else is checked without a daemon: the Dockerfile's shape,
what it copies, and the entrypoint with the real binaries, config and HEALTHCHECK
command it ships."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from .helpers import BROKER_BIN, DEPLOY, REPO, clean_env, free_port, run, unique, wait_for, workspace_version

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        buf += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def stages() -> List[List[Tuple[str, str]]]:
    out: List[List[Tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            out.append([])
        assert out, "the Dockerfile starts with FROM"
        out[-1].append(ins)
    return out


def dockerignored(rel: str) -> bool:
    patterns = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/"))
               or fnmatch.fnmatch(parts[i], pat.removeprefix("**/"))
               for pat in patterns for i, p in enumerate(prefixes))


def test_the_dockerfile_is_multi_stage_pinned_and_non_root() -> None:
    st = stages()
    assert len(st) == 2, "a build stage and a runtime stage"
    froms = [s[0][1] for s in st]
    assert froms[0] == "rust:1.95-bookworm AS build"
    assert froms[1] == "debian:bookworm-slim"
    for f in froms:
        image = f.split()[0]
        assert ":" in image and not image.endswith(":latest"), f"pinned tag: {f}"
    runtime = st[1]
    users = [a for i, a in runtime if i == "USER"]
    assert users, "the runtime stage sets USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    runs = " ".join(a for i, a in runtime if i == "RUN")
    assert re.search(r"apt-get install .*\bffmpeg\b", runs), "ffmpeg from Debian"
    assert "useradd" in runs and "--uid 10001" in runs
    assert "cmake" in " ".join(a for i, a in st[0] if i == "RUN") and "nasm" in " ".join(a for i, a in st[0] if i == "RUN")
    health = [a for i, a in runtime if i == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0]
    assert ("EXPOSE", "8091") in runtime
    assert any(i == "ENTRYPOINT" for i, _ in runtime)
    text = DOCKERFILE.read_text()
    assert "--shm-size" in text and "/dev/shm" in text, "the /dev/shm size note"


def test_everything_the_dockerfile_copies_exists_and_is_not_ignored() -> None:
    copies = [a for s in stages() for i, a in s if i == "COPY" and not a.startswith("--from")]
    assert copies
    for args in copies:
        *sources, _dest = shlex.split(args)
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: missing"
            assert not dockerignored(src), f"COPY {src}: excluded by .dockerignore"
    # The workspace members the build stage needs are all copied.
    import tomllib

    with open(REPO / "Cargo.toml", "rb") as f:
        members = tomllib.load(f)["workspace"]["members"]
    copied = {s for args in copies for s in shlex.split(args)[:-1]}
    # A member inside a copied directory (broker/decoder in broker) comes with it.
    missing = {m for m in members if not any(m == c or m.startswith(c + "/") for c in copied)}
    assert not missing, f"workspace members not copied: {missing}"
    assert {"Cargo.toml", "Cargo.lock"} <= copied
    # And nothing heavy or generated goes into the build context.
    for rel in ["target", ".venv", "web-gateway/tests/browser/node_modules", ".git"]:
        assert dockerignored(rel), rel


def healthcheck_command() -> str:
    (health,) = [a for s in stages() for i, a in s if i == "HEALTHCHECK"]
    return health.split(" CMD ", 1)[1]


def get(url: str, token: Optional[str] = None) -> Tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_entrypoint_runs_broker_and_gateway_with_the_image_config(binaries: None, tmp_path: Path) -> None:
    """The image's entrypoint, default command (`all`) and config, run here with the
    built binaries; only the paths a container owns are moved into a temp dir."""
    port = free_port()
    prefix = f"{unique('fbd')}-"
    token_file = tmp_path / "token"
    env = clean_env(
        PATH=f"{BROKER_BIN.parent}:{os.environ['PATH']}",
        FRAMEBROKER_CONFIG=str(DEPLOY / "docker" / "framebroker.toml"),
        FRAMEBROKER_SOCKET=str(tmp_path / "control.sock"),
        FRAMEBROKER_SHM_PREFIX=prefix,
        FRAMEBROKER_FFMPEG=shutil.which("ffmpeg") or "ffmpeg",
        FRAMEBROKER_GATEWAY_LISTEN=f"127.0.0.1:{port}",
        FRAMEBROKER_GATEWAY_TOKEN_FILE=str(token_file),
    )
    p = subprocess.Popen([str(DEPLOY / "docker" / "entrypoint.sh")], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> Optional[Dict]:
            try:
                code, body = get(f"{base}/healthz")
            except OSError:
                return None
            h = json.loads(body) if code == 200 else None
            return h if h and h["broker_reachable"] else None

        health = wait_for(30, healthy, step=0.2)
        assert health, "gateway healthy and reaching the broker"
        assert health["version"] == workspace_version() and health["auth"] is True
        # A token was made, for this user only, and guards the API.
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert re.fullmatch(r"[0-9a-f]{48}", token), token
        assert get(f"{base}/api/streams")[0] == 401
        # The demo stream of the image's config gives frames.
        snap = wait_for(30, lambda: (lambda r: r if r[0] == 200 else None)(
            get(f"{base}/api/streams/demo/snapshot.jpg", token)), step=0.3)
        assert snap and snap[1][:3] == b"\xff\xd8\xff", "a JPEG of the demo stream"
        # The Dockerfile's own HEALTHCHECK command, on this port.
        cmd = healthcheck_command().replace("127.0.0.1:8091", f"127.0.0.1:{port}")
        assert run(["/bin/sh", "-c", cmd], timeout=30).returncode == 0, cmd
    finally:
        # What `docker stop` does: SIGTERM to the entrypoint only (tini passes it
        # on); the entrypoint stops both programs.
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            out, _ = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
    assert p.returncode == 0, f"a stop request ends the container cleanly:\n{out[-3000:]}"
    assert token not in out, "the token is never printed"
    assert not list(Path("/dev/shm").glob(prefix + "*")), "the broker removed its segments"


def test_the_entrypoint_ends_when_one_process_dies(binaries: None, tmp_path: Path) -> None:
    # A gateway that cannot start (its port taken) ends the container with an
    # error, so a restart policy brings both back, instead of a half-alive container.
    import socket as so

    with so.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = clean_env(
            PATH=f"{BROKER_BIN.parent}:{os.environ['PATH']}",
            FRAMEBROKER_CONFIG=str(DEPLOY / "docker" / "framebroker.toml"),
            FRAMEBROKER_SOCKET=str(tmp_path / "control.sock"),
            FRAMEBROKER_SHM_PREFIX=f"{unique('fbd')}-",
            FRAMEBROKER_FFMPEG=shutil.which("ffmpeg") or "ffmpeg",
            FRAMEBROKER_GATEWAY_LISTEN=f"127.0.0.1:{port}",
            FRAMEBROKER_TOKEN="t0ken-for-this-test",
        )
        r = run([str(DEPLOY / "docker" / "entrypoint.sh")], timeout=60, env=env, start_new_session=True)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "stopping the other" in r.stderr, r.stderr


def docker_unavailable() -> Optional[str]:
    """Why the image cannot be built here, or None when it can."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker client on this machine"
    r = run([docker, "info", "--format", "{{.ServerVersion}}"], timeout=60)
    if r.returncode != 0:
        return f"no Docker daemon reachable: {r.stderr.strip()[:300]}"
    for image in ("rust:1.95-bookworm", "debian:bookworm-slim"):
        if run([docker, "image", "inspect", image], timeout=60).returncode == 0:
            continue
        pull = run([docker, "pull", image], timeout=600)
        if pull.returncode != 0:
            return f"base image {image} cannot be pulled: {pull.stderr.strip()[:300]}"
    return None


def test_the_image_builds_and_turns_healthy() -> None:
    why = docker_unavailable()
    if why is not None:
        if os.environ.get("FRAMEBROKER_REQUIRE_DOCKER") == "1":
            pytest.fail(f"FRAMEBROKER_REQUIRE_DOCKER=1 but {why}")
        pytest.skip(f"image not built: {why}")
    tag = f"framebroker-test:{unique('t')}"
    name = unique("fb-test-")
    try:
        r = run(["docker", "build", "-t", tag, str(REPO)], timeout=3600)
        assert r.returncode == 0, r.stderr[-4000:]
        r = run(["docker", "run", "-d", "--name", name, "--shm-size=256m", "-p", "127.0.0.1::8091", tag], timeout=120)
        assert r.returncode == 0, r.stderr
        state = wait_for(120, lambda: (lambda s: s if s in ("healthy", "unhealthy") else None)(
            run(["docker", "inspect", "-f", "{{.State.Health.Status}}", name], timeout=30).stdout.strip()), step=2)
        assert state == "healthy", run(["docker", "logs", name], timeout=30).stderr[-3000:]
        who = run(["docker", "exec", name, "id", "-u"], timeout=30).stdout.strip()
        assert who == "10001"
        v = run(["docker", "exec", name, "framebroker", "--version"], timeout=30).stdout.strip()
        assert v == f"framebroker {workspace_version()}"
    finally:
        run(["docker", "rm", "-f", name], timeout=120)
        run(["docker", "image", "rm", "-f", tag], timeout=120)
