"""Seed statistics on hand-computed values."""

from __future__ import annotations

import math

import pytest

from jointnet.errors import JointNetError
from jointnet.experiments.stats import paired, summary, t_quantile


def test_summary_by_hand():
    s = summary([0.80, 0.82, 0.84])
    # sd = sqrt((0.02^2 + 0 + 0.02^2) / 2) = 0.02; half width = t_{0.975,2} * 0.02 / sqrt(3)
    h = 4.302652730 * 0.02 / math.sqrt(3)
    assert (s.mean, s.n) == (pytest.approx(0.82), 3) and s.sd == pytest.approx(0.02)
    assert s.ci95 == (pytest.approx(0.82 - h), pytest.approx(0.82 + h))
    assert s.half_width == pytest.approx(h) and round(h, 6) == 0.049683


def test_paired_is_the_interval_of_differences():
    a, b = [0.90, 0.91, 0.95], [0.80, 0.82, 0.84]  # differences 0.10, 0.09, 0.11
    d = paired(a, b)
    assert d.mean == pytest.approx(0.10) and d.sd == pytest.approx(0.01)
    assert d.ci95[0] == pytest.approx(0.10 - 4.302652730 * 0.01 / math.sqrt(3))
    assert d.ci95[0] > 0  # a beats b on every seed by about the same margin: a tight interval
    # unpaired, the intervals of a and b overlap: pairing is what shows the difference
    assert summary(a).ci95[0] < summary(b).ci95[1]


def test_one_value_and_bad_input():
    assert summary([0.5]).to_dict() == {"mean": 0.5, "sd": 0.0, "n": 1, "ci95": [0.5, 0.5]}
    with pytest.raises(JointNetError, match="no values"):
        summary([])
    with pytest.raises(JointNetError, match="non-finite"):
        summary([0.5, float("nan")])
    with pytest.raises(JointNetError, match="same seeds"):
        paired([1.0], [1.0, 2.0])


def test_t_quantiles():
    assert t_quantile(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(9) == pytest.approx(2.2622, abs=1e-4)
    assert t_quantile(60) == pytest.approx(2.0003, abs=1e-4)  # the expansion beyond the table
    assert t_quantile(120) == pytest.approx(1.9799, abs=1e-4)
    with pytest.raises(JointNetError):
        t_quantile(0)
