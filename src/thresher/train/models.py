"""Named LLaMA-2-architecture model configs and the model factory.

The paper sizes (multi-agent paper, Table 3) are reproduced exactly with vocab 32,000:
  370m: hidden 1024, 24 layers, 8 heads   -> 373,867,520 parameters
  1.3b: hidden 2048, 24 layers, 16 heads  -> 1,345,423,360 parameters
Both need UNTIED input/output embeddings and an MLP width of 8/3 * hidden rounded UP to a multiple
of 128 (2816 and 5504); rounding to 256 (the LLaMA reference code) gives 5632 and a wrong 1.3b count.
Smaller configs are derived from the same base so a CPU run exercises the same code path.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch

from thresher.utils.errors import ThresherError


@dataclass(frozen=True)
class ModelConfig:
    name: str = "base"
    hidden: int = 1024
    layers: int = 24
    heads: int = 8
    kv_heads: int | None = None  # None = heads (multi-head attention, as in Table 3)
    mlp_ratio: float = 8 / 3
    multiple_of: int = 128  # MLP width rounded up to this
    max_seq_len: int = 1024
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02

    @property
    def intermediate(self) -> int:
        return self.multiple_of * math.ceil(self.mlp_ratio * self.hidden / self.multiple_of)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def _base() -> ModelConfig:
    return ModelConfig()


def _derive(name: str, **changes) -> Callable[[], ModelConfig]:
    return lambda: dataclasses.replace(_base(), name=name, **changes)


# Parameter counts in the names are nominal at vocab 32,000 (the embeddings dominate small models).
MODELS: dict[str, Callable[[], ModelConfig]] = {
    "tiny": _derive("tiny", hidden=64, layers=2, heads=4, max_seq_len=256, multiple_of=16),
    "debug": _derive("debug", hidden=128, layers=4, heads=4, max_seq_len=512, multiple_of=32),
    "20m": _derive("20m", hidden=256, layers=8, heads=4),
    "60m": _derive("60m", hidden=512, layers=8, heads=8),
    "125m": _derive("125m", hidden=768, layers=12, heads=12),
    "370m": _derive("370m", hidden=1024, layers=24, heads=8),
    "1.3b": _derive("1.3b", hidden=2048, layers=24, heads=16),
}


def get_model_config(name_or_cfg: str | ModelConfig) -> ModelConfig:
    if isinstance(name_or_cfg, ModelConfig):
        return name_or_cfg
    if name_or_cfg not in MODELS:
        raise ThresherError(f"unknown model {name_or_cfg!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name_or_cfg]()


def resolve_model(name: str, overrides: dict | None = None) -> ModelConfig:
    """The named config with ``overrides`` (ModelConfig fields) applied; unknown fields, wrong types and
    shapes that do not divide (hidden by heads, heads by kv_heads) are one-line errors."""
    cfg = get_model_config(name)
    if not overrides:
        return cfg
    kinds = {"hidden": int, "layers": int, "heads": int, "kv_heads": int, "multiple_of": int, "max_seq_len": int,
             "mlp_ratio": float, "rope_theta": float, "norm_eps": float, "init_std": float, "tie_embeddings": bool}
    unknown = sorted(set(overrides) - set(kinds))
    if unknown:
        raise ThresherError(f"train.model_overrides: unknown field(s) {unknown}; choose from {sorted(kinds)}")
    for k, v in overrides.items():
        want = kinds[k]
        ok = isinstance(v, bool) if want is bool else (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       and (want is float or float(v).is_integer()))
        if not ok or (want is not bool and v <= 0):
            what = "true or false" if want is bool else f"a positive {want.__name__}"
            raise ThresherError(f"train.model_overrides.{k} = {v!r}: expected {what}")
    vals = {k: want(v) for k, v in overrides.items() for want in [kinds[k]]}
    out = dataclasses.replace(cfg, name=f"{cfg.name}+" + ",".join(f"{k}={v}" for k, v in sorted(vals.items())), **vals)
    kv = out.kv_heads or out.heads
    if out.hidden % out.heads or out.heads % kv:
        raise ThresherError(f"train.model_overrides: hidden ({out.hidden}) must divide by heads ({out.heads}) and "
                            f"heads by kv_heads ({kv})")
    return out


def hf_config(cfg: ModelConfig, vocab_size: int, pad_id: int | None = None, eos_id: int | None = None):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads or cfg.heads,
        max_position_embeddings=cfg.max_seq_len,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
    )


def build_model(
    name_or_cfg: str | ModelConfig,
    vocab_size: int,
    dtype: torch.dtype = torch.float32,
    pad_id: int | None = None,
    eos_id: int | None = None,
    attn_implementation: str = "sdpa",
):
    """A freshly initialised ``LlamaForCausalLM`` (seed torch before calling for a replayable init).

    Build under ``with torch.device("meta"):`` to count parameters without allocating them.
    """
    from transformers import LlamaForCausalLM

    cfg = get_model_config(name_or_cfg)
    hf = hf_config(cfg, vocab_size, pad_id, eos_id)
    hf._attn_implementation = attn_implementation
    model = LlamaForCausalLM(hf)
    return model.to(dtype=dtype)


def count_params(cfg: ModelConfig, vocab_size: int) -> int:
    """Closed form of ``sum(p.numel())`` for the HF Llama built from ``cfg`` (tests check they agree)."""
    h, kv = cfg.hidden, (cfg.kv_heads or cfg.heads) * cfg.head_dim
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * cfg.intermediate + 2 * h  # q,o + k,v + MLP + 2 norms
    embed = vocab_size * h * (1 if cfg.tie_embeddings else 2)
    return cfg.layers * per_layer + h + embed


def count_flops_per_token(cfg: ModelConfig, vocab_size: int, seq_len: int) -> float:
    """Training FLOPs per token, forward + backward: 6 N + 12 L T h (PaLM appendix B).

    N counts every weight used in a matmul: all layer weights plus the output head (the input
    embedding is a lookup, not a matmul). 12 L T h is the attention score and value matmuls
    (QK^T and AV) over a causal context of T, counted without the causal half-saving as is standard.
    """
    h = cfg.hidden
    n_matmul = count_params(cfg, vocab_size) - vocab_size * h * (0 if cfg.tie_embeddings else 1)
    n_matmul -= cfg.layers * 2 * h + h  # norms are not matmuls
    return 6.0 * n_matmul + 12.0 * cfg.layers * seq_len * h
