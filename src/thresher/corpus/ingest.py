"""Tokenize a corpus of JSONL/Parquet shards into a token store (see ``thresher.corpus.store``).

Work is per input shard, in parallel worker processes (spawn-safe). Each shard is written to
``out_dir/parts/<shard-key>/`` (tokens.bin, offsets.npy, docs.parquet, exclusions.jsonl, stats.json)
and a ``.done`` marker holding the shard's size and mtime is written last. A rerun after a crash or a
kill skips every shard whose marker matches and redoes the others from scratch. A final merge,
in input order, concatenates the parts into the store; ``store.json`` is written last, so a store
is either whole or absent. Document ids therefore depend only on (input order, record order), never
on the number of workers or on which shards were resumed.

The settings that decide the tokens (tokenizer fingerprint, text field, field mapping) are saved in
``out_dir/ingest.json``; resuming under other settings is refused rather than mixing two tokenizations.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from thresher.corpus.readers import REASONS, Doc, Excluded, is_shard, iter_records, shard_format
from thresher.corpus.store import RESERVED_COLUMNS, STORE_VERSION, narrow_lengths, token_dtype, write_lengths
from thresher.corpus.tokenizer import load_tokenizer, special_ids, tokenizer_sha256, vocab_size
from thresher.utils.errors import SettingsMismatchError, ThresherError
from thresher.utils.io import atomic_path, atomic_write_json, atomic_write_text, read_json, remove_stale_temps
from thresher.utils.log import print0, progress
from thresher.utils.pool import completed, spawn_pool

STORE_FILES = ("store.json", "tokens.bin", "offsets.npy", "lengths.npy", "lengths.json", "docs.parquet", "tokenizer.json",
               "exclusions.jsonl", "stats.json")


def ingest(
    inputs: Sequence[str] | str,
    out_dir: str | Path,
    tokenizer: str,
    text_field: str = "text",
    field_map: dict | None = None,
    workers: int = 2,
    batch_size: int = 1000,
    resume: bool = True,
    keep_parts: bool = False,
) -> dict:
    """Tokenize ``inputs`` (files, folders or globs) into the token store ``out_dir``; return the stats.

    ``field_map`` maps output metadata column -> dotted source path (e.g. domain -> meta.redpajama_set_name).
    ``keep_parts`` keeps the per-shard parts after the merge (they double the disk use).
    """
    for name, value in (("workers", workers), ("batch_size", batch_size)):
        if value < 1:
            raise ThresherError(f"ingest {name} = {value}: expected at least 1")
    t0 = time.perf_counter()
    out = _check_out_dir(Path(out_dir))
    remove_stale_temps(out)  # a merge killed mid-write left its temporaries (a whole tokens.bin at most)
    field_map = _check_field_map(field_map)
    shards = expand_inputs(inputs)
    tok = load_tokenizer(tokenizer)
    settings = _settings(tok, text_field, field_map)
    fingerprints = [shard_fingerprint(s) for s in shards]
    done = _prepare_out_dir(out, settings, fingerprints, resume)
    if done is not None:
        print0(f"token store {out} is already complete for these inputs")
        if not keep_parts:  # a run killed after its merge, before deleting the parts
            shutil.rmtree(out / "parts", ignore_errors=True)
        return done
    tasks = [
        ShardTask(str(s), str(out / "parts" / shard_key(s)), fp, text_field, field_map, batch_size, settings["dtype"])
        for s, fp in zip(shards, fingerprints)
    ]
    todo = [t for t in tasks if not _part_done(t)]
    t1 = time.perf_counter()
    new_stats = _run_tasks(todo, tok.to_str(), workers)
    secs = max(time.perf_counter() - t1, 1e-9)  # tokenizing wall time of this run (merge excluded)
    stats = merge_parts(out, tasks, settings, tok)
    stats.update(shards_resumed=len(tasks) - len(todo), seconds=round(time.perf_counter() - t0, 3),
                 docs_per_s=round(sum(s["docs"] for s in new_stats) / secs, 1),
                 tokens_per_s=round(sum(s["tokens"] for s in new_stats) / secs, 1))
    atomic_write_json(out / "stats.json", stats)
    if not keep_parts:
        shutil.rmtree(out / "parts", ignore_errors=True)
    return {k: v for k, v in stats.items() if k != "per_shard"}


# ---------------------------------------------------------------------------------------- inputs


def expand_inputs(inputs: Sequence[str] | str) -> list[Path]:
    """Files, folders (searched recursively for shards) and globs -> resolved shard paths, input order."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise ThresherError("no inputs given")
    out: dict[Path, None] = {}
    for spec in map(str, inputs):
        for p in _expand_one(spec):
            out.setdefault(p.resolve(), None)
    return list(out)


