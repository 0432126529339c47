"""Secure aggregation (SecAgg+) through a strategy's real round loop on the in-process grid: the strategy sees
only masked vectors, their unmasked mean is the plain layer-wise mean within the stated quantisation error, and
a client that leaves after sharing its keys leaves the round correct."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.inprocess import InProcessGrid, Node
from fedbrick_flower.mods import secure_aggregation_mod
from fedbrick_flower.records import ADAPTERS_KEY, from_array_record, to_array_record
from fedbrick_flower.scenario import apply_overrides, parse_scenario
from fedbrick_flower.strategies import build
from fedbrick_flower.strategies.aggregation import Robustness
from fedbrick_flower.strategies.fedavg import LayerwiseFedAvg
from fedbrick_flower.strategies.fedbrick import FedBRICK
from fedbrick_flower.strategies.secure_aggregation import SecAggParameters, SecureAggregationFailed, unmasked_sum
from tests.scenario.smoke import BASE

from .loopback import client_info, training_node

PARAMETERS = SecAggParameters()


def _random_node(info: ClientInfo, seed: int, scale: float = 1.0) -> Node:
    """``training_node`` whose trained tensors are seeded random values in ±scale (a zero-free update)."""
    plain = training_node(info)
    rng = np.random.default_rng(seed)

    def answer(message: Message) -> Message:
        reply = plain(message)
        if message.metadata.message_type == MessageType.TRAIN and not reply.has_error():
            arrays = from_array_record(reply.content[ADAPTERS_KEY])
            noisy = {n: rng.uniform(-scale, scale, v.shape).astype(np.float32) for n, v in arrays.items()}
            reply.content[ADAPTERS_KEY] = to_array_record(noisy)
        return reply

    return answer


def _secure(node: Node, node_id: int) -> Node:
    """``node`` behind the package's secure-aggregation mod, with its own state, as a SuperNode runs a ClientApp."""
    context = Context(run_id=1, node_id=node_id, node_config={}, state=RecordDict(), run_config={})
    return lambda message: secure_aggregation_mod(message, context, lambda inner, _: node(inner))


def _federation() -> dict[int, ClientInfo]:
    """Four clients at different depths, with different training-set sizes, on two models."""
    return {
        1: client_info("deep", 1, budget=3, num_layers=3, examples=40),
        2: client_info("mid", 2, budget=2, num_layers=3, examples=25),
        3: client_info("edge", 3, budget=1, num_layers=3, examples=10),
        4: dataclasses.replace(client_info("other", 4, budget=2, examples=30), model="m2"),
    }


def _run(nodes: dict[int, Node], secure: bool, wrap=None) -> LayerwiseFedAvg:
    """One round of layer-wise FedAvg on ``nodes``; ``wrap(strategy)`` may spy on it before the round."""
    strategy = LayerwiseFedAvg(
        seed=0, min_clients=len(nodes), round_timeout=0.5, secure_aggregation=PARAMETERS if secure else None
    )
    if wrap is not None:
        wrap(strategy)
    grid = InProcessGrid({nid: _secure(node, nid) if secure else node for nid, node in nodes.items()})
    strategy.start(grid, num_rounds=1, timeout=0.5)
    return strategy


def _max_error(secure: dict[str, np.ndarray], plain: dict[str, np.ndarray]) -> float:
    assert set(secure) == set(plain)
    return max(float(np.max(np.abs(secure[key] - plain[key]))) for key in plain)


def test_aggregate_train_sees_only_masked_vectors() -> None:
    # Prepare: spy on what the aggregation step receives
    infos = _federation()
    seen: list[Message] = []

    def spy(strategy: LayerwiseFedAvg) -> None:
        aggregate_train = strategy.aggregate_train

        def recorded(server_round: int, replies):
            replies = list(replies)
            seen.extend(replies)
            return aggregate_train(server_round, replies)

        strategy.aggregate_train = recorded

    # Execute
    strategy = _run({nid: _random_node(info, nid) for nid, info in infos.items()}, secure=True, wrap=spy)

    # Assert: one reply per client, no tensor in the clear, a masked vector of integers modulo 2**32 each
    assert len(seen) == 4 and strategy.state
    for reply in seen:
        assert ADAPTERS_KEY not in reply.content.array_records
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        vectors = reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
        assert len(vectors) == 3  # the weight factor, the padded values, the holder counts
    # A masked value is uniform on [0, 2**32): no trace of the quantised update (which sits near 2**21).
    values = np.concatenate(
        [bytes_to_ndarray(r.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS][1]) for r in seen]
    ).astype(np.float64)
    assert values.max() > 2**31 and values.mean() == pytest.approx(2**31, rel=0.1)


def test_secure_mean_equals_the_plain_mean_within_the_stated_error() -> None:
    # Prepare
    infos = _federation()

    # Execute: the same updates, aggregated in the clear and through SecAgg+
    plain = _run({nid: _random_node(info, nid) for nid, info in infos.items()}, secure=False)
    secure = _run({nid: _random_node(info, nid) for nid, info in infos.items()}, secure=True)

    # Assert: every tensor, of every depth and both models, within the bound (and not bit-identical: quantised)
    weights = [info.num_train_examples for info in infos.values()]
    error = _max_error(secure.state, plain.state)
    assert 0 < error <= PARAMETERS.error_bound(min(weights) / max(weights))
    assert {"m/layers.2.q.lora_A", "m2/layers.1.q.lora_A", "m2/t/head.bias"} <= set(secure.state)
    assert "m2/layers.2.q.lora_A" not in secure.state  # nobody of m2 holds layer 2: absent, as in the plain mean


