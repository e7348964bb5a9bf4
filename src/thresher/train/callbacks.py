"""What hangs off the training loop: evaluation, metrics, progress, checkpoints, early stop.

A callback sees the ``Run`` (model, optimizer, loader, selector, step...) and the step's metrics
dict; callbacks run in list order, so one may add fields (evaluation) that a later one writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from thresher.utils.errors import ThresherError
from thresher.utils.io import atomic_write_text
from thresher.utils.log import print0

if TYPE_CHECKING:
    from thresher.train.loop import Run


class Callback:
    def on_train_start(self, run: "Run") -> None: ...

    def on_step_end(self, run: "Run", metrics: dict) -> None: ...

    def on_train_end(self, run: "Run") -> None: ...


class Evaluate(Callback):
    """Every ``every`` steps and at the last step: the reference loss per task (keys ``ref_loss/<task>``) and the
    held-out pool loss per label value (``heldout_loss/<value>``, evaluate/heldout.py), both by ``reference_loss``.
    Evaluation draws no random numbers (eval mode, no grad), so it leaves every RNG stream of training as it was."""

    def __init__(self, tasks: dict, every: int, batch_size: int, max_len: int, pad_id: int,
                 heldout: dict | None = None):
        self.tasks, self.every, self.batch_size, self.max_len, self.pad_id = tasks, every, batch_size, max_len, pad_id
        self.heldout = heldout or {}

    def on_step_end(self, run, metrics):
        last = run.step == run.cfg.steps
        if not (self.tasks or self.heldout) or not (last or (self.every > 0 and run.step % self.every == 0)):
            return
        from thresher.evaluate.refloss import reference_loss

        for kind, tasks, into in (("ref_loss", self.tasks, run.ref_losses),
                                  ("heldout_loss", self.heldout, run.heldout_losses)):
            for name, task in tasks.items():
                loss = reference_loss(run.model, task, self.batch_size, self.max_len, run.dist.device, self.pad_id,
                                      run.autocast_dtype, run.dist.rank, run.dist.world)  # each rank its share
                metrics[f"{kind}/{name}"] = loss
                into[name] = loss


class MetricsJsonl(Callback):
    """``metrics.jsonl`` on rank 0: every ``every`` steps, the last step and every step with evaluation
    metrics (keys ``<kind>/<name>``, e.g. ``ref_loss/<task>``). On resume, lines after the checkpoint's
    step are dropped first, and so are unparsable ones (a line cut short by a kill), with a warning."""

    def __init__(self, path: str | os.PathLike, every: int = 1):
        self.path, self.every = Path(path), max(1, every)

    def on_train_start(self, run):
        if run.dist.rank != 0 or not self.path.exists():
            return
        kept, bad = [], 0
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for ln in filter(str.strip, f):
                try:
                    row = json.loads(ln)
                except json.JSONDecodeError:
                    bad += 1
                    continue
                if not isinstance(row, dict) or row.get("step", 0) <= run.step:
                    kept.append(ln if ln.endswith("\n") else ln + "\n")
        if bad:
            print0(f"warning: {self.path}: dropped {bad} unparsable line(s) (cut short by a kill?)")
        atomic_write_text(self.path, "".join(kept))

    def on_step_end(self, run, metrics):
        evaluated = any("/" in k for k in metrics)
        if run.dist.rank == 0 and (run.step % self.every == 0 or run.step == run.cfg.steps or evaluated):
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(metrics) + "\n")


TENSORBOARD_MISSING = ("train.tensorboard = true needs the tensorboard package: pip install 'thresher[tensorboard]' "
                       "(or pip install tensorboard), or set train.tensorboard = false")


def summary_writer(log_dir: str | os.PathLike):
    """torch's TensorBoard SummaryWriter; without the ``tensorboard`` package, a one-line ThresherError."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ThresherError(TENSORBOARD_MISSING) from None
    return SummaryWriter(str(log_dir))


class TensorBoard(Callback):
    """Every numeric metric of metrics.jsonl as a TensorBoard scalar at its step (rank 0; out_dir/tensorboard)."""

    def __init__(self, log_dir: str | os.PathLike):
        self.log_dir, self.writer = log_dir, None

    def on_train_start(self, run):
        if run.dist.rank == 0:
            self.writer = summary_writer(self.log_dir)

    def on_step_end(self, run, metrics):
        if self.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self.writer.add_scalar(k, v, run.step)

    def on_train_end(self, run):
        if self.writer is not None:
            self.writer.close()


class Progress(Callback):
    """A tqdm bar on rank 0 (utils.log.progress rules: off with THRESHER_NO_PROGRESS=1)."""

    def __init__(self):
        self.bar = None

    def on_train_start(self, run):
        if run.dist.rank == 0 and os.environ.get("THRESHER_NO_PROGRESS") != "1":
            from tqdm.auto import tqdm

            from thresher.utils.log import bar_options

            self.bar = tqdm(total=run.cfg.steps, initial=run.step, desc="train", unit="step", **bar_options())

    def on_step_end(self, run, metrics):
        if self.bar is not None:
            self.bar.update(1)
            c = run.counters
            share = c["selection_s"] / max(c["selection_s"] + c["train_s"], 1e-9)  # of this process's step time
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}", sel=f"{share:.0%}")
            if metrics["selection_changed"] and metrics["selection_s"] >= 1.0:  # where a slow update's time went
                self.bar.write(f"step {metrics['step'] - 1}: selection update {metrics['selection_s']:.1f} s "
                               f"(a training step {metrics['step_s'] - metrics['selection_s']:.2f} s); selection so "
                               f"far {share:.0%} of the run's time")

    def on_train_end(self, run):
        if self.bar is not None:
            self.bar.close()


class RepeatNote(Callback):
    """Says once (rank 0) when training starts a second pass over the current selection: a stage that trains more
    tokens than its D_k holds repeats documents (``selection_pass`` in metrics.jsonl counts the passes)."""

    def __init__(self):
        self.said = False

    def on_step_end(self, run, metrics):
        if self.said or metrics.get("selection_pass", 1) < 2 or run.dist.rank != 0:
            return
        self.said = True
        ids = run.selector.selection()
        tokens = int(run.loader.packer.lengths[ids].sum()) + len(ids)  # + an EOS each
        from tqdm.auto import tqdm

        tqdm.write(f"note: step {metrics['step']}: training went through all of the current selection ({len(ids):,} "
                   f"documents, {tokens:,} tokens with their EOS) and now repeats it (pass {metrics['selection_pass']}); "
                   "selection_pass in metrics.jsonl counts the passes. For one pass a stage, train fewer tokens "
                   "between selection updates than D_k holds (selector.budget_tokens, selector.update_every)")


class Checkpoint(Callback):
    """Every ``every`` steps (all ranks call: FSDP gathers shards; rank 0 writes)."""

    def __init__(self, every: int, keep_last: int, keep_every: int):
        self.every, self.keep_last, self.keep_every = every, keep_last, keep_every

    def on_step_end(self, run, metrics):
        if self.every > 0 and run.step % self.every == 0:
            run.save_checkpoint(self.keep_last, self.keep_every)


class StopAt(Callback):
    """Stop after ``step`` updates (a budget, or a simulated kill in tests)."""

    def __init__(self, step: int):
        self.stop_step = step

    def on_step_end(self, run, metrics):
        if run.step >= self.stop_step:
            run.should_stop = True
