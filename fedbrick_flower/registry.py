"""Algorithm registry: a name maps to its server half (a strategy) and its client half.

Entries are import paths, resolved on use, so a ClientApp process imports only its own algorithm's client
module (every Flower message starts a fresh process in deployment) and the Flower entry points never branch
on an algorithm's name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AlgorithmEntry:
    """Where one algorithm's two halves live (``module:attribute``)."""

    server: str
    client: str
    description: str
    mixes_ranks: bool = False
    """True when clients of different LoRA ranks can federate (the strategy mixes factors of different ranks)."""


_ALGORITHMS: dict[str, AlgorithmEntry] = {
    "fedavg": AlgorithmEntry(
        server="fedbrick_flower.strategies.fedavg:LayerwiseFedAvg",
        client="fedbrick_flower.clients.fedavg:FedAvgClient",
        description="layer-wise FedAvg over layer holders (FedIT); FedRA with resample_layers",
    ),
    "fedbrick": AlgorithmEntry(
        server="fedbrick_flower.strategies.fedbrick:FedBRICK",
        client="fedbrick_flower.clients.fedbrick:FedBrickClient",
        description="FedRA allocation + per-group BRICK surrogates for missing layers, distilled on the server",
    ),
    "hetlora": AlgorithmEntry(
        server="fedbrick_flower.strategies.hetlora:HetLoRA",
        client="fedbrick_flower.clients.hetlora:HetLoRAClient",
        description="mixed LoRA ranks: zero-pad, norm-weighted mean of factors, truncate; optional rank pruning",
        mixes_ranks=True,
    ),
    "flexlora": AlgorithmEntry(
        server="fedbrick_flower.strategies.flexlora:FlexLoRA",
        client="fedbrick_flower.clients.flexlora:FlexLoRAClient",
        description="mixed LoRA ranks: weighted mean of the products, truncated SVD at each client's rank",
        mixes_ranks=True,
    ),
    "flora": AlgorithmEntry(
        server="fedbrick_flower.strategies.flora:FLoRA",
        client="fedbrick_flower.clients.flora:FLoRAClient",
        description="mixed LoRA ranks: stacked factors (exact sum of products) merged into on-device base weights",
        mixes_ranks=True,
    ),
    "local": AlgorithmEntry(
        server="fedbrick_flower.strategies.local:LocalOnly",
        client="fedbrick_flower.clients.local:LocalClient",
        description="local training only, no aggregation",
    ),
}


def register(name: str, entry: AlgorithmEntry) -> None:
    """Add an algorithm (e.g. from a plug-in package); re-registering a name is an error."""
    if name in _ALGORITHMS:
        raise ValueError(f"algorithm {name!r} is already registered")
    _ALGORITHMS[name] = entry


def algorithm_names() -> list[str]:
    return sorted(_ALGORITHMS)


def _entry(name: str) -> AlgorithmEntry:
    try:
        return _ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"algorithm: {name!r} is not one of {algorithm_names()}") from None


def _resolve(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def server_class(name: str) -> type:
    """The strategy class of an algorithm."""
    return _resolve(_entry(name).server)


def client_class(name: str) -> type:
    """The client-half class of an algorithm."""
    return _resolve(_entry(name).client)
