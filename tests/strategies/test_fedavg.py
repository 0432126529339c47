"""Layer-wise FedAvg: payloads per client, aggregation over holders only, rejection of bad replies."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType

from fedbrick_flower.adapters.naming import drop_lora
from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.inprocess import InProcessGrid
from fedbrick_flower.records import ADAPTERS_KEY, from_array_record, to_array_record
from fedbrick_flower.strategies.aggregation import layerwise_average, random_layer_subset, sample_clients
from fedbrick_flower.strategies.fedavg import LayerwiseFedAvg
from fedbrick_flower.strategies.replies import ClientUpdate

from .loopback import client_info, training_node

LAYER_SCHEMA = {"q.lora_A": [2, 4], "q.lora_B": [4, 2]}
HEAD_SCHEMA = {"head.weight": [3, 4], "head.bias": [3]}


def _client(client_id: str, budget: int, fixed: list[int] | None = None, node_id: int = 1) -> ClientInfo:
    return client_info(client_id, node_id, budget=budget, num_layers=4, fixed=fixed)


def _prepare_strategy(**kwargs) -> LayerwiseFedAvg:
    strategy = LayerwiseFedAvg(seed=0, **kwargs)
    strategy.clients = {"deep": _client("deep", 4, node_id=1), "edge": _client("edge", 2, fixed=[1, 3], node_id=2)}
    return strategy


def _filled(client: ClientInfo, layers: list[int], value: float) -> dict[str, np.ndarray]:
    return {name: np.full(shape, value, np.float32) for name, shape in client.schema(layers).items()}


def test_layerwise_average_weights_holders_only() -> None:
    # Prepare
    a = {"layers.0.x": np.array([1.0]), "layers.1.x": np.array([1.0])}
    b = {"layers.1.x": np.array([4.0])}

    # Execute
    result = layerwise_average([("a", a, 1.0), ("b", b, 3.0)])

    # Assert
    np.testing.assert_almost_equal(result["layers.0.x"], [1.0])
    np.testing.assert_almost_equal(result["layers.1.x"], [(1.0 + 12.0) / 4.0])
    assert "layers.2.x" not in result


def test_payload_holds_exactly_the_clients_layers_and_head() -> None:
    # Prepare
    strategy = _prepare_strategy()
    strategy.state = {f"m/layers.{g}.{k}": np.zeros(s, np.float32) for g in range(4) for k, s in LAYER_SCHEMA.items()}
    strategy.state.update({f"m/t/{k}": np.zeros(s, np.float32) for k, s in HEAD_SCHEMA.items()})

    # Execute
    arrays, config = strategy.payload(strategy.clients["edge"], server_round=1, phase="train")

    # Assert
    assert config["layers"] == [1, 3]
    assert set(arrays) == {f"layers.{g}.{k}" for g in (1, 3) for k in LAYER_SCHEMA} | set(HEAD_SCHEMA)


def test_aggregate_ignores_non_holders_and_keeps_unheld_layers() -> None:
    # Prepare
    strategy = _prepare_strategy()
    deep, edge = strategy.clients["deep"], strategy.clients["edge"]
    strategy.state = {"m/layers.0.q.lora_A": np.full((2, 4), 9.0, np.float32)}
    for client in (deep, edge):
        strategy.payload(client, 1, "train")
    updates = [
        ClientUpdate(deep, _filled(deep, [1, 2, 3], 1.0), num_examples=1, metrics={}),
        ClientUpdate(edge, _filled(edge, [1, 3], 3.0), num_examples=3, metrics={}),
    ]

    # Execute
    strategy.aggregate(1, updates)

    # Assert
    np.testing.assert_almost_equal(strategy.state["m/layers.0.q.lora_A"], np.full((2, 4), 9.0))
    np.testing.assert_almost_equal(strategy.state["m/layers.2.q.lora_A"], np.full((2, 4), 1.0))
    np.testing.assert_almost_equal(strategy.state["m/layers.3.q.lora_B"], np.full((4, 2), 2.5))
    np.testing.assert_almost_equal(strategy.state["m/t/head.bias"], np.full(3, 2.5))


def _prepare_round(nodes: dict) -> tuple[LayerwiseFedAvg, InProcessGrid]:
    """A strategy that has registered ``nodes`` and sent them round 1's train messages."""
    strategy, grid = LayerwiseFedAvg(seed=0, min_clients=len(nodes)), InProcessGrid(nodes)
    strategy._register_new_nodes(grid)
    strategy._exchange(grid, strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid))
    return strategy, grid


def test_nan_reply_is_rejected_logged_and_the_others_aggregate() -> None:
    # Prepare
    good, diverged = client_info("good", 1), client_info("diverged", 2)
    strategy, _ = _prepare_round({1: training_node(good, 2.0), 2: training_node(diverged, float("nan"))})

    # Execute
    _, metrics = strategy.aggregate_train(1, strategy._last_replies)

    # Assert
    assert metrics["num-updates"] == 1
    np.testing.assert_almost_equal(strategy.state["m/layers.1.q.lora_A"], np.full((2, 4), 2.0))
    rejected = [row for row in strategy._log_rows if row["phase"] == "rejected"]
    assert [(r["client"], "non-finite" in r["reason"]) for r in rejected] == [("diverged", True)]


