"""BRICK: the tiny surrogate that stands in for a missing transformer layer in FedBRICK.

A client that trains only a subset of the layers replaces every missing layer with a
BRICK, so its forward and backward passes approximate the full model's Jacobian chain
instead of treating the dropped layer as an identity. Applied per token on hidden
states ``x`` of width ``d``::

    E(x) = x * softmax(B1 A1 x) + B2 A2 x + x    (softmax over the feature dimension d)

with ``A1, A2 in R^{r x d}`` and ``B1, B2 in R^{d x r}`` (``4 r d`` parameters).

This module also holds the pieces of the algorithm that concern a single BRICK: the
Stage-II blending schedule, the default Stage-II length, the padding-aware MSE, and the
server-side teacher-forced layer-wise distillation. It has no Flower imports.

References
----------
FedBRICK: Federated Bias Recovery via Inserted Calibrative Kernels. Proceedings of the
AAAI Conference on Artificial Intelligence (AAAI-26), 2026. "Spec section" below means
section 1 (FedBRICK) of the project's algorithm specification, ALGORITHMS.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

BRICK_PARAM_NAMES: tuple[str, ...] = ("A1", "B1", "A2", "B2")
BRICK_PREFIX = "bricks."
_BRICK_NAME = re.compile(r"^bricks\.(\d+)\.(A1|B1|A2|B2)$")


@dataclass
class BrickConfig:
    """Hyper-parameters of the BRICKs of one run (PEFT-config style).

    Parameters
    ----------
    rank : int (default: 8)
        Rank r of both low-rank pathways; a BRICK has ``4 * rank * hidden_size``
        parameters.

    Raises
    ------
    ValueError
        If ``rank`` is not a positive integer.
    """

    rank: int = field(
        default=8,
        metadata={
            "help": (
                "Rank r of the two low-rank pathways (B1 A1 and B2 A2) of every BRICK. "
                "A BRICK has 4*r*d parameters; the paper uses r = 8."
            )
        },
    )

    def __post_init__(self) -> None:
        _check_positive_int("BrickConfig.rank", self.rank)


class Brick(nn.Module):
    """Per-token surrogate of one layer, ``E(x) = x*softmax(B1 A1 x) + B2 A2 x + x``.

    Initialisation (the paper does not state it): ``A1``, ``A2`` Kaiming-uniform as in
    ``nn.Linear``, ``B1 = B2 = 0``. Then ``softmax(0)`` is uniform ``1/d`` and
    ``E(x) = x (1 + 1/d)``, almost the identity that plain depth-partial training uses,
    so a fresh BRICK starts where the baseline is and training moves it towards the
    layer.

    Parameters
    ----------
    hidden_size : int
        Feature width d of the hidden states.
    rank : int (default: 8)
        Rank r of both pathways.

    Raises
    ------
    ValueError
        If ``hidden_size`` or ``rank`` is not a positive integer.

    References
    ----------
    FedBRICK: Federated Bias Recovery via Inserted Calibrative Kernels, AAAI-26, eq. for
    ``E_l`` (spec section 1.2).
    """

    def __init__(self, hidden_size: int, rank: int = 8) -> None:
        super().__init__()
        _check_positive_int("hidden_size", hidden_size)
        _check_positive_int("rank", rank)
        self.hidden_size = hidden_size
        self.rank = rank
        self.A1 = nn.Parameter(torch.empty(rank, hidden_size))
        self.B1 = nn.Parameter(torch.empty(hidden_size, rank))
        self.A2 = nn.Parameter(torch.empty(rank, hidden_size))
        self.B2 = nn.Parameter(torch.empty(hidden_size, rank))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Kaiming-uniform ``A1``, ``A2`` (like ``nn.Linear``) and zero ``B1``, ``B2``.

        Parameters
        ----------
        generator : torch.Generator, optional
            Source of randomness, so that a server can give every (domain, layer)
            BRICK a reproducible start; the global RNG is used when omitted.
        """
        with torch.no_grad():
            for a in (self.A1, self.A2):
                nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            for b in (self.B1, self.B2):
                b.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the BRICK token-wise.

        Parameters
        ----------
        x : torch.Tensor
            Hidden states of shape ``(..., hidden_size)``, any leading dimensions.

        Returns
        -------
        torch.Tensor
            Same shape and dtype as ``x``. The computation runs in the parameters'
            dtype, with the softmax in float32 because bf16/fp16 logits lose too much
            precision in it.
        """
        if x.shape[-1] != self.hidden_size:
            raise ValueError(f"Brick expects hidden states of width {self.hidden_size}, got shape {tuple(x.shape)}")
        h = x.to(self.A1.dtype)
        logits = F.linear(F.linear(h, self.A1), self.B1)
        gate = torch.softmax(logits.float(), dim=-1).to(h.dtype)
        linear = F.linear(F.linear(h, self.A2), self.B2)
        return (h * gate + linear + h).to(x.dtype)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, rank={self.rank}"


def brick_num_parameters(hidden_size: int, rank: int) -> int:
    """Parameters of one BRICK, ``4 * rank * hidden_size`` (24,576 for r=8, d=768)."""
    _check_positive_int("hidden_size", hidden_size)
    _check_positive_int("rank", rank)
    return 4 * rank * hidden_size


def brick_tensor_name(global_index: int, param: str) -> str:
    """Canonical name of one BRICK tensor, ``bricks.{g}.{param}``, keyed by the GLOBAL layer it stands in for.

    Like the LoRA names of ``adapters.naming``, the name alone says where a tensor belongs; the server scopes
    it per model and group (``"{model}/{group}/bricks.{g}.A1"``).
    """
    return f"{BRICK_PREFIX}{global_index}.{param}"


def parse_brick_tensor_name(name: str) -> tuple[int, str] | None:
    """Split ``bricks.{g}.{param}`` into ``(g, param)``; None for any other name."""
    match = _BRICK_NAME.match(name)
    return None if match is None else (int(match.group(1)), match.group(2))


def is_brick(name: str) -> bool:
    return name.startswith(BRICK_PREFIX)


def brick_schema(layers: Iterable[int], hidden_size: int, rank: int) -> dict[str, tuple[int, ...]]:
    """Canonical names and shapes of the BRICKs of ``layers``."""
    shapes = {
        "A1": (rank, hidden_size),
        "B1": (hidden_size, rank),
        "A2": (rank, hidden_size),
        "B2": (hidden_size, rank),
    }
    return {brick_tensor_name(g, param): shapes[param] for g in layers for param in BRICK_PARAM_NAMES}


def seeded_brick(hidden_size: int, rank: int, seed: int) -> Brick:
    """A BRICK whose initial ``A1``, ``A2`` come from ``seed``, identical in every process."""
    brick = Brick(hidden_size, rank)
    brick.reset_parameters(torch.Generator().manual_seed(seed))
    return brick


def brick_tensors(bricks: Mapping[int, Brick]) -> dict[str, torch.Tensor]:
    """The parameters of BRICKs keyed by global layer, under canonical names (views, not copies)."""
    return {
        brick_tensor_name(g, param): getattr(brick, param) for g, brick in bricks.items() for param in BRICK_PARAM_NAMES
    }


def load_brick_tensors(bricks: Mapping[int, Brick], values: Mapping[str, torch.Tensor | np.ndarray]) -> None:
    """Copy canonical-named BRICK values into ``bricks``; an unknown name or shape raises ``KeyError``."""
    targets = brick_tensors(bricks)
    with torch.no_grad():
        for name, value in values.items():
            if name not in targets:
                raise KeyError(f"BRICK tensor {name!r} does not exist on this client")
            tensor = torch.as_tensor(np.asarray(value))
            target = targets[name]
            if tuple(tensor.shape) != tuple(target.shape):
                raise KeyError(f"BRICK tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}")
            target.copy_(tensor.to(dtype=target.dtype, device=target.device))


def blend_alpha(step: int, total_steps: int) -> float:
    """Stage-II weight of the real layer, ``alpha(e) = 1 - e / E2`` clamped to [0, 1].

    In Stage II a kept layer's output is ``alpha * f(x) + (1 - alpha) * E(x)``: it
    starts as the real layer and hands over linearly to the BRICK (spec section 1.6,
    eqs. 22-24).

    Parameters
    ----------
    step : int
        Current Stage-II step e (0-based); values outside ``[0, total_steps]`` are
        clamped.
    total_steps : int
        Stage-II length E2.

    Returns
    -------
    float
        ``alpha`` in ``[0, 1]``.

    Raises
    ------
    ValueError
        If ``total_steps <= 0``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps!r}")
    return min(1.0, max(0.0, 1.0 - step / total_steps))


