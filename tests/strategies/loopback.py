"""Hand-written nodes for :class:`fedbrick_flower.inprocess.InProcessGrid`: tiny clients that answer like a
ClientApp (``Message(..., reply_to=msg)``) without a model, so strategy tests see real ``Message`` and
``RecordDict`` objects and no sockets, Ray or torch.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.inprocess import Node
from fedbrick_flower.records import (
    ADAPTERS_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    PROFILE_KEY,
    decode_config,
    from_array_record,
    to_array_record,
)


def client_info(
    client_id: str,
    node_id: int,
    *,
    budget: int = 2,
    rank: int = 2,
    examples: int = 10,
    num_layers: int = 2,
    fixed: list[int] | None = None,
) -> ClientInfo:
    """A tiny client: ``num_layers`` layers of a width-4 model, LoRA rank ``rank`` on one module, a 3-class head."""
    return ClientInfo(
        client_id=client_id,
        model="m",
        task="t",
        group="t",
        model_type="bert",
        num_layers=num_layers,
        budget=budget,
        fixed_layers=fixed,
        layer_schema={"q.lora_A": [rank, 4], "q.lora_B": [4, rank]},
        head_schema={"head.weight": [3, 4], "head.bias": [3]},
        num_train_examples=examples,
        node_id=node_id,
    )


def training_node(
    info: ClientInfo,
    value: float = 1.0,
    metrics: dict[str, float | None] | None = None,
    sends: ClientInfo | None = None,
) -> Node:
    """A node that registers as ``info`` and answers every train message with tensors full of ``value``.

    ``metrics`` overrides reply metrics; a None value leaves that metric out of the reply. ``sends`` makes the
    node answer with the tensors of another schema (a misbehaving client).
    """

    def answer(message: Message) -> Message:
        kind = message.metadata.message_type
        if kind == MessageType.QUERY:
            profile = ConfigRecord({PROFILE_KEY: info.to_json()})
            return Message(RecordDict({CONFIG_KEY: profile}), reply_to=message)
        config = decode_config(message.content[CONFIG_KEY])
        evaluation = {"accuracy": 0.5, "loss": 1.0, "num-examples": 4.0}
        if kind == MessageType.EVALUATE:
            return Message(RecordDict({METRICS_KEY: MetricRecord(evaluation)}), reply_to=message)
        from_array_record(message.content[ADAPTERS_KEY])  # a real client loads what it receives
        arrays = {
            name: np.full(shape, value, np.float32) for name, shape in (sends or info).schema(config["layers"]).items()
        }
        reply_metrics = {
            "num-examples": float(info.num_train_examples),
            "train-loss": 1.0,
            **{f"eval-{k}": v for k, v in evaluation.items()},
        }
        for key, override in (metrics or {}).items():
            if override is None:
                reply_metrics.pop(key, None)
            else:
                reply_metrics[key] = override
        content = RecordDict({ADAPTERS_KEY: to_array_record(arrays), METRICS_KEY: MetricRecord(reply_metrics)})
        return Message(content, reply_to=message)

    return answer


def failing_node(reason: str) -> Node:
    """A node whose client cannot set itself up: every message gets an error reply."""

    def answer(message: Message) -> Message:
        return Message(Error(400, reason), reply_to=message)

    return answer


def profile_of(message: Message) -> dict:
    return json.loads(str(message.content[CONFIG_KEY][PROFILE_KEY]))
