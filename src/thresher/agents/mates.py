"""MATES (Yu et al. 2024): a small data-influence model, refit every stage, picks the next stage's D_k.

Every U steps (``update_every``): refresh the reward source on the current model, draw
``mates_samples`` pool docs uniformly, get their influence rewards, fit a ridge regression from the
docs' frozen embeddings to the standardised rewards, predict every pool doc (chunked matmul over the
(N, d) float16 memmap) and select the next D_k by Gumbel-top-k on prediction / ``mates_temperature``.
The first D_k (no model yet) is uniformly random.

Named departure: MATES fine-tunes a BERT-base regressor as its data influence model; ours is ridge
regression on the frozen embeddings of ``labels/embed.py`` (closed form, CPU, milliseconds to fit;
the prediction pass reads the embedding memmap once per update).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from thresher.agents.base import (SelectionContext, Selector, drop_heldout, resolve_budget, selectable_at,
                                  selectable_count, selection_digest)
from thresher.agents.config import SelectorConfig
from thresher.agents.score_top import gumbel_keys, select_band
from thresher.utils.errors import ThresherError
from thresher.utils.log import progress
from thresher.utils.seeding import rng

PREDICT_BLOCK = 1 << 16  # rows per thread task (progress unit)
PREDICT_ROWS = 1024  # rows cast to float32 at once: the buffer stays in cache (measured fastest on CPU)


@dataclass
class Ridge:
    """z(x) = x @ w + b predicts the standardised reward z = (r - y_mean) / y_std."""

    w: np.ndarray  # (d,) float64
    b: float
    y_mean: float
    y_std: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.w + self.b

    def to_dict(self) -> dict:
        return {"w": self.w.copy(), "b": self.b, "y_mean": self.y_mean, "y_std": self.y_std}

    @classmethod
    def from_dict(cls, d: dict) -> "Ridge":
        return cls(np.asarray(d["w"], dtype=np.float64), float(d["b"]), float(d["y_mean"]), float(d["y_std"]))


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> Ridge:
    """Ridge on (n, d) inputs and (n,) rewards: targets standardised, intercept unpenalised.

    w = (Xc^T Xc + alpha I)^-1 Xc^T z with Xc the centred inputs; b = -mean(x) @ w (z has mean 0)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    y_mean, y_std = float(y.mean()), float(y.std())
    y_std = y_std if y_std > 0 else 1.0
    z = (y - y_mean) / y_std
    x_mean = x.mean(axis=0)
    xc = x - x_mean
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ z)
    return Ridge(w, float(-x_mean @ w), y_mean, y_std)


def r_squared(model: Ridge, x: np.ndarray, y: np.ndarray) -> float:
    """1 - SSE / SST of the standardised targets (can be negative: worse than the held-out mean)."""
    z = (np.asarray(y, dtype=np.float64) - model.y_mean) / model.y_std
    sst = float(((z - z.mean()) ** 2).sum())
    return 1.0 - float(((z - model.predict(x)) ** 2).sum()) / sst if sst > 0 else float("nan")


def predict_pool(emb: np.ndarray, model: Ridge, block: int = PREDICT_BLOCK, workers: int | None = None) -> np.ndarray:
    """(N,) float32 predicted standardised rewards of every row of ``emb`` (NaN rows -> NaN).

    Blocks of rows run on a thread pool (numpy releases the GIL in the float16 cast and the matmul);
    the result does not depend on ``block`` or ``workers``."""
    n = emb.shape[0]
    out = np.empty(n, dtype=np.float32)
    w, b = model.w.astype(np.float32), np.float32(model.b)
    starts = range(0, n, block)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        jobs = pool.map(lambda s: _predict_rows(emb, w, b, out, s, min(s + block, n)), starts)
        for _ in progress(jobs, desc="mates: predict", total=len(starts), unit="block"):
            pass
    return out


def _predict_rows(emb: np.ndarray, w: np.ndarray, b: np.float32, out: np.ndarray, start: int, end: int) -> None:
    buf = np.empty((PREDICT_ROWS, emb.shape[1]), dtype=np.float32)
    for s in range(start, end, PREDICT_ROWS):
        e = min(s + PREDICT_ROWS, end)
        x = buf[: e - s]
        x[...] = emb[s:e]
        np.matmul(x, w, out=out[s:e])
    out[start:end] += b


