"""IngestConfig: round-trips to TOML; run() trains a tokenizer when none is named, then ingests."""

from __future__ import annotations

from corpus_helpers import corpus  # noqa: F401

from thresher.corpus.config import IngestConfig
from thresher.corpus.store import TokenStore
from thresher.corpus.tokenizer import load_tokenizer
from thresher.utils.tomlio import dumps, from_dict, load_toml


def test_toml_round_trip(tmp_path):
    cfg = IngestConfig(inputs=["a/*.parquet"], out_dir="s", field_map={"domain": "meta.redpajama_set_name"}, workers=4)
    (tmp_path / "c.toml").write_text(dumps(cfg))
    assert from_dict(IngestConfig, load_toml(tmp_path / "c.toml")) == cfg


def test_run_trains_then_ingests(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("THRESHER_NO_PROGRESS", "1")
    cfg = IngestConfig(inputs=[str(corpus["dir"])], out_dir=str(tmp_path / "s"), workers=1,
                       train_vocab_size=270, train_sample_docs=60)
    stats = cfg.run()
    store = TokenStore.open(tmp_path / "s")
    tok = load_tokenizer(tmp_path / "s" / "tokenizer.train.json")
    assert store.vocab_size == 270 and stats["n_docs"] == sum(len(r) for r in corpus["records"])
    texts = [r["text"] for rs in corpus["records"] for r in rs]
    assert [d.tolist() for d in store.docs(range(store.n_docs))] == [
        e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
