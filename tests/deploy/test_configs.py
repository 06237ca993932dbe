"""The example config files in deploy/ load in the real broker (without contacting
the example cameras: see helpers.config_check)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import DEPLOY, config_check

pytestmark = pytest.mark.usefixtures("binaries")


@pytest.mark.parametrize("rel", ["framebroker.toml", "docker/framebroker.toml"])
def test_the_example_config_loads_in_the_broker(rel: str) -> None:
    assert config_check(DEPLOY / rel) is None, config_check(DEPLOY / rel)


def test_a_bad_config_is_refused_with_its_place(tmp_path: Path) -> None:
    bad = tmp_path / "framebroker.toml"
    bad.write_text((DEPLOY / "framebroker.toml").read_text().replace('pixel_format = "bgr24"', 'pixel_format = "bgra"'))
    said = config_check(bad)
    assert said is not None and f"{bad}:" in said and "pixel_format" in said, said


def test_the_deploy_docs_name_files_that_exist_and_this_version() -> None:
    import re

    from .helpers import REPO, workspace_version

    text = (REPO / "docs" / "DEPLOY.md").read_text()
    paths = set(re.findall(r"\b(deploy/[\w./-]+\w)", text))
    assert len(paths) >= 8, paths
    for p in paths:
        assert (REPO / p).exists(), f"docs/DEPLOY.md names {p}, which does not exist"
    v = workspace_version()
    for tag in re.findall(r"framebroker:(\d[\w.]*)", text):
        assert tag == v, f"image tag {tag} in docs/DEPLOY.md, version is {v}"
    for wheel in re.findall(r"framebroker-(\d[\w.]*?)-(?:py3|cp3|\*)", text):
        assert wheel == v, wheel
    for unit in ["framebroker.service", "framebroker-gateway.service"]:
        assert f"deploy/systemd/{unit}" in text
