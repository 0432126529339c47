"""Similarity weighting against matrices computed by hand (FedBip's clipped weights, RELA's softmax)."""

from __future__ import annotations

import numpy as np
import pytest

from fedbrick_flower.strategies.similarity import (
    blockwise_cosine,
    clipped_weights,
    cosine_matrix,
    group_mask,
    layerwise_cosine,
    renormalise,
    shared_mask,
    softmax_weights,
)

R = 1 / np.sqrt(2)  # cos 45°
# a = (1, 0), b = (1, 1), c = (-1, 0), z = 0: a and b agree, c opposes both, z has no direction.
VECTORS = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])
COSINES = np.array(
    [
        [1.0, R, -1.0, 0.0],
        [R, 1.0, -R, 0.0],
        [-1.0, -R, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def test_cosine_matrix_by_hand_with_negative_and_zero_vectors() -> None:
    # Execute
    cosine = cosine_matrix(VECTORS)

    # Assert
    np.testing.assert_almost_equal(cosine, COSINES)


def test_clipped_weights_drop_negative_cosines_and_count_self_in_the_denominator() -> None:
    # Execute
    weights = clipped_weights(COSINES)

    # Assert: row a = [1, R, 0, 0] / (1 + R); c conflicts with everyone and keeps only itself.
    expected = np.array(
        [
            [1 / (1 + R), R / (1 + R), 0.0, 0.0],
            [R / (1 + R), 1 / (1 + R), 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    np.testing.assert_almost_equal(weights, expected)


def test_clipped_weights_without_self_leave_isolated_clients_at_zero() -> None:
    # Execute
    weights = clipped_weights(COSINES, include_self=False)

    # Assert: a gives everything to b; c and z have no positive peer, so their rows are zero (keep state).
    np.testing.assert_almost_equal(weights[0], [0.0, 1.0, 0.0, 0.0])
    np.testing.assert_almost_equal(weights[2], np.zeros(4))
    np.testing.assert_almost_equal(weights[3], np.zeros(4))


def test_softmax_weights_with_temperature_by_hand() -> None:
    # Prepare: row a's logits at T = 0.5 are [2, 2R, -2, 0].
    exps = np.array([np.e**2, np.e ** (2 * R), np.e**-2, 1.0])

    # Execute
    weights = softmax_weights(COSINES, temperature=0.5)

    # Assert
    np.testing.assert_almost_equal(weights[0], exps / exps.sum())
    np.testing.assert_almost_equal(weights.sum(axis=1), np.ones(4))


def test_softmax_weights_self_excluded_as_in_rela() -> None:
    # Prepare: row a without itself: logits [2R, -2, 0].
    exps = np.array([np.e ** (2 * R), np.e**-2, 1.0])

    # Execute
    weights = softmax_weights(COSINES, temperature=0.5, include_self=False)

    # Assert
    np.testing.assert_almost_equal(weights[0], [0.0, *(exps / exps.sum())])
    np.testing.assert_almost_equal(np.diag(weights), np.zeros(4))


def test_groups_give_zero_weight_across_groups_and_renormalise_within() -> None:
    # Prepare: a and b in one architecture group, c and z in another.
    mask = group_mask(["bert", "bert", "llama", "llama"])

    # Execute
    clipped = clipped_weights(COSINES, mask=mask)
    soft = softmax_weights(COSINES, temperature=0.5, mask=mask)

    # Assert
    np.testing.assert_almost_equal(clipped[0], [1 / (1 + R), R / (1 + R), 0.0, 0.0])
    np.testing.assert_almost_equal(soft[0], np.array([np.e**2, np.e ** (2 * R), 0, 0]) / (np.e**2 + np.e ** (2 * R)))
    assert np.all(soft[:2, 2:] == 0.0) and np.all(soft[2:, :2] == 0.0)


def test_scale_decays_a_stale_column() -> None:
    # Prepare: b is stale with decay 0.5.
    scale = np.array([1.0, 0.5, 1.0, 1.0])

    # Execute
    weights = clipped_weights(COSINES, scale=scale)

    # Assert
    np.testing.assert_almost_equal(weights[0], [1 / (1 + R / 2), (R / 2) / (1 + R / 2), 0.0, 0.0])


def test_blockwise_cosine_compares_only_shared_blocks() -> None:
    # Prepare: x holds layers 0 and 1, y only layer 0 (its layer-1 row is garbage and must be ignored).
    layer0 = np.array([[1.0, 0.0], [1.0, 1.0]])
    layer1 = np.array([[0.0, 1.0], [5.0, 5.0]])
    holders = np.array([[True, True], [True, False]])

    # Execute
    restricted = blockwise_cosine([layer0, layer1], holders)
    per_layer = layerwise_cosine([layer0, layer1], holders)

    # Assert: on layer 0 alone cos = R; the naive flat cosine over [1,0,0,1] and [1,1,0,0] would be 0.5.
    np.testing.assert_almost_equal(restricted, [[1.0, R], [R, 1.0]])
    np.testing.assert_almost_equal(per_layer[0], [[1.0, R], [R, 1.0]])
    np.testing.assert_almost_equal(per_layer[1], [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(shared_mask(holders[:, [1]]), [[True, False], [False, False]])


def test_renormalise_over_holders() -> None:
    # Prepare
    weights = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    holds = np.array([[True, False, True], [False, False, False]])

    # Execute
    result = renormalise(weights, holds)

    # Assert
    np.testing.assert_almost_equal(result, [[0.5 / 0.7, 0.0, 0.2 / 0.7], [0.0, 0.0, 0.0]])


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="square"):
        clipped_weights(np.ones((2, 3)))
    with pytest.raises(ValueError, match="holders has shape"):
        blockwise_cosine([np.ones((2, 3))], np.ones((3, 1), dtype=bool))
    with pytest.raises(ValueError, match="temperature"):
        softmax_weights(np.eye(2), temperature=0.0)
