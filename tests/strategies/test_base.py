"""The strategy base on real Flower messages through an in-process grid: sampling, weights, evaluation inside
the train message, registration failures, byte accounting and state round trips."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType

from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.inprocess import InProcessGrid, Node
from fedbrick_flower.records import CONFIG_KEY, REASON_KEY, REFUSED_TYPE
from fedbrick_flower.scenario import PrivacySettings
from fedbrick_flower.strategies.aggregation import Robustness, ShapeMismatch
from fedbrick_flower.strategies.base import RoundCallback
from fedbrick_flower.strategies.fedavg import LayerwiseFedAvg
from fedbrick_flower.strategies.registration import RunStoppedError

from .loopback import client_info, failing_node, training_node


def _prepare(nodes: dict, **kwargs) -> tuple[LayerwiseFedAvg, InProcessGrid]:
    kwargs.setdefault("min_clients", len(nodes))
    return LayerwiseFedAvg(seed=0, node_wait_timeout=5, **kwargs), InProcessGrid(nodes)


def _rows(strategy: LayerwiseFedAvg, phase: str) -> list[dict]:
    return [row for row in strategy._log_rows if row["phase"] == phase]


def test_fraction_train_samples_half_of_the_clients_each_round() -> None:
    # Prepare
    infos = [client_info(f"c{i}", node_id=i + 1) for i in range(4)]
    strategy, grid = _prepare({info.node_id: training_node(info) for info in infos}, fraction_train=0.5)
    strategy.callbacks = []

    # Execute
    strategy.start(grid, num_rounds=3)

    # Assert
    trained = [grid.sent(info.node_id, MessageType.TRAIN) for info in infos]
    assert sum(trained) == 6  # 2 of 4 clients in each of 3 rounds
    evaluated = [grid.sent(info.node_id, MessageType.EVALUATE) for info in infos]
    assert [t + e for t, e in zip(trained, evaluated, strict=True)] == [3, 3, 3, 3]  # the others only evaluate


def test_every_client_trains_and_evaluates_in_one_message_when_all_are_sampled() -> None:
    # Prepare
    infos = [client_info(f"c{i}", node_id=i + 1) for i in range(3)]
    strategy, grid = _prepare({info.node_id: training_node(info) for info in infos})
    seen: list[dict] = []
    strategy.callbacks = [
        type(
            "Sink", (), {"on_round_end": lambda s, st, r, rows: seen.extend(rows), "on_run_end": lambda s, st, r: None}
        )()
    ]

    # Execute
    strategy.start(grid, num_rounds=2)

    # Assert
    assert all(grid.sent(info.node_id, MessageType.EVALUATE) == 0 for info in infos)
    evaluations = [row for row in seen if row["phase"] == "evaluate"]
    assert len(evaluations) == 6
    assert {row["source"] for row in evaluations} == {"train-message"}
    assert {row["accuracy"] for row in evaluations} == {0.5}
    train = [row for row in seen if row["phase"] == "train"]
    assert all("eval-accuracy" not in row for row in train)
    assert all(row["bytes_down"] > 0 and row["bytes_up"] > row["adapter_bytes"] for row in train)


def test_aggregation_weights_by_training_set_size() -> None:
    # Prepare
    small, large = client_info("small", 1, examples=10), client_info("large", 2, examples=30)
    nodes = {1: training_node(small, value=1.0, metrics={"examples-seen": 320.0}), 2: training_node(large, value=5.0)}
    strategy, grid = _prepare(nodes)
    strategy.callbacks = []

    # Execute
    strategy.start(grid, num_rounds=1)

    # Assert: (10 * 1 + 30 * 5) / 40 = 4, whatever the number of examples seen in the round
    np.testing.assert_allclose(strategy.state["m/layers.0.q.lora_A"], np.full((2, 4), 4.0))
    np.testing.assert_allclose(strategy.state["m/t/head.bias"], np.full(3, 4.0))


def test_reply_without_its_training_set_size_is_rejected_not_weighted_zero() -> None:
    # Prepare
    good, silent = client_info("good", 1), client_info("silent", 2)
    nodes = {1: training_node(good, value=2.0), 2: training_node(silent, value=9.0, metrics={"num-examples": None})}
    strategy, grid = _prepare(nodes)

    # Execute
    strategy._register_new_nodes(grid)
    strategy._exchange(grid, strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid))
    strategy.aggregate_train(1, strategy._last_replies)

    # Assert
    rejected = _rows(strategy, "rejected")
    assert [(row["client"], "num-examples" in row["reason"]) for row in rejected] == [("silent", True)]
    np.testing.assert_allclose(strategy.state["m/layers.0.q.lora_A"], np.full((2, 4), 2.0))


def test_a_client_that_fails_to_register_is_asked_once_and_stops_the_run_with_its_reason() -> None:
    # Prepare
    good = client_info("good", 1)
    nodes = {1: training_node(good), 2: failing_node("client phone failed to register: unknown task 'bbc'")}
    strategy, grid = _prepare(nodes, min_clients=2, expected_clients=2)

    # Execute
    with pytest.raises(RuntimeError) as error:
        strategy.start(grid, num_rounds=1)

    # Assert
    assert "client phone failed to register: unknown task 'bbc'" in str(error.value)
    assert "only" not in str(error.value)  # it did not claim that the client never connected
    assert grid.sent(2, MessageType.QUERY) == 1


def test_a_refused_node_is_told_why_and_the_server_waits_for_the_clients_still_to_come(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: 3 expected, 2 required; "phone" is refused and the third device never connects
    good = client_info("good", 1)
    nodes = {1: training_node(good), 2: failing_node("client phone failed to register: unknown model 'mpnet2'")}
    strategy, grid = _prepare(nodes, min_clients=2, expected_clients=3)
    strategy.node_wait_timeout = 1.5

    # Execute
    with pytest.raises(RunStoppedError) as error:
        strategy.start(grid, num_rounds=1)

    # Assert: it waited out the timeout (not stopped at the refusal), then named the refusal in the one line
    assert str(error.value).startswith("only 1 of the required 2 clients connected within 2s")
    assert str(error.value).endswith("refused: client phone failed to register: unknown model 'mpnet2'")
    [told] = [m for m in grid.pushed if m.metadata.message_type == REFUSED_TYPE]
    assert told.metadata.dst_node_id == 2
    assert told.content[CONFIG_KEY][REASON_KEY] == "client phone failed to register: unknown model 'mpnet2'"
    lines = [r.getMessage() for r in caplog.records if "phone" in r.getMessage()]
    assert lines == [
        "client phone failed to register: unknown model 'mpnet2' (node 2); waiting for the other clients until "
        "server.node_wait_timeout"
    ]


def test_a_failed_registration_that_leaves_enough_clients_lets_the_run_go_on() -> None:
    # Prepare
    infos = [client_info("a", 1), client_info("b", 2)]
    nodes = {1: training_node(infos[0]), 2: training_node(infos[1]), 3: failing_node("client c: no data file")}
    strategy, grid = _prepare(nodes, min_clients=2, expected_clients=3)
    strategy.callbacks = []

    # Execute
    strategy.start(grid, num_rounds=2)

    # Assert
    assert set(strategy.clients) == {"a", "b"}
    assert grid.sent(3, MessageType.QUERY) == 1
    assert grid.sent(3, MessageType.TRAIN) == 0


def test_mixed_ranks_under_layerwise_fedavg_raise_an_error_naming_both_clients() -> None:
    # Prepare
    r1, r8 = client_info("r1", 1, rank=1), client_info("r8", 2, rank=8)
    strategy, grid = _prepare({1: training_node(r1), 2: training_node(r8)})

    # Execute
    with pytest.raises(ShapeMismatch) as error:
        strategy.start(grid, num_rounds=1)

    # Assert
    message = str(error.value)
    assert "r1" in message and "r8" in message and "(1, 4)" in message and "(8, 4)" in message


def test_state_values_round_trip_through_load_state_dict() -> None:
    # Prepare
    infos = [client_info("a", 1), client_info("b", 2, budget=1)]
    strategy, grid = _prepare({1: training_node(infos[0], 3.0), 2: training_node(infos[1], 7.0)}, resample_layers=True)
    strategy.callbacks = []
    strategy.start(grid, num_rounds=2)
    arrays, meta = strategy.state_dict()

    # Execute
    restored = LayerwiseFedAvg(seed=0)
    restored.load_state_dict(arrays, meta, completed_round=2)

    # Assert
    assert restored.start_round == 3
    assert restored.round_layers == strategy.round_layers
    assert restored.clients["b"].budget == 1
    assert set(restored.state) == set(strategy.state)
    for key, value in strategy.state.items():
        np.testing.assert_array_equal(restored.state[key], value)


def test_a_node_whose_own_labels_do_not_fit_its_task_is_refused_and_the_others_train() -> None:
    # Prepare: both report counts and label names only; the second device's file holds a label the task lacks
    fits, stray = client_info("fits", 1), client_info("stray", 2)
    fits.extra["labels"], stray.extra["labels"] = ["sport", "tech"], ["sport", "weather"]
    nodes = {1: training_node(fits), 2: training_node(stray)}
    strategy, grid = _prepare(nodes, min_clients=1, expected_clients=2, task_labels={"t": ["sport", "tech"]})
    strategy.callbacks = []

    # Execute
    strategy.start(grid, num_rounds=1)

    # Assert
    assert set(strategy.clients) == {"fits"}
    assert grid.sent(2, MessageType.TRAIN) == 0
    reason = strategy._failed_nodes[2]
    assert reason.startswith("client stray refused:") and "['weather']" in reason


def test_a_scaled_update_is_rejected_as_a_norm_outlier_and_the_global_is_the_mean_of_the_others() -> None:
    # Prepare: four clean clients (values 1..4, equal weights) and one sending 1000x
    infos = [client_info(f"c{i}", node_id=i + 1) for i in range(5)]
    values = [1.0, 2.0, 3.0, 4.0, 1000.0]
    nodes = {info.node_id: training_node(info, value=v) for info, v in zip(infos, values, strict=True)}
    strategy, grid = _prepare(nodes, robustness=Robustness(outlier_norm_multiple=3.0))
    seen: list[dict] = []
    strategy.callbacks = [_Collect(seen)]

    # Execute
    strategy.start(grid, num_rounds=1)

    # Assert: (1 + 2 + 3 + 4) / 4 = 2.5 everywhere; the poisoned client is logged with its reason, not trained
    np.testing.assert_allclose(strategy.state["m/layers.0.q.lora_A"], np.full((2, 4), 2.5))
    np.testing.assert_allclose(strategy.state["m/t/head.bias"], np.full(3, 2.5))
    [rejected] = [row for row in seen if row["phase"] == "rejected"]
    assert (rejected["client"], rejected["stage"]) == ("c4", "train")
    assert rejected["reason"].startswith("norm outlier: m/layers.0 has norm 4000")
    assert "the round's median 12 over 5 updates (limit 3x, server.outlier_norm_multiple)" in rejected["reason"]
    assert sorted(row["client"] for row in seen if row["phase"] == "train") == ["c0", "c1", "c2", "c3"]
    assert grid.sent(5, MessageType.EVALUATE) == 1  # rejected: it evaluates the global like a client that sat out


def test_a_robust_aggregation_applies_to_the_layerwise_mean_of_the_strategy() -> None:
    # Prepare: three holders of every tensor, one of them far off; weights 10, 10, 30
    infos = [client_info("a", 1), client_info("b", 2), client_info("c", 3, examples=30)]
    nodes = {1: training_node(infos[0], value=1.0), 2: training_node(infos[1], value=2.0)}
    nodes[3] = training_node(infos[2], value=-50.0)
    strategy, grid = _prepare(nodes, robustness=Robustness(aggregation="median"))
    strategy.callbacks = []

    # Execute
    strategy.start(grid, num_rounds=1)

    # Assert: the coordinate-wise median of 1, 2, -50 is 1, whatever the weights
    np.testing.assert_allclose(strategy.state["m/layers.1.q.lora_B"], np.full((4, 2), 1.0))
    np.testing.assert_allclose(strategy.state["m/t/head.weight"], np.full((3, 4), 1.0))


def test_clipped_updates_are_logged_with_their_factor_and_aggregated_clipped() -> None:
    # Prepare: every layer group of a client has 16 entries of its value: norm 4 * value; heads 15 entries
    infos = [client_info("a", 1), client_info("b", 2)]
    nodes = {1: training_node(infos[0], value=1.0), 2: training_node(infos[1], value=2.0)}
    strategy, grid = _prepare(nodes, robustness=Robustness(clip_norm=4.0))
    seen: list[dict] = []
    strategy.callbacks = [_Collect(seen)]

    # Execute
    strategy.start(grid, num_rounds=1)

    # Assert: b's layers (norm 8) and head (norm 2 sqrt(15)) are scaled to norm 4; a's (4, sqrt(15)) are not
    np.testing.assert_allclose(strategy.state["m/layers.0.q.lora_A"], np.full((2, 4), 1.0))
    head = (1.0 * min(1.0, 4 / np.sqrt(15)) + 2.0 * 4 / (2 * np.sqrt(15))) / 2
    np.testing.assert_allclose(strategy.state["m/t/head.bias"], np.full(3, head), rtol=1e-6)
    assert [(r["client"], r["factor"]) for r in seen if r["phase"] == "clipped"] == [("b", pytest.approx(0.5))]


class _Collect(RoundCallback):
    def __init__(self, sink: list[dict]) -> None:
        self.sink = sink

    def on_round_end(self, strategy, server_round: int, log_rows: list[dict]) -> None:
        self.sink.extend(log_rows)


def test_a_callback_asking_to_stop_ends_the_run_after_that_round() -> None:
    # Prepare
    infos = [client_info("a", 1)]
    strategy, grid = _prepare({1: training_node(infos[0])})
    ended: list[int] = []

    class StopAfterTwo(RoundCallback):
        def __init__(self) -> None:
            self.rounds = 0

        def on_round_end(self, strategy, server_round: int, log_rows: list[dict]) -> None:
            self.rounds = server_round

        def on_run_end(self, strategy, rounds_completed: int) -> None:
            ended.append(rounds_completed)

        def stop_requested(self) -> bool:
            return self.rounds >= 2

    strategy.callbacks = [StopAfterTwo()]

    # Execute
    strategy.start(grid, num_rounds=10)

    # Assert
    assert grid.sent(1, MessageType.TRAIN) == 2
    assert ended == [2]


def test_a_round_in_which_every_client_fails_alike_stops_the_run_with_that_error_before_round_two() -> None:
    # Prepare: every train handler raises the same error (a probe the clients cannot use)
    infos = [client_info("a", 1), client_info("b", 2)]
    nodes = {info.node_id: _failing_trainer(info, ValueError("algorithm_params.probe: got 'bert'")) for info in infos}
    strategy, grid = _prepare(nodes)
    seen: list[dict] = []
    strategy.callbacks = [_Collect(seen)]

    # Execute
    with pytest.raises(RunStoppedError) as error:
        strategy.start(grid, num_rounds=3)

    # Assert
    assert str(error.value) == (
        "round 1: every client failed with: ValueError: algorithm_params.probe: got 'bert' (2 updates rejected)"
    )
    assert grid.sent(1, MessageType.TRAIN) == 1 and seen == []  # no second round, no round reported as done


def test_a_round_with_no_accepted_update_names_each_clients_reason() -> None:
    # Prepare: one client raises, the other sends a tensor of the wrong shape
    good_shape, bad_shape = client_info("a", 1), client_info("b", 2)
    nodes = {
        1: _failing_trainer(good_shape, RuntimeError("out of memory")),
        2: training_node(bad_shape, sends=client_info("b", 2, rank=3)),
    }
    strategy, grid = _prepare(nodes)

    # Execute
    with pytest.raises(RunStoppedError) as error:
        strategy.start(grid, num_rounds=2)

    # Assert
    message = str(error.value)
    assert message.startswith("round 1: no update was accepted (2 of 2 rejected: a: RuntimeError: out of memory; b: ")
    assert "\n" not in message


def _failing_trainer(info: ClientInfo, error: Exception) -> Node:
    """A node that registers as ``info`` and raises ``error`` in its train handler (as a ClientApp would)."""
    register = training_node(info)

    def answer(message: Message) -> Message:
        if message.metadata.message_type == MessageType.TRAIN:
            raise error
        return register(message)

    return answer


def test_central_privacy_bounds_each_contribution_and_writes_a_growing_epsilon_every_round() -> None:
    # Prepare: three clients sending every entry at 1, 5 and 1000; nothing was sent to them before round 1, so each
    # update is its whole value: 2 layers of 16 entries and a head of 15, 47 entries of norm v * sqrt(47)
    infos = [client_info(f"c{i}", node_id=i + 1) for i in range(3)]
    nodes = {info.node_id: training_node(info, value=v) for info, v in zip(infos, (1.0, 5.0, 1000.0), strict=True)}
    privacy = PrivacySettings(mode="central", noise_multiplier=1e-9, clip_norm=1.0, delta=1e-5)
    strategy, grid = _prepare(nodes, privacy=privacy)
    seen: list[dict] = []
    strategy.callbacks = [_Collect(seen)]

    # Execute
    strategy.start(grid, num_rounds=1)
    np.testing.assert_allclose(strategy.state["m/t/head.bias"], np.full(3, 1 / np.sqrt(47)), rtol=1e-6)
    strategy.start_round = 2
    strategy.start(grid, num_rounds=3)

    # Assert: each update, the delta from what its client was sent, was scaled to norm 1 whatever its value (the
    # 1000x client counts like the others), so the global moves by 1 / sqrt(47) per entry and round
    np.testing.assert_allclose(strategy.state["m/layers.0.q.lora_A"], np.full((2, 4), 3 / np.sqrt(47)), rtol=1e-5)
    factors = {r["client"]: r["factor"] for r in seen if r["phase"] == "clipped" and r["round"] == 1}
    assert factors == pytest.approx(
        {"c0": 1 / np.sqrt(47), "c1": 1 / (5 * np.sqrt(47)), "c2": 1 / (1000 * np.sqrt(47))}
    )
    rows = [r for r in seen if r["phase"] == "privacy"]
    assert [r["round"] for r in rows] == [1, 2, 3]
    epsilons = [r["epsilon"] for r in rows]
    assert epsilons == sorted(epsilons) and len(set(epsilons)) == 3
    assert {(r["mode"], r["sample_rate"], r["delta"]) for r in rows} == {("central", 1.0, 1e-5)}
