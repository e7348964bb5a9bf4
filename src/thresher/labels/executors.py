"""Run labelers over a document source: sharded, resumable, local processes or a Ray cluster.

Work happens in ``<out_dir>/_work/<settings fingerprint>/``: one shard = a contiguous doc-id range,
written as ``<shard>.parquet`` (+ ``<shard>.<col>.npy`` for embeddings), then a ``<shard>.done.json``
marker holding the shard's stats. A rerun skips shards whose marker exists, so a killed job resumes
where it stopped; a half-written shard (no marker) is simply redone. When every shard is done the
shards are merged in doc-id order, k-means (if asked) trains on the merged embeddings and assigns
every doc, and the label table is written atomically (table.py). Both executors call the same
``label_shard``, so their tables are identical.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher.labels.base import DocumentSource, Labeler, fingerprint
from thresher.labels.bins import QuantileBins
from thresher.labels.cluster import KMeansClusterer
from thresher.labels.table import LabelTable
from thresher.utils.errors import SettingsMismatchError, ThresherError
from thresher.utils.io import atomic_path, atomic_write_json, exit_with_parent, make_dir, read_json, remove_stale_temps
from thresher.utils.log import print0, progress
from thresher.utils.pool import completed, spawn_pool


def column_specs(labelers: Sequence[Labeler]) -> dict[str, dict]:
    """column -> {kind, provenance[, categories]}; refuses two labelers writing one column."""
    specs: dict[str, dict] = {}
    for lab in labelers:
        prov = lab.provenance()
        for col, kind in lab.columns.items():
            if col in specs:
                raise ThresherError(f"two labelers write column {col!r}; keep one of them")
            specs[col] = {"kind": kind, "provenance": prov}
            if kind == "category":
                specs[col]["categories"] = list(lab.categories[col])
    return specs


def shard_ranges(n_docs: int, shard_size: int) -> list[tuple[int, int, int]]:
    if shard_size < 1:
        raise ThresherError(f"shard_size must be >= 1, got {shard_size}")
    return [(i, lo, min(lo + shard_size, n_docs)) for i, lo in enumerate(range(0, n_docs, shard_size))]


# ------------------------------------------------------------------------------ one shard


def label_batch(source: DocumentSource, labelers: Sequence[Labeler], ids: np.ndarray,
                seconds: Counter) -> dict[str, Any]:
    """All labelers' columns for docs ``ids``; adds per-labeler seconds to ``seconds``."""
    t0 = time.perf_counter()
    needs = sorted({c for lab in labelers for c in lab.needs})
    batch = {"doc_id": ids, "text": source.texts(ids), **(source.metadata(ids, needs) if needs else {})}
    seconds["read"] += time.perf_counter() - t0
    out: dict[str, Any] = {}
    for lab in labelers:
        t0 = time.perf_counter()
        res = lab.label(batch)
        seconds[lab.name] += time.perf_counter() - t0
        if set(res) != set(lab.columns) or any(len(v) != len(ids) for v in res.values()):
            raise ThresherError(f"labeler {lab.name!r} returned {sorted(res)} (lengths "
                                f"{[len(v) for v in res.values()]}), expected {sorted(lab.columns)} x {len(ids)}")
        out.update(res)
    return out


