"""Settings of the influence engine: one dataclass, plain fields, round-trips to TOML."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from thresher.utils.errors import ThresherError

DEFAULT_MODULES = [
    r"layers\.\d+\.self_attn\.(q|k|v|o)_proj$",
    r"layers\.\d+\.mlp\.(gate|up|down)_proj$",
]
MLP_MODULES = [r"layers\.\d+\.mlp\.(gate|up|down)_proj$"]
# Linears that read the same input activation and are factored as one block under grouping="qkv".
DEFAULT_GROUPS = [["q_proj", "k_proj", "v_proj"], ["gate_proj", "up_proj"]]
# settings that change how fast the rewards are computed, not their values: left out of a scorer's settings
# (saved results stay comparable) and free to change on a resume
SPEED_ONLY = ("batch_size", "scoring_impl", "compile_scoring", "compile_seq_multiple", "lambda_keep_max_entries")


@dataclass
class InfluenceConfig:
    # which Linears are tracked (regexes searched in the module's qualified name); [] = DEFAULT_MODULES
    modules: list = field(default_factory=list)
    grouping: str = "qkv"  # "qkv" | "independent" | "mlp_only"
    groups: list = field(default_factory=lambda: [list(g) for g in DEFAULT_GROUPS])  # grouping = "qkv": modules sharing one input block (q,k,v; gate,up)
    # projection of per-block gradients: "orthogonal" (random Gaussian made orthonormal, scaled sqrt(d/k):
    # lower variance than "gaussian") | "gaussian" | "rademacher" (JL sketches) | "none" (exact) |
    # "reference": per block the top singular subspaces of the (whitened) preconditioned reference gradients,
    # rebuilt at every refresh (needs the full-space factors, like precondition_space="full") |
    # "auto" (default): "reference" when the full factors + one target per task hold <= full_space_max_entries
    # numbers, else "orthogonal"
    projection: str = "auto"
    projection_dim: int = 8192  # total feature dimension over blocks
    projection_alloc: str = "equal"  # per-block share of projection_dim: "equal" | "size" (by d_in * d_out)
    projection_split: str = "balanced"  # (k_in, k_out) of a share k: "balanced" | "square" | "exact_side"
    k_in: int = 0  # > 0 overrides the per-block input-side dimension
    k_out: int = 0  # > 0 overrides the per-block output-side dimension
    seed: int = 0  # projections and the fit/reference samples; follows the run's seed unless set
    # preconditioner P in reward = g_ref^T P^-1 g_x: "none" | "kfac" | "ekfac"
    preconditioner: str = "ekfac"
    # where (E)K-FAC is computed: "projected" (factors of the projected gradients; memory independent of
    # width; measured closest to exact), "full" (true factors, whitened projections: exact without a
    # projection, unbiased with one), "auto" = full when the full factors hold <= full_space_max_entries
    precondition_space: str = "projected"
    full_space_max_entries: int = 1 << 29  # size limit of the "auto" choices (numbers held in the full space)
    # how rewards are computed: "exact" = <H^-1 g_ref, g_x> in the full space with no projection and no
    # per-document gradient (one extra forward of the tracked Linears per task, see scorer.py);
    # "features" = dot products of (projected) per-document features; "auto" = exact when the full factors
    # plus one full-size reference per task hold <= full_space_max_entries numbers, else features
    reward_mode: str = "features"
    damping: float = 0.1  # added to the factors' eigenvalues (scaled by damping_mode)
    damping_mode: str = "relative"  # "relative": damping * mean eigenvalue of the block; "absolute"
    kfac_damping: str = "joint"  # "joint": (G (x) A + d I)^-1; "factored": (G + dG I)^-1 (x) (A + dA I)^-1
    factor_dtype: str = "float64"  # "float64" | "float32"
    fit_docs_max: int = 256  # training documents sampled to estimate the factors
    # re-estimate the (E)K-FAC factors (A, G, their eigendecompositions, EK-FAC's Lambda, the whiteners) at
    # every n-th refresh only (the first always); the refreshes between reuse them with the current model's
    # reference gradients (and new reference subspaces). 1 = every refresh. The papers do not say; the
    # factors are most of a refresh's cost (docs/influence.md, "Refresh cost").
    factor_refresh_every: int = 1
    # what the refreshes between refits reuse: "all" (A, G, eigenbases, EK-FAC's Lambda, whiteners) |
    # "eigenbasis" (EK-FAC only: Lambda re-estimated at every refresh in the kept eigenbases, George et al.
    # 2018's amortisation; one pass over the fit documents per refresh, no factor sums, no eigendecompositions)
    factor_reuse: str = "all"
    # reuse only at refreshes of model step >= this; earlier refreshes always refit. Reused factors cost ranking
    # accuracy early in training and next to none once the learning rate has decayed (docs/influence.md,
    # "Refresh cost"): e.g. factor_refresh_every = 4 with factor_reuse_from_step = half the run's steps
    factor_reuse_from_step: int = 0
    # EK-FAC's Lambda needs each fit document's gradient sum_t d_t a_t^T; the factor pass keeps them (one pass
    # over the fit documents) when they hold <= this many numbers (float64: 2^27 = 1 GiB on the model's
    # device), else Lambda takes a second pass. Same numbers either way (speed and memory only; 0 = always
    # two passes)
    lambda_keep_max_entries: int = 1 << 27
    doc_loss: str = "mean"  # per-document loss: "mean" NLL over its scored tokens | "sum"
    batch_size: int = 8  # documents per scoring / fitting batch
    max_len: int = 1024  # tokens of a document scored (the rest is cut)
    pad_id: int = 0  # a run sets it from the token store
    ref_max_examples: int = 0  # 0 = every example of each reference task
    task_weights: dict = field(default_factory=dict)  # {} = plain mean over tasks
    autocast: str = ""  # "" (model dtype) | "bf16" | "fp16": autocast on CUDA while scoring
    # how scoring runs the backward: "fused" (each tracked Linear through an autograd.Function that adds its
    # contribution to a per-block sink; no hooks, compilable; fused.py) | "hooks" (forward hooks +
    # autograd.grad to the outputs; features.py). Same numbers; neither changes the settings.
    scoring_impl: str = "fused"
    compile_scoring: bool = False  # torch.compile the fused forward + loss (batches padded to batch_size rows)
    compile_seq_multiple: int = 0  # compiled sequence buckets: 0 = powers of two from 64, else multiples of this

    def __post_init__(self) -> None:
        choices = {
            "grouping": ("qkv", "independent", "mlp_only"),
            "projection": ("auto", "reference", "orthogonal", "gaussian", "rademacher", "none"),
            "preconditioner": ("none", "kfac", "ekfac"),
            "precondition_space": ("auto", "full", "projected"),
            "reward_mode": ("auto", "exact", "features"),
            "projection_alloc": ("size", "equal"),
            "projection_split": ("exact_side", "balanced", "square"),
            "damping_mode": ("relative", "absolute"),
            "kfac_damping": ("joint", "factored"),
            "factor_dtype": ("float64", "float32"),
            "factor_reuse": ("all", "eigenbasis"),
            "doc_loss": ("mean", "sum"),
            "autocast": ("", "bf16", "fp16"),
            "scoring_impl": ("fused", "hooks"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ThresherError(f"influence.{name} = {getattr(self, name)!r}; expected one of {allowed}")
        if self.damping < 0 or self.projection_dim < 1 or self.batch_size < 1 or self.max_len < 2:
            raise ThresherError("influence: damping >= 0, projection_dim >= 1, batch_size >= 1, max_len >= 2")
        for name, low in (("lambda_keep_max_entries", 0), ("factor_reuse_from_step", 0), ("factor_refresh_every", 1),
                          ("k_in", 0), ("k_out", 0), ("ref_max_examples", 0), ("fit_docs_max", 1)):
            if getattr(self, name) < low:
                raise ThresherError(f"influence.{name} = {getattr(self, name)}; expected an integer >= {low}")
        w = list(self.task_weights.values())
        if w and not (all(math.isfinite(x) and x >= 0 for x in w) and sum(w) > 0):
            raise ThresherError(f"influence.task_weights = {self.task_weights}; expected finite weights >= 0 with a positive sum")

    def module_patterns(self) -> list[str]:
        if self.grouping == "mlp_only":
            return list(self.modules) or MLP_MODULES
        return list(self.modules) or DEFAULT_MODULES

    def to_dict(self) -> dict:
        return asdict(self)
