"""The padding-aware MSE that both FedBRICK halves use."""

from __future__ import annotations

import pytest
import torch

from fedbrick_flower.losses import masked_mse, masked_squared_error


def test_masked_mse_counts_only_real_tokens() -> None:
    # Prepare
    pred = torch.zeros(1, 3, 2)
    target = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [float("nan"), 5.0]]])
    mask = torch.tensor([[1, 1, 0]])

    # Execute
    loss = masked_mse(pred, target, mask)

    # Assert: (1 + 1 + 4 + 4) / (2 tokens * 2 features)
    assert loss.item() == pytest.approx(2.5)


def test_masked_mse_without_a_mask_is_the_plain_mean() -> None:
    # Prepare
    pred, target = torch.zeros(2, 2, 2), torch.arange(8.0).reshape(2, 2, 2)

    # Execute / Assert: (0 + 1 + 4 + ... + 49) / 8
    assert masked_mse(pred, target, None).item() == pytest.approx(140 / 8)


def test_masked_squared_error_sums_features_and_averages_real_tokens() -> None:
    # Prepare: 2 real tokens of 3 features with squared errors 1+4+9 and 0+0+16, one padded token
    pred = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 4.0], [9.0, 9.0, 9.0]]])
    target = torch.zeros_like(pred)
    mask = torch.tensor([[1, 1, 0]])

    # Execute
    loss = masked_squared_error(pred, target, mask)

    # Assert: (14 + 16) / 2 tokens, i.e. d = 3 times the per-element mean
    assert loss.item() == pytest.approx(15.0)
    assert loss.item() == pytest.approx(3 * masked_mse(pred, target, mask).item())
