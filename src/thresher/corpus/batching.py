"""Turn token arrays into padded LM batches.

A batch is a dict of LongTensors, all (B, T):
  input_ids       token ids, padded with ``pad_id``
  attention_mask  1 for real tokens, 0 for padding
  labels          the token to score at each position (next-token targets are formed inside the
                  HF model by shifting), -100 where nothing is scored: padding, and for reference
                  examples the context part (only the continuation is scored).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

IGNORE = -100


def pad_docs(docs: Sequence[np.ndarray], max_len: int, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Documents scored on every token; each is truncated to its first ``max_len`` tokens."""
    B = len(docs)
    T = max(1, min(max_len, max((len(d) for d in docs), default=1)))
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for i, d in enumerate(docs):
        d = np.asarray(d[:T], dtype=np.int64)
        ids[i, : len(d)] = torch.from_numpy(d)
        mask[i, : len(d)] = 1
    labels = ids.masked_fill(mask == 0, IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pad_examples(
    examples: Sequence[tuple[np.ndarray, np.ndarray]], max_len: int, pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """(context, continuation) pairs scored on the continuation only.

    When context + continuation exceed ``max_len`` the context is cut from the left, so the
    continuation (what is scored) is always kept whole if it fits; a continuation that does not fit is
    cut from the right, keeping one context token (the one that predicts its first token).
    """
    rows = []
    for ctx, cont in examples:
        ctx = np.asarray(ctx, dtype=np.int64)
        cont = np.asarray(cont, dtype=np.int64)[: max_len - (1 if len(ctx) else 0)]
        keep = max(0, max_len - len(cont))
        ctx = ctx[len(ctx) - keep :] if keep < len(ctx) else ctx
        rows.append((ctx, cont))
    B = len(rows)
    T = max(1, max((len(c) + len(t) for c, t in rows), default=1))
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    for i, (c, t) in enumerate(rows):
        seq = torch.from_numpy(np.concatenate([c, t]))
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
        labels[i, len(c) : len(seq)] = torch.from_numpy(t)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
