"""Inputs and states that once gave wrong or NaN rewards, or a traceback: each now gives the right numbers
or one clear ThresherError."""

import copy
import types

import numpy as np
import pytest
import torch

import influence_ref as R
from thresher.corpus.batching import pad_docs
from thresher.corpus.reference import ReferenceTask
from thresher.influence import InfluenceConfig, InfluenceScorer
from thresher.utils.errors import ThresherError

FIT = R.random_docs(8, seed=3)
DOCS = R.random_docs(5, seed=4)


@pytest.fixture(scope="module")
def model():
    return R.tiny_llama()


def _scorer(model, fit=FIT, tasks=None, **kw):
    return InfluenceScorer(model, tasks or R.reference_tasks(), InfluenceConfig(batch_size=4, **kw), fit)


@pytest.mark.parametrize("mode", ["features", "exact"])
def test_state_loads_by_task_name_whatever_the_dict_order(model, mode):
    kw = dict(preconditioner="kfac", reward_mode=mode, task_weights={"lambada": 3.0, "squad": 1.0})
    tasks = R.reference_tasks()
    a = _scorer(model, tasks=tasks, **kw)
    a.refresh(model, step=1)
    b = _scorer(model, tasks=dict(reversed(list(tasks.items()))), **kw)
    b.load_state_dict(a.state_dict())
    pa, pb = a.per_task_score_docs(DOCS), b.per_task_score_docs(DOCS)
    assert not np.allclose(pa["lambada"], pa["squad"])  # else the test could not see a swap
    for name in tasks:
        np.testing.assert_array_equal(pb[name], pa[name])
    np.testing.assert_array_equal(b.score_docs(DOCS), a.score_docs(DOCS))


@pytest.mark.parametrize("pre", ["kfac", "ekfac"])
def test_singular_factors_under_zero_damping_raise_not_nan(model, pre):
    s = _scorer(model, fit=[FIT[0][:4]], preconditioner=pre, damping=0.0, projection="none", reward_mode="features")
    with pytest.raises(ThresherError, match="not finite"):
        s.refresh(model)


@pytest.mark.parametrize("pre", ["kfac", "ekfac"])
def test_fit_documents_without_a_scored_token_are_named(model, pre):
    s = _scorer(model, fit=[np.array([3])] * 4, preconditioner=pre)
    with pytest.raises(ThresherError, match="no loss gradient"):
        s.refresh(model)


def test_failed_refresh_leaves_nothing_to_score_with(model):
    s = _scorer(model, preconditioner="kfac", projection="orthogonal", projection_dim=64, precondition_space="full")
    s.refresh(model, step=1)
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(ThresherError, match="not finite"):
        s.refresh(bad, step=2)
    with pytest.raises(ThresherError, match="refresh"):
        s.score_docs(DOCS)
    assert not s.pre.state  # no half-fit factors left for a reusing refresh
    s.refresh(model, step=3)  # and a good refresh recovers: equal to a fresh scorer's
    fresh = _scorer(model, preconditioner="kfac", projection="orthogonal", projection_dim=64, precondition_space="full")
    fresh.refresh(model, step=3)
    np.testing.assert_allclose(s.score_docs(DOCS), fresh.score_docs(DOCS), rtol=1e-12)


@pytest.mark.parametrize("kw, match", [
    (dict(task_weights={"lambada": 1.0, "squad": -1.0}), "task_weights"),
    (dict(task_weights={"lambada": 0.0, "squad": 0.0}), "task_weights"),
    (dict(task_weights={"lambada": float("nan"), "squad": 1.0}), "task_weights"),
    (dict(k_in=-1), "k_in"),
    (dict(k_out=-2), "k_out"),
    (dict(fit_docs_max=0), "fit_docs_max"),
    (dict(ref_max_examples=-1), "ref_max_examples"),
])
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(ThresherError, match=match):
        InfluenceConfig(**kw)