def test_a_client_leaving_after_sharing_its_keys_leaves_the_round_correct() -> None:
    # Prepare: client 4 answers setup and share-keys, then goes silent before it sends its masked vector
    infos = _federation()
    grids: list[InProcessGrid] = []

    def leaves_at_collect(node: Node) -> Node:
        def answer(message: Message) -> Message:
            configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is not None and configs[Key.STAGE] == Stage.COLLECT_MASKED_VECTORS:
                grids[0].silent = grids[0].silent | {4}
            return node(message)

        return answer

    nodes = {nid: _secure(_random_node(info, nid), nid) for nid, info in infos.items()}
    nodes[4] = leaves_at_collect(nodes[4])
    strategy = LayerwiseFedAvg(seed=0, min_clients=4, round_timeout=0.2, secure_aggregation=PARAMETERS)
    grid = InProcessGrid(nodes)
    grids.append(grid)
    strategy._register_new_nodes(grid)

    # Execute
    strategy._exchange_train(grid, strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid), 1)
    _, metrics = strategy.aggregate_train(1, strategy._last_replies)

    # Assert: its key shares rebuilt its pairwise masks; the mean is the plain one over the three that stayed
    secure, _ = strategy._secure
    assert secure.keyed == {1, 2, 3, 4} and set(secure.masked) == {1, 2, 3}
    assert metrics["num-updates"] == 3
    plain = _run({nid: _random_node(infos[nid], nid) for nid in (1, 2, 3)}, secure=False)
    weights = [infos[nid].num_train_examples for nid in (1, 2, 3)]
    assert _max_error(strategy.state, plain.state) <= PARAMETERS.error_bound(min(weights) / max(weights))


def _prepared_round(nodes: dict[int, Node]) -> LayerwiseFedAvg:
    """A secure strategy that has registered ``nodes`` and run round 1's protocol up to its aggregation."""
    strategy = LayerwiseFedAvg(seed=0, min_clients=len(nodes), round_timeout=0.2, secure_aggregation=PARAMETERS)
    grid = InProcessGrid(nodes)
    strategy._register_new_nodes(grid)
    strategy._exchange_train(grid, strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid), 1)
    return strategy


def test_an_update_beyond_the_clipping_range_is_refused_and_the_round_goes_on() -> None:
    # Prepare: client "edge" (node 3) has values up to ±100, which SecAgg+ would clip to ±8 without a word
    infos = _federation()
    scales = {3: 100.0}
    strategy = _prepared_round(
        {nid: _secure(_random_node(info, nid, scales.get(nid, 1.0)), nid) for nid, info in infos.items()}
    )

    # Execute
    _, metrics = strategy.aggregate_train(1, strategy._last_replies)

    # Assert: its node refused to mask it, the server logs the reason, the three others are aggregated
    rejected = [row for row in strategy._log_rows if row["phase"] == "rejected"]
    assert [row["client"] for row in rejected] == ["edge"] and "within ±8.0" in rejected[0]["reason"]
    assert metrics["num-updates"] == 3 and strategy.state


def test_too_few_clients_for_the_threshold_fail_the_unmasking() -> None:
    # Prepare: a round whose masks cannot be removed (no shares collected)
    infos = _federation()
    strategy = _prepared_round({nid: _secure(_random_node(info, nid), nid) for nid, info in infos.items()})
    secure, _ = strategy._secure
    secure.shares = {nid: shares[:1] for nid, shares in secure.shares.items()}

    # Execute / Assert
    with pytest.raises(SecureAggregationFailed, match="threshold"):
        unmasked_sum(secure)


def test_a_strategy_refuses_defences_that_need_individual_updates() -> None:
    with pytest.raises(ValueError, match="privacy.secure_aggregation"):
        LayerwiseFedAvg(robustness=Robustness(outlier_norm_multiple=3.0), secure_aggregation=PARAMETERS)
    with pytest.raises(ValueError, match="privacy.secure_aggregation"):
        LayerwiseFedAvg(robustness=Robustness(aggregation="median"), secure_aggregation=PARAMETERS)


def test_norm_screening_is_off_with_a_logged_line_under_secure_aggregation(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a scenario whose server screens norms by default (not written in the file)
    scenario = parse_scenario(apply_overrides(BASE, {"privacy.secure_aggregation": True}))
    scenario = dataclasses.replace(scenario, server=dataclasses.replace(scenario.server, outlier_norm_multiple=5.0))
    lines: list[str] = []
    monkeypatch.setattr(build, "log", lambda level, text, *args: lines.append(text % args))

    # Execute
    arguments = build.runtime_arguments(scenario, [])

    # Assert
    assert arguments["robustness"].outlier_norm_multiple is None
    assert arguments["secure_aggregation"] == SecAggParameters()
    assert lines == [
        "privacy.secure_aggregation: norm screening (server.outlier_norm_multiple) is off: "
        "the server sees no individual update"
    ]


def test_fedbrick_under_secure_aggregation_keeps_its_bricks_on_the_device() -> None:
    # Execute / Assert: refused by the strategy's constructor, which the pre-flight runs at load
    with pytest.raises(ValueError, match="algorithm_params.upload_bricks: must be false under"):
        FedBRICK(distill=False, secure_aggregation=PARAMETERS)
    assert FedBRICK(distill=False, upload_bricks=False, secure_aggregation=PARAMETERS).secure_aggregation
