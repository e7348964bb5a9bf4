"""Quad's cluster bandit (Quad paper, section 3.2, Eq. 1-2) and its use as a console agent.

Arms are clusters (a label column, default ``cluster``). With n_i docs sampled from cluster i so far,
N = sum_i n_i and R_i the sum of their rewards (Eq. 2), the cluster score is the UCB (Eq. 1):

    CS_i = R_i / n_i + alpha * sqrt(2 ln N / n_i)

With ``count = "rounds"`` n_i and N count plays instead (an arm played in a round counts once, its
reward the mean of that round's rewards from it): the same mean, a larger exploration bonus (the reading of
Quad's "T(C_i) ... total times of samples taken"; see docs/agents.md).

A never-sampled cluster has CS = +inf (the UCB1 reading: every arm is played once before any is
replayed; ties in random seeded order) or, with ``unvisited = "initial-visit"``, every cluster is
sampled once up front. Each round takes the ``arms_per_round`` clusters of highest CS, samples
ceil(proportion * size) docs of each (capped), scores them and updates R_i and n_i.
"""

from __future__ import annotations

import numpy as np

from thresher.agents.agent import Agent, AgentUpdate, category_means, normalise_rewards, sample_category
from thresher.agents.cells import CellIndex
from thresher.influence.rewards import RewardSource


