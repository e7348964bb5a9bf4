"""The cell index kept in a folder, memory-mapped: equal to the in-memory index, built once per node (local
rank 0; the others wait and map it), keyed by its inputs, and every policy selects exactly as without it."""

import multiprocessing as mp
import os
import threading
import time

import numpy as np
import pytest
from agents_helpers import FakeRewards, make_ctx

from thresher.agents import cells
from thresher.agents.cells import (build_cell_index, cached_cell_index, cell_index_key, load_cell_index,
                                   save_cell_index)
from thresher.agents.config import SelectorConfig
from thresher.agents.policies import build_selector
from thresher.utils.errors import ThresherError

COLUMNS = ["quality", "domain", "topic"]


def _assert_same(a, b):
    assert a.columns == b.columns
    for name in ("cell_id", "order", "offsets", "codes", "counts", "tokens"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_cached_index_equals_the_built_one_mapped_read_only_and_is_not_rebuilt(tmp_path, monkeypatch):
    ctx = make_ctx(3000, missing=0.1)
    built = build_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths)
    cached = cached_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths, tmp_path)
    _assert_same(built, cached)
    assert isinstance(cached.order, np.memmap) and isinstance(cached.cell_id, np.memmap)
    with pytest.raises(ValueError, match="read-only"):
        cached.order[0] = 1
    monkeypatch.setattr(cells, "build_cell_index", lambda *a: pytest.fail("rebuilt a cached index"))
    _assert_same(built, cached_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths, tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == [f"cells-{cell_index_key(ctx.labels, COLUMNS, ctx.doc_lengths)}"]


def test_the_key_follows_every_input():
    ctx = make_ctx(500)
    key = cell_index_key(ctx.labels, COLUMNS, ctx.doc_lengths)
    assert key == cell_index_key(make_ctx(500).labels, COLUMNS, make_ctx(500).doc_lengths)  # deterministic
    code = dict(ctx.labels.codes)
    code["topic"] = code["topic"].copy()
    code["topic"][123] = (code["topic"][123] + 1) % 13  # one document's label
    lengths = ctx.doc_lengths.copy()
    lengths[7] += 1  # one document's length
    others = [cell_index_key(type(ctx.labels)(code, ctx.labels.categories), COLUMNS, ctx.doc_lengths),
              cell_index_key(ctx.labels, COLUMNS, lengths),
              cell_index_key(ctx.labels, COLUMNS[:2], ctx.doc_lengths),
              cell_index_key(ctx.labels, ["domain", "quality", "topic"], ctx.doc_lengths)]
    assert len({key, *others}) == 5


def test_the_key_follows_the_lengths_values_not_their_dtype():
    """An older store's lengths.npy held int64; the same lengths read as int32 (today's store) key alike, so a
    checkpoint's labels_key still matches after the store's lengths were rewritten narrower."""
    ctx = make_ctx(500)
    as32, as64 = np.asarray(ctx.doc_lengths, dtype=np.int32), np.asarray(ctx.doc_lengths, dtype=np.int64)
    key = cell_index_key(ctx.labels, COLUMNS, as32)
    assert key == cell_index_key(ctx.labels, COLUMNS, as64) == cell_index_key(ctx.labels, COLUMNS, as64.astype(np.uint32))
    huge = as64.copy()
    huge[0] += 2**32  # a length int32 cannot hold keys by its int64 value, not a wrapped one
    assert cell_index_key(ctx.labels, COLUMNS, huge) not in (key, cell_index_key(ctx.labels, COLUMNS, huge.astype(np.int32)))


def test_other_ranks_wait_for_local_rank_0_and_map_its_index(tmp_path):
    ctx = make_ctx(2000)
    got = {}
    waiter = threading.Thread(target=lambda: got.update(r1=cached_cell_index(
        ctx.labels, COLUMNS, ctx.doc_lengths, tmp_path, local_rank=1, wait_s=60)))
    waiter.start()
    time.sleep(0.5)
    assert "r1" not in got and not list(tmp_path.glob("cells-*"))  # rank 1 builds nothing
    r0 = cached_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths, tmp_path, local_rank=0)
    waiter.join(30)
    _assert_same(r0, got["r1"])
    with pytest.raises(ThresherError, match="local rank 0"):
        cached_cell_index(ctx.labels, ["domain"], ctx.doc_lengths, tmp_path, local_rank=3, wait_s=0.3)


