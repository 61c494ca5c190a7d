"""Intervals for accuracies: Wilson for one proportion, a seeded paired bootstrap for a
difference; checked against published values and against a plain index-resampling bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.benchmarks.intervals import paired_bootstrap, wilson


def test_wilson_matches_published_values():
    # Newcombe (1998), Statistics in Medicine 17:857, table I: 81/263 -> 0.2553 to 0.3662
    iv = wilson(81, 263)
    assert iv.estimate == pytest.approx(81 / 263)
    assert (round(iv.low, 4), round(iv.high, 4)) == (0.2553, 0.3662)
    assert iv.level == 0.95 and iv.method == "wilson"


def test_wilson_edges_stay_inside_zero_one():
    none, every = wilson(0, 10), wilson(10, 10)
    assert none.low == 0.0 and 0.25 < none.high < 0.35
    assert every.high == 1.0 and 0.65 < every.low < 0.75
    empty = wilson(0, 0)
    assert math.isnan(empty.estimate) and (empty.low, empty.high) == (0.0, 1.0)
    with pytest.raises(ValueError, match="within 0..n"):
        wilson(5, 3)


def test_wilson_narrows_with_more_questions():
    small, large = wilson(50, 100), wilson(1000, 2000)
    assert large.high - large.low < (small.high - small.low) / 4


def test_paired_bootstrap_is_seeded_and_matches_index_resampling():
    rng = np.random.default_rng(7)
    a = rng.random(500) < 0.55
    b = rng.random(500) < 0.50
    iv = paired_bootstrap(a, b, resamples=4000, seed=3)
    assert iv == paired_bootstrap(a, b, resamples=4000, seed=3)
    assert iv.estimate == pytest.approx(a.mean() - b.mean())
    assert iv.low < iv.estimate < iv.high
    # the textbook version: resample question indices, take the mean difference
    idx = np.random.default_rng(11).integers(0, 500, size=(4000, 500))
    ref = np.percentile(a[idx].mean(axis=1) - b[idx].mean(axis=1), [2.5, 97.5])
    assert iv.low == pytest.approx(ref[0], abs=0.01) and iv.high == pytest.approx(ref[1], abs=0.01)
    assert "paired bootstrap (4000 resamples, seed 3)" == iv.method


def test_paired_bootstrap_of_identical_systems_is_zero_and_rejects_unpaired_input():
    same = [True, False, True, True]
    iv = paired_bootstrap(same, same)
    assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same questions"):
        paired_bootstrap([True], [True, False])
