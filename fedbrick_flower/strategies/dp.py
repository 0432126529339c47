"""Client-level differential privacy on adapter updates (DP-FedAvg, McMahan et al., ICLR 2018): pure helpers.

One implementation for both modes (derivation and guarantees: ``docs/privacy.md``):

- :func:`clip_update`: a client's update is the delta from the tensors it started from (those it was sent, and
  the seeded start for any it was not); its L2 norm over ALL its tensors is clipped to ``clip_norm`` with
  Flower's ``compute_clip_model_update``.
- :func:`noised_layerwise_mean` (central): the unweighted mean of every tensor over its holders, with Gaussian
  noise of standard deviation ``noise_multiplier * clip_norm / n`` for a tensor of ``n`` holders (Flower's
  ``compute_stdv`` per tensor rather than per model: the layer-wise mean divides each layer's sum by its own
  holder count, while adding or removing one client changes the vector of all layers' sums by at most
  ``clip_norm``).
- :func:`noised_update` (local): clip and add noise of standard deviation ``noise_multiplier * clip_norm`` on
  the device, so the server never sees a noiseless update.
- :func:`epsilon`: Opacus's RDP accountant, ε at δ after some rounds of the Gaussian mechanism.

NumPy and Flower's DP helpers only (the accountant imports Opacus when asked): no torch at import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.supercore.differential_privacy import (
    add_gaussian_noise_inplace,
    compute_clip_model_update,
    compute_stdv,
    get_norm,
)

from .aggregation import Contribution, holders


@dataclass(frozen=True)
class Clipped:
    """A clipped update: its tensors (reference plus the clipped delta) and the delta's norm before clipping."""

    arrays: dict[str, np.ndarray]
    norm: float

    def factor(self, clip_norm: float) -> float:
        """What the delta was scaled by (1.0: it was within the bound)."""
        return min(1.0, clip_norm / self.norm) if self.norm > 0 else 1.0


def clip_update(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], clip_norm: float) -> Clipped:
    """Clip the delta of ``arrays`` from ``reference`` to L2 norm ``clip_norm``, over all tensors together.

    Parameters
    ----------
    arrays : Mapping[str, np.ndarray]
        The tensors a client trained.
    reference : Mapping[str, np.ndarray]
        What it started from, by name; a name absent here counts from zero (its whole value is the update).
    clip_norm : float
        The bound C on the update's L2 norm.
    """
    names = list(arrays)
    trained = [np.array(arrays[name], dtype=np.float64) for name in names]
    start = [_start(reference, name, value) for name, value in zip(names, trained, strict=True)]
    norm = get_norm([t - s for t, s in zip(trained, start, strict=True)])
    compute_clip_model_update(trained, start, clip_norm)  # trained[i] <- start[i] + clipped delta[i]
    clipped = {name: value.astype(np.asarray(arrays[name]).dtype) for name, value in zip(names, trained, strict=True)}
    return Clipped(clipped, float(norm))


def noised_update(
    arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], noise_multiplier: float, clip_norm: float
) -> Clipped:
    """Local DP: :func:`clip_update`, then Gaussian noise of std ``noise_multiplier * clip_norm`` on every entry."""
    clipped = clip_update(arrays, reference, clip_norm)
    names = list(clipped.arrays)
    values = [np.array(clipped.arrays[name], dtype=np.float64) for name in names]
    add_gaussian_noise_inplace(values, compute_stdv(noise_multiplier, clip_norm, 1))
    noised = {name: value.astype(clipped.arrays[name].dtype) for name, value in zip(names, values, strict=True)}
    return Clipped(noised, clipped.norm)


def noised_layerwise_mean(
    contributions: Iterable[Contribution], noise_multiplier: float, clip_norm: float
) -> dict[str, np.ndarray]:
    """Central DP: every tensor's unweighted mean over its holders plus N(0, (σ C / n)^2) per entry.

    The contributions are clipped updates of clients that started each tensor from the same value (the layer-wise
    FedAvg family), so the mean of their values is that start plus the mean of their clipped deltas, and the
    noise lands on the latter. Weights are ignored (a contribution of weight <= 0 is still left out): an n_k
    weight would let a client's claimed example count scale its influence past ``clip_norm``.
    """
    result = {}
    for name, held in holders(contributions).items():
        mean = [np.mean(np.stack([array for array, _ in held]), axis=0)]
        add_gaussian_noise_inplace(mean, compute_stdv(noise_multiplier, clip_norm, len(held)))
        result[name] = mean[0].astype(np.float32)
    return result


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε at ``delta`` after ``steps`` rounds of the subsampled Gaussian mechanism (Opacus's RDP accountant).

    ``noise_multiplier`` is the noise's std over the sensitivity and ``sample_rate`` each client's chance of
    taking part in a round; ``inf`` without noise.
    """
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    from opacus.accountants import RDPAccountant  # imports torch: only on the server that accounts

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))


def _start(reference: Mapping[str, np.ndarray], name: str, trained: np.ndarray) -> np.ndarray:
    if name not in reference:
        return np.zeros_like(trained)
    start = np.asarray(reference[name], dtype=np.float64)
    if start.shape != trained.shape:
        raise ValueError(f"{name}: the update has shape {trained.shape} but its reference {start.shape}")
    return start
