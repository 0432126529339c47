"""Reply checks: which logical client a reply belongs to, and whether its update may touch the server state.

Pure helpers of :class:`~fedbrick_flower.strategies.base.HeterogeneousStrategy` (the way Flower's
``strategy_utils`` validates replies for its strategies). A reply that fails a check is turned into an
:class:`~fedbrick_flower.records.UpdateRejected` whose message is the reason the strategy logs; the round goes
on with the others.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Message
from flwr.common.constant import ErrorCode

from ..client_info import ClientInfo
from ..records import ADAPTERS_KEY, METRICS_KEY, UpdateRejected, from_array_record, validate_update


@dataclass
class ClientUpdate:
    """A validated training reply."""

    client: ClientInfo
    arrays: dict[str, np.ndarray]
    num_examples: int
    metrics: dict[str, float]


def attribute(
    replies: Iterable[Message], sent: Mapping[str, str], clients: Mapping[str, ClientInfo]
) -> list[tuple[Message, ClientInfo]]:
    """Pair each reply with its logical client, in client-id order.

    ``sent`` maps the id of each message pushed to the logical client it went to. An error reply for a lost node
    comes from the SuperLink, not the node, so replies are attributed through ``reply_to_message_id`` rather
    than their source node; a reply to no message of ``sent`` is dropped. The order makes rows and
    floating-point sums independent of which reply arrived first.
    """
    attributed = [
        (reply, clients[cid]) for reply in replies if (cid := sent.get(reply.metadata.reply_to_message_id)) is not None
    ]
    return sorted(attributed, key=lambda pair: pair[1].client_id)


def reply_metrics(reply: Message) -> dict[str, float]:
    """The metrics of a reply, as floats."""
    return {key: float(value) for key, value in reply.content[METRICS_KEY].items()}


Expectation = Callable[[ClientInfo], Mapping[str, tuple[int, ...]]]
"""Exactly the tensor names and shapes a client must return this round (the strategy's ``expected_update``)."""


def read_updates(
    attributed: Iterable[tuple[Message, ClientInfo]], expected: Expectation, max_bytes: int
) -> tuple[list[tuple[Message, ClientUpdate]], dict[str, str]]:
    """The valid training replies with their updates, and, per client id, why each other reply was rejected.

    Both keep the order of ``attributed``.
    """
    valid: list[tuple[Message, ClientUpdate]] = []
    rejected: dict[str, str] = {}
    for reply, client in attributed:
        try:
            valid.append((reply, read_update(reply, client, expected, max_bytes)))
        except UpdateRejected as error:
            rejected[client.client_id] = str(error)
    return valid, rejected


def read_update(reply: Message, client: ClientInfo, expected: Expectation, max_bytes: int) -> ClientUpdate:
    """The update of one training reply, checked against exactly the tensors ``client`` was asked to return.

    ``expected`` is asked only about a reply that carries adapters, so an error reply of a client the strategy
    holds no expectation for is still rejected with its own reason.

    Raises
    ------
    UpdateRejected
        With the reason: a node error, a missing record, an invalid update (see
        :func:`~fedbrick_flower.records.validate_update`) or no training-set size.
    """
    if reply.has_error():
        raise UpdateRejected(node_error(reply))
    try:
        arrays = from_array_record(reply.content[ADAPTERS_KEY])
        validate_update(arrays, expected(client), max_bytes)
        metrics = reply_metrics(reply)
        num_examples = training_set_size(metrics)
    except UpdateRejected:
        raise
    except (KeyError, TypeError, ValueError) as error:
        raise UpdateRejected(str(error)) from error
    return ClientUpdate(client, arrays, num_examples, metrics)


NODE_OFFLINE = (
    "node error: the device went offline before replying (its SuperNode was stopped, or lost its link to the SuperLink)"
)


def node_error(reply: Message) -> str:
    """Why a reply is an error, as the reason of its rejection.

    Flower answers for a node that left with "failed to report a heartbeat", also for one stopped cleanly
    (SIGTERM) that said goodbye; that reads as a fault of a device that did nothing wrong, so both are said as
    what is known: the device went offline.
    """
    if reply.error.code == ErrorCode.NODE_UNAVAILABLE:
        return NODE_OFFLINE
    return f"node error: {reply.error.reason}"


def training_set_size(metrics: Mapping[str, float]) -> int:
    """The FedAvg weight n_k: a reply must state its client's training-set size; none is not weight zero."""
    if "num-examples" not in metrics:
        raise UpdateRejected("reply has no num-examples (the client's training-set size, its FedAvg weight)")
    count = metrics["num-examples"]
    if not count >= 1:
        raise UpdateRejected(f"num-examples must be >= 1, got {count}")
    return int(count)


# Flower's reason for an exception in a ClientApp: "<class 'ValueError'>:<'message'>"; under the Simulation Engine
# the exception is wrapped in a ClientAppException whose message starts with a fixed preamble.
_FLOWER_REASON = re.compile(r"^(?:node error: )?<class '(?:[\w.]*\.)?(\w+)'>:<'(.*)'>$", re.DOTALL)
_SIMULATION_PREAMBLE = re.compile(r"^\s*Exception ClientAppException occurred\. Message: ", re.DOTALL)


def error_line(reason: str) -> str:
    """A rejection reason as one line: a ClientApp's exception as ``Type: message``, Flower's wrapping removed."""
    match = _FLOWER_REASON.match(reason.strip())
    if match is None:
        return " ".join(reason.split())
    name, message = match.groups()
    if _SIMULATION_PREAMBLE.match(message):
        return " ".join(_SIMULATION_PREAMBLE.sub("", message).split())
    return f"{name}: {' '.join(message.split())}"


def nothing_trained(server_round: int, sampled: int, rejected: Mapping[str, str]) -> str | None:
    """Why a round that accepted no update stops the run, in one line: the one error every client failed with,
    or each client's reason; a round in which nothing trained must not let the run report success.

    None when every sampled device went offline (stopped, or lost): that says nothing against the next round,
    which waits for devices to come back (``server.node_wait_timeout``).
    """
    if rejected and set(rejected.values()) == {NODE_OFFLINE} and len(rejected) == sampled:
        return None
    lines = {client_id: error_line(reason) for client_id, reason in sorted(rejected.items())}
    if not lines:
        return f"round {server_round}: none of the {sampled} sampled clients replied within server.round_timeout"
    distinct = set(lines.values())
    if len(distinct) == 1 and len(lines) == sampled:
        return f"round {server_round}: every client failed with: {distinct.pop()} ({sampled} updates rejected)"
    reasons = "; ".join(f"{client_id}: {line}" for client_id, line in lines.items())
    return f"round {server_round}: no update was accepted ({len(lines)} of {sampled} rejected: {reasons})"
