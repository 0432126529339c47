"""FlexLoRA client half: local LoRA training at the client's rank, starting from its SVD share of the average.

The server sends the truncated SVD of the averaged update at this client's rank (already divided by the
client's own scale); the client trains it like plain LoRA and returns its factors (see
:class:`~fedbrick_flower.clients.rank_methods.RankClient`).
"""

from __future__ import annotations

from .rank_methods import RankClient


class FlexLoRAClient(RankClient):
    """Plain LoRA training at the client's rank from the server's truncated SVD factors."""
