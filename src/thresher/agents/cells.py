"""Label cells: every agent's score depends only on a document's label *cell* (its tuple of codes).

A ``CellIndex`` groups the corpus once by cell so that scoring, selection and per-category sampling
cost O(cells + k) instead of O(n_docs):

    cell_id  (n_docs,)          int32   which cell each document is in
    order    (n_docs,)          int32/64 doc ids grouped by cell (cell c owns order[offsets[c]:offsets[c+1]])
    codes    (n_cells, n_cols)  int64   the label codes of each cell (-1 = missing)
    counts, tokens (n_cells,)   int64   docs and token sums per cell

Within a cell the order is arbitrary; every selection draws its own seeded random order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.agents.base import Labels
from thresher.utils.errors import ThresherError


@dataclass
class CellIndex:
    columns: list[str]
    cell_id: np.ndarray
    order: np.ndarray
    offsets: np.ndarray
    codes: np.ndarray
    counts: np.ndarray
    tokens: np.ndarray

    @property
    def n_cells(self) -> int:
        return len(self.counts)

    @property
    def n_docs(self) -> int:
        return len(self.cell_id)

    def col(self, name: str) -> int:
        return self.columns.index(name)

    def docs(self, c: int) -> np.ndarray:
        return self.order[self.offsets[c] : self.offsets[c + 1]]

    def cells_with(self, column: str, code: int) -> np.ndarray:
        """The cells (ascending) whose ``column`` code is ``code``: O(answer) after one O(cells log cells)
        grouping per column (a bandit over 10k clusters asks for every arm; a scan each time was
        O(cells) per arm)."""
        by_code = self.__dict__.setdefault("_by_code", {})
        j = self.col(column)
        if j not in by_code:
            cells = np.argsort(self.codes[:, j], kind="stable")  # ascending cell ids within a code
            by_code[j] = (cells, self.codes[cells, j])
        cells, codes = by_code[j]
        lo, hi = np.searchsorted(codes, code, side="left"), np.searchsorted(codes, code, side="right")
        return cells[lo:hi]


def build_cell_index(labels: Labels, columns: list[str], doc_lengths: np.ndarray) -> CellIndex:
    """Group documents by their tuple of codes in ``columns``; O(n_docs) plus one integer argsort."""
    n = len(doc_lengths)
    key, radices = _mixed_radix_key(labels, columns, n)
    space = int(np.prod(radices, dtype=np.float64))
    if space <= max(4 * n, 1 << 24):  # a lookup table of 5 bytes per possible key, O(n)
        seen = np.zeros(space, dtype=bool)
        seen[key] = True
        present = np.flatnonzero(seen)
        del seen
        lut = np.full(space, -1, dtype=np.int32)
        lut[present] = np.arange(len(present), dtype=np.int32)
        cell_id = lut[key]
        del lut
    else:  # a huge key space: sort the keys instead of a lookup table
        present, cell_id = np.unique(key, return_inverse=True)
        cell_id = cell_id.astype(np.int32)
    del key
    n_cells = len(present)
    counts = np.bincount(cell_id, minlength=n_cells).astype(np.int64)
    tokens = np.bincount(cell_id, weights=doc_lengths, minlength=n_cells).astype(np.int64)
    order = _group_by_cell(cell_id, n_cells)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return CellIndex(list(columns), cell_id, order, offsets, _decode(present, radices), counts, tokens)


def _mixed_radix_key(labels: Labels, columns: list[str], n: int) -> tuple[np.ndarray, list[int]]:
    key = np.zeros(n, dtype=np.int64)
    radices = []
    for name in columns:
        if name not in labels.codes:
            raise ThresherError(f"label column {name!r} is missing (have: {sorted(labels.codes)})")
        codes = np.asarray(labels.codes[name])
        if len(codes) != n:
            raise ThresherError(f"label column {name!r} has {len(codes)} rows but the corpus has {n} documents")
        if codes.dtype.kind not in "iu":
            raise ThresherError(f"label column {name!r} holds {codes.dtype} values; agents need integer category codes")
        n_cat = len(labels.categories.get(name, [])) or int(codes.max(initial=-1)) + 1
        if codes.size and (codes.min() < -1 or codes.max() >= n_cat):
            raise ThresherError(f"label column {name!r} has codes outside [-1, {n_cat - 1}]")
        radix = n_cat + 1  # code -1 (missing) is stored as 0
        key *= radix
        key += codes  # in place: no int64 copy of the column
        key += 1
        radices.append(radix)
    return key, radices


def _decode(present: np.ndarray, radices: list[int]) -> np.ndarray:
    codes = np.zeros((len(present), len(radices)), dtype=np.int64)
    rest = present.astype(np.int64).copy()
    for j in range(len(radices) - 1, -1, -1):
        codes[:, j] = rest % radices[j] - 1
        rest //= radices[j]
    return codes


def _group_by_cell(cell_id: np.ndarray, n_cells: int) -> np.ndarray:
    # uint16 keys take numpy's O(n) radix sort; beyond 65536 cells an ordinary integer argsort
    idx_dtype = np.int32 if len(cell_id) < 2**31 else np.int64
    keys = cell_id.astype(np.uint16) if n_cells <= 1 << 16 else cell_id
    return np.argsort(keys, kind="stable").astype(idx_dtype, copy=False)


def gather_cells(index: CellIndex, cells: np.ndarray, dtype=np.int64) -> np.ndarray:
    """All docs of ``cells`` concatenated, vectorised: O(total docs), no Python loop.

    ``dtype=None`` keeps the index's own (int32 below 2^31 docs): half the memory of int64 for a
    caller that holds many docs (Quad's per-arm orders)."""
    cells = np.asarray(cells, dtype=np.int64)
    counts = index.counts[cells]
    total = int(counts.sum())
    dtype = index.order.dtype if dtype is None else dtype
    if total == 0:
        return np.zeros(0, dtype=dtype)
    if len(cells) == 1:  # one cell: a slice, no index arithmetic
        return index.docs(int(cells[0])).astype(dtype)
    starts = index.offsets[cells]
    shift = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    shift += np.arange(total)
    return index.order[shift].astype(dtype, copy=False)


def sample_within(index: CellIndex, cells: np.ndarray, take: np.ndarray, g: np.random.Generator,
                  member: np.ndarray | None = None) -> list[np.ndarray]:
    """For each cell, ``take`` docs uniformly without replacement, in random order.

    ``member`` (bool, n_docs) restricts a cell to its docs with member True (reuse-penalty groups).
    Whole cells are gathered vectorised; only partly taken cells loop in Python.
    """
    out = []
    for c, m in zip(np.asarray(cells).tolist(), np.asarray(take).tolist()):
        if m <= 0:
            continue
        docs = index.docs(c)
        if member is not None:
            docs = docs[member[docs]]
        if m > len(docs):
            raise ValueError(f"cell {c}: asked {m} of {len(docs)} docs")
        out.append(docs[g.choice(len(docs), size=m, replace=False)].astype(np.int64))
    return out


def hypergeometric(counts: np.ndarray, n: int, g: np.random.Generator) -> np.ndarray:
    """How many of a uniform n-subset of the union fall in each group (multivariate hypergeometric)."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(min(n, counts.sum()))
    if n == 0 or len(counts) == 0:
        return np.zeros(len(counts), dtype=np.int64)
    if len(counts) == 1:
        return np.array([n], dtype=np.int64)
    return g.multivariate_hypergeometric(counts, n, method="marginals").astype(np.int64)
