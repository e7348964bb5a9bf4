"""Offline lm-evaluation-harness tasks: converters for the shipped benchmark files + task YAML templates.

``prepare_tasks(data_root, cache_dir, tasks)`` converts each benchmark's raw files into the Hugging Face
layout the harness's own task reads (``<cache>/data/<task>/<split>.jsonl``) and renders the task YAMLs
(``<cache>/tasks/thresher_<task>.yaml``, ``dataset_path: json`` + absolute ``data_files``). Pass the
returned folder to ``TaskManager(include_path=...)`` or to ``lm_eval --include_path``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from thresher.evaluate.tasks import converters as conv
from thresher.utils.errors import ThresherError
from thresher.utils.io import atomic_write_text
from thresher.utils.log import print0

TEMPLATE_DIR = Path(__file__).resolve().parent
PREFIX = "thresher_"


@dataclass(frozen=True)
class TaskSpec:
    name: str  # our key; the lm-eval task is PREFIX + name
    harness_yaml: str  # the built-in config it mirrors, relative to lm_eval/tasks/
    folder: str  # sub-folder of the data root
    required: tuple  # files (globs) that must exist in that folder
    convert: Callable[[Path, conv.Skips], conv.Docs]


TASKS: dict[str, TaskSpec] = {s.name: s for s in (
    TaskSpec("arc_easy", "arc/arc_easy.yaml", "arc_easy", ("test.jsonl", "validation.jsonl"), conv.arc),
    TaskSpec("arc_challenge", "arc/arc_challenge.yaml", "arc_challenge", ("test.jsonl", "validation.jsonl"), conv.arc),
    TaskSpec("mathqa", "mathqa/mathqa.yaml", "mathqa", ("test.jsonl",), conv.mathqa),
    TaskSpec("mmlu", "mmlu/default/_default_template_yaml", "mmlu", ("test/*_test.csv", "dev/*_dev.csv"), conv.mmlu),
    TaskSpec("openbookqa", "openbookqa/openbookqa.yaml", "openbookqa", ("test.jsonl", "validation.jsonl"),
             conv.openbookqa),
    TaskSpec("siqa", "siqa/siqa.yaml", "siqa", ("validation.jsonl",), conv.siqa),
    TaskSpec("winogrande", "winogrande/default.yaml", "winogrande", ("validation.jsonl",), conv.winogrande),
    TaskSpec("commonsenseqa", "commonsense_qa/default.yaml", "commonsenseqa", ("dev_rand_split.jsonl",),
             conv.commonsenseqa),
    TaskSpec("boolq", "super_glue/boolq/default.yaml", "boolq", ("validation.jsonl",), conv.boolq),
    TaskSpec("logiqa", "logiqa/logiqa.yaml", "logiqa", ("Test.txt", "Eval.txt"), conv.logiqa),
)}

# Category -> tasks, as the papers group them (the average over a category is the plain mean over its tasks).
# RACE (multi-agent, Reading Comprehension), SciQ and HellaSwag (Quad) are not shipped in shared/data.
MULTI_AGENT_CATEGORIES = {
    "Problem Solving": ["arc_easy", "arc_challenge", "mathqa", "mmlu"],
    "Commonsense Reasoning": ["openbookqa", "siqa", "winogrande", "commonsenseqa"],
    "Reading Comprehension": ["boolq"],
}
QUAD_CATEGORIES = {
    "General Knowledge": ["arc_easy", "arc_challenge"],
    "Commonsense Reasoning": ["logiqa", "siqa", "winogrande"],
    "Reading Comprehension": ["openbookqa", "boolq"],
}
CATEGORY_LAYOUTS = {"multi_agent": MULTI_AGENT_CATEGORIES, "quad": QUAD_CATEGORIES}


def resolve_task(name: str) -> TaskSpec:
    key = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if key not in TASKS:
        raise ThresherError(f"unknown downstream task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[key]


def resolve_eval_root(data_root: str | Path) -> Path:
    """Accept either shared/data or shared/data/eval."""
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise ThresherError(f"evaluation data root not found: {root} (give the benchmarks' folder with --data-root, "
                            "eval.data_root or $THRESHER_SHARED_DATA: shared/data or shared/data/eval)")
    return root / "eval" if (root / "eval").is_dir() and not (root / "arc_easy").exists() else root


def check_sources(spec: TaskSpec, eval_root: Path) -> Path:
    folder = eval_root / spec.folder
    for pattern in spec.required:
        if not any(folder.glob(pattern)):
            raise ThresherError(f"{spec.name}: missing {folder / pattern} (data root {eval_root})")
    return folder


def prepare_tasks(data_root: str | Path, cache_dir: str | Path, tasks: list[str],
                  categories: dict | None = None) -> Path:
    """Convert + render every task in ``tasks`` and one group per category (default: the multi-agent
    paper's); returns the folder holding the task YAMLs."""
    eval_root = resolve_eval_root(data_root)
    specs = [resolve_task(t) for t in tasks]
    folders = [check_sources(s, eval_root) for s in specs]  # fail before converting anything
    cache = Path(cache_dir).expanduser().resolve()
    for spec, folder in zip(specs, folders):
        skips = conv.Skips()
        docs = spec.convert(folder, skips)
        conv.check_nonempty(spec.name, docs, skips)
        if skips:
            print0(f"[eval] {spec.name}: skipped {sum(skips.values())} malformed rows: {dict(skips)}")
        files = {split: _write_jsonl(cache / "data" / spec.name / f"{split}.jsonl", rows)
                 for split, rows in docs.items()}
        render = _render_mmlu if spec.name == "mmlu" else _render_task
        render(spec, files, cache / "tasks")
    _render_categories(categories or MULTI_AGENT_CATEGORIES, [s.name for s in specs], cache / "tasks")
    return cache / "tasks"


def _write_if_changed(path: Path, text: str) -> None:
    # Unchanged files keep their mtime, so the datasets cache built from them stays valid.
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    _write_if_changed(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


def _load_template(stem: str) -> dict:
    return yaml.safe_load((TEMPLATE_DIR / f"{stem}.yaml").read_text(encoding="utf-8"))


class _Dumper(yaml.SafeDumper):
    """Prompt templates with newlines stay on one line, double-quoted, as in the harness's own YAMLs."""


_Dumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style='"' if "\n" in s else None))