def _expand_one(spec: str) -> list[Path]:
    p = Path(spec).expanduser()
    if p.is_file():
        shard_format(p)  # raises on an unsupported format
        return [p]
    if p.is_dir():
        found = sorted(q for q in p.rglob("*") if q.is_file() and is_shard(q))
        if not found:
            raise ThresherError(f"no .jsonl/.json[.gz|.zst]/.parquet files under {spec}")
        return found
    if glob.has_magic(spec):
        found = sorted(Path(q) for q in glob.glob(os.path.expanduser(spec), recursive=True) if Path(q).is_file())
        if not found:
            raise ThresherError(f"no files match {spec}")
        return found
    raise ThresherError(f"input not found: {spec}")


def shard_key(path: Path) -> str:
    """A folder name unique to the shard's resolved path, readable: <file name>-<10 hex>."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", path.name)[:80]
    return f"{name}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"


def shard_fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _check_out_dir(out: Path) -> Path:
    """``out`` or its nearest existing parent must be a folder (a file there is never overwritten)."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise ThresherError(f"cannot write the token store to {out}: {existing} is a file, not a folder")
    return out


def _check_field_map(field_map: dict | None) -> dict:
    field_map = dict(field_map or {})
    for col, src in field_map.items():
        if col in RESERVED_COLUMNS:
            raise ThresherError(f"mapped column '{col}' clashes with a built-in column ({', '.join(RESERVED_COLUMNS)})")
        if not isinstance(src, str) or not src:
            raise ThresherError(f"mapped column '{col}' needs a source field path, got {src!r}")
    return field_map


# ------------------------------------------------------------------------------- settings, resume


def _settings(tok, text_field: str, field_map: dict) -> dict:
    """Everything that decides the tokens and the document table; a resumed run must match it."""
    v = vocab_size(tok)
    eos, pad = special_ids(tok)
    return {
        "version": STORE_VERSION, "tokenizer_sha256": tokenizer_sha256(tok), "vocab_size": v,
        "dtype": token_dtype(v).name, "eos_id": eos, "pad_id": pad, "text_field": text_field,
        "field_map": field_map,
    }


def _prepare_out_dir(out: Path, settings: dict, fingerprints: list[dict], resume: bool) -> dict | None:
    """Check or reset out_dir. Returns the saved stats when the store is already complete for these inputs."""
    saved = read_json(out / "ingest.json") if (out / "ingest.json").is_file() else None
    if not resume:
        shutil.rmtree(out / "parts", ignore_errors=True)
        for f in STORE_FILES:
            (out / f).unlink(missing_ok=True)
    elif saved is not None and saved != settings:
        diff = ", ".join(k for k in settings if saved.get(k) != settings[k])
        raise SettingsMismatchError(
            f"{out} was ingested with other settings ({diff} differ); use another out dir, or resume=False (--no-resume) to start over"
        )
    elif saved is not None and (out / "store.json").is_file():
        if read_json(out / "store.json").get("shards") == fingerprints:
            return {k: v for k, v in read_json(out / "stats.json").items() if k != "per_shard"}
    atomic_write_json(out / "ingest.json", settings)
    return None


def _part_done(task: "ShardTask") -> bool:
    marker = Path(task.part_dir) / ".done"
    return marker.is_file() and read_json(marker) == task.fingerprint


# ------------------------------------------------------------------------------------ the workers


@dataclass(frozen=True)
class ShardTask:
    shard: str
    part_dir: str
    fingerprint: dict
    text_field: str
    field_map: dict
    batch_size: int
    dtype: str


