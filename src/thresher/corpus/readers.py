"""Read documents from JSONL (plain, .gz, .zst) and Parquet shards.

``iter_records(path, text_field, field_map)`` yields, in shard order, one item per record:

  Doc(index, text, meta, source_id)   a usable document; ``meta`` holds the mapped columns
  Excluded(index, reason, detail)     a record that cannot be used, with one of REASONS

``index`` is the record's position in the shard (JSONL: the 0-based line number; Parquet: the row),
so every document can be traced back to its source. Bad records are never fatal; a shard that cannot
be read at all (missing file, text or mapped field absent from the whole shard, corrupt
compression) raises ThresherError with a one-line message.

A field mapping maps an output column to a dotted source path: ``{"domain": "meta.redpajama_set_name"}``
reads ``record["meta"]["redpajama_set_name"]``; a step whose value is a JSON *string* (the ``meta``
column of RedPajama-style Parquet files) is parsed before descending into it.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union

from thresher.utils.errors import ThresherError

REASONS = ("malformed_json", "invalid_utf8", "empty_text", "missing_text", "text_not_string")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSED_SUFFIXES = (".gz", ".zst")
PARQUET_BATCH_ROWS = 4096
CHECK_RECORDS = 1000  # a field absent from every one of a shard's first N records is an error
_MISSING = object()


@dataclass(frozen=True)
class Doc:
    index: int
    text: str
    meta: dict = field(default_factory=dict)
    source_id: str | None = None


@dataclass(frozen=True)
class Excluded:
    index: int
    reason: str
    detail: str = ""


Item = Union[Doc, Excluded]


def shard_format(path: str | Path) -> str:
    """'jsonl' or 'parquet' from the file name; anything else is an error."""
    name = Path(path).name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    for comp in ("",) + COMPRESSED_SUFFIXES:
        if any(name.endswith(s + comp) for s in JSONL_SUFFIXES):
            return "jsonl"
    raise ThresherError(f"unsupported input format: {path} (expected .jsonl/.json[.gz|.zst] or .parquet)")


def is_shard(path: str | Path) -> bool:
    try:
        shard_format(path)
        return True
    except ThresherError:
        return False


def iter_records(
    path: str | Path, text_field: str = "text", field_map: dict[str, str] | None = None,
    batch_rows: int = PARQUET_BATCH_ROWS,
) -> Iterator[Item]:
    """Every record of one shard, as Doc or Excluded, in shard order."""
    path = Path(path)
    if not path.is_file():
        raise ThresherError(f"input file not found: {path}")
    mapper = _Mapper(path, text_field, dict(field_map or {}))
    if shard_format(path) == "parquet":
        return mapper.run(_parquet_rows(path, mapper, batch_rows))
    return mapper.run(_jsonl_rows(path))


def resolve(record: Any, dotted: str, cache: dict | None = None) -> Any:
    """record[a][b][c] for 'a.b.c'; a JSON-string step is parsed; _MISSING when absent anywhere.

    A key that itself contains dots is matched whole first (``{"a.b": 1}`` resolves 'a.b').
    ``cache`` keeps parsed JSON strings of top-level fields so several mapped paths parse once.
    """
    if isinstance(record, dict) and dotted in record:
        return record[dotted]
    head, _, rest = dotted.partition(".")
    if not isinstance(record, dict) or head not in record:
        return _MISSING
    value = record[head]
    if not rest:
        return value
    if isinstance(value, str):
        if cache is not None and head in cache:
            value = cache[head]
        else:
            try:
                value = json.loads(value)
            except ValueError:
                value = _MISSING
            if cache is not None:
                cache[head] = value
    return resolve(value, rest)


class _Mapper:
    """Turns raw records (dicts) into Doc/Excluded and checks that every field exists in the shard."""

    def __init__(self, path: Path, text_field: str, field_map: dict[str, str]):
        self.path, self.text_field, self.field_map = path, text_field, field_map
        self.seen = {text_field: 0, **{src: 0 for src in field_map.values()}}
        self.checked = 0  # parsed records looked at by the presence check
        self.done = False

    def run(self, rows: Iterator[tuple[int, Any]]) -> Iterator[Item]:
        for index, rec in rows:
            if isinstance(rec, Excluded):
                yield rec
            else:
                yield self.to_item(index, rec)
        self.check()

    def to_item(self, index: int, rec: dict) -> Item:
        cache: dict = {}
        text = resolve(rec, self.text_field, cache)
        meta = {col: resolve(rec, src, cache) for col, src in self.field_map.items()}
        if not self.done:
            self.count_seen(rec, text)
        if text is _MISSING or text is None:
            return Excluded(index, "missing_text")
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as e:
                return Excluded(index, "invalid_utf8", str(e)[:200])
        if not isinstance(text, str):
            return Excluded(index, "text_not_string", type(text).__name__)
        if not text.strip():
            return Excluded(index, "empty_text")
        sid = rec.get("id")
        meta = {k: (None if v is _MISSING else v) for k, v in meta.items()}
        return Doc(index, text, meta, None if sid is None else str(sid))

    def count_seen(self, rec: dict, text: Any) -> None:
        # Mapped paths are checked on their top-level field only (as a Parquet schema would be): a key
        # inside a JSON `meta` may rightly be absent from a whole shard (another domain) and reads null.
        self.checked += 1
        self.seen[self.text_field] += text is not _MISSING
        for src in self.field_map.values():
            self.seen[src] += src in rec or src.partition(".")[0] in rec
        if self.checked >= CHECK_RECORDS:
            self.check()

    def check(self) -> None:
        """Every field must appear in at least one of the first CHECK_RECORDS records (or all, if fewer)."""
        if self.done or self.checked == 0:
            return
        self.done = True
        absent = [f for f, n in self.seen.items() if n == 0]
        if absent:
            what = "text field" if absent[0] == self.text_field else "mapped field"
            raise ThresherError(f"{what} '{absent[0]}' not found in any of the first {self.checked} records of {self.path}")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, dict | Excluded) for each non-blank line; bytes are decoded strictly."""
    try:
        with _open_binary(path) as f:
            for i, raw in enumerate(f):
                if not raw.strip():
                    continue
                yield i, _parse_line(i, raw)
    except _read_errors() as e:
        raise ThresherError(f"cannot read {path}: {type(e).__name__}: {e}".splitlines()[0]) from None


