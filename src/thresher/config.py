"""The config tree of a whole run: one TOML file, sections per component, saved beside every output.

    [data]       where the token store, label table and reference tasks are
    [selector]   thresher.agents.config.SelectorConfig     (policy, Algorithm 1 settings, bandit)
    [influence]  thresher.influence.config.InfluenceConfig (rewards: projection, preconditioner)
    [train]      thresher.train.config.TrainConfig         (model, batch, schedule, checkpoints)

``thresher train --config run.toml --set train.steps=200 --set selector.policy=quad`` loads the file,
applies the overrides and writes the resolved tree to ``<out>/config.toml``.

The top-level ``seed`` is the run's seed: every section's ``seed`` that the file and the overrides do not
set follows it (``--set seed=1`` reseeds the selection, the influence engine and the trainer); a section
seed set explicitly wins.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from thresher.agents.config import SelectorConfig
from thresher.influence.config import InfluenceConfig
from thresher.train.config import TrainConfig
from thresher.utils.errors import ThresherError
from thresher.utils.tomlio import apply_overrides, from_dict, load_toml, save_config


@dataclass
class DataConfig:
    store: str = ""  # token store folder (thresher ingest)
    labels: str = ""  # label table folder (thresher label)
    # agent label name -> label-table column (absent columns are skipped); the quality agent reads
    # the Eq. 3 intervals, Quad's bandit the k-means cluster ids. A config's table is merged over these
    # (naming one agent changes that agent only); "" drops an agent's column
    label_columns: dict[str, str] = field(default_factory=lambda: {
        "quality": "quality_interval", "domain": "domain", "topic": "topic", "cluster": "cluster"})
    reference: dict[str, str] = field(default_factory=dict)  # task name -> JSONL with context / continuation
    reference_eval_fraction: float = 0.5  # held out for evaluation, never used for rewards
    reference_max_examples: int = 512  # per task, before the split: a seeded uniform sample of a larger file
    influence_fit_docs: int = 256  # pool documents sampled to fit K-FAC/EK-FAC factors
    # folder for the selectors' cell index (8 bytes per document), memory-mapped: built once per node and
    # shared by its torchrun ranks, reused on resume and by every run using the same folder; "" is
    # <labels>/cache (<out>/cache if the label table's folder is read-only), "memory" builds it in each
    # process's memory instead; `thresher cache prune` deletes folders unused for a while
    cell_index_cache: str = ""
    # held-out pool documents (evaluate/heldout.py): per value of the category column heldout_column, up to
    # heldout_docs documents drawn by heldout_seed (not the run's seed: every policy and seed of an experiment
    # holds out the same ids), cut to heldout_tokens evaluated tokens (each document counted up to
    # train.eval_max_len). No policy may select them; the trainer evaluates their loss per value next to the
    # reference loss (heldout_loss/<value>). 0 = off, the default: on, it would change the pool of every
    # existing config, and a run folder saved before this option (which then reads as on) would resume with
    # a checkpointed selection that may hold the held-out documents (the experiment configs turn it on)
    heldout_docs: int = 0
    heldout_column: str = "domain"  # label-table category column to stratify by (a table column name)
    heldout_tokens: int = 262144  # per value: at most this many evaluated tokens
    heldout_seed: int = 0  # the draw's seed, independent of the run's seed

    def validate(self) -> None:
        if not 0 < self.reference_eval_fraction < 1:
            raise ThresherError(f"data.reference_eval_fraction = {self.reference_eval_fraction}: expected a "
                                f"fraction strictly between 0 and 1 (each reference task is split into a reward "
                                f"part and an eval part, neither may be empty)")
        if self.heldout_docs < 0 or self.heldout_tokens <= 0:
            raise ThresherError(f"data.heldout_docs = {self.heldout_docs} and data.heldout_tokens = "
                                f"{self.heldout_tokens}: expected heldout_docs >= 0 (0 = off) and heldout_tokens > 0")


@dataclass
class RunConfig:
    out: str = "runs/run"  # run folder: checkpoints, metrics.jsonl, selector_log.jsonl, final/
    seed: int = 0  # the seed of [selector], [influence] and [train] wherever they do not set their own
    data: DataConfig = field(default_factory=DataConfig)
    selector: SelectorConfig = field(default_factory=SelectorConfig)
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# sections with their own seed, which follows the top-level seed unless set explicitly
SEEDED_SECTIONS = ("selector", "influence", "train")


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    return run_config_from_dict(apply_overrides(load_toml(path) if path else {}, list(overrides or [])))


def run_config_from_dict(data: dict) -> RunConfig:
    """The validated RunConfig of a TOML tree; section seeds it does not set take the top-level seed."""
    data = copy.deepcopy(data)
    columns = data.get("data", {}).get("label_columns") if isinstance(data.get("data"), dict) else None
    if isinstance(columns, dict):  # names only the agents it changes: the others keep their default columns
        data["data"]["label_columns"] = {**DataConfig().label_columns, **columns}
    for name in SEEDED_SECTIONS:
        section = data.setdefault(name, {})
        if isinstance(section, dict) and "seed" not in section and "seed" in data:
            section["seed"] = data["seed"]
    cfg = from_dict(RunConfig, data)
    cfg.data.validate()
    cfg.selector.validate()
    cfg.train.validate()
    return cfg


def check_run_inputs(cfg: RunConfig) -> None:
    """The run's inputs exist (token store, label table, reference tasks): checked before anything is written."""
    from thresher.corpus.store import TokenStore
    from thresher.labels.table import LabelTable

    cfg.train.model_config()  # an unknown model, bad overrides or a too long context: before any data loads
    if not cfg.data.store or not cfg.data.labels:
        raise ThresherError("data.store and data.labels must name a token store and a label table: "
                            "give a run config (--config run.toml) or --set data.store=... --set data.labels=...")
    TokenStore.open(cfg.data.store)
    table = LabelTable.open(cfg.data.labels)
    from thresher.agents.policies import label_columns_needed  # the policy's agents find their columns
    from thresher.agents.selectors import missing_labels_error

    need, have = label_columns_needed(cfg.selector), table.category_columns(cfg.data.label_columns)
    missing = [c for c in need if c not in have]
    if missing:
        raise missing_labels_error(cfg.selector.policy, need, missing, sorted(have))
    from thresher.evaluate.heldout import check_heldout_column

    check_heldout_column(cfg.data, table)
    if not cfg.data.reference:
        raise ThresherError("data.reference is empty: name at least one reference task JSONL")
    absent = [str(p) for p in cfg.data.reference.values() if not Path(p).exists()]
    if absent:
        raise ThresherError(f"reference task file(s) not found: {', '.join(absent)}")


def save_run_config(cfg: RunConfig, out_dir: str | Path) -> Path:
    path = Path(out_dir) / "config.toml"
    save_config(cfg, path)
    return path
