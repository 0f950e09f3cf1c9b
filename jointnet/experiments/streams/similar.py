"""Similar tasks from Fashion-MNIST: one "writer" per task (SPG's FE-n / FC-n setting).

SPG (spec §4.1) tests transfer on *similar* tasks: FE-n gives each task one writer of Federated
EMNIST, FC-n one celebrity of Federated CelebA, so every task has the same label set and its own
input style. With Fashion-MNIST alone (nothing is downloaded), ``similar-fmnist`` builds that:

- every task is 10-way over all ten classes, labels = the Fashion-MNIST class ids;
- every task draws its own **disjoint shard** of images, balanced over the classes: training
  and validation images from the training set, test images from the test set, each image in at
  most one task (the stream refuses sizes that would need to reuse one);
- every task has its own fixed **writer**, a mild perturbation of all its images (train, val and
  test alike), drawn from the seed: an affine warp of the content (rotation by ``angle`` degrees,
  shear ``shear``, scale ``scale``, shift ``shift`` pixels; bilinear, zero fill) followed by a
  stroke/contrast change ``x ** gamma``. The defaults (rotation up to +-15 degrees, shear up to
  +-0.2, scale 0.9-1.1, shift up to +-2 pixels, gamma in [1/1.5, 1.5]) keep every writer's images
  easily recognisable: tasks are related, not identical.

So tasks share their classes and most of their input statistics, unlike split-fmnist (disjoint
classes, the *dissimilar* case). A task's metadata holds its writer (``writer``: angle, shear,
scale, shift_x, shift_y, gamma) and its ``source_indices``.

>>> import torch
>>> x = torch.rand(2, 1, 8, 8)
>>> bool((writer_transform(x, angle=0.0, shear=0.0, scale=1.0, shift=(0.0, 0.0), gamma=1.0) - x).abs().max() < 1e-5)
True
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F

from jointnet.errors import StreamError
from jointnet.experiments.streams.core import Stream, _frac, _int, _register
from jointnet.experiments.streams.sampling import (
    _draw_test,
    _draw_train_val,
    _fmnist,
    _make_task,
    _pools,
    _rng,
    _spread,
)

__all__ = ["similar_fmnist", "writer_transform", "draw_writer"]


def writer_transform(x: torch.Tensor, *, angle: float, shear: float, scale: float,
                     shift: tuple[float, float], gamma: float) -> torch.Tensor:
    """One writer's perturbation of images ``N x C x H x W`` in [0, 1].

    The content is sheared (``x' = x + shear * y``), rotated counter-clockwise by `angle`
    degrees, scaled by `scale` about the image centre and shifted by `shift` = (dx, dy) pixels
    (bilinear sampling, zeros outside); then every value is raised to `gamma` (> 1 thins and
    darkens strokes, < 1 thickens and brightens them). Values stay in [0, 1].
    """
    n, _, h, w = x.shape
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    # forward map of the content (normalised coordinates): p_out = A p_in + b
    a = torch.tensor([[c, -s], [s, c]], dtype=torch.float64) @ torch.tensor([[1.0, shear], [0.0, 1.0]],
                                                                            dtype=torch.float64) * scale
    b = torch.tensor([2.0 * shift[0] / w, 2.0 * shift[1] / h], dtype=torch.float64)
    inv = torch.linalg.inv(a)
    theta = torch.cat([inv, (-inv @ b)[:, None]], dim=1).to(x.dtype).expand(n, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0.0, 1.0)
    return out if gamma == 1.0 else out.pow_(gamma)


def draw_writer(gen: torch.Generator, *, max_rotation: float, max_shear: float, max_scale: float,
                max_shift: float, max_gamma: float) -> dict[str, float]:
    """A writer's parameters, each uniform in its range (gamma log-uniform in [1/max, max])."""
    u = torch.rand(6, generator=gen, dtype=torch.float64).tolist()

    def sym(v: float, m: float) -> float:
        return (2.0 * v - 1.0) * m

    return {
        "angle": sym(u[0], max_rotation),
        "shear": sym(u[1], max_shear),
        "scale": 1.0 + sym(u[2], max_scale),
        "shift_x": sym(u[3], max_shift),
        "shift_y": sym(u[4], max_shift),
        "gamma": math.exp(sym(u[5], math.log(max_gamma))),
    }


def _num(name: str, v: Any, lo: float, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise StreamError(f"{name!r} must be a number {rng} (got {v!r})")
    return float(v)


@_register("similar-fmnist")
def similar_fmnist(
    seed: int = 0,
    data_dir: Any = None,
    *,
    n_tasks: int = 5,
    n_train_per_task: int = 1000,
    n_test_per_task: int = 1000,
    val_fraction: float = 0.1,
    max_rotation: float = 15.0,
    max_shear: float = 0.2,
    max_scale: float = 0.1,
    max_shift: float = 2.0,
    max_gamma: float = 1.5,
) -> Stream:
    """Similar tasks: 10-way Fashion-MNIST on disjoint shards, one fixed writer per task.

    Args:
        seed: seeds the shards, the validation split and every writer.
        data_dir: where Fashion-MNIST is (see `jointnet.experiments.data.load_fashion_mnist`).
        n_tasks: number of tasks (>= 1).
        n_train_per_task: training images per task *before* the validation split (balanced
            over the 10 classes); ``n_tasks`` shards must fit in the training set without reuse.
        n_test_per_task: test images per task (balanced); the shards must fit in the test set.
        val_fraction: share of each class's drawn images held out for validation.
        max_rotation, max_shear, max_scale, max_shift, max_gamma: the writers' ranges (see the
            module docstring); all 0 (and max_gamma 1) gives plain Fashion-MNIST shards.

    Raises:
        StreamError: a bad option, or shards that would not be disjoint.
    """
    _int("n_tasks", n_tasks, 1)
    _int("n_train_per_task", n_train_per_task, 10)
    _int("n_test_per_task", n_test_per_task, 10)
    _frac("val_fraction", val_fraction)
    ranges = {
        "max_rotation": _num("max_rotation", max_rotation, 0.0, 180.0),
        "max_shear": _num("max_shear", max_shear, 0.0, 1.0),
        "max_scale": _num("max_scale", max_scale, 0.0, 0.5),
        "max_shift": _num("max_shift", max_shift, 0.0, 14.0),
        "max_gamma": _num("max_gamma", max_gamma, 1.0, 10.0),
    }
    src = _fmnist(data_dir)
    classes = list(range(10))
    train_pool, test_pool = _pools(src, seed)
    for pool, n, what in ((train_pool, n_train_per_task, "n_train_per_task"),
                          (test_pool, n_test_per_task, "n_test_per_task")):
        have = min(len(pool.indices(c)) for c in classes)
        need = n_tasks * max(_spread(n, 10))
        if need > have:
            raise StreamError(f"{what}={n} over {n_tasks} tasks needs {need} images of a class, "
                              f"but the split has only {have}: the shards would not be disjoint")
    tasks = []
    for i in range(n_tasks):
        gen = _rng(seed, "similar", i)
        tr, va = _draw_train_val(train_pool, classes, gen, per_class=_spread(n_train_per_task, 10),
                                 val_fraction=val_fraction)
        te = _draw_test(test_pool, classes, _spread(n_test_per_task, 10))
        wr = draw_writer(_rng(seed, "writer", i), **ranges)
        fn = functools.partial(writer_transform, angle=wr["angle"], shear=wr["shear"], scale=wr["scale"],
                               shift=(wr["shift_x"], wr["shift_y"]), gamma=wr["gamma"])
        meta = {
            "description": f"10-way Fashion-MNIST, shard {i + 1} of {n_tasks}, writer {i + 1}",
            "transform": "writer(" + ", ".join(f"{k}={v:.3g}" for k, v in wr.items()) + ")",
            "writer": wr,
        }
        tasks.append(_make_task(f"t{i + 1}", src, classes, tr, va, te, transform=fn, metadata=meta))
    desc = (f"{n_tasks} similar 10-way tasks: disjoint Fashion-MNIST shards, each through its own "
            "fixed writer (affine warp and stroke gamma)")
    return Stream("similar-fmnist", tasks, seed, desc)
