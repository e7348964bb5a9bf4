"""Ingest: the token store equals the tokenizer's output per document, whatever the workers or crashes."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from corpus_helpers import SHARED, corpus, make_records, tok_path, write_jsonl  # noqa: F401
from process_helpers import CTRL_C_CHILD, ctrl_c, kill_main_only, start_stuck
from tokenizers import Tokenizer, models, pre_tokenizers

import thresher.corpus.ingest as ing
from thresher.corpus.ingest import ingest
from thresher.corpus.store import TokenStore, token_dtype
from thresher.corpus.tokenizer import load_tokenizer
from thresher.utils.errors import SettingsMismatchError, ThresherError

FMAP = {"domain": "domain", "set": "meta.set", "score": "meta.score"}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("THRESHER_NO_PROGRESS", "1")


@pytest.fixture(scope="module")
def clean(corpus, tok_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "store"
    os.environ["THRESHER_NO_PROGRESS"] = "1"
    stats = ingest([str(corpus["dir"])], out, str(tok_path), field_map=FMAP, workers=1, batch_size=7)
    return out, stats


def assert_same_store(a: Path, b: Path):
    sa, sb = TokenStore.open(a), TokenStore.open(b)
    assert (a / "tokens.bin").read_bytes() == (b / "tokens.bin").read_bytes()
    assert np.array_equal(sa.offsets, sb.offsets)
    assert sa.table().equals(sb.table())
    assert (a / "exclusions.jsonl").read_text() == (b / "exclusions.jsonl").read_text()
    assert sa.meta == sb.meta


def test_round_trip_every_document(clean, corpus, tok_path):
    out, stats = clean
    store, tok = TokenStore.open(out), load_tokenizer(tok_path)
    recs = [(shard, i, r) for shard, rs in zip(corpus["shards"], corpus["records"]) for i, r in enumerate(rs)]
    assert store.n_docs == len(recs) == stats["n_docs"] and stats["n_excluded"] == 0
    for doc_id, (shard, i, r) in enumerate(recs):
        assert store.doc(doc_id).tolist() == tok.encode(r["text"], add_special_tokens=False).ids
    t = store.table().to_pylist()
    assert [row["doc_id"] for row in t] == list(range(len(recs)))
    assert [(row["source_shard"], row["source_index"], row["source_id"]) for row in t] == [
        (str(s.resolve()), i, r["id"]) for s, i, r in recs]
    assert [(row["domain"], row["set"], row["score"]) for row in t] == [
        (r["domain"], r["meta"]["set"], r["meta"]["score"]) for _, _, r in recs]
    assert store.texts([0, len(recs) - 1]) == [recs[0][2]["text"], recs[-1][2]["text"]]
    assert store.dtype == np.uint16 and store.n_tokens == int(store.lengths.sum()) == stats["n_tokens"]
    assert not (out / "parts").exists()


def test_two_workers_give_the_same_store(clean, corpus, tok_path, tmp_path):
    stats = ingest([str(s) for s in corpus["shards"]], tmp_path / "w2", str(tok_path), field_map=FMAP,
                   workers=2, batch_size=7)
    assert stats["n_docs"] == clean[1]["n_docs"]
    assert_same_store(clean[0], tmp_path / "w2")


def test_resume_after_a_failure_mid_run(clean, corpus, tok_path, tmp_path, monkeypatch):
    out, real, calls = tmp_path / "s", ing.ingest_shard, []

    def flaky(task, tok):
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        calls.append(task.shard)
        return real(task, tok)

    monkeypatch.setattr(ing, "ingest_shard", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest([str(corpus["dir"])], out, str(tok_path), field_map=FMAP, workers=1, batch_size=7)
    assert len(list((out / "parts").glob("*/.done"))) == 2
    with pytest.raises(ThresherError, match="unfinished ingest"):
        TokenStore.open(out)
    monkeypatch.setattr(ing, "ingest_shard", real)
    stats = ingest([str(corpus["dir"])], out, str(tok_path), field_map=FMAP, workers=1, batch_size=7)
    assert stats["shards_resumed"] == 2
    assert_same_store(clean[0], out)


KILLER = """
import os, signal, sys
import thresher.corpus.ingest as ing
n, orig = [0], ing.PartWriter.add
def add(self, docs, ids):
    n[0] += 1
    if n[0] == int(sys.argv[4]):
        os.kill(os.getpid(), signal.SIGKILL)
    orig(self, docs, ids)
