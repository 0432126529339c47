"""Depth truncation keeps the right layers and records their global indices, for every family."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedbrick_flower.models import family_of, global_layer_indices, keep_layers, layer_stack


def _forward(model: nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state


def test_keep_layers_keeps_the_chosen_layers_with_global_indices(family_model) -> None:
    # Prepare
    model_type, model = family_model
    family = family_of(model_type)
    originals = list(layer_stack(model, family))

    # Execute
    keep_layers(model, family, [3, 1])

    # Assert
    stack = layer_stack(model, family)
    assert global_layer_indices(model, family) == (1, 3)
    assert [id(m) for m in stack] == [id(originals[1]), id(originals[3])]
    assert getattr(model.config, family.depth_attribute) == 2
    assert _forward(model).shape == (2, 6, 32)


def test_filler_keeps_full_depth_and_replaces_missing_layers(family_model) -> None:
    # Prepare
    model_type, model = family_model
    family = family_of(model_type)

    # Execute
    keep_layers(model, family, [2], filler=lambda g: nn.Identity())

    # Assert
    stack = layer_stack(model, family)
    assert global_layer_indices(model, family) == (0, 1, 2, 3)
    assert [type(m).__name__ for m in stack].count("LayerShim") == 3
    assert _forward(model).shape == (2, 6, 32)


@pytest.mark.parametrize("layers", [[], [4], [-1]])
def test_keep_layers_rejects_layers_outside_the_model(layers: list[int]) -> None:
    # Prepare
    from tests.conftest import tiny_model

    model = tiny_model("bert")

    # Execute / Assert
    with pytest.raises(ValueError, match="layers="):
        keep_layers(model, family_of("bert"), layers)


def test_unknown_family_lists_the_known_ones() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="not supported.*bert"):
        family_of("t5")
