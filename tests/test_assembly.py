"""The neutral assembly: the global model keeps each layer's LoRA rank from the tensors it holds."""

from __future__ import annotations

import numpy as np

from fedbrick_flower.adapters.lora import LoraKind, LoraSettings, adapter_tensors
from fedbrick_flower.assembly import build_global_model, cached_config
from fedbrick_flower.models import model_family
from fedbrick_flower.scenario import load_scenario


def test_global_model_takes_each_layers_rank_from_its_tensors() -> None:
    # Prepare: tiny-bert (4 layers, width 256); layers 0-1 come from rank-2 clients, layer 2 from a rank-8 one.
    scenario = load_scenario("smoke")
    config = cached_config(scenario.models["tiny-bert"])
    rng = np.random.default_rng(0)
    tensors = {}
    for g, rank in {0: 2, 1: 2, 2: 8}.items():
        for name, shape in LoraKind(LoraSettings(rank=rank)).schema(config, [g], ("q", "v")).items():
            tensors[name] = rng.normal(size=shape).astype(np.float32)

    # Execute
    model = build_global_model(scenario, "tiny-bert", "bbc", tensors, "cpu")

    # Assert: held layers have their tensors' rank and values; untrained layer 3 keeps the scenario's rank 8.
    held = adapter_tensors(model, model_family(model.backbone))
    for name, value in tensors.items():
        np.testing.assert_array_equal(held[name].detach().numpy(), value)
    assert held["layers.1.attention.self.query.lora_A"].shape == (2, 256)
    assert held["layers.3.attention.self.value.lora_B"].shape == (256, 8)
    assert not held["layers.3.attention.self.value.lora_B"].any()
