"""Tests for the BRICK surrogate, its tensor names and the ``brick`` adapter kind."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedbrick_flower.adapters.brick import (
    BRICK_PARAM_NAMES,
    Brick,
    BrickConfig,
    BrickKind,
    brick_num_parameters,
    brick_schema,
    brick_tensor_name,
    brick_tensors,
    bricks_of,
    is_brick,
    load_brick_tensors,
    parse_brick_tensor_name,
    seeded_brick,
)
from fedbrick_flower.losses import masked_mse


def _fresh_brick(d: int = 32, rank: int = 8, seed: int = 0) -> Brick:
    torch.manual_seed(seed)
    return Brick(d, rank)


@pytest.mark.parametrize("d", [32, 384, 576])
@pytest.mark.parametrize("leading", [(2, 5), (7,)])
def test_init_is_scaled_identity(d: int, leading: tuple[int, ...]) -> None:
    # Prepare
    brick = _fresh_brick(d)
    x = torch.randn(*leading, d)

    # Execute
    out = brick(x)

    # Assert
    assert out.shape == x.shape
    torch.testing.assert_close(out, x * (1 + 1 / d))


def test_parameter_names_shapes_and_count() -> None:
    # Prepare
    brick = Brick(hidden_size=768, rank=8)

    # Execute
    shapes = {name: tuple(p.shape) for name, p in brick.named_parameters()}
    total = sum(p.numel() for p in brick.parameters())

    # Assert
    assert tuple(shapes) == BRICK_PARAM_NAMES
    assert shapes == {"A1": (8, 768), "B1": (768, 8), "A2": (8, 768), "B2": (768, 8)}
    assert total == brick_num_parameters(768, 8) == 4 * 8 * 768 == 24_576
    small = Brick(384, 4)
    assert brick_num_parameters(384, 4) == sum(p.numel() for p in small.parameters())


def test_gradients_reach_b_first_then_a() -> None:
    # Prepare
    brick = _fresh_brick(32)
    x, target = torch.randn(4, 6, 32), torch.randn(4, 6, 32)
    optimizer = torch.optim.SGD(brick.parameters(), lr=0.1)

    # Execute
    masked_mse(brick(x), target, None).backward()
    first = {name: p.grad.clone() for name, p in brick.named_parameters()}
    optimizer.step()
    optimizer.zero_grad()
    masked_mse(brick(x), target, None).backward()
    second = {name: p.grad.clone() for name, p in brick.named_parameters()}

    # Assert: with B = 0 the A gradients vanish exactly; after one step they flow.
    assert first["A1"].count_nonzero() == 0 and first["A2"].count_nonzero() == 0
    assert first["B1"].abs().sum() > 0 and first["B2"].abs().sum() > 0
    assert all(second[name].abs().sum() > 0 for name in BRICK_PARAM_NAMES)


def test_forward_keeps_low_precision_dtype() -> None:
    # Prepare
    brick = _fresh_brick(64)
    with torch.no_grad():
        brick.B1.normal_()
        brick.B2.normal_(std=0.01)
    x = torch.randn(3, 5, 64)
    reference = brick(x)

    # Execute
    out = brick.to(torch.bfloat16)(x.to(torch.bfloat16))
    mixed = brick(x)

    # Assert: the output follows the input's dtype, whatever the parameters' dtype.
    assert out.dtype == torch.bfloat16 and mixed.dtype == torch.float32
    torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.05)


def test_forward_rejects_wrong_width() -> None:
    # Prepare
    brick = Brick(32)

    # Execute / Assert
    with pytest.raises(ValueError, match="width 32"):
        brick(torch.randn(2, 16))


def test_brick_config_validates_rank() -> None:
    # Prepare
    help_text = dataclasses.fields(BrickConfig)[0].metadata["help"]

    # Execute / Assert
    assert BrickConfig().rank == 8 and "rank" in help_text.lower()
    with pytest.raises(ValueError, match=r"rank.*0"):
        BrickConfig(rank=0)
    with pytest.raises(ValueError, match="rank"):
        Brick(32, rank=-1)


def test_brick_names_round_trip_and_schema() -> None:
    # Execute
    name = brick_tensor_name(5, "B2")
    schema = brick_schema([0, 5], hidden_size=384, rank=8)

    # Assert
    assert name == "bricks.5.B2" and parse_brick_tensor_name(name) == (5, "B2") and is_brick(name)
    assert parse_brick_tensor_name("layers.5.attention.self.query.lora_A") is None
    assert not is_brick("head.weight")
    assert len(schema) == 8 and schema["bricks.5.A1"] == (8, 384) and schema["bricks.0.B1"] == (384, 8)
    assert sum(int(torch.tensor(s).prod()) for s in schema.values()) == 2 * brick_num_parameters(384, 8)


def test_brick_tensors_load_and_seeding() -> None:
    # Prepare
    source, target = seeded_brick(16, 2, seed=7), seeded_brick(16, 2, seed=8)
    with torch.no_grad():
        source.B1.fill_(0.5)

    # Execute
    load_brick_tensors({3: target}, {k: v.detach().numpy() for k, v in brick_tensors({3: source}).items()})

    # Assert
    assert torch.equal(seeded_brick(16, 2, seed=7).A1, seeded_brick(16, 2, seed=7).A1)
    assert not torch.equal(seeded_brick(16, 2, seed=7).A1, seeded_brick(16, 2, seed=8).A1)
    assert set(brick_tensors({3: target})) == set(brick_schema([3], 16, 2))
    for name in BRICK_PARAM_NAMES:
        assert torch.equal(getattr(target, name), getattr(source, name))
    with pytest.raises(KeyError, match="bricks.4.A1"):
        load_brick_tensors({3: target}, {"bricks.4.A1": torch.zeros(2, 16)})
    with pytest.raises(KeyError, match="shape"):
        load_brick_tensors({3: target}, {"bricks.3.A1": torch.zeros(16, 2)})


def test_brick_kind_runs_in_missing_layers_and_keeps_held_ones_aside() -> None:
    # Prepare: a 4-layer BERT holding layers 1 and 3; shims stand in for 0 and 2.
    from torch import nn

    from fedbrick_flower.models import family_of, keep_layers, layer_stack
    from tests.conftest import tiny_model

    backbone, family = tiny_model("bert"), family_of("bert")
    keep_layers(backbone, family, [1, 3], lambda g: nn.Identity())
    kind = BrickKind(BrickConfig(rank=2))

    # Execute
    kind.inject(backbone, family, None, (), seed=5)

    # Assert
    stack, bricks = layer_stack(backbone, family), bricks_of(backbone)
    assert sorted(bricks) == [0, 1, 2, 3]
    assert stack[0].inner is bricks[0] and stack[2].inner is bricks[2]
    assert all(p is not q for p in bricks[1].parameters() for q in backbone.parameters())
    assert {n: tuple(t.shape) for n, t in kind.tensors(backbone).items()} == kind.schema(backbone.config, range(4), ())
    other = tiny_model("bert")
    keep_layers(other, family, [0, 2], lambda g: nn.Identity())
    kind.inject(other, family, None, (), seed=5)
    torch.testing.assert_close(bricks_of(other)[1].A1, bricks[1].A1)  # same seed, same layer: same start


def test_brick_kind_load_names_the_bad_tensor() -> None:
    # Prepare
    from fedbrick_flower.models import family_of
    from tests.conftest import tiny_model

    backbone = BrickKind(BrickConfig(rank=2)).inject(tiny_model("llama"), family_of("llama"), [0], (), seed=0)

    # Execute / Assert
    with pytest.raises(KeyError, match="bricks.1.A1"):
        BrickKind(BrickConfig(rank=2)).load(backbone, {"bricks.1.A1": torch.zeros(2, 32)})
