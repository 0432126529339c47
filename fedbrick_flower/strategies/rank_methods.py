"""What HetLoRA, FlexLoRA and FLoRA share on the server: per-client ranks, module grouping, the collapse diagnostic.

Each client trains LoRA at its own rank (its profile's ``rank:``, visible in the ``lora_A`` shape of its
``layer_schema``). The three methods differ only in how they mix one adapted module over the clients that held
it this round (:meth:`RankHeterogeneousLoRA.aggregate_modules`) and what they send back. Everything else lives
here once: the expected update at each client's rank, task heads averaged per (model, task) as in FedAvg, the
rank-collapse diagnostic row, and global adapters in a form the full-depth evaluation model loads.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..adapters.naming import is_head, parse_layer_tensor_name
from ..client_info import ClientInfo
from . import ranks
from .fedavg import LayerwiseFedAvg, scoped_name
from .replies import ClientUpdate

if TYPE_CHECKING:
    from ..scenario import Scenario

DIAGNOSTIC_PHASE = "rank-diagnostic"  # a metric phase, declared with its row keys in the registry entries


@dataclass(frozen=True)
class Holder:
    """One client's factors of one adapted module, as it trained them (scale not folded in)."""

    client_id: str
    a: np.ndarray
    b: np.ndarray
    num_examples: float

    @property
    def rank(self) -> int:
        return ranks.rank_of(self.a)


def schema_rank(layer_schema: Mapping[str, list[int]]) -> int:
    """The LoRA rank of a client's one-layer schema (the rows of any ``lora_A``)."""
    for name, shape in layer_schema.items():
        if name.endswith("lora_A"):
            return int(shape[0])
    raise ValueError(f"the layer schema {sorted(layer_schema)} holds no lora_A factor")


def at_rank(schema: Mapping[str, tuple[int, ...]], rank: int) -> dict[str, tuple[int, ...]]:
    """A schema with every LoRA factor reshaped to ``rank`` (``lora_A``: rank x d_in, ``lora_B``: d_out x rank)."""
    shapes = {}
    for name, shape in schema.items():
        if name.endswith("lora_A"):
            shapes[name] = (rank, shape[1])
        elif name.endswith("lora_B"):
            shapes[name] = (shape[0], rank)
        else:
            shapes[name] = tuple(shape)
    return shapes


def module_key(model: str, name: str) -> str | None:
    """Server key of the adapted module a canonical LoRA tensor belongs to (``model/layers.g.module``)."""
    parsed = parse_layer_tensor_name(name)
    if parsed is None or parsed[2] not in {"lora_A", "lora_B"}:
        return None
    return f"{model}/layers.{parsed[0]}.{parsed[1]}"


def module_groups(updates: list[ClientUpdate]) -> dict[str, list[Holder]]:
    """Each adapted module's holders this round: partial-depth clients appear only under their own layers."""
    groups: dict[str, list[Holder]] = {}
    for update in updates:
        factors: dict[str, dict[str, np.ndarray]] = {}
        for name, value in update.arrays.items():
            key = module_key(update.client.model, name)
            if key is not None:
                factors.setdefault(key, {})[name.rsplit(".", 1)[1]] = value
        for key, pair in sorted(factors.items()):
            holder = Holder(update.client.client_id, pair["lora_A"], pair["lora_B"], float(update.num_examples))
            groups.setdefault(key, []).append(holder)
    return groups


def lora_tensors(factors: Mapping[str, ranks.Factors], alpha: float) -> dict[str, np.ndarray]:
    """Canonical LoRA tensors at ONE rank for scale-one factors per module (``layers.g.module`` -> (A, B)).

    Modules are zero-padded to the largest rank R and A carries R / alpha, so a model built with peft at rank R
    and ``lora_alpha = alpha`` computes exactly each module's ``B A``.
    """
    if not factors:
        return {}
    rank = max(ranks.rank_of(a) for a, _ in factors.values())
    tensors = {}
    for module, (a, b) in factors.items():
        padded_a, padded_b = ranks.from_scale_one(*ranks.zero_pad(a, b, rank), alpha=alpha, rank=rank)
        tensors[f"{module}.lora_A"] = padded_a.astype(np.float32)
        tensors[f"{module}.lora_B"] = padded_b.astype(np.float32)
    return tensors


def stored_factors(state: Mapping[str, np.ndarray], model: str) -> dict[str, ranks.Factors]:
    """The ``(A, B)`` pairs of ``model`` kept in a server state under ``model/layers.g.module.lora_A|B``."""
    prefix = f"{model}/"
    return {
        key[len(prefix) : -len(".lora_A")]: (a, state[key[: -len("A")] + "B"])
        for key, a in state.items()
        if key.startswith(prefix) and key.endswith(".lora_A") and key.count("/") == 1
    }


