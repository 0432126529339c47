"""HetLoRA: zero-pad, norm-weighted mean, truncation to each client's rank, accepted rank pruning."""

from __future__ import annotations

import numpy as np
import pytest

from fedbrick_flower.records import LORA_RANK_KEY
from fedbrick_flower.registry import HETLORA_ALPHA_KEY
from fedbrick_flower.strategies.aggregation import layerwise_average
from fedbrick_flower.strategies.hetlora import HetLoRA
from tests.strategies.rank_clients import ALPHA, factors, prepared, rank_client, scaled_product, update


def test_equal_ranks_and_equal_norms_reduce_to_fedavg_of_the_factors() -> None:
    # Prepare: two rank-2 clients; the second's B is rescaled so that both updates have the same norm
    first, second = rank_client("a", 2), rank_client("b", 2)
    a1, b1 = factors(2, seed=0)
    a2, b2 = factors(2, seed=1)
    b2 = b2 * (np.linalg.norm(b1 @ a1) / np.linalg.norm(b2 @ a2))
    updates = [update(first, {0: (a1, b1)}, 10), update(second, {0: (a2, b2)}, 10)]
    strategy = prepared(HetLoRA, [first, second])

    # Execute
    strategy.aggregate(1, updates)
    arrays, config = strategy.payload(first, 2, "train")

    # Assert
    expected = layerwise_average([(u.client.client_id, u.arrays, 10.0) for u in updates])
    np.testing.assert_allclose(arrays["layers.0.q.lora_A"], expected["layers.0.q.lora_A"], rtol=1e-5)
    np.testing.assert_allclose(arrays["layers.0.q.lora_B"], expected["layers.0.q.lora_B"], rtol=1e-5)
    assert config[LORA_RANK_KEY] == 2


def test_zero_padded_mean_is_weighted_by_update_norm_by_hand() -> None:
    # Prepare: rank 1 with ||dW|| = (8 / 1) * 1 = 8; rank 2 with ||dW|| = (8 / 2) * 6 = 24 (weights 1/4, 3/4)
    low, high = rank_client("low", 1), rank_client("high", 2)
    a_low, b_low = np.zeros((1, 4), np.float32), np.zeros((5, 1), np.float32)
    a_low[0, 0], b_low[0, 0] = 1.0, 1.0
    a_high, b_high = np.zeros((2, 4), np.float32), np.zeros((5, 2), np.float32)
    a_high[1, 1], b_high[1, 1] = 2.0, 3.0
    strategy = prepared(HetLoRA, [low, high], scaling="alpha")

    # Execute
    strategy.aggregate(1, [update(low, {0: (a_low, b_low)}, 1), update(high, {0: (a_high, b_high)}, 1000)])

    # Assert: scale-one A rows are 8 * a_low and 4 * a_high; the example counts play no part
    a, b = strategy.state["m/layers.0.q.lora_A"], strategy.state["m/layers.0.q.lora_B"]
    expected_a = np.zeros((2, 4))
    expected_a[0, 0], expected_a[1, 1] = 0.25 * 8.0, 0.75 * 4.0 * 2.0
    expected_b = np.zeros((5, 2))
    expected_b[0, 0], expected_b[1, 1] = 0.25, 0.75 * 3.0
    np.testing.assert_allclose(a, expected_a, rtol=1e-6)
    np.testing.assert_allclose(b, expected_b, rtol=1e-6)


def test_each_client_receives_its_leading_components_at_its_own_scale() -> None:
    # Prepare
    low, high = rank_client("low", 2), rank_client("high", 4)
    strategy = prepared(HetLoRA, [low, high], scaling="alpha")
    strategy.aggregate(1, [update(high, {0: factors(4, 0), 1: factors(4, 1)}, 10)])
    global_a, global_b = strategy.state["m/layers.0.q.lora_A"], strategy.state["m/layers.0.q.lora_B"]

    # Execute
    arrays, config = strategy.payload(low, 2, "train")

    # Assert: (alpha / 2) B_low A_low is the global product truncated to the first 2 components
    assert arrays["layers.0.q.lora_A"].shape == (2, 4) and config[LORA_RANK_KEY] == 2
    np.testing.assert_allclose(
        scaled_product(arrays["layers.0.q.lora_A"], arrays["layers.0.q.lora_B"]),
        global_b[:, :2].astype(np.float64) @ global_a[:2],
        rtol=1e-5,
    )
    np.testing.assert_allclose(arrays["layers.0.q.lora_A"], global_a[:2] / (ALPHA / 2), rtol=1e-6)