def label_shard(source: DocumentSource, labelers: Sequence[Labeler], work: Path, shard: int, lo: int, hi: int,
                batch_size: int) -> dict:
    """Label docs [lo, hi), write the shard files then its completion marker; return its stats."""
    for lab in labelers:
        lab.setup()
    seconds: Counter = Counter()
    parts = [label_batch(source, labelers, np.arange(s, min(s + batch_size, hi), dtype=np.int64), seconds)
             for s in range(lo, hi, batch_size)]
    kinds = {c: k for lab in labelers for c, k in lab.columns.items()}
    cols = {"doc_id": pa.array(np.arange(lo, hi, dtype=np.int64))}
    stats = {"shard": shard, "lo": lo, "hi": hi, "n_docs": hi - lo, "seconds": dict(seconds), "reasons": {}}
    for col, kind in kinds.items():
        vals = [p[col] for p in parts]
        if kind == "embedding":
            with atomic_path(work / f"{shard:06d}.{col}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, np.concatenate(vals).astype(np.float16))
        elif kind == "reason":
            flat = [r for v in vals for r in v]
            cols[col] = pa.array(flat, pa.string())
            stats["reasons"][col] = dict(Counter(r for r in flat if r is not None))
        else:
            cols[col] = pa.array(np.concatenate(vals).astype(np.int16 if kind == "category" else np.float32))
    with atomic_path(work / f"{shard:06d}.parquet") as tmp:
        pq.write_table(pa.table(cols), tmp)
    atomic_write_json(work / f"{shard:06d}.done.json", stats)  # the marker comes last
    return stats


def _done(work: Path, shard: int) -> bool:
    return (work / f"{shard:06d}.done.json").exists()


# ------------------------------------------------------------------------------ executors

_WORKER: dict[str, Any] = {}


def _init_worker(source, labelers, work, batch_size):
    _WORKER.update(source=source, labelers=labelers, work=Path(work), batch_size=batch_size)


def _worker_shard(task: tuple[int, int, int]) -> dict:
    w = _WORKER
    return label_shard(w["source"], w["labelers"], w["work"], *task, batch_size=w["batch_size"])


def run_local(source, labelers, work: Path, todo: list, batch_size: int, workers: int) -> None:
    """workers=1: in this process; else spawned processes, each loading the models once."""
    if workers <= 1:
        _init_worker(source, labelers, work, batch_size)
        for task in progress(todo, desc="label shards", unit="shard"):
            _worker_shard(task)
        return
    # Ctrl-C stops the shards in progress (no marker yet: a rerun redoes them) instead of labelling every one left
    with spawn_pool(workers, _init_worker, (source, labelers, str(work), batch_size),
                    died="a label worker process died (out of memory?); rerun to resume") as pool:
        futures = [pool.submit(_worker_shard, task) for task in todo]
        for f in progress(completed(futures), desc="label shards", total=len(todo), unit="shard"):
            f.result()


class _RayShardActor:
    """A Ray Data actor: loads the labelers once, labels whole shards (one row = one shard)."""

    def __init__(self, source, labelers, work: str, batch_size: int):
        import ray

        exit_with_parent()  # a kill -9 of the Ray worker's parent ends the actor too
        _init_worker(source, labelers, work, batch_size)
        self.actor_id = ray.get_runtime_context().get_actor_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for i, lo, hi in zip(batch["shard"], batch["lo"], batch["hi"]):
            _worker_shard((int(i), int(lo), int(hi)))
        return {"shard": batch["shard"], "actor": np.array([self.actor_id] * len(batch["shard"]), dtype=object)}


# how long a Ray label job waits for its whole actor pool to start before it labels a shard (then it fails)
RAY_ACTOR_START_S = 600


def _ray_pool_size(workers: int, num_gpus: float) -> int:
    """``workers``, or the actors the cluster's CPUs (GPUs) hold when that is fewer (then says so)."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    fits = int(cpus // 1) if not num_gpus else min(int(cpus // 1), int(gpus // num_gpus))
    if fits >= workers:
        return workers
    has = f"{cpus:g} CPU(s)" + (f" and {gpus:g} GPU(s)" if num_gpus else "")
    if fits < 1:
        raise ThresherError(f"the Ray cluster has {has}: not one label actor (1 CPU"
                            f"{f', {num_gpus:g} GPU' if num_gpus else ''}) fits")
    print0(f"warning: ray: the cluster has {has}: room for {fits} of the {workers} label actors asked (--workers); "
           f"labelling with {fits}")
    return fits


def run_ray(source, labelers, work: Path, todo: list, batch_size: int, workers: int, num_gpus: float = 0.0,
            address: str | None = None) -> None:
    """ray.data over shard descriptors with a fixed pool of ``workers`` actors (GPU actors if num_gpus>0).

    Shards are handed out only once every actor of the pool has started: Ray Data otherwise gives them to the
    actors that are up, so an actor that starts late (a loaded machine) can find none left. The job says how
    many actors labelled shards, and warns when that is fewer than ``workers``."""
    import ray
    from ray.data import ActorPoolStrategy

    workers = max(1, workers)
    if not ray.is_initialized():
        kw = {"address": address} if address else {"num_cpus": max(2, workers)}
        ray.init(include_dashboard=False, log_to_driver=False, **kw)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    size = _ray_pool_size(workers, num_gpus)
    items = [{"shard": i, "lo": lo, "hi": hi} for i, lo, hi in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _RayShardActor, fn_constructor_kwargs=dict(source=source, labelers=labelers, work=str(work), batch_size=batch_size),
        batch_size=1, compute=ActorPoolStrategy(size=size), num_cpus=1, num_gpus=num_gpus or None)
    ds.context.wait_for_min_actors_s = RAY_ACTOR_START_S  # this dataset's copy of the context
    actors: Counter = Counter()
    try:
        for b in ds.iter_batches(batch_size=None):
            actors.update(str(a) for a in b["actor"])
    except ray.exceptions.GetTimeoutError as e:
        free = ray.available_resources()
        raise ThresherError(f"ray: the {size} label actors did not all start within {RAY_ACTOR_START_S} s (free now: "
                            f"{free.get('CPU', 0):g} CPU(s), {free.get('GPU', 0):g} GPU(s)); ask fewer --workers "
                            "or free the cluster") from e
    done = sum(actors.values())
    if done != len(todo):
        raise ThresherError(f"ray labelled {done} of {len(todo)} shards")
    print0(f"ray: {len(actors)} actor(s) labelled {done} shards")
    if len(actors) < min(workers, done):
        print0(f"warning: ray: {len(actors)} of the {workers} actors asked (--workers) labelled shards, "
               f"so this job ran slower than asked")


# ------------------------------------------------------------------------------ entry point


def run_labelers(source: DocumentSource, labelers: Sequence[Labeler], out_dir: str | Path, executor: str = "local",
                 shard_size: int = 10_000, workers: int = 1, batch_size: int = 256,
                 clusterer: KMeansClusterer | None = None, num_gpus: float = 0.0, keep_shards: bool = False,
                 ray_address: str | None = None, replace: bool = False, quality_bins: int = 0) -> LabelTable:
    """Label every doc of ``source`` and add the columns to the label table at ``out_dir``; with ``replace``,
    columns the table has under other settings are recomputed and written over (else that is an error).
    ``quality_bins`` > 0 then also writes ``quality_bin``, equal-count bins of ``quality_score`` (labels/bins.py)."""
    out, n = Path(out_dir), int(source.n_docs)
    if n == 0:
        raise ThresherError("the document source has no documents")
    for labeler in labelers:  # models present (or downloaded) before the settings are fingerprinted
        labeler.fetch()
    specs = column_specs(labelers)
    if clusterer is not None:
        specs[clusterer.column] = _cluster_spec(clusterer, specs, out)
    binner = QuantileBins(quality_bins) if quality_bins else None
    identity = getattr(source, "identity", None)  # a token store's fingerprint: the table records it
    old = LabelTable.open(out, complete=False) if LabelTable.exists(out) else None
    if binner is not None and binner.source not in specs and (old is None or binner.source not in old.columns):
        raise ThresherError(f"label.quality_bins = {quality_bins} cuts the {binner.source} column into bins: add a "
                            "quality labeler (quality_rules, quality_hf or quality_fasttext) to this run")
    for base, derived, flag in (("embedding", clusterer, "--kmeans-k"), (QuantileBins.source, binner, "--quality-bins")):
        if replace and derived is None and base in specs and old is not None and base in old.columns:
            # columns derived from another record its provenance under its name: replacing it makes them stale
            replaced = fingerprint(old.provenance(base)) != fingerprint(specs[base]["provenance"])
            stale = [c for c in old.columns if replaced and c not in specs and base in old.provenance(c)]
            if stale:
                raise ThresherError(f"replacing {base!r} would leave {stale} computed from the old values: "
                                    f"recompute them in the same run ({flag})")
    remove_stale_temps(out)  # a table write killed mid-way left its temporaries (whole columns)
    if set(LabelTable.check_settings(out, {c: s["provenance"] for c, s in specs.items()}, n, identity,
                                     replace)) == set(specs):
        print0(f"label table {out} is up to date")
        if not keep_shards:  # a run killed after writing the table, before deleting its shards
            _drop_work(out / "_work" / _work_name(specs, n, shard_size))
        return _write_bins(out, binner, identity, replace)
    work = _work_dir(out, specs, n, shard_size)
    remove_stale_temps(work)
    shards = shard_ranges(n, shard_size)
    todo = [s for s in shards if not _done(work, s[0])]
    print0(f"labelling {n} docs: {len(shards) - len(todo)}/{len(shards)} shards already done")
    t0 = time.perf_counter()
    if todo and labelers:
        if executor == "local":
            run_local(source, labelers, work, todo, batch_size, workers)
        elif executor == "ray":
            run_ray(source, labelers, work, todo, batch_size, workers, num_gpus, ray_address)
        else:
            raise ThresherError(f"unknown executor {executor!r}; use 'local' or 'ray'")
    table = merge_shards(out, work, shards, specs, n, clusterer, identity, replace)
    _write_run_stats(out, work, shards, labelers, time.perf_counter() - t0)
    if not keep_shards:
        _drop_work(work)
    return _write_bins(out, binner, identity, replace) if binner is not None else table


def _write_bins(out: Path, binner: QuantileBins | None, identity: str | None, replace: bool) -> LabelTable:
    """Adds ``binner``'s column to the finished table at ``out`` (nothing when it is there under the same cuts)."""
    table = LabelTable.open(out)
    if binner is None:
        return table
    codes, spec = binner.fit(table.column(binner.source), table.provenance(binner.source))
    col = binner.column
    if col in LabelTable.check_settings(out, {col: spec["provenance"]}, table.n_docs, identity, replace):
        return table
    sizes = np.bincount(codes[codes >= 0], minlength=len(spec["categories"]))
    print0(f"{col}: {len(sizes)} bins of {binner.source} (asked for {binner.bins}), documents per bin: "
           + ", ".join(f"{name} {k}" for name, k in zip(spec["categories"], sizes.tolist())))
    return LabelTable.write(out, table.n_docs, {col: codes}, {col: spec}, source=identity, replace=replace)


def _drop_work(work: Path) -> None:
    """Deletes a finished job's shard folder, and ``_work`` itself once no other job's shards are left in it."""
    shutil.rmtree(work, ignore_errors=True)
    try:
        work.parent.rmdir()  # only when empty: another job's (kept or unfinished) shards stay
    except OSError:
        pass


def _cluster_spec(clusterer: KMeansClusterer, specs: dict, out: Path) -> dict:
    if "embedding" in specs:
        emb_prov = specs["embedding"]["provenance"]
    elif LabelTable.exists(out) and "embedding" in LabelTable.open(out, complete=False).columns:
        emb_prov = LabelTable.open(out, complete=False).provenance("embedding")
    else:
        raise ThresherError("k-means needs embeddings: add the embed labeler or label into a table that has them")
    return {"kind": "category", "categories": clusterer.categories(), "provenance": clusterer.provenance(emb_prov)}


def _work_settings(specs: dict, n: int, shard_size: int) -> dict:
    return {"n_docs": n, "shard_size": shard_size, "columns": specs}


def _work_name(specs: dict, n: int, shard_size: int) -> str:
    return fingerprint(_work_settings(specs, n, shard_size))[:16]


def _work_dir(out: Path, specs: dict, n: int, shard_size: int) -> Path:
    settings = _work_settings(specs, n, shard_size)
    work = out / "_work" / _work_name(specs, n, shard_size)
    make_dir(work)
    if (work / "settings.json").exists():
        if fingerprint(read_json(work / "settings.json")) != fingerprint(settings):
            raise SettingsMismatchError(f"shards in {work} were computed under other settings")
    else:
        atomic_write_json(work / "settings.json", settings)
    return work


def merge_shards(out: Path, work: Path, shards: list, specs: dict, n: int,
                 clusterer: KMeansClusterer | None, source: str | None = None, replace: bool = False) -> LabelTable:
    """Stream the shards in doc-id order (checked: no gap, no duplicate) into the table, clustering first.
    One shard's rows are in memory at a time (and the embeddings are memory-mapped), however large N."""
    label_specs = {c: s for c, s in specs.items() if clusterer is None or c != clusterer.column}
    scalar = [c for c, s in label_specs.items() if s["kind"] != "embedding"]
    data: dict[str, Any] = {}
    for col, spec in label_specs.items():
        if spec["kind"] == "embedding":
            data[col] = _merge_embedding(out, work, shards, col, n)
    if clusterer is not None:
        emb_path = data.get("embedding") or out / "embedding.npy"
        emb = np.load(emb_path, mmap_mode="r")
        centroids = clusterer.train(emb)
        data[clusterer.column] = clusterer.assign(emb, centroids)
        del emb
        with atomic_path(out / f"{clusterer.column}.centroids.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, centroids)
    kinds = {c: label_specs[c]["kind"] for c in scalar}
    return LabelTable.write(out, n, data, specs, blocks=_shard_blocks(work, shards, kinds, n) if scalar else None,
                            source=source, replace=replace)


def _shard_blocks(work: Path, shards: list, kinds: dict[str, str], n: int):
    """(lo, hi, {column: values}) per shard, in doc-id order; a gap, overlap or wrong doc id is an error."""
    end = 0
    for i, lo, hi in sorted(shards, key=lambda s: s[1]):
        t = pq.read_table(work / f"{i:06d}.parquet", columns=["doc_id", *kinds])
        if lo != end or not np.array_equal(t.column("doc_id").to_numpy(), np.arange(lo, hi)):
            raise ThresherError(f"shards in {work} do not cover doc ids 0..{n - 1} exactly once (shard {i})")
        end = hi
        yield lo, hi, {c: t.column(c) if k == "reason" else t.column(c).to_numpy() for c, k in kinds.items()}
    if end != n:
        raise ThresherError(f"shards in {work} do not cover doc ids 0..{n - 1} exactly once")


def _merge_embedding(out: Path, work: Path, shards: list, col: str, n: int) -> Path:
    """Stream shard embeddings into one (N, d) float16 .npy (memmap; never all in RAM)."""
    first = np.load(work / f"{shards[0][0]:06d}.{col}.npy", mmap_mode="r")
    tmp = out / f".{col}.merging.npy"
    dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, first.shape[1]))
    for i, lo, hi in shards:
        part = np.load(work / f"{i:06d}.{col}.npy", mmap_mode="r")
        if part.shape[0] != hi - lo:
            raise ThresherError(f"shard {i} of {work} has {part.shape[0]} embeddings for {hi - lo} docs")
        dst[lo:hi] = part
    dst.flush()
    del dst
    return tmp


def _write_run_stats(out: Path, work: Path, shards: list, labelers: Sequence[Labeler], wall: float) -> None:
    """Sum shard stats: per-labeler seconds and docs/s (single worker), null reasons per column."""
    seconds: Counter = Counter()
    reasons: dict[str, Counter] = {}
    n = 0
    for i, _, _ in shards:
        if not _done(work, i):
            continue
        st = read_json(work / f"{i:06d}.done.json")
        n += st["n_docs"]
        seconds.update(st["seconds"])
        for col, cnt in st["reasons"].items():
            reasons.setdefault(col, Counter()).update(cnt)
    stats = {"n_docs": n, "wall_seconds": wall, "seconds": dict(seconds),
             "docs_per_s": {k: n / v for k, v in seconds.items() if v > 0},
             "null_reasons": {c: dict(v.most_common(50)) for c, v in reasons.items()}}
    atomic_write_json(out / "run_stats.json", stats)
    for col, cnt in stats["null_reasons"].items():
        if cnt:
            print0(f"{col}: {sum(reasons[col].values())} docs without a label, top reasons {dict(reasons[col].most_common(5))}")
