"""The Kubernetes example in deploy/kubernetes: every manifest passes the official
Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields are errors),
a broken copy does not, the per-node configs load in the real broker, the pieces
agree with each other, and the DaemonSet's node-selection script and the
consumer's read-only mounts work for real."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from .helpers import BROKER_BIN, DEPLOY, REPO, clean_env, config_check, run, unique, wait_for, workspace_version

kv = pytest.importorskip(
    "kubernetes_validate",
    reason="kubernetes-validate is not installed in this venv (scripts/setup.sh --test installs it in .venv)",
)
yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate")

K8S = DEPLOY / "kubernetes"
# The Kubernetes version whose schemas the manifests are checked against.
K8S_VERSION = "1.30.0"


def documents() -> List[Dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def by_kind(kind: str) -> List[Dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


def errors(doc: Dict[str, Any]) -> List[str]:
    try:
        kv.validate(doc, K8S_VERSION, strict=True)
    except kv.ValidationError as e:
        return [f"{'.'.join(map(str, e.path))}: {e.message}"]
    return []


def test_every_manifest_passes_the_kubernetes_schemas() -> None:
    docs = documents()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "DaemonSet", "Deployment", "Namespace", "Service"], kinds
    for d in docs:
        assert errors(d) == [], f"{d['kind']}/{d['metadata']['name']}"
        print(f"{d['kind']}/{d['metadata']['name']}: valid for Kubernetes {K8S_VERSION} (strict)")


def test_a_broken_manifest_fails_the_check() -> None:
    (ds,) = by_kind("DaemonSet")
    typo = copy.deepcopy(ds)
    typo["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = typo["spec"]["template"]["spec"][
        "containers"][0].pop("volumeMounts")
    assert errors(typo), "an unknown field is refused"
    wrong_type = copy.deepcopy(ds)
    wrong_type["spec"]["template"]["spec"]["containers"][1]["ports"][0]["containerPort"] = "http"
    assert errors(wrong_type), "a port that is not a number is refused"
    missing = copy.deepcopy(ds)
    del missing["spec"]["selector"]
    assert errors(missing), "a DaemonSet without a selector is refused"


def node_configs() -> Dict[str, str]:
    (cm,) = by_kind("ConfigMap")
    return cm["data"]


@pytest.mark.usefixtures("binaries")
def test_every_node_config_loads_in_the_broker(tmp_path: Path) -> None:
    import tomllib

    data = node_configs()
    assert "default.toml" in data, "nodes without a file of their own get default.toml"
    for key, text in data.items():
        assert key.endswith(".toml"), key
        path = tmp_path / key
        path.write_text(text)
        assert config_check(path) is None, f"{key}: {config_check(path)}"
        cfg = tomllib.loads(text)
        assert cfg["broker"]["socket"] == "/run/framebroker/control.sock", key
        assert cfg["broker"]["group_access"] is True, key  # consumer pods read through the group
        assert cfg["gateway"]["listen"] == "0.0.0.0:8091", key
    # And the checker does refuse a bad file.
    bad = tmp_path / "bad.toml"
    bad.write_text('[broker]\nshm_budget_mb = "lots"\n')
    assert "shm_budget_mb" in (config_check(bad) or "")


def test_the_manifests_agree_with_each_other_and_the_image() -> None:
    (ds,) = by_kind("DaemonSet")
    (svc,) = by_kind("Service")
    (app,) = by_kind("Deployment")
    (cm,) = by_kind("ConfigMap")
    (ns,) = by_kind("Namespace")
    pod = ds["spec"]["template"]["spec"]
    for d in documents():
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == ns["metadata"]["name"]
    # Images: the version of this workspace, never `latest`.
    for c in pod["initContainers"] + pod["containers"]:
        assert c["image"].endswith(f"/framebroker:{workspace_version()}"), c["image"]
    # The image's user and group (Dockerfile: --uid 10001, group 10001).
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsGroup"] == 10001
    assert 10001 in app["spec"]["template"]["spec"]["securityContext"]["supplementalGroups"]
    # The node's name selects the config.
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["config"]["configMap"]["name"] == cm["metadata"]["name"]
    for c in pod["containers"]:
        env = {e["name"]: e for e in c["env"]}
        assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        assert '/config/${NODE_NAME}.toml' in c["args"][0]
        mounts = {m["mountPath"]: vols[m["name"]] for m in c["volumeMounts"]}
        assert mounts["/dev/shm"]["hostPath"]["path"] == "/dev/shm"
        assert mounts["/run/framebroker"]["hostPath"]["path"] == "/run/framebroker"
        assert env["FRAMEBROKER_SOCKET"]["value"] == "/run/framebroker/control.sock"
    # The consumer mounts the same node directories and reads a stream of its node.
    spec = app["spec"]["template"]["spec"]
    cvols = {v["name"]: v for v in spec["volumes"]}
    (c,) = spec["containers"]
    mounts = {m["mountPath"]: (cvols[m["name"]], m.get("readOnly")) for m in c["volumeMounts"]}
    assert mounts["/dev/shm"] == ({"name": "shm", "hostPath": {"path": "/dev/shm", "type": "Directory"}}, True)
    assert mounts["/run/framebroker"][0]["hostPath"]["path"] == "/run/framebroker"
    node = spec["nodeSelector"]["kubernetes.io/hostname"]
    import tomllib

    streams = [s["id"] for s in tomllib.loads(cm["data"][f"{node}.toml"]).get("streams", [])]
    assert "framebroker://entrance" in c["args"][0] and "entrance" in streams
    # The Service reaches the gateway port of the DaemonSet's pods.
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    gw = next(c for c in pod["containers"] if c["name"] == "gateway")
    assert svc["spec"]["ports"][0]["targetPort"] in [p["name"] for p in gw["ports"]]
    assert gw["readinessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.usefixtures("binaries")
@pytest.mark.parametrize("node, expect", [("node-x", "x"), ("node-without-cameras", "d")])
def test_the_daemonset_script_starts_the_broker_with_its_nodes_file(node: str, expect: str, tmp_path: Path) -> None:
    """The broker container's own script, run with the real broker: NODE_NAME picks
    /config/<node>.toml, else default.toml. The files here use the built-in test
    source (the ConfigMap's cameras are on addresses no test may contact)."""
    (ds,) = by_kind("DaemonSet")
    broker_c = next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "broker")
    assert broker_c["command"] == ["/bin/sh", "-c"]
    script = broker_c["args"][0].replace("/config/", f"{tmp_path}/config/")
    (tmp_path / "config").mkdir()
    for name, sid in [("node-x.toml", "x"), ("default.toml", "d")]:
        (tmp_path / "config" / name).write_text(
            f'[broker]\ngroup_access = true\n[[streams]]\nid = "{sid}"\nurl = "testsrc://?size=160x120&rate=10"\n')
    sock = tmp_path / "control.sock"
    prefix = f"{unique('fbk')}-"
    env = {e["name"]: e.get("value") for e in broker_c["env"]}
    assert env["FRAMEBROKER_SHM_PREFIX"] == "fb-", "one prefix per node is set, not left to the file"
    # A ring left by a crashed broker of this pod (same prefix, a dead writer): the
    # broker removes it at start and reuses its name. (A predecessor with the
    # broker's own pid, the container case, is covered by proto's unit tests.)
    sys.path.insert(0, str(REPO / "client-py" / "tests"))
    from ringwriter import RingWriter

    leftover = Path("/dev/shm") / f"{prefix}{expect}.1"
    w = RingWriter("/" + leftover.name, stream_id=expect)
    w.set_u32(72, 4_194_305)  # writer pid: beyond pid_max, so dead
    w.close(unlink=False)
    old_inode = leftover.stat().st_ino
    p = subprocess.Popen(
        ["/bin/sh", "-c", script],
        env=clean_env(PATH=f"{BROKER_BIN.parent}:{os.environ['PATH']}", NODE_NAME=node,
                      FRAMEBROKER_SOCKET=str(sock), FRAMEBROKER_SHM_PREFIX=prefix),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        def listed():
            r = run([str(BROKER_BIN), "--socket", str(sock), "streams", "ls"], timeout=20, env=clean_env())
            return r.stdout if r.returncode == 0 and r.stdout.strip() else None

        out = wait_for(20, listed, step=0.2)
        assert out, "the broker answers"
        ids = [line.split()[0] for line in out.strip().splitlines()[1:]]
        assert ids == [expect], out
        assert sock.stat().st_mode & 0o777 == 0o660, "group_access: the socket is the group's too"
        def new_ring() -> Optional[List[str]]:
            # The stream is listed at once; its ring is made when its first frame
            # comes, after the leftover was removed: wait for a new file there.
            try:
                made = leftover.stat().st_ino != old_inode
            except FileNotFoundError:
                made = False
            return sorted(x.name for x in Path("/dev/shm").glob(prefix + "*")) if made else None

        segments = wait_for(20, new_ring, step=0.1)
        assert segments == [f"{prefix}{expect}.1"], segments  # the leftover's name, now the new ring
        assert leftover.stat().st_ino != old_inode, "the leftover was removed, the name is a new ring"
        assert leftover.stat().st_mode & 0o777 == 0o640
    finally:
        p.terminate()
        _, err = p.communicate(timeout=20)
        leftover.unlink(missing_ok=True)
    assert f"node {node}: {tmp_path}/config/{'node-x' if expect == 'x' else 'default'}.toml" in err


READER = textwrap.dedent(
    """
    import framebroker
    cap = framebroker.VideoCapture("framebroker://ro")
    got = []
    for _ in range(50):
        ok, frame = cap.read()
        if ok:
            got.append(int(cap.get(framebroker.CAP_PROP_POS_FRAMES)))
            if len(got) == 3:
                break
    print(*got)
    """
)


@pytest.mark.usefixtures("binaries")
def test_a_consumer_reads_through_read_only_mounts(tmp_path: Path) -> None:
    """consumer.yaml mounts /dev/shm and the socket directory read-only: a Python
    reader in a mount namespace with both remounted read-only still gets frames."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to make a mount namespace with read-only mounts")
    sockdir = tmp_path / "run"
    sockdir.mkdir()
    sock = sockdir / "control.sock"
    prefix = f"{unique('fbr')}-"
    broker = subprocess.Popen(
        [str(BROKER_BIN), "serve", "--socket", str(sock), "--shm-prefix", prefix,
         "--stream", "ro=testsrc://?size=160x120&rate=20"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env(),
    )
    try:
        assert wait_for(20, lambda: True if sock.exists() else None)
        ro = (f"mount --bind /dev/shm /dev/shm && mount -o remount,bind,ro /dev/shm && "
              f"mount --bind {sockdir} {sockdir} && mount -o remount,bind,ro {sockdir} && "
              f"! touch /dev/shm/{prefix}probe 2>/dev/null && exec \"$0\" -c \"$1\"")
        r = run(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", ro, sys.executable, READER],
                timeout=120, env=clean_env(FRAMEBROKER_SOCKET=str(sock)))
        if r.returncode != 0 and "unshare failed" in r.stderr:
            pytest.skip(f"no mount namespace here: {r.stderr.strip()}")
        assert r.returncode == 0, r.stdout + r.stderr
        got = [int(n) for n in r.stdout.split()]
        assert len(got) == 3 and got == sorted(set(got)), got
    finally:
        broker.terminate()
        broker.wait(timeout=20)
