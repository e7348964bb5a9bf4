"""benchmarks/gpu_suite.sh gets one short GPU lease: every command it runs must parse, and a step cut by its
timeout must still have printed what it measured. CPU-only and fast (tiny models, a few steps)."""

import argparse
import importlib
import os
import shlex
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))


def suite_commands() -> list[list[str]]:
    """The argv (script path first) of every ``step MIN $PY benchmarks/X.py ...`` line of gpu_suite.sh."""
    text = (BENCH / "gpu_suite.sh").read_text().replace("\\\n", " ")
    cmds = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True) if line.startswith("step ") else []
        if words:
            assert words[2] == "$PY", line
            cmds.append(words[3:])
    return cmds


@pytest.fixture(autouse=True)
def _restore_process_state():
    """A benchmark's main() sets torch's thread count (--threads) and its import an Inductor env var: neither may
    outlive the test (later tests compare a child process's floats, on the default threads, with this process's)."""
    threads, key = torch.get_num_threads(), "TORCHINDUCTOR_FORCE_DISABLE_CACHES"
    env = os.environ.get(key)
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = env


class _Parsed(Exception):
    pass


def test_suite_has_the_issue_steps():
    scripts = [c[0] for c in suite_commands()]
    assert scripts[:3] == ["benchmarks/train.py", "benchmarks/influence.py", "benchmarks/influence.py"]


@pytest.mark.parametrize("argv", suite_commands(), ids=lambda a: " ".join(a[:3]))
def test_every_suite_command_parses(argv, monkeypatch):
    """Each step's flags are accepted (argparse exits 2 on an unknown flag or a bad choice)."""
    mod = importlib.import_module(Path(argv[0]).stem)
    orig = argparse.ArgumentParser.parse_args

    def parse(self, args=None, namespace=None):
        ns = orig(self, args, namespace)
        raise _Parsed(ns)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse)
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(_Parsed):
        mod.main()


def test_train_prints_thresher_numbers_before_the_plain_baseline(monkeypatch, capsys):
    """A cut during the plain baseline (e.g. its whole-model compile) keeps thresher's tokens/s."""
    train = importlib.import_module("train")

    def cut(*a, **k):
        raise KeyboardInterrupt  # what the timeout would do, here

    monkeypatch.setattr(train, "plain_tps", cut)
    monkeypatch.setenv("THRESHER_NO_PROGRESS", "1")
    monkeypatch.setattr(sys, "argv", ["train.py", "--models", "tiny", "--modes", "eager", "--seq-len", "32",
                                      "--micro-batch", "2", "--steps", "3", "--warmup", "1", "--vocab", "256"])
    with pytest.raises(KeyboardInterrupt):
        train.main()
    out = capsys.readouterr().out
    assert "# thresher tiny eager full:" in out and "tok/s" in out and "graphs=0" in out


def test_influence_prints_each_row_when_measured(monkeypatch, capsys):
    influence = importlib.import_module("influence")
    calls = []
    orig = influence.score_row

    def score_row(*a, **k):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(influence, "score_row", score_row)
    monkeypatch.setenv("THRESHER_NO_PROGRESS", "1")
    monkeypatch.setattr(sys, "argv", ["influence.py", "--seq-len", "32", "--docs", "4", "--batch-size", "4",
                                      "--preconditioners", "none", "--modes", "fused,features", "--proj-dims", "",
                                      "--reps", "1", "--threads", "1", "--peak-tflops", "0.1"])
    with pytest.raises(KeyboardInterrupt):
        influence.main()
    out = capsys.readouterr().out
    assert "train (eager)" in out and "score none fused" in out
