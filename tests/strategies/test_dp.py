"""Client-level differential privacy helpers: clipping, the noise of both modes, and the accountant."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from fedbrick_flower.strategies.dp import clip_update, epsilon, noised_layerwise_mean, noised_update


def test_epsilon_is_the_opacus_rdp_accountants_own_value_for_the_same_parameters() -> None:
    # Prepare: Opacus's accountant stepped once per round, as its own users do
    accountant = RDPAccountant()
    expected = []
    for _ in range(5):
        accountant.step(noise_multiplier=1.1, sample_rate=0.5)
        expected.append(accountant.get_epsilon(1e-5))

    # Execute
    found = [epsilon(1.1, 0.5, rounds, 1e-5) for rounds in range(1, 6)]

    # Assert
    assert found == pytest.approx(expected, rel=1e-12)
    assert found == sorted(found) and found[0] > 0


def test_clip_update_bounds_the_delta_over_all_tensors_and_keeps_a_small_one() -> None:
    # Prepare: a delta of norm 5 (3 in one tensor, 4 in another) from the reference; a tensor not sent counts from 0
    reference = {"a": np.array([1.0, 1.0], np.float32)}
    arrays = {"a": np.array([4.0, 1.0], np.float32), "b": np.array([0.0, 4.0], np.float32)}

    # Execute
    clipped = clip_update(arrays, reference, clip_norm=1.0)
    small = clip_update(arrays, reference, clip_norm=10.0)

    # Assert: the delta is scaled by 1/5 as a whole, added back to the reference
    assert clipped.norm == pytest.approx(5.0) and clipped.factor(1.0) == pytest.approx(0.2)
    np.testing.assert_allclose(clipped.arrays["a"], [1.6, 1.0], rtol=1e-6)
    np.testing.assert_allclose(clipped.arrays["b"], [0.0, 0.8], rtol=1e-6)
    assert clipped.arrays["a"].dtype == np.float32
    np.testing.assert_allclose(small.arrays["a"], arrays["a"])
    assert small.factor(10.0) == 1.0


def test_local_noise_differs_from_the_noiseless_update_by_noise_multiplier_times_clip_norm() -> None:
    # Prepare: an update of delta norm 0.5, within the bound 2, on 40,000 entries
    np.random.seed(0)  # Flower's noise helper draws from NumPy's global generator
    reference = {"w": np.zeros((200, 200), np.float32)}
    arrays = {"w": np.full((200, 200), 0.5 / 200, np.float32)}

    # Execute
    noised = noised_update(arrays, reference, noise_multiplier=0.7, clip_norm=2.0)

    # Assert: the difference is zero-mean noise of std 0.7 * 2 = 1.4 (within 2 %)
    difference = noised.arrays["w"] - arrays["w"]
    assert np.std(difference) == pytest.approx(1.4, rel=0.02)
    assert abs(np.mean(difference)) < 0.03
    assert noised.norm == pytest.approx(0.5, rel=1e-5)


def test_the_central_mean_is_unweighted_with_noise_scaled_by_each_tensors_holder_count() -> None:
    # Prepare: "x" held by four clients, "y" by one; weights that a weighted mean would use
    np.random.seed(1)
    zeros = np.zeros((100, 100), np.float32)
    contributions = [(f"c{i}", {"x": zeros + i}, float(10 * (i + 1))) for i in range(4)]
    contributions.append(("c4", {"y": zeros}, 1.0))

    # Execute
    result = noised_layerwise_mean(contributions, noise_multiplier=1.0, clip_norm=2.0)

    # Assert: x is 1.5 (the plain mean of 0..3) plus noise of std 2 / 4; y has noise of std 2 / 1
    assert np.mean(result["x"]) == pytest.approx(1.5, abs=0.02)
    assert np.std(result["x"]) == pytest.approx(0.5, rel=0.03)
    assert np.std(result["y"]) == pytest.approx(2.0, rel=0.03)
    assert result["x"].dtype == np.float32


def test_epsilon_is_zero_before_any_round() -> None:
    # Assert
    assert epsilon(1.0, 1.0, 0, 1e-5) == 0.0
    assert math.isfinite(epsilon(1.0, 1.0, 3, 1e-5))
