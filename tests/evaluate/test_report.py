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


def test_weight_and_theta_plots_read_the_step_0_entry_of_a_console_with_a_bandit():
    """The first entry lists every agent (initial weights for the categorical ones, only a name for the
    bandit): the plots start at step 0 and name all four thetas."""
    from thresher.evaluate.report import theta_trajectory, weight_trajectories

    log = [{"step": 0, "agents": [{"agent": "quality", "categories": ["lo", "hi"], "weights": [0.5, 0.5]},
                                  {"agent": "bandit"}], "theta": [1.0, 1.0]},
           {"step": 10, "agents": [{"agent": "quality", "categories": ["lo", "hi"], "weights": [0.4, 0.6]},
                                   {"agent": "bandit", "weights": [0.1] * 100}], "theta": [0.9, 1.1]}]
    assert weight_trajectories(log) == {"quality": {"lo": ([0, 10], [0.5, 0.4]), "hi": ([0, 10], [0.5, 0.6])}}
    assert theta_trajectory(log) == {"quality": ([0, 10], [1.0, 0.9]), "bandit": ([0, 10], [1.0, 1.1])}


def test_passes_over_the_selection_per_run(tmp_path):
    """From metrics.jsonl's selection_pass: the most passes over one D_k and the share of logged steps on a repeat;
    runs logged before the key have no row."""
    a = _run(tmp_path / "a", {"easy": 2.0})
    rows = [{"step": s, "loss": 1.0, "selection_pass": p} for s, p in zip(range(1, 6), [1, 1, 2, 3, 1])]
    (a / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    b = _run(tmp_path / "b", {"easy": 2.0})
    md = write_report(tmp_path / "out", {"A": a, "B": b}).read_text()
    assert "| A | 3 | 40% |" in md and "| B |" not in md.split("## Passes over the selection")[1]


def test_a_run_without_summary_reports_the_totals_of_its_last_metrics_line(tmp_path):
    """A finished run reads summary.json; one still training (or killed) its last line's totals, marked running; a
    run logged before train_s_total existed has no row."""
    a, b, c = (_run(tmp_path / x, {"easy": 2.0}) for x in "abc")
    (a / "summary.json").write_text(json.dumps({"train_seconds": 10.0, "selection_seconds": 1.0, "train_flops": 4e12,
                                                "selection_flops": 1e12}))
    lines = [{"step": 10, "train_s_total": 2.0, "selection_s_total": 0.5, "train_flops_total": 1e12,
              "selection_flops_total": 2e11}, {"step": 20, "ref_loss/easy": 2.0},
             {"step": 20, "train_s_total": 4.0, "selection_s_total": 1.0, "train_flops_total": 2e12,
              "selection_flops_total": 5e11}]
    (b / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    md = write_report(tmp_path / "out", {"A": a, "B": b, "C": c}).read_text()
    table = md.split("## Compute")[1]
    assert "| A | 10.0 | 1.0 | 10.0% | 4e+12 | 1e+12 | 25.0% |" in table
    assert "| B (step 20, running) | 4.0 | 1.0 | 25.0% | 2e+12 | 5e+11 | 25.0% |" in table
    assert "| C" not in table and "last metrics.jsonl line" in table
