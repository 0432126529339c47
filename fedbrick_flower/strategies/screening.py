"""Screening of a round's validated updates before aggregation: norm outliers out, the rest clipped.

The numbers are :class:`~fedbrick_flower.strategies.aggregation.Robustness`'s; this module applies them to
:class:`~fedbrick_flower.strategies.replies.ClientUpdate` objects, comparing norms among updates of the same
model (heads: of the same model and task) through the server-state names :func:`scoped_name` gives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..adapters.naming import is_head
from ..client_info import ClientInfo
from .aggregation import Robustness
from .replies import ClientUpdate


def scoped_name(client: ClientInfo, name: str) -> str:
    """Server-state key of a canonical tensor name: layers are shared per model, heads per model and task."""
    return f"{client.model}/{client.task}/{name}" if is_head(name) else f"{client.model}/{name}"


def scoped_arrays(updates: Sequence[ClientUpdate]) -> dict[str, dict[str, np.ndarray]]:
    """Client id -> its update's tensors under their server-state names (what the screen compares)."""
    return {u.client.client_id: {scoped_name(u.client, n): v for n, v in u.arrays.items()} for u in updates}


@dataclasses.dataclass
class Screened:
    """What :func:`screen_updates` let through, and why it turned the others down."""

    kept: list[ClientUpdate]
    """The updates that pass, clipped where a bound applies, in their input order."""
    rejected: dict[str, str]
    """Client id -> why its update is an outlier."""
    factors: dict[str, float]
    """Client id -> the smallest factor its clipped groups were scaled by."""


def screen_updates(robustness: Robustness, updates: Sequence[ClientUpdate]) -> Screened:
    """Reject the norm outliers among ``updates`` and clip the rest, as ``robustness`` asks."""
    if not robustness.screens:
        return Screened(list(updates), {}, {})
    rejected, kept, factors = robustness.screen(scoped_arrays(updates))
    clipped = [
        dataclasses.replace(u, arrays=dict(zip(u.arrays, kept[u.client.client_id].values(), strict=True)))
        for u in updates
        if u.client.client_id in kept
    ]
    return Screened(clipped, rejected, factors)
