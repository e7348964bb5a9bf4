"""Raw benchmark files (as shipped in shared/data/eval) -> the Hugging Face layout lm-eval's own tasks read.

Each converter returns ``{split: [doc, ...]}`` where every doc has exactly the fields of the HF dataset
the harness's built-in task loads (``allenai/ai2_arc``, ``tau/commonsense_qa``, ``aps/super_glue``...),
so our task YAMLs can reuse the harness's prompt templates unchanged. Where the harness computes a field
in Python (``!function``), the converter stores the same value as an extra field (e.g. MathQA ``choices``)
and the YAML reads it with Jinja; tests/evaluate checks both give the same strings.

Malformed rows are skipped and counted (``Skips``), never silently dropped.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from thresher.utils.errors import ThresherError

LETTERS = "ABCDEFGHIJ"
Docs = dict[str, list[dict[str, Any]]]


class Skips(Counter):
    """reason -> number of raw rows skipped for it."""


def read_jsonl(path: Path, skips: Skips) -> list[dict]:
    rows = []
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                rows.append(json.loads(raw.decode("utf-8")))
            except UnicodeDecodeError:
                skips[f"{path.name}: not UTF-8"] += 1
            except json.JSONDecodeError:
                skips[f"{path.name}: bad JSON line"] += 1
    return rows


def _convert_rows(rows: list[dict], fn: Callable[[dict], dict], skips: Skips, where: str) -> list[dict]:
    """Apply ``fn`` to each row; a row missing a field or holding a bad value is skipped and counted."""
    out = []
    for row in rows:
        try:
            out.append(fn(row))
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
            skips[f"{where}: {type(e).__name__}"] += 1
    return out


# ---------------------------------------------------------------- ARC / OpenBookQA (oe-eval layout)

def _mc_choices(row: dict) -> dict:
    choices = [str(c) for c in row["choices"]]
    gold = int(row["gold"])
    if not 0 <= gold < len(choices) or len(choices) < 2:
        raise ValueError("gold out of range")
    # The original answer labels ("A".."E" or "1".."4") were not kept upstream; A.. labels give the same
    # target index, which is all the harness uses them for.
    return {"choices": {"text": choices, "label": list(LETTERS[: len(choices)])}, "answerKey": LETTERS[gold]}


def arc(task_dir: Path, skips: Skips) -> Docs:
    """allenai/ai2_arc layout: id, question, choices{text,label}, answerKey."""
    fn = lambda r: {"id": str(r["id"]), "question": str(r["question"]), **_mc_choices(r)}  # noqa: E731
    return {s: _convert_rows(read_jsonl(task_dir / f"{s}.jsonl", skips), fn, skips, s) for s in ("test", "validation")}


def openbookqa(task_dir: Path, skips: Skips) -> Docs:
    """allenai/openbookqa (main) layout: id, question_stem, choices{text,label}, answerKey."""
    fn = lambda r: {"id": str(r["id"]), "question_stem": str(r["question"]), **_mc_choices(r)}  # noqa: E731
    return {s: _convert_rows(read_jsonl(task_dir / f"{s}.jsonl", skips), fn, skips, s) for s in ("test", "validation")}


# ---------------------------------------------------------------- MathQA

# lm_eval/tasks/mathqa/utils.py: doc_to_choice splits the options string with this pattern.
_MATHQA_OPTION = re.compile(r"[abcd] \) .*?, |e \) .*?$")


def mathqa_choices(options: str) -> list[str]:
    return [c[4:].rstrip(" ,") for c in _MATHQA_OPTION.findall(options)]


def _mathqa_doc(row: dict) -> dict:
    # LLM-Adapters upper-cased the letters a-f inside the options; MathQA text is all lower case,
    # so lower() restores the original string (e.g. "DAtA inADEquAtE" -> "data inadequate").
    options = str(row["options"]).lower()
    choices = mathqa_choices(options)
    correct = str(row["correct"]).strip().lower()
    if len(choices) != 5 or correct not in "abcde" or len(correct) != 1:
        raise ValueError("not 5 options a-e")
    return {"Problem": str(row["Problem"]), "options": options, "correct": correct, "choices": choices}


def mathqa(task_dir: Path, skips: Skips) -> Docs:
    """regisss/math_qa layout (Problem, options, correct) + the parsed ``choices`` list."""
    return {"test": _convert_rows(read_jsonl(task_dir / "test.jsonl", skips), _mathqa_doc, skips, "test")}


# ---------------------------------------------------------------- MMLU

def mmlu_subjects(task_dir: Path) -> list[str]:
    return sorted(p.name[: -len("_test.csv")] for p in (task_dir / "test").glob("*_test.csv"))


def _mmlu_csv(path: Path, subject: str, skips: Skips) -> list[dict]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except UnicodeDecodeError as e:
        raise ThresherError(f"{path}: not UTF-8 ({e})") from None
    fn = lambda r: {  # noqa: E731
        "question": r["question"], "subject": subject,
        "choices": [r[f"choice{i}"] for i in range(4)], "answer": _index(r["answer"], 4),
    }
    return _convert_rows(rows, fn, skips, path.name)


def _index(value: Any, n: int) -> int:
    i = int(value)
    if not 0 <= i < n:
        raise ValueError("answer out of range")
    return i


def mmlu(task_dir: Path, skips: Skips) -> Docs:
    """cais/mmlu layout (question, subject, choices, answer), one ``<split>/<subject>`` key per file."""
    docs: Docs = {}
    for subject in mmlu_subjects(task_dir):
        for split in ("test", "dev"):
            docs[f"{split}/{subject}"] = _mmlu_csv(task_dir / split / f"{subject}_{split}.csv", subject, skips)
    return docs


# ---------------------------------------------------------------- SIQA / WinoGrande / CSQA / BoolQ

def siqa(task_dir: Path, skips: Skips) -> Docs:
    """lighteval/siqa layout: context, question, answerA/B/C, label ("1".."3")."""
    def fn(r: dict) -> dict:
        _index(int(r["label"]) - 1, 3)
        keys = ("context", "question", "answerA", "answerB", "answerC", "label")
        return {k: str(r[k]) for k in keys}
    return {"validation": _convert_rows(read_jsonl(task_dir / "validation.jsonl", skips), fn, skips, "validation")}


def winogrande(task_dir: Path, skips: Skips) -> Docs:
    """allenai/winogrande layout: sentence (with one "_"), option1, option2, answer ("1"/"2")."""
    def fn(r: dict) -> dict:
        if r["sentence"].count("_") < 1 or str(r["answer"]) not in ("1", "2"):
            raise ValueError("no blank or bad answer")
        return {k: str(r[k]) for k in ("sentence", "option1", "option2", "answer")}
    return {"validation": _convert_rows(read_jsonl(task_dir / "validation.jsonl", skips), fn, skips, "validation")}


def commonsenseqa(task_dir: Path, skips: Skips) -> Docs:
    """tau/commonsense_qa layout: id, question, question_concept, choices{label,text}, answerKey."""
    def fn(r: dict) -> dict:
        q = r["question"]
        labels = [c["label"] for c in q["choices"]]
        if len(labels) != 5 or r["answerKey"] not in labels:
            raise ValueError("need 5 choices and a listed answer")
        return {"id": r["id"], "question": q["stem"], "question_concept": q.get("question_concept", ""),
                "choices": {"label": labels, "text": [c["text"] for c in q["choices"]]}, "answerKey": r["answerKey"]}
    rows = read_jsonl(task_dir / "dev_rand_split.jsonl", skips)
    return {"validation": _convert_rows(rows, fn, skips, "validation")}


def boolq(task_dir: Path, skips: Skips) -> Docs:
    """aps/super_glue boolq layout: question (no "?"), passage (no title), idx, label (1 = yes)."""
    fn = lambda r: {"question": str(r["question"]), "passage": str(r["passage"]),  # noqa: E731
                    "idx": int(r["idx"]), "label": _index(r["label"], 2)}
    return {"validation": _convert_rows(read_jsonl(task_dir / "validation.jsonl", skips), fn, skips, "validation")}


# ---------------------------------------------------------------- LogiQA

def _logiqa_normalize(text: str) -> str:
    # The EleutherAI/logiqa loading script the harness reads applies exactly this (it also turns
    # "3.5" into "3. 5"; kept, since the harness's numbers are computed on that text).
    return text.replace(".", ". ").strip()


def parse_logiqa(text: str, skips: Skips, where: str) -> list[dict]:
    """Blank-line separated 8-line records: answer letter, passage, question, 4 "X." options."""
    docs = []
    for record in text.replace("\r\n", "\n").strip().split("\n\n"):
        lines = record.split("\n")
        if len(lines) != 7 or lines[0].strip() not in ("a", "b", "c", "d"):
            skips[f"{where}: malformed record"] += 1
            continue
        docs.append({"label": lines[0].strip(), "context": _logiqa_normalize(lines[1]),
                     "question": _logiqa_normalize(lines[2]),
                     "options": [_logiqa_normalize(o[2:]) for o in lines[3:]]})
    return docs


def logiqa(task_dir: Path, skips: Skips) -> Docs:
    """EleutherAI/logiqa layout (label letter, context, question, options) parsed from the raw .txt."""
    return {split: parse_logiqa((task_dir / name).read_text(encoding="utf-8"), skips, name)
            for split, name in (("test", "Test.txt"), ("validation", "Eval.txt"))}


def check_nonempty(task: str, docs: Docs, skips: Skips) -> None:
    for split, rows in docs.items():
        if not rows:
            raise ThresherError(f"{task}: no usable rows in split {split!r} ({dict(skips) or 'file empty'})")
