"""Checkpoints that resume exactly, and the final Hugging Face export.

Layout: ``out_dir/checkpoints/step_000100/`` holding
  model.safetensors   the weights (full, unsharded)
  optim.pt            optimizer state (torch.save, loads with weights_only=True)
  trainer.pt          step, config, schedule, RNG states, loader state, selector state, counters
A checkpoint is written to a hidden temp folder, fsynced and renamed into place, so a folder named
``step_*`` is always complete (also after a power loss). Retention keeps the last ``keep_last`` plus
every ``keep_every``-th, and never the checkpoint just written.
Selector states (numpy arrays, lists, dicts) are encoded as tensors and plain containers so that
loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from thresher.influence.distributed import is_fsdp
from thresher.train.loss import CausalLMWithLoss
from thresher.utils.errors import ThresherError
from thresher.utils.io import dead_writer, writer_tag

_STEP_DIR = re.compile(r"^step_(\d+)$")
# a save in progress, or the step it replaces: ".tmp-step_000100-<host>-<pid>" (before host tags: "-<pid>" alone)
_WRITER = r"-(?:([0-9a-f]{6})-)?(\d+)$"
_TMP_DIR = re.compile(r"^\.(?:tmp|old)-step_\d+" + _WRITER)


# --- selector / numpy state <-> weights_only-safe containers --------------------------------------
def encode_state(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biuf":
            return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj).copy())}
        return {"__ndarray_list__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: encode_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(encode_state(v) for v in obj)
    return obj


def decode_state(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return obj["__ndarray__"].numpy()
        if "__ndarray_list__" in obj:
            return np.array(obj["__ndarray_list__"], dtype=np.dtype(obj["dtype"]))
        return {k: decode_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(decode_state(v) for v in obj)
    return obj


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": encode_state(np.random.get_state()), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(decode_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- model / optimizer state (plain, DDP or FSDP2) ------------------------------------------------------
def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The HF model inside torch.compile, DDP and the chunked-loss wrapper (what checkpoints hold)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    model = getattr(model, "module", model)  # DDP
    return model.lm if isinstance(model, CausalLMWithLoss) else model


def full_state(model, optimizer) -> tuple[dict, dict]:
    """(model state, optimizer state), gathered to full CPU tensors when the model is FSDP-sharded."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap(model).state_dict(), optimizer.state_dict()


def save_checkpoint(root: str | os.PathLike, step: int, model, optimizer, trainer: dict, is_rank0: bool = True,
                    keep_last: int = 2, keep_every: int = 0) -> Path | None:
    """Write ``root/step_{step:06d}`` atomically (rank 0 writes; every rank must call it under FSDP)."""
    model_sd, optim_sd = full_state(model, optimizer)
    if not is_rank0:
        return None
    root = Path(root)
    final, tmp = root / f"step_{step:06d}", root / f".tmp-step_{step:06d}-{writer_tag()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        if is_fsdp(model):
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in model_sd.items()}, tmp / "model.safetensors")
        else:
            save_model(unwrap(model), str(tmp / "model.safetensors"))
        torch.save(optim_sd, tmp / "optim.pt")
        torch.save(encode_state(trainer), tmp / "trainer.pt")
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
    except BaseException as e:  # a failed save leaves nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise ThresherError(f"could not write checkpoint {final}: {e}") from e
        raise
    trash = root / f".old-{final.name}-{writer_tag()}"
    if final.exists():  # re-reaching a step after resuming from an earlier checkpoint
        os.replace(final, trash)
    os.replace(tmp, final)
    _fsync(root)
    shutil.rmtree(trash, ignore_errors=True)
    apply_retention(root, keep_last, keep_every, keep=step)
    return final


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's (its entries') contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temp(root: str | os.PathLike) -> list[Path]:
    """Remove ``.tmp-step_*-HOST-PID`` folders of saves that died (on this machine: PID gone, or this process: none
    is running), and ``.old-step_*-HOST-PID`` ones: the earlier copy of a step a save was replacing when it died (a
    whole checkpoint). Another machine's (a run folder on a shared file system) are kept: its PIDs are not checkable."""
    return _remove_dead_writers(Path(root), _TMP_DIR)


def _remove_dead_writers(folder: Path, pattern: re.Pattern) -> list[Path]:
    """Remove the folders in ``folder`` whose name ``pattern`` matches with a writer's host tag as group 1 (None:
    an untagged older name, this machine's) and PID as group 2, where that writer ran on this machine and is gone
    or is this process (which is not writing them now)."""
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = pattern.match(p.name)
        if m and dead_writer(m.group(1), int(m.group(2)), this_process=True):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def step_dirs(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Every ``step_*`` folder under ``root``, complete or not, as (step, path) sorted by step."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)))


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """The complete checkpoints (those holding ``trainer.pt``, written last) as (step, path) sorted by step."""
    return [(s, p) for s, p in step_dirs(root) if (p / "trainer.pt").exists()]


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1][1] if ckpts else None


def apply_retention(root: Path, keep_last: int, keep_every: int, keep: int | None = None) -> None:
    """Delete all but the last ``keep_last``, every ``keep_every``-th and step ``keep`` (the one just written)."""
    ckpts = list_checkpoints(root)
    recent = {s for s, _ in ckpts[-keep_last:]} if keep_last > 0 else set()
    for s, p in ckpts:
        if s != keep and s not in recent and not (keep_every > 0 and s % keep_every == 0):
            shutil.rmtree(p, ignore_errors=True)


