"""The ``brick`` adapter kind: the tiny surrogate that stands in for a missing transformer layer in FedBRICK.

A client that trains only a subset of the layers replaces every missing layer with a
BRICK, so its forward and backward passes approximate the full model's Jacobian chain
instead of treating the dropped layer as an identity. Applied per token on hidden
states ``x`` of width ``d``::

    E(x) = x * softmax(B1 A1 x) + B2 A2 x + x    (softmax over the feature dimension d)

with ``A1, A2 in R^{r x d}`` and ``B1, B2 in R^{d x r}`` (``4 r d`` parameters).

This module holds the BRICK itself, its settings and its tensor names (``bricks.{g}.{A1|B1|A2|B2}``). The
training policy (the Stage-II schedule) is the client half's (``clients/fedbrick.py``), the server
distillation the server half's (``strategies/distillation.py``). No Flower imports.

References
----------
FedBRICK: Federated Bias Recovery via Inserted Calibrative Kernels. Proceedings of the
AAAI Conference on Artificial Intelligence (AAAI-26), 2026. As implemented: ``docs/algorithms/fedbrick.md``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..models.backbone import stable_seed
from ..models.families import FamilySpec
from ..models.stack import LayerShim, global_layer_indices, layer_stack
from .base import AdapterKind, Shape, load_named

BRICK_PARAM_NAMES: tuple[str, ...] = ("A1", "B1", "A2", "B2")
BRICK_PREFIX = "bricks."
_BRICK_NAME = re.compile(r"^bricks\.(\d+)\.(A1|B1|A2|B2)$")
# Where a backbone keeps its BRICKs, by global layer: a plain dict, not submodules, because the BRICKs of held
# layers are not part of the network (FedBRICK runs them only in Stage II).
BRICKS_ATTRIBUTE = "fedbrick_bricks"


@dataclass
class BrickConfig:
    """Hyper-parameters of the BRICKs of one run (PEFT-config style).

    Parameters
    ----------
    rank : int (default: 8)
        Rank r of both low-rank pathways; a BRICK has ``4 * rank * hidden_size``
        parameters.

    Raises
    ------
    ValueError
        If ``rank`` is not a positive integer.
    """

    rank: int = field(
        default=8,
        metadata={
            "help": (
                "Rank r of the two low-rank pathways (B1 A1 and B2 A2) of every BRICK. "
                "A BRICK has 4*r*d parameters; the paper uses r = 8."
            )
        },
    )

    def __post_init__(self) -> None:
        check_positive_int("BrickConfig.rank", self.rank)


class Brick(nn.Module):
    """Per-token surrogate of one layer, ``E(x) = x*softmax(B1 A1 x) + B2 A2 x + x``.

    Initialisation (the paper does not state it): ``A1``, ``A2`` Kaiming-uniform as in
    ``nn.Linear``, ``B1 = B2 = 0``. Then ``softmax(0)`` is uniform ``1/d`` and
    ``E(x) = x (1 + 1/d)``, almost the identity that plain depth-partial training uses,
    so a fresh BRICK starts where the baseline is and training moves it towards the
    layer.

    Parameters
    ----------
    hidden_size : int
        Feature width d of the hidden states.
    rank : int (default: 8)
        Rank r of both pathways.

    Raises
    ------
    ValueError
        If ``hidden_size`` or ``rank`` is not a positive integer.

    References
    ----------
    FedBRICK: Federated Bias Recovery via Inserted Calibrative Kernels, AAAI-26, eq. for
    ``E_l`` (``docs/algorithms/fedbrick.md#the-brick``).
    """

    def __init__(self, hidden_size: int, rank: int = 8) -> None:
        super().__init__()
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("rank", rank)
        self.hidden_size = hidden_size
        self.rank = rank
        self.A1 = nn.Parameter(torch.empty(rank, hidden_size))
        self.B1 = nn.Parameter(torch.empty(hidden_size, rank))
        self.A2 = nn.Parameter(torch.empty(rank, hidden_size))
        self.B2 = nn.Parameter(torch.empty(hidden_size, rank))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Kaiming-uniform ``A1``, ``A2`` (like ``nn.Linear``) and zero ``B1``, ``B2``.

        Parameters
        ----------
        generator : torch.Generator, optional
            Source of randomness, so that a server can give every (domain, layer)
            BRICK a reproducible start; the global RNG is used when omitted.
        """
        with torch.no_grad():
            for a in (self.A1, self.A2):
                nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            for b in (self.B1, self.B2):
                b.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the BRICK token-wise.

        Parameters
        ----------
        x : torch.Tensor
            Hidden states of shape ``(..., hidden_size)``, any leading dimensions.

        Returns
        -------
        torch.Tensor
            Same shape and dtype as ``x``. The computation runs in the parameters'
            dtype, with the softmax in float32 because bf16/fp16 logits lose too much
            precision in it.
        """
        if x.shape[-1] != self.hidden_size:
            raise ValueError(f"Brick expects hidden states of width {self.hidden_size}, got shape {tuple(x.shape)}")
        h = x.to(self.A1.dtype)
        logits = F.linear(F.linear(h, self.A1), self.B1)
        gate = torch.softmax(logits.float(), dim=-1).to(h.dtype)
        linear = F.linear(F.linear(h, self.A2), self.B2)
        return (h * gate + linear + h).to(x.dtype)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, rank={self.rank}"


def brick_num_parameters(hidden_size: int, rank: int) -> int:
    """Parameters of one BRICK, ``4 * rank * hidden_size`` (24,576 for r=8, d=768)."""
    check_positive_int("hidden_size", hidden_size)
    check_positive_int("rank", rank)
    return 4 * rank * hidden_size


def brick_tensor_name(global_index: int, param: str) -> str:
    """Canonical name of one BRICK tensor, ``bricks.{g}.{param}``, keyed by the GLOBAL layer it stands in for.

    Like the LoRA names of ``adapters.naming``, the name alone says where a tensor belongs; the server scopes
    it per model and group (``"{model}/{group}/bricks.{g}.A1"``).
    """
    return f"{BRICK_PREFIX}{global_index}.{param}"


def parse_brick_tensor_name(name: str) -> tuple[int, str] | None:
    """Split ``bricks.{g}.{param}`` into ``(g, param)``; None for any other name."""
    match = _BRICK_NAME.match(name)
    return None if match is None else (int(match.group(1)), match.group(2))


def is_brick(name: str) -> bool:
    return name.startswith(BRICK_PREFIX)


def brick_schema(layers: Iterable[int], hidden_size: int, rank: int) -> dict[str, tuple[int, ...]]:
    """Canonical names and shapes of the BRICKs of ``layers``."""
    shapes = {
        "A1": (rank, hidden_size),
        "B1": (hidden_size, rank),
        "A2": (rank, hidden_size),
        "B2": (hidden_size, rank),
    }
    return {brick_tensor_name(g, param): shapes[param] for g in layers for param in BRICK_PARAM_NAMES}


def seeded_brick(hidden_size: int, rank: int, seed: int) -> Brick:
    """A BRICK whose initial ``A1``, ``A2`` come from ``seed``, identical in every process."""
    brick = Brick(hidden_size, rank)
    brick.reset_parameters(torch.Generator().manual_seed(seed))
    return brick


def brick_tensors(bricks: Mapping[int, Brick]) -> dict[str, torch.Tensor]:
    """The parameters of BRICKs keyed by global layer, under canonical names (views, not copies)."""
    return {
        brick_tensor_name(g, param): getattr(brick, param) for g, brick in bricks.items() for param in BRICK_PARAM_NAMES
    }


def load_brick_tensors(bricks: Mapping[int, Brick], values: Mapping[str, torch.Tensor | np.ndarray]) -> None:
    """Copy canonical-named BRICK values into ``bricks``; an unknown name or shape raises ``KeyError``."""
    load_named(brick_tensors(bricks), values, "BRICK")


def bricks_of(backbone: nn.Module) -> dict[int, Brick]:
    """All BRICKs injected into ``backbone``, by global layer (empty if none)."""
    return getattr(backbone, BRICKS_ATTRIBUTE, {})


class BrickKind(AdapterKind):
    """BRICKs as an adapter kind: one per given global layer, replacing the layer where the backbone lacks it.

    Module roles do not apply: a BRICK stands in for a whole layer, so ``roles`` is ignored.
    """

    name = "brick"
    settings_class = BrickConfig

    def inject(
        self, backbone: nn.Module, family: FamilySpec, layers: Iterable[int] | None, roles: Sequence[str], seed: int
    ) -> nn.Module:
        """Give every global layer of ``layers`` (None: every layer of the stack) a BRICK seeded per (seed, layer).

        A layer the backbone holds keeps its BRICK aside (in :func:`bricks_of`); a missing layer's place in the
        stack must hold a :class:`~fedbrick_flower.models.stack.LayerShim` (``keep_layers`` with a filler), whose
        inner module becomes the BRICK, so the stack runs it in the layer's place.
        """
        width = self.dims(backbone.config).hidden_size
        wanted = global_layer_indices(backbone, family) if layers is None else sorted(set(layers))
        bricks = {g: seeded_brick(width, self.settings.rank, stable_seed(seed, "brick", g)) for g in wanted}
        stack = layer_stack(backbone, family)
        for position, g in enumerate(global_layer_indices(backbone, family)):
            if isinstance(stack[position], LayerShim) and g in bricks:
                stack[position].inner = bricks[g]
        setattr(backbone, BRICKS_ATTRIBUTE, dict(sorted({**bricks_of(backbone), **bricks}.items())))
        return backbone

    def tensors(self, backbone: nn.Module) -> dict[str, torch.Tensor]:
        return brick_tensors(bricks_of(backbone))

    def schema(self, model_config: Any, layers: Iterable[int], roles: Sequence[str]) -> dict[str, Shape]:
        return brick_schema(layers, self.dims(model_config).hidden_size, self.settings.rank)


def check_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a positive ``int``."""
    # bool is an int subclass; BrickConfig(rank=True) is a mistake, not rank 1.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
