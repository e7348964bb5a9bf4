"""Eq. 3, 4, 5, 7, 8, 9 and Algorithm 1 (multi-agent paper) and Eq. 1-2 (Quad's UCB) against hand-computed numbers."""

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


def test_ucb_counting_rounds_eq1_eq2():
    """ucb_count = "rounds": an arm played in a round counts once, with the mean of its rewards in that round."""
    b = ClusterBandit(np.array([10, 10, 10, 0]), alpha=0.5, arms_per_round=2, count="rounds")
    b.observe(np.array([0, 0, 1]), np.array([1.0, 3.0, 2.0]))  # round 1: arm 0 mean 2, arm 1 mean 2
    b.observe(np.array([0, 0, 0]), np.array([4.0, 4.0, 7.0]))  # round 2: arm 0 mean 5
    np.testing.assert_allclose(b.sums, [7.0, 2.0, 0.0, 0.0])
    assert b.counts.tolist() == [2, 1, 0, 0]
    cs = b.scores()  # N = 3 plays
    assert cs[0] == pytest.approx(3.5 + 0.5 * math.sqrt(2 * math.log(3) / 2))
    assert cs[1] == pytest.approx(2.0 + 0.5 * math.sqrt(2 * math.log(3) / 1))
    docs = ClusterBandit(np.array([10, 10, 10, 0]), alpha=0.5)  # the default counts documents: N = 6
    docs.observe(np.array([0, 0, 1]), np.array([1.0, 3.0, 2.0]))
    docs.observe(np.array([0, 0, 0]), np.array([4.0, 4.0, 7.0]))
    assert docs.scores()[0] == pytest.approx(19.0 / 5 + 0.5 * math.sqrt(2 * math.log(6) / 5))
    with pytest.raises(ValueError, match="count"):
        ClusterBandit(np.array([1]), count="times")


def test_round_size_is_the_ceiled_proportion_capped():
    """Quad's "small proportion of data instances from selected clusters": ceil(0.05 x size), at most the cap."""
    b = ClusterBandit(np.array([100, 7, 40000, 0, 21]), sample_proportion=0.05, max_samples_per_arm=1024)
    assert [b.round_size(a) for a in range(5)] == [5, 1, 1024, 0, 2]


def test_reward_normalisations():
    r = np.array([3.0, 1.0, 2.0, 2.0])
    np.testing.assert_allclose(normalise_rewards(r, "rank"), (np.array([4, 1, 2.5, 2.5]) - 1) / 3 - 0.5)
    z = normalise_rewards(r, "zscore")
    np.testing.assert_allclose(z, (r - r.mean()) / r.std())
    np.testing.assert_allclose(normalise_rewards(r, "raw"), r)


def test_eq9_per_agent_learning_rates():
    """Eq. 9 and Algorithm 1 line 11 write eta_A: with one eta per agent, theta_A moves by its own eta_A."""
    c = AgentConsole([object(), object(), object()], theta_init=1.0, eta=[0.5, 0.25, 1.0])
    out = c.collaborate(np.array([1.0, 2.0, 6.0]))  # Rbar = 3
    np.testing.assert_allclose(c.theta, [1.0 + 0.5 * -2.0, 1.0 + 0.25 * -1.0, 1.0 + 1.0 * 3.0])  # [0, 0.75, 4]
    assert out["theta_eta"] == [0.5, 0.25, 1.0]
    assert "theta_eta" not in AgentConsole([object()], eta=0.5).collaborate(np.array([1.0]))
    with pytest.raises(ValueError, match="2 Eq. 9 learning rates for 3 agents"):
        AgentConsole([object()] * 3, eta=[0.1, 0.2])


class _CellRewards:
    """R(x) = uq[q(x)] + ud[d(x)], no noise: Eq. 4's means are exact when every doc is sampled."""

    def __init__(self, q, d, uq, ud):
        self.q, self.d, self.uq, self.ud, self.refreshed = q, d, np.asarray(uq), np.asarray(ud), []

    def refresh(self, model, step):
        self.refreshed.append(step)

    def task_rewards(self, docs):
        docs = np.asarray(docs)
        return self.uq[self.q[docs]] + self.ud[self.d[docs]], {}

    def provenance(self):
        return {}


def _two_agent_world(**cfg):
    from thresher.agents.base import SelectionContext
    from thresher.agents.config import SelectorConfig
    from thresher.agents.policies import build_selector

    # 8 docs, 2 of each (q, d) cell: q = [0 0 0 0 1 1 1 1], d = [0 0 1 1 0 0 1 1]
    q = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=np.int16)
    d = np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int16)
    labels = Labels({"q": q, "d": d}, {"q": ["q0", "q1"], "d": ["d0", "d1"]})
    src = _CellRewards(q, d, uq=[1.0, 3.0], ud=[0.0, -4.0])
    ctx = SelectionContext(np.ones(8, dtype=np.int64), labels, rewards=src, budget_docs=2)
    sel = build_selector(SelectorConfig(policy="multi-agent", agents=["q", "d"], update_every=5, samples_per_category=4,
                                        normalization="raw", **cfg), ctx)
    sel.initial_selection()
    return sel, src


