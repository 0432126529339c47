"""Standard LoRA through peft, with canonical (global-layer) tensor names and seeded initialisation."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from ..models.backbone import SequenceClassifier, stable_seed
from ..models.families import FamilySpec
from ..models.stack import global_layer_indices, layer_stack
from .naming import head_tensor_name, layer_tensor_name, parse_layer_tensor_name

ADAPTER_NAME = "default"
TensorLike = torch.Tensor | np.ndarray


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters of one client.

    Parameters
    ----------
    rank : int (default: 8)
        LoRA rank r.
    alpha : float (default: 16.0)
        Scaling numerator; the update is scaled by ``alpha / rank``.
    dropout : float (default: 0.0)
        Dropout on the LoRA input.
    targets : tuple[str, ...], optional
        Module paths inside a layer; defaults to the family's ``lora_targets``.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ValueError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")

    def peft_config(self, family: FamilySpec, layers: Sequence[int] | None = None) -> LoraConfig:
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.targets or family.lora_targets),
            layers_to_transform=None if layers is None else sorted(layers),
            layers_pattern=None if layers is None else family.layer_stack.rsplit(".", 1)[-1],
        )


def rank_of(tensors: Mapping[str, TensorLike], default: int) -> int:
    """The LoRA rank of a set of canonical tensors (the rows of any ``lora_A``), or ``default`` if none."""
    return next((int(v.shape[0]) for name, v in tensors.items() if name.endswith("lora_A")), default)


def attach_lora(backbone: nn.Module, family: FamilySpec, settings: LoraSettings, seed: int) -> nn.Module:
    """Inject LoRA into every real layer of ``backbone`` in place and freeze everything else.

    Initialisation is seeded per (seed, global layer, module), so clients that hold different subsets of
    layers still start from identical factors for the layers they share.
    """
    inject_adapter_in_model(settings.peft_config(family), backbone, adapter_name=ADAPTER_NAME)
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad = "lora_" in name
    reset_lora(backbone, family, seed)
    return backbone


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


def adapter_tensors(model: SequenceClassifier, family: FamilySpec) -> dict[str, torch.Tensor]:
    """Everything a client trains and may send: LoRA factors plus the task head."""
    tensors = lora_tensors(model.backbone, family)
    tensors[head_tensor_name("weight")] = model.head.weight
    tensors[head_tensor_name("bias")] = model.head.bias
    return tensors


def load_adapter_tensors(model: SequenceClassifier, family: FamilySpec, values: Mapping[str, TensorLike]) -> None:
    """Copy canonical-named values into the model's adapters; unknown names or shapes raise ``KeyError``."""
    targets = adapter_tensors(model, family)
    with torch.no_grad():
        for name, value in values.items():
            if name not in targets:
                raise KeyError(f"adapter tensor {name!r} does not exist in this client's model")
            target = targets[name]
            tensor = torch.as_tensor(np.asarray(value))
            if tuple(tensor.shape) != tuple(target.shape):
                raise KeyError(
                    f"adapter tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}"
                )
            target.copy_(tensor.to(dtype=target.dtype, device=target.device))


def save_peft_adapter(
    out_dir: Path,
    tensors: Mapping[str, np.ndarray],
    family: FamilySpec,
    settings: LoraSettings,
    base_model: str,
) -> Path:
    """Write canonical LoRA tensors as a peft adapter folder that ``PeftModel.from_pretrained`` loads.

    The adapter is addressed to the FULL-depth base model: a partial-depth client's layers keep their global
    indices, and ``layers_to_transform`` lists them. The task head is saved beside it as ``head.safetensors``.
    """
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    peft_tensors: dict[str, np.ndarray] = {}
    head: dict[str, np.ndarray] = {}
    layers: set[int] = set()
    for name, value in tensors.items():
        parsed = parse_layer_tensor_name(name)
        if parsed is None:
            head[name] = np.ascontiguousarray(value, dtype=np.float32)
            continue
        global_index, module_path, param = parsed
        layers.add(global_index)
        key = f"base_model.model.{family.layer_stack}.{global_index}.{module_path}.{param}.weight"
        peft_tensors[key] = np.ascontiguousarray(value, dtype=np.float32)
    config = settings.peft_config(family, layers=sorted(layers))
    config.base_model_name_or_path = base_model
    config.save_pretrained(str(out_dir))
    save_file(peft_tensors, str(out_dir / "adapter_model.safetensors"))
    if head:
        save_file(head, str(out_dir / "head.safetensors"))
    (out_dir / "layers.json").write_text(json.dumps(sorted(layers)))
    return out_dir
