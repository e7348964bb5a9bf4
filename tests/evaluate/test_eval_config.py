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


@pytest.mark.parametrize("kw", [{"tasks": ["race"]}, {"layout": "x"}, {"metric": "f1"}, {"limit": -1}])
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
