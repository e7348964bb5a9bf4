"""float16 autocast trains through a GradScaler: no gradient underflow, and resume restores its scale.

CPU runs never autocast, so these tests make the trainer pick float16 autocast on CPU (the dtype and
the scaler the CUDA path uses)."""

import numpy as np
import torch

from train_fakes import FakeStore, StaticSelector, pattern_store, tiny_config
from thresher.train import loop
from thresher.train.callbacks import StopAt
from thresher.train.dist import Dist


def _fp16_on_cpu(monkeypatch, **scaler_kw):
    monkeypatch.setattr(loop, "_autocast_dtype", lambda cfg, device: torch.float16)
    monkeypatch.setattr(loop, "_grad_scaler", lambda device: torch.amp.GradScaler(device.type, **scaler_kw))


def test_fp16_gradients_match_float32_with_loss_scaling(tmp_path, monkeypatch):
    """Paper-like update: vocab 32,000 and 256 micro-steps, so loss/accum's LM-head grads are ~1e-10."""
    _fp16_on_cpu(monkeypatch)
    g = np.random.default_rng(0)
    store = FakeStore([g.integers(2, 32000, 300) for _ in range(50)], 32000)
    sel = StaticSelector(np.arange(50))
    sel.initial_selection()
    cfg = tiny_config(seq_len=128, micro_batch=4, global_batch_tokens=512 * 256, prefetch=0)
    run = loop._setup(cfg, store, sel, tmp_path, Dist())
    assert run.autocast_dtype == torch.float16 and run.scaler is not None and run.accum == 256
    batch = run.loader.next_batch()

    def grads(dtype, scaler):
        run.autocast_dtype, run.scaler = dtype, scaler
        run.optimizer.zero_grad(set_to_none=True)
        loop._micro_step(run, batch, sync=True)
        if scaler is not None:
            scaler.unscale_(run.optimizer)
        return {n: p.grad.clone() for n, p in run.model.named_parameters()}

    scaler = run.scaler
    ref, plain, scaled = grads(None, None), grads(torch.float16, None), grads(torch.float16, scaler)
    head = "lm_head.weight"
    nz = ref[head] != 0
    lost = lambda gr: float(((gr[head] == 0) & nz).sum() / nz.sum())  # noqa: E731
    assert lost(plain) > 0.5  # without scaling most LM-head gradients underflow to 0
    assert lost(scaled) < 0.01
    for n in (head, "model.layers.0.mlp.down_proj.weight", "model.embed_tokens.weight"):
        assert float((scaled[n] - ref[n]).norm() / ref[n].norm()) < 1e-2, n


def test_fp16_resume_is_exact_with_the_scaler_state(tmp_path, monkeypatch):
    """A large initial scale and growth every 2 steps: updates overflow and are skipped now and then, so
    the scale the run resumes with decides which later updates happen."""
    _fp16_on_cpu(monkeypatch, init_scale=2.0**20, growth_interval=2)
    cfg = tiny_config(steps=8, ckpt_every=4)
    sel = lambda: StaticSelector(np.arange(0, 64, 2))  # noqa: E731
    full = loop.train(cfg, pattern_store(), sel(), tmp_path / "full")
    loop.train(cfg, pattern_store(), sel(), tmp_path / "part", callbacks=[StopAt(6)])
    saved = torch.load(tmp_path / "part" / "checkpoints" / "step_000004" / "trainer.pt", weights_only=True)["scaler"]
    assert saved["scale"] != 2.0**20  # the scale moved, so restoring it matters
    rest = loop.train(cfg, pattern_store(), sel(), tmp_path / "part", resume=True)
    assert rest["losses"] == full["losses"][4:]
