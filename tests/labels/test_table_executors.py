"""Executors and the label table: shard invariance, local == Ray, kill-and-resume, settings refusal."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from process_helpers import CTRL_C_CHILD

from thresher.labels import InMemorySource, LabelTable, run_labelers
from thresher.labels.cluster import KMeansClusterer
from thresher.labels.domain import DomainLabeler
from thresher.labels.quality import RuleQualityLabeler
from thresher.labels.synthetic import SyntheticLabeler
from thresher.utils.errors import SettingsMismatchError

DOMS = ["RedPajamaC4", "RedPajamaGithub", "Wikipedia", "RedPajamaBook", "mystery"]


def source(docs):
    n = len(docs)
    r = np.random.default_rng(0)
    meta = {"domain": [DOMS[i % len(DOMS)] for i in range(n)], "topic": r.integers(0, 13, n).tolist(),
            "quality": r.uniform(0, 5, n).tolist()}
    return InMemorySource(docs, meta)


def cheap_labelers():
    return [DomainLabeler(), RuleQualityLabeler(), SyntheticLabeler(topic_noise=0.2, quality_noise=0.3, seed=3, prefix="true_")]


def tables_equal(a: LabelTable, b: LabelTable) -> None:
    assert a.columns == b.columns and a.n_docs == b.n_docs
    assert a.arrow().equals(b.arrow())
    for c in a.columns:
        if a.kind(c) == "category":
            np.testing.assert_array_equal(a.codes(c), b.codes(c))
        if a.kind(c) == "embedding":
            np.testing.assert_array_equal(a.embeddings(c), b.embeddings(c))


@pytest.fixture(scope="module")
def full_table(tmp_path_factory, docs, minilm):
    from thresher.labels.embed import EmbedLabeler
    from thresher.labels.topic import ZeroShotTopicLabeler

    labs = [DomainLabeler(), RuleQualityLabeler(), ZeroShotTopicLabeler(minilm, device="cpu", max_seq_length=64),
            EmbedLabeler(minilm, device="cpu", max_seq_length=64)]
    out = tmp_path_factory.mktemp("full")
    km = KMeansClusterer(k=3, sample_size=100, niter=5, seed=0)
    return run_labelers(source(docs[:16]), labs, out, shard_size=7, batch_size=4, clusterer=km), labs


def test_table_contents_match_direct_labelling(full_table, docs):
    table, labs = full_table
    docs = docs[:16]
    n = len(docs)
    direct = {}
    for lab in labs:
        direct.update(lab.label({"doc_id": np.arange(n), "text": docs, **source(docs).metadata(np.arange(n), lab.needs)}))
    assert table.n_docs == n and table.arrow().column("doc_id").to_pylist() == list(range(n))
    np.testing.assert_array_equal(table.codes("domain"), direct["domain"])
    np.testing.assert_array_equal(table.codes("topic"), direct["topic"])
    np.testing.assert_allclose(table.column("quality_score"), direct["quality_score"], rtol=1e-6)
    np.testing.assert_allclose(table.embeddings().astype(np.float32), direct["embedding"].astype(np.float32), atol=2e-3)
    assert table.column("domain_reason")[4] == "unknown:mystery"
    assert isinstance(table.codes("domain"), np.memmap) and table.embeddings().dtype == np.float16
    # parquet categories are the names; codes -1 where missing
    names = table.arrow(["domain"]).column("domain").to_pylist()
    assert names == [None if c < 0 else table.categories("domain")[c] for c in table.codes("domain")]
    prov = table.provenance("quality_score")
    assert prov["labeler"] == "RuleQualityLabeler" and table.provenance("cluster")["settings"]["k"] == 3
    import pyarrow.parquet as pq

    assert b"thresher" in pq.read_schema(table.path / "labels.parquet").metadata


def test_clusters_are_nearest_centroids(full_table):
    table, _ = full_table
    emb = np.asarray(table.embeddings(), dtype=np.float64)
    cen = np.load(table.path / "cluster.centroids.npy").astype(np.float64)
    codes = np.asarray(table.codes("cluster"))
    ok = ~np.isnan(emb[:, 0])
    d = ((emb[ok, None, :] - cen[None]) ** 2).sum(-1)
    assert np.all(d[np.arange(ok.sum()), codes[ok]] <= d.min(1) + 1e-4) and np.all(codes[~ok] == -1)


def test_agent_labels(full_table):
    table, _ = full_table
    lab = table.to_agent_labels(["domain", "quality_interval", "topic"])
    assert lab.categories["topic"][0] == "Activity" and lab.column("domain").dtype == np.int16
    assert len(lab.column("quality_interval")) == table.n_docs


def test_shard_size_invariance_and_stats(tmp_path, docs):
    a = run_labelers(source(docs), cheap_labelers(), tmp_path / "a", shard_size=5, batch_size=2)
    b = run_labelers(source(docs), cheap_labelers(), tmp_path / "b", shard_size=1000, batch_size=1000)
    tables_equal(a, b)
    import json

    stats = json.loads((tmp_path / "a" / "run_stats.json").read_text())
    assert stats["n_docs"] == len(docs) and stats["null_reasons"]["quality_reason"]["empty"] == 2
    assert not (tmp_path / "a" / "_work").exists()  # the finished job's shards deleted, and the emptied _work


class Crash(RuntimeError):
    pass


class FlakyRules(RuleQualityLabeler):
    """Same provenance as RuleQualityLabeler; raises on doc 17 while ``armed`` (a simulated kill)."""

    armed = False

    def provenance(self):
        return {**super().provenance(), "labeler": "RuleQualityLabeler"}

    def label(self, batch):
        if FlakyRules.armed and 17 in list(batch["doc_id"]):
            raise Crash("killed")
        return super().label(batch)


def test_kill_and_resume(tmp_path, docs):
    out = tmp_path / "t"
    FlakyRules.armed = True
    with pytest.raises(Crash):
        run_labelers(source(docs), [DomainLabeler(), FlakyRules()], out, shard_size=5, batch_size=5)
    work = next((out / "_work").iterdir())
    done = sorted(p.name for p in work.glob("*.done.json"))
    assert done == [f"{i:06d}.done.json" for i in range(3)]  # shards 0-2 finished, shard 3 (docs 15-19) died
    (work / "000003.parquet").write_bytes(b"half-written garbage")  # a partial shard without marker
    mtime = (work / "000000.parquet").stat().st_mtime_ns
    FlakyRules.armed = False
    resumed = run_labelers(source(docs), [DomainLabeler(), FlakyRules()], out, shard_size=5, batch_size=5, keep_shards=True)
    assert (work / "000000.parquet").stat().st_mtime_ns == mtime  # finished shards were skipped
    clean = run_labelers(source(docs), [DomainLabeler(), RuleQualityLabeler()], tmp_path / "clean", shard_size=5)
    tables_equal(resumed, clean)  # no duplicate, no missing row


def test_settings_mismatch_refused(tmp_path, docs):
    run_labelers(source(docs), [RuleQualityLabeler()], tmp_path / "t", shard_size=10)
    run_labelers(source(docs), [RuleQualityLabeler()], tmp_path / "t", shard_size=10)  # same settings: fine
    with pytest.raises(SettingsMismatchError, match="quality_score"):
        run_labelers(source(docs), [RuleQualityLabeler(max_chars=50)], tmp_path / "t", shard_size=10)
    t = run_labelers(source(docs), [DomainLabeler()], tmp_path / "t", shard_size=10)  # new column: added
    assert set(t.columns) == {"quality_score", "quality_interval", "quality_reason", "domain", "domain_reason"}
    with pytest.raises(SettingsMismatchError):
        run_labelers(source(docs[:10]), [DomainLabeler()], tmp_path / "t")  # other corpus size


def test_local_processes_and_ray_match_in_process(tmp_path, docs):
    ref = run_labelers(source(docs), cheap_labelers(), tmp_path / "ref", shard_size=6)
    procs = run_labelers(source(docs), cheap_labelers(), tmp_path / "procs", shard_size=6, workers=2)
    tables_equal(ref, procs)
    pytest.importorskip("ray")
    import ray

    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"THRESHER_NO_PROGRESS": "1"}})
        via_ray = run_labelers(source(docs), cheap_labelers(), tmp_path / "ray", executor="ray", shard_size=6, workers=2)
    finally:
        ray.shutdown()
    tables_equal(ref, via_ray)


def test_label_stats_against_numpy(tmp_path, full_table):
    from thresher.labels import label_stats

    table, _ = full_table
    paths = label_stats(table.path, tmp_path / "stats")
    assert paths["figure1"].stat().st_size > 0 and paths["topic_by_domain"].exists()
    md = paths["markdown"].read_text()
    q, d, t = (np.asarray(table.codes(c)) for c in ("quality_interval", "domain", "topic"))
    ok = (q >= 0) & (d >= 0) & (t >= 0)
    qi, di = q[ok][0], d[ok][0]
    cell = t[ok][(q[ok] == qi) & (d[ok] == di)]
    share = np.bincount(cell, minlength=13) / len(cell)
    row = f"| {table.categories('quality_interval')[qi]} | {table.categories('domain')[di]} | {len(cell)} | {1 - share.max():.3f} |"
    assert row in md


def test_stats_read_a_table_under_a_path_with_a_quote(tmp_path, docs):
    from thresher.labels.stats import joint_counts

    quoted, plain = (run_labelers(source(docs[:10]), [SyntheticLabeler(seed=3)], tmp_path / d, shard_size=5)
                     for d in ("it's", "plain"))
    got, want = joint_counts(quoted, "domain", "topic"), joint_counts(plain, "domain", "topic")
    assert got[:2] == want[:2] and want[2].sum() > 0
    np.testing.assert_array_equal(got[2], want[2])


def test_stats_on_a_corrupt_label_parquet_is_one_line(tmp_path, docs):
    import shutil

    from thresher.labels.stats import joint_counts
    from thresher.labels.table import PARQUET
    from thresher.utils.errors import ThresherError

    table = run_labelers(source(docs[:10]), [SyntheticLabeler(seed=3)], tmp_path / "t", shard_size=5)
    data = (table.path / PARQUET).read_bytes()
    for name, bad in (("garbage", b"not parquet at all"), ("middle", data[:8] + b"\0" * (len(data) - 16) + data[-8:])):
        copy = tmp_path / name
        shutil.copytree(table.path, copy)
        (copy / PARQUET).write_bytes(bad)
        with pytest.raises(ThresherError, match=f"label table {copy}: {PARQUET} is ") as e:
            joint_counts(type(table).open(copy), "domain", "topic")
        assert "\n" not in str(e.value)


def _cols(n, seed):
    r = np.random.default_rng(seed)
    cat = r.integers(-1, 4, n).astype(np.int16)
    flt = r.normal(size=n).astype(np.float32)
    flt[r.random(n) < 0.2] = np.nan
    why = [None if c >= 0 else f"r{i % 3}" for i, c in enumerate(cat)]
    return cat, flt, why


def _specs(tag):
    prov = {"labeler": tag}
    return {f"{tag}_cat": {"kind": "category", "categories": list("abcd"), "provenance": prov},
            f"{tag}_x": {"kind": "float", "provenance": prov}, f"{tag}_reason": {"kind": "reason", "provenance": prov}}


def test_streamed_table_in_small_row_groups_equals_the_input(tmp_path, monkeypatch):
    """Many row groups, blocks of other sizes than the row groups, and a second labeller's columns added
    to the table (its kept columns read back in step): every value as given, the same as one block."""
    import pyarrow.parquet as pq

    import thresher.labels.table as table_mod

    n = 23
    a, b = _cols(n, 0), _cols(n, 1)
    for name, group in (("one", 1 << 20), ("small", 4)):
        monkeypatch.setattr(table_mod, "ROW_GROUP", group)
        d = tmp_path / name
        LabelTable.write(d, n, dict(zip(_specs("a"), a)), _specs("a"))
        bounds = [0, 5, 6, 15, 23]  # uneven blocks, as shards would give
        blocks = [(lo, hi, {k: v[lo:hi] for k, v in zip(_specs("b"), b)})
                  for lo, hi in zip(bounds, bounds[1:])]
        t = LabelTable.write(d, n, {}, _specs("b"), blocks=iter(blocks))
        assert sorted(t.columns) == ["a_cat", "a_reason", "a_x", "b_cat", "b_reason", "b_x"]
        for tag, (cat, flt, why) in (("a", a), ("b", b)):
            np.testing.assert_array_equal(t.codes(f"{tag}_cat"), cat)
            np.testing.assert_array_equal(t.column(f"{tag}_x"), flt)
            assert t.column(f"{tag}_reason") == why
            names = t.arrow([f"{tag}_cat"]).column(f"{tag}_cat").to_pylist()
            assert names == [None if c < 0 else "abcd"[c] for c in cat]
        assert t.arrow().column("doc_id").to_pylist() == list(range(n))
        meta = pq.ParquetFile(d / "labels.parquet").metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        assert sum(sizes) == n and max(sizes) <= group and (len(sizes) == 1) == (group > n), sizes
    tables_equal(LabelTable.open(tmp_path / "one"), LabelTable.open(tmp_path / "small"))


@pytest.mark.parametrize("bounds, message", [([0, 5, 4, 10], "out of order"), ([0, 5, 9], "cover 0..8, the table has 10"),
                                             ([0, 6, 10], "rows 0..5 need 6")])
def test_streamed_blocks_must_cover_the_rows_in_order(tmp_path, bounds, message):
    from thresher.utils.errors import ThresherError

    cat, flt, why = _cols(10, 0)
    short = cat[:5]  # the first block's category values: 5 rows
    blocks = [(lo, hi, {"a_cat": short if lo == 0 and message.startswith("rows") else cat[lo:hi],
                        "a_x": flt[lo:hi], "a_reason": why[lo:hi]}) for lo, hi in zip(bounds, bounds[1:])]
    with pytest.raises(ThresherError, match=message):
        LabelTable.write(tmp_path / "t", 10, {}, _specs("a"), blocks=iter(blocks))
    assert not LabelTable.exists(tmp_path / "t") and not any(p.name.endswith(".tmp") for p in (tmp_path / "t").glob(".*"))


def test_table_records_its_corpus_and_refuses_another(tmp_path):
    n, g = 6, np.random.default_rng(0)

    def data(tag):
        return {f"{tag}_cat": g.integers(0, 4, n).astype(np.int16), f"{tag}_x": g.random(n).astype(np.float32),
                f"{tag}_reason": [None] * n}

    t = LabelTable.write(tmp_path / "t", n, data("a"), _specs("a"), source="store-sha256:aaa")
    assert t.source == "store-sha256:aaa"
    with pytest.raises(SettingsMismatchError, match="labelled from another corpus"):
        LabelTable.write(tmp_path / "t", n, data("b"), _specs("b"), source="store-sha256:bbb")
    assert LabelTable.write(tmp_path / "t", n, data("b"), _specs("b")).source == "store-sha256:aaa"  # kept
    assert LabelTable.check_settings(tmp_path / "t", {}, n, "store-sha256:aaa") == []
    legacy = LabelTable.write(tmp_path / "old", n, data("a"), _specs("a"))  # a table from before sources: unchecked
    assert legacy.source is None and LabelTable.check_settings(tmp_path / "old", {}, n, "store-sha256:x") == []


def test_replace_recomputes_only_the_changed_columns_in_place(tmp_path, docs):
    out = tmp_path / "labels"
    run_labelers(source(docs), cheap_labelers(), out, shard_size=7)
    before = LabelTable.open(out)
    quality = before.arrow(["quality_score"])
    renamed = DomainLabeler(names=["Wikipedia", "RedPajamaC4", "RedPajamaGithub"])  # other categories
    with pytest.raises(SettingsMismatchError, match="computed under other settings .* with --replace"):
        run_labelers(source(docs), [renamed], out, shard_size=7)
    after = run_labelers(source(docs), [renamed], out, shard_size=7, replace=True)
    direct = run_labelers(source(docs), [renamed], tmp_path / "fresh", shard_size=7)
    assert after.columns == before.columns and after.categories("domain") == direct.categories("domain")
    np.testing.assert_array_equal(after.codes("domain"), direct.codes("domain"))
    assert after.provenance("domain") == direct.provenance("domain") != before.provenance("domain")
    assert after.arrow(["quality_score"]).equals(quality)  # the other columns are kept as they were
    np.testing.assert_array_equal(after.codes("true_topic"), before.codes("true_topic"))


def test_replacing_embeddings_without_reclustering_is_refused(tmp_path, full_table, docs, minilm):
    import shutil

    from thresher.labels.embed import EmbedLabeler
    from thresher.utils.errors import ThresherError

    table, _ = full_table
    copy = tmp_path / "t"
    shutil.copytree(table.path, copy)
    shorter = EmbedLabeler(minilm, device="cpu", max_seq_length=32)
    with pytest.raises(ThresherError, match=r"replacing 'embedding' would leave \['cluster'\] computed from the old"):
        run_labelers(source(docs[:16]), [shorter], copy, shard_size=8, replace=True)
    assert LabelTable.open(copy).provenance("embedding") == table.provenance("embedding")


def test_a_rerun_after_a_kill_in_the_table_write_removes_what_the_killed_run_left(tmp_path, docs):
    import subprocess
    import sys

    from thresher.utils.io import _HOST

    out = tmp_path / "t"
    labs = [DomainLabeler(), RuleQualityLabeler()]
    # a run killed after writing the table, before deleting its shards: as a run that kept them
    clean = run_labelers(source(docs), labs, out, shard_size=5, keep_shards=True)
    assert any((out / "_work").iterdir())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = out / f".labels.parquet.{_HOST}-{int(dead.stdout)}.k1ll3d_x.tmp"  # a write killed mid-way
    left.write_bytes(b"half a table")
    again = run_labelers(source(docs), labs, out, shard_size=5)  # up to date: nothing to label
    tables_equal(again, clean)
    assert not left.exists() and not (out / "_work").exists()


def test_a_replace_stopped_before_its_manifest_is_refused_until_a_rerun_finishes_it(tmp_path, docs, monkeypatch):
    import thresher.labels.table as table_module
    from thresher.utils.errors import ThresherError

    out = tmp_path / "labels"
    run_labelers(source(docs), [DomainLabeler()], out, shard_size=7)
    renamed = DomainLabeler(names=["Wikipedia", "RedPajamaC4", "RedPajamaGithub"])  # other categories
    real = table_module.atomic_write_json

    def killed(path, obj):  # the new codes and Parquet are in place, table.json is still the old one
        raise Crash("killed")

    monkeypatch.setattr(table_module, "atomic_write_json", killed)
    with pytest.raises(Crash):
        run_labelers(source(docs), [renamed], out, shard_size=7, replace=True)
    monkeypatch.setattr(table_module, "atomic_write_json", real)
    with pytest.raises(ThresherError, match="half-written .* rerun that label command") as e:
        LabelTable.open(out)  # not the new codes under the old categories
    assert "\n" not in str(e.value)
    after = run_labelers(source(docs), [renamed], out, shard_size=7, replace=True)
    direct = run_labelers(source(docs), [renamed], tmp_path / "fresh", shard_size=7)
    tables_equal(LabelTable.open(out), direct)
    assert after.categories("domain") == direct.categories("domain")


STUCK_LABEL = CTRL_C_CHILD + """
import os, sys, time
from thresher.labels import InMemorySource, run_labelers
from thresher.labels.quality import RuleQualityLabeler
def label(self, batch):  # a shard that takes forever; marks that a worker is in it
    open(os.path.join(os.environ["MARKS"], str(os.getpid())), "w").close()
    time.sleep(3600)
