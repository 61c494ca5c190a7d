"""95% intervals for accuracies: the Wilson score interval for one proportion, and a seeded
paired bootstrap for the difference of two systems' accuracies on the same questions.

Sources: Wilson (1927), "Probable inference, the law of succession, and statistical inference";
the paired (case-resampling) bootstrap percentile interval, Efron & Tibshirani (1993), ch. 13."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # standard normal quantile at 0.975


@dataclass(frozen=True)
class Interval:
    """A point estimate with its interval, all as fractions (0.5 = 50%)."""

    estimate: float
    low: float
    high: float
    level: float
    method: str  # "wilson" or "paired bootstrap (R resamples, seed S)"

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high,
                "level": self.level, "method": self.method}


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """Wilson score interval of successes/n; n == 0 gives the whole [0, 1] around nan.

    centre = (p + z^2/2n) / (1 + z^2/n),  half = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)."""
    if not 0 <= successes <= n:
        raise ValueError(f"wilson: successes must be within 0..n, got {successes} of {n}")
    level = _level(z)
    if n == 0:
        return Interval(math.nan, 0.0, 1.0, level, "wilson")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact bounds, no 0.99999...
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, low, high, level, "wilson")


def wilson_bounds(successes: int, n: int) -> list[float] | None:
    """[low, high] of the 95% Wilson interval, rounded to 4 places as summaries store them;
    None without a scored question."""
    if not n:
        return None
    ci = wilson(successes, n)
    return [round(ci.low, 4), round(ci.high, 4)]


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], resamples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> Interval:
    """Percentile interval of mean(a) - mean(b) when a[i] and b[i] mark the same question.

    Resampling n questions with replacement only changes how many of them fall in each class
    of d = a - b in {-1, 0, +1}, so each resample is one multinomial draw of those counts: the
    same distribution as resampling indices, in O(resamples) memory."""
    if len(a) != len(b):
        raise ValueError(f"paired_bootstrap: the two systems must mark the same questions, got "
                         f"{len(a)} and {len(b)} marks")
    n = len(a)
    method = f"paired bootstrap ({resamples} resamples, seed {seed})"
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, level, method)
    d = np.asarray(a, dtype=int) - np.asarray(b, dtype=int)
    counts = np.array([(d == -1).sum(), (d == 0).sum(), (d == 1).sum()])
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=resamples)
    diffs = (draws[:, 2] - draws[:, 0]) / n
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return Interval(float(d.mean()), float(low), float(high), level, method)


def _level(z: float) -> float:
    return round(math.erf(z / math.sqrt(2)), 4)
