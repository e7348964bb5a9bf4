"""`thresher experiment`: policies x seeds, resumable run by run, a results table from the runs' own files."""

import json
import math
from pathlib import Path

import pytest

import thresher.experiments.run as run_module
from thresher.evaluate.report import final_ref_losses, read_jsonl
from thresher.experiments.experiment import load_experiment, mean_ci, report_only, run_experiment
from thresher.train.callbacks import StopAt
from thresher.utils.errors import SettingsMismatchError, ThresherError

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "experiment_synthetic.toml"


def _load(out: Path, *extra: str):
    return load_experiment(CONFIG, [
        f"experiment.out={json.dumps(str(out))}", "experiment.synthetic_docs=2500",
        'experiment.policies=["random", "multi-agent"]', "experiment.seeds=[0, 1]",
        "train.steps=24", "train.eval_every=12", "train.ckpt_every=12", "train.warmup_steps=2",
        "selector.update_every=12", "selector.samples_per_category=8", "selector.budget_tokens=60000",
        "data.reference_max_examples=60", "data.influence_fit_docs=32", "influence.fit_docs_max=32",
        "influence.projection_dim=256", *extra])


def test_mean_ci_against_hand_computed():
    mean, half = mean_ci([1.0, 2.0, 3.0], 0.95)
    assert mean == 2.0
    assert half == pytest.approx(4.302652729911275 / math.sqrt(3), rel=1e-9)  # t(0.975, 2) * sd / sqrt(n)
    assert mean_ci([5.0], 0.95) == (5.0, None)


def test_runner_resumes_after_a_kill_without_redoing_finished_runs(tmp_path, monkeypatch):
    calls = []
    real = run_module.run

    def spy(cfg, resume=False, callbacks=()):
        calls.append((Path(cfg.out).relative_to(tmp_path / "exp" / "runs").as_posix(), resume))
        return real(cfg, resume=resume, callbacks=callbacks)

    exp, base = _load(tmp_path / "exp")
    # 1st invocation: random/seed0 finishes, multi-agent/seed0 is killed after its step-12 checkpoint
    stop = StopAt(18)
    monkeypatch.setattr(run_module, "run", lambda cfg, resume=False, callbacks=(): spy(
        cfg, resume, [stop] if "multi-agent" in cfg.out else callbacks))
    with pytest.raises(ThresherError, match="multi-agent seed 0 stopped at step 18"):
        run_experiment(exp, base)
    assert calls == [("random/seed0", False), ("multi-agent/seed0", False)]
    # 2nd invocation: random/seed0 is kept, multi-agent/seed0 resumes from its checkpoint, seed 1 runs
    monkeypatch.setattr(run_module, "run", spy)
    calls.clear()
    results = run_experiment(exp, base)
    assert calls == [("multi-agent/seed0", True), ("random/seed1", False), ("multi-agent/seed1", False)]
    steps = [r["step"] for r in read_jsonl(tmp_path / "exp/runs/multi-agent/seed0/metrics.jsonl") if "loss" in r]
    assert steps[-1] == 24 and len(set(steps)) == len(steps)  # continued, no step trained twice in the log
    # 3rd invocation: nothing left to train
    calls.clear()
    run_experiment(exp, base)
    assert calls == []
    # the table holds the runs' own final reference losses, averaged over seeds
    table = json.loads((tmp_path / "exp" / "results.json").read_text())["reference_loss"]
    for policy in ("random", "multi-agent"):
        finals = [final_ref_losses(read_jsonl(tmp_path / f"exp/runs/{policy}/seed{s}/metrics.jsonl")) for s in (0, 1)]
        means = [sum(f.values()) / len(f) for f in finals]
        assert table[policy]["mean"]["values"] == pytest.approx(means)
        assert table[policy]["mean"]["mean_ci"][0] == pytest.approx(sum(means) / 2)
    md = results.read_text()
    assert "| multi-agent | 2 |" in md and "| random | 2 |" in md
    assert (tmp_path / "exp" / "curves.png").exists() and (tmp_path / "exp" / "weights_multi-agent.png").exists()
    # on the synthetic world: each agent's learned weights against the truth, per seed
    from thresher.experiments.demo import agreement_with_truth
    from thresher.utils.io import read_json

    gt = read_json(tmp_path / "exp/world/world/ground_truth.json")
    agree = agreement_with_truth(tmp_path / "exp/runs/multi-agent/seed1", gt)
    assert set(agree) == {"quality", "domain", "topic"}
    assert "| multi-agent | 1 | " + " | ".join(f"{v:.3f}" for v in agree.values()) + " |" in md
    # a changed setting is refused for runs that already exist
    exp2, base2 = _load(tmp_path / "exp", "train.lr=0.01")
    with pytest.raises(SettingsMismatchError):
        run_experiment(exp2, base2)
    before = results.read_text()
    with pytest.raises(SettingsMismatchError, match="train.lr"):  # --report-only too: old runs, new settings
        report_only(exp2, base2)
    assert results.read_text() == before
    assert report_only(exp, base) == results and results.read_text() == before
    # a run folder saved before an option existed (the line is absent) ran with its default: accepted
    saved = tmp_path / "exp/runs/random/seed0/config.toml"
    lines = saved.read_text().splitlines(keepends=True)
    saved.write_text("".join(line for line in lines if not line.startswith("factor_refresh_every = 1")))
    assert len(saved.read_text().splitlines()) == len(lines) - 1
    run_experiment(exp, base)
    assert calls == []