RuleQualityLabeler.label = label  # the spawned workers import this script too (as __mp_main__)
if __name__ == "__main__":
    run_labelers(InMemorySource(["some text here"] * 40), [RuleQualityLabeler()], sys.argv[1], shard_size=10,
                 workers=2, batch_size=5)
"""


def test_a_kill_of_the_main_process_ends_the_label_workers(tmp_path):
    """kill -9 of the main process only (the OOM killer's): its spawned label workers, models loaded, exit
    too instead of running on under init and writing shards a rerun redoes."""
    from process_helpers import kill_main_only, start_stuck

    script = tmp_path / "stuck.py"
    script.write_text(STUCK_LABEL)
    kill_main_only(*start_stuck(script, [str(tmp_path / "labels")], tmp_path / "marks"))


def test_ctrl_c_stops_a_parallel_label_job_at_once_and_a_rerun_resumes(tmp_path):
    """Ctrl-C (SIGINT to the process group) while both workers are inside shards: the job ends within seconds with
    KeyboardInterrupt instead of labelling the shards left, its workers terminated; a rerun writes the table."""
    import signal
    import subprocess

    from process_helpers import ctrl_c, start_stuck

    from thresher.utils.io import pid_alive

    script, out = tmp_path / "stuck.py", tmp_path / "labels"
    script.write_text(STUCK_LABEL)
    p, workers = start_stuck(script, [str(out)], tmp_path / "marks", stderr=subprocess.PIPE, text=True)
    err = ctrl_c(p)
    assert p.returncode == -signal.SIGINT and err.rstrip().endswith("KeyboardInterrupt"), err[-2000:]
    assert not any(map(pid_alive, workers)) and not list(out.glob("_work/*/*.done.json"))
    resumed = run_labelers(InMemorySource(["some text here"] * 40), [RuleQualityLabeler()], out, shard_size=10)
    tables_equal(resumed, run_labelers(InMemorySource(["some text here"] * 40), [RuleQualityLabeler()],
                                       tmp_path / "clean", shard_size=10))


RAY_STUCK = """
import json, os, sys, time
import ray
from thresher.labels import InMemorySource, run_labelers
from thresher.labels.quality import RuleQualityLabeler
class StuckRules(RuleQualityLabeler):  # pickled by value into the Ray actors
    def provenance(self):  # RuleQualityLabeler's: a rerun with that labeler resumes these shards
        return {**super().provenance(), "labeler": "RuleQualityLabeler"}
    def label(self, batch):  # shards from doc STUCK_FROM on take forever; marks that an actor is in one
        if batch["doc_id"][0] >= int(os.environ["STUCK_FROM"]):
            open(os.path.join(os.environ["MARKS"], str(os.getpid())), "w").close()
            time.sleep(3600)
        return super().label(batch)
os.environ["STUCK_FROM"] = sys.argv[3]
keep = ("MARKS", "STUCK_FROM", "THRESHER_NO_PROGRESS")
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
         runtime_env={"env_vars": {k: os.environ[k] for k in keep}})
