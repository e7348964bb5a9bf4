"""Benchmark: select k docs from N synthetic label rows (3 label columns) per cell vs a brute-force sort.

    .venv/bin/python benchmarks/selection.py --n 100000000 --k 5000000 --brute-n 10000000

Per-cell selection: build the cell index once (setup), then Eq. 7 scores per cell and top-k /
Gumbel-top-k per cell. Baseline, in the same run: score every doc and argsort all of them (on
``--brute-n`` rows if N is too big for memory), scaled linearly to N for the ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from thresher.agents.agent import CategoricalAgent
from thresher.agents.base import Labels
from thresher.agents.cells import build_cell_index
from thresher.agents.console import AgentConsole
from thresher.agents.select import make_groups, select_gumbel, select_top_k

SIZES = {"quality": 5, "domain": 7, "topic": 13}


def synthetic(n: int, seed: int) -> tuple[Labels, np.ndarray]:
    g = np.random.default_rng(seed)
    codes = {c: g.integers(0, k, size=n, dtype=np.int8) for c, k in SIZES.items()}
    cats = {c: [f"{c}{i}" for i in range(k)] for c, k in SIZES.items()}
    return Labels(codes, cats), g.integers(50, 2000, size=n, dtype=np.int32)


def console(seed: int) -> AgentConsole:
    g = np.random.default_rng(seed)
    return AgentConsole([CategoricalAgent(c, c, [str(i) for i in range(k)], g.random(k)) for c, k in SIZES.items()])


CPU: dict[str, float] = {}


def timed(fn, name=None):
    """Wall time (returned) and CPU time (kept in CPU: the wall time inflates on a shared machine)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    CPU[name or fn.__name__] = time.process_time() - c
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000_000)
    ap.add_argument("--k", type=int, default=5_000_000)
    ap.add_argument("--brute-n", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    labels, lengths = synthetic(a.n, a.seed)
    index, t_build = timed(lambda: build_cell_index(labels, list(SIZES), lengths), "build")
    con = console(a.seed)
    g = np.random.default_rng(a.seed)
    scores = con.cell_scores(index)
    groups = make_groups(index, scores, lengths)
    top, t_top = timed(lambda: select_top_k(index, lengths, groups, g, budget_docs=a.k), "top")
    _, t_top_tok = timed(lambda: select_top_k(index, lengths, groups, g, budget_tokens=a.k * 1000), "top_tok")
    gum, t_gum = timed(lambda: select_gumbel(index, lengths, groups, g, 0.1, budget_docs=a.k), "gumbel")
    assert len(top) == len(gum) == a.k
    nb = min(a.brute_n, a.n)

    def brute():
        s = np.zeros(nb)
        for th, ag in zip(con.theta, con.agents):
            s += th * ag.weights[labels.codes[ag.column][:nb]]
        return np.argsort(-s, kind="stable")[: a.k * nb // a.n]

    _, t_brute = timed(brute, "brute")
    t_brute_n = t_brute * a.n / nb
    print(f"N={a.n:,} k={a.k:,} cells={index.n_cells}")
    print(f"cell index build (once):       {t_build:8.2f} s")
    print(f"per-cell top-k (docs):         {t_top:8.3f} s")
    print(f"per-cell top-k (tokens):       {t_top_tok:8.3f} s")
    print(f"per-cell Gumbel-top-k (docs):  {t_gum:8.3f} s")
    print(f"brute force argsort on {nb:,}: {t_brute:8.2f} s  (x{a.n / nb:.0f} -> {t_brute_n:.1f} s at N)")
    print(f"ratio brute(N) / per-cell top-k: {t_brute_n / t_top:,.0f}x (wall)")
    print("CPU seconds:", {k: round(v, 3) for k, v in CPU.items()},
          f"CPU ratio: {CPU['brute'] * a.n / nb / max(CPU['top'], 1e-9):,.0f}x")


if __name__ == "__main__":
    main()
