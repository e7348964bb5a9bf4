"""Downstream accuracy with lm-evaluation-harness, offline, on a local Hugging Face checkpoint.

``evaluate_downstream`` converts the shipped benchmark files (evaluate/tasks), loads the checkpoint once
as lm-eval's ``hf`` model, runs ``lm_eval.simple_evaluate`` task by task (each with its own shot count,
timed), and returns per-task acc / acc_norm plus category averages laid out as the multi-agent paper's
Table 1 (Problem Solving / Commonsense Reasoning / Reading Comprehension / Average over tasks).
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path
from typing import Any

from thresher.evaluate.tasks import MULTI_AGENT_CATEGORIES, PREFIX, prepare_tasks, resolve_task
from thresher.utils.errors import ThresherError
from thresher.utils.io import atomic_write_json, atomic_write_text
from thresher.utils.log import print0, progress

RESULTS_FILE = "downstream_results.json"
METRICS = ("acc", "acc_norm")


def evaluate_downstream(
    model_dir: str | Path,
    tasks: list[str],
    num_fewshot: int | dict,
    data_root: str | Path,
    out_dir: str | Path,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    *,
    cache_dir: str | Path | None = None,
    categories: dict | None = None,
    write_samples: bool = False,
    fewshot_seed: int = 1234,
    model_args: dict | None = None,
) -> dict:
    """Evaluate ``model_dir`` on ``tasks``; writes ``<out_dir>/downstream_results.json`` and returns it.

    num_fewshot: one count for every task, or {task: count} (missing tasks: 0). limit: docs per task
    (per MMLU subject), None = all. cache_dir: where converted data + task YAMLs go (<out_dir>/eval_data).
    model_args: extra lm-eval HFLM arguments (dtype, max_length, ...).
    """
    names = [resolve_task(t).name for t in tasks]
    if len(set(names)) != len(names):
        raise ThresherError(f"duplicate downstream tasks in {tasks}")
    shots = _shots(names, num_fewshot)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():  # e.g. checkpoints/step_300 for step_000300: say which folders exist there
        near = sorted(p.name for p in model_dir.parent.glob("step_*")) if model_dir.parent.is_dir() else []
        raise ThresherError(f"no such model folder: {model_dir}"
                            + (f" ({model_dir.parent} holds {', '.join(near[-3:])})" if near else ""))
    if not (model_dir / "config.json").exists():
        hint = ("; a run's checkpoints/step_* folders are training state, not Hugging Face models: export one "
                "with train.checkpoint.export_checkpoint (`thresher export`), or evaluate the run's final/"
                if (model_dir / "trainer.pt").exists() else "")
        raise ThresherError(f"not a Hugging Face checkpoint (no config.json): {model_dir}{hint}")
    out_dir = Path(out_dir)
    tasks_dir = prepare_tasks(data_root, cache_dir or out_dir / "eval_data", names, categories)

    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    lm = _load_hf(model_dir, batch_size, device, model_args or {})
    per_task = {}
    for name in progress(names, desc="downstream", unit="task"):
        with _preserve_rng(), _quiet_git():  # simple_evaluate reseeds random/numpy/torch globally
            per_task[name] = _run_one(lm, manager, name, shots[name], limit, fewshot_seed,
                                      out_dir / f"samples_{name}.jsonl" if write_samples else None)
        row = per_task[name]
        print0(f"[eval] {name} ({shots[name]}-shot): acc {_pct(row['acc'])} acc_norm {_pct(row['acc_norm'])} (%) "
               f"n={row['n']} {row['wall_s']:.1f}s")
    results = summarize(per_task, categories or MULTI_AGENT_CATEGORIES)
    results["settings"] = {"model_dir": str(model_dir), "num_fewshot": shots, "limit": limit,
                           "batch_size": batch_size, "device": device, "fewshot_seed": fewshot_seed,
                           "data_root": str(data_root), "lm_eval_version": _lm_eval_version()}
    atomic_write_json(out_dir / RESULTS_FILE, results)
    return results


def _git_hash_quietly() -> str | None:
    """lm-eval's ``get_git_commit_hash`` (the working directory's ``git describe --always``, recorded in its
    results), without git's 'fatal: not a git repository' on stderr when evaluating outside a repository."""
    import subprocess

    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
    except (subprocess.CalledProcessError, OSError):
        return None


@contextlib.contextmanager
def _quiet_git():
    """lm-eval's evaluator with ``_git_hash_quietly`` in place of its git call, restored afterwards."""
    import lm_eval.evaluator as evaluator

    saved = evaluator.get_git_commit_hash
    evaluator.get_git_commit_hash = _git_hash_quietly
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = saved


@contextlib.contextmanager
def _preserve_rng():
    """Restore the caller's random / numpy / torch RNG states (a trainer may evaluate mid-run)."""
    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _shots(names: list[str], num_fewshot: int | dict) -> dict[str, int]:
    if isinstance(num_fewshot, int):
        shots = {n: num_fewshot for n in names}
    else:
        shots = {resolve_task(k).name: int(v) for k, v in num_fewshot.items()}
        shots = {n: shots.get(n, 0) for n in names}
    if any(k < 0 for k in shots.values()):
        raise ThresherError(f"num_fewshot must be >= 0, got {shots}")
    return shots


