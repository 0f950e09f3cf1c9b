"""The option validators of `strategies.l2bg`'s strategies (`BindGrowOptions`, `L2BG`,
`RandomGrowth`): each raises ValueError naming the option, which `jointnet.experiments.strategy.get`
turns into one line (``bad options: key=value: reason``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from jointnet.experiments.trainer import TrainConfig
from strategies.l2bg_decide import GROW_ORDERS
from strategies.l2bg_rsa import DEPTH_CORRECTIONS


_CHOICES = {
    "rdm": ("pearson", "euclidean"), "compare": ("spearman", "pearson"), "record": ("post", "pre"),
    "norm": ("l2", "l1", "mean"), "normalise": ("plain", "softmax"),
    "init": ("copy", "fresh", "from_independent"), "head": ("per_task", "shared"), "first": ("fresh", "adopt"),
    "old_heads": ("drift", "lwf"), "grow_order": GROW_ORDERS, "depth_correction": DEPTH_CORRECTIONS,
    "granularity": ("layer", "channels"),
}


def _one_of(_inst, a: attrs.Attribute, value: Any) -> None:
    allowed = _CHOICES[a.name]
    if value not in allowed:
        raise ValueError(f"'{a.name}' must be one of {allowed} (got {value!r})")


def _is_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _check_delta(value: Any, what: str = "delta") -> None:
    vals = value if isinstance(value, (list, tuple)) else [value]
    if not vals or any(not _is_number(v) or not 0 <= v <= 1 for v in vals):
        raise ValueError(f"'{what}' must be a number in [0, 1] or a non-empty list of them (got {value!r})")


def _delta(_inst, a: attrs.Attribute, value: Any) -> None:
    _check_delta(value, a.name)


def _number(lo: float, *, strict: bool, hi: float | None = None):
    def check(_inst, a: attrs.Attribute, value: Any) -> None:
        if (not _is_number(value) or (value <= lo if strict else value < lo)
                or (hi is not None and value >= hi)):
            bound = f" and < {hi}" if hi is not None else ""
            raise ValueError(f"'{a.name}' must be a number {'>' if strict else '>='} {lo}{bound} (got {value!r})")
    return check


def _rsa_samples(_inst, a: attrs.Attribute, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 3):
        raise ValueError(f"'{a.name}' must be None (every validation input) or an int >= 3 (got {value!r})")


def _names_or_none(_inst, a: attrs.Attribute, value: Any) -> None:
    if value is not None and (not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value)):
        raise ValueError(f"'{a.name}' must be None or a list of task names (got {value!r})")


def _train_fields(_inst, a: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    known = set(attrs.fields_dict(TrainConfig))
    if not isinstance(value, Mapping) or set(value) - known:
        raise ValueError(f"'{a.name}' must be None or a dict of TrainConfig fields ({', '.join(sorted(known))}) "
                         f"(got {value!r})")


def _sequence(_inst, a: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"'{a.name}' must be a list of dicts (got {value!r})")
    keyed = [isinstance(e, Mapping) and "task" in e for e in value]
    if any(keyed) and not all(keyed):
        raise ValueError(f"'{a.name}': give every entry a 'task' key or none (got {value!r})")
    for e in value:
        if not isinstance(e, Mapping) or set(e) - {"task", "bind", "delta", "grow", "conflicts"}:
            raise ValueError(f"'{a.name}' entries are dicts with keys task, bind, delta, grow, conflicts (got {e!r})")
        d = e.get("delta")
        if d is not None and (not _is_number(d) or not 0 <= d <= 1):
            raise ValueError(f"'{a.name}' entries' delta is a number in [0, 1] (got {e!r})")
        if not isinstance(e.get("bind"), (str, type(None))) or not isinstance(e.get("task", ""), str):
            raise ValueError(f"'{a.name}' entries name tasks with strings (got {e!r})")
        grow = e.get("grow")
        if grow is not None and (not isinstance(grow, (list, tuple)) or not all(isinstance(g, str) for g in grow)):
            raise ValueError(f"'{a.name}' entries' grow is a list of slot names (got {e!r})")
        c = e.get("conflicts")
        if c is not None and (not isinstance(c, Mapping) or not c or not all(
                isinstance(k, str) and _is_number(v) and v >= 0 for k, v in c.items())):
            raise ValueError(f"'{a.name}' entries' conflicts map slot names to numbers >= 0 (got {e!r})")


def _n_grow(_inst, a: attrs.Attribute, value: Any) -> None:
    vals = value if isinstance(value, (list, tuple)) else [value]
    if value is not None and (not vals or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in vals)):
        raise ValueError(f"'{a.name}' must be None, an int >= 0 or a list of them (got {value!r})")


def _count_or_none(minimum: int):
    def check(_inst, a: attrs.Attribute, value: Any) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise ValueError(f"'{a.name}' must be None or an int >= {minimum} (got {value!r})")
    return check


def _count(minimum: int):
    def check(_inst, a: attrs.Attribute, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"'{a.name}' must be an int >= {minimum} (got {value!r})")
    return check


def _str_or_none(_inst, a: attrs.Attribute, value: Any) -> None:
    if value is not None and not isinstance(value, (str, Path)):
        raise ValueError(f"'{a.name}' must be None or a directory (got {value!r})")
