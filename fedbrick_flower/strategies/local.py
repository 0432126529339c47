"""Local training only: every client keeps its own adapters and nothing is aggregated (a lower baseline)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..client_info import ClientInfo
from .base import HeterogeneousStrategy
from .replies import ClientUpdate


class LocalOnly(HeterogeneousStrategy):
    """No aggregation. The server only stores each client's adapters, so a client that restarts gets them
    back and the run directory holds every personalized adapter.

    Parameters
    ----------
    **kwargs
        See :class:`HeterogeneousStrategy`.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.personal: dict[str, dict[str, np.ndarray]] = {}

    def payload(self, client: ClientInfo, server_round: int, phase: str) -> tuple[dict[str, np.ndarray], dict]:
        layers = self.layers_for(client, server_round, phase)
        names = client.schema(layers)
        own = self.personal.get(client.client_id, {})
        return {name: own[name] for name in names if name in own}, {"layers": layers}

    def expected_update(self, client: ClientInfo, server_round: int) -> dict[str, tuple[int, ...]]:
        return client.schema(self.round_layers[client.client_id])

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> None:
        for update in updates:
            self.personal.setdefault(update.client.client_id, {}).update(update.arrays)

    def algorithm_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {f"{cid}/{name}": value for cid, own in self.personal.items() for name, value in own.items()}
        return arrays, {}

    def load_algorithm_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.personal = {}
        for key, value in arrays.items():
            cid, name = key.split("/", 1)
            self.personal.setdefault(cid, {})[name] = value
