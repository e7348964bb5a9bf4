"""precondition_space="full": (E)K-FAC from the true factors, the preconditioned reference projected after.

Against dense float64 references: (G (x) A + d I) solves and EK-FAC built from per-example gradients.
"""

import pytest
import torch

import influence_ref as R
from test_exact import FIT, DOCS, _dense_H, _rel
from thresher.influence import InfluenceConfig, InfluenceScorer


@pytest.fixture(scope="module")
def model():
    return R.tiny_llama(hidden=16, inter=48)


def _scorer(model, pc, kind, **kw):
    cfg = InfluenceConfig(preconditioner=pc, batch_size=4, damping=1e-3, damping_mode="absolute",
                          kfac_damping="factored" if kind == "factored" else "joint", **kw)
    s = InfluenceScorer(model, R.reference_tasks(), cfg, fit_docs=FIT)
    s.refresh(model, step=0)
    return s


@pytest.mark.parametrize("kind", ["joint", "factored", "ekfac"])
def test_full_space_without_projection_equals_exact_path(model, kind):
    pc = "ekfac" if kind == "ekfac" else "kfac"
    full = _scorer(model, pc, kind, projection="none", precondition_space="full")
    assert full.full_space()
    H = _dense_H(model, full, kind, 1e-3)
    xs = R.doc_grads(model, full.feats.blocks, DOCS)
    got = full.per_task_score_docs(DOCS)
    for name, task in R.reference_tasks().items():
        want = R.dense_rewards(R.ref_grad(model, full.feats.blocks, task), xs, H)
        assert _rel(got[name], want) < 1e-6, name


def _inv_sqrt(M, damping):
    e, q = torch.linalg.eigh(M)
    e = e.clamp(min=0)
    return (q * (e + damping**0.5 * e.mean()).rsqrt()) @ q.T


@pytest.mark.parametrize("kind", ["joint", "ekfac"])
@pytest.mark.parametrize("projection", ["gaussian", "orthogonal"])
def test_full_space_projection_is_whitened_and_unbiased(model, kind, projection):
    """Documents: P_out W_G X W_A P_in^T with W = (F + d I)^-1/2 of the dense factors; reference: P_out R P_in^T
    with (W_G (x) W_A) vec(R) = H^-1 vec(g_ref) (dense solves), so <R, W_G X W_A> = g_ref^T H^-1 x exactly."""
    pc = "ekfac" if kind == "ekfac" else "kfac"
    s = _scorer(model, pc, kind, projection=projection, projection_dim=96, precondition_space="full")
    assert any(ki < b.d_in or ko < b.d_out for (ki, ko), b in zip(s.feats.dims, s.feats.blocks))
    H = _dense_H(model, s, kind, 1e-3)
    factors = R.token_factors(model, s.feats.blocks, FIT)
    xs = R.doc_grads(model, s.feats.blocks, DOCS)
    proj = lambda m, p: m if p is None else p @ m  # noqa: E731
    both = lambda m, p_in, p_out: proj(proj(m, p_out).T, p_in).T  # noqa: E731  P_out M P_in^T
    got = s.per_task_score_docs(DOCS)
    for name, task in R.reference_tasks().items():
        g = R.ref_grad(model, s.feats.blocks, task)
        want = torch.zeros(len(DOCS), dtype=torch.float64)
        for bi, ((p_in, p_out), (A, G)) in enumerate(zip(s.feats._proj_raw, factors)):
            w_a, w_g = _inv_sqrt(A, 1e-3), _inv_sqrt(G, 1e-3)
            r = torch.linalg.solve(torch.kron(w_g, w_a), torch.linalg.solve(H[bi], g[bi].flatten())).view_as(g[bi])
            want += torch.stack([(both(r, p_in, p_out) * both(w_g @ x[bi] @ w_a, p_in, p_out)).sum() for x in xs])
        assert _rel(got[name], want) < 1e-6, name


def test_auto_space_falls_back_to_projected_when_factors_are_too_big(model):
    s = InfluenceScorer(model, R.reference_tasks(), InfluenceConfig(preconditioner="kfac", precondition_space="auto", full_space_max_entries=10), FIT)
    assert not s.full_space() and s.settings()["full_space"] is False
    assert InfluenceScorer(model, R.reference_tasks(), InfluenceConfig(preconditioner="kfac", precondition_space="auto"), FIT).full_space()
