"""FedAvg / FedIT / FedRA client half: plain local LoRA training of the layers the server assigned.

The layer allocation (fixed, prefix or FedRA's per-round draw) is the server's; the client trains what it is
given and returns every adapter tensor of its held layers plus the head.
"""

from __future__ import annotations

from .base import ClientAlgorithm


class FedAvgClient(ClientAlgorithm):
    """Local LoRA training on the assigned layers (see :class:`ClientAlgorithm`)."""
