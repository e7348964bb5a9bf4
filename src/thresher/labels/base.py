"""The labeler contract and the document sources labelers read from.

A Labeler turns a batch of documents into label columns. A batch is a dict of equal-length lists:
``doc_id`` (int64 array) and ``text`` always, plus the metadata columns the labeler names in
``needs``. ``label`` returns one entry per declared column:

  kind "category"  -> int16 codes into ``categories[col]`` (-1 = missing)
  kind "float"     -> float32 (NaN = missing)
  kind "embedding" -> (B, d) float16 (a NaN row = missing)
  kind "reason"    -> list[str | None]: why a row is missing (None when labelled)

Labelers load their models lazily in ``setup()`` so they pickle cheaply to worker processes and
Ray actors; ``provenance()`` must not load a model (it is checked before any work starts).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from thresher.utils.errors import ThresherError

KINDS = ("category", "float", "embedding", "reason")


class Labeler(ABC):
    name: str = "labeler"
    columns: dict[str, str] = {}  # column -> kind
    categories: dict[str, list[str]] = {}  # category column -> names (fixed before any batch)
    needs: tuple[str, ...] = ()  # metadata columns read besides doc_id and text

    def setup(self) -> None:
        """Load models (called once per worker before the first batch)."""

    def fetch(self) -> None:
        """Make what ``setup`` loads available before any shard starts (a Hub model: into the local cache),
        or raise a ThresherError; called once, in the driver, before the settings are fingerprinted."""

    @abstractmethod
    def label(self, batch: dict[str, list]) -> dict[str, np.ndarray | list]: ...

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Everything that changes the labels (model id/version, thresholds, seeds)."""

    def provenance(self) -> dict[str, Any]:
        return {"labeler": type(self).__name__, "name": self.name, "settings": self.settings()}


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def screen_texts(texts: Sequence[Any], max_chars: int | None = None) -> list[str | None]:
    """Why each text cannot be labelled: 'empty', 'too_long', 'invalid_chars', or None (fine)."""
    return [_screen(t, max_chars) for t in texts]


def _screen(t: Any, max_chars: int | None) -> str | None:
    if not isinstance(t, str) or not t.strip():
        return "empty"
    if max_chars is not None and len(t) > max_chars:
        return "too_long"
    try:
        t.encode("utf-8")  # lone surrogates fail here
    except UnicodeEncodeError:
        return "invalid_chars"
    if "\x00" in t:
        return "invalid_chars"
    return None


def ok_indices(reasons: Sequence[str | None]) -> np.ndarray:
    return np.array([i for i, r in enumerate(reasons) if r is None], dtype=np.int64)


