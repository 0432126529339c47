"""An in-process Flower ``Grid``: real ``Message`` objects answered in this process, no engine, no sockets.

For unit tests and quick benchmarks only, never the run path: ``fedbrick-flower run`` goes through Flower's
Simulation Engine and a deployment through the SuperLink. What this saves is their start-up (Ray, a SuperLink,
one process per ClientApp message), which on a small machine costs more than a short run's training.

A node is any callable that answers a message with a reply built by ``Message(..., reply_to=message)``:

- a hand-written function, for unit tests of a strategy's round loop;
- a :class:`ClientAppNode`: the package's ClientApp (its mods, then its registered ``query`` / ``train`` /
  ``evaluate`` handlers) with this node's own ``Context``, whose ``state`` lives across messages as a
  SuperNode keeps it. :func:`client_app_grid` builds one per scenario client, numbered as Flower's Simulation
  Engine numbers partitions.

:class:`InProcessGrid` assigns message ids as the SuperLink does, turns an exception raised by a node into an
error reply as Flower's ClientApp runtime does, and logs every message pushed and every reply. A strategy's
``start(grid, ...)`` then runs its real round loop: registration, payloads, reply checks, aggregation, callbacks.
:func:`run_in_process` does that for a scenario, with the same strategy and run directory as ``run``.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp

    from .scenario import Scenario
    from .strategies.base import HeterogeneousStrategy

Node = Callable[[Message], Message]

logger = logging.getLogger(__name__)

# The identity a ServerApp process gets from its SuperLink (run 1, the SuperLink's node, task 1): every Message
# built on the server side is stamped with it.
SERVER_IDENTITY = (1, 0, 1)


class InProcessGrid(Grid):
    """A Grid whose nodes answer in this process as soon as a message is pushed.

    Parameters
    ----------
    nodes : Mapping[int, Node]
        Node id to the callable that answers that node's messages.

    Attributes
    ----------
    pushed : list[Message]
        Every message pushed, in order (with the message id the grid gave it).
    replies : list[Message]
        Every reply, in the order the nodes gave them (pulled or not).
    """

    def __init__(self, nodes: Mapping[int, Node], silent: Iterable[int] = ()) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = SERVER_IDENTITY
        self.nodes = dict(nodes)
        self.silent = frozenset(silent)  # nodes whose replies never arrive, like a node lost mid-round
        self.pushed: list[Message] = []
        self.replies: list[Message] = []
        self._waiting: dict[str, Message] = {}
        self._ids = (f"message-{index}" for index in itertools.count())

    @property
    def contexts(self) -> dict[int, Context]:
        """The ``Context`` of every node that runs the ClientApp, by node id."""
        return {node_id: node.context for node_id, node in self.nodes.items() if isinstance(node, ClientAppNode)}

    def sent(self, node_id: int, message_type: str) -> int:
        """How many messages of ``message_type`` went to ``node_id``."""
        return sum(
            1 for m in self.pushed if m.metadata.dst_node_id == node_id and m.metadata.message_type == message_type
        )

    # ------------------------------------------------------------------------------------ the Grid interface
    def set_run(self, run: Any) -> None:  # noqa: D102 - one fixed run, set by the constructor
        pass

    @property
    def run(self) -> Any:  # noqa: D102
        raise NotImplementedError("an in-process grid has no SuperLink run")

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # noqa: D102 - deprecated in Flower
        raise NotImplementedError("build Message objects directly")

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        message_ids = []
        for message in messages:
            message_id = next(self._ids)
            message.metadata.__dict__["_message_id"] = message_id  # what a SuperLink does on arrival
            self.pushed.append(message)
            reply = self._answer(message)
            self.replies.append(reply)
            self._waiting[message_id] = reply
            message_ids.append(message_id)
        return message_ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        replies = [self._waiting.pop(mid) for mid in list(message_ids) if mid in self._waiting]
        return [reply for reply in replies if reply.metadata.src_node_id not in self.silent]

    def send_and_receive(  # noqa: D102
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _answer(self, message: Message) -> Message:
        """The node's reply, or the error reply Flower's ClientApp runtime sends when the app raises."""
        try:
            return self.nodes[message.metadata.dst_node_id](message)
        except Exception as error:  # noqa: BLE001 - a node's failure reaches the server as a reply, as in Flower
            logger.error("node %d raised an exception", message.metadata.dst_node_id, exc_info=error)
            return error_reply(message, error)


def error_reply(message: Message, error: Exception) -> Message:
    """The reply Flower's ClientApp runtime sends when the app raises ``error`` on ``message`` (same code and
    reason format)."""
    reason = f"{type(error)}:<'{error}'>"
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)


@dataclass
class ClientAppNode:
    """A node that runs a ClientApp on every message with its own ``Context``, as a SuperNode does.

    Parameters
    ----------
    context : Context
        This node's context: ``node_config`` (which client it is), ``state`` (kept across messages) and the
        run's ``run_config``.
    app : ClientApp
        The app every message goes through (mods, then the handler registered for the message type).
    """

    context: Context
    app: ClientApp

    def __call__(self, message: Message) -> Message:
        return self.app(message, self.context)


def client_app_grid(run_config: Mapping[str, Any], num_nodes: int, app: ClientApp | None = None) -> InProcessGrid:
    """``num_nodes`` nodes running ``app`` (default: the package's ClientApp), node ``i + 1`` with
    ``partition-id`` ``i``, as Flower's Simulation Engine configures its nodes.

    Parameters
    ----------
    run_config : Mapping[str, Any]
        The run's ``run_config`` every node sees (``scenario``: the scenario file, and any override).
    num_nodes : int
        How many nodes (the scenario's client count: partition ``i`` is its client ``i``).
    app : ClientApp | None (default: None)
        The ClientApp; ``None``: ``fedbrick_flower.client_app.app``.
    """
    if app is None:
        from .client_app import app  # torch and the models load only when a ClientApp is wanted
    nodes = {
        index + 1: ClientAppNode(
            Context(
                run_id=SERVER_IDENTITY[0],
                node_id=index + 1,
                node_config={"partition-id": index, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            ),
            app,
        )
        for index in range(num_nodes)
    }
    return InProcessGrid(nodes)


@dataclass
class InProcessRun:
    """What one in-process run left.

    Attributes
    ----------
    rows : list[dict[str, Any]]
        The rows of its ``metrics.jsonl``.
    summary : dict[str, Any]
        Its ``summary.json``.
    run_dir : Path
        Its run directory.
    wall_seconds : float
        Seconds from the first round's start to the end of the last.
    grid : InProcessGrid
        The grid it ran on (its nodes' contexts hold the clients' state).
    before_start : Any
        What the ``before_start`` hook returned.
    """

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    run_dir: Path
    wall_seconds: float
    grid: InProcessGrid
    before_start: Any = None


def run_in_process(
    scenario: Scenario,
    work: Path,
    name: str,
    before_start: Callable[[HeterogeneousStrategy], Any] | None = None,
    device: str = "cpu",
) -> InProcessRun:
    """Run ``scenario`` through its real strategy and the real ClientApp over a :func:`client_app_grid`.

    The strategy and its callbacks are those of ``run`` (the server's global evaluation when the scenario asks
    for it, and the ``RunRecorder``); the run directory is ``work/name`` and the scenario file the nodes read
    is ``work/name.yaml``.

    Parameters
    ----------
    scenario : Scenario
        The scenario, overrides applied.
    work : Path
        Folder for the scenario file and the run directory.
    name : str
        Name of both.
    before_start : Callable[[HeterogeneousStrategy], Any] | None (default: None)
        Called with the strategy before round 1 (e.g. to wrap its aggregation with a timer); what it returns
        comes back as ``InProcessRun.before_start``.
    device : str (default: "cpu")
        Where the server evaluates the global model.
    """
    import yaml

    from .evaluation import GlobalModelEvaluator
    from .run_dir import SUMMARY_FILE, RunRecorder, read_metrics
    from .runconfig import SCENARIO_KEY
    from .server_app import build_strategy
    from .strategies.base import RoundCallback

    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(scenario.raw, sort_keys=False))
    run_dir = work / name
    callbacks: list[RoundCallback] = [GlobalModelEvaluator(scenario, device)] if scenario.server.evaluate_global else []
    strategy = build_strategy(scenario, [*callbacks, RunRecorder(run_dir, scenario)])
    prepared = before_start(strategy) if before_start is not None else None
    grid = client_app_grid({SCENARIO_KEY: str(path)}, len(scenario.clients))
    started = time.monotonic()
    strategy.start(grid, num_rounds=scenario.rounds)
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    return InProcessRun(read_metrics(run_dir), summary, run_dir, time.monotonic() - started, grid, prepared)
