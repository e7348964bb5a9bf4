"""Benchmark: memory each torchrun rank holds for selection, in bytes per document.

    .venv/bin/python benchmarks/selection_memory.py --n 8000000

What a run keeps per process: the token store's document lengths (shared by the selector and the data
packer), the cell index over the agents' label columns, and Quad's shuffled documents of every arm it
touches in a stage; plus the peak while the index is built. Labels: quality 10, domain 7, topic 13 and
10k clusters nested in domain x topic (5% noise), as embedding clusters roughly are. Baseline, in the
same run: the same structures with int64 lengths and int64 arm orders (what they were before session 9).
The label codes themselves are memory-mapped in a run (shared by the ranks) and not counted.

Then the cached index (``data.cell_index_cache``, the run default): local rank 0 builds and writes it once,
every rank memory-maps it, so what a rank holds in its own memory is the per-cell arrays only; and the
seconds to build the index against the seconds a resumed run (or another rank) takes to map it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from thresher.agents.base import Labels
from thresher.agents.cells import build_cell_index, cached_cell_index, gather_cells
from thresher.corpus.store import TokenStore
from thresher.train.data import Packer

SIZES = {"quality": 10, "domain": 7, "topic": 13, "cluster": 10_000}


def labels(n: int, seed: int) -> Labels:
    g = np.random.default_rng(seed)
    codes = {c: g.integers(0, k, n).astype(np.int16) for c, k in SIZES.items()}
    cl = codes["cluster"]
    codes["domain"] = np.where(g.random(n) < 0.95, cl % 7, codes["domain"]).astype(np.int16)
    codes["topic"] = np.where(g.random(n) < 0.95, (cl // 7) % 13, codes["topic"]).astype(np.int16)
    return Labels(codes, {c: [f"{c}{i}" for i in range(k)] for c, k in SIZES.items()})


def measure(store: TokenStore, lab: Labels, wide: bool) -> dict:
    """Bytes per document of each structure (tracemalloc counts numpy's allocations)."""
    n = store.n_docs
    tracemalloc.start()
    lengths = np.diff(np.asarray(store.offsets)) if wide else store.lengths  # int64 | the store's int32
    a = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    index = build_cell_index(lab, list(SIZES), lengths)
    b, peak = tracemalloc.get_traced_memory()
    packer = Packer(lengths, 1025)
    c = tracemalloc.get_traced_memory()[0]
    arms = [gather_cells(index, index.cells_with("cluster", k), np.int64 if wide else None) for k in range(SIZES["cluster"])]
    d = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    cells = index.n_cells
    del index, packer, arms
    out = {"lengths": a / n, "cell index": (b - a) / n, "packer": (c - b) / n, "held": c / n,
           "index build peak": (peak - a) / n, "Quad arms (all)": (d - c) / n, "cells": cells}
    return out


def quad_stage(n: int, arm_docs: int, per_arm: int, seed: int) -> dict:
    """One Quad round that plays every arm once (UCB's first pass) and draws ``per_arm`` docs of each, arms of
    ``arm_docs`` documents (600M documents in 10k clusters: 60k): shuffled copies of every arm (before)
    against StageDraws; bytes a document held and seconds."""
    from thresher.agents.cells import StageDraws

    n_arms = max(n // arm_docs, 1)
    lab = Labels({"cluster": np.random.default_rng(seed).integers(0, n_arms, n).astype(np.int32)},
                 {"cluster": [str(i) for i in range(n_arms)]})
    index = build_cell_index(lab, ["cluster"], np.ones(n, np.int32))  # Quad's own index: one cell per arm
    out = {}
    for name in ("shuffled arms", "StageDraws"):
        g = np.random.default_rng(seed)
        tracemalloc.start()
        t = time.perf_counter()
        if name == "shuffled arms":
            held = [g.permutation(gather_cells(index, index.cells_with("cluster", k), None)) for k in range(n_arms)]
            drawn = [p[:per_arm] for p in held]
        else:
            held = StageDraws(index, "cluster")
            drawn = [held.draw(k, per_arm, g) for k in range(n_arms)]
        out[name] = (tracemalloc.get_traced_memory()[0] / n, time.perf_counter() - t)
        tracemalloc.stop()
        assert sum(map(len, drawn)) == per_arm * n_arms
        del held, drawn
    out["arms"] = n_arms
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-arm", type=int, default=1024, help="docs Quad draws from each arm in the measured round "
                    "(max_samples_per_cluster's default)")
    ap.add_argument("--arm-docs", type=int, default=60_000, help="docs per arm (600M docs in 10k clusters: 60k)")
    a = ap.parse_args()
    lab = labels(a.n, a.seed)
    with tempfile.TemporaryDirectory() as d:  # a store's offsets are all `lengths` reads
        lens = np.random.default_rng(a.seed).integers(10, 2000, a.n)
        np.save(Path(d) / "offsets.npy", np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))
        meta = {"dtype": "uint16", "n_docs": a.n, "n_tokens": int(lens.sum())}
        wide = measure(TokenStore(Path(d), meta), lab, wide=True)
        ours = measure(TokenStore(Path(d), meta), lab, wide=False)
    print(f"N={a.n:,} documents, label columns {SIZES}")
    print(f"{'bytes per document':<20} {'int64 baseline':>15} {'thresher':>10} {'ratio':>7}")
    for k in [k for k in wide if k != "cells"]:
        ratio = f"{ours[k] / wide[k]:7.2f}" if wide[k] > 0.01 else "      -"
        print(f"{k:<20} {wide[k]:>15.2f} {ours[k]:>10.2f} {ratio}")
    print(f"{ours['cells']:,} cells; the cell index is 8 bytes per document (cell id, grouped order) plus ~56 per cell")
    stage = quad_stage(a.n, a.arm_docs, a.per_arm, a.seed)
    (old_b, old_s), (new_b, new_s) = stage["shuffled arms"], stage["StageDraws"]
    print(f"Quad round over all {stage['arms']:,} arms of ~{a.arm_docs:,} docs, {a.per_arm} drawn from each: shuffled arms {old_b:.2f} bytes/doc "
          f"{old_s:.2f} s, StageDraws {new_b:.2f} bytes/doc {new_s:.2f} s (memory x{new_b / old_b:.2f}, "
          f"time x{new_s / old_s:.2f})")
    with tempfile.TemporaryDirectory() as d:
        cached = measure_cached(lab, lens.astype(np.int32), Path(d))
    print(f"cached (data.cell_index_cache): each rank holds {cached['mapped held']:.2f} bytes per document of its own "
          f"for the index (its per-cell arrays; was {ours['cell index']:.2f}); the 8 bytes per document are mapped, once per node")
    print(f"build + write {cached['build s']:.2f} s, map on resume / other ranks {cached['map s']:.3f} s "
          f"({cached['build s'] / cached['map s']:.0f}x faster; mapping includes hashing the labels and lengths)")


def measure_cached(lab: Labels, lengths: np.ndarray, cache: Path) -> dict:
    n = len(lengths)
    t = time.perf_counter()
    cached_cell_index(lab, list(SIZES), lengths, cache, local_rank=0)  # builds, writes, maps
    built = time.perf_counter() - t
    tracemalloc.start()
    t = time.perf_counter()
    index = cached_cell_index(lab, list(SIZES), lengths, cache, local_rank=1)  # hashes the inputs, maps
    mapped = time.perf_counter() - t
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del index
    return {"mapped held": held / n, "build s": built, "map s": mapped}


if __name__ == "__main__":
    main()
