"""Tiny local models built by the tests (no Hub access) and a small in-memory corpus."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("THRESHER_NO_PROGRESS", "1")

WORDS = ("the market fell as investors sold bank shares and bonds . doctors treat patients with new medicine . "
         "the court ruled that the law was unconstitutional . students learn algebra at school every day . "
         "def main ( ) : return x + 1 # python code compiles . the forest is home to birds and wolves .").split()


def make_docs(n: int, seed: int = 0) -> list[str]:
    r = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        k = int(r.integers(3, 120))
        lines = [" ".join(r.choice(WORDS, size=int(r.integers(4, 14)))) for _ in range(max(1, k // 10))]
        docs.append("\n".join(lines))
    docs[3] = ""  # unlabelable: empty
    docs[7] = "   \n "  # whitespace only
    return docs


@pytest.fixture(scope="session")
def docs() -> list[str]:
    return make_docs(24)


def _tokenizer(path: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(make_docs(200, seed=1), trainers.WordPieceTrainer(vocab_size=300, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(path)
    return fast


def _tiny_bert(path: Path, num_labels: int, id2label: dict | None = None) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tok = _tokenizer(path)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, initializer_range=0.5, num_labels=num_labels,
                     problem_type="regression" if num_labels == 1 else "single_label_classification",
                     **({"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}))
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # spread the regression output over roughly [-1, 6] so clipping is exercised
        if num_labels == 1:
            model.classifier.weight.mul_(0.6)
            model.classifier.bias.fill_(1.5)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_regressor(tmp_path_factory) -> Path:
    return _tiny_bert(tmp_path_factory.mktemp("tiny_reg"), 1)


@pytest.fixture(scope="session")
def tiny_topic_classifier(tmp_path_factory) -> Path:
    from thresher.labels.topic import TOPIC_NAMES

    return _tiny_bert(tmp_path_factory.mktemp("tiny_topic"), 13, dict(enumerate(TOPIC_NAMES)))


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("tiny_lm")
    tok = _tokenizer(path)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def fasttext_model(tmp_path_factory) -> Path:
    from thresher.labels.quality import train_quality_fasttext

    d = tmp_path_factory.mktemp("ft")
    r = np.random.default_rng(0)
    good = WORDS[:40]
    bad = ["click", "here", "buy", "now", "cheap", "!!!", "free", "win", "casino", "xxx"]
    (d / "pos.txt").write_text("\n".join(" ".join(r.choice(good, 30)) for _ in range(200)))
    (d / "neg.txt").write_text("\n".join(" ".join(r.choice(bad, 30)) for _ in range(200)))
    return train_quality_fasttext(d / "pos.txt", d / "neg.txt", d / "model.bin", epoch=5, dim=16, seed=0)


@pytest.fixture(scope="session")
def minilm() -> str:
    from thresher.labels.embed import default_embed_model

    return default_embed_model()


@pytest.fixture(scope="session")
def st_model(minilm):
    """The reference SentenceTransformer (the labelers load their own copy through Embedder)."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(minilm, device="cpu")
    st.max_seq_length = 64
    return st
