"""FLoRA: stack heterogeneous-rank LoRA factors so the aggregate is exactly the weighted sum of the products.

Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous Low-Rank Adaptations",
NeurIPS 2024, https://arxiv.org/abs/2409.05976 (as implemented: ``docs/algorithms/flora.md``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..adapters.naming import layer_of
from ..client_info import ClientInfo
from ..records import LORA_RANK_KEY
from ..registry import FLORA_SEGMENTS_KEY
from . import ranks
from .rank_methods import Holder, RankHeterogeneousLoRA, lora_tensors
from .replies import ClientUpdate

STACK_PHASE = "flora-stack"  # a metric phase, declared with its row keys in the registry entry
RANK_PHASE = "flora"  # likewise
# Singular values below this share of the largest count as zero in ``stacked-rank`` (an effective rank). Clients
# train A too, so stacks of A drawn from one shared seed leave the shared row space only by their few steps' drift:
# on `ranks` (2 rounds, 3 steps) their spectrum falls from ~3e-2 to ~1e-2 after the 16th value and trails to ~2e-3,
# while fresh draws keep all 46 values above 1e-2 of the largest. At 1e-4 both count 46.
STACKED_RANK_TOLERANCE = 1e-2
_MERGED = ".merged"
_STACK = "stack/"


class FLoRA(RankHeterogeneousLoRA):
    """Stacked aggregation; clients merge the global update into their base weights and restart their LoRA.

    Server: per adapted module, ``A = [p_1 s_1 A_1; ...; p_K s_K A_K]`` and ``B = [B_1 ... B_K]`` over the
    clients that held it (p_k proportional to n_k, s_k = alpha / r_k), so ``B A = sum_k p_k dW_k`` exactly, at
    rank ``sum_k r_k``: the download grows with the number of clients (logged per round, phase ``flora-stack``,
    and in every train row's ``bytes_down``). Each client merges the stacks it has not merged yet into its
    frozen base weights, which persist on the device in its client state, and trains a fresh LoRA at its own
    rank. The server keeps the cumulative merged update per module (the global model) and the per-round stacks
    that some client has not merged yet; a client whose history was pruned (new, or long absent) receives one
    exact factorisation of the cumulative update instead, which it merges in place of what it had.

    Parameters
    ----------
    **kwargs
        See :class:`RankHeterogeneousLoRA`.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stacks: dict[int, dict[str, ranks.Factors]] = {}  # round -> module key -> stacked (A, B), scale one
        self.synced: dict[str, dict[str, int]] = {}  # client -> layer -> last round it has merged
        self.pruned_through = 0  # stacks of rounds up to here are gone
        self.merged_through = 0  # the last aggregated round
        self._offered: dict[str, dict[str, int]] = {}  # client -> layer -> last round in this round's payload

    def payload(self, client: ClientInfo, server_round: int, phase: str) -> tuple[dict[str, np.ndarray], dict]:
        layers = self.layers_for(client, server_round, phase)
        names = client.schema(layers)
        arrays = self.head_payload(client, names)
        segments: dict[str, list[list[int]]] = {}
        for layer in layers:
            modules = sorted(n[: -len(".lora_A")] for n in names if n.endswith(".lora_A") and layer_of(n) == layer)
            blocks, factors = self._catch_up(client, layer, modules)
            if not blocks:
                continue
            segments[str(layer)] = blocks
            for module, (a, b) in factors.items():
                arrays[f"{module}.lora_A"], arrays[f"{module}.lora_B"] = a.astype(np.float32), b.astype(np.float32)
        if phase == "train":
            self._offered[client.client_id] = {layer: blocks[-1][1] for layer, blocks in segments.items()}
        return arrays, {"layers": layers, LORA_RANK_KEY: self.client_rank(client), FLORA_SEGMENTS_KEY: segments}

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> None:
        # A train reply acknowledges that the client merged what its payload offered.
        for update in updates:
            offered = self._offered.pop(update.client.client_id, {})
            self.synced.setdefault(update.client.client_id, {}).update(offered)
        super().aggregate(server_round, updates)
        self.merged_through = server_round
        self._prune_history()

    def aggregate_modules(self, server_round: int, groups: dict[str, list[Holder]]) -> dict[str, np.ndarray]:
        stacks, spectra = {}, {}
        for key, holders in groups.items():
            total = sum(h.num_examples for h in holders)
            weights = [h.num_examples / total for h in holders] if total > 0 else [1.0 / len(holders)] * len(holders)
            a, b = ranks.stack([ranks.scale_one(h.a, h.b, self.alpha) for h in holders], weights)
            stacks[key] = (a.astype(np.float32), b.astype(np.float32))
            merged = b @ a
            if key + _MERGED in self.state:
                merged += self.state[key + _MERGED]
            self.state[key + _MERGED] = merged.astype(np.float32)
            spectra[key] = ranks.product_svd(a, b)[1]
        self.stacks[server_round] = stacks
        stack_ranks = [ranks.rank_of(a) for a, _ in stacks.values()]
        self._log_rows.append(
            {
                "round": server_round,
                "phase": STACK_PHASE,
                "stack-rank-max": max(stack_ranks, default=0),
                "stack-rank-mean": float(np.mean(stack_ranks)) if stack_ranks else 0.0,
                "stack-bytes": int(sum(a.nbytes + b.nbytes for a, b in stacks.values())),
            }
        )
        if groups:
            self._log_rows.append(stacked_rank_row(server_round, groups, spectra))
        return spectra

    def global_factors(self, model: str) -> dict[str, ranks.Factors]:
        prefix = f"{model}/"
        return {
            key[len(prefix) : -len(_MERGED)]: ranks.exact_factors(value)
            for key, value in self.state.items()
            if key.startswith(prefix) and key.endswith(_MERGED)
        }

    def personalized_adapters(self, client: ClientInfo) -> dict[str, np.ndarray]:
        """What the device runs: its base plus the merged global update of its layers, and the global head."""
        names = client.schema(self.round_layers.get(client.client_id, []))
        modules = {n[: -len(".lora_A")] for n in names if n.endswith(".lora_A")}
        factors = {m: f for m, f in self.global_factors(client.model).items() if m in modules}
        return {**lora_tensors(factors, self.alpha), **self.head_payload(client, names)}

    def algorithm_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, meta = super().algorithm_state()
        for server_round, stacks in self.stacks.items():
            for key, (a, b) in stacks.items():
                arrays[f"{_STACK}{server_round}/{key}.lora_A"] = a
                arrays[f"{_STACK}{server_round}/{key}.lora_B"] = b
        meta.update(synced=self.synced, pruned_through=self.pruned_through, merged_through=self.merged_through)
        return arrays, meta

    def load_algorithm_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        super().load_algorithm_state({k: v for k, v in arrays.items() if not k.startswith(_STACK)}, meta)
        self.stacks = {}
        for name, value in arrays.items():
            if name.startswith(_STACK) and name.endswith(".lora_A"):
                server_round, key = name[len(_STACK) : -len(".lora_A")].split("/", 1)
                self.stacks.setdefault(int(server_round), {})[key] = (value, arrays[name[: -len("A")] + "B"])
        self.synced = {cid: dict(layers) for cid, layers in meta.get("synced", {}).items()}
        self.pruned_through = int(meta.get("pruned_through", 0))
        self.merged_through = int(meta.get("merged_through", 0))

    def summary_fields(self) -> dict[str, Any]:
        last = self.stacks.get(self.merged_through, {})
        return {"flora_stack_rank_last_round": max((ranks.rank_of(a) for a, _ in last.values()), default=None)}

    def _catch_up(self, client: ClientInfo, layer: int, modules: list[str]) -> tuple[list[list[int]], dict]:
        """The stacked factors of ``layer`` that ``client`` has not merged, and their ``[first, last, rank]`` blocks."""
        synced = self.synced.get(client.client_id, {}).get(str(layer), 0)
        keys = {m: f"{client.model}/{m}" for m in modules}
        if synced < self.pruned_through:
            # The per-round history no longer reaches back: one exact block of the whole merged update.
            if not modules or keys[modules[0]] + _MERGED not in self.state:
                return [], {}
            exact = {m: ranks.exact_factors(self.state[keys[m] + _MERGED]) for m in modules}
            rank = max(ranks.rank_of(a) for a, _ in exact.values())
            return [[1, self.merged_through, rank]], {m: ranks.zero_pad(a, b, rank) for m, (a, b) in exact.items()}
        rounds = [r for r in sorted(self.stacks) if r > synced and modules and keys[modules[0]] in self.stacks[r]]
        if not rounds:
            return [], {}
        blocks = [[r, r, ranks.rank_of(self.stacks[r][keys[modules[0]]][0])] for r in rounds]
        factors = {
            m: (
                np.concatenate([self.stacks[r][keys[m]][0] for r in rounds]),
                np.concatenate([self.stacks[r][keys[m]][1] for r in rounds], axis=1),
            )
            for m in modules
        }
        return blocks, factors

    def _prune_history(self) -> None:
        """Drop the stacks every client that has merged anything has already merged."""
        merged = [r for layers in self.synced.values() for r in layers.values() if r > 0]
        boundary = min(merged, default=0)
        for server_round in [r for r in self.stacks if r <= boundary]:
            del self.stacks[server_round]
        self.pruned_through = max(self.pruned_through, boundary)


def stacked_rank_row(server_round: int, groups: dict[str, list[Holder]], spectra: dict[str, np.ndarray]) -> dict:
    """The ``flora`` row of a round: the numerical rank of one module's stacked update ``B A``, beside the sum and
    the largest of its holders' ranks. The module is the one with the most holders (the first by name among
    them), so the rank can reach the sum over the most clients."""
    key = min(groups, key=lambda k: (-len(groups[k]), k))
    holder_ranks = [h.rank for h in groups[key]]
    return {
        "round": server_round,
        "phase": RANK_PHASE,
        "module": key,
        "stacked-rank": ranks.numerical_rank(spectra[key], STACKED_RANK_TOLERANCE),
        "rank-sum": sum(holder_ranks),
        "max-client-rank": max(holder_ranks),
    }
