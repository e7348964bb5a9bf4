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


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_shipped_recipes_train_each_selection_once(path):
    """A stage (update_every steps of global_batch_tokens) trains no more tokens than its D_k holds, and quad's
    stage refill is that stage's tokens: a recipe whose stages repeat their selection trains documents twice
    (configs/pool.toml did: 13.1M tokens a stage from an 8M-token D_k)."""
    from thresher.experiments.experiment import load_experiment, run_config_for

    if path in EXPERIMENTS:
        exp, base = load_experiment(path)
        cfgs = [run_config_for(exp, base, name, exp.seeds[0]) for name in exp.policies]
    else:
        cfgs = [load_run_config(path)]
    for cfg in cfgs:
        stage = cfg.selector.update_every * cfg.train.global_batch_tokens
        if cfg.selector.budget_tokens:
            assert stage <= cfg.selector.budget_tokens, (cfg.out, stage, cfg.selector.budget_tokens)
        if cfg.selector.quad_stage_tokens:
            assert cfg.selector.quad_stage_tokens == stage, cfg.out


@pytest.mark.parametrize("override, message", [
    ("train.steps=abc", "config key train.steps = 'abc': expected an integer"),
    ("train.steps=2.5", "config key train.steps = 2.5: expected an integer"),
    ("train.lr=fast", "config key train.lr = 'fast': expected a number"),
    ("seed=abc", "config key seed = 'abc': expected an integer"),
    ('data.reference="x.jsonl"', "config key data.reference = 'x.jsonl': expected a table"),
    ('data.label_columns=["a"]', r"config key data.label_columns = \['a'\]: expected a table"),
    ("train=5", "config key train = 5: expected a table of train settings"),
])
def test_run_config_values_are_type_checked(override, message):
    with pytest.raises(ThresherError, match=f"^{message}$"):
        load_run_config(CONFIGS[0], [override])


@pytest.mark.parametrize("fraction", [0, 0.0, 1.0, 1.5, -0.2])
def test_reference_eval_fraction_must_leave_both_parts(fraction):
    with pytest.raises(ThresherError, match="reference_eval_fraction .*strictly between 0 and 1"):
        load_run_config(CONFIGS[0], [f"data.reference_eval_fraction={fraction}"])
    assert load_run_config(CONFIGS[0], ["data.reference_eval_fraction=0.25"]).data.reference_eval_fraction == 0.25


def _seeds(cfg):
    return cfg.seed, cfg.selector.seed, cfg.influence.seed, cfg.train.seed


def test_top_level_seed_is_the_run_seed_unless_a_section_sets_its_own():
    assert _seeds(load_run_config(None)) == (0, 0, 0, 0)
    assert _seeds(load_run_config(CONFIGS[0], ["seed=3"])) == (3, 3, 3, 3)
    assert _seeds(load_run_config(CONFIGS[0], ["seed=3", "train.seed=0", "selector.seed=5"])) == (3, 5, 3, 0)
    assert _seeds(load_run_config(None, ["selector.seed=4"])) == (0, 4, 0, 0)


def _experiment(tmp_path, text):
    from thresher.experiments.experiment import load_experiment

    path = tmp_path / "exp.toml"
    path.write_text('[experiment]\nseeds = [0]\npolicies = ["random", "doremi", "big"]\n' + text)
    return load_experiment(path)


def test_every_variant_resolves_before_anything_runs(tmp_path):
    variants = ('[experiment.variants.doremi]\npolicy = "static-mixture"\nset = ["selector.mixture=doremi"]\n'
                '[experiment.variants.big]\npolicy = "random"\nset = ["selector.budget_tokns=1000"]\n')
    with pytest.raises(ThresherError, match=r"^experiment policy 'big': unknown config key\(s\) selector.budget_tokns$"):
        _experiment(tmp_path, variants)
    with pytest.raises(ThresherError, match="experiment policy 'big': config key train.steps = 'x'"):
        _experiment(tmp_path, variants.replace("selector.budget_tokns=1000", "train.steps=x"))
    with pytest.raises(ThresherError, match=r"experiment.variants.big.set must be a list of overrides"):
        _experiment(tmp_path, variants.replace('["selector.budget_tokns=1000"]', '"selector.budget_tokens=1000"'))
    exp, base = _experiment(tmp_path, variants.replace("tokns", "tokens"))
    assert exp.variants["big"]["set"] == ["selector.budget_tokens=1000"]
    from thresher.experiments.experiment import load_experiment

    with pytest.raises(ThresherError, match=r"unknown config key\(s\) experiment.eval.limt"):  # used after training
        load_experiment(None, ["experiment.downstream=true", "experiment.eval={limt = 5}"])


def test_experiment_keys_are_named_with_their_dots():
    from thresher.experiments.experiment import load_experiment

    with pytest.raises(ThresherError, match=r"unknown config key\(s\) experiment.seed$"):
        load_experiment(None, ["experiment.seed=1"])
    with pytest.raises(ThresherError, match=r"^config key experiment.seeds\[0\] = 'a': expected an integer$"):
        load_experiment(None, ['experiment.seeds=["a"]'])


def test_synthetic_config_runs_what_the_demo_runs(monkeypatch):
    """README: `thresher train --config configs/synthetic.toml` runs a policy on the demo's data; its
    selector, influence and train settings are the demo's (the budget: a quarter of the seed-0 world's tokens)."""
    import types

    import thresher.corpus.store as store_module
    from thresher.experiments.demo import DemoConfig, run_config
    from thresher.utils.tomlio import differences, to_dict

    monkeypatch.setattr(store_module.TokenStore, "open", staticmethod(lambda p: types.SimpleNamespace(n_tokens=3_039_772)))
    demo = run_config(DemoConfig(), "multi-agent", {"reference": {}}, Path("s"), Path("l"), Path("o"))
    ours = load_run_config(next(p for p in CONFIGS if p.stem == "synthetic"))
    for section in ("selector", "influence", "train"):
        assert differences(to_dict(ours)[section], to_dict(demo)[section], f"{section}.") == []


def _header_overrides(path: Path) -> list[str]:
    """The ``--set key=value`` overrides of a shipped config's header comment (its CPU recipe)."""
    import re

    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    return re.findall(r"--set (\S+=\S+)", header)


@pytest.mark.parametrize("path", [p for p in ALL if p.stem in ("pool", "experiment_pool")], ids=lambda p: p.stem)
def test_the_cpu_recipe_in_the_header_splits_its_batch(path):
    """The header's CPU smoke run, pasted as written, must get past the trainer's batch check (pool.toml's
    asked for 2048-token steps of 32 x 128-token micro-batches: 'not a multiple of micro_batch*seq_len')."""
    from thresher.train.loop import _accum_steps

    overrides = [o for o in _header_overrides(path) if not o.startswith("out=")]
    assert any(o.startswith("train.device=cpu") for o in overrides)
    if path.stem.startswith("experiment"):
        from thresher.experiments.experiment import load_experiment, run_config_for

        exp, base = load_experiment(path, overrides)
        cfg = run_config_for(exp, base, exp.policies[0], exp.seeds[0])
    else:
        cfg = load_run_config(path, overrides)
    assert _accum_steps(cfg.train, 1) >= 1
