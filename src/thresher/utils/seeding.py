"""Seeded, named random streams so every component's randomness is replayable and independent."""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *names: str | int) -> int:
    """A 63-bit seed derived from a base seed and a path of names (stable across runs and platforms)."""
    h = hashlib.sha256(str(seed).encode())
    for n in names:
        h.update(b"/" + str(n).encode())
    return int.from_bytes(h.digest()[:8], "little") >> 1


def rng(seed: int, *names: str | int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *names))
