"""LabelConfig checks that must fail up front, with one clear line."""

from __future__ import annotations

import sys

import pytest

from thresher import cli
from thresher.labels.config import LabelConfig, build_labelers
from thresher.utils.errors import ThresherError


def test_no_labelers_is_a_clear_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(ThresherError, match="no labelers given"):
        build_labelers(LabelConfig(labelers=[]))
    out = tmp_path / "labels"
    monkeypatch.setattr(sys, "argv", ["thresher", "label", str(tmp_path / "store"), "--out", str(out), "--labelers", ","])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: no labelers given") and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("key", ["batch_size", "model_batch_size", "shard_size", "workers"])
def test_sizes_below_one_are_refused(key):
    with pytest.raises(ThresherError, match=f"label.{key}"):
        LabelConfig(**{key: 0})
