"""Device and dtype placement from a device profile (``auto`` -> cuda, then mps, then cpu)."""

from __future__ import annotations

import torch

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
    """Pick the base-model dtype: ``auto`` is bf16 (else fp16) on CUDA and fp32 elsewhere.

    Half precision on CPU is slower than fp32 and numerically fragile, hence fp32 there.
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
