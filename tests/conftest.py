"""Shared fixtures: tiny random-init models of every registered family (no downloads)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_CONFIGS: dict[str, dict] = {
    "bert": {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64},
    "mpnet": {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64},
    "llama": {
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
    },
    "qwen2": {
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
    },
    "gemma3_text": {
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
        "head_dim": 16,
    },
    "gpt2": {"n_embd": 32, "n_layer": 4, "n_head": 2},
}


def tiny_model(model_type: str, vocab_size: int = 100):
    """A random-init base model of ``model_type`` with 4 layers of width 32."""
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **TINY_CONFIGS[model_type])
    torch.manual_seed(0)
    return AutoModel.from_config(config).eval()


@pytest.fixture(params=sorted(TINY_CONFIGS))
def family_model(request):
    """``(model_type, tiny model)`` for each registered family."""
    return request.param, tiny_model(request.param)
