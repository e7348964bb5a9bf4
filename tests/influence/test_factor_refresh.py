"""influence.factor_refresh_every: factors fit at one refresh, reused at the next ones with the current
model's reference gradients. Reference: dense float64 Kronecker solves with H built on the model the
factors were fit on, gradients (reference and documents) from the model the rewards are asked of."""

import copy
import dataclasses
from types import SimpleNamespace

import pytest
import torch

import influence_ref as R
from test_exact import DOCS, FIT, _dense_H, _rel
from thresher.influence import InfluenceConfig, InfluenceScorer
from thresher.influence.modules import build_blocks
from thresher.utils.errors import SettingsMismatchError, ThresherError


def _models():
    m0 = R.tiny_llama()
    m1 = copy.deepcopy(m0)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in m1.parameters():
            p.add_(0.2 * p.std() * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m0, m1


def _cfg(**kw):
    return InfluenceConfig(batch_size=4, damping=1e-3, damping_mode="absolute", **kw)


def _on(model, cfg):
    """Something with ``feats.blocks`` built on ``model`` (the dense helpers read the blocks' modules)."""
    return SimpleNamespace(feats=SimpleNamespace(blocks=build_blocks(model, cfg)))


def _dense_rewards(s, model_factors, model_grads, kind):
    H = _dense_H(model_factors, _on(model_factors, s.cfg), kind, 1e-3)
    blocks = build_blocks(model_grads, s.cfg)
    xs = R.doc_grads(model_grads, blocks, DOCS)
    return {name: R.dense_rewards(R.ref_grad(model_grads, blocks, task), xs, H)
            for name, task in R.reference_tasks().items()}


@pytest.mark.parametrize("pc,kind,mode", [("kfac", "joint", "features"), ("ekfac", "ekfac", "features"), ("ekfac", "ekfac", "exact")])
def test_reused_factors_are_those_of_the_refit_model(pc, kind, mode):
    m0, m1 = _models()
    s = InfluenceScorer(m0, R.reference_tasks(), _cfg(preconditioner=pc, projection="none", reward_mode=mode,
                                                       factor_refresh_every=2), fit_docs=FIT)
    s.refresh(m0, step=0)
    assert s.last_refit and s.refreshes == 1
    s.refresh(m1, step=10)  # factors of m0, gradients of m1
    assert not s.last_refit and s.step == 10
    got = s.per_task_score_docs(DOCS)
    for name, want in _dense_rewards(s, m0, m1, kind).items():
        assert _rel(got[name], want) < 1e-6, name
    stale = _dense_rewards(s, m1, m1, kind)  # the test can tell the two apart
    assert _rel(got["lambada"], stale["lambada"]) > 1e-3
    s.refresh(m1, step=20)  # the second refresh after a refit refits
    assert s.last_refit
    got = s.per_task_score_docs(DOCS)
    for name, want in stale.items():
        assert _rel(got[name], want) < 1e-6, name


def test_reference_projection_reuses_factors_but_rebuilds_subspaces():
    m0, m1 = _models()
    s = InfluenceScorer(m0, R.reference_tasks(), _cfg(preconditioner="ekfac", projection="reference", projection_dim=48,
                                                       factor_refresh_every=3), fit_docs=FIT)
    s.refresh(m0, step=0)
    q_g, proj = s.pre.state["Q_G"][0].clone(), [p.clone() for p in s.feats.raw_projections[0] if p is not None]
    s.refresh(m1, step=1)
    assert torch.equal(s.pre.state["Q_G"][0], q_g)  # factors kept
    assert not all(torch.equal(a, b) for a, b in zip(proj, [p for p in s.feats.raw_projections[0] if p is not None]))
    # the rewards are those of an every-refresh scorer whose factors were fit on m0
    ref = InfluenceScorer(m0, R.reference_tasks(), _cfg(preconditioner="ekfac", projection="reference", projection_dim=48,
                                                         factor_refresh_every=3), fit_docs=FIT)
    ref.load_factor_state_dict(s.factor_state_dict() | {"refreshes": 1})
    ref.refresh(m1, step=1)
    assert not ref.last_refit
    assert _rel(ref.score_docs(DOCS), s.score_docs(DOCS)) < 1e-12


def test_factor_state_round_trip_continues_the_schedule():
    m0, m1 = _models()
    cfg = _cfg(preconditioner="ekfac", projection="none", factor_refresh_every=2)
    a = InfluenceScorer(m0, R.reference_tasks(), cfg, fit_docs=FIT)
    a.refresh(m0, step=0)
    b = InfluenceScorer(m0, R.reference_tasks(), cfg, fit_docs=FIT)
    b.load_factor_state_dict(a.factor_state_dict())
    a.refresh(m1, step=1), b.refresh(m1, step=1)
    assert not b.last_refit
    assert torch.equal(torch.as_tensor(a.score_docs(DOCS)), torch.as_tensor(b.score_docs(DOCS)))
    other = InfluenceScorer(m0, R.reference_tasks(), _cfg(preconditioner="ekfac", projection="none", factor_refresh_every=3), fit_docs=FIT)
    with pytest.raises(SettingsMismatchError):
        other.load_factor_state_dict(a.factor_state_dict())


def test_flops_count_the_factors_only_when_refit():
    m0, m1 = _models()
    s = InfluenceScorer(m0, R.reference_tasks(), _cfg(preconditioner="kfac", projection="orthogonal", projection_dim=48,
                                                       factor_refresh_every=2), fit_docs=FIT)
    s.refresh(m0)
    assert s.linalg_flops(100) == sum(100 * 2 * (ki**2 + ko**2) + 10 * (ki**3 + ko**3) for ki, ko in s.feats.dims)
    s.refresh(m1)
    assert s.linalg_flops(100) == 0
    # the reference tokens of one refresh: every example of every task, truncated to max_len
    want = sum(min(len(c) + len(t), s.cfg.max_len) for task in R.reference_tasks().values() for c, t in task.examples())
    assert s.ref_tokens == want > 0


def test_reference_tokens_count_only_the_sampled_examples():
    m0, _ = _models()
    tasks = R.reference_tasks()
    s = InfluenceScorer(m0, tasks, _cfg(preconditioner="none", projection="orthogonal", projection_dim=48,
                                        ref_max_examples=2), fit_docs=FIT)
    s.refresh(m0)
    full = sum(min(len(c) + len(t), s.cfg.max_len) for task in tasks.values() for c, t in task.examples())
    assert 0 < s.ref_tokens < full and all(len(t.examples()) > 2 for t in tasks.values())


def test_default_settings_do_not_name_the_option_and_bad_values_are_refused():
    settings = InfluenceScorer(R.tiny_llama(), R.reference_tasks(), _cfg(preconditioner="none")).settings()
    assert not {"factor_refresh_every", "factor_reuse", "factor_reuse_from_step"} & set(settings)
    every3 = InfluenceScorer(R.tiny_llama(), R.reference_tasks(), _cfg(preconditioner="none", factor_refresh_every=3)).settings()
    assert every3["factor_refresh_every"] == 3 and "factor_reuse_from_step" not in every3  # states saved before it load
    with pytest.raises(ThresherError, match="factor_refresh_every"):
        _cfg(factor_refresh_every=0)
    with pytest.raises(ThresherError, match="factor_reuse_from_step"):
        _cfg(factor_reuse_from_step=-1)


def test_reuse_from_step_refits_every_refresh_before_it():
    """factor_reuse_from_step = 30: refreshes at steps < 30 (or without a step) refit; from 30 on the
    factor_refresh_every cycle holds, and a reused refresh's rewards are those of the last refit's factors."""
    m0, m1 = _models()
    cfg = _cfg(preconditioner="kfac", projection="none", factor_refresh_every=2, factor_reuse_from_step=30)
    s = InfluenceScorer(m0, R.reference_tasks(), cfg, fit_docs=FIT)
    refits = []
    for step, model in [(0, m0), (10, m0), (None, m0), (20, m0), (30, m1), (40, m1)]:
        s.refresh(model, step=step)
        refits.append(s.last_refit)
    # refreshes 0..5: 0-3 before step 30 refit; 4 (step 30) is 4 % 2 == 0, a refit; 5 (step 40) reuses
    assert refits == [True, True, True, True, True, False]
    assert (s.factor_step, s.step) == (30, 40)
    s2 = InfluenceScorer(m0, R.reference_tasks(), cfg, fit_docs=FIT)
    for step, model in [(20, m0), (30, m1)]:  # refresh 1 at step 30: odd, so the factors of m0 (step 20) stay
        s2.refresh(model, step=step)
    assert (s2.last_refit, s2.factor_step) == (False, 20)
    for name, want in _dense_rewards(s2, m0, m1, "joint").items():
        assert _rel(s2.per_task_score_docs(DOCS)[name], want) < 1e-6, name
    assert "factor_reuse_from_step" in s2.settings()


@pytest.mark.parametrize("projection", ["none", "orthogonal", "reference"])
def test_one_pass_lambda_equals_the_second_pass(projection):
    """EK-FAC's Lambda from the per-document gradients kept in the factor pass (one pass over the fit
    documents) equals the second pass over them (the path above lambda_keep_max_entries), and the
    threshold, a speed-only setting, leaves the settings alone (states saved under either load)."""
    m0, _ = _models()
    cfg = _cfg(preconditioner="ekfac", projection=projection, projection_dim=48)
    one = InfluenceScorer(m0, R.reference_tasks(), cfg, fit_docs=FIT)
    one.refresh(m0)
    two = InfluenceScorer(m0, R.reference_tasks(), dataclasses.replace(cfg, lambda_keep_max_entries=0), fit_docs=FIT)
    two.refresh(m0)
    assert (one.last_fit_passes, two.last_fit_passes) == (1, 2)
    assert (one.last_lambda_kept, two.last_lambda_kept) == (True, False)
    assert one.settings() == two.settings() and "lambda_keep_max_entries" not in one.settings()
    for a, b in zip(one.pre.state["inv"], two.pre.state["inv"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    assert _rel(one.score_docs(DOCS), two.score_docs(DOCS)) < 1e-12
    assert one.fit_size == (len(FIT), sum(len(d) for d in FIT))


@pytest.mark.parametrize("projection,reward_mode", [("none", "features"), ("none", "exact")])
def test_eigenbasis_reuse_re_estimates_lambda_in_the_kept_basis(projection, reward_mode):
    m0, m1 = _models()
    cfg = _cfg(preconditioner="ekfac", projection=projection, reward_mode=reward_mode, factor_refresh_every=3,
               factor_reuse="eigenbasis")
    s = InfluenceScorer(m0, R.reference_tasks(), cfg, fit_docs=FIT)
    s.refresh(m0, step=0)
    q_a = s.pre.state["Q_A"][0].clone()
    s.refresh(m1, step=7)
    assert (s.last_refit, s.last_lambda, s.factor_step, s.lambda_step) == (False, True, 0, 7)
    assert torch.equal(s.pre.state["Q_A"][0], q_a)
    assert s.provenance()["lambda_step"] == 7 and s.provenance()["factors_step"] == 0
    blocks = build_blocks(m1, cfg)
    # Q from m0's token factors, Lambda from m1's per-document gradients in that basis (George et al.)
    H = _dense_H(m0, _on(m0, cfg), "ekfac", 1e-3, lambda_model=m1, lambda_blocks=blocks)
    xs = R.doc_grads(m1, blocks, DOCS)
    got = s.per_task_score_docs(DOCS)
    for name, task in R.reference_tasks().items():
        assert _rel(got[name], R.dense_rewards(R.ref_grad(m1, blocks, task), xs, H)) < 1e-6, name
    # against "all" (Lambda of m0 kept): a different preconditioner, so different rewards
    keep_all = InfluenceScorer(m0, R.reference_tasks(), _cfg(preconditioner="ekfac", projection=projection,
                               reward_mode=reward_mode, factor_refresh_every=3), fit_docs=FIT)
    keep_all.refresh(m0), keep_all.refresh(m1)
    assert _rel(keep_all.per_task_score_docs(DOCS)["lambada"], got["lambada"]) > 1e-4


def test_eigenbasis_reuse_second_pass_and_flops():
    """Above lambda_keep_max_entries the Lambda refresh is one pass that rotates every token (same numbers)."""
    m0, m1 = _models()
    cfg = _cfg(preconditioner="ekfac", projection="orthogonal", projection_dim=48, factor_refresh_every=2,
               factor_reuse="eigenbasis")
    kept = InfluenceScorer(m0, R.reference_tasks(), cfg, fit_docs=FIT)
    kept.refresh(m0), kept.refresh(m1)
    assert (kept.last_fit_passes, kept.last_lambda_kept) == (1, True)
    dims = kept.feats.dims
    assert kept.linalg_flops(100, 7) == sum(100 * 2 * ki * ko + 7 * 2 * ki * ko * (ki + ko) for ki, ko in dims)
    second = InfluenceScorer(m0, R.reference_tasks(), dataclasses.replace(cfg, lambda_keep_max_entries=0), fit_docs=FIT)
    second.refresh(m0), second.refresh(m1)
    assert (second.last_fit_passes, second.last_lambda_kept) == (1, False)
    assert second.linalg_flops(100, 7) == sum(100 * 2 * (ki**2 + ko**2 + ki * ko) for ki, ko in dims)
    assert _rel(kept.score_docs(DOCS), second.score_docs(DOCS)) < 1e-12


def test_eigenbasis_reuse_needs_ekfac():
    with pytest.raises(ThresherError, match="ekfac"):
        InfluenceScorer(R.tiny_llama(), R.reference_tasks(), _cfg(preconditioner="kfac", factor_reuse="eigenbasis"), fit_docs=FIT)


def test_run_counts_selection_flops_with_the_work_each_rank_repeats(monkeypatch):
    """LazyInfluenceRewards (the run's reward source): 4 x matmul parameters x (fit + reference tokens) plus
    the linear algebra; under torchrun the eigendecompositions count once per rank (the passes are split)."""
    import numpy as np

    from thresher.experiments.run import LazyInfluenceRewards
    from thresher.influence import distributed as hdist

    m0, _ = _models()
    cfg = _cfg(preconditioner="kfac", projection="orthogonal", projection_dim=48)
    store = SimpleNamespace(docs=lambda ids: [FIT[i] for i in ids], lengths=np.array([len(d) for d in FIT]))
    per_token = 4.0 * (sum(p.numel() for p in m0.parameters()) - m0.get_input_embeddings().weight.numel())
    flops = {}
    for ranks in (1, 3):
        monkeypatch.setattr(hdist, "world_size", lambda: ranks)
        src = LazyInfluenceRewards(cfg, R.reference_tasks(), store, np.arange(len(FIT)))
        src.refresh(m0, 0)
        s = src.inner.scorer
        n_fit, fit_tokens = s.fit_size
        assert src.flops == per_token * (fit_tokens + s.ref_tokens) + s.linalg_flops(fit_tokens, n_fit, ranks)
        flops[ranks] = src.flops
        before = src.flops
        src.rewards(np.array([0, 1]))  # scoring is split across ranks: counted once
        assert src.flops - before == per_token * sum(min(len(FIT[i]), cfg.max_len) for i in (0, 1))
    eigh = sum(10.0 * (ki**3 + ko**3) for ki, ko in s.feats.dims)
    assert flops[3] - flops[1] == pytest.approx(2 * eigh, rel=1e-12)
