"""FedBip and FedBip-L: one personalized adapter set per client, mixed by task-vector similarity.

Yang, Long, Lu, Zhu, Jiang, "FedBip: Bi-level Personalization for Federated Foundation Models", AAAI-26,
https://arxiv.org/abs/2509.12697 (as implemented: ``docs/algorithms/fedbip.md``).

Each round client ``i`` starts from its personalized set θ̄_i, trains, and uploads its task vector
τ_i = θ_i − θ̄_i. The server compares the task vectors of the round and updates every participant::

    c_ik = cos(τ_i, τ_k)      p_ik = max(c_ik, 0) / Σ_j max(c_ij, 0)  (self included)      θ̄_i ← θ̄_i + Σ_k p_ik τ_k

FedBip-L computes ``c`` and ``p`` per layer. Heterogeneous clients: similarities and mixing stay inside a group of
one model and one adapter schema (rank, targets); a layer is compared and mixed among the clients that hold it;
task heads are mixed among clients of the same task with the same weights renormalised.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..adapters.naming import is_head, layer_of, parse_layer_tensor_name
from ..client_info import ClientInfo
from ..registry import algorithm_arguments
from ..scenario import ScenarioError
from .base import HeterogeneousStrategy
from .replies import ClientUpdate
from .similarity import (
    block_grams,
    clipped_weights,
    cosine_from_grams,
    group_mask,
    renormalise,
    shared_mask,
    softmax_weights,
)

if TYPE_CHECKING:
    from ..scenario import Scenario

InitialAdapters = Callable[[ClientInfo], Mapping[str, np.ndarray]]
WEIGHTINGS = ("clipped", "softmax")
SIMILARITY_ON = ("factors", "product")
SIMILARITY_PHASE = "similarity"  # a metric phase, declared with its row keys in the registry entry


@dataclass
class _Contribution:
    """One task vector in a round's mix: this round's (age 0) or a stale client's last one."""

    client: ClientInfo
    tau: dict[str, np.ndarray]
    age: int


@dataclass
class _Layout:
    """Where each layer's tensors sit in the flat per-layer vectors of one group (same schema for all)."""

    layers: list[int]
    names: dict[int, list[str]]  # layer -> canonical names in vector order
    shapes: dict[str, tuple[int, ...]]

    @classmethod
    def of(cls, members: list[_Contribution]) -> _Layout:
        names: dict[int, set[str]] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for member in members:
            for name, value in member.tau.items():
                layer = layer_of(name)
                if layer is not None:
                    names.setdefault(layer, set()).add(name)
                    shapes[name] = value.shape
        return cls(sorted(names), {layer: sorted(found) for layer, found in names.items()}, shapes)

    def blocks(self, tensors: list[Mapping[str, np.ndarray]]) -> tuple[list[np.ndarray], np.ndarray]:
        """Per layer an ``(n, d)`` matrix of flattened tensors (zero rows for non-holders), and the holders."""
        holders = np.array([[self.names[layer][0] in t for layer in self.layers] for t in tensors], dtype=bool)
        blocks = []
        for b, layer in enumerate(self.layers):
            width = sum(int(np.prod(self.shapes[name])) for name in self.names[layer])
            block = np.zeros((len(tensors), width), dtype=np.float32)
            for i in np.flatnonzero(holders[:, b]):
                block[i] = np.concatenate([np.ravel(tensors[i][name]) for name in self.names[layer]])
            blocks.append(block)
        return blocks, holders

    def split(self, layer: int, vector: np.ndarray) -> dict[str, np.ndarray]:
        """The inverse of one row of :meth:`blocks`: a flat layer vector back to named tensors."""
        return _unflatten(vector, self.names[layer], self.shapes)


def scenario_problems(scenario: Scenario) -> list[str]:
    """FedBip's own scenario check (its registry entry's ``scenario_checks``): its parameters, refused at load."""
    return parameter_problems(**algorithm_arguments(scenario.algorithm, scenario.algorithm_params))


