"""Checkpoints and resume when things go wrong: a second run in the same folder, corrupt files, a kill
mid-write, a cut-short metrics line, changed settings."""

import json
import os
import subprocess

import numpy as np
import pytest
import torch

from train_fakes import StaticSelector, pattern_store, tiny_config
from thresher.corpus.reference import ReferenceTask
from thresher.train import checkpoint as ck
from thresher.train.callbacks import StopAt
from thresher.train.checkpoint import apply_retention, list_checkpoints, step_dirs
from thresher.train.config import TrainConfig
from thresher.train.loop import train
from thresher.utils.errors import SettingsMismatchError, ThresherError
from thresher.utils.io import writer_tag


def _steps(out):
    return [s for s, _ in list_checkpoints(out / "checkpoints")]


def _metrics(out):
    return [json.loads(ln) for ln in open(out / "metrics.jsonl")]


def _sel():
    return StaticSelector(np.arange(10))


def test_fresh_run_refuses_a_folder_with_checkpoints(tmp_path):
    train(tiny_config(steps=4, ckpt_every=4), pattern_store(), _sel(), tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ThresherError, match=r"checkpoints already holds checkpoints \(step_000004, ...\).*--resume.*another out_dir"):
        train(tiny_config(steps=4, ckpt_every=2), pattern_store(), _sel(), tmp_path)
    assert _steps(tmp_path) == [4] and sorted(p.name for p in tmp_path.iterdir()) == before
    train(tiny_config(steps=6, ckpt_every=2), pattern_store(), _sel(), tmp_path, resume=True)  # resuming is fine
    assert _steps(tmp_path) == [4, 6]


def test_step_dirs_sorts_by_step_and_list_checkpoints_keeps_the_complete_ones(tmp_path):
    for name, complete in (("step_10", True), ("step_9", True), ("step_11", False), ("other", True)):
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "trainer.pt").write_bytes(b"")
    assert [s for s, _ in step_dirs(tmp_path)] == [9, 10, 11]
    assert [p.name for _, p in list_checkpoints(tmp_path)] == ["step_9", "step_10"]
    assert step_dirs(tmp_path / "missing") == [] and list_checkpoints(tmp_path / "missing") == []


def test_retention_never_deletes_the_checkpoint_just_written(tmp_path):
    for s in (2, 6):
        (tmp_path / f"step_{s:06d}").mkdir()
        (tmp_path / f"step_{s:06d}" / "trainer.pt").write_bytes(b"")
    apply_retention(tmp_path, keep_last=1, keep_every=0, keep=2)  # step 2 re-written after an older resume
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 6]


def test_keep_last_below_one_is_refused():
    with pytest.raises(ThresherError, match="keep_last must be >= 1"):
        TrainConfig(keep_last=0).validate()
    TrainConfig(keep_last=1).validate()


def _corrupt(out, how):
    c = out / "checkpoints" / "step_000004"
    if how == "truncated trainer.pt":
        (c / "trainer.pt").write_bytes((c / "trainer.pt").read_bytes()[:100])
    elif how == "empty optim.pt":
        (c / "optim.pt").write_bytes(b"")
    elif how == "missing model":
        (c / "model.safetensors").unlink()
    else:
        (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:1000])


HOWS = ["truncated trainer.pt", "empty optim.pt", "missing model", "truncated model"]


@pytest.mark.parametrize("how", HOWS)
def test_unreadable_only_checkpoint_is_a_one_line_error(tmp_path, how):
    train(tiny_config(steps=4, ckpt_every=4), pattern_store(), _sel(), tmp_path)
    _corrupt(tmp_path, how)
    with pytest.raises(ThresherError, match=r"checkpoint .*step_000004 is unreadable: \w+") as e:
        train(tiny_config(steps=8), pattern_store(), _sel(), tmp_path, resume=True)
    assert "\n" not in str(e.value)


def test_resume_falls_back_to_the_newest_readable_checkpoint(tmp_path, capsys):
    cfg = tiny_config(steps=8, ckpt_every=2, keep_last=2)
    full = train(cfg, pattern_store(), _sel(), tmp_path / "full")
    train(cfg, pattern_store(), _sel(), tmp_path / "part", callbacks=[StopAt(5)])
    assert _steps(tmp_path / "part") == [2, 4]
    _corrupt(tmp_path / "part", "truncated model")
    capsys.readouterr()
    rest = train(cfg, pattern_store(), _sel(), tmp_path / "part", resume=True)
    out = capsys.readouterr().out
    assert "warning: checkpoint" in out and "step_000004 is unreadable" in out and "step_000002 instead" in out
    assert rest["losses"] == full["losses"][2:]  # from step 2, exactly


