"""Summary statistics for results over seeds: mean, sample standard deviation, and Student-t 95%
confidence intervals of a mean and of a paired difference.

Seeds are few (3-10), so intervals use Student's t with n - 1 degrees of freedom, not the normal
approximation. A *paired* interval compares two methods run on the same seeds (same stream draw,
same initial weights where they coincide): it is the interval of the mean of the per-seed
differences, much tighter than comparing two unpaired intervals when seeds share most of their
variance.

>>> s = summary([0.80, 0.82, 0.84])
>>> round(s.mean, 3), round(s.sd, 3), s.n
(0.82, 0.02, 3)
>>> [round(v, 4) for v in s.ci95]
[0.7703, 0.8697]
>>> d = paired([0.90, 0.91, 0.95], [0.80, 0.82, 0.84])
>>> round(d.mean, 4), d.n
(0.1, 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs

from jointnet.errors import JointNetError

__all__ = ["Summary", "paired", "summary", "t_quantile"]

# Two-sided 95% quantiles t_{0.975, df} for df = 1..30.
_T975 = (
    12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
    2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688,
    2.131449546, 2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845,
    2.073873068, 2.068657610, 2.063898562, 2.059538553, 2.055529439, 2.051830516, 2.048407142,
    2.045229642, 2.042272456,
)
_Z975 = 1.959963985


def t_quantile(df: int) -> float:
    """The two-sided 95% Student-t quantile t_{0.975, df}: exact (to 9 digits) for df <= 30, the
    Cornish-Fisher expansion beyond (error below 1e-4).

    >>> t_quantile(2), round(t_quantile(1000), 4)
    (4.30265273, 1.9623)
    """
    if df < 1:
        raise JointNetError(f"a t quantile needs at least 1 degree of freedom, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@attrs.frozen
class Summary:
    """Mean, sample standard deviation (0 for one value), count and 95% CI of the mean (the mean
    itself, twice, for one value: no interval can be claimed)."""

    mean: float
    sd: float
    n: int
    ci95: tuple[float, float]

    @property
    def half_width(self) -> float:
        return (self.ci95[1] - self.ci95[0]) / 2

    def to_dict(self) -> dict:
        return {"mean": self.mean, "sd": self.sd, "n": self.n, "ci95": list(self.ci95)}

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.sd:.4f}"


def summary(values: Sequence[float]) -> Summary:
    """`Summary` of `values` (at least one, all finite)."""
    xs = [float(v) for v in values]
    if not xs:
        raise JointNetError("no values to summarise")
    if not all(math.isfinite(x) for x in xs):
        raise JointNetError(f"cannot summarise non-finite values: {xs}")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1:
        return Summary(mean, 0.0, 1, (mean, mean))
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    h = t_quantile(n - 1) * sd / math.sqrt(n)
    return Summary(mean, sd, n, (mean - h, mean + h))


def paired(a: Sequence[float], b: Sequence[float]) -> Summary:
    """`Summary` of the per-seed differences ``a[i] - b[i]`` (same seeds, same order): its CI
    excluding 0 is the evidence that a and b differ.

    >>> paired([1.0, 2.0], [0.5, 1.0]).mean
    0.75
    """
    if len(a) != len(b):
        raise JointNetError(f"paired values need the same seeds: {len(a)} against {len(b)}")
    return summary([x - y for x, y in zip(a, b)])
