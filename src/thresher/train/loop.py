"""The training loop: one linear function; evaluation, logging and checkpoints are callbacks.

    for step in range(start, steps):
        selector.on_step(step, model)          # may re-select; timed (selection seconds / FLOPs)
        for each micro-batch: forward, backward (grads synced across ranks on the last one)
        clip, AdamW step at lr(step)            (float16: through a GradScaler)
        callbacks: evaluate -> metrics.jsonl -> tensorboard -> progress -> repeat note -> checkpoint -> yours
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from thresher.train import callbacks as cb
from thresher.train.checkpoint import (
    export_hf, full_state, list_checkpoints, load_checkpoint, read_trainer_state, remove_stale_temp, rng_state,
    save_checkpoint, set_rng_state, step_dirs, unwrap,
)
from thresher.train.config import TrainConfig
from thresher.train.data import PackedLoader
from thresher.train.dist import Dist, all_reduce_mean, barrier, init_distributed, teardown, wrap_model
from thresher.train.loss import CausalLMWithLoss
from thresher.train.models import build_model, count_flops_per_token
from thresher.utils.errors import SettingsMismatchError, ThresherError
from thresher.utils.io import atomic_write_json, remove_stale_temps
from thresher.utils.log import print0
from thresher.utils.seeding import derive_seed

# settings a resumed run must share with the checkpoint (others: steps, logging, runtime may change)
_RESUME_MUST_MATCH = ("model", "model_overrides", "seq_len", "global_batch_tokens", "seed", "lr", "schedule",
                      "warmup_steps", "beta1", "beta2", "eps", "weight_decay", "doc_positions", "min_lr_ratio",
                      "decay_fraction")
# settings that may change on resume but reshape the learning-rate schedule (a warning names them)
_RESUME_RESHAPES_SCHEDULE = ("steps",)
_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12, "A10G": 70e12,
              "L4": 121e12, "4090": 165e12}


@dataclass
class Run:
    """Everything the loop and its callbacks share."""

    cfg: TrainConfig
    dist: Dist
    out_dir: Path
    model: torch.nn.Module  # the raw HF model (what the selector and evaluation see)
    engine: torch.nn.Module  # what trains: the model (in CausalLMWithLoss if chunked), DDP/FSDP-wrapped, compiled
    optimizer: torch.optim.Optimizer
    loader: PackedLoader
    selector: Any
    accum: int
    flops_per_token: float
    autocast_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None = None  # float16 autocast: loss scaling against gradient underflow
    step: int = 0
    should_stop: bool = False
    counters: dict = field(default_factory=lambda: {"tokens": 0, "selection_s": 0.0, "selection_flops": 0.0,
                                                    "train_flops": 0.0, "train_s": 0.0})
    ref_losses: dict = field(default_factory=dict)
    heldout_losses: dict = field(default_factory=dict)  # held-out pool loss per label value (evaluate/heldout.py)
    losses: list = field(default_factory=list)
    compiled_layers: list = field(default_factory=list)  # compile_scope="layers": (layer, compiled forward)

    @contextlib.contextmanager
    def layers_compiled(self):
        """compile_scope="layers": the decoder layers run their compiled forwards inside this block only
        (the training micro-steps); everything else (selector, evaluation, export) sees the eager model."""
        for layer, fn in self.compiled_layers:
            layer.forward = fn
        try:
            yield
        finally:
            for layer, _ in self.compiled_layers:
                del layer.forward

    def trainer_state(self) -> dict:
        return {"step": self.step, "config": self.cfg.to_dict(), "rng": rng_state(), "counters": dict(self.counters),
                "loader": self.loader.state_dict(), "selector": self.selector.state_dict(),
                "schedule": {"name": self.cfg.schedule, "step": self.step}, "world_size": self.dist.world,
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "ref_losses": dict(self.ref_losses), "heldout_losses": dict(self.heldout_losses)}

    def save_checkpoint(self, keep_last: int = 2, keep_every: int = 0) -> Path | None:
        path = save_checkpoint(self.out_dir / "checkpoints", self.step, self.engine, self.optimizer,
                               self.trainer_state(), self.dist.rank == 0, keep_last, keep_every)
        barrier(self.dist)
        return path


# --- schedule ---------------------------------------------------------------------------------------------
def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for update ``step`` (0-based): linear warmup, then cosine / WSD / constant."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    lo = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return lo + (cfg.lr - lo) * 0.5 * (1.0 + math.cos(math.pi * frac))
    if cfg.schedule == "wsd":
        decay_start = cfg.steps - int(round(cfg.decay_fraction * cfg.steps))
        if step < decay_start:
            return cfg.lr
        return cfg.lr + (lo - cfg.lr) * (step - decay_start + 1) / max(1, cfg.steps - decay_start)
    return cfg.lr


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; matrices decay, norms (1-D) do not; fused kernel on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             fused=device.type == "cuda")


# --- setup ------------------------------------------------------------------------------------------------
def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _accum_steps(cfg: TrainConfig, world: int) -> int:
    per_micro = cfg.micro_batch * cfg.seq_len * world
    if cfg.global_batch_tokens % per_micro:
        rows = cfg.global_batch_tokens // cfg.seq_len  # sequences per optimizer step, all ranks together
        fits = [m for m in range(cfg.micro_batch, 0, -1) if cfg.global_batch_tokens % (m * cfg.seq_len * world) == 0]
        hint = (f"; with {world} rank(s) set train.micro_batch={fits[0]} (same global batch)" if fits
                else f" for any micro_batch: {rows} sequences per step cannot be split over {world} ranks")
        raise ThresherError(f"train.global_batch_tokens={cfg.global_batch_tokens} is not a multiple of "
                            f"micro_batch*seq_len*world_size={per_micro}{hint}")
    return cfg.global_batch_tokens // per_micro


def _announce(run: Run) -> None:
    """What a step costs (the accumulation is what makes a large-batch config slow on CPU), and a schedule
    a short run never leaves the warmup of."""
    cfg = run.cfg
    print0(f"train: {cfg.global_batch_tokens} tokens a step = {run.accum} micro-batch(es) of {cfg.micro_batch} x "
           f"{cfg.seq_len} per rank x {run.dist.world} rank(s)")
    if cfg.warmup_steps >= cfg.steps:
        after = f", no {cfg.schedule} decay" if cfg.schedule != "constant" else ""
        print0(f"warning: train.warmup_steps = {cfg.warmup_steps} >= train.steps = {cfg.steps}: the learning rate "
               f"never leaves its warmup (it never reaches train.lr{after}); lower train.warmup_steps for a short run")


def _peak_flops(cfg: TrainConfig, device: torch.device) -> float | None:
    if cfg.peak_flops:
        return cfg.peak_flops
    if device.type != "cuda" or cfg.dtype == "float32":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in _PEAK_BF16.items() if k in name), None)


def _setup(cfg: TrainConfig, store, selector, out_dir: Path, d: Dist) -> Run:
    mcfg = cfg.model_config()
    _seed_all(derive_seed(cfg.seed, "model-init"))
    model = build_model(mcfg, store.vocab_size, pad_id=store.pad_id, eos_id=store.eos_id).to(d.device)
    _seed_all(derive_seed(cfg.seed, "train"))
    trainee = CausalLMWithLoss(model, cfg.loss_chunk_tokens) if cfg.loss_impl == "chunked" else model
    engine = wrap_model(trainee, d, cfg.fsdp)
    optimizer = build_optimizer(engine, cfg, d.device)
    compiled_layers = []
    if cfg.compile and cfg.compile_scope == "model":
        engine = torch.compile(engine)
    elif cfg.compile:  # one compiled forward per layer; identical layers share the compiled code
        compiled_layers = [(layer, torch.compile(layer.forward)) for layer in model.model.layers]
    loader = PackedLoader(store, selector, cfg.seq_len, cfg.micro_batch, seed=derive_seed(cfg.seed, "data"),
                          rank=d.rank, world_size=d.world, prefetch=cfg.prefetch,
                          pin_memory=d.device.type == "cuda", doc_positions=cfg.doc_positions)
    amp = _autocast_dtype(cfg, d.device)
    return Run(cfg, d, out_dir, model, engine, optimizer, loader, selector, _accum_steps(cfg, d.world),
               count_flops_per_token(mcfg, store.vocab_size, cfg.seq_len), amp,
               scaler=_grad_scaler(d.device) if amp == torch.float16 else None, compiled_layers=compiled_layers)


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: cfg.dtype on CUDA; None (plain float32) on CPU or for "float32"."""
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.dtype) if device.type == "cuda" else None


