"""Reply checks on real train replies through the in-process grid: attribution, validation, rejection reasons."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.inprocess import InProcessGrid, Node
from fedbrick_flower.records import ADAPTERS_KEY, CONFIG_KEY, METRICS_KEY, UpdateRejected, json_config
from fedbrick_flower.strategies.replies import (
    NODE_OFFLINE,
    ClientUpdate,
    attribute,
    error_line,
    node_error,
    nothing_trained,
    read_update,
    read_updates,
    reply_metrics,
    training_set_size,
)

from .loopback import client_info, failing_node, training_node

LAYERS = [0, 1]


def _replies(nodes: dict[int, Node]) -> tuple[dict[str, Message], dict[str, str]]:
    """Round-1 train replies of ``nodes`` by the id of the message each answers, and message id -> node's client."""
    grid = InProcessGrid(nodes)
    content = {ADAPTERS_KEY: ArrayRecord(), CONFIG_KEY: json_config(layers=LAYERS)}
    messages = [Message(RecordDict(content), dst_node_id=node, message_type=MessageType.TRAIN) for node in nodes]
    ids = list(grid.push_messages(messages))
    replies = {r.metadata.reply_to_message_id: r for r in grid.pull_messages(ids)}
    return replies, {mid: f"n{m.metadata.dst_node_id}" for mid, m in zip(ids, messages, strict=True)}


def _expected(client: ClientInfo) -> dict[str, tuple[int, ...]]:
    return client.schema(LAYERS)


def test_replies_are_paired_with_their_client_in_client_id_order_and_strays_dropped() -> None:
    # Prepare: the node of "n2" is lost, so its reply is an error; "n3"'s message belongs to no exchange
    infos = {f"n{i}": client_info(f"n{i}", node_id=i) for i in (1, 2, 3)}
    replies, sent = _replies({2: failing_node("node lost"), 1: training_node(infos["n1"]), 3: failing_node("x")})
    del sent[next(mid for mid, cid in sent.items() if cid == "n3")]

    # Execute
    pairs = attribute(reversed(list(replies.values())), sent, infos)

    # Assert
    assert [(client.client_id, reply.has_error()) for reply, client in pairs] == [("n1", False), ("n2", True)]


def test_a_valid_reply_becomes_an_update_weighted_by_its_training_set_size() -> None:
    # Prepare
    info = client_info("a", node_id=1, examples=25)
    [reply] = _replies({1: training_node(info, value=3.0)})[0].values()

    # Execute
    update = read_update(reply, info, _expected, max_bytes=2**20)

    # Assert
    assert isinstance(update, ClientUpdate) and update.client is info and update.num_examples == 25
    assert set(update.arrays) == set(info.schema(LAYERS))
    np.testing.assert_array_equal(update.arrays["head.bias"], np.full(3, 3.0, np.float32))
    assert update.metrics["train-loss"] == 1.0 and update.metrics["eval-accuracy"] == 0.5


@pytest.mark.parametrize(
    "node, reason",
    [
        (failing_node("out of memory"), "node error: out of memory"),
        (training_node(client_info("a", 1), value=float("nan")), "holds non-finite values"),
        (training_node(client_info("a", 1), sends=client_info("a", 1, rank=3)), "has shape (3, 4), expected (2, 4)"),
        (training_node(client_info("a", 1), metrics={"num-examples": None}), "reply has no num-examples"),
        (training_node(client_info("a", 1), metrics={"num-examples": 0.0}), "num-examples must be >= 1, got 0.0"),
    ],
)
def test_an_invalid_reply_is_rejected_with_its_reason(node: Node, reason: str) -> None:
    # Prepare
    [reply] = _replies({1: node})[0].values()

    # Execute
    with pytest.raises(UpdateRejected) as error:
        read_update(reply, client_info("a", 1), _expected, max_bytes=2**20)

    # Assert
    assert reason in str(error.value)


def test_a_reply_without_its_records_is_rejected_and_the_expectation_is_asked_only_for_an_update() -> None:
    # Prepare: an error reply and a reply that lost its adapters record
    asked: list[str] = []

    def expected(client: ClientInfo) -> dict[str, tuple[int, ...]]:
        asked.append(client.client_id)
        return _expected(client)

    [error_reply] = _replies({1: failing_node("gone")})[0].values()
    [empty_reply] = _replies({1: lambda message: Message(RecordDict(), reply_to=message)})[0].values()

    # Execute
    with pytest.raises(UpdateRejected) as node_error:
        read_update(error_reply, client_info("a", 1), expected, max_bytes=2**20)
    with pytest.raises(UpdateRejected) as missing:
        read_update(empty_reply, client_info("b", 1), expected, max_bytes=2**20)

    # Assert
    assert str(node_error.value) == "node error: gone" and str(missing.value) == "'adapters'"
    assert asked == []


