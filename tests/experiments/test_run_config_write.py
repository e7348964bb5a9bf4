"""`run()` writes the run's config.toml only once the trainer has accepted the start (a refused resume
leaves the config of the run in the folder as it was)."""

import dataclasses
import tomllib

import numpy as np
import pytest

import thresher.experiments.run as run_module
from thresher.agents.base import Labels, RandomSelector, SelectionContext
from thresher.config import RunConfig
from thresher.train.config import TrainConfig
from thresher.utils.errors import SettingsMismatchError


class _Store:
    """What the trainer reads of a TokenStore."""

    def __init__(self):
        g = np.random.default_rng(0)
        self.docs = [g.integers(2, 64, 40) for _ in range(16)]
        self.lengths = np.array([len(d) for d in self.docs])
        self.n_docs, self.vocab_size, self.eos_id, self.pad_id = 16, 64, 1, 0

    def doc(self, i):
        return self.docs[i]


def _fake_build_run(cfg):
    store, sel = _Store(), RandomSelector()
    sel.setup(SelectionContext(store.lengths, Labels(), budget_docs=8, seed=cfg.seed))
    return store, sel, {}, {}


def test_refused_resume_keeps_the_runs_config(tmp_path, monkeypatch):
    monkeypatch.setenv("THRESHER_NO_PROGRESS", "1")
    monkeypatch.setattr(run_module, "build_run", _fake_build_run)
    monkeypatch.setattr(run_module, "hf_tokenizer", lambda store: None)
    train = TrainConfig(model="tiny", seq_len=32, micro_batch=4, global_batch_tokens=128, steps=2, ckpt_every=2,
                        lr=1e-3, device="cpu", export=False)
    cfg = RunConfig(out=str(tmp_path), train=train)
    run_module.run(cfg)
    assert tomllib.loads((tmp_path / "config.toml").read_text())["train"]["lr"] == 1e-3
    other = dataclasses.replace(cfg, train=dataclasses.replace(train, lr=5e-2, steps=4))
    with pytest.raises(SettingsMismatchError, match="lr"):
        run_module.run(other, resume=True)
    assert tomllib.loads((tmp_path / "config.toml").read_text())["train"]["lr"] == 1e-3
    run_module.run(dataclasses.replace(cfg, train=dataclasses.replace(train, steps=4)), resume=True)
    assert tomllib.loads((tmp_path / "config.toml").read_text())["train"]["steps"] == 4
