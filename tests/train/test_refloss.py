"""Reference loss against a per-example float64 loop, and invariance to batch size."""

import numpy as np
import pytest
import torch

from thresher.corpus.reference import ReferenceTask
from thresher.evaluate.refloss import reference_loss
from thresher.train.models import build_model


def _task(seed=0, n=7, vocab=40):
    g = np.random.default_rng(seed)
    ctx = [g.integers(2, vocab, g.integers(1, 12)) for _ in range(n)]
    cont = [g.integers(2, vocab, g.integers(1, 5)) for _ in range(n)]
    return ReferenceTask("t", ctx, cont)


def _loop_reference(model, task) -> float:
    """sum over examples of -log p(continuation | context), one unpadded example at a time."""
    total, count = 0.0, 0
    for ctx, cont in task.examples():
        ids = torch.from_numpy(np.concatenate([ctx, cont]))[None]
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        for j, tok in enumerate(cont):
            total -= float(logp[len(ctx) + j - 1, tok])
            count += 1
    return total / count


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny", vocab_size=40, dtype=torch.float64).eval()


def test_matches_per_example_loop(model):
    task = _task()
    with torch.no_grad():
        expected = _loop_reference(model, task)
    assert reference_loss(model, task, batch_size=3, max_len=64) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("bs", [1, 2, 16])
def test_batch_size_invariant(model, bs):
    task = _task(seed=1, n=9)
    assert reference_loss(model, task, bs, 64) == pytest.approx(reference_loss(model, task, 4, 64), rel=1e-10)


def test_restores_training_mode(model):
    model.train()
    reference_loss(model, _task(), 4, 64)
    assert model.training
    model.eval()


def test_nothing_scorable_is_nan_not_a_perfect_loss(model):
    empty_cont = ReferenceTask("t", [np.array([3, 4])], [np.array([], dtype=np.int64)])
    assert np.isnan(reference_loss(model, empty_cont))
    assert np.isnan(reference_loss(model, ReferenceTask("t", [np.array([], dtype=np.int64)], [np.array([5])])))


def test_a_continuation_longer_than_max_len_keeps_one_context_token(model):
    """The scored tokens are the continuation's first max_len - 1, each predicted from what precedes it."""
    ctx, cont = np.array([7, 8, 9]), np.array([3, 4, 5, 6, 11])
    got = reference_loss(model, ReferenceTask("t", [ctx], [cont]), max_len=4)
    with torch.no_grad():
        expected = _loop_reference(model, ReferenceTask("t", [ctx[-1:]], [cont[:3]]))
    assert got == pytest.approx(expected, rel=1e-9)
