"""Fixtures: a tiny local Llama checkpoint (byte-level BPE trained here) and small raw benchmark files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

@pytest.fixture(scope="session", autouse=True)
def _offline():
    # Nothing may reach the Hub; the harness and datasets must work from local files alone.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("THRESHER_NO_PROGRESS", "1")


def _corpus() -> list[str]:
    words = ("the a of to and in is was for on that with as by at from it an be this which or are have "
             "question answer passage sun water plant energy rock animal yes no true false why how what")
    return [words, words.upper(), "Question: Answer: Passage: A. B. C. D. E. 0123456789 ?!.,;:'\"-_()"] * 20


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """LlamaForCausalLM (hidden 32, 2 layers) + PreTrainedTokenizerFast, saved with save_pretrained."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    out = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="session")
def fake_data_root(tmp_path_factory) -> Path:
    """Raw files in the shared/data/eval layouts (ARC-Easy, BoolQ, WinoGrande), 24 docs per split."""
    root = tmp_path_factory.mktemp("eval_data_root") / "eval"
    things = ["sun", "water", "rock", "plant", "animal", "energy"]
    for split in ("test", "validation"):
        _write_jsonl(root / "arc_easy" / f"{split}.jsonl", [
            {"id": f"{split}-{i}", "question": f"Which {things[i % 6]} is {i}?",
             "choices": [f"{things[(i + j) % 6]} {j}" for j in range(3 + i % 2)], "gold": i % 3} for i in range(24)])
    _write_jsonl(root / "boolq" / "validation.jsonl", [
        {"idx": i, "question": f"is the {things[i % 6]} wet", "title": "T",
         "passage": f"The {things[i % 6]} was in the water {i} times.", "answer": bool(i % 2), "label": i % 2}
        for i in range(24)])
    _write_jsonl(root / "winogrande" / "validation.jsonl", [
        {"qID": str(i), "sentence": f"The {things[i % 6]} is bigger than the {things[(i + 1) % 6]} so _ is heavy.",
         "option1": things[i % 6], "option2": things[(i + 1) % 6], "answer": str(1 + i % 2)} for i in range(24)])
    return root


@pytest.fixture(scope="session")
def fake_mmlu_root(tmp_path_factory) -> Path:
    """Two MMLU subjects of different sizes (7 and 3 test questions, 2 dev each) in the CSV layout."""
    root = tmp_path_factory.mktemp("mmlu_root") / "eval" / "mmlu"
    for subject, n in (("anatomy", 7), ("virology", 3)):
        for split, k in (("test", n), ("dev", 2)):
            (root / split).mkdir(parents=True, exist_ok=True)
            lines = ["question,choice0,choice1,choice2,choice3,answer"]
            lines += [f"What is {subject} {split} {i}?,one {i},two,three {i},four,{(i + k) % 4}" for i in range(k)]
            (root / split / f"{subject}_{split}.csv").write_text("\n".join(lines) + "\n")
    return root.parent
