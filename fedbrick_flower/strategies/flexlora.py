"""FlexLoRA: average the full LoRA products, then give each client the truncated SVD at its own rank.

Bai et al., "Federated Fine-tuning of Large Language Models under Heterogeneous Tasks and Client Resources",
NeurIPS 2024, https://arxiv.org/abs/2402.11505 (as implemented: ``docs/algorithms/flexlora.md``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..client_info import ClientInfo
from ..records import LORA_RANK_KEY
from . import ranks
from .rank_methods import Holder, RankHeterogeneousLoRA

TRUNCATION_PHASE = "flexlora-truncation"  # a metric phase, declared with its row keys in the registry entry
_DELTA = ".delta"


class FlexLoRA(RankHeterogeneousLoRA):
    """The weighted mean of the products ``dW_k = (alpha / r_k) B_k A_k``, truncated by SVD at each rank.

    Server: per adapted module, ``dW = sum_k p_k dW_k`` over the clients that held it (p_k proportional to n_k;
    each client's own scale folded in, so its rank does not change its weight). The average is kept dense
    (d_out x d_in per module) and decomposed once per round; client k receives ``B_k = U_r sqrt(S_r)``,
    ``A_k = sqrt(S_r) V_r^T / s_k`` at r = r_k, so its own scale reproduces the truncation. The share of the
    spectrum a client's truncation discards is logged per client and round (phase ``flexlora-truncation``).
    The server-side global model is the average itself, exactly.

    Parameters
    ----------
    **kwargs
        See :class:`RankHeterogeneousLoRA`.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._decompositions: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # a cache of self.state

    def payload(self, client: ClientInfo, server_round: int, phase: str) -> tuple[dict[str, np.ndarray], dict]:
        layers = self.layers_for(client, server_round, phase)
        rank = self.client_rank(client)
        names = client.schema(layers)
        arrays = self.head_payload(client, names)
        for name in names:
            module = name[: -len(".lora_A")] if name.endswith(".lora_A") else None
            key = f"{client.model}/{module}"
            if module is None or key + _DELTA not in self.state:
                continue
            u, s, vt = self._decomposition(key)
            # A global of lower numerical rank than the client sends only its real components: zero ones would
            # never train again (both factors' gradients vanish); the client keeps its own init for the rest.
            a, b = ranks.svd_factors(u, s, vt, min(rank, ranks.numerical_rank(s)))
            a, b = ranks.from_scale_one(a, b, self.alpha, rank=rank)
            arrays[name], arrays[f"{module}.lora_B"] = a.astype(np.float32), b.astype(np.float32)
        return arrays, {"layers": layers, LORA_RANK_KEY: rank}

    def aggregate_modules(self, server_round: int, groups: dict[str, list[Holder]]) -> dict[str, np.ndarray]:
        spectra = {}
        for key, holders in groups.items():
            total = sum(h.num_examples for h in holders)
            weights = [h.num_examples / total for h in holders] if total > 0 else [1.0 / len(holders)] * len(holders)
            a, b = ranks.stack([ranks.scale_one(h.a, h.b, self.alpha) for h in holders], weights)
            self._decompositions[key] = ranks.product_svd(a, b)
            self.state[key + _DELTA] = (b @ a).astype(np.float32)
            spectra[key] = self._decompositions[key][1]
        self._log_truncation(server_round, groups, spectra)
        return spectra

    def global_factors(self, model: str) -> dict[str, ranks.Factors]:
        prefix = f"{model}/"
        factors = {}
        for key in self.state:
            if key.startswith(prefix) and key.endswith(_DELTA):
                u, s, vt = self._decomposition(key[: -len(_DELTA)])
                factors[key[len(prefix) : -len(_DELTA)]] = ranks.svd_factors(u, s, vt, ranks.numerical_rank(s))
        return factors

    def load_algorithm_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        super().load_algorithm_state(arrays, meta)
        self._decompositions = {}

    def _decomposition(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if key not in self._decompositions:
            self._decompositions[key] = ranks.svd(self.state[key + _DELTA])
        return self._decompositions[key]

    def _log_truncation(
        self, server_round: int, groups: dict[str, list[Holder]], spectra: dict[str, np.ndarray]
    ) -> None:
        """One row per client of the round: the share of its modules' spectrum cut by truncating at its rank."""
        energies: dict[str, list[float]] = {}
        for key, holders in groups.items():
            for holder in holders:
                tail, total = ranks.tail_energy(spectra[key], holder.rank)
                pooled = energies.setdefault(holder.client_id, [0.0, 0.0, holder.rank])
                pooled[0], pooled[1] = pooled[0] + tail, pooled[1] + total
        for client_id, (tail, total, rank) in sorted(energies.items()):
            self._log_rows.append(
                {
                    "round": server_round,
                    "phase": TRUNCATION_PHASE,
                    "client": client_id,
                    "rank": rank,
                    "discarded-energy": tail / total if total > 0 else 0.0,
                }
            )