def test_paper_scaling_weights_by_the_unscaled_product_by_hand() -> None:
    # Prepare: the same two clients as above; at scale 1 (the paper's dW_k = B_k A_k): ||dW|| = 1 and 6
    low, high = rank_client("low", 1), rank_client("high", 2)
    a_low, b_low = np.zeros((1, 4), np.float32), np.zeros((5, 1), np.float32)
    a_low[0, 0], b_low[0, 0] = 1.0, 1.0
    a_high, b_high = np.zeros((2, 4), np.float32), np.zeros((5, 2), np.float32)
    a_high[1, 1], b_high[1, 1] = 2.0, 3.0
    strategy = prepared(HetLoRA, [low, high])

    # Execute
    strategy.aggregate(1, [update(low, {0: (a_low, b_low)}, 1), update(high, {0: (a_high, b_high)}, 1)])

    # Assert: weights 1/7 and 6/7, no scale folded into A
    a, b = strategy.state["m/layers.0.q.lora_A"], strategy.state["m/layers.0.q.lora_B"]
    expected_a, expected_b = np.zeros((2, 4)), np.zeros((5, 2))
    expected_a[0, 0], expected_a[1, 1] = 1.0 / 7.0, 6.0 / 7.0 * 2.0
    expected_b[0, 0], expected_b[1, 1] = 1.0 / 7.0, 6.0 / 7.0 * 3.0
    np.testing.assert_allclose(a, expected_a, rtol=1e-6)
    np.testing.assert_allclose(b, expected_b, rtol=1e-6)


@pytest.mark.parametrize(("scaling", "expected_low_weight"), [("paper", 0.5), ("alpha", 8.0 / 9.0)])
def test_a_small_rank_weighs_as_much_as_a_large_one_with_the_same_factors(
    scaling: str, expected_low_weight: float
) -> None:
    # Prepare: rank 2 and rank 16 clients whose B A is the same matrix (components beyond 2 are zero); under a
    # shared alpha the rank-2 scale alpha / 2 is 8 times the rank-16 one, under the paper's both are 1
    low, high = rank_client("low", 2), rank_client("high", 16)
    a_low, b_low = factors(2, seed=0)
    a_high, b_high = np.zeros((16, 4), np.float32), np.zeros((5, 16), np.float32)
    a_high[:2], b_high[:, :2] = a_low, b_low
    strategy = HetLoRA(seed=0, alpha=16.0, scaling=scaling)
    strategy.clients = {c.client_id: c for c in (low, high)}
    for client in (low, high):
        strategy.layers_for(client, 1, "train")

    # Execute
    strategy.aggregate(1, [update(low, {0: (a_low, b_low)}, 10), update(high, {0: (a_high, b_high)}, 10)])

    # Assert: B is mixed without a scale, so its leading columns are w_low B_low + w_high B_low
    # and A's are the scale-one rows s_low A_low and 1 * A_low (the rank-16 scale is 16 / 16 in both cases)
    a, b = strategy.state["m/layers.0.q.lora_A"], strategy.state["m/layers.0.q.lora_B"]
    low_scale = {"paper": 1.0, "alpha": 8.0}[scaling]
    np.testing.assert_allclose(b[:, :2], b_low, rtol=1e-5)
    mixed_scale = expected_low_weight * low_scale + (1.0 - expected_low_weight)
    np.testing.assert_allclose(a[:2], mixed_scale * a_low, rtol=1e-5)


