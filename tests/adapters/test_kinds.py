"""The adapter-kind interface: registry, settings, and config-only schemas that match the injected modules."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedbrick_flower.adapters.base import combined_schema, kind_class, kind_names, make_kind, register_kind
from fedbrick_flower.adapters.brick import BrickConfig, BrickKind
from fedbrick_flower.adapters.lora import LoraKind, LoraSettings
from fedbrick_flower.models import family_of, keep_layers, model_dims
from tests.conftest import TINY_CONFIGS, tiny_model


def test_registry_finds_kinds_by_name_and_refuses_unknown_or_duplicate_names() -> None:
    # Execute / Assert
    assert {"lora", "brick"} <= set(kind_names())
    assert kind_class("lora") is LoraKind and kind_class("brick") is BrickKind
    assert make_kind("brick", rank=3).settings == BrickConfig(rank=3)
    assert {"colora", "triple"} <= set(kind_names())
    with pytest.raises(ValueError, match=r"'quad' is not one of \[.*'brick'.*'colora'.*'lora'.*'triple'"):
        kind_class("quad")
    with pytest.raises(ValueError, match="already registered"):
        register_kind("lora", "somewhere:Else")
    with pytest.raises(ValueError, match="module:Class"):
        register_kind("new-kind", "no_colon_here")


def test_a_kind_refuses_settings_of_another_kind() -> None:
    with pytest.raises(TypeError, match="takes LoraSettings, got BrickConfig"):
        LoraKind(BrickConfig())


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rank": 0}, "lora.rank must be a positive integer"),
        ({"rank": True}, "lora.rank"),
        ({"alpha": 0.0}, "lora.alpha must be positive"),
        ({"dropout": 1.0}, r"lora.dropout must be in \[0, 1\)"),
        ({"roles": ("q", "query")}, r"\['query'\] are not among"),
        ({"layer_ranks": {3: 0}}, r"lora.layer_ranks\[3\]"),
    ],
)
def test_lora_settings_name_the_bad_field(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoraSettings(**changes)


def test_every_settings_field_has_help() -> None:
    for settings in (LoraSettings, BrickConfig):
        for field in dataclasses.fields(settings):
            assert field.metadata.get("help"), (settings.__name__, field.name)


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("roles", [("q", "v"), ("all-linear",)])
def test_lora_schema_from_the_config_matches_the_injected_tensors(model_type: str, roles: tuple[str, ...]) -> None:
    # Prepare: a client holding global layers 1 and 3, with layer 3 at rank 2.
    backbone, family = tiny_model(model_type), family_of(model_type)
    config = backbone.config
    keep_layers(backbone, family, [1, 3])
    kind = LoraKind(LoraSettings(rank=4, roles=roles, layer_ranks={3: 2}))

    # Execute
    kind.inject(backbone, family, None, roles, seed=0)
    schema = kind.schema(config, [1, 3], roles)

    # Assert
    assert {name: tuple(t.shape) for name, t in kind.tensors(backbone).items()} == schema
    assert schema == kind.schema(model_dims(config), [1, 3], roles)  # dims alone, no config object
    expected_modules = len(family.module_paths(roles))
    assert len(schema) == 2 * 2 * expected_modules
    assert all(shape[0] == 2 for name, shape in schema.items() if name.startswith("layers.3.") and "lora_A" in name)


def test_bert_down_role_does_not_catch_the_attention_output() -> None:
    # Prepare: BERT's "output.dense" (down) is a suffix of "attention.output.dense" (o).
    backbone, family = tiny_model("bert"), family_of("bert")

    # Execute
    LoraKind(LoraSettings(rank=2, roles=("down",))).inject(backbone, family, [0], ("down",), seed=0)

    # Assert
    names = set(LoraKind().tensors(backbone))
    assert names == {"layers.0.output.dense.lora_A", "layers.0.output.dense.lora_B"}


def test_inject_on_given_layers_only_and_refuses_layers_the_backbone_lacks() -> None:
    # Prepare
    backbone, family = tiny_model("llama"), family_of("llama")
    keep_layers(backbone, family, [0, 2])
    kind = LoraKind(LoraSettings(rank=2))

    # Execute
    kind.inject(backbone, family, [2], ("q",), seed=0)

    # Assert
    assert set(kind.tensors(backbone)) == {"layers.2.self_attn.q_proj.lora_A", "layers.2.self_attn.q_proj.lora_B"}
    other = keep_layers(tiny_model("llama"), family, [0, 2])
    with pytest.raises(ValueError, match=r"LoRA layers \[1\] are not real layers .* holds \[0, 2\]"):
        LoraKind(LoraSettings(rank=2)).inject(other, family, [1], ("q",), seed=0)


def test_load_round_trips_and_names_an_unknown_or_misshapen_tensor() -> None:
    # Prepare
    backbone, family = tiny_model("mpnet"), family_of("mpnet")
    kind = LoraKind(LoraSettings(rank=2))
    kind.inject(backbone, family, [1], ("q", "v"), seed=0)
    values = {name: np.full(tuple(t.shape), 0.25, np.float32) for name, t in kind.tensors(backbone).items()}

    # Execute
    kind.load(backbone, values)

    # Assert
    for name, tensor in kind.tensors(backbone).items():
        assert torch.all(tensor == 0.25), name
    with pytest.raises(KeyError, match="layers.0.attention.attn.q.lora_A"):
        kind.load(backbone, {"layers.0.attention.attn.q.lora_A": np.zeros((2, 32), np.float32)})
    with pytest.raises(KeyError, match=r"layers.1.attention.attn.v.lora_B.*shape \(32, 3\)"):
        kind.load(backbone, {"layers.1.attention.attn.v.lora_B": np.zeros((32, 3), np.float32)})


def test_combined_schema_unions_kinds_and_refuses_a_shared_name() -> None:
    # Prepare
    config = tiny_model("llama").config
    lora, brick = LoraKind(LoraSettings(rank=2)), BrickKind(BrickConfig(rank=2))

    # Execute
    schema = combined_schema([lora, brick], config, [1], ("q",), kind_layers={"brick": [0, 1, 2, 3]})

    # Assert
    assert schema["layers.1.self_attn.q_proj.lora_A"] == (2, 32) and schema["bricks.3.B2"] == (32, 2)
    assert len(schema) == 2 + 4 * 4
    with pytest.raises(ValueError, match="'lora' and 'lora' both declare tensor 'layers.1.self_attn.q_proj.lora_A'"):
        combined_schema([lora, lora], config, [1], ("q",))
