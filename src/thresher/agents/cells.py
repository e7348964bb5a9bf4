"""Label cells: every agent's score depends only on a document's label *cell* (its tuple of codes).

A ``CellIndex`` groups the corpus once by cell so that scoring, selection and per-category sampling
cost O(cells + k) instead of O(n_docs):

    cell_id  (n_docs,)          int32   which cell each document is in
    order    (n_docs,)          int32/64 doc ids grouped by cell (cell c owns order[offsets[c]:offsets[c+1]])
    codes    (n_cells, n_cols)  int64   the label codes of each cell (-1 = missing)
    counts, tokens (n_cells,)   int64   docs and token sums per cell

Within a cell the order is arbitrary; every selection draws its own seeded random order.

``cached_cell_index`` keeps the index in a folder, memory-mapped: under torchrun one process per node
builds it and every rank of the node maps the same pages (the per-document arrays are held once per node,
not once per rank), and a resumed run or another run over the same labels skips the build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thresher.agents.base import Labels
from thresher.utils.errors import ThresherError
from thresher.utils.io import make_dir
from thresher.utils.log import print0

CACHE_VERSION = 1
_PER_DOC = ("cell_id", "order")  # memory-mapped; the per-cell arrays are small and read into memory
_PER_CELL = ("offsets", "codes", "counts", "tokens")


@dataclass
class CellIndex:
    columns: list[str]
    cell_id: np.ndarray
    order: np.ndarray
    offsets: np.ndarray
    codes: np.ndarray
    counts: np.ndarray
    tokens: np.ndarray
    folder: Path | None = None  # the cache folder it is mapped from (None: built in memory)
    key: str | None = None  # cell_index_key of its inputs, when known (a cached index always has it)

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


def build_cell_index(labels: Labels, columns: list[str], doc_lengths: np.ndarray,
                     heldout: np.ndarray | None = None) -> CellIndex:
    """Group documents by their tuple of codes in ``columns``; O(n_docs) plus one integer argsort.

    ``heldout`` docs keep their ``cell_id`` but belong to no cell's docs, counts or tokens, so nothing that
    samples or selects through the index can reach them."""
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
    if heldout is not None and len(heldout):
        h = np.asarray(heldout)
        counts -= np.bincount(cell_id[h], minlength=n_cells)
        tokens -= np.bincount(cell_id[h], weights=doc_lengths[h], minlength=n_cells).astype(np.int64)
        keep = np.ones(n, dtype=bool)
        keep[h] = False
        order = order[keep[order]]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return CellIndex(list(columns), cell_id, order, offsets, _decode(present, radices), counts, tokens)


def cell_index_key(labels: Labels, columns: list[str], doc_lengths: np.ndarray,
                   heldout: np.ndarray | None = None) -> str:
    """A digest of everything the index is built from: the columns' codes, their category counts, the
    document lengths and the held-out ids, if any (SHA-1 over the bytes; about 2 GB/s, a few seconds at 600M
    documents)."""
    h = hashlib.sha1(json.dumps({"version": CACHE_VERSION, "columns": list(columns), "n_docs": int(len(doc_lengths)),
                                 "categories": [len(labels.categories.get(c, [])) for c in columns]}).encode())
    # lengths hash by value, not by how they are stored: a store whose lengths.npy an older thresher wrote
    # as int64 keys like the same lengths as int32 (narrow_lengths' rule; no copy when already int32)
    lengths = np.asarray(doc_lengths)
    if lengths.dtype != np.int32 and (not lengths.size or (lengths.min() >= -2**31 and lengths.max() < 2**31)):
        lengths = lengths.astype(np.int32)
    arrays = [lengths] + [labels.codes[c] for c in columns if c in labels.codes]
    if heldout is not None and len(heldout):  # (none: the key an index without held-out docs always had)
        arrays.append(np.asarray(heldout, dtype=np.int64))
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8) if a.size else b"")
    return h.hexdigest()[:20]


def save_cell_index(index: CellIndex, folder: str | os.PathLike) -> Path:
    """Write ``index`` to ``folder`` atomically: into a temporary sibling, renamed when complete. If another
    process published the same folder first, its copy is kept (both were built from the same inputs)."""
    folder = Path(folder)
    make_dir(folder.parent)
    _remove_stale_temporaries(folder.parent)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        for name in _PER_DOC + _PER_CELL:
            with open(tmp / f"{name}.npy", "wb") as f:
                np.save(f, getattr(index, name))
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename publishes the folder
        meta = {"version": CACHE_VERSION, "columns": index.columns, "n_docs": index.n_docs, "n_cells": index.n_cells,
                "n_heldout": index.n_docs - len(index.order)}
        with open(tmp / "meta.json", "w") as f:  # last: a folder with meta.json is complete
            f.write(json.dumps(meta))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():
                raise ThresherError(f"cell index cache {folder} exists but is incomplete (no meta.json); "
                                    "delete that folder (when no run uses it) to rebuild it") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


STALE_TMP_S = 24 * 3600  # a build's temporary untouched this long was left by a killed process


def _remove_stale_temporaries(cache_dir: Path) -> None:
    """Delete ``.cells-*.tmp-*`` folders of builds killed before their rename (8 bytes a document each); one
    not modified for ``STALE_TMP_S`` cannot belong to a running build (a build writes for minutes at most)."""
    now = time.time()
    for tmp in cache_dir.glob(".cells-*.tmp-*"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:  # another process removed it first
            pass


def load_cell_index(folder: str | os.PathLike, n_docs: int | None = None, mmap: bool = True) -> CellIndex:
    """The index saved in ``folder``; the per-document arrays memory-mapped read-only (``mmap``)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r" if mmap and name in _PER_DOC else None)
                  for name in _PER_DOC + _PER_CELL}
    except (OSError, ValueError) as e:
        raise ThresherError(f"cell index cache {folder} is unreadable ({e}); delete that folder to rebuild it") from None
    n = meta.get("n_docs")
    ok = (meta.get("version") == CACHE_VERSION and (n_docs is None or n == n_docs)
          and len(arrays["cell_id"]) == n and len(arrays["order"]) == n - meta.get("n_heldout", 0)
          and len(arrays["offsets"]) == meta.get("n_cells", -1) + 1
          and int(arrays["offsets"][-1]) == len(arrays["order"]))
    if not ok:
        raise ThresherError(f"cell index cache {folder} does not match its inputs (version {meta.get('version')}, "
                            f"{n} docs for a pool of {n_docs}); delete that folder to rebuild it")
    return CellIndex(list(meta["columns"]), **arrays, folder=folder)


