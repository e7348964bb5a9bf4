"""share_samples: inverse-inclusion weighted Eq. 4 over the union of the agents' samples."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.agents.agent import CategoricalAgent, category_means, category_sizes, doc_codes, pooled_weights
from thresher.agents.base import Labels
from thresher.agents.cells import build_cell_index
from thresher.agents.console import AgentConsole
from thresher.influence.rewards import RewardSource


class TableRewards(RewardSource):
    """reward(doc) = table[doc]; counts calls and scored docs."""

    def __init__(self, table: np.ndarray) -> None:
        self.table, self.calls, self.scored = np.asarray(table, dtype=np.float64), 0, 0

    def refresh(self, model, step: int) -> None:
        pass

    def rewards(self, doc_ids: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.scored += len(doc_ids)
        return self.table[np.asarray(doc_ids, dtype=np.int64)]


def _index(codes: dict[str, list[int]], n_cat: dict[str, int]):
    n = len(next(iter(codes.values())))
    labels = Labels({c: np.asarray(v, dtype=np.int16) for c, v in codes.items()},
                    {c: [f"{c}{i}" for i in range(k)] for c, k in n_cat.items()})
    return build_cell_index(labels, list(codes), np.ones(n, dtype=np.int64)), labels


def _agent(col: str, k: int, n: int, norm: str = "raw", eta: float = 1.0) -> CategoricalAgent:
    return CategoricalAgent(col, col, [f"{col}{i}" for i in range(k)], np.zeros(k), eta, n, norm)


def test_weighted_category_means_hand_computed():
    cats, r = np.array([0, 0, 1, 1, 1]), np.array([1.0, 3.0, 2.0, 4.0, 6.0])
    means, counts = category_means(cats, r, 3, np.array([1.0, 3.0, 1.0, 1.0, 2.0]))
    np.testing.assert_allclose(means[:2], [(1 + 9) / 4, (2 + 4 + 12) / 4])
    assert np.isnan(means[2]) and counts.tolist() == [2, 3, 0]
    np.testing.assert_allclose(category_means(cats, r, 3)[0][:2], [2.0, 4.0])  # unweighted = Eq. 4


def test_pooled_weights_hand_computed():
    # a: sizes (4, 2); b: sizes (3, 2) and one doc missing b. Agent a draws 1 per category, b draws 2.
    index, _ = _index({"a": [0, 0, 0, 0, 1, 1], "b": [0, 1, 0, 1, 0, -1]}, {"a": 2, "b": 2})
    agents = [_agent("a", 2, 1), _agent("b", 2, 2)]
    w = pooled_weights(agents, index, np.array([0, 1, 4, 5]))
    pi = [1 - (1 - 1 / 4) * (1 - 2 / 3), 1 - (1 - 1 / 4) * (1 - 2 / 2), 1 - (1 - 1 / 2) * (1 - 2 / 3), 1 / 2]
    np.testing.assert_allclose(w, 1 / np.array(pi))
    assert doc_codes(index, "b", np.array([5, 1])).tolist() == [-1, 1]
    # an agent asking for more docs than a category holds takes all of it: pi = min(1, n / size), never above 1.
    # b draws 3: b0 (3 docs) 3/3 = 1, b1 (2 docs) min(1, 3/2) = 1; doc 5 (no b) stays at a's 1/2
    agents = [_agent("a", 2, 1), _agent("b", 2, 3)]
    w = pooled_weights(agents, index, np.array([0, 1, 4, 5]))
    np.testing.assert_allclose(w, [1.0, 1.0, 1.0, 2.0])


def test_learn_ignores_docs_without_the_agents_label():
    a = _agent("a", 2, 4)
    up = a.learn(np.array([0, -1, 1, -1]), np.array([1.0, 100.0, 3.0, -100.0]))
    np.testing.assert_allclose(up.mean_rewards, [1.0, 3.0])
    np.testing.assert_allclose(a.weights, [1.0, 3.0])  # w = 0 + eta * mean


@pytest.fixture(scope="module")
def world():
    g = np.random.default_rng(0)
    n = 4000
    # unequal category sizes, correlated columns: the pooled sample is far from uniform per category
    q = g.choice(5, n, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    d = np.where(g.random(n) < 0.7, q % 3, g.choice(7, n))
    t = g.choice(13, n, p=g.dirichlet(np.full(13, 1.5)))
    table = 1.0 * q + 0.5 * d - 0.3 * t + g.normal(size=n)
    index, labels = _index({"quality": q, "domain": d, "topic": t}, {"quality": 5, "domain": 7, "topic": 13})
    return index, labels, table


def test_pooled_means_estimate_the_population_means(world):
    """Averaged over many pooled draws, the weighted Eq. 4 means match each category's population
    mean (brute force); unit weights on the same pooled docs do not (the other agents' draws are not
    uniform within this agent's categories), so the weights matter."""
    index, labels, table = world
    cols = {"quality": 5, "domain": 7, "topic": 13}
    truth = {c: np.array([table[labels.codes[c] == j].mean() for j in range(k)]) for c, k in cols.items()}
    g = np.random.default_rng(1)
    est, naive = {c: [] for c in cols}, {c: [] for c in cols}
    for _ in range(300):
        agents = [_agent(c, k, 6) for c, k in cols.items()]
        docs = np.unique(np.concatenate([a.sample(index, g)[0] for a in agents]))
        w = pooled_weights(agents, index, docs)
        for a in agents:
            codes = doc_codes(index, a.column, docs)
            est[a.name].append(a.learn(codes, table[docs], w).mean_rewards)
            naive[a.name].append(category_means(codes, table[docs], cols[a.name])[0])
    for c in cols:
        np.testing.assert_allclose(np.nanmean(est[c], axis=0), truth[c], atol=0.06)
    assert np.abs(np.nanmean(naive["domain"], axis=0) - truth["domain"]).max() > 0.15


def test_console_share_samples_scores_once_and_gives_more_samples(world):
    index, _, table = world
    src = TableRewards(table)
    agents = [_agent("quality", 5, 6), _agent("domain", 7, 6), _agent("topic", 13, 6)]
    ups, collab = AgentConsole(agents, share_samples=True).update(index, src, np.random.default_rng(0))
    assert src.calls == 1 and src.scored <= 6 * (5 + 7 + 13)
    for up, k in zip(ups, (5, 7, 13)):
        assert up.n_samples.sum() == src.scored > 6 * k  # every agent learns from the whole pool
    assert len(collab["theta"]) == 3
    # off (the paper): each agent scores only its own draw
    src = TableRewards(table)
    ups, _ = AgentConsole([_agent("quality", 5, 6), _agent("topic", 13, 6)]).update(index, src, np.random.default_rng(0))
    own = [int(np.minimum(6, category_sizes(index, c, k)).sum()) for c, k in (("quality", 5), ("topic", 13))]
    assert src.calls == 2 and [int(u.n_samples.sum()) for u in ups] == own
