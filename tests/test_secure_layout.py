"""The padded vector a client masks: its tensors in the union's slots, zeros and a zero holder count elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from fedbrick_flower.secure_layout import Layout, OutOfRange, pack


def test_packed_sums_give_the_weighted_mean_over_holders() -> None:
    # Prepare: two clients sharing "a", one holding "b"; weights 3 and 1 (what SecAgg+ scales each vector by)
    layout = Layout.union([{"m/a": (2,), "m/b": (1, 2)}, {"m/a": (2,)}])
    first = {"x": np.array([1.0, 2.0]), "y": np.array([[5.0, 6.0]])}
    second = {"z": np.array([3.0, 4.0])}

    # Execute
    one = pack(first, layout.for_client({"x": "m/a", "y": "m/b"}, 8.0))
    two = pack(second, layout.for_client({"z": "m/a"}, 8.0))
    means = layout.means(3 * one[0] + two[0], 3 * one[1] + two[1])

    # Assert
    np.testing.assert_allclose(means["m/a"], [(3 * 1 + 3) / 4, (3 * 2 + 4) / 4])
    np.testing.assert_allclose(means["m/b"], [[5.0, 6.0]])
    assert two[1].tolist() == [1.0, 0.0] and two[0][2:].tolist() == [0.0, 0.0]


def test_a_slot_nobody_holds_is_left_out() -> None:
    layout = Layout.union([{"a": (1,), "b": (1,)}])
    assert set(layout.means(np.array([2.0, 0.0]), np.array([1.0, 0.0]))) == {"a"}


def test_values_beyond_the_clipping_range_or_not_finite_are_refused() -> None:
    layout = Layout.union([{"a": (2,)}]).for_client({"x": "a"}, 8.0)
    with pytest.raises(OutOfRange, match="within ±8.0"):
        pack({"x": np.array([0.0, 9.0])}, layout)
    with pytest.raises(OutOfRange):
        pack({"x": np.array([0.0, np.nan])}, layout)


def test_one_key_with_two_shapes_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"m/a: clients hold it with shapes \(2,\) and \(3,\)"):
        Layout.union([{"m/a": (2,)}, {"m/a": (3,)}])
