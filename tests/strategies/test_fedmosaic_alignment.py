"""pivot_l2_cca on real proxy texts of tiny random models of two families and widths."""

from __future__ import annotations

import numpy as np
import torch

from fedbrick_flower.adapters.colora import ColoraSettings, frozen_schema, random_shared_frozen
from fedbrick_flower.assembly import cached_config
from fedbrick_flower.models import model_dims
from fedbrick_flower.scenario import parse_scenario
from fedbrick_flower.strategies.fedmosaic_alignment import pivot_alignment

SCENARIO = {
    "algorithm": "fedmosaic",
    "seed": 0,
    "models": {
        "small": {
            "family": "bert",
            "tokenizer": "minilm",
            "config": {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32},
        },
        "big": {
            "family": "llama",
            "tokenizer": "minilm",
            "config": {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 48},
        },
    },
    "tasks": {"news": {"dataset": "bbc-news", "max_examples": 200}},
    "data": {"partition": "iid", "max_length": 16, "proxy_fraction": 0.3},
    "clients": [{"id": "a", "model": "small", "task": "news"}, {"id": "b", "model": "big", "task": "news"}],
}


def test_alignment_improves_a_projection_agreement_on_held_out_proxy_texts() -> None:
    # Prepare
    torch.set_num_threads(1)
    scenario = parse_scenario(SCENARIO)
    settings = ColoraSettings(rank=2, n_blocks=2)
    options = {"steps": 150, "lr": 0.02, "ridge": 1e-4, "holdout": 0.25}

    # Execute
    frozen, report = pivot_alignment(scenario, settings, ("q", "v"), seed=0, options=options)

    # Assert
    assert report["pivot"] == "small" and report["held_out"] >= 1
    errors = report["models"]["big"]
    assert errors["error_after"] < errors["error_before"]
    a, b = frozen["big"]["colora.1.q.A"], frozen["big"]["colora.1.q.B"]
    assert a.shape == (2, 32) and b.shape == (32, 2)
    np.testing.assert_allclose(a @ a.T, np.eye(2), atol=1e-5)
    assert frozen["small"]["colora.1.q.A"].shape == (2, 16)


def test_one_model_keeps_its_seeded_a_and_b_without_reading_the_proxy_split() -> None:
    # Prepare: one model and no proxy split at all
    single = {**SCENARIO, "data": {**SCENARIO["data"], "proxy_fraction": 0.0}, "clients": SCENARIO["clients"][:1]}
    scenario = parse_scenario(single)
    settings = ColoraSettings(rank=2, n_blocks=2)

    # Execute
    frozen, report = pivot_alignment(scenario, settings, ("q", "v"), seed=3, options={"holdout": 0.25})

    # Assert: the same A and B as 'random_shared' draws from the seed
    dims = model_dims(cached_config(scenario.models["small"]))
    expected = random_shared_frozen(frozen_schema(settings, dims, ("q", "v")), 3)
    assert report == {"pivot": "small", "models": {}}
    assert sorted(frozen) == ["small"]
    for name, value in expected.items():
        np.testing.assert_array_equal(frozen["small"][name], value.numpy())
