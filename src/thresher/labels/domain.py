"""Domain labels from a metadata field: SlimPajama set names (or plain names) -> the 7 domains, or the
corpus's own domain names (``label.domain_names``: a list, or ``["auto"]`` for the field's distinct values)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from thresher.labels.base import Labeler
from thresher.utils.errors import ThresherError

DOMAINS = ["CommonCrawl", "C4", "GitHub", "Books", "ArXiv", "Wikipedia", "StackExchange"]
_SLIMPAJAMA = {f"RedPajama{d}": d for d in DOMAINS}
_SLIMPAJAMA["RedPajamaBook"] = "Books"  # SlimPajama spells the set in the singular
# matched after _key (case and surrounding whitespace ignored): 'RedPajamaC4' / 'c4' / ' C4 ' -> 'C4'
_ALIASES = {k.lower(): v for k, v in {**_SLIMPAJAMA, **{d: d for d in DOMAINS}, "Book": "Books"}.items()}


AUTO_MAX = 256  # more distinct values than this in "auto" mode: probably not a domain field


class DomainLabeler(Labeler):
    """Domain codes from metadata field ``field``.

    ``names`` empty (default): SlimPajama's set names and plain names map to the 7 domains (``DOMAINS``;
    case-insensitive). ``names`` given: those are the categories, in that order, and a value matches
    a name case-insensitively after stripping whitespace (e.g. The Pile's ``pile_set_name`` values).
    Values matching nothing are missing (-1), with reason ``unknown:<value>`` counted by the executor.
    """

    name = "domain"
    columns = {"domain": "category", "domain_reason": "reason"}

    def __init__(self, field: str = "domain", names: Sequence[str] | None = None):
        self.field = field
        self.needs = (field,)
        self.names = list(names or [])
        if self.names:
            keys = [_key(n) for n in self.names]
            if any(not k for k in keys):
                raise ThresherError(f"label.domain_names has an empty name: {self.names}")
            dup = sorted({n for n, k in zip(self.names, keys) if keys.count(k) > 1})
            if dup:
                raise ThresherError(f"label.domain_names names a domain twice (case-insensitive): {dup}")
            self._index = {k: i for i, k in enumerate(keys)}
        else:
            self._index = {k: DOMAINS.index(v) for k, v in _ALIASES.items()}
        self.categories = {"domain": self.names or DOMAINS}

    def settings(self) -> dict[str, Any]:
        if self.names:
            return {"field": self.field, "names": self.names}
        return {"field": self.field, "mapping": "slimpajama-v1"}

    def label(self, batch: dict[str, list]) -> dict[str, np.ndarray | list]:
        values = batch[self.field]
        codes = np.array([self._index.get(_key(v), -1) if isinstance(v, str) else -1 for v in values], dtype=np.int16)
        # unknown values are null and counted per value (the executor tallies reasons)
        reasons = [None if c >= 0 else f"unknown:{str(v)[:40]}" for c, v in zip(codes, values)]
        return {"domain": codes, "domain_reason": reasons}


def _key(value: str) -> str:
    return value.strip().lower()


def discover_domains(source: Any, field: str, chunk: int = 1_000_000) -> list[str]:
    """The distinct values of metadata ``field`` over a whole document source, most frequent first
    (ties by name): ``domain_names = ["auto"]``. Names that differ only in case or surrounding
    whitespace are one domain (the first spelling seen). Missing/non-string values are not domains."""
    counts: dict[str, int] = {}
    spelling: dict[str, str] = {}
    for start in range(0, source.n_docs, chunk):
        ids = np.arange(start, min(start + chunk, source.n_docs))
        for v in source.metadata(ids, [field])[field]:
            if isinstance(v, str) and v.strip():
                k = _key(v)
                spelling.setdefault(k, v.strip())
                counts[k] = counts.get(k, 0) + 1
        if len(counts) > AUTO_MAX:
            raise ThresherError(f"metadata field {field!r} has more than {AUTO_MAX} distinct values; it does not look "
                                "like a domain field: give label.domain_names explicitly or map another field")
    if not counts:
        raise ThresherError(f"metadata field {field!r} has no string values to use as domains")
    return [spelling[k] for k in sorted(counts, key=lambda k: (-counts[k], spelling[k]))]
