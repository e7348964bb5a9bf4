"""LabelConfig checks that must fail up front, with one clear line."""

from __future__ import annotations

import sys

import pytest

from thresher import cli
from thresher.labels.config import LabelConfig, build_labelers
from thresher.utils.errors import ThresherError


@pytest.mark.parametrize("given", [",", ""])  # "" must not fall back to the default (model) labelers
def test_no_labelers_is_a_clear_error(tmp_path, monkeypatch, capsys, given):
    with pytest.raises(ThresherError, match="no labelers given"):
        build_labelers(LabelConfig(labelers=[]))
    out = tmp_path / "labels"
    monkeypatch.setattr(sys, "argv", ["thresher", "label", str(tmp_path / "store"), "--out", str(out), "--labelers", given])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: no labelers given") and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("key", ["batch_size", "model_batch_size", "shard_size", "workers"])
def test_sizes_below_one_are_refused(key):
    with pytest.raises(ThresherError, match=f"label.{key}"):
        LabelConfig(**{key: 0})


def test_negative_kmeans_k_is_refused():
    with pytest.raises(ThresherError, match="label.kmeans_k = -3"):
        LabelConfig(kmeans_k=-3)
    assert LabelConfig(kmeans_k=0).kmeans_k == 0


def test_auto_domain_names_label_a_corpus_with_its_own_domains(tmp_path):
    from thresher.labels.base import InMemorySource
    from thresher.labels.config import run_from_config
    from thresher.labels.table import LabelTable

    vals = ["Pile-CC", "FreeLaw", "pile-cc", "Github", None, "Pile-CC", "Github"]
    src = InMemorySource([f"doc {i}" for i in range(len(vals))], {"domain": vals})
    table = run_from_config(src, LabelConfig(labelers=["domain"], domain_names=["auto"]), tmp_path / "labels")
    assert table.categories("domain") == ["Pile-CC", "Github", "FreeLaw"]
    assert table.codes("domain").tolist() == [0, 2, 0, 1, -1, 0, 1]
    assert table.provenance("domain")["settings"] == {"field": "domain", "names": ["Pile-CC", "Github", "FreeLaw"]}
    labels = table.to_agent_labels(["domain"])
    assert labels.categories["domain"] == ["Pile-CC", "Github", "FreeLaw"]
    # the same source gives the same names, so a rerun resumes instead of refusing other settings
    again = run_from_config(src, LabelConfig(labelers=["domain"], domain_names=["auto"]), tmp_path / "labels")
    assert again.codes("domain").tolist() == table.codes("domain").tolist()
    with pytest.raises(ThresherError, match="needs a document source"):
        build_labelers(LabelConfig(labelers=["domain"], domain_names=["auto"]))


def test_cli_domain_names_reach_the_label_config(tmp_path, monkeypatch):
    import thresher.labels.config as lc

    seen = {}

    def fake_run(source, cfg, out):
        seen["names"] = cfg.domain_names
        raise SystemExit(0)

    monkeypatch.setattr(lc, "run_from_config", fake_run)
    monkeypatch.setattr(sys, "argv", ["thresher", "label", str(tmp_path / "store"), "--out", str(tmp_path / "l"),
                                      "--labelers", "domain", "--domain-names", "Pile-CC, Github,FreeLaw"])
    with pytest.raises(SystemExit):
        cli.main()
    assert seen["names"] == ["Pile-CC", "Github", "FreeLaw"]


def test_embed_max_length_reaches_the_sentence_embedders():
    from thresher.labels.embed import EmbedLabeler
    from thresher.labels.topic import ZeroShotTopicLabeler

    emb, topic = build_labelers(LabelConfig(labelers=["embed", "topic_zeroshot"], embed_max_length=64))
    assert isinstance(emb, EmbedLabeler) and isinstance(topic, ZeroShotTopicLabeler)
    assert emb.embedder.max_seq_length == 64 and topic.embedder.max_seq_length == 64
    with pytest.raises(ThresherError, match="label.embed_max_length"):
        LabelConfig(embed_max_length=0)


def test_a_default_agent_column_the_table_lacks_is_skipped(tmp_path):
    """data.label_columns says absent columns are skipped: a table without 'topic' (the default topic column)
    must give the other agents' labels, not a 'has no column' error."""
    from thresher.config import RunConfig
    from thresher.experiments.run import agent_labels
    from thresher.labels.base import InMemorySource
    from thresher.labels.config import run_from_config

    src = InMemorySource([f"doc {i}" for i in range(4)], {"domain": ["C4", "GitHub", "C4", "Books"]})
    table = run_from_config(src, LabelConfig(labelers=["domain"]), tmp_path / "labels")
    labels = agent_labels(RunConfig(), table)
    assert set(labels.codes) == {"domain"}
