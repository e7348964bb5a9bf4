"""The label table: the agents' memory, one row per document keyed by doc_id.

Layout of a table directory::

    labels.parquet          doc_id + every scalar column (categories as dictionary strings, null = missing);
                            the manifest below is also in the Parquet schema metadata (key b"thresher")
    <col>.codes.npy         int16 codes of each categorical column (memory-mappable; -1 = missing)
    <col>.npy               float16 (N, d) embedding columns (memory-mappable; NaN row = missing)
    table.json              manifest: n_docs, source (the token store's fingerprint) and per column
                            {kind, categories, provenance}; written last

Every file is replaced atomically. A column may only be replaced by one computed under the same
provenance (else SettingsMismatchError), so results of different settings never mix silently.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher.utils.errors import SettingsMismatchError, ThresherError
from thresher.utils.io import atomic_path, atomic_write_json, jsonable, read_json

MANIFEST, PARQUET = "table.json", "labels.parquet"
MANIFEST_KEY = b"thresher_manifest"  # Parquet metadata: the digest of the table.json written with it


def _manifest_key(manifest: dict) -> str:
    from thresher.labels.base import fingerprint

    return fingerprint(jsonable(manifest))[:16]


def _codes_path(d: Path, col: str) -> Path:
    return d / f"{col}.codes.npy"


def _emb_path(d: Path, col: str) -> Path:
    return d / f"{col}.npy"


class LabelTable:
    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = path, manifest

    @classmethod
    def open(cls, path: str | os.PathLike, complete: bool = True) -> "LabelTable":
        """The table at ``path``; with ``complete``, one whose last write was cut short (a kill after its new
        columns were renamed into place, before table.json was) is an error instead of codes the manifest
        mislabels."""
        path = Path(path)
        if not (path / MANIFEST).exists():
            raise ThresherError(f"no label table at {path} (missing {MANIFEST}); run the labelling first")
        try:
            table = cls(path, read_json(path / MANIFEST))
        except (OSError, ValueError) as e:
            raise ThresherError(f"label table {path}: {MANIFEST} is unreadable ({type(e).__name__}: {e})".splitlines()[0]) from None
        if complete:
            table._check_complete()
        return table

    def _check_complete(self) -> None:
        try:
            written = (pq.read_schema(self.path / PARQUET).metadata or {}).get(MANIFEST_KEY)
        except (OSError, pa.ArrowException):
            return  # reading the columns says what is wrong with the file
        if written is not None and written.decode() != _manifest_key(self.manifest):
            raise ThresherError(f"label table {self.path} is half-written ({PARQUET} does not match {MANIFEST}: a label "
                                "run was stopped while writing it, or table.json was edited); rerun that label "
                                "command to finish it")

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        return (Path(path) / MANIFEST).exists()

    # ------------------------------------------------------------------ reading
    @property
    def n_docs(self) -> int:
        return int(self.manifest["n_docs"])

    @property
    def source(self) -> str | None:
        """The identity of the corpus the table was labelled from (a token store's fingerprint), if recorded."""
        return self.manifest.get("source")

    @property
    def columns(self) -> list[str]:
        return list(self.manifest["columns"])

    def _spec(self, col: str) -> dict:
        if col not in self.manifest["columns"]:
            raise ThresherError(f"label table {self.path} has no column {col!r}; it has {self.columns}")
        return self.manifest["columns"][col]

    def kind(self, col: str) -> str:
        return self._spec(col)["kind"]

    def provenance(self, col: str) -> dict:
        return self._spec(col)["provenance"]

    def categories(self, col: str) -> list[str]:
        spec = self._spec(col)
        if spec["kind"] != "category":
            raise ThresherError(f"column {col!r} is {spec['kind']}, not categorical")
        return list(spec["categories"])

    def codes(self, col: str) -> np.ndarray:
        """(N,) int16 memmap, -1 = missing."""
        self.categories(col)
        return np.load(_codes_path(self.path, col), mmap_mode="r")

    def embeddings(self, col: str = "embedding") -> np.ndarray:
        """(N, d) float16 memmap."""
        if self.kind(col) != "embedding":
            raise ThresherError(f"column {col!r} is not an embedding column")
        return np.load(_emb_path(self.path, col), mmap_mode="r")

    def arrow(self, columns: list[str] | None = None) -> pa.Table:
        cols = ["doc_id"] + [c for c in (columns or self.columns) if self.kind(c) != "embedding"]
        return pq.read_table(self.path / PARQUET, columns=cols)

    def column(self, col: str) -> np.ndarray | list:
        """float columns -> float32 (NaN = missing); categories -> codes; reasons -> list."""
        kind = self.kind(col)
        if kind == "category":
            return np.asarray(self.codes(col))
        if kind == "embedding":
            return self.embeddings(col)
        arr = pq.read_table(self.path / PARQUET, columns=[col]).column(col)
        if kind == "float":
            return arr.to_numpy(zero_copy_only=False).astype(np.float32)
        return arr.to_pylist()

    def category_columns(self, names: Mapping[str, str]) -> dict[str, str]:
        """The entries of ``names`` ({agent name: column}, e.g. data.label_columns) whose column this table has as
        categories, the only kind an agent reads."""
        return {name: col for name, col in names.items() if col in self.columns and self.kind(col) == "category"}

    def to_agent_labels(self, columns: list[str] | dict[str, str] | None = None):
        """agents.base.Labels of categorical columns; a dict {agent name: column} renames them."""
        from thresher.agents.base import Labels

        cols = columns or [c for c in self.columns if self.kind(c) == "category"]
        names = cols if isinstance(cols, dict) else {c: c for c in cols}
        return Labels(codes={n: np.asarray(self.codes(c)) for n, c in names.items()},
                      categories={n: self.categories(c) for n, c in names.items()})

    # ------------------------------------------------------------------ writing
    @staticmethod
    def check_settings(path: str | os.PathLike, provenance: Mapping[str, dict], n_docs: int | None = None,
                       source: str | None = None, replace: bool = False) -> list[str]:
        """Columns already present with exactly this provenance; raises if any differs (unless ``replace``: then
        it is to be recomputed and written over), or if the table was labelled from another corpus
        (``source``: the source's identity, e.g. a token store's fingerprint)."""
        path = Path(path)
        if not LabelTable.exists(path):
            return []
        t = LabelTable.open(path, complete=False)
        if n_docs is not None and t.n_docs != n_docs:
            raise SettingsMismatchError(f"label table {path} has {t.n_docs} docs, the source has {n_docs}")
        if source and t.source not in (None, source):
            raise SettingsMismatchError(f"label table {path} was labelled from another corpus ({t.source}, this one is "
                                        f"{source}): its rows would be other documents' labels; write to a new table directory")
        same = []
        for col, prov in provenance.items():
            if col in t.manifest["columns"]:
                if _norm(t.provenance(col)) != _norm(prov):
                    if replace:
                        continue
                    raise SettingsMismatchError(
                        f"column {col!r} in {path} was computed under other settings "
                        f"({_diff(t.provenance(col), prov)}); write to a new table directory, or recompute it "
                        "in place with --replace (label.replace = true)")
                same.append(col)
        return same

    @staticmethod
    def write(path: str | os.PathLike, n_docs: int, data: Mapping[str, Any], specs: Mapping[str, dict],
              blocks: Iterable[tuple[int, int, Mapping[str, Any]]] | None = None,
              source: str | None = None, replace: bool = False) -> "LabelTable":
        """Add/replace columns. ``data[col]``: category -> int16 codes, float -> float32, reason ->
        pyarrow/list of str|None, embedding -> path of a finished (N, d) float16 .npy (moved in).

        ``blocks`` streams scalar columns instead: (lo, hi, {col: values of rows lo..hi-1}) in row order,
        covering 0..n_docs-1 (a column found in neither is an error). Nothing holds more than one row
        group (``ROW_GROUP`` rows) of the table at a time: the codes go into memory-mapped files and the
        Parquet file (this table's kept columns, read back in step, plus the new ones) is written row
        group by row group, so a table of hundreds of millions of documents needs little memory."""
        path = Path(path)
        LabelTable.check_settings(path, {c: s["provenance"] for c, s in specs.items()}, n_docs, source, replace)
        old = LabelTable.open(path, complete=False) if LabelTable.exists(path) else None
        manifest = {"version": 1, "n_docs": n_docs, "columns": dict(old.manifest["columns"]) if old else {}}
        source = source or (old.source if old else None)
        if source:
            manifest["source"] = source
        keep = [c for c in old.columns if c not in specs and old.kind(c) != "embedding"] if old else []
        scalar = [c for c, sp in specs.items() if sp["kind"] != "embedding"]
        for col, spec in specs.items():
            if spec["kind"] not in ("category", "float", "reason", "embedding"):
                raise ThresherError(f"unknown column kind {spec['kind']!r} for {col!r}")
            manifest["columns"][col] = {"kind": spec["kind"], "provenance": spec["provenance"]}
            if spec["kind"] == "category":
                manifest["columns"][col]["categories"] = list(spec["categories"])
        embedded = {col: _check_embedding(col, data[col], n_docs) for col in specs if specs[col]["kind"] == "embedding"}
        for col, dim in embedded.items():
            manifest["columns"][col]["dim"] = dim
        order = ["doc_id"] + [c for c in manifest["columns"] if c in keep or c in scalar]
        schema = pa.schema([pa.field("doc_id", pa.int64())] + [
            pa.field(c, _arrow_type(manifest["columns"][c]["kind"])) for c in order[1:]],
            metadata={b"thresher": json.dumps(manifest, default=str).encode(),
                      MANIFEST_KEY: _manifest_key(manifest).encode()})
        with contextlib.ExitStack() as stack:
            codes = {}
            for col in scalar:
                if specs[col]["kind"] == "category":
                    tmp = stack.enter_context(atomic_path(_codes_path(path, col)))
                    codes[col] = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int16, shape=(n_docs,))
            tmp_parquet = stack.enter_context(atomic_path(path / PARQUET))
            kept = None
            if keep:  # the old file stays open (and readable) until it is replaced, after the write
                source = stack.enter_context(pq.ParquetFile(old.path / PARQUET))
                kept = _RowStream(source.iter_batches(ROW_GROUP, columns=keep))
            with pq.ParquetWriter(tmp_parquet, schema, compression="zstd") as writer:
                pending, rows, done = [], 0, 0
                for lo, hi, part in _blocks(n_docs, data, scalar, blocks):
                    if lo != done or hi < lo or hi > n_docs:
                        raise ThresherError(f"label rows {lo}..{hi - 1} out of order: expected rows from {done}")
                    cols = {"doc_id": pa.array(np.arange(lo, hi, dtype=np.int64))}
                    if kept is not None:
                        cols.update(kept.take(hi - lo))
                    for col in scalar:
                        value = part[col] if col in part else _slice(col, data, lo, hi)
                        cols[col] = _column_block(col, specs[col], value, lo, hi, codes.get(col))
                    pending.append(pa.table([cols[c] for c in order], schema=schema))
                    rows, done = rows + hi - lo, hi
                    if rows >= ROW_GROUP:
                        writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP)
                        pending, rows = [], 0
                if done != n_docs:
                    raise ThresherError(f"label rows cover 0..{done - 1}, the table has {n_docs}")
                if pending or n_docs == 0:
                    writer.write_table(pa.concat_tables(pending) if pending else schema.empty_table())
            for col in list(codes):
                codes.pop(col).flush()
        for col in embedded:
            os.replace(data[col], _emb_path(path, col))
        atomic_write_json(path / MANIFEST, manifest)
        return LabelTable.open(path)


