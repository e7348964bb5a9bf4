"""How projection_dim is split across blocks and sides, and the orthogonal projection's scaling."""

import math

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
    assert torch.allclose(p @ p.T, torch.eye(12, dtype=torch.float64) * 40 / 12, atol=1e-12)
    # E[P^T P] = I: the mean over seeds of the diagonal of P^T P is 1 (trace is exactly d)
    assert math.isclose(float(torch.trace(p.T @ p)), 40.0, rel_tol=1e-12)
    assert torch.equal(p, projection_matrix(cfg, "blk", "in", 12, 40))
    assert not torch.equal(p, projection_matrix(cfg, "blk", "out", 12, 40))
