"""Hook-free, compile-friendly per-document features and exact rewards (same numbers as features.py).

features.py takes the tracked outputs' gradients with forward hooks and torch.autograd.grad(loss,
outputs): every full-width output gradient (B, T, d_out) is held at once, and hooks cannot be compiled.
Here each tracked Linear runs through a custom autograd.Function for one call of the model:

    forward(x, W, b, a_p, aux, sink) = x W^T + b            saves W, a_p, aux (never x)
    backward(delta)                  = (delta W, ..., contraction of delta with aux and a_p)

``sink`` is a zeros tensor that requires grad, one per block and shared by its members, so autograd
sums the members' contributions into its "gradient"; torch.autograd.grad(loss, sinks) then returns, per
block, exactly what features.py computes from the captured sequences:

    features  a_p = (P_in a) * mask (B, T, k_in), computed once per block; aux = the member's columns
              of P_out (k_out, d_out_m); sink (B, k_out, k_in) gets sum_t (P_out_m delta_m,t)(a_p,t)^T.
              An unprojected output side gives each member its own rows of the sink (a slice).
    exact     a_p = a * mask (B, T, d_in); aux = the member's U (K, d_out_m, d_in); sink (B, K) float64
              gets sum_t delta_m,t^T U_k a_t (features.exact_contract).

Weights are frozen (features.frozen): no weight gradient is ever formed, nothing before the first
tracked Linear is differentiated (only the sinks require grad), and each output gradient is consumed
as soon as backward produces it. The model's Linear forwards are patched for the call only and
restored afterwards, also on error. With ``compile=True`` the forward and loss are torch.compile'd
(the custom backward is compiled with them by AOTAutograd; torch.autograd.grad itself runs eagerly).
Shapes: batches are padded to a fixed batch size and to a sequence bucket (padding changes nothing:
padded tokens are masked out of a and carry no label), so dynamic=False compiles once per bucket.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from thresher.influence.features import GradientFeatures, exact_contract, frozen, summed_doc_loss
from thresher.influence.modules import Block
from thresher.utils.errors import ThresherError


class _SinkLinear(torch.autograd.Function):
    """y = F.linear(x, W, b), saving W, the block's input a (projected or not) and the member's aux;
    subclasses define what the backward adds to ``sink``'s gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, a, aux, sink):
        ctx.save_for_backward(weight, a, aux)
        ctx.x_dtype = x.dtype
        return F.linear(x, weight, bias)


class _FeatureLinear(_SinkLinear):
    """sink's gradient = sum_t (P_out_m delta_t)(a_p,t)^T, (B, k_out, k_in); aux = P_out_m or None."""

    @staticmethod
    def backward(ctx, grad_out):
        weight, a_p, p_out = ctx.saved_tensors
        d = grad_out.to(a_p.dtype)  # (B, T, d_out_m)
        d = d if p_out is None else d @ p_out.T  # (B, T, k_out)
        contrib = torch.bmm(d.transpose(1, 2), a_p)  # (B, k_out, k_in); padding rows of a_p are zero
        return _input_grad(ctx, grad_out, weight), None, None, None, None, contrib


class _ExactLinear(_SinkLinear):
    """sink's gradient = sum_t delta_t^T U_k a_t, (B, K) float64; aux = the member's U (K, d_out_m, d_in)."""

    @staticmethod
    def backward(ctx, grad_out):
        weight, a, u = ctx.saved_tensors
        contrib = exact_contract(a, grad_out.to(u.dtype), u)
        return _input_grad(ctx, grad_out, weight), None, None, None, None, contrib


def _input_grad(ctx, grad_out, weight):
    """delta W in the output gradient's dtype (bf16 under autocast), cast back to x's dtype; None when
    nothing upstream needs it (the first tracked Linear reads an input that does not require grad)."""
    if not ctx.needs_input_grad[0]:
        return None
    return (grad_out @ weight.to(grad_out.dtype)).to(ctx.x_dtype)