def test_an_oversize_update_is_rejected_before_its_shapes_are_read() -> None:
    # Prepare
    [reply] = _replies({1: training_node(client_info("a", 1))})[0].values()

    # Execute
    with pytest.raises(UpdateRejected) as error:
        read_update(reply, client_info("a", 1), _expected, max_bytes=16)

    # Assert
    assert "exceeds the cap of 16 bytes" in str(error.value)


def test_the_round_splits_into_valid_updates_and_reasons_in_attribution_order() -> None:
    # Prepare
    infos = {"a": client_info("a", 1), "b": client_info("b", 2), "c": client_info("c", 3)}
    nodes = {1: training_node(infos["a"]), 2: training_node(infos["b"], value=float("inf")), 3: failing_node("x")}
    replies, _ = _replies(nodes)
    attributed = list(zip(replies.values(), infos.values(), strict=True))

    # Execute
    valid, rejected = read_updates(attributed, _expected, max_bytes=2**20)

    # Assert
    assert [update.client.client_id for _, update in valid] == ["a"]
    assert list(rejected) == ["b", "c"] and rejected["c"] == "node error: x"


def test_metrics_are_read_as_floats() -> None:
    # Prepare
    content = RecordDict({METRICS_KEY: MetricRecord({"n": 3, "loss": 0.5})})
    message = Message(content, dst_node_id=1, message_type=MessageType.EVALUATE)

    # Execute / Assert
    assert reply_metrics(message) == {"n": 3.0, "loss": 0.5}
    assert all(isinstance(value, float) for value in reply_metrics(message).values())


@pytest.mark.parametrize("metrics, size", [({"num-examples": 7.0}, 7), ({"num-examples": 1.0, "other": 0.0}, 1)])
def test_the_training_set_size_is_the_stated_count(metrics: dict[str, float], size: int) -> None:
    assert training_set_size(metrics) == size


@pytest.mark.parametrize(
    "reason, line",
    [
        (
            "node error: <class 'ValueError'>:<'algorithm_params.probe: got 'bert''>",
            "ValueError: algorithm_params.probe: got 'bert'",
        ),
        (
            "<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException occurred. "
            "Message: algorithm_params.probe: got 'bert'\n'>",
            "algorithm_params.probe: got 'bert'",
        ),
        ("tensor 'x' has shape (3, 4),\n expected (2, 4)", "tensor 'x' has shape (3, 4), expected (2, 4)"),
    ],
)
def test_a_clientapp_error_reads_as_one_line_without_flowers_wrapping(reason: str, line: str) -> None:
    assert error_line(reason) == line


def test_a_round_where_no_client_replied_says_so_with_the_timeout_setting() -> None:
    assert nothing_trained(2, 3, {}) == "round 2: none of the 3 sampled clients replied within server.round_timeout"


def test_a_node_that_went_offline_is_not_said_to_have_failed_its_heartbeat() -> None:
    # Prepare: the error reply a SuperLink writes for a node that left (also one stopped by SIGTERM)
    message = Message(RecordDict(), dst_node_id=3, message_type=MessageType.TRAIN)
    message.metadata.__dict__["_message_id"] = "m1"
    reason = "Error: Node Unavailable — The destination node failed to report a heartbeat within 2 × its interval."
    reply = Message(Error(ErrorCode.NODE_UNAVAILABLE, reason), reply_to=message)

    # Execute
    said = node_error(reply)

    # Assert
    assert said == NODE_OFFLINE and "heartbeat" not in said


def test_a_round_whose_every_device_went_offline_does_not_stop_the_run_but_one_that_failed_does() -> None:
    # Execute
    all_offline = nothing_trained(2, 2, {"a": NODE_OFFLINE, "b": NODE_OFFLINE})
    one_failed = nothing_trained(2, 2, {"a": NODE_OFFLINE, "b": "node error: <class 'KeyError'>:<'x'>"})

    # Assert
    assert all_offline is None
    assert one_failed is not None and one_failed.startswith("round 2: no update was accepted (2 of 2 rejected: a: ")
