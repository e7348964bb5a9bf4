"""One train <-> select run under one config (Algorithm 1 end to end).

token store + label table + reference tasks -> selector (policy) with influence rewards -> trainer.
Everything the run writes lands in ``cfg.out``: config.toml, metrics.jsonl, selector_log.jsonl,
checkpoints/, final/ (a Hugging Face model folder).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np

from thresher.agents.base import Labels, SelectionContext
from thresher.agents.config import AUTO_SAVE_MAX_DOCS
from thresher.config import DataConfig, RunConfig, load_run_config, save_run_config
from thresher.corpus.reference import ReferenceTask, read_reference, tokenize_task
from thresher.evaluate.report import SUMMARY
from thresher.influence.config import SPEED_ONLY
from thresher.influence.rewards import RewardSource
from thresher.train.callbacks import Callback
from thresher.train.checkpoint import hf_tokenizer
from thresher.utils.errors import SettingsMismatchError, ThresherError
from thresher.utils.io import atomic_path, atomic_write_json, atomic_write_jsonl, make_dir, remove_stale_temps
from thresher.utils.log import print0
from thresher.utils.seeding import rng


def write_summary(run_dir: str | Path, summary: dict, wall_seconds: float) -> dict:
    """Writes ``run_dir``/summary.json for a finished run: the trainer's summary (final reference losses, tokens,
    train and selection seconds and FLOPs, model_dir) without the per-step losses, plus the wall seconds."""
    out = {k: v for k, v in summary.items() if k != "losses"} | {"wall_seconds": wall_seconds}
    atomic_write_json(Path(run_dir) / SUMMARY, out)
    return out


class LazyInfluenceRewards(RewardSource):
    """Influence rewards whose scorer is built on the first ``refresh`` (the model exists only then).

    It also counts the compute selection spends, so the trainer can log it against training:
    ``flops`` = 4 x (parameters doing matmuls) x tokens through the frozen-weight forward + backward
    (factor fitting, reference gradients, scored documents), plus the refresh's linear algebra
    (InfluenceScorer.linalg_flops: factor sums, eigendecompositions, reference subspaces).
    """

    def __init__(self, cfg, reference: dict[str, ReferenceTask], store, fit_ids: np.ndarray):
        self.cfg, self.reference, self.store, self.fit_ids = cfg, reference, store, fit_ids
        self.inner = None
        self._pending_state: dict | None = None  # a checkpoint's reward state, loaded once the scorer exists
        self.flops = 0.0
        self.scored_docs = 0
        self._flops_per_token = 0.0

    def refresh(self, model: Any, step: int) -> None:
        if self.inner is None:
            from thresher.influence.rewards import InfluenceRewards
            from thresher.influence.scorer import InfluenceScorer

            fit_docs = self.store.docs(self.fit_ids) if self.cfg.preconditioner != "none" else None
            self.inner = InfluenceRewards(InfluenceScorer(model, self.reference, self.cfg, fit_docs), self.store)
            if self._pending_state is not None:
                self.inner.load_state_dict(self._pending_state)
                self._pending_state = None
            embed = model.get_input_embeddings().weight.numel()
            self._flops_per_token = 4.0 * (sum(p.numel() for p in model.parameters()) - embed)
        self.inner.refresh(model, step)
        scorer = self.inner.scorer
        n_fit, fit_tokens = scorer.fit_size
        fit = scorer.last_fit_passes * fit_tokens  # 0 without a refit; EK-FAC: 1, or 2 with a second pass
        # under torchrun the fit documents and the reference batches are split across the ranks, but every
        # rank repeats the eigendecompositions: those count once per rank (as the hardware does)
        from thresher.influence import distributed as hdist

        ranks = hdist.world_size()
        self.flops += self._flops_per_token * (fit + scorer.ref_tokens)
        self.flops += scorer.linalg_flops(fit_tokens, n_fit, replicas=ranks)  # factors, eigh, subspaces

    def rewards(self, doc_ids: np.ndarray) -> np.ndarray:
        return self.task_rewards(doc_ids)[0]

    def task_rewards(self, doc_ids: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self.inner is None:
            raise ThresherError("influence rewards asked for before the first refresh(model)")
        self.flops += self._flops_per_token * self._tokens(doc_ids)
        self.scored_docs += len(doc_ids)
        return self.inner.task_rewards(doc_ids)

    def state_dict(self) -> dict:
        """The scorer's factors, only when later refreshes reuse them (influence.factor_refresh_every > 1):
        otherwise every refresh recomputes all it needs and checkpoints stay small."""
        return {} if self.inner is None else self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if "scorer" not in state:
            return
        if self.inner is None:
            self._pending_state = state
        else:
            self.inner.load_state_dict(state)

    def _tokens(self, doc_ids: np.ndarray) -> int:
        return int(np.minimum(np.asarray(self.store.lengths)[np.asarray(doc_ids)], self.cfg.max_len).sum())

    def provenance(self) -> dict:
        return self.inner.provenance() if self.inner is not None else {}


def load_reference(cfg: RunConfig, tokenizer) -> tuple[dict[str, ReferenceTask], dict[str, ReferenceTask]]:
    """(reward parts, eval parts) of every reference task; the split is seeded and disjoint."""
    if not cfg.data.reference:
        raise ThresherError("data.reference is empty: name at least one reference task JSONL")
    reward, evals = {}, {}
    for name, path in sorted(cfg.data.reference.items()):
        # more rows than reference_max_examples: a seeded uniform sample (files are often sorted by topic)
        pairs = read_reference(path, limit=cfg.data.reference_max_examples or None, sample_seed=cfg.seed)
        task = tokenize_task(name, pairs, tokenizer)
        reward[name], evals[name] = task.split(cfg.data.reference_eval_fraction, seed=cfg.seed)
        if len(reward[name]) == 0 or len(evals[name]) == 0:
            raise ThresherError(f"reference task {name!r} ({path}) has {len(task)} usable example(s): too few to split into "
                                f"a reward part and a held-out eval part (data.reference_eval_fraction = "
                                f"{cfg.data.reference_eval_fraction}); give it more examples")
    return reward, evals


# policies that read numeric scores or embeddings, not category labels
_SCORE_POLICIES = ("perplexity", "dsir", "mates")


def agent_labels(cfg: RunConfig, table) -> Labels:
    """Label-table columns under the names the agents use (``data.label_columns``); absent ones skipped."""
    present = table.category_columns(cfg.data.label_columns)
    defaults = DataConfig().label_columns
    for name, col in cfg.data.label_columns.items():  # say why an agent will find no column the user named
        if col and col not in table.columns and col != defaults.get(name):
            print0(f"data.label_columns: {name} -> {col!r}, which label table {cfg.data.labels} does not have "
                   f"(columns: {', '.join(table.columns)}); the {name} agent cannot run")
        elif col and col in table.columns and table.kind(col) != "category":
            print0(f"data.label_columns: {name} -> {col!r} is a {table.kind(col)} column; agents need category codes")
    if not present and cfg.selector.policy in _SCORE_POLICIES:
        return Labels()
    if not present:
        raise ThresherError(f"none of the label columns {list(cfg.data.label_columns.values())} are in the label table")
    return table.to_agent_labels(present)


def build_run(cfg: RunConfig):
    """Open the data and build (store, selector, reference eval tasks, held-out tasks) for ``cfg``.

    The held-out pool documents (``data.heldout_docs``) are taken out of the selectable pool here, once: the
    selection context carries their ids, so no policy can select them."""
    from thresher.agents.policies import build_selector
    from thresher.agents.score_top import embedding_column, numeric_context_fields
    from thresher.corpus.store import TokenStore
    from thresher.evaluate.heldout import heldout_groups, heldout_tasks
    from thresher.labels.table import LabelTable

    store = TokenStore.open(cfg.data.store)
    table = LabelTable.open(cfg.data.labels)
    if table.n_docs != store.n_docs:
        raise ThresherError(f"label table has {table.n_docs} rows but the token store has {store.n_docs} documents")
    if table.source is not None and table.source != store.fingerprint:
        raise ThresherError(f"label table {cfg.data.labels} was labelled from another token store than {cfg.data.store} "
                            f"(same size, other documents or order): relabel this store, or point data.store at the right one")
    reward_tasks, eval_tasks = load_reference(cfg, store.tokenizer())
    cfg.influence.pad_id = store.pad_id
    heldout = heldout_groups(cfg.data, table, store.lengths, cfg.train.eval_max_len)
    held_ids = np.sort(np.concatenate(list(heldout.values()))) if heldout else None
    fit_ids = np.sort(rng(cfg.seed, "influence-fit").choice(store.n_docs, min(cfg.data.influence_fit_docs, store.n_docs), replace=False))
    rewards = LazyInfluenceRewards(cfg.influence, reward_tasks, store, fit_ids)
    scores, embeddings = numeric_context_fields(cfg.data, table, cfg.selector)
    emb_prov = table.provenance(embedding_column(cfg.data, cfg.selector)) if embeddings is not None else None
    ctx = SelectionContext(doc_lengths=np.asarray(store.lengths), labels=agent_labels(cfg, table), rewards=rewards,
                           seed=cfg.seed, scores=scores, embeddings=embeddings, embedding_provenance=emb_prov,
                           cell_cache=cell_index_cache(cfg), heldout=held_ids)
    return store, build_selector(cfg.selector, ctx), eval_tasks, heldout_tasks(store, heldout, cfg.train.eval_max_len)


def cell_index_cache(cfg: RunConfig) -> str | None:
    """Where the run's selector keeps its memory-mapped cell index (None: in memory): ``data.cell_index_cache``,
    else ``<label table>/cache`` (shared by every run, seed and proxy over those labels), else, when the label
    table's folder is read-only, ``<out>/cache``."""
    where = cfg.data.cell_index_cache
    if where == "memory":
        return None
    if where:
        return where
    return str(Path(cfg.data.labels) / "cache") if os.access(cfg.data.labels, os.W_OK) else str(Path(cfg.out) / "cache")


