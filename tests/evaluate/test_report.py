"""The report's tables: means only over complete rows; unreadable run summaries are one clear error."""

from __future__ import annotations

import json

import pytest

from thresher.evaluate.report import compute_table, write_report
from thresher.utils.errors import ThresherError


def _run(d, losses: dict):
    d.mkdir()
    (d / "metrics.jsonl").write_text(json.dumps({"step": 10, **{f"ref_loss/{t}": v for t, v in losses.items()}}) + "\n")
    return d


def test_mean_only_over_every_task(tmp_path):
    """B lacks 'hard': a mean over its one task would look better than A's over two."""
    runs = {"A": _run(tmp_path / "a", {"easy": 2.0, "hard": 6.0}), "B": _run(tmp_path / "b", {"easy": 2.5})}
    md = write_report(tmp_path / "out", runs).read_text()
    assert "| A | 2.0000 | 6.0000 | 4.0000 |" in md
    assert "| B | 2.5000 | - | - |" in md


def test_unreadable_summary_is_one_clear_error(tmp_path):
    d = _run(tmp_path / "a", {"easy": 2.0})
    (d / "summary.json").write_text('{"train_seconds": 1.0, ')
    with pytest.raises(ThresherError, match="summary.json is unreadable"):
        compute_table({"A": d})