def test_unknown_policy_is_a_one_line_error(tmp_path):
    with pytest.raises(ThresherError, match="neither a policy"):
        _load(tmp_path, 'experiment.policies=["random", "nope"]')


@pytest.mark.shared_data
def test_downstream_evaluation_of_every_run_lands_in_the_table(tmp_path):
    from thresher.evaluate.config import EvalConfig

    if not EvalConfig().resolved_data_root().exists():
        pytest.skip("../shared/data is absent")
    exp, base = _load(tmp_path / "exp", 'experiment.policies=["random"]', "experiment.seeds=[0]",
                      "experiment.downstream=true", 'experiment.eval={tasks=["arc_easy"], limit=8}',
                      "train.steps=12")
    results = run_experiment(exp, base)
    ds = json.loads((tmp_path / "exp/runs/random/seed0/downstream/downstream_results.json").read_text())
    acc = ds["tasks"]["arc_easy"]["acc"]
    assert 0.0 <= acc <= 1.0
    assert "## Downstream accuracy" in results.read_text() and f"{100 * acc:.1f}" in results.read_text()


def test_differences_to_the_baseline_are_paired_over_shared_seeds():
    """random finished seeds {0, 1, 2}, quad only {0, 1} and is 0.05 worse on each: the difference is +0.05
    over the 2 shared seeds (unpaired means would say -0.10); a seed lacking a task is out of the mean column."""
    from thresher.experiments.experiment import ExperimentConfig, ref_table

    exp = ExperimentConfig(seeds=[0, 1, 2], policies=["random", "quad"])
    run = lambda a, b=None: {"ref": {"a": a} | ({} if b is None else {"b": b})}  # noqa: E731
    runs = {"random": {0: run(3.0, 3.0), 1: run(3.1, 3.1), 2: run(3.5, 3.5)},
            "quad": {0: run(3.05, 3.05), 1: run(3.15, 3.15), 2: run(2.0)}}
    lines, numbers = ref_table(exp, runs)
    assert numbers["quad"]["delta_vs_baseline"] == pytest.approx(0.05)
    assert numbers["quad"]["delta_seeds"] == [0, 1] and numbers["quad"]["mean_seeds"] == [0, 1]
    assert numbers["quad"]["mean"]["values"] == pytest.approx([3.05, 3.15])
    assert any("| quad |" in ln and "+0.050 ± 0.000 (2 shared seeds)" in ln for ln in lines)
    with pytest.raises(ThresherError, match="baseline"):
        ExperimentConfig(seeds=[0], policies=["random"], baseline="Random").validate()


