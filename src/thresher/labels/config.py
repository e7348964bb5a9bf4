"""LabelConfig: which labelers run, with which models and settings, on which executor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from thresher.labels.base import DocumentSource, Labeler
from thresher.utils.errors import ThresherError

KNOWN = ("domain", "quality_hf", "quality_fasttext", "quality_rules", "topic_hf", "topic_zeroshot",
         "embed", "perplexity", "dsir", "synthetic")


@dataclass
class LabelConfig:
    # which labelers run, in order (thresher label --labelers): domain, quality_rules, quality_hf, quality_fasttext,
    # topic_zeroshot, topic_hf, embed, perplexity, dsir, synthetic
    labelers: list = field(default_factory=lambda: ["domain", "quality_rules", "topic_zeroshot", "embed"])
    domain_field: str = "domain"  # the token store metadata column holding each document's source domain
    domain_names: list = field(default_factory=list)  # [] = SlimPajama's 7 domains; names; ["auto"] = discover
    quality_model: str = "HuggingFaceFW/fineweb-edu-classifier"  # Hub id or local dir (quality_hf)
    fasttext_model: str = ""  # .bin path (quality_fasttext)
    topic_model: str = ""  # HF classifier (topic_hf)
    embed_model: str = ""  # "" -> the packaged all-MiniLM-L6-v2; the Quad paper: BAAI/bge-large-en-v1.5
    perplexity_model: str = ""  # small causal LM (perplexity)
    dsir_reference: list = field(default_factory=list)  # reference-task JSONL files (target distribution)
    dsir_raw_sample: int = 10_000  # pool docs used to fit the raw distribution
    dsir_buckets: int = 10_000  # hashed n-gram buckets of DSIR's feature space
    # model tokens per doc for the classifiers (quality_hf, topic_hf, perplexity); longer docs are truncated
    max_length: int = 512
    # model tokens per doc for the sentence embedder (embed, topic_zeroshot); smaller is faster on CPU
    embed_max_length: int = 256
    max_chars: int = 1_000_000  # longer docs are refused with reason 'too_long'
    device: str = "auto"  # where model labelers run: auto (cuda if available) | cpu | cuda
    model_batch_size: int = 32  # documents per model forward
    domain_noise: float = 0.0  # synthetic only
    topic_noise: float = 0.0  # synthetic only
    quality_noise: float = 0.0  # synthetic only
    kmeans_k: int = 0  # 0 = no clustering; the Quad paper: 10000
    kmeans_sample: int = 1_000_000  # embeddings the centroids are trained on (faiss k-means); all are assigned
    kmeans_niter: int = 20  # k-means iterations
    # 0 = off; N >= 2: also write quality_bin, N equal-count bins of the pool's quality_score (cut at document
    # scores; ties share a bin, so maybe fewer), for scorers that bunch their scores in one Eq. 3 interval
    # (quality_rules); the quality agent reads it with data.label_columns.quality = "quality_bin"
    quality_bins: int = 0
    executor: str = "local"  # local | ray
    shard_size: int = 10_000  # documents per labelling shard (the unit of progress and resume)
    workers: int = 1  # local processes (executor = "local")
    batch_size: int = 256  # docs per label() call
    num_gpus: float = 0.0  # per Ray actor
    ray_address: Optional[str] = None  # executor = "ray": the cluster to join (None = start a local one)
    keep_shards: bool = False  # keep the per-shard results after the merge
    # recompute the columns of these labelers that the table has under other settings, written over them
    # (default: that is an error); a run resumed over replaced labels is refused
    replace: bool = False
    seed: int = 0  # k-means and sampling

    def __post_init__(self) -> None:
        for name in ("batch_size", "model_batch_size", "shard_size", "workers", "max_length", "embed_max_length",
                     "max_chars"):
            if getattr(self, name) < 1:
                raise ThresherError(f"label.{name} = {getattr(self, name)}; expected an integer >= 1")
        if self.quality_bins < 0 or self.quality_bins == 1:
            raise ThresherError(f"label.quality_bins = {self.quality_bins}; expected 0 (off) or a bin count >= 2")
        if self.kmeans_k < 0:
            raise ThresherError(f"label.kmeans_k = {self.kmeans_k}; expected 0 (no clustering) or a cluster count >= 1")


def build_labelers(cfg: LabelConfig, source: DocumentSource | None = None) -> list[Labeler]:
    if not cfg.labelers:
        raise ThresherError(f"no labelers given; choose from {list(KNOWN)}")
    unknown = [n for n in cfg.labelers if n not in KNOWN]
    if unknown:
        raise ThresherError(f"unknown labeler(s) {unknown}; choose from {list(KNOWN)}")
    return [_build_one(name, cfg, source) for name in cfg.labelers]


def _build_one(name: str, cfg: LabelConfig, source: DocumentSource | None) -> Labeler:
    from thresher.labels import domain, dsir, embed, perplexity, quality, synthetic, topic

    hf = dict(max_length=cfg.max_length, batch_size=cfg.model_batch_size, device=cfg.device, max_chars=cfg.max_chars)
    if name == "domain":
        names = cfg.domain_names
        if [n.strip().lower() for n in names] == ["auto"]:
            if source is None:
                raise ThresherError('label.domain_names = ["auto"] needs a document source to read the domains from')
            names = domain.discover_domains(source, cfg.domain_field)
        return domain.DomainLabeler(cfg.domain_field, names)
    if name == "quality_hf":
        return quality.HFQualityLabeler(cfg.quality_model, **hf)
    if name == "quality_fasttext":
        return quality.FastTextQualityLabeler(_need(cfg.fasttext_model, "fasttext_model"), max_chars=cfg.max_chars)
    if name == "quality_rules":
        return quality.RuleQualityLabeler(cfg.max_chars)
    if name == "topic_hf":
        return topic.HFTopicLabeler(_need(cfg.topic_model, "topic_model"), **hf)
    if name == "topic_zeroshot":
        return topic.ZeroShotTopicLabeler(cfg.embed_model, batch_size=cfg.model_batch_size, device=cfg.device,
                                          max_seq_length=cfg.embed_max_length, max_chars=cfg.max_chars)
    if name == "embed":
        return embed.EmbedLabeler(cfg.embed_model, batch_size=cfg.model_batch_size, device=cfg.device,
                                  max_seq_length=cfg.embed_max_length, max_chars=cfg.max_chars)
    if name == "perplexity":
        return perplexity.PerplexityLabeler(_need(cfg.perplexity_model, "perplexity_model"), **hf)
    if name == "dsir":
        return _build_dsir(cfg, source)
    return synthetic.SyntheticLabeler(cfg.domain_noise, cfg.topic_noise, cfg.quality_noise, cfg.seed)


def _build_dsir(cfg: LabelConfig, source: DocumentSource | None):
    from thresher.corpus.reference import read_reference_jsonl
    from thresher.labels.dsir import DsirLabeler
    from thresher.utils.seeding import rng

    if not cfg.dsir_reference or source is None:
        raise ThresherError("dsir needs dsir_reference files and a document source to fit the raw distribution")
    target = [c + " " + x for p in cfg.dsir_reference for c, x in read_reference_jsonl(p)]
    ids = rng(cfg.seed, "dsir-raw").permutation(source.n_docs)[: cfg.dsir_raw_sample]
    name = "+".join(Path(p).parent.name or Path(p).stem for p in cfg.dsir_reference)
    return DsirLabeler.fit(target, source.texts(sorted(ids)), cfg.dsir_buckets, target_name=name, max_chars=cfg.max_chars)


def _need(value: str, key: str) -> str:
    if not value:
        raise ThresherError(f"this labeler needs `{key}` set in the label config")
    return value


def build_clusterer(cfg: LabelConfig):
    from thresher.labels.cluster import KMeansClusterer

    return KMeansClusterer(cfg.kmeans_k, cfg.kmeans_sample, cfg.kmeans_niter, cfg.seed) if cfg.kmeans_k > 0 else None


def run_from_config(source: DocumentSource, cfg: LabelConfig, out_dir: str | Path):
    """Build everything from ``cfg`` and label ``source`` into the table at ``out_dir``."""
    from thresher.labels.executors import run_labelers

    return run_labelers(source, build_labelers(cfg, source), out_dir, executor=cfg.executor,
                        shard_size=cfg.shard_size, workers=cfg.workers, batch_size=cfg.batch_size,
                        clusterer=build_clusterer(cfg), num_gpus=cfg.num_gpus, keep_shards=cfg.keep_shards,
                        ray_address=cfg.ray_address, replace=cfg.replace, quality_bins=cfg.quality_bins)