def cached_cell_index(labels: Labels, columns: list[str], doc_lengths: np.ndarray, cache_dir: str | os.PathLike,
                      local_rank: int | None = None, wait_s: float = 3600.0, _retried: bool = False,
                      heldout: np.ndarray | None = None) -> CellIndex:
    """``build_cell_index`` through a folder of ``cache_dir`` named by ``cell_index_key``, memory-mapped.

    Under torchrun (``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` > 1 set) the node's local rank 0 builds and
    publishes the folder and the other ranks wait for it (at most ``wait_s``), so a node builds the index
    once and holds its per-document arrays once in the page cache. Runs before the process group exists: it
    needs no collective. Without torchrun's variables (srun, mpirun) every process builds and publishes; the
    first folder wins and all of them map it."""
    key = cell_index_key(labels, columns, doc_lengths, heldout)
    folder = Path(cache_dir) / f"cells-{key}"
    if not (folder / "meta.json").is_file():
        if local_rank is None:
            alone = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) <= 1  # a lone process never waits
            local_rank = 0 if alone else int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank == 0:
            if len(doc_lengths) >= 1_000_000:
                print0(f"building the cell index of {len(doc_lengths):,} documents over {', '.join(columns)} -> {folder}")
            index = build_cell_index(labels, columns, doc_lengths, heldout)
            save_cell_index(index, folder)
            del index
        else:
            _wait_for(folder / "meta.json", wait_s)
    try:
        index = load_cell_index(folder, n_docs=len(doc_lengths))
    except ThresherError:
        if _retried or (folder / "meta.json").is_file():
            raise
        # pruned (``prune_cell_caches``) between the check above and the load: build it again, in this process
        # whatever its local rank (local rank 0 may have loaded the folder before it went, and would never
        # rebuild it for a rank that waits)
        return cached_cell_index(labels, columns, doc_lengths, cache_dir, 0, wait_s, _retried=True, heldout=heldout)
    mark_used(folder)
    index.key = key
    return index


