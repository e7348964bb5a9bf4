"""Named initial weights: the domain mixtures of the multi-agent paper's Table 4 and simple priors.

Weights are matched to a label column's category names case-insensitively, with aliases
("C.C." = CommonCrawl, "Books" = Book, "Wiki" = Wikipedia, "StackEx." = StackExchange).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from thresher.utils.errors import ThresherError

_DOMAINS = ["CommonCrawl", "C4", "GitHub", "Book", "ArXiv", "Wikipedia", "StackExchange"]
# Table 4 of the multi-agent paper, in % (rows sum to ~100)
DOMAIN_MIXTURES = {
    "slimpajama": [52.20, 26.70, 5.20, 4.20, 4.60, 3.80, 3.30],
    "doremi": [38.11, 11.41, 6.54, 8.19, 4.24, 23.07, 8.47],
    "doge": [21.35, 26.93, 7.03, 4.50, 8.80, 14.82, 16.58],
    "dmlaw": [12.50, 25.00, 14.06, 9.38, 25.00, 1.56, 12.50],
    "regmix": [17.37, 51.03, 0.23, 0.23, 0.08, 29.77, 1.27],
}
_ALIASES = {"cc": "commoncrawl", "c.c.": "commoncrawl", "common_crawl": "commoncrawl", "books": "book",
            "wiki": "wikipedia", "stackex.": "stackexchange", "stackex": "stackexchange", "github": "github",
            "arxiv": "arxiv", "c4": "c4"}


def _norm(name: str) -> str:
    n = str(name).strip().lower().replace(" ", "")
    return _ALIASES.get(n, n)


def preset(name: str, categories: list[str]) -> np.ndarray:
    """Initial weights (summing to 1) of a named preset for these categories."""
    key = name.lower()
    if key == "uniform":
        return np.full(len(categories), 1.0 / max(len(categories), 1))
    if key == "quality-ascending":  # QuRating / FineWeb-Edu style prior: higher interval, higher weight
        w = np.arange(1, len(categories) + 1, dtype=np.float64)
        return w / w.sum()
    if key in DOMAIN_MIXTURES:
        known = {_norm(c) for c in categories}
        if not all(_norm(d) in known for d in _DOMAINS):
            raise ThresherError(f"weight preset {name!r} is a mixture of SlimPajama's 7 domains ({', '.join(_DOMAINS)}); "
                                f"this column's categories are {categories}: use uniform or a {{category: weight}} table")
        return from_mapping(dict(zip(_DOMAINS, DOMAIN_MIXTURES[key])), categories, name)
    raise ThresherError(f"unknown weight preset {name!r}; choose uniform, quality-ascending, "
                        + ", ".join(DOMAIN_MIXTURES))


def from_mapping(weights: dict, categories: list[str], what: str = "weights") -> np.ndarray:
    """{category: weight} -> array over ``categories`` (normalised to sum 1); unknown names are errors."""
    index = {_norm(c): i for i, c in enumerate(categories)}
    w = np.zeros(len(categories))
    for name, value in weights.items():
        if _norm(name) not in index:
            raise ThresherError(f"{what}: category {name!r} is not one of {categories}")
        w[index[_norm(name)]] = float(value)
    if w.sum() <= 0:
        raise ThresherError(f"{what}: weights must have a positive sum")
    return w / w.sum()


def initial_weights(spec, categories: list[str], what: str) -> np.ndarray:
    """``spec``: None/"uniform", a preset name, or a {category: weight} dict."""
    if spec is None:
        return preset("uniform", categories)
    if isinstance(spec, dict):
        return from_mapping(spec, categories, what)
    return preset(str(spec), categories)


def read_init_file(path: str | Path) -> dict:
    """A JSON file {agent: {category: weight}} (e.g. written by a RegMix fit)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ThresherError(f"init file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ThresherError(f"init file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ThresherError(f"init file {path} must hold {{agent: {{category: weight}}}}")
    return data


def init_specs(init: dict, init_file: str | Path | None) -> dict:
    """{column: spec} of initial weights: the init file's (e.g. a RegMix fit), with ``init`` winning per key.
    ``init_file`` may name several files, comma-separated (e.g. one RegMix fit per column: the paper initialises
    the domain and the topic agent so); a column that two of them give is an error."""
    specs: dict = {}
    if init_file:
        for path in [p.strip() for p in str(init_file).split(",") if p.strip()]:
            data = read_init_file(path)
            both = sorted(set(specs) & set(data))
            if both:
                raise ThresherError(f"selector.init_file: {both} given by {path} and by an earlier file of {init_file!r}; "
                                    "name each column in one file (or set it in selector.init, which wins)")
            specs.update(data)
    return {**specs, **init}
