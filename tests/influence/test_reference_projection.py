"""projection="reference": per block, the top singular subspaces of the whitened preconditioned reference
gradients (full space), against dense references: per-example autograd gradients, whitened with dense factors
and restricted to subspaces computed by an independent SVD; and the exact path where the subspaces hold the
whole reference; and projection="auto"."""

import numpy as np
import pytest
import torch

import influence_ref as R
from test_exact import DOCS, FIT, _rel
from test_full_space import _inv_sqrt
from thresher.corpus.batching import pad_docs
from thresher.influence import InfluenceConfig, InfluenceScorer
from thresher.influence.features import reference_subspaces
from thresher.utils.errors import ThresherError


@pytest.fixture(scope="module")
def model():
    return R.tiny_llama(hidden=16, inter=48)


def _scorer(model, **kw):
    cfg = InfluenceConfig(batch_size=4, damping=1e-3, damping_mode="absolute", **kw)
    s = InfluenceScorer(model, R.reference_tasks(), cfg, fit_docs=FIT)
    s.refresh(model, step=0)
    return s


def _targets(model, pc, grouping):
    """Per block (K, d_out, d_in) = P^-1 g_ref,k in the full space (reward_mode="exact", itself tested
    against dense Kronecker solves in test_exact_rewards.py)."""
    ex = _scorer(model, preconditioner=pc, grouping=grouping, reward_mode="exact")
    return [torch.cat(ms, 1) for ms in ex.ref_exact]


def _svd_projector(m: torch.Tensor, k: int) -> torch.Tensor:
    """Projector onto the top-k left singular subspace of m (an SVD, not the scorer's Gram eigh)."""
    if k >= m.shape[0]:
        return torch.eye(m.shape[0], dtype=m.dtype)
    u = torch.linalg.svd(m, full_matrices=False).U[:, :k]
    return u @ u.T


@pytest.mark.parametrize("pc,grouping", [("none", "qkv"), ("kfac", "qkv"), ("ekfac", "qkv"), ("ekfac", "independent")])
def test_rewards_are_exact_rewards_restricted_to_the_whitened_subspaces(model, pc, grouping):
    """With factors, U_k = P^-1 g_ref,k is whitened: R_k = W_G^-1 U_k W_A^-1 with W = (F + sqrt(damping) mean(e) I)^-1/2
    of the dense token factors, and the reward is <Pi_out R_k Pi_in, W_G X W_A> (Pi: top singular
    subspaces of [R_1 ... R_K] by an SVD); without factors W = I, so it is <Pi_out U_k Pi_in, X>."""
    s = _scorer(model, preconditioner=pc, grouping=grouping, projection="reference", projection_dim=48)
    assert s.full_space() == (pc != "none") and any(ko < b.d_out for (_, ko), b in zip(s.feats.dims, s.feats.blocks))
    us = _targets(model, pc, grouping)
    xs = R.doc_grads(model, s.feats.blocks, DOCS)
    factors = R.token_factors(model, s.feats.blocks, FIT) if pc != "none" else [(None, None)] * len(us)
    want = np.zeros((len(DOCS), len(us[0])))
    for bi, (u, (ki, ko), (A, G)) in enumerate(zip(us, s.feats.dims, factors)):
        eye = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731
        w_a, w_g = (eye(u.shape[2]), eye(u.shape[1])) if A is None else (_inv_sqrt(A, 1e-3), _inv_sqrt(G, 1e-3))
        r = torch.linalg.solve(w_g, torch.linalg.solve(w_a.T, u.transpose(1, 2)).transpose(1, 2))  # W_G^-1 U W_A^-1
        pi_out = _svd_projector(torch.cat(list(r), 1), ko)  # [R_1 ... R_K]: (d_out, K d_in)
        pi_in = _svd_projector(torch.cat(list(r.transpose(1, 2)), 1), ki)  # [R_1^T ... R_K^T]: (d_in, K d_out)
        for k in range(len(u)):
            restricted = pi_out @ r[k] @ pi_in
            want[:, k] += [float((restricted * (w_g @ x[bi] @ w_a)).sum()) for x in xs]
    assert _rel(s.per_task_score_matrix(DOCS), torch.from_numpy(want)) < 1e-6


@pytest.mark.parametrize("pc", ["none", "kfac", "ekfac"])
def test_exact_when_the_subspaces_hold_the_reference(model, pc):
    """Input side unprojected, output side of rank >= K d_in: [U_1 ... U_K] lies in the subspace, so the
    rewards are the exact ones although the q/k/v and gate/up outputs are projected (48 -> 32, 96 -> 32)."""
    s = _scorer(model, preconditioner=pc, projection="reference", k_in=10_000, k_out=2 * 16)
    assert any(ko < b.d_out for (_, ko), b in zip(s.feats.dims, s.feats.blocks))
    want = _scorer(model, preconditioner=pc, reward_mode="exact").per_task_score_matrix(DOCS)
    assert _rel(s.per_task_score_matrix(DOCS), torch.from_numpy(want)) < 1e-8


def test_deterministic_batch_invariant_and_state_round_trip(model):
    s = _scorer(model, preconditioner="ekfac", projection="reference", projection_dim=48)
    other_seed = _scorer(model, preconditioner="ekfac", projection="reference", projection_dim=48, seed=7)
    r = s.score_docs(DOCS, batch_size=4)
    np.testing.assert_array_equal(other_seed.score_docs(DOCS, batch_size=4), r)  # no random matrix anywhere
    np.testing.assert_allclose(s.score_docs(DOCS, batch_size=1), r, rtol=1e-9, atol=1e-12 * np.abs(r).max())
    fresh = InfluenceScorer(model, R.reference_tasks(), s.cfg, fit_docs=FIT)
    with pytest.raises(ThresherError, match="refresh"):
        fresh.features(pad_docs(DOCS[:2], 64))
    fresh.load_state_dict(s.state_dict())
    np.testing.assert_array_equal(fresh.score_docs(DOCS, batch_size=4), r)


