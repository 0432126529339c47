"""FedSA-LoRA client half: trains like FedAvg, sends only the A factors, and keeps B and the head in its state.

Guo et al., ICLR 2025, https://arxiv.org/abs/2410.01463 (as implemented: ``docs/algorithms/fedsa.md``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from ..adapters.lora import adapter_tensors
from ..adapters.naming import parse_layer_tensor_name
from ..models import model_family
from .base import ClientAlgorithm

PERSONAL_STATE = "fedsa-personal"  # B factors and head of every layer this client has trained, by canonical name
SHARED_PARAM = "lora_A"


class FedSAClient(ClientAlgorithm):
    """Local LoRA training whose B factors and head persist on the device (the state handle) between rounds.

    A layer the client does not hold this round keeps its B in the state until the client holds it again.
    """

    def receive(self, model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
        """The server's A factors, and this device's own B factors and head where it has trained them before."""
        held = adapter_tensors(model, model_family(model.backbone))
        personal = {name: value for name, value in self.state.arrays(PERSONAL_STATE).items() if name in held}
        super().receive(model, {**personal, **arrays})

    def update(self, model: nn.Module, config: dict[str, Any]) -> dict[str, Any]:
        """Keep B and the head in the state; return the A factors alone."""
        tensors = super().update(model, config)
        kept = {name: value for name, value in tensors.items() if not _is_shared(name)}
        self.state.set_arrays(PERSONAL_STATE, {**self.state.arrays(PERSONAL_STATE), **kept})
        return {name: value for name, value in tensors.items() if _is_shared(name)}


def _is_shared(name: str) -> bool:
    parsed = parse_layer_tensor_name(name)
    return parsed is not None and parsed[2] == SHARED_PARAM
