"""The values every stream is made of (`Task`, `Stream`), option checks, and the registry.

A stream function registers itself with `_register` (it then appears in `STREAMS` and
`get_stream` builds it by name); the Stream it returns records every effective option.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import torch

from jointnet.errors import StreamError

# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


def _check_xy(task: Task, split: str) -> None:
    x, y = getattr(task, f"x_{split}"), getattr(task, f"y_{split}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise StreamError(f"task {task.name!r}: x_{split} and y_{split} must be tensors")
    if x.dtype != torch.float32 or y.dtype != torch.int64 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise StreamError(
            f"task {task.name!r}: {split} split must be float32 x with one int64 label per row "
            f"(got x {x.dtype} {tuple(x.shape)}, y {y.dtype} {tuple(y.shape)})"
        )
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(task.classes)):
        raise StreamError(f"task {task.name!r}: {split} labels must lie in 0..{len(task.classes) - 1}")


@attrs.frozen(eq=False, repr=False)
class Task:
    """One task of a stream: its data splits, the classes behind its labels, and how it was made.

    Attributes:
        name: ``t1``, ``t2``, ...
        classes: ``classes[label]`` is the source class id behind ``label``.
        x_train, y_train, x_val, y_val, x_test, y_test: float32 inputs in [0, 1] and int64
            labels in ``0..n_classes-1``.
        class_names: human-readable name of each label.
        metadata: description, repeats / differs, transform, source indices (see
            `jointnet.experiments.streams`).
    """

    name: str
    classes: tuple[int, ...] = attrs.field(converter=tuple)
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: tuple[str, ...] = attrs.field(converter=tuple, default=())
    metadata: Mapping[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        for split in ("train", "val", "test"):
            _check_xy(self, split)
        shapes = {tuple(getattr(self, f"x_{s}").shape[1:]) for s in ("train", "val", "test")}
        if len(shapes) != 1:
            raise StreamError(f"task {self.name!r}: splits have different input shapes {sorted(shapes)}")

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_train, self.y_train

    @property
    def val(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_val, self.y_val

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_test, self.y_test

    @property
    def repeats(self) -> str | None:
        return self.metadata.get("repeats")

    def __repr__(self) -> str:
        return (
            f"Task(name={self.name!r}, classes={self.classes!r}, train={len(self.y_train)}, "
            f"val={len(self.y_val)}, test={len(self.y_test)})"
        )


@attrs.frozen(eq=False, repr=False)
class Stream:
    """A named sequence of tasks, with the seed and options that rebuild it exactly.

    Index by position or by task name; iterate over tasks; ``str(stream)`` lists one task a line.
    """

    name: str
    tasks: tuple[Task, ...] = attrs.field(converter=tuple)
    seed: int = 0
    description: str = ""
    options: Mapping[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise StreamError(f"stream {self.name!r}: task names must be unique (got {names})")

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __getitem__(self, key: int | str) -> Task:
        if isinstance(key, str):
            for t in self.tasks:
                if t.name == key:
                    return t
            raise KeyError(f"stream {self.name!r} has no task {key!r}; tasks are {', '.join(self.task_names)}")
        return self.tasks[key]

    def __repr__(self) -> str:
        return f"Stream(name={self.name!r}, seed={self.seed}, tasks={self.task_names!r})"

    def __str__(self) -> str:
        lines = [f"{self.name} (seed {self.seed}): {self.description}"]
        for t in self.tasks:
            rep = f"  repeats {t.repeats}: {t.metadata.get('differs')}" if t.repeats else ""
            lines.append(
                f"  {t.name:<5} classes={list(t.classes)} transform={t.metadata.get('transform', '?')} "
                f"train={len(t.y_train)} val={len(t.y_val)} test={len(t.y_test)}{rep}"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Option checks (each raises a StreamError naming the option and the value it got)
# --------------------------------------------------------------------------------------------


def _int(name: str, v: Any, lo: int, hi: int | None = None, *, none: bool = False) -> None:
    if v is None and none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise StreamError(f"{name!r} must be an int {rng}{' or None' if none else ''} (got {v!r})")


def _frac(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
        raise StreamError(f"{name!r} must be a number in [0, 1) (got {v!r})")


def _pair(name: str, v: Any) -> tuple[int, int]:
    ok = isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
    if not ok or v[0] < 1 or v[1] < 0:
        raise StreamError(f"{name!r} must be a (train, val) pair of ints per class, train >= 1, val >= 0 (got {v!r})")
    return int(v[0]), int(v[1])


def _pairs(**sizes: Any) -> dict[str, tuple[int, int]]:
    """Check named ``(train, val)`` sizes per class, e.g. ``_pairs(large=(400, 200), small=...)``."""
    return {name: _pair(name, v) for name, v in sizes.items()}


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

STREAMS: dict[str, Callable[..., Stream]] = {}


def _register(name: str) -> Callable[[Callable[..., Stream]], Callable[..., Stream]]:
    """Register a stream function; the Stream it returns records every effective option."""

    def deco(fn: Callable[..., Stream]) -> Callable[..., Stream]:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Stream:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as e:
                opts = [p for p in sig.parameters if p not in ("seed", "data_dir")]
                raise StreamError(f"stream {name!r}: {e}; its options are {', '.join(opts)}") from None
            bound.apply_defaults()
            _int("seed", bound.arguments["seed"], 0)
            stream = fn(*bound.args, **bound.kwargs)
            opts = {k: v for k, v in bound.arguments.items() if k not in ("seed", "data_dir")}
            return attrs.evolve(stream, options=opts)

        STREAMS[name] = wrapper
        return wrapper

    return deco


def get_stream(name: str, **kwargs: Any) -> Stream:
    """Build the stream registered as `name` with `kwargs` (``seed``, ``data_dir``, options).

    Raises:
        StreamError: unknown name (the message lists the known ones) or a bad option.
        DataError: the data files are missing or corrupt.

    Example:
        >>> get_stream("synthetic", n_tasks=2).task_names
        ('t1', 't2')
        >>> get_stream("split-mnist")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        jointnet.errors.StreamError: unknown stream 'split-mnist'; did you mean 'split-fmnist'? Known streams: ...
    """
    if name not in STREAMS:
        close = difflib.get_close_matches(name, STREAMS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise StreamError(f"unknown stream {name!r}{hint} Known streams: {', '.join(STREAMS)}")
    return STREAMS[name](**kwargs)
