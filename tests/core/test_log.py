"""Progress bars under a log file: refreshed rarely, so a bar nested under the train bar (the influence
phases of a selection update) does not write a line every 0.1 s into a SLURM / nohup log."""

import io
import sys
import time

from thresher.utils.log import progress


def test_a_nested_bar_in_a_log_file_writes_a_few_lines_not_one_per_refresh(monkeypatch):
    log = io.StringIO()  # not a TTY
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.delenv("THRESHER_NO_PROGRESS", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    outer = progress(range(2), desc="train", unit="step")
    for _ in outer:
        for _ in progress(range(60), desc="influence scoring", unit="batch", leave=False):
            time.sleep(0.02)  # 1.2 s: twelve refreshes at tqdm's 0.1 s
    outer.close()
    lines = log.getvalue().count("\n")
    assert lines <= 8, lines


def test_a_short_phase_bar_writes_nothing_into_a_log_file(monkeypatch):
    log = io.StringIO()  # not a TTY
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.delenv("THRESHER_NO_PROGRESS", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    for _ in progress(range(20), desc="influence scoring", unit="batch", leave=False):
        time.sleep(0.01)
    assert log.getvalue() == ""
    for _ in progress(range(3), desc="label shards", unit="shard"):  # a top-level bar still shows
        pass
    assert "label shards" in log.getvalue()
