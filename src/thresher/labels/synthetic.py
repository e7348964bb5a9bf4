"""Ground-truth labels of the built-in synthetic world, with seeded noise (stands in for model scorers).

The metadata columns ``domain``, ``topic`` (names or int codes) and ``quality`` (float in [0, 5]) are
the truth. With probability p a category flips to a uniformly random *other* category; quality gets
N(0, sigma^2) noise then Eq. 3. The noise for doc i depends only on (seed, stream, i), so the labels do
not change with shard size, worker count or executor.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from thresher.labels.base import Labeler
from thresher.labels.domain import DOMAINS
from thresher.labels.intervals import QUALITY_INTERVALS, quality_interval
from thresher.labels.topic import TOPIC_NAMES
from thresher.utils.seeding import derive_seed

_M = np.uint64(0xFFFFFFFFFFFFFFFF)


def hash_uniform(seed: int, stream: str, ids: np.ndarray) -> np.ndarray:
    """(B,) float64 in [0, 1): splitmix64 of (derived seed + doc id), a counter-based generator."""
    x = np.asarray(ids, dtype=np.uint64) + np.uint64(derive_seed(seed, stream))
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def hash_normal(seed: int, stream: str, ids: np.ndarray) -> np.ndarray:
    """(B,) standard normals by Box-Muller over two hashed uniforms."""
    u1 = 1.0 - hash_uniform(seed, stream + "/u1", ids)  # (0, 1]: log is finite
    u2 = hash_uniform(seed, stream + "/u2", ids)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def flip_categories(codes: np.ndarray, n_cat: int, p: float, seed: int, stream: str, ids: np.ndarray) -> np.ndarray:
    """With prob p replace a (non-missing) code by a uniform random other code."""
    flip = (hash_uniform(seed, stream + "/flip", ids) < p) & (codes >= 0) & (n_cat > 1)
    shift = 1 + np.floor(hash_uniform(seed, stream + "/to", ids) * (n_cat - 1)).astype(np.int64)
    return np.where(flip, (codes + shift) % n_cat, codes).astype(np.int16)


def _to_codes(values: Sequence[Any], names: list[str]) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    out = []
    for v in values:
        if isinstance(v, (int, np.integer)) and 0 <= v < len(names):
            out.append(int(v))
        else:
            out.append(index.get(v, -1) if isinstance(v, str) else -1)
    return np.array(out, dtype=np.int16)


class SyntheticLabeler(Labeler):
    name = "synthetic"
    needs = ("domain", "topic", "quality")
    _COLUMNS = {"domain": "category", "topic": "category", "quality_score": "float",
                "quality_interval": "category", "cluster": "category", "synthetic_reason": "reason"}

    def __init__(self, domain_noise: float = 0.0, topic_noise: float = 0.0, quality_noise: float = 0.0,
                 seed: int = 0, domains: list[str] | None = None, topics: list[str] | None = None, prefix: str = ""):
        """``prefix`` renames the output columns (e.g. 'true_') so they can sit beside model labels."""
        self.domain_noise, self.topic_noise, self.quality_noise = domain_noise, topic_noise, quality_noise
        self.seed, self.prefix = seed, prefix
        self.columns = {prefix + c: k for c, k in self._COLUMNS.items()}
        cats = {"domain": list(domains or DOMAINS), "topic": list(topics or TOPIC_NAMES), "quality_interval": QUALITY_INTERVALS}
        # Quad's arms: in the synthetic world the generating processes are the (domain, topic) cells, which
        # is what k-means over good embeddings would recover; the cluster is the TRUE cell (before noise).
        cats["cluster"] = [f"{d}/{t}" for d in cats["domain"] for t in cats["topic"]]
        self._names = cats
        self.categories = {prefix + c: v for c, v in cats.items()}

    def settings(self) -> dict[str, Any]:
        return {"domain_noise": self.domain_noise, "topic_noise": self.topic_noise,
                "quality_noise": self.quality_noise, "seed": self.seed,
                "domains": self._names["domain"], "topics": self._names["topic"], "cluster": "true-cell"}

    def label(self, batch: dict[str, list]) -> dict[str, np.ndarray | list]:
        ids = np.asarray(batch["doc_id"], dtype=np.int64)
        out: dict[str, np.ndarray | list] = {}
        true_d = _to_codes(batch["domain"], self._names["domain"]).astype(np.int64)
        true_t = _to_codes(batch["topic"], self._names["topic"]).astype(np.int64)
        n_t = len(self._names["topic"])
        out["cluster"] = np.where((true_d >= 0) & (true_t >= 0), true_d * n_t + true_t, -1).astype(np.int16)
        for col, p in (("domain", self.domain_noise), ("topic", self.topic_noise)):
            names = self._names[col]
            out[col] = flip_categories(_to_codes(batch[col], names), len(names), p, self.seed, col, ids)
        q = np.array([np.nan if v is None else float(v) for v in batch["quality"]], dtype=np.float64)
        q = np.clip(q + self.quality_noise * hash_normal(self.seed, "quality", ids), 0.0, 5.0)
        out["quality_score"] = q.astype(np.float32)
        out["quality_interval"] = quality_interval(out["quality_score"])
        out["synthetic_reason"] = [None if (d >= 0 and t >= 0 and qi >= 0) else "missing_truth"
                                   for d, t, qi in zip(out["domain"], out["topic"], out["quality_interval"])]
        return {self.prefix + k: v for k, v in out.items()}
