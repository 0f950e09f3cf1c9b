"""A seeded synthetic stream that needs no files (for fast tests and examples)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from jointnet.errors import StreamError
from jointnet.experiments.streams.core import Stream, Task, _int, _register
from jointnet.experiments.streams.sampling import _rng


def _noisy_samples(
    protos: torch.Tensor, n: int, noise: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` samples of each prototype's class, shuffled: ``clamp(prototype + noise * N(0, 1), 0, 1)``."""
    k, shape = protos.shape[0], protos.shape[1:]
    y = torch.arange(k).repeat_interleave(n)
    y = y[torch.randperm(len(y), generator=gen)]
    x = (protos[y] + noise * torch.randn((len(y), *shape), generator=gen)).clamp_(0.0, 1.0)
    return x, y


@_register("synthetic")
def synthetic(
    seed: int = 0,
    data_dir: Any = None,
    *,
    n_tasks: int = 5,
    classes_per_task: int = 2,
    input_shape: Sequence[int] = (1, 28, 28),
    n_train_per_class: int = 50,
    n_val_per_class: int = 10,
    n_test_per_class: int = 20,
    noise: float = 0.3,
    repeat_first: bool = False,
) -> Stream:
    """A seeded synthetic stream that needs no files: Gaussian noise around class prototypes.

    Task i, class j has a prototype drawn uniformly in [0, 1]^input_shape; its images are
    ``clamp(prototype + noise * N(0, 1), 0, 1)``. ``classes`` are global ids ``i * k + j``.
    With ``repeat_first`` the last task reuses t1's prototypes (fresh samples) and records
    ``repeats="t1"``. `data_dir` is ignored. ``input_shape`` may be flat, e.g. ``(784,)``.

    Args:
        n_tasks: number of tasks (>= 1).
        classes_per_task: classes per task (>= 1); labels 0..k-1.
        n_train_per_class: training images per class (>= 1).
        n_val_per_class: validation images per class (>= 0).
        n_test_per_class: test images per class (>= 1).
        noise: the standard deviation of the Gaussian noise around each prototype (>= 0).
        repeat_first: the last task repeats t1's classes (its prototypes, fresh samples).
    """
    _int("n_tasks", n_tasks, 1)
    _int("classes_per_task", classes_per_task, 1)
    for name, v in (("n_train_per_class", n_train_per_class), ("n_test_per_class", n_test_per_class)):
        _int(name, v, 1)
    _int("n_val_per_class", n_val_per_class, 0)
    shape_ok = isinstance(input_shape, (tuple, list)) and len(input_shape) > 0
    if not (shape_ok and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape)):
        raise StreamError(f"'input_shape' must be a non-empty tuple of positive ints (got {input_shape!r})")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
        raise StreamError(f"'noise' must be a number >= 0 (got {noise!r})")
    if repeat_first and n_tasks < 2:
        raise StreamError("'repeat_first' needs n_tasks >= 2")
    shape = tuple(input_shape)
    k = classes_per_task
    tasks = []
    for i in range(n_tasks):
        proto_task = 0 if repeat_first and i == n_tasks - 1 else i
        protos = torch.rand((k, *shape), generator=_rng(seed, "prototypes", proto_task))
        g = _rng(seed, "samples", i)
        xtr, ytr = _noisy_samples(protos, n_train_per_class, noise, g)
        xva, yva = _noisy_samples(protos, n_val_per_class, noise, g)
        xte, yte = _noisy_samples(protos, n_test_per_class, noise, g)
        classes = tuple(proto_task * k + j for j in range(k))
        meta: dict[str, Any] = {
            "description": f"{k}-way synthetic, Gaussian noise {noise} around seeded prototypes",
            "dataset": "synthetic", "transform": "identity", "repeats": None, "differs": None,
        }
        if proto_task != i:
            meta["repeats"] = "t1"
            meta["differs"] = "same prototypes and labels as t1; fresh samples"
        tasks.append(Task(f"t{i + 1}", classes, xtr, ytr, xva, yva, xte, yte,
                          tuple(f"proto{c}" for c in classes), meta))
    return Stream("synthetic", tasks, seed, f"{n_tasks} synthetic {k}-way tasks of shape {shape}")
