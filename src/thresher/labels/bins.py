"""Equal-count bins of the pool's quality scores: the ``quality_bin`` column (``label.quality_bins``).

Eq. 3 of the multi-agent paper cuts a score in [0, 5] at 1, 2, 3, 4. That suits a scorer whose scores spread
over [0, 5], as the FineWeb-Edu classifier's do, but not one that bunches them: ``quality_rules`` puts about
88% of the real pool's documents in [4, 5], so the quality agent has one category to learn about. A named
departure: cut the pool's own scores into ``bins`` groups of (nearly) equal size instead.

The cut points are scores of documents: sort the N labelled scores s_(0) <= ... <= s_(N-1); equal-size bins
would end at the ranks r_i = floor(i N / bins), i = 1..bins-1. Equal scores must share a bin, so each cut moves
to the nearer end of the run of scores equal to s_(r_i): before the run (cut point s_(r_i)) or after it (cut
point the next larger score; before on a tie, or when no larger score exists). Repeated cut points and any equal
to the lowest score are dropped. Bin j holds the scores in [e_j, e_(j+1)) (the first from the lowest score, the
last up to the highest), so every bin holds at least one document and without ties the sizes differ by at most
one. Ties make fewer or unequal bins; the printed sizes say so. A missing score (NaN) gets code -1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from thresher.utils.errors import ThresherError

COLUMN, SOURCE = "quality_bin", "quality_score"


def quantile_edges(scores: np.ndarray, bins: int) -> np.ndarray:
    """The inner cut points (strictly increasing, each a score of ``scores`` in its dtype, all above the lowest).
    Memory: one sorted copy of the scores in their own dtype (float32 from a label table: 4 bytes a document)."""
    s = np.asarray(scores)
    s = np.sort(s[~np.isnan(s)])
    if not len(s):
        raise ThresherError(f"{COLUMN}: no document has a {SOURCE}, so there is nothing to cut into bins")
    ranks = (np.arange(1, bins) * len(s)) // bins  # where equal-size bins would end
    v = s[ranks]
    first, after = np.searchsorted(s, v, side="left"), np.searchsorted(s, v, side="right")  # v's run of ties
    down = ranks - first > after - ranks  # the run ends nearer the rank: cut after it (at the top, s[-1] is v)
    edges = np.unique(np.where(down, s[np.minimum(after, len(s) - 1)], v))
    return edges[edges > s[0]]


def assign_bins(scores: np.ndarray, edges: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """(N,) int16 codes: the bin of each score (a score equal to a cut point opens the next bin); NaN -> -1.
    In chunks, in the scores' dtype (the cut points are scores, so exact in it)."""
    s = np.asarray(scores)
    edges = np.asarray(edges, dtype=s.dtype)
    codes = np.empty(len(s), dtype=np.int16)
    for lo in range(0, len(s), chunk):
        part = s[lo : lo + chunk]
        c = np.searchsorted(edges, part, side="right")
        c[np.isnan(part)] = -1
        codes[lo : lo + len(part)] = c
    return codes


def bin_names(edges: np.ndarray, lo: float, hi: float) -> list[str]:
    """'q1 [lo,e1)', ..., 'qK [e_(K-1),hi]': numbered, so unique whatever the rounding of the bounds."""
    bounds = [lo, *edges.tolist(), hi]
    return [f"q{j + 1} [{bounds[j]:.4g},{bounds[j + 1]:.4g}{']' if j == len(edges) else ')'}"
            for j in range(len(edges) + 1)]


class QuantileBins:
    """``bins`` equal-count bins of the ``quality_score`` column, written as the category column ``quality_bin``."""

    column, source = COLUMN, SOURCE

    def __init__(self, bins: int):
        if not 2 <= bins <= np.iinfo(np.int16).max:
            raise ThresherError(f"label.quality_bins = {bins}; expected 0 (off) or a bin count in [2, 32767]")
        self.bins = bins

    def fit(self, scores: np.ndarray, score_provenance: dict) -> tuple[np.ndarray, dict[str, Any]]:
        """(codes, column spec) for the table; the spec's provenance records the scores' and the cut points."""
        scores = np.asarray(scores)
        edges = quantile_edges(scores, self.bins)
        names = bin_names(edges, float(np.nanmin(scores)), float(np.nanmax(scores)))
        provenance = {"labeler": type(self).__name__, "name": self.column,
                      "settings": {"bins": self.bins, "cuts": "equal-count, at document scores"},
                      "edges": edges.tolist(), self.source: score_provenance}
        return assign_bins(scores, edges), {"kind": "category", "categories": names, "provenance": provenance}
