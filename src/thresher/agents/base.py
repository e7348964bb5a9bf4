"""The selector interface the trainer drives (multi-agent paper, Algorithm 1).

The trainer owns a Selector and:
  1. calls ``setup(ctx)`` once, then ``initial_selection()``           (Algorithm 1, line 2)
  2. every step calls ``on_step(step, model)``; every U steps the selector updates its agents and
     re-selects (lines 4-14); it returns True when the selection changed
  3. draws training documents from ``selection()`` (line 15) through its data loader, restarting
     its pass when ``version`` changes
  4. saves ``state_dict()`` inside every checkpoint and restores it with ``load_state_dict()``; a
     resumed selector makes exactly the selections an uninterrupted one would.
Every update appends a JSON-able dict to ``log`` (step, agent, per-category mean rewards, weights,
theta, selected composition, the selection's ``selection_sha1``, reward provenance); reports plot it.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from thresher.agents.config import ADDED_SETTINGS
from thresher.influence.results import check_same_settings
from thresher.influence.rewards import RewardSource
from thresher.utils.digest import CHUNK, update_int64
from thresher.utils.errors import SettingsMismatchError, ThresherError
from thresher.utils.log import print0
from thresher.utils.seeding import rng


@dataclass
class Labels:
    """Per-document categorical labels: column name -> int codes (len n_docs; -1 = missing) + names."""

    codes: Mapping[str, np.ndarray] = field(default_factory=dict)
    categories: Mapping[str, list[str]] = field(default_factory=dict)

    def column(self, name: str) -> np.ndarray:
        return self.codes[name]


@dataclass
class SelectionContext:
    """What a selector may read. ``doc_lengths`` are token counts (len n_docs; int32 or int64)."""

    doc_lengths: np.ndarray
    labels: Labels
    rewards: RewardSource | None = None
    budget_docs: int | None = None  # size k of D_k in documents, or
    budget_tokens: int | None = None  # a token budget for D_k
    seed: int = 0
    embeddings: np.ndarray | None = None  # (n_docs, d) float16, for embedding-based policies
    embedding_provenance: dict | None = None  # how ``embeddings`` were computed (the label table's record)
    scores: Mapping[str, np.ndarray] | None = None  # float label columns by name (len n_docs; NaN = missing)
    cell_cache: str | None = None  # folder for the cell index, memory-mapped and shared by a node's ranks (None: in memory)
    # sorted doc ids no policy may select (the held-out evaluation documents, evaluate/heldout.py); None: none.
    # Every selector draws from the pool without them; _set_selection refuses a selection that holds one
    heldout: np.ndarray | None = None

    @property
    def n_docs(self) -> int:
        return int(len(self.doc_lengths))


class Selector(ABC):
    """One small interface for every selection policy."""

    name: str = "selector"

    def __init__(self) -> None:
        self.version = 0
        self.log: list[dict] = []
        self._selection = narrow_ids(np.zeros(0, dtype=np.int64))
        self.settings: dict | None = None  # the config that built it (build_selector); a resume must match

    @abstractmethod
    def setup(self, ctx: SelectionContext) -> None: ...

    @abstractmethod
    def initial_selection(self) -> np.ndarray:
        """Choose D_k before training; sets and returns the current selection."""

    def on_step(self, step: int, model: Any) -> bool:
        """Called by the trainer before every step; static policies never change their selection."""
        return False

    @property
    def selection_flops(self) -> float:
        """Cumulative FLOPs spent selecting (the reward source's count; 0 when it keeps none).

        The trainer logs the difference per step next to its training FLOPs."""
        if "_selection_flops" in self.__dict__:  # a selector that counts its own
            return self.__dict__["_selection_flops"]
        return float(getattr(self._reward_source(), "flops", 0.0) or 0.0)

    @selection_flops.setter
    def selection_flops(self, value: float) -> None:
        self.__dict__["_selection_flops"] = float(value)

    def selection(self) -> np.ndarray:
        """Doc ids of the current stage's training set D_k: int32 while they fit (4 bytes a selected document;
        int64 beyond 2^31), read-only, so the trainer's loader shares the array instead of copying it."""
        return self._selection

    def _set_selection(self, ids: np.ndarray) -> None:
        ctx = getattr(self, "ctx", None)
        if ctx is not None and is_heldout(ctx, ids).any():
            raise ThresherError(f"policy {self.name} selected held-out documents (data.heldout_docs): they are "
                                "excluded from the pool and must never be trained on")
        self._selection = narrow_ids(ids)
        self.version += 1

    def state_dict(self) -> dict:
        # int32 in checkpoints while doc ids fit: narrow_ids already holds them so
        state = {"version": self.version, "selection": self._selection.copy(), "log": list(self.log)}
        if self.settings is not None:
            state["settings"] = self.settings
        rewards = self._reward_source()
        reward_state = rewards.state_dict() if rewards is not None else {}
        if reward_state:  # e.g. influence factors reused across refreshes
            state["rewards"] = reward_state
        key = self.labels_key()
        if key is not None:
            state["labels_key"] = key[0]
        return state

    def labels_key(self) -> tuple[str, str] | None:
        """(a digest of the labels this selector keeps selecting by, what they are in words), or None for a
        selector that reads no labels after its first selection. Checkpoints keep the digest; a resume over
        labels with another digest is refused instead of selecting by other labels mid-run."""
        return None

    def check_state(self, state: dict) -> None:
        """Raise SettingsMismatchError when ``state`` was written under other settings than this selector's,
        or over other labels."""
        if self.settings is not None and "settings" in state:  # states written before settings were kept: unchecked
            saved = {**{k: v for k, v in ADDED_SETTINGS.items() if k in self.settings}, **state["settings"]}
            check_same_settings(saved, self.settings, "the checkpoint's selector state")
        saved, key = state.get("labels_key"), self.labels_key()  # None saved: a checkpoint from before the key
        if saved is not None and key is not None and saved != key[0]:
            raise SettingsMismatchError(
                f"cannot resume: {key[1]} changed since this checkpoint (a column relabelled with --replace, the "
                "store re-ingested, or another label table); the run would go on selecting by other labels. "
                "Start a new run folder, or restore the labels it used")

    def load_state_dict(self, state: dict) -> None:
        self.check_state(state)
        self.version = int(state["version"])
        self._selection = narrow_ids(state["selection"])
        self.log = list(state["log"])
        rewards = self._reward_source()
        if rewards is not None and "rewards" in state:
            rewards.load_state_dict(state["rewards"])

    def _reward_source(self) -> RewardSource | None:
        return getattr(getattr(self, "ctx", None), "rewards", None)