def run(cfg: RunConfig, resume: bool = False, callbacks=()) -> dict:
    """Train under ``cfg.selector.policy``; returns the trainer's summary.

    With ``resume`` the newest checkpoint in ``cfg.out`` restores the model, optimizer, schedule, RNG,
    data position and the selector's whole state; the run then continues exactly as an
    uninterrupted one would (tested). ``callbacks`` go to the trainer (e.g. train.callbacks.StopAt)."""
    from thresher.train.loop import train

    out = Path(cfg.out)
    if resume:
        check_resume_config(cfg, out)
    make_dir(out)
    save_config = SaveRunConfig(cfg)  # as given: build_run fills in derived fields
    store, selector, eval_tasks, heldout = build_run(cfg)
    held = f" ({sum(len(t) for t in heldout.values())} held out for evaluation)" if heldout else ""
    print0(f"[{selector.name}] {store.n_docs} docs in the pool{held}; training {cfg.train.model_config().name} for "
           f"{cfg.train.steps} steps -> {out}")
    save = cfg.selector.saves_selections(store.n_docs)
    if not save and cfg.selector.save_selections == "auto":
        print0(f"selections: not saved to {out / SELECTIONS} ({store.n_docs:,} docs in the pool, more than "
               f"{AUTO_SAVE_MAX_DOCS:,}); --set selector.save_selections=always saves them")
    summary = train(cfg.train, store, selector, out, eval_tasks=eval_tasks, heldout_tasks=heldout, resume=resume,
                    callbacks=[save_config, SelectorLog(out, save), *callbacks],
                    tokenizer=hf_tokenizer(store))  # SelectorLog has written every update of the log
    return summary


