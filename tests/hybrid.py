"""A tiny hybrid federation for H2Tune tests: three random-init families of different widths, depths and ranks,
a different task per family, two clients each (no downloads; tokenizers from the packaged MiniLM)."""

from __future__ import annotations

from typing import Any

TINY_HYBRID: dict[str, Any] = {
    "algorithm": "h2tune",
    "rounds": 2,
    "seed": 0,
    "models": {
        "bert": {
            "family": "bert",
            "tokenizer": "minilm",
            "config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
        },
        "llama": {
            "family": "llama",
            "tokenizer": "minilm",
            "config": {
                "hidden_size": 48,
                "num_hidden_layers": 5,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "intermediate_size": 64,
            },
        },
        "mpnet": {
            "family": "mpnet",
            "tokenizer": "minilm",
            "config": {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64},
        },
    },
    "tasks": {
        "bbc": {"dataset": "bbc-news", "max_examples": 120},
        "chat": {"dataset": "chatterbot", "max_examples": 120},
        "drug": {"dataset": "drug-sentiment", "max_examples": 120},
    },
    "data": {"partition": "iid", "max_length": 24},
    "train": {"local_steps": 2, "batch_size": 8, "lr": 0.001, "head_lr": 0.005},
    "lora": {"rank": 4, "alpha": 16},
    "clients": [
        {"id": "bert-a", "model": "bert", "task": "bbc", "rank": 2},
        {"id": "bert-b", "model": "bert", "task": "bbc", "rank": 2},
        {"id": "llama-a", "model": "llama", "task": "chat", "rank": 4},
        {"id": "llama-b", "model": "llama", "task": "chat", "rank": 4, "layers": 3},
        {"id": "mpnet-a", "model": "mpnet", "task": "drug", "rank": 8},
        {"id": "mpnet-b", "model": "mpnet", "task": "drug", "rank": 8},
    ],
}
