"""The shared local loop: batches, optimizer, progress, evaluation (one recipe for every algorithm)."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

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
    peak_bytes: int = 0
    """Peak memory of this training alone (see :class:`TrainingMemory`); 0 when not measured."""


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
    memory = TrainingMemory(model, optimizer, device)
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
    )


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
