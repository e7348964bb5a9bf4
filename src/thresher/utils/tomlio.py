"""Dataclass config trees <-> TOML, with dotted CLI overrides (``train.steps=200``).

Only plain field types are supported (bool, int, float, str, list, dict, Optional[...] and nested
dataclasses), which is what every component config uses; that keeps the files readable and diffable.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

from thresher.utils.errors import ThresherError
from thresher.utils.io import atomic_write_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def differences(old: dict, new: dict, where: str = "") -> list[str]:
    """``key = old there, new now`` for every dotted key whose values differ (JSON-equal values are equal)."""
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{where}{k}.")
        elif a != b:
            out.append(f"{where}{k} = {a!r} there, {b!r} now")
    return out


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build ``cls`` from a (possibly partial) dict. Unknown keys and values of the wrong type are errors
    that name the dotted key (``where`` is the dotted name of the table ``data`` is, "" for the top)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ThresherError(f"unknown config key(s) {', '.join(_join(where, k) for k in unknown)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _checked(hints[f.name], data[f.name], _join(where, f.name))
    return cls(**kwargs)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a table"}


def _checked(tp: Any, value: Any, key: str) -> Any:
    """``value`` if it has type ``tp`` (an int where a float is expected becomes a float; a table for a
    nested dataclass becomes one), else a ThresherError naming ``key``."""
    if value is None and _unwrap_optional(tp) is not tp:
        return None
    tp = _unwrap_optional(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ThresherError(f"config key {key} = {value!r}: expected a table of {key} settings")
        return from_dict(tp, value, key)
    origin = typing.get_origin(tp) or tp
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str), list: lambda v: isinstance(v, list),
          dict: lambda v: isinstance(v, dict)}.get(origin)
    if ok is None:  # a type this module does not check (Any, unions of several types)
        return value
    if not ok(value):
        hint = ""
        if isinstance(value, str) and value.lstrip()[:1] == {list: "[", dict: "{"}.get(origin):  # unparsable --set list/table
            hint = (" (a --set value is parsed as TOML: quote strings inside it, e.g. "
                    + ("key='[\"a\", \"b\"]'" if origin is list else "key='{a = 1, b = 2}'") + ")")
        raise ThresherError(f"config key {key} = {value!r}: expected {_EXPECTED[origin]}{hint}")
    args = typing.get_args(tp)
    if origin is list and args:
        return [_checked(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict and len(args) == 2:
        return {k: _checked(args[1], v, _join(key, k)) for k, v in value.items()}
    return float(value) if origin is float else value


def _unwrap_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ThresherError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ThresherError(f"invalid TOML in {path}: {e}") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``a.b.c=value``; the value is parsed as TOML/JSON when possible (numbers, bools, lists), else a string."""
    for item in overrides:
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        if "=" not in item or not all(p.strip() for p in parts):
            raise ThresherError(f"override '{item}' must look like key=value or section.key=value")
        parts = [p.strip() for p in parts]
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ThresherError(f"override '{item}': '{p}' is not a section")
        node[parts[-1]] = _parse_value(raw.strip())
    return data


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    data = load_toml(path) if path else {}
    return from_dict(cls, apply_overrides(data, overrides or []))


def dumps(cfg: Any) -> str:
    """TOML text for a dataclass tree (None values are omitted: they mean 'default')."""
    return _dump_table(to_dict(cfg), prefix="")


def save_config(cfg: Any, path: str | Path) -> None:
    atomic_write_text(path, dumps(cfg))


def _dump_table(d: dict, prefix: str) -> str:
    lines, tables = [], []
    for k, v in d.items():
        if v is None:
            continue
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        name = f"{prefix}{_key(k)}"
        out += f"\n[{name}]\n" + _dump_table(v, name + ".")
    return out


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise ThresherError(f"cannot write {type(v).__name__} to TOML")
