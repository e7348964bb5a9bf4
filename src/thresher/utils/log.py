"""Rank-aware printing and progress bars (rank 0 speaks, other ranks stay quiet)."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only; flushes so progress shows under pipes and torchrun."""
    if rank() == 0:
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def progress(it: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it", **kw) -> Iterable[T]:
    """A tqdm bar on rank 0 (stderr), a plain iterator elsewhere or when THRESHER_NO_PROGRESS=1."""
    if rank() != 0 or os.environ.get("THRESHER_NO_PROGRESS") == "1":
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, **kw)
