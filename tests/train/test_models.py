"""Model configs against Table 3 of the multi-agent paper, and FLOP counts against the built model."""

import pytest
import torch

from thresher.train.models import MODELS, build_model, count_flops_per_token, count_params, get_model_config
from thresher.utils.errors import ThresherError


def _meta_model(name, vocab=32000):
    with torch.device("meta"):
        return build_model(name, vocab)


@pytest.mark.parametrize("name, expected", [("370m", 373_867_520), ("1.3b", 1_345_423_360)])
def test_paper_parameter_counts(name, expected):
    model = _meta_model(name)
    assert sum(p.numel() for p in model.parameters()) == expected
    hf = model.config
    assert (hf.num_hidden_layers, hf.vocab_size, hf.max_position_embeddings) == (24, 32000, 1024)
    rope = getattr(hf, "rope_parameters", None) or {"rope_theta": hf.rope_theta}  # transformers 5 | 4
    assert rope["rope_theta"] == 10_000.0


@pytest.mark.parametrize("name", list(MODELS))
def test_closed_form_count_matches_built_model(name):
    model = _meta_model(name, vocab=1000)
    assert count_params(get_model_config(name), 1000) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["tiny", "370m"])
def test_flops_per_token_is_6x_matmul_weights_plus_attention(name):
    cfg, T, V = get_model_config(name), 512, 32000
    model = _meta_model(name, V)
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert count_flops_per_token(cfg, V, T) == 6 * matmul + 12 * cfg.layers * T * cfg.hidden


def test_tiny_builds_and_runs_on_cpu():
    model = build_model("tiny", vocab_size=50)
    out = model(input_ids=torch.randint(0, 50, (2, 9))).logits
    assert out.shape == (2, 9, 50) and torch.isfinite(out).all()


def test_unknown_model_is_a_user_error():
    with pytest.raises(ThresherError, match="unknown model"):
        get_model_config("7b")