def _grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type)


def _check_fresh_start(out_dir: Path) -> None:
    """A fresh run must not share a checkpoint folder with another run (retention and --resume would mix them)."""
    found = step_dirs(out_dir / "checkpoints")
    if found:
        raise ThresherError(f"{out_dir / 'checkpoints'} already holds checkpoints ({found[-1][1].name}, ...) of an "
                            "earlier run: pass --resume (resume=True) to continue it, or use another out_dir")


def _resume(run: Run) -> bool:
    """Load the newest readable checkpoint; an unreadable one is skipped with a warning (older one used)."""
    root = run.out_dir / "checkpoints"
    ckpts = [p for _, p in reversed(list_checkpoints(root))]
    if not ckpts:
        print0(f"resume: no checkpoint under {root}; starting from step 0")
        return False
    for i, path in enumerate(ckpts):
        try:
            state = read_trainer_state(path)
            _check_resume_settings(run.cfg, state, path)
            if hasattr(run.selector, "check_state"):  # its settings and labels too, before the weights load
                run.selector.check_state(state["selector"])
            load_checkpoint(path, run.engine, run.optimizer, trainer=state)  # weights only after the checks
            break
        except SettingsMismatchError:
            raise
        except ThresherError as e:
            if i == 0 and len(ckpts) == 1:
                raise
            if i + 1 == len(ckpts):
                raise ThresherError(f"{e}; no older checkpoint under {root} is readable") from e
            print0(f"warning: {e}; resuming from the previous checkpoint {ckpts[i + 1].name} instead")
    _warn_schedule_change(run.cfg, state)
    run.step, run.counters = int(state["step"]), dict(state["counters"])
    run.ref_losses = dict(state.get("ref_losses", {}))  # the last evaluation's, so a finished run still reports them
    run.heldout_losses = dict(state.get("heldout_losses", {}))
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.selector.load_state_dict(state["selector"])
    run.loader.load_state_dict(state["loader"])
    set_rng_state(state["rng"])
    print0(f"resumed from {path} at step {run.step}")
    return True


