"""The packed loader against a brute-force reference stream (concatenate, then cut)."""

import time

import numpy as np
import pytest
import torch

from train_fakes import FakeStore, StaticSelector, random_store
from thresher.train.data import Packer, PackedLoader
from thresher.utils.errors import ThresherError
from thresher.utils.seeding import rng

SEED = 7


def reference_stream(store, selection, version, epochs, seed=SEED, start=None) -> np.ndarray:
    """All tokens of ``epochs`` passes: permuted docs, each + EOS, concatenated (brute force)."""
    sel = np.asarray(selection)
    parts = [] if start is None else [start]
    for e in range(epochs):
        for d in sel[rng(seed, "loader", version, e).permutation(len(sel))]:
            parts += [store.doc(d), [store.eos_id]]
    return np.concatenate(parts).astype(np.int64)


def collect(loader, n) -> list[dict]:
    return [loader.next_batch() for _ in range(n)]


def rows_of(batches) -> np.ndarray:
    """(rows, T+1) token rows back from the (input_ids, targets) pairs."""
    return np.concatenate([torch.cat([b["input_ids"], b["targets"][:, -1:]], 1).numpy() for b in batches])


@pytest.mark.parametrize("prefetch", [0, 3])
def test_rows_equal_reference_stream(prefetch):
    store = random_store()
    sel = StaticSelector(np.arange(3, 30))
    sel.initial_selection()
    T, B = 16, 3
    loader = PackedLoader(store, sel, T, B, seed=SEED, prefetch=prefetch)
    batches = collect(loader, 40)
    loader.close()
    rows = rows_of(batches)
    stream = reference_stream(store, sel.selection(), version=1, epochs=4)
    assert np.array_equal(rows.reshape(-1), stream[: rows.size])
    assert all(torch.equal(b["input_ids"][:, 1:], b["targets"][:, :-1]) for b in batches)


def test_every_selected_doc_exactly_once_per_epoch():
    store = random_store(n_docs=60, seed=1)
    selection = np.arange(0, 60, 2)
    packer = Packer(store.lengths, row_len=17, seed=SEED)
    packer.set_selection(selection, version=1)
    epoch_tokens = int((store.lengths[selection] + 1).sum())
    pieces, seen = [], 0
    while seen < epoch_tokens:
        for p in packer.next_row():
            take = min(p[2] - p[1], epoch_tokens - seen)
            if take == 0:  # the next epoch has begun within this row
                break
            pieces.append((p[0], p[1], p[1] + take))
            seen += take
    by_doc: dict[int, list] = {}
    for d, s, e in pieces:
        by_doc.setdefault(d, []).append((s, e))
    assert sorted(by_doc) == selection.tolist()
    for d, spans in by_doc.items():  # consecutive, gap-free cover of [0, len + 1)
        flat = [x for span in spans for x in span]
        assert flat[0] == 0 and flat[-1] == store.lengths[d] + 1
        assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_selection_change_finishes_doc_then_draws_new_selection(prefetch):
    store = random_store(seed=2)
    first, second = np.arange(0, 20), np.arange(20, 40)
    sel = StaticSelector(first)
    sel.initial_selection()
    T, B = 16, 2
    loader = PackedLoader(store, sel, T, B, seed=SEED, prefetch=prefetch)
    before = collect(loader, 5)
    time.sleep(0.05)  # let the prefetcher run ahead on the old selection
    state = loader.state_dict()
    sel._set_selection(second)
    after = collect(loader, 30)
    loader.close()
    # reference: the old stream up to the cut, the rest of the doc in progress, then the new stream
    old = reference_stream(store, first, version=1, epochs=2)
    cut = rows_of(before).size
    d, off = state["doc"], state["offset"]
    rest = np.array([], np.int64) if d < 0 else np.append(store.doc(d)[off:], store.eos_id)[: store.lengths[d] + 1 - off]
    new = reference_stream(store, second, version=2, epochs=3, start=rest)
    assert np.array_equal(rows_of(before).reshape(-1), old[:cut])
    got = rows_of(after).reshape(-1)
    assert np.array_equal(got, new[: got.size])


@pytest.mark.parametrize("prefetch", [0, 2])
def test_state_round_trip_resumes_exactly(prefetch):
    store = random_store(seed=3)
    sel = StaticSelector(np.arange(40))
    sel.initial_selection()
    a = PackedLoader(store, sel, 16, 2, seed=SEED, prefetch=prefetch)
    collect(a, 7)
    state, sel_state = a.state_dict(), sel.state_dict()
    expected = collect(a, 6)
    sel._set_selection(np.arange(10, 25))  # a change after the checkpoint must also replay
    expected += collect(a, 12)
    a.close()

    sel2 = StaticSelector(np.arange(40))
    sel2.load_state_dict(sel_state)
    b = PackedLoader(store, sel2, 16, 2, seed=SEED, prefetch=prefetch)
    b.load_state_dict(state)
    got = collect(b, 6)
    sel2._set_selection(np.arange(10, 25))
    got += collect(b, 12)
    b.close()
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(expected, got))


