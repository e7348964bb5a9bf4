"""Slow, obvious reference implementations for the influence tests (per-example loops, dense matrices)."""

from __future__ import annotations

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from thresher.corpus.batching import pad_docs, pad_examples
from thresher.corpus.reference import ReferenceTask


def tiny_llama(hidden=16, layers=2, heads=2, inter=32, vocab=97, seed=0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        intermediate_size=inter, vocab_size=vocab, max_position_embeddings=256,
    )
    return LlamaForCausalLM(cfg).double().eval()


def random_docs(n, vocab=97, lo=4, hi=20, seed=0) -> list[np.ndarray]:
    r = np.random.default_rng(seed)
    return [r.integers(1, vocab, r.integers(lo, hi)) for _ in range(n)]


def pattern_docs(n, vocab=97, seed=1) -> list[np.ndarray]:
    """Repeated short motifs: structured documents whose gradients differ from random ones."""
    r = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        motif = r.integers(1, vocab, r.integers(2, 5))
        out.append(np.tile(motif, 20)[: r.integers(8, 24)])
    return out


def reference_tasks(vocab=97, seed=2) -> dict[str, ReferenceTask]:
    r = np.random.default_rng(seed)
    tasks = {}
    for name, n in (("lambada", 5), ("squad", 3)):
        ctx = [r.integers(1, vocab, r.integers(3, 10)) for _ in range(n)]
        cont = [r.integers(1, vocab, r.integers(1, 4)) for _ in range(n)]
        tasks[name] = ReferenceTask(name, ctx, cont)
    return tasks


def _single(model, batch):
    """Mean NLL of a one-row unpadded batch, computed by HF itself (labels shifted inside)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def weight_grad(model, blocks, batch) -> list[torch.Tensor]:
    """Per block (d_out, d_in): the true weight gradient of one example, members stacked on d_out."""
    for p in model.parameters():
        p.requires_grad_(True)
    weights = [m.weight for b in blocks for m in b.modules]
    grads = iter(torch.autograd.grad(_single(model, batch), weights))
    return [torch.cat([next(grads) for _ in b.modules], 0) for b in blocks]


def doc_grads(model, blocks, docs) -> list[list[torch.Tensor]]:
    return [weight_grad(model, blocks, pad_docs([d], 10_000)) for d in docs]


def ref_grad(model, blocks, task: ReferenceTask) -> list[torch.Tensor]:
    per = [weight_grad(model, blocks, pad_examples([e], 10_000)) for e in task.examples()]
    return [torch.stack(bs).mean(0) for bs in zip(*per)]


def token_factors(model, blocks, docs):
    """Per block (A, G) = token means of a a^T and delta delta^T, delta = d(doc loss)/d(output); one doc at a time."""
    A = [0.0] * len(blocks)
    G = [0.0] * len(blocks)
    n = 0
    for d in docs:
        batch = pad_docs([d], 10_000)
        acts, outs, hs = {}, [], []
        for bi, b in enumerate(blocks):
            for mi, m in enumerate(b.modules):
                def hook(mod, inp, out, bi=bi, mi=mi):
                    acts.setdefault(bi, inp[0][0].detach())
                    outs.append(out)
                hs.append(m.register_forward_hook(hook))
        for p in model.parameters():
            p.requires_grad_(True)
        loss = _single(model, batch)
        gs = [g.detach() for g in torch.autograd.grad(loss, outs)]
        for h in hs:
            h.remove()
        k = 0
        for bi, b in enumerate(blocks):
            delta = torch.cat([gs[k + j][0] for j in range(len(b.modules))], -1)
            k += len(b.modules)
            A[bi] = A[bi] + acts[bi].T @ acts[bi]
            G[bi] = G[bi] + delta.T @ delta
        n += len(d)
    return [(a / n, g / n) for a, g in zip(A, G)]


def dense_rewards(ref: list[torch.Tensor], xs: list[list[torch.Tensor]], H: list[torch.Tensor]) -> torch.Tensor:
    """(N,) sum over blocks of vec(ref)^T H^-1 vec(x), row-major vec of (d_out, d_in); one solve per block."""
    out = torch.zeros(len(xs), dtype=torch.float64)
    for bi, h in enumerate(H):
        v = torch.linalg.solve(h, ref[bi].flatten())  # H symmetric: ref^T H^-1 x = (H^-1 ref)^T x
        out += torch.stack([x[bi].flatten() for x in xs]) @ v
    return out
