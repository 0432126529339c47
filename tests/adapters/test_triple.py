"""The triple-matrix adapter (H2Tune): LoRA when T = 0, sparse selection, and the bank's download and upload."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedbrick_flower.adapters.base import kind_class
from fedbrick_flower.adapters.lora import LoraKind, LoraSettings, lora_tensors
from fedbrick_flower.adapters.triple import (
    RELATION_NAME,
    TripleKind,
    TripleSettings,
    block_selection,
    fixed_selection,
    initial_relation,
    mix_bank,
    project_bank,
    triple_bank,
    triple_modules,
)
from fedbrick_flower.models import family_of, keep_layers
from tests.conftest import TINY_CONFIGS, tiny_model


def _inputs(vocab: int = 100) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(0, vocab, (2, 7), generator=generator),
        "attention_mask": torch.ones(2, 7, dtype=torch.long),
    }


def _triple(model_type: str = "bert", **settings) -> tuple[torch.nn.Module, TripleKind]:
    backbone = tiny_model(model_type)
    values = {"rank": 2, "max_rank": 4, "slots": 6, "roles": ("q", "v"), **settings}
    kind = TripleKind(TripleSettings(**values))
    kind.inject(backbone, family_of(model_type), None, values["roles"], seed=3)
    return backbone, kind


def test_registered_kind_and_settings_name_the_bad_field() -> None:
    assert kind_class("triple") is TripleKind
    for field in dataclasses.fields(TripleSettings):
        assert field.metadata.get("help"), field.name
    with pytest.raises(ValueError, match=r"triple.rank \(8\) exceeds triple.max_rank \(4\)"):
        TripleSettings(rank=8, max_rank=4)
    with pytest.raises(ValueError, match="triple.selection must be one of"):
        TripleSettings(selection="random")


def test_with_t_zero_the_adapter_equals_plain_lora() -> None:
    # Prepare: peft LoRA and the triple adapter, same rank, alpha, seed (same A), the same random B, bank = 0
    lora_model, triple_model = tiny_model("bert"), tiny_model("bert")
    family = family_of("bert")
    LoraKind(LoraSettings(rank=2, alpha=16.0, roles=("q", "v"))).inject(lora_model, family, None, ("q", "v"), 3)
    kind = TripleKind(TripleSettings(rank=2, max_rank=4, slots=4, alpha=16.0, roles=("q", "v")))
    kind.inject(triple_model, family, None, ("q", "v"), seed=3)
    lora, triple = lora_tensors(lora_model, family), kind.tensors(triple_model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in lora.items():
            twin = triple[name.replace("lora_", "triple_")]
            if name.endswith("lora_A"):
                np.testing.assert_array_equal(tensor.numpy(), twin.numpy())  # the same seeded A
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
                twin.copy_(tensor)

    # Execute
    with torch.no_grad():
        expected = lora_model(**_inputs()).last_hidden_state
        actual = triple_model(**_inputs()).last_hidden_state
        before = tiny_model("bert")(**_inputs()).last_hidden_state

    # Assert
    assert not torch.allclose(expected, before, atol=1e-3)  # B != 0: the update is not nothing
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("selection", ["fixed", "block", "straight-through"])
def test_selection_keeps_r_squared_entries_and_scatters_gradients_there_only(selection: str) -> None:
    # Prepare: a non-zero bank and B, so every path carries gradient
    backbone, kind = _triple(selection=selection, rank=3, max_rank=5)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for role in ("q", "v"):
            triple_bank(backbone).bank(role).copy_(torch.randn(6, 5, 5, generator=generator))
        for module in triple_modules(backbone, family_of("bert")).values():
            module.triple_B.copy_(torch.randn(module.triple_B.shape, generator=generator))

    # Execute
    backbone(**_inputs()).last_hidden_state.square().sum().backward()

    # Assert
    for module in triple_modules(backbone, family_of("bert")).values():
        positions = module.active_positions()
        assert positions.numel() == 9 and positions.unique().numel() == 9
        gradient = module.triple_D.grad.reshape(-1)
        outside = torch.ones(25, dtype=torch.bool).index_fill(0, positions, False)
        assert torch.all(gradient[outside] == 0)
        assert torch.count_nonzero(gradient[positions]) == 9
        np.testing.assert_allclose(
            module.middle().detach().numpy(), module.full_middle().detach().reshape(-1)[positions].reshape(3, 3), 1e-6
        )
        if selection == "straight-through":
            assert torch.count_nonzero(module.triple_M.grad) == 9
    assert torch.count_nonzero(triple_bank(backbone).relation.grad) > 0  # the task loss reaches Π


def test_fixed_selection_is_nested_across_ranks_and_block_is_the_leading_block() -> None:
    small, large = set(fixed_selection(2, 8, 0, "q").tolist()), set(fixed_selection(4, 8, 0, "q").tolist())
    assert len(small) == 4 and small <= large and len(large) == 16
    assert fixed_selection(4, 8, 0, "q").tolist() != fixed_selection(4, 8, 0, "v").tolist()
    assert block_selection(2, 4).tolist() == [0, 1, 4, 5]


def test_download_and_upload_through_the_relation_by_hand_for_6_layers_and_30_slots() -> None:
    # Prepare: Π from relative depth (client layer l sits at slot 5.8 l), a bank whose slot g is filled with g
    relation = torch.as_tensor(initial_relation(6, 30))
    bank = torch.arange(30, dtype=torch.float64)[:, None, None].expand(30, 2, 2).clone()
    received = bank + 100.0

    # Execute
    fulls = mix_bank(relation, bank)
    upload = project_bank(relation, fulls + 1000.0, received)

    # Assert: download, layer l = 0.. 5 at slots 0, 5.8, 11.6, 17.4, 23.2, 29
    np.testing.assert_allclose(fulls[:, 0, 0].numpy(), [0.0, 5.8, 11.6, 17.4, 23.2, 29.0])
    assert relation.shape == (30, 6) and torch.allclose(relation.sum(dim=0), torch.ones(6, dtype=relation.dtype))
    # upload: slot 0 is all layer 0; slot 5 takes 0.2 of layer 1 and keeps 0.8 of what it received; slot 1 no layer
    t = fulls[:, 0, 0] + 1000.0
    assert upload[0, 0, 0].item() == pytest.approx(t[0].item())
    assert upload[5, 0, 0].item() == pytest.approx(0.2 * t[1].item() + 0.8 * 105.0)
    assert upload[6, 0, 0].item() == pytest.approx(0.8 * t[1].item() + 0.2 * 106.0)
    assert upload[1, 0, 0].item() == pytest.approx(101.0)
    assert upload[29, 0, 0].item() == pytest.approx(t[5].item())
    # a client relating two layers fully to one slot uploads their weighted average, not their sum
    doubled = torch.zeros(30, 6, dtype=torch.float64)
    doubled[3, 0], doubled[3, 1] = 1.0, 3.0
    fulls = torch.stack([torch.full((2, 2), float(v), dtype=torch.float64) for v in (4.0, 8.0, 0, 0, 0, 0)])
    assert project_bank(doubled, fulls, received)[3, 0, 0].item() == pytest.approx(7.0)


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_schema_from_the_config_matches_the_injected_tensors(model_type: str) -> None:
    # Prepare: a client holding global layers 1 and 3
    backbone, family = tiny_model(model_type), family_of(model_type)
    config = backbone.config
    keep_layers(backbone, family, [1, 3])
    kind = TripleKind(TripleSettings(rank=2, max_rank=4, slots=5, roles=("all-linear",)))

    # Execute
    kind.inject(backbone, family, None, ("all-linear",), seed=0)
    tensors = kind.tensors(backbone)
    schema = kind.schema(config, [1, 3], ("all-linear",))

    # Assert
    per_layer = {name: tuple(t.shape) for name, t in tensors.items() if name.startswith("layers.")}
    assert per_layer == schema
    assert tuple(tensors[RELATION_NAME].shape) == (5, 2)
    banks = {name for name in tensors if name.startswith("bank.")}
    assert banks and all(tuple(tensors[name].shape) == (5, 4, 4) for name in banks)
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert all("triple_" in n or n.endswith("relation") for n in trainable)
