"""The shared local loop: batches, optimizer, progress, evaluation (one recipe for every algorithm)."""

from __future__ import annotations

import dataclasses
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

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
    peak_bytes: int = 0
    """Peak memory of this training alone (see :class:`TrainingMemory`); 0 when not measured."""
    optimizer_steps: int = 0
    """Optimizer steps taken while training, by any optimizer (an alternating objective takes two per batch)."""
    forward_passes: int = 0
    """Forward passes of the trained network (an objective may run more than one per batch)."""

    def combined_with(self, other: TrainResult) -> TrainResult:
        """This training and ``other`` on the same network in one round (a second stage, a warm-up): the counts
        and seconds add up, the peak is the larger one, and the losses stay this one's (the main objective's)."""
        return dataclasses.replace(
            self,
            steps=self.steps + other.steps,
            seconds=self.seconds + other.seconds,
            peak_bytes=max(self.peak_bytes, other.peak_bytes),
            optimizer_steps=self.optimizer_steps + other.optimizer_steps,
            forward_passes=self.forward_passes + other.forward_passes,
        )


def make_optimizer(model: nn.Module, lr: float, head_lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with the head at its own (higher) learning rate: a fresh head must move faster than LoRA."""
    head, rest = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (head if name.startswith("head.") else rest).append(parameter)
    groups = [{"params": rest, "lr": lr}, {"params": head, "lr": head_lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=weight_decay)


@contextmanager
def head_only(model: nn.Module) -> Iterator[list[nn.Parameter]]:
    """Within the block only the task head (``head.*``) of ``model`` trains; yields its trainable parameters.

    Every other parameter is frozen for the block and gets its own ``requires_grad`` back after it.
    """
    flags = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    head = [p for name, p in model.named_parameters() if name.startswith("head.") and p.requires_grad]
    try:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith("head.") and flags[name])
        yield head
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(flags[name])


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
    """Run ``steps`` optimizer steps of ``loss_fn`` and report the losses, the compute and the pure compute time.

    ``loss_fn`` is the task objective's loss (``session.objective.loss``), or an algorithm's objective built on
    it; the default suits classification tasks only. The optimizer steps and forward passes it reports are
    counted, not assumed: an objective that steps its own optimizer or runs the network twice per batch shows it.
    """
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    batches = cycle_batches(examples, batch_size, seed)
    progress = _progress(steps, label)
    memory = TrainingMemory(model, optimizer, device)
    with ComputeCounter(model) as compute:
        for step in range(steps):
            batch = {key: value.to(device) for key, value in next(batches).items()}
            optimizer.zero_grad(set_to_none=True)
            with memory.step():
                loss = loss_fn(model, batch, step)
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
        peak_bytes=memory.peak_bytes,
        optimizer_steps=compute.optimizer_steps,
        forward_passes=compute.forward_passes,
    )


class ComputeCounter:
    """Counts, inside its block, the optimizer steps this process takes and the forward passes of ``model``.

    A client trains in one thread at a time, so every optimizer step of the block is its own (an alternating
    objective's inner optimizer included); forward passes are calls of the network's top-level module.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.optimizer_steps = 0
        self.forward_passes = 0
        self._handles: list[Any] = []

    def __enter__(self) -> ComputeCounter:
        self._handles = [
            register_optimizer_step_post_hook(self._count_step),
            self.model.register_forward_hook(self._count_forward),
        ]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _count_step(self, *_: object) -> None:
        self.optimizer_steps += 1

    def _count_forward(self, *_: object) -> None:
        self.forward_passes += 1


def seed_torch(seed: int) -> None:
    """Seed torch's global generators (CPU and accelerators), e.g. for dropout masks."""
    torch.manual_seed(seed)


def process_peak_rss_mb() -> float:
    """This process's peak resident set size (MB): in simulation one Ray worker serves several clients, so the
    figure mixes them; :attr:`TrainResult.peak_bytes` is the per-client one."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class TrainingMemory:
    """The peak memory one client's training needs, measured in its own process whatever else the process holds.

    A process-wide figure (peak RSS) cannot separate clients: a Ray worker serves several simulated clients and
    its allocator keeps what earlier ones freed. So on CUDA this is the allocator's peak over the step (reset
    before it); elsewhere it counts the tensors the step itself holds, by storage so that views count once:
    every parameter and buffer of the network (frozen base included), the gradients, the optimizer's state and
    the activations autograd saved for the backward pass (seen through ``saved_tensors_hooks``), at the end of
    the step when all of them are alive at once. Temporaries freed within the forward pass are not counted, so
    on CPU it is a lower bound of the step's peak, and exact in what it counts.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    peak_bytes: int = 0
    _saved: dict[int, int] = field(default_factory=dict)

    @contextmanager
    def step(self) -> Iterator[None]:
        """Measure one optimizer step (forward, backward, update) run inside this block."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device))
            return
        self._saved = {}
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield
        self.peak_bytes = max(self.peak_bytes, self._resident_bytes() + sum(self._saved.values()))

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self._saved[storage.data_ptr()] = storage.nbytes()
        # Detached (same storage): a packed value that is the tensor itself closes a reference cycle through
        # autograd's C++ graph that no garbage collection breaks, and a process serving many messages (a warm
        # executor, a Ray worker) would keep every step's network and activations alive.
        return tensor.detach()

    def _resident_bytes(self) -> int:
        """Parameters, buffers, gradients and optimizer state, each storage once."""
        storages: dict[int, int] = {}
        tensors = [*self.model.parameters(), *self.model.buffers()]
        tensors += [p.grad for p in self.model.parameters() if p.grad is not None]
        tensors += [v for state in self.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
        for tensor in tensors:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        # Saved activations that are parameters themselves (weights saved for backward) are already counted.
        for pointer in storages.keys() & self._saved.keys():
            del self._saved[pointer]
        return sum(storages.values())


def _progress(steps: int, label: str):  # noqa: ANN202 - tqdm is optional at type level
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=label, leave=False)