def test_algorithm1_one_update_by_hand():
    """Algorithm 1 lines 4-13 in order on a world small enough to do by hand: refresh the rewards, every agent
    samples all 4 docs of each category (line 6), Eq. 4-5 (line 8), Eq. 8 with the updated w (line 10), Eq. 9
    (line 11), Eq. 7 with the updated w and theta (line 12), top-k (line 13)."""
    sel, src = _two_agent_world(eta_agent=0.5, eta_console=8.0)
    assert not sel.on_step(4, None) and src.refreshed == []  # t mod U != 0: nothing
    assert sel.on_step(5, None) and src.refreshed == [5]
    # Eq. 4, rewards per cell q0d0 1, q0d1 -3, q1d0 3, q1d1 -1, two docs each:
    # q0 docs 1 1 -3 -3 -> -1; q1 docs 3 3 -1 -1 -> 1; d0 docs 1 1 3 3 -> 2; d1 docs -3 -3 -1 -1 -> -2
    up = sel.log[-1]["agents"]
    np.testing.assert_allclose(up[0]["mean_rewards"], [-1.0, 1.0])
    np.testing.assert_allclose(up[1]["mean_rewards"], [2.0, -2.0])
    assert up[0]["n_samples"] == [4, 4] and up[1]["n_samples"] == [4, 4]
    # Eq. 5 from uniform 0.5: w_q = [0.5 - 0.5, 0.5 + 0.5] = [0, 1]; w_d = [0.5 + 1, 0.5 - 1] = [1.5, -0.5]
    np.testing.assert_allclose(up[0]["weights"], [0.0, 1.0])
    np.testing.assert_allclose(up[1]["weights"], [1.5, -0.5])
    # Eq. 8: R_q = (0 * -1 + 1 * 1) / 2 = 0.5; R_d = (1.5 * 2 + -0.5 * -2) / 2 = 2; Rbar = 1.25
    np.testing.assert_allclose(sel.log[-1]["agent_rewards"], [0.5, 2.0])
    # Eq. 9, eta 8: theta = [1 + 8 * -0.75, 1 + 8 * 0.75] = [-5, 7]
    np.testing.assert_allclose(sel.console.theta, [-5.0, 7.0])
    # Eq. 7 per cell: q0d0 -5*0 + 7*1.5 = 10.5; q0d1 -3.5; q1d0 -5 + 10.5 = 5.5; q1d1 -5 - 3.5 = -8.5
    s = sel.console.cell_scores(sel.index)[sel.index.cell_id]
    np.testing.assert_allclose(s, [10.5, 10.5, -3.5, -3.5, 5.5, 5.5, -8.5, -8.5])
    # top-2: the q0d0 docs (with the old theta [1, 1] it would be q1d0: 2.5 against 1.5)
    assert sel.selection().tolist() == [0, 1]


def test_algorithm1_reuse_penalty_by_hand():
    """reuse_penalty p: the docs of the stage that just ended (D_0 = {0, 4}, set here) score p lower at line 13.
    Same world and update as above, Eq. 7 per doc [10.5, 10.5, -3.5, -3.5, 5.5, 5.5, -8.5, -8.5]; with p = 6:
    doc 0 -> 4.5, doc 4 -> -0.5, so the top-2 is doc 1 (10.5) and doc 5 (5.5), not the q0d0 pair [0, 1]."""
    sel, _ = _two_agent_world(eta_agent=0.5, eta_console=8.0, reuse_penalty=6.0)
    sel._set_selection(np.array([0, 4]))
    assert sel.on_step(5, None)
    np.testing.assert_allclose(sel.console.theta, [-5.0, 7.0])  # the penalty leaves Eq. 4-9 alone
    assert np.flatnonzero(sel.trained).tolist() == [0, 4]
    assert sel.selection().tolist() == [1, 5]


def test_algorithm1_eq9_with_each_agents_eta():
    """theta_eta = "agent": Eq. 9 with each agent's eta_A of Eq. 5, as the paper writes it."""
    sel, _ = _two_agent_world(eta_agents={"q": 0.5, "d": 0.25}, eta_console=0.1, theta_eta="agent")
    sel.on_step(5, None)
    # w_q = [0.5 - 0.5, 0.5 + 0.5] = [0, 1], R_q = 0.5; w_d = [0.5 + 0.5, 0.5 - 0.5] = [1, 0], R_d = (2 + 0) / 2 = 1
    np.testing.assert_allclose(sel.log[-1]["agent_rewards"], [0.5, 1.0])
    # Rbar = 0.75: theta = [1 + 0.5 * -0.25, 1 + 0.25 * 0.25] (eta_console = 0.1 unused)
    np.testing.assert_allclose(sel.console.theta, [0.875, 1.0625])
    assert sel.log[-1]["theta_eta"] == [0.5, 0.25]
    shared, _ = _two_agent_world(eta_agents={"q": 0.5, "d": 0.25}, eta_console=0.1)
    shared.on_step(5, None)
    np.testing.assert_allclose(shared.console.theta, [1 - 0.1 * 0.25, 1 + 0.1 * 0.25])
    assert "theta_eta" not in shared.log[-1]


def test_agents_sample_n_docs_uniformly_from_each_category():
    """Algorithm 1 line 6: min(n, |category|) docs of each category, without replacement, each doc of a
    category equally likely (n / |category|), none from another category."""
    codes = np.array([0] * 10 + [1] * 3 + [2] * 7, dtype=np.int16)
    labels = Labels({"c": codes}, {"c": ["a", "b", "c"]})
    index = build_cell_index(labels, ["c"], np.ones(len(codes), dtype=np.int64))
    agent = CategoricalAgent("c", "c", ["a", "b", "c"], np.full(3, 1 / 3), samples_per_category=4)
    g = np.random.default_rng(0)
    hits = np.zeros(len(codes))
    trials = 3000
    for _ in range(trials):
        docs, cats = agent.sample(index, g)
        assert np.bincount(cats, minlength=3).tolist() == [4, 3, 4]
        assert len(np.unique(docs)) == len(docs)
        np.testing.assert_array_equal(codes[docs], cats)
        hits[docs] += 1
    p = hits / trials
    expect = np.array([0.4] * 10 + [1.0] * 3 + [4 / 7] * 7)
    np.testing.assert_allclose(p, expect, atol=4 * np.sqrt(0.25 / trials))
