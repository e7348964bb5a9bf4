"""Every shipped config loads, validates and round-trips; unknown keys are refused."""

from pathlib import Path

import pytest

from thresher.config import RunConfig, load_run_config
from thresher.utils.errors import ThresherError
from thresher.utils.tomlio import dumps, from_dict

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_loads_and_round_trips(path):
    import tomllib

    cfg = load_run_config(path)
    assert from_dict(RunConfig, tomllib.loads(dumps(cfg))) == cfg
    assert cfg.data.reference


def test_overrides_and_unknown_keys():
    cfg = load_run_config(CONFIGS[0], ["selector.policy=quad", "train.steps=7"])
    assert (cfg.selector.policy, cfg.train.steps) == ("quad", 7)
    with pytest.raises(ThresherError, match="selector.polcy"):
        load_run_config(CONFIGS[0], ["selector.polcy=quad"])
    with pytest.raises(ThresherError):
        load_run_config(CONFIGS[0], ["train.schedule=linear"])
