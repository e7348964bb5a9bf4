"""Perplexity under a small causal LM (the perplexity-selection baseline, Ankner et al. 2024)."""

from __future__ import annotations


import numpy as np

from thresher.labels._hf import HFModelLabeler
from thresher.labels.base import Labeler, fill_float, ok_indices, screen_texts


class PerplexityLabeler(HFModelLabeler, Labeler):
    """``perplexity`` = exp(mean next-token NLL) over the first ``max_length`` tokens (float32)."""

    hf_kind = "causal"
    model_setting = "perplexity_model"

    name = "perplexity"
    columns = {"perplexity": "float", "perplexity_reason": "reason"}

    def __init__(self, model: str, max_length: int = 512, batch_size: int = 16, device: str = "auto",
                 max_chars: int | None = 1_000_000):
        self._init_hf(model, max_length, batch_size, device, max_chars)

    def _loaded(self) -> None:
        self._tok.padding_side = "right"

    def mean_nll(self, texts: list[str]) -> np.ndarray:
        """(B,) float64 mean next-token NLL; NaN for docs with fewer than 2 tokens."""
        import torch

        enc = self._tok(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt").to(self._dev)
        with torch.inference_mode():
            # only ids + mask: a BERT-style tokenizer's token_type_ids would shift GPT-2's embeddings
            logits = self._net(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()  # (B, T, V)
        tgt, mask = enc["input_ids"][:, 1:], enc["attention_mask"][:, 1:].float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tgt, reduction="none")  # (B, T-1)
        n = mask.sum(1)
        return ((nll * mask).sum(1) / n.clamp(min=1)).masked_fill(n == 0, float("nan")).double().cpu().numpy()

    def label(self, batch: dict[str, list]) -> dict[str, np.ndarray | list]:
        from thresher.labels._hf import run_batches

        self.setup()
        texts = batch["text"]
        reasons = screen_texts(texts, self.max_chars)
        idx = ok_indices(reasons)
        nll = run_batches([texts[i] for i in idx], self.batch_size, self.mean_nll)
        ppl = fill_float(len(texts), idx, np.exp(nll))
        reasons = [r if (r or not np.isnan(p)) else "too_short" for r, p in zip(reasons, ppl)]
        return {"perplexity": ppl, "perplexity_reason": reasons}
