"""FlexLoRA: weighted mean of the full products, truncated SVD per client rank, discarded spectrum share."""

from __future__ import annotations

import numpy as np
import pytest

from fedbrick_flower.records import LORA_RANK_KEY
from fedbrick_flower.strategies.flexlora import TRUNCATION_PHASE, FlexLoRA
from tests.strategies.rank_clients import factors, prepared, rank_client, scaled_product, update


def test_average_is_the_example_weighted_mean_of_the_scaled_products() -> None:
    # Prepare
    clients = [rank_client("r1", 1), rank_client("r2", 2), rank_client("r4", 4)]
    pairs = [factors(1, 0), factors(2, 1), factors(4, 2)]
    weights = [10, 30, 60]
    strategy = prepared(FlexLoRA, clients)

    # Execute
    strategy.aggregate(1, [update(c, {0: p}, n) for c, p, n in zip(clients, pairs, weights, strict=True)])
    a, b = strategy.global_factors("m")["layers.0.q"]

    # Assert
    expected = sum(n / 100 * scaled_product(*p) for p, n in zip(pairs, weights, strict=True))
    np.testing.assert_allclose(b @ a, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(strategy.state["m/layers.0.q.delta"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("client_index", [0, 1, 2])
def test_truncation_error_equals_the_discarded_spectrum(client_index: int) -> None:
    # Prepare
    clients = [rank_client("r1", 1), rank_client("r2", 2), rank_client("r4", 4)]
    pairs = [factors(1, 0), factors(2, 1), factors(4, 2)]
    strategy = prepared(FlexLoRA, clients)
    strategy.aggregate(1, [update(c, {0: p}, 10) for c, p in zip(clients, pairs, strict=True)])
    average = strategy.state["m/layers.0.q.delta"].astype(np.float64)
    client = clients[client_index]

    # Execute
    arrays, config = strategy.payload(client, 2, "train")
    rows = {r["client"]: r for r in strategy._log_rows if r["phase"] == TRUNCATION_PHASE}

    # Assert: the client's own scale reproduces the truncation, whose relative squared error is the share of
    # the spectrum beyond its rank, as logged for it
    rank = config[LORA_RANK_KEY]
    truncated = scaled_product(arrays["layers.0.q.lora_A"], arrays["layers.0.q.lora_B"])
    assert arrays["layers.0.q.lora_A"].shape == (rank, 4)
    error = np.linalg.norm(average - truncated) ** 2 / np.linalg.norm(average) ** 2
    s = np.linalg.svd(average, compute_uv=False)
    assert error == pytest.approx(np.sum(s[rank:] ** 2) / np.sum(s**2), rel=1e-4, abs=1e-7)
    assert rows[client.client_id]["discarded-energy"] == pytest.approx(error, rel=1e-4, abs=1e-7)
    assert rows[client.client_id]["rank"] == rank


def test_a_rank_above_the_averages_rank_receives_only_real_components() -> None:
    # Prepare: only a rank-1 client trained the module; a rank-4 client must not get three zero components
    low, high = rank_client("low", 1), rank_client("high", 4, layers=[1])
    strategy = prepared(FlexLoRA, [low, high])
    strategy.aggregate(1, [update(low, {0: factors(1, 0), 1: factors(1, 1)}, 10)])

    # Execute
    arrays, config = strategy.payload(high, 2, "train")

    # Assert: one component, at the rank-4 client's scale
    assert config[LORA_RANK_KEY] == 4
    assert arrays["layers.1.q.lora_A"].shape == (1, 4) and arrays["layers.1.q.lora_B"].shape == (5, 1)
    np.testing.assert_allclose(
        8.0 / 4 * arrays["layers.1.q.lora_B"].astype(np.float64) @ arrays["layers.1.q.lora_A"],
        strategy.state["m/layers.1.q.delta"],
        rtol=1e-5,
        atol=1e-6,
    )
    assert strategy.personalized_adapters(high)["layers.1.q.lora_A"].shape == (4, 4)


def test_restored_strategy_sends_the_same_payload() -> None:
    # Prepare
    clients = [rank_client("r2", 2), rank_client("r4", 4)]
    strategy = prepared(FlexLoRA, clients)
    strategy.aggregate(1, [update(c, {0: factors(r, r)}, 10) for c, r in zip(clients, [2, 4], strict=True)])
    restored = prepared(FlexLoRA, clients)

    # Execute
    restored.load_algorithm_state(*strategy.algorithm_state())

    # Assert
    before, _ = strategy.payload(clients[0], 2, "train")
    after, _ = restored.payload(clients[0], 2, "train")
    np.testing.assert_allclose(
        scaled_product(after["layers.0.q.lora_A"], after["layers.0.q.lora_B"]),
        scaled_product(before["layers.0.q.lora_A"], before["layers.0.q.lora_B"]),
        rtol=1e-5,
        atol=1e-6,
    )