def stage_two_steps(steps_per_epoch: int, fraction: float = 0.2, minimum: int = 10) -> int:
    """Default Stage-II length ``E2 = max(minimum, round(fraction * steps_per_epoch))``.

    The paper leaves E2 open (spec section 1.11); we use 20 % of one local epoch and at
    least 10 steps, so that the linear hand-over of ``blend_alpha`` is never abrupt on
    tiny clients. The result may exceed ``steps_per_epoch``; the caller then cycles its
    data loader.

    Parameters
    ----------
    steps_per_epoch : int
        Optimiser steps in one local epoch (non-negative).
    fraction : float (default: 0.2)
        Share of an epoch spent in Stage II (non-negative).
    minimum : int (default: 10)
        Lower bound on E2 (at least 1, since ``blend_alpha`` needs a positive length).

    Returns
    -------
    int
        E2.
    """
    if steps_per_epoch < 0:
        raise ValueError(f"steps_per_epoch must be non-negative, got {steps_per_epoch!r}")
    if not (math.isfinite(fraction) and fraction >= 0):
        raise ValueError(f"fraction must be a finite non-negative number, got {fraction!r}")
    _check_positive_int("minimum", minimum)
    return max(minimum, round(fraction * steps_per_epoch))


def masked_mse(pred: torch.Tensor, target: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over real tokens and all features, in float32.

    Parameters
    ----------
    pred, target : torch.Tensor
        Hidden states of shape ``(..., T, d)``.
    token_mask : torch.Tensor or None
        ``(..., T)``, bool or 0/1, true for real tokens; None counts every token.

    Returns
    -------
    torch.Tensor
        Scalar loss (differentiable w.r.t. ``pred``); 0 when there is no real token.
        Padded positions contribute neither value nor gradient, even if they hold NaN
        or inf.
    """
    total, count = _masked_sse(pred, target, token_mask)
    return total / count.clamp_min(1)


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
    Adam over shuffled mini-batches of sequences (spec section 1.5 step 3). The
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
        batch_total, batch_count = _masked_sse(brick(x), y, m)
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


def _masked_sse(
    pred: torch.Tensor, target: torch.Tensor, token_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 sum of squared errors over real tokens and features, and their count."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    diff = pred.float() - target.float()
    if token_mask is None:
        return diff.pow(2).sum(), torch.tensor(diff.numel(), device=diff.device)
    if token_mask.shape != pred.shape[:-1]:
        raise ValueError(
            f"token_mask shape {tuple(token_mask.shape)} does not match "
            f"hidden states {tuple(pred.shape)} (expected {tuple(pred.shape[:-1])})"
        )
    keep = token_mask.to(device=diff.device, dtype=torch.bool).unsqueeze(-1)
    # Select the difference rather than multiplying by the mask: 0 * NaN is NaN, and
    # the selection also keeps NaN/inf padding out of the backward pass.
    zero = torch.zeros((), dtype=diff.dtype, device=diff.device)
    diff = torch.where(keep, diff, zero)
    # An integer count stays exact beyond float32's 2**24 (128 x 197 x 768 exceeds it).
    count = keep.sum() * pred.shape[-1]
    return diff.pow(2).sum(), count


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
    _check_positive_int("batch_size", batch_size)


def _check_positive_int(name: str, value: object) -> None:
    # bool is an int subclass; BrickConfig(rank=True) is a mistake, not rank 1.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