def test_ranks_split_the_global_micro_batch():
    store = random_store(seed=4)
    sel = StaticSelector(np.arange(40))
    sel.initial_selection()
    one = collect(PackedLoader(store, sel, 16, 6, seed=SEED, prefetch=0), 5)
    parts = [collect(PackedLoader(store, sel, 16, 3, seed=SEED, rank=r, world_size=2, prefetch=0), 5)
             for r in range(2)]
    for k in range(5):
        assert torch.equal(one[k]["input_ids"], torch.cat([parts[0][k]["input_ids"], parts[1][k]["input_ids"]]))


def test_doc_positions_restart_after_eos():
    store = random_store(seed=5)
    sel = StaticSelector(np.arange(40))
    sel.initial_selection()
    b = PackedLoader(store, sel, 32, 4, seed=SEED, prefetch=0, doc_positions=True).next_batch()
    ids, pos = b["input_ids"], b["position_ids"]
    after_eos = torch.zeros_like(ids, dtype=torch.bool)
    after_eos[:, 1:] = ids[:, :-1] == store.eos_id
    expect = torch.zeros_like(pos)
    for t in range(1, ids.shape[1]):
        expect[:, t] = torch.where(after_eos[:, t], 0, expect[:, t - 1] + 1)
    assert torch.equal(pos, expect)


def test_int32_lengths_plan_the_same_rows_without_a_copy():
    store = random_store(n_docs=60, seed=2)
    narrow = store.lengths.astype(np.int32)  # the TokenStore's dtype
    rows = []
    for lengths in (store.lengths, narrow):
        packer = Packer(lengths, row_len=13, seed=SEED)
        packer.set_selection(np.arange(0, 60, 3), version=1)
        rows.append([packer.next_row() for _ in range(50)])
    assert rows[0] == rows[1]
    assert np.shares_memory(Packer(narrow, 13).lengths, narrow)
    with pytest.raises(ThresherError, match="document lengths must be integers, got float64"):
        Packer(narrow.astype(np.float64), 13)


def test_the_loader_shares_the_selectors_ids_and_copies_anything_writable():
    """4 bytes a selected document in the selector, 4 in the loader's epoch order: the loader maps the
    selector's read-only int32 ids instead of copying them to int64 (twice, with the permutation)."""
    store = random_store(n_docs=60, seed=3)
    sel = StaticSelector(np.arange(1, 60, 2))
    sel.initial_selection()
    assert sel.selection().dtype == np.int32 and not sel.selection().flags.writeable
    loader = PackedLoader(store, sel, 16, 2, seed=SEED, prefetch=0)
    loader.next_batch()
    assert np.shares_memory(loader.packer._selection, sel.selection())
    assert loader.packer._order.dtype == np.int32
    loader.close()
    mine = np.arange(0, 60, 3)  # a caller's writable array: copied, so changing it later changes nothing
    packer = Packer(store.lengths, 13, seed=SEED)
    packer.set_selection(mine, version=1)
    first = [packer.next_row() for _ in range(5)]
    mine[:] = 0
    again = Packer(store.lengths, 13, seed=SEED)
    again.set_selection(np.arange(0, 60, 3), version=1)
    assert [again.next_row() for _ in range(5)] == first and not np.shares_memory(packer._selection, mine)


def test_bad_inputs_raise_thresher_error():
    store = random_store()
    empty = StaticSelector(np.array([], np.int64))
    empty.initial_selection()
    with pytest.raises(ThresherError, match="no documents"):
        PackedLoader(store, empty, 16, 2, prefetch=0).next_batch()
    broken = FakeStore(store.docs, store.vocab_size)
    broken.lengths = broken.lengths + 1
    sel = StaticSelector(np.arange(5, 10))
    sel.initial_selection()
    with pytest.raises(ThresherError, match="inconsistent"):
        PackedLoader(broken, sel, 16, 2, prefetch=2).next_batch()


class _NeverGet:
    def get(self, *a, **k):
        raise AssertionError("next_batch waits on the queue of a prefetch worker that has died: it would hang")


def test_prefetch_error_is_raised_again_on_every_later_call():
    store = random_store()

    class Flaky(FakeStore):
        calls = 0

        def doc(self, i):
            Flaky.calls += 1
            if Flaky.calls == 30:
                raise OSError("transient read error")
            return super().doc(i)

    sel = StaticSelector(np.arange(40))
    sel.initial_selection()
    loader = PackedLoader(Flaky(store.docs, store.vocab_size), sel, 16, 2, prefetch=2)
    with pytest.raises(OSError, match="transient"):
        for _ in range(100):
            loader.next_batch()
    loader._q = _NeverGet()  # the worker is gone; nothing will ever arrive
    for _ in range(2):
        with pytest.raises(OSError, match="transient"):
            loader.next_batch()
    loader.close()
