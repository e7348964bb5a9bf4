"""EvalConfig: TOML round trip, paper defaults, clear errors."""

from __future__ import annotations

import pytest

from thresher.evaluate.config import PAPER_SHOTS, EvalConfig
from thresher.utils.errors import ThresherError
from thresher.utils.tomlio import dumps, load_config


def test_toml_round_trip(tmp_path):
    cfg = EvalConfig(tasks=["arc_easy", "mmlu"], num_fewshot={"arc_easy": 5}, limit=10, layout="quad")
    (tmp_path / "e.toml").write_text(dumps(cfg))
    assert load_config(EvalConfig, tmp_path / "e.toml") == cfg
    assert cfg.shots() == {"arc_easy": 5, "mmlu": 0}  # missing -> default_fewshot


def test_paper_table1_shots():
    assert EvalConfig().shots() == {t: PAPER_SHOTS[t] for t in EvalConfig().tasks}
    assert EvalConfig().shots()["winogrande"] == 0 and EvalConfig().shots()["commonsenseqa"] == 5


@pytest.mark.parametrize("kw", [{"tasks": ["race"]}, {"tasks": []}, {"layout": "x"}, {"metric": "f1"}, {"limit": -1}])
def test_bad_settings(kw):
    with pytest.raises(ThresherError):
        EvalConfig(**kw)


def test_num_fewshot_names_known_tasks_with_either_spelling():
    """A misspelt task in num_fewshot would silently run 0-shot; thresher_<task> and <task> are one task."""
    for bad in ({"comonsenseqa": 5}, {"arc_easy": "x"}, {"arc_easy": -1}, {"arc_easy": True}):
        with pytest.raises(ThresherError, match="num_fewshot"):
            EvalConfig(num_fewshot=bad)
    assert EvalConfig(tasks=["thresher_arc_easy", "boolq"]).shots() == {"thresher_arc_easy": 3, "boolq": 0}
    assert EvalConfig(tasks=["arc_easy"], num_fewshot={"thresher_arc_easy": 7}).shots() == {"arc_easy": 7}


def test_metric_and_model_args_reach_the_table_and_the_harness(monkeypatch, tmp_path):
    """eval.metric chooses the printed table's numbers; eval.model_args goes to HFLM (both were ignored)."""
    from typer.testing import CliRunner

    import thresher.evaluate.downstream as ds
    from thresher.cli import app
    from thresher.evaluate.config import run_eval

    seen = {}

    def fake(model_dir, tasks, shots, data_root, out_dir, **kw):
        seen.update(kw)
        row = {"acc": 0.25, "acc_norm": 0.75, "num_fewshot": 0, "n": 4}
        cat = {"acc": 0.25, "acc_norm": 0.75, "tasks": ["boolq"]}
        return {"tasks": {"boolq": row}, "categories": {"Reading Comprehension": cat}, "average": cat}

    monkeypatch.setattr(ds, "evaluate_downstream", fake)
    run_eval(EvalConfig(tasks=["boolq"], model_args={"dtype": "bfloat16", "max_length": 1024}), "m", tmp_path)
    assert seen["model_args"] == {"dtype": "bfloat16", "max_length": 1024}
    (tmp_path / "e.toml").write_text('metric = "acc_norm"\n')
    r = CliRunner().invoke(app, ["eval", "downstream", str(tmp_path), "--out", str(tmp_path / "o"), "--tasks", "boolq",
                                 "--config", str(tmp_path / "e.toml")])
    assert r.exit_code == 0, r.output
    assert "75.0" in r.output and "25.0" not in r.output
