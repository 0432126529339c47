"""Server-side, layer-wise, teacher-forced distillation of a surrogate module onto its layer (FedBRICK).

The server caches each layer's input and output hidden states of the full-depth global model on its public proxy
split and fits the BRICK that stands in for the layer to them (``docs/algorithms/fedbrick.md#server-per-round``, step 5,
paper eq. 20). Pure torch, no Flower imports.

References
----------
FedBRICK: Federated Bias Recovery via Inserted Calibrative Kernels, AAAI-26.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters.brick import Brick, check_positive_int
from ..losses import masked_mse, masked_sse


@dataclass(frozen=True)
class DistillResult:
    """Outcome of ``distill_brick``.

    Parameters
    ----------
    mse_before, mse_after : float
        Masked MSE of the BRICK against the real layer on all given data, before and
        after.
    steps : int
        Optimiser steps taken.
    """

    mse_before: float
    mse_after: float
    steps: int


def distill_brick(
    brick: Brick,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    token_mask: torch.Tensor | None = None,
    *,
    epochs: int = 10,
    lr: float = 1e-4,
    batch_size: int = 128,
    seed: int = 0,
) -> DistillResult:
    """Server-side layer-wise distillation of one BRICK onto its layer (paper eq. 20).

    Teacher-forced: the BRICK sees the cached input of the real layer and is fitted to
    the real layer's cached output, minimising ``E||E(a_{l-1}) - f_l(a_{l-1})||^2`` with
    Adam over shuffled mini-batches of sequences (``docs/algorithms/fedbrick.md#server-per-round``, step 5). The
    optimiser is fresh on every call; batches without any real token are skipped, so
    they do not move Adam.

    Parameters
    ----------
    brick : Brick
        Trained in place. Its ``requires_grad`` flags and train/eval mode are restored.
    inputs, targets : torch.Tensor
        ``(N, T, d)`` hidden states before and after the real layer.
    token_mask : torch.Tensor, optional
        ``(N, T)`` bool or 0/1, true for real tokens; padding counts in neither the
        loss nor the reported MSE.
    epochs : int (default: 10)
        Passes over the data (0 only measures).
    lr : float (default: 1e-4)
        Adam learning rate (the paper's "server learning rate").
    batch_size : int (default: 128)
        Sequences per mini-batch.
    seed : int (default: 0)
        Seed of the shuffling generator.

    Returns
    -------
    DistillResult
        MSE before and after (on all given data, no grad) and the number of steps.
    """
    _check_distill_args(brick, inputs, targets, token_mask, epochs, lr, batch_size)
    inputs, targets = inputs.detach(), targets.detach()
    mask = None if token_mask is None else token_mask.detach().to(torch.bool)
    flags = [p.requires_grad for p in brick.parameters()]
    was_training = brick.training
    try:
        brick.requires_grad_(True)
        mse_before = _evaluate(brick, inputs, targets, mask, batch_size)
        steps = _fit(brick, inputs, targets, mask, epochs, lr, batch_size, seed)
        mse_after = _evaluate(brick, inputs, targets, mask, batch_size)
    finally:
        for parameter, flag in zip(brick.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)
        brick.train(was_training)
    return DistillResult(mse_before=mse_before, mse_after=mse_after, steps=steps)


def _fit(
    brick: Brick,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> int:
    """Adam over shuffled mini-batches of sequences; returns the number of steps."""
    optimizer = torch.optim.Adam(brick.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    brick.train()
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(inputs.shape[0], generator=generator)
        for index in order.split(batch_size):
            x, y, m = _batch(brick, inputs, targets, mask, index)
            if m is not None and not bool(m.any()):
                # An all-padding batch has zero gradient but would still move Adam.
                continue
            loss = masked_mse(brick(x), y, m)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
    return steps


@torch.no_grad()
def _evaluate(
    brick: Brick,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None,
    batch_size: int,
) -> float:
    """Exact masked MSE over all data: summed errors over summed counts.

    Not a mean of per-batch means, which would over-weight batches with fewer tokens.
    """
    total = torch.zeros((), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.int64)
    for index in torch.arange(inputs.shape[0]).split(batch_size):
        x, y, m = _batch(brick, inputs, targets, mask, index)
        batch_total, batch_count = masked_sse(brick(x), y, m)
        total += batch_total.double().cpu()
        count += batch_count.cpu()
    return float(total / count.clamp_min(1))


def _batch(
    brick: Brick,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None,
    index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Select sequences and move them to the BRICK's device (caches may be on CPU)."""
    device, dtype = brick.A1.device, brick.A1.dtype
    x = inputs[index].to(device=device, dtype=dtype)
    y = targets[index].to(device=device)
    m = None if mask is None else mask[index].to(device)
    return x, y, m


def _check_distill_args(
    brick: Brick,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    token_mask: torch.Tensor | None,
    epochs: int,
    lr: float,
    batch_size: int,
) -> None:
    """Fail early with a clear message instead of deep inside autograd."""
    if inputs.ndim != 3 or inputs.shape[-1] != brick.hidden_size:
        raise ValueError(f"inputs must have shape (N, T, {brick.hidden_size}), got {tuple(inputs.shape)}")
    if targets.shape != inputs.shape:
        raise ValueError(f"targets shape {tuple(targets.shape)} differs from inputs {tuple(inputs.shape)}")
    if token_mask is not None and token_mask.shape != inputs.shape[:2]:
        raise ValueError(f"token_mask must have shape {tuple(inputs.shape[:2])}, got {tuple(token_mask.shape)}")
    if epochs < 0:
        raise ValueError(f"epochs must be non-negative, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    check_positive_int("batch_size", batch_size)
