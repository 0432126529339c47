"""Canonical adapter tensor names, keyed by GLOBAL layer index.

``layers.{g}.{module}.{param}`` names a tensor of layer ``g`` of the full-depth model (``module`` is the
projection's path inside the layer, e.g. ``attention.self.query``), ``head.{param}`` the task head, and
``bank.{role}`` a middle-matrix bank shared across layers and families (H2Tune's G). A 2-layer client holding
layers 1 and 4 therefore sends ``layers.1.*`` and ``layers.4.*``; the names alone say where each tensor
belongs, the way PEFT's parameter prefixes say which tensors are adapter tensors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")

HEAD_PREFIX = "head."
BANK_PREFIX = "bank."
LORA_PARAMS = ("lora_A", "lora_B")
_LAYER_NAME = re.compile(r"^layers\.(\d+)\.(.+)\.([^.]+)$")


def layer_tensor_name(global_index: int, module: str, param: str) -> str:
    """Canonical name of one adapter tensor of layer ``global_index``."""
    return f"layers.{global_index}.{module}.{param}"


def head_tensor_name(param: str) -> str:
    """Canonical name of one task-head tensor (``weight`` or ``bias``)."""
    return f"{HEAD_PREFIX}{param}"


def bank_tensor_name(role: str) -> str:
    """Canonical name of a shared middle-matrix bank of one module role (H2Tune's G, all slots)."""
    return f"{BANK_PREFIX}{role}"


def parse_layer_tensor_name(name: str) -> tuple[int, str, str] | None:
    """Split a canonical layer tensor name into ``(global_index, module, param)``; None if not a layer name."""
    match = _LAYER_NAME.match(name)
    if match is None:
        return None
    return int(match.group(1)), match.group(2), match.group(3)


def layer_of(name: str) -> int | None:
    """Global layer index of a canonical name, or None for the head and other non-layer tensors."""
    parsed = parse_layer_tensor_name(name)
    return None if parsed is None else parsed[0]


def is_head(name: str) -> bool:
    return name.startswith(HEAD_PREFIX)


def is_lora(name: str) -> bool:
    """True for a LoRA factor of some layer (``layers.{g}.{module}.lora_A`` / ``lora_B``)."""
    parsed = parse_layer_tensor_name(name)
    return parsed is not None and parsed[2] in LORA_PARAMS


def drop_lora(tensors: Mapping[str, T]) -> dict[str, T]:
    """``tensors`` less every LoRA factor: what travels when ``train.freeze_lora`` keeps LoRA at its start."""
    return {name: value for name, value in tensors.items() if not is_lora(name)}


def names_for_layers(layer_schema: dict[str, list[int]], layers: Iterable[int]) -> dict[str, tuple[int, ...]]:
    """Expand a one-layer schema (``{"module.param": shape}``) over the given global layers."""
    return {f"layers.{g}.{suffix}": tuple(shape) for g in layers for suffix, shape in layer_schema.items()}
