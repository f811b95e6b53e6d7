"""Means with 95 % intervals over seeds, and paired differences between configurations.

A confirmed configuration is trained with R seeds; its score is a sample of R numbers,
reported as mean ± sd with Student's t interval. Configurations confirmed with the same
seeds are compared seed by seed (paired): much of a seed's luck is shared by every
configuration it trains, so the interval of the difference is narrower than the two
intervals side by side suggest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Sequence

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its spread and 95 % interval."""

    mean: float
    sd: float
    low: float
    high: float
    n: int

    def includes(self, value: float) -> bool:
        return self.low <= value <= self.high


def estimate(samples: Sequence[float]) -> Estimate:
    """Mean, sample sd and Student's t interval (one sample: no spread, no interval)."""
    values = [float(v) for v in samples if v is not None and math.isfinite(v)]
    n = len(values)
    if n == 0:
        nan = float("nan")
        return Estimate(nan, nan, nan, nan, 0)
    mean = sum(values) / n
    if n == 1:
        return Estimate(mean, float("nan"), -math.inf, math.inf, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t_quantile(n - 1) * sd / math.sqrt(n)
    return Estimate(mean, sd, mean - half, mean + half, n)


def paired_gain(direction: str, candidate: dict[int, float],
                baseline: dict[int, float]) -> Estimate:
    """How much better `candidate` is than `baseline` ({seed: score}), over the seeds both
    have: positive is better, in the metric's units."""
    sign = 1.0 if direction == "maximize" else -1.0
    seeds = sorted(set(candidate) & set(baseline))
    return estimate([sign * (candidate[s] - baseline[s]) for s in seeds])


def _t_quantile(freedom: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + LEVEL / 2, freedom))
