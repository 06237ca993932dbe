"""Stream ids, URL routing and credential redaction, mirroring ``proto/src/naming.rs``.

:func:`stream_id_for_url` must give exactly the id the Rust side derives for the
same URL (``naming::stream_id_for_url``), so that Python, Rust and the gateway
opening one camera by URL all land on one stream; ``tests/test_naming.py`` checks
vectors computed by the Rust function.
"""

from __future__ import annotations

import re
import zlib
from typing import Optional, Tuple

from ._layout import MAX_ID_LEN

#: Schemes that go to the broker (the rest falls back to OpenCV).
BROKER_SCHEMES = ("rtsp", "rtsps", "testsrc")
#: ``framebroker://<id>``: attach to a stream by id without starting anything.
ID_SCHEME = "framebroker"

_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,%d}" % MAX_ID_LEN)
_SECRET_KEYS = ("password", "pass", "pwd", "passwd", "user", "username", "token", "auth")


def validate_stream_id(id: str) -> None:
    """Raises ``ValueError`` unless ``id`` is 1 to 64 characters of ``[A-Za-z0-9_.-]``,
    not starting with ``.`` and without ``..`` (the broker's rule)."""
    if not isinstance(id, str) or not _ID_RE.fullmatch(id) or id.startswith(".") or ".." in id:
        raise ValueError(
            f"invalid stream id {id!r}: 1 to {MAX_ID_LEN} characters from A-Z a-z 0-9 _ - ., "
            "not starting with '.', without '..'"
        )


def _is_id_char(c: str) -> bool:
    return c.isascii() and c.isalnum()


def stream_id_for_url(url: str) -> str:
    """The stream id the Rust side derives from ``url``: host, port and path squeezed
    into ``[A-Za-z0-9_-]`` (never the credentials), then ``-`` and the CRC-32 of the
    whole URL as 8 hex digits, so two URLs never share an id."""
    rest = url.split("://", 1)[1] if "://" in url else url
    end = len(rest)
    for sep in "/?#":
        i = rest.find(sep)
        if i != -1:
            end = min(end, i)
    authority, path = rest[:end], rest[end:]
    host = authority.rsplit("@", 1)[1] if "@" in authority else authority
    path = re.split(r"[?#]", path, maxsplit=1)[0]
    readable = "".join(c if _is_id_char(c) else "_" for c in host + path)
    readable = readable.strip("_")
    if not readable:
        # No host or path (``testsrc://?size=...``): name it after the scheme.
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        readable = scheme if scheme and scheme.isascii() and scheme.isalpha() else "stream"
    readable = readable[: MAX_ID_LEN - 9]
    crc = zlib.crc32(url.encode("utf-8")) & 0xFFFFFFFF
    return f"{readable}-{crc:08x}"


def scheme_of(source: str) -> str:
    """The lower-cased scheme of ``source`` (``""`` when it has none)."""
    if "://" not in source:
        return ""
    scheme = source.split("://", 1)[0]
    return scheme.lower() if scheme.isascii() and scheme.isalpha() else ""


def goes_to_broker(source: str) -> bool:
    """Whether a source string is served by framebroker rather than OpenCV."""
    return scheme_of(source) in BROKER_SCHEMES


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` and credential-like
    query values by ``***``: the only form of a URL that may reach logs or errors."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    end = len(rest)
    for sep in "/?#":
        i = rest.find(sep)
        if i != -1:
            end = min(end, i)
    authority, path = rest[:end], rest[end:]
    out = f"{scheme}://***@{authority.rsplit('@', 1)[1]}{path}" if "@" in authority else url
    q = out.find("?")
    if q != -1:
        head, query = out[: q + 1], out[q + 1 :]
        items = []
        for kv in query.split("&"):
            k, sep, _ = kv.partition("=")
            items.append(f"{k}=***" if sep and k.lower() in _SECRET_KEYS else kv)
        out = head + "&".join(items)
    return out


def resolve_source(source: str) -> Tuple[Optional[str], str, str]:
    """``(url, stream_id, display)`` for a capture source: ``framebroker://ID`` names a
    running stream (no URL); any other source is a URL whose id is derived from it.
    ``display`` is the source with credentials redacted."""
    if scheme_of(source) == ID_SCHEME:
        stream_id = source.split("://", 1)[1].strip("/")
        validate_stream_id(stream_id)
        return None, stream_id, redact_url(source)
    return source, stream_id_for_url(source), redact_url(source)
