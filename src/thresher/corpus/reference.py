"""Reference tasks: (context, continuation) examples whose continuation loss the selection optimises.

On disk a task is JSONL (plain, .gz or .zst) or Parquet with ``context`` and ``continuation`` string fields (LAMBADA-,
SQuAD- and Jeopardy-style tasks all reduce to that form; see ``reference_pair`` for the layouts read). Each task is split once, deterministically, into a
``reward`` part (used for influence rewards during training) and an ``eval`` part (used only to
evaluate); the two never overlap.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from thresher.corpus.readers import Excluded, _jsonl_rows
from thresher.utils.errors import ThresherError
from thresher.utils.log import print0
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


_SKIPPED = {"malformed_json": "not JSON", "invalid_utf8": "not UTF-8", "no_pair": "no context/continuation"}


def _records(path: Path, skipped: Counter) -> Iterator[dict]:
    """The file's records; JSONL (plain, .gz, .zst) lines that are not UTF-8 or not a JSON object are counted."""
    if path.name.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError on a non-Parquet file
            raise ThresherError(f"cannot read Parquet file {path}: {e}".splitlines()[0]) from None
        for batch in pf.iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    for _, rec in _jsonl_rows(path):
        if isinstance(rec, Excluded):
            skipped[rec.reason] += 1
        else:
            yield rec


def read_reference(path: str | Path, limit: int | None = None, sample_seed: int | None = None) -> list[tuple[str, str]]:
    """(context, continuation) strings from JSONL (plain, .gz, .zst) or Parquet.

    ``limit``: at most this many examples: the first ones, or with ``sample_seed`` a seeded uniform sample
    of all of them (in file order). Files are often sorted (SQuAD by article: its first 1000 rows are 2 of
    48 articles), so a run samples. Lines of no known layout, not JSON or not UTF-8 are skipped; their
    count is printed once.
    """
    path = Path(path)
    if not path.exists():
        raise ThresherError(f"reference task file not found: {path}")
    if path.is_dir():
        raise ThresherError(f"reference task {path} is a folder, not a .jsonl[.gz|.zst] or .parquet file")
    out, skipped = [], Counter()
    for rec in _records(path, skipped):
        pair = reference_pair(rec)
        if pair is None:
            skipped["no_pair"] += 1
        else:
            out.append(pair)
        if limit is not None and sample_seed is None and len(out) >= limit:
            break
    why = ", ".join(f"{skipped[r]} {text}" for r, text in _SKIPPED.items() if skipped[r])
    if not out:
        raise ThresherError(f"no (context, continuation) examples in {path} (expected context/continuation, "
                            "until_last/last_word or SQuAD fields" + (f"; skipped {why})" if why else ")"))
    if why:
        unit = "rows" if path.name.lower().endswith(".parquet") else "lines"
        print0(f"reference {path}: skipped {sum(skipped.values())} {unit} ({why})")
    if limit is not None and sample_seed is not None and len(out) > limit:
        keep = np.sort(rng(sample_seed, "reference-sample", path.name).choice(len(out), limit, replace=False))
        out = [out[i] for i in keep]
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
