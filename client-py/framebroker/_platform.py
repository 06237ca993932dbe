"""What the client needs to know about the machine it runs on, asked in ways that
work everywhere it runs.

On Windows ``platform.machine()`` asks WMI first (CPython 3.12 and later), which
is slow, and under Wine 8 aborts the whole process (an unimplemented
``propsys.VariantToString``). The interpreter's own build platform answers the
question the client asks (which memory model the loads of *this* process have)
without it.
"""

from __future__ import annotations

import sys
import sysconfig

#: Whether this is a Windows interpreter (the ring is a named file mapping, the
#: wake-up uses events, the control connection is a named pipe: ``_win32``).
WINDOWS = sys.platform == "win32"


def machine() -> str:
    """The CPU architecture this interpreter runs as, e.g. ``x86_64``, ``aarch64``,
    ``amd64`` (lower case)."""
    if WINDOWS:
        # "win-amd64", "win-arm64", "win32" (x86).
        plat = sysconfig.get_platform().lower()
        return {"win32": "x86"}.get(plat, plat.split("-", 1)[-1])
    import platform

    return platform.machine().lower()