class MatesSelector(Selector):
    """MATES with a ridge data-influence model on frozen embeddings (see the module docstring)."""

    def __init__(self, cfg: SelectorConfig, name: str = "mates") -> None:
        super().__init__()
        if cfg.mates_samples < 2 or cfg.mates_alpha < 0 or cfg.mates_temperature <= 0 or not 0 <= cfg.mates_holdout < 1:
            raise ThresherError("selector.mates_samples >= 2, mates_alpha >= 0, mates_temperature > 0 and "
                                "0 <= mates_holdout < 1 are required")
        self.cfg, self.name = cfg, name
        self.g = rng(cfg.seed, "selector", name)
        self.model: Ridge | None = None

    def setup(self, ctx: SelectionContext) -> None:
        self.ctx = ctx
        if ctx.rewards is None:
            raise ThresherError(f"policy {self.name} needs a reward source (influence) in the context")
        if ctx.embeddings is None:
            raise ThresherError(f"policy {self.name} needs the embedding label column {self.cfg.embedding_column!r}, "
                                "which is missing; run `thresher label <store> --out <labels> --labelers embed`")
        if ctx.embeddings.ndim != 2 or ctx.embeddings.shape[0] != ctx.n_docs:
            raise ThresherError(f"embeddings have shape {ctx.embeddings.shape}, the pool has {ctx.n_docs} docs")
        self.budget_docs, self.budget_tokens = resolve_budget(self.cfg, ctx)

    def initial_selection(self) -> np.ndarray:
        keys = drop_heldout(gumbel_keys(None, self.ctx.n_docs, 1.0, rng(self.cfg.seed, "initial-selection")), self.ctx)
        ids = select_band(keys, self.ctx.doc_lengths, "high", self.budget_docs, self.budget_tokens)
        self._set_selection(ids)
        self.log.append({"step": 0, "policy": self.name, "selected": int(len(ids)), "initial": "random",
                         "selection_sha1": selection_digest(ids)})
        return self._selection

    def on_step(self, step: int, model: Any) -> bool:
        if not (step > 0 and step % self.cfg.update_every == 0):
            return False
        self.ctx.rewards.refresh(model, step)
        x, y = self._sample()
        r2 = self._holdout_r2(x, y)
        self.model = fit_ridge(x, y, self.cfg.mates_alpha)
        pred = predict_pool(self.ctx.embeddings, self.model)
        keys = drop_heldout(gumbel_keys(pred, self.ctx.n_docs, self.cfg.mates_temperature, self.g), self.ctx)
        ids = select_band(keys, self.ctx.doc_lengths, "high", self.budget_docs, self.budget_tokens)
        self._set_selection(ids)
        pred_mean = float(np.mean(pred[ids], dtype=np.float64)) if len(ids) else None
        self.log.append({"step": step, "policy": self.name, "n_samples": int(len(y)), "r2_heldout": r2,
                         "selected": int(len(ids)), "pred_selected_mean": pred_mean,
                         "selection_sha1": selection_digest(ids),
                         "rewards": self.ctx.rewards.provenance()})
        return True

    def _sample(self) -> tuple[np.ndarray, np.ndarray]:
        """(n, d) float64 embeddings and (n,) rewards of docs drawn uniformly from the selectable pool (held-out
        docs never enter the fit; missing rows dropped)."""
        n = selectable_count(self.ctx)
        ids = selectable_at(self.ctx, np.sort(self.g.choice(n, size=min(self.cfg.mates_samples, n), replace=False)))
        x = np.asarray(self.ctx.embeddings[ids], dtype=np.float64)  # sorted ids: sequential memmap reads
        y = np.asarray(self.ctx.rewards.rewards(ids), dtype=np.float64)
        ok = np.isfinite(x).all(axis=1) & np.isfinite(y)
        if ok.sum() < 2:
            raise ThresherError(f"policy {self.name}: fewer than 2 sampled docs have an embedding and a reward")
        return x[ok], y[ok]

    def _holdout_r2(self, x: np.ndarray, y: np.ndarray) -> float | None:
        """R^2 on a random ``mates_holdout`` part of the sample of a fit on the rest (the logged fit quality;
        the model used for selection is refit on the whole sample)."""
        n_hold = int(round(self.cfg.mates_holdout * len(y)))
        if n_hold < 2 or len(y) - n_hold < 2:
            return None
        perm = self.g.permutation(len(y))
        hold, train = perm[:n_hold], perm[n_hold:]
        r2 = r_squared(fit_ridge(x[train], y[train], self.cfg.mates_alpha), x[hold], y[hold])
        return None if np.isnan(r2) else float(r2)

    def labels_key(self) -> tuple[str, str]:
        """What the embeddings are: their shape and the label table's record of how they were computed (hashing
        600M x d values would take minutes)."""
        emb = self.ctx.embeddings
        what = {"shape": list(emb.shape), "dtype": str(emb.dtype), "provenance": self.ctx.embedding_provenance}
        key = hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return key, f"the embedding column {self.cfg.embedding_column!r}"

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rng": self.g.bit_generator.state,
                "ridge": self.model.to_dict() if self.model is not None else None}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.g.bit_generator.state = state["rng"]
        self.model = Ridge.from_dict(state["ridge"]) if state.get("ridge") is not None else None