run_labelers(InMemorySource(json.load(open(sys.argv[1]))), [StuckRules()], sys.argv[2], executor="ray",
             shard_size=10, batch_size=10, workers=1)
"""


@pytest.mark.slow
def test_a_ray_label_job_killed_mid_way_resumes_to_the_uninterrupted_table(tmp_path, docs):
    """kill -9 of the driver of a Ray label job while its actor is inside its third shard (one actor: the shards in
    order, 2 done): the actor ends with it, and a rerun on Ray skips the finished shards and writes the table an
    uninterrupted local run writes (the local executor's table equals Ray's: test above)."""
    pytest.importorskip("ray")
    import json
    import subprocess

    import ray

    from process_helpers import kill_main_only, start_stuck

    out = tmp_path / "labels"  # 24 docs: shards 0-9, 10-19 and 20-23
    (tmp_path / "docs.json").write_text(json.dumps(docs))
    (tmp_path / "stuck.py").write_text(RAY_STUCK)
    p, actors = start_stuck(tmp_path / "stuck.py", [str(tmp_path / "docs.json"), str(out), "20"], tmp_path / "marks",
                            n_workers=1, timeout=300, stderr=subprocess.DEVNULL)
    kill_main_only(p, actors, timeout=60)
    [work] = (out / "_work").iterdir()
    done = {m.name: m.stat().st_mtime_ns for m in work.glob("*.done.json")}
    assert sorted(done) == ["000000.done.json", "000001.done.json"] and not (out / "table.json").exists()
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"THRESHER_NO_PROGRESS": "1"}})
        resumed = run_labelers(InMemorySource(docs), [RuleQualityLabeler()], out, executor="ray", shard_size=10,
                               batch_size=10, keep_shards=True)
    finally:
        ray.shutdown()
    assert {m: (work / m).stat().st_mtime_ns for m in done} == done  # the finished shards were not redone
    assert len(list(work.glob("*.done.json"))) == 3
    tables_equal(resumed, run_labelers(InMemorySource(docs), [RuleQualityLabeler()], tmp_path / "clean", shard_size=10))


LATE_RULES = '''
import os, time
from thresher.labels.quality import RuleQualityLabeler
class LateRules(RuleQualityLabeler):
    """Unpickled in each Ray actor's constructor, where every actor but the first waits `delay` s (a late start on
    a loaded machine); records the pid of the process that labels each shard."""
    def __init__(self, marks, delay):
        super().__init__()
        self.marks, self.delay = marks, delay
    def __setstate__(self, state):
        self.__dict__.update(state)
        try:
            os.close(os.open(os.path.join(self.marks, "first"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            time.sleep(self.delay)
    def label(self, batch):
        with open(os.path.join(self.marks, f"pid-{os.getpid()}"), "a") as f:
            f.write(f"{batch['doc_id'][0]}\\n")
        return super().label(batch)
'''


@pytest.mark.slow
def test_every_ray_actor_asked_labels_shards_and_the_job_says_how_many(tmp_path, docs, capsys):
    """--workers 2 on Ray, one actor starting 5 s after the other, 6 cheap shards: the shards are handed out once
    both actors are up, so both label shards (without that wait the first actor labels all 6 before the second
    starts, silently), and the job prints how many actors labelled shards and no warning."""
    pytest.importorskip("ray")
    import types

    import ray

    mod = types.ModuleType("late_rules")  # not importable in the actors: cloudpickle sends the class by value
    exec(LATE_RULES, mod.__dict__)
    marks = tmp_path / "marks"
    marks.mkdir()
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"THRESHER_NO_PROGRESS": "1"}})
        run_labelers(InMemorySource(docs), [mod.LateRules(str(marks), 5.0)], tmp_path / "labels", executor="ray",
                     shard_size=4, batch_size=4, workers=2)
    finally:
        ray.shutdown()
    pids = {p.name: len(p.read_text().split()) for p in marks.glob("pid-*")}
    assert len(pids) == 2 and sum(pids.values()) == 6, pids
    out = capsys.readouterr().out
    assert "ray: 2 actor(s) labelled 6 shards" in out and "warning" not in out, out


def test_a_ray_cluster_smaller_than_the_workers_asked_is_said(monkeypatch, capsys):
    ray = pytest.importorskip("ray")
    from thresher.labels.executors import _ray_pool_size
    from thresher.utils.errors import ThresherError

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 3.0, "GPU": 1.0})
    assert _ray_pool_size(2, 0.0) == 2 and capsys.readouterr().out == ""
    assert _ray_pool_size(4, 0.0) == 3
    assert "room for 3 of the 4 label actors asked (--workers); labelling with 3" in capsys.readouterr().out
    assert _ray_pool_size(4, 0.5) == 2 and "1 GPU(s)" in capsys.readouterr().out
    with pytest.raises(ThresherError, match="not one label actor"):
        _ray_pool_size(2, 2.0)