def selection_digest(ids: np.ndarray, chunk: int = CHUNK) -> str:
    """SHA-1 of doc ids in their order, as little-endian int64 (whatever dtype holds them): every log entry that
    sets D_k records it (``selection_sha1``), so two runs' logs say whether they selected the same documents in
    the same order without storing the ids."""
    h = hashlib.sha1()
    update_int64(h, ids, chunk)
    return h.hexdigest()


def is_heldout(ctx: SelectionContext, ids: np.ndarray) -> np.ndarray:
    """(len(ids),) bool: which of ``ids`` are held-out documents of ``ctx`` (O(len(ids) log held-out))."""
    ids, held = np.asarray(ids), ctx.heldout
    if held is None or not len(held) or not len(ids):
        return np.zeros(len(ids), dtype=bool)
    return held[np.minimum(np.searchsorted(held, ids), len(held) - 1)] == ids


def drop_heldout(values: np.ndarray, ctx: SelectionContext) -> np.ndarray:
    """``values`` (one float per document) with NaN, i.e. never selected, at the held-out docs, in place."""
    if ctx.heldout is not None and len(ctx.heldout):
        values[ctx.heldout] = np.nan
    return values


def selectable_at(ctx: SelectionContext, j: np.ndarray) -> np.ndarray:
    """The doc ids at positions ``j`` of the selectable pool (0..n-1 without the held-out docs, in order):
    ``j`` drawn from ``range(n_docs - len(heldout))`` is then a uniform draw of selectable docs, without
    materialising the (n,) list of them. With sorted held-out ids h_i, id = j + #{i: h_i - i <= j}."""
    j = np.asarray(j, dtype=np.int64)
    held = ctx.heldout
    if held is None or not len(held):
        return j
    shifted = np.asarray(held, dtype=np.int64) - np.arange(len(held), dtype=np.int64)
    return j + np.searchsorted(shifted, j, side="right")