def _run_tasks(todo: list[ShardTask], tok_json: str, workers: int) -> list[dict]:
    """Run the shard tasks (largest first, for balance) inline or in a spawn pool; return their stats."""
    todo = sorted(todo, key=lambda t: -t.fingerprint["size"])
    workers = max(1, min(workers, len(todo)))
    if workers == 1:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(tok_json)
        return _collect((ingest_shard(t, tok) for t in todo), len(todo))
    # Ctrl-C stops the shards in progress instead of finishing them (they have no .done yet, so a rerun redoes them)
    threads = max(1, (os.cpu_count() or 1) // workers)
    with spawn_pool(workers, _init_worker, (tok_json, threads),
                    died="an ingest worker process died (out of memory?); rerun to resume") as ex:
        futures = [ex.submit(_pool_ingest_shard, t) for t in todo]
        return _collect((f.result() for f in completed(futures)), len(todo))


def _collect(results: Iterable[dict], total: int) -> list[dict]:
    out, docs, tokens = [], 0, 0
    bar = progress(results, desc="ingest", total=total, unit="shard")
    for st in bar:
        out.append(st)
        docs, tokens = docs + st["docs"], tokens + st["tokens"]
        if hasattr(bar, "set_postfix"):  # shown with the shard count at the bar's next refresh: a refresh now
            bar.set_postfix(docs=docs, tokens=tokens, refresh=False)  # would show it beside the count before it
    return out


_WORKER: dict = {}


def _init_worker(tok_json: str, threads: int) -> None:
    # tokenizers' Rust thread pool reads this when it starts (on the first encode): split the cores.
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    from tokenizers import Tokenizer

    _WORKER["tok"] = Tokenizer.from_str(tok_json)


def _pool_ingest_shard(task: ShardTask) -> dict:
    return ingest_shard(task, _WORKER["tok"])


def ingest_shard(task: ShardTask, tok) -> dict:
    """Tokenize one shard into its part folder; the .done marker is written last."""
    t0 = time.perf_counter()
    part = Path(task.part_dir)
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    writer = PartWriter(part, task.shard, np.dtype(task.dtype), list(task.field_map))
    items = iter_records(task.shard, task.text_field, task.field_map)
    for batch in _batches(items, task.batch_size):
        docs = [r for r in batch if isinstance(r, Doc)]
        encs = tok.encode_batch_fast([d.text for d in docs], add_special_tokens=False) if docs else []
        writer.add(docs, [e.ids for e in encs])
        writer.exclude([r for r in batch if isinstance(r, Excluded)])
    stats = writer.finish(seconds=time.perf_counter() - t0)
    atomic_write_json(part / ".done", task.fingerprint)
    return stats


def _batches(it: Iterator, n: int) -> Iterator[list]:
    it = iter(it)
    while batch := list(itertools.islice(it, max(1, n))):
        yield batch


class PartWriter:
    """Streams one shard's tokens to disk; keeps only lengths and compact Arrow metadata in memory."""

    def __init__(self, part: Path, shard: str, dtype: np.dtype, meta_cols: list[str]):
        self.part, self.shard, self.dtype, self.meta_cols = part, shard, dtype, meta_cols
        self.tokens = open(part / "tokens.bin", "wb")
        self.excl = open(part / "exclusions.jsonl", "w", encoding="utf-8")
        self.lengths: list[np.ndarray] = []
        self.tables: list = []
        self.reasons: Counter = Counter()

    def add(self, docs: list[Doc], ids: list[list[int]]) -> None:
        if not docs:
            return
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=int(lens.sum()))
        self.tokens.write(flat.tobytes())
        self.lengths.append(lens)
        self.tables.append(docs_table(docs, lens, self.meta_cols))

    def exclude(self, items: list[Excluded]) -> None:
        for r in items:
            self.reasons[r.reason] += 1
            rec = {"shard": self.shard, "index": r.index, "reason": r.reason, "detail": r.detail}
            self.excl.write(json.dumps(rec, ensure_ascii=False) + "\n")

    def finish(self, seconds: float) -> dict:
        import pyarrow.parquet as pq

        self.tokens.close()
        self.excl.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        with open(self.part / "offsets.npy", "wb") as f:
            np.save(f, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        pq.write_table(concat_unified(self.tables, keep_null=True) if self.tables else docs_table([], lengths, self.meta_cols),
                       self.part / "docs.parquet")
        stats = {"shard": self.shard, "docs": int(len(lengths)), "tokens": int(lengths.sum()),
                 "excluded": dict(sorted(self.reasons.items())), "seconds": round(seconds, 3)}
        atomic_write_json(self.part / "stats.json", stats)
        return stats


# ------------------------------------------------------------------------------ document tables


def docs_table(docs: list[Doc], lens: np.ndarray, meta_cols: list[str]):
    """Arrow table of one batch: source_index, source_id, n_tokens, mapped columns."""
    import pyarrow as pa

    cols = {
        "source_index": pa.array([d.index for d in docs], pa.int64()),
        "source_id": pa.array([d.source_id for d in docs], pa.string()),
        "n_tokens": pa.array(np.asarray(lens, np.int64)),
    }
    for col in meta_cols:
        cols[col] = meta_array([d.meta[col] for d in docs])
    return pa.table(cols)


def meta_array(values: list):
    """Arrow array of one metadata column; dicts/lists become JSON text, mixed types become strings."""
    import pyarrow as pa

    vals = [json.dumps(v, ensure_ascii=False, sort_keys=True) if isinstance(v, (dict, list)) else v for v in values]
    try:
        return pa.array(vals)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in vals], pa.string())


