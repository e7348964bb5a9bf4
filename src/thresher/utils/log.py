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


# seconds between refreshes of a bar whose stream is not a terminal (a log file, a pipe, SLURM's output): tqdm
# refreshes every 0.1 s, and a bar shown below another (the influence phases under the train bar) writes a
# new line at each refresh there, hundreds of lines per selection update
NON_TTY_REFRESH_S = 30.0


def bar_options(file=None, **kw) -> dict:
    """tqdm keyword arguments for a bar on ``file`` (default stderr): refreshed rarely when it is not a TTY."""
    file = sys.stderr if file is None else file
    isatty = getattr(file, "isatty", None)
    if not (isatty and isatty()):
        kw.setdefault("mininterval", NON_TTY_REFRESH_S)
        if kw.get("leave") is False:  # a phase bar (influence factors, scoring...): shown only once it runs
            kw.setdefault("delay", NON_TTY_REFRESH_S)  # that long, so a log gets no lines for short phases
    return {"file": file, "dynamic_ncols": True, **kw}


def _bars_on() -> bool:
    """Progress bars show on rank 0 unless THRESHER_NO_PROGRESS=1."""
    return rank() == 0 and os.environ.get("THRESHER_NO_PROGRESS") != "1"


def progress(it: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it", **kw) -> Iterable[T]:
    """A tqdm bar on rank 0 (stderr), a plain iterator elsewhere or when THRESHER_NO_PROGRESS=1."""
    if not _bars_on():
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, unit=unit, **bar_options(**kw))


class _NoBar:
    """What progress_bar returns off rank 0 or with THRESHER_NO_PROGRESS=1: every call does nothing."""

    def update(self, n: float = 1) -> None: ...

    def set_postfix(self, *args, **kwargs) -> None: ...

    def close(self) -> None: ...


def progress_bar(total: float | None, desc: str = "", unit: str = "it", **kw):
    """A tqdm bar updated by hand (``update(n)``, ``close()``) under progress()'s rules: rank 0 only, none with
    THRESHER_NO_PROGRESS=1, and on a stream that is not a terminal refreshed every NON_TTY_REFRESH_S (a phase bar,
    ``leave=False``, appears only once it has run that long)."""
    if not _bars_on():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, **bar_options(**kw))