# [data] and [influence] keys a resume may change: where the data lives (its content is checked: the
# label table against the store, the store against the checkpoint's selection) and how fast scoring runs
RESUME_MAY_CHANGE = {"data": {"store", "labels", "cell_index_cache"}, "influence": set(SPEED_ONLY)}


def check_resume_config(cfg: RunConfig, out: Path) -> None:
    """Refuse a resume whose [data] or [influence] settings differ from the run's config.toml: they change the
    reference sample, the held-out eval split or the rewards, so the metrics before and after would not be
    one run's (the trainer checks [train]; the selector checks [selector] against its checkpoint)."""
    from thresher.utils.tomlio import differences, to_dict

    if not (out / "config.toml").is_file():
        return
    saved, now = to_dict(load_run_config(out / "config.toml")), to_dict(cfg)
    diff = []
    for section, free in RESUME_MAY_CHANGE.items():
        kept = [{k: v for k, v in c[section].items() if k not in free} for c in (saved, now)]
        diff += differences(*kept, f"{section}.")
    if diff:
        raise SettingsMismatchError(f"cannot resume {out}: {', '.join(diff)} differ from the run's config.toml (they "
                                    "change the reference data, the eval split or the rewards); start a new run folder")


class SaveRunConfig(Callback):
    """Writes ``config.toml`` once training starts, i.e. after the trainer accepted the resume (a refused
    resume leaves the run's config as it was)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = copy.deepcopy(cfg)

    def on_train_start(self, run) -> None:
        if run.dist.rank == 0:
            save_run_config(self.cfg, run.out_dir)


SELECTIONS = "selections"  # <out>/selections/step_NNNNNN.npy: D_k of the log entry of that step


class SelectorLog(Callback):
    """Writes ``selector_log.jsonl`` (atomically, rank 0) when training starts and after every step whose
    selector log grew, so a running or killed run's folder holds every update so far, not only a finished
    run's. A resume rewrites it from the checkpoint's log (entries after the checkpoint are dropped and
    redone, as metrics.jsonl's lines are).

    With ``save_selections``, the newest entry's D_k (the selector's current selection) is written to
    ``selections/step_NNNNNN.npy`` before the log line that names it (``selection_file``). At the start, files no
    entry of the (restored) log names are removed: those of the stages a killed run made after its checkpoint,
    which the resumed run redoes."""

    def __init__(self, out: Path, save_selections: bool = False):
        self.out, self.save, self.written = Path(out), save_selections, -1

    def on_train_start(self, run) -> None:
        self._save_selection(run)  # also on a resume: the checkpoint's newest entry, if saving was turned on since
        if run.dist.rank == 0:
            named = {e.get("selection_file") for e in run.selector.log}
            remove_stale_temps(self.out / SELECTIONS)
            for p in sorted((self.out / SELECTIONS).glob("step_*.npy")):
                if f"{SELECTIONS}/{p.name}" not in named:
                    p.unlink()
        self._write_log(run)

    def on_step_end(self, run, metrics) -> None:
        if len(run.selector.log) != self.written:
            self._save_selection(run)
            self._write_log(run)

    def _save_selection(self, run) -> None:
        """Names the newest entry's file in it (every rank: the logs stay alike) and writes D_k there (rank 0)."""
        if not (self.save and run.selector.log):
            return
        entry = run.selector.log[-1]
        entry["selection_file"] = f"{SELECTIONS}/step_{int(entry['step']):06d}.npy"
        if run.dist.rank == 0:
            with atomic_path(self.out / entry["selection_file"]) as tmp, open(tmp, "wb") as f:
                np.save(f, run.selector.selection())

    def _write_log(self, run) -> None:
        if run.dist.rank == 0:
            atomic_write_jsonl(self.out / "selector_log.jsonl", run.selector.log)
        self.written = len(run.selector.log)

