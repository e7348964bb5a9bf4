"""DSIR importance weights (Xie et al. 2023): hashed n-gram bag-of-words models of the target
(reference tasks) and raw (pool) distributions; log w(x) = sum_j c_j(x) (log p_t[j] - log p_r[j]).

Features: lower-cased word unigrams and bigrams hashed (crc32, stable across processes) into
``num_buckets`` buckets; both distributions Laplace-smoothed (add-one), as in the reference code.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Sequence

import numpy as np

from thresher.labels.base import Labeler, fill_float, fingerprint, ok_indices, screen_texts
from thresher.utils.errors import ThresherError

_TOKEN = re.compile(r"\w+|[^\w\s]")


def hashed_ngrams(text: str, num_buckets: int, ngrams: int = 2) -> np.ndarray:
    """(n_features,) int64 bucket ids of the doc's 1..ngrams-grams."""
    words = _TOKEN.findall(text.lower())
    grams = [" ".join(words[i : i + n]) for n in range(1, ngrams + 1) for i in range(len(words) - n + 1)]
    return np.array([zlib.crc32(g.encode()) % num_buckets for g in grams], dtype=np.int64)


def ngram_counts(texts: Sequence[str], num_buckets: int, ngrams: int = 2) -> np.ndarray:
    c = np.zeros(num_buckets, dtype=np.float64)
    for t in texts:
        np.add.at(c, hashed_ngrams(t, num_buckets, ngrams), 1.0)
    return c


class DsirLabeler(Labeler):
    """``dsir_logw``: the log importance weight (float32); fit once from texts with ``fit``."""

    name = "dsir"
    columns = {"dsir_logw": "float", "dsir_reason": "reason"}

    def __init__(self, log_ratio: np.ndarray, ngrams: int = 2, target_name: str = "target", max_chars: int | None = 1_000_000):
        self.log_ratio = np.asarray(log_ratio, dtype=np.float64)  # (num_buckets,) log p_t - log p_r
        self.ngrams, self.target_name, self.max_chars = ngrams, target_name, max_chars

    @classmethod
    def fit(cls, target_texts: Sequence[str], raw_texts: Sequence[str], num_buckets: int = 10_000,
            ngrams: int = 2, target_name: str = "target", **kw) -> "DsirLabeler":
        if not target_texts or not raw_texts:
            raise ThresherError("DSIR needs non-empty target and raw text samples")
        pt, pr = (ngram_counts(t, num_buckets, ngrams) + 1.0 for t in (target_texts, raw_texts))
        return cls(np.log(pt / pt.sum()) - np.log(pr / pr.sum()), ngrams, target_name, **kw)

    def settings(self) -> dict[str, Any]:
        return {"num_buckets": len(self.log_ratio), "ngrams": self.ngrams, "target": self.target_name,
                "log_ratio_sha256": fingerprint(np.round(self.log_ratio, 10).tolist()), "max_chars": self.max_chars}

    def label(self, batch: dict[str, list]) -> dict[str, np.ndarray | list]:
        texts = batch["text"]
        reasons = screen_texts(texts, self.max_chars)
        idx = ok_indices(reasons)
        w = [self.log_ratio[hashed_ngrams(texts[i], len(self.log_ratio), self.ngrams)].sum() for i in idx]
        return {"dsir_logw": fill_float(len(texts), idx, np.asarray(w)), "dsir_reason": reasons}
