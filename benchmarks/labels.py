"""Offline-labelling throughput on the shared pool (CPU): docs/s per labeler + the Figure-1 plot.

    .venv/bin/python benchmarks/labels.py --n 1400 --out /tmp/thresher-bench-labels

Takes the first n/7 docs of each pool domain file, trains a DCLM-style fastText quality model on
*other* pool docs (Wikipedia+Books+ArXiv as positives, CommonCrawl+C4 as negatives: a stand-in for
DCLM's curated positives), labels with domain, rule-based and fastText quality, zero-shot topics,
MiniLM embeddings, clusters with k-means, and renders label_stats.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def shared_data() -> Path:
    return Path(os.environ.get("THRESHER_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def train_fasttext(pool: Path, skip: int, out: Path, n_train: int = 2000) -> Path:
    import pyarrow.parquet as pq

    from thresher.labels.quality import train_quality_fasttext

    def texts(domains):
        rows = []
        for d in domains:
            for f in sorted((pool / d).glob("*.parquet")):
                rows += pq.read_table(f, columns=["text"]).column("text").to_pylist()[skip : skip + n_train // len(domains)]
        return rows

    out.mkdir(parents=True, exist_ok=True)
    (out / "pos.txt").write_text("\n".join(" ".join(t.split()) for t in texts(["Wikipedia", "Books", "ArXiv"])))
    (out / "neg.txt").write_text("\n".join(" ".join(t.split()) for t in texts(["CommonCrawl", "C4"])))
    return train_quality_fasttext(out / "pos.txt", out / "neg.txt", out / "quality.bin", epoch=5, threads=2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1400, help="docs in total (first n/7 of each domain)")
    ap.add_argument("--out", default="/tmp/thresher-bench-labels")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--shard-size", type=int, default=500)
    args = ap.parse_args()
    os.environ.setdefault("THRESHER_NO_PROGRESS", "1")

    from thresher.labels import LabelTable, ParquetSource, label_stats, run_labelers
    from thresher.labels.cluster import KMeansClusterer
    from thresher.labels.domain import DomainLabeler
    from thresher.labels.embed import EmbedLabeler
    from thresher.labels.quality import FastTextQualityLabeler, RuleQualityLabeler
    from thresher.labels.topic import ZeroShotTopicLabeler

    pool, out = shared_data() / "pool", Path(args.out)
    per_file = args.n // 7
    source = ParquetSource(pool, per_file_limit=per_file)
    t0 = time.perf_counter()
    ft = train_fasttext(pool, per_file, out / "fasttext")
    ft_train = time.perf_counter() - t0
    rules, fast = RuleQualityLabeler(), FastTextQualityLabeler(ft)
    rules.name, fast.name = "quality_rules", "quality_fasttext"
    fast.columns = {"ft_" + c: k for c, k in fast.columns.items()}  # both quality scorers side by side
    fast.categories = {"ft_quality_interval": fast.categories["quality_interval"]}
    fast_label = fast.label
    fast.label = lambda b: {"ft_" + c: v for c, v in fast_label(b).items()}
    labs = [DomainLabeler(), rules, fast, ZeroShotTopicLabeler(device="cpu"), EmbedLabeler(device="cpu")]
    table_dir = out / "table"
    if LabelTable.exists(table_dir):
        import shutil

        shutil.rmtree(table_dir)
    t0 = time.perf_counter()
    table = run_labelers(source, labs, table_dir, shard_size=args.shard_size, batch_size=64)
    wall = time.perf_counter() - t0
    emb = table.embeddings()
    km = KMeansClusterer(k=args.k, sample_size=len(emb), niter=20, seed=0)
    t0 = time.perf_counter()
    km.assign(emb, km.train(emb))
    km_s = time.perf_counter() - t0
    stats = json.loads((table_dir / "run_stats.json").read_text())
    paths = label_stats(table_dir, out / "stats")
    report = {"n_docs": table.n_docs, "label_wall_s": wall, "docs_per_s": stats["docs_per_s"],
              "kmeans": {"k": args.k, "seconds": km_s, "docs_per_s": table.n_docs / km_s},
              "fasttext_train_s": ft_train, "null_reasons": stats["null_reasons"],
              "cpu_threads": os.cpu_count(), "figure1": str(paths["figure1"]), "stats_md": str(paths["markdown"])}
    print(json.dumps(report, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
