"""Topic labels: the multi-agent paper's 13 topics (section 3.3, A.1).

* HFTopicLabeler: a sequence classifier (argmax over its labels; categories = its id2label).
* ZeroShotTopicLabeler: cosine similarity between the document embedding and each topic's
  "name: description" embedding; argmax. The paper's classifier is not public, so this is the
  offline stand-in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from thresher.labels._hf import HFModelLabeler
from thresher.labels.base import (Labeler, ensure_model, fill_codes, fill_float, ok_indices, screen_texts,
                                  sentence_transformer_repos)
from thresher.labels.embed import Embedder
from thresher.utils.errors import ThresherError

TOPICS = {
    "Activity": "sports, recreation, hobbies, travel, outdoor activities and games",
    "Education": "schools, teaching, learning, students, universities and academic study",
    "Entertainment": "movies, television, music, celebrities, video games and pop culture",
    "Finance": "money, banking, investing, stock markets, loans, taxes and personal finance",
    "Health": "medicine, diseases, fitness, nutrition, mental health and healthcare",
    "Business and Industrial": "companies, commerce, manufacturing, marketing, trade and industry",
    "Infrastructure": "construction, transportation, energy, utilities, roads and buildings",
    "Literature and Art": "books, novels, poetry, fiction, painting, history and the arts",
    "Nature": "animals, plants, environment, climate, geography and natural science",
    "Others": "miscellaneous content that fits no other topic",
    "Law and Government": "law, courts, politics, elections, public policy and government",
    "Networking": "social media, online communities, internet, forums and communication",
    "Technology": "computers, software, programming, electronics, mathematics and engineering",
}
TOPIC_NAMES = list(TOPICS)

TOPIC_COLUMNS = {"topic": "category", "topic_score": "float", "topic_reason": "reason"}


class ZeroShotTopicLabeler(Labeler):
    """``topic_score`` = the winning cosine similarity (a confidence proxy)."""

    name = "topic"
    columns = TOPIC_COLUMNS
    categories = {"topic": TOPIC_NAMES}

    def __init__(self, model: str = "", topics: dict[str, str] | None = None, batch_size: int = 64,
                 device: str = "auto", max_seq_length: int | None = 256, max_chars: int | None = 1_000_000):
        self.topics = dict(topics or TOPICS)
        self.categories = {"topic": list(self.topics)}
        self.embedder = Embedder(model, batch_size, device, max_seq_length)
        self.max_chars = max_chars
        self._proto = None

    def __getstate__(self):
        return {**self.__dict__, "_proto": None}

    def settings(self) -> dict[str, Any]:
        return {**self.embedder.settings(), "topics": self.topics, "max_chars": self.max_chars}

    def fetch(self) -> None:
        ensure_model(self.embedder.model, sentence_transformer_repos(self.embedder.model), setting="embed_model")

    def setup(self) -> None:
        if self._proto is None:  # (T, d) unit-norm topic prototypes
            self._proto = self.embedder.encode([f"{k}: {v}" for k, v in self.topics.items()])

    def label(self, batch: dict[str, list]) -> dict[str, np.ndarray | list]:
        self.setup()
        texts = batch["text"]
        reasons = screen_texts(texts, self.max_chars)
        idx = ok_indices(reasons)
        sim = self.embedder.encode([texts[i] for i in idx]) @ self._proto.T  # (B', T) cosine
        n = len(texts)
        return {"topic": fill_codes(n, idx, sim.argmax(1) if len(idx) else []),
                "topic_score": fill_float(n, idx, sim.max(1) if len(idx) else []), "topic_reason": reasons}


class HFTopicLabeler(HFModelLabeler, Labeler):
    """``topic_score`` = softmax probability of the argmax class."""

    model_setting = "topic_model"
    name = "topic"
    columns = TOPIC_COLUMNS

    def __init__(self, model: str, max_length: int = 512, batch_size: int = 32, device: str = "auto",
                 max_chars: int | None = 1_000_000):
        self._init_hf(model, max_length, batch_size, device, max_chars)
        self.categories = {"topic": self._label_names()}

    def _label_names(self) -> list[str]:
        from transformers import AutoConfig

        try:
            cfg = AutoConfig.from_pretrained(self.model)
        except OSError as e:
            raise ThresherError(f"cannot load topic model {self.model!r}: {str(e).splitlines()[0]}") from None
        return [str(cfg.id2label[i]) for i in range(cfg.num_labels)]

    def label(self, batch: dict[str, list]) -> dict[str, np.ndarray | list]:
        from thresher.labels._hf import classify_logits

        self.setup()
        texts = batch["text"]
        reasons = screen_texts(texts, self.max_chars)
        idx = ok_indices(reasons)
        logits = classify_logits(self._tok, self._net, self._dev, [texts[i] for i in idx], self.max_length, self.batch_size)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        n = len(texts)
        return {"topic": fill_codes(n, idx, p.argmax(1)), "topic_score": fill_float(n, idx, p.max(1)), "topic_reason": reasons}
