"""docs/config.md is what the config dataclasses say, and it covers every user-facing config class."""

import ast
from pathlib import Path

from thresher.utils.configdoc import SECTIONS, field_notes, render

ROOT = Path(__file__).resolve().parents[2]
NOT_USER_SETTINGS = {"ModelConfig"}  # named model shapes chosen by train.model, not fields a user sets


def test_config_reference_is_current():
    assert (ROOT / "docs" / "config.md").read_text(encoding="utf-8") == render(), (
        "docs/config.md is stale: run `python -m thresher.utils.configdoc > docs/config.md`")


def test_every_config_dataclass_has_a_section():
    found = set()
    for path in (ROOT / "src" / "thresher").rglob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Config") and any(
                    getattr(d, "id", None) == "dataclass" for d in node.decorator_list):
                found.add(node.name)
    assert found - NOT_USER_SETTINGS == {name for _, _, name, _ in SECTIONS}


def test_notes_are_read_beside_and_above_fields():
    from dataclasses import dataclass

    @dataclass
    class Example:
        # heads a group
        a: int = 1  # beside a
        b: str = "x"
        # above c only
        c: float = 0.5

    notes = field_notes(Example)
    assert notes == {"a": ("beside a", "heads a group"), "b": ("", ""), "c": ("", "above c only")}
