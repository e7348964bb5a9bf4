"""The agent console (multi-agent paper, Definition 2, section 3.4, Eq. 7-9).

    S(x)  = sum_A theta_A * S_A(x)                         (Eq. 7)
    R_A   = (1/n_A) sum_j w_A^j * Rbar_A^j                 (Eq. 8, reported by each agent)
    Rbar  = mean_A R_A                                     (Eq. 8; the paper's 1/k counts agents)
    theta_A <- theta_A + eta * (R_A - Rbar)                (Eq. 9)
"""

from __future__ import annotations

import numpy as np

from thresher.agents.agent import Agent, AgentUpdate
from thresher.agents.cells import CellIndex
from thresher.influence.rewards import RewardSource


class AgentConsole:
    def __init__(self, agents: list[Agent], theta_init: float = 1.0, eta: float = 0.1,
                 update_theta: bool = True) -> None:
        self.agents = agents
        self.theta = np.full(len(agents), float(theta_init))
        self.eta, self.update_theta = eta, update_theta

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
        return {"agent_rewards": [float(r) for r in rewards], "mean_reward": mean,
                "theta": [float(t) for t in self.theta]}

    def update(self, index: CellIndex, source: RewardSource, g: np.random.Generator) -> tuple[list[AgentUpdate], dict]:
        """Algorithm 1 lines 5-11: every agent updates, then the collaborative weights."""
        ups = [agent.update(index, source, g) for agent in self.agents]
        return ups, self.collaborate(np.array([u.reward for u in ups]))

    def state_dict(self) -> dict:
        return {"theta": self.theta.copy(), "agents": {a.name: a.state_dict() for a in self.agents}}

    def load_state_dict(self, state: dict) -> None:
        self.theta = np.asarray(state["theta"], dtype=np.float64).copy()
        for a in self.agents:
            a.load_state_dict(state["agents"][a.name])
