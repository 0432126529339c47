"""Paired statistics of the powered leaderboard: mean paired difference over seeds, its 95 % t interval, verdicts.

A seed fixes the data split and the initialisation, so two methods at one seed are a pair; the interval is
Student's t over the per-seed differences. No scipy: the two-sided 97.5 % quantiles of t for 1 to 30 degrees of
freedom are tabulated below (standard tables, 4 decimals); above 30 the df-30 value is used, which widens the
interval slightly (conservative).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from statistics import mean, stdev
from typing import Any

# t_{0.975, df} for df = 1..30.
T_975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip

MET, NOT_MET, INCONCLUSIVE, NOT_RUN = "met", "not met", "inconclusive", "not run"


def t_quantile(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (df-30 value above 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return T_975[min(df, len(T_975)) - 1]


@dataclass(frozen=True)
class Interval:
    """A mean paired difference over ``n`` pairs with its 95 % interval (None bounds below 2 pairs)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int
    differences: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "differences": list(self.differences)}


def t_interval(differences: list[float]) -> Interval:
    """Mean of ``differences`` with the 95 % t interval ``mean ± t(n-1) * s / sqrt(n)``."""
    n = len(differences)
    if n == 0:
        return Interval(None, None, None, 0)
    centre = mean(differences)
    if n == 1:
        return Interval(centre, None, None, 1, tuple(differences))
    half = t_quantile(n - 1) * stdev(differences) / math.sqrt(n)
    return Interval(centre, centre - half, centre + half, n, tuple(differences))


def paired(values: Mapping[int, float | None], baseline: Mapping[int, float | None]) -> Interval:
    """``values - baseline`` over the seeds both have a value for (a pair needs both halves)."""
    seeds = sorted(s for s in values if values[s] is not None and baseline.get(s) is not None)
    return t_interval([float(values[s]) - float(baseline[s]) for s in seeds])  # type: ignore[arg-type]


def verdict(interval: Interval, target: float) -> str:
    """``met`` when the whole interval lies above ``target``, ``not met`` when it lies below, else
    ``inconclusive`` (also with fewer than 2 pairs, which give no interval); ``not run`` without pairs."""
    if interval.n == 0:
        return NOT_RUN
    if interval.low is None or interval.high is None:
        return INCONCLUSIVE
    if interval.low > target:
        return MET
    if interval.high < target:
        return NOT_MET
    return INCONCLUSIVE
