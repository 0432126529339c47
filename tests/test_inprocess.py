"""The in-process grid: real messages reach the ClientApp's handlers with a Context per node, replies come back
as a SuperLink returns them, and a handler's exception comes back as Flower's error reply."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedbrick_flower.inprocess import ClientAppNode, InProcessGrid, client_app_grid
from fedbrick_flower.records import CONFIG_KEY, PROFILE_KEY
from fedbrick_flower.runconfig import SCENARIO_KEY
from tests.hybrid import TINY_HYBRID

COUNT = "visits"


def _counting_app() -> ClientApp:
    """A ClientApp whose train handler counts its visits in ``context.state`` and reports who answered."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        state = context.state.get(COUNT, ConfigRecord({"n": 0}))
        state["n"] = int(state["n"]) + 1
        context.state[COUNT] = state
        metrics = {
            "visits": float(state["n"]),
            "partition": float(context.node_config["partition-id"]),
            "sent": float(msg.content[CONFIG_KEY]["x"]),
        }
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        raise ValueError(f"no profile on node {context.node_id}")

    return app


def _message(node_id: int, message_type: str = MessageType.TRAIN, x: int = 0) -> Message:
    return Message(RecordDict({CONFIG_KEY: ConfigRecord({"x": x})}), dst_node_id=node_id, message_type=message_type)


def test_messages_reach_each_nodes_handler_and_replies_answer_them() -> None:
    # Prepare
    grid = client_app_grid({"scenario": "unused"}, 3, app=_counting_app())
    messages = [_message(node, x=10 * node) for node in (1, 2, 3)]

    # Execute
    message_ids = list(grid.push_messages(messages))
    replies = list(grid.pull_messages(message_ids))

    # Assert: node i + 1 is partition i, each handler saw its own message, each reply names the message it answers
    assert list(grid.get_node_ids()) == [1, 2, 3] and len(set(message_ids)) == 3
    assert [m.metadata.message_id for m in messages] == message_ids
    assert [r.metadata.reply_to_message_id for r in replies] == message_ids
    assert [r.metadata.src_node_id for r in replies] == [1, 2, 3]
    assert [dict(r.content["metrics"]) for r in replies] == [
        {"visits": 1.0, "partition": float(i), "sent": 10.0 * (i + 1)} for i in range(3)
    ]
    assert list(grid.pull_messages(message_ids)) == []  # a reply is pulled once, as from a SuperLink


def test_each_node_keeps_its_own_context_state_across_messages() -> None:
    # Prepare
    grid = client_app_grid({"scenario": "unused"}, 2, app=_counting_app())

    # Execute: three messages to node 1, one to node 2, one round trip at a time
    visits = [
        grid.send_and_receive([_message(node)])[0].content["metrics"]["visits"]  # type: ignore[index]
        for node in (1, 1, 2, 1)
    ]

    # Assert
    assert visits == [1.0, 2.0, 1.0, 3.0]
    assert grid.contexts[1].state[COUNT]["n"] == 3 and grid.contexts[2].state[COUNT]["n"] == 1
    assert grid.sent(1, MessageType.TRAIN) == 3 and grid.sent(2, MessageType.TRAIN) == 1
    assert all(context.run_config == {"scenario": "unused"} for context in grid.contexts.values())


def test_an_exception_in_a_handler_comes_back_as_flowers_error_reply() -> None:
    # Prepare: the query handler raises; evaluate has no handler at all
    grid = client_app_grid({"scenario": "unused"}, 2, app=_counting_app())
    messages = [_message(1, MessageType.QUERY), _message(2, MessageType.EVALUATE), _message(2)]

    # Execute
    replies = list(grid.send_and_receive(messages))

    # Assert: both failures answer their message with code CLIENT_APP_RAISED_EXCEPTION; the grid goes on
    failed, missing, trained = replies
    assert failed.has_error() and missing.has_error() and not trained.has_error()
    assert failed.error.code == missing.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert failed.error.reason == "<class 'ValueError'>:<'no profile on node 1'>"
    assert "No evaluate function registered" in missing.error.reason
    assert [r.metadata.reply_to_message_id for r in replies] == [m.metadata.message_id for m in messages]
    assert grid.replies == replies


def test_hand_written_nodes_and_client_app_nodes_share_one_grid() -> None:
    # Prepare
    def echo(message: Message) -> Message:
        return Message(RecordDict({CONFIG_KEY: message.content[CONFIG_KEY]}), reply_to=message)

    context = Context(1, 2, {"partition-id": 0}, RecordDict(), {})
    grid = InProcessGrid({1: echo, 2: ClientAppNode(context, _counting_app())})

    # Execute
    replies = list(grid.send_and_receive([_message(1, x=7), _message(2)]))

    # Assert: only the ClientApp node has a context
    assert replies[0].content[CONFIG_KEY]["x"] == 7 and replies[1].content["metrics"]["visits"] == 1.0
    assert grid.contexts == {2: context}


def test_the_package_client_app_answers_a_query_with_the_profile_of_its_partition(tmp_path: Path) -> None:
    # Prepare: the tiny hybrid federation, six clients
    path = tmp_path / "hybrid.yaml"
    path.write_text(yaml.safe_dump(TINY_HYBRID))
    grid = client_app_grid({SCENARIO_KEY: str(path)}, len(TINY_HYBRID["clients"]))

    # Execute
    replies = list(grid.send_and_receive([_message(node, MessageType.QUERY) for node in (1, 4)]))

    # Assert
    profiles = [json.loads(str(r.content[CONFIG_KEY][PROFILE_KEY])) for r in replies]
    expected = [TINY_HYBRID["clients"][index]["id"] for index in (0, 3)]
    assert [p["client_id"] for p in profiles] == expected