def test_the_difference_to_the_baseline_has_a_paired_interval():
    """Δ carries the Student-t interval of the per-seed differences (its significance), computed by hand here;
    one shared seed has none."""
    import statistics

    from scipy.stats import t

    from thresher.experiments.experiment import ExperimentConfig, ref_table

    exp = ExperimentConfig(seeds=[0, 1, 2], policies=["random", "quad", "dsir"])
    runs = {"random": {0: {"ref": {"a": 3.0}}, 1: {"ref": {"a": 3.2}}, 2: {"ref": {"a": 3.4}}},
            "quad": {0: {"ref": {"a": 2.9}}, 1: {"ref": {"a": 3.15}}, 2: {"ref": {"a": 3.2}}},
            "dsir": {1: {"ref": {"a": 3.0}}}}
    lines, numbers = ref_table(exp, runs)
    diffs = [-0.1, -0.05, -0.2]
    half = t.ppf(0.975, 2) * statistics.stdev(diffs) / math.sqrt(3)
    assert numbers["quad"]["delta_vs_baseline"] == pytest.approx(sum(diffs) / 3)
    assert numbers["quad"]["delta_ci"] == pytest.approx(half)
    assert any("| quad |" in ln and f"{sum(diffs) / 3:+.3f} ± {half:.3f}" in ln for ln in lines)
    assert numbers["dsir"]["delta_ci"] is None
    assert any("| dsir |" in ln and "-0.200 (1 shared seeds)" in ln for ln in lines)


def _fake_run(d: Path, evals: dict[int, float], tokens_per_step: int) -> None:
    """A finished run folder: metrics.jsonl with a reference loss at each step of ``evals``, summary.json."""
    d.mkdir(parents=True)
    rows = [{"step": st, "loss": 5.0, "tokens": st * tokens_per_step, "ref_loss/a": v, "ref_loss/b": v + 1.0}
            for st, v in sorted(evals.items())]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    last = max(evals)
    (d / "summary.json").write_text(json.dumps({"finished": True, "step": last, "tokens": last * tokens_per_step,
                                                "train_seconds": 1.0, "selection_seconds": 0.0,
                                                "train_flops": 1.0, "selection_flops": 0.0}))


def test_runs_of_different_lengths_are_also_compared_at_equal_tokens(tmp_path):
    """A variant that trains twice the steps ends lower; the table says how many tokens each row trained, and
    a second table compares every run at the fewest tokens any run trained, from its evaluation there."""
    from thresher.experiments.experiment import ExperimentConfig, write_results

    exp = ExperimentConfig(out=str(tmp_path), seeds=[0, 1], policies=["random", "long"],
                           variants={"long": {"policy": "random", "set": ["train.steps=200"]}})
    for s in (0, 1):
        _fake_run(tmp_path / f"runs/random/seed{s}", {50: 4.0 + s, 100: 3.0 + s}, 2048)
        _fake_run(tmp_path / f"runs/long/seed{s}", {50: 4.1 + s, 100: 3.2 + s, 150: 2.5, 200: 2.0 + s}, 2048)
    md = write_results(exp).read_text()
    main, equal = md.split("## At equal tokens: 204,800")
    assert "| random | 2 | 204.8k |" in main and "| long | 2 | 409.6k |" in main
    assert "-1.000" in main.split("| long |")[1].splitlines()[0]  # final against final: 2.5 vs 3.5 (mean of a, b)
    long_row = equal.split("| long |")[1].splitlines()[0]
    assert "| 204.8k |" in "| long |" + long_row and "+0.200" in long_row  # 3.7 vs 3.5 at equal tokens
    numbers = json.loads((tmp_path / "results.json").read_text())["equal_tokens"]
    assert numbers["tokens"] == 204800
    assert numbers["reference_loss"]["long"]["a"]["values"] == pytest.approx([3.2, 4.2])
    # equal lengths: no second table
    for s in (0, 1):
        _fake_run(tmp_path / f"same/runs/random/seed{s}", {100: 3.0}, 2048)
        _fake_run(tmp_path / f"same/runs/long/seed{s}", {100: 3.1}, 2048)
    exp.out = str(tmp_path / "same")
    assert "At equal tokens" not in write_results(exp).read_text()
