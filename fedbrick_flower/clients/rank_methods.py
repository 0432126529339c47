"""What the client halves of HetLoRA, FlexLoRA and FLoRA share: training at the server's rank, partial loads.

The server decides the rank a client trains at (its profile's rank, or a lower one it reported after pruning)
and sends it with every payload; the client builds its LoRA at that rank. A global adapter may carry fewer
components than the client's rank (a module nobody of that rank has trained yet): the client loads the leading
components it receives and keeps its own seeded initialisation for the rest, so no component starts at A = B = 0,
where neither factor would ever receive a gradient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..adapters.lora import adapter_tensors, load_adapter_tensors
from ..models import SequenceClassifier, model_family
from ..records import LORA_RANK_KEY
from .base import ClientAlgorithm


class RankClient(ClientAlgorithm):
    """Local LoRA training at the rank the server assigns (see :class:`ClientAlgorithm`)."""

    def rank(self, config: Mapping[str, Any]) -> int:
        """This round's LoRA rank: the server's, else the profile's."""
        return int(config.get(LORA_RANK_KEY, self.session.lora.rank))

    def build_model(self, layers: list[int], config: dict[str, Any]) -> SequenceClassifier:
        profile = dataclasses.replace(self.session.profile, rank=self.rank(config))
        return dataclasses.replace(self.session, profile=profile).build(layers)

    def receive(self, model: SequenceClassifier, arrays: dict[str, np.ndarray]) -> None:
        load_leading_components(model, arrays)


def load_leading_components(model: SequenceClassifier, arrays: Mapping[str, np.ndarray]) -> None:
    """Load canonical tensors; LoRA factors of a lower rank fill only the leading rows of A / columns of B.

    Raises
    ------
    KeyError
        For an unknown name, or a factor larger than the model's (as :func:`load_adapter_tensors` does).
    """
    family = model_family(model.backbone)
    targets = adapter_tensors(model, family)
    exact = {}
    with torch.no_grad():
        for name, value in arrays.items():
            target = targets.get(name)
            if target is None or tuple(value.shape) == tuple(target.shape) or not name.endswith(("lora_A", "lora_B")):
                exact[name] = value
                continue
            rank = value.shape[0] if name.endswith("lora_A") else value.shape[1]
            leading = (slice(0, rank), slice(None)) if name.endswith("lora_A") else (slice(None), slice(0, rank))
            if tuple(target[leading].shape) != tuple(value.shape):
                raise KeyError(
                    f"adapter tensor {name!r} has shape {tuple(value.shape)}, expected at most {tuple(target.shape)}"
                )
            target[leading] = torch.as_tensor(np.asarray(value)).to(dtype=target.dtype, device=target.device)
    load_adapter_tensors(model, family, exact)
