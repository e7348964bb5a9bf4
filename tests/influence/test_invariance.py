"""Rewards do not depend on batching, order within a batch or padding; the projection keeps the ranking."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import influence_ref as R
from thresher.corpus.batching import pad_docs
from thresher.corpus.reference import ReferenceTask
from thresher.influence import InfluenceConfig, InfluenceScorer

DOCS = R.random_docs(10, seed=5) + R.pattern_docs(6, seed=6)
FIT = R.random_docs(12, seed=7) + R.pattern_docs(6, seed=8)


@pytest.fixture(scope="module")
def scorer():
    model = R.tiny_llama(hidden=32, heads=4, inter=64)
    s = InfluenceScorer(model, R.reference_tasks(), InfluenceConfig(preconditioner="ekfac", batch_size=5), FIT)
    s.refresh(model, step=3)
    return s


def test_batch_size_invariance(scorer):
    base = scorer.score_docs(DOCS, batch_size=1)
    assert np.abs(base).max() > 0
    for bs in (2, 5, 16):
        np.testing.assert_allclose(scorer.score_docs(DOCS, batch_size=bs), base, rtol=1e-9, atol=1e-12 * np.abs(base).max())


def test_order_within_batch_invariance(scorer):
    perm = np.random.default_rng(0).permutation(len(DOCS))
    a = scorer.score(pad_docs(DOCS, 64)).numpy()
    b = scorer.score(pad_docs([DOCS[i] for i in perm], 64)).numpy()
    np.testing.assert_allclose(b, a[perm], rtol=1e-9, atol=1e-12 * np.abs(a).max())


def test_padding_does_not_change_rewards(scorer):
    short = DOCS[:4]
    tight = scorer.score(pad_docs(short, 64)).numpy()
    long_doc = np.arange(1, 60) % 97
    padded = scorer.score(pad_docs(short + [long_doc], 64)).numpy()[:4]
    np.testing.assert_allclose(padded, tight, rtol=1e-9, atol=1e-12 * np.abs(tight).max())


@pytest.mark.parametrize("projection", ["auto", "orthogonal"])  # auto = "reference" here (the full space fits)
def test_default_projection_keeps_ranking(projection):
    """Default projection_dim, hidden-32 model (output sides really projected: 96 -> 32, 128 -> 32),
    a reference task built from motifs, candidates = random docs, docs of those motifs, other patterns."""
    model = R.tiny_llama(hidden=32, layers=2, heads=4, inter=64, seed=1)
    r = np.random.default_rng(0)
    motifs = [r.integers(1, 97, 3) for _ in range(3)]
    tile = lambda m, n: np.tile(m, 40)[:n]  # noqa: E731
    ref = {"motif": ReferenceTask("motif", [tile(motifs[i % 3], 9) for i in range(6)],
                                  [tile(motifs[i % 3], 12)[9:] for i in range(6)])}
    docs = R.random_docs(25, seed=9, hi=24) + [tile(motifs[i % 3], int(r.integers(8, 24))) for i in range(10)]
    docs += R.pattern_docs(15, seed=10)
    exact = InfluenceScorer(model, ref, InfluenceConfig(preconditioner="none", projection="none"))
    exact.refresh(model)
    want = exact.score_docs(docs)
    for seed in range(3):
        s = InfluenceScorer(model, ref, InfluenceConfig(preconditioner="none", seed=seed, projection=projection))
        s.refresh(model)
        assert any(ko < d for (ki, ko), d in zip(s.feats.dims, [b.d_out for b in s.feats.blocks]))
        rho = spearmanr(s.score_docs(docs), want).statistic
        assert rho >= 0.9, (seed, rho)


def test_rademacher_projection_is_seeded(scorer):
    model = scorer.model
    cfg = InfluenceConfig(projection="rademacher", preconditioner="none", seed=11)
    a = InfluenceScorer(model, R.reference_tasks(), cfg)
    b = InfluenceScorer(model, R.reference_tasks(), cfg)
    c = InfluenceScorer(model, R.reference_tasks(), InfluenceConfig(projection="rademacher", preconditioner="none", seed=12))
    projected = 0
    for (pa, _), (pb, _), (pc, _) in zip(a.feats._proj_cpu, b.feats._proj_cpu, c.feats._proj_cpu):
        if pa is not None:
            projected += 1
            assert torch.equal(pa, pb) and set(torch.unique(pa * pa.shape[0] ** 0.5).tolist()) == {-1.0, 1.0}
            assert not torch.equal(pa, pc)  # another seed, another matrix
    assert projected > 0