def mark_used(folder: Path) -> None:
    """Set ``meta.json``'s mtime to now: the "last used" that ``prune_cell_caches`` reads (a run marks its
    folder when it loads it and at every selection update). A cache folder the process may not write
    (shared read-only) keeps its time."""
    try:
        os.utime(folder / "meta.json")
    except OSError:
        pass


@dataclass
class CacheEntry:
    """One published cell index folder of a cache directory (``list_cell_caches``)."""
    path: Path
    bytes: int
    last_used: float  # epoch seconds: the last run that loaded it (meta.json's mtime)
    n_docs: int | None  # None: unreadable or incomplete meta.json
    columns: list[str]


def list_cell_caches(cache_dir: str | os.PathLike) -> list[CacheEntry]:
    """The ``cells-*`` folders of ``cache_dir``, least recently used first (an absent folder: none)."""
    out = []
    for folder in Path(cache_dir).glob("cells-*"):
        try:
            if not folder.is_dir():
                continue
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            try:
                meta = json.loads((folder / "meta.json").read_text())
                used, n = (folder / "meta.json").stat().st_mtime, meta.get("n_docs")
                cols = list(meta.get("columns", []))
            except (OSError, ValueError):
                used, n, cols = folder.stat().st_mtime, None, []
        except FileNotFoundError:  # pruned by another process while listed
            continue
        out.append(CacheEntry(folder, size, used, n, cols))
    return sorted(out, key=lambda e: e.last_used)


def prune_cell_caches(cache_dir: str | os.PathLike, unused_days: float, dry_run: bool = False) -> list[CacheEntry]:
    """Delete the cell index folders of ``cache_dir`` that no run has loaded for ``unused_days`` days, and
    build temporaries left by killed processes (older than a day); returns the folders deleted (or that
    would be, with ``dry_run``). A running job that maps a deleted folder keeps its pages (POSIX unlink
    semantics); a later run over the same labels rebuilds the index."""
    if unused_days < 0:
        raise ThresherError(f"unused_days must be >= 0, got {unused_days}")
    cutoff = time.time() - unused_days * 86400
    gone = [e for e in list_cell_caches(cache_dir) if e.last_used < cutoff]
    if not dry_run:
        for e in gone:
            # rename first: a run starting now finds no half-deleted folder with a meta.json in it
            trash = e.path.parent / f".{e.path.name}.tmp-prune-{os.getpid()}-{time.time_ns()}"
            try:
                os.rename(e.path, trash)
            except FileNotFoundError:  # another prune took it first
                continue
            except OSError as err:
                raise ThresherError(f"cannot delete cell index cache {e.path}: {err.strerror}") from None
            shutil.rmtree(trash, ignore_errors=True)
        if Path(cache_dir).is_dir():
            _remove_stale_temporaries(Path(cache_dir))
    return gone


def _wait_for(path: Path, wait_s: float) -> None:
    start, told = time.monotonic(), 0.0
    while not path.is_file():
        waited = time.monotonic() - start
        if waited > wait_s:
            raise ThresherError(f"waited {waited:.0f} s for local rank 0 to write the cell index {path.parent}; "
                                f"is it running, and is {path.parent.parent} the same folder on every rank?")
        if waited - told >= 60:
            print(f"waiting for local rank 0 to build the cell index ({waited:.0f} s)", flush=True)
            told = waited
        time.sleep(0.2)


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


