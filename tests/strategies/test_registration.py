"""Node registration helpers on real ``query`` messages and replies through the in-process grid."""

from __future__ import annotations

import pytest
from flwr.app import MessageType
from flwr.supercore.task_identity import TaskIdentity

from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.inprocess import InProcessGrid
from fedbrick_flower.records import CONFIG_KEY, REASON_KEY, REFUSED_TYPE
from fedbrick_flower.strategies.registration import (
    check_reachable,
    connected_clients,
    profile_line,
    query_messages,
    refusal_messages,
    register_replies,
    too_few_connected,
    unknown_nodes,
)

from .loopback import client_info, failing_node, training_node


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    """Messages need a task identity, which Flower sets in a real ServerApp process (the loopback grid does too)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def test_only_nodes_neither_registered_nor_failed_are_asked() -> None:
    # Prepare
    clients = {"a": client_info("a", node_id=1)}
    failed = {3: "no data file"}

    # Execute
    nodes = unknown_nodes([4, 1, 2, 3], clients, failed)

    # Assert
    assert nodes == [4, 2]


def test_a_query_message_goes_to_each_node_with_an_empty_config() -> None:
    # Execute
    messages = query_messages([2, 5])

    # Assert
    assert [m.metadata.dst_node_id for m in messages] == [2, 5]
    assert {m.metadata.message_type for m in messages} == {MessageType.QUERY}
    assert all(len(m.content[CONFIG_KEY]) == 0 for m in messages)


def test_replies_register_their_clients_and_name_failures_and_refusals() -> None:
    # Prepare: one good client, one that could not set itself up, one the strategy refuses, one with no reason
    good, odd = client_info("good", node_id=1), client_info("odd", node_id=3)
    nodes = {1: training_node(good), 2: failing_node("client phone: no data file"), 3: training_node(odd)}
    nodes[4] = failing_node("")
    grid = InProcessGrid(nodes)
    replies = grid.send_and_receive(query_messages([1, 2, 3, 4]))
    clients: dict[str, ClientInfo] = {}

    # Execute
    failed = register_replies(replies, clients, lambda info: "odd one" if info.client_id == "odd" else None)

    # Assert
    assert [(cid, info.node_id) for cid, info in clients.items()] == [("good", 1)]
    assert clients["good"].layer_schema == good.layer_schema
    assert failed == {2: "client phone: no data file", 3: "client odd refused: odd one", 4: "no reason given"}


def test_a_refusal_sees_the_clients_registered_before_it_in_the_same_batch() -> None:
    # Prepare: a federation-wide condition (one depth), two nodes of different depths answering together
    first, second = client_info("d2", node_id=1, num_layers=2), client_info("d4", node_id=2, num_layers=4)
    grid = InProcessGrid({1: training_node(first), 2: training_node(second)})
    replies = grid.send_and_receive(query_messages([1, 2]))
    clients: dict[str, ClientInfo] = {}

    def one_depth(info: ClientInfo) -> str | None:
        depths = {c.num_layers for c in clients.values()} | {info.num_layers}
        return f"depths {sorted(depths)}" if len(depths) > 1 else None

    # Execute
    failed = register_replies(replies, clients, one_depth)

    # Assert
    assert list(clients) == ["d2"]
    assert failed == {2: "client d4 refused: depths [2, 4]"}


@pytest.mark.parametrize(
    "expected_clients, failed, min_clients",
    [(None, {1: "x"}, 3), (3, {}, 3), (3, {1: "x"}, 2)],
)
def test_the_run_goes_on_while_min_clients_can_still_be_reached(
    expected_clients: int | None, failed: dict[int, str], min_clients: int
) -> None:
    check_reachable(expected_clients, 1, failed, min_clients)


def test_the_run_stops_with_the_reasons_once_min_clients_cannot_be_reached() -> None:
    # Execute
    with pytest.raises(RuntimeError) as error:
        check_reachable(3, 1, {1: "client a: no data", 2: "client b refused: labels"}, min_clients=2)

    # Assert
    assert str(error.value) == (
        "client a: no data; client b refused: labels (2 of 3 clients failed to register, 2 are required; "
        "server.min_clients)"
    )


def test_connected_clients_are_the_registered_ones_whose_node_is_up_in_registration_order() -> None:
    # Prepare
    clients = {cid: client_info(cid, node_id=node) for cid, node in (("b", 2), ("a", 1), ("c", 3))}

    # Execute
    online = connected_clients(clients, [1, 2, 9])

    # Assert
    assert online == ["b", "a"]


def test_the_timeout_error_names_the_setting_and_the_counts() -> None:
    # Execute
    error = too_few_connected(1, 3, 120.0, {})

    # Assert
    assert str(error) == (
        "only 1 of the required 3 clients connected within 120s (server.node_wait_timeout); stopping the run"
    )


def test_the_log_line_shows_fixed_layers_or_the_budget() -> None:
    # Prepare
    fixed, free = client_info("f", 1, fixed=[0, 1]), client_info("b", 2, budget=1, num_layers=4)

    # Execute / Assert
    assert profile_line(fixed) == "model=m task=t layers=[0, 1]"
    assert profile_line(free) == "model=m task=t layers=1 of 4"


def test_the_run_waits_while_an_expected_client_has_not_answered_even_if_one_was_refused() -> None:
    # Execute: 2 expected, 2 required, one refused, the other not yet connected (a device may still come)
    check_reachable(2, 0, {1: "client a refused: labels"}, min_clients=2)


def test_a_refused_node_gets_one_message_with_its_reason() -> None:
    # Execute
    [message] = refusal_messages({7: "client a refused: labels"})

    # Assert
    assert message.metadata.dst_node_id == 7
    assert message.metadata.message_type == REFUSED_TYPE
    assert message.content[CONFIG_KEY][REASON_KEY] == "client a refused: labels"
