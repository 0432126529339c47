"""The ``triple`` adapter kind: H2Tune's sparsified triple-matrix LoRA with a shared, layer-aligned middle bank.

Every targeted projection of a held layer computes (``docs/algorithms/h2tune.md#adapter-triple-matrices``)::

    h = W0 x + (alpha / r_k) B (T u + u),    u = A dropout(x)

with ``A`` (r_k x d_in) and ``B`` (d_out x r_k) local to the device, and the active middle ``T`` (r_k x r_k) a
selection of r_k^2 entries of the layer's full middle matrix ``Ť`` (R x R, R the federation's largest rank).
``T = 0`` is plain LoRA, ``B = 0`` (the initialisation) is no change at all.

The full middle matrix of held layer ``l`` and role ``m`` is ``Ť_{l,m} = sum_g Π[g, l] G_m[g] + D_{l,m}``: the
downloaded bank ``G`` (L_max slots, a buffer) mixed by the device's relation matrix ``Π`` (L_max x L_k, a
parameter) plus a trainable local correction ``D`` (R x R, zero at download). Written this way, ``Ť`` at
download is exactly the relation-guided download of the paper, and the task loss reaches ``Π`` (the public code
never trains it) as well as the selected entries of ``D``; gradients reach ``Ť`` only at the selected positions.

Selection (``selection``): ``fixed`` (default) draws the r_k^2 positions once from a seed common to the whole
federation, nested across ranks (a rank-4 device uses a subset of a rank-8 device's entries); ``block`` takes the
leading r_k x r_k block; ``straight-through`` keeps trainable scores ``M`` (R x R), selects their top r_k^2 in
the forward pass and passes gradients to ``M`` through the hard mask. The code's top-k without a straight-through
estimator gives ``M`` no task gradient, which is why ``fixed`` is the default
(``docs/algorithms/h2tune.md#departures``, item 1).

The pure math of the bank (download :func:`mix_bank`, upload :func:`project_bank`) lives here as functions of
tensors, so the client half and the tests use the same statement of it. No Flower imports.

Paper: Guo et al., "H2Tune: Federated Foundation Model Fine-Tuning with Hybrid Heterogeneity",
https://arxiv.org/abs/2507.22633.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..models.backbone import model_family, stable_seed
from ..models.depth import relative_depth_map
from ..models.families import DEFAULT_ROLES, FamilySpec, family_of, resolve_roles
from ..models.stack import LayerShim, global_layer_indices, layer_stack
from .base import AdapterKind, Shape, load_named
from .naming import bank_tensor_name, layer_tensor_name

SELECTIONS: tuple[str, ...] = ("fixed", "block", "straight-through")
RELATION_NAME = "triple.relation"
BANK_ATTRIBUTE = "triple_bank"  # where the backbone keeps the bank and the relation matrix (a registered submodule)


@dataclass(frozen=True)
class TripleSettings:
    """Hyper-parameters of one client's triple-matrix adapters.

    Parameters
    ----------
    rank : int (default: 8)
        This client's rank r_k (A is r_k x d_in, T is r_k x r_k).
    max_rank : int (default: 8)
        R, the federation's largest rank: the side of the shared middle matrices.
    slots : int (default: 1)
        L_max, the number of global slots of the bank (rows of the relation matrix).
    alpha : float (default: 16.0)
        Scaling numerator; the update is scaled by alpha / r_k.
    dropout : float (default: 0.0)
        Dropout on the adapter input.
    roles : tuple[str, ...] (default: ("q", "v"))
        Module roles adapted.
    selection : str (default: "fixed")
        ``fixed``, ``block`` or ``straight-through`` (see the module docstring).
    selection_seed : int (default: 0)
        Seed of the fixed selection and of the initial scores, common to the federation.

    Raises
    ------
    ValueError
        Naming the field (``triple.rank``...) when a value is out of range.
    """

    rank: int = field(default=8, metadata={"help": "This client's rank r_k."})
    max_rank: int = field(default=8, metadata={"help": "R, the federation's largest rank (side of the bank)."})
    slots: int = field(default=1, metadata={"help": "L_max, the bank's number of global layer slots."})
    alpha: float = field(default=16.0, metadata={"help": "Scaling numerator: the update is scaled by alpha / r_k."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout probability on the adapter input, in [0, 1)."})
    roles: tuple[str, ...] = field(default=DEFAULT_ROLES, metadata={"help": "Module roles to adapt."})
    selection: str = field(default="fixed", metadata={"help": "fixed, block or straight-through."})
    selection_seed: int = field(default=0, metadata={"help": "Seed of the fixed selection, common to all clients."})

    def __post_init__(self) -> None:
        for name in ("rank", "max_rank", "slots"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"triple.{name} must be a positive integer, got {value!r}")
        if self.rank > self.max_rank:
            raise ValueError(f"triple.rank ({self.rank}) exceeds triple.max_rank ({self.max_rank})")
        if not self.alpha > 0:
            raise ValueError(f"triple.alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"triple.dropout must be in [0, 1), got {self.dropout!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"triple.selection must be one of {list(SELECTIONS)}, got {self.selection!r}")
        resolve_roles(self.roles)


# ---------------------------------------------------------------------------------------------------- pure math
def fixed_selection(rank: int, max_rank: int, seed: int, role: str) -> torch.Tensor:
    """The r^2 flat positions (sorted) of a seeded draw from the R x R matrix; nested across ranks.

    One permutation per (seed, role) serves every rank: a rank-r device takes its first r^2 positions, so the
    entries a smaller device uses are among those of every larger one.
    """
    generator = torch.Generator().manual_seed(stable_seed(seed, "triple-selection", role))
    order = torch.randperm(max_rank * max_rank, generator=generator)
    return order[: rank * rank].sort().values


def block_selection(rank: int, max_rank: int) -> torch.Tensor:
    """The flat positions of the leading r x r block of an R x R matrix (row-major)."""
    rows = torch.arange(rank).unsqueeze(1) * max_rank
    return (rows + torch.arange(rank).unsqueeze(0)).reshape(-1)


def top_selection(scores: torch.Tensor, rank: int) -> torch.Tensor:
    """The r^2 flat positions (sorted) of the largest scores."""
    return scores.detach().reshape(-1).topk(rank * rank).indices.sort().values


def select(full: torch.Tensor, positions: torch.Tensor, rank: int) -> torch.Tensor:
    """The active middle ``T = reshape(vec(Ť)[positions], r, r)``; its gradient scatters back to those entries."""
    return full.reshape(-1)[positions].reshape(rank, rank)


def mix_bank(relation: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Download: ``Ť_l = sum_g Π[g, l] G[g]`` for every client layer.

    (L_max x L_k) relation and (L_max x R x R) bank give (L_k x R x R) full middles.
    """
    return torch.einsum("gl,gij->lij", relation, bank)


