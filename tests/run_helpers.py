"""Helpers shared by the tests that drive ``thresher`` end to end: the CLI run in this process, and a tiny demo-world
run with one selector update (12 steps) for the tests that read a finished run back (trace, selection export)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from thresher import cli


def cli_run(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr stripped) of ``thresher ARGS`` run in this process."""
    monkeypatch.setattr(sys, "argv", ["thresher", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    got = capsys.readouterr()
    return e.value.code, got.out, got.err.strip()


def cli_err(monkeypatch, capsys, *args) -> tuple[int, str]:
    """(exit code, stderr stripped) of ``thresher ARGS`` run in this process."""
    code, _, err = cli_run(monkeypatch, capsys, *args)
    return code, err


def tiny_demo_run(out: Path, policy: str, n_docs: int, seed: int, reference_max_examples: int):
    """A demo-world run of ``policy`` in ``out``: 13 steps, the selector updating at step 12 with 8 samples per
    category and unpreconditioned (cheap) rewards; no checkpoints, evals or export. -> (run folder, its RunConfig)."""
    from thresher.experiments.demo import DemoConfig, _gather, run_config
    from thresher.experiments.run import run

    cfg = DemoConfig(n_docs=n_docs, seed=seed)
    world, store, labels = _gather(out, cfg)
    rc = run_config(cfg, policy, world, store, labels, out)
    rc.train = dataclasses.replace(rc.train, steps=13, ckpt_every=0, eval_every=0, warmup_steps=2, export=False)
    rc.data = dataclasses.replace(rc.data, reference_max_examples=reference_max_examples)
    rc.influence = dataclasses.replace(rc.influence, preconditioner="none")
    rc.selector = dataclasses.replace(rc.selector, update_every=12, samples_per_category=8)
    run(rc)
    return Path(rc.out), rc
