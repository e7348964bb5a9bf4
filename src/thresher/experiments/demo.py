"""``thresher demo``: the whole pipeline on the built-in synthetic world, on CPU, in minutes.

synth -> ingest -> labels (ground truth + noise, standing in for the scorers) -> train a tiny LLaMA
under each policy (random, multi-agent, ...) with influence rewards -> report.md + PNG plots, plus how
well each agent's learned weights rank the categories the world says are useful (Spearman).
Every stage resumes: rerunning the demo in the same folder skips finished work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from thresher.agents.config import SelectorConfig
from thresher.config import DataConfig, RunConfig
from thresher.influence.config import InfluenceConfig
from thresher.train.config import TrainConfig
from thresher.utils.errors import SettingsMismatchError, ThresherError
from thresher.utils.io import read_json, remove_stale_temps
from thresher.utils.log import print0


@dataclass
class DemoConfig:
    seed: int = 0  # the world, the labels and the runs
    n_docs: int = 20_000  # documents in the synthetic world
    policies: list = field(default_factory=lambda: ["random", "multi-agent"])  # trained one after another
    # label noise of the stand-in scorers (probability of a wrong category; quality N(0, sigma))
    domain_noise: float = 0.02
    topic_noise: float = 0.1
    quality_noise: float = 0.3  # sigma of the quality score's noise
    budget_fraction: float = 0.25  # D_k holds this fraction of the pool's tokens
    steps: int = 1200  # training steps per policy
    update_every: int = 100  # U of Algorithm 1
    seq_len: int = 128  # the tiny model's training sequence
    micro_batch: int = 16
    lr: float = 3e-3
    # exact rewards: a projection's error is the same linear functional e^T g_x for every doc of an
    # update, a per-category bias that more samples do not average out (docs/agents.md); the tiny
    # model makes exact gradients cheap. "gaussian" / "rademacher" with projection_dim as for a real model.
    projection: str = "none"
    projection_dim: int = 1024
    preconditioner: str = "ekfac"
    share_samples: bool = True  # selector.share_samples: worst-case quality 0.40 -> 0.90 (docs/agents.md)
    # docs sampled per category per update: 64 gave every agent a Spearman vs the truth >= 0.7 on seeds 0-2
    # (24 left topic at 0.60-0.71); with the reference rows sampled, topic 0.47-0.74 (docs/agents.md)
    samples_per_category: int = 64

    def validate(self) -> None:
        from thresher.agents.policies import POLICIES

        unknown = [p for p in self.policies if p not in POLICIES]
        if not self.policies or unknown:
            raise ThresherError(f"demo policies {unknown or '(none)'}: choose from {', '.join(POLICIES)}")
        if self.steps < 1:
            raise ThresherError(f"demo steps = {self.steps}: expected at least 1")
        InfluenceConfig(projection=self.projection, projection_dim=self.projection_dim,
                        preconditioner=self.preconditioner)  # its own checks, before the world is built


def _gather(out: Path, cfg: DemoConfig) -> tuple[dict, Path, Path]:
    """synth -> ingest -> labels; each stage skips itself when its output is complete."""
    from thresher.corpus.ingest import ingest
    from thresher.corpus.synth import generate
    from thresher.corpus.synth_config import SynthConfig
    from thresher.labels.base import TokenStoreSource
    from thresher.labels.config import LabelConfig, run_from_config

    try:
        world = generate(SynthConfig(seed=cfg.seed, n_docs=cfg.n_docs), out / "world")
    except SettingsMismatchError:
        raise ThresherError(f"{out} holds a demo made with other settings (seed or size): "
                            f"delete it or choose another --out") from None
    store = out / "store"
    ingest(world["shards"], store, world["tokenizer"], field_map={"domain": "domain", "topic": "topic",
                                                                  "quality": "quality"})
    labels = out / "labels"
    run_from_config(TokenStoreSource(store), LabelConfig(
        labelers=["synthetic"], domain_noise=cfg.domain_noise, topic_noise=cfg.topic_noise,
        quality_noise=cfg.quality_noise, seed=cfg.seed, workers=1), labels)
    return world, store, labels


def run_config(cfg: DemoConfig, policy: str, world: dict, store: Path, labels: Path, out: Path) -> RunConfig:
    from thresher.corpus.store import TokenStore

    n_tokens = TokenStore.open(store).n_tokens
    return RunConfig(
        out=str(out / "runs" / policy), seed=cfg.seed,
        data=DataConfig(store=str(store), labels=str(labels), reference=dict(world["reference"]),
                        reference_max_examples=400, influence_fit_docs=128),
        selector=SelectorConfig(policy=policy, seed=cfg.seed, update_every=cfg.update_every,
                                budget_tokens=int(cfg.budget_fraction * n_tokens),
                                samples_per_category=cfg.samples_per_category,
                                eta_agent=0.5, eta_console=1.0, share_samples=cfg.share_samples,
                                quad_stage_tokens=cfg.update_every * cfg.seq_len * cfg.micro_batch),
        influence=InfluenceConfig(projection=cfg.projection, projection_dim=cfg.projection_dim, preconditioner=cfg.preconditioner,
                                  batch_size=32, max_len=cfg.seq_len, fit_docs_max=128, seed=cfg.seed),
        train=TrainConfig(model="tiny", seq_len=cfg.seq_len, micro_batch=cfg.micro_batch,
                          global_batch_tokens=cfg.seq_len * cfg.micro_batch, steps=cfg.steps, lr=cfg.lr,
                          warmup_steps=cfg.steps // 20, eval_every=cfg.update_every, seed=cfg.seed,
                          ckpt_every=cfg.update_every, device="cpu", export=True),
    )


def agreement_with_truth(run_dir: Path, ground_truth: dict) -> dict[str, float]:
    """Spearman between each agent's final weights and the world's per-category utility (mean task)."""
    from scipy.stats import spearmanr

    from thresher.evaluate.report import read_jsonl, weight_trajectories

    truth = {"domain": ground_truth["domain_utility"]["mean"], "topic": ground_truth["topic_utility"]["mean"],
             "quality": ground_truth["quality_utility"]["mean"]}
    out = {}
    for agent, cats in weight_trajectories(read_jsonl(run_dir / "selector_log.jsonl")).items():
        pairs = [(ws[-1], truth[agent][c]) for c, (_, ws) in cats.items()
                 if agent in truth and truth[agent].get(c) is not None]
        if len(pairs) >= 3:
            out[agent] = float(spearmanr(*zip(*pairs)).statistic)
    return out


def run_demo(cfg: DemoConfig, out: str | Path) -> Path:
    from thresher.evaluate.report import SUMMARY, write_report
    from thresher.experiments.experiment import check_same_settings
    from thresher.experiments.run import run, write_summary

    cfg.validate()
    out = Path(out)
    remove_stale_temps(out)  # report.md, plots of a killed run
    t0 = time.perf_counter()
    world, store, labels = _gather(out, cfg)
    times = {"data": time.perf_counter() - t0}
    configs = [run_config(cfg, policy, world, store, labels, out) for policy in cfg.policies]
    for rc in configs:  # a finished or interrupted run is reused only under the same settings
        check_same_settings(rc, Path(rc.out), "choose another --out")
    runs = {}
    for policy, rc in zip(cfg.policies, configs):
        t = time.perf_counter()
        if not (Path(rc.out) / SUMMARY).exists():
            write_summary(rc.out, run(rc, resume=(Path(rc.out) / "checkpoints").exists()), time.perf_counter() - t)
        times[policy] = time.perf_counter() - t
        runs[policy] = Path(rc.out)
    gt = read_json(world["ground_truth"])
    agree = {p: agreement_with_truth(d, gt) for p, d in runs.items()}
    extra = _extra_markdown(cfg, agree, times, time.perf_counter() - t0)
    report = write_report(out, runs, title="thresher demo: the synthetic world", extra_md=extra)
    print0(f"demo finished in {time.perf_counter() - t0:.0f}s; report: {report}")
    return report


def _extra_markdown(cfg: DemoConfig, agree: dict, times: dict, total: float) -> str:
    lines = ["## Learned agent weights vs the world's ground truth", "",
             "Spearman correlation between each agent's final weights and the known utility of its categories.", "",
             "| policy | agent | Spearman |", "|---|---|---:|"]
    for p, d in agree.items():
        lines += [f"| {p} | {a} | {r:.3f} |" for a, r in d.items()]
    lines += ["", "## Wall time (this run; finished stages are skipped on a rerun)", "", "| stage | seconds |",
              "|---|---:|"] + [f"| {k} | {v:.1f} |" for k, v in times.items()] + [f"| total | {total:.1f} |", ""]
    lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in vars(cfg).items()), ""]
    return "\n".join(lines)
