"""Ingest throughput: `ingest` with 1 and 2 workers against plain `tokenizer.encode_batch`.

    .venv/bin/python benchmarks/ingest.py [--pool PATH] [--docs N] [--tokenizer tokenizer.json]

Corpora: a synthetic one (N documents of random words in 4 JSONL shards, one .gz and one .zst) and,
when present, the shared pool (7 Parquet files, field map domain -> domain). The baseline is one
process calling `encode_batch` on the texts already in memory, in batches of the same size; the
`encode_batch_fast` line (what ingest calls: same ids, no offset tracking) shows how much of a ratio
above 1 comes from that alone. Ingest also reads, decodes, parses, writes and merges (all included in
its wall time), and every run checks that the store holds exactly the baseline's token count.
Timings on a shared machine are noisy: compare lines of one run only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from thresher.corpus.ingest import expand_inputs, ingest
from thresher.corpus.readers import Doc, iter_records
from thresher.corpus.tokenizer import load_tokenizer, train_tokenizer

DEFAULT_POOL = Path(__file__).resolve().parents[2] / "shared" / "data" / "pool"


def synth_corpus(out: Path, n_docs: int, seed: int = 0) -> list[str]:
    """N documents of Zipf-distributed random words (30-600 words each) in 4 JSONL shards."""
    r = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(r.choice(letters, size=int(r.integers(2, 10)))) for _ in range(20_000)]
    names = ["s0.jsonl", "s1.jsonl", "s2.jsonl.gz", "s3.jsonl.zst"]
    shards = [[] for _ in names]
    for i in range(n_docs):
        idx = np.minimum(r.zipf(1.2, size=int(r.integers(30, 600))) - 1, len(words) - 1)
        text = " ".join(words[j] for j in idx)
        shards[i % 4].append(f'{{"id": "d{i}", "text": "{text}", "domain": "synth{i % 3}"}}\n')
    import gzip

    import zstandard

    for name, lines in zip(names, shards):
        data = "".join(lines).encode()
        data = gzip.compress(data, 1) if name.endswith(".gz") else data
        data = zstandard.ZstdCompressor().compress(data) if name.endswith(".zst") else data
        (out / name).write_bytes(data)
    return [str(out / n) for n in names]


def load_texts(inputs: list[str]) -> list[str]:
    return [r.text for s in expand_inputs(inputs) for r in iter_records(s) if isinstance(r, Doc)]


def baseline(tok, texts: list[str], batch_size: int, fast: bool = False) -> tuple[float, int]:
    """Seconds and tokens of encode_batch (or encode_batch_fast, which ingest uses) on in-memory texts."""
    encode = tok.encode_batch_fast if fast else tok.encode_batch
    t0 = time.perf_counter()
    n_tok = 0
    for i in range(0, len(texts), batch_size):
        n_tok += sum(len(e.ids) for e in encode(texts[i : i + batch_size], add_special_tokens=False))
    return time.perf_counter() - t0, n_tok


def bench(name: str, inputs: list[str], tok_path: str, field_map: dict, work: Path, batch_size: int) -> None:
    tok = load_tokenizer(tok_path)
    texts = load_texts(inputs)
    secs, n_tok = baseline(tok, texts, batch_size)
    base_dps, base_tps = len(texts) / secs, n_tok / secs
    print(f"\n[{name}] {len(texts)} docs, {n_tok} tokens, {sum(map(len, texts)) / 1e6:.1f}M chars")
    print(f"  {'encode_batch (baseline)':<26} {base_dps:>10.0f} docs/s {base_tps:>12.0f} tok/s   1.00x")
    fsecs, _ = baseline(tok, texts, batch_size, fast=True)
    print(f"  {'encode_batch_fast':<26} {len(texts) / fsecs:>10.0f} docs/s {n_tok / fsecs:>12.0f} tok/s"
          f"   {secs / fsecs:.2f}x")
    for workers in (1, 2):
        out = work / f"{name}-w{workers}"
        t0 = time.perf_counter()
        st = ingest(inputs, out, tok_path, field_map=field_map, workers=workers, batch_size=batch_size, resume=False)
        wall = time.perf_counter() - t0
        assert st["n_tokens"] == n_tok, (st["n_tokens"], n_tok)  # the store holds exactly the baseline's tokens
        dps, tps = st["n_docs"] / wall, st["n_tokens"] / wall
        print(f"  {f'ingest workers={workers}':<26} {dps:>10.0f} docs/s {tps:>12.0f} tok/s   {tps / base_tps:.2f}x"
              f"   (wall {wall:.1f}s incl. merge)")
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default=str(DEFAULT_POOL), help="folder of Parquet shards (skipped if absent)")
    ap.add_argument("--docs", type=int, default=20_000, help="synthetic documents")
    ap.add_argument("--tokenizer", default="", help="tokenizer.json to use (default: train BPE 8192 here)")
    ap.add_argument("--sample-docs", type=int, default=5_000, help="documents to train the BPE on")
    ap.add_argument("--batch-size", type=int, default=1000)
    args = ap.parse_args()
    os.environ.setdefault("THRESHER_NO_PROGRESS", "1")
    work = Path(tempfile.mkdtemp(prefix="thresher-bench-ingest-"))
    try:
        synth = synth_corpus(work, args.docs)
        pool = [args.pool] if Path(args.pool).is_dir() else []
        tok_path = args.tokenizer
        if not tok_path:
            t0 = time.perf_counter()
            tok_path = str(train_tokenizer(synth + pool, work / "tokenizer.json", 8192, sample_docs=args.sample_docs))
            print(f"trained byte-level BPE 8192 on {args.sample_docs} docs in {time.perf_counter() - t0:.1f}s")
        print(f"cpus: {os.cpu_count()}  python {sys.version.split()[0]}")
        bench("synthetic", synth, tok_path, {"domain": "domain"}, work, args.batch_size)
        if pool:
            bench("pool", pool, tok_path, {"domain": "domain"}, work, args.batch_size)
        else:
            print(f"\n(pool not found at {args.pool}: skipped)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
