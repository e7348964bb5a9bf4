"""Small in-memory stand-ins for the token store and selectors (the trainer's duck-typed inputs)."""

from __future__ import annotations

import numpy as np

from thresher.agents.base import Selector
from thresher.train.config import TrainConfig


class FakeStore:
    """The TokenStore interface: .doc(i), .lengths, .n_docs, .eos_id, .pad_id, .vocab_size."""

    def __init__(self, docs: list[np.ndarray], vocab_size: int, eos_id: int = 1, pad_id: int = 0):
        self.docs = [np.asarray(d, dtype=np.int64) for d in docs]
        self.lengths = np.array([len(d) for d in self.docs], dtype=np.int64)
        self.n_docs, self.vocab_size, self.eos_id, self.pad_id = len(self.docs), vocab_size, eos_id, pad_id

    def doc(self, i: int) -> np.ndarray:
        return self.docs[i]


def random_store(n_docs=40, vocab=50, max_len=70, seed=0) -> FakeStore:
    """Random tokens 2..vocab-1 (0 = pad, 1 = EOS); lengths include 0 and docs longer than a row."""
    g = np.random.default_rng(seed)
    lens = g.integers(0, max_len, n_docs)
    lens[:2] = [0, 3 * max_len]
    return FakeStore([g.integers(2, vocab, n) for n in lens], vocab)


def pattern_store(n_docs=64, vocab=64, seed=0) -> FakeStore:
    """Learnable documents: arithmetic progressions mod (vocab - 2) with strides 1..3, shifted past 0/1."""
    g = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        start, stride, n = g.integers(0, vocab - 2), g.integers(1, 4), g.integers(20, 60)
        docs.append(2 + (start + stride * np.arange(n)) % (vocab - 2))
    return FakeStore(docs, vocab)


class StaticSelector(Selector):
    name = "static"

    def __init__(self, ids):
        super().__init__()
        self.ids = np.asarray(ids, dtype=np.int64)

    def setup(self, ctx) -> None:
        pass

    def initial_selection(self):
        self._set_selection(self.ids)
        return self._selection


class SwitchingSelector(StaticSelector):
    """Selects ``first``; at step ``at`` switches to ``second`` (a re-selection, as agents do)."""

    name = "switching"

    def __init__(self, first, second, at: int):
        super().__init__(first)
        self.second, self.at = np.asarray(second, dtype=np.int64), at
        self.selection_flops = 0.0

    def on_step(self, step, model) -> bool:
        self.selection_flops += 1e3
        if step == self.at:
            self._set_selection(self.second)
            self.log.append({"step": step, "selected": len(self.second)})
            return True
        return False

    def state_dict(self) -> dict:
        return {**super().state_dict(), "selection_flops": self.selection_flops}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.selection_flops = float(state["selection_flops"])


def tiny_config(**kw) -> TrainConfig:
    base = dict(model="tiny", seq_len=32, micro_batch=4, global_batch_tokens=128, steps=12, lr=3e-3,
                warmup_steps=3, seed=0, device="cpu", prefetch=2, export=False, eval_max_len=64)
    return TrainConfig(**{**base, **kw})
