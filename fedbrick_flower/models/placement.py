"""Device and dtype placement from a device profile (``auto`` -> cuda, then mps, then cpu)."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

logger = logging.getLogger(__name__)
# Intra-op threads of a client process, overriding its CPU share (benchmarks compare both ways).
THREADS_ENV = "FEDBRICK_TORCH_THREADS"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_device(spec: str) -> torch.device:
    """Turn a profile's ``device`` value into a torch device that exists on this machine.

    Parameters
    ----------
    spec : str
        ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``.

    Raises
    ------
    ValueError
        If the value is unknown or names an accelerator that this machine does not have.
    """
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda:0")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise ValueError("device='mps' but MPS is not available on this machine")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        index = _cuda_index(spec)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ValueError(f"device={spec!r} but this machine has {torch.cuda.device_count()} CUDA devices")
        return torch.device(f"cuda:{index}")
    raise ValueError(f"device={spec!r} is not one of auto, cpu, mps, cuda, cuda:N")


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """Pick the base model's compute dtype: ``auto`` is bf16 (else fp16) on CUDA and fp32 elsewhere.

    On a CPU ``auto`` stays fp32 even where the CPU computes bf16 natively: every scenario's figures stay those of
    fp32, and bf16 is asked for explicitly (``dtype: bfloat16``, run under autocast: :func:`cpu_autocast_dtype`).
    """
    if spec == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[spec]
    except KeyError:
        raise ValueError(f"dtype={spec!r} is not one of auto, {', '.join(_DTYPES)}") from None


def _cuda_index(spec: str) -> int:
    if spec == "cuda":
        return 0
    suffix = spec.split(":", 1)[1]
    if not suffix.isdigit():
        raise ValueError(f"device={spec!r}: the CUDA index must be a non-negative integer")
    return int(suffix)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


@functools.cache
def match_threads_to_cpu_share() -> int:
    """Give torch as many intra-op threads as CPUs this process was granted; returns the thread count.

    A simulated client runs in a Ray actor that holds ``client-resources-num-cpus`` CPUs (one here): with torch's
    default (every core) two clients on two cores would each start two threads and oversubscribe the machine. Ray
    sets ``OMP_NUM_THREADS`` to the share only where the user's environment does not set it; this sets the share
    whatever the environment says. Outside Ray (a SuperNode's ClientApp, tests) torch's own default stays, unless
    ``FEDBRICK_TORCH_THREADS`` names a count. Called once per process.
    """
    override = os.environ.get(THREADS_ENV, "").strip()
    share = int(override) if override else _ray_cpu_share()
    if share is None:
        return torch.get_num_threads()
    torch.set_num_threads(max(1, share))
    return torch.get_num_threads()


def _ray_cpu_share() -> int | None:
    """The whole CPUs Ray granted this worker (at least one), None outside a Ray worker."""
    ray = sys.modules.get("ray")  # a process that never imported Ray is not a Ray worker
    if ray is None or not ray.is_initialized():
        return None
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    return None if cpus is None else max(1, math.floor(cpus))


def cpu_autocast_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype | None:
    """bf16 on a CPU runs under autocast: the frozen weights stay fp32 (and so do the adapters, their gradients
    and the optimizer state); matrix products run in bf16. None for every other placement (weights in ``dtype``).
    """
    if device.type != "cpu" or dtype != torch.bfloat16:
        return None
    if not cpu_computes_bf16():
        logger.warning("dtype bfloat16 on a CPU without AVX512-BF16 or AMX: bf16 is emulated, likely slower than fp32")
    return torch.bfloat16


@contextlib.contextmanager
def autocast(dtype: torch.dtype | None) -> Iterator[None]:
    """CPU autocast to ``dtype``; nothing at all for None (the fp32 path runs exactly as without this block)."""
    if dtype is None:
        yield
        return
    with torch.autocast("cpu", dtype=dtype):
        yield


@functools.cache
def cpu_computes_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has native bf16 arithmetic: AVX512-BF16 or AMX in its flags (or torch's capability)."""
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
    capability = torch.backends.cpu.get_cpu_capability().lower()
    return bool(flags & {"avx512_bf16", "amx_bf16"}) or "amx" in capability
