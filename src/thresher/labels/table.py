"""The label table: the agents' memory, one row per document keyed by doc_id.

Layout of a table directory::

    labels.parquet          doc_id + every scalar column (categories as dictionary strings, null = missing);
                            the manifest below is also in the Parquet schema metadata (key b"thresher")
    <col>.codes.npy         int16 codes of each categorical column (memory-mappable; -1 = missing)
    <col>.npy               float16 (N, d) embedding columns (memory-mappable; NaN row = missing)
    table.json              manifest: n_docs and per column {kind, categories, provenance}; written last

Every file is replaced atomically. A column may only be replaced by one computed under the same
provenance (else SettingsMismatchError), so results of different settings never mix silently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher.utils.errors import SettingsMismatchError, ThresherError
from thresher.utils.io import atomic_path, atomic_write_json, read_json

MANIFEST, PARQUET = "table.json", "labels.parquet"


def _codes_path(d: Path, col: str) -> Path:
    return d / f"{col}.codes.npy"


def _emb_path(d: Path, col: str) -> Path:
    return d / f"{col}.npy"


class LabelTable:
    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = path, manifest

    @classmethod
    def open(cls, path: str | os.PathLike) -> "LabelTable":
        path = Path(path)
        if not (path / MANIFEST).exists():
            raise ThresherError(f"no label table at {path} (missing {MANIFEST}); run the labelling first")
        return cls(path, read_json(path / MANIFEST))

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        return (Path(path) / MANIFEST).exists()

    # ------------------------------------------------------------------ reading
    @property
    def n_docs(self) -> int:
        return int(self.manifest["n_docs"])

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

    def to_agent_labels(self, columns: list[str] | dict[str, str] | None = None):
        """agents.base.Labels of categorical columns; a dict {agent name: column} renames them."""
        from thresher.agents.base import Labels

        cols = columns or [c for c in self.columns if self.kind(c) == "category"]
        names = cols if isinstance(cols, dict) else {c: c for c in cols}
        return Labels(codes={n: np.asarray(self.codes(c)) for n, c in names.items()},
                      categories={n: self.categories(c) for n, c in names.items()})

    # ------------------------------------------------------------------ writing
    @staticmethod
    def check_settings(path: str | os.PathLike, provenance: Mapping[str, dict], n_docs: int | None = None) -> list[str]:
        """Columns already present with exactly this provenance; raises if any differs."""
        path = Path(path)
        if not LabelTable.exists(path):
            return []
        t = LabelTable.open(path)
        if n_docs is not None and t.n_docs != n_docs:
            raise SettingsMismatchError(f"label table {path} has {t.n_docs} docs, the source has {n_docs}")
        same = []
        for col, prov in provenance.items():
            if col in t.manifest["columns"]:
                if _norm(t.provenance(col)) != _norm(prov):
                    raise SettingsMismatchError(
                        f"column {col!r} in {path} was computed under other settings "
                        f"({_diff(t.provenance(col), prov)}); write to a new table directory")
                same.append(col)
        return same

    @staticmethod
    def write(path: str | os.PathLike, n_docs: int, data: Mapping[str, Any], specs: Mapping[str, dict]) -> "LabelTable":
        """Add/replace columns. ``data[col]``: category -> int16 codes, float -> float32, reason ->
        pyarrow/list of str|None, embedding -> path of a finished (N, d) float16 .npy (moved in)."""
        path = Path(path)
        LabelTable.check_settings(path, {c: s["provenance"] for c, s in specs.items()}, n_docs)
        old = LabelTable.open(path) if LabelTable.exists(path) else None
        cols = {"doc_id": pa.array(np.arange(n_docs, dtype=np.int64))}
        manifest = {"version": 1, "n_docs": n_docs, "columns": dict(old.manifest["columns"]) if old else {}}
        if old:
            keep = [c for c in old.columns if c not in specs and old.kind(c) != "embedding"]
            cols.update({c: a for c, a in zip(keep, old.arrow(keep).select(keep).columns)})
        for col, spec in specs.items():
            manifest["columns"][col] = _write_column(path, col, spec, data[col], n_docs, cols)
        order = ["doc_id"] + [c for c in manifest["columns"] if c in cols]
        table = pa.table({c: cols[c] for c in order})
        table = table.replace_schema_metadata({b"thresher": json.dumps(manifest, default=str).encode()})
        with atomic_path(path / PARQUET) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        atomic_write_json(path / MANIFEST, manifest)
        return LabelTable.open(path)


def _write_column(path: Path, col: str, spec: dict, values: Any, n: int, cols: dict) -> dict:
    """Write one column's side files, put its Parquet array in ``cols``; return its manifest entry."""
    kind, entry = spec["kind"], {"kind": spec["kind"], "provenance": spec["provenance"]}
    if kind == "category":
        codes = np.asarray(values, dtype=np.int16)
        names = list(spec["categories"])
        _check_len(col, codes, n)
        if codes.size and (codes.max(initial=-1) >= len(names) or codes.min(initial=0) < -1):
            raise ThresherError(f"column {col!r} has codes outside [-1, {len(names) - 1}]")
        with atomic_path(_codes_path(path, col)) as tmp, open(tmp, "wb") as f:
            np.save(f, codes)
        idx = pa.array(codes.astype(np.int32), mask=codes < 0)
        cols[col] = pa.DictionaryArray.from_arrays(idx, pa.array(names, pa.string()))
        entry["categories"] = names
    elif kind == "float":
        v = np.asarray(values, dtype=np.float32)
        _check_len(col, v, n)
        cols[col] = pa.array(v, mask=np.isnan(v))
    elif kind == "reason":
        arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(list(values), pa.string())
        _check_len(col, arr, n)
        cols[col] = arr
    elif kind == "embedding":
        emb = np.load(values, mmap_mode="r")
        if emb.shape[0] != n or emb.dtype != np.float16:
            raise ThresherError(f"embedding {col!r} must be ({n}, d) float16, got {emb.shape} {emb.dtype}")
        entry["dim"] = int(emb.shape[1])
        del emb
        os.replace(values, _emb_path(path, col))
    else:
        raise ThresherError(f"unknown column kind {kind!r} for {col!r}")
    return entry


def _check_len(col: str, v: Any, n: int) -> None:
    if len(v) != n:
        raise ThresherError(f"column {col!r} has {len(v)} rows, the table has {n}")


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