ing.PartWriter.add = add
ing.ingest([sys.argv[1]], sys.argv[2], sys.argv[3], field_map=%r, workers=1, batch_size=7)
""" % (FMAP,)


def test_resume_after_sigkill(clean, corpus, tok_path, tmp_path):
    script, out = tmp_path / "killer.py", tmp_path / "s"
    script.write_text(KILLER)
    env = {**os.environ, "THRESHER_NO_PROGRESS": "1"}
    r = subprocess.run([sys.executable, str(script), str(corpus["dir"]), str(out), str(tok_path), "12"], env=env)
    assert r.returncode == -9
    done = len(list((out / "parts").glob("*/.done")))
    assert 1 <= done < 4 and len(list((out / "parts").iterdir())) > done  # one shard was cut mid-way
    assert not (out / "store.json").exists()
    stats = ingest([str(corpus["dir"])], out, str(tok_path), field_map=FMAP, workers=1, batch_size=7)
    assert stats["shards_resumed"] == done
    assert_same_store(clean[0], out)


MERGE_KILLER = """
import os, signal, sys
import thresher.corpus.ingest as ing
where = sys.argv[4]
if where == "merge":  # mid-merge: the store's docs.parquet written into its temporary, not yet renamed
    import contextlib
    orig = ing.atomic_path
    @contextlib.contextmanager
    def atomic_path(path):
        with orig(path) as tmp:
            yield tmp
            if path == ing.Path(sys.argv[2]) / "docs.parquet":
                os.kill(os.getpid(), signal.SIGKILL)
    ing.atomic_path = atomic_path
else:  # after the merge: store.json written, the parts not yet deleted
    orig = ing.shutil.rmtree
    def rmtree(path, ignore_errors=False):
        if path == ing.Path(sys.argv[2]) / "parts":
            os.kill(os.getpid(), signal.SIGKILL)
        orig(path, ignore_errors=ignore_errors)
    ing.shutil.rmtree = rmtree
ing.ingest([sys.argv[1]], sys.argv[2], sys.argv[3], field_map=%r, workers=1, batch_size=7)
""" % (FMAP,)


@pytest.mark.parametrize("where", ["merge", "after-merge"])
def test_a_kill_in_or_after_the_merge_leaves_nothing_behind_after_the_rerun(clean, corpus, tok_path, tmp_path, where):
    script, out = tmp_path / "killer.py", tmp_path / "s"
    script.write_text(MERGE_KILLER)
    env = {**os.environ, "THRESHER_NO_PROGRESS": "1"}
    r = subprocess.run([sys.executable, str(script), str(corpus["dir"]), str(out), str(tok_path), where], env=env)
    assert r.returncode == -9 and (out / "parts").is_dir()
    assert (where == "merge") == any(p.name.endswith(".tmp") for p in out.iterdir())
    ingest([str(corpus["dir"])], out, str(tok_path), field_map=FMAP, workers=1, batch_size=7)
    assert_same_store(clean[0], out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in clean[0].iterdir())  # no temp, no parts


STUCK = CTRL_C_CHILD + """
import os, sys, time
import thresher.corpus.ingest as ing
def add(self, docs, ids):  # a shard that takes forever; marks that a worker is in it
    open(os.path.join(os.environ["MARKS"], str(os.getpid())), "w").close()
    time.sleep(3600)
ing.PartWriter.add = add  # the spawned workers import this script too (as __mp_main__)
if __name__ == "__main__":
    ing.ingest([sys.argv[1]], sys.argv[2], sys.argv[3], field_map=%r, workers=2, batch_size=7)
