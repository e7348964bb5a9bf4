"""The trainer end to end on CPU: learning, golden losses, exact resume, checkpoints, export."""

import json
import math

import numpy as np
import pytest
import torch

import make_golden
from train_fakes import StaticSelector, SwitchingSelector, pattern_store, tiny_config
from thresher.agents.base import RandomSelector, SelectionContext, Labels
from thresher.corpus.reference import ReferenceTask
from thresher.evaluate.refloss import reference_loss
from thresher.train.callbacks import StopAt
from thresher.train.checkpoint import decode_state, encode_state, list_checkpoints
from thresher.train.config import TrainConfig
from thresher.train.dist import init_distributed
from thresher.train.loop import lr_at, train
from thresher.utils.errors import SettingsMismatchError, ThresherError


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("THRESHER_NO_PROGRESS", "1")


def _metrics(out):
    return [json.loads(ln) for ln in open(out / "metrics.jsonl")]


def _task(store, n=6):
    docs = [store.doc(i) for i in range(1, 64, 2)[:n]]  # held out: the selection is the even docs
    return ReferenceTask("held_out", [d[:10] for d in docs], [d[10:16] for d in docs])


def test_loss_decreases_on_structured_corpus(tmp_path):
    store = pattern_store()
    task = _task(store)
    cfg = tiny_config(steps=30, lr=1e-2, warmup_steps=3, eval_every=15)
    out = train(cfg, store, StaticSelector(np.arange(0, 64, 2)), tmp_path, eval_tasks={"held_out": task})
    losses = out["losses"]
    assert len(losses) == 30 and math.log(64) - 0.3 < losses[0] < math.log(64) + 0.3
    assert np.mean(losses[-5:]) < 0.6 * losses[0]
    evals = [m["ref_loss/held_out"] for m in _metrics(tmp_path) if "ref_loss/held_out" in m]
    assert len(evals) == 2 and evals[1] < evals[0] and out["ref_losses"]["held_out"] == evals[1]


