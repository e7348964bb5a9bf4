"""Shared HF plumbing: load a local dir or Hub id (offline-friendly), run batches in length order."""

from __future__ import annotations

from typing import Callable

import numpy as np

from thresher.labels.base import ensure_model, model_version, resolve_device
from thresher.utils.errors import ThresherError


def load_hf(model: str, kind: str, device: str = "auto"):
    """(tokenizer, model on device, eval mode); kind is 'classification' or 'causal'."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    cls = AutoModelForSequenceClassification if kind == "classification" else AutoModelForCausalLM
    dev = resolve_device(device)
    try:
        tok = AutoTokenizer.from_pretrained(model)
        net = cls.from_pretrained(model, dtype=torch.float16 if dev.startswith("cuda") else torch.float32)
    except OSError as e:
        raise ThresherError(f"cannot load model {model!r} (local path or cached Hub id): {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if getattr(net.config, "pad_token_id", 0) is None:  # sequence classifiers find each row's last token by it
        net.config.pad_token_id = tok.pad_token_id
    return tok, net.to(dev).eval(), dev


def run_batches(texts: list[str], batch_size: int, fn: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """Apply ``fn`` to length-sorted minibatches (less padding); results come back in input order."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    parts = [fn([texts[i] for i in order[s : s + batch_size]]) for s in range(0, len(texts), batch_size)]
    out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    res = np.empty_like(out)
    res[order] = out
    return res


def classify_logits(tok, net, dev: str, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    """(B, n_labels) float32 logits of a sequence classifier (texts truncated to max_length tokens)."""
    import torch

    def fn(chunk: list[str]) -> np.ndarray:
        enc = tok(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt").to(dev)
        with torch.inference_mode():
            return net(**enc).logits.float().cpu().numpy()

    return run_batches(texts, batch_size, fn) if texts else np.zeros((0, net.config.num_labels), np.float32)


class HFModelLabeler:
    """Plumbing shared by labelers that run a Hugging Face model (quality, topic, perplexity): the
    settings recorded as provenance, lazy loading in the worker, pickling without the weights."""

    hf_kind = "classification"  # or "causal"
    model_setting = ""  # the LabelConfig key naming the model (for the error when it cannot be found)

    def _init_hf(self, model: str, max_length: int, batch_size: int, device: str, max_chars: int | None) -> None:
        self.model, self.max_length, self.batch_size = model, max_length, batch_size
        self.device, self.max_chars = device, max_chars
        self._net = None

    def __getstate__(self):
        return {**self.__dict__, "_net": None, "_tok": None}

    def settings(self) -> dict:
        return {**model_version(self.model), "max_length": self.max_length, "max_chars": self.max_chars}

    def fetch(self) -> None:
        ensure_model(self.model, setting=self.model_setting)

    def setup(self) -> None:
        if self._net is None:
            self._tok, self._net, self._dev = load_hf(self.model, self.hf_kind, self.device)
            self._loaded()

    def _loaded(self) -> None:
        """Hook after loading (e.g. the padding side)."""

