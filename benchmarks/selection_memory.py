"""Benchmark: memory each torchrun rank holds for selection, in bytes per document, and Quad's draws.

    .venv/bin/python benchmarks/selection_memory.py --n 8000000

What a run keeps per process: the token store's document lengths (shared by the selector and the data
packer) and the cell index over the agents' label columns; plus the peak while the index is built.
Labels: quality 10, domain 7, topic 13 and 10k clusters nested in domain x topic (5% noise), as embedding
clusters roughly are. Three ways, measured in the same run:

  int64     lengths and index in each process's memory, int64 lengths (before session 9)
  memory    the same with int32 lengths (data.cell_index_cache = "memory"; a read-only store)
  mapped    the default: lengths.npy and the cached index memory-mapped (shared by the ranks of a node
            through the page cache; what a rank holds of its own is the index's per-cell arrays)

The label codes themselves are memory-mapped in a run (shared by the ranks) and not counted. Then one
Quad round over every arm: shuffled copies of every arm (before) against StageDraws; and the seconds to
build and write the cached index against the seconds a resumed run (or another rank) takes to map it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from thresher.agents.base import Labels
from thresher.agents.cells import StageDraws, build_cell_index, cached_cell_index, gather_cells
from thresher.corpus.store import TokenStore, lengths_from_offsets
from thresher.train.data import Packer

SIZES = {"quality": 10, "domain": 7, "topic": 13, "cluster": 10_000}
MODES = ("int64", "memory", "mapped")


def labels(n: int, seed: int) -> Labels:
    g = np.random.default_rng(seed)
    codes = {c: g.integers(0, k, n).astype(np.int16) for c, k in SIZES.items()}
    cl = codes["cluster"]
    codes["domain"] = np.where(g.random(n) < 0.95, cl % 7, codes["domain"]).astype(np.int16)
    codes["topic"] = np.where(g.random(n) < 0.95, (cl // 7) % 13, codes["topic"]).astype(np.int16)
    return Labels(codes, {c: [f"{c}{i}" for i in range(k)] for c, k in SIZES.items()})


def measure(store: TokenStore, lab: Labels, mode: str, cache: Path) -> dict:
    """Bytes per document of each structure (tracemalloc counts numpy's allocations, not mapped pages)."""
    n = store.n_docs
    if mode == "mapped":  # local rank 0 built and wrote both before this rank starts: not this rank's memory
        cached_cell_index(lab, list(SIZES), store.lengths, cache, local_rank=0)
    tracemalloc.start()
    lengths = {"int64": lambda: np.diff(np.asarray(store.offsets)), "memory": lambda: lengths_from_offsets(store.offsets),
               "mapped": lambda: store.lengths}[mode]()
    a = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    t = time.perf_counter()
    if mode == "mapped":
        index = cached_cell_index(lab, list(SIZES), lengths, cache, local_rank=1)  # hashes the inputs, maps
    else:
        index = build_cell_index(lab, list(SIZES), lengths)
    seconds = time.perf_counter() - t
    b, peak = tracemalloc.get_traced_memory()
    packer = Packer(lengths, 1025)
    c = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    cells = index.n_cells
    del index, packer
    return {"lengths": a / n, "cell index": (b - a) / n, "packer": (c - b) / n, "held per rank": c / n,
            "index build peak": (peak - a) / n, "index seconds": seconds, "cells": cells}


def quad_stage(n: int, arm_docs: int, per_arm: int, seed: int) -> dict:
    """One Quad round that plays every arm once (UCB's first pass) and draws ``per_arm`` docs of each, arms of
    ``arm_docs`` documents (600M documents in 10k clusters: 60k): shuffled copies of every arm (before)
    against StageDraws; bytes a document held and seconds."""
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
        TokenStore(Path(d), meta).lengths  # writes lengths.npy, as ingest does
        got = {m: measure(TokenStore(Path(d), meta), lab, m, Path(d) / "cache") for m in MODES}
    print(f"N={a.n:,} documents, label columns {SIZES}; {got['memory']['cells']:,} cells")
    print(f"{'bytes per document':<20}" + "".join(f"{m:>10}" for m in MODES) + f"{'mapped/int64':>14}")
    for k in ("lengths", "cell index", "packer", "held per rank", "index build peak"):
        ratio = f"{got['mapped'][k] / got['int64'][k]:14.2f}" if got["int64"][k] > 0.01 else f"{'-':>14}"
        print(f"{k:<20}" + "".join(f"{got[m][k]:>10.2f}" for m in MODES) + ratio)
    print(f"{'index seconds':<20}" + "".join(f"{got[m]['index seconds']:>10.3f}" for m in MODES)
          + f"{got['mapped']['index seconds'] / got['int64']['index seconds']:>14.2f}")
    print("mapped: the build peak is local rank 0's alone, once per node; 'index seconds' there is a resumed run's "
          "(or another rank's) hashing + mapping")
    stage = quad_stage(a.n, a.arm_docs, a.per_arm, a.seed)
    (old_b, old_s), (new_b, new_s) = stage["shuffled arms"], stage["StageDraws"]
    print(f"Quad round over all {stage['arms']:,} arms of ~{a.arm_docs:,} docs, {a.per_arm} drawn from each: "
          f"shuffled arms {old_b:.2f} bytes/doc {old_s:.2f} s, StageDraws {new_b:.2f} bytes/doc {new_s:.2f} s "
          f"(memory x{new_b / old_b:.2f}, time x{new_s / old_s:.2f})")


if __name__ == "__main__":
    main()
