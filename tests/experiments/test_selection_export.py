"""`thresher selection`: a run's saved D_k as Parquet, row for row the run's selection with the token store's
metadata, the label table's labels and the decoded text; reruns resume; bad input is one line."""

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from run_helpers import cli_run as _main, tiny_demo_run

from thresher.corpus.store import TokenStore
from thresher.agents.base import selection_digest
from thresher.evaluate.report import read_jsonl
from thresher.evaluate.selection import export_selection, take_rows
from thresher.labels.table import LabelTable
from thresher.utils.errors import ThresherError
from thresher.utils.io import atomic_write_jsonl


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return tiny_demo_run(tmp_path_factory.mktemp("selection"), "multi-agent", n_docs=1200, seed=1,
                         reference_max_examples=40)


def test_every_stage_exports_its_selection_with_sources_labels_and_text(tiny_run, tmp_path, monkeypatch, capsys):
    """Each file holds exactly its stage's saved D_k (doc ids sorted; position gives the selector's order back),
    with docs.parquet's row of each document, its labels as names and its text as the store decodes it."""
    out, rc = tiny_run
    code, printed, err = _main(monkeypatch, capsys, "selection", out, "--out", tmp_path / "x", "--stages", "all",
                               "--text")
    assert code == 0, err
    log = read_jsonl(out / "selector_log.jsonl")
    assert [e["step"] for e in log] == [0, 12]
    store, table = TokenStore.open(rc.data.store), LabelTable.open(rc.data.labels)
    meta = store.table().to_pandas()
    for e in log:
        got = pq.read_table(tmp_path / "x" / f"step_{e['step']:06d}.parquet").to_pandas()
        chosen = np.load(out / e["selection_file"])
        np.testing.assert_array_equal(got["doc_id"], np.sort(chosen))
        np.testing.assert_array_equal(chosen[got["position"]], got["doc_id"])  # position: place in the selector's order
        assert (got["step"] == e["step"]).all()
        for col in store.columns:
            assert got[col].tolist() == meta[col].iloc[got["doc_id"]].tolist(), col
        for col in table.columns:
            if table.kind(col) == "category":
                names, codes = table.categories(col), table.codes(col)[got["doc_id"]]
                assert got[f"label_{col}"].tolist() == [names[c] if c >= 0 else None for c in codes], col
            elif table.kind(col) == "float":
                np.testing.assert_array_equal(got[f"label_{col}"].to_numpy(np.float32),
                                              table.column(col)[got["doc_id"]])
        assert "label_embedding" not in got
        assert got["text"].tolist() == store.texts(got["doc_id"].to_numpy())
        tokens = int(store.lengths[chosen].sum())
        assert f"step {e['step']}: {len(chosen):,} documents, {tokens:,} tokens" in printed


def test_last_is_the_final_stage_and_a_rerun_skips_what_is_written(tiny_run, tmp_path):
    out, _ = tiny_run
    first = export_selection(out, tmp_path, with_labels=False)
    assert [(r["step"], r["skipped"]) for r in first] == [(12, False)]
    path = Path(first[0]["file"])
    stamp = path.stat().st_mtime_ns
    again = export_selection(out, tmp_path, stages="0,12", with_labels=False)
    assert [(r["step"], r["skipped"]) for r in again] == [(0, False), (12, True)]
    assert path.stat().st_mtime_ns == stamp and again[1]["rows"] == first[0]["rows"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp file left
    with pytest.raises(ThresherError, match="exported with another labels, text"):
        export_selection(out, tmp_path, text=True)  # other options never write over an export


@pytest.mark.parametrize("stages, match", [("7", "saved selections at steps 0, 12; not at 7"),
                                           ("last,x", "give last, all or comma-separated steps"),
                                           (",", "not at none given")])
def test_stages_that_the_run_does_not_have_are_one_line(tiny_run, tmp_path, monkeypatch, capsys, stages, match):
    out, _ = tiny_run
    code, _, err = _main(monkeypatch, capsys, "selection", out, "--out", tmp_path, "--stages", stages)
    assert code != 0 and match in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_a_selection_that_is_not_the_runs_or_a_file_in_the_way_is_refused(tiny_run, tmp_path):
    out, _ = tiny_run
    (tmp_path / "step_000012.parquet").write_text("mine")
    with pytest.raises(ThresherError, match="not a thresher selection export"):
        export_selection(out, tmp_path, with_labels=False)
    assert (tmp_path / "step_000012.parquet").read_text() == "mine"
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("config.toml", "selector_log.jsonl"):
        (copy / name).write_bytes((out / name).read_bytes())
    (copy / "selections").mkdir()
    for f in (out / "selections").iterdir():
        ids = np.load(f)
        # the same ids, reordered: the digest tells
        np.save(copy / "selections" / f.name, ids[::-1] if f.name.endswith("000012.npy") else ids)
    with pytest.raises(ThresherError, match="does not hash to the log's step-12 selection_sha1"):
        export_selection(copy, tmp_path / "y", stages="12", with_labels=False)
    assert not (tmp_path / "y" / "step_000012.parquet").exists()
    # a policy may give D_k in any order (the built-in ones sort it): rows stay sorted, position keeps the order
    log = read_jsonl(copy / "selector_log.jsonl")
    log[-1]["selection_sha1"] = selection_digest(np.load(copy / log[-1]["selection_file"]))
    atomic_write_jsonl(copy / "selector_log.jsonl", log)
    got = pq.read_table(export_selection(copy, tmp_path / "y", stages="12", with_labels=False)[0]["file"])
    n = got.num_rows
    assert got.column("position").to_pylist() == list(range(n - 1, -1, -1))
    assert np.all(np.diff(got.column("doc_id").to_numpy()) > 0)


def test_take_rows_reads_row_groups_and_checks_the_doc_ids(tmp_path):
    """Across many row groups, against plain indexing; a file whose rows are not in doc order is refused."""
    n = 1000
    t = pa.table({"doc_id": np.arange(n), "x": np.arange(n) * 3.0, "s": [f"d{i}" for i in range(n)]})
    pq.write_table(t, tmp_path / "a.parquet", row_group_size=64)
    ids = np.unique(np.random.default_rng(0).integers(0, n, 300))
    got = take_rows(tmp_path / "a.parquet", ["x", "s"], ids)
    assert got.column("x").to_pylist() == (ids * 3.0).tolist() and got.column("s").to_pylist() == [f"d{i}" for i in ids]
    assert take_rows(tmp_path / "a.parquet", ["x"], np.array([], dtype=np.int64)).num_rows == 0
    pq.write_table(t.take(np.r_[1:n, 0]), tmp_path / "b.parquet", row_group_size=64)
    with pytest.raises(ThresherError, match="row i is not doc i"):
        take_rows(tmp_path / "b.parquet", ["x"], ids)
    with pytest.raises(ThresherError, match="has 1000 rows; the selection names doc 1000"):
        take_rows(tmp_path / "a.parquet", ["x"], np.array([5, n]))
