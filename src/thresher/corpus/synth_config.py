"""Settings of the synthetic world (``thresher.corpus.synth``): plain fields, all defaulted, TOML-ready.

The defaults build the demo world (20k documents, ~150 words each). ``SynthConfig.tiny()`` is the
CPU-seconds variant used by tests. See docs/synth.md for what every knob does to the world.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from thresher.utils.errors import ThresherError

# The seven SlimPajama domains and the multi-agent paper's 13 topics (section 3.3), in a fixed order:
# codes in ground_truth.json index these lists.
DOMAINS = ["CommonCrawl", "C4", "GitHub", "Books", "ArXiv", "Wikipedia", "StackExchange"]
TOPICS = [
    "Activity", "Education", "Entertainment", "Finance", "Health", "Business and Industrial",
    "Infrastructure", "Literature and Art", "Nature", "Others", "Law and Government", "Networking",
    "Technology",
]
# SlimPajama's own meta.redpajama_set_name values (note "Book" and "Github", as in the real corpus).
REDPAJAMA_SET_NAMES = {
    "CommonCrawl": "RedPajamaCommonCrawl", "C4": "RedPajamaC4", "GitHub": "RedPajamaGithub",
    "Books": "RedPajamaBook", "ArXiv": "RedPajamaArXiv", "Wikipedia": "RedPajamaWikipedia",
    "StackExchange": "RedPajamaStackExchange",
}


def _domain_shares() -> dict:
    # Skewed like SlimPajama (CC 52%, C4 27%), flattened so small domains still hold a few hundred docs.
    return {"CommonCrawl": 0.38, "C4": 0.22, "GitHub": 0.07, "Books": 0.06, "ArXiv": 0.07,
            "Wikipedia": 0.11, "StackExchange": 0.09}


def _domain_quality() -> dict:
    # [mean quality / 5, Beta concentration]: Books and ArXiv high, CommonCrawl low, Wikipedia wide.
    return {"CommonCrawl": [0.32, 4.0], "C4": [0.50, 6.0], "GitHub": [0.52, 5.0], "Books": [0.74, 5.0],
            "ArXiv": [0.80, 6.0], "Wikipedia": [0.42, 2.2], "StackExchange": [0.60, 5.0]}


def _domain_topic_boost() -> dict:
    # Multipliers on a near-uniform topic mix. C4 and Wikipedia stay diverse (no boost).
    return {"GitHub": {"Technology": 6.0, "Networking": 4.0},
            "ArXiv": {"Nature": 6.0, "Networking": 3.0, "Infrastructure": 2.0},
            "Books": {"Literature and Art": 3.0, "Entertainment": 2.0},
            "StackExchange": {"Technology": 3.0, "Education": 1.5}}


def _reference_domain_weights() -> dict:
    # Which domains' generating processes the reference tasks come from (graded; absent = 0).
    # ArXiv (high quality) gets nothing: the paper's "high quality, low impact" conflict.
    return {"Wikipedia": 0.5, "StackExchange": 0.3, "Books": 0.08, "CommonCrawl": 0.07, "GitHub": 0.035,
            "C4": 0.015}


def _reference_topic_weights() -> dict:
    return {"Education": 0.3, "Health": 0.25, "Technology": 0.2, "Finance": 0.07, "Nature": 0.05,
            "Activity": 0.04, "Law and Government": 0.03, "Business and Industrial": 0.02, "Networking": 0.015,
            "Infrastructure": 0.01, "Entertainment": 0.007, "Others": 0.005, "Literature and Art": 0.003}


@dataclass
class SynthConfig:
    seed: int = 0
    n_docs: int = 20_000
    mean_words: int = 150  # words per document (lognormal lengths, clipped)
    min_words: int = 24
    max_words: int = 600
    length_sigma: float = 0.45
    n_shards: int = 4
    mixed_formats: bool = True  # last shard .parquet, the one before .jsonl.zst (needs n_shards >= 3)

    # vocabulary: shared function words (incl. punctuation), per-domain and per-topic content words,
    # junk words that only corruption uses (boilerplate lines)
    n_function_words: int = 40
    n_domain_words: int = 60
    n_topic_words: int = 60
    n_junk_words: int = 80

    # grammar: each (domain, topic) cell mixes a domain chain, a topic chain and its own chain
    n_successors: int = 4  # sparse bigram: successors per word per chain
    successor_concentration: float = 0.3  # Dirichlet alpha over a word's successors (small = peaked)
    chain_mix: list = field(default_factory=lambda: [0.3, 0.3, 0.4])  # [domain, topic, cell]

    domain_shares: dict = field(default_factory=_domain_shares)
    domain_quality: dict = field(default_factory=_domain_quality)
    domain_length_scale: dict = field(default_factory=lambda: {"Books": 1.8, "ArXiv": 1.4, "C4": 0.7})
    topic_concentration: float = 8.0  # Dirichlet concentration of each domain's base topic mix
    domain_topic_boost: dict = field(default_factory=_domain_topic_boost)

    # "high quality, low diversity" (paper section 2): these docs are nearly all one topic
    concentrated_domain: str = "Books"
    concentrated_topic: str = "Literature and Art"
    concentrated_share: float = 0.85
    concentrated_min_quality: float = 4.0

    # corruption: a fraction noise_max * (1 - q/5) ** noise_power of a document's tokens is corrupted,
    # split between [random tokens, repetition loops, shared boilerplate lines]
    noise_max: float = 0.7
    noise_power: float = 1.3
    noise_mix: list = field(default_factory=lambda: [0.4, 0.3, 0.3])
    n_boilerplate_lines: int = 16
    boilerplate_words: list = field(default_factory=lambda: [5, 12])

    # reference tasks: generated from cells weighted by domain weight x topic weight
    reference_domain_weights: dict = field(default_factory=_reference_domain_weights)
    reference_topic_weights: dict = field(default_factory=_reference_topic_weights)
    n_helpful_domains: int = 2  # "helpful cells" = top domains x top topics by reference weight
    n_helpful_topics: int = 3
    n_cloze: int = 1000
    n_qa: int = 1000
    cloze_context_words: list = field(default_factory=lambda: [24, 64])

    @classmethod
    def tiny(cls, **overrides) -> "SynthConfig":
        """A world for tests: seconds on one core."""
        base = dict(n_docs=1500, mean_words=60, min_words=12, max_words=200, n_shards=3, n_cloze=120, n_qa=120)
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise ThresherError on settings that cannot build a world."""
        if self.n_docs < 1 or self.mean_words < 2 or not 2 <= self.min_words <= self.max_words:
            raise ThresherError("synth: need n_docs >= 1 and 2 <= min_words <= max_words")
        if self.n_shards < 1 or (self.mixed_formats and self.n_shards < 3):
            raise ThresherError("synth: mixed_formats needs n_shards >= 3 (gz, zst and parquet shards)")
        for name, d in [("domain_shares", self.domain_shares), ("domain_quality", self.domain_quality),
                        ("domain_length_scale", self.domain_length_scale),
                        ("domain_topic_boost", self.domain_topic_boost),
                        ("reference_domain_weights", self.reference_domain_weights)]:
            _check_keys(name, d, DOMAINS)
        _check_keys("reference_topic_weights", self.reference_topic_weights, TOPICS)
        for d, boost in self.domain_topic_boost.items():
            _check_keys(f"domain_topic_boost.{d}", boost, TOPICS)
        if self.concentrated_domain and (self.concentrated_domain not in DOMAINS or self.concentrated_topic not in TOPICS):
            raise ThresherError("synth: concentrated_domain/topic must name a known domain and topic")
        if len(self.chain_mix) != 3 or len(self.noise_mix) != 3 or min(self.chain_mix + self.noise_mix) < 0:
            raise ThresherError("synth: chain_mix and noise_mix need 3 non-negative weights")
        if sum(v > 0 for v in self.reference_domain_weights.values()) < self.n_helpful_domains or \
                sum(v > 0 for v in self.reference_topic_weights.values()) < self.n_helpful_topics:
            raise ThresherError("synth: fewer positive reference weights than n_helpful_domains/topics")
        if not 0.0 <= self.noise_max < 1.0:
            raise ThresherError("synth: noise_max must be in [0, 1)")


def _check_keys(name: str, d: dict, allowed: list) -> None:
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ThresherError(f"synth: unknown name(s) {unknown} in {name}; expected some of {allowed}")