class StageDraws:
    """Documents of each arm (all docs whose ``column`` code is the arm) drawn uniformly without replacement
    within one stage, each draw in random order.

    Quad used to shuffle a copy of every arm it touched (4 bytes a document of every touched arm per rank,
    and a permutation of the whole pool per stage once UCB has played every arm), though a stage usually
    draws a small part of an arm. Here an arm starts *sparse*: it keeps the positions drawn so far and maps
    uniform ranks among the free positions to positions (``Generator.choice`` draws fewer than 1/50 of a
    large range without materialising it). Once the arm's drawn share would pass ``DENSE_SHARE``, it turns
    *dense*: one shuffled copy of its free positions (int32 below 2^31), read with a cursor, as before; so
    an arm drawn to exhaustion costs what the shuffle cost, not a re-sort per draw."""

    DENSE_SHARE = 1 / 50

    def __init__(self, index: CellIndex, column: str) -> None:
        self.index, self.column = index, column
        self.taken: dict[int, np.ndarray] = {}  # sparse arm -> sorted positions drawn this stage
        self.dense: dict[int, list] = {}  # dense arm -> [free positions in random order, cursor]
        self._arm: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # arm -> (its cells, their start positions)
        self._empty = np.zeros(0, np.int64)

    def drawn(self) -> int:
        return (int(sum(len(t) for t in self.taken.values()))
                + int(sum(self.size(a) - len(p) + cur for a, (p, cur) in self.dense.items())))

    def size(self, arm: int) -> int:
        return int(self._cells(arm)[1][-1])

    def draw(self, arm: int, m: int, g: np.random.Generator) -> np.ndarray:
        """``m`` docs of ``arm`` not drawn before in this stage (fewer if the arm runs out), int64 ids."""
        n = self.size(arm)
        if arm not in self.dense:
            taken = self.taken.get(arm, self._empty)
            m = min(int(m), n - len(taken))
            if m <= 0:
                return self._empty
            if len(taken) + m <= self.DENSE_SHARE * n:
                # ranks among the free positions, then rank j -> position: the j-th free position has every
                # taken position t_i with t_i - i <= j before it
                j = g.choice(n - len(taken), size=m, replace=False)
                pos = j + np.searchsorted(taken - np.arange(len(taken)), j, side="right") if len(taken) else j
                self.taken[arm] = np.sort(np.concatenate([taken, pos]))
                return self._docs_at(arm, pos)
            idx = np.int32 if n < 2**31 else np.int64
            if len(taken):
                free = np.ones(n, dtype=bool)
                free[taken] = False
                perm = np.flatnonzero(free).astype(idx)
            else:
                perm = np.arange(n, dtype=idx)
            g.shuffle(perm)
            self.dense[arm] = [perm, 0]
            self.taken.pop(arm, None)
        perm, cur = self.dense[arm]
        pos = perm[cur : cur + int(m)].astype(np.int64)
        self.dense[arm][1] = cur + len(pos)
        return self._docs_at(arm, pos)

    def _cells(self, arm: int) -> tuple[np.ndarray, np.ndarray]:
        if arm not in self._arm:
            cells = self.index.cells_with(self.column, arm)
            starts = np.zeros(len(cells) + 1, np.int64)
            np.cumsum(self.index.counts[cells], out=starts[1:])
            self._arm[arm] = (cells, starts)
        return self._arm[arm]

    def _docs_at(self, arm: int, pos: np.ndarray) -> np.ndarray:
        """Doc ids at positions ``pos`` of the arm's docs laid out cell after cell (gather_cells' order)."""
        cells, starts = self._cells(arm)
        if len(cells) == 1:  # Quad's own index: one cell per arm
            return self.index.order[self.index.offsets[cells[0]] + pos].astype(np.int64)
        which = np.searchsorted(starts, pos, side="right") - 1
        return self.index.order[self.index.offsets[cells[which]] + (pos - starts[which])].astype(np.int64)
