"""The issue's accuracy bar: with the default projection (projection="auto" -> "reference" here, 8192
dimensions), rewards rank the candidates of the synthetic world like the unprojected ones (Spearman >= 0.9),
for every preconditioner. Same setup as benchmarks/influence_projection.py (tiny model trained 60 steps)."""

import sys
from pathlib import Path

import pytest
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from influence_projection import rewards, synthetic_setup  # noqa: E402


@pytest.fixture(scope="module")
def world():
    model, ref, docs = synthetic_setup()
    return model, ref, docs[:64], docs[64:]


@pytest.mark.parametrize("pc", ["none", "kfac", "ekfac"])
def test_default_projection_ranks_like_unprojected(world, pc):
    model, ref, fit, cand = world
    exact = rewards(model, ref, fit, cand, preconditioner=pc, projection="none")
    got = rewards(model, ref, fit, cand, preconditioner=pc)  # every other setting at its default
    rho = spearmanr(exact, got).statistic
    assert rho >= 0.9, rho
