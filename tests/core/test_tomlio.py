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


@dataclass
class Typed:
    steps: int = 1
    lr: float = 0.5
    name: str = "a"
    flag: bool = False
    budget: Optional[int] = None
    seeds: list[int] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)


@pytest.mark.parametrize("override, message", [
    ("steps=abc", "config key steps = 'abc': expected an integer"),
    ("steps=2.5", "config key steps = 2.5: expected an integer"),
    ("steps=true", "config key steps = True: expected an integer"),
    ("lr=fast", "config key lr = 'fast': expected a number"),
    ("name=3", "config key name = 3: expected a string"),
    ("flag=1", "config key flag = 1: expected true or false"),
    ("budget=x", "config key budget = 'x': expected an integer"),
    ("seeds=[0, 'a']", r"config key seeds\[1\] = 'a': expected an integer"),
    ("seeds=3", "config key seeds = 3: expected a list"),
    ("paths={a = 1}", "config key paths.a = 1: expected a string"),
    ('paths="x.jsonl"', "config key paths = 'x.jsonl': expected a table"),
    ("inner=5", "config key inner = 5: expected a table of inner settings"),
    ("inner.lr=[1]", r"config key inner.lr = \[1\]: expected a number"),
    ("inner.names={}", "config key inner.names = {}: expected a list"),
])
def test_values_of_the_wrong_type_name_the_dotted_key(override, message):
    with pytest.raises(ThresherError, match=f"^{message}$"):
        load_config(Typed, None, [override])


def test_an_int_where_a_float_is_expected_becomes_a_float():
    cfg = load_config(Typed, None, ["lr=3", "budget=7", "seeds=[1, 2]", "paths={a = 'b'}"])
    assert type(cfg.lr) is float and cfg.lr == 3.0
    assert (cfg.budget, cfg.seeds, cfg.paths) == (7, [1, 2], {"a": "b"})
    assert from_dict(Typed, {"budget": None}).budget is None


def test_unknown_nested_key_is_named_with_its_dots():
    with pytest.raises(ThresherError, match=r"unknown config key\(s\) top.inner.lrr$"):
        from_dict(Outer, {"inner": {"lrr": 1}}, "top")
