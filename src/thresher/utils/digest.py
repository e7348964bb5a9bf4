"""SHA-1 digests of integer arrays by value: what logs and settings record of ids and tokens."""

from __future__ import annotations

import numpy as np

CHUNK = 1 << 20


def update_int64(h, values, chunk: int = CHUNK) -> None:
    """Feed ``values`` to hash ``h`` as little-endian int64, whatever dtype holds them, a chunk at a time (no
    int64 copy of a whole 600M-id selection)."""
    values = np.asarray(values)
    for i in range(0, len(values), chunk):
        h.update(np.ascontiguousarray(values[i : i + chunk], dtype="<i8").tobytes())
