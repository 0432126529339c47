"""Pure aggregation helpers shared by the strategies (no Flower, no torch): easy to test on their own."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..scenario.schema import AGGREGATIONS, NORM_SCOPES


class ShapeMismatch(ValueError):
    """Contributions disagree on a tensor's shape (e.g. two LoRA ranks); the message names both sources."""


Contribution = tuple[str, Mapping[str, np.ndarray], float]
"""``(source, tensors, weight)``: the source names the contribution in errors and logs (a client id), the weight
is e.g. the client's number of training examples n_k."""

MIN_UPDATES_FOR_MEDIAN = 3
"""Fewest updates holding a layer (or model) before the round's median norm is trusted. With one update the median
is the update itself; with two it is their mean, which a 1000x update drags to 500x, so a poisoned update is
never more than 2x "the median". From three on, one poisoned update cannot move the median past the clean ones."""


def layerwise_average(contributions: Iterable[Contribution]) -> dict[str, np.ndarray]:
    """Weighted mean of every tensor over the contributions that hold it.

    A 2-layer client contributes only to its two layers, so each name is averaged over its own holders with
    their weights renormalised (FedRA / FedBRICK eq. 1). Names that no contribution holds are absent from the
    result, which lets the caller keep their previous value.

    Parameters
    ----------
    contributions : Iterable[Contribution]
        ``(source, tensors, weight)`` triples; a weight <= 0 leaves the contribution out.

    Raises
    ------
    ShapeMismatch
        If two contributions hold the same name with different shapes. NumPy would broadcast a rank-1 factor
        against a rank-8 one and silently corrupt the mean, so this names both sources and shapes instead.
    """
    result = {}
    for name, held in holders(contributions).items():
        total = sum(array * weight for array, weight in held)
        result[name] = (total / sum(weight for _, weight in held)).astype(np.float32)
    return result


def layerwise_median(contributions: Iterable[Contribution]) -> dict[str, np.ndarray]:
    """Coordinate-wise median of every tensor over its holders: the layer-wise counterpart of Flower's FedMedian.

    Unweighted, as in FedMedian (a weight would let one client that claims many examples move the median); a
    weight <= 0 still leaves the contribution out. Raises :class:`ShapeMismatch` as :func:`layerwise_average`.
    """
    return {
        name: np.median(np.stack([array for array, _ in held]), axis=0).astype(np.float32)
        for name, held in holders(contributions).items()
    }


def layerwise_trimmed_mean(contributions: Iterable[Contribution], trim_fraction: float) -> dict[str, np.ndarray]:
    """Coordinate-wise trimmed mean over each tensor's holders: the layer-wise counterpart of FedTrimmedAvg.

    Per coordinate, the ``int(trim_fraction * n)`` largest and as many smallest of the n holders' values are cut
    and the rest averaged, unweighted (Flower's ``_trim_mean``). A layer with fewer than ``1 / trim_fraction``
    holders has nothing cut: its plain mean. Raises :class:`ShapeMismatch` as :func:`layerwise_average`.
    """
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction: must be in [0, 0.5), got {trim_fraction}")
    result = {}
    for name, held in holders(contributions).items():
        ordered = np.sort(np.stack([array for array, _ in held]), axis=0)
        cut = int(trim_fraction * len(held))
        result[name] = ordered[cut : len(held) - cut].mean(axis=0).astype(np.float32)
    return result


def holders(contributions: Iterable[Contribution]) -> dict[str, list[tuple[np.ndarray, float]]]:
    """Per tensor name, the ``(value, weight)`` of every contribution that holds it with a positive weight."""
    held: dict[str, list[tuple[np.ndarray, float]]] = {}
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
            held.setdefault(name, []).append((array, weight))
    return held


_INDEXED = re.compile(r"^(.*?[A-Za-z_]+\.\d+)\.")


def norm_group(name: str, scope: str) -> str:
    """The group whose norm a (model-scoped) tensor name counts towards.

    ``layer``: one group per indexed block (``m/layers.3``, ``m/bricks.3``) and per head (``m/t/head``);
    ``update``: one group per model (``m``), i.e. the client's whole update on that model; ``rms``: one group for
    every update of the round, whatever its model (see :func:`group_norms`).
    """
    if scope == "rms":
        return RMS_GROUP
    if scope == "update":
        return name.split("/", 1)[0]
    match = _INDEXED.match(name)
    return match.group(1) if match else name.rpartition(".")[0] or name


RMS_GROUP = "update-rms"


def group_norms(tensors: Mapping[str, np.ndarray], scope: str) -> dict[str, float]:
    """Frobenius norm of each :func:`norm_group` of ``tensors`` (all its tensors together).

    Under ``rms`` the one group's value is the update's root-mean-square entry (its norm over the square root of
    its size): free of depth, LoRA rank (a rank-r factor's norm grows with sqrt(r), its size with r) and model,
    so every update of a round is compared with every other, like with like.
    """
    squares: dict[str, float] = {}
    for name, value in tensors.items():
        group = norm_group(name, scope)
        squares[group] = squares.get(group, 0.0) + float(np.sum(np.square(value, dtype=np.float64)))
    if scope == "rms":
        size = sum(int(np.size(value)) for value in tensors.values())
        return {group: math.sqrt(total / max(size, 1)) for group, total in squares.items()}
    return {group: math.sqrt(total) for group, total in squares.items()}


def median_norms(norms: Mapping[str, Mapping[str, float]]) -> dict[str, tuple[float, int]]:
    """Per group, the median of the norms of the updates that hold it, and how many do."""
    values: dict[str, list[float]] = {}
    for groups in norms.values():
        for group, norm in groups.items():
            values.setdefault(group, []).append(norm)
    return {group: (float(np.median(held)), len(held)) for group, held in values.items()}


