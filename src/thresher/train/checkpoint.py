"""Checkpoints that resume exactly, and the final Hugging Face export.

Layout: ``out_dir/checkpoints/step_000100/`` holding
  model.safetensors   the weights (full, unsharded)
  optim.pt            optimizer state (torch.save, loads with weights_only=True)
  trainer.pt          step, config, schedule, RNG states, loader state, selector state, counters
A checkpoint is written to a hidden temp folder and renamed into place, so a folder named
``step_*`` is always complete. Retention keeps the last ``keep_last`` plus every ``keep_every``-th.
Selector states (numpy arrays, lists, dicts) are encoded as tensors and plain containers so that
loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from thresher.train.loss import CausalLMWithLoss
from thresher.utils.errors import ThresherError

_STEP_DIR = re.compile(r"^step_(\d+)$")


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


def _is_fsdp(model) -> bool:
    return any(type(m).__name__.startswith("FSDP") for m in model.modules())


def full_state(model, optimizer) -> tuple[dict, dict]:
    """(model state, optimizer state), gathered to full CPU tensors when the model is FSDP-sharded."""
    if _is_fsdp(model):
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
    final, tmp = root / f"step_{step:06d}", root / f".tmp-step_{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if _is_fsdp(model):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model_sd.items()}, tmp / "model.safetensors")
    else:
        save_model(unwrap(model), str(tmp / "model.safetensors"))
    torch.save(optim_sd, tmp / "optim.pt")
    torch.save(encode_state(trainer), tmp / "trainer.pt")
    if final.exists():  # re-reaching a step after resuming from an earlier checkpoint
        trash = root / f".old-{final.name}-{os.getpid()}"
        os.replace(final, trash)
        shutil.rmtree(trash)
    os.replace(tmp, final)
    apply_retention(root, keep_last, keep_every)
    return final


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return sorted((s, p) for s, p in found if (p / "trainer.pt").exists())


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1][1] if ckpts else None


def apply_retention(root: Path, keep_last: int, keep_every: int) -> None:
    ckpts = list_checkpoints(root)
    recent = {s for s, _ in ckpts[-keep_last:]} if keep_last > 0 else set()
    for s, p in ckpts:
        if s not in recent and not (keep_every > 0 and s % keep_every == 0):
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path: str | os.PathLike, model, optimizer) -> dict:
    """Restore weights and optimizer in place; return the trainer dict (RNG is NOT applied here)."""
    path = Path(path)
    if not (path / "trainer.pt").exists():
        raise ThresherError(f"not a complete checkpoint: {path}")
    optim_sd = torch.load(path / "optim.pt", weights_only=True, map_location="cpu")
    if _is_fsdp(model):
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        set_state_dict(model, optimizer, model_state_dict=load_file(path / "model.safetensors"),
                       optim_state_dict=optim_sd, options=opts)
    else:
        missing, unexpected = load_model(unwrap(model), str(path / "model.safetensors"), strict=True)
        optimizer.load_state_dict(optim_sd)
    return decode_state(torch.load(path / "trainer.pt", weights_only=True, map_location="cpu"))


def export_hf(model, out_dir: str | os.PathLike, tokenizer=None, state_dict: dict | None = None) -> Path:
    """A folder transformers' ``AutoModelForCausalLM.from_pretrained`` and lm-eval's ``hf`` model load."""
    out = Path(out_dir)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    unwrap(model).save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        _save_tokenizer(tokenizer, tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _save_tokenizer(tokenizer, folder: Path) -> None:
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(folder)
        return
    from transformers import PreTrainedTokenizerFast  # a raw ``tokenizers.Tokenizer``

    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(folder)
