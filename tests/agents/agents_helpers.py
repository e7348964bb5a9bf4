"""Synthetic corpora and a fake RewardSource whose per-category utilities are known (ground truth)."""

from __future__ import annotations

import numpy as np

from thresher.agents.base import Labels, SelectionContext
from thresher.influence.rewards import RewardSource
from thresher.utils.seeding import rng

DOMAINS = ["ArXiv", "Book", "Wikipedia", "CommonCrawl", "GitHub", "StackExchange", "C4"]
SIZES = {"quality": 5, "domain": 7, "topic": 13, "cluster": 20}


def make_labels(n: int, seed: int = 0, sizes: dict = SIZES, missing: float = 0.0) -> Labels:
    g = rng(seed, "labels")
    codes, cats = {}, {}
    for col, k in sizes.items():
        p = g.dirichlet(np.full(k, 2.0))  # unequal category sizes
        c = g.choice(k, size=n, p=p).astype(np.int16)
        if missing:
            c[g.random(n) < missing] = -1
        names = DOMAINS if col == "domain" and k == 7 else [f"{col}{i}" for i in range(k)]
        codes[col], cats[col] = c, names
    return Labels(codes, cats)


def make_ctx(n: int = 5000, seed: int = 0, budget_docs=500, budget_tokens=None, rewards=None, **kw) -> SelectionContext:
    labels = make_labels(n, seed, **kw)
    lengths = rng(seed, "lengths").integers(10, 200, size=n).astype(np.int64)
    g = rng(seed, "numeric")  # float label columns and embeddings for the score baselines
    scores = {"perplexity": g.lognormal(3.0, 0.5, n).astype(np.float32), "dsir_logw": g.normal(size=n).astype(np.float32)}
    emb = g.normal(size=(n, 8)).astype(np.float16)
    return SelectionContext(lengths, labels, rewards, budget_docs, budget_tokens, seed, embeddings=emb, scores=scores)


class FakeRewards(RewardSource):
    """reward(doc) = scale * (sum over columns of utility[column][code] + noise), deterministic per step."""

    def __init__(self, labels: Labels, seed: int = 0, noise: float = 1.0, scale: float = 1e-4) -> None:
        g = rng(seed, "utilities")
        self.labels, self.noise, self.scale, self.seed = labels, noise, scale, seed
        self.utility = {c: g.normal(size=len(v)) for c, v in labels.categories.items()}
        self.step, self.calls = 0, 0

    def refresh(self, model, step: int) -> None:
        self.step = step

    def rewards(self, doc_ids: np.ndarray) -> np.ndarray:
        self.calls += 1
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        u = np.zeros(len(doc_ids))
        for col, util in self.utility.items():
            codes = self.labels.codes[col][doc_ids]
            u += np.where(codes >= 0, util[np.maximum(codes, 0)], 0.0)
        noise = np.array([rng(self.seed, "noise", self.step, int(d)).normal() for d in doc_ids]) if len(doc_ids) else u
        return self.scale * (u + self.noise * noise)

    def provenance(self) -> dict:
        return {"step": self.step, "source": "fake"}
