"""Shared fixtures for the corpus tests: a tiny BPE tokenizer and a 4-shard corpus in every format."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

WORDS = "the a of data model token river stone light café naïve 数据 σ λόγος emoji🙂 run jump blue 42".split()
SHARED = Path(os.environ.get("THRESHER_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def make_records(n: int, seed: int, prefix: str) -> list[dict]:
    """Records with an id, a text, a nested dict meta and a JSON-string meta."""
    r = np.random.default_rng(seed)
    out = []
    for i in range(n):
        text = " ".join(r.choice(WORDS, size=int(r.integers(1, 40))))
        if i % 7 == 3:
            text = "  leading spaces\nand a newline\t" + text
        meta = {"set": f"{prefix}-set", "score": int(r.integers(0, 5)), "deep": {"k": f"v{i % 3}"}}
        out.append({"id": f"{prefix}-{i}", "text": text, "domain": prefix.upper(), "meta": meta,
                    "meta_json": json.dumps(meta)})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def write_parquet(path: Path, records: list[dict], row_group_size: int = 16) -> Path:
    """Parquet as in the shared pool: the dict meta is dropped, meta_json is a JSON string column `meta`."""
    rows = [{"id": r["id"], "text": r["text"], "domain": r["domain"], "meta": r["meta_json"]} for r in records]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict:
    """4 shards (jsonl, .gz, .zst, parquet) in a folder; returns {"dir", "shards", "records"}."""
    d = tmp_path_factory.mktemp("corpus")
    recs = {name: make_records(n, seed, name) for seed, (name, n) in enumerate([("a", 40), ("b", 25), ("c", 30), ("d", 50)])}
    shards = [
        write_jsonl(d / "a.jsonl", recs["a"]),
        write_jsonl(d / "b.jsonl.gz", recs["b"]),
        write_jsonl(d / "c.jsonl.zst", recs["c"]),
        write_parquet(d / "d.parquet", recs["d"]),
    ]
    return {"dir": d, "shards": shards, "records": [recs[k] for k in "abcd"]}


@pytest.fixture(scope="session")
def tok_path(tmp_path_factory, corpus) -> Path:
    from thresher.corpus.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return train_tokenizer([str(corpus["dir"])], out, vocab_size=300, sample_docs=200)
