"""Co-LoRA adapter kind: zero start, width-free P and Q, block ends, gates, names."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel

from fedbrick_flower.adapters.base import make_kind
from fedbrick_flower.adapters.colora import (
    ColoraKind,
    CoLoraLinear,
    ColoraSettings,
    frozen_tensors,
    gate_tensors,
    global_tensors,
    local_tensors,
)
from fedbrick_flower.models import model_dims, model_family


def _tiny(family: str, width: int, layers: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        family,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * width,
        vocab_size=50,
    )
    return AutoModel.from_config(config).eval()


def test_zero_p_and_q_leave_the_network_unchanged() -> None:
    # Prepare
    base = _tiny("bert", 16)
    adapted = _tiny("bert", 16)
    ColoraKind(ColoraSettings(rank=4, n_blocks=2)).inject(adapted, model_family(adapted), None, ("q", "v"), seed=0)
    ids = torch.randint(0, 50, (2, 5))

    # Execute
    with torch.no_grad():
        expected = base(input_ids=ids).last_hidden_state
        got = adapted(input_ids=ids).last_hidden_state

    # Assert: P = Q = 0 at block ends and B = 0 elsewhere give a zero adapter output
    torch.testing.assert_close(got, expected)


def test_p_moves_the_output_through_frozen_a_and_b() -> None:
    # Prepare
    module = CoLoraLinear(torch.nn.Linear(6, 5), ColoraSettings(rank=2, alpha=2.0, gate="scalar"), pq=True)
    with torch.no_grad():
        module.A.copy_(torch.eye(2, 6))
        module.B.copy_(torch.eye(5, 2))
        module.P_local.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        module.Q_local.copy_(torch.tensor([0.5, 0.0]))
    x = torch.ones(1, 1, 6)

    # Execute
    delta = module(x) - module.base(x)

    # Assert: β = σ(0) = 0.5 on G (zero), 0.5 on L: 0.5 * s * ((x Aᵀ) P + Q) Bᵀ with s = 1
    torch.testing.assert_close(delta, torch.tensor([[[0.75, 1.0, 0.0, 0.0, 0.0]]]))


def test_p_and_q_shapes_and_names_do_not_depend_on_width_or_family() -> None:
    # Prepare
    kind = ColoraKind(ColoraSettings(rank=4, n_blocks=2))
    configs = [
        AutoConfig.for_model("bert", hidden_size=16, num_hidden_layers=4, num_attention_heads=2),
        AutoConfig.for_model("llama", hidden_size=48, num_hidden_layers=6, num_attention_heads=2),
    ]

    # Execute
    schemas = [kind.schema(c, range(model_dims(c).num_layers), ("q", "v")) for c in configs]
    pq = [{n: s for n, s in schema.items() if n.startswith("colora.")} for schema in schemas]

    # Assert
    assert pq[0] == pq[1] and pq[0]["colora.1.v.P"] == (4, 4) and pq[0]["colora.1.v.Q"] == (4,)


@pytest.mark.parametrize(("depth", "ends"), [(6, [0, 1, 2, 5]), (12, [2, 5, 8, 11]), (30, [6, 13, 20, 29])])
def test_block_end_layers_follow_the_official_rule(depth: int, ends: list[int]) -> None:
    # Execute / Assert
    assert ColoraSettings(n_blocks=4, block_rule="fedmosaic").targets(depth) == ends


@pytest.mark.parametrize(("depth", "ends"), [(6, [1, 3, 4, 5]), (12, [3, 6, 8, 11]), (30, [7, 15, 22, 29])])
def test_default_block_ends_sit_at_equal_relative_depth(depth: int, ends: list[int]) -> None:
    # Execute
    targets = ColoraSettings(n_blocks=4).targets(depth)

    # Assert: block b of MiniLM (6), MPNet (12) and SmolLM2 (30) ends within half a layer of relative depth b / 4
    assert targets == ends
    for block, layer in enumerate(targets, start=1):
        assert abs(layer - block * (depth - 1) / 4) <= 0.5


def test_inject_names_every_part_and_the_schema_matches_the_local_tensors() -> None:
    # Prepare
    backbone = _tiny("llama", 16, layers=4)
    kind = make_kind("colora", rank=2, n_blocks=2)

    # Execute
    kind.inject(backbone, model_family(backbone), None, ("q", "v"), seed=0)
    schema = kind.schema(backbone.config, range(4), ("q", "v"))

    # Assert
    local = local_tensors(backbone)
    assert {n: tuple(t.shape) for n, t in local.items()} == schema
    assert set(global_tensors(backbone)) == set(local)
    assert set(frozen_tensors(backbone)) == {f"colora.{b}.{r}.{p}" for b in (0, 1) for r in "qv" for p in "AB"}
    assert all(t.requires_grad for t in [*local.values(), *gate_tensors(backbone).values()])
    assert not any(t.requires_grad for t in [*global_tensors(backbone).values(), *frozen_tensors(backbone).values()])
    a = frozen_tensors(backbone)["colora.0.q.A"]
    torch.testing.assert_close(a @ a.T, torch.eye(2), atol=1e-5, rtol=0)


def test_the_input_gate_depends_on_the_input_and_starts_at_one_half() -> None:
    # Prepare
    module = CoLoraLinear(torch.nn.Linear(4, 4), ColoraSettings(rank=2, gate="input"), pq=False).eval()
    x = torch.randn(3, 5, 4)

    # Execute
    start = module.gate(x)
    with torch.no_grad():
        module.gate_weight.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    moved = module.gate(x)

    # Assert
    torch.testing.assert_close(start, torch.full((3, 1, 1), 0.5))
    torch.testing.assert_close(moved.flatten(), torch.sigmoid(x[..., 0].mean(dim=1)))


def test_bad_settings_name_the_field() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="algorithm_params.gate"):
        ColoraSettings(gate="sometimes")
