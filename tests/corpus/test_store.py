"""TokenStore: O(1) memmap views, metadata access, and its settings file."""

from __future__ import annotations

import numpy as np
import pytest
from corpus_helpers import corpus, tok_path  # noqa: F401

from thresher.corpus.ingest import ingest
from thresher.corpus.store import TokenStore
from thresher.corpus.tokenizer import load_tokenizer, tokenizer_sha256
from thresher.utils.errors import ThresherError


@pytest.fixture(scope="module")
def store(corpus, tok_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "s"
    ingest([str(corpus["dir"])], out, str(tok_path), field_map={"domain": "domain", "k": "meta.deep.k"}, workers=1)
    return TokenStore.open(out)


def test_docs_are_views_of_the_flat_array(store):
    assert isinstance(store.tokens, np.memmap) and store.offsets.dtype == np.int64
    assert store.offsets[0] == 0 and store.offsets[-1] == store.n_tokens and len(store.offsets) == store.n_docs + 1
    flat = np.concatenate(store.docs(range(store.n_docs)))
    assert np.array_equal(flat, np.asarray(store.tokens))
    d = store.doc(5)
    assert np.shares_memory(d, store.tokens) and len(d) == store.lengths[5]
    with pytest.raises(IndexError):
        store.doc(store.n_docs)


def test_metadata_access(store, corpus):
    t = store.table(["doc_id", "domain"])
    assert t.column_names == ["doc_id", "domain"] and t.num_rows == store.n_docs
    assert store.columns == ["doc_id", "source_shard", "source_index", "source_id", "n_tokens", "domain", "k"]
    assert np.array_equal(store.column("n_tokens"), store.lengths)
    assert store.column("domain").tolist() == [r["domain"] for rs in corpus["records"] for r in rs]
    with pytest.raises(ThresherError, match="no column 'nope'"):
        store.table(["nope"])


def test_store_json_holds_the_settings(store, tok_path, corpus):
    m = store.meta
    assert m["dtype"] == "uint16" and m["vocab_size"] == 300 and (m["eos_id"], m["pad_id"]) == (0, 1)
    assert m["tokenizer_sha256"] == tokenizer_sha256(load_tokenizer(tok_path)) == tokenizer_sha256(store.tokenizer())
    assert m["text_field"] == "text" and m["field_map"] == {"domain": "domain", "k": "meta.deep.k"}
    assert m["inputs"] == [str(s.resolve()) for s in corpus["shards"]]
    assert (m["n_docs"], m["n_tokens"]) == (store.n_docs, store.n_tokens)


def test_open_refuses_a_non_store(tmp_path):
    with pytest.raises(ThresherError, match="not a token store"):
        TokenStore.open(tmp_path)


def test_lengths_are_int32_unless_a_document_needs_more(store, tmp_path):
    assert store.lengths.dtype == np.int32 and store.lengths.sum() == store.n_tokens
    np.testing.assert_array_equal(store.lengths, np.diff(store.offsets))
    huge = TokenStore(tmp_path, {"dtype": "uint16"})  # only offsets.npy is read for lengths
    np.save(tmp_path / "offsets.npy", np.array([0, 5, 5 + 2**31, 2**31 + 7], np.int64))
    assert huge.lengths.dtype == np.int64 and huge.lengths.tolist() == [5, 2**31, 2]


def test_fingerprint_follows_the_documents_not_the_path(store, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(store.path, copy)
    assert TokenStore.open(copy).fingerprint == store.fingerprint  # moved or copied: the same corpus
    lengths = np.diff(store.offsets)
    other = tmp_path / "reordered"  # the same documents in another order (a re-ingest of reordered shards)
    other.mkdir()
    np.save(other / "offsets.npy", np.concatenate([[0], np.cumsum(lengths[::-1])]).astype(np.int64))
    reordered = TokenStore(other, store.meta)
    assert (reordered.n_docs, reordered.n_tokens) == (store.n_docs, store.n_tokens)
    assert reordered.fingerprint != store.fingerprint


def test_lengths_are_a_read_only_memmap_written_by_ingest(store):
    """Every process maps lengths.npy (the ranks of a node share its pages) instead of holding 4 bytes a
    document each."""
    assert (store.path / "lengths.npy").is_file()
    fresh = TokenStore.open(store.path)
    assert isinstance(fresh.lengths, np.memmap) and fresh.lengths.dtype == np.int32
    np.testing.assert_array_equal(fresh.lengths, np.diff(store.offsets))
    with pytest.raises(ValueError, match="read-only"):
        fresh.lengths[0] = 1


def test_a_store_without_lengths_gets_them_and_a_wrong_file_is_replaced(store, tmp_path, monkeypatch):
    import json
    import shutil

    import thresher.corpus.store as store_module
    import thresher.utils.io as io_module

    old = tmp_path / "old"
    shutil.copytree(store.path, old)
    (old / "lengths.npy").unlink()  # a store ingested before lengths.npy existed
    (old / "lengths.json").unlink()
    want = np.diff(store.offsets)
    np.testing.assert_array_equal(TokenStore.open(old).lengths, want)
    assert (old / "lengths.npy").is_file() and isinstance(TokenStore.open(old).lengths, np.memmap)
    assert ((old / "lengths.npy").stat().st_mode & 0o777) == 0o666 & ~_umask()  # not mkstemp's 0600
    # offsets changed after the lengths were written (an older thresher re-ingested, offsets copied in),
    # here one document 7 tokens longer: the stamp no longer matches, the lengths are recomputed
    changed, i = np.asarray(store.offsets).copy(), store.n_docs // 2
    changed[i + 1 :] += 7
    np.save(old / "offsets.npy", changed)
    got = TokenStore.open(old).lengths
    assert got[i] == want[i] + 7 and np.array_equal(np.load(old / "lengths.npy"), got)
    np.save(old / "offsets.npy", np.asarray(store.offsets))
    for bad in (b"", b"garbage", b"PK\x03\x04 a zip"):  # unreadable files are rebuilt, never a traceback
        (old / "lengths.npy").write_bytes(bad)
        # with a matching stamp (so the stamp is not what catches it)
        (old / "lengths.json").write_text(json.dumps(store_module._lengths_stamp(old)))
        np.testing.assert_array_equal(TokenStore.open(old).lengths, want)
    (old / "lengths.npy").unlink()  # a read-only store: computed in memory, nothing written

    def refuse(*args, dir=None, **kw):  # what a folder the process may not write gives (tests run as root)
        raise PermissionError(13, "Permission denied", str(dir))

    monkeypatch.setattr(io_module.tempfile, "mkstemp", refuse)
    got = TokenStore.open(old).lengths
    np.testing.assert_array_equal(got, want)
    assert not isinstance(got, np.memmap) and not (old / "lengths.npy").exists()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
