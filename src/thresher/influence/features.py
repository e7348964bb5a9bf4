"""Per-document gradient features of every block, batched, with frozen weights.

For a block with input a_t (d_in) and output gradient delta_t (d_out) at token t, a document's weight
gradient is G = sum_t delta_t a_t^T. We never form it: with seeded random projections P_in (k_in, d_in)
and P_out (k_out, d_out), scaled 1/sqrt(k) so E[P^T P] = I,

    feature = vec( sum_t (P_out delta_t)(P_in a_t)^T ) = vec(P_out G P_in^T)     (k_out * k_in,)

computed as one batched matmul of the projected sequences (B, k_out, T) @ (B, T, k_in).
A side whose k >= d is left unprojected (exact); projection="none" gives exact full gradients.

Weights are frozen while scoring: the embedding output is made to require grad, and the output
gradients of the tracked Linears are taken with torch.autograd.grad, so backward computes no weight
gradient. The batch loss is the SUM of per-document losses, so each row's output gradient is that
document's own gradient (documents never mix).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from thresher.influence.config import InfluenceConfig
from thresher.influence.modules import Block, build_blocks
from thresher.utils.errors import ThresherError
from thresher.utils.seeding import derive_seed


@dataclass
class BlockSeq:
    """Projected sequences of one block for one batch; padding rows are zero."""

    a: torch.Tensor  # (B, T, k_in)
    delta: torch.Tensor  # (B, T, k_out)


def block_budgets(blocks: list[Block], cfg: InfluenceConfig) -> list[int]:
    """Feature dimensions per block: projection_dim split evenly ("equal") or by d_in * d_out ("size")."""
    sizes = [b.d_in * b.d_out for b in blocks]
    if cfg.projection_alloc == "equal":
        return [max(1, cfg.projection_dim // len(blocks))] * len(blocks)
    return [max(1, cfg.projection_dim * s // sum(sizes)) for s in sizes]


def split_budget(k: int, d_in: int, d_out: int, split: str) -> tuple[int, int]:
    """(k_in, k_out) with k_in * k_out <= k, each capped at its true size.

    "square": k_in = k_out = floor(sqrt(k)), capped. "balanced": the same, and what a capped side cannot
    use goes to the other side. "exact_side": the smaller side is kept exact (unprojected) when
    4 d <= k, the rest of the budget going to the other side; otherwise "balanced".
    """
    if k >= d_in * d_out:
        return d_in, d_out
    r = max(1, math.isqrt(k))
    if split == "exact_side":
        if d_in <= d_out and d_in * 4 <= k:
            return d_in, min(d_out, k // d_in)
        if d_out < d_in and d_out * 4 <= k:
            return min(d_in, k // d_out), d_out
    k_in, k_out = min(r, d_in), min(r, d_out)
    if split != "square" and k_in < r:  # give the budget a capped side cannot use to the other side
        k_out = min(d_out, k // k_in)
    elif split != "square" and k_out < r:
        k_in = min(d_in, k // k_out)
    return k_in, k_out


def block_dims(blocks: list[Block], cfg: InfluenceConfig) -> list[tuple[int, int]]:
    """(k_in, k_out) per block (see block_budgets, split_budget); k_in / k_out override both sides."""
    if cfg.projection == "none":
        return [(b.d_in, b.d_out) for b in blocks]
    dims = [split_budget(k, b.d_in, b.d_out, cfg.projection_split) for k, b in zip(block_budgets(blocks, cfg), blocks)]
    return [(min(cfg.k_in or ki, b.d_in), min(cfg.k_out or ko, b.d_out)) for (ki, ko), b in zip(dims, blocks)]


def projection_matrix(cfg: InfluenceConfig, name: str, side: str, k: int, d: int) -> torch.Tensor | None:
    """(k, d) float64 seeded by (seed, block name, side); None where the side is not projected.
    projection="reference" has no random matrix: its subspaces are built at refresh (reference_subspaces)."""
    if cfg.projection in ("none", "reference") or k >= d:
        return None
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "influence-projection", name, side))
    if cfg.projection in ("gaussian", "orthogonal"):
        p = torch.randn(k, d, generator=g, dtype=torch.float64)
        if cfg.projection == "orthogonal":  # orthonormal rows scaled sqrt(d/k): E[P^T P] = I, less variance
            return torch.linalg.qr(p.T).Q.T * math.sqrt(d / k)
    else:
        p = torch.randint(0, 2, (k, d), generator=g).to(torch.float64) * 2 - 1
    return p / math.sqrt(k)


def _top_left_singular(m: torch.Tensor, k: int) -> torch.Tensor:
    """(k, d): the left singular vectors of the k largest singular values of a (d, n) matrix, largest
    first, each with its largest-magnitude entry positive (so the result does not depend on the solver).

    Through the smaller Gram matrix: d <= n, eigenvectors of m m^T; d > n (a (d_out, d_in) reference with
    d_out = 2 d_ff), m v / s from the eigenpairs (s^2, v) of m^T m, so the cost is O(d n min(d, n)), not
    the 10 d^3 of a (d, d) eigendecomposition. Squaring doubles the condition number's exponent, so when
    the k-th singular value is below 1e-5 of the first (or k > n) a thin SVD of m is used instead."""
    d, n = m.shape
    if d <= n:
        v = torch.linalg.eigh(m @ m.T).eigenvectors[:, -k:].flip(1).T
    else:
        e, q = torch.linalg.eigh(m.T @ m)
        s = e[-k:].flip(0).clamp(min=0).sqrt() if k <= n else None
        if s is not None and s[-1] > 1e-5 * s[0]:
            v = ((m @ q[:, -k:].flip(1)) / s).T
        else:
            v = torch.linalg.svd(m, full_matrices=k > n).U[:, :k].T
    sign = torch.sign(v.gather(1, v.abs().argmax(1, keepdim=True)))
    return v * torch.where(sign == 0, 1.0, sign)


def reference_subspaces(u: torch.Tensor, k_in: int, k_out: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Projections of projection="reference" for one block: u = (K, d_out, d_in) preconditioned reference
    gradients P^-1 g_ref,k in the full space. P_out (k_out, d_out) spans the top left singular subspace
    of [U_1 ... U_K], P_in (k_in, d_in) the top right one (the top left subspace of [U_1^T ... U_K^T]);
    rows orthonormal, a side with k >= d is None.
    <P_out U_k P_in^T, P_out G P_in^T> = <U_k, G> exactly whenever U_k lies in those subspaces (K = 1 and
    rank(U) <= min(k_in, k_out)); otherwise the error is that of U_k's best approximation in them."""
    K, d_out, d_in = u.shape
    u = u.double()
    p_out = None if k_out >= d_out else _top_left_singular(u.permute(1, 0, 2).reshape(d_out, K * d_in), k_out)
    p_in = None if k_in >= d_in else _top_left_singular(u.permute(2, 0, 1).reshape(d_in, K * d_out), k_in)
    return p_in, p_out


