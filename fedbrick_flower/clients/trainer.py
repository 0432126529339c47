"""The shared local loop: batches, optimizer, progress, evaluation (one recipe for every algorithm)."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..data import EncodedExamples, iterate_batches
from ..objectives import classification_loss

Batch = dict[str, torch.Tensor]
# (network, batch, step) -> scalar loss; the step lets an objective follow a schedule (FedBRICK Stage II).
LossFn = Callable[[nn.Module, Batch, int], torch.Tensor]


@dataclass(frozen=True)
class TrainResult:
    """What one local training call measured."""

    steps: int
    examples: int
    loss_first: float
    loss_last: float
    loss_mean: float
    seconds: float


def make_optimizer(model: nn.Module, lr: float, head_lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with the head at its own (higher) learning rate: a fresh head must move faster than LoRA."""
    head, rest = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (head if name.startswith("head.") else rest).append(parameter)
    groups = [{"params": rest, "lr": lr}, {"params": head, "lr": head_lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=weight_decay)


def cycle_batches(examples: EncodedExamples, batch_size: int, seed: int) -> Iterator[Batch]:
    """Shuffled batches, reshuffled every epoch, for as many steps as the caller takes."""
    epoch = 0
    while True:
        yield from iterate_batches(examples, batch_size, shuffle=True, seed=seed + epoch)
        epoch += 1


def train_steps(
    model: nn.Module,
    examples: EncodedExamples,
    *,
    steps: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    seed: int,
    loss_fn: LossFn = classification_loss,
    label: str = "train",
) -> TrainResult:
    """Run ``steps`` optimizer steps of ``loss_fn`` and report the losses and the pure compute time.

    ``loss_fn`` is the task objective's loss (``session.objective.loss``), or an algorithm's objective built on
    it; the default suits classification tasks only.
    """
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    batches = cycle_batches(examples, batch_size, seed)
    progress = _progress(steps, label)
    for step in range(steps):
        batch = {key: value.to(device) for key, value in next(batches).items()}
        loss = loss_fn(model, batch, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress.set_postfix(loss=f"{losses[-1]:.4f}")
            progress.update()
    if progress is not None:
        progress.close()
    model.eval()
    return TrainResult(
        steps=steps,
        examples=min(len(examples), steps * batch_size),
        loss_first=losses[0] if losses else float("nan"),
        loss_last=losses[-1] if losses else float("nan"),
        loss_mean=sum(losses) / max(1, len(losses)),
        seconds=time.perf_counter() - started,
    )


def seed_torch(seed: int) -> None:
    """Seed torch's global generators (CPU and accelerators), e.g. for dropout masks."""
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA, else this process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _progress(steps: int, label: str):  # noqa: ANN202 - tqdm is optional at type level
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=label, leave=False)
