"""The token store: a tokenized corpus on disk, memory-mapped for O(1) random access to any document.

Layout of a store folder (written by ``thresher.corpus.ingest``):

  tokens.bin        every document's tokens back to back, one flat array: uint16 when
                    vocab_size <= 65535, else uint32. No EOS between documents (the trainer adds it).
  offsets.npy       int64 (n_docs + 1,): document i is tokens[offsets[i]:offsets[i+1]]
  lengths.npy       int32 (n_docs,) tokens per document (int64 if one has 2^31 or more): memory-mapped by
                    every process, so the ranks of a node share it (a store without it, ingested
                    before it existed, gets it written on first use where the folder is writable)
  lengths.json      size and mtime of the offsets.npy that lengths.npy was computed from
  docs.parquet      one row per document, in doc_id order: doc_id int64 (0..N-1), source_shard str,
                    source_index int64 (record index in that shard), source_id str|null,
                    n_tokens int64, then the mapped metadata columns
  store.json        dtype, vocab_size, n_docs, n_tokens, eos_id, pad_id, tokenizer_sha256,
                    text_field, field_map, inputs; written last, so its presence marks a whole store
  tokenizer.json    the tokenizer that made the tokens
  exclusions.jsonl  one line per excluded record: shard, index, reason, detail
  stats.json        counts: documents, tokens, exclusions per reason, per shard, timing
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from thresher.utils.errors import ThresherError
from thresher.utils.io import read_json

STORE_VERSION = 1
RESERVED_COLUMNS = ("doc_id", "source_shard", "source_index", "source_id", "n_tokens")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


class TokenStore:
    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = Path(path), meta
        self.dtype = np.dtype(meta["dtype"])

    @classmethod
    def open(cls, path: str | Path) -> "TokenStore":
        path = Path(path)
        if not (path / "store.json").is_file():
            hint = " (an unfinished ingest: rerun it to resume)" if (path / "parts").is_dir() else ""
            raise ThresherError(f"not a token store: {path} has no store.json{hint}")
        meta = read_json(path / "store.json")
        if meta.get("version") != STORE_VERSION:
            raise ThresherError(f"token store {path} has version {meta.get('version')}, expected {STORE_VERSION}")
        return cls(path, meta)

    def __len__(self) -> int:
        return self.n_docs

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r}, n_docs={self.n_docs}, n_tokens={self.n_tokens}, dtype={self.dtype})"

    @property
    def n_docs(self) -> int:
        return int(self.meta["n_docs"])

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.meta["eos_id"])

    @property
    def pad_id(self) -> int:
        return int(self.meta["pad_id"])

    @cached_property
    def offsets(self) -> np.ndarray:
        """int64 (n_docs + 1,)."""
        return np.load(self.path / "offsets.npy", mmap_mode="r")

    @cached_property
    def lengths(self) -> np.ndarray:
        """(n_docs,) tokens per document: int32 (a sum or cumsum of it is int64 in numpy), int64 only for a
        document of 2^31 tokens or more. Memory-mapped from ``lengths.npy`` (read-only, shared by the
        processes of a machine through the page cache) when ``lengths.json`` says it was computed from the
        current ``offsets.npy``; otherwise (no file, an older store, offsets changed since, unreadable) they
        are recomputed and written (where the folder is writable) or kept in memory."""
        path = self.path / "lengths.npy"
        if path.is_file() and _lengths_stamp(self.path) == _read_stamp(self.path):
            try:
                lengths = np.load(path, mmap_mode="r")
            except Exception:  # noqa: BLE001 - any unreadable file is rebuilt from the offsets
                lengths = None
            if isinstance(lengths, np.ndarray) and lengths.shape == (self.n_docs,) and lengths.dtype.kind in "iu":
                return lengths
        lengths = lengths_from_offsets(self.offsets)
        try:
            write_lengths(path, lengths)
        except OSError:  # a read-only store: keep them in memory
            return lengths
        return np.load(path, mmap_mode="r")

    @cached_property
    def fingerprint(self) -> str:
        """What identifies this corpus's documents, for a label table to record and a run to check: the
        tokenizer, the counts, and 33 evenly spaced blocks of 4096 document offsets (1 MB read however
        large the store), so the same files ingested in another order or another corpus of the same size
        differ; a copy of the store on another path or machine does not."""
        import hashlib

        h = hashlib.sha256(repr((self.meta.get("tokenizer_sha256"), self.n_docs, self.n_tokens, str(self.dtype))).encode())
        offsets, block = self.offsets, 4096
        for start in np.linspace(0, max(len(offsets) - block, 0), 33).astype(np.int64):
            h.update(np.ascontiguousarray(offsets[start : start + block]).tobytes())
        return "store-sha256:" + h.hexdigest()[:32]

    @cached_property
    def tokens(self) -> np.ndarray:
        """The flat token array, memory-mapped read-only (n_tokens,)."""
        if self.n_tokens == 0:  # mmap cannot map an empty file
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.path / "tokens.bin", dtype=self.dtype, mode="r", shape=(self.n_tokens,))

    def doc(self, i: int) -> np.ndarray:
        """Tokens of document i: a view into the memmap, O(1)."""
        i = int(i)
        if not 0 <= i < self.n_docs:
            raise IndexError(f"doc id {i} out of range [0, {self.n_docs})")
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def docs(self, ids: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        return [self.doc(i) for i in np.asarray(ids).reshape(-1)]

    def table(self, columns: Sequence[str] | None = None):
        """docs.parquet as a pyarrow.Table (all columns, or the named ones), row i = doc i."""
        import pyarrow.parquet as pq

        if columns is not None:
            missing = [c for c in columns if c not in self.columns]
            if missing:
                raise ThresherError(
                    f"token store {self.path} has no column '{missing[0]}' (columns: {', '.join(self.columns)})"
                )
            columns = list(columns)
        return pq.read_table(self.path / "docs.parquet", columns=columns)

    @cached_property
    def columns(self) -> list[str]:
        import pyarrow.parquet as pq

        return list(pq.read_schema(self.path / "docs.parquet").names)

    def column(self, name: str) -> np.ndarray:
        """One docs.parquet column as a numpy array: numeric dtype when it has no nulls, else an
        object array with None (so a nullable int column does not silently turn into float NaN)."""
        import pyarrow as pa

        col = self.table([name]).column(0)
        if col.null_count and not pa.types.is_floating(col.type):
            return np.array(col.to_pylist(), dtype=object)
        return col.to_numpy(zero_copy_only=False)

    def tokenizer(self):
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.path / "tokenizer.json"))

    @cached_property
    def _tok(self):
        return self.tokenizer()

    def texts(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        """Decoded text of the given documents (special tokens kept)."""
        seqs = [d.tolist() for d in self.docs(ids)]
        return self._tok.decode_batch(seqs, skip_special_tokens=False)


def lengths_from_offsets(offsets: np.ndarray) -> np.ndarray:
    """Tokens per document from the offsets: int32 unless a document has 2^31 tokens or more."""
    return narrow_lengths(np.diff(np.asarray(offsets)))


def narrow_lengths(lengths: np.ndarray) -> np.ndarray:
    """``lengths`` as int32 unless a document has 2^31 tokens or more (then int64)."""
    lengths = np.asarray(lengths)
    if lengths.size and lengths.max() >= 2**31:
        return lengths.astype(np.int64, copy=False)
    return lengths.astype(np.int32)


def write_lengths(path: Path, lengths: np.ndarray) -> None:
    """``lengths.npy`` written atomically (a temporary file renamed; concurrent writers write the same bytes),
    then ``lengths.json``: the size and mtime of the ``offsets.npy`` it was computed from. A store whose
    offsets changed after (a re-ingest by an older thresher, offsets copied in) no longer matches the
    stamp, and its lengths are recomputed."""
    from thresher.utils.io import atomic_path, atomic_write_json

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, lengths)
    atomic_write_json(path.parent / "lengths.json", _lengths_stamp(path.parent))


def _lengths_stamp(store: Path) -> dict:
    st = (store / "offsets.npy").stat()
    return {"offsets_size": st.st_size, "offsets_mtime_ns": st.st_mtime_ns}


def _read_stamp(store: Path) -> dict | None:
    try:
        return read_json(store / "lengths.json")
    except Exception:  # noqa: BLE001 - a missing or unreadable stamp: recompute
        return None
