"""reward_mode="exact": <H^-1 g_ref, g_x> from full-space targets contracted in backward hooks, against
dense float64 Kronecker solves, the projection="none" features path, and invariances."""

import numpy as np
import pytest
import torch

import influence_ref as R
from test_exact import DOCS, FIT, _dense_H, _rel
from thresher.corpus.batching import pad_docs
from thresher.influence import InfluenceConfig, InfluenceScorer
from thresher.influence import features as F
from thresher.utils.errors import SettingsMismatchError


@pytest.fixture(scope="module")
def model():
    return R.tiny_llama()


def _scorer(model, reference=None, **kw):
    cfg = InfluenceConfig(batch_size=4, damping=1e-3, damping_mode="absolute", **kw)
    s = InfluenceScorer(model, reference or R.reference_tasks(), cfg, fit_docs=FIT)
    s.refresh(model, step=0)
    return s


# every kind once, both groupings (test_exact.py covers the full grid for the features path, which
# test_exact_mode_equals_unprojected_features_path ties to this one)
@pytest.mark.parametrize("grouping,kind", [("qkv", "ekfac"), ("qkv", "joint"), ("independent", "factored"), ("independent", "none")])
def test_exact_mode_matches_dense_kronecker(model, grouping, kind):
    """Default projection settings: the exact path ignores them (no projection anywhere)."""
    pc = {"none": "none", "ekfac": "ekfac"}.get(kind, "kfac")
    s = _scorer(model, grouping=grouping, preconditioner=pc, reward_mode="exact",
                kfac_damping="factored" if kind == "factored" else "joint")
    assert s.exact() and s.ref_pre is None and s.settings()["reward_mode"] == "exact"
    xs = R.doc_grads(model, s.feats.blocks, DOCS)
    H = None if kind == "none" else _dense_H(model, s, kind, 1e-3)
    got = s.per_task_score_docs(DOCS, batch_size=4)
    for name, task in R.reference_tasks().items():
        g = R.ref_grad(model, s.feats.blocks, task)
        if H is None:
            want = torch.tensor([sum(float((a * b).sum()) for a, b in zip(g, x)) for x in xs])
        else:
            want = R.dense_rewards(g, xs, H)
        assert _rel(got[name], want) < 1e-6, name


@pytest.mark.parametrize("pc", ["none", "kfac", "ekfac"])
def test_exact_mode_equals_unprojected_features_path(model, pc, monkeypatch):
    """Both contraction orders (materialised per-document gradients for two tasks, a U_k^T per task
    for one task or when gradients are too big to hold) give the features path's numbers."""
    want = _scorer(model, preconditioner=pc, reward_mode="features", projection="none").per_task_score_matrix(DOCS)
    exact = _scorer(model, preconditioner=pc, reward_mode="exact")
    assert _rel(exact.per_task_score_matrix(DOCS), want) < 1e-9
    one = _scorer(model, {"squad": R.reference_tasks()["squad"]}, preconditioner=pc, reward_mode="exact")
    assert _rel(one.score_docs(DOCS), want[:, 1]) < 1e-9
    monkeypatch.setattr(F, "MATERIALISE_MAX", 0)
    assert _rel(exact.per_task_score_matrix(DOCS), want) < 1e-9


def test_exact_contract_both_orders_against_einsum(monkeypatch):
    g = torch.Generator().manual_seed(0)
    a, d = torch.randn(3, 7, 5, generator=g, dtype=torch.float64), torch.randn(3, 7, 4, generator=g, dtype=torch.float64)
    u = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    want = torch.einsum("bto,koi,bti->bk", d, u, a)
    assert _rel(F.exact_contract(a, d, u), want) < 1e-12  # K=2: materialised route
    monkeypatch.setattr(F, "MATERIALISE_MAX", 0)
    assert _rel(F.exact_contract(a, d, u), want) < 1e-12  # per-task route


@pytest.fixture(scope="module")
def ekfac_exact():
    model = R.tiny_llama(hidden=32, heads=4, inter=64)
    return _scorer(model, preconditioner="ekfac", reward_mode="exact")


def test_exact_mode_batch_order_padding_invariance(ekfac_exact):
    s = ekfac_exact
    base = s.score_docs(DOCS, batch_size=1)
    assert np.abs(base).max() > 0
    tol = dict(rtol=1e-9, atol=1e-12 * np.abs(base).max())
    for bs in (2, 5, 16):
        np.testing.assert_allclose(s.score_docs(DOCS, batch_size=bs), base, **tol)
    perm = np.random.default_rng(0).permutation(len(DOCS))
    np.testing.assert_allclose(s.score(pad_docs([DOCS[i] for i in perm], 64)).numpy(), base[perm], **tol)
    padded = s.score(pad_docs(DOCS[:4] + [np.arange(1, 60) % 97], 64)).numpy()[:4]
    np.testing.assert_allclose(padded, base[:4], **tol)


def test_exact_mode_per_task_and_weights(model):
    s = _scorer(model, preconditioner="kfac", reward_mode="exact", task_weights={"lambada": 3.0, "squad": 1.0})
    per = s.per_task_score_docs(DOCS)
    for name, task in R.reference_tasks().items():
        alone = _scorer(model, {name: task}, preconditioner="kfac", reward_mode="exact").score_docs(DOCS)
        assert _rel(per[name], alone) < 1e-9  # tasks do not mix (shared factors, own targets)
    assert _rel(s.score_docs(DOCS), (3 * per["lambada"] + per["squad"]) / 4) < 1e-12


def test_exact_mode_state_dict_round_trip(model):
    a = _scorer(model, preconditioner="ekfac", reward_mode="exact")
    b = InfluenceScorer(model, R.reference_tasks(), a.cfg, fit_docs=FIT)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(b.score_docs(DOCS), a.score_docs(DOCS))
    c = InfluenceScorer(model, R.reference_tasks(), InfluenceConfig(**{**a.cfg.to_dict(), "reward_mode": "features"}), FIT)
    with pytest.raises(SettingsMismatchError, match="reward_mode"):
        c.load_state_dict(a.state_dict())


def test_auto_mode_is_exact_only_when_factors_and_targets_fit(model):
    small = InfluenceScorer(model, R.reference_tasks(), InfluenceConfig(reward_mode="auto", full_space_max_entries=10), FIT)
    assert not small.exact() and small.settings()["reward_mode"] == "features"
    auto = InfluenceScorer(model, R.reference_tasks(), InfluenceConfig(reward_mode="auto"), FIT)
    assert auto.exact()
    # the budget counts K targets of d_out x d_in plus the factors (and EK-FAC's Lambda)
    n = sum(2 * b.d_in * b.d_out + b.d_in**2 + b.d_out**2 + b.d_in * b.d_out for b in auto.feats.blocks)
    assert InfluenceScorer(model, R.reference_tasks(), InfluenceConfig(reward_mode="auto", full_space_max_entries=n), FIT).exact()
    assert not InfluenceScorer(model, R.reference_tasks(), InfluenceConfig(reward_mode="auto", full_space_max_entries=n - 1), FIT).exact()
