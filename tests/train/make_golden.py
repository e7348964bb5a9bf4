"""Regenerate tests/train/golden/tiny_losses.json: the first 20 losses of the tiny config on a fixed
fake corpus (CPU, float32). Run after an INTENDED change to the model, data order or optimizer:

    .venv/bin/python tests/train/make_golden.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_fakes import StaticSelector, pattern_store, tiny_config  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden" / "tiny_losses.json"


def golden_config():
    return tiny_config(steps=20, warmup_steps=5, prefetch=0)


def golden_losses() -> list[float]:
    from thresher.train.loop import train

    store = pattern_store(n_docs=64, vocab=64, seed=0)
    selector = StaticSelector(np.arange(0, 64, 2))
    with tempfile.TemporaryDirectory() as out:
        return train(golden_config(), store, selector, out)["losses"]


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)  # as in the tests (tests/train/conftest.py)
    losses = golden_losses()
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": golden_config().to_dict(), "torch": torch.__version__, "corpus": "pattern_store(64, 64, 0)"}
    GOLDEN.write_text(json.dumps({"meta": meta, "losses": losses}, indent=1) + "\n")
    print(f"wrote {GOLDEN}: {losses[0]:.4f} -> {losses[-1]:.4f}")