def fill_float(n: int, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.full(n, np.nan, dtype=np.float32)
    out[idx] = values
    return out


def fill_codes(n: int, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.full(n, -1, dtype=np.int16)
    out[idx] = values
    return out


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_version(path_or_id: str) -> dict[str, Any]:
    """A model's identity without loading it: a local dir -> sha256 of its files; a Hub id -> the
    cached snapshot commit (None when not cached)."""
    p = Path(path_or_id)
    if p.exists():
        h = hashlib.sha256()
        files = sorted(f for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file() and f.name[0] != ".")
        for f in files:
            h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        return {"model": str(p.resolve()), "sha256": h.hexdigest()}
    try:
        from huggingface_hub import try_to_load_from_cache

        cfg = try_to_load_from_cache(path_or_id, "config.json")
        commit = Path(cfg).parent.name if isinstance(cfg, str) else None
    except Exception:  # noqa: BLE001 - no hub cache is fine; identity is then the id alone
        commit = None
    return {"model": path_or_id, "commit": commit}


# what a snapshot of a Hub repo need not fetch: the exports to other runtimes that many model repos carry
# beside the PyTorch weights (BAAI/bge-large-en-v1.5: onnx/ as large again as the model; sentence-transformers
# repos: onnx/, openvino/, TF, Flax and Rust weights). Transformers and sentence-transformers load none of them.
HUB_SKIP = ["onnx/*", "*.onnx", "openvino/*", "*.h5", "*.msgpack", "*.ot", "*.tflite", "coreml/*", "*.mlmodel",
            "*.gguf"]


def ensure_model(path_or_id: str, hub_ids: Sequence[str] = (), setting: str = "") -> None:
    """A local path, a Hub id already in the Hugging Face cache, or a Hub id downloaded into it now; else a
    one-line ThresherError, before any labelling starts (a worker would otherwise fail in its first shard,
    and the settings would be fingerprinted without the snapshot commit the model then gets). ``hub_ids``:
    the repos the loader tries for this name, in its order (default: the name itself). ``setting``: the
    LabelConfig key that names the model, so the error says which key to point at a local folder."""
    import os

    if Path(path_or_id).exists():
        return
    repos = list(hub_ids) or [path_or_id]
    try:
        from huggingface_hub import snapshot_download, try_to_load_from_cache

        if any(isinstance(try_to_load_from_cache(r, "config.json"), str) for r in repos):
            return
    except Exception:  # noqa: BLE001 - not a valid repo id: the message below says what it is not
        pass
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
                  for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    what = f"model {path_or_id!r} is not a local path and not in the Hugging Face cache"
    if offline:
        where = f" (--set {setting}=PATH)" if setting else ""
        raise ThresherError(f"{what} (HF_HUB_OFFLINE is set): give a local folder{where} or download it first")
    errors = []
    for repo in repos:
        try:
            snapshot_download(repo, ignore_patterns=HUB_SKIP)
            return
        except Exception as e:  # noqa: BLE001 - network, auth, no such repo: all mean "cannot get it"
            errors.append(f"{repo}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    raise ThresherError(f"{what}, and downloading it failed ({'; '.join(errors)}); without network give a "
                        "local folder")


def sentence_transformer_repos(name: str) -> list[str]:
    """The Hub repos sentence-transformers loads a model name from: a bare name is looked up under the
    sentence-transformers organisation first (its loader's rule), then as given."""
    return [f"sentence-transformers/{name}", name] if "/" not in name else [name]


# ----------------------------------------------------------------------------- document sources


class DocumentSource(Protocol):
    """What the executors read: docs 0..n_docs-1, their texts and metadata columns."""

    @property
    def n_docs(self) -> int: ...

    def texts(self, ids: np.ndarray) -> list[str]: ...

    def metadata(self, ids: np.ndarray, columns: Sequence[str]) -> dict[str, list]: ...


class InMemorySource:
    def __init__(self, texts: Sequence[str], metadata: dict[str, Sequence] | None = None):
        self._texts = list(texts)
        self._meta = {k: list(v) for k, v in (metadata or {}).items()}
        for k, v in self._meta.items():
            if len(v) != len(self._texts):
                raise ThresherError(f"metadata column {k!r} has {len(v)} values for {len(self._texts)} texts")

    @property
    def n_docs(self) -> int:
        return len(self._texts)

    def texts(self, ids: np.ndarray) -> list[str]:
        return [self._texts[i] for i in ids]

    def metadata(self, ids: np.ndarray, columns: Sequence[str]) -> dict[str, list]:
        missing = [c for c in columns if c not in self._meta]
        if missing:
            raise ThresherError(f"source has no metadata column(s) {missing}; it has {sorted(self._meta)}")
        return {c: [self._meta[c][i] for i in ids] for c in columns}


class TableSource:
    """Texts and metadata held in a pyarrow table (doc_id = row number); loaded lazily per process."""

    def __init__(self, text_column: str = "text"):
        self.text_column = text_column
        self._table = None

    def _load(self):  # -> pyarrow.Table
        raise NotImplementedError

    @property
    def table(self):
        if self._table is None:
            self._table = self._load()
        return self._table

    def __getstate__(self):
        return {**self.__dict__, "_table": None}  # workers reload instead of pickling the data

    @property
    def n_docs(self) -> int:
        return self.table.num_rows

    def texts(self, ids: np.ndarray) -> list[str]:
        return self.table.column(self.text_column).take(np.asarray(ids)).to_pylist()

    def metadata(self, ids: np.ndarray, columns: Sequence[str]) -> dict[str, list]:
        missing = [c for c in columns if c not in self.table.column_names]
        if missing:
            raise ThresherError(f"source has no metadata column(s) {missing}; it has {self.table.column_names}")
        return {c: self.table.column(c).take(np.asarray(ids)).to_pylist() for c in columns}


class ParquetSource(TableSource):
    """Parquet files (e.g. the pool: id, text, domain, meta) read in sorted order; doc_id = row order.
    ``limit`` keeps the first N rows; ``per_file_limit`` the first N rows of every file (a sample
    that covers every domain of the pool)."""

    def __init__(self, paths: str | Path | Sequence[str | Path], text_column: str = "text", limit: int | None = None,
                 per_file_limit: int | None = None):
        super().__init__(text_column)
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        files: list[Path] = []
        for p in map(Path, paths):
            files += sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
        if not files or not all(f.exists() for f in files):
            raise ThresherError(f"no parquet files found at {paths}")
        self.files, self.limit, self.per_file_limit = [str(f) for f in files], limit, per_file_limit

    def _load(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = [pq.read_table(f) for f in self.files]
        if self.per_file_limit is not None:
            parts = [p.slice(0, self.per_file_limit) for p in parts]
        t = pa.concat_tables(parts, promote_options="default")
        return t.slice(0, self.limit) if self.limit is not None else t


class TokenStoreSource(TableSource):
    """Adapter for corpus.store.TokenStore (docs.parquet metadata + ``texts(ids)``)."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = str(path)
        self._store = None

    @property
    def store(self):
        if self._store is None:
            from thresher.corpus.store import TokenStore  # written in parallel; imported lazily

            self._store = TokenStore.open(self.path)
        return self._store

    def __getstate__(self):
        return {**self.__dict__, "_table": None, "_store": None}

    def metadata(self, ids: np.ndarray, columns: Sequence[str]) -> dict[str, list]:
        try:
            t = self.store.table(list(columns))
        except KeyError as e:
            raise ThresherError(f"token store {self.path} has no metadata column {e}") from None
        return {c: t.column(c).take(np.asarray(ids)).to_pylist() for c in columns}

    @property
    def n_docs(self) -> int:
        return int(self.store.n_docs)

    @property
    def identity(self) -> str:
        """The store's fingerprint: the label table records it, and a run refuses a table of another store."""
        return self.store.fingerprint

    def texts(self, ids: np.ndarray) -> list[str]:
        return list(self.store.texts(np.asarray(ids)))
