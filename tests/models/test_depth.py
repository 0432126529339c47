"""Block-end layers and relative-depth maps, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from fedbrick_flower.models.depth import block_end_layers, relative_depth_map, relative_depth_positions


@pytest.mark.parametrize(
    "num_layers, balanced, floor_step",
    [
        # balanced: ceil(b L / 4) - 1; L = 6 -> ceil(1.5, 3, 4.5, 6) - 1.
        (6, [1, 2, 4, 5], [0, 1, 2, 5]),
        # 4 divides 12: both rules give the last layer of each quarter.
        (12, [2, 5, 8, 11], [2, 5, 8, 11]),
        # L = 30: ceil(7.5, 15, 22.5, 30) - 1 vs step 7 -> 6, 13, 20 and the last layer.
        (30, [7, 14, 22, 29], [6, 13, 20, 29]),
        # The spec's Llama examples (16 and 28 layers).
        (16, [3, 7, 11, 15], [3, 7, 11, 15]),
        (28, [6, 13, 20, 27], [6, 13, 20, 27]),
    ],
)
def test_block_end_layers_for_both_rules(num_layers: int, balanced: list[int], floor_step: list[int]) -> None:
    # Execute / Assert
    assert block_end_layers(num_layers, 4) == balanced
    assert block_end_layers(num_layers, 4, rule="floor-step") == floor_step


def test_balanced_blocks_differ_in_size_by_at_most_one() -> None:
    for num_layers in range(1, 40):
        for n_blocks in range(1, num_layers + 1):
            # Execute
            ends = block_end_layers(num_layers, n_blocks)

            # Assert
            sizes = np.diff([-1, *ends])
            assert ends[-1] == num_layers - 1
            assert sizes.max() - sizes.min() <= 1


def test_relative_depth_ends_increase_end_at_the_last_layer_and_sit_nearest_b_over_n() -> None:
    for num_layers in range(1, 40):
        for n_blocks in range(1, num_layers + 1):
            # Execute
            ends = block_end_layers(num_layers, n_blocks, rule="relative-depth")

            # Assert
            assert ends[-1] == num_layers - 1 and len(ends) == n_blocks
            assert all(np.diff(ends) > 0)
            if n_blocks < num_layers:
                targets = np.arange(1, n_blocks + 1) * (num_layers - 1) / n_blocks
                assert np.all(np.abs(np.array(ends) - targets) <= 0.5)


@pytest.mark.parametrize("n_blocks", [0, 7])
def test_block_count_outside_the_depth_is_refused(n_blocks: int) -> None:
    with pytest.raises(ValueError, match="n_blocks must be in 1..6"):
        block_end_layers(6, n_blocks)


def test_relative_depth_map_by_hand_for_6_onto_30_layers() -> None:
    # Execute
    weights = relative_depth_map(6, 30)

    # Assert: layer l sits at 29 l / 5 = 0, 5.8, 11.6, 17.4, 23.2, 29.
    assert weights.shape == (6, 30)
    np.testing.assert_allclose(relative_depth_positions(6, 30), [0, 5.8, 11.6, 17.4, 23.2, 29])
    expected = {0: {0: 1.0}, 1: {5: 0.2, 6: 0.8}, 2: {11: 0.4, 12: 0.6}, 3: {17: 0.6, 18: 0.4}, 4: {23: 0.8, 24: 0.2}}
    expected[5] = {29: 1.0}
    for layer, entries in expected.items():
        row = np.zeros(30)
        for target, weight in entries.items():
            row[target] = weight
        np.testing.assert_allclose(weights[layer], row, atol=1e-12)


def test_relative_depth_map_onto_a_shallower_model() -> None:
    # Execute: 5 layers onto 3: positions 0, 0.5, 1, 1.5, 2.
    weights = relative_depth_map(5, 3)

    # Assert
    np.testing.assert_allclose(weights, [[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5], [0, 0, 1]], atol=1e-12)


def test_equal_depth_is_the_identity_and_one_layer_maps_to_the_last() -> None:
    # Execute / Assert
    np.testing.assert_array_equal(relative_depth_map(4, 4), np.eye(4))
    np.testing.assert_array_equal(relative_depth_map(1, 3), [[0, 0, 1]])
    np.testing.assert_array_equal(relative_depth_map(3, 1), [[1], [1], [1]])


def test_h2tune_relation_init_is_the_transposed_map() -> None:
    # Prepare: Pi (L_max x L_k) for a 4-layer client and 7 global slots; client layer l sits at slot 2 l.
    pi = relative_depth_map(4, 7).T

    # Assert: every client layer is one slot exactly, and columns sum to 1.
    np.testing.assert_array_equal(np.argmax(pi, axis=0), [0, 2, 4, 6])
    np.testing.assert_allclose(pi.sum(axis=0), np.ones(4))


def test_bad_depths_are_named() -> None:
    with pytest.raises(ValueError, match="target_layers must be a positive integer"):
        relative_depth_map(3, 0)