@dataclass(frozen=True)
class Robustness:
    """Defences against finite but poisoned updates (a client scaling or flipping its update).

    Parameters
    ----------
    aggregation : str (default: "mean")
        How each tensor is combined over its holders: ``mean`` (weighted by n_k), ``median`` (coordinate-wise)
        or ``trimmed-mean`` (coordinate-wise, ``trim_fraction`` cut at each end).
    trim_fraction : float (default: 0.2)
        Share of the holders cut at each end per coordinate by ``trimmed-mean``.
    outlier_norm_multiple : float, optional
        Reject an update whose norm in some group exceeds this multiple of the round's median norm of that group
        (median over the round's validated updates holding it, the suspect included). The check applies to a
        group only where at least :data:`MIN_UPDATES_FOR_MEDIAN` updates hold it. None: no check.
    norm_scope : str (default: "layer")
        Groups for the outlier check and the clipping: ``layer`` (each layer, BRICK and head of each model),
        ``update`` (a client's whole update on its model; partial-depth clients then have smaller norms) or
        ``rms`` (a client's whole update, its root-mean-square entry compared across every update of the round;
        the scenario default, see :func:`group_norms`: the bounds then apply to that value).
    clip_norm : float, optional
        Scale every group whose norm exceeds this bound down to it.
    clip_norm_multiple : float, optional
        Scale every group whose norm exceeds this multiple of the round's median norm (where the median applies,
        as above) down to it. With ``clip_norm`` too, the smaller bound wins.
    """

    aggregation: str = "mean"
    trim_fraction: float = 0.2
    outlier_norm_multiple: float | None = None
    norm_scope: str = "layer"
    clip_norm: float | None = None
    clip_norm_multiple: float | None = None

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation: {self.aggregation!r} is not one of {list(AGGREGATIONS)}")
        if self.norm_scope not in NORM_SCOPES:
            raise ValueError(f"norm_scope: {self.norm_scope!r} is not one of {list(NORM_SCOPES)}")
        if not 0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim_fraction: must be in [0, 0.5), got {self.trim_fraction}")
        if self.outlier_norm_multiple is not None and self.outlier_norm_multiple <= 1:
            raise ValueError(f"outlier_norm_multiple: must be > 1, got {self.outlier_norm_multiple}")
        for key in ("clip_norm", "clip_norm_multiple"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ValueError(f"{key}: must be > 0, got {getattr(self, key)}")

    @property
    def screens(self) -> bool:
        """Whether updates are checked or clipped before aggregation."""
        return any(v is not None for v in (self.outlier_norm_multiple, self.clip_norm, self.clip_norm_multiple))

    def combine(self, contributions: Iterable[Contribution]) -> dict[str, np.ndarray]:
        """Combine each tensor over its holders by the configured ``aggregation``."""
        if self.aggregation == "median":
            return layerwise_median(contributions)
        if self.aggregation == "trimmed-mean":
            return layerwise_trimmed_mean(contributions, self.trim_fraction)
        return layerwise_average(contributions)

    def screen(
        self, updates: Mapping[str, Mapping[str, np.ndarray]]
    ) -> tuple[dict[str, str], dict[str, dict[str, np.ndarray]], dict[str, float]]:
        """Check and clip one round's updates (source -> model-scoped tensors).

        Returns the rejected sources with their reasons, the kept updates (clipped where a bound applies) and,
        per clipped source, the smallest factor its groups were scaled by.
        """
        norms = {source: group_norms(tensors, self.norm_scope) for source, tensors in updates.items()}
        medians = median_norms(norms)
        rejected = {source: reason for source in norms if (reason := self._outlier(norms[source], medians)) is not None}
        kept, factors = {}, {}
        for source, tensors in updates.items():
            if source in rejected:
                continue
            scale = {g: min(1.0, bound / n) for g, n in norms[source].items() if (bound := self._bound(g, medians))}
            scale = {g: f for g, f in scale.items() if f < 1.0}
            kept[source] = {
                name: (value * scale[g]).astype(value.dtype) if (g := norm_group(name, self.norm_scope)) in scale
                else value
                for name, value in tensors.items()
            }  # fmt: skip
            if scale:
                factors[source] = min(scale.values())
        return rejected, kept, factors

    def _outlier(self, norms: Mapping[str, float], medians: Mapping[str, tuple[float, int]]) -> str | None:
        if self.outlier_norm_multiple is None:
            return None
        for group, norm in sorted(norms.items()):
            median, count = medians[group]
            if count >= MIN_UPDATES_FOR_MEDIAN and norm > self.outlier_norm_multiple * median:
                ratio = f"{norm / median:.1f}x" if median > 0 else "infinitely"
                what = "the update's RMS entry is" if self.norm_scope == "rms" else f"{group} has norm"
                return (
                    f"norm outlier: {what} {norm:.4g}, {ratio} the round's median {median:.4g} over "
                    f"{count} updates (limit {self.outlier_norm_multiple:g}x, server.outlier_norm_multiple)"
                )
        return None

    def _bound(self, group: str, medians: Mapping[str, tuple[float, int]]) -> float | None:
        bounds = [self.clip_norm] if self.clip_norm is not None else []
        median, count = medians[group]
        if self.clip_norm_multiple is not None and count >= MIN_UPDATES_FOR_MEDIAN:
            bounds.append(self.clip_norm_multiple * median)
        return min(bounds) if bounds else None


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
