"""The chunked LM-head loss equals F.cross_entropy on the full logits (value and gradients, float64),
wraps the HF model without changing its checkpoints, and trains the same losses as the full path."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from train_fakes import StaticSelector, SwitchingSelector, pattern_store, tiny_config
from thresher.train.callbacks import StopAt
from thresher.train.config import TrainConfig
from thresher.train.loop import train
from thresher.train.loss import CausalLMWithLoss, linear_cross_entropy
from thresher.train.models import build_model
from thresher.utils.errors import ThresherError


def _problem(n=37, hidden=8, vocab=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, dtype=torch.float64, generator=g)
    w = torch.randn(vocab, hidden, dtype=torch.float64, generator=g)
    t = torch.randint(0, vocab, (n,), generator=g)
    t[3] = -100
    t[10:20] = -100  # with chunk 5 or 10, a whole chunk of ignored tokens
    return h, w, t


def _full(h, w, t, scale=1.0):
    """Reference: cross-entropy on the materialised logits; (loss, grad_h, grad_w) of scale * loss."""
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = F.cross_entropy(h @ w.T, t)
    return (loss.detach(), *torch.autograd.grad(scale * loss, (h, w)))


def _chunked(h, w, t, chunk, scale=1.0):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = linear_cross_entropy(h, w, t, chunk)
    return (loss.detach(), *torch.autograd.grad(scale * loss, (h, w)))


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("chunk", [1, 5, 7, 10, 16, 37, 4096])  # 5/7/16 do not divide N = 37
def test_chunked_equals_full_logits_in_float64(chunk):
    h, w, t = _problem()
    ref, got = _full(h, w, t, scale=0.3), _chunked(h, w, t, chunk, scale=0.3)  # 0.3: backward scales
    assert abs(float(got[0] / ref[0]) - 1) < 1e-10
    assert _rel(got[1], ref[1]) < 1e-10 and _rel(got[2], ref[2]) < 1e-10
    assert got[1][t == -100].abs().max() == 0  # ignored tokens get no gradient


def test_all_ignored_is_nan_like_cross_entropy():
    h, w, t = _problem(n=6)
    t[:] = -100
    assert torch.isnan(_full(h, w, t)[0]) and torch.isnan(_chunked(h, w, t, 4)[0])


def test_wrapper_equals_hf_logits_loss_for_every_parameter():
    torch.manual_seed(0)
    lm = build_model("tiny", 40, dtype=torch.float64)
    ids = torch.randint(0, 40, (2, 9))
    targets = torch.randint(0, 40, (2, 9))
    targets[0, :4] = -100
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 5], list(range(9))])
    logits = lm(input_ids=ids, position_ids=pos, use_cache=False).logits
    # restarting positions = separate documents (no attention across the boundary, as the trainer intends)
    separate = torch.cat([lm(input_ids=ids[:1, :3]).logits, lm(input_ids=ids[:1, 3:]).logits], 1)
    assert _rel(logits[:1], separate) < 1e-12
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    ref_grads = torch.autograd.grad(ref, list(lm.parameters()))
    loss = CausalLMWithLoss(lm, chunk_tokens=5)(ids, targets, position_ids=pos)
    grads = torch.autograd.grad(loss, list(lm.parameters()))
    assert abs(float(loss.detach() / ref.detach()) - 1) < 1e-10
    for (name, _), g, r in zip(lm.named_parameters(), grads, ref_grads):
        assert _rel(g, r) < 1e-10, name


def test_bf16_autocast_is_as_accurate_as_the_full_path():
    """Under autocast both paths round logits and grads to bf16; measured against float64 the
    chunked errors stay of the full path's size, and grads come back in the parameters' dtype."""
    h, w, t = _problem(n=64, hidden=32, vocab=50)
    exact = _full(h, w, t)
    h32, w32 = h.float().requires_grad_(), w.float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = F.cross_entropy((h32 @ w32.T).float(), t)  # the loop's full path: bf16 logits, upcast
    full_g = torch.autograd.grad(full, (h32, w32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(h32.to(torch.bfloat16), w32.to(torch.bfloat16), t, 16)
    ours_g = torch.autograd.grad(ours, (h32, w32))
    assert ours.dtype == torch.float32 and ours_g[1].dtype == torch.float32
    assert abs(float(ours.detach()) - float(exact[0])) <= 2 * abs(float(full.detach()) - float(exact[0])) + 1e-3
    for i in (0, 1):
        assert _rel(ours_g[i].double(), exact[i + 1]) <= 2 * _rel(full_g[i].double(), exact[i + 1]) + 1e-3


def test_chunked_training_matches_full(tmp_path):
    # 4 x 32 = 128 tokens per micro-batch, chunks of 48: the last chunk is short; 2 micro-steps per update
    cfg = dict(steps=6, global_batch_tokens=256, prefetch=0)
    full = train(tiny_config(**cfg), pattern_store(), StaticSelector(np.arange(0, 64, 2)), tmp_path / "f")
    ours = train(tiny_config(loss_impl="chunked", loss_chunk_tokens=48, **cfg), pattern_store(),
                 StaticSelector(np.arange(0, 64, 2)), tmp_path / "c")
    assert ours["losses"] == pytest.approx(full["losses"], rel=1e-5, abs=1e-6)
    assert ours["losses"][-1] < ours["losses"][0] - 0.1  # it trained


def test_chunked_checkpoints_are_hf_format_and_resume_under_full(tmp_path):
    """Same weight keys as the full path; a chunked run resumed with loss_impl=full continues it."""
    def sel():
        return SwitchingSelector(np.arange(0, 64, 2), np.arange(1, 64, 2), at=2)

    cfg = dict(steps=6, ckpt_every=3, prefetch=0)
    ref = train(tiny_config(**cfg), pattern_store(), sel(), tmp_path / "ref")
    train(tiny_config(loss_impl="chunked", **cfg), pattern_store(), sel(), tmp_path / "r", callbacks=[StopAt(4)])
    keys = set(load_file(tmp_path / "r" / "checkpoints" / "step_000003" / "model.safetensors"))
    assert keys == set(build_model("tiny", 64).state_dict())
    rest = train(tiny_config(**cfg), pattern_store(), sel(), tmp_path / "r", resume=True)
    assert rest["losses"] == pytest.approx(ref["losses"][3:], rel=1e-5, abs=1e-6)


def test_bad_loss_settings_are_user_errors():
    with pytest.raises(ThresherError, match="loss_impl"):
        TrainConfig(loss_impl="fused").validate()
    with pytest.raises(ThresherError, match="fsdp"):
        TrainConfig(loss_impl="chunked", fsdp=True).validate()
    with pytest.raises(ThresherError, match="loss_chunk_tokens"):
        TrainConfig(loss_impl="chunked", loss_chunk_tokens=0).validate()


@pytest.mark.parametrize("loss_impl", ["full", "chunked"])
def test_compiled_training_matches_eager_and_checkpoints_stay_hf(tmp_path, loss_impl):
    """train.compile = true (torch.compile of the whole trained module, inductor on CPU): the same
    losses as eager up to kernel rounding, and checkpoints / the export keep the plain HF weight keys."""
    from safetensors.torch import load_file

    cfg = dict(steps=5, global_batch_tokens=256, prefetch=0, loss_impl=loss_impl, ckpt_every=5, loss_chunk_tokens=48)
    eager = train(tiny_config(**cfg), pattern_store(), StaticSelector(np.arange(0, 64, 2)), tmp_path / "e")
    comp = train(tiny_config(compile=True, **cfg), pattern_store(), StaticSelector(np.arange(0, 64, 2)), tmp_path / "c")
    assert comp["losses"] == pytest.approx(eager["losses"], rel=1e-4, abs=1e-5)
    keys = lambda run: set(load_file(str(run / "checkpoints" / "step_000005" / "model.safetensors")))  # noqa: E731
    assert keys(tmp_path / "c") == keys(tmp_path / "e") and not any("_orig_mod" in k for k in keys(tmp_path / "c"))


def test_layer_compiled_training_matches_eager_and_the_selector_sees_eager_layers(tmp_path):
    """train.compile_scope = "layers": each decoder layer's forward compiled, swapped in for the
    micro-steps only. Same losses as eager; during the selector's on_step no layer holds the compiled one."""
    seen = []

    class Watching(StaticSelector):
        def on_step(self, step, model):
            seen.append(any("forward" in vars(layer) for layer in model.model.layers))
            return super().on_step(step, model)

    cfg = dict(steps=4, global_batch_tokens=256, prefetch=0, loss_impl="chunked", loss_chunk_tokens=48)
    eager = train(tiny_config(**cfg), pattern_store(), StaticSelector(np.arange(0, 64, 2)), tmp_path / "e")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    comp = train(tiny_config(compile=True, compile_scope="layers", **cfg), pattern_store(),
                 Watching(np.arange(0, 64, 2)), tmp_path / "c")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # something was compiled
    assert comp["losses"] == pytest.approx(eager["losses"], rel=1e-4, abs=1e-5)
    assert seen == [False] * 4
    with pytest.raises(ThresherError, match="compile_scope"):
        TrainConfig(compile_scope="blocks").validate()
