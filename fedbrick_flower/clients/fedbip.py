"""FedBip client half: train from the personalized set θ̄_i the server sends, upload the task vector τ_i.

Yang et al., "FedBip: Bi-level Personalization for Federated Foundation Models", AAAI-26,
https://arxiv.org/abs/2509.12697. Local training is plain supervised fine-tuning (the paper adds no loss term);
what differs from FedAvg's client is the upload: τ_i = θ_i − θ̄_i rather than θ_i. The server could subtract
θ̄_i itself, but the difference of two fp16 wire values loses the small update against the LoRA A factors.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..adapters.lora import adapter_tensors
from ..models import SequenceClassifier, model_family
from .base import ClientAlgorithm


class FedBipClient(ClientAlgorithm):
    """Local LoRA training from θ̄_i; the update is the task vector τ_i (see :class:`ClientAlgorithm`)."""

    def receive(self, model: SequenceClassifier, arrays: dict[str, np.ndarray]) -> None:
        super().receive(model, arrays)
        # The starting point lives for this one message only (the object is rebuilt for every message).
        start = adapter_tensors(model, model_family(model.backbone))
        self._start = {name: tensor.detach().clone() for name, tensor in start.items()}

    def update(self, model: SequenceClassifier, config: dict[str, Any]) -> dict[str, Any]:
        trained = adapter_tensors(model, model_family(model.backbone))
        return {name: tensor.detach() - self._start[name] for name, tensor in trained.items()}
