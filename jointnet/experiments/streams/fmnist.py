"""Split, permuted and rotated Fashion-MNIST."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from jointnet.errors import StreamError
from jointnet.experiments.streams.core import Stream, _int, _register
from jointnet.experiments.streams.sampling import (
    _draw_task,
    _fmnist,
    _make_task,
    _pools,
    _rng,
    _Sample,
    _sample_options,
    _Source,
    _split_groups,
    _split_stream,
)
from jointnet.experiments.streams.transforms import permute_pixels, rotate


@_register("split-fmnist")
def split_fmnist(
    seed: int = 0,
    data_dir: Any = None,
    *,
    n_tasks: int | None = None,
    classes_per_task: int = 2,
    shuffle_classes: bool = False,
    n_train_per_task: int | None = None,
    n_test_per_task: int | None = None,
    val_fraction: float = 0.1,
) -> Stream:
    """Split Fashion-MNIST: disjoint class groups, one task each (default 5 x 2: (0,1), (2,3), ...).

    Args:
        seed: seeds the class order (with ``shuffle_classes``), the image sample and the val split.
        data_dir: where Fashion-MNIST is (see `jointnet.experiments.data.load_fashion_mnist`).
        n_tasks: default ``10 // classes_per_task``; ``n_tasks * classes_per_task <= 10``.
        classes_per_task: classes per task; labels are 0..k-1 in ascending class order.
        shuffle_classes: draw the class order from the seed instead of 0..9.
        n_train_per_task: images drawn from the training set per task (balanced over classes)
            *before* the validation split; None: all of them (12000 for 2 classes).
        n_test_per_task: test images per task (balanced); None: all (2000 for 2 classes).
        val_fraction: share of each class's drawn images held out for validation.
    """
    groups = _split_groups(seed, 10, n_tasks, classes_per_task, shuffle_classes)
    sample = _sample_options(n_train_per_task, n_test_per_task, val_fraction)
    desc = f"Fashion-MNIST split into {len(groups)} disjoint groups of {classes_per_task} classes"
    return _split_stream("split-fmnist", _fmnist(data_dir), groups, seed, sample, desc)


def _same_images_stream(
    stream: str,
    src: _Source,
    seed: int,
    sample: _Sample,
    views: Sequence[tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]],
    description: str,
) -> Stream:
    """One 10-way task per ``(transform, metadata)`` view, all showing the *same* drawn images."""
    classes = list(range(10))
    tr, va, te = _draw_task(_pools(src, seed), classes, _rng(seed, "order"), sample)
    tasks = [
        _make_task(f"t{i + 1}", src, classes, tr, va, te, transform=fn, metadata=meta)
        for i, (fn, meta) in enumerate(views)
    ]
    return Stream(stream, tasks, seed, description)


@_register("permuted-fmnist")
def permuted_fmnist(
    seed: int = 0,
    data_dir: Any = None,
    *,
    n_tasks: int = 5,
    n_train_per_task: int | None = 10000,
    n_test_per_task: int | None = None,
    val_fraction: float = 0.1,
    identity_first: bool = True,
) -> Stream:
    """Permuted Fashion-MNIST: 10-way tasks, each with its own fixed pixel permutation.

    Every task shows the *same* sampled images (one draw by seed), each through its permutation
    (``metadata["permutation"]``), so tasks differ only in pixel order. Task t1 uses the identity
    (plain Fashion-MNIST, the usual convention) unless ``identity_first=False``; the other
    permutations are drawn from the seed.

    Args:
        n_tasks: number of tasks (>= 1).
        n_train_per_task: training images drawn (balanced over classes) before the val split;
            None: all 60000.
        n_test_per_task: test images (balanced); None: all 10000.
        val_fraction: share of each class held out for validation.
        identity_first: t1 sees unpermuted images.
    """
    _int("n_tasks", n_tasks, 1)
    sample = _sample_options(n_train_per_task, n_test_per_task, val_fraction, at_least=10)
    src = _fmnist(data_dir)
    n_pix = math.prod(src.train_x.shape[1:])
    views = []
    for i in range(n_tasks):
        plain = i == 0 and identity_first
        perm = torch.arange(n_pix) if plain else torch.randperm(n_pix, generator=_rng(seed, "permutation", i))
        meta = {
            "description": "10-way Fashion-MNIST" + (", pixels in their usual order" if plain else ", pixels permuted"),
            "transform": "identity" if plain else "permute",
            "permutation": perm,
        }
        views.append((functools.partial(permute_pixels, permutation=perm), meta))
    desc = f"{n_tasks} pixel-permuted copies of the same Fashion-MNIST sample"
    desc += ", t1 unpermuted" if identity_first else ""
    return _same_images_stream("permuted-fmnist", src, seed, sample, views, desc)


@_register("rotated-fmnist")
def rotated_fmnist(
    seed: int = 0,
    data_dir: Any = None,
    *,
    n_tasks: int = 5,
    max_angle: float = 180.0,
    angles: Sequence[float] | None = None,
    n_train_per_task: int | None = 10000,
    n_test_per_task: int | None = None,
    val_fraction: float = 0.1,
) -> Stream:
    """Rotated Fashion-MNIST: 10-way tasks, task i rotated by a fixed angle.

    Angles are evenly spaced, ``i * max_angle / (n_tasks - 1)`` (0, 45, 90, 135, 180 by
    default), or given as ``angles``. All tasks show the same sampled images (see
    `permuted_fmnist`). Rotation is counter-clockwise (`rotate`): exact for multiples of 90,
    bilinear with zero fill otherwise. The angles do not depend on the seed.
    """
    if angles is not None:
        if not isinstance(angles, (list, tuple)) or not angles or not all(isinstance(a, (int, float)) for a in angles):
            raise StreamError(f"'angles' must be a non-empty list of numbers (got {angles!r})")
        angles = [float(a) for a in angles]
        n_tasks = len(angles)
    _int("n_tasks", n_tasks, 1)
    if isinstance(max_angle, bool) or not isinstance(max_angle, (int, float)):
        raise StreamError(f"'max_angle' must be a number (got {max_angle!r})")
    sample = _sample_options(n_train_per_task, n_test_per_task, val_fraction, at_least=10)
    if angles is None:
        angles = [i * float(max_angle) / (n_tasks - 1) if n_tasks > 1 else 0.0 for i in range(n_tasks)]
    src = _fmnist(data_dir)
    views = []
    for a in angles:
        meta = {"description": f"10-way Fashion-MNIST rotated by {a:g} degrees", "transform": f"rotate({a:g})"}
        meta["angle"] = a
        views.append((functools.partial(rotate, degrees=a), meta))
    desc = "the same Fashion-MNIST sample rotated by " + ", ".join(f"{a:g}" for a in angles) + " degrees"
    return _same_images_stream("rotated-fmnist", src, seed, sample, views, desc)
