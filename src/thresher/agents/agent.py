"""Agents (multi-agent paper, Definition 1 and section 3.3).

An agent owns one label column (its memory H_A: a category code per document, in the CellIndex),
a weight per category w_A, and a history of updates. Its score for a document is the weight of the
document's category, S_A(x) = w_A^j (so scores are per category, and selection works per cell).
An update (Algorithm 1 lines 6-8):
    sample n docs uniformly from each category                      (line 6)
    R(x) from the RewardSource for every sampled doc                (line 7)
    Rbar_j = mean reward of category j's samples                    (Eq. 4)
    w_j <- w_j + eta_A * Rbar_j                                     (Eq. 5)
and reports its agent reward R_A = (1/n) sum_j w_j * Rbar_j         (Eq. 8, with the updated w).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

from thresher.agents.cells import CellIndex, hypergeometric, sample_within
from thresher.influence.rewards import RewardSource
from thresher.utils.errors import ThresherError


def normalise_rewards(r: np.ndarray, mode: str) -> np.ndarray:
    """raw (the paper) | zscore (mean 0, std 1 over the sample) | rank (centered ranks in [-0.5, 0.5])."""
    r = np.asarray(r, dtype=np.float64)
    if mode == "raw" or len(r) == 0:
        return r
    if mode == "zscore":
        sd = r.std()
        return (r - r.mean()) / sd if sd > 0 else np.zeros_like(r)
    if mode == "rank":
        return (rankdata(r) - 1.0) / (len(r) - 1) - 0.5 if len(r) > 1 else np.zeros_like(r)
    raise ThresherError(f"unknown reward normalization {mode!r}; choose raw, zscore or rank")


def category_means(cat: np.ndarray, r: np.ndarray, n_cat: int,
                   weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 4: per-category mean reward (NaN where no doc was sampled) and sample counts.

    With ``weights`` (1 / inclusion probability, see ``pooled_weights``) the mean is the weighted
    (Hajek) mean sum_i r_i / pi_i / sum_i 1 / pi_i: the category's population mean from a pooled sample.
    """
    n = np.bincount(cat, minlength=n_cat)
    w = np.ones(len(cat)) if weights is None else np.asarray(weights, dtype=np.float64)
    s = np.bincount(cat, weights=w * r, minlength=n_cat)
    z = np.bincount(cat, weights=w, minlength=n_cat)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.where(z > 0, z, 1.0), np.nan), n


def agent_reward(weights: np.ndarray, mean_rewards: np.ndarray) -> float:
    """Eq. 8: R_A = (1/n) sum_j w_j Rbar_j over the n categories that were sampled."""
    ok = ~np.isnan(mean_rewards)
    return float((weights[ok] * mean_rewards[ok]).sum() / ok.sum()) if ok.any() else 0.0


def nan_to_none(a: np.ndarray) -> list:
    """JSON-able floats, None where NaN (a category not sampled)."""
    return [None if np.isnan(x) else float(x) for x in a]


@dataclass
class AgentUpdate:
    agent: str
    mean_rewards: np.ndarray  # (n_cat,) Rbar_j, NaN if category j was not sampled
    n_samples: np.ndarray  # (n_cat,)
    reward: float  # R_A of Eq. 8
    weights: np.ndarray  # (n_cat,) after the update
    extra: dict = field(default_factory=dict)

    def to_log(self) -> dict:
        return {"agent": self.agent, "mean_rewards": nan_to_none(self.mean_rewards),
                "n_samples": [int(x) for x in self.n_samples], "agent_reward": self.reward,
                "weights": [float(x) for x in self.weights], **self.extra}


class Agent(ABC):
    """One label column, one weight per category, a score per category."""

    def __init__(self, name: str, column: str, categories: list[str]) -> None:
        self.name, self.column, self.categories = name, column, list(categories)
        self.history: list[dict] = []

    @abstractmethod
    def category_scores(self) -> np.ndarray:
        """(n_categories,) S_A for a doc of each category."""

    @abstractmethod
    def update(self, index: CellIndex, source: RewardSource, g: np.random.Generator) -> AgentUpdate: ...

    def missing_score(self, policy: str) -> float:
        """Score of a doc without a label: the mean score (neutral) or -inf (never selected)."""
        if policy == "exclude":
            return -np.inf
        s = self.category_scores()
        s = s[np.isfinite(s)]
        return float(s.mean()) if len(s) else 0.0

    def cell_scores(self, index: CellIndex, missing: str = "neutral") -> np.ndarray:
        """(n_cells,) this agent's score of each cell."""
        codes = index.codes[:, index.col(self.column)]
        lut = np.append(self.category_scores(), self.missing_score(missing))  # code -1 -> last
        return lut[codes]

    def initial_log(self) -> dict:
        """What the selector log's step-0 entry records of this agent before any update."""
        return {"agent": self.name, "column": self.column}

    @abstractmethod
    def state_dict(self) -> dict: ...

    @abstractmethod
    def load_state_dict(self, state: dict) -> None: ...