def _read_errors() -> tuple:
    """Exceptions of a corrupt or truncated (compressed) file."""
    import zstandard

    return (OSError, EOFError, ValueError, zstandard.ZstdError)


def _parse_line(i: int, raw: bytes) -> Any:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Excluded(i, "invalid_utf8", str(e)[:200])
    try:
        rec = json.loads(line)
    except ValueError as e:
        return Excluded(i, "malformed_json", str(e)[:200])
    if not isinstance(rec, dict):
        return Excluded(i, "malformed_json", f"a JSON {type(rec).__name__}, not an object")
    if b"\\ud" in raw or b"\\uD" in raw:  # escaped lone surrogates decode to a str that is not UTF-8
        try:
            json.dumps(rec, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            return Excluded(i, "invalid_utf8", str(e)[:200])
    return rec


def _open_binary(path: Path):
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        return io.BufferedReader(_ZstdReader(path), buffer_size=1 << 20)
    return open(path, "rb")


class _ZstdReader(io.RawIOBase):
    """The decompressed bytes of a .zst file (one or more frames); a file that ends inside a frame raises
    EOFError, as gzip does. (zstandard's stream_reader just stops there: a truncated shard would read as
    its first part, silently.)"""

    CHUNK = 1 << 17  # compressed bytes read from the file at a time
    # compressed bytes decompressed at a time: zstd expands a byte 32768-fold at most (an RLE block), so one
    # step holds at most 32 MB however compressible the shard (a whole 128 KB read of a repetitive shard at
    # once decompressed to gigabytes)
    FEED = 1 << 10
    OUT = 1 << 20  # decompressed bytes gathered per fill (fewer, larger reads for the buffered reader above)

    def __init__(self, path: Path):
        import zstandard

        self._file = open(path, "rb")
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = None  # the decompressor of the frame being read; None between frames
        self._in = memoryview(b"")  # compressed bytes read, not yet decompressed
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._out:
            if not self._fill():
                return 0
        n = min(len(b), len(self._out))
        b[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _fill(self) -> bool:
        """Decompress FEED-byte pieces until about OUT bytes are out (or the input ends) into self._out;
        False at the end of the file."""
        out, size = [], 0
        while size < self.OUT:
            if not self._in:
                self._in = memoryview(self._file.read(self.CHUNK))
                if not self._in:
                    if self._obj is not None:
                        raise EOFError("compressed file ended before the end of a zstd frame (truncated?)")
                    break
            data, self._in = self._in[: self.FEED], self._in[self.FEED :]
            while data:
                if self._obj is None:
                    self._obj = self._dctx.decompressobj()
                piece = self._obj.decompress(data)
                out.append(piece)
                size += len(piece)
                data = b""
                if self._obj.eof:  # frame done; what follows it starts the next frame
                    data, self._obj = self._obj.unused_data, None
        self._out = memoryview(b"".join(out))
        return size > 0

    def close(self) -> None:
        self._file.close()
        super().close()


def _parquet_rows(path: Path, mapper: _Mapper, batch_rows: int) -> Iterator[tuple[int, Any]]:
    """(row number, dict) read in record batches of ``batch_rows`` (bounded memory)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError on a non-Parquet file
        raise ThresherError(f"cannot read Parquet file {path}: {e}".splitlines()[0]) from None
    columns = _parquet_columns(path, pf.schema_arrow, mapper)
    index = 0
    batches = pf.iter_batches(batch_size=batch_rows, columns=columns)
    while True:
        try:  # a corrupt page or row group past the footer fails here, mid-shard
            batch = next(batches, None)
        except Exception as e:  # pyarrow raises OSError/ArrowInvalid
            raise ThresherError(f"cannot read Parquet file {path} after row {index}: "
                                f"{type(e).__name__}: {e}".splitlines()[0]) from None
        if batch is None:
            return
        for row in batch.to_pylist():
            yield index, row
            index += 1


def _parquet_columns(path: Path, schema, mapper: _Mapper) -> list[str]:
    """Columns to read; the text column and the head of every mapped path must be in the schema."""
    import pyarrow as pa

    names = set(schema.names)
    wanted = [mapper.text_field] + list(mapper.field_map.values())
    for src in wanted:
        if src not in names and src.partition(".")[0] not in names:
            what = "text field" if src == mapper.text_field else "mapped field"
            raise ThresherError(f"{what} '{src}' not in the columns of {path} (columns: {', '.join(schema.names)})")
    if mapper.text_field in names:
        t = schema.field(mapper.text_field).type
        kinds = ("is_string", "is_large_string", "is_string_view", "is_binary", "is_large_binary")
        if not any(getattr(pa.types, k, lambda _: False)(t) for k in kinds):
            raise ThresherError(f"text field '{mapper.text_field}' of {path} has type {t}, expected a string")
    cols = {c if c in names else c.partition(".")[0] for c in wanted}
    if "id" in names:
        cols.add("id")
    return [n for n in schema.names if n in cols]