def _check_resume_settings(cfg: TrainConfig, state: dict, path: Path) -> None:
    saved = state["config"]
    defaults = TrainConfig()  # a key a checkpoint of an older thresher lacks had its default value
    diff = [k for k in _RESUME_MUST_MATCH if saved.get(k, getattr(defaults, k)) != getattr(cfg, k)]
    if diff:
        raise SettingsMismatchError(f"cannot resume {path}: settings differ from the checkpoint's: {', '.join(diff)}")


def _warn_schedule_change(cfg: TrainConfig, state: dict) -> None:
    """One warning line per changed setting that reshapes the (non-constant) lr schedule, e.g. steps."""
    saved = state["config"]
    if cfg.schedule == "constant":
        return
    for k in _RESUME_RESHAPES_SCHEDULE:
        if k in saved and saved[k] != getattr(cfg, k):
            old, step = dataclasses.replace(cfg, **{k: saved[k]}), int(state["step"])
            print0(f"warning: resume: train.{k} changed from {saved[k]} to {getattr(cfg, k)}; the {cfg.schedule} "
                   f"learning-rate schedule follows the new value (lr at step {step}: "
                   f"{lr_at(old, step):.3g} before, {lr_at(cfg, step):.3g} now)")


# --- one update ----------------------------------------------------------------------------------------------
def _micro_step(run: Run, batch: dict, sync: bool) -> torch.Tensor:
    dev = run.dist.device
    ids = batch["input_ids"].to(dev, non_blocking=True)  # (B, T)
    targets = batch["targets"].to(dev, non_blocking=True)  # (B, T)
    kw = {"position_ids": batch["position_ids"].to(dev, non_blocking=True)} if "position_ids" in batch else {}
    no_sync = contextlib.nullcontext()
    if not sync and run.dist.is_dist and hasattr(run.engine, "no_sync"):
        no_sync = run.engine.no_sync()  # DDP: all-reduce grads once, on the last micro-batch
    if run.cfg.fsdp and hasattr(run.model, "set_requires_gradient_sync"):
        run.model.set_requires_gradient_sync(sync)
    amp = torch.autocast(dev.type, dtype=run.autocast_dtype) if run.autocast_dtype else contextlib.nullcontext()
    with no_sync:
        if run.cfg.loss_impl == "chunked":
            with amp:
                loss = run.engine(input_ids=ids, targets=targets, **kw)  # (): head + loss in chunks
        else:
            with amp:
                logits = run.engine(input_ids=ids, use_cache=False, **kw).logits  # (B, T, V); no KV cache
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        scaled = loss / run.accum
        (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
    return loss.detach()


def _train_step(run: Run) -> dict:
    cfg, step = run.cfg, run.step
    t0 = time.perf_counter()
    flops_before = float(getattr(run.selector, "selection_flops", 0.0) or 0.0)
    version_before = run.selector.version
    run.selector.on_step(step, run.model)
    run.model.train()
    sel_s = time.perf_counter() - t0
    sel_flops = float(getattr(run.selector, "selection_flops", 0.0) or 0.0) - flops_before

    lr = lr_at(cfg, step)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    t1 = time.perf_counter()
    with run.layers_compiled():
        loss = sum(_micro_step(run, run.loader.next_batch(), i == run.accum - 1) for i in range(run.accum)) / run.accum
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)  # clip the true gradients
    gnorm = torch.nn.utils.clip_grad_norm_(run.engine.parameters(), cfg.clip if cfg.clip > 0 else float("inf"))
    if run.scaler is not None:
        run.scaler.step(run.optimizer)  # skipped when the gradients overflowed; the scale then backs off
        run.scaler.update()
    else:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    loss = float(all_reduce_mean(loss, run.dist))  # also waits for the device, so the timing is honest
    train_s = time.perf_counter() - t1
    return _step_metrics(run, step + 1, loss, lr, float(gnorm), train_s, sel_s, sel_flops,
                         run.selector.version != version_before)


