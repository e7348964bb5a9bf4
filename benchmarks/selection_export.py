"""Benchmark: `thresher selection`'s row lookup (evaluate.selection.take_rows: one row group of docs.parquet at a
time, keeping only the selected rows) against reading the whole table and taking the rows, measured in the same
run on the same file.

    .venv/bin/python benchmarks/selection_export.py --n 5000000 --fraction 0.2

The file has docs.parquet's columns as ingest writes them (doc_id, dictionary-encoded source_shard, source_index,
source_id, n_tokens, domain), one row group per shard of --shard-size documents; the selection is a seeded
uniform --fraction of the doc ids. Each lookup runs in its own process so that its peak RSS (ru_maxrss) is its
own (counted from after the imports and the selected ids). Prints seconds, peak RSS and the ratios, and checks that both give the same rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLUMNS = ["source_shard", "source_index", "source_id", "n_tokens", "domain"]


def make_file(path: Path, n: int, shard_size: int) -> None:
    import numpy as np
    import pyarrow as pa

    g = np.random.default_rng(0)
    domains = pa.array(["ArXiv", "Books", "C4", "CommonCrawl", "GitHub", "StackExchange", "Wikipedia"])
    schema = None
    with _Writer(path) as w:
        for s, lo in enumerate(range(0, n, shard_size)):
            m = min(shard_size, n - lo)
            shard = pa.DictionaryArray.from_arrays(pa.array(np.zeros(m, np.int32)),
                                                   pa.array([f"/data/pool/shard_{s:05d}.jsonl.zst"]))
            t = pa.table({"doc_id": np.arange(lo, lo + m, dtype=np.int64), "source_shard": shard,
                          "source_index": np.arange(m, dtype=np.int64),
                          "source_id": pa.array([f"doc-{lo + i}" for i in range(m)]),
                          "n_tokens": g.integers(10, 4000, m), "domain": domains.take(g.integers(0, 7, m))})
            schema = schema or t.schema
            w.write(t.cast(schema))


class _Writer:
    def __init__(self, path: Path):
        self.path, self.w = path, None

    def __enter__(self):
        return self

    def write(self, t):
        import pyarrow.parquet as pq

        if self.w is None:
            self.w = pq.ParquetWriter(self.path, t.schema)
        self.w.write_table(t)

    def __exit__(self, *exc):
        if self.w is not None:
            self.w.close()


def lookup(kind: str, path: Path, n: int, fraction: float) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from thresher.evaluate.selection import take_rows  # both import the same modules: RSS compares the lookups

    ids = np.flatnonzero(np.random.default_rng(1).random(n) < fraction)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    if kind == "stream":
        rows = take_rows(path, COLUMNS, ids)
    else:  # the whole table in memory, then the rows
        rows = pq.read_table(path, columns=COLUMNS).take(pa.array(ids))
    seconds = time.perf_counter() - t
    digest = hashlib.sha1()
    for c in ("source_index", "n_tokens"):
        digest.update(rows.column(c).to_numpy().tobytes())
    digest.update("".join(rows.column("source_id").to_pylist()[:: max(1, len(rows) // 1000)]).encode())
    return {"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base,
            "rows": len(rows), "digest": digest.hexdigest()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5_000_000, help="documents in the pool")
    ap.add_argument("--fraction", type=float, default=0.2, help="share of them selected")
    ap.add_argument("--shard-size", type=int, default=100_000, help="documents per row group (one per shard)")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        print(json.dumps(lookup(a._child[0], Path(a._child[1]), a.n, a.fraction)))
        return
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "docs.parquet"
        t = time.perf_counter()
        make_file(path, a.n, a.shard_size)
        print(f"docs.parquet: {a.n:,} rows, {path.stat().st_size / 2**20:.0f} MiB, written in "
              f"{time.perf_counter() - t:.1f} s; selecting {a.fraction:.0%}")
        res = {}
        for kind in ("whole", "stream"):
            out = subprocess.run([sys.executable, __file__, "--n", str(a.n), "--fraction", str(a.fraction),
                                  "--_child", kind, str(path)], capture_output=True, text=True, check=True)
            res[kind] = json.loads(out.stdout.strip().splitlines()[-1])
            r = res[kind]
            print(f"{kind:>7}: {r['rows']:,} rows in {r['seconds']:.2f} s, peak RSS +{r['rss_mb']:.0f} MiB over "
                  "the imports and the ids")
        assert res["whole"]["digest"] == res["stream"]["digest"], "the two lookups gave different rows"
        w, s = res["whole"], res["stream"]
        print(f"stream / whole: time {s['seconds'] / w['seconds']:.2f}x, peak RSS {s['rss_mb'] / w['rss_mb']:.2f}x "
              "(same rows)")


if __name__ == "__main__":
    main()
