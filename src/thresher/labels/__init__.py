"""Offline labelling: labelers, executors and the label table (the agents' memory).

    from thresher.labels import LabelConfig, ParquetSource, run_from_config, LabelTable
    table = run_from_config(ParquetSource("pool/"), LabelConfig(kmeans_k=100), "labels/")
    labels = table.to_agent_labels(["domain", "quality_interval", "topic"])
"""

from thresher.labels.base import DocumentSource, InMemorySource, Labeler, ParquetSource, TokenStoreSource
from thresher.labels.config import LabelConfig, build_clusterer, build_labelers, run_from_config
from thresher.labels.executors import run_labelers
from thresher.labels.intervals import QUALITY_INTERVALS, quality_interval
from thresher.labels.table import LabelTable

__all__ = ["DocumentSource", "InMemorySource", "Labeler", "ParquetSource", "TokenStoreSource", "LabelConfig",
           "build_clusterer", "build_labelers", "run_from_config", "run_labelers", "QUALITY_INTERVALS",
           "quality_interval", "LabelTable", "label_stats"]


def label_stats(table_dir, out_dir, **kw):
    from thresher.labels.stats import label_stats as _ls

    return _ls(table_dir, out_dir, **kw)
