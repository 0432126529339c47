"""Paired differences with 95 % t intervals, checked against hand computation, and the claim verdicts."""

from __future__ import annotations

import math

import pytest

from fedbrick_flower.leaderboard.stats import (
    INCONCLUSIVE,
    MET,
    NOT_MET,
    NOT_RUN,
    Interval,
    paired,
    t_interval,
    t_quantile,
    verdict,
)


def test_t_interval_of_three_differences_by_hand() -> None:
    # Prepare: mean 2, s = 1, t(0.975, 2) = 4.3027 -> half width 4.3027 / sqrt(3) = 2.4842
    differences = [1.0, 2.0, 3.0]

    # Execute
    interval = t_interval(differences)

    # Assert
    assert interval.mean == 2.0 and interval.n == 3
    assert interval.low == pytest.approx(2 - 2.48416, abs=1e-4)
    assert interval.high == pytest.approx(2 + 2.48416, abs=1e-4)


def test_t_interval_of_five_differences_by_hand() -> None:
    # Prepare: mean 6, s = sqrt(10), t(0.975, 4) = 2.7764 -> half width 2.7764 * sqrt(10) / sqrt(5) = 3.9264
    differences = [2.0, 4.0, 6.0, 8.0, 10.0]

    # Execute
    interval = t_interval(differences)

    # Assert
    assert interval.low == pytest.approx(6 - 2.7764 * math.sqrt(2), abs=1e-4)
    assert interval.high == pytest.approx(6 + 3.9264, abs=1e-4)


def test_paired_uses_only_seeds_both_sides_have() -> None:
    # Prepare
    method = {0: 0.80, 1: 0.82, 2: 0.79, 3: None}
    baseline = {0: 0.78, 1: 0.80, 3: 0.70}

    # Execute
    interval = paired(method, baseline)

    # Assert: seeds 0 and 1 only, both +0.02, s = 0 -> a zero-width interval
    assert interval.n == 2
    assert interval.mean == pytest.approx(0.02)
    assert interval.low == pytest.approx(0.02) and interval.high == pytest.approx(0.02)


def test_one_pair_gives_no_interval_and_no_pair_gives_nothing() -> None:
    # Execute
    one, none = t_interval([1.5]), t_interval([])

    # Assert
    assert (one.mean, one.low, one.high, one.n) == (1.5, None, None, 1)
    assert none.n == 0 and none.mean is None


def test_t_quantiles_from_the_table() -> None:
    # Assert: standard table values; beyond 30 the df-30 value (conservative)
    assert t_quantile(1) == 12.7062
    assert t_quantile(4) == 2.7764
    assert t_quantile(30) == t_quantile(100) == 2.0423
    with pytest.raises(ValueError):
        t_quantile(0)


@pytest.mark.parametrize(
    ("low", "high", "target", "expected"),
    [
        (2.5, 4.0, 2.0, MET),  # the whole interval above the target
        (-1.0, 1.5, 2.0, NOT_MET),  # the whole interval below
        (1.0, 3.0, 2.0, INCONCLUSIVE),  # straddles it
        (0.1, 0.5, 0.0, MET),  # a control: excludes zero from above
    ],
)
def test_verdicts(low: float, high: float, target: float, expected: str) -> None:
    # Execute / Assert
    assert verdict(Interval((low + high) / 2, low, high, 5), target) == expected


def test_verdict_without_interval() -> None:
    # Execute / Assert
    assert verdict(Interval(3.0, None, None, 1), 0.0) == INCONCLUSIVE
    assert verdict(Interval(None, None, None, 0), 0.0) == NOT_RUN
