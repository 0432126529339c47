"""Rank math of LoRA factors, against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fedbrick_flower.strategies import ranks


def _random_factors(rank: int, d_out: int = 6, d_in: int = 5, seed: int = 0) -> ranks.Factors:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rank, d_in)), rng.normal(size=(d_out, rank))


def test_product_applies_alpha_over_rank() -> None:
    # Prepare
    a = np.array([[1.0, 2.0]])  # rank 1, d_in 2
    b = np.array([[3.0], [4.0]])  # d_out 2

    # Execute
    delta = ranks.product(a, b, alpha=4.0)

    # Assert: (4 / 1) * [[3, 6], [4, 8]]
    np.testing.assert_allclose(delta, [[12.0, 24.0], [16.0, 32.0]])


def test_scale_one_and_back_reproduce_the_scaled_product() -> None:
    # Prepare
    a, b = _random_factors(rank=4)

    # Execute
    a1, b1 = ranks.scale_one(a, b, alpha=16.0)
    a_back, b_back = ranks.from_scale_one(a1, b1, alpha=16.0)

    # Assert: scale 16 / 4 = 4 folded into A
    np.testing.assert_allclose(a1, 4.0 * a)
    np.testing.assert_allclose(b1 @ a1, ranks.product(a, b, 16.0))
    np.testing.assert_allclose(a_back, a)
    np.testing.assert_allclose(b_back, b)


def test_zero_pad_and_truncate() -> None:
    # Prepare
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[5.0, 6.0]])

    # Execute
    pa, pb = ranks.zero_pad(a, b, 3)
    ta, tb = ranks.truncate(a, b, 1)

    # Assert
    np.testing.assert_array_equal(pa, [[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_array_equal(pb, [[5.0, 6.0, 0.0]])
    np.testing.assert_array_equal(pb @ pa, b @ a)
    np.testing.assert_array_equal(ta, [[1.0, 2.0]])
    np.testing.assert_array_equal(tb, [[5.0]])
    with pytest.raises(ValueError, match="zero-pad rank 2 factors down to rank 1"):
        ranks.zero_pad(a, b, 1)
    with pytest.raises(ValueError, match="truncate rank 2 factors to rank 3"):
        ranks.truncate(a, b, 3)


def test_stack_by_hand() -> None:
    # Prepare: two rank-1 clients
    first = (np.array([[1.0, 0.0]]), np.array([[1.0], [0.0]]))
    second = (np.array([[0.0, 2.0]]), np.array([[0.0], [3.0]]))

    # Execute
    a, b = ranks.stack([first, second], [0.25, 0.75])

    # Assert: rank 2, B A = 0.25 [[1, 0], [0, 0]] + 0.75 [[0, 0], [0, 6]]
    assert a.shape == (2, 2) and b.shape == (2, 2)
    np.testing.assert_allclose(b @ a, [[0.25, 0.0], [0.0, 4.5]])


def test_tail_share_by_hand() -> None:
    # Prepare: singular values 3, 2, 1 -> energies 9, 4, 1 (total 14)
    s = np.array([3.0, 2.0, 1.0])

    # Execute / Assert
    assert ranks.tail_share(s, 1) == pytest.approx(5.0 / 14.0)
    assert ranks.tail_share(s, 2) == pytest.approx(1.0 / 14.0)
    assert ranks.tail_share(s, 3) == 0.0
    assert ranks.tail_energy(s, 1) == pytest.approx((5.0, 14.0))
    assert ranks.tail_share(np.zeros(3), 1) == 0.0


def test_svd_truncation_error_equals_the_discarded_spectrum() -> None:
    # Prepare: diag(3, 2, 1) in a rotated basis
    rng = np.random.default_rng(1)
    q1, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q2, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    delta = q1 @ np.diag([3.0, 2.0, 1.0]) @ q2.T

    # Execute
    u, s, vt = ranks.svd(delta)
    a, b = ranks.svd_factors(u, s, vt, 2)

    # Assert: the error is the dropped singular value 1: ||.||_F^2 = 1 = (1/14) * ||delta||_F^2
    assert a.shape == (2, 3) and b.shape == (3, 2)
    error = np.linalg.norm(delta - b @ a) ** 2
    assert error == pytest.approx(1.0)
    assert error / np.linalg.norm(delta) ** 2 == pytest.approx(ranks.tail_share(s, 2))


def test_product_svd_and_norm_match_the_dense_product() -> None:
    # Prepare
    a, b = _random_factors(rank=3, d_out=8, d_in=7)

    # Execute
    u, s, vt = ranks.product_svd(a, b)
    norm = ranks.product_norm(a, b)

    # Assert
    np.testing.assert_allclose(s, np.linalg.svd(b @ a, compute_uv=False)[:3])
    np.testing.assert_allclose(u @ np.diag(s) @ vt, b @ a, atol=1e-10)
    assert norm == pytest.approx(np.linalg.norm(b @ a))


def test_exact_factors_reproduce_a_low_rank_matrix_at_its_rank() -> None:
    # Prepare: a rank-2 matrix of 6 x 5
    a, b = _random_factors(rank=2)
    delta = b @ a

    # Execute
    fa, fb = ranks.exact_factors(delta)

    # Assert
    assert fa.shape == (2, 5) and fb.shape == (6, 2)
    np.testing.assert_allclose(fb @ fa, delta, atol=1e-10)
    assert ranks.numerical_rank(np.zeros(3)) == 1
