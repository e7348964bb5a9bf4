"""Eq. 3, 4, 5, 7, 8, 9 (multi-agent paper) and Eq. 1-2 (Quad's UCB) against hand-computed numbers."""

import math

import numpy as np
import pytest

from thresher.agents.agent import CategoricalAgent, normalise_rewards
from thresher.agents.bandit import ClusterBandit
from thresher.agents.base import Labels
from thresher.agents.cells import build_cell_index
from thresher.agents.console import AgentConsole
from thresher.labels.intervals import quality_interval


def test_eq3_quality_intervals():
    s = np.array([0.0, 0.99, 1.0, 3.5, 4.0, 5.0, 5.3, -1.0, np.nan])
    assert quality_interval(s).tolist() == [0, 0, 1, 3, 4, 4, 4, 0, -1]


def test_eq4_eq5_eq8_agent_update():
    a = CategoricalAgent("q", "q", ["a", "b", "c", "d"], np.array([0.1, 0.2, 0.3, 0.4]), eta=0.5,
                         normalization="raw")
    up = a.learn(np.array([0, 0, 1, 2, 2, 2]), np.array([1.0, 3.0, 2.0, 4.0, 5.0, 6.0]))
    # Eq. 4: means [2, 2, 5, -]; Eq. 5: w + 0.5 * mean; category d was not sampled, unchanged
    np.testing.assert_allclose(up.mean_rewards[:3], [2.0, 2.0, 5.0])
    assert np.isnan(up.mean_rewards[3])
    np.testing.assert_allclose(a.weights, [1.1, 1.2, 2.8, 0.4])
    # Eq. 8 with the updated weights over the 3 sampled categories
    assert up.reward == pytest.approx((1.1 * 2 + 1.2 * 2 + 2.8 * 5) / 3)


def test_eq9_collaborative_update():
    c = AgentConsole([object(), object(), object()], theta_init=1.0, eta=0.5)
    out = c.collaborate(np.array([1.0, 2.0, 6.0]))
    assert out["mean_reward"] == pytest.approx(3.0)
    np.testing.assert_allclose(c.theta, [0.0, 0.5, 2.5])
    fixed = AgentConsole([object()] * 3, theta_init=1.0, eta=0.5, update_theta=False)
    fixed.collaborate(np.array([1.0, 2.0, 6.0]))
    np.testing.assert_allclose(fixed.theta, [1.0, 1.0, 1.0])


def test_eq7_combined_score_per_cell():
    q = np.array([0, 1, 1, -1, 0, 1], dtype=np.int16)
    d = np.array([0, 0, 2, 1, 2, 1], dtype=np.int16)
    labels = Labels({"q": q, "d": d}, {"q": ["q0", "q1"], "d": ["d0", "d1", "d2"]})
    index = build_cell_index(labels, ["q", "d"], np.ones(6, dtype=np.int64))
    aq = CategoricalAgent("q", "q", ["q0", "q1"], np.array([0.2, 0.6]))
    ad = CategoricalAgent("d", "d", ["d0", "d1", "d2"], np.array([1.0, 2.0, 4.0]))
    c = AgentConsole([aq, ad])
    c.theta = np.array([3.0, 0.5])
    per_doc = c.cell_scores(index)[index.cell_id]
    wq = np.array([0.2, 0.6, 0.4])  # missing quality -> the neutral mean weight 0.4
    expect = 3.0 * wq[q] + 0.5 * np.array([1.0, 2.0, 4.0])[d]
    np.testing.assert_allclose(per_doc, expect)
    excl = c.cell_scores(index, missing="exclude")[index.cell_id]
    assert np.isneginf(excl[3]) and np.isfinite(np.delete(excl, 3)).all()


def test_ucb_cluster_score_eq1_eq2():
    b = ClusterBandit(np.array([10, 10, 10, 0]), alpha=0.5, arms_per_round=2)
    b.observe(np.array([0, 0, 1]), np.array([1.0, 3.0, 2.0]))
    np.testing.assert_allclose(b.sums, [4.0, 2.0, 0.0, 0.0])
    cs = b.scores()
    assert cs[0] == pytest.approx(2.0 + 0.5 * math.sqrt(2 * math.log(3) / 2))
    assert cs[1] == pytest.approx(2.0 + 0.5 * math.sqrt(2 * math.log(3) / 1))
    assert cs[2] == np.inf and cs[3] == -np.inf  # unvisited first; an empty cluster never
    assert b.choose(np.random.default_rng(0)).tolist() == [2, 1]


def test_reward_normalisations():
    r = np.array([3.0, 1.0, 2.0, 2.0])
    np.testing.assert_allclose(normalise_rewards(r, "rank"), (np.array([4, 1, 2.5, 2.5]) - 1) / 3 - 0.5)
    z = normalise_rewards(r, "zscore")
    np.testing.assert_allclose(z, (r - r.mean()) / r.std())
    np.testing.assert_allclose(normalise_rewards(r, "raw"), r)
