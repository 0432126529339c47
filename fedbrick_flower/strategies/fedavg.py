"""Layer-wise FedAvg over the clients that hold each layer: FedIT for equal clients, FedRA with resampling.

FedIT: Zhang et al., "Towards Building the Federated GPT: Federated Instruction Tuning", ICASSP 2024,
https://arxiv.org/abs/2305.05644. FedRA: Su et al., "FedRA: A Random Allocation Strategy for Federated Tuning
to Unleash the Power of Heterogeneous Clients", ECCV 2024, https://arxiv.org/abs/2311.11227.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..client_info import ClientInfo
from .base import HeterogeneousStrategy
from .replies import ClientUpdate
from .screening import scoped_name


class LayerwiseFedAvg(HeterogeneousStrategy):
    """Layer-wise FedAvg for partial-depth clients.

    Each layer's LoRA factors are averaged, weighted by training examples, over only the clients that held
    that layer this round; a layer that nobody held keeps its value. Heads are averaged per (model, task).
    With ``resample_layers=True`` each client's layers are redrawn every round within its budget: FedRA.

    Parameters
    ----------
    **kwargs
        See :class:`HeterogeneousStrategy`.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state: dict[str, np.ndarray] = {}

    def payload(self, client: ClientInfo, server_round: int, phase: str) -> tuple[dict[str, np.ndarray], dict]:
        layers = self.layers_for(client, server_round, phase)
        names = client.schema(layers)
        arrays = {name: self.state[key] for name in names if (key := scoped_name(client, name)) in self.state}
        return arrays, {"layers": layers}

    def expected_update(self, client: ClientInfo, server_round: int) -> dict[str, tuple[int, ...]]:
        return client.schema(self.round_layers[client.client_id])

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> None:
        contributions = [
            (
                u.client.client_id,
                {scoped_name(u.client, name): value for name, value in u.arrays.items()},
                float(u.num_examples),
            )
            for u in updates
        ]
        self.state.update(self.combine_layerwise(contributions))

    def aggregation_key(self, client: ClientInfo, name: str) -> str:
        return scoped_name(client, name)

    def aggregate_means(self, server_round: int, means: dict[str, np.ndarray], updates: list[ClientUpdate]) -> None:
        self.state.update(means)

    def layer_adapters(self, model: str) -> dict[str, np.ndarray]:
        """The global LoRA tensors of one model (every layer anyone has trained), under canonical names."""
        prefix = f"{model}/"
        return {
            key[len(prefix) :]: v for key, v in self.state.items() if key.startswith(prefix) and key.count("/") == 1
        }

    def global_adapters(self) -> dict[tuple[str, str], dict[str, np.ndarray]]:
        adapters = {}
        # A generative task's clients report no head: its global model is the model's shared LoRA alone.
        headed = {(info.model, info.task): bool(info.head_schema) for info in self.clients.values()}
        for (model, task), has_head in sorted(headed.items()):
            head_prefix = f"{model}/{task}/"
            head = {key[len(head_prefix) :]: v for key, v in self.state.items() if key.startswith(head_prefix)}
            layers = self.layer_adapters(model)
            if head if has_head else layers:
                adapters[(model, task)] = {**layers, **head}
        return adapters

    def algorithm_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return dict(self.state), {}

    def load_algorithm_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.state = dict(arrays)

    def describe(self) -> dict[str, Any]:
        return {"resample_layers (FedRA)": self.resample_layers}
