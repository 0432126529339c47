"""Robust layer-wise aggregation and the screening of poisoned updates: pure NumPy, values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fedbrick_flower.strategies.aggregation import (
    Robustness,
    ShapeMismatch,
    group_norms,
    layerwise_median,
    layerwise_trimmed_mean,
    norm_group,
)


def _one(value: float, name: str = "m/layers.0.q.lora_A") -> dict[str, np.ndarray]:
    return {name: np.array([value], np.float32)}


def test_median_is_taken_per_coordinate_over_the_holders_of_each_layer_only() -> None:
    # Prepare: layer 0 held by a, b, c; layer 1 only by a and c
    a = {"layers.0.x": np.array([1.0, 10.0]), "layers.1.x": np.array([2.0])}
    b = {"layers.0.x": np.array([5.0, -3.0])}
    c = {"layers.0.x": np.array([1000.0, 4.0]), "layers.1.x": np.array([6.0])}

    # Execute
    result = layerwise_median([("a", a, 1.0), ("b", b, 50.0), ("c", c, 1.0)])

    # Assert: unweighted (b's 50 examples do not move it); two holders give their midpoint
    np.testing.assert_allclose(result["layers.0.x"], [5.0, 4.0])
    np.testing.assert_allclose(result["layers.1.x"], [4.0])


def test_trimmed_mean_cuts_the_extremes_of_each_coordinate_over_its_holders() -> None:
    # Prepare: five holders of layer 0, two of layer 1
    values = [1.0, 2.0, 3.0, 4.0, 1000.0]
    contributions = [(f"c{i}", {"layers.0.x": np.array([v, -v])}, 1.0) for i, v in enumerate(values)]
    contributions += [("c0", {"layers.1.x": np.array([1.0])}, 1.0), ("c1", {"layers.1.x": np.array([3.0])}, 1.0)]

    # Execute
    result = layerwise_trimmed_mean(contributions, trim_fraction=0.2)

    # Assert: int(0.2 * 5) = 1 cut at each end: (2 + 3 + 4) / 3 = 3 and -3; int(0.2 * 2) = 0: plain mean 2
    np.testing.assert_allclose(result["layers.0.x"], [3.0, -3.0])
    np.testing.assert_allclose(result["layers.1.x"], [2.0])


def test_robust_means_name_both_sources_of_a_shape_mismatch() -> None:
    # Prepare
    contributions = [("a", {"x": np.zeros(2)}, 1.0), ("b", {"x": np.zeros(3)}, 1.0)]

    # Execute / Assert
    with pytest.raises(ShapeMismatch, match=r"x: a sent shape \(2,\) but b sent \(3,\)"):
        layerwise_median(contributions)


def test_the_selector_applies_the_configured_aggregation() -> None:
    # Prepare
    contributions = [("a", _one(1.0), 1.0), ("b", _one(2.0), 1.0), ("c", _one(9.0), 2.0)]

    # Execute
    means = {kind: Robustness(aggregation=kind).combine(contributions) for kind in ("mean", "median")}

    # Assert: weighted mean (1 + 2 + 18) / 4; median 2
    np.testing.assert_allclose(means["mean"]["m/layers.0.q.lora_A"], [5.25])
    np.testing.assert_allclose(means["median"]["m/layers.0.q.lora_A"], [2.0])


def test_norms_group_by_layer_brick_and_head_or_by_model() -> None:
    # Prepare
    tensors = {
        "m/layers.3.attention.self.query.lora_A": np.array([3.0]),
        "m/layers.3.attention.self.query.lora_B": np.array([4.0]),
        "m/bricks.1.A1": np.array([2.0]),
        "m/t/head.weight": np.array([[1.0, 2.0]]),
        "m/t/head.bias": np.array([2.0]),
    }

    # Execute
    by_layer = group_norms(tensors, "layer")
    whole = group_norms(tensors, "update")

    # Assert
    assert norm_group("m/layers.3.attention.self.query.lora_A", "layer") == "m/layers.3"
    assert by_layer == pytest.approx({"m/layers.3": 5.0, "m/bricks.1": 2.0, "m/t/head": 3.0})
    assert whole == pytest.approx({"m": np.sqrt(9 + 16 + 4 + 1 + 4 + 4)})


def test_an_update_beyond_the_multiple_of_the_rounds_median_norm_is_rejected_with_its_reason() -> None:
    # Prepare: layer norms 1, 2, 3 and 1000; the median of the four is 2.5
    updates = {f"c{v}": _one(v) for v in (1.0, 2.0, 3.0, 1000.0)}

    # Execute
    rejected, kept, factors = Robustness(outlier_norm_multiple=3.0).screen(updates)

    # Assert
    assert rejected == {
        "c1000.0": "norm outlier: m/layers.0 has norm 1000, 400.0x the round's median 2.5 over 4 updates "
        "(limit 3x, server.outlier_norm_multiple)"
    }
    assert sorted(kept) == ["c1.0", "c2.0", "c3.0"] and factors == {}
    assert kept["c3.0"] is not updates["c3.0"] and kept["c3.0"]["m/layers.0.q.lora_A"][0] == 3.0


def test_with_fewer_than_three_holders_the_median_is_not_trusted_and_nothing_is_rejected() -> None:
    # Prepare: the median of two is their mean (500.5), so 1000 is only ~2x "the median"
    updates = {"clean": _one(1.0), "scaled": _one(1000.0)}

    # Execute
    rejected, kept, _ = Robustness(outlier_norm_multiple=1.5).screen(updates)

    # Assert
    assert rejected == {} and sorted(kept) == ["clean", "scaled"]


def test_clipping_scales_a_group_down_to_the_bound_or_to_a_multiple_of_the_median() -> None:
    # Prepare: norms 1, 2, 4 (median 2); the head is held by all three with norm 5
    updates = {
        f"c{v}": {"m/layers.0.x": np.array([v], np.float32), "m/t/head.bias": np.array([3.0, 4.0], np.float32)}
        for v in (1.0, 2.0, 4.0)
    }

    # Execute
    _, absolute, absolute_factors = Robustness(clip_norm=3.0).screen(updates)
    _, relative, relative_factors = Robustness(clip_norm_multiple=1.5).screen(updates)

    # Assert: bound 3 clips c4's layer to 3 and every head (norm 5) to 3; 1.5 x median 2 = 3 clips c4's layer only
    np.testing.assert_allclose(absolute["c4.0"]["m/layers.0.x"], [3.0])
    np.testing.assert_allclose(absolute["c1.0"]["m/t/head.bias"], [1.8, 2.4])
    assert absolute_factors == pytest.approx({"c1.0": 0.6, "c2.0": 0.6, "c4.0": 0.6})
    np.testing.assert_allclose(relative["c4.0"]["m/layers.0.x"], [3.0])
    np.testing.assert_allclose(relative["c4.0"]["m/t/head.bias"], [3.0, 4.0])
    assert relative_factors == pytest.approx({"c4.0": 0.75})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"aggregation": "mode"}, "aggregation: 'mode' is not one of"),
        ({"trim_fraction": 0.5}, r"trim_fraction: must be in \[0, 0.5\)"),
        ({"outlier_norm_multiple": 1.0}, "outlier_norm_multiple: must be > 1"),
        ({"clip_norm": 0.0}, "clip_norm: must be > 0"),
        ({"norm_scope": "tensor"}, "norm_scope: 'tensor' is not one of"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Robustness(**settings)


def test_the_rms_scope_compares_updates_across_models_depths_and_ranks_and_rejects_a_scaled_one() -> None:
    # Prepare: entries of size ~0.1 everywhere: a 4-layer rank-8 update and a 2-layer rank-2 one of model "a" (their
    # norms differ 4x), one of model "b", and one of model "a" scaled by 1000 on two layers nobody else holds
    rng = np.random.default_rng(0)

    def update(model: str, layers: range, rank: int, scale: float = 1.0) -> dict[str, np.ndarray]:
        return {f"{model}/layers.{i}.q.lora_A": scale * 0.1 * rng.standard_normal((rank, 32)) for i in layers}

    updates = {"deep": update("a", range(4), 8), "edge": update("a", range(2), 2), "other": update("b", range(3), 4)}
    updates["scaled"] = update("a", range(4, 6), 2, scale=1000.0)

    # Execute
    rejected, kept, _ = Robustness(outlier_norm_multiple=10.0, norm_scope="rms").screen(updates)
    layer_rejected, _, _ = Robustness(outlier_norm_multiple=10.0, norm_scope="layer").screen(updates)

    # Assert: only the scaled update, named by its RMS entry; per layer, no group has three holders to compare
    assert sorted(kept) == ["deep", "edge", "other"]
    assert list(rejected) == ["scaled"]
    assert rejected["scaled"].startswith("norm outlier: the update's RMS entry is 10")
    assert "over 4 updates (limit 10x, server.outlier_norm_multiple)" in rejected["scaled"]
    assert layer_rejected == {}
