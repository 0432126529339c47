"""FLoRA client half: merge the stacked global update into the base weights, then train a fresh LoRA.

The merged updates persist ON THE DEVICE, in the client state (``flora-merged``: one dense d_out x d_in delta
per adapted module of the held layers, plus the last round merged per layer), because a device process starts
afresh for every message. Each message rebuilds the network from the pretrained base, adds the merged deltas
to the frozen base weights, and attaches a fresh LoRA at the client's own rank (B = 0, so it starts at the
merged model) whose A is drawn anew for every client and round, from (run seed, client, round): with A seeded
alike everywhere, a rank-2 client's A would be the first rows of a rank-16 client's and each round's stack would
lie in one row space of the largest rank instead of growing toward the sum of the ranks. Training messages
commit the newly received stacks to the state; evaluation messages apply them to a copy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..adapters.lora import lora_modules, reset_lora
from ..adapters.naming import layer_of
from ..models import SequenceClassifier, model_family
from ..registry import FLORA_SEGMENTS_KEY
from .rank_methods import RankClient, load_leading_components

MERGED_STATE = "flora-merged"
ROUNDS_STATE = "flora-merged-rounds"


class FLoRAClient(RankClient):
    """Merges each round's stacked global update into its base weights and trains a fresh LoRA at its rank."""

    def build_model(self, layers: list[int], config: dict[str, Any]) -> SequenceClassifier:
        return self._build_merged(layers, config, self.state.arrays(MERGED_STATE))

    def receive(self, model: SequenceClassifier, arrays: dict[str, np.ndarray]) -> None:
        # The stacked factors went into the base weights already; only the averaged head is loaded as such.
        load_leading_components(model, {name: value for name, value in arrays.items() if layer_of(name) is None})

    def train(self, arrays: dict[str, np.ndarray], config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        segments = config.get(FLORA_SEGMENTS_KEY, {})
        merged, rounds = merge_segments(
            self.state.arrays(MERGED_STATE), self.state.get(ROUNDS_STATE, {}), arrays, segments
        )
        self.state.set_arrays(MERGED_STATE, merged)
        self.state.set(ROUNDS_STATE, rounds)
        return super().train(arrays, config)

    def evaluate(self, arrays: dict[str, np.ndarray], config: dict[str, Any]) -> dict[str, float]:
        segments = config.get(FLORA_SEGMENTS_KEY, {})
        merged, _ = merge_segments(self.state.arrays(MERGED_STATE), self.state.get(ROUNDS_STATE, {}), arrays, segments)
        model = self._build_merged(list(config["layers"]), config, merged)
        self.receive(model, arrays)
        return self.score(model)

    def _build_merged(
        self, layers: list[int], config: dict[str, Any], merged: Mapping[str, np.ndarray]
    ) -> SequenceClassifier:
        model = super().build_model(layers, config)
        add_to_base_weights(model, merged)
        reset_lora(model.backbone, model_family(model.backbone), self.round_seed(config, "lora-a"))
        return model


def merge_segments(
    merged: dict[str, np.ndarray],
    rounds: Mapping[str, int],
    arrays: Mapping[str, np.ndarray],
    segments: Mapping[str, list[list[int]]],
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Fold the stacked blocks not merged yet into the per-module deltas.

    Parameters
    ----------
    merged : dict[str, np.ndarray]
        The deltas merged so far, per module (``layers.g.module``).
    rounds : Mapping[str, int]
        The last round merged, per layer.
    arrays : Mapping[str, np.ndarray]
        The payload: stacked scale-one factors per module (``B A`` is the update), blocks along the rank axis.
    segments : Mapping[str, list[list[int]]]
        Per layer, the ``[first round, last round, rank]`` of each block, in order.

    Returns
    -------
    tuple[dict[str, np.ndarray], dict[str, int]]
        The new deltas and rounds. A block already merged is skipped (a resent payload after a lost reply); a
        block from round 1 replaces what the layer had (the server's exact cumulative update); any other block
        must follow the last merged round.

    Raises
    ------
    ValueError
        If a block would leave a gap or overlap part of what was merged.
    """
    merged, rounds = dict(merged), dict(rounds)
    for layer, blocks in segments.items():
        modules = sorted(n[: -len(".lora_A")] for n in arrays if n.endswith(".lora_A") and layer_of(n) == int(layer))
        offset = 0
        for first, last, rank in blocks:
            rows, offset = slice(offset, offset + rank), offset + rank
            done = rounds.get(layer, 0)
            if last <= done:
                continue
            if first != 1 and first != done + 1:
                raise ValueError(f"layer {layer}: received rounds {first}..{last} but merged only up to round {done}")
            for module in modules:
                delta = arrays[f"{module}.lora_B"][:, rows].astype(np.float64) @ arrays[f"{module}.lora_A"][rows]
                base = 0.0 if first == 1 else merged.get(module, 0.0)
                merged[module] = (base + delta).astype(np.float32)
            rounds[layer] = last
    return merged, rounds


def add_to_base_weights(model: SequenceClassifier, deltas: Mapping[str, np.ndarray]) -> None:
    """Add each module's merged delta to the frozen base weight under its LoRA (held layers only)."""
    with torch.no_grad():
        for (layer, module_path), module in lora_modules(model.backbone, model_family(model.backbone)).items():
            delta = deltas.get(f"layers.{layer}.{module_path}")
            if delta is None:
                continue
            weight = module.get_base_layer().weight
            value = torch.as_tensor(delta)
            if getattr(module, "fan_in_fan_out", False):  # GPT-2's Conv1D stores the weight transposed
                value = value.T
            weight += value.to(dtype=weight.dtype, device=weight.device)
