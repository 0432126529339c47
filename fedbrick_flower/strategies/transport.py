"""Messages to and from the nodes: one payload per client, and replies kept attributable to their client.

Flower's ``Grid.send_and_receive`` returns replies alone; a strategy of heterogeneous clients also needs to know
which logical client each reply answers (also an error reply the SuperLink writes for a lost node), and which
clients missed the round's timeout. Pure helpers of
:class:`~fedbrick_flower.strategies.base.HeterogeneousStrategy`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from ..client_info import ClientInfo
from ..records import ADAPTERS_KEY, CONFIG_KEY, STATE_SCOPE_KEY, json_config, to_array_record

POLL_SECONDS = 0.2  # between two pulls while replies are pending


def round_message(
    node_id: int,
    phase: str,
    tensors: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    instructions: Mapping[str, Any],
    server_round: int,
    wire_dtype: str,
    state_scope: str,
) -> Message:
    """A ``train`` or ``evaluate`` message: the client's tensors in the wire dtype, and the run's ``config``
    with the algorithm's ``instructions``, the round, the wire dtype and the run's state scope (a key given
    twice is an error)."""
    content = RecordDict(
        {
            ADAPTERS_KEY: to_array_record(tensors, wire_dtype),
            CONFIG_KEY: json_config(
                **config,
                **instructions,
                **{"server-round": server_round, "wire-dtype": wire_dtype, STATE_SCOPE_KEY: state_scope},
            ),
        }
    )
    message_type = MessageType.TRAIN if phase == "train" else MessageType.EVALUATE
    return Message(content=content, dst_node_id=node_id, message_type=message_type)


def exchange(
    grid: Grid, messages: Iterable[Message], clients: Mapping[str, ClientInfo], timeout: float
) -> tuple[dict[str, str], list[Message]]:
    """Push ``messages`` and pull their replies until ``timeout``; a client that did not reply is logged.

    Returns
    -------
    tuple[dict[str, str], list[Message]]
        Each pushed message's id -> the logical client it went to (to attribute the replies), and the replies.
    """
    messages = list(messages)
    if not messages:
        return {}, []
    node_to_client = {info.node_id: cid for cid, info in clients.items()}
    message_ids = list(grid.push_messages(messages))
    sent = {mid: node_to_client[msg.metadata.dst_node_id] for mid, msg in zip(message_ids, messages, strict=False)}
    replies = pull(grid, message_ids, timeout)
    for mid in set(sent) - {r.metadata.reply_to_message_id for r in replies}:
        log(WARNING, "client %s did not reply within %.0fs", sent[mid], timeout)
    return sent, replies


def pull(grid: Grid, message_ids: list[str], timeout: float) -> list[Message]:
    """The replies to ``message_ids`` that arrive within ``timeout`` seconds, in arrival order."""
    pending, replies = set(message_ids), []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(pending)):
            replies.append(reply)
            pending.discard(reply.metadata.reply_to_message_id)
        if pending:
            time.sleep(POLL_SECONDS)
    return replies
