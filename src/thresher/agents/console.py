"""The agent console (multi-agent paper, Definition 2, section 3.4, Eq. 7-9).

    S(x)  = sum_A theta_A * S_A(x)                         (Eq. 7)
    R_A   = (1/n_A) sum_j w_A^j * Rbar_A^j                 (Eq. 8, reported by each agent)
    Rbar  = mean_A R_A                                     (Eq. 8; the paper's 1/k counts agents)
    theta_A <- theta_A + eta_A * (R_A - Rbar)              (Eq. 9; eta_A: one eta_console for every agent,
                                                            or each agent's own eta_A with theta_eta = "agent")

``share_samples`` (beyond the paper, off by default): the categorical agents still draw their own
uniform samples (Algorithm 1 line 6), but every drawn doc is scored once and each agent learns from
the whole pool, weighting each doc by 1 / its inclusion probability so Eq. 4 still estimates the
category's population mean (``pooled_weights``). Same influence cost, several times the samples
per category (a doc drawn by the topic agent also has a quality and a domain).
"""

from __future__ import annotations

import numpy as np

from thresher.agents.agent import Agent, AgentUpdate, CategoricalAgent, doc_codes, pooled_weights
from thresher.agents.cells import CellIndex
from thresher.influence.rewards import RewardSource


class AgentConsole:
    def __init__(self, agents: list[Agent], theta_init: float = 1.0, eta: float | list[float] = 0.1,
                 update_theta: bool = True, share_samples: bool = False) -> None:
        """``eta``: Eq. 9's learning rate, one for every agent or one per agent (in the order of ``agents``)."""
        self.agents = agents
        self.theta = np.full(len(agents), float(theta_init))
        self.eta = float(eta) if np.ndim(eta) == 0 else np.asarray(eta, dtype=np.float64)
        if np.ndim(self.eta) and self.eta.shape != (len(agents),):
            raise ValueError(f"{len(self.eta)} Eq. 9 learning rates for {len(agents)} agents")
        self.update_theta, self.share_samples = update_theta, share_samples

    def cell_scores(self, index: CellIndex, missing: str = "neutral") -> np.ndarray:
        """Eq. 7 for every cell, (n_cells,) float64."""
        s = np.zeros(index.n_cells)
        for theta, agent in zip(self.theta, self.agents):
            s += theta * agent.cell_scores(index, missing)
        return s

    def collaborate(self, rewards: np.ndarray) -> dict:
        """Eq. 8-9 from the agents' rewards R_A; returns what the log records."""
        mean = float(np.mean(rewards)) if len(rewards) else 0.0
        if self.update_theta:
            self.theta += self.eta * (np.asarray(rewards) - mean)
        out = {"agent_rewards": [float(r) for r in rewards], "mean_reward": mean,
               "theta": [float(t) for t in self.theta]}
        if np.ndim(self.eta):  # one eta per agent (theta_eta = "agent"): the log says which
            out["theta_eta"] = [float(e) for e in self.eta]
        return out

    def update(self, index: CellIndex, source: RewardSource, g: np.random.Generator) -> tuple[list[AgentUpdate], dict]:
        """Algorithm 1 lines 5-11: every agent updates, then the collaborative weights."""
        shared = [a for a in self.agents if isinstance(a, CategoricalAgent)] if self.share_samples else []
        pooled = self.pooled_updates(shared, index, source, g) if shared else {}
        ups = [pooled[id(a)] if id(a) in pooled else a.update(index, source, g) for a in self.agents]
        return ups, self.collaborate(np.array([u.reward for u in ups]))

    @staticmethod
    def pooled_updates(agents: list[CategoricalAgent], index: CellIndex, source: RewardSource,
                       g: np.random.Generator) -> dict[int, AgentUpdate]:
        """``share_samples``: every agent draws its sample, the union is scored once, every agent
        learns from the union with inverse-inclusion weights. -> {id(agent): its update}."""
        docs = np.unique(np.concatenate([a.sample(index, g)[0] for a in agents]))
        (rewards, per_task), w = source.task_rewards(docs), pooled_weights(agents, index, docs)
        return {id(a): a.learn(doc_codes(index, a.column, docs), rewards, w, per_task) for a in agents}

    def state_dict(self) -> dict:
        return {"theta": self.theta.copy(), "agents": {a.name: a.state_dict() for a in self.agents}}

    def load_state_dict(self, state: dict) -> None:
        self.theta = np.asarray(state["theta"], dtype=np.float64).copy()
        for a in self.agents:
            a.load_state_dict(state["agents"][a.name])
