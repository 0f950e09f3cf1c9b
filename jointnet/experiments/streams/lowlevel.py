"""A known-answer stream for selective layer transfer: same classes, different low-level statistics.

LASEM (spec §7, "small CPU reproduction") needs tasks whose *high-level* content is related
while their *low-level* statistics differ, so that sharing the upper conv layers and owning the
lower ones should win ("Top-k"). ``lowlevel-fmnist`` builds that from Fashion-MNIST alone:

- every task is the same k-way problem (``n_classes`` = 5 classes, drawn once from the seed
  unless ``classes`` names them; labels ``0..k-1`` in ascending class order), on its own images:
  each task draws fresh training / validation images (``n_train_per_class``,
  ``n_val_per_class``) and test images (``n_test_per_class``) per class, without replacement
  across tasks while a class lasts;
- every task sees all its images (train, val and test) through one fixed **input transform**,
  task i through ``transforms[i % len(transforms)]`` (default, in order):

  ============ ==================================================================================
  identity     the images as they are
  invert       ``1 - x``
  blur         a Gaussian blur, ``blur_sigma`` (1.0) pixels, 5x5 kernel, zero padding
  randconv     a fixed random 5x5 convolution (seeded per task, N(0, 1) entries, zero padding),
               then one fixed affine map per task, ``0.3 + 0.3 (k * x - m) / s`` clamped to
               [0, 1], where m and s are the mean and standard deviation of ``k * x`` over the
               task's training images (so its images keep Fashion-MNIST's contrast, about 0.3)
  patchperm    the pixels inside every ``patch`` x ``patch`` (4 x 4) patch permuted by one fixed
               seeded permutation (the same in every patch); the image side must be a multiple
  ============ ==================================================================================

  A transform that comes round again for a later task is drawn anew where it is random
  (``randconv``, ``patchperm``); ``identity``, ``invert`` and ``blur`` repeat exactly.

So every task asks the same question of differently *rendered* images: a net that owns its first
layers can undo each rendering into features the shared upper layers already know. Task metadata:
``description``, ``transform``, ``kernel`` (randconv) or ``patch_permutation`` (patchperm), and
``source_indices``.

>>> x = torch.arange(16.0).reshape(1, 1, 4, 4) / 15
>>> bool(torch.equal(patch_permute(x, torch.arange(4), 2), x))
True
>>> torch.sort(patch_permute(x, torch.tensor([3, 2, 1, 0]), 2).flatten()).values.equal(x.flatten())
True
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from jointnet.errors import StreamError
from jointnet.experiments.streams.core import Stream, _int, _register
from jointnet.experiments.streams.sampling import _draw_test, _draw_train_val, _fmnist, _make_task, _pools, _rng

__all__ = ["lowlevel_fmnist", "LOWLEVEL_TRANSFORMS", "gaussian_blur", "random_conv", "patch_permute"]

#: The transforms of ``lowlevel-fmnist`` and what each does (see the module docstring).
LOWLEVEL_TRANSFORMS: dict[str, str] = {
    "identity": "the images as they are",
    "invert": "colour inversion, 1 - x",
    "blur": "a Gaussian blur (5x5, blur_sigma pixels)",
    "randconv": "a fixed random 5x5 convolution rescaled into [0, 1]",
    "patchperm": "a fixed permutation of the pixels inside every patch",
}


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur images ``N x C x H x W`` with a normalised 5x5 Gaussian of `sigma` (zero padding)."""
    r = torch.arange(-2, 3, dtype=x.dtype)
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    k = torch.outer(g, g)
    k = (k / k.sum()).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(x, k, padding=2, groups=x.shape[1]).clamp_(0.0, 1.0)


