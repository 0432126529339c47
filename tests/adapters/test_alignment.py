"""Weight alignment of Co-LoRA's frozen A and B: the math on synthetic activations."""

from __future__ import annotations

import torch

from fedbrick_flower.adapters.alignment import (
    align_projection,
    carry_b,
    cca_map,
    orthonormal_columns,
    orthonormal_rows,
    projection_error,
)


def test_aligned_a_agrees_better_with_the_pivot_on_held_out_inputs() -> None:
    # Prepare: the larger model's inputs are a fixed linear image of the pivot's (two views of the same texts)
    generator = torch.Generator().manual_seed(0)
    pivot_inputs = torch.randn(120, 6, generator=generator)
    mixing = torch.randn(6, 10, generator=generator)
    big_inputs = pivot_inputs @ mixing + 0.01 * torch.randn(120, 10, generator=generator)
    target = pivot_inputs @ orthonormal_rows((3, 6), seed=1).T
    start = orthonormal_rows((3, 10), seed=2)

    # Execute
    aligned = align_projection(big_inputs[:90], target[:90], start, steps=300, lr=0.05)

    # Assert
    before = projection_error(big_inputs[90:], start, target[90:])
    after = projection_error(big_inputs[90:], aligned, target[90:])
    assert after < 0.5 * before
    torch.testing.assert_close(aligned @ aligned.T, torch.eye(3), atol=1e-5, rtol=0)


def test_cca_carries_the_pivot_b_into_the_larger_output_space_orthonormally() -> None:
    # Prepare
    generator = torch.Generator().manual_seed(0)
    pivot_outputs = torch.randn(200, 5, generator=generator)
    big_outputs = pivot_outputs @ torch.randn(5, 8, generator=generator)

    # Execute
    transform = cca_map(pivot_outputs, big_outputs)
    b = carry_b(orthonormal_columns((5, 2), seed=3), transform)

    # Assert
    assert transform.shape == (8, 5) and b.shape == (8, 2)
    torch.testing.assert_close(b.T @ b, torch.eye(2), atol=1e-5, rtol=0)