def read_trainer_state(path: str | os.PathLike) -> dict:
    """The trainer dict of checkpoint ``path`` (ThresherError if unreadable); nothing is loaded into a model."""
    path = Path(path)
    with _unreadable(path):
        return decode_state(torch.load(path / "trainer.pt", weights_only=True, map_location="cpu"))


@contextlib.contextmanager
def _unreadable(path: Path):
    """Turn any failure to read checkpoint ``path`` into a one-line ThresherError."""
    try:
        yield
    except ThresherError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        reason = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise ThresherError(f"checkpoint {path} is unreadable: {reason}") from e


def load_checkpoint(path: str | os.PathLike, model, optimizer, trainer: dict | None = None) -> dict:
    """Restore weights and optimizer in place; return the trainer dict (RNG is NOT applied here).
    ``trainer``: the dict ``read_trainer_state(path)`` already returned (it is not read again).

    Any failure to read or apply a file is ``ThresherError("checkpoint <path> is unreadable: <reason>")``;
    the weights may then be partly loaded, so load another checkpoint or stop."""
    path = Path(path)
    if not (path / "trainer.pt").exists():
        raise ThresherError(f"not a complete checkpoint: {path}")
    if trainer is None:
        trainer = read_trainer_state(path)
    with _unreadable(path):
        optim_sd = torch.load(path / "optim.pt", weights_only=True, map_location="cpu")
        if is_fsdp(model):
            from safetensors.torch import load_file
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
            set_state_dict(model, optimizer, model_state_dict=load_file(path / "model.safetensors"),
                           optim_state_dict=optim_sd, options=opts)
        else:
            load_model(unwrap(model), str(path / "model.safetensors"), strict=True)
            optimizer.load_state_dict(optim_sd)
    return trainer


def export_hf(model, out_dir: str | os.PathLike, tokenizer=None, state_dict: dict | None = None) -> Path:
    """A folder transformers' ``AutoModelForCausalLM.from_pretrained`` and lm-eval's ``hf`` model load."""
    out = Path(out_dir)
    _remove_dead_exports(out)  # this process's own tmp and trash included
    tmp, trash = (out.parent / f".{kind}-{out.name}-{writer_tag()}" for kind in ("tmp", "old"))
    unwrap(model).save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        _save_tokenizer(tokenizer, tmp)
    if out.exists():  # moved aside, not deleted in place: a kill never leaves half of the old folder
        os.replace(out, trash)
    os.replace(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)
    return out


def _remove_dead_exports(out: Path) -> None:
    """Remove ``.tmp-<name>-HOST-PID`` / ``.old-<name>-HOST-PID`` folders beside ``out`` of exports killed mid-way
    on this machine (a whole model each), and this process's own (an earlier export of it that failed would block
    the swap); another machine's are kept."""
    _remove_dead_writers(out.parent, re.compile(rf"^\.(?:tmp|old)-{re.escape(out.name)}" + _WRITER))


def _save_tokenizer(tokenizer, folder: Path) -> None:
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(folder)
        return
    from transformers import PreTrainedTokenizerFast  # a raw ``tokenizers.Tokenizer``

    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(folder)


def export_checkpoint(path: str | os.PathLike, out_dir: str | os.PathLike, store) -> Path:
    """The Hugging Face folder of training checkpoint ``path`` (a ``checkpoints/step_*`` folder), like the
    ``final/`` a finished run writes, for downstream evaluation of intermediate steps. ``store``: the run's
    token store (vocabulary, pad/eos ids and the tokenizer the folder gets)."""
    from safetensors.torch import load_file

    from thresher.train.config import TrainConfig
    from thresher.train.models import build_model
    from thresher.utils.tomlio import from_dict

    path = require_checkpoint(path)
    trainer = read_trainer_state(path)
    cfg = from_dict(TrainConfig, dict(trainer["config"]), "train")
    model = build_model(cfg.model_config(), store.vocab_size, pad_id=store.pad_id, eos_id=store.eos_id)
    with _unreadable(path):
        weights = load_file(path / "model.safetensors")
        # an FSDP checkpoint holds the full state of the wrapped module: torch.compile's "_orig_mod.",
        # the chunked loss's "lm." in front of the Hugging Face names
        weights = {_hf_key(k): v for k, v in weights.items()}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise ThresherError(f"checkpoint {path} does not fit model {cfg.model!r} with a vocabulary of "
                                f"{store.vocab_size}: missing {sorted(set(missing) - tied)[:3]}, "
                                f"unexpected {sorted(unexpected)[:3]}")
    if tied:
        model.tie_weights()
    return export_hf(model, out_dir, hf_tokenizer(store))


def require_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it holds a training checkpoint's weights and trainer state, else a ThresherError."""
    path = Path(path)
    if not (path / "trainer.pt").is_file() or not (path / "model.safetensors").is_file():
        raise ThresherError(f"not a training checkpoint (no trainer.pt and model.safetensors): {path}")
    return path


def _hf_key(key: str) -> str:
    for prefix in ("_orig_mod.", "module.", "lm."):
        key = key.removeprefix(prefix)
    return key


def hf_tokenizer(store):
    """The store's tokenizer as a transformers tokenizer, so an exported model folder is complete."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=store.tokenizer())
    tok.eos_token, tok.pad_token = tok.convert_ids_to_tokens(store.eos_id), tok.convert_ids_to_tokens(store.pad_id)
    return tok

