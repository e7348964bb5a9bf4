"""Influence engine: per-document rewards g_ref^T P^-1 g_x from the current model."""

from thresher.influence.config import InfluenceConfig
from thresher.influence.features import GradientFeatures
from thresher.influence.modules import Block, build_blocks
from thresher.influence.precondition import build_preconditioner
from thresher.influence.results import check_same_settings, load_scores, mix_scores, save_scores
from thresher.influence.rewards import InfluenceRewards, RewardSource
from thresher.influence.scorer import InfluenceScorer

__all__ = [
    "Block",
    "GradientFeatures",
    "InfluenceConfig",
    "InfluenceRewards",
    "InfluenceScorer",
    "RewardSource",
    "build_blocks",
    "build_preconditioner",
    "check_same_settings",
    "load_scores",
    "mix_scores",
    "save_scores",
]
