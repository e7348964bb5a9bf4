"""Quality scores in [0, 5] and their Eq. 3 interval, from three scorers.

* HFQualityLabeler: a sequence-regression model (the paper: HuggingFaceFW/fineweb-edu-classifier).
* FastTextQualityLabeler: a DCLM-style fastText classifier; score = 5 * P(positive label).
* RuleQualityLabeler: Gopher/C4-style heuristic signals, each a pass fraction in [0, 1]; score = 5 * mean.
All three write ``quality_score`` (float32, NaN = missing), ``quality_interval`` (Eq. 3 codes) and
``quality_reason``.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from thresher.labels._hf import HFModelLabeler
from thresher.labels.base import Labeler, fill_float, model_version, ok_indices, screen_texts
from thresher.labels.intervals import QUALITY_INTERVALS, quality_interval
from thresher.utils.errors import ThresherError

QUALITY_COLUMNS = {"quality_score": "float", "quality_interval": "category", "quality_reason": "reason"}


class _QualityLabeler(Labeler):
    name = "quality"
    columns = QUALITY_COLUMNS
    categories = {"quality_interval": QUALITY_INTERVALS}
    max_chars: int | None = None

    def scores(self, texts: list[str]) -> np.ndarray:
        """(B,) raw scores for screened texts."""
        raise NotImplementedError

    def label(self, batch: dict[str, list]) -> dict[str, np.ndarray | list]:
        texts = batch["text"]
        reasons = screen_texts(texts, self.max_chars)
        idx = ok_indices(reasons)
        raw = self.scores([texts[i] for i in idx]) if len(idx) else np.zeros(0)
        score = fill_float(len(texts), idx, np.clip(raw, 0.0, 5.0))  # Eq. 3 domain is [0, 5]
        return {"quality_score": score, "quality_interval": quality_interval(score), "quality_reason": reasons}


class HFQualityLabeler(HFModelLabeler, _QualityLabeler):
    """Regression head output (logit 0), clipped to [0, 5]; texts truncated to ``max_length`` tokens
    like FineWeb-Edu does; texts longer than ``max_chars`` characters are refused ('too_long')."""

    model_setting = "quality_model"

    def __init__(self, model: str = "HuggingFaceFW/fineweb-edu-classifier", max_length: int = 512,
                 batch_size: int = 32, device: str = "auto", max_chars: int | None = 1_000_000):
        self._init_hf(model, max_length, batch_size, device, max_chars)

    def scores(self, texts: list[str]) -> np.ndarray:
        from thresher.labels._hf import classify_logits

        self.setup()
        return classify_logits(self._tok, self._net, self._dev, texts, self.max_length, self.batch_size)[:, 0]


# ------------------------------------------------------------------------------------ fastText


def _one_line(t: str) -> str:
    return " ".join(t.split())  # fastText reads one example per line


def _read_docs(path: str | Path) -> list[str]:
    """Plain text (one doc per line) or a corpus shard (JSONL/.gz/.zst/Parquet) with a 'text' field.

    Unusable lines (not UTF-8; in a shard also bad JSON, no text...) are skipped and counted on stderr;
    a file with no usable document is an error (a one-class classifier would score everything alike)."""
    from collections import Counter

    from thresher.corpus.readers import Doc, is_shard, iter_records

    path = Path(path)
    if not path.is_file():
        raise ThresherError(f"training file not found: {path}")
    skipped: Counter = Counter()
    docs = []
    if is_shard(path):
        for item in iter_records(path):
            if isinstance(item, Doc):
                docs.append(item.text)
            else:
                skipped[item.reason] += 1
    else:
        with open(path, "rb") as f:
            for raw in f:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    skipped["invalid_utf8"] += 1
                    continue
                if line.strip():
                    docs.append(line.rstrip("\r\n"))
    if skipped:
        print(f"{path}: skipped {sum(skipped.values())} unusable line(s): {dict(skipped)}", file=sys.stderr)
    if not docs:
        raise ThresherError(f"no usable documents in the fastText training file {path}")
    return docs


def train_quality_fasttext(pos_file: str | Path, neg_file: str | Path, out_path: str | Path, *,
                           epoch: int = 5, lr: float = 0.1, word_ngrams: int = 2, dim: int = 100,
                           min_count: int = 1, threads: int = 1, seed: int = 0,
                           positive_label: str = "hq", negative_label: str = "cc") -> Path:
    """Train a DCLM-style fastText quality classifier (__label__hq vs __label__cc) and save it.
    ``threads=1`` keeps training deterministic; raise it for large files."""
    import fasttext

    from thresher.utils.io import atomic_path
    from thresher.utils.seeding import rng

    rows = [f"__label__{positive_label} {_one_line(t)}" for t in _read_docs(pos_file)]
    rows += [f"__label__{negative_label} {_one_line(t)}" for t in _read_docs(neg_file)]
    if not rows:
        raise ThresherError("fastText training files hold no documents")
    rows = [rows[i] for i in rng(seed, "fasttext-shuffle").permutation(len(rows))]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    model = fasttext.train_supervised(input=f.name, epoch=epoch, lr=lr, wordNgrams=word_ngrams, dim=dim,
                                      minCount=min_count, thread=threads, seed=seed, verbose=0)
    Path(f.name).unlink()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        model.save_model(str(tmp))
    return out_path


class FastTextQualityLabeler(_QualityLabeler):
    def __init__(self, model_path: str | Path, positive_label: str = "hq", max_chars: int | None = 1_000_000):
        self.model_path, self.positive_label, self.max_chars = str(model_path), positive_label, max_chars
        self._ft = None

    def __getstate__(self):
        return {**self.__dict__, "_ft": None}

    def settings(self) -> dict[str, Any]:
        return {**model_version(self.model_path), "positive_label": self.positive_label,
                "max_chars": self.max_chars, "score": "5*p(positive)"}

    def setup(self) -> None:
        import fasttext

        if self._ft is None:
            if not Path(self.model_path).exists():
                raise ThresherError(f"fastText model not found: {self.model_path}")
            self._ft = fasttext.load_model(self.model_path)

    def scores(self, texts: list[str]) -> np.ndarray:
        self.setup()
        labels, probs = self._ft.predict([_one_line(t) for t in texts], k=-1)
        key = f"__label__{self.positive_label}"
        p = [dict(zip(ls, ps)).get(key, 0.0) for ls, ps in zip(labels, probs)]
        return 5.0 * np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)


# ---------------------------------------------------------------------------------- rule-based

_STOP = frozenset("the be to of and that have with".split())  # Gopher's "at least 2 stop words"
_WORD = re.compile(r"\S+")
_TERMINAL = (".", "!", "?", '"', "'", "”")
_BULLETS = ("•", "-", "*", "‣", "◦", "▪")


def _band(x: float, lo: float, hi: float) -> float:
    return float(lo <= x <= hi)


def rule_signals(text: str) -> dict[str, float]:
    """Gopher (Rae et al. 2021, A.1.1) and C4 (Raffel et al. 2020) filters as pass values in [0, 1]."""
    words = _WORD.findall(text)
    n = max(len(words), 1)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or [""]
    mean_len = sum(map(len, words)) / n
    uniq_lines = len(set(lines)) / len(lines)
    return {
        "word_count": _band(len(words), 50, 100_000),
        "mean_word_length": _band(mean_len, 3, 10),
        "symbol_ratio": float((text.count("#") + text.count("...") + text.count("…")) / n < 0.1),
        "bullet_lines": float(sum(ln.startswith(_BULLETS) for ln in lines) / len(lines) < 0.9),
        "ellipsis_lines": float(sum(ln.endswith(("...", "…")) for ln in lines) / len(lines) < 0.3),
        "alpha_words": min(1.0, sum(any(c.isalpha() for c in w) for w in words) / n / 0.8),
        "stop_words": float(len(_STOP.intersection(w.lower() for w in words)) >= 2),
        "terminal_punct": sum(ln.endswith(_TERMINAL) for ln in lines) / len(lines),  # C4 line rule, soft
        "no_lorem": float("lorem ipsum" not in text.lower()),
        "unique_lines": min(1.0, uniq_lines / 0.7),  # Gopher: duplicate-line fraction < 0.3
    }


class RuleQualityLabeler(_QualityLabeler):
    """Model-free: score = 5 * mean(signals) (equal weights: the papers give none)."""

    def __init__(self, max_chars: int | None = 1_000_000):
        self.max_chars = max_chars

    def settings(self) -> dict[str, Any]:
        return {"rules": "gopher-c4-v1", "signals": sorted(rule_signals("x")), "max_chars": self.max_chars}

    def scores(self, texts: list[str]) -> np.ndarray:
        return np.array([5.0 * np.mean(list(rule_signals(t).values())) for t in texts], dtype=np.float64)
