"""A pool of spawned worker processes that Ctrl-C stops at once and a dead worker fails (ingest and label jobs).

* The workers ignore SIGINT: Ctrl-C, which a terminal sends to the whole process group, is the main process's to
  handle; it terminates the workers (their unfinished shards have no ``.done`` marker, so a rerun redoes them) and
  re-raises. A worker killed mid-task by Ctrl-C could die holding the pool's queue lock.
* A worker that dies (the OOM killer) fails the job with one line instead of hanging it (an executor, not
  ``multiprocessing.Pool``).
* The workers exit when the main process is killed (``exit_with_parent``).
* ``completed`` waits for results in short slices. Any thread of a process may take a process-directed signal: when
  the kernel gives Ctrl-C to one of the executor's threads, Python only flags it for the main thread, and a main
  thread blocked on a lock without a timeout (``concurrent.futures.as_completed``, ``Future.result``) never wakes
  to raise KeyboardInterrupt: the job would hang.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any, Callable, Iterable, Iterator

from thresher.utils.errors import ThresherError
from thresher.utils.io import exit_with_parent

POLL_S = 0.5  # the longest a Ctrl-C waits in `completed` to be seen


@contextlib.contextmanager
def spawn_pool(workers: int, initializer: Callable, initargs: tuple, died: str) -> Iterator[Any]:
    """A ``ProcessPoolExecutor`` of ``workers`` spawned processes, each running ``initializer(*initargs)`` first.
    In the block, a dead worker raises ThresherError(``died``); Ctrl-C terminates the workers and propagates; on
    leaving, queued tasks are cancelled."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ex = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_start_worker,
                             initargs=(initializer, initargs))
    try:
        yield ex
    except BrokenProcessPool:
        raise ThresherError(died) from None
    except KeyboardInterrupt:
        _terminate_workers(ex)
        raise
    finally:
        ex.shutdown(wait=True, cancel_futures=True)  # quick: the workers are done, idle or terminated


def completed(futures: Iterable, poll_s: float = POLL_S) -> Iterator:
    """Each future as it finishes (``concurrent.futures.as_completed``), waking every ``poll_s`` seconds so that a
    Ctrl-C taken by another thread raises KeyboardInterrupt here (module docstring)."""
    from concurrent.futures import FIRST_COMPLETED, wait

    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=poll_s, return_when=FIRST_COMPLETED)
        yield from done


def _terminate_workers(ex) -> None:
    """Terminate an executor's worker processes: the public call on Python >= 3.14, else its process table."""
    if hasattr(ex, "terminate_workers"):
        ex.terminate_workers()
        return
    for proc in list((getattr(ex, "_processes", None) or {}).values()):
        proc.terminate()


def _start_worker(initializer: Callable, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (spawn_pool)
    exit_with_parent()  # a kill -9 of the main process ends the workers too
    initializer(*initargs)