def project_bank(relation: torch.Tensor, fulls: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
    """Upload: each slot's weighted average of the client's full middles, normalised per slot.

    ``m_g = sum_l |Π[g, l]|`` is the client's relation mass on slot g. The upload is
    ``Ĝ[g] = sum_l Π[g, l] Ť_l / max(m_g, 1) + max(0, 1 - m_g) G[g]``: a slot the client relates to fully
    (m_g >= 1) becomes the normalised (weighted-average) projection (``docs/algorithms/h2tune.md#departures``, item
    2: the code uploads an
    unnormalised sum), and a slot it relates to partly or not at all keeps the rest of what it received, so
    clients do not drag slots they never use towards zero.

    Parameters
    ----------
    relation : torch.Tensor
        Π, (L_max x L_k).
    fulls : torch.Tensor
        The client's full middles Ť_l, (L_k x R x R).
    received : torch.Tensor
        The bank G this round's payload carried, (L_max x R x R).
    """
    mass = relation.abs().sum(dim=1)
    projected = torch.einsum("gl,lij->gij", relation, fulls) / mass.clamp(min=1.0)[:, None, None]
    return projected + (1.0 - mass).clamp(min=0.0)[:, None, None] * received


def relation_mass(relation: torch.Tensor) -> torch.Tensor:
    """``m_g = sum_l |Π[g, l]|``, each slot's relation mass (L_max,)."""
    return relation.detach().abs().sum(dim=1)


def initial_relation(num_layers: int, slots: int) -> np.ndarray:
    """Π's initialisation: the relative-depth interpolation of the client's layers over the slots (L_max x L_k)."""
    return relative_depth_map(num_layers, slots).T.copy()


# ---------------------------------------------------------------------------------------------------- modules
class TripleBank(nn.Module):
    """The device's relation matrix Π (a parameter) and the downloaded bank, one ``(L_max, R, R)`` buffer per role.

    Parameters
    ----------
    num_layers : int
        L_k, the layers this device holds.
    settings : TripleSettings
        Gives R, L_max and the roles.
    roles : Sequence[str]
        The bank roles this device uses.
    """

    def __init__(self, num_layers: int, settings: TripleSettings, roles: Sequence[str]) -> None:
        super().__init__()
        self.relation = nn.Parameter(torch.as_tensor(initial_relation(num_layers, settings.slots), dtype=torch.float32))
        self.roles = tuple(roles)
        for role in self.roles:
            self.register_buffer(_bank_buffer(role), torch.zeros(settings.slots, settings.max_rank, settings.max_rank))

    def bank(self, role: str) -> torch.Tensor:
        return getattr(self, _bank_buffer(role))

    def full(self, position: int, role: str) -> torch.Tensor:
        """``sum_g Π[g, position] G_role[g]`` for one held layer (graph-connected to Π)."""
        return torch.einsum("g,gij->ij", self.relation[:, position], self.bank(role))


class TripleLinear(nn.Module):
    """A frozen projection plus ``(alpha / r) B (T A x + A x)``, its T selected from the layer's full middle.

    Parameters
    ----------
    base : nn.Module
        The frozen projection it wraps (``nn.Linear``, or GPT-2's ``Conv1D`` with its transposed weight).
    bank : TripleBank
        The device's bank and relation matrix (held by reference; the backbone registers it once).
    position, role : int, str
        The held layer's position (column of Π) and the module's bank role.
    settings : TripleSettings
        Rank, R, alpha, dropout and selection.
    """

    def __init__(self, base: nn.Module, bank: TripleBank, position: int, role: str, settings: TripleSettings) -> None:
        super().__init__()
        rank, max_rank = settings.rank, settings.max_rank
        self.base = base
        self.__dict__["bank"] = bank  # a reference, not a child: the backbone registers the bank once
        self.position, self.role, self.rank = position, role, rank
        self.scale = settings.alpha / rank
        self.selection = settings.selection
        self.dropout = nn.Dropout(settings.dropout)
        in_features, out_features = _in_out(base)
        self.triple_A = nn.Parameter(torch.zeros(rank, in_features))
        self.triple_B = nn.Parameter(torch.zeros(out_features, rank))
        self.triple_D = nn.Parameter(torch.zeros(max_rank, max_rank))
        if settings.selection == "straight-through":
            generator = torch.Generator().manual_seed(stable_seed(settings.selection_seed, "triple-scores", role))
            bound = 1.0 / math.sqrt(max_rank)
            self.triple_M = nn.Parameter(torch.empty(max_rank, max_rank).uniform_(-bound, bound, generator=generator))
            positions = top_selection(self.triple_M, rank)
        elif settings.selection == "block":
            positions = block_selection(rank, max_rank)
        else:
            positions = fixed_selection(rank, max_rank, settings.selection_seed, role)
        self.register_buffer("positions", positions, persistent=False)

    def full_middle(self) -> torch.Tensor:
        """Ť = sum_g Π[g, l] G[g] + D (R x R)."""
        return self.bank.full(self.position, self.role) + self.triple_D

    def active_positions(self) -> torch.Tensor:
        if self.selection == "straight-through":
            return top_selection(self.triple_M, self.rank)
        return self.positions

    def middle(self) -> torch.Tensor:
        """The active T (r x r). Under ``straight-through`` the hard top-k mask carries the scores' gradient."""
        full = self.full_middle()
        positions = self.active_positions()
        if self.selection == "straight-through":
            soft = torch.sigmoid(self.triple_M)
            hard = torch.zeros_like(soft).reshape(-1).index_fill(0, positions, 1.0).reshape(soft.shape)
            full = full * (hard + soft - soft.detach())
        return select(full, positions, self.rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        u = F.linear(self.dropout(x.to(self.triple_A.dtype)), self.triple_A)
        h = u + F.linear(u, self.middle())
        return out + (self.scale * F.linear(h, self.triple_B)).to(out.dtype)


# ---------------------------------------------------------------------------------------------------- the kind
class TripleKind(AdapterKind):
    """H2Tune's triple-matrix adapter on the projections of given roles, with the bank on the backbone."""

    name = "triple"
    settings_class = TripleSettings

    def inject(
        self, backbone: nn.Module, family: FamilySpec, layers: Iterable[int] | None, roles: Sequence[str], seed: int
    ) -> nn.Module:
        """Wrap the role projections of the held real layers (in stack order: Π's columns) and freeze the rest.

        ``A`` is Kaiming-uniform from a seed per (seed, global layer, module), ``B = 0``.
        """
        for parameter in backbone.parameters():
            parameter.requires_grad = False
        held = _held_layers(backbone, family, layers)
        paths = bank_paths(family, roles)
        bank = TripleBank(len(held), self.settings, list(paths.values()))
        setattr(backbone, BANK_ATTRIBUTE, bank)
        for position, (g, layer) in enumerate(held):
            for path, role in paths.items():
                parent, _, child = path.rpartition(".")
                owner = layer.get_submodule(parent) if parent else layer
                module = TripleLinear(getattr(owner, child), bank, position, role, self.settings)
                generator = torch.Generator().manual_seed(stable_seed(seed, g, path))
                bound = 1.0 / math.sqrt(module.triple_A.shape[1])
                with torch.no_grad():
                    module.triple_A.uniform_(-bound, bound, generator=generator)
                setattr(owner, child, module)
        return backbone

    def tensors(self, backbone: nn.Module) -> dict[str, torch.Tensor]:
        """Every tensor of the kind (see :func:`triple_tensors`)."""
        return triple_tensors(backbone)

    def load(self, backbone: nn.Module, values: Mapping[str, Any]) -> None:
        load_named(self.tensors(backbone), values, self.name)

    def schema(self, model_config: Any, layers: Iterable[int], roles: Sequence[str]) -> dict[str, Shape]:
        """Per-layer A, B, D (and M) of each role's projection; Π and the bank depend on the federation, not here."""
        dims = self.dims(model_config)
        family = family_of(dims.model_type)
        rank, max_rank = self.settings.rank, self.settings.max_rank
        shapes: dict[str, Shape] = {}
        for g in layers:
            for path, role in bank_paths(family, roles).items():
                in_features, out_features = family.in_out(role, dims)
                shapes[layer_tensor_name(g, path, "triple_A")] = (rank, in_features)
                shapes[layer_tensor_name(g, path, "triple_B")] = (out_features, rank)
                shapes[layer_tensor_name(g, path, "triple_D")] = (max_rank, max_rank)
                if self.settings.selection == "straight-through":
                    shapes[layer_tensor_name(g, path, "triple_M")] = (max_rank, max_rank)
        return shapes


def triple_tensors(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Per module A, B, D (and M), the relation Π, and the bank (a buffer), under canonical names (views)."""
    tensors: dict[str, torch.Tensor] = {}
    for (g, path), module in triple_modules(backbone, model_family(backbone)).items():
        for param in ("triple_A", "triple_B", "triple_D", "triple_M"):
            if hasattr(module, param):
                tensors[layer_tensor_name(g, path, param)] = getattr(module, param)
    bank = triple_bank(backbone)
    tensors[RELATION_NAME] = bank.relation
    tensors.update({bank_tensor_name(role): bank.bank(role) for role in bank.roles})
    return tensors


def bank_paths(family: FamilySpec, roles: Sequence[str]) -> dict[str, str]:
    """Module path -> bank role of the projections ``roles`` adapt (a fused projection takes its first role)."""
    paths: dict[str, str] = {}
    for role in resolve_roles(roles, family):
        paths.setdefault(family.module_path(role), role)
    return paths


def bank_roles(model_type: str, roles: Sequence[str]) -> tuple[str, ...]:
    """The bank roles a client of ``model_type`` adapting ``roles`` uses (from its profile alone)."""
    return tuple(bank_paths(family_of(model_type), roles).values())


def triple_modules(backbone: nn.Module, family: FamilySpec) -> dict[tuple[int, str], TripleLinear]:
    """``(global layer, module path)`` -> the triple-matrix module, in stack order."""
    found: dict[tuple[int, str], TripleLinear] = {}
    for g, layer in zip(global_layer_indices(backbone, family), layer_stack(backbone, family), strict=False):
        for path, module in layer.named_modules():
            if isinstance(module, TripleLinear):
                found[(g, path)] = module
    return found


def triple_bank(backbone: nn.Module) -> TripleBank:
    return getattr(backbone, BANK_ATTRIBUTE)


def _held_layers(backbone: nn.Module, family: FamilySpec, layers: Iterable[int] | None) -> list[tuple[int, nn.Module]]:
    real = [
        (g, layer)
        for g, layer in zip(global_layer_indices(backbone, family), layer_stack(backbone, family), strict=False)
        if not isinstance(layer, LayerShim)
    ]
    if layers is None:
        return real
    wanted = set(layers)
    missing = sorted(wanted - {g for g, _ in real})
    if missing:
        held = [g for g, _ in real]
        raise ValueError(f"triple layers {missing} are not real layers of this backbone (it holds {held})")
    return [(g, layer) for g, layer in real if g in wanted]


def _in_out(projection: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a linear projection; GPT-2's ``Conv1D`` stores its weight as in x out."""
    if isinstance(projection, nn.Linear):
        return projection.in_features, projection.out_features
    in_features, out_features = projection.weight.shape
    return int(in_features), int(out_features)


def _bank_buffer(role: str) -> str:
    return f"bank_{role}"