class RankHeterogeneousLoRA(LayerwiseFedAvg):
    """Base of the rank-heterogeneous LoRA strategies (HetLoRA, FlexLoRA, FLoRA).

    Parameters
    ----------
    alpha : float (default: 16.0)
        LoRA alpha shared by every client (the scenario's ``lora.alpha``); client k's scale is alpha / r_k.
    **kwargs
        See :class:`HeterogeneousStrategy`.
    """

    def __init__(self, *, alpha: float = 16.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if alpha <= 0:
            raise ValueError(f"alpha: must be > 0, got {alpha}")
        self.alpha = float(alpha)
        self.ranks: dict[str, int] = {}  # ranks reported by clients after the query (HetLoRA self-pruning)

    @classmethod
    def from_scenario(cls, scenario: Scenario, **kwargs: Any) -> RankHeterogeneousLoRA:
        kwargs.setdefault("alpha", scenario.lora.alpha)
        return cls(**kwargs)

    # ------------------------------------------------------------------ what each method implements
    @abstractmethod
    def aggregate_modules(self, server_round: int, groups: dict[str, list[Holder]]) -> dict[str, np.ndarray]:
        """Mix each module over its holders; return the singular values of each module's aggregate."""

    @abstractmethod
    def global_factors(self, model: str) -> dict[str, ranks.Factors]:
        """Scale-one factors of the global update of every adapted module of ``model`` (``layers.g.module``)."""

    # ------------------------------------------------------------------ shared verbs
    def client_rank(self, client: ClientInfo) -> int:
        """The rank ``client`` trains at: its reported rank if it pruned, else its profile's."""
        return self.ranks.get(client.client_id, schema_rank(client.layer_schema))

    def expected_update(self, client: ClientInfo, server_round: int) -> dict[str, tuple[int, ...]]:
        return at_rank(client.schema(self.round_layers[client.client_id]), self.client_rank(client))

    def head_payload(self, client: ClientInfo, names: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The averaged task head of the client's (model, task), where one exists."""
        return {
            name: self.state[key]
            for name in names
            if is_head(name) and (key := scoped_name(client, name)) in self.state
        }

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> None:
        heads = [
            (
                u.client.client_id,
                {scoped_name(u.client, n): v for n, v in u.arrays.items() if is_head(n)},
                float(u.num_examples),
            )
            for u in updates
        ]
        self.state.update(self.combine_layerwise(heads))
        groups = module_groups(updates)
        spectra = self.aggregate_modules(server_round, groups)
        self._log_rows.append(collapse_row(server_round, groups, spectra))

    def layer_adapters(self, model: str) -> dict[str, np.ndarray]:
        """The global LoRA of one model at one rank (from :meth:`global_factors`); the base adds the heads."""
        return lora_tensors(self.global_factors(model), self.alpha)

    def personalized_adapters(self, client: ClientInfo) -> dict[str, np.ndarray]:
        """The client's payload at its own rank (a shorter payload zero-padded: same product, same scale)."""
        arrays, _ = self.payload(client, server_round=0, phase="evaluate")
        rank = self.client_rank(client)
        shapes = at_rank(client.schema(self.round_layers.get(client.client_id, [])), rank)
        return {name: _pad_to(value, shapes[name]) if name in shapes else value for name, value in arrays.items()}

    def algorithm_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return dict(self.state), {"ranks": self.ranks}

    def load_algorithm_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.state = dict(arrays)
        self.ranks = {cid: int(rank) for cid, rank in meta.get("ranks", {}).items()}

    def describe(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "resample_layers (FedRA)": self.resample_layers}


def collapse_row(server_round: int, groups: dict[str, list[Holder]], spectra: dict[str, np.ndarray]) -> dict:
    """The rank-collapse diagnostic of one round (raFLoRA, arXiv 2602.13486).

    The share of the aggregate's spectral energy beyond the smallest rank among each module's holders, pooled
    over modules (energies summed before dividing). Zero-padded averaging dilutes the components only large-rank
    clients train, so under HetLoRA this share shrinks round after round ("rank collapse").
    """
    tail = total = 0.0
    for key, s in spectra.items():
        module_tail, module_total = ranks.tail_energy(s, min(h.rank for h in groups[key]))
        tail, total = tail + module_tail, total + module_total
    all_ranks = [h.rank for holders in groups.values() for h in holders]
    return {
        "round": server_round,
        "phase": DIAGNOSTIC_PHASE,
        "energy-beyond-min-rank": tail / total if total > 0 else 0.0,
        "min-rank": min(all_ranks, default=None),
        "max-rank": max(all_ranks, default=None),
        "modules": len(spectra),
    }


def _pad_to(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    widths = [(0, target - current) for current, target in zip(value.shape, shape, strict=True)]
    return np.pad(value, widths) if any(w for _, w in widths) else value