def _rank_worker(local_rank: int, cache: str, out: str) -> None:
    os.environ.update(LOCAL_RANK=str(local_rank), LOCAL_WORLD_SIZE="3")
    from agents_helpers import make_ctx as ctx_of

    from thresher.agents import cells as c

    if local_rank:  # the other ranks of the node must never build
        c.build_cell_index = lambda *a: (_ for _ in ()).throw(AssertionError("rank > 0 built the index"))
    ctx = ctx_of(2000)
    index = c.cached_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths, cache, wait_s=120)
    np.save(os.path.join(out, f"order{local_rank}.npy"), np.asarray(index.order))


def test_processes_of_one_node_build_once_from_the_torchrun_environment(tmp_path):
    spawn = mp.get_context("spawn")
    procs = [spawn.Process(target=_rank_worker, args=(r, str(tmp_path / "cache"), str(tmp_path))) for r in (1, 2, 0)]
    for p in procs:  # the waiting ranks start first
        p.start()
        time.sleep(0.2 if p is not procs[-1] else 0)
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    ctx = make_ctx(2000)
    expect = build_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths).order
    for r in range(3):
        np.testing.assert_array_equal(np.load(tmp_path / f"order{r}.npy"), expect)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one folder, no temporary left over


def test_a_lone_process_with_an_inherited_local_rank_builds_instead_of_waiting(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    ctx = make_ctx(300)
    cached_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths, tmp_path, wait_s=0.1)  # would time out waiting
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ThresherError, match="local rank 0"):
        cached_cell_index(ctx.labels, ["domain"], ctx.doc_lengths, tmp_path, wait_s=0.1)


def test_a_second_publisher_keeps_the_first_copy_and_bad_caches_are_one_line_errors(tmp_path):
    ctx = make_ctx(800)
    index = build_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths)
    folder = tmp_path / "cells-x"
    save_cell_index(index, folder)
    stamp = (folder / "order.npy").stat().st_mtime_ns
    save_cell_index(index, folder)  # another node's local rank 0 on a shared file system
    assert (folder / "order.npy").stat().st_mtime_ns == stamp and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(ThresherError, match="does not match its inputs"):
        load_cell_index(folder, n_docs=801)
    (folder / "order.npy").write_bytes(b"not an array")
    with pytest.raises(ThresherError, match="unreadable.*delete that folder"):
        load_cell_index(folder)
    # a killed build's temporary is removed once stale (a day untouched), a fresh one (a running build) kept
    stale, fresh = tmp_path / ".cells-y.tmp-1-2", tmp_path / ".cells-z.tmp-3-4"
    for t in (stale, fresh):
        t.mkdir()
        (t / "order.npy").write_bytes(b"partial")
    os.utime(stale, (time.time() - 2 * 24 * 3600,) * 2)
    save_cell_index(index, tmp_path / "cells-w")
    assert not stale.exists() and fresh.exists()
    (folder / "meta.json").unlink()  # a folder left incomplete by hand
    with pytest.raises(ThresherError, match="incomplete.*delete that folder"):
        save_cell_index(index, folder)


def _trajectory(policy: str, cache) -> list[np.ndarray]:
    ctx = make_ctx(4000)
    ctx.cell_cache = cache
    ctx.rewards = FakeRewards(ctx.labels)
    cfg = SelectorConfig(policy=policy, update_every=3, budget_tokens=30000, samples_per_category=8,
                         clusters_per_round=3, threshold_mode="quantile", reuse_penalty=0.3)
    sel = build_selector(cfg, ctx)
    picks = [sel.initial_selection().copy()]
    for step in range(1, 10):
        if sel.on_step(step, None):
            picks.append(sel.selection().copy())
    return picks


@pytest.mark.parametrize("policy", ["multi-agent", "quad", "multi-agent+quad", "static-mixture", "quality-top"])
def test_every_index_policy_selects_the_same_with_the_cache(tmp_path, policy):
    memory, cached = _trajectory(policy, None), _trajectory(policy, str(tmp_path))
    assert len(memory) == len(cached) and list(tmp_path.glob("cells-*"))
    for a, b in zip(memory, cached):
        np.testing.assert_array_equal(a, b)


def _age(folder, days):
    t = time.time() - days * 86400
    os.utime(folder / "meta.json", (t, t))