def category_sizes(index: CellIndex, column: str, n_cat: int, per_cell: np.ndarray | None = None) -> np.ndarray:
    """(n_cat,) documents per category of ``column`` (missing codes not counted); ``per_cell``: another per-cell
    amount to sum instead of the documents (e.g. ``index.tokens``)."""
    codes = index.codes[:, index.col(column)]
    ok = codes >= 0
    per_cell = index.counts if per_cell is None else per_cell
    return np.bincount(codes[ok], weights=per_cell[ok], minlength=n_cat).astype(np.int64)


def doc_codes(index: CellIndex, column: str, docs: np.ndarray) -> np.ndarray:
    """(len(docs),) each doc's code in ``column`` (-1 = missing)."""
    return index.codes[index.cell_id[docs], index.col(column)]


def pooled_weights(agents: list["CategoricalAgent"], index: CellIndex, docs: np.ndarray) -> np.ndarray:
    """1 / pi(x) for docs drawn by the agents' independent designs (``share_samples``).

    Agent A draws n_A docs without replacement from each of its categories, so a doc of category j
    is in A's draw with probability pi_A = min(1, n_A / |D_A^j|); the draws are independent, so
    pi(x) = 1 - prod_A (1 - pi_A(x)). Docs missing A's label are never in A's draw.
    """
    miss = np.ones(len(docs))
    for a in agents:
        sizes = category_sizes(index, a.column, len(a.categories)).astype(np.float64)
        c = doc_codes(index, a.column, docs)
        pi = np.where(c >= 0, np.minimum(1.0, a.n / np.maximum(sizes[np.maximum(c, 0)], 1.0)), 0.0)
        miss *= 1.0 - pi
    return 1.0 / (1.0 - miss)


def sample_category(index: CellIndex, column: str, code: int, n: int, g: np.random.Generator) -> np.ndarray:
    """n docs uniformly without replacement from all docs whose ``column`` is ``code``."""
    cells = index.cells_with(column, code)
    take = hypergeometric(index.counts[cells], n, g)
    parts = sample_within(index, cells, take, g)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class CategoricalAgent(Agent):
    """Quality (5 intervals, Eq. 3), domain (7), topic (13) or any categorical label column."""

    def __init__(self, name: str, column: str, categories: list[str], weights: np.ndarray,
                 eta: float = 0.1, samples_per_category: int = 64, normalization: str = "rank") -> None:
        super().__init__(name, column, categories)
        self.weights = np.asarray(weights, dtype=np.float64).copy()
        if len(self.weights) != len(categories):
            raise ThresherError(f"agent {name}: {len(self.weights)} weights for {len(categories)} categories")
        self.eta, self.n, self.normalization = eta, samples_per_category, normalization

    def category_scores(self) -> np.ndarray:
        return self.weights

    def sample(self, index: CellIndex, g: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Algorithm 1 line 6: ``n`` docs from each category (fewer if it has fewer) -> (docs, category)."""
        docs, cats = [], []
        for j in range(len(self.categories)):
            d = sample_category(index, self.column, j, self.n, g)
            docs.append(d)
            cats.append(np.full(len(d), j, dtype=np.int64))
        return np.concatenate(docs), np.concatenate(cats)

    def learn(self, cats: np.ndarray, rewards: np.ndarray, weights: np.ndarray | None = None,
              task_rewards: dict[str, np.ndarray] | None = None) -> AgentUpdate:
        """Eq. 4, 5 and 8 from the sampled docs' categories (-1: not this agent's) and (raw) rewards;
        ``weights``: 1 / inclusion probability of each doc when samples are pooled (``share_samples``);
        ``task_rewards``: each reference task's raw rewards of the same docs, whose per-category means
        (same weights, not normalised) the log keeps as ``task_mean_rewards``."""
        r = normalise_rewards(rewards, self.normalization)
        ok = cats >= 0
        w = None if weights is None else np.asarray(weights)[ok]
        means, counts = category_means(cats[ok], r[ok], len(self.categories), w)
        per_task = {t: category_means(cats[ok], np.asarray(tr, dtype=np.float64)[ok], len(self.categories), w)[0]
                    for t, tr in (task_rewards or {}).items()}
        ok = ~np.isnan(means)
        self.weights[ok] += self.eta * means[ok]
        extra = {"categories": list(self.categories), "eta": self.eta, "normalization": self.normalization}
        if per_task:
            extra["task_mean_rewards"] = {t: nan_to_none(m) for t, m in per_task.items()}
        up = AgentUpdate(self.name, means, counts, agent_reward(self.weights, means), self.weights.copy(), extra)
        self.history.append(up.to_log())
        return up

    def update(self, index: CellIndex, source: RewardSource, g: np.random.Generator) -> AgentUpdate:
        docs, cats = self.sample(index, g)
        rewards, per_task = source.task_rewards(docs)
        return self.learn(cats, rewards, task_rewards=per_task)

    def initial_log(self) -> dict:
        """The weights before the first update (Eq. 5 adds to them), for the selector log's step-0 entry."""
        return {"agent": self.name, "column": self.column, "categories": list(self.categories),
                "weights": [float(x) for x in self.weights],
                "eta": self.eta, "normalization": self.normalization}

    def state_dict(self) -> dict:
        return {"weights": self.weights.copy(), "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.weights = np.asarray(state["weights"], dtype=np.float64).copy()
        self.history = list(state["history"])
