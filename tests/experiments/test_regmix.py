"""`thresher regmix`: the prior, the fit and the choice against known answers, and proxies end to end
on a tiny synthetic world (resumable, and the init file it writes starts a multi-agent selector)."""

import copy
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from run_helpers import cli_err as _main

import thresher.experiments.run as run_module
from thresher.agents.presets import read_init_file
from thresher.config import save_run_config
from thresher.experiments.demo import DemoConfig, _gather, run_config
from thresher.experiments.regmix import (LinearFit, RegMixConfig, choose, cv_spearman, few_proxies, realised_mixture,
                                         run_regmix, sample_mixtures, token_shares)
from thresher.utils.errors import ThresherError
from thresher.utils.io import read_json

SHARES = np.array([0.4, 0.3, 0.2, 0.1, 0.0])  # the last category has no documents
STAR = np.array([0.15, 0.35, 0.3, 0.2, 0.0])  # the bowl's minimiser, inside the prior's support


def _bowl(n: int, noise: float = 0.002, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    X = sample_mixtures(SHARES, n, [0.1, 5.0], 0, "test")
    return X, ((X - STAR) ** 2).sum(axis=1) + np.random.default_rng(seed).normal(0, noise, n)


def test_prior_is_seeded_normalised_and_centred_on_the_token_shares():
    a = sample_mixtures(SHARES, 50_000, [0.1, 5.0], 7, "s")
    assert np.array_equal(a, sample_mixtures(SHARES, 50_000, [0.1, 5.0], 7, "s"))
    assert not np.array_equal(a, sample_mixtures(SHARES, 50_000, [0.1, 5.0], 8, "s"))
    assert np.allclose(a.sum(axis=1), 1.0) and np.isfinite(a).all() and (a >= 0).all()
    assert (a[:, -1] == 0).all()  # an empty category never gets weight
    assert np.abs(a.mean(axis=0) - SHARES).max() < 0.01  # a Dirichlet's mean is alpha / sum(alpha)
    # at c = 1, alpha = K x shares = [2, 1.5, 1, 0.5, 0]: Dirichlet variances a_i (A - a_i) / (A^2 (A + 1))
    one = sample_mixtures(SHARES, 50_000, [1.0, 1.0], 0, "s")
    alpha = 5 * SHARES
    want = alpha * (alpha.sum() - alpha) / (alpha.sum() ** 2 * (alpha.sum() + 1))
    assert one.var(axis=0) == pytest.approx(want, rel=0.05, abs=1e-12)
    # a small concentration puts the mass on few categories, a large one near the shares
    sparse = sample_mixtures(SHARES, 5000, [0.1, 0.1], 0, "s").max(axis=1).mean()
    dense = sample_mixtures(SHARES, 5000, [50.0, 50.0], 0, "s").max(axis=1).mean()
    assert sparse > 0.75 and dense < 0.5


def test_lightgbm_fit_and_choice_find_the_bowls_minimiser():
    X, y = _bowl(200)
    w, info = choose(X, y, SHARES, RegMixConfig(n_candidates=100_000, top_k=100))
    assert w.sum() == pytest.approx(1.0) and w[-1] == 0
    assert np.abs(w - STAR).sum() < 0.15, w  # L1 distance; the prior mean is 0.5 away
    assert np.abs(SHARES - STAR).sum() > 0.45
    assert info["cv_spearman"] > 0.9


def test_cv_spearman_is_near_zero_for_noise():
    X, _ = _bowl(200)
    noise = np.random.default_rng(5).normal(size=200)
    for kind in ("lightgbm", "linear"):
        assert abs(cv_spearman(X, noise, kind, 5, 0)) < 0.2


def test_linear_fit_equals_lstsq_and_picks_the_cheapest_vertex():
    X, y = _bowl(60)
    design = np.hstack([np.ones((60, 1)), X])
    want = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    assert np.allclose(LinearFit().fit(X, y).predict(X), want, atol=1e-12)
    # a loss linear in the weights: the best mixtures put (almost) everything on the cheapest category
    y_lin = X @ np.array([3.0, 1.0, 2.0, 0.5, 0.0]) + 4.0
    w, info = choose(X, y_lin, SHARES, RegMixConfig(regressor="linear", n_candidates=20_000, top_k=20))
    assert w.argmax() == 3 and w[3] > 0.95 and info["cv_spearman"] == pytest.approx(1.0)


# --- end to end on a tiny synthetic world ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    cfg = DemoConfig(n_docs=2500, seed=3)
    world, store, labels = _gather(out, cfg)
    rc = run_config(cfg, "multi-agent", world, store, labels, out)
    rc.train = dataclasses.replace(rc.train, seq_len=64, micro_batch=4, global_batch_tokens=256, steps=3,
                                   warmup_steps=1, eval_every=0, ckpt_every=3)
    rc.data = dataclasses.replace(rc.data, reference_max_examples=40, influence_fit_docs=16)
    rc.influence = dataclasses.replace(rc.influence, max_len=64, fit_docs_max=16)
    rc.selector = dataclasses.replace(rc.selector, budget_tokens=40_000, samples_per_category=4)
    return rc


def test_regmix_end_to_end_resumes_and_feeds_init_file(base, tmp_path, monkeypatch):
    calls = []
    real = run_module.run

    def spy(cfg, resume=False, callbacks=()):
        calls.append((Path(cfg.out).name, resume))
        return real(cfg, resume=resume, callbacks=callbacks)

    monkeypatch.setattr(run_module, "run", spy)
    cfg = RegMixConfig(out=str(tmp_path / "rm"), column="domain", n_proxies=3, steps=3, n_candidates=5000, top_k=50)
    result = run_regmix(cfg, base)
    assert calls == [("0", False), ("1", False), ("2", False)]
    cats, shares = token_shares(base, "domain")
    # every proxy trained its own mixture under static-mixture; its row holds its own final losses
    for row in result["proxies"]:
        saved = read_json(tmp_path / f"rm/proxies/{row['proxy']}/summary.json")
        assert row["ref_losses"] == saved["ref_losses"] and set(saved["ref_losses"]) == set(base.data.reference)
        assert row["loss"] == pytest.approx(np.mean(list(saved["ref_losses"].values())))
        log = [json.loads(x) for x in (tmp_path / f"rm/proxies/{row['proxy']}/selector_log.jsonl").open()]
        assert log[0]["policy"] == "static-mixture"
        assert log[0]["weights"] == pytest.approx([row["weights"][c] for c in cats])
        assert row["realised"] == pytest.approx(realised_mixture(tmp_path / f"rm/proxies/{row['proxy']}", row["weights"]))
    assert len({tuple(r["weights"].values()) for r in result["proxies"]}) == 3
    # the init file is read_init_file's format and starts a multi-agent selector at those weights
    init = tmp_path / "rm" / "init_domain.json"
    data = read_init_file(init)
    assert list(data) == ["domain"] and sorted(data["domain"]) == sorted(cats)
    assert sum(data["domain"].values()) == pytest.approx(1.0)
    from thresher.experiments.run import build_run

    rc = copy.deepcopy(base)  # build_run fills in derived fields
    rc.selector.init_file = str(init)
    _, selector, _, _ = build_run(rc)
    agent = next(a for a in selector.console.agents if a.name == "domain")
    assert agent.weights == pytest.approx([data["domain"][c] for c in cats])
    assert "cv_spearman" in read_json(tmp_path / "rm/regmix.json") and (tmp_path / "rm/results.md").exists()
    # 3 proxies for the domains: far fewer than 2 per fitted parameter, which the result and results.md say
    assert result["warning"] == few_proxies(3, len(cats)) and f"3 proxies for {len(cats)} categories" in result["warning"]
    assert f"**Warning:** {result['warning']}." in (tmp_path / "rm/results.md").read_text()
    # a second call retrains nothing and gives the same weights
    calls.clear()
    assert run_regmix(cfg, base)["weights"] == result["weights"]
    assert calls == []
    # a proxy killed after its last checkpoint (no summary yet) resumes, and its losses come back
    (tmp_path / "rm/proxies/2/summary.json").unlink()
    again = run_regmix(cfg, base)
    assert calls == [("2", True)]
    assert again["proxies"][2]["ref_losses"] == pytest.approx(result["proxies"][2]["ref_losses"])


def test_cli_bad_input_is_one_line_and_writes_nothing(base, tmp_path, monkeypatch, capsys):
    config = save_run_config(base, tmp_path / "cfg")
    labels = tmp_path / "labels"  # a copy with a column whose documents all share one category
    shutil.copytree(base.data.labels, labels)
    from thresher.labels.table import LabelTable

    n = LabelTable.open(labels).n_docs
    LabelTable.write(labels, n, {"mono": np.zeros(n, np.int16)},
                     {"mono": {"kind": "category", "provenance": {"test": 1}, "categories": ["a", "b"]}})
    out = tmp_path / "rm"
    cases = [(["--column", "nosuch"], "column 'nosuch' is not an agent label"),
             (["--proxies", "2"], "regmix.n_proxies = 2: a fit needs at least 3 proxies"),
             (["--column", "mono", "--set", f"data.labels={json.dumps(str(labels))}",
               "--set", 'data.label_columns.mono="mono"'], "column 'mono' has 1 non-empty categories"),
             (["--set", "regmix.target=nosuch"], "regmix.target = 'nosuch' is neither 'mean' nor a reference task")]
    for args, message in cases:
        code, err = _main(monkeypatch, capsys, "regmix", "--config", config, "--out", out, *args)
        assert code == 2 and err.startswith(f"error: {message}") and len(err.splitlines()) == 1, err
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # as if not installed
    code, err = _main(monkeypatch, capsys, "regmix", "--config", config, "--out", out)
    assert code == 2 and "pip install 'thresher[regmix]'" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_realised_mixture_cuts_what_the_pool_could_not_fill(tmp_path):
    """A proxy asked for 0.5 / 0.3 / 0.2 of a token budget of 1000 and got 100 of its 500 tokens of a: it
    trained on 0.1 / 0.3 / 0.2 of the budget, i.e. 1/6, 1/2, 1/3."""
    row = {"step": 0, "policy": "static-mixture", "weights": [0.5, 0.3, 0.2],
           "shortfall": {"a": {"target": 500, "selected": 100}}}
    (tmp_path / "selector_log.jsonl").write_text(json.dumps(row) + "\n")
    got = realised_mixture(tmp_path, {"a": 0.5, "b": 0.3, "c": 0.2})
    assert got == pytest.approx({"a": 1 / 6, "b": 1 / 2, "c": 1 / 3})
    row["targets"] = {"a": 100, "b": 540, "c": 360}  # mixture_shortfall = "redistribute": a's 400 went to b and c
    (tmp_path / "selector_log.jsonl").write_text(json.dumps(row) + "\n")
    assert realised_mixture(tmp_path, {"a": 0.5, "b": 0.3, "c": 0.2}) == pytest.approx({"a": 0.1, "b": 0.54, "c": 0.36})
    del row["shortfall"], row["targets"]  # filled: the requested weights
    (tmp_path / "selector_log.jsonl").write_text(json.dumps(row) + "\n")
    requested = {"a": 0.5, "b": 0.3, "c": 0.2}
    assert realised_mixture(tmp_path, requested) == requested  # exactly: results.md counts the proxies that differ
    (tmp_path / "selector_log.jsonl").write_text("")
    with pytest.raises(ThresherError, match="no readable selector_log.jsonl; delete that proxy folder"):
        realised_mixture(tmp_path, requested)


def test_proxies_of_a_long_context_base_train_within_the_proxy_models_context():
    """configs/pool.toml trains 1024-token sequences (README: `thresher regmix --config configs/pool.toml`); its
    tiny proxies (context 256) train 256-token ones, the same tokens a step, instead of refusing the config."""
    from thresher.experiments.regmix import load_regmix, proxy_config

    cfg, base = load_regmix(Path(__file__).parents[2] / "configs" / "pool.toml", [])
    assert base.train.seq_len == 1024 and cfg.model == "tiny"
    proxy = proxy_config(base, cfg, 0, {"Books": 1.0})
    assert proxy.train.seq_len == 256 and proxy.train.global_batch_tokens == base.train.global_batch_tokens
    assert proxy.train.model_config().max_seq_len == 256  # no "exceeds model tiny's context"
    proxy.train.validate()
    cfg.model = "20m"  # a proxy model with the base's context keeps its sequence length
    assert proxy_config(base, cfg, 0, {"Books": 1.0}).train.seq_len == 1024


def test_few_proxies_warns_below_two_per_fitted_parameter():
    """A fit of k category weights and an intercept: a warning below 2 (k + 1) proxies, none from there on."""
    assert few_proxies(15, 7) is not None and "(>= 16 advised)" in few_proxies(15, 7)
    assert few_proxies(16, 7) is None and few_proxies(512, 17) is None
