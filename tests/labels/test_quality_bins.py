"""label.quality_bins: equal-count bins of the pool's quality scores (labels/bins.py), by hand and in a label job."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.labels import InMemorySource, LabelTable, run_labelers
from thresher.labels.bins import QuantileBins, assign_bins, bin_names, quantile_edges
from thresher.labels.config import LabelConfig
from thresher.labels.domain import DomainLabeler
from thresher.labels.quality import RuleQualityLabeler
from thresher.labels.synthetic import SyntheticLabeler
from thresher.utils.errors import SettingsMismatchError, ThresherError


def test_ten_distinct_scores_in_five_bins_by_hand():
    s = np.array([9, 0, 8, 1, 7, 2, 6, 3, 5, 4], dtype=np.float64)
    edges = quantile_edges(s, 5)  # sorted ranks floor(i * 10 / 5) = 2, 4, 6, 8 -> the scores 2, 4, 6, 8
    np.testing.assert_array_equal(edges, [2, 4, 6, 8])
    np.testing.assert_array_equal(assign_bins(s, edges), [4, 0, 4, 0, 3, 1, 3, 1, 2, 2])
    assert bin_names(edges, 0.0, 9.0) == ["q1 [0,2)", "q2 [2,4)", "q3 [4,6)", "q4 [6,8)", "q5 [8,9]"]


def test_uneven_counts_differ_by_at_most_one_and_nan_is_missing():
    s = np.array([0.5, np.nan, 0.1, 0.9, 0.3, 0.7, 0.2, 0.4])  # 7 scores, 3 bins: ranks 2, 4 -> 0.3, 0.5
    edges = quantile_edges(s, 3)
    np.testing.assert_array_equal(edges, [0.3, 0.5])
    codes = assign_bins(s, edges)
    np.testing.assert_array_equal(codes, [2, -1, 0, 2, 1, 2, 0, 1])
    assert codes.dtype == np.int16 and sorted(np.bincount(codes[codes >= 0]).tolist()) == [2, 2, 3]
    np.testing.assert_array_equal(assign_bins(s, edges, chunk=3), codes)  # in chunks: the same
    s32 = s.astype(np.float32)  # a label table's dtype: cut points are its own values, compared exactly
    assert quantile_edges(s32, 3).dtype == np.float32
    np.testing.assert_array_equal(assign_bins(s32, quantile_edges(s32, 3), chunk=2), codes)


def test_tied_scores_share_a_bin_and_no_bin_is_empty():
    s = np.array([4.75] * 6 + [3.0, 4.0, 5.0, 5.0])  # ranks 2, 4, 6, 8 of 3, 4, 4.75 x6, 5, 5 -> 4.75, 4.75, 4.75, 5
    edges = quantile_edges(s, 5)
    np.testing.assert_array_equal(edges, [4.75, 5.0])
    codes = assign_bins(s, edges)
    assert np.bincount(codes).tolist() == [2, 6, 2]  # three bins, each non-empty, every 4.75 in one
    assert len(quantile_edges(np.full(5, 2.0), 4)) == 0  # all equal: one bin
    # a run of ties across the rank: the cut goes to its nearer end (rank 5; the run of 2s is ranks 1..6)
    s = np.array([1, 2, 2, 2, 2, 2, 2, 3, 4, 5], dtype=np.float64)
    np.testing.assert_array_equal(quantile_edges(s, 2), [3.0])  # after the run: 7 and 3, not 1 and 9
    assert np.bincount(assign_bins(s, quantile_edges(s, 2))).tolist() == [7, 3]
    s = np.array([1, 2, 3, 4, 4, 4, 4, 4, 4, 5], dtype=np.float64)  # rank 5 in the run 3..8 of 4s: cut before it
    np.testing.assert_array_equal(quantile_edges(s, 2), [4.0])
    np.testing.assert_array_equal(quantile_edges(np.array([1.0] + [2.0] * 9), 10), [2.0])  # no larger score: before
    with pytest.raises(ThresherError, match="no document has a quality_score"):
        quantile_edges(np.full(3, np.nan), 2)


@pytest.mark.parametrize("bins", [1, -1])
def test_a_bin_count_below_two_is_refused(bins):
    with pytest.raises(ThresherError, match="quality_bins"):
        LabelConfig(quality_bins=bins)
    with pytest.raises(ThresherError, match="quality_bins"):
        QuantileBins(bins)


def _source(docs):
    n = len(docs)
    meta = {"domain": ["Wikipedia"] * n, "topic": [0] * n, "quality": np.linspace(0, 5, n).tolist()}
    return InMemorySource(docs, meta)


def test_a_label_job_writes_the_bins_of_its_quality_scores_and_a_rerun_keeps_them(tmp_path, docs):
    out = tmp_path / "labels"
    table = run_labelers(_source(docs), [DomainLabeler(), RuleQualityLabeler()], out, shard_size=7, quality_bins=4)
    score = table.column("quality_score")
    edges = quantile_edges(score, 4)
    np.testing.assert_array_equal(table.codes("quality_bin"), assign_bins(score, edges))
    assert (table.codes("quality_bin")[np.isnan(score)] == -1).all() and np.isnan(score).sum() == 2  # the empty docs
    prov = table.provenance("quality_bin")
    assert prov["edges"] == edges.tolist() and prov["quality_score"] == table.provenance("quality_score")
    assert table.categories("quality_bin")[0].startswith("q1 [") and len(table.categories("quality_bin")) == len(edges) + 1
    mtime = (out / "quality_bin.codes.npy").stat().st_mtime_ns
    again = run_labelers(_source(docs), [RuleQualityLabeler()], out, shard_size=7, quality_bins=4)
    assert (out / "quality_bin.codes.npy").stat().st_mtime_ns == mtime  # up to date: not rewritten
    assert again.columns == table.columns
    labels = again.to_agent_labels({"quality": "quality_bin"})  # what data.label_columns.quality selects
    assert labels.categories["quality"] == table.categories("quality_bin")


def test_bins_of_an_existing_table_other_bins_and_stale_bins(tmp_path, docs):
    out = tmp_path / "labels"
    run_labelers(_source(docs), [RuleQualityLabeler()], out, shard_size=7)
    added = run_labelers(_source(docs), [RuleQualityLabeler()], out, shard_size=7, quality_bins=3)  # table up to date
    assert "quality_bin" in added.columns
    with pytest.raises(SettingsMismatchError, match="'quality_bin' .* other settings"):
        run_labelers(_source(docs), [RuleQualityLabeler()], out, shard_size=7, quality_bins=2)
    other = SyntheticLabeler(quality_noise=0.5, seed=1, prefix="")  # writes quality_score under other settings
    with pytest.raises(ThresherError, match=r"replacing 'quality_score' would leave \['quality_bin'\] computed from"):
        run_labelers(_source(docs), [other], out, shard_size=7, replace=True)
    redone = run_labelers(_source(docs), [other], out, shard_size=7, replace=True, quality_bins=3)
    score = redone.column("quality_score")
    np.testing.assert_array_equal(redone.codes("quality_bin"), assign_bins(score, quantile_edges(score, 3)))
    assert redone.provenance("quality_bin")["quality_score"]["labeler"] == "SyntheticLabeler"


def test_bins_without_quality_scores_are_refused_before_any_labelling(tmp_path, docs):
    with pytest.raises(ThresherError, match="add a quality labeler"):
        run_labelers(_source(docs), [DomainLabeler()], tmp_path / "labels", quality_bins=5)
    assert not (tmp_path / "labels").exists() or not LabelTable.exists(tmp_path / "labels")


def test_stats_of_the_bins_from_the_command_line(tmp_path, docs, monkeypatch, capsys):
    import sys

    from thresher import cli

    out = tmp_path / "labels"
    table = run_labelers(_source(docs), [DomainLabeler(), RuleQualityLabeler()], out, quality_bins=3)
    monkeypatch.setattr(sys, "argv", ["thresher", "stats", str(out), "--out", str(tmp_path / "s"), "--quality", "quality_bin"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 0 and "figure1: not written (it needs quality_bin, domain and topic" in capsys.readouterr().out
    md = (tmp_path / "s" / "stats.md").read_text()
    codes = np.asarray(table.codes("quality_bin"))
    counts = np.bincount(codes[codes >= 0], minlength=len(table.categories("quality_bin")))
    assert "## quality_bin per domain (counts)" in md and (tmp_path / "s" / "quality_bin_by_domain.png").exists()
    assert "| Wikipedia | " + " | ".join(map(str, counts)) + " |" in md  # one domain: its row is every bin's count
