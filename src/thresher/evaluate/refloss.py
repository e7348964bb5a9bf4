"""Reference loss: mean NLL per continuation token of a ReferenceTask under a causal LM."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from thresher.corpus.batching import IGNORE, pad_examples
from thresher.influence.distributed import all_reduce_sum


@torch.no_grad()
def reference_loss(model, task, batch_size: int = 16, max_len: int = 1024, device: str | torch.device = "cpu",
                   pad_id: int = 0, autocast_dtype: torch.dtype | None = None, rank: int = 0, world: int = 1) -> float:
    """Sum of continuation-token NLLs over all examples / number of continuation tokens.

    Token-weighted (a long continuation counts more than a short one), which is what the influence
    rewards differentiate. Examples are batched in length order to waste little on padding; the
    value does not depend on ``batch_size`` (right padding + attention mask, tested).

    ``world`` > 1 (under torchrun; every rank calls this): rank r evaluates batches r, r + world, ...
    and the per-batch sums are all-reduced, then added in batch order as one process adds them, so
    the value equals the single-process one bit for bit. Every rank runs the same number of forward
    passes (the last batch again where it has none left), which FSDP's collectives require.
    """
    examples = task.examples()
    if not examples:
        return float("nan")
    order = np.argsort([len(c) + len(t) for c, t in examples], kind="stable")
    starts = range(0, len(order), batch_size)
    sums = np.zeros((len(starts), 2), dtype=np.float64)  # (nll, tokens) per batch
    was_training = model.training
    model.eval()
    try:
        for r in range(-(-len(starts) // world)):
            b = rank + r * world
            i = starts[min(b, len(starts) - 1)]
            batch = pad_examples([examples[j] for j in order[i : i + batch_size]], max_len, pad_id)
            nll, n = _batch_nll(model, batch, torch.device(device), autocast_dtype)
            if b < len(starts):
                sums[b] = nll, n
    finally:
        model.train(was_training)
    if world > 1:  # each batch is non-zero on one rank only: x + 0 = x exactly
        sums = all_reduce_sum(torch.from_numpy(sums).to(device)).cpu().numpy()
    total, count = 0.0, 0
    for nll, n in sums.tolist():
        total, count = total + nll, count + int(n)
    return total / count if count else float("nan")  # nothing scorable (empty continuations): no loss, not 0


def _batch_nll(model, batch: dict, device: torch.device, autocast_dtype) -> tuple[float, int]:
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with ctx:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, T, V); no KV cache kept
    # position t predicts token t + 1: (B, T-1, V) against (B, T-1)
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> f32, f64 kept
    target = labels[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE,
                          reduction="sum")
    return float(nll), int((target != IGNORE).sum())