""" % (FMAP,)


def _start_stuck_ingest(corpus, tok_path, tmp_path, **popen):
    """A 2-worker ingest whose workers never finish a shard: (process, output folder, worker PIDs)."""
    script, out = tmp_path / "stuck.py", tmp_path / "s"
    script.write_text(STUCK)
    p, workers = start_stuck(script, [str(corpus["dir"]), str(out), str(tok_path)], tmp_path / "marks", **popen)
    return p, out, workers


def test_a_kill_of_the_main_process_ends_the_workers_and_a_rerun_resumes(clean, corpus, tok_path, tmp_path):
    p, out, workers = _start_stuck_ingest(corpus, tok_path, tmp_path)
    kill_main_only(p, workers)
    ingest([str(corpus["dir"])], out, str(tok_path), field_map=FMAP, workers=1, batch_size=7)
    assert_same_store(clean[0], out)


def test_ctrl_c_stops_a_parallel_ingest_at_once_and_a_rerun_resumes(clean, corpus, tok_path, tmp_path):
    p, out, _ = _start_stuck_ingest(corpus, tok_path, tmp_path, stderr=subprocess.PIPE, text=True)
    err = ctrl_c(p)
    assert p.returncode == -signal.SIGINT and err.rstrip().endswith("KeyboardInterrupt"), err[-2000:]
    assert not (out / "store.json").exists()
    ingest([str(corpus["dir"])], out, str(tok_path), field_map=FMAP, workers=2, batch_size=7)
    assert_same_store(clean[0], out)


def test_settings_mismatch_is_refused_and_complete_store_is_kept(clean, corpus, tok_path, tmp_path):
    out = tmp_path / "s"
    ingest([str(corpus["dir"])], out, str(tok_path), field_map=FMAP, workers=1)
    mtime = (out / "tokens.bin").stat().st_mtime_ns
    again = ingest([str(corpus["dir"])], out, str(tok_path), field_map=FMAP, workers=1)
    assert again["n_docs"] == clean[1]["n_docs"] and (out / "tokens.bin").stat().st_mtime_ns == mtime
    with pytest.raises(SettingsMismatchError, match="field_map"):
        ingest([str(corpus["dir"])], out, str(tok_path), field_map={"domain": "domain"}, workers=1)
    stats = ingest([str(corpus["dir"])], out, str(tok_path), field_map={"domain": "domain"}, workers=1, resume=False)
    assert TokenStore.open(out).columns[-1] == "domain" and stats["n_docs"] == clean[1]["n_docs"]


def test_bad_input_is_counted_and_excluded_not_fatal(tok_path, tmp_path):
    good = make_records(6, 3, "g")
    lines = [json.dumps(r).encode() for r in good[:3]] + [b'{"text": "broken', b'{"text": "\xff"}', b'{"text": ""}',
             b'{"id": 1}', b'{"text": 3}'] + [json.dumps(r).encode() for r in good[3:]]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines)))
    stats = ingest([str(tmp_path / "in")], tmp_path / "s", str(tok_path), workers=1)
    assert stats["n_docs"] == 6 and stats["n_excluded"] == 5
    assert stats["excluded"] == {"malformed_json": 1, "invalid_utf8": 1, "empty_text": 1, "missing_text": 1,
                                 "text_not_string": 1}
    excl = [json.loads(l) for l in (tmp_path / "s" / "exclusions.jsonl").read_text().splitlines()]
    assert [(e["index"], e["reason"]) for e in excl] == [
        (3, "malformed_json"), (4, "invalid_utf8"), (5, "empty_text"), (6, "missing_text"), (7, "text_not_string")]
    store = TokenStore.open(tmp_path / "s")
    assert store.column("source_index").tolist() == [0, 1, 2, 8, 9, 10]
    assert store.texts(range(6)) == [r["text"] for r in good]


def _error(match, *args, **kw):
    with pytest.raises(ThresherError) as e:
        ingest(*args, workers=1, **kw)
    assert "\n" not in str(e.value) and all(m in str(e.value) for m in match), str(e.value)


def test_clear_one_line_errors(corpus, tok_path, tmp_path):
    _error(["input not found", "nope.jsonl"], [str(tmp_path / "nope.jsonl")], tmp_path / "s1", str(tok_path))
    _error(["no files match"], [str(tmp_path / "*.parquet")], tmp_path / "s2", str(tok_path))
    _error(["text field 'body'"], corpus["shards"], tmp_path / "s3", str(tok_path), text_field="body")
    _error(["mapped field 'dom'"], corpus["shards"], tmp_path / "s4", str(tok_path), field_map={"d": "dom"})
    _error(["clashes"], corpus["shards"], tmp_path / "s5", str(tok_path), field_map={"doc_id": "id"})
    write_jsonl(tmp_path / "bad.jsonl", [{"text": " "}, {"text": None}])
    _error(["empty corpus", "2 records excluded"], [str(tmp_path / "bad.jsonl")], tmp_path / "s6", str(tok_path))


def test_out_dir_that_is_a_file_is_a_clear_error(corpus, tok_path, tmp_path):
    (tmp_path / "afile").write_text("keep me")
    _error(["afile is a file, not a folder"], corpus["shards"], tmp_path / "afile", str(tok_path))
    _error(["afile is a file, not a folder"], corpus["shards"], tmp_path / "afile" / "store", str(tok_path))
    assert (tmp_path / "afile").read_text() == "keep me"


def test_uint32_for_a_large_vocabulary(tmp_path):
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.uint32
    vocab = {"<|endoftext|>": 0, "<unk>": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "tok.json"))
    texts = ["w69999 w5 w65534", "w65535 w0", "zzz w1"]
    write_jsonl(tmp_path / "x.jsonl", [{"text": t} for t in texts])
    ingest([str(tmp_path / "x.jsonl")], tmp_path / "s", str(tmp_path / "tok.json"), workers=1)
    store = TokenStore.open(tmp_path / "s")
    assert store.dtype == np.uint32 and store.eos_id == store.pad_id == 0
    assert [d.tolist() for d in store.docs(range(3))] == [[70001, 7, 65536], [65537, 2], [1, 3]]


def test_mixed_metadata_types_become_strings(tok_path, tmp_path):
    a, b = make_records(3, 0, "a"), make_records(3, 1, "b")
    for r in b:
        r["meta"]["score"] = f"s{r['meta']['score']}"
    write_jsonl(tmp_path / "1.jsonl", a), write_jsonl(tmp_path / "2.jsonl", b)
    ingest([str(tmp_path / "1.jsonl"), str(tmp_path / "2.jsonl")], tmp_path / "s", str(tok_path),
           field_map={"score": "meta.score", "deep": "meta.deep"}, workers=1)
    store = TokenStore.open(tmp_path / "s")
    assert store.column("score").tolist() == [str(r["meta"]["score"]) for r in a + b]
    assert [json.loads(x) for x in store.column("deep")] == [r["meta"]["deep"] for r in a + b]


@pytest.mark.shared_data
def test_shared_pool_shard_with_json_meta(tok_path, tmp_path):
    shard = SHARED / "pool" / "CommonCrawl" / "commoncrawl_samples.parquet"
    if not shard.is_file():
        pytest.skip(f"shared data not found at {SHARED}")
    expected = json.loads((SHARED / "pool" / "STATS.json").read_text())["CommonCrawl"]["docs"]
    fmap = {"domain": "domain", "rp": "meta.redpajama_set_name", "quality": "meta.quality_label"}
    stats = ingest([str(shard)], tmp_path / "s", str(tok_path), field_map=fmap, workers=1)
    store = TokenStore.open(tmp_path / "s")
    assert stats["n_docs"] + stats["n_excluded"] == expected
    assert set(store.column("domain")) == {"CommonCrawl"}
    import pyarrow.parquet as pq

    src = pq.read_table(shard, columns=["meta"]).column(0).to_pylist()
    idx = store.column("source_index")
    assert store.column("quality").tolist() == [json.loads(src[i]).get("quality_label") for i in idx]


def test_a_shard_whose_column_is_all_null_takes_the_other_shards_type(tok_path, tmp_path):
    """Before: the all-null shard's part typed the column as string, and the merge made every value a string."""
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"hello world {i}", "meta": {"q": i % 3}}) + "\n"
                                              for i in range(6)))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": f"bye world {i}", "meta": {"q": None}}) + "\n"
                                              for i in range(4)))
    ingest([str(tmp_path / "b.jsonl"), str(tmp_path / "a.jsonl")], tmp_path / "s", str(tok_path),
           field_map={"q": "meta.q"}, workers=1)
    assert str(pq.read_schema(tmp_path / "s" / "docs.parquet").field("q").type) == "int64"
    assert TokenStore.open(tmp_path / "s").column("q").tolist() == [None] * 4 + [0, 1, 2, 0, 1, 2]
    ingest([str(tmp_path / "b.jsonl")], tmp_path / "only_null", str(tok_path), field_map={"q": "meta.q"}, workers=1)
    assert str(pq.read_schema(tmp_path / "only_null" / "docs.parquet").field("q").type) == "string"  # as before


def test_the_progress_bar_counts_the_shards_its_documents_come_from(monkeypatch, capsys):
    """The bar's docs/tokens are those of the shards it counts: a log showed 'ingest: 0/7 shards, docs=5600'
    once every shard was done (the postfix was drawn before tqdm counted the shard)."""
    import re

    monkeypatch.delenv("THRESHER_NO_PROGRESS", raising=False)
    ing._collect(iter([{"docs": 10, "tokens": 100}] * 3), 3)
    shown = re.findall(r"(\d)/3 \[[^\]]*docs=(\d+)", capsys.readouterr().err)
    assert shown and shown[-1] == ("3", "30")
    assert all(int(docs) == 10 * int(n) for n, docs in shown)