def _step_metrics(run: Run, step, loss, lr, gnorm, train_s, sel_s, sel_flops, changed) -> dict:
    c, tokens = run.counters, run.cfg.global_batch_tokens
    train_flops = run.flops_per_token * tokens
    c["tokens"] += tokens
    c["train_s"] += train_s
    c["selection_s"] += sel_s
    c["selection_flops"] += sel_flops
    c["train_flops"] += train_flops
    tps = tokens / max(train_s, 1e-9)
    peak = _peak_flops(run.cfg, run.dist.device)
    return {"step": step, "loss": loss, "lr": lr, "grad_norm": gnorm, "tokens": c["tokens"], "tokens_per_s": tps,
            "mfu": run.flops_per_token * tps / (peak * run.dist.world) if peak else None,
            "step_s": train_s + sel_s, "train_s_total": c["train_s"],
            "selection_s": sel_s, "selection_s_total": c["selection_s"],
            "selection_flops": sel_flops, "selection_flops_total": c["selection_flops"],
            "train_flops": train_flops, "train_flops_total": c["train_flops"],
            "selection_version": int(run.selector.version), "selection_changed": bool(changed),
            "selection_pass": int(run.loader.state_dict()["epoch"]) + 1}  # 2+: the stage's D_k repeats


# --- the entry point ---------------------------------------------------------------------------------------------
def default_callbacks(cfg: TrainConfig, out_dir: Path, eval_tasks, pad_id: int,
                      heldout_tasks=None) -> list[cb.Callback]:
    cbs: list[cb.Callback] = [cb.Evaluate(eval_tasks or {}, cfg.eval_every, cfg.eval_batch_size, cfg.eval_max_len,
                                          pad_id, heldout_tasks or {}),
                              cb.MetricsJsonl(out_dir / "metrics.jsonl", cfg.log_every)]
    if cfg.tensorboard:
        cbs.append(cb.TensorBoard(out_dir / "tensorboard"))
    return cbs + [cb.Progress(), cb.RepeatNote(), cb.Checkpoint(cfg.ckpt_every, cfg.keep_last, cfg.keep_every)]


