"""FLoRA: the stack reproduces sum_k p_k dW_k, the download grows with the clients, catch-up after pruning."""

from __future__ import annotations

import numpy as np

from fedbrick_flower.registry import FLORA_SEGMENTS_KEY as SEGMENTS_KEY
from fedbrick_flower.strategies.flora import RANK_PHASE, STACK_PHASE, FLoRA
from tests.strategies.rank_clients import factors, prepared, rank_client, scaled_product, update

RANKS = [1, 4, 8]
EXAMPLES = [10, 30, 60]


def _round_one() -> tuple[FLoRA, list, list]:
    clients = [rank_client(f"r{r}", r) for r in RANKS]
    pairs = [factors(r, seed) for seed, r in enumerate(RANKS)]
    strategy = prepared(FLoRA, clients)
    strategy.aggregate(1, [update(c, {0: p, 1: p}, n) for c, p, n in zip(clients, pairs, EXAMPLES, strict=True)])
    return strategy, clients, pairs


def test_stack_reproduces_the_weighted_sum_of_products() -> None:
    # Prepare
    strategy, clients, pairs = _round_one()

    # Execute
    arrays, config = strategy.payload(clients[0], 2, "train")

    # Assert: one block of round 1 at rank 1 + 4 + 8, and B A = sum_k p_k (alpha / r_k) B_k A_k
    expected = sum(n / 100 * scaled_product(*p) for p, n in zip(pairs, EXAMPLES, strict=True))
    a, b = arrays["layers.0.q.lora_A"], arrays["layers.0.q.lora_B"]
    assert a.shape == (13, 4) and b.shape == (5, 13)
    assert config[SEGMENTS_KEY] == {"0": [[1, 1, 13]], "1": [[1, 1, 13]]}
    np.testing.assert_allclose(b.astype(np.float64) @ a, expected, rtol=1e-5, atol=1e-6)


def test_download_grows_with_the_number_of_clients() -> None:
    # Prepare
    small = prepared(FLoRA, [rank_client("a", 2), rank_client("b", 2)])
    clients = [rank_client(f"c{i}", 2) for i in range(6)]
    large = prepared(FLoRA, clients)

    # Execute
    small.aggregate(1, [update(c, {0: factors(2, i)}, 10) for i, c in enumerate(small.clients.values())])
    large.aggregate(1, [update(c, {0: factors(2, i)}, 10) for i, c in enumerate(clients)])
    small_rows = [r for r in small._log_rows if r["phase"] == STACK_PHASE]
    large_rows = [r for r in large._log_rows if r["phase"] == STACK_PHASE]

    # Assert
    assert small_rows[0]["stack-rank-max"] == 4 and large_rows[0]["stack-rank-max"] == 12
    assert large_rows[0]["stack-bytes"] == 3 * small_rows[0]["stack-bytes"]
    assert large.payload(clients[0], 2, "train")[0]["layers.0.q.lora_A"].shape == (12, 4)


def test_partial_depth_stacks_each_layer_over_its_holders() -> None:
    # Prepare: the rank-8 client holds only layer 1
    deep, edge = rank_client("deep", 1), rank_client("edge", 8, layers=[1])
    strategy = prepared(FLoRA, [deep, edge])

    # Execute
    strategy.aggregate(
        1, [update(deep, {0: factors(1, 0), 1: factors(1, 1)}, 10), update(edge, {1: factors(8, 2)}, 10)]
    )
    arrays, config = strategy.payload(deep, 2, "train")

    # Assert
    assert config[SEGMENTS_KEY] == {"0": [[1, 1, 1]], "1": [[1, 1, 9]]}
    np.testing.assert_allclose(
        arrays["layers.0.q.lora_B"].astype(np.float64) @ arrays["layers.0.q.lora_A"],
        scaled_product(*factors(1, 0)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_acknowledged_rounds_are_pruned_and_a_lagging_client_gets_the_exact_cumulative_update() -> None:
    # Prepare: round 1 by everyone; round 2's payloads offer round 1; only r1 and r4 reply in round 2
    strategy, clients, _ = _round_one()
    for client in clients:
        strategy.payload(client, 2, "train")
    strategy.aggregate(
        2, [update(c, {0: factors(c_rank, 10 + c_rank)}, 10) for c, c_rank in zip(clients[:2], RANKS[:2], strict=True)]
    )

    # Execute
    lagging, config_lagging = strategy.payload(clients[2], 3, "train")  # never acknowledged anything
    current, config_current = strategy.payload(clients[0], 3, "train")

    # Assert: round 1 is pruned (everyone who merged anything has merged it); r8 gets rounds 1..2 as one exact
    # block and r1 gets round 2's stack (ranks 1 + 4) for layer 0; nobody trained layer 1 in round 2
    assert sorted(strategy.stacks) == [2]
    assert config_current[SEGMENTS_KEY] == {"0": [[2, 2, 5]]}
    assert [block[:2] for block in config_lagging[SEGMENTS_KEY]["0"]] == [[1, 2]]
    merged = strategy.state["m/layers.0.q.merged"].astype(np.float64)
    product = lagging["layers.0.q.lora_B"].astype(np.float64) @ lagging["layers.0.q.lora_A"]
    np.testing.assert_allclose(product, merged, rtol=1e-4, atol=1e-5)


def test_global_factors_are_the_cumulative_merged_update_and_survive_a_checkpoint() -> None:
    # Prepare
    strategy, clients, _ = _round_one()
    for client in clients:
        strategy.payload(client, 2, "train")
    strategy.aggregate(2, [update(c, {0: factors(r, 20 + r)}, 10) for c, r in zip(clients, RANKS, strict=True)])
    restored = prepared(FLoRA, clients)

    # Execute
    restored.load_algorithm_state(*strategy.algorithm_state())
    a, b = restored.global_factors("m")["layers.0.q"]

    # Assert
    np.testing.assert_allclose(b @ a, strategy.state["m/layers.0.q.merged"], rtol=1e-4, atol=1e-5)
    assert sorted(restored.stacks) == [2] and restored.synced == strategy.synced
    assert restored.payload(clients[0], 3, "train")[1][SEGMENTS_KEY] == {
        "0": [[2, 2, 13]]
    }  # layer 1: merged, untouched since


def test_stacked_rank_row_counts_the_rank_of_the_stacked_update() -> None:
    # Prepare: ranks 2 and 1 on a 5 x 4 module; once with independent A, once with the rank-1 client's A the
    # first row of the rank-2 client's (one seed for every client: the stack spans only the larger row space)
    a_two, b_two = factors(2, 0)
    a_one, b_one = factors(1, 1)
    clients = [rank_client("r2", 2), rank_client("r1", 1)]
    fresh, shared = prepared(FLoRA, clients), prepared(FLoRA, clients)

    # Execute
    fresh.aggregate(1, [update(clients[0], {0: (a_two, b_two)}, 10), update(clients[1], {0: (a_one, b_one)}, 10)])
    shared.aggregate(1, [update(clients[0], {0: (a_two, b_two)}, 10), update(clients[1], {0: (a_two[:1], b_one)}, 10)])
    (fresh_row,) = [r for r in fresh._log_rows if r["phase"] == RANK_PHASE]
    (shared_row,) = [r for r in shared._log_rows if r["phase"] == RANK_PHASE]

    # Assert
    assert fresh_row == {
        "round": 1,
        "phase": RANK_PHASE,
        "module": "m/layers.0.q",
        "stacked-rank": 3,
        "rank-sum": 3,
        "max-client-rank": 2,
    }
    assert shared_row["stacked-rank"] == 2