ROW_GROUP = 1 << 20  # rows per Parquet row group and per block of an in-memory write


def _arrow_type(kind: str) -> pa.DataType:
    return {"category": pa.dictionary(pa.int32(), pa.string()), "float": pa.float32(), "reason": pa.string()}[kind]


def _blocks(n: int, data: Mapping[str, Any], scalar: list[str], blocks) -> Iterable[tuple[int, int, Mapping[str, Any]]]:
    if blocks is not None:
        return blocks
    missing = [c for c in scalar if c not in data]
    if missing:
        raise ThresherError(f"no values for column(s) {missing}")
    for c in scalar:
        _check_len(c, data[c], n)
    return ((lo, min(lo + ROW_GROUP, n), {}) for lo in range(0, n, ROW_GROUP))


def _slice(col: str, data: Mapping[str, Any], lo: int, hi: int) -> Any:
    if col not in data:
        raise ThresherError(f"no values for column {col!r} in rows {lo}..{hi - 1}")
    return data[col][lo:hi]


def _column_block(col: str, spec: dict, values: Any, lo: int, hi: int, codes_out: np.ndarray | None) -> pa.Array:
    """Rows lo..hi-1 of one new column as an Arrow array (category codes also go to ``codes_out``)."""
    kind, n = spec["kind"], hi - lo
    if kind == "category":
        codes = np.asarray(values, dtype=np.int16)
        names = list(spec["categories"])
        _check_len(col, codes, n, lo)
        if codes.size and (codes.max(initial=-1) >= len(names) or codes.min(initial=0) < -1):
            raise ThresherError(f"column {col!r} has codes outside [-1, {len(names) - 1}]")
        codes_out[lo:hi] = codes
        idx = pa.array(codes.astype(np.int32), mask=codes < 0)
        return pa.DictionaryArray.from_arrays(idx, pa.array(names, pa.string()))
    if kind == "float":
        v = np.asarray(values, dtype=np.float32)
        _check_len(col, v, n, lo)
        return pa.array(v, mask=np.isnan(v))
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(list(values), pa.string())
    _check_len(col, arr, n, lo)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.cast(pa.string())