def test_rejected_update_leaves_state_unchanged() -> None:
    # Prepare
    edge = client_info("edge", 1)
    strategy, _ = _prepare_round({1: training_node(edge, 1.0, sends=client_info("edge", 1, rank=3))})
    strategy.state = {"m/layers.1.q.lora_A": np.zeros((2, 4), np.float32)}

    # Execute
    strategy.aggregate_train(1, strategy._last_replies)

    # Assert
    assert list(strategy.state) == ["m/layers.1.q.lora_A"]
    np.testing.assert_almost_equal(strategy.state["m/layers.1.q.lora_A"], np.zeros((2, 4)))
    rejected = [row for row in strategy._log_rows if row["phase"] == "rejected"]
    assert "has shape (3, 4), expected (2, 4)" in rejected[0]["reason"]


def _linear_probe_node(info: ClientInfo) -> Callable[[Message], Message]:
    """A client under ``train.freeze_lora``: it answers like any other, less its unchanged LoRA."""
    answer = training_node(info, 2.0)

    def probe(message: Message) -> Message:
        reply = answer(message)
        if message.metadata.message_type == MessageType.TRAIN:
            arrays = drop_lora(from_array_record(reply.content[ADAPTERS_KEY]))
            reply.content[ADAPTERS_KEY] = to_array_record(arrays, "float32")
        return reply

    return probe


def test_frozen_lora_keeps_lora_off_the_wire_both_ways() -> None:
    # Prepare: a linear probe and a client that still sends its LoRA
    probe, full = client_info("probe", 1), client_info("full", 2)
    strategy = LayerwiseFedAvg(seed=0, min_clients=2, frozen_lora=True)
    grid = InProcessGrid({1: _linear_probe_node(probe), 2: training_node(full, 5.0)})
    strategy._register_new_nodes(grid)
    strategy.state = {f"m/layers.1.{k}": np.ones(s, np.float32) for k, s in LAYER_SCHEMA.items()}
    strategy.state.update({f"m/t/{k}": np.ones(s, np.float32) for k, s in HEAD_SCHEMA.items()})

    # Execute
    strategy._exchange(grid, strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid))
    _, metrics = strategy.aggregate_train(1, strategy._last_replies)

    # Assert: nothing of LoRA went down, the head came back and was averaged, the LoRA upload was refused
    sent = {
        name
        for m in grid.pushed
        if m.metadata.message_type == MessageType.TRAIN
        for name in from_array_record(m.content[ADAPTERS_KEY])
    }
    assert sent == set(HEAD_SCHEMA)
    assert metrics["num-updates"] == 1
    np.testing.assert_almost_equal(strategy.state["m/t/head.bias"], np.full(3, 2.0))
    rejected = [row for row in strategy._log_rows if row["phase"] == "rejected"]
    assert [(r["client"], "unexpected tensors" in r["reason"]) for r in rejected] == [("full", True)]


def test_fedra_allocation_is_seeded_and_within_budget() -> None:
    # Prepare
    first, second = _prepare_strategy(resample_layers=True), _prepare_strategy(resample_layers=True)
    deep = _client("deep", 2)

    # Execute
    draws = [first.layers_for(deep, r, "train") for r in range(1, 6)]
    again = [second.layers_for(deep, r, "train") for r in range(1, 6)]

    # Assert
    assert draws == again
    assert all(len(layers) == 2 and layers == sorted(layers) for layers in draws)
    assert len({tuple(layers) for layers in draws}) > 1


def test_state_dict_round_trip_restores_registry_and_state() -> None:
    # Prepare
    strategy = _prepare_strategy()
    strategy.state = {"m/layers.0.q.lora_A": np.ones((2, 4), np.float32)}
    strategy.payload(strategy.clients["edge"], 3, "train")
    arrays, meta = strategy.state_dict()
    restored = LayerwiseFedAvg(seed=0)

    # Execute
    restored.load_state_dict(arrays, meta, completed_round=3)

    # Assert
    assert restored.start_round == 4
    assert set(restored.clients) == {"deep", "edge"}
    assert restored.round_layers == {"edge": [1, 3]}
    np.testing.assert_almost_equal(restored.state["m/layers.0.q.lora_A"], np.ones((2, 4)))


def test_sampling_and_random_subsets_are_bounded() -> None:
    import random

    # Execute / Assert
    assert sample_clients(["a", "b", "c", "d"], 0.5, 1, random.Random(0)) == sorted(
        sample_clients(["d", "c", "b", "a"], 0.5, 1, random.Random(0))
    )
    assert len(sample_clients(["a", "b", "c"], 0.1, 2, random.Random(0))) == 2
    with pytest.raises(ValueError, match="budget"):
        random_layer_subset(4, 5, random.Random(0))
