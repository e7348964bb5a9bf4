"""The LM-head loss computed in chunks, so the (N, V) logits never exist at once.

    loss = (1 / n_valid) * sum over tokens i with t_i != -100 of  logsumexp(h_i W^T) - (h_i W^T)[t_i]

which is ``F.cross_entropy(h @ W.T, t, ignore_index=-100)`` (mean reduction). The forward walks
over chunks of C tokens; per chunk it forms the logits (C, V), the loss and d loss / d logits =
softmax - onehot in float32, and turns that at once into the chunk's grad_h (C, H) and its share of
grad_W (V, H). Only grad_h (N, H) and grad_W (V, H) are kept for backward, which just scales them
by the incoming gradient. Peak extra memory is one (C, V) float32 block instead of the (N, V) logits,
their float32 copy and their gradient. The idea is the "fused linear cross-entropy" of Liger-Kernel
and Apple's cut-cross-entropy; this is a plain-PyTorch version written from the maths above.
"""

from __future__ import annotations

import torch
import torch.nn as nn

IGNORE_INDEX = -100


def _chunk(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, acc: torch.dtype):
    """One chunk: (summed loss, grad of the summed loss w.r.t. h (C, H) and w (V, H))."""
    logits = (h @ w.T).to(acc)  # (C, V) in the compute dtype, upcast as the full path does
    valid = t != IGNORE_INDEX  # (C,)
    idx = torch.where(valid, t, 0)[:, None]  # (C, 1): a safe column for ignored rows
    lse = torch.logsumexp(logits, dim=-1)  # (C,)
    loss = ((lse - logits.gather(1, idx).squeeze(1)) * valid).sum()
    g = logits.sub_(lse[:, None]).exp_()  # softmax, in place: the logits are no longer needed
    g.mul_(valid[:, None])  # ignored rows contribute nothing
    g.scatter_add_(1, idx, -valid[:, None].to(acc))  # - onehot(t) on valid rows
    g = g.to(h.dtype)  # the matmuls run in the compute dtype, as the full path's backward does
    return loss, g @ w, g.T @ h


class LinearCrossEntropy(torch.autograd.Function):
    """loss = F.cross_entropy(h @ w.T, targets) with grads computed chunk by chunk in the forward."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        # h (N, H), w (V, H) in the compute dtype; targets (N,) int64, -100 = ignored
        acc = torch.promote_types(h.dtype, torch.float32)  # float32 (float64 for float64 inputs)
        loss = torch.zeros((), dtype=acc, device=h.device)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(w.shape, dtype=acc, device=w.device)  # summed over chunks in >= float32
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, h.shape[0], chunk):
                loss_c, gh, gw = _chunk(h[s : s + chunk], w, targets[s : s + chunk], acc)
                loss += loss_c
                grad_h[s : s + chunk] = gh
                grad_w += gw
        n_valid = (targets != IGNORE_INDEX).sum().to(acc)  # 0 -> nan, as F.cross_entropy
        ctx.save_for_backward(grad_h, grad_w, n_valid)
        ctx.w_dtype = w.dtype
        return loss / n_valid

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w, n_valid = ctx.saved_tensors
        scale = grad_out / n_valid  # () in float32/64
        return (grad_h * scale).to(grad_h.dtype), (grad_w * scale).to(ctx.w_dtype), None, None


def linear_cross_entropy(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Mean cross-entropy of logits ``h @ w.T`` (h (N, H), w (V, H), targets (N,)), ``chunk`` tokens at a time."""
    return LinearCrossEntropy.apply(h, w, targets, int(chunk))


class CausalLMWithLoss(nn.Module):
    """An HF causal LM plus the chunked head loss; ``forward`` returns the scalar mean loss.

    DDP wraps this module, so its hooks see the whole forward. The state dict is ``lm``'s under an
    ``lm.`` prefix; checkpoints and exports save ``lm`` itself (``checkpoint.unwrap``), so the files
    have the same keys whichever loss was used.
    """

    def __init__(self, lm: nn.Module, chunk_tokens: int = 4096):
        super().__init__()
        self.lm, self.chunk_tokens = lm, chunk_tokens

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, position_ids: torch.Tensor | None = None):
        # no KV cache in training (HF builds one by default: memory, and per-layer guards under torch.compile)
        h = self.lm.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state  # (B, T, H)
        w = self.lm.lm_head.weight  # (V, H)
        dev = h.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
        # the casts are autograd ops: grads come back in each parameter's own dtype, as under autocast
        return linear_cross_entropy(h.flatten(0, 1).to(dtype), w.to(dtype), targets.flatten(), self.chunk_tokens)
