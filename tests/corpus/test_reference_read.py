"""Reading reference-task files: compressed JSONL, bad lines skipped and counted, clear errors."""

from __future__ import annotations

import gzip

import pytest
import zstandard

from thresher.corpus.reference import read_reference
from thresher.utils.errors import ThresherError

LINES = [b'{"context": "a b", "continuation": " c"}', b"not json", "{\"context\": \"\xff\", \"continuation\": \"x\"}".encode("latin-1"),
         b'{"foo": 1}', b"[1, 2]", b"", b'{"until_last": "d e", "last_word": "f"}']
DATA = b"\n".join(LINES) + b"\n"


@pytest.mark.parametrize("name, data", [("t.jsonl", DATA), ("t.jsonl.gz", gzip.compress(DATA)),
                                        ("t.jsonl.zst", zstandard.ZstdCompressor().compress(DATA))])
def test_bad_lines_are_skipped_and_counted_once(tmp_path, capsys, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    assert read_reference(p) == [("a b", " c"), ("d e", "f")]
    assert capsys.readouterr().out == (f"reference {p}: skipped 4 lines "
                                       "(2 not JSON, 1 not UTF-8, 1 no context/continuation)\n")


def _error(path, *needles):
    with pytest.raises(ThresherError) as e:
        read_reference(path)
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)


def test_clear_errors(tmp_path):
    _error(tmp_path, "is a folder")
    (tmp_path / "bad.jsonl").write_bytes(b"nope\n\xff\xfe\n{\"foo\": 1}\n")
    _error(tmp_path / "bad.jsonl", "no (context, continuation) examples", "1 not JSON", "1 not UTF-8",
           "1 no context/continuation")
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(DATA * 50)[:60])
    _error(tmp_path / "cut.jsonl.gz", "cannot read", "cut.jsonl.gz")
    (tmp_path / "fake.parquet").write_bytes(b"not parquet")
    _error(tmp_path / "fake.parquet", "cannot read", "fake.parquet")
