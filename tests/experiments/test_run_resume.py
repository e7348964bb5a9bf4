"""A killed and resumed train <-> select run equals an uninterrupted one: model, data position and the
selector's whole state (agent weights, theta, bandit sums and counts, selection, RNG) come back."""

import dataclasses
from pathlib import Path

import pytest

from process_helpers import child_env
from thresher.evaluate.report import read_jsonl
from thresher.experiments.demo import DemoConfig, _gather, run_config
from thresher.experiments.run import run
from thresher.train.callbacks import Callback, StopAt
from thresher.train.checkpoint import list_checkpoints


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    cfg = DemoConfig(n_docs=2500, seed=3)
    return cfg, out, _gather(out, cfg)


def _config(world, policy, out):
    cfg, base, (w, store, labels) = world
    rc = run_config(cfg, policy, w, store, labels, base)
    rc.out = str(out)
    rc.train = dataclasses.replace(rc.train, steps=36, ckpt_every=12, eval_every=12, warmup_steps=3)
    rc.data = dataclasses.replace(rc.data, reference_max_examples=60, influence_fit_docs=32)
    rc.influence = dataclasses.replace(rc.influence, fit_docs_max=32, projection_dim=256)
    rc.selector = dataclasses.replace(rc.selector, update_every=12, samples_per_category=8,
                                      budget_tokens=60_000, quad_stage_tokens=12 * 2048)
    return rc