def parameter_problems(
    *, weighting: str, similarity_on: str, temperature: float, staleness_decay: float | None, **_: Any
) -> list[str]:
    """What FedBip refuses among its parameters, one problem per field (the others, ``**_``, take any value)."""
    problems = []
    if weighting not in WEIGHTINGS:
        problems.append(f"algorithm_params.weighting: {weighting!r} is not one of {list(WEIGHTINGS)}")
    if similarity_on not in SIMILARITY_ON:
        problems.append(f"algorithm_params.similarity_on: {similarity_on!r} is not one of {SIMILARITY_ON}")
    if temperature <= 0:
        problems.append(f"algorithm_params.temperature: must be > 0, got {temperature}")
    if staleness_decay is not None and not 0.0 < staleness_decay <= 1.0:
        problems.append(f"algorithm_params.staleness_decay: must be in (0, 1], got {staleness_decay}")
    return problems


class FedBip(HeterogeneousStrategy):
    """FedBip: server-level personalization by task-vector similarity (FedBip-L with ``layerwise=True``).

    https://arxiv.org/abs/2509.12697

    Parameters
    ----------
    layerwise : bool (default: False)
        FedBip-L: one similarity matrix and one weighting per layer. Heads use the whole-model weights.
    weighting : str (default: "clipped")
        ``clipped``: clip cosines at 0 and row-normalise; ``softmax``: ``softmax(c / temperature)``.
    temperature : float (default: 0.5)
        Softmax temperature (``weighting="softmax"`` only).
    include_self : bool (default: True)
        Whether a client's own task vector is in its mix (``c_ii = 1`` in the denominator).
    similarity_on : str (default: "factors")
        ``factors``: cosine of the concatenated LoRA factor deltas; ``product``: of ΔW = (BA)_new − (BA)_old per
        module (invariant to the factorisation, O(d²) per module). Mixing is in factor space either way.
    staleness_decay : float, optional
        γ: clients absent this round still contribute their last task vector, weighted by ``γ ** age``.
        Default None: only this round's participants are mixed.
    initial_adapters : Callable[[ClientInfo], Mapping[str, np.ndarray]], optional
        The full-depth adapters a client starts from (θ̄_i before round 1). :meth:`from_scenario` passes the
        seeded initialisation every client uses; without it the server cannot build a payload.
    **kwargs
        See :class:`HeterogeneousStrategy`.
    """

    def __init__(
        self,
        *,
        layerwise: bool = False,
        weighting: str = "clipped",
        temperature: float = 0.5,
        include_self: bool = True,
        similarity_on: str = "factors",
        staleness_decay: float | None = None,
        initial_adapters: InitialAdapters | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        problems = parameter_problems(
            weighting=weighting, similarity_on=similarity_on, temperature=temperature, staleness_decay=staleness_decay
        )
        if problems:  # a strategy built in code; a scenario's are refused at load by scenario_problems
            raise ScenarioError(problems)
        self.layerwise = layerwise
        self.weighting = weighting
        self.temperature = temperature
        self.include_self = include_self
        self.similarity_on = similarity_on
        self.staleness_decay = staleness_decay
        self.initial_adapters = initial_adapters
        self.personal: dict[str, dict[str, np.ndarray]] = {}  # θ̄_i
        self.last_tau: dict[str, dict[str, np.ndarray]] = {}  # τ_i of the client's last round
        self.tau_round: dict[str, int] = {}
        self.same_task_share: dict[str, dict[str, float]] = {}  # round -> mean shares (see _share)
        self._starts: dict[str, Mapping[str, np.ndarray]] = {}  # a memo of initial_adapters per start key

    @classmethod
    def from_scenario(cls, scenario: Scenario, **kwargs: Any) -> FedBip:
        return cls(initial_adapters=functools.partial(_seeded_start, scenario), **kwargs)

    # ------------------------------------------------------------------ verbs
    def payload(self, client: ClientInfo, server_round: int, phase: str) -> tuple[dict[str, np.ndarray], dict]:
        layers = self.layers_for(client, server_round, phase)
        own = self._personal(client, client.schema(layers))
        return {name: own[name] for name in client.schema(layers)}, {"layers": layers}

    def expected_update(self, client: ClientInfo, server_round: int) -> dict[str, tuple[int, ...]]:
        return client.schema(self.round_layers[client.client_id])

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> None:
        fresh = [_Contribution(u.client, u.arrays, 0) for u in updates]
        for member in fresh:
            self._personal(member.client, member.tau)
        contributions = fresh + self._stale(server_round, {u.client.client_id for u in updates})
        groups: dict[tuple[str, str], list[_Contribution]] = {}
        for contribution in contributions:
            groups.setdefault(_group_key(contribution.client), []).append(contribution)
        shares = [self._mix_group(server_round, members) for _, members in sorted(groups.items())]
        for update in updates:
            self.last_tau[update.client.client_id] = update.arrays
            self.tau_round[update.client.client_id] = server_round
        self.same_task_share[str(server_round)] = {
            key: _mean(np.concatenate([s[key] for s in shares])) for key in ("with-self", "others")
        }

    def personalized_adapters(self, client: ClientInfo) -> dict[str, np.ndarray]:
        """θ̄_i on the layers the client held in its last round, plus its head."""
        layers = self.round_layers.get(client.client_id)
        own = self.personal.get(client.client_id, {})
        return {} if layers is None else {name: own[name] for name in client.schema(layers) if name in own}

    # ------------------------------------------------------------------ mixing
    def _mix_group(self, server_round: int, members: list[_Contribution]) -> dict[str, np.ndarray]:
        """Compare, weigh and mix one group; returns each receiver's weight share on same-task clients."""
        layout = _Layout.of(members)
        blocks, holders = layout.blocks([m.tau for m in members])
        compared = blocks if self.similarity_on == "factors" else self._product_blocks(layout, members, holders)
        scale = None
        if self.staleness_decay is not None:
            scale = np.array([self.staleness_decay**m.age for m in members])
        grams = block_grams(compared, holders)
        similarity = cosine_from_grams(grams, holders)
        flat = self._weigh(similarity, shared_mask(holders), scale)
        receivers = [i for i, m in enumerate(members) if m.age == 0]
        shown = np.zeros_like(flat)  # each receiver's weights, averaged over the layers it holds
        for b, layer in enumerate(layout.layers):
            held = holders[:, b]
            if self.layerwise:
                cosine = cosine_from_grams([grams[b]], holders[:, [b]])
                weights = self._weigh(cosine, np.outer(held, held), scale)
            else:
                weights = renormalise(flat, np.outer(held, held))
            shown += weights * held[:, None]
            mixed = weights.astype(np.float32) @ blocks[b]
            for i in receivers:
                if held[i]:
                    self._add(members[i].client.client_id, layout.split(layer, mixed[i]))
        shown /= np.maximum(holders.sum(axis=1, keepdims=True), 1)
        self._mix_heads(members, flat)
        self._log_similarity(server_round, members, receivers, similarity, shown)
        return _share(members, receivers, shown)

    def _mix_heads(self, members: list[_Contribution], flat: np.ndarray) -> None:
        """Heads differ per task (label space): mix among same-task clients, the same weights renormalised."""
        tasks = [m.client.task for m in members]
        weights = renormalise(flat, group_mask(tasks))
        for task in sorted(set(tasks)):
            rows = [i for i, t in enumerate(tasks) if t == task]
            names = sorted(n for n in members[rows[0]].tau if is_head(n))
            if not names:
                continue
            heads = np.stack([np.concatenate([np.ravel(members[i].tau[n]) for n in names]) for i in rows])
            mixed = weights[np.ix_(rows, rows)] @ heads
            shapes = {n: members[rows[0]].tau[n].shape for n in names}
            for position, i in enumerate(rows):
                if members[i].age == 0:
                    self._add(members[i].client.client_id, _unflatten(mixed[position], names, shapes))

    def _weigh(self, similarity: np.ndarray, mask: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
        if self.weighting == "softmax":
            return softmax_weights(similarity, self.temperature, mask, self.include_self, scale)
        return clipped_weights(similarity, mask, self.include_self, scale)

    def _product_blocks(self, layout: _Layout, members: list[_Contribution], holders: np.ndarray) -> list[np.ndarray]:
        """Per layer, the flattened ΔW = (B̄+τ_B)(Ā+τ_A) − B̄Ā of every module (θ̄ before this round's mix; for
        a stale contributor, its current θ̄, which its own last mix has already moved)."""
        blocks = []
        for b, layer in enumerate(layout.layers):
            modules = sorted({parse_layer_tensor_name(n)[1] for n in layout.names[layer]})
            rows = []
            for i, member in enumerate(members):
                if not holders[i, b]:
                    rows.append(None)
                    continue
                base = self.personal[member.client.client_id]
                products = []
                for module in modules:
                    a_name, b_name = f"layers.{layer}.{module}.lora_A", f"layers.{layer}.{module}.lora_B"
                    a_old, b_old = base[a_name].astype(np.float64), base[b_name].astype(np.float64)
                    a_new, b_new = a_old + member.tau[a_name], b_old + member.tau[b_name]
                    products.append(np.ravel(b_new @ a_new - b_old @ a_old))
                rows.append(np.concatenate(products))
            width = next(len(r) for r in rows if r is not None)
            blocks.append(np.stack([np.zeros(width) if r is None else r for r in rows]))
        return blocks

    # ------------------------------------------------------------------ state
    def _personal(self, client: ClientInfo, names: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """θ̄_i, filled from the client's starting adapters for any of ``names`` it does not hold yet."""
        own = self.personal.setdefault(client.client_id, {})
        missing = [name for name in names if name not in own]
        if missing:
            start = self._start(client)
            for name in missing:
                if name not in start:
                    raise KeyError(f"client {client.client_id}: no starting value for adapter tensor {name!r}")
                own[name] = np.asarray(start[name], dtype=np.float32)  # shared until first mixed (no copy)
        return own

    def _start(self, client: ClientInfo) -> Mapping[str, np.ndarray]:
        if self.initial_adapters is None:
            raise RuntimeError(
                "FedBip needs the clients' starting adapters: build it with FedBip.from_scenario(...) or pass "
                "initial_adapters="
            )
        key = f"{client.model}/{client.task}/{json.dumps(client.layer_schema, sort_keys=True)}"
        if key not in self._starts:
            self._starts[key] = self.initial_adapters(client)
        return self._starts[key]

    def _add(self, client_id: str, deltas: Mapping[str, np.ndarray]) -> None:
        own = self.personal[client_id]
        for name, delta in deltas.items():
            own[name] = (own[name] + delta).astype(np.float32)  # a new array: starts may be shared

    def _stale(self, server_round: int, present: set[str]) -> list[_Contribution]:
        if self.staleness_decay is None:
            return []
        return [
            _Contribution(self.clients[cid], tau, server_round - self.tau_round[cid])
            for cid, tau in sorted(self.last_tau.items())
            if cid not in present and cid in self.clients
        ]

    def algorithm_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {f"personal/{cid}/{name}": v for cid, own in self.personal.items() for name, v in own.items()}
        arrays.update({f"tau/{cid}/{name}": v for cid, tau in self.last_tau.items() for name, v in tau.items()})
        return arrays, {"tau_round": self.tau_round, "same_task_share": self.same_task_share}

    def load_algorithm_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.personal, self.last_tau = {}, {}
        stores = {"personal": self.personal, "tau": self.last_tau}
        for key, value in arrays.items():
            kind, rest = key.split("/", 1)
            cid, name = rest.rsplit("/", 1)  # canonical names hold no "/"
            stores[kind].setdefault(cid, {})[name] = np.asarray(value, dtype=np.float32)
        self.tau_round = {cid: int(r) for cid, r in meta.get("tau_round", {}).items()}
        self.same_task_share = dict(meta.get("same_task_share", {}))

    # ------------------------------------------------------------------ reporting
    def _log_similarity(
        self,
        server_round: int,
        members: list[_Contribution],
        receivers: list[int],
        similarity: np.ndarray,
        weights: np.ndarray,
    ) -> None:
        """One metric row per group and round: the cosine matrix and the weights each receiver gave."""
        self._log_rows.append(
            {
                "round": server_round,
                "phase": SIMILARITY_PHASE,
                "group": _group_label(members[0].client),
                "clients": [m.client.client_id for m in members],
                "tasks": [m.client.task for m in members],
                "ages": [m.age for m in members],
                "receivers": [members[i].client.client_id for i in receivers],
                "similarity": np.round(similarity, 4).tolist(),
                "weights": np.round(weights[receivers], 4).tolist(),
                "layerwise": self.layerwise,
            }
        )

    def describe(self) -> dict[str, Any]:
        return {
            "variant": "FedBip-L" if self.layerwise else "FedBip",
            "weighting": self.weighting if self.weighting == "clipped" else f"softmax(T={self.temperature})",
            "include_self": self.include_self,
            "similarity_on": self.similarity_on,
            "staleness_decay": self.staleness_decay,
        }

    def summary_fields(self) -> dict[str, Any]:
        return {"fedbip": {**self.describe(), "same_task_weight_share": self.same_task_share}}


class FedBipL(FedBip):
    """FedBip-L: :class:`FedBip` with one similarity and weighting per layer (registered as ``fedbip-l``).

    https://arxiv.org/abs/2509.12697
    """

    def __init__(self, *, layerwise: bool = True, **kwargs: Any) -> None:
        super().__init__(layerwise=layerwise, **kwargs)


def _share(members: list[_Contribution], receivers: list[int], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Per receiver, the weight on same-task clients: with itself (the heat map's diagonal blocks) and of the
    weight it gives to others, the part that goes to same-task others."""
    tasks = np.array([m.client.task for m in members], dtype=object)
    same = tasks[:, None] == tasks[None, :]
    others = ~np.eye(len(members), dtype=bool)
    rows = weights[receivers]
    with_self = (rows * same[receivers]).sum(axis=1)
    to_others = (rows * others[receivers]).sum(axis=1)
    same_others = (rows * (same & others)[receivers]).sum(axis=1)
    ratio = np.divide(same_others, to_others, out=np.full_like(to_others, np.nan), where=to_others > 0)
    return {"with-self": with_self, "others": ratio[~np.isnan(ratio)]}


def _group_key(client: ClientInfo) -> tuple[str, str]:
    """Clients whose task vectors live in one space: same model, same adapter schema (rank, targets)."""
    return client.model, json.dumps(client.layer_schema, sort_keys=True)


def _group_label(client: ClientInfo) -> str:
    ranks = sorted({shape[0] for name, shape in client.layer_schema.items() if name.endswith("lora_A")})
    return f"{client.model}/r{','.join(map(str, ranks))}"


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if values.size else None


def _unflatten(vector: np.ndarray, names: list[str], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    tensors, offset = {}, 0
    for name in names:
        size = int(np.prod(shapes[name]))
        tensors[name] = vector[offset : offset + size].reshape(shapes[name])
        offset += size
    return tensors


def _seeded_start(scenario: Scenario, client: ClientInfo) -> dict[str, np.ndarray]:
    """The seeded adapters a client of this model, task and rank initialises (shared by every client)."""
    from ..adapters.lora import LoraSettings
    from ..assembly import initial_adapters  # torch and the models load only on the server that runs FedBip

    defaults = scenario.lora
    rank = next(shape[0] for name, shape in client.layer_schema.items() if name.endswith("lora_A"))
    lora = LoraSettings(rank=rank, alpha=defaults.alpha, dropout=defaults.dropout)
    return initial_adapters(scenario, client.model, client.task, lora)
