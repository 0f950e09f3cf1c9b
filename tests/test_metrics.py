"""Metrics on hand-computed matrices."""

import pytest

from jointnet.errors import JointNetError
from hypothesis import given
from hypothesis import strategies as st

from jointnet.experiments.metrics import average_accuracy, average_forgetting, bwt, forgetting, fwt, summarize

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


def test_forgetting_is_best_earlier_minus_final():
    # task 0: max(R[0][0], R[1][0]) - R[2][0] = 0.90 - 0.60 = 0.30
    # task 1: max(R[1][1]) - R[2][1] = 0.80 - 0.75 = 0.05; mean over the first T-1 = 0.175
    assert forgetting(R) == pytest.approx(0.175)


def test_forgetting_uses_the_best_earlier_accuracy_not_the_first():
    # task 0 rose after task 1 (0.5 -> 0.9) and fell at the end: F counts 0.9 - 0.6 = 0.3,
    # BWT only R[2][0] - R[0][0] = +0.1; task 1: 0.8 - 0.8 = 0
    R2 = [[0.5, None, None], [0.9, 0.8, None], [0.6, 0.8, 0.7]]
    assert forgetting(R2) == pytest.approx((0.3 + 0.0) / 2)
    assert bwt(R2) == pytest.approx((0.1 + 0.0) / 2)


def test_forgetting_is_negative_only_for_gains():
    # every task ends better than it ever was: F = ((0.5-0.7) + (0.6-0.9)) / 2 = -0.25
    assert forgetting([[0.5, None, None], [0.4, 0.6, None], [0.7, 0.9, 0.8]]) == pytest.approx(-0.25)


@given(st.integers(1, 6).flatmap(lambda T: st.lists(
    st.lists(st.floats(0, 1), min_size=T, max_size=T), min_size=T, max_size=T)))
def test_forgetting_bounds_minus_bwt(rows):
    # F_j = max_i R[i][j] - R[T-1][j] >= R[j][j] - R[T-1][j] = -BWT_j, task by task
    R3 = [[a if j <= i else None for j, a in enumerate(row)] for i, row in enumerate(rows)]
    assert forgetting(R3) >= -bwt(R3) - 1e-12
    # a column that never moves forgets nothing
    flat = [[rows[j][j] if j <= i else None for j in range(len(rows))] for i in range(len(rows))]
    assert forgetting(flat) == pytest.approx(0.0)


def test_fwt_against_reference():
    # ((0.90-0.85) + (0.80-0.90) + (0.95-0.95)) / 3 = -0.05 / 3
    assert fwt(R, [0.85, 0.90, 0.95]) == pytest.approx(-0.05 / 3)


def test_no_forgetting_gives_zero():
    R0 = [[0.5, None], [0.5, 0.9]]
    assert bwt(R0) == 0.0 and average_forgetting(R0) == 0.0 and forgetting(R0) == 0.0


def test_single_task():
    assert summarize([[0.7]]) == {"AP": 0.7, "AF": 0.0, "F": 0.0, "BWT": 0.0}


def test_summarize_with_reference():
    s = summarize(R, [0.9, 0.8, 0.95])
    assert s["FWT"] == pytest.approx(0.0)
    assert set(s) == {"AP", "AF", "F", "BWT", "FWT"}
    assert s["F"] == pytest.approx(0.175)


@pytest.mark.parametrize("bad", [[], [[0.5, None], [None, 0.5]], [[0.5], [0.4]]])
def test_malformed_matrices_raise(bad):
    with pytest.raises(JointNetError):
        average_accuracy(bad)


def test_fwt_reference_length():
    with pytest.raises(JointNetError, match="one reference accuracy per task"):
        fwt(R, [0.9])
