"""Saved rewards carry the settings they were computed under; mixing other settings is refused."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from thresher.utils.digest import update_int64
from thresher.utils.errors import SettingsMismatchError, ThresherError
from thresher.utils.io import atomic_write_bytes


# keys settings gained after results and checkpoints were written under the older ones: compared only when both
# sides have them (the reference examples' and fit documents' digests; those older states load unchecked there)
ADDED_KEYS = ("reference_sha1", "fit_sha1")


def check_same_settings(a: dict, b: dict, what: str = "influence results") -> None:
    """Raise SettingsMismatchError naming the first differing keys (nested ones as ``outer.inner``), e.g. of
    ``scorer.settings()`` or of ``scorer.provenance()`` (its model ``step`` included)."""
    a, b = _canon(a), _canon(b)
    if a != b:
        keys = _differing(a, b)
        if keys:
            raise SettingsMismatchError(f"{what} were computed under other settings (differs in: {', '.join(keys[:6])})")


def _differing(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if k in ADDED_KEYS and (k in a) != (k in b):
            continue
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict) and k not in ADDED_KEYS:
            out += _differing(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            out.append(prefix + k)
    return out


def token_digest(arrays) -> str:
    """SHA-1 of a sequence of token arrays (each as its length and little-endian int64 ids): what a scorer's
    settings record of its reference examples and fit documents."""
    h = hashlib.sha1()
    for x in arrays or ():
        h.update(np.array(len(x), dtype="<i8").tobytes())
        update_int64(h, x)
    return h.hexdigest()


def save_scores(path: str | Path, scores: np.ndarray, settings: dict, **extra: np.ndarray) -> None:
    """One .npz written atomically: ``scores`` (+ ``extra`` arrays) and the settings as JSON."""
    buf = io.BytesIO()
    np.savez(buf, scores=np.asarray(scores, dtype=np.float64), settings=np.array(json.dumps(_canon(settings))), **extra)
    atomic_write_bytes(path, buf.getvalue())


def load_scores(path: str | Path, expect_settings: dict | None = None) -> tuple[np.ndarray, dict]:
    """(scores, settings); with ``expect_settings`` raise SettingsMismatchError when they differ."""
    path = Path(path)
    if not path.exists():
        raise ThresherError(f"influence scores not found: {path}")
    with np.load(path, allow_pickle=False) as z:
        scores, settings = z["scores"], json.loads(str(z["settings"]))
    if expect_settings is not None:
        check_same_settings(settings, expect_settings, f"scores in {path}")
    return scores, settings


def mix_scores(results: list[tuple[np.ndarray, dict]]) -> np.ndarray:
    """Concatenate score arrays only if all were computed under the same settings."""
    if not results:
        return np.zeros(0)
    for _, s in results[1:]:
        check_same_settings(results[0][1], s)
    return np.concatenate([r for r, _ in results])


def _canon(d: dict) -> dict:
    return json.loads(json.dumps(d, sort_keys=True, default=str))
