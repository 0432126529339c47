"""The ``colora`` adapter kind: FedMosaic's Co-LoRA (PQ-LoRA) at block-end layers, dual LoRA elsewhere.

Seo et al., "Co-LoRA: Collaborative Model Personalization on Heterogeneous Multi-Modal Clients" (FedMosaic),
ICLR-26, https://arxiv.org/abs/2506.11024 (as implemented:
``docs/algorithms/fedmosaic.md#adapter-co-lora-dual-lora-and-the-gate``). Every adapted projection carries TWO
adapters, a global one G (received, frozen on the client) and a local one L (trained), mixed by a gate β::

    h = W0 x + β(x) Δ_G(x) + (1 − β(x)) Δ_L(x)

- At the block-end layers (:func:`~fedbrick_flower.models.depth.block_end_layers`) Δ is Co-LoRA,
  ``Δ(x) = s ((x Aᵀ) P + Q) Bᵀ`` with A (r×d_in) and B (d_out×r) frozen and orthonormal, shared by G and L, and
  P (r×r), Q (r) trainable and zero at the start. P and Q do not depend on the width, so they are named by
  BLOCK index and role (``colora.{b}.{role}.P``) and clients of every width and family average them by name.
- Elsewhere Δ is an ordinary LoRA ``s B A x`` (``layers.{g}.{path}.lora_A/B``), shareable only within one
  architecture.
- The gate is the official code's input-conditioned one, ``β = σ(mean_tokens(x·w + ε))`` with w = 0 at the start
  and training noise ε of variance softplus(0) + 1e-5 (the code's noise weight is zero and never trained); or
  ``gate="scalar"``: ``β = σ(b)``. Gates are local, never sent.

:meth:`ColoraKind.tensors` and :meth:`ColoraKind.schema` are the LOCAL trainable tensors (what a client may
upload); :func:`global_tensors`, :func:`frozen_tensors` and :func:`gate_tensors` give the other parts under the
same canonical names. No Flower imports.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..models.backbone import stable_seed
from ..models.depth import block_end_layers
from ..models.families import FamilySpec, family_of, resolve_roles
from ..models.stack import global_layer_indices, layer_stack
from .alignment import orthonormal_columns, orthonormal_rows
from .base import AdapterKind, Shape
from .naming import layer_tensor_name

GATES = ("input", "scalar")
# ``algorithm_params.block_rule`` -> the :func:`~fedbrick_flower.models.depth.block_end_layers` rule it names;
# ``relative-depth`` puts block b of every model at the same relative depth (the paper's matching principle),
# ``fedmosaic`` is the official code's ``get_target_layers`` (MiniLM's 6 layers: 0, 1, 2, 5).
BLOCK_RULES = {"relative-depth": "relative-depth", "fedmosaic": "floor-step", "balanced": "balanced"}
BLOCK_PREFIX = "colora."
_BLOCK_NAME = re.compile(r"^colora\.(\d+)\.(\w+)\.(P|Q|A|B)$")
# Variance of the code's gate noise: softplus(x · w_noise) + 1e-5 with w_noise = 0, i.e. log 2 + 1e-5.
_GATE_NOISE_VARIANCE = math.log(2.0) + 1e-5


@dataclass(frozen=True)
class ColoraSettings:
    """Co-LoRA and dual-LoRA hyper-parameters of a FedMosaic run (one rank for the whole federation).

    Raises
    ------
    ValueError
        Naming the field (``algorithm_params.n_blocks``...) when a value is out of range.
    """

    rank: int = field(default=8, metadata={"help": "LoRA rank r, the same for every client (P is r x r)."})
    alpha: float = field(default=16.0, metadata={"help": "Scaling numerator: updates are scaled by alpha / r."})
    n_blocks: int = field(default=4, metadata={"help": "Depth blocks N_B; Co-LoRA sits on each block's last layer."})
    block_rule: str = field(
        default="relative-depth",
        metadata={"help": "Block-end rule: 'relative-depth' (equal relative depth), 'fedmosaic' (code), 'balanced'."},
    )
    gate: str = field(default="input", metadata={"help": "'input' (sigmoid of mean_tokens(x w)) or 'scalar'."})
    gate_noise: bool = field(
        default=True, metadata={"help": "The code's Gaussian noise on the input gate in training."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha must be positive, got {self.alpha!r}")
        if isinstance(self.n_blocks, bool) or not isinstance(self.n_blocks, int) or self.n_blocks < 1:
            raise ValueError(f"algorithm_params.n_blocks must be a positive integer, got {self.n_blocks!r}")
        if self.block_rule not in BLOCK_RULES:
            raise ValueError(f"algorithm_params.block_rule: {self.block_rule!r} is not one of {list(BLOCK_RULES)}")
        if self.gate not in GATES:
            raise ValueError(f"algorithm_params.gate: {self.gate!r} is not one of {list(GATES)}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def targets(self, num_layers: int) -> list[int]:
        """The block-end layers of a ``num_layers``-deep model; list position = block index."""
        return block_end_layers(num_layers, min(self.n_blocks, num_layers), BLOCK_RULES[self.block_rule])


def block_tensor_name(block: int, role: str, param: str) -> str:
    """Canonical name of a width-independent Co-LoRA tensor: by block index and role, not layer and path."""
    return f"{BLOCK_PREFIX}{block}.{role}.{param}"


def parse_block_tensor_name(name: str) -> tuple[int, str, str] | None:
    """``(block, role, param)`` of a Co-LoRA block name, or None."""
    match = _BLOCK_NAME.match(name)
    return None if match is None else (int(match.group(1)), match.group(2), match.group(3))


class CoLoraLinear(nn.Module):
    """A frozen linear projection plus a dual (global G, local L) adapter and a gate.

    Parameters
    ----------
    base : nn.Linear
        The frozen pretrained projection.
    settings : ColoraSettings
        Rank, scaling and gate.
    pq : bool
        True: Co-LoRA (frozen A, B; P, Q for G and L). False: ordinary LoRA (A, B for G and L).
    """

    def __init__(self, base: nn.Linear, settings: ColoraSettings, pq: bool) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"Co-LoRA wraps nn.Linear projections, got {type(base).__name__}")
        self.base, self.pq, self.scaling = base, pq, settings.scaling
        self.gate_kind, self.gate_noise = settings.gate, settings.gate_noise
        r, d_in, d_out = settings.rank, base.in_features, base.out_features

        def frozen(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(*shape), requires_grad=False)

        if pq:
            self.A, self.B = frozen(r, d_in), frozen(d_out, r)
            self.P_global, self.Q_global = frozen(r, r), frozen(r)
            self.P_local, self.Q_local = nn.Parameter(torch.zeros(r, r)), nn.Parameter(torch.zeros(r))
        else:
            self.A_global, self.B_global = frozen(r, d_in), frozen(d_out, r)
            self.A_local, self.B_local = nn.Parameter(torch.zeros(r, d_in)), nn.Parameter(torch.zeros(d_out, r))
        shape = (d_in,) if settings.gate == "input" else ()
        self.gate_weight = nn.Parameter(torch.zeros(shape))

    def _delta(self, x: torch.Tensor, which: str) -> torch.Tensor:
        if self.pq:
            z = (x @ self.A.T) @ getattr(self, f"P_{which}") + getattr(self, f"Q_{which}")
            return self.scaling * (z @ self.B.T)
        return self.scaling * ((x @ getattr(self, f"A_{which}").T) @ getattr(self, f"B_{which}").T)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """β per sample, shaped to broadcast over ``x``'s token and feature axes."""
        if self.gate_kind == "scalar":
            return torch.sigmoid(self.gate_weight).reshape((1,) * x.dim())
        scores = x @ self.gate_weight  # (batch, tokens...)
        if self.training and self.gate_noise:
            scores = scores + torch.randn_like(scores) * math.sqrt(_GATE_NOISE_VARIANCE)
        pooled = scores.reshape(scores.shape[0], -1).mean(dim=1) if scores.dim() > 1 else scores
        return torch.sigmoid(pooled).reshape((-1,) + (1,) * (x.dim() - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        adapter_input = x.to(self.gate_weight.dtype)
        beta = self.gate(adapter_input)
        mixed = beta * self._delta(adapter_input, "global") + (1.0 - beta) * self._delta(adapter_input, "local")
        return out + mixed.to(out.dtype)


class ColoraKind(AdapterKind):
    """Co-LoRA on the block-end layers, dual LoRA on the others, both gated (see the module docstring)."""

    name = "colora"
    settings_class = ColoraSettings

    def inject(
        self, backbone: nn.Module, family: FamilySpec, layers: Iterable[int] | None, roles: Sequence[str], seed: int
    ) -> nn.Module:
        """Wrap the ``roles`` projections of every layer (the model must hold its full depth) and freeze the rest.

        A and B of Co-LoRA start as seeded orthonormal matrices per (block, role) (``random_shared``; the server
        replaces them with aligned ones), local LoRA A from a per-(layer, module) seed and B = 0; G starts as a
        copy of L, as the code's round 0 does. ``layers`` must be None or every layer.
        """
        indices = global_layer_indices(backbone, family)
        if tuple(indices) != tuple(range(len(indices))) or (layers is not None and sorted(layers) != list(indices)):
            raise ValueError("Co-LoRA needs the full-depth model: block ends are fixed by the whole depth")
        for parameter in backbone.parameters():
            parameter.requires_grad = False
        targets = self.settings.targets(len(indices))
        for g, layer in zip(indices, layer_stack(backbone, family), strict=True):
            for role in resolve_roles(roles, family):
                path = family.module_path(role)
                parent_path, _, attribute = path.rpartition(".")
                parent = layer.get_submodule(parent_path) if parent_path else layer
                module = CoLoraLinear(getattr(parent, attribute), self.settings, pq=g in targets)
                _initialise(module, g, targets, role, path, seed)
                setattr(parent, attribute, module)
        return backbone

    def tensors(self, backbone: nn.Module) -> dict[str, torch.Tensor]:
        return local_tensors(backbone)

    def schema(self, model_config: Any, layers: Iterable[int], roles: Sequence[str]) -> dict[str, Shape]:
        """Local P, Q per block and role, and local LoRA A, B on the held non-target ``layers``."""
        dims = self.dims(model_config)
        family = family_of(dims.model_type)
        r = self.settings.rank
        targets = self.settings.targets(dims.num_layers)
        shapes: dict[str, Shape] = {}
        for role in resolve_roles(roles, family):
            for block in range(len(targets)):
                shapes[block_tensor_name(block, role, "P")] = (r, r)
                shapes[block_tensor_name(block, role, "Q")] = (r,)
            d_in, d_out = family.in_out(role, dims)
            for g in layers:
                if g not in targets:
                    path = family.module_path(role)
                    shapes[layer_tensor_name(g, path, "lora_A")] = (r, d_in)
                    shapes[layer_tensor_name(g, path, "lora_B")] = (d_out, r)
        return shapes


def colora_modules(backbone: nn.Module) -> dict[tuple[int, str, str], CoLoraLinear]:
    """``(global layer, role, module path) -> module`` of every wrapped projection, in layer order."""
    from ..models.backbone import model_family

    family = model_family(backbone)
    found: dict[tuple[int, str, str], CoLoraLinear] = {}
    for g, layer in zip(global_layer_indices(backbone, family), layer_stack(backbone, family), strict=True):
        for role, path in family.role_paths:
            module = layer.get_submodule(path)
            if isinstance(module, CoLoraLinear):
                found[(g, role, path)] = module
    return found


def _block_of(backbone: nn.Module, modules: Mapping[tuple[int, str, str], CoLoraLinear]) -> dict[int, int]:
    targets = sorted({g for (g, _, _), m in modules.items() if m.pq})
    return {g: block for block, g in enumerate(targets)}


def _named(
    backbone: nn.Module, pq_params: Mapping[str, str], lora_params: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    modules = colora_modules(backbone)
    blocks = _block_of(backbone, modules)
    tensors: dict[str, torch.Tensor] = {}
    for (g, role, path), module in modules.items():
        params = pq_params if module.pq else lora_params
        for param, attribute in params.items():
            if module.pq:
                tensors[block_tensor_name(blocks[g], role, param)] = getattr(module, attribute)
            else:
                tensors[layer_tensor_name(g, path, param)] = getattr(module, attribute)
    return tensors


def local_tensors(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """L: P_L, Q_L (block names) and LoRA A_L, B_L (layer names), the tensors a client trains and may send."""
    return _named(backbone, {"P": "P_local", "Q": "Q_local"}, {"lora_A": "A_local", "lora_B": "B_local"})


def global_tensors(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """G: P_G, Q_G (block names) and LoRA A_G, B_G (layer names), the same names as the local tensors."""
    return _named(backbone, {"P": "P_global", "Q": "Q_global"}, {"lora_A": "A_global", "lora_B": "B_global"})


def frozen_tensors(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen, aligned Co-LoRA A and B (``colora.{b}.{role}.A/B``), shared by G and L."""
    return _named(backbone, {"A": "A", "B": "B"}, {})


def gate_tensors(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Every gate parameter, under ``layers.{g}.{path}.gate`` (local state, never sent)."""
    return {layer_tensor_name(g, path, "gate"): m.gate_weight for (g, _, path), m in colora_modules(backbone).items()}


def frozen_schema(settings: ColoraSettings, model_config: Any, roles: Sequence[str]) -> dict[str, Shape]:
    """Names and shapes of the aligned A and B of one model (what the server sends once)."""
    dims = AdapterKind.dims(model_config)
    family = family_of(dims.model_type)
    shapes: dict[str, Shape] = {}
    for role in resolve_roles(roles, family):
        d_in, d_out = family.in_out(role, dims)
        for block in range(len(settings.targets(dims.num_layers))):
            shapes[block_tensor_name(block, role, "A")] = (settings.rank, d_in)
            shapes[block_tensor_name(block, role, "B")] = (d_out, settings.rank)
    return shapes


def random_shared_frozen(shapes: Mapping[str, Shape], seed: int) -> dict[str, torch.Tensor]:
    """Seeded orthonormal A (rows) and B (columns) per (block, role): equal widths give equal matrices."""
    frozen = {}
    for name, shape in shapes.items():
        _, _, param = parse_block_tensor_name(name)
        generator_seed = stable_seed(seed, name)
        frozen[name] = (
            orthonormal_rows(shape, generator_seed) if param == "A" else orthonormal_columns(shape, generator_seed)
        )
    return frozen


def _initialise(module: CoLoraLinear, g: int, targets: list[int], role: str, path: str, seed: int) -> None:
    with torch.no_grad():
        if module.pq:
            block = targets.index(g)
            module.A.copy_(
                orthonormal_rows(tuple(module.A.shape), stable_seed(seed, block_tensor_name(block, role, "A")))
            )
            module.B.copy_(
                orthonormal_columns(tuple(module.B.shape), stable_seed(seed, block_tensor_name(block, role, "B")))
            )
            return
        generator = torch.Generator().manual_seed(stable_seed(seed, g, path))
        bound = 1.0 / math.sqrt(module.A_local.shape[1])
        module.A_local.copy_(torch.empty(module.A_local.shape).uniform_(-bound, bound, generator=generator))
        module.A_global.copy_(module.A_local)