def test_metrics_carry_running_totals_of_train_and_selection_time(tmp_path):
    """train_s_total adds up each step's training seconds (step_s - selection_s), so a report on a run without
    summary.json (still training, killed) reads the totals from its last line; they end at the summary's."""
    store = pattern_store()
    out = train(tiny_config(steps=5, log_every=1), store, _switching(), tmp_path)
    m = _metrics(tmp_path)
    assert [r["step"] for r in m] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([r["train_s_total"] for r in m], np.cumsum([r["step_s"] - r["selection_s"] for r in m]),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose([r["selection_s_total"] for r in m], np.cumsum([r["selection_s"] for r in m]), rtol=1e-9)
    assert m[-1]["train_s_total"] == out["train_seconds"] and m[-1]["selection_s_total"] == out["selection_seconds"]


def test_golden_losses(tmp_path):
    golden = json.loads(make_golden.GOLDEN.read_text())["losses"]
    assert make_golden.golden_losses() == pytest.approx(golden, rel=1e-5, abs=1e-5)


def _switching():
    return SwitchingSelector(np.arange(0, 64, 2), np.arange(1, 64, 2), at=4)


def test_killed_and_resumed_run_is_bit_exact(tmp_path):
    store = pattern_store()
    cfg = tiny_config(steps=8, ckpt_every=3, keep_last=1, global_batch_tokens=256)  # 2 micro-steps
    full = train(cfg, store, _switching(), tmp_path / "full")
    # killed after step 5 (last checkpoint: step 3), then resumed with fresh objects
    part = train(cfg, store, _switching(), tmp_path / "part", callbacks=[StopAt(5)])
    assert part["step"] == 5 and not part["finished"]
    rest = train(cfg, store, _switching(), tmp_path / "part", resume=True)
    assert rest["losses"] == full["losses"][3:]
    assert [m["loss"] for m in _metrics(tmp_path / "part")] == full["losses"]
    assert rest["selection_flops"] == full["selection_flops"] == 8 * 1e3
    assert [s for s, _ in list_checkpoints(tmp_path / "part" / "checkpoints")] == [6]


def test_resume_refuses_other_settings(tmp_path):
    store = pattern_store()
    train(tiny_config(steps=2, ckpt_every=2), store, StaticSelector(np.arange(10)), tmp_path)
    with pytest.raises(SettingsMismatchError, match="lr"):
        train(tiny_config(steps=4, lr=1e-4), store, StaticSelector(np.arange(10)), tmp_path, resume=True)


def test_retention_keeps_last_and_every(tmp_path):
    cfg = tiny_config(steps=8, ckpt_every=1, keep_last=2, keep_every=3)
    train(cfg, pattern_store(), StaticSelector(np.arange(10)), tmp_path)
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [3, 6, 7, 8]


def test_export_loads_with_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    store = pattern_store()
    task = _task(store)
    cfg = tiny_config(steps=3, export=True)
    out = train(cfg, store, StaticSelector(np.arange(10)), tmp_path, eval_tasks={"t": task})
    loaded = AutoModelForCausalLM.from_pretrained(out["model_dir"])
    assert reference_loss(loaded, task, 4, 64) == pytest.approx(out["ref_losses"]["t"], rel=1e-6)


def test_random_selector_gets_initial_selection(tmp_path):
    store = pattern_store()
    sel = RandomSelector()
    sel.setup(SelectionContext(store.lengths, Labels(), budget_docs=20, seed=1))
    out = train(tiny_config(steps=2), store, sel, tmp_path)
    assert sel.version == 1 and len(sel.selection()) == 20 and len(out["losses"]) == 2


def test_selector_state_encoding_round_trips(tmp_path):
    state = {"a": np.arange(5, dtype=np.int32), "b": [np.float64(1.5), {"c": np.array(["x", "y"])}], "d": (1, 2)}
    torch.save(encode_state(state), tmp_path / "s.pt")
    back = decode_state(torch.load(tmp_path / "s.pt", weights_only=True))
    assert back["a"].dtype == np.int32 and np.array_equal(back["a"], state["a"])
    assert back["b"][0] == 1.5 and back["b"][1]["c"].tolist() == ["x", "y"] and back["d"] == (1, 2)


def test_schedules_by_hand():
    cos = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=2, steps=12, schedule="cosine")
    assert [lr_at(cos, s) for s in (0, 1)] == [0.5, 1.0]
    assert lr_at(cos, 7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    wsd = TrainConfig(lr=1.0, min_lr_ratio=0.0, warmup_steps=2, steps=10, schedule="wsd", decay_fraction=0.2)
    assert [lr_at(wsd, s) for s in range(10)] == [0.5, 1, 1, 1, 1, 1, 1, 1, 0.5, 0.0]


def test_bad_settings_are_user_errors(tmp_path):
    with pytest.raises(ThresherError, match="multiple"):
        train(tiny_config(global_batch_tokens=100), pattern_store(), StaticSelector(np.arange(4)), tmp_path)
    with pytest.raises(ThresherError, match="schedule"):
        TrainConfig(schedule="linear").validate()
    with pytest.raises(ThresherError, match="unknown train settings"):
        TrainConfig.from_dict({"lr": 1.0, "learning_rate": 2.0})


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:", "cuda:x", "tpu", "cuda0"])
def test_unknown_device_strings_are_refused(device):
    with pytest.raises(ThresherError, match="train.device must be auto, cpu, cuda or cuda:N"):
        TrainConfig(device=device).validate()
    with pytest.raises(ThresherError, match="train.device must be"):
        init_distributed(device)


def test_cuda_n_names_that_gpu(monkeypatch):
    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        TrainConfig(device=device).validate()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ThresherError, match="'cuda:0' but no CUDA device is visible"):
        init_distributed("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a 2-GPU machine, as far as dist.py can tell
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: None)
    assert init_distributed("cuda:1").device == torch.device("cuda", 1)
    with pytest.raises(ThresherError, match="only 2 CUDA device"):
        init_distributed("cuda:2")


