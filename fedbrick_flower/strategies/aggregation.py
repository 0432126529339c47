"""Pure aggregation helpers shared by the strategies (no Flower, no torch): easy to test on their own."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


class ShapeMismatch(ValueError):
    """Contributions disagree on a tensor's shape (e.g. two LoRA ranks); the message names both sources."""


def layerwise_average(
    contributions: Iterable[tuple[str, Mapping[str, np.ndarray], float]],
) -> dict[str, np.ndarray]:
    """Weighted mean of every tensor over the contributions that hold it.

    A 2-layer client contributes only to its two layers, so each name is averaged over its own holders with
    their weights renormalised (FedRA / FedBRICK eq. 1). Names that no contribution holds are absent from the
    result, which lets the caller keep their previous value.

    Parameters
    ----------
    contributions : Iterable[tuple[str, Mapping[str, np.ndarray], float]]
        ``(source, tensors, weight)`` triples: the source names the contribution in errors (a client id), the
        weight is e.g. the client's number of training examples n_k.

    Raises
    ------
    ShapeMismatch
        If two contributions hold the same name with different shapes. NumPy would broadcast a rank-1 factor
        against a rank-8 one and silently corrupt the mean, so this names both sources and shapes instead.
    """
    sums: dict[str, np.ndarray] = {}
    totals: dict[str, float] = {}
    first_source: dict[str, tuple[str, tuple[int, ...]]] = {}
    for source, tensors, weight in contributions:
        if weight <= 0:
            continue
        for name, value in tensors.items():
            array = np.asarray(value, dtype=np.float64)
            if name in first_source and first_source[name][1] != array.shape:
                other, shape = first_source[name]
                raise ShapeMismatch(
                    f"{name}: {other} sent shape {shape} but {source} sent {array.shape}; "
                    "these clients cannot be averaged together (different ranks or widths)"
                )
            first_source.setdefault(name, (source, array.shape))
            contribution = array * weight
            sums[name] = sums[name] + contribution if name in sums else contribution
            totals[name] = totals.get(name, 0.0) + weight
    return {name: (total / totals[name]).astype(np.float32) for name, total in sums.items()}


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float | None:
    """Mean of ``values`` weighted by ``weights``; None when there is nothing to average."""
    total = float(sum(weights))
    if not values or total <= 0:
        return None
    return float(sum(v * w for v, w in zip(values, weights, strict=False)) / total)


def sample_clients(client_ids: Sequence[str], fraction: float, minimum: int, rng: random.Random) -> list[str]:
    """Sample ``max(minimum, round(fraction * n))`` clients (at most n), in a stable order."""
    count = min(len(client_ids), max(minimum, int(round(fraction * len(client_ids)))))
    return sorted(rng.sample(sorted(client_ids), count))


def random_layer_subset(num_layers: int, budget: int, rng: random.Random) -> tuple[int, ...]:
    """FedRA allocation: a uniform ``budget``-subset of ``range(num_layers)``, order preserved."""
    if not 0 < budget <= num_layers:
        raise ValueError(f"a layer budget of {budget} does not fit a model of {num_layers} layers")
    return tuple(sorted(rng.sample(range(num_layers), budget)))
