"""train: LLaMA-2 decoders trained on the selector's documents (packed loader, loop, checkpoints)."""

from thresher.train.config import TrainConfig
from thresher.train.models import MODELS, ModelConfig, build_model, count_flops_per_token, count_params

__all__ = ["MODELS", "ModelConfig", "TrainConfig", "build_model", "count_flops_per_token", "count_params", "train"]


def train(*args, **kwargs):
    """See thresher.train.loop.train (imported lazily: it pulls in transformers)."""
    from thresher.train.loop import train as _train

    return _train(*args, **kwargs)
