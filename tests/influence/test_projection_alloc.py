"""How projection_dim is split across blocks and sides, and the orthogonal projection's scaling."""

import pytest
import torch

from thresher.influence import InfluenceConfig
from thresher.influence.features import projection_matrix, split_budget


@pytest.mark.parametrize(
    "k, d_in, d_out, split, want",
    [
        (1024, 64, 192, "square", (32, 32)),
        (1024, 16, 500, "square", (16, 32)),  # in side capped at 16, budget left unused
        (1024, 16, 500, "balanced", (16, 64)),  # ... given to the out side
        (1024, 500, 8, "balanced", (128, 8)),
        (1000, 64, 192, "balanced", (31, 31)),  # neither capped: floor(sqrt(k)) each
        (1024, 64, 192, "exact_side", (64, 16)),  # smaller side exact, 4 * 64 <= 1024
        (100, 64, 64, "exact_side", (10, 10)),  # 4 * 64 > 100: balanced
        (5000, 64, 64, "balanced", (64, 64)),  # budget covers the block: exact
    ],
)
def test_split_budget(k, d_in, d_out, split, want):
    got = split_budget(k, d_in, d_out, split)
    assert got == want and (got[0] * got[1] <= k or got == (d_in, d_out))


def test_orthogonal_projection_rows_are_orthonormal_and_scaled():
    cfg = InfluenceConfig(projection="orthogonal", seed=3)
    p = projection_matrix(cfg, "blk", "in", 12, 40)
    assert p.shape == (12, 40)
    assert torch.allclose(p @ p.T, torch.eye(12, dtype=torch.float64) * 40 / 12, atol=1e-12)
    assert torch.equal(p, projection_matrix(cfg, "blk", "in", 12, 40))
    assert not torch.equal(p, projection_matrix(cfg, "blk", "out", 12, 40))
    assert not torch.equal(p, projection_matrix(InfluenceConfig(projection="orthogonal", seed=4), "blk", "in", 12, 40))
    # E[P^T P] = I over seeds: P^T P = (d/k) x the projector onto a uniformly random k-dim subspace, whose
    # diagonal is Beta(k/2, (d-k)/2) (mean k/d, sd sqrt(k(d-k) / (d^2 (d/2 + 1))) = 0.1 here, x d/k = 0.33);
    # over 400 seeds the entries' sd is <= 0.33 / 20 = 0.017, so 0.1 is ~6 sd
    mean = sum(q.T @ q for q in (projection_matrix(InfluenceConfig(projection="orthogonal", seed=s), "blk", "in", 12, 40)
                                 for s in range(400))) / 400
    torch.testing.assert_close(mean, torch.eye(40, dtype=torch.float64), rtol=0, atol=0.1)
