"""The ``lora`` adapter kind: standard LoRA through peft, on module roles, with canonical (global-layer) names.

Tensors are named ``layers.{g}.{module path}.lora_A`` / ``lora_B`` (see :mod:`.naming`), initialised from a
seed per (global layer, module), and a layer's rank may differ from the others' (``layer_ranks``, peft's
``rank_pattern``): a global model assembled from clients of ranks 2 and 8 keeps each layer's own rank.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from ..models.backbone import model_family, stable_seed
from ..models.families import DEFAULT_ROLES, FamilySpec, family_of, resolve_roles
from ..models.stack import LayerShim, global_layer_indices, layer_stack
from .base import AdapterKind, Shape, load_named
from .naming import head_tensor_name, layer_tensor_name, parse_layer_tensor_name

ADAPTER_NAME = "default"
TensorLike = torch.Tensor | np.ndarray


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters of one client (PEFT ``LoraConfig`` style).

    Parameters
    ----------
    rank : int (default: 8)
        LoRA rank r of every layer not listed in ``layer_ranks``.
    alpha : float (default: 16.0)
        Scaling numerator; a layer's update is scaled by ``alpha / its rank``.
    dropout : float (default: 0.0)
        Dropout on the LoRA input.
    roles : tuple[str, ...] (default: ("q", "v"))
        Module roles LoRA adapts (``q k v o gate up down``), or ``("all-linear",)``.
    layer_ranks : Mapping[int, int] (default: {})
        Rank of particular GLOBAL layers, overriding ``rank`` there.

    Raises
    ------
    ValueError
        Naming the field (``lora.rank``, ``lora.dropout``...) when a value is out of range.
    """

    rank: int = field(default=8, metadata={"help": "LoRA rank r of every layer not listed in layer_ranks."})
    alpha: float = field(default=16.0, metadata={"help": "Scaling numerator: the update is scaled by alpha / r."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout probability on the LoRA input, in [0, 1)."})
    roles: tuple[str, ...] = field(
        default=DEFAULT_ROLES,
        metadata={"help": "Module roles to adapt (q k v o gate up down), or ('all-linear',) for every projection."},
    )
    layer_ranks: Mapping[int, int] = field(
        default_factory=dict,
        metadata={"help": "Rank per GLOBAL layer where it differs from `rank` (peft's rank_pattern)."},
    )

    def __post_init__(self) -> None:
        _check_rank("lora.rank", self.rank)
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        resolve_roles(self.roles)
        for layer, rank in self.layer_ranks.items():
            _check_rank(f"lora.layer_ranks[{layer}]", rank)

    def rank_of_layer(self, global_index: int) -> int:
        return self.layer_ranks.get(global_index, self.rank)

    def peft_config(self, family: FamilySpec, positions: Mapping[int, int], paths: Sequence[str]) -> LoraConfig:
        """A peft config that targets exactly ``paths`` in the stack positions of ``positions``.

        Parameters
        ----------
        positions : Mapping[int, int]
            Stack position -> GLOBAL layer index (they differ in a truncated backbone).
        paths : Sequence[str]
            Module paths inside a layer.

        A regex target (rather than peft's suffix match) keeps one role from catching another: BERT's ``down``
        (``output.dense``) is a suffix of its ``o`` (``attention.output.dense``).
        """
        stack = re.escape(family.layer_stack)
        layers = "|".join(str(p) for p in sorted(positions))
        modules = "|".join(re.escape(path) for path in paths)
        rank_pattern = {
            rf"{stack}\.{position}\.{re.escape(path)}": self.rank_of_layer(g)
            for position, g in sorted(positions.items())
            for path in paths
            if self.rank_of_layer(g) != self.rank
        }
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=rf"(?:.*\.)?{stack}\.(?:{layers})\.(?:{modules})",
            rank_pattern=rank_pattern,
        )


class LoraKind(AdapterKind):
    """Standard LoRA (``h = W0 x + (alpha / r) B A x``) injected with peft into the projections of given roles."""

    name = "lora"
    settings_class = LoraSettings

    def inject(
        self, backbone: nn.Module, family: FamilySpec, layers: Iterable[int] | None, roles: Sequence[str], seed: int
    ) -> nn.Module:
        """Inject LoRA in place on the GLOBAL ``layers`` (None: every real layer) and freeze everything else.

        Initialisation is seeded per (seed, global layer, module), so clients that hold different subsets of
        layers still start from identical factors for the layers they share.
        """
        positions = _positions(backbone, family, layers)
        config = self.settings.peft_config(family, positions, family.module_paths(roles))
        inject_adapter_in_model(config, backbone, adapter_name=ADAPTER_NAME)
        for name, parameter in backbone.named_parameters():
            parameter.requires_grad = "lora_" in name
        reset_lora(backbone, family, seed)
        return backbone

    def tensors(self, backbone: nn.Module) -> dict[str, torch.Tensor]:
        return lora_tensors(backbone, model_family(backbone))

    def schema(self, model_config: Any, layers: Iterable[int], roles: Sequence[str]) -> dict[str, Shape]:
        dims = self.dims(model_config)
        family = family_of(dims.model_type)
        shapes: dict[str, Shape] = {}
        for g in layers:
            rank = self.settings.rank_of_layer(g)
            for role in resolve_roles(roles, family):
                in_features, out_features = family.in_out(role, dims)
                path = family.module_path(role)
                shapes[layer_tensor_name(g, path, "lora_A")] = (rank, in_features)
                shapes[layer_tensor_name(g, path, "lora_B")] = (out_features, rank)
        return shapes


def _positions(backbone: nn.Module, family: FamilySpec, layers: Iterable[int] | None) -> dict[int, int]:
    """Stack position -> global index of the real layers to adapt (shims and BRICKs have no projections)."""
    indices = global_layer_indices(backbone, family)
    real = {
        position: g
        for position, (g, layer) in enumerate(zip(indices, layer_stack(backbone, family), strict=False))
        if not isinstance(layer, LayerShim)
    }
    if layers is None:
        return real
    wanted = set(layers)
    missing = sorted(wanted - set(real.values()))
    if missing:
        held = sorted(real.values())
        raise ValueError(f"LoRA layers {missing} are not real layers of this backbone (it holds {held})")
    return {position: g for position, g in real.items() if g in wanted}


def layer_ranks(tensors: Mapping[str, TensorLike]) -> dict[int, int]:
    """Each GLOBAL layer's LoRA rank, read off the rows of its ``lora_A`` tensors.

    Raises
    ------
    ValueError
        If two modules of one layer have different ranks (one layer, one rank), naming both.
    """
    ranks: dict[int, int] = {}
    seen: dict[int, str] = {}
    for name, value in tensors.items():
        parsed = parse_layer_tensor_name(name)
        if parsed is None or parsed[2] != "lora_A":
            continue
        g, rank = parsed[0], int(np.shape(value)[0])
        if g in ranks and ranks[g] != rank:
            raise ValueError(f"layer {g} mixes LoRA ranks: {seen[g]} has {ranks[g]}, {name} has {rank}")
        ranks[g], seen[g] = rank, name
    return ranks


def with_ranks_of(settings: LoraSettings, tensors: Mapping[str, TensorLike]) -> LoraSettings:
    """``settings`` with each layer's rank taken from the tensors held for it (others keep ``settings.rank``)."""
    return LoraSettings(
        rank=settings.rank,
        alpha=settings.alpha,
        dropout=settings.dropout,
        roles=settings.roles,
        layer_ranks={**settings.layer_ranks, **layer_ranks(tensors)},
    )


def attach_lora(backbone: nn.Module, family: FamilySpec, settings: LoraSettings, seed: int) -> nn.Module:
    """Inject LoRA on every real layer of ``backbone`` and the settings' roles (see :meth:`LoraKind.inject`)."""
    return LoraKind(settings).inject(backbone, family, None, settings.roles, seed)


def lora_modules(backbone: nn.Module, family: FamilySpec) -> dict[tuple[int, str], LoraLayer]:
    """Map ``(global layer, module path)`` to the LoRA-wrapped module (shims and BRICKs carry none)."""
    found: dict[tuple[int, str], LoraLayer] = {}
    for global_index, layer in zip(global_layer_indices(backbone, family), layer_stack(backbone, family), strict=False):
        for module_path, module in layer.named_modules():
            if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
                found[(global_index, module_path)] = module
    return found


def reset_lora(backbone: nn.Module, family: FamilySpec, seed: int) -> None:
    """Kaiming-uniform A (as peft does) from a per-layer seed, and B = 0, so every update starts at zero."""
    with torch.no_grad():
        for (global_index, module_path), module in lora_modules(backbone, family).items():
            weight_a = module.lora_A[ADAPTER_NAME].weight
            generator = torch.Generator().manual_seed(stable_seed(seed, global_index, module_path))
            bound = 1.0 / math.sqrt(weight_a.shape[1])
            weight_a.copy_(torch.empty(weight_a.shape).uniform_(-bound, bound, generator=generator))
            module.lora_B[ADAPTER_NAME].weight.zero_()


def lora_tensors(backbone: nn.Module, family: FamilySpec) -> dict[str, torch.Tensor]:
    """The LoRA factors of every real layer under canonical names (views, not copies)."""
    tensors: dict[str, torch.Tensor] = {}
    for (global_index, module_path), module in lora_modules(backbone, family).items():
        tensors[layer_tensor_name(global_index, module_path, "lora_A")] = module.lora_A[ADAPTER_NAME].weight
        tensors[layer_tensor_name(global_index, module_path, "lora_B")] = module.lora_B[ADAPTER_NAME].weight
    return tensors


def adapter_tensors(model: nn.Module, family: FamilySpec) -> dict[str, torch.Tensor]:
    """Everything a client trains and may send: LoRA factors plus the task head's parameters (``head.*``).

    A generative network has no ``head`` (its LM head is frozen and never sent), so it gives LoRA alone.
    """
    tensors = lora_tensors(model.backbone, family)
    head = getattr(model, "head", None)
    if head is not None:
        tensors.update({head_tensor_name(name): parameter for name, parameter in head.named_parameters()})
    return tensors


def head_schema(num_labels: int, hidden_size: int) -> dict[str, Shape]:
    """Names and shapes of the task head, a ``Linear(hidden_size, num_labels)``."""
    return {head_tensor_name("weight"): (num_labels, hidden_size), head_tensor_name("bias"): (num_labels,)}


def load_adapter_tensors(model: nn.Module, family: FamilySpec, values: Mapping[str, TensorLike]) -> None:
    """Copy canonical-named values into the model's adapters; unknown names or shapes raise ``KeyError``."""
    load_named(adapter_tensors(model, family), values)


def save_peft_adapter(
    out_dir: Path,
    tensors: Mapping[str, np.ndarray],
    family: FamilySpec,
    settings: LoraSettings,
    base_model: str,
) -> Path:
    """Write canonical LoRA tensors as a peft adapter folder that ``PeftModel.from_pretrained`` loads.

    The adapter is addressed to the FULL-depth base model: a partial-depth client's layers keep their global
    indices, the target modules are the ones the tensors hold, and each layer's rank is the rank of its tensors
    (peft's ``rank_pattern``). ``settings`` gives alpha and dropout. The task head is saved beside it as
    ``head.safetensors``.
    """
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    peft_tensors: dict[str, np.ndarray] = {}
    head: dict[str, np.ndarray] = {}
    paths: list[str] = []
    for name, value in tensors.items():
        parsed = parse_layer_tensor_name(name)
        if parsed is None:
            head[name] = np.ascontiguousarray(value, dtype=np.float32)
            continue
        global_index, module_path, param = parsed
        if module_path not in paths:
            paths.append(module_path)
        key = f"base_model.model.{family.layer_stack}.{global_index}.{module_path}.{param}.weight"
        peft_tensors[key] = np.ascontiguousarray(value, dtype=np.float32)
    ranks = layer_ranks(tensors)
    layers = sorted(ranks)
    config = with_ranks_of(settings, tensors).peft_config(family, {g: g for g in layers}, paths)
    config.base_model_name_or_path = base_model
    config.save_pretrained(str(out_dir))
    save_file(peft_tensors, str(out_dir / "adapter_model.safetensors"))
    if head:
        save_file(head, str(out_dir / "head.safetensors"))
    (out_dir / "layers.json").write_text(json.dumps(layers))
    return out_dir


def _check_rank(name: str, value: object) -> None:
    # bool is an int subclass; rank=True is a mistake, not rank 1.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
