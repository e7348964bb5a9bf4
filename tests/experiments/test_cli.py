"""The console script: bad input is one line on stderr and writes nothing; the top-level seed reseeds the
whole run; the demo reuses runs only under the same settings; Ctrl-C says how to continue."""

import json
import sys
from pathlib import Path

import pytest
from run_helpers import cli_err as _main

from thresher import cli
from thresher.experiments.demo import DemoConfig, _gather, run_demo
from thresher.utils.errors import SettingsMismatchError, ThresherError


CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.mark.parametrize("args, message", [
    (["train"], "data.store and data.labels must name a token store and a label table"),
    (["train", "--set", "data.store=nowhere", "--set", "data.labels=nowhere"], "not a token store: nowhere"),
    (["train", "--set", "train.steps=abc"], "config key train.steps = 'abc': expected an integer"),
    (["synth", "w2", "--set", "n_docs=abc"], "config key n_docs = 'abc': expected an integer"),
    (["label", "store", "--out", "lab", "--set", "shard_size=abc"], "config key shard_size = 'abc'"),
    (["demo", "--out", "d", "--steps", "0"], "demo steps = 0: expected at least 1"),
    (["demo", "--out", "d", "--policies", "random,bogus"], "demo policies ['bogus']: choose from random"),
    (["demo", "--out", "d", "--projection", "bogus"], "influence.projection = 'bogus'"),
    (["train", "--set", "=5"], "override '=5' must look like key=value or section.key=value"),
    (["train", "--set", "train.model='tiny'", "--set", "train.seq_len=1024"],
     "train.seq_len=1024 exceeds model tiny's context 256"),
    (["train", "--set", "train.model_overrides={hidn = 1}"], "train.model_overrides: unknown field(s) ['hidn']"),
    (["train", "--set", "train..steps=5"], "override 'train..steps=5' must look like"),
    (["ingest", "x.jsonl", "--out", "s", "--tokenizer", "t.json", "--workers", "0"], "ingest workers = 0"),
    (["experiment", CONFIGS / "synthetic.toml"], f"{CONFIGS / 'synthetic.toml'} has no [experiment] table"),
    (["experiment", CONFIGS / "experiment_synthetic.toml", "--set", "experiment.synthetic_docs=0", "--set",
      "data.store=nowhere", "--set", "data.labels=nowhere"], "not a token store: nowhere"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    code, err = _main(monkeypatch, capsys, *args)
    assert code == 2 and err.startswith(f"error: {message}") and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_experiment_seeds_must_be_integers(tmp_path, monkeypatch, capsys):
    path = tmp_path / "exp.toml"
    path.write_text(f'[experiment]\nout = "{tmp_path / "exp"}"\nseeds = [0]\npolicies = ["random"]\n')
    code, err = _main(monkeypatch, capsys, "experiment", path, "--seeds", "a")
    assert (code, err) == (2, "error: --seeds 'a': expected comma-separated integers, e.g. --seeds 0,1")
    assert not (tmp_path / "exp").exists()


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import thresher.config
    import thresher.experiments.run
    import thresher.labels.stats

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(thresher.labels.stats, "label_stats", interrupt)
    assert _main(monkeypatch, capsys, "stats", "labels", "--out", "x") == (130, "interrupted")
    monkeypatch.setattr(thresher.config, "check_run_inputs", lambda cfg: None)
    monkeypatch.setattr(thresher.experiments.run, "run", interrupt)
    assert _main(monkeypatch, capsys, "train") == (130, "interrupted: rerun with --resume to continue")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    return out, _gather(out, DemoConfig(n_docs=1500, seed=0))


def _tiny_run_toml(world, path, steps: int, extra_train: str = "") -> Path:
    """A run config over the world's store and labels: random selection, tiny model on CPU, ``steps`` updates."""
    _, (w, store, labels) = world
    path.write_text(f"""
[data]
store = "{store}"
labels = "{labels}"
reference = {json.dumps(w["reference"]).replace(":", " =")}
reference_max_examples = 20
[selector]
policy = "random"
budget_tokens = 20000
[train]
device = "cpu"
seq_len = 32
micro_batch = 4
global_batch_tokens = 128
steps = {steps}
{extra_train}
""")
    return path


def test_top_level_seed_reseeds_the_run_and_a_set_section_seed_wins(world, tmp_path, monkeypatch, capsys):
    config = _tiny_run_toml(world, tmp_path / "run.toml", steps=2)

    def model(name, *sets):
        out = tmp_path / name
        args = [a for s in (f"out={json.dumps(str(out))}", *sets) for a in ("--set", s)]
        assert _main(monkeypatch, capsys, "train", "--config", config, *args)[0] == 0
        return (out / "final" / "model.safetensors").read_bytes()

    seed0 = model("seed0", "seed=0")
    assert model("seed1", "seed=1") != seed0  # other initial weights and another random selection
    assert model("seed1-sections0", "seed=1", "selector.seed=0", "influence.seed=0", "train.seed=0") == seed0


def test_train_writes_its_summary_and_report_compares_run_folders(world, tmp_path, monkeypatch, capsys):
    """A finished `thresher train` writes summary.json; `thresher report` puts runs side by side: each one's final
    reference loss (from its metrics, as summary.json has it) and its selection compute."""
    config = _tiny_run_toml(world, tmp_path / "run.toml", steps=3, extra_train="eval_every = 3")
    runs = []
    for policy in ("random", "static-mixture"):
        out = tmp_path / "runs" / policy
        assert _main(monkeypatch, capsys, "train", "--config", config, "--set", f"out={json.dumps(str(out))}",
                     "--set", f"selector.policy={policy}")[0] == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["finished"] and summary["step"] == 3 and "losses" not in summary and summary["wall_seconds"] > 0
        runs.append((out, summary))
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["thresher", "report", *map(str, (r for r, _ in runs)), "--out", str(tmp_path / "rep")])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"report: {tmp_path / 'rep' / 'report.md'}"
    md = (tmp_path / "rep" / "report.md").read_text()
    for out, summary in runs:
        losses = summary["ref_losses"]
        row = f"| {out.name} | " + " | ".join(f"{losses[t]:.4f}" for t in sorted(losses))
        assert row in md, md
        ts, ss = summary["train_seconds"], summary["selection_seconds"]
        assert f"| {out.name} | {ts:.1f} | {ss:.1f} | {ss / ts:.1%} |" in md
    assert (tmp_path / "rep" / "ref_loss.png").stat().st_size > 0
    code, err = _main(monkeypatch, capsys, "report", tmp_path, "--out", tmp_path / "rep2")
    assert code == 2 and err == f"error: {tmp_path} is not a run folder (no metrics.jsonl): give `thresher train` out folders"


def test_report_names_runs_by_as_much_of_their_path_as_tells_them_apart(tmp_path):
    from thresher.evaluate.report import run_labels

    dirs = [tmp_path / "a" / "multi-agent", tmp_path / "b" / "multi-agent", tmp_path / "b" / "quad"]
    for d in dirs:
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text("")
    assert list(run_labels(dirs)) == ["a/multi-agent", "b/multi-agent", "b/quad"]
    assert list(run_labels(dirs[1:])) == ["multi-agent", "quad"]
    with pytest.raises(ThresherError, match="a run folder is named twice"):
        run_labels([dirs[0], dirs[0]])
    with pytest.raises(ThresherError, match=r"b is not a run folder .* it holds the run folders multi-agent, quad: give those"):
        run_labels([tmp_path / "b"])


def test_demo_reuses_runs_only_under_the_same_settings(world):
    out = world[0]
    small = dict(n_docs=1500, seed=0, update_every=2, policies=["random"])
    run_demo(DemoConfig(steps=2, **small), out)
    with pytest.raises(SettingsMismatchError, match=r"train.steps = 2 there, 3 now.*choose another --out"):
        run_demo(DemoConfig(steps=3, **small), out)
    run_demo(DemoConfig(steps=2, **small), out)  # the same settings: the finished run is kept
    with pytest.raises(ThresherError, match="bogus"):
        run_demo(DemoConfig(steps=2, **{**small, "policies": ["random", "bogus"]}), out)
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["random"]



def test_cache_list_and_prune_take_the_label_folder(tmp_path, monkeypatch, capsys):
    import numpy as np

    from thresher.agents.base import Labels
    from thresher.agents.cells import cached_cell_index

    labels = Labels({"quality": np.arange(500) % 5, "domain": np.arange(500) % 7},
                    {"quality": list("abcde"), "domain": list("abcdefg")})
    cached_cell_index(labels, ["quality", "domain"], np.full(500, 10), tmp_path / "labels" / "cache")

    def run(*args) -> str:
        monkeypatch.setattr(sys, "argv", ["thresher", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            cli.main()
        out, err = capsys.readouterr()
        assert e.value.code == 0 and err == ""
        return out

    listed = run("cache", "list", tmp_path / "labels")
    assert "500 docs  [quality,domain]  last used 0.0 days ago" in listed and "1 cell index folders" in listed
    assert "would delete 0 cell index folders" in run("cache", "prune", tmp_path / "labels", "--dry-run")
    assert "deleted 1 cell index folders" in run("cache", "prune", tmp_path / "labels", "--unused-days", "0")
    assert list((tmp_path / "labels" / "cache").iterdir()) == []
    code, err = _main(monkeypatch, capsys, "cache", "list", tmp_path / "nowhere")
    assert code == 2 and err == f"error: {tmp_path / 'nowhere'} is not a folder"


def test_a_file_system_error_is_one_line(monkeypatch, capsys):
    def full_disk():
        raise OSError(28, "No space left on device", "/data/store/tokens.bin")

    monkeypatch.setattr(cli, "app", full_disk)
    code, err = _main(monkeypatch, capsys, "ingest")
    assert code == 2 and err == "error: No space left on device: /data/store/tokens.bin"


def test_export_and_eval_take_a_training_checkpoint(world, tmp_path, monkeypatch, capsys):
    import torch
    from safetensors.torch import load_file

    _, (w, store, labels) = world
    out = tmp_path / "run"
    sets = [f"data.store={json.dumps(str(store))}", f"data.labels={json.dumps(str(labels))}",
            f"data.reference={json.dumps(w['reference']).replace(':', ' =')}", "data.reference_max_examples=20",
            "selector.policy='random'", "selector.budget_tokens=20000", "train.device='cpu'", "train.seq_len=32",
            "train.micro_batch=4", "train.global_batch_tokens=128", "train.steps=2", "train.ckpt_every=2",
            f"out={json.dumps(str(out))}"]
    assert _main(monkeypatch, capsys, "train", *[a for s in sets for a in ("--set", s)])[0] == 0
    step = out / "checkpoints" / "step_000002"
    assert _main(monkeypatch, capsys, "export", step, "--out", tmp_path / "hf")[0] == 0
    final, exported = load_file(out / "final" / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert final.keys() == exported.keys() and all(torch.equal(final[k], exported[k]) for k in final)
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    code, err = _main(monkeypatch, capsys, "eval", "downstream", step, "--out", tmp_path / "ev", "--data-root",
                      tmp_path / "nowhere")
    assert code == 2 and "evaluation data root not found" in err  # exported first, then the data root
    assert (tmp_path / "ev" / "model" / "config.json").is_file()
    code, err = _main(monkeypatch, capsys, "export", tmp_path / "hf", "--out", tmp_path / "x")
    assert code == 2 and err.startswith("error: not a training checkpoint")


def test_a_synthetic_experiment_is_not_refused_for_the_store_it_builds_itself(tmp_path, monkeypatch, capsys):
    """experiment.synthetic_docs builds the store, labels and references under experiment.out (run_experiment):
    the CLI's input check must not refuse the shipped configs/experiment_synthetic.toml for lacking them."""
    from thresher.experiments import experiment

    calls = []
    monkeypatch.setattr(experiment, "run_experiment", lambda exp, base, **kw: calls.append(exp) or "results.md")
    monkeypatch.setattr(sys, "argv", ["thresher", "experiment", str(CONFIGS / "experiment_synthetic.toml"),
                                      "--set", f"experiment.out={tmp_path / 'exp'}"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 0, capsys.readouterr().err
    assert len(calls) == 1 and calls[0].synthetic_docs == 20000


def test_eval_of_a_checkpoint_names_the_checkpoint_in_its_table(tmp_path, monkeypatch, capsys):
    """The table's row is the checkpoint evaluated (rows of step_000100 and step_000200 differ), not the
    exported copy <out>/model that every checkpoint's evaluation shares."""
    from thresher.evaluate import config as eval_config
    from thresher.evaluate.downstream import summarize
    from thresher.train import checkpoint

    step = tmp_path / "run" / "checkpoints" / "step_000100"
    step.mkdir(parents=True)
    (step / "trainer.pt").write_bytes(b"")
    monkeypatch.setattr(checkpoint, "export_checkpoint", lambda ckpt, out, store: Path(out))
    monkeypatch.setattr(cli, "_run_store", lambda ckpt, store: None)
    result = summarize({"arc_easy": {"acc": 0.5, "acc_norm": 0.5, "num_fewshot": 3, "n": 2}}, {"PS": ["arc_easy"]})
    monkeypatch.setattr(eval_config, "run_eval", lambda cfg, model_dir, out: result)
    monkeypatch.setattr(sys, "argv", ["thresher", "eval", "downstream", str(step), "--out", str(tmp_path / "ev")])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out = capsys.readouterr().out
    assert e.value.code == 0 and f"| {step} | 50.0 |" in out and "ev/model |" not in out


def test_an_experiment_missing_a_policys_label_column_stops_before_training(world, tmp_path, monkeypatch, capsys):
    """multi-agent's topic agent has no column (here: mapped to one the table lacks): the experiment stops at
    once, before random trains, instead of when multi-agent's turn comes; regmix checks its proxies' labels."""
    _, (w, store, labels) = world
    path = tmp_path / "exp.toml"
    path.write_text(f"""
[experiment]
out = "{tmp_path / 'exp'}"
seeds = [0]
policies = ["random", "multi-agent"]
[data]
store = "{store}"
labels = "{labels}"
reference = {json.dumps(w["reference"]).replace(":", " =")}
label_columns = {{topic = "no_such_column"}}
""")
    code, err = _main(monkeypatch, capsys, "experiment", path)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: policy multi-agent runs agents ['quality', 'domain', 'topic'], but the label "
                          "table has no ['topic'] column")
    assert not (tmp_path / "exp" / "runs").exists()
    # regmix over the domain column: the base's multi-agent policy does not matter, the proxies' column does
    run_toml = tmp_path / "run.toml"
    run_toml.write_text(path.read_text().split("[data]")[1].join(["[selector]\npolicy = \"multi-agent\"\n[data]", ""]))
    out = tmp_path / "rm"
    from thresher.experiments import regmix

    monkeypatch.setattr(regmix, "run_regmix", lambda cfg, base: {"weights": {"x": 1.0}})
    monkeypatch.setattr(sys, "argv", ["thresher", "regmix", "--config", str(run_toml), "--out", str(out)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 0, capsys.readouterr().err  # the base's topic agent is no obstacle to regmix over domain
    code, err = _main(monkeypatch, capsys, "regmix", "--config", run_toml, "--column", "topic", "--out", out)
    assert code == 2 and "policy static-mixture runs agents ['topic']" in err and not out.exists()


def test_export_from_another_directory_names_the_config_and_store(tmp_path, monkeypatch, capsys):
    """config.toml's data.store is relative to where the run was started: from elsewhere `export` said only
    'not a token store: work/store has no store.json'; it names the config the path came from and --store."""
    step = tmp_path / "run" / "checkpoints" / "step_000002"
    step.mkdir(parents=True)
    (step / "trainer.pt").write_bytes(b"")
    (step / "model.safetensors").write_bytes(b"")
    config = tmp_path / "run" / "config.toml"
    config.write_text('[data]\nstore = "work/store"\nlabels = "work/labels"\n')
    monkeypatch.chdir(tmp_path)
    code, err = _main(monkeypatch, capsys, "export", step, "--out", tmp_path / "hf")
    assert code == 2 and len(err.splitlines()) == 1
    assert err == (f"error: no token store at work/store, the data.store that {config} names (its paths are "
                   "relative to the directory the run was started in): run from there or give --store")
    code, err = _main(monkeypatch, capsys, "export", step, "--out", tmp_path / "hf", "--store", tmp_path / "nowhere")
    assert code == 2 and err == f"error: not a token store: {tmp_path / 'nowhere'} has no store.json"
