"""Tests for the FedBRICK server half: payloads, layer-wise aggregation, BRICK state and server distillation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedbrick_flower.adapters.brick import brick_schema
from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.clients.profile import client_session
from fedbrick_flower.scenario import load_scenario
from fedbrick_flower.strategies.aggregation import Robustness
from fedbrick_flower.strategies.fedbrick import FedBRICK
from fedbrick_flower.strategies.replies import ClientUpdate

D, RANK, LAYERS = 16, 2, 4
LAYER_SCHEMA = {"attention.self.query.lora_A": [4, D], "attention.self.query.lora_B": [D, 4]}


def _client(client_id: str, budget: int, group: str = "g", fixed: list[int] | None = None) -> ClientInfo:
    return ClientInfo(
        client_id=client_id,
        model="m",
        task="t",
        group=group,
        model_type="bert",
        num_layers=LAYERS,
        budget=budget,
        fixed_layers=fixed,
        layer_schema=LAYER_SCHEMA,
        head_schema={"head.weight": [3, D], "head.bias": [3]},
        num_train_examples=10,
        hidden_size=D,
    )


def _strategy(**kwargs) -> FedBRICK:
    return FedBRICK(distill=False, brick_rank=RANK, seed=0, **kwargs)


def _update(strategy: FedBRICK, client: ClientInfo, value: float, examples: int = 10) -> ClientUpdate:
    arrays = {name: np.full(shape, value, np.float32) for name, shape in strategy.expected_update(client, 1).items()}
    return ClientUpdate(client, arrays, examples, {"num-examples": float(examples), "model-parameters": 1000.0})


def test_payload_holds_kept_lora_head_and_full_brick_set() -> None:
    # Prepare
    strategy = _strategy()
    client = _client("c", budget=2, fixed=[1, 3])
    strategy.state.update({"m/layers.1.attention.self.query.lora_A": np.ones((4, D), np.float32)})
    strategy.state.update({"m/layers.0.attention.self.query.lora_A": np.ones((4, D), np.float32)})
    strategy.state.update({"m/t/head.weight": np.ones((3, D), np.float32)})

    # Execute
    arrays, instructions = strategy.payload(client, server_round=1, phase="train")

    # Assert: LoRA of kept layers only (what the server holds), the head, and all L BRICKs of the group.
    bricks = brick_schema(range(LAYERS), D, RANK)
    assert set(arrays) == {"layers.1.attention.self.query.lora_A", "head.weight", *bricks}
    assert all(arrays[name].shape == shape for name, shape in bricks.items())
    assert instructions["layers"] == [1, 3] and instructions["brick-rank"] == RANK
    assert instructions["upload-bricks"] is True and instructions["lambda-w"] == 0.01


def test_fedra_allocation_is_seeded_and_within_budget() -> None:
    # Prepare
    strategy, again = _strategy(), _strategy()
    client = _client("c", budget=2)

    # Execute
    draws = [strategy.layers_for(client, r, "train") for r in range(1, 6)]
    repeated = [again.layers_for(client, r, "train") for r in range(1, 6)]

    # Assert: resample_layers is the FedBRICK default.
    assert draws == repeated
    assert all(len(layers) == 2 and layers == sorted(layers) for layers in draws)
    assert len({tuple(layers) for layers in draws}) > 1


def test_expected_update_follows_upload_flag() -> None:
    # Prepare
    client = _client("c", budget=2, fixed=[0, 2])
    with_bricks, without = _strategy(), _strategy(upload_bricks=False)
    for strategy in (with_bricks, without):
        strategy.payload(client, 1, "train")

    # Execute
    names_with = set(with_bricks.expected_update(client, 1))
    names_without = set(without.expected_update(client, 1))

    # Assert
    assert names_with - names_without == set(brick_schema(range(LAYERS), D, RANK))
    assert {n.split(".")[1] for n in names_without if n.startswith("layers.")} == {"0", "2"}


def test_aggregation_ignores_non_holders_and_keeps_groups_apart() -> None:
    # Prepare
    strategy = _strategy()
    a, b = _client("a", 1, group="g1", fixed=[0]), _client("b", 2, group="g2", fixed=[0, 1])
    for client in (a, b):
        strategy.payload(client, 1, "train")
    before_layer3 = strategy.bricks["m/g1/bricks.3.A1"].copy()

    # Execute
    strategy.aggregate(1, [_update(strategy, a, 1.0, examples=10), _update(strategy, b, 4.0, examples=30)])

    # Assert: layer 0 is a weighted mean of both holders, layer 1 only b's, layers 2-3 nobody's (no state).
    lora = "attention.self.query.lora_A"
    np.testing.assert_allclose(strategy.state[f"m/layers.0.{lora}"], 3.25)
    np.testing.assert_allclose(strategy.state[f"m/layers.1.{lora}"], 4.0)
    assert f"m/layers.2.{lora}" not in strategy.state
    # BRICKs: per group, never mixed across groups.
    np.testing.assert_allclose(strategy.bricks["m/g1/bricks.3.A1"], 1.0)
    np.testing.assert_allclose(strategy.bricks["m/g2/bricks.3.A1"], 4.0)
    assert not np.allclose(before_layer3, 1.0)


def test_a_median_aggregation_applies_to_the_lora_the_head_and_the_bricks() -> None:
    # Prepare: three clients of one group holding every layer; one far off and claiming many examples
    strategy = _strategy(robustness=Robustness(aggregation="median"))
    clients = [_client(name, LAYERS, fixed=list(range(LAYERS))) for name in ("a", "b", "c")]
    for client in clients:
        strategy.payload(client, 1, "train")
    updates = [_update(strategy, clients[0], 1.0), _update(strategy, clients[1], 2.0)]
    updates.append(_update(strategy, clients[2], 500.0, examples=1000))

    # Execute
    strategy.aggregate(1, updates)

    # Assert: the coordinate-wise median of 1, 2 and 500 is 2 for every kind of tensor
    np.testing.assert_allclose(strategy.state["m/layers.3.attention.self.query.lora_B"], 2.0)
    np.testing.assert_allclose(strategy.state["m/t/head.bias"], 2.0)
    np.testing.assert_allclose(strategy.bricks["m/g/bricks.2.B2"], 2.0)


def test_global_adapters_hold_no_bricks_and_state_round_trips() -> None:
    # Prepare: the group defaults to the task, so BRICK keys share the head's "{model}/{task}/" prefix.
    strategy = _strategy()
    client = _client("c", 2, group="t", fixed=[0, 1])
    strategy.clients["c"] = client
    strategy.payload(client, 1, "train")
    strategy.aggregate(1, [_update(strategy, client, 2.0)])

    # Execute
    adapters = strategy.global_adapters()[("m", "t")]
    arrays, meta = strategy.algorithm_state()
    restored = _strategy()
    restored.load_algorithm_state(arrays, json.loads(json.dumps(meta)))

    # Assert
    assert not any("bricks." in name for name in adapters)
    assert "head.weight" in adapters and "layers.0.attention.self.query.lora_A" in adapters
    assert set(restored.bricks) == set(strategy.bricks) and set(restored.state) == set(strategy.state)
    for key, value in {**strategy.bricks, **strategy.state}.items():
        np.testing.assert_array_equal({**restored.bricks, **restored.state}[key], value)
    assert restored.summary_fields() == strategy.summary_fields()


def test_storage_overhead_counts_the_bricks_a_client_runs() -> None:
    # Prepare
    strategy = _strategy()
    client = _client("c", 1, fixed=[2])
    strategy.payload(client, 1, "train")

    # Execute
    strategy.aggregate(1, [_update(strategy, client, 0.5)])
    fields = strategy.summary_fields()

    # Assert: 3 missing layers x 4 r d; the client's 1000 reported parameters include them.
    bricks = 3 * 4 * RANK * D
    assert fields["brick_storage_overhead"]["c"] == pytest.approx(bricks / (1000 - bricks))
    assert fields["brick_storage_overhead_max"] == fields["brick_storage_overhead"]["c"]


def test_server_distillation_lowers_layer_mse_on_proxy() -> None:
    # Prepare: the tiny random-init BERT scenario, its clients' real profiles, and real updates: each client
    # uploads the BRICK set it received shifted by a constant, as a trained client returns a moved set.
    scenario = load_scenario("fedbrick-tiny")
    params = {**scenario.algorithm_params, "distill_epochs": 5, "distill_lr": 1e-2}
    strategy = FedBRICK.from_scenario(scenario, seed=0, **params)
    updates = []
    for shift, profile in zip((0.01, 0.03), scenario.clients[:2], strict=True):
        info = ClientInfo.from_json(client_session(scenario, profile).describe(("lora", "brick")).to_json(), 0)
        strategy.clients[info.client_id] = info
        arrays, _ = strategy.payload(info, 1, "train")
        expected = strategy.expected_update(info, 1)
        sent = {name: arrays.get(name, np.zeros(shape, np.float32)) + shift for name, shape in expected.items()}
        updates.append(ClientUpdate(info, sent, 10, {"num-examples": 10.0, "model-parameters": 1e6}))
    warm_start = {n: (updates[0].arrays[n] + updates[1].arrays[n]) / 2 for n in updates[0].arrays if "bricks." in n}

    # Execute
    strategy.aggregate(1, updates)

    # Assert: one row per layer of the single (model, group); the distillation started from the mean of the
    # uploaded BRICKs (its MSE before is that warm start's) and lowered every layer's MSE.
    rows = [r for r in strategy._log_rows if r["phase"] == "distill"]
    assert [(r["group"], r["layer"]) for r in rows] == [("bbc", g) for g in range(4)]
    assert all(r["mse_after"] < r["mse_before"] for r in rows)
    moved = [strategy.bricks[f"tiny-bert/bbc/{n}"] - value for n, value in warm_start.items()]
    assert all(np.abs(delta).max() > 0 for delta in moved)  # distillation changed the warm-started BRICKs