def train(cfg: TrainConfig, store, selector, out_dir, eval_tasks: dict | None = None, resume: bool = False,
          callbacks: Sequence[cb.Callback] = (), tokenizer=None, heldout_tasks: dict | None = None) -> dict:
    """Train ``cfg.model`` on the documents ``selector`` picks from ``store``; return a summary dict.

    ``eval_tasks`` (reference loss, ``ref_loss/<name>``) and ``heldout_tasks`` (held-out pool loss per label
    value, ``heldout_loss/<name>``) are ReferenceTasks evaluated every ``cfg.eval_every`` steps and at the end.

    The caller has run ``selector.setup(ctx)``; ``initial_selection()`` is called here unless the
    selector already has a selection (``version > 0``) or one is restored from a checkpoint.
    Under torchrun every rank calls this; the selector must behave identically on every rank.
    """
    cfg.validate()
    out_dir = Path(out_dir)
    if not resume:
        _check_fresh_start(out_dir)
    d = init_distributed(cfg.device)
    run = None
    try:
        if d.rank == 0:
            remove_stale_temp(out_dir / "checkpoints")
            remove_stale_temps(out_dir)  # metrics.jsonl, selector_log.jsonl, ... of a killed run
        run = _setup(cfg, store, selector, out_dir, d)
        _announce(run)
        if not (resume and _resume(run)) and selector.version == 0:
            selector.initial_selection()
        if d.rank == 0:
            atomic_write_json(out_dir / "train_config.json", cfg.to_dict())
        cbs = default_callbacks(cfg, out_dir, eval_tasks, store.pad_id, heldout_tasks) + list(callbacks)
        for c in cbs:
            c.on_train_start(run)
        while run.step < cfg.steps and not run.should_stop:
            metrics = _train_step(run)
            run.step += 1
            run.losses.append(metrics["loss"])
            for c in cbs:
                c.on_step_end(run, metrics)
        for c in cbs:
            c.on_train_end(run)
        return _finish(run, tokenizer)
    finally:
        if run is not None:
            run.loader.close()
        teardown(d)


def _finish(run: Run, tokenizer) -> dict:
    finished = run.step >= run.cfg.steps
    model_dir = None
    if finished and run.cfg.export:
        model_sd, _ = full_state(run.engine, run.optimizer) if run.cfg.fsdp else (None, None)
        if run.dist.rank == 0:
            model_dir = str(export_hf(run.model, run.out_dir / "final", tokenizer, model_sd))
        barrier(run.dist)
    c = run.counters
    return {"step": run.step, "finished": finished, "losses": list(run.losses), "ref_losses": dict(run.ref_losses),
            "heldout_losses": dict(run.heldout_losses), "tokens": c["tokens"], "train_seconds": c["train_s"],
            "selection_seconds": c["selection_s"], "selection_flops": c["selection_flops"],
            "train_flops": c["train_flops"], "model_dir": model_dir, "out_dir": str(run.out_dir)}