def test_prune_deletes_only_folders_unused_that_long_and_a_load_marks_a_folder_used(tmp_path):
    ctx, other = make_ctx(800), make_ctx(900)
    a = cached_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths, tmp_path)
    b = cached_cell_index(other.labels, COLUMNS[:2], other.doc_lengths, tmp_path)
    folders = {e.n_docs: e.path for e in cells.list_cell_caches(tmp_path)}
    assert sorted(folders) == [800, 900]
    _age(folders[800], 40)
    _age(folders[900], 40)
    cached_cell_index(other.labels, COLUMNS[:2], other.doc_lengths, tmp_path)  # a run loads it: used now
    listed = cells.list_cell_caches(tmp_path)
    assert [e.n_docs for e in listed] == [800, 900]  # least recently used first
    assert listed[0].columns == COLUMNS and listed[0].bytes > 800 * 8
    assert [e.path for e in cells.prune_cell_caches(tmp_path, 30, dry_run=True)] == [folders[800]]
    assert folders[800].is_dir()
    assert [e.path for e in cells.prune_cell_caches(tmp_path, 30)] == [folders[800]]
    assert not folders[800].exists() and folders[900].is_dir()
    assert [p.name for p in tmp_path.iterdir()] == [folders[900].name]  # no trash left behind
    np.testing.assert_array_equal(a.order[:5], a.order[:5])  # a live mapping survives its folder's deletion
    _assert_same(b, cached_cell_index(other.labels, COLUMNS[:2], other.doc_lengths, tmp_path))
    again = cached_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths, tmp_path)  # a later run rebuilds it
    _assert_same(build_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths), again)
    with pytest.raises(ThresherError, match="unused_days"):
        cells.prune_cell_caches(tmp_path, -1)


def test_a_folder_pruned_between_the_check_and_the_load_is_rebuilt(tmp_path, monkeypatch):
    ctx = make_ctx(600)
    cached_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths, tmp_path)
    real_load = cells.load_cell_index
    calls = []

    def pruned_then_load(folder, **kw):
        if not calls:
            cells.prune_cell_caches(tmp_path, 0)  # another user prunes everything right now
        calls.append(folder)
        return real_load(folder, **kw)

    monkeypatch.setattr(cells, "load_cell_index", pruned_then_load)
    _assert_same(build_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths),
                 cached_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths, tmp_path))
    assert len(calls) == 2


@pytest.mark.parametrize("policy", ["multi-agent", "quad"])
def test_a_running_selector_marks_its_folder_used_at_every_update(tmp_path, policy):
    ctx = make_ctx(2000)
    ctx.cell_cache, ctx.rewards = str(tmp_path), FakeRewards(ctx.labels)
    sel = build_selector(SelectorConfig(policy=policy, update_every=3, budget_tokens=20000, threshold_mode="quantile"), ctx)
    sel.initial_selection()
    (folder,) = tmp_path.glob("cells-*")
    _age(folder, 40)
    sel.on_step(2, None)  # not an update
    assert cells.list_cell_caches(tmp_path)[0].last_used < time.time() - 39 * 86400
    assert sel.on_step(3, None)
    assert cells.list_cell_caches(tmp_path)[0].last_used > time.time() - 60
    assert cells.prune_cell_caches(tmp_path, 30) == []


def test_a_folder_pruned_under_a_waiting_rank_is_rebuilt_by_that_rank(tmp_path, monkeypatch):
    """Local rank 0 loaded the folder before a prune; rank 1 found it, then lost it to the prune before its
    load. Rank 0 will not build it again, so rank 1 must rebuild it itself instead of waiting wait_s for it."""
    ctx = make_ctx(600)
    cached_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths, tmp_path)  # local rank 0, done
    real_load = cells.load_cell_index
    calls = []

    def pruned_then_load(folder, **kw):
        if not calls:
            cells.prune_cell_caches(tmp_path, 0)
        calls.append(folder)
        return real_load(folder, **kw)

    monkeypatch.setattr(cells, "load_cell_index", pruned_then_load)
    t = time.monotonic()
    got = cached_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths, tmp_path, local_rank=1, wait_s=3)
    assert time.monotonic() - t < 3
    _assert_same(build_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths), got)


def test_two_prunes_at_once_each_skip_what_the_other_took(tmp_path, monkeypatch):
    import shutil

    for n in (300, 400, 500):
        ctx = make_ctx(n)
        cached_cell_index(ctx.labels, COLUMNS, ctx.doc_lengths, tmp_path)
    listed = cells.list_cell_caches(tmp_path)
    real_rename = os.rename

    def racing_rename(src, dst):
        if src == listed[0].path:  # the other prune renamed this one a moment ago
            shutil.rmtree(src)
        return real_rename(src, dst)

    monkeypatch.setattr(cells.os, "rename", racing_rename)
    gone = cells.prune_cell_caches(tmp_path, 0)
    assert [e.path for e in gone] == [e.path for e in listed] and not list(tmp_path.glob("cells-*"))
