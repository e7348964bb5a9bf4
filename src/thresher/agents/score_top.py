"""Score-ranked baselines: perplexity bands (Ankner et al. 2024) and DSIR importance resampling (Xie et al. 2023).

Both read one float label column per document from ``ctx.scores`` (NaN = missing, never selected)
and select D_k once, before training. Selection is O(N): ``np.partition`` finds the two boundary
values of a rank band, a mask gathers the band, and only the band (about k docs) is sorted.

Ranking is by (value, doc id) ascending, so ties are broken by doc id and every selection is a
pure function of the inputs (the tests compare with a full ``np.argsort(kind="stable")``).
A token budget takes the prefix of the band's order whose token sum fits (as ``budget_count``).
"""

from __future__ import annotations

import numpy as np

from thresher.agents.base import SelectionContext, Selector, drop_heldout, resolve_budget, selection_digest
from thresher.agents.config import SelectorConfig
from thresher.utils.errors import ThresherError
from thresher.utils.seeding import rng

BANDS = ("high", "medium", "low")
GUMBEL_CHUNK = 1 << 22


# ------------------------------------------------------------------------------------- context


def numeric_context_fields(cfg_data, table, selector: SelectorConfig | None = None
                           ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """(scores, embeddings) for ``SelectionContext`` from a ``LabelTable``.

    ``scores`` maps the selector's column names to float32 arrays (NaN = missing); each name is
    looked up through ``cfg_data.label_columns`` (name -> table column; default the name itself).
    With ``selector`` only the columns its policy reads are loaded (a float column of 600M docs is
    2.4 GB); without, every float column. Columns absent from the table are left out (the selector
    names the labeler to run). ``embeddings`` is the (N, d) float16 memmap, or None.
    """
    rename = dict(getattr(cfg_data, "label_columns", {}) or {})
    if selector is None:
        names = [c for c in table.columns if table.kind(c) == "float"]
    else:
        names = {"perplexity": [selector.perplexity_column], "dsir": [selector.dsir_column]}.get(selector.policy, [])
    scores = {}
    for name in names:
        col = rename.get(name, name)
        if col in table.columns:
            if table.kind(col) != "float":
                raise ThresherError(f"label column {col!r} is {table.kind(col)}, the selector needs a float column")
            scores[name] = np.asarray(table.column(col), dtype=np.float32)
    emb_col = embedding_column(cfg_data, selector)
    wanted = selector is None or selector.policy == "mates"  # only MATES reads the (large) embeddings
    present = wanted and emb_col in table.columns and table.kind(emb_col) == "embedding"
    return scores, (table.embeddings(emb_col) if present else None)


def embedding_column(cfg_data, selector: SelectorConfig | None = None) -> str:
    """The label-table column holding the embeddings the selector reads (through ``data.label_columns``)."""
    name = selector.embedding_column if selector is not None else "embedding"
    return dict(getattr(cfg_data, "label_columns", {}) or {}).get(name, name)


def require_scores(ctx: SelectionContext, column: str, policy: str, labeler: str) -> np.ndarray:
    """The (n_docs,) float column ``column`` of the context (NaN, never selected, at held-out docs), or a
    one-line error naming the labeler."""
    if not ctx.scores or column not in ctx.scores:
        raise ThresherError(f"policy {policy} needs the float label column {column!r}, which is missing; "
                            f"run `thresher label <store> --out <labels> --labelers {labeler}`")
    v = np.asarray(ctx.scores[column])
    if v.shape != (ctx.n_docs,):
        raise ThresherError(f"label column {column!r} has shape {v.shape}, the pool has {ctx.n_docs} docs")
    return drop_heldout(v.copy(), ctx) if ctx.heldout is not None and len(ctx.heldout) else v


# ------------------------------------------------------------------------------------- selection


def rank_band(values: np.ndarray, lo: int, m: int) -> np.ndarray:
    """Doc ids of ranks lo .. lo+m-1 in the (value, id) ascending order of the finite values, in that order.

    O(N) plus O(m log m): two order statistics by ``np.partition``, one mask, a sort of the band.
    """
    finite = np.isfinite(values)
    v = values if finite.all() else values[finite]
    t_lo, t_hi = np.partition(v, [lo, lo + m - 1])[[lo, lo + m - 1]]
    below = int(np.count_nonzero(v < t_lo))  # ranks < lo that are strictly smaller than t_lo
    cand = np.flatnonzero((values >= t_lo) & (values <= t_hi))  # ascending ids; NaN compares False
    order = cand[np.argsort(values[cand], kind="stable")]  # (value, id) ascending
    return order[lo - below : lo - below + m]


def band_order(values: np.ndarray, m: int, band: str) -> np.ndarray:
    """The first m docs of the band's order: high = descending rank, low = ascending,
    medium = by distance of the rank from the median rank (the lower rank first on a tie)."""
    n = int(np.count_nonzero(np.isfinite(values)))
    m = min(m, n)
    if m <= 0:
        return np.zeros(0, dtype=np.int64)
    lo = {"low": 0, "high": n - m, "medium": (n - m) // 2}[band]
    ids = rank_band(values, lo, m)
    if band == "high":
        return ids[::-1]
    if band == "medium":
        dist = np.abs(2 * (lo + np.arange(m)) - (n - 1))  # 2 |rank - median rank|
        return ids[np.argsort(dist, kind="stable")]
    return ids


def select_band(values: np.ndarray, lengths: np.ndarray, band: str,
                budget_docs: int | None, budget_tokens: int | None) -> np.ndarray:
    """Sorted doc ids: the prefix of the band's order that fits the budget (docs, or tokens)."""
    if budget_tokens is None:
        return np.sort(band_order(values, int(budget_docs), band))
    n = int(np.count_nonzero(np.isfinite(values)))
    m = int(np.ceil(1.25 * budget_tokens / max(float(np.mean(lengths)), 1e-9))) + 64
    while True:  # grow the band until its order holds a doc that no longer fits
        m = min(m, n)
        ids = band_order(values, m, band)
        fit = int(np.searchsorted(np.cumsum(lengths[ids]), budget_tokens, side="right"))
        if fit < len(ids) or m >= n:
            return np.sort(ids[:fit])
        m *= 2


def gumbel_keys(scores: np.ndarray | None, n: int, temperature: float, g: np.random.Generator) -> np.ndarray:
    """(n,) float32 keys s / tau + Gumbel(0, 1) (s = 0 when ``scores`` is None; NaN stays NaN).

    The top-k of the keys is a draw of k docs without replacement with probability proportional to
    exp(s / tau) at each draw (Plackett-Luce; Gumbel-top-k, Kool et al. 2019). float32 halves the
    memory at 600M docs; the keys' resolution (~1e-7 relative) only matters for exact ties.
    """
    out = np.empty(n, dtype=np.float32)
    for s in range(0, n, GUMBEL_CHUNK):
        e = min(s + GUMBEL_CHUNK, n)
        noise = g.gumbel(size=e - s)
        out[s:e] = noise if scores is None else np.asarray(scores[s:e], dtype=np.float64) / temperature + noise
    return out


# ------------------------------------------------------------------------------------- policies


class PerplexitySelector(Selector):
    """Ankner et al. 2024: rank by a small reference model's perplexity, train on one band.

    ``perplexity_band``: high (the top-k perplexities), low, or medium (the k ranks around the median).
    Deterministic (ties by doc id); never re-selects."""

    def __init__(self, cfg: SelectorConfig, name: str = "perplexity") -> None:
        super().__init__()
        if cfg.perplexity_band not in BANDS:
            raise ThresherError(f"selector.perplexity_band = {cfg.perplexity_band!r}; choose one of {', '.join(BANDS)}")
        self.cfg, self.name = cfg, name

    def setup(self, ctx: SelectionContext) -> None:
        self.ctx = ctx
        self.values = require_scores(ctx, self.cfg.perplexity_column, self.name, "perplexity")
        self.budget_docs, self.budget_tokens = resolve_budget(self.cfg, ctx)

    def initial_selection(self) -> np.ndarray:
        band = self.cfg.perplexity_band
        ids = select_band(self.values, self.ctx.doc_lengths, band, self.budget_docs, self.budget_tokens)
        self._set_selection(ids)
        self.log.append({"step": 0, "policy": self.name, "selected": int(len(ids)), "band": band,
                         "column": self.cfg.perplexity_column, **_summary(self.values, ids),
                         "selection_sha1": selection_digest(ids)})
        return self._selection


class DsirSelector(Selector):
    """Xie et al. 2023 (DSIR): resample k docs without replacement with probability proportional to
    the importance weight w = exp(log w), i.e. Gumbel-top-k on log w (their implementation's method).
    Seeded; never re-selects."""

    def __init__(self, cfg: SelectorConfig, name: str = "dsir") -> None:
        super().__init__()
        self.cfg, self.name = cfg, name

    def setup(self, ctx: SelectionContext) -> None:
        self.ctx = ctx
        self.logw = require_scores(ctx, self.cfg.dsir_column, self.name, "dsir")
        self.budget_docs, self.budget_tokens = resolve_budget(self.cfg, ctx)

    def initial_selection(self) -> np.ndarray:
        # logw is NaN at held-out docs (require_scores), and so are their keys: never selected
        keys = gumbel_keys(self.logw, self.ctx.n_docs, 1.0, rng(self.cfg.seed, "selector", self.name))
        ids = select_band(keys, self.ctx.doc_lengths, "high", self.budget_docs, self.budget_tokens)
        self._set_selection(ids)
        self.log.append({"step": 0, "policy": self.name, "selected": int(len(ids)),
                         "column": self.cfg.dsir_column, **_summary(self.logw, ids),
                         "selection_sha1": selection_digest(ids)})
        return self._selection


def _summary(values: np.ndarray, ids: np.ndarray) -> dict:
    """Mean of the column over the selection and over the pool (NaN-free), and the missing count."""
    finite = np.isfinite(values)
    sel = np.asarray(values[ids], dtype=np.float64)
    return {"selected_mean": float(sel.mean()) if len(sel) else None,
            "pool_mean": float(np.mean(values[finite], dtype=np.float64)) if finite.any() else None,
            "missing": int(len(values) - np.count_nonzero(finite))}
