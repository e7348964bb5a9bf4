"""evaluate_downstream end to end on a tiny Llama, checked against a log-likelihood loop written here."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from thresher.evaluate.downstream import evaluate_downstream, load_results, results_table_markdown, summarize
from thresher.utils.errors import ThresherError


@pytest.fixture(scope="module")
def run(tiny_model_dir, fake_data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_out")
    res = evaluate_downstream(tiny_model_dir, ["arc_easy", "boolq", "winogrande"],
                              {"arc_easy": 3, "boolq": 0, "winogrande": 2}, fake_data_root, out,
                              limit=20, batch_size=4, write_samples=True)
    return res, out


def test_results_layout(run):
    res, out = run
    assert set(res["tasks"]) == {"arc_easy", "boolq", "winogrande"}
    for name, row in res["tasks"].items():
        assert 0.0 <= row["acc"] <= 1.0 and row["n"] == 20
        assert row["acc_norm"] is None if name == "winogrande" else 0.0 <= row["acc_norm"] <= 1.0
    assert res["tasks"]["arc_easy"]["num_fewshot"] == 3
    assert res["categories"]["Problem Solving"]["tasks"] == ["arc_easy"]
    assert res["categories"]["Commonsense Reasoning"]["acc"] == res["tasks"]["winogrande"]["acc"]
    assert res["average"]["acc"] == pytest.approx(np.mean([r["acc"] for r in res["tasks"].values()]))
    assert load_results(out) == json.loads(json.dumps(res))  # the file holds exactly what was returned
    # acc/acc_norm recomputed from the per-doc samples equal the harness's aggregates
    for name in res["tasks"]:
        rows = [json.loads(line) for line in (out / f"samples_{name}.jsonl").read_text().splitlines()]
        assert np.mean([r["acc"] for r in rows]) == pytest.approx(res["tasks"][name]["acc"])


def test_markdown_table(run):
    res, _ = run
    md = results_table_markdown({"random": res, "again": res})
    assert ("| Run | Problem Solving (1 task) | Commonsense Reasoning (1 task) | Reading Comprehension (1 task) "
            "| Average (3 tasks) |") in md
    assert f"{100 * res['average']['acc']:.1f}" in md and md.count("| random |") == 2


def _loglik(model, tok, context: str, continuation: str) -> float:
    """sum log p(continuation | context), float64; continuation tokens = enc(ctx+cont)[len(enc(ctx)):],
    trailing spaces of the context moved to the continuation (the split lm-eval documents)."""
    n_space = len(context) - len(context.rstrip(" "))
    context, continuation = context[: len(context) - n_space], context[len(context) - n_space:] + continuation
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    n_ctx = len(tok(context, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.double(), dim=-1)[0]
    return float(sum(logp[i - 1, whole[i]] for i in range(n_ctx, len(whole))))


def test_accuracy_equals_independent_loglik(tiny_model_dir, fake_data_root, tmp_path):
    """ARC-Easy 0-shot, limit=10: the prompt built by hand from the raw file, per-choice log-likelihoods
    from the model, argmax -> acc (and acc_norm by choice length) must equal the harness's numbers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = evaluate_downstream(tiny_model_dir, ["arc_easy"], 0, fake_data_root, tmp_path, limit=10,
                              batch_size=3, write_samples=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    raw = [json.loads(line) for line in (fake_data_root / "arc_easy" / "test.jsonl").read_text().splitlines()][:10]
    samples = [json.loads(line) for line in (tmp_path / "samples_arc_easy.jsonl").read_text().splitlines()]
    samples.sort(key=lambda s: s["doc_id"])
    acc, acc_norm = [], []
    for doc, sample in zip(raw, samples):
        ll = np.array([_loglik(model, tok, f"Question: {doc['question']}\nAnswer:", " " + c) for c in doc["choices"]])
        np.testing.assert_allclose(sample["loglikelihoods"], ll, rtol=1e-4, atol=1e-4)
        acc.append(float(np.argmax(ll) == doc["gold"]))
        lengths = np.array([len(" " + c) for c in doc["choices"]], dtype=float)
        acc_norm.append(float(np.argmax(ll / lengths) == doc["gold"]))
    assert res["tasks"]["arc_easy"]["acc"] == pytest.approx(np.mean(acc))
    assert res["tasks"]["arc_easy"]["acc_norm"] == pytest.approx(np.mean(acc_norm))