def selectable_count(ctx: SelectionContext) -> int:
    """How many docs a policy may select: the pool without the held-out docs."""
    return ctx.n_docs - (len(ctx.heldout) if ctx.heldout is not None else 0)


def narrow_ids(ids: np.ndarray) -> np.ndarray:
    """A read-only copy of doc ids in int32 while they fit (int64 from 2^31 on)."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise ThresherError(f"doc ids must be integers, got {ids.dtype}")
    if ids.size and int(ids.min()) < 0:
        raise ThresherError(f"doc ids must be non-negative, got {int(ids.min())}")
    small = ids.size == 0 or int(ids.max()) < 2**31
    out = np.array(ids, dtype=np.int32 if small else np.int64)
    out.flags.writeable = False
    return out


def resolve_budget(cfg: Any, ctx: SelectionContext) -> tuple[int | None, int | None]:
    """(budget_docs, budget_tokens), one of them None: a selector config's budget overrides the
    context's; a token budget wins over a document budget."""
    docs = cfg.budget_docs if cfg.budget_docs is not None else ctx.budget_docs
    tokens = cfg.budget_tokens if cfg.budget_tokens is not None else ctx.budget_tokens
    if docs is None and tokens is None:
        raise ThresherError("selection needs a budget: set selector.budget_docs or selector.budget_tokens")
    if (tokens if tokens is not None else docs) <= 0:
        raise ThresherError(f"selector budget must be positive, got budget_{'tokens' if tokens is not None else 'docs'}"
                            f" = {tokens if tokens is not None else docs}")
    held = ctx.heldout if ctx.heldout is not None else np.zeros(0, dtype=np.int64)  # never selectable
    pool_docs = selectable_count(ctx)
    pool_tokens = int(np.sum(ctx.doc_lengths)) - int(np.sum(np.asarray(ctx.doc_lengths)[held]))
    if tokens is not None and tokens >= pool_tokens or tokens is None and docs >= pool_docs:
        what = f"budget_tokens = {tokens}" if tokens is not None else f"budget_docs = {docs}"
        print0(f"warning: selector {what} holds the whole pool ({pool_docs} docs, {pool_tokens} tokens"
               f"{', held-out documents excluded' if len(held) else ''}): every document is selected, so the policy "
               "has no effect")
    return (None, int(tokens)) if tokens is not None else (int(docs), None)


def budget_count(ctx: SelectionContext, order: np.ndarray) -> int:
    """How many docs of ``order`` fit the budget (documents, or tokens: the prefix whose sum fits)."""
    if ctx.budget_tokens is not None:
        csum = np.cumsum(ctx.doc_lengths[order])
        return int(np.searchsorted(csum, ctx.budget_tokens, side="right"))
    if ctx.budget_docs is not None:
        return min(int(ctx.budget_docs), len(order))
    return len(order)


class RandomSelector(Selector):
    """Uniform random D_k at the budget (the papers' random baseline); never re-selects."""

    name = "random"

    def setup(self, ctx: SelectionContext) -> None:
        self.ctx = ctx

    def initial_selection(self) -> np.ndarray:
        order = rng(self.ctx.seed, "random-selection").permutation(self.ctx.n_docs)
        order = order[~is_heldout(self.ctx, order)]
        self._set_selection(np.sort(order[: budget_count(self.ctx, order)]))
        self.log.append({"step": 0, "policy": self.name, "selected": int(len(self._selection)),
                         "selection_sha1": selection_digest(self._selection)})
        return self._selection
