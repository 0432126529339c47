"""FedBRICK client half: a full-depth network of kept layers and BRICKs, trained in two stages.

The client runs its kept layers where it holds them and the BRICK of its group in place of every other layer,
so its forward and backward passes follow the full model's layer chain. Stage I trains the kept layers' LoRA,
the head and the missing layers' BRICKs with proximal terms towards the received values; Stage II runs each
kept layer and its BRICK in parallel, hands the stream over from the layer to the BRICK, and fits the kept
layers' BRICKs to their layers on local data.

Reference: "FedBRICK: Federated Bias Recovery via Inserted Calibrative Kernels", AAAI-26 (the paper's eq. 21 for
Stage I, eqs. 22-24 for Stage II;
as implemented: ``docs/algorithms/fedbrick.md#client-per-round-stage-i-and-stage-ii``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ..adapters.brick import (
    Brick,
    BrickConfig,
    BrickKind,
    brick_num_parameters,
    brick_tensors,
    bricks_of,
    check_positive_int,
    is_brick,
    load_brick_tensors,
)
from ..adapters.lora import adapter_tensors, lora_tensors
from ..losses import masked_squared_error
from ..models import SequenceClassifier, layer_stack, model_family
from .base import ClientAlgorithm
from .trainer import Batch, TrainResult, make_optimizer, train_steps


class BlendedLayer(nn.Module):
    """A kept layer and its BRICK on the same input, blended ``alpha f(x) + (1 - alpha) E(x)`` (Stage II).

    The pair ``(E(x), f(x))`` of the last forward pass is kept for the Stage-II distillation term; the layer's
    output is detached there, since the layer is the teacher.
    """

    def __init__(self, layer: nn.Module, brick: Brick, returns_tuple: bool) -> None:
        super().__init__()
        self.layer = layer
        self.brick = brick
        self.returns_tuple = returns_tuple
        self.alpha = 1.0
        self.last_pair: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, hidden_states, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        output = self.layer(hidden_states, *args, **kwargs)
        real = output[0] if self.returns_tuple else output
        surrogate = self.brick(hidden_states)
        self.last_pair = (surrogate, real.detach())
        blended = self.alpha * real + (1.0 - self.alpha) * surrogate
        return (blended, *output[1:]) if self.returns_tuple else blended


class FedBrickClient(ClientAlgorithm):
    """Stage I (structural compensation) then Stage II (parallel soft distillation) on the client's network.

    Objective weights and the Stage-II length come from the server's instructions (``lambda-w``,
    ``lambda-theta``, ``lambda-d``, ``stage-two-fraction``, ``stage-two-min-steps``, ``brick-rank``,
    ``upload-bricks``), so the strategy's constructor is their one source.
    """

    adapter_kinds = ("lora", "brick")

    def build_model(self, layers: list[int], config: dict[str, Any]) -> SequenceClassifier:
        """Full depth: the kept layers, and a BRICK (in a ``LayerShim``) in place of every missing layer.

        All L BRICKs of the group live in the backbone's BRICK dict (``adapters.brick.bricks_of``; not
        submodules: the kept layers' BRICKs are not part of the network until Stage II). Their seeded start
        is overwritten by the group's BRICKs from the payload.
        """
        model = self.session.build(layers, lambda g: nn.Identity())
        kind = BrickKind(BrickConfig(rank=int(config["brick-rank"])))
        kind.inject(model.backbone, model_family(model.backbone), None, (), self.round_seed(config, "bricks"))
        for brick in model_bricks(model).values():
            brick.to(device=self.session.device, dtype=torch.float32)
        return model

    def receive(self, model: SequenceClassifier, arrays: dict[str, np.ndarray]) -> None:
        super().receive(model, {name: value for name, value in arrays.items() if not is_brick(name)})
        load_brick_tensors(model_bricks(model), {name: value for name, value in arrays.items() if is_brick(name)})

    def local_training(self, model: SequenceClassifier, config: dict[str, Any]) -> TrainResult:
        """Stage I for ``local-steps`` steps, then Stage II for E2 steps.

        The result counts the steps and seconds of both stages and reports Stage I's losses (the task objective;
        Stage II mostly fits the kept layers' BRICKs).
        """
        steps = int(config.get("local-steps", self.session.scenario.train.local_steps))
        first = self.stage_one(model, config, steps)
        second = self.stage_two(
            model,
            config,
            stage_two_steps(steps, float(config["stage-two-fraction"]), int(config["stage-two-min-steps"])),
        )
        return first.combined_with(second)

    def stage_one(self, model: SequenceClassifier, config: dict[str, Any], steps: int) -> TrainResult:
        """Eq. 21: task loss + lambda_w sum ||w - w_recv||^2 (kept LoRA) + lambda_theta sum ||theta - theta_recv||^2
        (missing BRICKs). Trainable: kept-layer LoRA, head (classification only), missing-layer BRICKs.

        The task loss is the objective's (cross-entropy over the labels, or over the response tokens of a
        generative task), so the same two stages serve both kinds."""
        family = model_family(model.backbone)
        kept = set(config["layers"])
        missing_bricks = {g: b for g, b in model_bricks(model).items() if g not in kept}
        lora = lora_tensors(model.backbone, family)
        anchors_w = _snapshot(lora)
        anchors_theta = _snapshot(brick_tensors(missing_bricks))
        frozen_lora = self.session.scenario.train.freeze_lora  # linear probe: LoRA stays at its start
        adapters = [t for n, t in adapter_tensors(model, family).items() if not frozen_lora or n.startswith("head.")]
        set_trainable(model, [*adapters, *brick_tensors(missing_bricks).values()])
        lambda_w, lambda_theta = float(config["lambda-w"]), float(config["lambda-theta"])
        task_loss = self.session.objective.loss

        def loss_fn(net: nn.Module, batch: Batch, step: int) -> torch.Tensor:
            loss = task_loss(net, batch, step)
            loss = loss + lambda_w * _proximal(lora, anchors_w)
            return loss + lambda_theta * _proximal(brick_tensors(missing_bricks), anchors_theta)

        return self._run(model, config, steps, loss_fn, "stage I")

    def stage_two(self, model: SequenceClassifier, config: dict[str, Any], steps: int) -> TrainResult:
        """Eqs. 22-24: kept layers blended with their BRICKs, alpha(e) = 1 - e/E2; loss task + (lambda_d/|S|)
        sum_l masked MSE(E_l(x_l), f_l(x_l)). Only the kept layers' BRICKs are trained."""
        lambda_d = float(config["lambda-d"])
        task_loss = self.session.objective.loss
        with blended_layers(model, config["layers"]) as shims:
            set_trainable(model, [p for shim in shims for p in shim.brick.parameters()])

            def loss_fn(net: nn.Module, batch: Batch, step: int) -> torch.Tensor:
                for shim in shims:
                    shim.alpha = blend_alpha(step, steps)
                loss = task_loss(net, batch, step)
                mask = batch["attention_mask"]
                distill = sum(masked_squared_error(*shim.last_pair, mask) for shim in shims)
                return loss + lambda_d / max(1, len(shims)) * distill

            return self._run(model, config, steps, loss_fn, "stage II")

    def update(self, model: SequenceClassifier, config: dict[str, Any]) -> dict[str, Any]:
        """Kept-layer LoRA and head, plus (``upload-bricks``) all L BRICKs."""
        tensors = super().update(model, config)
        if config["upload-bricks"]:
            tensors.update(brick_tensors(model_bricks(model)))
        return tensors

    def train(self, arrays: dict[str, np.ndarray], config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        update, metrics = super().train(arrays, config)
        missing = self.session.full_depth - len(config["layers"])
        metrics["brick-parameters"] = float(
            missing * brick_num_parameters(self.session.width, int(config["brick-rank"]))
        )
        return update, metrics

    def _run(self, model: SequenceClassifier, config: dict[str, Any], steps: int, loss_fn, label: str) -> TrainResult:  # noqa: ANN001
        settings = self.session.scenario.train
        return train_steps(
            model,
            self.session.examples("train"),
            steps=steps,
            batch_size=self.session.batch_size,
            optimizer=make_optimizer(model, settings.lr, settings.head_lr, settings.weight_decay),
            device=self.session.device,
            seed=self.round_seed(config, label),
            loss_fn=loss_fn,
            label=f"{self.session.profile.id} {label}",
        )


def model_bricks(model: SequenceClassifier) -> dict[int, Brick]:
    """All L BRICKs of a client network, by global layer."""
    return bricks_of(model.backbone)


def blend_alpha(step: int, total_steps: int) -> float:
    """Stage-II weight of the real layer, ``alpha(e) = 1 - e / (E2 - 1)`` over the steps ``e = 0..E2-1``.

    In Stage II a kept layer's output is ``alpha * f(x) + (1 - alpha) * E(x)``: it starts as the real layer
    and hands over linearly to the BRICK (the paper's eqs. 22-24), reaching ``alpha = 0`` at the last
    Stage-II step, so the last step trains the BRICK as the layer's sole stand-in. A one-step Stage II is that
    last step.

    Parameters
    ----------
    step : int
        Current Stage-II step e (0-based); values outside ``[0, total_steps - 1]`` are clamped.
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
    if total_steps == 1:
        return 0.0
    return min(1.0, max(0.0, 1.0 - step / (total_steps - 1)))


def stage_two_steps(steps_per_epoch: int, fraction: float = 0.2, minimum: int = 10) -> int:
    """Default Stage-II length ``E2 = max(minimum, round(fraction * steps_per_epoch))``.

    The paper leaves E2 open (``docs/algorithms/fedbrick.md#where-the-paper-is-silent``); we use 20 % of one local
    epoch and at
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
    check_positive_int("minimum", minimum)
    return max(minimum, round(fraction * steps_per_epoch))


def set_trainable(model: SequenceClassifier, parameters: list[torch.Tensor]) -> None:
    """Freeze everything in the network and its BRICKs except ``parameters``."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for brick in model_bricks(model).values():
        brick.requires_grad_(False)
    for parameter in parameters:
        parameter.requires_grad_(True)


@contextlib.contextmanager
def blended_layers(model: SequenceClassifier, kept: list[int]) -> Iterator[list[BlendedLayer]]:
    """Wrap every kept layer with its BRICK in a :class:`BlendedLayer` for Stage II, and unwrap on exit.

    The stack has full depth (position = global layer). Unwrapping restores it, so LoRA keeps its canonical
    module paths for the update.
    """
    family = model_family(model.backbone)
    stack = layer_stack(model.backbone, family)
    bricks = model_bricks(model)
    originals = {g: stack[g] for g in sorted(kept)}
    shims = [BlendedLayer(layer, bricks[g], family.layer_returns_tuple) for g, layer in originals.items()]
    for g, shim in zip(originals, shims, strict=True):
        stack[g] = shim
    try:
        yield shims
    finally:
        for g, layer in originals.items():
            stack[g] = layer


def _snapshot(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in tensors.items()}


def _proximal(tensors: dict[str, torch.Tensor], anchors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Squared L2 distance ``sum ||t - t_recv||^2`` to the received values."""
    return sum(((tensors[name] - anchor) ** 2).sum() for name, anchor in anchors.items())