def test_subspaces_are_orthonormal_and_sign_fixed():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 12, 7, generator=g, dtype=torch.float64)
    p_in, p_out = reference_subspaces(u, 3, 5)
    torch.testing.assert_close(p_out @ p_out.T, torch.eye(5, dtype=torch.float64))
    torch.testing.assert_close(p_in @ p_in.T, torch.eye(3, dtype=torch.float64))
    assert reference_subspaces(u, 7, 12) == (None, None)
    flipped, _ = reference_subspaces(-u, 3, 5)  # same subspaces, same signs
    torch.testing.assert_close(flipped, p_in)


def test_subspaces_are_the_top_eigenspaces_of_the_gram_matrices():
    """Reference: eigenvectors of sum_k U_k U_k^T (left) and sum_k U_k^T U_k (right) from a dense eigh."""
    g = torch.Generator().manual_seed(1)
    for K, d_out, d_in in [(1, 30, 6), (3, 9, 14), (2, 11, 11)]:
        u = torch.randn(K, d_out, d_in, generator=g, dtype=torch.float64)
        p_in, p_out = reference_subspaces(u, 4, 5)
        for p, gram in ((p_out, torch.einsum("kij,klj->il", u, u)), (p_in, torch.einsum("kji,kjl->il", u, u))):
            q = torch.linalg.eigh(gram).eigenvectors[:, -p.shape[0]:]
            torch.testing.assert_close(p.T @ p, q @ q.T, rtol=0, atol=1e-10)  # same subspace
            torch.testing.assert_close(p.abs(), q.flip(1).T.abs(), rtol=0, atol=1e-10)  # same order


def test_subspaces_of_a_rank_deficient_reference_hold_it():
    """Fewer nonzero singular values than k (the SVD fallback): orthonormal rows that contain the range."""
    g = torch.Generator().manual_seed(2)
    u = (torch.randn(40, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 8, generator=g, dtype=torch.float64))[None]
    p_in, p_out = reference_subspaces(u, 4, 5)
    torch.testing.assert_close(p_out @ p_out.T, torch.eye(5, dtype=torch.float64))
    torch.testing.assert_close(p_out.T @ (p_out @ u[0]), u[0])  # the projector keeps the whole reference
    torch.testing.assert_close((u[0] @ p_in.T) @ p_in, u[0])


def test_auto_is_reference_only_when_the_full_space_fits(model):
    from thresher.influence.scorer import full_space_entries

    s = _scorer(model, preconditioner="ekfac")
    n = full_space_entries(s.feats.blocks, s.cfg, 2)
    assert s.cfg.projection == "reference" and s.settings()["projection"] == "reference"
    assert _scorer(model, preconditioner="ekfac", full_space_max_entries=n).cfg.projection == "reference"
    assert _scorer(model, preconditioner="ekfac", full_space_max_entries=n - 1).cfg.projection == "orthogonal"
    blocks = s.feats.blocks  # factors A, G, Lambda and two targets per block, counted by hand
    assert n == sum(b.d_in**2 + b.d_out**2 + 3 * b.d_in * b.d_out for b in blocks)


def test_linalg_flops_count_the_factor_space(model):
    """Hand-counted: full-space blocks (d_in, d_out) for "reference", k x k blocks for a projected-space
    orthogonal EK-FAC, nothing for an orthogonal dot product."""
    ref = _scorer(model, preconditioner="ekfac", projection="reference", projection_dim=48)
    want = 0
    for b, (ki, ko) in zip(ref.feats.blocks, ref.feats.dims):
        c, r = b.d_in, b.d_out
        want += 100 * 2 * (c**2 + r**2) + 10 * (c**3 + r**3)  # factor sums, eigh
        want += 100 * 2 * c * r + 7 * 2 * c * r * (c + r)  # Lambda from 7 kept per-document gradients
        # subspaces, 2 tasks: left from [R_1 R_2] (r, 2c), right from [R_1^T R_2^T] (c, 2r); Gram of the
        # smaller side (2 d n m), its eigh (10 m^3), and m q (2 d n k) when the Gram was n x n
        for d, n, k in ((r, 2 * c, ko), (c, 2 * r, ki)):
            if k < d:
                m = min(d, n)
                want += 2 * d * n * m + 10 * m**3 + (2 * d * n * k if d > n else 0)
    assert ref.linalg_flops(100, 7) == want
    # under torchrun every rank repeats the eigendecompositions and the subspaces, not the per-token sums
    repeated = 0
    for b, (ki, ko) in zip(ref.feats.blocks, ref.feats.dims):
        c, r = b.d_in, b.d_out
        repeated += 10 * (c**3 + r**3)
        for d, n, k in ((r, 2 * c, ko), (c, 2 * r, ki)):
            if k < d:
                m = min(d, n)
                repeated += 2 * d * n * m + 10 * m**3 + (2 * d * n * k if d > n else 0)
    assert ref.linalg_flops(100, 7, replicas=3) == want + 2 * repeated
    orth = _scorer(model, preconditioner="ekfac", projection="orthogonal", projection_dim=48)
    assert orth.last_fit_passes == 1
    assert orth.linalg_flops(100, 7) == sum(100 * (2 * (ki**2 + ko**2) + 2 * ki * ko) + 7 * 2 * ki * ko * (ki + ko)
                                            + 10 * (ki**3 + ko**3) for ki, ko in orth.feats.dims)
    assert _scorer(model, preconditioner="none", projection="orthogonal").linalg_flops(100) == 0