def test_settings_are_checked_before_any_weight_is_loaded(tmp_path):
    train(tiny_config(steps=2, ckpt_every=2), pattern_store(), _sel(), tmp_path)
    with pytest.raises(SettingsMismatchError, match="settings differ from the checkpoint's: model"):
        train(tiny_config(model="debug", steps=4), pattern_store(), _sel(), tmp_path, resume=True)


def test_the_selector_state_is_checked_before_any_weight_is_loaded(tmp_path, monkeypatch):
    """A resume the selector refuses (its labels relabelled with --replace, other selector settings) fails before
    the model and optimizer state are read: a large model's checkpoint is not loaded only to be refused."""
    from thresher.train import loop

    train(tiny_config(steps=2, ckpt_every=2), pattern_store(), _sel(), tmp_path)

    class Relabelled(StaticSelector):
        def check_state(self, state):
            raise SettingsMismatchError("cannot resume: the labels of domain changed")

    loaded = []
    monkeypatch.setattr(loop, "load_checkpoint", lambda *a, **kw: loaded.append(a))
    with pytest.raises(SettingsMismatchError, match="the labels of domain changed"):
        train(tiny_config(steps=4), pattern_store(), Relabelled(np.arange(10)), tmp_path, resume=True)
    assert loaded == []


def test_checkpoint_files_and_folders_are_fsynced(tmp_path, monkeypatch):
    synced, real = [], os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(ck.os, "fsync", spy)
    train(tiny_config(steps=2, ckpt_every=2), pattern_store(), _sel(), tmp_path)
    root = str(tmp_path / "checkpoints")
    tmp = f"{root}/.tmp-step_000002-{writer_tag()}"
    mine = [p for p in synced if p.startswith(root)]  # each file, then its folder (before the rename), then root
    assert set(mine[:3]) == {f"{tmp}/{f}" for f in ("model.safetensors", "optim.pt", "trainer.pt")}
    assert mine[3:] == [tmp, root]


