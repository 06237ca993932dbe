"""URL -> stream id derivation and redaction, against vectors computed by the Rust
functions (proto/src/naming.rs `stream_id_for_url`, `redact_url`, `validate_stream_id`,
`segment_name`)."""

from __future__ import annotations

import json
import random

import pytest

from framebroker import redact_url, stream_id_for_url, validate_stream_id
from framebroker._naming import goes_to_broker

from .paths import TESTDATA

# (url, stream_id_for_url(url), redact_url(url)) as the Rust functions compute them,
# regenerated and checked by `cargo test -p framebroker-proto --test golden`.
GOLDEN = json.loads((TESTDATA / "naming.json").read_text(encoding="utf-8"))
RUST_VECTORS = [(v["url"], v["stream_id"], v["redacted"]) for v in GOLDEN["vectors"]]


@pytest.mark.parametrize("url, want_id, want_redacted", RUST_VECTORS)
def test_same_as_rust(url: str, want_id: str, want_redacted: str) -> None:
    assert stream_id_for_url(url) == want_id
    assert redact_url(url) == want_redacted


def test_ids_never_carry_credentials() -> None:
    a = stream_id_for_url("rtsp://admin:secret@10.0.0.1:554/stream1?x=1")
    assert "secret" not in a and "admin" not in a
    assert a != stream_id_for_url("rtsp://admin:other@10.0.0.1:554/stream1?x=1")


def test_derived_ids_are_always_valid() -> None:
    rng = random.Random(42)
    alphabet = "abcXYZ019:/@?#&=._-~% \u00e9\u4e2d\U0001f600"
    for _ in range(2000):
        url = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
        validate_stream_id(stream_id_for_url(url))


@pytest.mark.parametrize("v", GOLDEN["ids"], ids=lambda v: repr(v["id"]))
def test_id_rule_same_as_rust(v: dict) -> None:
    if v["valid"]:
        validate_stream_id(v["id"])
        # The segment name the broker makes splits back at its last dot.
        stem, gen = v["segment"].rsplit(".", 1)
        assert (stem, gen) == ("/fb-" + v["id"], "7")
    else:
        assert v["segment"] is None
        with pytest.raises(ValueError, match="invalid stream id"):
            validate_stream_id(v["id"])


def test_ids() -> None:
    for ok in ["a", "cam-1", "Front_Door", "x" * 64, "camera.1", "a.b.c"]:
        validate_stream_id(ok)
    for bad in ["", "../etc", "a/b", ".a", ".", "..", "a..b", "a b", "nul\0", "\u00e9", "x" * 65, "%2e%2e"]:
        with pytest.raises(ValueError, match="invalid stream id"):
            validate_stream_id(bad)


def test_redaction_of_query_secrets() -> None:
    assert redact_url("rtsp://u:p@ss@host/x") == "rtsp://***@host/x"
    assert redact_url("rtsp://host/x?user=a&password=b&ch=1") == "rtsp://host/x?user=***&password=***&ch=1"


def test_routing() -> None:
    for url in ["rtsp://h/x", "RTSP://h/x", "rtsps://h/x", "testsrc://?size=320x240"]:
        assert goes_to_broker(url), url
    for src in ["/tmp/a.mp4", "file:///tmp/a.mp4", "http://h/x.mjpg", "0", "concat:a|b", "rtspx://h"]:
        assert not goes_to_broker(src), src