def doc_weights(labels: torch.Tensor, doc_loss: str) -> torch.Tensor:
    """(B,) weight of each document's summed token NLL: 1/n_scored ("mean") or 1 ("sum")."""
    n = (labels[:, 1:] != -100).sum(1)
    if doc_loss == "sum":
        return (n > 0).double()
    return torch.where(n > 0, 1.0 / n.clamp(min=1).double(), torch.zeros((), dtype=torch.float64, device=n.device))


def summed_doc_loss(logits: torch.Tensor, labels: torch.Tensor, doc_loss: str) -> torch.Tensor:
    """Sum over documents of each document's loss (next-token NLL over positions whose label != -100)."""
    B, T, V = logits.shape
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, V).float() if logits.dtype != torch.float64 else logits[:, :-1].reshape(-1, V),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(B, T - 1)
    w = doc_weights(labels, doc_loss).to(nll.dtype)
    return (nll.sum(1) * w).sum()


# exact_contract materialises per-document gradients (B, d_out, d_in) only up to this many numbers
MATERIALISE_MAX = 1 << 26


def exact_contract(a: torch.Tensor, delta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B, T, d_in), (B, T, d_out), (K, d_out, d_in) -> (B, K) float64: sum_t delta_t^T U_k a_t.

    Two orders, same result. Per document, materialising G = sum_t delta_t a_t^T and dotting it with
    every U_k costs (T + K) d_in d_out multiply-adds and B d_out d_in memory; contracting the sequence
    with each U_k (a U_k^T: one more forward of the Linear, (B, T, d_out) memory) costs K T d_in d_out.
    The first wins when K > 1 (and T > 1) and the gradients are small enough to hold."""
    B, T, d_in = a.shape
    K, d_out, _ = u.shape
    if K * T > T + K and B * d_out * d_in <= MATERIALISE_MAX:
        g = torch.bmm(delta.transpose(1, 2), a)  # (B, d_out, d_in)
        return (g.flatten(1) @ u.flatten(1).T).double()
    # vecdot of the flattened (B, T d_out) rows: an einsum / bmm here is several times slower on CPU
    return torch.stack([torch.linalg.vecdot((a @ u[k].T).flatten(1), delta.flatten(1)) for k in range(K)], 1).double()


@contextlib.contextmanager
def frozen(model: nn.Module):
    """Weights need no grad and dropout is off while scoring; both restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        model.train(was_training)