def test_failed_save_leaves_no_temp_folder(tmp_path, monkeypatch):
    real = torch.save

    def failing(obj, f, *a, **k):
        if str(f).endswith("trainer.pt"):
            raise OSError(28, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(ck.torch, "save", failing)
    with pytest.raises(ThresherError, match="could not write checkpoint .*step_000002: .*No space left"):
        train(tiny_config(steps=4, ckpt_every=2), pattern_store(), _sel(), tmp_path)
    assert list((tmp_path / "checkpoints").iterdir()) == []


def _leftover_tags(dead: int, alive: int) -> dict[str, list[str]]:
    """Host-PID tags of the writers of leftover folders, by whose they are: this machine's dead or ``alive``
    process's (each also under the untagged name of before host tags: this machine's), and another machine's (a run
    folder on a shared file system, where a PID dead there may be a live one here and the reverse)."""
    from thresher.utils.io import _HOST

    other = "000000" if _HOST != "000000" else "111111"
    return {"dead": [f"{_HOST}-{dead}", str(dead)], "alive": [f"{_HOST}-{alive}", str(alive)],
            "elsewhere": [f"{other}-{dead}", f"{other}-{alive}"]}


def test_stale_temp_folders_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        root = tmp_path / "checkpoints"
        tags = _leftover_tags(dead.pid, alive.pid)
        for tag in sum(tags.values(), []):
            for kind in ("tmp", "old"):  # a save in progress; the step it was replacing (killed before rmtree)
                (root / f".{kind}-step_000002-{tag}").mkdir(parents=True)
                (root / f".{kind}-step_000002-{tag}" / "optim.pt").write_bytes(b"partial")
        train(tiny_config(steps=2), pattern_store(), _sel(), tmp_path, resume=True)
        kept = [f".{kind}-step_000002-{tag}" for tag in tags["alive"] + tags["elsewhere"] for kind in ("tmp", "old")]
        assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == sorted(kept)
    finally:
        alive.kill()
        alive.wait()


def test_an_export_killed_mid_way_is_cleaned_up_by_the_next_one(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    tags = _leftover_tags(dead.pid, os.getpid())  # "alive": this process's own, of an earlier export that failed
    for tag in sum(tags.values(), []):
        for kind in ("tmp", "old"):  # save_pretrained cut short; the final/ being replaced, moved aside
            (tmp_path / f".{kind}-final-{tag}").mkdir()
            (tmp_path / f".{kind}-final-{tag}" / "model.safetensors").write_bytes(b"partial")
    train(tiny_config(steps=2, export=True), pattern_store(), _sel(), tmp_path)
    first = (tmp_path / "final" / "model.safetensors").read_bytes()
    kept = [f".{kind}-final-{tag}" for tag in tags["elsewhere"] for kind in ("tmp", "old")]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(kept)
    assert first and (tmp_path / "final" / "config.json").is_file()


def test_cut_short_metrics_line_is_dropped_on_resume(tmp_path, capsys):
    cfg = tiny_config(steps=6, ckpt_every=2)
    full = train(cfg, pattern_store(), _sel(), tmp_path / "full")
    train(cfg, pattern_store(), _sel(), tmp_path / "part", callbacks=[StopAt(3)])
    with open(tmp_path / "part" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 3.9')  # killed mid-append
    train(cfg, pattern_store(), _sel(), tmp_path / "part", resume=True)
    assert "dropped 1 unparsable line" in capsys.readouterr().out
    assert [m["loss"] for m in _metrics(tmp_path / "part")] == full["losses"]


def test_changed_steps_on_resume_warns_with_old_and_new(tmp_path, capsys):
    train(tiny_config(steps=8, ckpt_every=4), pattern_store(), _sel(), tmp_path, callbacks=[StopAt(4)])
    capsys.readouterr()
    train(tiny_config(steps=6, ckpt_every=4), pattern_store(), _sel(), tmp_path, resume=True)
    warn = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "train.steps changed from 8 to 6" in warn[0] and "cosine" in warn[0]


def test_evaluation_off_the_log_grid_is_written(tmp_path):
    store = pattern_store()
    docs = [store.doc(i) for i in (1, 3, 5)]
    task = ReferenceTask("t", [d[:10] for d in docs], [d[10:16] for d in docs])
    train(tiny_config(steps=6, eval_every=3, log_every=2), store, StaticSelector(np.arange(0, 64, 2)), tmp_path,
          eval_tasks={"t": task})
    rows = _metrics(tmp_path)
    assert [m["step"] for m in rows] == [2, 3, 4, 6]
    assert [m["step"] for m in rows if "ref_loss/t" in m] == [3, 6]


def test_resuming_a_finished_run_still_reports_its_reference_losses(tmp_path):
    store = pattern_store()
    docs = [store.doc(i) for i in (1, 3, 5)]
    task = ReferenceTask("t", [d[:10] for d in docs], [d[10:16] for d in docs])
    first = train(tiny_config(steps=4, eval_every=2, ckpt_every=2), store, _sel(), tmp_path, eval_tasks={"t": task})
    assert set(first["ref_losses"]) == {"t"}
    again = train(tiny_config(steps=4, eval_every=2, ckpt_every=2), store, _sel(), tmp_path, eval_tasks={"t": task},
                  resume=True)  # nothing left to train (a run that died after its last checkpoint)
    assert again["step"] == 4 and again["ref_losses"] == first["ref_losses"]


def test_model_overrides_train_resume_only_unchanged_and_export(tmp_path):
    from transformers import AutoModelForCausalLM
    from tokenizers import Tokenizer, models

    from thresher.train.checkpoint import export_checkpoint

    over = {"layers": 1, "kv_heads": 2}
    cfg = tiny_config(steps=4, ckpt_every=2, model_overrides=over)
    train(cfg, pattern_store(), _sel(), tmp_path / "run", callbacks=[StopAt(2)])
    with pytest.raises(SettingsMismatchError, match="model_overrides"):
        train(tiny_config(steps=4, ckpt_every=2, model_overrides={"layers": 2}), pattern_store(), _sel(),
              tmp_path / "run", resume=True)
    train(cfg, pattern_store(), _sel(), tmp_path / "run", resume=True)
    store = pattern_store()
    store.tokenizer = lambda: Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w1"))
    hf = AutoModelForCausalLM.from_pretrained(export_checkpoint(tmp_path / "run" / "checkpoints" / "step_000004",
                                                                tmp_path / "hf", store))
    assert (hf.config.num_hidden_layers, hf.config.num_key_value_heads) == (1, 2)


def test_a_checkpoint_from_before_model_overrides_resumes(tmp_path):
    cfg = tiny_config(steps=4, ckpt_every=2)
    train(cfg, pattern_store(), _sel(), tmp_path, callbacks=[StopAt(2)])
    path = tmp_path / "checkpoints" / "step_000002"
    state = torch.load(path / "trainer.pt", weights_only=True)
    del state["config"]["model_overrides"]  # what an older thresher wrote
    torch.save(state, path / "trainer.pt")
    out = train(cfg, pattern_store(), _sel(), tmp_path, resume=True)
    assert out["step"] == 4
