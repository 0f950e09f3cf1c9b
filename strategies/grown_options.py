"""GROWN's backbones and option validators: the named full-width backbones, the seed (every
Conv2d / Linear at a width ratio, spec §2.1), and the attrs validators of `strategies.grown.GROWN`
(each a one-line `ValueError` naming the option and the value, which `get` turns into a
`StrategyError` naming the strategy)."""

from __future__ import annotations

import math
from typing import Any

from jointnet import backbones
from jointnet.errors import StrategyError

__all__ = [
    "BACKBONES", "lenet", "full_layers", "seed_layers", "fail", "check_fraction", "check_number", "check_finite",
    "check_flag", "check_backbone", "check_target", "check_opt_fraction", "check_count", "check_opt_path",
]


def lenet(input_shape) -> list:
    """LeNet-5-like 20-50-800-500 (spec §4): conv5(20)-pool-conv5(50)-pool-fc800-fc500; the convs
    are unpadded for inputs of at least 28 pixels (the flattened size is then 800) and padded
    otherwise."""
    shape = tuple(input_shape)
    pad = 0 if min(shape[1:]) >= 28 else 2
    return [
        {"kind": "input", "shape": shape},
        {"kind": "conv", "out_ch": 20, "kernel": 5, "padding": pad}, {"kind": "relu"}, {"kind": "maxpool"},
        {"kind": "conv", "out_ch": 50, "kernel": 5, "padding": pad}, {"kind": "relu"}, {"kind": "maxpool"},
        {"kind": "flatten"},
        {"kind": "linear", "out_f": 800}, {"kind": "relu"},
        {"kind": "linear", "out_f": 500}, {"kind": "relu"},
    ]


def _mlp(input_shape) -> list:
    shape = tuple(input_shape)
    n = math.prod(shape)
    head = [{"kind": "input", "shape": shape}] + ([{"kind": "flatten"}] if len(shape) > 1 else [])
    return head + backbones.mlp(n, (256, 256))[1:]


BACKBONES = {"lenet": lenet, "vgg": backbones.vgg, "mlp": _mlp, "small_conv": backbones.small_conv}
"""Named backbones of the ``backbone`` option: name -> ``f(input_shape) -> layer list``."""

_GROWABLE = {"conv", "Conv2d", "linear", "fc", "Linear"}
_MERGES = {"add", "Add", "concat", "Concat"}


def fail(message: str, task: str | None = None) -> StrategyError:
    """GROWN's error, naming the strategy and the task."""
    return StrategyError(message, strategy="grown", task=task)


def full_layers(backbone: Any, input_shape) -> list:
    """The full-width backbone of option `backbone` for `input_shape` (a layer list)."""
    if backbone is None:
        backbone = "lenet" if len(tuple(input_shape)) == 3 else "mlp"
    if isinstance(backbone, str):
        return BACKBONES[backbone](tuple(input_shape))
    return [dict(i) if isinstance(i, dict) else i for i in backbone]


def seed_layers(layers: list, ratio: float, task: str | None = None) -> list:
    """`layers` with every Conv2d / Linear at ``max(2, ceil(ratio * width))`` channels.

    >>> [i.get("out_f") for i in seed_layers([{"kind": "linear", "out_f": 10}, {"kind": "relu"}], 0.25)]
    [3, None]

    Raises:
        StrategyError: a layer given as a spec object, or a merge (GROWN grows sequential nets).
    """
    out = []
    for item in layers:
        if not isinstance(item, dict):
            raise fail(f"GROWN needs a declarative backbone (dicts); got {item!r:.60}", task)
        kind = item.get("kind")
        if kind in _MERGES or "inputs" in item:
            raise fail(f"GROWN grows sequential backbones only; {item!r:.60} merges branches", task)
        item = dict(item)
        field = {"conv": "out_ch", "Conv2d": "out_ch"}.get(kind, "out_f")
        if kind in _GROWABLE:
            item[field] = max(2, math.ceil(ratio * item[field]))
        out.append(item)
    return out


# ---- option validators ----------------------------------------------------------------------------


def check_fraction(lo_open: bool):
    def check(_inst, a, value) -> None:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not ok or not (0 < value <= 1 if lo_open else 0 <= value <= 1):
            raise ValueError(f"'{a.name}' must be a number in {'(0' if lo_open else '[0'}, 1] (got {value!r})")
    return check


def check_number(lo: float, *, open_lo: bool = False):
    def check(_inst, a, value) -> None:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not ok or value < lo or (open_lo and value == lo):
            raise ValueError(f"'{a.name}' must be a finite number {'>' if open_lo else '>='} {lo} (got {value!r})")
    return check


def check_finite(_inst, a, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"'{a.name}' must be a finite number (got {value!r})")


def check_flag(_inst, a, value) -> None:
    if type(value) is not bool:
        raise ValueError(f"'{a.name}' must be True or False (got {value!r})")


def check_backbone(_inst, a, value) -> None:
    if value is None or (isinstance(value, str) and value in BACKBONES):
        return
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"'{a.name}' must be None, one of {sorted(BACKBONES)} or a layer list (got {value!r:.60})")


def check_target(_inst, a, value) -> None:
    if value in ("max", "scratch", "finetune"):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"'{a.name}' must be 'max', 'scratch', 'finetune' or an accuracy in [0, 1] (got {value!r})")


def check_opt_fraction(inst, a, value) -> None:
    if value is not None:
        check_fraction(True)(inst, a, value)


def check_count(_inst, a, value) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"'{a.name}' must be an int >= 0 (got {value!r})")


def check_opt_path(_inst, a, value) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"'{a.name}' must be None or a folder path (got {value!r})")
