"""Node registration: the ``query`` exchange that maps Flower's random node ids to logical clients.

Helpers of :class:`~fedbrick_flower.strategies.base.HeterogeneousStrategy` (the way Flower's ``strategy_utils``
serves its strategies): which nodes to ask, what their replies say, whether the run can still reach
``server.min_clients``. The strategy owns the registry itself (``clients`` and the failed nodes) and passes it in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from logging import INFO

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.supercore import log

from ..client_info import ClientInfo
from ..records import CONFIG_KEY, PROFILE_KEY, REASON_KEY, REFUSED_TYPE

Refuse = Callable[[ClientInfo], str | None]
"""Why a registering client cannot take part, or None (``HeterogeneousStrategy.refuse``)."""


def unknown_nodes(node_ids: Iterable[int], clients: Mapping[str, ClientInfo], failed: Mapping[int, str]) -> list[int]:
    """The connected nodes neither registered nor failed: a node that rejoins has a new id and is asked again,
    a node that failed is asked no more."""
    known = {info.node_id for info in clients.values()} | set(failed)
    return [node for node in node_ids if node not in known]


def query_messages(node_ids: Iterable[int]) -> list[Message]:
    """One ``query`` message per node; the reply carries the client's :class:`ClientInfo` as JSON."""
    return [
        Message(content=RecordDict({CONFIG_KEY: ConfigRecord()}), dst_node_id=node, message_type=MessageType.QUERY)
        for node in node_ids
    ]


def refusal_messages(refused: Mapping[int, str]) -> list[Message]:
    """One ``query.refused`` message per refused node, carrying the reason, so the device shows it as well."""
    return [
        Message(
            content=RecordDict({CONFIG_KEY: ConfigRecord({REASON_KEY: reason})}),
            dst_node_id=node,
            message_type=REFUSED_TYPE,
        )
        for node, reason in refused.items()
    ]


def register_replies(replies: Iterable[Message], clients: dict[str, ClientInfo], refuse: Refuse) -> dict[int, str]:
    """Add the clients of ``replies`` to ``clients``, in reply order; return the reason of every node that failed.

    A node fails when its client answers with an error (it could not set itself up; the error names why) or
    when ``refuse`` turns its profile down. Each client is added before the next reply is read, so ``refuse``
    sees every client registered before it (a federation-wide condition, e.g. one rank, holds within a batch).
    """
    failed: dict[int, str] = {}
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            failed[node] = reply.error.reason or "no reason given"
            continue
        info = ClientInfo.from_json(str(reply.content[CONFIG_KEY][PROFILE_KEY]), node)
        reason = refuse(info)
        if reason is not None:
            failed[node] = f"client {info.client_id} refused: {reason}"
            continue
        clients[info.client_id] = info
        log(INFO, "client %s registered on node %s (%s)", info.client_id, info.node_id, profile_line(info))
    return failed


def connected_clients(clients: Mapping[str, ClientInfo], node_ids: Iterable[int]) -> list[str]:
    """The registered clients whose node is connected now, in registration order."""
    nodes = set(node_ids)
    return [cid for cid, info in clients.items() if info.node_id in nodes]


class RunStoppedError(RuntimeError):
    """A run that cannot go on, with its reason in one line: what the user did, not a fault of the code, so it is
    reported without a traceback."""


def check_reachable(expected_clients: int | None, registered: int, failed: Mapping[int, str], min_clients: int) -> None:
    """Raise at once, with the failed nodes' reasons, when every one of the scenario's ``expected_clients`` has
    answered and the failed registrations leave too few to ever reach ``min_clients``.

    While some expected client has not answered yet, the run waits (up to ``server.node_wait_timeout``): on real
    devices the others may still come, and a refused device may come back corrected.
    """
    if expected_clients is None or not failed or registered + len(failed) < expected_clients:
        return
    if expected_clients - len(failed) < min_clients:
        reasons = "; ".join(failed.values())
        raise RunStoppedError(
            f"{reasons} ({len(failed)} of {expected_clients} clients failed to register, "
            f"{min_clients} are required; server.min_clients)"
        )


def too_few_connected(connected: int, min_clients: int, timeout: float, failed: Mapping[int, str]) -> RunStoppedError:
    """The error that ends a run whose clients did not connect within ``server.node_wait_timeout``, with the
    reasons of the nodes that came and were refused."""
    refused = f"; refused: {'; '.join(failed.values())}" if failed else ""
    return RunStoppedError(
        f"only {connected} of the required {min_clients} clients connected within "
        f"{timeout:.0f}s (server.node_wait_timeout); stopping the run{refused}"
    )


def refusal_line(node: int, reason: str) -> str:
    """The one line the server console shows for a node that could not register: the reason names the client
    by its id (never a path on the device); the node id tells two attempts of one device apart."""
    return f"{reason} (node {node}); waiting for the other clients until server.node_wait_timeout"


def profile_line(info: ClientInfo) -> str:
    """One log line's summary of a registered client."""
    layers = info.fixed_layers if info.fixed_layers is not None else f"{info.budget} of {info.num_layers}"
    return f"model={info.model} task={info.task} layers={layers}"