class ClusterBandit:
    def __init__(self, arm_sizes: np.ndarray, alpha: float = 0.002, sample_proportion: float = 0.05,
                 max_samples_per_arm: int = 1024, arms_per_round: int = 16, unvisited: str = "inf",
                 count: str = "docs") -> None:
        self.sizes = np.asarray(arm_sizes, dtype=np.int64)
        self.alpha, self.proportion = alpha, sample_proportion
        self.cap, self.per_round, self.unvisited = max_samples_per_arm, arms_per_round, unvisited
        if count not in ("docs", "rounds"):
            raise ValueError(f"ClusterBandit count = {count!r}; expected 'docs' or 'rounds'")
        self.count = count
        self.sums = np.zeros(len(self.sizes))  # R_i, Eq. 2
        self.counts = np.zeros(len(self.sizes), dtype=np.int64)  # n_i

    def scores(self) -> np.ndarray:
        """Eq. 1, (n_arms,); +inf for unvisited arms, -inf for empty ones."""
        n_total = self.counts.sum()
        n = np.maximum(self.counts, 1)
        bonus = self.alpha * np.sqrt(2.0 * np.log(max(n_total, 1)) / n)
        cs = np.where(self.counts > 0, self.sums / n + bonus, np.inf)
        return np.where(self.sizes > 0, cs, -np.inf)

    def choose(self, g: np.random.Generator, available: np.ndarray | None = None) -> np.ndarray:
        """The ``arms_per_round`` arms of highest CS (ties in seeded random order)."""
        ok = self.sizes > 0 if available is None else available & (self.sizes > 0)
        arms = g.permutation(np.flatnonzero(ok))
        best = np.argsort(-self.scores()[arms], kind="stable")[: self.per_round]
        return arms[best]

    def round_size(self, arm: int) -> int:
        return int(min(np.ceil(self.proportion * self.sizes[arm]), self.cap, self.sizes[arm]))

    def observe(self, arm_of_doc: np.ndarray, rewards: np.ndarray) -> None:
        """Eq. 2 for one round: R_i += sum of the rewards of cluster i's new samples, n_i += their number
        (``count = "docs"``); or, ``count = "rounds"``, for each arm played R_i += the mean of its new samples'
        rewards and n_i += 1."""
        sums = np.bincount(arm_of_doc, weights=rewards, minlength=len(self.sizes))
        counts = np.bincount(arm_of_doc, minlength=len(self.sizes))
        if self.count == "rounds":
            played = counts > 0
            sums, counts = np.where(played, sums / np.maximum(counts, 1), 0.0), played.astype(np.int64)
        self.sums += sums
        self.counts += counts

    def state_dict(self) -> dict:
        return {"sums": self.sums.copy(), "counts": self.counts.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.sums = np.asarray(state["sums"], dtype=np.float64).copy()
        self.counts = np.asarray(state["counts"], dtype=np.int64).copy()


class RoundLog:
    """What the selector log keeps of bandit rounds (a Quad stage, an update of the bandit agent): Eq. 2's
    increments per arm played (rewards as the bandit saw them; summed over the entries they give its state),
    each round's threshold (Quad), and each reference task's mean *raw* reward over the sampled docs (and, with
    a threshold, over the docs above it)."""

    def __init__(self, bandit: ClusterBandit, thresholds: bool) -> None:
        self.bandit, self.counts0, self.sums0 = bandit, bandit.counts.copy(), bandit.sums.copy()
        self.thresholds: list[float] | None = [] if thresholds else None
        self.tasks: dict[str, np.ndarray] = {}  # task -> [[sum, count] of the sampled, [sum, count] above threshold]

    def add(self, per_task: dict[str, np.ndarray], threshold: float | None = None,
            above: np.ndarray | None = None) -> None:
        """One round: its docs' per-task raw rewards, and (Quad) its threshold and which docs passed it."""
        if self.thresholds is not None:
            self.thresholds.append(float(threshold))
        for t, tr in per_task.items():
            acc = self.tasks.setdefault(t, np.zeros((2, 2)))
            acc[0] += [tr.sum(), len(tr)]
            if above is not None:
                acc[1] += [tr[above].sum(), above.sum()]

    def to_log(self) -> dict:
        b = self.bandit
        played = np.flatnonzero(b.counts != self.counts0)
        out: dict = {"arms": {"played": played.tolist(), "n": (b.counts - self.counts0)[played].tolist(),
                              "reward_sum": (b.sums - self.sums0)[played].tolist()}}
        parts = ["sampled"]
        if self.thresholds is not None:
            out["thresholds"] = self.thresholds
            parts.append("above_threshold")
        if self.tasks:
            out["task_mean_rewards"] = {part: {t: float(v[i, 0] / v[i, 1]) if v[i, 1] else None
                                               for t, v in self.tasks.items()} for i, part in enumerate(parts)}
        return out


class BanditAgent(Agent):
    """Beyond both papers: the bandit as an agent of the console; its score for a doc is CS of its cluster.

    For Eq. 7 the score must be finite: an unvisited cluster scores the highest finite CS (optimism
    without infinity), 0 before any visit. Its Eq. 8 reward uses w_j = CS_j over the clusters it
    sampled in this update.
    """

    def __init__(self, name: str, column: str, categories: list[str], bandit: ClusterBandit,
                 n_initial: int = 64, rounds: int = 1, normalization: str = "rank") -> None:
        super().__init__(name, column, categories)
        self.bandit, self.n_initial, self.rounds, self.normalization = bandit, n_initial, rounds, normalization

    def category_scores(self) -> np.ndarray:
        cs = self.bandit.scores()
        finite = cs[np.isfinite(cs)]
        return np.where(np.isfinite(cs), cs, finite.max() if len(finite) else 0.0)

    def update(self, index: CellIndex, source: RewardSource, g: np.random.Generator) -> AgentUpdate:
        b = self.bandit
        plays = []
        if b.unvisited == "initial-visit" and b.counts.sum() == 0:
            plays.append({int(a): self.n_initial for a in np.flatnonzero(b.sizes > 0)})
        plays += [{int(a): b.round_size(int(a)) for a in b.choose(g)} for _ in range(self.rounds)]
        arms, rewards, record = [], [], RoundLog(b, thresholds=False)
        for play in plays:  # one round: sample, score, update R_i and n_i
            d = [sample_category(index, self.column, a, m, g) for a, m in play.items()]
            a = np.concatenate([np.full(len(x), arm, dtype=np.int64) for x, arm in zip(d, play)])
            raw, per_task = source.task_rewards(np.concatenate(d))
            r = normalise_rewards(raw, self.normalization)
            b.observe(a, r)
            record.add(per_task)
            arms.append(a)
            rewards.append(r)
        means, counts = category_means(np.concatenate(arms), np.concatenate(rewards), len(self.categories))
        ok = ~np.isnan(means)
        cs = self.category_scores()
        reward = float((cs[ok] * means[ok]).mean()) if ok.any() else 0.0
        up = AgentUpdate(self.name, means, counts, reward, cs,
                         {"arms_played": int(ok.sum()), "arms_visited": int((b.counts > 0).sum()), **record.to_log()})
        self.history.append({k: v for k, v in up.to_log().items() if k not in ("mean_rewards", "n_samples", "weights")})
        return up

    def state_dict(self) -> dict:
        return {"bandit": self.bandit.state_dict(), "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.bandit.load_state_dict(state["bandit"])
        self.history = list(state["history"])
