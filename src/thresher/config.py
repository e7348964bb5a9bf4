"""The config tree of a whole run: one TOML file, sections per component, saved beside every output.

    [data]       where the token store, label table and reference tasks are
    [selector]   thresher.agents.config.SelectorConfig     (policy, Algorithm 1 settings, bandit)
    [influence]  thresher.influence.config.InfluenceConfig (rewards: projection, preconditioner)
    [train]      thresher.train.config.TrainConfig         (model, batch, schedule, checkpoints)

``thresher train --config run.toml --set train.steps=200 --set selector.policy=quad`` loads the file,
applies the overrides and writes the resolved tree to ``<out>/config.toml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from thresher.agents.config import SelectorConfig
from thresher.influence.config import InfluenceConfig
from thresher.train.config import TrainConfig
from thresher.utils.tomlio import load_config, save_config


@dataclass
class DataConfig:
    store: str = ""  # token store folder (thresher ingest)
    labels: str = ""  # label table folder (thresher label)
    # agent label name -> label-table column (absent columns are skipped); the quality agent reads
    # the Eq. 3 intervals, Quad's bandit the k-means cluster ids
    label_columns: dict = field(default_factory=lambda: {
        "quality": "quality_interval", "domain": "domain", "topic": "topic", "cluster": "cluster"})
    reference: dict = field(default_factory=dict)  # task name -> JSONL with context / continuation
    reference_eval_fraction: float = 0.5  # held out for evaluation, never used for rewards
    reference_max_examples: int = 512  # per task, before the split
    influence_fit_docs: int = 256  # pool documents sampled to fit K-FAC/EK-FAC factors


@dataclass
class RunConfig:
    out: str = "runs/run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    selector: SelectorConfig = field(default_factory=SelectorConfig)
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    cfg = load_config(RunConfig, path, overrides)
    cfg.selector.validate()
    cfg.train.validate()
    return cfg


def save_run_config(cfg: RunConfig, out_dir: str | Path) -> Path:
    path = Path(out_dir) / "config.toml"
    save_config(cfg, path)
    return path