def random_conv(x: torch.Tensor, kernel: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Convolve images with `kernel` (``k x k``, zero padding), then ``0.3 + 0.3 (out - mean) /
    std``, clamped to [0, 1] (`mean`, `std`: the convolution's statistics on reference images)."""
    return (0.3 + 0.3 * (_convolve(x, kernel) - mean) / std).clamp_(0.0, 1.0)


def _convolve(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    k = kernel.to(x.dtype).expand(x.shape[1], 1, *kernel.shape)
    return F.conv2d(x, k, padding=kernel.shape[-1] // 2, groups=x.shape[1])


def patch_permute(x: torch.Tensor, permutation: torch.Tensor, patch: int) -> torch.Tensor:
    """Permute the pixels inside every ``patch x patch`` patch of images ``N x C x H x W``: the
    pixel at position ``permutation[j]`` of a patch (row-major) moves to position ``j``."""
    n, c, h, w = x.shape
    p = x.reshape(n, c, h // patch, patch, w // patch, patch).permute(0, 1, 2, 4, 3, 5)
    p = p.reshape(n, c, h // patch, w // patch, patch * patch)[..., permutation]
    p = p.reshape(n, c, h // patch, w // patch, patch, patch).permute(0, 1, 2, 4, 3, 5)
    return p.reshape(n, c, h, w).contiguous()


@_register("lowlevel-fmnist")
def lowlevel_fmnist(
    seed: int = 0,
    data_dir: Any = None,
    *,
    n_tasks: int = 5,
    n_classes: int = 5,
    classes: Sequence[int] | None = None,
    transforms: Sequence[str] | None = None,
    n_train_per_class: int = 100,
    n_val_per_class: int = 20,
    n_test_per_class: int = 100,
    blur_sigma: float = 1.0,
    patch: int = 4,
) -> Stream:
    """Fashion-MNIST tasks over the same classes, each through its own low-level transform.

    Args:
        seed: seeds the classes (unless given), the images, and the random transforms.
        data_dir: where Fashion-MNIST is (see `jointnet.experiments.data.load_fashion_mnist`).
        n_tasks: number of tasks (>= 1).
        n_classes: classes per task (2..10), drawn once from the seed; ignored with `classes`.
        classes: the Fashion-MNIST class ids every task classifies (distinct, 2..10 of them).
        transforms: names from `LOWLEVEL_TRANSFORMS`, task i uses entry ``i % len``; default
            ``identity, invert, blur, randconv, patchperm``.
        n_train_per_class, n_val_per_class, n_test_per_class: images per class and task.
        blur_sigma: the blur's standard deviation in pixels (> 0).
        patch: the side of patchperm's patches (>= 2; must divide the image side).
    """
    _int("n_tasks", n_tasks, 1)
    _int("n_train_per_class", n_train_per_class, 1)
    _int("n_val_per_class", n_val_per_class, 0)
    _int("n_test_per_class", n_test_per_class, 1)
    _int("patch", patch, 2)
    if isinstance(blur_sigma, bool) or not isinstance(blur_sigma, (int, float)) or not blur_sigma > 0:
        raise StreamError(f"'blur_sigma' must be a number > 0 (got {blur_sigma!r})")
    if classes is None:
        _int("n_classes", n_classes, 2, 10)
        classes = sorted(torch.randperm(10, generator=_rng(seed, "lowlevel-classes"))[:n_classes].tolist())
    else:
        ok = (isinstance(classes, (list, tuple)) and 2 <= len(classes) <= 10 and len(set(classes)) == len(classes)
              and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 10 for c in classes))
        if not ok:
            raise StreamError(f"'classes' must be 2 to 10 distinct Fashion-MNIST class ids 0..9 (got {classes!r})")
        classes = sorted(classes)
    names = list(transforms) if transforms is not None else ["identity", "invert", "blur", "randconv", "patchperm"]
    if not names or any(n not in LOWLEVEL_TRANSFORMS for n in names):
        raise StreamError(f"'transforms' must be a non-empty list of {', '.join(LOWLEVEL_TRANSFORMS)} (got {transforms!r})")
    src = _fmnist(data_dir)
    side = src.train_x.shape[-1]
    if "patchperm" in names and side % patch:
        raise StreamError(f"'patch' {patch} must divide the image side {side}")
    pool, test_pool = _pools(src, seed, "Fashion-MNIST")
    tasks = []
    for i in range(n_tasks):
        name = names[i % len(names)]
        meta: dict[str, Any] = {"transform": name}
        if name == "identity":
            fn = None
        elif name == "invert":
            fn = _invert
        elif name == "blur":
            fn = functools.partial(gaussian_blur, sigma=float(blur_sigma))
        elif name == "randconv":
            kernel = torch.randn(5, 5, generator=_rng(seed, "lowlevel-randconv", i))
            meta["kernel"] = kernel
            fn = "randconv"  # its affine map needs the task's training images (below)
        else:
            perm = torch.randperm(patch * patch, generator=_rng(seed, "lowlevel-patchperm", i))
            meta["patch_permutation"] = perm
            fn = functools.partial(patch_permute, permutation=perm, patch=patch)
        tr, va = _draw_train_val(pool, classes, _rng(seed, "order", i), n_train=n_train_per_class, n_val=n_val_per_class)
        if fn == "randconv":
            raw = _convolve(src.train_x[tr].float().div_(255.0), kernel)
            stats = {"mean": float(raw.mean()), "std": float(raw.std()) or 1.0}
            meta["randconv_affine"] = stats
            fn = functools.partial(random_conv, kernel=kernel, **stats)
        te = _draw_test(test_pool, classes, [n_test_per_class] * len(classes))
        meta["description"] = (f"{len(classes)}-way over Fashion-MNIST classes {list(classes)}, inputs: "
                               f"{LOWLEVEL_TRANSFORMS[name]}")
        tasks.append(_make_task(f"t{i + 1}", src, classes, tr, va, te, transform=fn, metadata=meta))
    desc = (f"{n_tasks} tasks over the same {len(classes)} Fashion-MNIST classes, each through its own "
            f"low-level transform ({', '.join(names[i % len(names)] for i in range(n_tasks))})")
    return Stream("lowlevel-fmnist", tasks, seed, desc)


def _invert(x: torch.Tensor) -> torch.Tensor:
    return 1.0 - x

