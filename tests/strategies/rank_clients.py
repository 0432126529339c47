"""Shared test helpers for the rank-heterogeneous strategies: clients of a given rank and their updates."""

from __future__ import annotations

import numpy as np

from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.strategies.replies import ClientUpdate

D_IN, D_OUT = 4, 5
ALPHA = 8.0


def rank_client(client_id: str, rank: int, layers: list[int] | None = None, examples: int = 10) -> ClientInfo:
    """A client of a 2-layer model with one adapted module ``q`` (5 x 4) at LoRA rank ``rank``."""
    return ClientInfo(
        client_id=client_id,
        model="m",
        task="t",
        group="t",
        model_type="bert",
        num_layers=2,
        budget=len(layers) if layers is not None else 2,
        fixed_layers=layers,
        layer_schema={"q.lora_A": [rank, D_IN], "q.lora_B": [D_OUT, rank]},
        head_schema={"head.weight": [3, D_IN], "head.bias": [3]},
        num_train_examples=examples,
    )


def factors(rank: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(A, B)`` of one module at ``rank``."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rank, D_IN)).astype(np.float32), rng.normal(size=(D_OUT, rank)).astype(np.float32)


def update(
    client: ClientInfo, layer_factors: dict[int, tuple[np.ndarray, np.ndarray]], examples: int, head: float = 0.0
) -> ClientUpdate:
    """A validated-looking training reply holding ``layer_factors`` per layer and a constant head."""
    arrays = {"head.weight": np.full((3, D_IN), head, np.float32), "head.bias": np.full(3, head, np.float32)}
    for layer, (a, b) in layer_factors.items():
        arrays[f"layers.{layer}.q.lora_A"], arrays[f"layers.{layer}.q.lora_B"] = a, b
    return ClientUpdate(client, arrays, examples, {"num-examples": float(examples)})


def prepared(strategy_class: type, clients: list[ClientInfo], **kwargs):
    """A strategy with ``clients`` registered and round-1 layers allocated."""
    strategy = strategy_class(seed=0, alpha=ALPHA, **kwargs)
    strategy.clients = {c.client_id: c for c in clients}
    for client in clients:
        strategy.layers_for(client, 1, "train")
    return strategy


def scaled_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(alpha / r) B A`` in float64."""
    return ALPHA / a.shape[0] * (b.astype(np.float64) @ a.astype(np.float64))
