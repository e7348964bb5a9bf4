from dataclasses import dataclass, field
from typing import Optional

import pytest

from thresher.utils.errors import ThresherError
from thresher.utils.tomlio import apply_overrides, dumps, from_dict, load_config, save_config


@dataclass
class Inner:
    lr: float = 1e-3
    names: list = field(default_factory=lambda: ["a", "b"])
    weights: dict = field(default_factory=lambda: {"x": 0.5, "y z": 1.5})


@dataclass
class Outer:
    seed: int = 0
    out: str = "runs/x"
    flag: bool = False
    maybe: Optional[int] = None
    inner: Inner = field(default_factory=Inner)


def test_round_trip_through_toml(tmp_path):
    cfg = Outer(seed=3, flag=True, maybe=7, inner=Inner(lr=0.25, names=["q"], weights={"k": 2.0}))
    save_config(cfg, tmp_path / "c.toml")
    assert load_config(Outer, tmp_path / "c.toml") == cfg


def test_none_means_default_and_is_omitted():
    assert "maybe" not in dumps(Outer())
    assert from_dict(Outer, {}) == Outer()


def test_overrides_parse_values():
    data = apply_overrides({}, ["seed=5", "inner.lr=0.5", "inner.names=['u', 'v']", "out=somewhere", "flag=true"])
    cfg = from_dict(Outer, data)
    assert (cfg.seed, cfg.inner.lr, cfg.inner.names, cfg.out, cfg.flag) == (5, 0.5, ["u", "v"], "somewhere", True)


def test_unknown_key_is_a_clear_error():
    with pytest.raises(ThresherError, match="inner.lrr"):
        from_dict(Outer, {"inner": {"lrr": 1}})


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ThresherError, match="key=value"):
        apply_overrides({}, ["seed"])
    with pytest.raises(ThresherError, match="not found"):
        load_config(Outer, tmp_path / "nope.toml")
