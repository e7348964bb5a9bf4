"""Benchmark: the end of `thresher label`, merging shard files into the label table, against the whole-table
merge it replaced (every shard concatenated in memory, then one Parquet write), measured in the same run.

    .venv/bin/python benchmarks/label_merge.py --n 5000000 --shard-size 10000

Shards hold 3 category columns (int16 codes), 1 float column and 1 reason column, in the executors'
shard format. Each merge runs in its own process so that its peak RSS (ru_maxrss) is its own; the
baseline writes the same Parquet content and .codes.npy files. Prints seconds, peak RSS and the ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLUMNS = {"quality": 5, "domain": 7, "topic": 13}


def specs() -> dict:
    out = {c: {"kind": "category", "categories": [f"{c}{i}" for i in range(k)], "provenance": {"bench": c}}
           for c, k in COLUMNS.items()}
    out["score"] = {"kind": "float", "provenance": {"bench": "score"}}
    out["quality_reason"] = {"kind": "reason", "provenance": {"bench": "reason"}}
    return out


def make_shards(work: Path, n: int, shard_size: int) -> list:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from thresher.labels.executors import shard_ranges

    work.mkdir(parents=True)
    g = np.random.default_rng(0)
    shards = shard_ranges(n, shard_size)
    for i, lo, hi in shards:
        m = hi - lo
        cols = {"doc_id": pa.array(np.arange(lo, hi, dtype=np.int64))}
        for c, k in COLUMNS.items():
            cols[c] = pa.array(g.integers(-1, k, m).astype(np.int16))
        cols["score"] = pa.array(g.random(m).astype(np.float32))
        cols["quality_reason"] = pa.array([None] * (m - 3) + ["empty"] * 3, pa.string())
        pq.write_table(pa.table(cols), work / f"{i:06d}.parquet")
    return shards


def merge(kind: str, work: Path, out: Path, n: int, shards: list) -> dict:
    """One merge in this process; returns seconds and peak RSS."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    if kind == "streamed":
        from thresher.labels.executors import merge_shards

        merge_shards(out, work, shards, specs(), n, None)
    else:  # the replaced merge: all shards in memory, then one table and one write
        t_all = pa.concat_tables([pq.read_table(work / f"{i:06d}.parquet") for i, _, _ in shards])
        out.mkdir(parents=True)
        cols = {"doc_id": t_all.column("doc_id")}
        for c, k in COLUMNS.items():
            codes = t_all.column(c).to_numpy()
            np.save(out / f"{c}.codes.npy", codes)
            idx = pa.array(codes.astype(np.int32), mask=codes < 0)
            cols[c] = pa.DictionaryArray.from_arrays(idx, pa.array([f"{c}{i}" for i in range(k)], pa.string()))
        cols["score"] = t_all.column("score")
        cols["quality_reason"] = t_all.column("quality_reason")
        pq.write_table(pa.table(cols), out / "labels.parquet", compression="zstd")
    return {"seconds": time.perf_counter() - t, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "start_mb": base}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--_child", nargs=3, metavar=("KIND", "WORK", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        kind, work, out = a._child
        shards = json.loads((Path(work) / "shards.json").read_text())
        print(json.dumps(merge(kind, Path(work), Path(out), a.n, shards)))
        return
    tmp = Path(tempfile.mkdtemp(prefix="label-merge-"))
    try:
        t = time.perf_counter()
        shards = make_shards(tmp / "work", a.n, a.shard_size)
        (tmp / "work" / "shards.json").write_text(json.dumps(shards))
        print(f"N={a.n:,} docs in {len(shards):,} shards (made in {time.perf_counter() - t:.1f} s)")
        res = {}
        for kind in ("whole-table", "streamed"):
            p = subprocess.run([sys.executable, __file__, "--n", str(a.n), "--_child", kind, str(tmp / "work"),
                                str(tmp / kind)], capture_output=True, text=True, check=True)
            res[kind] = json.loads(p.stdout.strip().splitlines()[-1])
            r = res[kind]
            print(f"{kind:<12} {r['seconds']:7.2f} s   peak RSS {r['peak_mb']:7.0f} MB "
                  f"({r['peak_mb'] - r['start_mb']:6.0f} MB above the process's start)")
        w, s = res["whole-table"], res["streamed"]
        print(f"ratio whole-table / streamed: time {w['seconds'] / s['seconds']:.2f}x, "
              f"memory above start {(w['peak_mb'] - w['start_mb']) / max(s['peak_mb'] - s['start_mb'], 1):.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
