"""Round messages and the exchange that keeps every reply attributable to its logical client."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import MessageType
from flwr.supercore.task_identity import TaskIdentity

from fedbrick_flower.inprocess import InProcessGrid
from fedbrick_flower.records import ADAPTERS_KEY, CONFIG_KEY, STATE_SCOPE_KEY, decode_config
from fedbrick_flower.strategies.transport import exchange, pull, round_message

from .loopback import client_info, training_node


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    """Messages need a task identity, which Flower sets in a real ServerApp process (the loopback grid does too)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def _message(node_id: int, phase: str = "train", config: dict | None = None):
    tensors = {"head.bias": np.ones(3, np.float32)}
    return round_message(node_id, phase, tensors, config or {}, {"layers": [0, 1]}, 4, "float16", "run-7")


def test_a_round_message_carries_tensors_in_the_wire_dtype_and_the_round_s_instructions() -> None:
    # Execute
    message = _message(5, config={"local-steps": 3})

    # Assert
    assert (message.metadata.dst_node_id, message.metadata.message_type) == (5, MessageType.TRAIN)
    assert message.content[ADAPTERS_KEY]["head.bias"].dtype == "float16"
    assert decode_config(message.content[CONFIG_KEY]) == {
        "local-steps": 3,
        "layers": [0, 1],
        "server-round": 4,
        "wire-dtype": "float16",
        STATE_SCOPE_KEY: "run-7",
    }
    assert _message(5, phase="evaluate").metadata.message_type == MessageType.EVALUATE


def test_an_instruction_that_repeats_a_config_key_is_an_error() -> None:
    with pytest.raises(TypeError, match="layers"):
        _message(5, config={"layers": [3]})


def test_the_exchange_maps_each_message_to_its_client_and_returns_the_replies() -> None:
    # Prepare
    clients = {"a": client_info("a", node_id=1), "b": client_info("b", node_id=2)}
    grid = InProcessGrid({1: training_node(clients["a"]), 2: training_node(clients["b"])})

    # Execute
    sent, replies = exchange(grid, [_message(2), _message(1)], clients, timeout=5)

    # Assert
    assert sorted(sent.values()) == ["a", "b"]
    assert {sent[r.metadata.reply_to_message_id] for r in replies} == {"a", "b"}
    assert [sent[m.metadata.message_id] for m in grid.pushed] == ["b", "a"]


def test_an_empty_exchange_pushes_nothing() -> None:
    # Prepare
    grid = InProcessGrid({})

    # Execute / Assert
    assert exchange(grid, [], {}, timeout=5) == ({}, [])
    assert grid.pushed == []


def test_a_client_that_misses_the_timeout_has_no_reply_but_stays_attributed() -> None:
    # Prepare
    clients = {"a": client_info("a", node_id=1), "b": client_info("b", node_id=2)}
    grid = InProcessGrid({1: training_node(clients["a"]), 2: training_node(clients["b"])}, silent={2})

    # Execute
    sent, replies = exchange(grid, [_message(1), _message(2)], clients, timeout=0.05)

    # Assert
    assert sorted(sent.values()) == ["a", "b"]
    assert [sent[r.metadata.reply_to_message_id] for r in replies] == ["a"]


def test_pull_returns_each_reply_once_and_stops_when_all_arrived() -> None:
    # Prepare
    grid = InProcessGrid({1: training_node(client_info("a", 1)), 2: training_node(client_info("b", 2))})
    ids = list(grid.push_messages([_message(2), _message(1)]))

    # Execute
    replies = pull(grid, ids, timeout=60)

    # Assert
    assert sorted(r.metadata.reply_to_message_id for r in replies) == sorted(ids)