class GradientFeatures:
    """Projected per-document gradients of the tracked blocks of one model architecture."""

    def __init__(self, model: nn.Module, cfg: InfluenceConfig):
        self.cfg = cfg
        self.amp_on_cpu = False  # tests: exercise the autocast path on CPU (as FusedFeatures.amp_on_cpu)
        self.blocks = build_blocks(model, cfg)
        self.dims = block_dims(self.blocks, cfg)
        self._proj_cpu = [
            (projection_matrix(cfg, b.name, "in", ki, b.d_in), projection_matrix(cfg, b.name, "out", ko, b.d_out))
            for b, (ki, ko) in zip(self.blocks, self.dims)
        ]
        self._proj_raw = self._proj_cpu
        self._proj_cache: dict = {}
        self.built = cfg.projection != "reference"  # the reference subspaces come with the first refresh

    def set_projections(self, projs: list[tuple[torch.Tensor | None, torch.Tensor | None]]) -> None:
        """Replace the per-block (P_in, P_out) (projection="reference": built at every refresh)."""
        if [(None if pi is None else pi.shape[0], None if po is None else po.shape[0]) for pi, po in projs] != [
            (None if ki >= b.d_in else ki, None if ko >= b.d_out else ko) for b, (ki, ko) in zip(self.blocks, self.dims)
        ]:
            raise ThresherError("influence: projections do not match the blocks' (k_in, k_out)")
        self._proj_cpu = self._proj_raw = [(None if pi is None else pi.cpu(), None if po is None else po.cpu()) for pi, po in projs]
        self._proj_cache = {}
        self.built = True

    @property
    def raw_projections(self) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """Per block (P_in, P_out) on the CPU, float64, without whitening (None = side unprojected)."""
        return self._proj_raw

    def set_whitening(self, whiteners: list[tuple[torch.Tensor, torch.Tensor]] | None) -> None:
        """Fold per-block (W_in (d_in, d_in), W_out (d_out, d_out)) into the projections: features become
        P_out W_out V W_in P_in^T (same cost per document). None restores the plain projections."""
        if whiteners is None:
            self._proj_cpu = self._proj_raw
        else:
            fold = lambda p, w: w if p is None else p @ w  # noqa: E731
            self._proj_cpu = [(fold(pi, wi), fold(po, wo)) for (pi, po), (wi, wo) in zip(self._proj_raw, whiteners)]
        self._proj_cache = {}

    @property
    def dim(self) -> int:
        return sum(ki * ko for ki, ko in self.dims)

    def attach(self, model: nn.Module) -> None:
        """Point at the Linears of ``model`` (same architecture; e.g. a new model object after refresh)."""
        blocks = build_blocks(model, self.cfg)
        if [b.name for b in blocks] != [b.name for b in self.blocks] or [b.d_outs for b in blocks] != [
            b.d_outs for b in self.blocks
        ]:
            raise ThresherError("influence: the model's tracked modules changed since the scorer was built")
        self.blocks = blocks

    def projections(self, device, dtype) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
        if not self.built:
            raise ThresherError("influence: projection='reference' is built from the reference at refresh; call refresh(model) first")
        key = (str(device), dtype)
        if key not in self._proj_cache:
            mv = lambda p: None if p is None else p.to(device=device, dtype=dtype)  # noqa: E731
            self._proj_cache[key] = [(mv(pi), mv(po)) for pi, po in self._proj_cpu]
        return self._proj_cache[key]

    def project_blocks(self, blocks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per block (N, d_out, d_in) full-space matrices -> (N, k_out, k_in) = P_out V P_in^T (plain P)."""
        out = []
        for v, (p_in, p_out) in zip(blocks, self._proj_raw):
            p_in, p_out = (None if p is None else p.to(device=v.device, dtype=v.dtype) for p in (p_in, p_out))
            v = v if p_out is None else p_out @ v
            out.append(v if p_in is None else v @ p_in.T)
        return out

    def sequences(self, model: nn.Module, batch: dict, project: bool = True) -> list[BlockSeq]:
        """Forward + one backward to the tracked outputs; (a, delta) per block, projected unless
        ``project=False`` (then (B, T, d_in), (B, T, d_out): the full space, for factors at refresh)."""
        dev = next(model.parameters()).device
        fdtype = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
        batch = {k: v.to(dev) for k, v in batch.items()}
        mask = batch["attention_mask"].unsqueeze(-1).to(fdtype)  # (B, T, 1)
        projs = self.projections(dev, fdtype) if project else [(None, None)] * len(self.blocks)
        acts: list = [None] * len(self.blocks)
        outs: list = []
        handles = [model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_())]
        for bi, blk in enumerate(self.blocks):
            for mi, mod in enumerate(blk.modules):
                handles.append(mod.register_forward_hook(self._capture(bi, mi, acts, outs, projs, mask)))
        try:
            with frozen(model), torch.enable_grad(), self._autocast(dev):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
                loss = summed_doc_loss(logits, batch["labels"], self.cfg.doc_loss)
                grads = torch.autograd.grad(loss, [o for _, o in outs], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        return self._project_grads(acts, outs, grads, projs, mask)

    def exact_rewards(self, model: nn.Module, batch: dict, targets: list[list[torch.Tensor]]) -> torch.Tensor:
        """(B, K) float64 rewards sum_blocks sum_t delta_t^T U_k a_t; ``targets[block][member]`` is that
        member's rows of U, (K, d_out_member, d_in), on the model's device in the feature dtype.

        No projection, no weight gradient: a tensor hook on each tracked output contracts its gradient
        with U and a as soon as backward produces it (exact_contract), so no output gradient is kept."""
        dev = next(model.parameters()).device
        fdtype = targets[0][0].dtype
        batch = {k: v.to(dev) for k, v in batch.items()}
        mask = batch["attention_mask"].unsqueeze(-1).to(fdtype)  # (B, T, 1)
        out = torch.zeros(batch["input_ids"].shape[0], targets[0][0].shape[0], dtype=torch.float64, device=dev)
        acts: list = [None] * len(self.blocks)
        emb: list = []
        handles = [model.get_input_embeddings().register_forward_hook(lambda m, i, o: emb.append(o.requires_grad_()))]
        for bi, blk in enumerate(self.blocks):
            for mi, mod in enumerate(blk.modules):
                hook = self._exact_capture(bi, mi, targets[bi][mi], acts, mask, out)
                handles.append(mod.register_forward_hook(hook))
        try:
            with frozen(model), torch.enable_grad(), self._autocast(dev):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
                loss = summed_doc_loss(logits, batch["labels"], self.cfg.doc_loss)
                torch.autograd.grad(loss, emb[:1])  # the hooks fire on every tracked output on the way
        finally:
            for h in handles:
                h.remove()
        for bi, blk in enumerate(self.blocks):  # an output that never reaches the loss has zero gradient
            if acts[bi] is None:
                raise ThresherError(f"influence: block {blk.name} was not run by the model's forward")
        return out

    def _exact_capture(self, bi, mi, u, acts, mask, out):
        def grad_hook(g):  # g: (B, T, d_out_member), this member's output gradient
            with torch.no_grad():
                out.add_(exact_contract(acts[bi][1], g.to(u.dtype), u))

        def hook(mod, inputs, output):
            x = inputs[0]
            if acts[bi] is None:  # the block's first member to run (any order) captures the shared input
                acts[bi] = (x, x.detach().to(u.dtype) * mask)
            elif acts[bi][0] is not x:
                raise ThresherError(f"influence: block {self.blocks[bi].name} members do not share one input")
            output.register_hook(grad_hook)

        return hook

    def _capture(self, bi, mi, acts, outs, projs, mask):
        def hook(mod, inputs, output):
            x = inputs[0]
            if acts[bi] is None:  # the block's first member to run (any order) captures the shared input
                with torch.no_grad(), torch.autocast(x.device.type, enabled=False):  # projected in the feature dtype
                    p_in = projs[bi][0]
                    xa = x.detach().to(mask.dtype)
                    acts[bi] = (x, (xa if p_in is None else xa @ p_in.T) * mask)
            elif acts[bi][0] is not x:
                raise ThresherError(f"influence: block {self.blocks[bi].name} members do not share one input")
            outs.append(((bi, mi), output))

        return hook

    def _project_grads(self, acts, outs, grads, projs, mask) -> list[BlockSeq]:
        per_block: dict[int, list] = {}
        for ((bi, mi), out), g in zip(outs, grads):
            per_block.setdefault(bi, [None] * len(self.blocks[bi].modules))[mi] = (
                torch.zeros_like(out) if g is None else g
            )
        seqs = []
        for bi, blk in enumerate(self.blocks):
            if acts[bi] is None or bi not in per_block:
                raise ThresherError(f"influence: block {blk.name} was not run by the model's forward")
            delta = torch.cat(per_block[bi], dim=-1).to(mask.dtype)  # (B, T, d_out)
            p_out = projs[bi][1]
            delta = (delta if p_out is None else delta @ p_out.T) * mask
            seqs.append(BlockSeq(acts[bi][1], delta))
        return seqs

    def _autocast(self, dev):
        if not self.cfg.autocast or (dev.type != "cuda" and not self.amp_on_cpu):
            return contextlib.nullcontext()
        dt = torch.bfloat16 if self.cfg.autocast == "bf16" else torch.float16
        return torch.autocast(dev.type, dtype=dt)

    @staticmethod
    def block_features(seqs: list[BlockSeq]) -> list[torch.Tensor]:
        """Per block (B, k_out, k_in) = sum_t delta_t a_t^T (projected)."""
        return [torch.bmm(s.delta.transpose(1, 2), s.a) for s in seqs]

    def features(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """(B, D) concatenated flattened block features."""
        return torch.cat([f.flatten(1) for f in self.block_features(self.sequences(model, batch))], dim=1)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """(N, D) -> per block (N, k_out, k_in) views."""
        sizes = [ki * ko for ki, ko in self.dims]
        return [c.view(flat.shape[0], ko, ki) for c, (ki, ko) in zip(flat.split(sizes, dim=1), self.dims)]
