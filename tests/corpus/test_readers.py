"""Readers: every format yields the records written; bad records are excluded with a reason."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus_helpers import corpus, make_records, write_jsonl, write_parquet  # noqa: F401

from thresher.corpus.readers import Doc, Excluded, iter_records, resolve
from thresher.utils.errors import ThresherError


def test_every_format_yields_the_written_records(corpus):
    fmap = {"domain": "domain", "set": "meta.set", "k": "meta.deep.k"}
    for shard, recs in zip(corpus["shards"], corpus["records"]):
        got = list(iter_records(shard, field_map=fmap))
        assert all(isinstance(r, Doc) for r in got)
        assert [r.index for r in got] == list(range(len(recs)))
        assert [r.text for r in got] == [r["text"] for r in recs]
        assert [r.source_id for r in got] == [r["id"] for r in recs]
        # JSONL: meta is a nested object; Parquet: meta is a JSON string, parsed for the dotted path
        assert [r.meta for r in got] == [
            {"domain": r["domain"], "set": r["meta"]["set"], "k": r["meta"]["deep"]["k"]} for r in recs
        ]


def test_resolve_dotted_paths():
    rec = {"a": {"b": {"c": 1}}, "s": json.dumps({"x": {"y": "z"}}), "d.e": 5, "bad": "{not json"}
    assert resolve(rec, "a.b.c") == 1
    assert resolve(rec, "s.x.y") == "z"
    assert resolve(rec, "d.e") == 5  # a key holding a dot is matched whole
    assert resolve(rec, "a.b.nope") is resolve(rec, "bad.x") is resolve(rec, "zz")  # all _MISSING
    assert resolve(rec, "a") == {"b": {"c": 1}}


def test_bad_jsonl_lines_are_excluded_with_reasons(tmp_path):
    lines = [
        b'{"text": "good one", "id": 7}',
        b'{"text": "broken"',
        b'{"text": "bad \xff\xfe bytes"}',
        b'{"text": "   "}',
        b'{"other": "no text"}',
        b'{"text": 12}',
        b"[1, 2]",
        b'{"text": "lone \\ud800 surrogate"}',
        b"",
        b'{"text": null}',
        b'{"text": "pair \\ud83d\\ude00 is fine"}',
    ]
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    got = {r.index: r for r in iter_records(path)}
    reasons = {i: (r.reason if isinstance(r, Excluded) else "ok") for i, r in got.items()}
    assert reasons == {0: "ok", 1: "malformed_json", 2: "invalid_utf8", 3: "empty_text", 4: "missing_text",
                       5: "text_not_string", 6: "malformed_json", 7: "invalid_utf8", 9: "missing_text", 10: "ok"}
    assert got[0].source_id == "7" and got[10].text == "pair \U0001F600 is fine"


def test_parquet_nulls_and_binary_text(tmp_path):
    t = pa.table({"text": pa.array([b"ok", None, b"\xff bad", b""], pa.binary()), "id": [1, 2, 3, 4]})
    pq.write_table(t, tmp_path / "b.parquet")
    got = [(r.index, getattr(r, "reason", "ok")) for r in iter_records(tmp_path / "b.parquet", batch_rows=3)]
    assert got == [(0, "ok"), (1, "missing_text"), (2, "invalid_utf8"), (3, "empty_text")]


def _one_line_error(fn, *needles):
    with pytest.raises(ThresherError) as e:
        list(fn())
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


def test_clear_errors(tmp_path):
    recs = make_records(5, 0, "x")
    j, p = write_jsonl(tmp_path / "x.jsonl", recs), write_parquet(tmp_path / "x.parquet", recs)
    _one_line_error(lambda: iter_records(tmp_path / "nope.jsonl"), "input file not found", "nope.jsonl")
    for shard in (j, p):
        _one_line_error(lambda: iter_records(shard, text_field="body"), "text field 'body'", shard.name)
        _one_line_error(lambda: iter_records(shard, field_map={"d": "dom"}), "mapped field 'dom'", shard.name)
    (tmp_path / "x.csv").write_text("a,b\n")
    _one_line_error(lambda: iter_records(tmp_path / "x.csv"), "unsupported input format")
    (tmp_path / "t.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n' * 50)[:-12])
    _one_line_error(lambda: iter_records(tmp_path / "t.jsonl.gz"), "cannot read", "t.jsonl.gz")
    (tmp_path / "z.jsonl.zst").write_bytes(b"not zstd data" * 10)
    _one_line_error(lambda: iter_records(tmp_path / "z.jsonl.zst"), "cannot read", "z.jsonl.zst")


def test_missing_nested_key_reads_null(tmp_path):
    # a key inside meta may be absent from a whole shard (another domain): null, not an error
    recs = make_records(4, 0, "x")
    got = list(iter_records(write_parquet(tmp_path / "x.parquet", recs), field_map={"q": "meta.quality"}))
    assert [r.meta for r in got] == [{"q": None}] * 4


def test_truncated_zst_is_an_error_not_a_shorter_shard(tmp_path):
    # zstandard's stream_reader ends quietly inside a cut frame: the shard would read as its first part
    import zstandard

    lines = [json.dumps({"text": f"document {i} " + "word " * 40}).encode() + b"\n" for i in range(2000)]
    whole = zstandard.ZstdCompressor(level=3).compress(b"".join(lines))
    (tmp_path / "t.jsonl.zst").write_bytes(whole[: len(whole) // 2])
    _one_line_error(lambda: iter_records(tmp_path / "t.jsonl.zst"), "cannot read", "t.jsonl.zst", "EOFError")
    # frames back to back (concatenated .zst files) still read whole
    c = zstandard.ZstdCompressor(level=3)
    (tmp_path / "m.jsonl.zst").write_bytes(c.compress(b"".join(lines[:700])) + c.compress(b"".join(lines[700:])))
    got = list(iter_records(tmp_path / "m.jsonl.zst"))
    assert all(isinstance(r, Doc) for r in got) and len(got) == 2000


def test_corrupt_parquet_page_is_a_one_line_error(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": [f"document {i} words here" for i in range(20000)]}), path, row_group_size=2000)
    data = bytearray(path.read_bytes())
    data[len(data) // 3: len(data) // 3 + 2000] = b"A" * 2000  # a row group in the middle; the footer is intact
    path.write_bytes(bytes(data))
    _one_line_error(lambda: iter_records(path), "cannot read Parquet file", "c.parquet")


def test_a_highly_compressible_zst_is_read_in_bounded_pieces(tmp_path):
    """A repetitive shard compresses ~10000-fold: a 128 KB read of it decompressed at once held the whole
    shard in memory (per ingest worker). The reader decompresses FEED compressed bytes at a time."""
    import zstandard

    from thresher.corpus.readers import _ZstdReader

    line = json.dumps({"text": "the same cookie banner " * 40}).encode() + b"\n"
    n = (64 << 20) // len(line)
    c = zstandard.ZstdCompressor(level=3)
    (tmp_path / "r.jsonl.zst").write_bytes(c.compress(line * n) + c.compress(line * 3))
    r = _ZstdReader(tmp_path / "r.jsonl.zst")
    buf, total, most = bytearray(1 << 20), 0, 0
    while (k := r.readinto(buf)):
        total += k
        most = max(most, r._out.nbytes + k)
    r.close()
    assert total == len(line) * (n + 3)
    assert most <= 32 << 20  # never the whole 64 MB shard at once
