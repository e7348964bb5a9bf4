"""Per-cell selection of D_k: top-k (multi-agent paper, Algorithm 1 line 13) and Gumbel-top-k (MATES).

Every document of a cell has the same score, so both selections work on *groups* of documents
(a cell, or with a reuse penalty a cell's untrained / already-trained docs) instead of sorting N docs.

Top-k equals "sort all docs by score, break ties by a uniformly random order, take the prefix that
fits the budget": groups above the boundary score are taken whole, the boundary score level (which
may span several cells with exactly equal scores) contributes a uniformly random prefix of its docs.

Gumbel-top-k equals "perturb each doc's s/tau with iid Gumbel noise and take the top": equivalently
each doc i gets an exponential arrival time E_i / w_i with w_i = exp(s_i / tau), and D_k is the
first arrivals (the Plackett-Luce order). Within a group all w are equal, so the number of group
docs that arrived by time t is Binomial(n_g, 1 - exp(-w_g t)), independent across groups; arrival
times inside [t0, t0 + d] are iid truncated exponentials, and the memoryless property lets a stage
that brought too few arrivals continue exactly. Cost O(groups + k) for a doc budget (O(k log k) for tokens: arrivals are sorted), exact in distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.agents.cells import CellIndex, gather_cells, hypergeometric


@dataclass
class Groups:
    cell: np.ndarray  # (G,) cell of each group
    flag: np.ndarray  # (G,) 0 = all docs of the cell, 1 = its untrained docs, 2 = its trained docs
    count: np.ndarray  # (G,) int64
    tokens: np.ndarray  # (G,) int64
    score: np.ndarray  # (G,) float64


def make_groups(index: CellIndex, cell_scores: np.ndarray, doc_lengths: np.ndarray,
                trained: np.ndarray | None = None, penalty: float = 0.0) -> Groups:
    """Groups with a finite score; with a penalty, a cell's trained docs score ``penalty`` lower."""
    cells = np.flatnonzero(np.isfinite(cell_scores) & (index.counts > 0))
    s = np.asarray(cell_scores, dtype=np.float64)[cells]
    if trained is None or penalty == 0.0 or not trained.any():
        zeros = np.zeros(len(cells), dtype=np.int8)
        return Groups(cells, zeros, index.counts[cells], index.tokens[cells], s)
    t_ids = np.flatnonzero(trained)
    t_cnt = np.bincount(index.cell_id[t_ids], minlength=index.n_cells)[cells].astype(np.int64)
    t_tok = np.bincount(index.cell_id[t_ids], weights=doc_lengths[t_ids], minlength=index.n_cells)
    t_tok = t_tok[cells].astype(np.int64)
    cell = np.concatenate([cells, cells])
    flag = np.concatenate([np.ones(len(cells), np.int8), np.full(len(cells), 2, np.int8)])
    count = np.concatenate([index.counts[cells] - t_cnt, t_cnt])
    tokens = np.concatenate([index.tokens[cells] - t_tok, t_tok])
    keep = count > 0
    score = np.concatenate([s, s - penalty])
    return Groups(cell[keep], flag[keep], count[keep], tokens[keep], score[keep])


def group_docs(index: CellIndex, groups: Groups, i: int, trained: np.ndarray | None) -> np.ndarray:
    docs = index.docs(int(groups.cell[i])).astype(np.int64)
    if groups.flag[i] == 1:
        return docs[~trained[docs]]
    if groups.flag[i] == 2:
        return docs[trained[docs]]
    return docs


def take_whole(index: CellIndex, groups: Groups, sel: np.ndarray, trained: np.ndarray | None) -> np.ndarray:
    plain = sel[groups.flag[sel] == 0]
    parts = [gather_cells(index, groups.cell[plain])]
    parts += [group_docs(index, groups, int(i), trained) for i in sel[groups.flag[sel] != 0]]
    return np.concatenate(parts)


