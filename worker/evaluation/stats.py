"""Summaries over seeds: the mean and sample sd of a metric, and the paired difference of two models with its
95% Student's t interval.

The seeds pair the models (seed ``s`` gave both models the same split, data order and head initialization
seed), so the difference is taken seed by seed and its interval is the one-sample t interval of those
differences: ``mean ± t(0.975, n-1) · sd / sqrt(n)`` (e.g. Dror et al. 2018, "The Hitchhiker's Guide to
Testing Statistical Significance in NLP", on seed-paired comparisons). With fewer than 2 seeds there is no
sd and no interval (None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.stats import t as student_t

from worker.evaluation.results import MetricSummary, PairedDifference

__all__ = ["CONFIDENCE", "paired_difference", "summarize"]

CONFIDENCE = 0.95


def _mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def summarize(values: Sequence[float]) -> MetricSummary:
    """Mean, sample sd (ddof=1; None for one value) and the values themselves. ValueError when empty."""
    if not values:
        raise ValueError("no values to summarize")
    mean, sd = _mean_sd(values)
    return MetricSummary(mean=mean, sd=sd, per_seed=[float(v) for v in values])


def paired_difference(values: Sequence[float], baseline: Sequence[float]) -> PairedDifference:
    """``values - baseline`` seed by seed: their mean and its 95% t interval (bounds None when n < 2; both
    equal to the mean when every difference is the same). ValueError when the lengths differ or are 0."""
    if len(values) != len(baseline) or not values:
        raise ValueError(
            f"paired values need equal, non-zero lengths (got {len(values)} and {len(baseline)})"
        )
    differences = [a - b for a, b in zip(values, baseline, strict=True)]
    n = len(differences)
    mean, sd = _mean_sd(differences)
    if sd is None:
        return PairedDifference(mean=mean, ci_low=None, ci_high=None, n=n)
    half_width = float(student_t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    return PairedDifference(mean=mean, ci_low=mean - half_width, ci_high=mean + half_width, n=n)
