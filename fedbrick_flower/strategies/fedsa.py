"""FedSA-LoRA: the LoRA A matrices are shared and averaged, the B matrices and the task head stay on the device.

Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated Learning", ICLR 2025,
https://arxiv.org/abs/2410.01463 (as implemented: ``docs/algorithms/fedsa.md``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..adapters.naming import parse_layer_tensor_name
from ..client_info import ClientInfo
from .fedavg import LayerwiseFedAvg

SHARED_PARAM = "lora_A"  # the one factor that travels; the client half keeps everything else


def is_shared(name: str) -> bool:
    """True for a LoRA ``A`` factor of some layer: the only tensors FedSA-LoRA sends and averages."""
    parsed = parse_layer_tensor_name(name)
    return parsed is not None and parsed[2] == SHARED_PARAM


class FedSALoRA(LayerwiseFedAvg):
    """Selective aggregation: a layer-wise, example-weighted mean of the A factors over the clients that hold
    each layer (the FedAvg of :class:`LayerwiseFedAvg`, restricted to A); B and the head are personal and never
    reach the server, so there is no global model to evaluate.

    Parameters
    ----------
    **kwargs
        See :class:`LayerwiseFedAvg`.
    """

    def payload(self, client: ClientInfo, server_round: int, phase: str) -> tuple[dict[str, np.ndarray], dict]:
        arrays, config = super().payload(client, server_round, phase)
        return {name: value for name, value in arrays.items() if is_shared(name)}, config

    def expected_update(self, client: ClientInfo, server_round: int) -> dict[str, tuple[int, ...]]:
        return {name: shape for name, shape in super().expected_update(client, server_round).items() if is_shared(name)}

    def global_adapters(self) -> dict[tuple[str, str], dict[str, np.ndarray]]:
        return {}  # every client's B and head stay on its device: the server holds no complete model

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "shared": "LoRA A (B and the head stay on the device)"}