def _check_embedding(col: str, npy: Any, n: int) -> int:
    emb = np.load(npy, mmap_mode="r")
    if emb.shape[0] != n or emb.dtype != np.float16 or emb.ndim != 2:
        raise ThresherError(f"embedding {col!r} must be ({n}, d) float16, got {emb.shape} {emb.dtype}")
    return int(emb.shape[1])


class _RowStream:
    """Rows of a record-batch iterator handed out in blocks of any size, in order."""

    def __init__(self, batches: Iterable[pa.RecordBatch]):
        self._it, self._buf = iter(batches), []

    def take(self, n: int) -> dict[str, pa.Array]:
        have = sum(len(b) for b in self._buf)
        while have < n:
            b = next(self._it, None)
            if b is None:
                raise ThresherError("the label table's Parquet file has fewer rows than its manifest says")
            self._buf.append(b)
            have += len(b)
        t = pa.Table.from_batches(self._buf)
        head, rest = t.slice(0, n), t.slice(n)
        self._buf = rest.to_batches() if len(rest) else []
        return {c: head.column(c).combine_chunks() for c in head.column_names}


def _check_len(col: str, v: Any, n: int, lo: int | None = None) -> None:
    if len(v) != n:
        where = f"rows {lo}..{lo + n - 1} need" if lo is not None else "the table has"
        raise ThresherError(f"column {col!r} has {len(v)} rows, {where} {n}")


def _norm(prov: dict) -> str:
    return json.dumps(prov, sort_keys=True, default=str)


def _diff(a: dict, b: dict) -> str:
    fa, fb = _flat(json.loads(_norm(a))), _flat(json.loads(_norm(b)))
    keys = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))[:3]
    return ", ".join(f"{k}: {fa.get(k)!r} != {fb.get(k)!r}" for k in keys)


def _flat(d: Any, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    return out
