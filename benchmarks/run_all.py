"""Run every benchmark once with its default (CPU-sized) settings: `make bench`.

Each benchmark prints its own ratios against a baseline measured in the same run; this only runs them
one after another, each in its own process, and ends with one line per benchmark (ok / failed, seconds).
Extra arguments for one benchmark: run it directly (see its docstring).

    .venv/bin/python benchmarks/run_all.py                  # all
    .venv/bin/python benchmarks/run_all.py influence train  # some
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["ingest", "labels", "label_merge", "selection", "selection_memory", "selection_export", "train", "influence", "influence_projection", "influence_refresh",
         "synth_selection_gap"]


def main(names: list[str]) -> int:
    if any(n in ("-h", "--help") for n in names):
        print(__doc__.strip())
        print(f"benchmarks: {' '.join(ORDER)}")
        return 0
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {ORDER}")
        return 2
    results = []
    for name in names or ORDER:
        print(f"\n=== benchmarks/{name}.py ===", flush=True)
        t = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / f"{name}.py")])
        results.append((name, rc, time.perf_counter() - t))
    print("\n=== summary ===")
    for name, rc, s in results:
        print(f"{name:<22} {'ok' if rc == 0 else f'FAILED (exit {rc})':<16} {s:7.1f} s")
    return 1 if any(rc for _, rc, _ in results) else 0  # a benchmark killed by a signal has rc < 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