class _Router:
    """What each patched Linear does during one call: set by ``begin``, cleared by ``end``.

    plan[bi] = (p_in or None, [(fn, aux, sink, rows) per member]); p_in None = the input side
    unprojected; rows = None (the member adds into the whole sink) or (start, end) of its own rows."""

    def __init__(self, blocks: list[Block]):
        self.blocks = blocks
        self.plan: list | None = None
        self.mask: torch.Tensor | None = None
        self.inputs: list = []

    def begin(self, plan, mask) -> None:
        self.plan, self.mask, self.inputs = plan, mask, [None] * len(self.blocks)

    def end(self) -> None:
        self.plan, self.mask, self.inputs = None, None, []

    def linear(self, bi: int, mi: int, mod: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if self.plan is None:  # called outside a fused call (cannot happen while patched; be safe)
            return F.linear(x, mod.weight, mod.bias)
        p_in, members = self.plan[bi]
        if self.inputs[bi] is None:  # the block's first member to run (any order) projects the shared input
            self.inputs[bi] = (x, self._project(x, p_in))
        elif self.inputs[bi][0] is not x:
            raise ThresherError(f"influence: block {self.blocks[bi].name} members do not share one input")
        fn, aux, sink, rows = members[mi]
        if rows is not None:  # output side unprojected: this member's rows of the block's sink
            sink = sink[:, rows[0] : rows[1]]
        return fn.apply(x, mod.weight, mod.bias, self.inputs[bi][1], aux, sink)

    def _project(self, x: torch.Tensor, p_in: torch.Tensor | None) -> torch.Tensor:
        """(B, T, k_in) = (P_in a) * mask in the feature dtype, outside autocast (float32 on CUDA)."""
        with torch.autocast(x.device.type, enabled=False):
            a = x.detach().to(self.mask.dtype)
            return (a if p_in is None else a @ p_in.T) * self.mask


@contextlib.contextmanager
def routed(blocks: list[Block], forwards: list[list]):
    """Route each tracked Linear's forward through ``forwards[bi][mi]`` (an instance attribute that
    shadows nn.Linear.forward); every module is restored on exit, also on error."""
    patched: list[tuple[nn.Module, object]] = []
    try:
        for blk, fws in zip(blocks, forwards):
            for mod, fw in zip(blk.modules, fws):
                patched.append((mod, mod.__dict__.get("forward")))
                mod.forward = fw
        yield
    finally:
        for mod, old in reversed(patched):
            if old is None:
                mod.__dict__.pop("forward", None)
            else:
                mod.forward = old


def _forward_loss(router: _Router, model: nn.Module, plan, ids, attn, labels, mask, doc_loss: str, amp_dtype):
    """The part that torch.compile traces: the routed forward and the summed per-document loss."""
    router.begin(plan, mask)
    amp = contextlib.nullcontext() if amp_dtype is None else torch.autocast(ids.device.type, dtype=amp_dtype)
    try:
        with amp:
            logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        return summed_doc_loss(logits, labels, doc_loss)
    finally:
        router.end()


class FusedFeatures:
    """Hook-free features / exact rewards for the blocks and projections of a GradientFeatures.

    compile: torch.compile the forward + loss (dynamic=False; batches padded to ``batch_size`` rows and
    to a sequence bucket: powers of two from ``min_seq`` up, or multiples of ``seq_multiple`` if > 0).
    backend: torch.compile backend ("inductor"; "aot_eager" traces the same graphs without a compiler).
    """

    def __init__(self, gf: GradientFeatures, compile: bool = False, backend: str = "inductor",
                 min_seq: int = 64, seq_multiple: int = 0):
        self.gf, self.compile, self.backend = gf, compile, backend
        self.min_seq, self.seq_multiple = min_seq, seq_multiple
        self._blocks: list[Block] | None = None
        self._router: _Router | None = None
        self._forwards: list[list] = []
        self._compiled = None
        self._cache: dict = {}
        self.amp_on_cpu = False  # tests: exercise the autocast path on CPU

    # ---- public -------------------------------------------------------------------------------
    def block_features(self, model: nn.Module, batch: dict) -> list[torch.Tensor]:
        """Per block (B, k_out, k_in) = P_out (sum_t delta_t a_t^T) P_in^T: GradientFeatures.block_features."""
        dev, fdtype = _device_dtype(model)
        projs = self.gf.projections(dev, fdtype)
        batch, B = self._prepare(batch, dev)
        rows = batch["input_ids"].shape[0]
        plan, leaves = [], []
        for bi, (blk, (p_in, p_out)) in enumerate(zip(self.gf.blocks, projs)):
            k_in = blk.d_in if p_in is None else p_in.shape[0]
            k_out = blk.d_out if p_out is None else p_out.shape[0]
            sink = self._sink((rows, k_out, k_in), dev, fdtype, len(leaves))
            leaves.append(sink)
            plan.append((p_in, self._feature_members(bi, blk, p_out, sink)))
        return [g[:B] for g in self._run(model, batch, plan, leaves, fdtype)]

    def features(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """(B, D) concatenated flattened block features: GradientFeatures.features."""
        return torch.cat([f.flatten(1) for f in self.block_features(model, batch)], dim=1)

    def exact_rewards(self, model: nn.Module, batch: dict, targets: list[list[torch.Tensor]]) -> torch.Tensor:
        """(B, K) float64 sum_blocks sum_t delta_t^T U_k a_t: GradientFeatures.exact_rewards; ``targets
        [block][member]`` = that member's rows of U (K, d_out_m, d_in) in the feature dtype."""
        dev, _ = _device_dtype(model)
        fdtype = targets[0][0].dtype
        batch, B = self._prepare(batch, dev)
        rows, K = batch["input_ids"].shape[0], targets[0][0].shape[0]
        plan, leaves = [], []
        for blk, us in zip(self.gf.blocks, targets):
            sink = self._sink((rows, K), dev, torch.float64, len(leaves))
            leaves.append(sink)
            plan.append((None, [(_ExactLinear, u, sink, None) for u in us]))
        return sum(self._run(model, batch, plan, leaves, fdtype))[:B]

    # ---- internals ----------------------------------------------------------------------------
    def _feature_members(self, bi: int, blk: Block, p_out: torch.Tensor | None, sink: torch.Tensor) -> list:
        """(fn, aux, sink, rows) per member: the member's columns of P_out and the whole sink, or (output
        side unprojected) no P_out and the member's rows of the sink."""
        members, off = [], 0
        for d in blk.d_outs:
            if p_out is None:
                members.append((_FeatureLinear, None, sink, (off, off + d)))
            else:
                members.append((_FeatureLinear, self._columns(bi, p_out, off, d), sink, None))
            off += d
        return members

    def _columns(self, bi: int, p_out: torch.Tensor, off: int, d: int) -> torch.Tensor:
        """Columns off:off+d of block bi's P_out, contiguous, recomputed only when P_out changes (whitening,
        projection="reference" at every refresh); one entry per member, so nothing stale is kept."""
        key = ("cols", bi, off)
        if key not in self._cache or self._cache[key][0] is not p_out:
            self._cache[key] = (p_out, p_out[:, off : off + d].contiguous())
        return self._cache[key][1]

    def _sink(self, shape, dev, dtype, i: int) -> torch.Tensor:
        """A zeros leaf that requires grad; never written (autograd.grad does not accumulate), so reused."""
        key = ("sink", i, tuple(shape), str(dev), dtype)
        if key not in self._cache:
            self._cache[key] = torch.zeros(shape, device=dev, dtype=dtype, requires_grad=True)
        return self._cache[key]

    def _prepare(self, batch: dict, dev) -> tuple[dict, int]:
        """The batch on ``dev`` (padded to a compiled shape under compile) and its real row count."""
        self._attach()
        batch = {k: v.to(dev) for k, v in batch.items()}
        B = batch["input_ids"].shape[0]
        return (self._pad(batch) if self.compile else batch), B

    def _run(self, model, batch, plan, leaves, fdtype) -> list[torch.Tensor]:
        """Per leaf (sink) its gradient: the per-block features or rewards, all rows."""
        dev = leaves[0].device
        mask = batch["attention_mask"].unsqueeze(-1).to(fdtype)  # (B, T, 1)
        fn = self._compiled_fn() if self.compile else _forward_loss
        with frozen(model), torch.enable_grad(), routed(self.gf.blocks, self._forwards), _compile_errors():
            loss = fn(self._router, model, plan, batch["input_ids"], batch["attention_mask"], batch["labels"],
                      mask, self.gf.cfg.doc_loss, self._amp_dtype(dev))
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        for blk, g in zip(self.gf.blocks, grads):
            if g is None:
                raise ThresherError(f"influence: block {blk.name} was not run by the model's forward")
        return list(grads)

    def _amp_dtype(self, dev) -> torch.dtype | None:
        """Autocast dtype as in GradientFeatures._autocast: cfg.autocast, on CUDA only."""
        if not self.gf.cfg.autocast or (dev.type != "cuda" and not self.amp_on_cpu):
            return None
        return torch.bfloat16 if self.gf.cfg.autocast == "bf16" else torch.float16

    def _attach(self) -> None:
        """(Re)build the router and the patched forwards when GradientFeatures points at new modules;
        the same function objects are reused across calls so compiled graphs' guards keep holding."""
        if self._blocks is not None and [b.modules for b in self._blocks] == [b.modules for b in self.gf.blocks]:
            return
        self._blocks = list(self.gf.blocks)
        self._router = _Router(self._blocks)
        self._forwards = [[_bound(self._router, bi, mi, mod) for mi, mod in enumerate(b.modules)]
                          for bi, b in enumerate(self._blocks)]
        self._compiled, self._cache = None, {}

    def _compiled_fn(self):
        if self._compiled is None:
            self._compiled = torch.compile(_forward_loss, dynamic=False, backend=self.backend)
        return self._compiled

    def _bucket(self, T: int) -> int:
        if self.seq_multiple > 0:
            return -(-T // self.seq_multiple) * self.seq_multiple
        return max(self.min_seq, 1 << math.ceil(math.log2(max(T, 1))))

    def _pad(self, batch: dict) -> dict:
        """Right-pad to batch_size rows and the sequence bucket; padded tokens are masked and unlabelled.
        A padded row keeps one unmasked token (no fully masked attention row) and no label (weight 0)."""
        ids, attn, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        B, T = ids.shape
        rows, cols = max(B, self.gf.cfg.batch_size), min(self._bucket(T), max(T, self.gf.cfg.max_len))
        if (rows, cols) == (B, T):
            return batch
        pad = lambda t, v: F.pad(t, (0, cols - T, 0, rows - B), value=v)  # noqa: E731
        ids, attn, labels = pad(ids, self.gf.cfg.pad_id), pad(attn, 0), pad(labels, -100)
        attn[B:, 0] = 1
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}


@contextlib.contextmanager
def _compile_errors():
    """A failed compilation (no C++ compiler for inductor on CPU, an unsupported op) as a one-line
    ThresherError; errors of the model itself pass through unchanged."""
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor import exc as inductor_exc

    InductorError = getattr(inductor_exc, "InductorError", BackendCompilerFailed)  # newer torch only
    try:
        yield
    except (BackendCompilerFailed, InductorError) as e:
        inner = getattr(e, "inner_exception", None) or e
        msg = f"{type(inner).__name__}: {(str(inner).strip().splitlines() or [''])[0][:200]}"
        raise ThresherError(
            f"influence: torch.compile of the scoring step failed ({msg}); inductor on CPU needs a C++ "
            "compiler. Score without compiling (compile_scoring = false)"
        ) from e


def _bound(router: _Router, bi: int, mi: int, mod: nn.Linear):
    def forward(x):
        return router.linear(bi, mi, mod, x)

    return forward


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, (torch.float64 if p.dtype == torch.float64 else torch.float32)

