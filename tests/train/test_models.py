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


def test_model_overrides_build_your_own_recipe():
    from thresher.train.config import TrainConfig
    from thresher.train.models import resolve_model

    over = {"hidden": 96, "layers": 3, "heads": 6, "kv_heads": 2, "max_seq_len": 512, "rope_theta": 5e5,
            "tie_embeddings": True}
    cfg = TrainConfig(model="tiny", model_overrides=over).model_config()
    assert (cfg.hidden, cfg.layers, cfg.heads, cfg.kv_heads, cfg.max_seq_len) == (96, 3, 6, 2, 512)
    assert cfg.tie_embeddings
    assert cfg.name.startswith("tiny+") and cfg.intermediate == 16 * -(-96 * 8 // 3 // 16)  # tiny's multiple_of kept
    with torch.device("meta"):
        model = build_model(cfg, 1000)
    hf = model.config
    assert (hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.num_key_value_heads) == (96, 3, 6, 2)
    assert hf.max_position_embeddings == 512 and hf.tie_word_embeddings
    assert count_params(cfg, 1000) == sum(p.numel() for p in model.parameters())  # GQA and tied counted right
    assert resolve_model("tiny", {}) == get_model_config("tiny")
    for bad, message in [({"hidn": 96}, r"unknown field\(s\) \['hidn'\]"),
                         ({"layers": 2.5}, "layers = 2.5: expected a positive int"),
                         ({"heads": 0}, "expected a positive int"), ({"tie_embeddings": 1}, "expected true or false"),
                         ({"hidden": 100, "heads": 6}, "hidden \\(100\\) must divide by heads \\(6\\)"),
                         ({"heads": 4, "kv_heads": 3}, "heads by kv_heads \\(3\\)")]:
        with pytest.raises(ThresherError, match=message):
            resolve_model("tiny", bad)
