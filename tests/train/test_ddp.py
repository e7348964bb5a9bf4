"""2 gloo processes on CPU train exactly what 1 process trains at the same global batch (DDP, FSDP,
DDP with the chunked loss; DDP and FSDP with per-layer compile to kernel rounding), and an FSDP run killed
and resumed continues exactly (sharded model and optimizer state)."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from train_fakes import SwitchingSelector, pattern_store, tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(**kw):
    # 512 tokens per update = 4 micro-steps on 1 rank, 2 micro-steps on each of 2 ranks
    return tiny_config(steps=6, global_batch_tokens=512, ckpt_every=3, **kw)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: the DDP run, then the FSDP run, in one process group (spawning costs most of the time)."""
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), THRESHER_NO_PROGRESS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from thresher.train.loop import train

    from thresher.train.callbacks import StopAt

    def selector():
        return SwitchingSelector(np.arange(0, 64, 2), np.arange(1, 64, 2), at=2)

    for mode in ("ddp", "fsdp"):
        train(_cfg(fsdp=mode == "fsdp"), pattern_store(), selector(), os.path.join(out, mode),
              eval_tasks={"t": _eval_task()})
    # DDP around the chunked-loss wrapper (train/loss.py)
    chunked = _cfg(loss_impl="chunked", loss_chunk_tokens=48)
    train(chunked, pattern_store(), selector(), os.path.join(out, "ddp-chunked"))
    # per-layer torch.compile (compile_scope="layers") inside DDP and inside FSDP2's per-layer shards
    for mode in ("ddp", "fsdp"):
        train(_cfg(fsdp=mode == "fsdp", compile=True, compile_scope="layers"), pattern_store(), selector(),
              os.path.join(out, f"{mode}-layers"))
    # FSDP killed after step 4 (last checkpoint: step 3), then resumed by fresh objects
    train(_cfg(fsdp=True), pattern_store(), selector(), os.path.join(out, "fsdp-resumed"), callbacks=[StopAt(4)])
    train(_cfg(fsdp=True), pattern_store(), selector(), os.path.join(out, "fsdp-resumed"), resume=True)
    # the reference loss split across ranks (3 batches on 2 ranks: rank 1 runs its last one twice)
    from thresher.evaluate.refloss import reference_loss
    from thresher.train.dist import Dist, wrap_model
    from thresher.train.models import build_model

    got = {}
    for mode in ("plain", "fsdp"):
        torch.manual_seed(0)
        model = build_model("tiny", vocab_size=64)
        if mode == "fsdp":
            wrap_model(model, Dist(rank=rank, world=world), fsdp=True)
        got[mode] = reference_loss(model, _eval_task(), 3, 64, rank=rank, world=world)
    with open(os.path.join(out, f"refloss{rank}.json"), "w") as f:
        json.dump(got, f)
    dist.destroy_process_group()


def _eval_task():
    from thresher.corpus.reference import ReferenceTask

    g = np.random.default_rng(5)
    return ReferenceTask("t", [g.integers(2, 64, g.integers(1, 12)) for _ in range(7)],
                         [g.integers(2, 64, g.integers(1, 5)) for _ in range(7)])


def _losses(out) -> list[float]:
    return [json.loads(ln)["loss"] for ln in open(out / "metrics.jsonl")]


def test_two_gloo_ranks_equal_one_process(tmp_path):
    from thresher.train.loop import train

    from thresher.evaluate.refloss import reference_loss
    from thresher.train.models import build_model

    out = train(_cfg(), pattern_store(), SwitchingSelector(np.arange(0, 64, 2), np.arange(1, 64, 2), at=2),
                tmp_path / "one", eval_tasks={"t": _eval_task()})
    one = out["losses"]
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    single = reference_loss(build_model("tiny", vocab_size=64), _eval_task(), 3, 64)
    for r in (0, 1):  # every rank reports the whole value: bit-exact when plain, FSDP's all-gathers aside
        got = json.load(open(tmp_path / f"refloss{r}.json"))
        assert got["plain"] == single and got["fsdp"] == pytest.approx(single, rel=1e-6)
    for mode in ("ddp", "fsdp"):  # evaluated during training, each rank its share of the batches
        rows = [json.loads(ln) for ln in open(tmp_path / mode / "metrics.jsonl")]
        assert [r["ref_loss/t"] for r in rows if "ref_loss/t" in r] == pytest.approx(
            [r["ref_loss/t"] for r in map(json.loads, open(tmp_path / "one" / "metrics.jsonl")) if "ref_loss/t" in r],
            rel=1e-5), mode
    for mode in ("ddp", "fsdp", "ddp-chunked"):
        assert _losses(tmp_path / mode) == pytest.approx(one, rel=1e-5, abs=1e-5), mode
        assert (tmp_path / mode / "checkpoints" / "step_000006" / "trainer.pt").exists()
    assert _losses(tmp_path / "fsdp-resumed") == _losses(tmp_path / "fsdp")  # bit-exact after the resume
    for mode in ("ddp-layers", "fsdp-layers"):  # compiled kernels round differently: a looser bound
        assert _losses(tmp_path / mode) == pytest.approx(one, rel=1e-4, abs=1e-5), mode
    # an FSDP checkpoint (the wrapped module's full state) exports to the same Hugging Face model as DDP's
    from tokenizers import Tokenizer, models

    store = pattern_store()
    store.tokenizer = lambda: Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w1"))
    ref = reference_loss(_export(tmp_path, "ddp", store), _eval_task(), 3, 64)
    for mode in ("fsdp", "fsdp-layers", "ddp-chunked"):
        assert reference_loss(_export(tmp_path, mode, store), _eval_task(), 3, 64) == pytest.approx(ref, rel=1e-4), mode


def _export(root, mode, store):
    from transformers import AutoModelForCausalLM

    from thresher.train.checkpoint import export_checkpoint

    folder = export_checkpoint(root / mode / "checkpoints" / "step_000006", root / f"hf-{mode}", store)
    return AutoModelForCausalLM.from_pretrained(folder)


def test_fsdp_without_fully_shard_is_one_clear_error(monkeypatch):
    """On a torch without FSDP2's public fully_shard (< 2.6), train.fsdp names the fix instead of an ImportError."""
    import torch.distributed.fsdp as fsdp_mod

    from thresher.train.dist import Dist, wrap_model
    from thresher.train.models import build_model
    from thresher.utils.errors import ThresherError

    model = build_model("tiny", vocab_size=64)
    monkeypatch.delattr(fsdp_mod, "fully_shard")
    with pytest.raises(ThresherError, match=r"needs torch >= 2\.6.*train\.fsdp = false"):
        wrap_model(model, Dist(world=2), fsdp=True)


def test_fsdp_on_cpu_before_torch_2_7_is_one_clear_error(monkeypatch):
    """torch 2.6's FSDP2 fails inside torch on CPU ('Stream' has no 'record_event'): named up front instead."""
    import thresher.train.dist as dist_mod
    from thresher.train.models import build_model
    from thresher.utils.errors import ThresherError

    model = build_model("tiny", vocab_size=64)
    monkeypatch.setattr(dist_mod, "_torch_version", lambda: (2, 6))
    with pytest.raises(ThresherError, match=r"on CPU needs torch >= 2\.7"):
        dist_mod.wrap_model(model, dist_mod.Dist(world=2), fsdp=True)
