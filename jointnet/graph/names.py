"""Names and sizes: the one character set and the bounds every entry point enforces.

Everything that names something in a net (node ids, task names, parameter names, mask and group
ids, tensor keys, rewrite names) is checked here, by rewrites, by layer specs, by the snapshot
loader and by replay alike, so that no text from a file or a caller ever reaches generated code
except as a validated identifier, and no declared size is computed with before it is bounded.

- A **name** (node id, task name, parameter name, rewrite name) is 1 to `MAX_NAME` ASCII
  characters from ``A-Z a-z 0-9 _ . : + @ / -``, not starting with one of ``. : + @ / -``.
- A **key** (tensor key, channel group id, lineage tag) is the same character set, 1 to `MAX_KEY`
  characters: keys are made from names (``fc1.weight@3fa2...``), so they may be longer.
- A **shape** has at most `MAX_NDIM` axes, each an int in [1, `MAX_DIM`] (0 allowed where the
  caller says so), and at most `MAX_NUMEL` elements.

>>> check_name("head.t2", "node")
'head.t2'
>>> check_name("a\\nimport os", "node")
Traceback (most recent call last):
...
jointnet.errors.SpecError: node must be a name of 1-128 characters from A-Z a-z 0-9 _ . : + @ / - (not starting with . : + @ / -); got 'a\\nimport os'
"""

from __future__ import annotations

import math
import re
from typing import Any

from jointnet.errors import SpecError

__all__ = [
    "MAX_NAME", "MAX_KEY", "MAX_NDIM", "MAX_DIM", "MAX_NUMEL", "CHARSET",
    "is_name", "is_key", "check_name", "check_key", "check_opt_name", "check_shape", "check_int",
    "check_float",
]

MAX_NAME = 128
MAX_KEY = 512
MAX_NDIM = 8
MAX_DIM = 1 << 24
MAX_NUMEL = 1 << 31
CHARSET = "A-Z a-z 0-9 _ . : + @ / -"

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:+@/\-]{0,%d}" % (MAX_NAME - 1))
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:+@/\-]{0,%d}" % (MAX_KEY - 1))


def is_name(value: Any) -> bool:
    """Whether `value` is a valid name (see the module docstring)."""
    return type(value) is str and _NAME.fullmatch(value) is not None


def is_key(value: Any) -> bool:
    """Whether `value` is a valid key (see the module docstring)."""
    return type(value) is str and _KEY.fullmatch(value) is not None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_name(value: Any, what: str) -> str:
    """`value` if it is a valid name, else `SpecError` naming `what`."""
    if type(value) is str and _NAME.fullmatch(value):
        return value
    raise SpecError(f"{what} must be a name of 1-{MAX_NAME} characters from {CHARSET} "
                    f"(not starting with . : + @ / -); got {_shown(value)}")


def check_opt_name(value: Any, what: str) -> str | None:
    """None, or a valid name."""
    return None if value is None else check_name(value, what)


def check_key(value: Any, what: str) -> str:
    """`value` if it is a valid key, else `SpecError` naming `what`."""
    if type(value) is str and _KEY.fullmatch(value):
        return value
    raise SpecError(f"{what} must be a key of 1-{MAX_KEY} characters from {CHARSET} "
                    f"(not starting with . : + @ / -); got {_shown(value)}")


def check_int(value: Any, what: str, lo: int = 1, hi: int = MAX_DIM) -> int:
    """`value` if it is an int (not a bool) in [lo, hi], else `SpecError` naming `what`."""
    if type(value) is int and lo <= value <= hi:
        return value
    raise SpecError(f"{what} must be an int in [{lo}, {hi}]; got {_shown(value)}")


def check_float(value: Any, what: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """`value` as a float if it is a finite int or float (not a bool) in [lo, hi]."""
    if type(value) in (int, float) and math.isfinite(value) and lo <= value <= hi:
        return float(value)
    raise SpecError(f"{what} must be a finite number in [{lo}, {hi}]; got {_shown(value)}")


def check_shape(value: Any, what: str, *, zero: bool = False) -> tuple[int, ...]:
    """`value` as a tuple of ints if it is a bounded shape (module docstring), else `SpecError`.

    The axis count is checked before anything else and the element count only after each axis
    is bounded, so a hostile shape costs O(MAX_NDIM), never a product of huge numbers.

    >>> check_shape([2, 3], "shape")
    (2, 3)
    """
    if not isinstance(value, (tuple, list)):
        raise SpecError(f"{what} must be a list of ints; got {_shown(value)}")
    if len(value) > MAX_NDIM:
        raise SpecError(f"{what} has {len(value)} axes; at most {MAX_NDIM} are allowed")
    lo = 0 if zero else 1
    for v in value:
        if type(v) is not int or not lo <= v <= MAX_DIM:
            raise SpecError(f"{what} must hold ints in [{lo}, {MAX_DIM}]; got {_shown(value)}")
    out = tuple(value)
    if math.prod(out) > MAX_NUMEL:
        raise SpecError(f"{what} {list(out)} has {math.prod(out)} elements; at most {MAX_NUMEL} are allowed")
    return out
