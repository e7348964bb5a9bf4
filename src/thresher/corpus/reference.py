"""Reference tasks: (context, continuation) examples whose continuation loss the selection optimises.

On disk a task is JSONL or Parquet with ``context`` and ``continuation`` string fields (LAMBADA-,
SQuAD- and Jeopardy-style tasks all reduce to that form; see ``reference_pair`` for the layouts read). Each task is split once, deterministically, into a
``reward`` part (used for influence rewards during training) and an ``eval`` part (used only to
evaluate); the two never overlap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from thresher.utils.errors import ThresherError
from thresher.utils.seeding import rng


@dataclass
class ReferenceTask:
    name: str
    contexts: list[np.ndarray] = field(default_factory=list)
    continuations: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.contexts)

    def examples(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return list(zip(self.contexts, self.continuations))

    def subset(self, idx: Sequence[int], suffix: str = "") -> "ReferenceTask":
        return ReferenceTask(
            self.name + suffix, [self.contexts[i] for i in idx], [self.continuations[i] for i in idx]
        )

    def split(self, eval_fraction: float = 0.5, seed: int = 0) -> tuple["ReferenceTask", "ReferenceTask"]:
        """(reward part, eval part): a seeded permutation cut once; disjoint by construction."""
        perm = rng(seed, "reference-split", self.name).permutation(len(self))
        n_eval = int(round(len(self) * eval_fraction))
        return self.subset(sorted(perm[n_eval:].tolist())), self.subset(sorted(perm[:n_eval].tolist()))


def reference_pair(rec: dict) -> tuple[str, str] | None:
    """(context, continuation) from one record of a known layout, or None.

    Layouts: {context, continuation} (LAMBADA OpenAI, Jeopardy, our own), {until_last, last_word}
    (the multi-agent paper's LAMBADA parquet), SQuAD {context, question, answers: {text: [...]}} ->
    ("<context>\nQuestion: <question>\nAnswer:", first answer).
    """
    ctx, cont = rec.get("context"), rec.get("continuation")
    if cont is None and "last_word" in rec:
        ctx, cont = rec.get("until_last"), rec.get("last_word")
    elif cont is None and "question" in rec and isinstance(rec.get("answers"), dict):
        texts = rec["answers"].get("text") or []
        ctx = f"{rec.get('context', '')}\nQuestion: {rec['question']}\nAnswer:"
        cont = texts[0] if len(texts) else None
    if isinstance(ctx, str) and isinstance(cont, str) and cont.strip():
        return ctx, cont
    return None


def _records(path: Path):
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                yield rec


def read_reference(path: str | Path, limit: int | None = None) -> list[tuple[str, str]]:
    """(context, continuation) strings from JSONL or Parquet; records of no known layout are skipped."""
    path = Path(path)
    if not path.exists():
        raise ThresherError(f"reference task file not found: {path}")
    out = []
    for rec in _records(path):
        pair = reference_pair(rec)
        if pair is not None:
            out.append(pair)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise ThresherError(f"no (context, continuation) examples in {path} (expected context/continuation, "
                            "until_last/last_word or SQuAD fields)")
    return out


read_reference_jsonl = read_reference  # the original name


def tokenize_task(name: str, pairs: list[tuple[str, str]], tokenizer) -> ReferenceTask:
    """Tokenize with a HF ``tokenizers.Tokenizer``; the continuation keeps its leading space."""
    ctx = tokenizer.encode_batch([c for c, _ in pairs], add_special_tokens=False)
    cont = tokenizer.encode_batch([t if t.startswith(" ") else " " + t for _, t in pairs], add_special_tokens=False)
    return ReferenceTask(
        name,
        [np.asarray(e.ids, dtype=np.int64) for e in ctx],
        [np.asarray(e.ids, dtype=np.int64) for e in cont],
    )
