"""Trainer settings: one flat dataclass that round-trips to TOML (plain fields, all with defaults)."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from thresher.utils.errors import ThresherError

DEVICE_PATTERN = r"auto|cpu|cuda(?::(\d+))?"  # train.device; group 1: the index of "cuda:N"


@dataclass
class TrainConfig:
    # model: a name from thresher.train.models.MODELS (tiny, debug, 20m, 60m, 125m, 370m, 1.3b)
    model: str = "tiny"
    # your own recipe: ModelConfig fields changed on top of `model`, e.g. {hidden = 1536, layers = 20,
    # heads = 12, kv_heads = 4, max_seq_len = 2048, rope_theta = 500000.0, tie_embeddings = true}
    model_overrides: dict = field(default_factory=dict)
    seq_len: int = 128  # tokens per training sequence (documents packed, EOS between them)
    micro_batch: int = 4  # sequences per forward/backward on one rank
    global_batch_tokens: int = 2048  # tokens per optimizer update, all ranks and micro-steps together
    steps: int = 100  # optimizer updates
    # optimizer (multi-agent paper A.2: Adam, beta 0.9/0.95, eps 1e-8)
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio (cosine floor / WSD decay target)
    warmup_steps: int = 10  # linear warmup from 0 to lr
    schedule: str = "cosine"  # "cosine" (warmup + cosine), "wsd" (warmup-stable-decay), "constant"
    decay_fraction: float = 0.2  # WSD: the last fraction of steps that decays linearly
    beta1: float = 0.9  # AdamW betas, eps and decoupled weight decay (fused AdamW on CUDA)
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip: float = 1.0  # global grad-norm clip; 0 disables
    seed: int = 0  # model init, data order; follows the run's top-level seed unless set
    # runtime
    dtype: str = "bfloat16"  # autocast dtype on CUDA (float16 adds loss scaling; not with fsdp); CPU: float32
    compile: bool = False  # torch.compile the training step (scope: compile_scope)
    # what torch.compile compiles: "model" (the whole trained module, one graph) | "layers" (each decoder
    # layer's forward, compiled once and reused by every layer: a fraction of the compile time; active
    # only inside the training micro-steps, so the selector and evaluation run the layers eagerly)
    compile_scope: str = "model"
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda" (under torchrun: cuda:LOCAL_RANK), "cuda:N"
    fsdp: bool = False  # under torchrun: FSDP2 (fully_shard per decoder layer) instead of DDP
    doc_positions: bool = False  # position_ids restart at every document piece (see docs/train.md)
    prefetch: int = 2  # micro-batches prepared ahead by a background thread; 0 = synchronous
    # "full": cross-entropy on the (B, T, V) logits; "chunked": LM head + loss + their grads computed
    # loss_chunk_tokens tokens at a time, never holding all logits (train/loss.py; not with fsdp)
    loss_impl: str = "full"
    loss_chunk_tokens: int = 4096  # tokens per chunk of loss_impl = "chunked"
    # evaluation / logging / checkpoints
    eval_every: int = 0  # steps between reference-loss evaluations (0 = only at the end)
    eval_batch_size: int = 16  # reference examples per evaluation batch
    eval_max_len: int = 1024  # window of an evaluated example (context cut from the left)
    ckpt_every: int = 0  # steps between checkpoints (0 = none, except the final export)
    keep_last: int = 2  # checkpoints kept (>= 1); older ones deleted ...
    keep_every: int = 0  # ... except every keep_every-th step (0 = none kept permanently)
    log_every: int = 1  # metrics.jsonl line every this many steps
    tensorboard: bool = False  # also write TensorBoard events to out_dir/tensorboard (rank 0; thresher[tensorboard])
    peak_flops: Optional[float] = None  # per-device peak FLOP/s for MFU; None = look up the GPU, CPU -> no MFU
    export: bool = True  # write out_dir/final as a Hugging Face folder at the end

    def validate(self) -> "TrainConfig":
        if self.schedule not in ("cosine", "wsd", "constant"):
            raise ThresherError(f"train.schedule must be cosine, wsd or constant, got {self.schedule!r}")
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise ThresherError(f"train.dtype must be bfloat16, float16 or float32, got {self.dtype!r}")
        if self.dtype == "float16" and self.fsdp:
            raise ThresherError("train.dtype='float16' needs loss scaling, which is not supported with fsdp=true; "
                                "use dtype='bfloat16'")
        if not re.fullmatch(DEVICE_PATTERN, self.device):
            raise ThresherError(f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.keep_last < 1:
            raise ThresherError(f"train.keep_last must be >= 1 (checkpoints kept), got {self.keep_last}")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:  # before anything is written
            from thresher.train.callbacks import TENSORBOARD_MISSING

            raise ThresherError(TENSORBOARD_MISSING)
        if self.compile_scope not in ("model", "layers"):
            raise ThresherError(f"train.compile_scope must be model or layers, got {self.compile_scope!r}")
        if self.loss_impl not in ("full", "chunked"):
            raise ThresherError(f"train.loss_impl must be full or chunked, got {self.loss_impl!r}")
        if self.loss_impl == "chunked" and self.fsdp:
            raise ThresherError("train.loss_impl='chunked' does not support fsdp=true yet; use DDP or loss_impl='full'")
        for name in ("seq_len", "micro_batch", "global_batch_tokens", "steps", "loss_chunk_tokens"):
            if getattr(self, name) <= 0:
                raise ThresherError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.warmup_steps < 0 or not 0.0 <= self.decay_fraction <= 1.0:
            raise ThresherError("train.warmup_steps must be >= 0 and train.decay_fraction in [0, 1]")
        return self

    def model_config(self):
        """The ModelConfig trained: ``model`` with ``model_overrides`` applied (checked), whose context holds
        ``seq_len``."""
        from thresher.train.models import resolve_model

        model = resolve_model(self.model, self.model_overrides)
        if self.seq_len > model.max_seq_len:
            raise ThresherError(f"train.seq_len={self.seq_len} exceeds model {model.name}'s context "
                                f"{model.max_seq_len}")
        return model

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ThresherError(f"unknown train settings: {', '.join(unknown)}")
        return cls(**d).validate()
