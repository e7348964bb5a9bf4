"""The contract between the influence engine and the selectors.

Sign convention (used everywhere in thresher): a POSITIVE reward means one gradient step on the
document LOWERS the reference loss. For a step theta' = theta - lr * g_x, the first-order change of
the reference loss is -lr * g_ref^T g_x, so reward(x) = g_ref^T P^-1 g_x with P the preconditioner
(identity, K-FAC or EK-FAC). The multi-agent paper's Eq. 6 writes the same quantity with the opposite
sign convention for the loss change; we follow its intent: higher reward = more useful.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class RewardSource(ABC):
    """Gives each document (by doc id) a reward under the current model."""

    @abstractmethod
    def refresh(self, model: Any, step: int) -> None:
        """The model changed: recompute reference gradients / factors. ``step`` is recorded in provenance."""

    @abstractmethod
    def rewards(self, doc_ids: np.ndarray) -> np.ndarray:
        """float64 rewards, one per doc id, same order."""

    def task_rewards(self, doc_ids: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(``rewards(doc_ids)``, {reference task: its own rewards of the same docs}) from one scoring pass;
        sources without per-task rewards give {} (the selectors log per-task means when there are some)."""
        return self.rewards(doc_ids), {}

    def provenance(self) -> dict:
        """Where the last rewards came from: model step, reference tasks, settings."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class InfluenceRewards(RewardSource):
    """Rewards from an InfluenceScorer over documents fetched by id from a token store.

    ``store`` is duck-typed: ``store.docs(ids) -> list[np.ndarray]`` (token arrays, same order).
    """

    def __init__(self, scorer: Any, store: Any):
        self.scorer, self.store = scorer, store

    def refresh(self, model: Any, step: int) -> None:
        self.scorer.refresh(model, step)

    def rewards(self, doc_ids: np.ndarray) -> np.ndarray:
        return self.task_rewards(doc_ids)[0]

    def task_rewards(self, doc_ids: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The combined rewards (exactly ``scorer.score_docs``'s) and each reference task's, one pass."""
        doc_ids = np.asarray(doc_ids)
        if len(doc_ids) == 0:
            return np.zeros(0, dtype=np.float64), {n: np.zeros(0, dtype=np.float64) for n in self.scorer.reference}
        m = self.scorer.per_task_score_matrix(self.store.docs(doc_ids))
        combined = np.asarray(self.scorer.combine(m), dtype=np.float64)
        return combined, {n: np.asarray(m[:, i], dtype=np.float64) for i, n in enumerate(self.scorer.reference)}

    def provenance(self) -> dict:
        return self.scorer.provenance()

    def state_dict(self) -> dict:
        """What a selector's checkpoint needs: the scorer's factors, and only when later refreshes reuse them
        (``factor_refresh_every > 1``). A selector refreshes before it asks for rewards, and every refresh
        recomputes the reference side, so nothing else is needed (the full scorer state, reference
        gradients included, is ``scorer.state_dict()`` for callers that want to score without a refresh)."""
        if self.scorer.cfg.factor_refresh_every == 1:
            return {}
        return {"scorer": self.scorer.factor_state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "scorer" in state:
            self.scorer.load_factor_state_dict(state["scorer"])
        elif state:  # a full scorer state (checkpoints written before the factor-only format)
            self.scorer.load_state_dict(state)