def sample_groups(index: CellIndex, groups: Groups, sel: np.ndarray, take: np.ndarray,
                  g: np.random.Generator, trained: np.ndarray | None,
                  exclude: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Per group ``sel[j]``: ``take[j]`` docs uniformly without replacement, in random order.

    ``exclude[j]`` (docs already drawn from that group) are never drawn again.
    """
    out = []
    for j, (i, m) in enumerate(zip(sel.tolist(), np.asarray(take).tolist())):
        docs = group_docs(index, groups, i, trained)
        if exclude is not None and len(exclude[j]):
            docs = docs[~np.isin(docs, exclude[j])]
        out.append(docs[g.choice(len(docs), size=m, replace=False)] if m > 0 else docs[:0])
    return out


def interleave(labels: np.ndarray, per_group: list[np.ndarray]) -> np.ndarray:
    """Docs in the order of ``labels`` (group j's occurrences take per_group[j] in turn)."""
    out = np.empty(len(labels), dtype=np.int64)
    if len(labels):
        out[np.argsort(labels, kind="stable")] = np.concatenate(per_group)
    return out


def fit_tokens(index_lengths: np.ndarray, docs: np.ndarray, budget: int) -> int:
    """Length of the prefix of ``docs`` whose token sum fits ``budget`` (as ``budget_count``)."""
    return int(np.searchsorted(np.cumsum(index_lengths[docs]), budget, side="right"))


# --------------------------------------------------------------------------------------------- top-k


def select_top_k(index: CellIndex, doc_lengths: np.ndarray, groups: Groups, g: np.random.Generator,
                 budget_docs: int | None = None, budget_tokens: int | None = None,
                 trained: np.ndarray | None = None) -> np.ndarray:
    """Top-k by score, ties (within a cell or across equal-score cells) in seeded random order."""
    order = np.argsort(-groups.score, kind="stable")
    levels, starts = np.unique(-groups.score[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    cap = np.inf if budget_docs is None else budget_docs
    size = groups.count if budget_tokens is None else groups.tokens
    budget = cap if budget_tokens is None else budget_tokens
    per_level = np.add.reduceat(size[order], starts) if len(order) else np.zeros(0, np.int64)
    cum = np.cumsum(per_level)
    n_full = int(np.searchsorted(cum, budget, side="right"))
    chosen = [take_whole(index, groups, order[: ends[n_full - 1]] if n_full else order[:0], trained)]
    if n_full < len(levels):
        left = budget - (cum[n_full - 1] if n_full else 0)
        sel = order[starts[n_full] : ends[n_full]]
        chosen.append(_boundary(index, doc_lengths, groups, sel, left, budget_tokens is not None, g, trained))
    return np.sort(np.concatenate(chosen))


def _boundary(index, doc_lengths, groups, sel, left, by_tokens, g, trained) -> np.ndarray:
    """A uniformly random prefix of the union of groups ``sel`` with ``left`` docs or tokens."""
    if not by_tokens:
        return random_prefix(index, groups, sel, int(left), g, trained)[0]
    mean_len = groups.tokens[sel].sum() / max(groups.count[sel].sum(), 1)
    m = int(min(groups.count[sel].sum(), np.ceil(1.25 * left / max(mean_len, 1e-9)) + 64))
    docs, drawn = random_prefix(index, groups, sel, m, g, trained)
    if doc_lengths[docs].sum() <= left and m < groups.count[sel].sum():
        # rare: the prefix ran out; continue the same random order with the rest, shuffled
        rest = [np.setdiff1d(group_docs(index, groups, int(i), trained), d) for i, d in zip(sel, drawn)]
        docs = np.concatenate([docs, g.permutation(np.concatenate(rest))])
    return docs[: fit_tokens(doc_lengths, docs, int(left))]


def random_prefix(index, groups, sel, m, g, trained) -> tuple[np.ndarray, list[np.ndarray]]:
    """The first m docs of a uniformly random order of the union of groups ``sel``."""
    take = hypergeometric(groups.count[sel], m, g)
    per_group = sample_groups(index, groups, sel, take, g, trained)
    labels = g.permutation(np.repeat(np.arange(len(sel)), take))
    return interleave(labels, per_group), per_group


# --------------------------------------------------------------------------------------- Gumbel-top-k


def select_gumbel(index: CellIndex, doc_lengths: np.ndarray, groups: Groups, g: np.random.Generator,
                  temperature: float = 1.0, budget_docs: int | None = None,
                  budget_tokens: int | None = None, trained: np.ndarray | None = None) -> np.ndarray:
    """Gumbel-top-k over documents with perturbed scores s/tau + Gumbel, done per group (exact)."""
    if len(groups.count) == 0:
        return np.zeros(0, dtype=np.int64)
    lw = (groups.score - groups.score.max()) / temperature  # log w_g <= 0
    left = groups.count.copy()  # docs not yet arrived, per group
    mean_len = groups.tokens.sum() / max(groups.count.sum(), 1)
    drawn: list[list[np.ndarray]] = [[] for _ in range(len(lw))]
    out: list[np.ndarray] = []
    need_docs = budget_docs if budget_tokens is None else None
    tokens_left = budget_tokens
    while left.sum() > 0:
        want = need_docs if need_docs is not None else int(np.ceil(1.25 * tokens_left / max(mean_len, 1e-9)) + 64)
        # arrivals of this stage: in arrival order for a token budget; for a doc budget only the
        # first need_docs matter and their order does not (the result is sorted)
        labels = _stage(lw, left, want, g, first=need_docs)
        take = np.bincount(labels, minlength=len(lw))
        sel = np.flatnonzero(take)
        per_group = sample_groups(index, groups, sel, take[sel], g, trained,
                                  exclude=[_cat(drawn[i]) for i in sel])
        for i, d in zip(sel, per_group):
            drawn[i].append(d)
        left -= take
        docs = interleave(np.searchsorted(sel, labels), per_group) if need_docs is None else _cat(per_group)
        if need_docs is not None:
            out.append(docs)
            need_docs -= len(docs)
            if need_docs <= 0:
                break
        else:
            n_fit = fit_tokens(doc_lengths, docs, tokens_left)
            out.append(docs[:n_fit])
            tokens_left -= int(doc_lengths[docs[:n_fit]].sum())
            if n_fit < len(docs):
                break
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _stage(lw: np.ndarray, left: np.ndarray, want: int, g: np.random.Generator,
           first: int | None = None) -> np.ndarray:
    """Arrivals in a window of length d (memoryless continuation), as group labels in arrival order
    (``first`` given: only the first ``first`` arrivals, in no particular order).

    d is chosen so that about ``want`` docs (plus 4 sigma) arrive; every doc of a group arrives
    independently with p_g = 1 - exp(-w_g d), and its arrival offset is a truncated exponential.
    """
    target = min(float(left.sum()), want + 4.0 * np.sqrt(want) + 16.0)
    log_d = _solve_window(lw, left, target)
    x = np.exp(lw + log_d)  # w_g * d
    p = -np.expm1(-x)
    arrived = g.binomial(left, p)
    labels = np.repeat(np.arange(len(lw)), arrived)
    u = g.random(len(labels))
    # offset / d of a truncated Exp(w_g) on [0, d]: -log(1 - u p_g) / (w_g d)
    y = -np.log1p(-u * p[labels]) / x[labels]
    if first is None:
        return labels[np.argsort(y, kind="stable")]
    return labels if len(labels) <= first else labels[np.argpartition(y, first - 1)[:first]]


def gumbel_inclusion(scores: np.ndarray, amount: np.ndarray, temperature: float, target: float) -> np.ndarray:
    """Per group of documents of equal score, the probability that one of its documents is in a Gumbel-top-k
    draw at ``temperature`` that selects ``target`` documents (``amount``: the groups' document counts) or
    ``target`` tokens (``amount``: the groups' token sums).

    A document of score s arrives at an Exp(exp(s / tau)) time and D_k is the first arrivals (what select_gumbel
    draws); the k-th arrival concentrates on the window d whose expected arrivals fill the budget, so a document
    is in D_k with probability 1 - exp(-exp(s / tau) d). Exact as the pool grows; a token budget counts expected
    tokens, not the one document that overflows it."""
    lw = (np.asarray(scores, dtype=np.float64) - np.max(scores)) / temperature
    amount = np.asarray(amount, dtype=np.float64)
    if target >= amount.sum():
        return np.ones(len(lw))
    return -np.expm1(-np.exp(lw + _solve_window(lw, amount, float(target))))


def _solve_window(lw: np.ndarray, left: np.ndarray, target: float) -> float:
    """log d with sum_g left_g (1 - exp(-w_g d)) ~= target, by bisection on log d."""
    live = left > 0
    lo, hi = -lw[live].max() - 60.0, -lw[live].min() + 60.0  # expected arrivals ~0 .. all of them
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if (left * -np.expm1(-np.exp(lw + mid))).sum() < target:
            lo = mid
        else:
            hi = mid
    return hi
