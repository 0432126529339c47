"""Canonical adapter names, seeded LoRA initialisation and the peft export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedbrick_flower.adapters.lora import (
    LoraSettings,
    adapter_tensors,
    attach_lora,
    load_adapter_tensors,
    lora_tensors,
    save_peft_adapter,
)
from fedbrick_flower.adapters.naming import layer_of, layer_tensor_name, names_for_layers, parse_layer_tensor_name
from fedbrick_flower.models import SequenceClassifier, family_of, keep_layers
from tests.conftest import tiny_model


def _lora_model(model_type: str, layers: list[int]):
    model = tiny_model(model_type)
    family = family_of(model_type)
    keep_layers(model, family, layers)
    attach_lora(model, family, LoraSettings(rank=4), seed=7)
    return model, family


@pytest.mark.parametrize("name", ["layers.0.attention.self.query.lora_A", "layers.17.self_attn.q_proj.lora_B"])
def test_canonical_names_round_trip(name: str) -> None:
    # Execute
    parsed = parse_layer_tensor_name(name)

    # Assert
    assert parsed is not None
    assert layer_tensor_name(*parsed) == name
    assert layer_of(name) == parsed[0]
    assert layer_of("head.weight") is None


def test_lora_tensors_are_named_by_global_layer_index() -> None:
    # Execute
    model, family = _lora_model("llama", [1, 3])

    # Assert
    layers = {layer_of(name) for name in lora_tensors(model, family)}
    assert layers == {1, 3}
    assert set(lora_tensors(model, family)) == set(
        names_for_layers(
            {
                "self_attn.q_proj.lora_A": [4, 32],
                "self_attn.q_proj.lora_B": [32, 4],
                "self_attn.v_proj.lora_A": [4, 32],
                "self_attn.v_proj.lora_B": [16, 4],
            },
            [1, 3],
        )
    )


def test_shared_layers_start_identical_whatever_subset_a_client_holds() -> None:
    # Prepare
    deep, family = _lora_model("bert", [0, 1, 2, 3])
    shallow, _ = _lora_model("bert", [2, 3])

    # Execute
    deep_tensors, shallow_tensors = lora_tensors(deep, family), lora_tensors(shallow, family)

    # Assert
    for name, value in shallow_tensors.items():
        torch.testing.assert_close(value, deep_tensors[name])
        if name.endswith("lora_B"):
            assert torch.count_nonzero(value) == 0


def test_load_adapter_tensors_round_trips_and_rejects_unknown_names() -> None:
    # Prepare
    backbone, family = _lora_model("gpt2", [0, 2])
    model = SequenceClassifier(backbone, num_labels=3)
    values = {name: np.full(tuple(t.shape), 0.5, np.float32) for name, t in adapter_tensors(model, family).items()}

    # Execute
    load_adapter_tensors(model, family, values)

    # Assert
    for name, tensor in adapter_tensors(model, family).items():
        np.testing.assert_allclose(tensor.detach().numpy(), values[name])
    with pytest.raises(KeyError, match="layers.1"):
        load_adapter_tensors(model, family, {"layers.1.attn.c_attn.lora_A": np.zeros((4, 32), np.float32)})
    with pytest.raises(KeyError, match="shape"):
        load_adapter_tensors(model, family, {"head.bias": np.zeros(5, np.float32)})


def test_saved_adapter_loads_with_peft_on_the_full_depth_model(tmp_path) -> None:
    # Prepare
    from peft import PeftModel

    backbone, family = _lora_model("bert", [1, 3])
    tensors = {
        n: np.random.default_rng(0).normal(size=tuple(t.shape)).astype(np.float32)
        for n, t in lora_tensors(backbone, family).items()
    }

    # Execute
    save_peft_adapter(tmp_path, tensors, family, LoraSettings(rank=4), base_model="tiny")
    loaded = PeftModel.from_pretrained(tiny_model("bert"), str(tmp_path))

    # Assert
    state = loaded.state_dict()
    key = "base_model.model.encoder.layer.3.attention.self.value.lora_B.default.weight"
    np.testing.assert_allclose(state[key].numpy(), tensors["layers.3.attention.self.value.lora_B"])
    assert not any("encoder.layer.0." in k and "lora_" in k for k in state)
