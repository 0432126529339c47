"""The ``query`` reply, the contract between the two halves: what a client tells the server about itself.

The client half builds a :class:`ClientInfo` from its profile and model config
(:meth:`fedbrick_flower.clients.profile.ClientSession.describe`) and sends :meth:`ClientInfo.to_json` under
``records.PROFILE_KEY``; the server half reads it back with :meth:`ClientInfo.from_json`
(:mod:`fedbrick_flower.strategies.registration`) and keys its registry by the logical ``client_id``. Neither
half imports the other, and this module imports no torch and no Flower.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .adapters.naming import names_for_layers


@dataclass
class ClientInfo:
    """What the server knows about one logical client, as reported in its ``query`` reply."""

    client_id: str
    model: str
    task: str
    group: str
    model_type: str
    num_layers: int
    budget: int
    fixed_layers: list[int] | None
    layer_schema: dict[str, list[int]]
    head_schema: dict[str, list[int]]
    num_train_examples: int
    hidden_size: int = 0
    intermediate_size: int = 0
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    rank: int = 0
    alpha: float = 0.0
    roles: list[str] = field(default_factory=list)
    adapter_kinds: list[str] = field(default_factory=lambda: ["lora"])
    extra: dict[str, Any] = field(default_factory=dict)
    node_id: int = 0

    @classmethod
    def from_json(cls, text: str, node_id: int) -> ClientInfo:
        """Parse a ``query`` reply; unknown fields (a newer client) go to ``extra`` rather than failing."""
        data = json.loads(text)
        known = {f.name for f in fields(cls)} - {"node_id"}
        extra = {key: data.pop(key) for key in list(data) if key not in known}
        data["extra"] = {**data.get("extra", {}), **extra}
        return cls(**data, node_id=node_id)

    def to_json(self) -> str:
        """The ``query`` reply (the node id is the server's to assign, so it does not travel)."""
        data = asdict(self)
        data.pop("node_id")
        return json.dumps(data)

    def schema(self, layers: Iterable[int]) -> dict[str, tuple[int, ...]]:
        """Canonical names and shapes of this client's adapters on ``layers`` plus its head."""
        names = names_for_layers(self.layer_schema, layers)
        names.update({name: tuple(shape) for name, shape in self.head_schema.items()})
        return names
