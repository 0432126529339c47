"""FedSA-LoRA server half: only A travels and is averaged over its holders; B and the head never reach it."""

from __future__ import annotations

import numpy as np

from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.strategies.fedsa import FedSALoRA, is_shared
from fedbrick_flower.strategies.replies import ClientUpdate

from .loopback import client_info


def _prepare_strategy() -> FedSALoRA:
    strategy = FedSALoRA(seed=0)
    strategy.clients = {
        "deep": client_info("deep", 1, budget=4, num_layers=4),
        "edge": client_info("edge", 2, budget=2, num_layers=4, fixed=[1, 3]),
    }
    return strategy


def _update(client: ClientInfo, layers: list[int], value: float, examples: int) -> ClientUpdate:
    arrays = {
        name: np.full(shape, value, np.float32) for name, shape in client.schema(layers).items() if is_shared(name)
    }
    return ClientUpdate(client=client, arrays=arrays, num_examples=examples, metrics={})


def test_only_lora_a_factors_are_shared() -> None:
    assert is_shared("layers.3.attention.self.query.lora_A")
    assert not is_shared("layers.3.attention.self.query.lora_B")
    assert not is_shared("head.weight")


def test_the_expected_update_is_the_a_factors_of_the_held_layers() -> None:
    # Prepare
    strategy = _prepare_strategy()
    strategy.payload(strategy.clients["edge"], server_round=1, phase="train")

    # Execute
    expected = strategy.expected_update(strategy.clients["edge"], server_round=1)

    # Assert
    assert expected == {"layers.1.q.lora_A": (2, 4), "layers.3.q.lora_A": (2, 4)}


def test_a_is_averaged_over_holders_and_only_a_goes_back_down() -> None:
    # Prepare
    strategy = _prepare_strategy()
    deep, edge = strategy.clients["deep"], strategy.clients["edge"]
    for client in (deep, edge):
        strategy.payload(client, server_round=1, phase="train")

    # Execute
    strategy.aggregate(1, [_update(deep, [0, 1, 2, 3], 1.0, 10), _update(edge, [1, 3], 4.0, 30)])
    arrays, config = strategy.payload(edge, server_round=2, phase="train")

    # Assert: layer 1 is held by both (weights 10 and 30), layer 0 by the deep client only; no B, no head.
    np.testing.assert_almost_equal(arrays["layers.1.q.lora_A"], np.full((2, 4), (10 + 120) / 40))
    np.testing.assert_almost_equal(strategy.state["m/layers.0.q.lora_A"], np.ones((2, 4)))
    assert sorted(arrays) == ["layers.1.q.lora_A", "layers.3.q.lora_A"]
    assert config["layers"] == [1, 3]
    assert strategy.global_adapters() == {}