def unify_schema(schemas: list, keep_null: bool = False):
    """One schema for tables whose metadata types differ: nulls take the other type, ints widen to
    float64 next to floats, any other mix becomes string. A column null everywhere stays null with
    ``keep_null`` (a shard's part: the merge gives it the other shards' type), else becomes string."""
    import pyarrow as pa

    names = list(dict.fromkeys(n for s in schemas for n in s.names))
    fields = []
    for n in names:
        types = {s.field(n).type for s in schemas if n in s.names} - {pa.null()}
        if not types:
            t = pa.null() if keep_null else pa.string()
        elif len(types) == 1:
            t = types.pop()
        elif types and all(pa.types.is_integer(t) for t in types):
            t = pa.int64()
        elif types and all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in types):
            t = pa.float64()
        else:
            t = pa.string()
        fields.append(pa.field(n, t))
    return pa.schema(fields)


def concat_unified(tables: list, keep_null: bool = False):
    import pyarrow as pa

    schema = unify_schema([t.schema for t in tables], keep_null)
    return pa.concat_tables([t.cast(schema) for t in tables])


# ------------------------------------------------------------------------------------- the merge


def merge_parts(out: Path, tasks: list[ShardTask], settings: dict, tok) -> dict:
    """Concatenate the finished parts, in input order, into the store; store.json goes last."""
    (out / "store.json").unlink(missing_ok=True)
    parts = [Path(t.part_dir) for t in tasks]
    per_shard = [read_json(p / "stats.json") for p in parts]
    lengths = np.concatenate([np.diff(np.load(p / "offsets.npy")) for p in parts])
    n_docs, n_tokens = len(lengths), int(lengths.sum())
    excluded = sum((Counter(s["excluded"]) for s in per_shard), Counter())
    if n_docs == 0:
        raise ThresherError(
            f"empty corpus: no usable documents in {len(parts)} input shard(s) "
            f"({sum(excluded.values())} records excluded: {_reasons(excluded)})"
        )
    _concat_files([p / "tokens.bin" for p in parts], out / "tokens.bin")
    _concat_files([p / "exclusions.jsonl" for p in parts], out / "exclusions.jsonl")
    with atomic_path(out / "offsets.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    write_lengths(out / "lengths.npy", narrow_lengths(lengths))  # the same array, not a re-read of the offsets
    nulls = _merge_docs([p / "docs.parquet" for p in parts], [t.shard for t in tasks], out / "docs.parquet",
                        list(settings["field_map"]))
    for col in [c for c, n in nulls.items() if n == n_docs]:
        print0(f"warning: mapped column '{col}' ({settings['field_map'][col]}) is null for every document")
    atomic_write_text(out / "tokenizer.json", tok.to_str())
    stats = {"n_docs": n_docs, "n_tokens": n_tokens, "n_excluded": sum(excluded.values()),
             "excluded": {r: excluded.get(r, 0) for r in REASONS}, "null_counts": nulls, "n_shards": len(parts),
             "per_shard": per_shard}
    atomic_write_json(out / "stats.json", stats)
    store = {**settings, "n_docs": n_docs, "n_tokens": n_tokens,
             "inputs": [t.shard for t in tasks], "shards": [t.fingerprint for t in tasks]}
    atomic_write_json(out / "store.json", store)
    return stats


def _concat_files(srcs: list[Path], dst: Path) -> None:
    with atomic_path(dst) as tmp, open(tmp, "wb") as out:
        for s in srcs:
            with open(s, "rb") as f:
                shutil.copyfileobj(f, out, 16 << 20)


def _merge_docs(srcs: list[Path], shards: list[str], dst: Path, meta_cols: list[str]) -> dict[str, int]:
    """Stream the part tables into one docs.parquet with doc_id 0..N-1 (one part in memory at a time).

    source_shard is dictionary-encoded: one path string per shard, not per document, in memory too.

    Returns the number of nulls in each mapped column.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = unify_schema([pq.read_schema(s) for s in srcs])
    shard_type = pa.dictionary(pa.int32(), pa.string())
    out_schema = pa.schema([pa.field("doc_id", pa.int64()), pa.field("source_shard", shard_type)] + list(schema))
    start, nulls = 0, dict.fromkeys(meta_cols, 0)
    with atomic_path(dst) as tmp:
        with pq.ParquetWriter(tmp, out_schema) as w:
            for s, shard in zip(srcs, shards):
                t = pq.read_table(s).cast(schema)
                ids = pa.array(np.arange(start, start + t.num_rows, dtype=np.int64))
                src = pa.DictionaryArray.from_arrays(pa.array(np.zeros(t.num_rows, np.int32)), pa.array([shard]))
                w.write_table(t.add_column(0, "doc_id", ids).add_column(1, "source_shard", src))
                start += t.num_rows
                for c in meta_cols:
                    nulls[c] += t.column(c).null_count
    return nulls


def _reasons(c: Counter) -> str:
    return ", ".join(f"{r}={n}" for r, n in sorted(c.items())) or "none"