def test_pruning_is_on_by_default_and_each_client_trains_at_scale_one() -> None:
    # Prepare
    client = rank_client("c", 4)
    strategy = prepared(HetLoRA, [client])
    strategy.aggregate(1, [update(client, {0: factors(4, 0)}, 10)])

    # Execute
    arrays, config = strategy.payload(client, 2, "train")

    # Assert: pruning settings travel, alpha equals the rank, and A is the stored one unscaled
    assert strategy.rank_pruning and config["prune-gamma"] == 0.5
    assert config[HETLORA_ALPHA_KEY] == 4.0
    np.testing.assert_allclose(arrays["layers.0.q.lora_A"], strategy.state["m/layers.0.q.lora_A"], rtol=1e-6)


def test_components_nobody_held_this_round_keep_their_value() -> None:
    # Prepare: round 1 at rank 4, round 2 only a rank-2 client holds the module
    low, high = rank_client("low", 2), rank_client("high", 4)
    strategy = prepared(HetLoRA, [low, high])
    strategy.aggregate(1, [update(high, {0: factors(4, 0)}, 10)])
    before = strategy.state["m/layers.0.q.lora_A"].copy()

    # Execute
    strategy.aggregate(2, [update(low, {0: factors(2, 3)}, 10)])

    # Assert
    after = strategy.state["m/layers.0.q.lora_A"]
    assert after.shape == (4, 4)
    np.testing.assert_array_equal(after[2:], before[2:])
    assert not np.allclose(after[:2], before[:2])


def test_a_pruned_clients_new_rank_is_accepted_from_the_next_round_on() -> None:
    # Prepare
    client = rank_client("c", 4)
    strategy = prepared(HetLoRA, [client], rank_pruning=True, prune_gamma=0.5)
    reply = update(client, {0: factors(4, 0), 1: factors(4, 1)}, 10)
    reply.metrics[LORA_RANK_KEY] = 2.0

    # Execute
    assert strategy.expected_update(client, 1)["layers.0.q.lora_A"] == (4, 4)  # this round: the old shape
    strategy.aggregate(1, [reply])
    arrays, config = strategy.payload(client, 2, "train")

    # Assert
    assert strategy.expected_update(client, 2)["layers.0.q.lora_A"] == (2, 4)
    assert strategy.expected_update(client, 2)["layers.1.q.lora_B"] == (5, 2)
    assert arrays["layers.0.q.lora_A"].shape == (2, 4) and config[LORA_RANK_KEY] == 2
    assert config["prune-gamma"] == 0.5
    assert strategy.summary_fields()["final_ranks"] == {"c": 2}


@pytest.mark.parametrize(("pruning", "reported"), [(False, 2.0), (True, 8.0), (True, 0.0), (True, 1.5)])
def test_an_unexpected_reported_rank_is_ignored(pruning: bool, reported: float) -> None:
    # Prepare
    client = rank_client("c", 4)
    strategy = prepared(HetLoRA, [client], rank_pruning=pruning)
    reply = update(client, {0: factors(4, 0)}, 10)
    reply.metrics[LORA_RANK_KEY] = reported

    # Execute
    strategy.aggregate(1, [reply])

    # Assert
    assert strategy.client_rank(client) == 4


def test_checkpoint_keeps_factors_and_pruned_ranks() -> None:
    # Prepare
    client = rank_client("c", 4)
    strategy = prepared(HetLoRA, [client], rank_pruning=True)
    reply = update(client, {0: factors(4, 0)}, 10)
    reply.metrics[LORA_RANK_KEY] = 2.0
    strategy.aggregate(1, [reply])
    restored = prepared(HetLoRA, [client], rank_pruning=True)

    # Execute
    restored.load_algorithm_state(*strategy.algorithm_state())

    # Assert
    assert restored.client_rank(client) == 2
    np.testing.assert_array_equal(restored.state["m/layers.0.q.lora_A"], strategy.state["m/layers.0.q.lora_A"])
