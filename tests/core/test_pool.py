"""The worker pool of ingest and label jobs: Ctrl-C is seen whichever thread the kernel gives it to, a dead worker
is one line, results all come back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from process_helpers import CTRL_C_CHILD, child_env

from thresher.utils.errors import ThresherError
from thresher.utils.pool import completed, spawn_pool

# The main thread waits on a future that never finishes while another thread takes the SIGINT (as the kernel may
# give a process-directed Ctrl-C to any thread): Python only flags it, and a wait without a timeout never wakes.
WAIT = CTRL_C_CHILD + """
import signal, threading, time
from concurrent.futures import Future
from thresher.utils.pool import completed
def poke():
    time.sleep(0.3)
    signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # Python's C handler runs in this thread
threading.Thread(target=poke).start()
for _ in completed([Future()]):  # concurrent.futures.as_completed hangs here for good
    pass
"""


def test_a_ctrl_c_another_thread_takes_stops_the_wait(tmp_path):
    script = tmp_path / "wait.py"
    script.write_text(WAIT)
    try:
        r = subprocess.run([sys.executable, str(script)], env=child_env(), capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the wait did not see the Ctrl-C in 60 s")
    assert r.returncode == -signal.SIGINT and r.stderr.rstrip().endswith("KeyboardInterrupt"), r.stderr[-2000:]


def _square(x: int) -> int:
    return x * x


def _die(x: int) -> int:
    os._exit(3)  # as the OOM killer's kill would end it


def _set_env(name: str, value: str) -> None:
    os.environ[name] = value


def _env_and_sigint(name: str) -> tuple[str | None, object]:
    return os.environ.get(name), signal.getsignal(signal.SIGINT)


def test_the_pool_returns_every_result_after_its_workers_initializer_ran():
    with spawn_pool(2, _set_env, ("THRESHER_POOL_TEST", "set"), died="unused") as ex:
        assert sorted(f.result() for f in completed([ex.submit(_square, i) for i in range(20)])) == [
            i * i for i in range(20)]
        env, sigint = ex.submit(_env_and_sigint, "THRESHER_POOL_TEST").result()
    assert env == "set" and sigint == signal.SIG_IGN  # Ctrl-C is the main process's to handle


def test_a_dead_worker_is_a_one_line_error():
    with pytest.raises(ThresherError, match=r"^a worker died; rerun to resume$"):
        with spawn_pool(2, _set_env, ("THRESHER_POOL_TEST", "set"), died="a worker died; rerun to resume") as ex:
            for f in completed([ex.submit(_die, 0), ex.submit(_square, 2)]):
                f.result()
