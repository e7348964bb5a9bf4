"""Output folders: a file in the way is a one-line ThresherError naming it, never an OSError traceback."""

from __future__ import annotations

import os

import pytest

from thresher.utils.errors import ThresherError
from thresher.utils.io import atomic_write_json, make_dir


def test_a_file_in_the_way_of_an_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("keep me\n")
    for fn in (lambda: make_dir(blocker), lambda: make_dir(blocker / "sub" / "deeper"),
               lambda: atomic_write_json(blocker / "x.json", {"a": 1})):
        with pytest.raises(ThresherError) as e:
            fn()
        msg = str(e.value)
        assert "\n" not in msg and f"{blocker} is a file, not a folder" in msg, msg
    assert blocker.read_text() == "keep me\n"


def test_make_dir_creates_parents_and_accepts_an_existing_folder(tmp_path):
    assert make_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    make_dir(tmp_path / "a" / "b")


KILLED_MID_WRITE = """
import os, signal, sys
from thresher.utils.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a tokens.bin")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_writer_killed_mid_write_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    import subprocess
    import sys

    from thresher.utils.io import _HOST, atomic_path, remove_stale_temps

    target = tmp_path / "tokens.bin"
    r = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(target)])
    assert r.returncode == -9 and not target.exists()
    [left] = [p for p in tmp_path.iterdir()]  # kill -9 skips atomic_path's clean-up
    dead_pid = left.name.split("-")[-1].split(".")[0]
    other = "000000" if _HOST != "000000" else "111111"
    elsewhere = tmp_path / f".x.json.{other}-{dead_pid}.abcdefgh.tmp"  # another machine's (a shared folder)
    elsewhere.write_text("{}")
    with atomic_path(tmp_path / "other.json") as live:  # this process's write in progress is kept
        live.write_text("{}")
        assert remove_stale_temps(tmp_path) == [left]
        assert sorted(tmp_path.iterdir()) == sorted([live, elsewhere])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["other.json", elsewhere.name])
    assert remove_stale_temps(tmp_path / "absent") == []


def test_a_zombie_is_not_alive():
    import subprocess
    import sys
    import time

    from thresher.utils.io import pid_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        for _ in range(200):  # exited, not yet reaped (as a killed writer whose parent died, until init reaps it)
            with open(f"/proc/{child.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.05)
        assert not pid_alive(child.pid)
    finally:
        child.wait()
    assert pid_alive(os.getpid())
