"""``thresher selection``: a run's selected data as Parquet, the deliverable of a selection run.

Each exported stage is one file ``<out>/step_NNNNNN.parquet``: one row per document of that stage's D_k (the
run's saved ``selections/``), sorted by doc id, with

* ``step`` (the selector log entry's step) and ``position`` (the document's place in the selector's order),
* the token store's docs.parquet columns (``doc_id``, ``source_shard``, ``source_index``, ``source_id``,
  ``n_tokens`` and the mapped columns, e.g. ``domain``): where each document came from,
* the label table's columns as ``label_<column>`` (categories as strings, scores as floats; embeddings left out),
* with ``text``, the document decoded from the token store (exact for the byte-level BPE tokenizers thresher
  trains; ``source_shard`` and ``source_index`` point at the original record either way).

Every stage's ids are checked against the log's ``selection_sha1`` before anything is written. Files are written
atomically, one stage at a time; a rerun skips the stages whose file holds the same selection exported with the
same options (recorded in the file's Parquet metadata), so an interrupted export resumes, and it refuses to write
over a file exported from another run or with other options.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from thresher.agents.base import selection_digest
from thresher.evaluate.report import read_jsonl
from thresher.utils.errors import ThresherError

META_KEY = b"thresher.selection"  # the Parquet key-value metadata a stage file carries (what made it)
TEXT_BATCH = 4096  # documents decoded and written per row group with `text`


def stage_entries(log: list[dict], stages: str) -> list[dict]:
    """The log entries to export: ``"last"`` (the run's final D_k), ``"all"``, or comma-separated steps."""
    saved = [e for e in log if "selection_file" in e]
    if not saved:
        raise ThresherError("the run saved no selections (selector.save_selections = 'auto' saves them for pools of "
                            "up to 50M docs); rerun it with --set selector.save_selections=always")
    if stages == "last":
        return saved[-1:]
    if stages == "all":
        return saved
    try:
        steps = [int(s) for s in stages.split(",") if s.strip()]
    except ValueError:
        raise ThresherError(f"--stages {stages!r}: give last, all or comma-separated steps (e.g. 0,100)") from None
    by_step = {e["step"]: e for e in saved}
    missing = [s for s in steps if s not in by_step]
    if missing or not steps:
        raise ThresherError(f"--stages {stages!r}: the run saved selections at steps "
                            f"{', '.join(map(str, by_step))}; not at {', '.join(map(str, missing)) or 'none given'}")
    return [by_step[s] for s in dict.fromkeys(steps)]


def take_rows(path: Path, columns: list[str], ids: np.ndarray):
    """Rows ``ids`` (sorted, unique) of a Parquet file whose row i is doc i, reading one row group at a time so
    memory holds only the rows taken. Checks the file's ``doc_id`` column against the ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    if f.metadata.num_rows <= (int(ids[-1]) if len(ids) else -1):
        raise ThresherError(f"{path} has {f.metadata.num_rows} rows; the selection names doc {int(ids[-1])}: "
                            "not the run's pool")
    read = list(dict.fromkeys(["doc_id", *columns]))
    parts, lo = [], 0
    for g in range(f.metadata.num_row_groups):
        hi = lo + f.metadata.row_group(g).num_rows
        a, b = np.searchsorted(ids, [lo, hi])
        if b > a:
            parts.append(f.read_row_group(g, columns=read).take(pa.array(ids[a:b] - lo)))
        lo = hi
    table = pa.concat_tables(parts) if parts else f.schema_arrow.empty_table().select(read)
    if not np.array_equal(table.column("doc_id").to_numpy(), ids):
        raise ThresherError(f"{path}: row i is not doc i, so its rows cannot be matched to doc ids")
    return table.select(columns)


def export_selection(run_dir: str | Path, out: str | Path, stages: str = "last", text: bool = False,
                     labels: str | Path | None = None, store: str | Path | None = None,
                     with_labels: bool = True) -> list[dict]:
    """Writes the chosen stages' D_k as Parquet under ``out`` (module docstring); returns one dict per stage:
    ``step``, ``file``, ``rows``, ``tokens``, ``skipped`` (the file was already there, from the same selection)."""
    from thresher.config import load_run_config
    from thresher.corpus.store import TokenStore
    from thresher.evaluate.trace import _load_selection
    from thresher.labels.table import PARQUET, LabelTable
    from thresher.utils.io import make_dir
    from thresher.utils.log import progress_bar

    run_dir = Path(run_dir)
    log = read_jsonl(run_dir / "selector_log.jsonl") if (run_dir / "selector_log.jsonl").is_file() else []
    if not log or not (run_dir / "config.toml").is_file():
        raise ThresherError(f"{run_dir} is not a run folder (no selector_log.jsonl or config.toml)")
    entries = stage_entries(log, stages)
    cfg = load_run_config(run_dir / "config.toml")
    store_path = Path(store or cfg.data.store)
    if not (store_path / "store.json").is_file():
        raise ThresherError(f"no token store at {store_path}: give --store (config.toml's paths are relative to where "
                            "the run was started)")
    ts = TokenStore.open(store_path)
    table = None
    if with_labels:
        label_path = Path(labels or cfg.data.labels)
        if not LabelTable.exists(label_path):
            raise ThresherError(f"no label table at {label_path}: give --labels, or --no-labels")
        table = LabelTable.open(label_path)
        if table.n_docs != ts.n_docs:
            raise ThresherError(f"the label table at {label_path} has {table.n_docs:,} documents and the token store "
                                f"{ts.n_docs:,}: not the same pool")
    label_cols = [c for c in table.columns if table.kind(c) != "embedding"] if table is not None else []
    options = {"run": str(run_dir.resolve()), "text": bool(text), "labels": label_cols,
               "store": ts.fingerprint}
    out = make_dir(out)
    results = []
    for e in entries:
        path = out / f"step_{e['step']:06d}.parquet"
        ids = np.asarray(_load_selection(run_dir, e))
        sha = selection_digest(ids)
        if e.get("selection_sha1") and sha != e["selection_sha1"]:
            raise ThresherError(f"{run_dir / e['selection_file']} does not hash to the log's step-{e['step']} "
                                "selection_sha1: not this run's selection")
        meta = {**options, "step": int(e["step"]), "selection_sha1": sha}
        done = _existing(path, meta)
        if done is not None:
            results.append({"step": e["step"], "file": str(path), "skipped": True, **done})
            continue
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order].astype(np.int64)
        if len(np.unique(sorted_ids)) != len(sorted_ids):
            raise ThresherError(f"{run_dir / e['selection_file']} names a document twice: not a selection")
        rows = _rows(ts, table, label_cols, PARQUET, sorted_ids, order, int(e["step"]))
        tokens = int(rows.column("n_tokens").to_numpy().sum()) if len(rows) else 0
        meta |= {"rows": len(rows), "tokens": tokens}
        _write(path, rows, meta, ts if text else None, progress_bar, e["step"])
        results.append({"step": e["step"], "file": str(path), "skipped": False, "rows": len(rows), "tokens": tokens})
    return results


def _rows(ts, table, label_cols: list[str], label_parquet: str, ids: np.ndarray, order: np.ndarray, step: int):
    import pyarrow as pa

    rows = take_rows(ts.path / "docs.parquet", ts.columns, ids)
    # ids[k] = selection[order[k]]: position is each document's place in the selector's order
    rows = rows.add_column(0, "position", pa.array(order.astype(np.int64))).add_column(
        0, "step", pa.array(np.full(len(ids), step, dtype=np.int64)))
    if table is not None and label_cols:
        lab = take_rows(table.path / label_parquet, label_cols, ids)
        for c in label_cols:
            col = lab.column(c)
            if pa.types.is_dictionary(col.type):
                col = col.cast(pa.string())
            rows = rows.append_column(f"label_{c}", col)
    return rows


def _existing(path: Path, meta: dict) -> dict | None:
    """{rows, tokens} when ``path`` already holds this export; None when absent; an error when it holds another."""
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    try:
        kv = pq.read_schema(path).metadata or {}
        had = json.loads(kv[META_KEY])
    except Exception:  # not Parquet, or not one of ours: never written over
        raise ThresherError(f"{path} is there and is not a thresher selection export: give another --out or "
                            "remove it") from None
    if {k: had.get(k) for k in meta} != meta:
        differs = sorted(k for k in meta if had.get(k) != meta[k])
        raise ThresherError(f"{path} was exported with another {', '.join(differs)}: give another --out or "
                            "remove it")
    return {"rows": had.get("rows"), "tokens": had.get("tokens")}


def _write(path: Path, rows, meta: dict, ts, progress_bar, step: int) -> None:
    """``rows`` (plus the decoded ``text`` when ``ts`` is given) to ``path``, atomically, the export's options in
    the file's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from thresher.utils.io import atomic_path

    schema = rows.schema
    if ts is not None:
        schema = schema.append(pa.field("text", pa.string()))
    schema = schema.with_metadata({META_KEY: json.dumps(meta).encode()})
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as w:
        if ts is None:
            w.write_table(rows.replace_schema_metadata(schema.metadata))
            return
        doc_ids = rows.column("doc_id").to_numpy()
        bar = progress_bar(total=len(rows), desc=f"step {step}: decoding", unit="doc")
        for lo in range(0, max(len(rows), 1), TEXT_BATCH):
            part = rows.slice(lo, TEXT_BATCH)
            texts = ts.texts(doc_ids[lo:lo + TEXT_BATCH]) if len(part) else []
            w.write_table(part.append_column("text", pa.array(texts, pa.string())).replace_schema_metadata(
                schema.metadata))
            bar.update(len(part))
        bar.close()
