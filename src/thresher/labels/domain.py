"""Domain labels from a metadata field: SlimPajama set names (or plain names) -> the 7 domains."""

from __future__ import annotations

from typing import Any

import numpy as np

from thresher.labels.base import Labeler

DOMAINS = ["CommonCrawl", "C4", "GitHub", "Books", "ArXiv", "Wikipedia", "StackExchange"]
_SLIMPAJAMA = {f"RedPajama{d}": d for d in DOMAINS}
_SLIMPAJAMA["RedPajamaBook"] = "Books"  # SlimPajama spells the set in the singular
_ALIASES = {k.lower(): v for k, v in {**_SLIMPAJAMA, **{d: d for d in DOMAINS}, "Book": "Books"}.items()}


def normalise_domain(value: Any) -> str | None:
    """'RedPajamaC4' / 'c4' / 'C4' -> 'C4'; anything else -> None."""
    if not isinstance(value, str):
        return None
    return _ALIASES.get(value.strip().lower())


class DomainLabeler(Labeler):
    name = "domain"
    columns = {"domain": "category", "domain_reason": "reason"}
    categories = {"domain": DOMAINS}

    def __init__(self, field: str = "domain"):
        self.field = field
        self.needs = (field,)

    def settings(self) -> dict[str, Any]:
        return {"field": self.field, "mapping": "slimpajama-v1"}

    def label(self, batch: dict[str, list]) -> dict[str, np.ndarray | list]:
        names = [normalise_domain(v) for v in batch[self.field]]
        codes = np.array([-1 if n is None else DOMAINS.index(n) for n in names], dtype=np.int16)
        # unknown values are null and counted per value (the executor tallies reasons)
        reasons = [None if n is not None else f"unknown:{str(v)[:40]}" for n, v in zip(names, batch[self.field])]
        return {"domain": codes, "domain_reason": reasons}
