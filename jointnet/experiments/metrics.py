"""Continual-learning metrics with pinned definitions.

`R` is the accuracy matrix: ``R[i][j]`` is the accuracy on task j after training tasks 0..i
(fractions in [0, 1]; entries with j > i are not used and may be None). With T tasks:

- **AP** (average accuracy) = (1/T) sum_j R[T-1][j]                           (PAR §5, SPG ACC)
- **AF** (average forgetting, PAR's form) = (1/T) sum_j (R[T-1][j] - R[j][j])  (divides by T;
  <= 0 means forgetting; the last task contributes 0)
- **F** (forgetting, Chaudhry et al. 2018, "Riemannian Walk", the form most CL libraries report) =
  (1/(T-1)) sum_{j<T-1} (max_{i in [j, T-2]} R[i][j] - R[T-1][j]): the best accuracy task j
  had before the last task minus its final one; positive means forgetting (negative only when
  final accuracies beat every earlier one); 0.0 for a single task
- **BWT** (backward transfer) = (1/(T-1)) sum_{j<T-1} (R[T-1][j] - R[j][j])    (SPG §4.2, L2BG §4)
- **FWT** against an explicit reference accuracy per task (e.g. independent nets):
  (1/T) sum_j (R[j][j] - ref[j])                                              (SPG §4.2, L2BG §4)

AF and BWT compare the final accuracy with the accuracy *just after* training each task; F with
the *best* accuracy a task had before the end, so F >= -BWT (F counts a task whose accuracy rose
and fell again; BWT nets the rise against the fall).

>>> R = [[0.9, None], [0.8, 0.7]]
>>> round(average_accuracy(R), 3), round(average_forgetting(R), 3), round(bwt(R), 3), round(forgetting(R), 3)
(0.75, -0.05, -0.1, 0.1)
"""

from __future__ import annotations

from collections.abc import Sequence

from jointnet.errors import JointNetError

__all__ = ["average_accuracy", "average_forgetting", "bwt", "forgetting", "fwt", "summarize"]

Matrix = Sequence[Sequence[float | None]]


def _square(R: Matrix) -> int:
    T = len(R)
    if T == 0:
        raise JointNetError("the accuracy matrix is empty")
    for i, row in enumerate(R):
        if len(row) < i + 1:
            raise JointNetError(f"row {i} of the accuracy matrix has {len(row)} entries; it needs {i + 1}")
        for j in range(i + 1):
            if row[j] is None:
                raise JointNetError(f"R[{i}][{j}] is missing")
    if len(R[-1]) < T:
        raise JointNetError(f"the last row needs {T} entries")
    return T


def average_accuracy(R: Matrix) -> float:
    """AP: mean accuracy over all tasks after the last one."""
    T = _square(R)
    return sum(R[T - 1][j] for j in range(T)) / T


def average_forgetting(R: Matrix) -> float:
    """AF as in PAR: mean over all T tasks of R[T-1][j] - R[j][j]."""
    T = _square(R)
    return sum(R[T - 1][j] - R[j][j] for j in range(T)) / T


def bwt(R: Matrix) -> float:
    """BWT over the first T-1 tasks (0.0 for a single task)."""
    T = _square(R)
    if T == 1:
        return 0.0
    return sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)


def forgetting(R: Matrix) -> float:
    """F (Chaudhry et al. 2018): for each task j < T-1, its best accuracy before the last task,
    max over i in [j, T-2] of R[i][j], minus its final accuracy R[T-1][j]; the mean over the first
    T-1 tasks (0.0 for a single task). Positive means forgetting.

    >>> round(forgetting([[0.5, None, None], [0.9, 0.8, None], [0.6, 0.8, 0.7]]), 4)  # (0.3 + 0) / 2
    0.15
    """
    T = _square(R)
    if T == 1:
        return 0.0
    return sum(max(R[i][j] for i in range(j, T - 1)) - R[T - 1][j] for j in range(T - 1)) / (T - 1)


def fwt(R: Matrix, reference: Sequence[float]) -> float:
    """FWT against `reference[j]`, the accuracy a reference learner (e.g. an independent net)
    reaches on task j: mean of R[j][j] - reference[j]."""
    T = _square(R)
    if len(reference) != T:
        raise JointNetError(f"FWT needs one reference accuracy per task ({T}), got {len(reference)}")
    return sum(R[j][j] - reference[j] for j in range(T)) / T


def summarize(R: Matrix, reference: Sequence[float] | None = None) -> dict[str, float]:
    """AP, AF, F, BWT and (with a reference) FWT in one dict."""
    out = {"AP": average_accuracy(R), "AF": average_forgetting(R), "F": forgetting(R), "BWT": bwt(R)}
    if reference is not None:
        out["FWT"] = fwt(R, reference)
    return out
