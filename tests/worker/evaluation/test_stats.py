"""Summaries over seeds against values computed by hand (t quantiles from a t table)."""

from __future__ import annotations

import math

import pytest

from worker.evaluation.stats import paired_difference, summarize

# Student's t quantile t(0.975, df=2), from a t table.
T_975_DF2 = 4.3027


def test_summarize_gives_the_mean_and_the_sample_sd() -> None:
    summary = summarize([0.5, 0.7, 0.9])
    assert summary.mean == pytest.approx(0.7)
    assert summary.sd == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / (3 - 1)), not / 3
    assert summary.per_seed == [0.5, 0.7, 0.9]


def test_one_seed_has_no_sd_and_no_interval() -> None:
    assert summarize([0.8]).sd is None
    difference = paired_difference([0.8], [0.7])
    assert difference.mean == pytest.approx(0.1)
    assert (difference.ci_low, difference.ci_high, difference.n) == (None, None, 1)


def test_paired_difference_is_the_t_interval_of_the_per_seed_differences() -> None:
    # differences 0.1, 0.2, 0.0: mean 0.1, sd 0.1, half width t(0.975, 2) * 0.1 / sqrt(3) = 0.24841
    difference = paired_difference([0.8, 0.9, 0.7], [0.7, 0.7, 0.7])
    half = T_975_DF2 * 0.1 / math.sqrt(3)
    assert difference.n == 3
    assert difference.mean == pytest.approx(0.1)
    assert difference.ci_low == pytest.approx(0.1 - half, abs=1e-4)
    assert difference.ci_high == pytest.approx(0.1 + half, abs=1e-4)
    assert difference.ci_high == pytest.approx(0.34841, abs=1e-4)


def test_pairing_is_what_narrows_the_interval() -> None:
    """Both models swing together over seeds; the paired interval is a point (every difference 0.25) and
    excludes 0, although the two models' own spreads overlap."""
    difference = paired_difference([0.5, 0.75], [0.25, 0.5])
    assert (difference.mean, difference.ci_low, difference.ci_high) == (0.25, 0.25, 0.25)
    assert difference.excludes_zero()


def test_paired_values_must_pair() -> None:
    with pytest.raises(ValueError, match="equal"):
        paired_difference([0.5, 0.6], [0.5])
    with pytest.raises(ValueError):
        summarize([])
