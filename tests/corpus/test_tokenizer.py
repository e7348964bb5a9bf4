"""Tokenizer: training, loading, special ids."""

from __future__ import annotations

import pytest
from corpus_helpers import corpus, tok_path  # noqa: F401
from tokenizers import Tokenizer, models, pre_tokenizers

from thresher.corpus.tokenizer import load_tokenizer, special_ids, train_tokenizer, vocab_size
from thresher.utils.errors import ThresherError


def test_trained_bpe_is_byte_level_and_lossless(tok_path, corpus):
    tok = load_tokenizer(tok_path)
    assert vocab_size(tok) == 300 and special_ids(tok) == (0, 1)
    texts = [r["text"] for recs in corpus["records"] for r in recs] + ["unseen ☃ \x00 bytes\r\n"]
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == t
        assert 0 not in ids and 1 not in ids  # no special token is added to plain text


def test_load_from_folder_and_errors(tok_path, tmp_path):
    assert load_tokenizer(tok_path.parent).to_str() == load_tokenizer(tok_path).to_str()
    for spec, needle in [(tmp_path / "missing.json", "tokenizer file not found"),
                         (tmp_path, "holds no tokenizer.json")]:
        with pytest.raises(ThresherError, match=needle):
            load_tokenizer(spec)
    (tmp_path / "bad.json").write_text("{not a tokenizer")
    with pytest.raises(ThresherError, match="cannot load tokenizer"):
        load_tokenizer(tmp_path / "bad.json")


def test_train_is_deterministic_and_atomic(corpus, tmp_path):
    a = train_tokenizer([str(corpus["dir"])], tmp_path / "a.json", vocab_size=280, sample_docs=50)
    b = train_tokenizer(corpus["shards"], tmp_path, vocab_size=280, sample_docs=50)  # a folder -> folder/tokenizer.json
    assert b == tmp_path / "tokenizer.json"
    assert a.read_text() == b.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ThresherError, match="too small"):
        train_tokenizer(corpus["shards"], tmp_path / "c.json", vocab_size=100)


def _wordlevel(tokens):
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=tokens[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def test_special_ids_by_common_names():
    assert special_ids(_wordlevel(["<unk>", "</s>", "x"])) == (1, 1)  # pad falls back to eos
    assert special_ids(_wordlevel(["[PAD]", "[UNK]", "[SEP]", "x"])) == (2, 0)
    assert special_ids(_wordlevel(["<unk>", "<pad>", "<eos>"])) == (2, 1)
    with pytest.raises(ThresherError, match="no end-of-text token"):
        special_ids(_wordlevel(["<unk>", "x"]))


def test_cli_tokenizer_help_names_only_what_exists():
    from typer.testing import CliRunner

    from thresher.cli import app

    r = CliRunner().invoke(app, ["tokenizer", "--help"])
    assert r.exit_code == 0 and "Train a byte-level BPE tokenizer" in r.output and "inspect" not in r.output


def test_skipped_records_are_counted_per_reason(tmp_path, capsys):
    """A malformed line or a record without text is left out of the sample and counted in one line, as ingest
    counts them, not dropped silently."""
    import json

    good = [json.dumps({"text": f"document number {i} with some words"}) for i in range(6)]
    shard = tmp_path / "a.jsonl"
    shard.write_text("\n".join(good[:3] + ['{"text": "unterminated', json.dumps({"body": "no text"})] + good[3:]) + "\n")
    train_tokenizer([str(shard)], tmp_path / "t.json", vocab_size=280)
    out = capsys.readouterr().out
    assert "tokenizer sample: 6 documents from 1 shard(s); skipped 2 record(s): malformed_json 1, missing_text 1" in out
    train_tokenizer([str(shard)], tmp_path / "u.json", vocab_size=280, sample_docs=2)  # stops before the bad lines
    assert capsys.readouterr().out.strip() == "tokenizer sample: 2 documents from 1 shard(s)"
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    with pytest.raises(ThresherError, match=r"no usable documents .* \(skipped malformed_json 1\)$"):
        train_tokenizer([str(tmp_path / "bad.jsonl")], tmp_path / "v.json", vocab_size=280)
