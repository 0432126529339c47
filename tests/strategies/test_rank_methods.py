"""The shared base of the rank-heterogeneous strategies: schemas at a rank, alpha/r folding, the collapse row."""

from __future__ import annotations

import numpy as np
import pytest

from fedbrick_flower.strategies.flexlora import FlexLoRA
from fedbrick_flower.strategies.flora import FLoRA
from fedbrick_flower.strategies.hetlora import HetLoRA
from fedbrick_flower.strategies.rank_methods import Holder, at_rank, collapse_row, lora_tensors, schema_rank
from tests.strategies.rank_clients import ALPHA, factors, prepared, rank_client, scaled_product, update

STRATEGIES = [HetLoRA, FlexLoRA, FLoRA]


def test_schema_rank_and_at_rank() -> None:
    # Prepare
    client = rank_client("c", 4)

    # Execute
    shapes = at_rank(client.schema([1]), 2)

    # Assert
    assert schema_rank(client.layer_schema) == 4
    assert shapes == {
        "layers.1.q.lora_A": (2, 4),
        "layers.1.q.lora_B": (5, 2),
        "head.weight": (3, 4),
        "head.bias": (3,),
    }


@pytest.mark.parametrize("strategy_class", STRATEGIES)
def test_same_update_at_different_ranks_gets_equal_weight(strategy_class: type) -> None:
    # Prepare: the rank-4 client's factors are the rank-2 client's, zero-padded and rescaled so that
    # (alpha / 4) B4 A4 == (alpha / 2) B2 A2. Mixing unscaled factors would halve the rank-4 client's share.
    low, high = rank_client("low", 2), rank_client("high", 4)
    a2, b2 = factors(2, seed=0)
    a4 = np.pad(a2 * 2.0, ((0, 2), (0, 0)))
    b4 = np.pad(b2, ((0, 0), (0, 2)))
    # The case is built at the shared alpha (HetLoRA's default trains every client at scale 1 instead)
    shared_alpha = {"scaling": "alpha"} if strategy_class is HetLoRA else {}
    strategy = prepared(strategy_class, [low, high], **shared_alpha)
    assert np.allclose(scaled_product(a4, b4), scaled_product(a2, b2))

    # Execute
    strategy.aggregate(1, [update(low, {0: (a2, b2)}, 10), update(high, {0: (a4, b4)}, 10)])
    a, b = strategy.global_factors("m")["layers.0.q"]

    # Assert: the global update is exactly that dW. Unscaled factors would give the rank-4 client half the
    # product (FlexLoRA, FLoRA: 0.75 dW) or a different norm weight (HetLoRA).
    np.testing.assert_allclose(b @ a, scaled_product(a2, b2), rtol=1e-5, atol=1e-5)
    assert "layers.1.q" not in strategy.global_factors("m")


def test_global_adapters_load_at_one_rank_with_the_right_scale() -> None:
    # Prepare: scale-one factors of ranks 1 and 3
    first = factors(1, seed=1)
    second = factors(3, seed=2)

    # Execute
    tensors = lora_tensors({"layers.0.q": first, "layers.1.q": second}, ALPHA)

    # Assert: every module at rank 3, and peft's (alpha / 3) B A gives back each plain product
    assert tensors["layers.0.q.lora_A"].shape == (3, 4) and tensors["layers.0.q.lora_B"].shape == (5, 3)
    for layer, (a, b) in ((0, first), (1, second)):
        got = scaled_product(tensors[f"layers.{layer}.q.lora_A"], tensors[f"layers.{layer}.q.lora_B"])
        np.testing.assert_allclose(got, b.astype(np.float64) @ a, rtol=1e-5)


def test_collapse_row_pools_the_energy_beyond_each_modules_smallest_rank() -> None:
    # Prepare: module x held by ranks 1 and 2 (spectrum 3, 2, 1: 5 of 14 beyond rank 1); module y held by a
    # rank-2 client only (spectrum 2, 1, 1: 1 of 6 beyond rank 2)
    a1, a2 = np.zeros((1, 4)), np.zeros((2, 4))
    groups = {
        "x": [Holder("p", a1, np.zeros((5, 1)), 1.0), Holder("q", a2, np.zeros((5, 2)), 1.0)],
        "y": [Holder("q", a2, np.zeros((5, 2)), 1.0)],
    }
    spectra = {"x": np.array([3.0, 2.0, 1.0]), "y": np.array([2.0, 1.0, 1.0])}

    # Execute
    row = collapse_row(4, groups, spectra)

    # Assert
    assert row["phase"] == "rank-diagnostic" and row["round"] == 4
    assert row["energy-beyond-min-rank"] == pytest.approx((5.0 + 1.0) / (14.0 + 6.0))
    assert (row["min-rank"], row["max-rank"], row["modules"]) == (1, 2, 2)


@pytest.mark.parametrize("strategy_class", STRATEGIES)
def test_every_method_logs_the_collapse_diagnostic_and_averages_heads(strategy_class: type) -> None:
    # Prepare
    low, high = rank_client("low", 1), rank_client("high", 4, layers=[1])
    strategy = prepared(strategy_class, [low, high])

    # Execute
    strategy.aggregate(
        1,
        [update(low, {0: factors(1, 0), 1: factors(1, 1)}, 30, head=1.0), update(high, {1: factors(4, 2)}, 10)],
    )
    rows = [r for r in strategy._log_rows if r["phase"] == "rank-diagnostic"]

    # Assert: layer 0 is held by rank 1 only, layer 1 by ranks 1 and 4; heads are FedAvg'ed by examples
    assert len(rows) == 1 and rows[0]["modules"] == 2 and (rows[0]["min-rank"], rows[0]["max-rank"]) == (1, 4)
    assert 0.0 < rows[0]["energy-beyond-min-rank"] < 1.0
    np.testing.assert_allclose(strategy.state["m/t/head.bias"], [0.75, 0.75, 0.75])