def test_caller_rng_untouched(tiny_model_dir, fake_data_root, tmp_path):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    evaluate_downstream(tiny_model_dir, ["boolq"], 0, fake_data_root, tmp_path, limit=2)
    assert torch.equal(torch.rand(3), expected)


def test_no_git_noise_outside_a_repository(tiny_model_dir, fake_data_root, tmp_path, monkeypatch, capfd):
    """lm-eval records the working directory's git hash by running git, which printed 'fatal: not a git repository'
    into the user's terminal from any folder outside a repository; inside one, the hash is still recorded."""
    import lm_eval.evaluator as evaluator

    from thresher.evaluate.downstream import _git_hash_quietly

    outside = tmp_path / "outside"
    outside.mkdir()
    monkeypatch.chdir(outside)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # tmp_path may lie inside a repository
    capfd.readouterr()
    evaluate_downstream(tiny_model_dir, ["boolq"], 0, fake_data_root, tmp_path / "ev", limit=2)
    assert "not a git repository" not in capfd.readouterr().err
    assert _git_hash_quietly() is None and evaluator.get_git_commit_hash is not _git_hash_quietly  # restored
    monkeypatch.chdir(Path(__file__).parent)
    if shutil.which("git") and subprocess.run(["git", "rev-parse"], capture_output=True).returncode == 0:
        assert _git_hash_quietly()  # the checkout's hash, as lm-eval records it


def test_missing_data_root_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(ThresherError, match="evaluation data root not found"):
        evaluate_downstream(tiny_model_dir, ["arc_easy"], 0, tmp_path / "nope", tmp_path / "out")


def test_missing_task_file_is_a_clear_error(tiny_model_dir, fake_data_root, tmp_path):
    with pytest.raises(ThresherError, match=r"siqa: missing .*validation\.jsonl"):
        evaluate_downstream(tiny_model_dir, ["arc_easy", "siqa"], 0, fake_data_root, tmp_path)


def test_unknown_task_and_bad_model_dir(tiny_model_dir, fake_data_root, tmp_path):
    with pytest.raises(ThresherError, match="unknown downstream task"):
        evaluate_downstream(tiny_model_dir, ["race"], 0, fake_data_root, tmp_path)
    with pytest.raises(ThresherError, match="no config.json"):
        evaluate_downstream(tmp_path, ["arc_easy"], 0, fake_data_root, tmp_path)


def test_a_missing_model_folder_names_the_checkpoints_that_exist(tiny_model_dir, fake_data_root, tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "step_000012").mkdir(parents=True)
    with pytest.raises(ThresherError, match=r"no such model folder: .*step_12 \(.*checkpoints holds step_000012\)"):
        evaluate_downstream(ckpts / "step_12", ["arc_easy"], 0, fake_data_root, tmp_path / "ev")
    assert not (tmp_path / "ev").exists()


def test_summarize_by_hand():
    per_task = {"a": {"acc": 0.5, "acc_norm": 0.25}, "b": {"acc": 0.25, "acc_norm": 0.5},
                "c": {"acc": 1.0, "acc_norm": None}}
    s = summarize(per_task, {"X": ["a", "b", "missing"], "Y": ["c"], "Z": ["missing"]})
    assert s["categories"]["X"]["acc"] == 0.375 and s["categories"]["Y"]["acc_norm"] == 1.0  # acc stands in
    assert "Z" not in s["categories"]
    assert s["average"]["acc"] == pytest.approx((0.5 + 0.25 + 1.0) / 3)  # over tasks, not categories
    assert s["average"]["acc_norm"] == pytest.approx((0.25 + 0.5 + 1.0) / 3)


def test_mmlu_group_is_size_weighted_mean_of_subjects(tiny_model_dir, fake_mmlu_root, tmp_path):
    res = evaluate_downstream(tiny_model_dir, ["mmlu"], 1, fake_mmlu_root, tmp_path, write_samples=True)
    rows = [json.loads(line) for line in (tmp_path / "samples_mmlu.jsonl").read_text().splitlines()]
    assert sorted({r["task"] for r in rows}) == ["thresher_mmlu_anatomy", "thresher_mmlu_virology"]
    assert res["tasks"]["mmlu"]["n"] == len(rows) == 10
    assert res["tasks"]["mmlu"]["acc"] == pytest.approx(np.mean([r["acc"] for r in rows]))