def _trace(out: Path):
    metrics = [(r["step"], r["loss"]) for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    log = read_jsonl(out / "selector_log.jsonl")
    return metrics, log


@pytest.fixture(scope="module")
def uninterrupted(world, tmp_path_factory):
    """policy -> the trace of an uninterrupted run under ``_config`` (each policy trained once per module)."""
    traces = {}

    def trace(policy):
        if policy not in traces:
            out = tmp_path_factory.mktemp("full") / policy
            run(_config(world, policy, out))
            traces[policy] = _trace(out)
        return traces[policy]
    return trace


@pytest.mark.parametrize("policy", ["multi-agent", "multi-agent+quad", "quad"])
def test_killed_and_resumed_run_equals_uninterrupted(world, uninterrupted, tmp_path, policy):
    run(_config(world, policy, tmp_path / "killed"), callbacks=[StopAt(30)])  # dies after the step-24 checkpoint
    run(_config(world, policy, tmp_path / "killed"), resume=True)
    full, resumed = uninterrupted(policy), _trace(tmp_path / "killed")
    assert [s for s, _ in full[0]] == list(range(1, 37))
    assert resumed[0] == full[0]  # bit-exact losses, step by step
    assert resumed[1] == full[1]  # the same agent updates, weights, theta and selections
    assert sum(1 for r in full[1] if r["step"] > 0) == 2  # updates at steps 12 and 24


KILL_IN_SAVE = """
import os, signal, sys
import thresher.train.checkpoint as ck
real, step = ck._fsync, sys.argv[1]
def fsync(path):  # the step's files are written into its temporary folder, which is not yet renamed
    if path.name.startswith(".tmp-step_" + step):
        os.kill(os.getpid(), signal.SIGKILL)
    real(path)
ck._fsync = fsync
sys.argv = ["thresher", *sys.argv[2:]]
from thresher.cli import main
main()
"""


def test_thresher_train_killed_with_sigkill_resumes_to_the_uninterrupted_run(world, uninterrupted, tmp_path):
    """`thresher train` under multi-agent+quad (console + Quad's bandit agent), kill -9 while it writes its step-36
    checkpoint (the step-24 one holds the state after the step-12 update), then `thresher train --resume`: the
    losses and every selection update equal an uninterrupted run's, and the half-written checkpoint is gone."""
    import subprocess
    import sys

    from typer.testing import CliRunner

    from thresher.cli import app
    from thresher.config import save_run_config

    out = tmp_path / "killed"
    config = save_run_config(_config(world, "multi-agent+quad", out), tmp_path)
    (tmp_path / "kill.py").write_text(KILL_IN_SAVE)
    env = child_env()  # this process's thread count: bit-equal floats
    r = subprocess.run([sys.executable, str(tmp_path / "kill.py"), "000036", "train", "--config", str(config)], env=env)
    assert r.returncode == -9
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [12, 24]  # and step 36's temporary folder
    assert [p.name.split("-")[1] for p in (out / "checkpoints").glob(".tmp-*")] == ["step_000036"]
    log = read_jsonl(out / "selector_log.jsonl")
    assert [e["step"] for e in log] == [0, 12, 24]  # the update redone after the resume was made before the kill
    r = CliRunner().invoke(app, ["train", "--config", str(config), "--resume"], env=env)
    assert r.exit_code == 0, r.output
    full, resumed = uninterrupted("multi-agent+quad"), _trace(out)
    assert resumed[0] == full[0]  # bit-exact losses, step by step
    assert [e["selection_sha1"] for e in resumed[1]] == [e["selection_sha1"] for e in full[1]]
    assert resumed[1] == full[1]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000024", "step_000036"]


@pytest.mark.parametrize("reuse", ["all", "eigenbasis"])
def test_resume_reuses_the_checkpointed_influence_factors(world, tmp_path, reuse):
    """influence.factor_refresh_every = 2: the update at step 24 reuses the factors fit at step 12. A run
    killed in between resumes from the step-18 checkpoint, which carries those factors (a refit on the
    resumed model would change the rewards, the agents' weights and the selection)."""
    def cfg(out):
        rc = _config(world, "multi-agent", out)
        rc.influence = dataclasses.replace(rc.influence, factor_refresh_every=2, factor_reuse=reuse)
        rc.selector = dataclasses.replace(rc.selector, normalization="raw")  # the log holds the raw mean rewards
        rc.train = dataclasses.replace(rc.train, ckpt_every=6)
        return rc

    run(cfg(tmp_path / "full"))
    run(cfg(tmp_path / "killed"), callbacks=[StopAt(20)])  # dies after the step-18 checkpoint
    run(cfg(tmp_path / "killed"), resume=True)
    full, resumed = _trace(tmp_path / "full"), _trace(tmp_path / "killed")
    updates = [r for r in full[1] if r["step"] > 0]
    assert [r["step"] for r in updates] == [12, 24]
    assert [r["rewards"]["factors_step"] for r in updates] == [12, 12]
    assert [r["rewards"]["lambda_step"] for r in updates] == ([12, 12] if reuse == "all" else [12, 24])
    assert resumed == full


def test_resume_refuses_changed_data_and_influence_settings(world, tmp_path):
    """A resume that changes the reference sample, the eval split or the rewards would mix two runs' metrics."""
    from thresher.config import save_run_config
    from thresher.experiments.run import check_resume_config
    from thresher.utils.errors import SettingsMismatchError

    rc = _config(world, "multi-agent", tmp_path)
    save_run_config(rc, tmp_path)
    check_resume_config(rc, tmp_path)  # unchanged: fine
    for section, change in (("data", {"reference_max_examples": 61}), ("data", {"reference_eval_fraction": 0.3}),
                            ("influence", {"projection_dim": 128})):
        changed = _config(world, "multi-agent", tmp_path)
        setattr(changed, section, dataclasses.replace(getattr(changed, section), **change))
        with pytest.raises(SettingsMismatchError, match=f"{section}.{next(iter(change))}"):
            check_resume_config(changed, tmp_path)
    faster = _config(world, "multi-agent", tmp_path)  # speed-only settings may change
    faster.influence = dataclasses.replace(faster.influence, batch_size=3, scoring_impl="hooks")
    check_resume_config(faster, tmp_path)


def test_a_label_table_of_another_store_is_refused(world, tmp_path):
    import json
    import shutil

    from thresher.experiments.run import build_run
    from thresher.utils.errors import ThresherError

    rc = _config(world, "multi-agent", tmp_path / "run")
    labels = tmp_path / "labels"
    shutil.copytree(rc.data.labels, labels)
    manifest = json.loads((labels / "table.json").read_text())
    assert manifest["source"].startswith("store-sha256:")  # labelling recorded the store it read
    manifest["source"] = "store-sha256:" + "0" * 32
    (labels / "table.json").write_text(json.dumps(manifest))
    import pyarrow.parquet as pq  # as a label run writes the pair: labels.parquet names its table.json's digest

    from thresher.labels.table import MANIFEST_KEY, _manifest_key
    t = pq.read_table(labels / "labels.parquet")
    pq.write_table(t.replace_schema_metadata({**t.schema.metadata, MANIFEST_KEY: _manifest_key(manifest).encode()}),
                   labels / "labels.parquet")
    rc.data = dataclasses.replace(rc.data, labels=str(labels))
    with pytest.raises(ThresherError, match="labelled from another token store"):
        build_run(rc)


def test_mates_runs_see_how_their_embedding_column_was_computed(world, tmp_path):
    """build_run hands MATES the label table's record of its embedding column (renamed through
    data.label_columns), which its checkpoints key on: a --replace of that column refuses the resume."""
    import shutil

    import numpy as np

    from thresher.experiments.run import build_run
    from thresher.labels.table import LabelTable

    rc = _config(world, "multi-agent", tmp_path / "run")
    labels = tmp_path / "labels"
    shutil.copytree(rc.data.labels, labels)
    n = LabelTable.open(labels).n_docs
    np.save(tmp_path / "emb.npy", np.random.default_rng(0).normal(size=(n, 4)).astype(np.float16))
    prov = {"labeler": "EmbedLabeler", "settings": {"max_length": 64}}
    LabelTable.write(labels, n, {"my_emb": tmp_path / "emb.npy"}, {"my_emb": {"kind": "embedding", "provenance": prov}})
    rc.data = dataclasses.replace(rc.data, labels=str(labels), label_columns={**rc.data.label_columns, "embedding": "my_emb"})
    rc.selector = dataclasses.replace(rc.selector, policy="mates")
    _, selector, _, _ = build_run(rc)
    assert selector.ctx.embedding_provenance == prov


class _Crash(Callback):
    """A kill the trainer cannot finish after: an exception out of the step-``step`` callbacks."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, run, metrics):
        if run.step >= self.step:
            raise KeyboardInterrupt


def _selections(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "selections").glob("*"))}


def test_a_killed_run_leaves_its_selector_log_and_a_resume_redoes_it(world, tmp_path):
    """selector_log.jsonl is written as the run goes, not only at its end: a run killed at step 30 shows the
    updates of steps 12 and 24 with the influence provenance and the selection's digest; its resume rewrites
    the file from the step-24 checkpoint and ends with the log of an uninterrupted run.

    Each stage's D_k is saved (save_selections = auto: the pool is small), named by its entry, and its ids hash to
    the entry's selection_sha1. The killed run has written the step-24 stage, which its step-24 checkpoint does
    not hold (the update runs at the start of step 25): a resume removes that file (here one under
    save_selections = never, which a resume may change, that stops at step 24); the next ends as the full run."""
    import numpy as np

    from thresher.agents.base import selection_digest

    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run(_config(world, "multi-agent", killed), callbacks=[_Crash(30)])
    log = read_jsonl(killed / "selector_log.jsonl")
    assert [r["step"] for r in log] == [0, 12, 24]
    assert [r["rewards"]["step"] for r in log[1:]] == [12, 24] and all(r["selection_sha1"] for r in log)
    assert [e["selection_file"] for e in log] == [f"selections/step_{s:06d}.npy" for s in (0, 12, 24)]
    for e in log:
        ids = np.load(killed / e["selection_file"])
        assert ids.dtype == np.int32 and selection_digest(ids) == e["selection_sha1"] and len(ids) == e["selected"]
    assert sorted(_selections(killed)) == ["step_000000.npy", "step_000012.npy", "step_000024.npy"]

    rc = _config(world, "multi-agent", killed)
    rc.selector = dataclasses.replace(rc.selector, save_selections="never")
    rc.train = dataclasses.replace(rc.train, steps=24)
    run(rc, resume=True)
    assert [e["step"] for e in _trace(killed)[1]] == [0, 12]
    assert sorted(_selections(killed)) == ["step_000000.npy", "step_000012.npy"]

    run(_config(world, "multi-agent", killed), resume=True)
    run(_config(world, "multi-agent", tmp_path / "full"))
    assert _trace(killed)[1] == _trace(tmp_path / "full")[1]
    assert _selections(killed) == _selections(tmp_path / "full")


def test_save_selections_auto_follows_the_pool_size():
    from thresher.agents.config import AUTO_SAVE_MAX_DOCS, SelectorConfig

    assert SelectorConfig().saves_selections(AUTO_SAVE_MAX_DOCS)
    assert not SelectorConfig().saves_selections(AUTO_SAVE_MAX_DOCS + 1)
    assert SelectorConfig(save_selections="always").saves_selections(10**9)
    assert not SelectorConfig(save_selections="never").saves_selections(10)
