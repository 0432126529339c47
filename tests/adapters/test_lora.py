"""Canonical adapter names, seeded LoRA initialisation and the peft export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedbrick_flower.adapters.lora import (
    LoraKind,
    LoraSettings,
    adapter_tensors,
    attach_lora,
    layer_ranks,
    load_adapter_tensors,
    lora_tensors,
    save_peft_adapter,
    with_ranks_of,
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


def _mixed_rank_tensors(model_type: str = "bert") -> dict[str, np.ndarray]:
    """Canonical LoRA tensors of a full 4-layer tiny model: layers 0 and 1 at rank 2, layers 2 and 3 at rank 8."""
    rng = np.random.default_rng(3)
    config = tiny_model(model_type).config
    tensors = {}
    for g in range(4):
        kind = LoraKind(LoraSettings(rank=2 if g < 2 else 8))
        for name, shape in kind.schema(config, [g], ("q", "v")).items():
            tensors[name] = rng.normal(size=shape).astype(np.float32)
    return tensors


def test_layer_ranks_come_from_the_tensors_and_a_mixed_layer_is_refused() -> None:
    # Prepare
    tensors = _mixed_rank_tensors()

    # Execute
    ranks = layer_ranks(tensors)

    # Assert
    assert ranks == {0: 2, 1: 2, 2: 8, 3: 8}
    tensors["layers.0.attention.self.value.lora_A"] = np.zeros((8, 32), np.float32)
    with pytest.raises(ValueError, match="layer 0 mixes LoRA ranks"):
        layer_ranks(tensors)


def test_mixed_rank_tensors_build_load_and_save_a_peft_folder_with_per_layer_ranks(tmp_path) -> None:
    # Prepare
    from peft import PeftModel

    tensors = _mixed_rank_tensors()
    settings = with_ranks_of(LoraSettings(rank=4, alpha=16.0), tensors)
    model = SequenceClassifier(attach_lora(tiny_model("bert"), family_of("bert"), settings, seed=0), num_labels=3)
    load_adapter_tensors(model, family_of("bert"), tensors)
    inputs = torch.tensor([[1, 5, 7, 9, 2]])
    mask = torch.ones_like(inputs)

    # Execute
    save_peft_adapter(tmp_path, tensors, family_of("bert"), LoraSettings(rank=4, alpha=16.0), base_model="tiny")
    loaded = PeftModel.from_pretrained(tiny_model("bert"), str(tmp_path)).eval()

    # Assert: each layer has its own rank, values and scaling alpha / r, so both models compute the same output.
    state = loaded.state_dict()
    for g, rank in {0: 2, 1: 2, 2: 8, 3: 8}.items():
        key = f"base_model.model.encoder.layer.{g}.attention.self.query.lora_A.default.weight"
        assert tuple(state[key].shape) == (rank, 32)
        np.testing.assert_allclose(state[key].numpy(), tensors[f"layers.{g}.attention.self.query.lora_A"])
    ours = model.backbone.eval()(input_ids=inputs, attention_mask=mask).last_hidden_state
    theirs = loaded(input_ids=inputs, attention_mask=mask).last_hidden_state
    plain = tiny_model("bert")(input_ids=inputs, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours, theirs)
    assert not torch.allclose(ours, plain, atol=1e-4)  # the adapters do change the output


def test_drop_lora_keeps_the_head_bricks_and_banks() -> None:
    # Prepare
    from fedbrick_flower.adapters.naming import drop_lora, is_lora

    names = [
        "layers.0.attention.self.query.lora_A",
        "layers.3.mlp.down_proj.lora_B",
        "bricks.1.A1",
        "head.weight",
        "bank.q",
    ]

    # Execute
    kept = drop_lora(dict.fromkeys(names, 0))

    # Assert
    assert list(kept) == names[2:]
    assert [is_lora(n) for n in names] == [True, True, False, False, False]
