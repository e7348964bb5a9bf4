"""A job whose spawned workers are stuck inside their work, for kill tests (ingest and label workers)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def child_env(**extra: str) -> dict:
    """The environment of a child thresher process in a test: no progress bars, and this process's torch thread count
    (OMP_NUM_THREADS), so a child's float results equal what this process computes (a matmul's rounding depends on
    the number of threads, and an earlier test may have changed this process's)."""
    import torch

    return {**os.environ, "THRESHER_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(torch.get_num_threads()), **extra}


# The first lines of a Ctrl-C test's child script. It sets Python's own SIGINT handler (KeyboardInterrupt): a suite
# started as a background job (`make test &` from a script) runs with SIGINT ignored, every child inherits that, and
# a Python that starts with SIGINT ignored leaves it ignored, so the test would wait for a signal that never acts.
# SIGUSR1 prints every thread's stack (ctrl_c asks for them when the child hangs). Spawned workers import the script
# too; their pool's initializer ignores SIGINT after.
CTRL_C_CHILD = """import faulthandler, signal
signal.signal(signal.SIGINT, signal.default_int_handler)
faulthandler.register(signal.SIGUSR1, all_threads=True)
"""


def start_stuck(script: Path, args: list[str], marks: Path, n_workers: int = 2, timeout: float = 120, **popen):
    """Run ``script`` (its workers write a file named by their PID into ``marks`` and never finish) in its own
    process group; -> (process, worker PIDs) once every worker is inside its work."""
    marks.mkdir()
    env = child_env(MARKS=str(marks))
    p = subprocess.Popen([sys.executable, str(script), *args], env=env, start_new_session=True, **popen)
    deadline = time.monotonic() + timeout
    while len(list(marks.iterdir())) < n_workers and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [int(m.name) for m in marks.iterdir()]
    if len(workers) != n_workers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        pytest.fail(f"{n_workers} workers should be busy, {len(workers)} are")
    return p, workers


def kill_main_only(p: subprocess.Popen, workers: list[int], timeout: float = 20) -> None:
    """kill -9 of the main process alone (the OOM killer's); its workers must exit by themselves."""
    from thresher.utils.io import pid_alive

    try:
        p.kill()
        p.wait()
        deadline = time.monotonic() + timeout
        while any(map(pid_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(pid_alive, workers)), "the workers outlived the main process"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)


def ctrl_c(p: subprocess.Popen, timeout: float = 60) -> str:
    """Ctrl-C to ``p``'s process group (as a terminal sends it: workers included); -> its stderr once it exited. Fails
    with the main process's thread stacks when it has not exited within ``timeout`` seconds."""
    try:
        os.killpg(p.pid, signal.SIGINT)
        try:
            return p.communicate(timeout=timeout)[1]
        except subprocess.TimeoutExpired:  # say where the main process is stuck, then fail
            os.kill(p.pid, signal.SIGUSR1)
            time.sleep(2)
            os.killpg(p.pid, signal.SIGKILL)
            pytest.fail(f"the main process did not stop within {timeout:g} s of Ctrl-C; its threads:\n"
                        + p.communicate()[1][-6000:])
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
