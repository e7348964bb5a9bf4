"""Every shipped config loads, validates and round-trips; unknown keys are refused."""

from pathlib import Path

import pytest

from thresher.config import RunConfig, load_run_config
from thresher.utils.errors import ThresherError
from thresher.utils.tomlio import dumps, from_dict

ALL = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))
CONFIGS = [p for p in ALL if not p.stem.startswith("experiment")]
EXPERIMENTS = [p for p in ALL if p.stem.startswith("experiment")]


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


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_shipped_experiment_resolves_every_run(path):
    from thresher.experiments.experiment import load_experiment, run_config_for

    exp, base = load_experiment(path)
    for name in exp.policies:
        for seed in exp.seeds:
            cfg = run_config_for(exp, base, name, seed)
            assert (cfg.seed, cfg.selector.seed, cfg.train.seed, cfg.influence.seed) == (seed,) * 4
            assert cfg.out.endswith(f"{name}/seed{seed}")
            if name in exp.variants:
                assert cfg.selector.policy == exp.variants[name]["policy"]