def test_ref_max_examples_is_a_seeded_uniform_sample(model):
    """Not the first N examples: a seeded sample, the same at every refresh, equal to scoring that subset."""
    n = 12
    r = np.random.default_rng(5)
    task = ReferenceTask("long", [r.integers(1, 97, 6) for _ in range(n)], [r.integers(1, 97, 2) for _ in range(n)])
    s = _scorer(model, tasks={"long": task}, preconditioner="none", projection="none", ref_max_examples=4)
    s.refresh(model)
    got = s.score_docs(DOCS)
    s.refresh(model)
    np.testing.assert_array_equal(s.score_docs(DOCS), got)
    matches = []
    for lo in range(n - 3):  # which 4-subsets reproduce it: found by brute force over contiguous ones + the sample
        sub = _scorer(model, tasks={"long": task.subset(range(lo, lo + 4))}, preconditioner="none", projection="none")
        sub.refresh(model)
        matches.append(np.allclose(sub.score_docs(DOCS), got, rtol=1e-10))
    assert not matches[0]  # not the first four
    keep = np.sort(np.random.default_rng(
        __import__("thresher.utils.seeding", fromlist=["derive_seed"]).derive_seed(0, "influence-reference", "long")
    ).choice(n, 4, replace=False))
    ref = _scorer(model, tasks={"long": task.subset(keep)}, preconditioner="none", projection="none")
    ref.refresh(model)
    np.testing.assert_allclose(ref.score_docs(DOCS), got, rtol=1e-10)
    other = _scorer(model, tasks={"long": task}, preconditioner="none", projection="none", ref_max_examples=4, seed=1)
    other.refresh(model)
    assert not np.allclose(other.score_docs(DOCS), got)  # the sample follows the seed


def test_features_in_exact_reference_mode_names_the_fix(model):
    s = _scorer(model, preconditioner="ekfac", reward_mode="exact", projection="reference")
    s.refresh(model)
    with pytest.raises(ThresherError, match="projection='orthogonal'"):
        s.features(pad_docs(DOCS, 64))


@pytest.mark.parametrize("impl", ["fused", "hooks"])
def test_block_members_may_run_in_any_order(impl):
    """An MLP that calls up_proj before gate_proj shares one input all the same: same rewards."""
    base = R.tiny_llama()
    swapped = copy.deepcopy(base)

    def up_first(self, x):
        u = self.up_proj(x)
        return self.down_proj(self.act_fn(self.gate_proj(x)) * u)

    for layer in swapped.model.layers:
        layer.mlp.forward = types.MethodType(up_first, layer.mlp)
    got = []
    for m in (base, swapped):
        s = _scorer(m, preconditioner="ekfac", scoring_impl=impl, projection="orthogonal", projection_dim=256)
        s.refresh(m)
        got.append(s.score_docs(DOCS))
    np.testing.assert_allclose(got[1], got[0], rtol=1e-10)


@pytest.mark.parametrize("impl", ["fused", "hooks"])
@pytest.mark.parametrize("mode", ["features", "exact"])
def test_empty_batch_gives_empty_results(model, impl, mode):
    s = _scorer(model, preconditioner="kfac", scoring_impl=impl, reward_mode=mode, projection="orthogonal")
    with pytest.raises(ThresherError, match="refresh"):
        s.score(pad_docs([], 16))
    s.refresh(model)
    empty = pad_docs([], 16)
    assert s.score(empty).shape == (0,)
    assert all(v.shape == (0,) for v in s.per_task_scores(empty).values())
    assert s.features(empty).shape == (0, s.feats.dim)


def test_hook_projection_runs_outside_autocast():
    """Under the scorer's autocast, the hook path projects activations in the feature dtype, as fused does
    (autocast forced on CPU; on CUDA it is cfg.autocast)."""
    m = R.tiny_llama().float()
    feats = {}
    for impl in ("fused", "hooks"):
        s = _scorer(m, preconditioner="none", scoring_impl=impl, projection="orthogonal", projection_dim=256, autocast="bf16")
        s.refresh(m)
        s.feats.amp_on_cpu = True
        if s.fused is not None:
            s.fused.amp_on_cpu = True
        feats[impl] = s.features(pad_docs(DOCS, 64))
    exact = _scorer(m, preconditioner="none", projection="orthogonal", projection_dim=256)
    exact.refresh(m)
    assert (feats["fused"] - exact.features(pad_docs(DOCS, 64))).abs().max() > 0  # autocast did run
    err = (feats["hooks"] - feats["fused"]).norm() / feats["fused"].norm()
    assert err < 1e-5, err