def test_global_batch_that_the_ranks_cannot_split_names_a_micro_batch_that_fits():
    from thresher.train.loop import _accum_steps

    cfg = tiny_config(seq_len=1024, micro_batch=32, global_batch_tokens=131072)  # configs/pool.toml's batch
    assert [_accum_steps(cfg, w) for w in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(ThresherError, match=r"not a multiple of micro_batch\*seq_len\*world_size=262144; "
                                            r"with 8 rank\(s\) set train.micro_batch=16 \(same global batch\)"):
        _accum_steps(cfg, 8)
    with pytest.raises(ThresherError, match="128 sequences per step cannot be split over 3 ranks"):
        _accum_steps(cfg, 3)


def test_the_progress_bar_says_where_a_slow_selection_update_went(monkeypatch, capsys):
    from types import SimpleNamespace

    from thresher.train.callbacks import Progress

    monkeypatch.delenv("THRESHER_NO_PROGRESS", raising=False)
    run = SimpleNamespace(dist=SimpleNamespace(rank=0), cfg=SimpleNamespace(steps=10), step=0,
                          counters={"selection_s": 0.0, "train_s": 0.0})
    bar = Progress()
    bar.on_train_start(run)
    for step, (sel_s, train_s, changed) in enumerate([(0.0, 0.5, False), (6.0, 0.5, True), (0.2, 0.5, True)], 1):
        run.counters["selection_s"] += sel_s
        run.counters["train_s"] += train_s
        bar.on_step_end(run, {"step": step, "loss": 1.0, "lr": 1e-3, "selection_s": sel_s, "step_s": sel_s + train_s,
                              "selection_changed": changed})
    bar.on_train_end(run)
    out, err = capsys.readouterr()
    # one line for the slow update (6 s of 7 s so far = 86%), none for the 0.2 s one
    assert out.strip().splitlines() == ["step 1: selection update 6.0 s (a training step 0.50 s); "
                                        "selection so far 86% of the run's time"]
    assert "sel=81%" in err  # the postfix at the end: 6.2 s of 7.7 s


def _word_tokenizer(vocab: int):
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w1"))


@pytest.mark.parametrize("loss_impl", ["full", "chunked"])
def test_an_intermediate_checkpoint_exports_like_the_final_model(tmp_path, loss_impl):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thresher.train.checkpoint import export_checkpoint

    store = pattern_store()
    store.tokenizer = lambda: _word_tokenizer(store.vocab_size)
    task = _task(store)
    cfg = tiny_config(steps=4, ckpt_every=2, export=True, loss_impl=loss_impl)
    out = train(cfg, store, StaticSelector(np.arange(10)), tmp_path, eval_tasks={"t": task})
    ckpts = dict(list_checkpoints(tmp_path / "checkpoints"))
    last = export_checkpoint(ckpts[4], tmp_path / "hf4", store)
    loaded = AutoModelForCausalLM.from_pretrained(last)
    assert reference_loss(loaded, task, 4, 64) == pytest.approx(out["ref_losses"]["t"], rel=1e-6)
    final = AutoModelForCausalLM.from_pretrained(out["model_dir"])
    for (k, a), (_, b) in zip(sorted(loaded.state_dict().items()), sorted(final.state_dict().items())):
        assert torch.equal(a, b), k
    tok = AutoTokenizer.from_pretrained(last)
    assert tok.eos_token_id == store.eos_id and tok.pad_token_id == store.pad_id
    mid = AutoModelForCausalLM.from_pretrained(export_checkpoint(ckpts[2], tmp_path / "hf2", store))
    assert reference_loss(mid, task, 4, 64) > out["ref_losses"]["t"]  # step 2: a model that learned less
    with pytest.raises(ThresherError, match="not a training checkpoint"):
        export_checkpoint(tmp_path / "hf2", tmp_path / "x", store)


def test_tensorboard_events_hold_the_metrics_of_metrics_jsonl(tmp_path):
    """train.tensorboard = true: every numeric metric of metrics.jsonl is a scalar at its step (read back with
    TensorBoard's own reader); without the package, the config is a one-line error before anything is written."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = pattern_store()
    cfg = tiny_config(steps=4, eval_every=2, tensorboard=True)
    train(cfg, store, StaticSelector(np.arange(0, 64, 2)), tmp_path, eval_tasks={"held_out": _task(store)})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    rows = _metrics(tmp_path)
    assert {"loss", "lr", "ref_loss/held_out"} <= set(events.Tags()["scalars"])
    for key in ("loss", "lr", "ref_loss/held_out"):
        want = [(m["step"], m[key]) for m in rows if key in m]
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in want] and len(want) >= 2
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6)  # float32 in the events


def test_tensorboard_without_the_package_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ThresherError, match=r"needs the tensorboard package: pip install 'thresher\[tensorboard\]'"):
        tiny_config(tensorboard=True).validate()


def test_a_stage_that_outruns_its_selection_says_so_and_counts_the_passes(tmp_path, capsys):
    """4 documents, 132 stream tokens a step (4 rows of seq_len + 1): metrics.jsonl's selection_pass is the pass
    that holds the step's last stream token, and one note names the selection's size when pass 2 begins."""
    store = pattern_store()
    ids = np.array([0, 2, 4, 6])
    cfg = tiny_config(steps=10, prefetch=2)
    train(cfg, store, StaticSelector(ids), tmp_path)
    total = int(np.asarray(store.lengths)[ids].sum()) + len(ids)  # with an EOS each
    got = [m["selection_pass"] for m in _metrics(tmp_path)]
    assert got == [(132 * s - 1) // total + 1 for s in range(1, 11)] and max(got) >= 3
    first = got.index(2) + 1
    out = capsys.readouterr().out
    assert out.count("now repeats it") == 1, out
    assert f"note: step {first}: training went through all of the current selection (4 documents, {total:,} tokens" in out
