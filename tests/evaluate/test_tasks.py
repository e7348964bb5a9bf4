"""Our offline task YAMLs give the same prompts as lm-eval's built-in tasks on the same records."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from thresher.evaluate.tasks import PREFIX, TASKS, mmlu_description, prepare_tasks

SHARED = Path(os.environ.get("THRESHER_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
LM_EVAL_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"
needs_shared = pytest.mark.skipif(not (SHARED / "eval").is_dir(), reason=f"no shared data at {SHARED}")


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    if not (SHARED / "eval").is_dir():
        pytest.skip(f"no shared data at {SHARED}")
    return prepare_tasks(SHARED, tmp_path_factory.mktemp("eval_cache"), list(TASKS))


def _ours(tasks_dir: Path, name: str):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(tasks_dir), include_defaults=False).load(name)["tasks"][name]


def _builtin_on_our_data(harness_yaml: str, ours) -> object:
    """The harness's own config (prompt functions resolved), pointed at our converted files and splits."""
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(LM_EVAL_TASKS / harness_yaml)
    cfg.pop("tag", None)
    cfg.update(dataset_path="json", dataset_name=None, dataset_kwargs=ours.config.dataset_kwargs,
               training_split=None, validation_split=ours.config.validation_split,
               test_split=ours.config.test_split, fewshot_split=ours.config.fewshot_split)
    return ConfigurableTask(config=cfg)


def _requests(task, doc, shots: int) -> list:
    ctx = task.fewshot_context(doc, shots)
    return [r.arguments for r in task.construct_requests(doc=doc, ctx=ctx, metadata=("t", 0, 1))]


def _assert_same_prompts(ours, builtin, n_docs: int = 25, shots: int = 3) -> None:
    for task in (ours, builtin):
        task.set_fewshot_seed(1234)
    docs = list(ours.eval_docs)[:n_docs]
    assert docs == list(builtin.eval_docs)[:n_docs]
    for doc in docs:
        assert ours.doc_to_text(doc) == builtin.doc_to_text(doc)
        assert ours.doc_to_choice(doc) == builtin.doc_to_choice(doc)
        assert ours.doc_to_target(doc) == builtin.doc_to_target(doc)
        assert _requests(ours, doc, shots) == _requests(builtin, doc, shots)


@pytest.mark.shared_data
@needs_shared
@pytest.mark.parametrize("name", [n for n in TASKS if n != "mmlu"])
def test_prompts_equal_builtin_task(tasks_dir, name):
    ours = _ours(tasks_dir, PREFIX + name)
    _assert_same_prompts(ours, _builtin_on_our_data(TASKS[name].harness_yaml, ours))


@pytest.mark.shared_data
@needs_shared
@pytest.mark.parametrize("subject", ["abstract_algebra", "high_school_us_history", "world_religions"])
def test_mmlu_prompts_equal_builtin_task(tasks_dir, subject):
    ours = _ours(tasks_dir, f"{PREFIX}mmlu_{subject}")
    builtin = _builtin_on_our_data(f"mmlu/default/mmlu_{subject}.yaml", ours)
    assert ours.config.description == builtin.config.description
    _assert_same_prompts(ours, builtin, n_docs=5, shots=5)


def test_mmlu_descriptions_match_every_builtin_subject():
    import yaml

    for path in sorted((LM_EVAL_TASKS / "mmlu" / "default").glob("mmlu_*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        assert mmlu_description(cfg["dataset_name"]) == cfg["description"], path.name


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


@pytest.mark.shared_data
@needs_shared
def test_converted_row_counts_match_manifest(tasks_dir):
    data = tasks_dir.parent / "data"
    expected = {"arc_easy/test": 2376, "arc_easy/validation": 570, "arc_challenge/test": 1172,
                "arc_challenge/validation": 299, "openbookqa/test": 500, "openbookqa/validation": 500,
                "boolq/validation": 3270, "siqa/validation": 1954, "winogrande/validation": 1267,
                "commonsenseqa/validation": 1221, "logiqa/test": 651, "logiqa/validation": 651,
                "mathqa/test": 2985}
    for key, n in expected.items():
        assert len(_rows(data / f"{key}.jsonl")) == n, key
    assert sum(len(_rows(p)) for p in (data / "mmlu" / "test").glob("*.jsonl")) == 14042
    assert sum(len(_rows(p)) for p in (data / "mmlu" / "dev").glob("*.jsonl")) == 285


@pytest.mark.shared_data
@needs_shared
def test_mathqa_gold_text_agrees_with_gauntlet_copy(tasks_dir):
    """Independent check of the case repair + option parsing: the gauntlet file (another copy of MathQA
    test, 4 shuffled options) must name the same gold answer text for the same problem."""
    ours = {r["Problem"]: r["choices"]["abcde".index(r["correct"])]
            for r in _rows(tasks_dir.parent / "data" / "mathqa" / "test.jsonl")}
    checked, exact = 0, 0
    for g in _rows(SHARED / "eval" / "mathqa" / "test.gauntlet.jsonl"):
        problem, *options = g["query"].removeprefix("Question: ").removesuffix("\nAnswer: ").split("\n")
        texts = [re.sub(r"^[A-D]\. ", "", o) for o in options]
        # the gauntlet copy split some options at commas ("19,800" -> "19") or kept list quotes: skip those
        if problem in ours and all(t and not re.search(r"[,')\]]", t) for t in texts):
            checked += 1
            exact += ours[problem] == texts[g["gold"]]
    assert checked > 2500 and exact >= 0.998 * checked  # the 3 misses are gauntlet comma splits


def test_fewshot_from_same_split_excludes_the_doc(tmp_path):
    """Single-split tasks draw few-shot docs from the evaluated split; the doc itself must never appear."""
    root = tmp_path / "eval" / "boolq"
    root.mkdir(parents=True)
    rows = [{"idx": i, "question": f"q{i}", "passage": f"passage number {i}", "label": i % 2} for i in range(4)]
    (root / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = _ours(prepare_tasks(tmp_path, tmp_path / "cache", ["boolq"]), f"{PREFIX}boolq")
    for doc in task.eval_docs:
        shots, query = task.fewshot_context(doc, 3).rsplit("\n\n", 1)
        assert query == f"passage number {doc['idx']}\nQuestion: q{doc['idx']}?\nAnswer:"
        assert sorted(re.findall(r"passage number (\d)", shots)) == sorted(str(i) for i in range(4) if i != doc["idx"])


def test_raw_rows_that_are_not_utf8_are_skipped_and_counted(tmp_path):
    from thresher.evaluate.tasks import converters as conv

    path = tmp_path / "test.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "\xff\xfe"}\n{bad json\n\n{"id": "b"}\n')
    skips = conv.Skips()
    assert conv.read_jsonl(path, skips) == [{"id": "a"}, {"id": "b"}]
    assert skips == {"test.jsonl: not UTF-8": 1, "test.jsonl: bad JSON line": 1}
