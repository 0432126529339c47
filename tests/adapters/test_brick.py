"""Tests for the BRICK surrogate, its Stage-II schedule and server-side distillation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedbrick_flower.adapters.brick import (
    BRICK_PARAM_NAMES,
    Brick,
    BrickConfig,
    blend_alpha,
    brick_num_parameters,
    brick_schema,
    brick_tensor_name,
    brick_tensors,
    distill_brick,
    is_brick,
    load_brick_tensors,
    masked_mse,
    parse_brick_tensor_name,
    seeded_brick,
    stage_two_steps,
)


def _synthetic_layer(n: int = 64, t: int = 8, d: int = 32, seed: int = 1):
    """Cached (input, output) pairs of a fixed random layer x + 0.1 tanh(x W)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(d, d, generator=generator) / d**0.5
    inputs = torch.randn(n, t, d, generator=generator)
    targets = inputs + 0.1 * torch.tanh(inputs @ weight)
    return inputs, targets


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


def test_masked_mse_counts_only_real_tokens() -> None:
    # Prepare
    pred = torch.zeros(1, 3, 2)
    target = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [float("nan"), 5.0]]])
    mask = torch.tensor([[1, 1, 0]])

    # Execute
    loss = masked_mse(pred, target, mask)

    # Assert: (1 + 1 + 4 + 4) / (2 tokens * 2 features)
    assert loss.item() == pytest.approx(2.5)


def test_distillation_lowers_mse() -> None:
    # Prepare
    inputs, targets = _synthetic_layer()
    brick = _fresh_brick(32)

    # Execute
    result = distill_brick(brick, inputs, targets, epochs=5, lr=1e-2, batch_size=16)

    # Assert: measured 0.00532 -> 0.00248 with these seeds.
    assert result.steps == 5 * 4
    assert result.mse_after < 0.7 * result.mse_before
    with torch.no_grad():
        direct = ((brick(inputs) - targets) ** 2).mean().item()
    assert result.mse_after == pytest.approx(direct, rel=1e-5)


def test_distillation_ignores_padding() -> None:
    # Prepare: ragged sequences; padding holds garbage in one copy, zeros in the other.
    inputs, clean = _synthetic_layer()
    lengths = torch.randint(2, 9, (64,), generator=torch.Generator().manual_seed(2))
    mask = torch.arange(8) < lengths[:, None]
    clean = torch.where(mask[..., None], clean, 0.0)
    garbage = torch.where(mask[..., None], clean, 1e6)
    garbage[..., 0] = torch.where(mask, garbage[..., 0], float("nan"))
    brick_clean, brick_garbage = _fresh_brick(32), _fresh_brick(32)
    kwargs = {"epochs": 3, "lr": 1e-2, "batch_size": 16}

    # Execute
    with_clean = distill_brick(brick_clean, inputs, clean, mask, **kwargs)
    with_garbage = distill_brick(brick_garbage, inputs, garbage, mask.int(), **kwargs)

    # Assert
    assert with_garbage == with_clean
    assert with_garbage.mse_after < with_garbage.mse_before < 1.0
    for name in BRICK_PARAM_NAMES:
        assert torch.equal(getattr(brick_garbage, name), getattr(brick_clean, name))


def test_distillation_restores_requires_grad() -> None:
    # Prepare
    inputs, targets = _synthetic_layer(n=8)
    brick = _fresh_brick(32).requires_grad_(False)
    before = brick.B1.detach().clone()

    # Execute
    result = distill_brick(brick, inputs, targets, epochs=1, lr=1e-2, batch_size=4)

    # Assert
    assert result.steps == 2
    assert not any(p.requires_grad for p in brick.parameters())
    assert not torch.equal(brick.B1, before)


def test_blend_alpha_schedule() -> None:
    # Prepare
    total = 10

    # Execute
    values = [blend_alpha(step, total) for step in (0, 5, 10, 15, -1)]

    # Assert
    assert values == [1.0, 0.5, 0.0, 0.0, 1.0]
    for bad in (0, -3):
        with pytest.raises(ValueError, match="total_steps"):
            blend_alpha(0, bad)


def test_stage_two_steps_defaults() -> None:
    # Execute / Assert
    assert stage_two_steps(30) == 10
    assert stage_two_steps(200) == 40
    assert stage_two_steps(0) == 10
    assert stage_two_steps(200, fraction=0.5, minimum=1) == 100
    with pytest.raises(ValueError, match="steps_per_epoch"):
        stage_two_steps(-1)


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
