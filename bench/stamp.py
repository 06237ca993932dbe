"""Decodes the capture wall clock that ``tests/camera/rtsp_camera.py --stamp``
writes into the top-left corner of every picture (2 rows x 20 blocks of 16x16
pixels: 32 bits of ms since the epoch modulo 2^32, then an 8-bit check)."""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

BLOCK, COLS, ROWS = 16, 20, 2
_WEIGHTS = (1 << np.arange(39, -1, -1, dtype=np.uint64)).astype(np.uint64)


def decode_ms(frame: np.ndarray) -> Optional[int]:
    """The stamp (ms modulo 2^32) of a BGR (H, W, 3) or grey (H, W) frame, or None
    when the check fails (a picture without a readable stamp)."""
    if frame.ndim == 2:
        frame = frame[:, :, None]
    h, w = frame.shape[:2]
    if h < BLOCK * ROWS or w < BLOCK * COLS:
        return None
    corner = frame[: BLOCK * ROWS, : BLOCK * COLS].reshape(ROWS, BLOCK, COLS, BLOCK, -1)
    # The centre 8x8 of each block: away from the edges H.264 blurs.
    level = corner[:, 4:12, :, 4:12, :].mean(axis=(1, 3, 4))
    bits = (level.reshape(-1) > 128).astype(np.uint64)
    word = int((bits * _WEIGHTS).sum())
    value, check = word >> 8, word & 0xFF
    expect = ((value >> 24) ^ (value >> 16) ^ (value >> 8) ^ value ^ 0xA5) & 0xFF
    return value if check == expect else None


def age_ms(stamp: int, now_ms: Optional[int] = None) -> int:
    """Age of a frame stamped ``stamp`` (ms mod 2^32) at wall-clock ``now_ms``."""
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    return (now_ms - stamp) % (1 << 32)
