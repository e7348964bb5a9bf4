"""Load, train and inspect HF ``tokenizers`` tokenizers.

``train_tokenizer`` makes a byte-level BPE (GPT-2 style: every byte is in the base alphabet, so no
text is ever unknown) with two special tokens, ``<|endoftext|>`` (id 0) and ``<|pad|>`` (id 1). It adds
no post-processor: ``encode(text, add_special_tokens=False)`` gives the bare text tokens, and the
trainer appends EOS itself when it packs documents.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

from tokenizers import Tokenizer

from thresher.utils.errors import ThresherError
from thresher.utils.io import atomic_write_text

EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|pad|>"
EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "<|end_of_text|>", "[EOS]", "<|im_end|>", "[SEP]", "<|end|>")
PAD_NAMES = ("<|pad|>", "<pad>", "[PAD]", "<|padding|>", "<|finetune_right_pad_id|>")


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """A tokenizer.json file, a folder holding one, or a Hugging Face Hub id (needs network)."""
    path = Path(spec)
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ThresherError(f"cannot load tokenizer {path}: {e}".splitlines()[0]) from None
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise ThresherError(f"folder {path} holds no tokenizer.json")
        return load_tokenizer(path / "tokenizer.json")
    if str(spec).endswith(".json") or str(spec).startswith((".", "/", "~")):
        raise ThresherError(f"tokenizer file not found: {spec}")
    try:
        return Tokenizer.from_pretrained(str(spec))
    except Exception as e:
        raise ThresherError(
            f"tokenizer '{spec}' is not a file or folder and could not be fetched from the Hub "
            f"({type(e).__name__}); pass a tokenizer.json path"
        ) from None


def tokenizer_sha256(tok: Tokenizer) -> str:
    """A fingerprint of the tokenizer's full serialisation (vocab, merges, normaliser, specials)."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()


def vocab_size(tok: Tokenizer) -> int:
    """1 + the largest id the tokenizer can emit (added tokens included)."""
    vocab = tok.get_vocab(with_added_tokens=True)
    return max(tok.get_vocab_size(with_added_tokens=True), 1 + max(vocab.values(), default=-1))


def special_ids(tok: Tokenizer) -> tuple[int, int]:
    """(eos_id, pad_id) found by common names; pad falls back to eos."""
    eos = _first_id(tok, EOS_NAMES)
    if eos is None:
        raise ThresherError(f"tokenizer has no end-of-text token (looked for {', '.join(EOS_NAMES)})")
    pad = _first_id(tok, PAD_NAMES)
    return eos, eos if pad is None else pad


def _first_id(tok: Tokenizer, names: Sequence[str]) -> int | None:
    for name in names:
        i = tok.token_to_id(name)
        if i is not None:
            return i
    return None


def new_bpe(vocab_size: int = 8192):
    """An untrained byte-level BPE tokenizer and its trainer."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tok, trainer


def train_tokenizer(
    inputs: Sequence[str] | str,
    out_path: str | Path,
    vocab_size: int = 8192,
    text_field: str = "text",
    sample_docs: int = 50_000,
    field_map: dict | None = None,
) -> Path:
    """Train byte-level BPE on a sample of the corpus; write tokenizer.json atomically; return its path.

    The sample is the first ceil(sample_docs / n_shards) good documents of every shard, so each
    shard (often one domain) is represented without reading any shard to its end. Records skipped on the
    way (malformed JSON, no text...) are counted per reason in one line, as ``ingest`` counts them.
    """
    from thresher.corpus.ingest import expand_inputs

    if vocab_size < 258 + 2:
        raise ThresherError(f"vocab_size {vocab_size} is too small for byte-level BPE (need >= 260)")
    shards = expand_inputs(inputs)
    skipped: Counter = Counter()
    texts = list(sample_texts(shards, text_field, sample_docs, field_map, skipped))
    if not texts:
        raise ThresherError(f"no usable documents to train a tokenizer on in {', '.join(map(str, shards))}"
                            + (f" (skipped {_reasons(skipped)})" if skipped else ""))
    from thresher.utils.log import print0

    print0(f"tokenizer sample: {len(texts)} documents from {len(shards)} shard(s)"
           + (f"; skipped {sum(skipped.values())} record(s): {_reasons(skipped)}" if skipped else ""))
    tok, trainer = new_bpe(vocab_size)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    out_path = Path(out_path)
    if out_path.is_dir():
        out_path = out_path / "tokenizer.json"
    atomic_write_text(out_path, tok.to_str())
    return out_path


def sample_texts(shards: Sequence[Path], text_field: str, sample_docs: int, field_map: dict | None = None,
                 skipped: Counter | None = None) -> Iterator[str]:
    """The sample's texts; ``skipped`` (when given) counts the records passed over, per reason."""
    from thresher.corpus.readers import Doc, iter_records

    quota = math.ceil(sample_docs / max(1, len(shards)))
    def docs(shard: Path) -> Iterator[str]:
        for r in iter_records(shard, text_field, field_map):
            if isinstance(r, Doc):
                yield r.text
            elif skipped is not None:
                skipped[r.reason] += 1

    for shard in shards:
        yield from itertools.islice(docs(shard), quota)


def _reasons(counts: Counter) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))