def _dump_yaml(path: Path, cfg: dict, source: str) -> None:
    header = f"# Generated by thresher from {source}; edits are overwritten.\n"
    body = yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=10_000)
    _write_if_changed(path, header + body)


def _render_task(spec: TaskSpec, files: dict[str, Path], tasks_dir: Path) -> None:
    cfg = _load_template(PREFIX + spec.name)
    cfg["dataset_kwargs"] = {"data_files": {split: str(p) for split, p in files.items()}}
    _dump_yaml(tasks_dir / f"{PREFIX}{spec.name}.yaml", cfg, f"{PREFIX}{spec.name}.yaml")


def mmlu_description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def _render_mmlu(spec: TaskSpec, files: dict[str, Path], tasks_dir: Path) -> None:
    """One task per subject (its own description and dev few-shot pool) + the size-weighted group."""
    template = _load_template(PREFIX + "mmlu")
    subjects = sorted({key.split("/", 1)[1] for key in files})
    for subject in subjects:
        cfg = {"task": f"{PREFIX}mmlu_{subject}", "task_alias": subject, **template,
               "description": mmlu_description(subject),
               "dataset_kwargs": {"data_files": {s: str(files[f"{s}/{subject}"]) for s in ("test", "dev")}}}
        _dump_yaml(tasks_dir / "mmlu" / f"{PREFIX}mmlu_{subject}.yaml", cfg, f"{PREFIX}mmlu.yaml")
    group = {"group": f"{PREFIX}mmlu", "task": [f"{PREFIX}mmlu_{s}" for s in subjects],
             "aggregate_metric_list": [{"metric": m, "weight_by_size": True} for m in ("acc", "acc_norm")],
             "metadata": {"version": 2}}
    _dump_yaml(tasks_dir / "mmlu" / f"_{PREFIX}mmlu.yaml", group, "the harness's mmlu group")


def category_slug(category: str) -> str:
    return PREFIX + re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_")


def _render_categories(categories: dict, prepared: list[str], tasks_dir: Path) -> None:
    """Group ``thresher_<category>``: the unweighted mean over its prepared tasks (as the papers average).

    Groups are for ``lm_eval --include_path`` users; evaluate_downstream averages categories itself."""
    for category, members in categories.items():
        names = [PREFIX + t for t in members if t in prepared]
        if not names:
            continue
        group = {"group": category_slug(category), "group_alias": category, "task": names,
                 "aggregate_metric_list": [{"metric": m, "weight_by_size": False} for m in ("acc", "acc_norm")],
                 "metadata": {"version": 1}}
        _dump_yaml(tasks_dir / "groups" / f"_{category_slug(category)}.yaml", group, "the paper's categories")
