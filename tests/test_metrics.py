"""Metrics on hand-computed matrices."""

import pytest

from jointnet.errors import JointNetError
from jointnet.experiments.metrics import average_accuracy, average_forgetting, bwt, fwt, summarize

# 3 tasks; R[i][j] = accuracy on task j after training task i.
R = [
    [0.90, None, None],
    [0.70, 0.80, None],
    [0.60, 0.75, 0.95],
]


def test_ap_is_mean_of_last_row():
    # (0.60 + 0.75 + 0.95) / 3 = 2.30 / 3
    assert average_accuracy(R) == pytest.approx(2.30 / 3)


def test_af_divides_by_all_tasks():
    # ((0.60-0.90) + (0.75-0.80) + (0.95-0.95)) / 3 = -0.35 / 3
    assert average_forgetting(R) == pytest.approx(-0.35 / 3)


def test_bwt_over_first_t_minus_1_tasks():
    # ((0.60-0.90) + (0.75-0.80)) / 2 = -0.175
    assert bwt(R) == pytest.approx(-0.175)


def test_fwt_against_reference():
    # ((0.90-0.85) + (0.80-0.90) + (0.95-0.95)) / 3 = -0.05 / 3
    assert fwt(R, [0.85, 0.90, 0.95]) == pytest.approx(-0.05 / 3)


def test_no_forgetting_gives_zero():
    R0 = [[0.5, None], [0.5, 0.9]]
    assert bwt(R0) == 0.0 and average_forgetting(R0) == 0.0


def test_single_task():
    assert summarize([[0.7]]) == {"AP": 0.7, "AF": 0.0, "BWT": 0.0}


def test_summarize_with_reference():
    s = summarize(R, [0.9, 0.8, 0.95])
    assert s["FWT"] == pytest.approx(0.0)
    assert set(s) == {"AP", "AF", "BWT", "FWT"}


@pytest.mark.parametrize("bad", [[], [[0.5, None], [None, 0.5]], [[0.5], [0.4]]])
def test_malformed_matrices_raise(bad):
    with pytest.raises(JointNetError):
        average_accuracy(bad)


def test_fwt_reference_length():
    with pytest.raises(JointNetError, match="one reference accuracy per task"):
        fwt(R, [0.9])
