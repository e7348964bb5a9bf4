"""Settings of the downstream evaluation (lm-evaluation-harness, offline): one dataclass, round-trips to TOML."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from thresher.evaluate.tasks import CATEGORY_LAYOUTS, TASKS
from thresher.utils.errors import ThresherError

# Multi-agent paper, Table 1 (shots in brackets); LogiQA is Quad's and Quad reports 0-shot.
PAPER_SHOTS = {
    "arc_easy": 3, "arc_challenge": 3, "mathqa": 3, "mmlu": 3,
    "openbookqa": 3, "siqa": 3, "winogrande": 0, "commonsenseqa": 5,
    "boolq": 0, "logiqa": 0,
}
PAPER_TASKS = ["arc_easy", "arc_challenge", "mathqa", "mmlu", "openbookqa", "siqa", "winogrande",
               "commonsenseqa", "boolq"]


@dataclass
class EvalConfig:
    tasks: list = field(default_factory=lambda: list(PAPER_TASKS))  # benchmarks (default: the paper's Table 1 set)
    num_fewshot: dict = field(default_factory=lambda: dict(PAPER_SHOTS))  # task -> shots
    default_fewshot: int = 0  # shots for a task missing from num_fewshot
    data_root: str = ""  # shared/data or shared/data/eval; "" = $THRESHER_SHARED_DATA or <repo>/../shared/data
    cache_dir: str = ""  # converted JSONL + rendered YAMLs; "" = <out_dir>/eval_data
    limit: int = 0  # docs per task (per MMLU subject); 0 = all
    batch_size: int = 8  # lm-eval batch size
    device: str = "cpu"  # cpu | cuda
    layout: str = "multi_agent"  # category layout: "multi_agent" (paper Table 1) | "quad"
    metric: str = "acc"  # "acc" | "acc_norm": the one the Markdown table shows
    write_samples: bool = False  # per-doc log-likelihoods -> <out_dir>/samples_<task>.jsonl
    fewshot_seed: int = 1234  # lm-eval's default
    model_args: dict = field(default_factory=dict)  # extra lm-eval HFLM arguments, e.g. {dtype = "bfloat16", max_length = 1024}

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ThresherError(f"eval.tasks is empty; name at least one of {', '.join(TASKS)}")
        unknown = [t for t in self.tasks if t.removeprefix("thresher_") not in TASKS]
        if unknown:
            raise ThresherError(f"eval.tasks: unknown {unknown}; known: {', '.join(TASKS)}")
        if self.layout not in CATEGORY_LAYOUTS:
            raise ThresherError(f"eval.layout must be one of {list(CATEGORY_LAYOUTS)}, got {self.layout!r}")
        if self.metric not in ("acc", "acc_norm"):
            raise ThresherError(f"eval.metric must be 'acc' or 'acc_norm', got {self.metric!r}")
        if self.limit < 0 or self.batch_size < 1:
            raise ThresherError("eval.limit must be >= 0 and eval.batch_size >= 1")
        bad = {t: n for t, n in self.num_fewshot.items()
               if t.removeprefix("thresher_") not in TASKS or isinstance(n, bool) or not isinstance(n, int) or n < 0}
        if bad:  # a misspelt task would silently run 0-shot
            raise ThresherError(f"eval.num_fewshot: {bad} must map known tasks to shot counts >= 0; known: {', '.join(TASKS)}")

    def shots(self) -> dict[str, int]:
        """Shots per task of ``tasks``; ``thresher_arc_easy`` and ``arc_easy`` are one task in both fields."""
        shots = {t.removeprefix("thresher_"): n for t, n in self.num_fewshot.items()}
        return {t: int(shots.get(t.removeprefix("thresher_"), self.default_fewshot)) for t in self.tasks}

    def resolved_data_root(self) -> Path:
        if self.data_root:
            return Path(self.data_root)
        # src/thresher/evaluate/config.py -> parents[4] is the folder holding the repo and shared/
        return Path(os.environ.get("THRESHER_SHARED_DATA", Path(__file__).resolve().parents[4] / "shared" / "data"))


def run_eval(cfg: EvalConfig, model_dir: str | Path, out_dir: str | Path) -> dict:
    """evaluate_downstream with the settings of ``cfg`` (what the CLI calls)."""
    from thresher.evaluate.downstream import evaluate_downstream

    return evaluate_downstream(
        model_dir, cfg.tasks, cfg.shots(), cfg.resolved_data_root(), out_dir,
        limit=cfg.limit or None, batch_size=cfg.batch_size, device=cfg.device,
        cache_dir=cfg.cache_dir or None, categories=CATEGORY_LAYOUTS[cfg.layout],
        write_samples=cfg.write_samples, fewshot_seed=cfg.fewshot_seed, model_args=dict(cfg.model_args),
    )
