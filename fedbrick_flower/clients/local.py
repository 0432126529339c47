"""Local-only client half: the same local step as FedAvg; only the server side (no aggregation) differs."""

from __future__ import annotations

from .base import ClientAlgorithm


class LocalClient(ClientAlgorithm):
    """Local LoRA training with the client's own adapters (see :class:`ClientAlgorithm`)."""