def _load_hf(model_dir: Path, batch_size: int, device: str, model_args: dict) -> Any:
    """lm-eval's ``hf`` model (HFLM) with pretrained=model_dir, built once and reused for every task."""
    import lm_eval.api.registry

    args = {"pretrained": str(model_dir), **model_args}
    return lm_eval.api.registry.get_model("hf").create_from_arg_obj(
        args, {"batch_size": batch_size, "device": device})


def _run_one(lm: Any, manager: Any, name: str, shots: int, limit: int | None, seed: int,
             samples_path: Path | None) -> dict:
    """One ``simple_evaluate`` call; returns {acc, acc_stderr, acc_norm, acc_norm_stderr, n, ...}."""
    from lm_eval import simple_evaluate

    target = _load_task(manager, PREFIX + name, shots)
    t0 = time.perf_counter()
    raw = simple_evaluate(model=lm, tasks=[target], num_fewshot=None, limit=limit, task_manager=manager,
                          log_samples=samples_path is not None, fewshot_random_seed=seed,
                          bootstrap_iters=1000, verbosity="WARNING")
    wall = time.perf_counter() - t0
    row = raw["results"][PREFIX + name]
    out = {m: _float_or_none(row.get(f"{m},none")) for m in METRICS}  # winogrande: acc only
    out |= {f"{m}_stderr": _float_or_none(row.get(f"{m}_stderr,none")) for m in METRICS}
    out |= {"n": sum(int(v["effective"]) for v in raw["n-samples"].values()), "num_fewshot": shots,
            "wall_s": round(wall, 3)}
    if samples_path is not None:
        _write_samples(samples_path, raw["samples"])
    return out


def _load_task(manager: Any, full_name: str, shots: int) -> Any:
    """The Task (or Group, for MMLU) object with num_fewshot set on every leaf task."""
    loaded = manager.load(full_name)
    for task in loaded["tasks"].values():
        task.set_config(key="num_fewshot", value=shots)
    return loaded["groups"].get(full_name) or loaded["tasks"][full_name]


def _float_or_none(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):  # lm-eval writes "N/A" when it cannot estimate a stderr
        return None


def _write_samples(path: Path, samples: dict[str, list[dict]]) -> None:
    """One JSON line per (task, doc): doc id, target, per-choice log-likelihoods, acc, acc_norm."""
    lines = []
    for task, rows in samples.items():
        for s in rows:
            lines.append(json.dumps({"task": task, "doc_id": s["doc_id"], "target": s["target"],
                                     "loglikelihoods": [float(r[0]) for r in s["filtered_resps"]],
                                     "acc": s.get("acc"), "acc_norm": s.get("acc_norm")}, default=str))
    atomic_write_text(path, "\n".join(lines) + "\n")


def summarize(per_task: dict[str, dict], categories: dict) -> dict:
    """Category = plain mean over its evaluated tasks; Average = mean over all tasks (papers' convention).

    A task without acc_norm (WinoGrande) enters the acc_norm averages with its acc."""
    def value(t: str, m: str) -> float:
        v = per_task[t].get(m)
        return per_task[t]["acc"] if v is None else v

    cats = {}
    for category, members in categories.items():
        done = [t for t in members if t in per_task]
        if done:
            cats[category] = {m: _mean(value(t, m) for t in done) for m in METRICS} | {"tasks": done}
    average = {m: _mean(value(t, m) for t in per_task) for m in METRICS} | {"tasks": list(per_task)}
    return {"tasks": per_task, "categories": cats, "average": average}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def results_table_markdown(results: dict, metric: str = "acc") -> str:
    """Paper Table 1 layout: one row per run, columns = categories (n tasks) + Average, in percent.

    ``results`` is one evaluate_downstream result or {run name: result}; a per-task table follows."""
    runs = {"model": results} if "tasks" in results else results
    cats = list(dict.fromkeys(c for r in runs.values() for c in r["categories"]))
    first = next(iter(runs.values()))
    head = ["Run"] + [f"{c} ({_n_tasks(first['categories'].get(c, {}).get('tasks', []))})" for c in cats]
    head.append(f"Average ({_n_tasks(first['average']['tasks'])})")
    rows = [[name] + [_pct(r["categories"].get(c, {}).get(metric)) for c in cats] + [_pct(r["average"][metric])]
            for name, r in runs.items()]
    tasks = list(dict.fromkeys(t for r in runs.values() for t in r["tasks"]))
    shots = {t: next(r["tasks"][t]["num_fewshot"] for r in runs.values() if t in r["tasks"]) for t in tasks}
    task_head = ["Run"] + [f"{t} ({shots[t]})" for t in tasks]
    task_rows = [[name] + [_pct(r["tasks"].get(t, {}).get(metric)) for t in tasks] for name, r in runs.items()]
    return f"{_md(head, rows)}\n\nPer task ({metric}, shots in brackets):\n\n{_md(task_head, task_rows)}\n"


def _n_tasks(tasks: list) -> str:
    return f"{len(tasks)} task" + ("" if len(tasks) == 1 else "s")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _md(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def load_results(out_dir: str | Path) -> dict:
    path = Path(out_dir) / RESULTS_FILE
    if not path.exists():
        raise ThresherError(f"no downstream results at {path}")
    return json.loads(path.read_text(encoding="utf-8"))
