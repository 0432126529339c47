"""HetLoRA: heterogeneous LoRA ranks by zero-padding, norm-weighted aggregation and truncation.

Cho et al., "Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation Models", EMNLP 2024,
https://arxiv.org/abs/2401.06432 (as implemented: ``docs/algorithms/hetlora.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.supercore import log

from ..adapters.naming import is_head
from ..client_info import ClientInfo
from ..records import LORA_RANK_KEY
from ..registry import HETLORA_ALPHA_KEY
from . import ranks
from .rank_methods import Holder, RankHeterogeneousLoRA, stored_factors
from .replies import ClientUpdate

SCALINGS = frozenset({"paper", "alpha"})


class HetLoRA(RankHeterogeneousLoRA):
    """Global LoRA factors at the largest rank; client k trains their leading r_k components.

    Server: every holder's factors, its scale s_k folded into A, are zero-padded to the largest rank R among the
    module's holders and averaged with weights proportional to the Frobenius norm of the holder's update
    ``dW_k = s_k B_k A_k`` (a client whose update is small weighs little). As in the paper (``dW_k = B_k A_k``)
    every client trains at scale s_k = 1 (its LoRA alpha equals its rank), so a small rank neither inflates its
    update nor its weight; ``scaling="alpha"`` keeps the shared alpha, s_k = alpha / r_k. Components beyond R
    that nobody held this round keep their value. Client k receives the first r_k rows of A (divided by its own
    scale) and the first r_k columns of B. With ``rank_pruning`` the client regularises its last components
    and, once their share of its update falls under ``prune_threshold``, lowers its rank to
    floor(``prune_gamma`` r_k) and reports it; the server uses the new rank from the next round on.

    Known weakness (the paper's and ours): the mean of the factors is not the mean of the products.

    Parameters
    ----------
    rank_pruning : bool (default: True)
        Let clients lower their own rank (the paper's rank self-pruning).
    scaling : str (default: "paper")
        Each client's LoRA scale: ``"paper"`` s_k = 1 (alpha_k = r_k, the paper's ``dW_k = B_k A_k``), or
        ``"alpha"`` s_k = alpha / r_k with the shared ``alpha``.
    prune_gamma : float (default: 0.5)
        A pruned client keeps floor(gamma r_k) components (at least one).
    prune_threshold : float (default: 0.05)
        Prune when the last components carry less than this share of the update's energy.
    prune_weight : float (default: 0.001)
        Weight of the regulariser ``||A_tail||_F ||B_tail||_F`` summed over modules.
    **kwargs
        See :class:`RankHeterogeneousLoRA`.
    """

    def __init__(
        self,
        *,
        rank_pruning: bool = True,
        scaling: str = "paper",
        prune_gamma: float = 0.5,
        prune_threshold: float = 0.05,
        prune_weight: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 < prune_gamma < 1.0:
            raise ValueError(f"prune_gamma: must be in (0, 1), got {prune_gamma}")
        if scaling not in SCALINGS:
            raise ValueError(f"scaling: must be one of {sorted(SCALINGS)}, got {scaling!r}")
        self.scaling = scaling
        self.rank_pruning = rank_pruning
        self.prune_gamma = prune_gamma
        self.prune_threshold = prune_threshold
        self.prune_weight = prune_weight

    def payload(self, client: ClientInfo, server_round: int, phase: str) -> tuple[dict[str, np.ndarray], dict]:
        layers = self.layers_for(client, server_round, phase)
        rank = self.client_rank(client)
        names = client.schema(layers)
        arrays = self.head_payload(client, names)
        alpha = self.client_alpha(rank)
        scale = ranks.lora_scale(alpha, rank)
        for name in names:
            stored = None if is_head(name) else self.state.get(f"{client.model}/{name}")
            if stored is None:
                continue
            # Leading components; A back to the client's own scale. A global of lower rank than the client
            # sends what exists, and the client keeps its own initialisation for the rest.
            arrays[name] = stored[:rank] / scale if name.endswith("lora_A") else stored[:, :rank]
        instructions: dict[str, Any] = {"layers": layers, LORA_RANK_KEY: rank, HETLORA_ALPHA_KEY: alpha}
        if self.rank_pruning:
            instructions.update(
                {
                    "prune-gamma": self.prune_gamma,
                    "prune-threshold": self.prune_threshold,
                    "prune-weight": self.prune_weight,
                }
            )
        return arrays, instructions

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> None:
        super().aggregate(server_round, updates)
        for update in updates:
            self._accept_rank(update)

    def aggregate_modules(self, server_round: int, groups: dict[str, list[Holder]]) -> dict[str, np.ndarray]:
        spectra = {}
        for key, holders in groups.items():
            a, b = norm_weighted_mean(holders, self.client_alpha)
            previous_a, previous_b = self.state.get(f"{key}.lora_A"), self.state.get(f"{key}.lora_B")
            if previous_a is not None and ranks.rank_of(previous_a) > ranks.rank_of(a):
                rank = ranks.rank_of(a)
                a = np.concatenate([a, previous_a[rank:]])
                b = np.concatenate([b, previous_b[:, rank:]], axis=1)
            self.state[f"{key}.lora_A"], self.state[f"{key}.lora_B"] = a.astype(np.float32), b.astype(np.float32)
            spectra[key] = ranks.product_svd(a, b)[1]
        return spectra

    def global_factors(self, model: str) -> dict[str, ranks.Factors]:
        return stored_factors(self.state, model)

    def client_alpha(self, rank: int) -> float:
        """The LoRA alpha a client of ``rank`` trains with: its rank (scale 1, the paper's), or the shared one."""
        return float(rank) if self.scaling == "paper" else self.alpha

    def personalized_adapters(self, client: ClientInfo) -> dict[str, np.ndarray]:
        """The client's payload with A at the shared alpha's scale, the one its saved adapter declares."""
        arrays = super().personalized_adapters(client)
        rank = self.client_rank(client)
        ratio = ranks.lora_scale(self.client_alpha(rank), rank) / ranks.lora_scale(self.alpha, rank)
        return {name: value * ratio if name.endswith("lora_A") else value for name, value in arrays.items()}

    def describe(self) -> dict[str, Any]:
        settings = super().describe()
        settings.update(rank_pruning=self.rank_pruning, scaling=self.scaling)
        if self.rank_pruning:
            settings.update(prune_gamma=self.prune_gamma, prune_threshold=self.prune_threshold)
        return settings

    def summary_fields(self) -> dict[str, Any]:
        return {"final_ranks": {cid: self.client_rank(info) for cid, info in sorted(self.clients.items())}}

    def _accept_rank(self, update: ClientUpdate) -> None:
        """Adopt a rank the client reports after self-pruning (used from the next round on)."""
        client = update.client
        current = self.client_rank(client)
        reported = update.metrics.get(LORA_RANK_KEY)
        if reported is None or int(reported) == current:
            return
        if not (self.rank_pruning and float(reported).is_integer() and 1 <= int(reported) < current):
            log(WARNING, "client %s reported rank %s (current %d); ignored", client.client_id, reported, current)
            return
        self.ranks[client.client_id] = int(reported)
        log(INFO, "client %s pruned its LoRA rank %d -> %d", client.client_id, current, int(reported))


def norm_weighted_mean(holders: list[Holder], alpha_of: Callable[[int], float]) -> ranks.Factors:
    """HetLoRA's aggregate of one module: zero-pad scale-one factors to the largest rank, weight by ``||dW_k||_F``.

    ``alpha_of`` gives the LoRA alpha a holder of a given rank trained with. Falls back to equal weights when
    every update is zero (nothing distinguishes the holders then).
    """
    rank = max(h.rank for h in holders)
    folded = [ranks.scale_one(h.a, h.b, alpha_of(h.rank)) for h in holders]
    weights = np.array([ranks.product_norm(a, b) for a, b in folded])
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(holders), 1.0 / len(holders))
    padded = [ranks.zero_pad(a, b, rank) for a, b in folded]
    a = sum(w * pa for w, (pa, _) in zip(weights, padded, strict=True))
    b = sum(w * pb for w, (_, pb) in zip(weights, padded, strict=True))
    return a, b
