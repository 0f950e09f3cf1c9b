"""CTrL-style streams from Fashion-MNIST: S-, S+, Sin, Sout, Spl and Slong.

Each stream is a list of `_Plan` values (which classes, transform, size, what it repeats) that
`_build_ctrl` turns into tasks. The five short streams share t1..t5 (`_short_ctrl`) and differ
in their last task; see `jointnet.experiments.streams` for the class groups and transforms.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import attrs
import torch

from jointnet.errors import StreamError
from jointnet.experiments.streams.core import Stream, Task, _int, _pairs, _register
from jointnet.experiments.streams.sampling import (
    _class_order,
    _draw_test,
    _draw_train_val,
    _fmnist,
    _groups,
    _make_task,
    _pools,
    _rng,
)
from jointnet.experiments.streams.transforms import TRANSFORMS, _apply


@attrs.frozen
class _Plan:
    """One CTrL task to build: which class group, transform, size, label order; what it repeats."""

    group: int
    transform: str
    size: str
    repeats: int | None = None
    differs: str | None = None
    label_order: tuple[int, ...] | None = None  # a permutation of the group's classes
    classes: tuple[int, ...] | None = None  # explicit classes (ctrl-long)
    permutation_key: Any = None  # what seeds the pixel permutation of a "permute" task


def _build_ctrl(
    stream: str,
    seed: int,
    data_dir: Any,
    plans: list[_Plan],
    groups: list[list[int]],
    sizes: dict[str, tuple[int, int]],
    n_test_per_class: int | None,
    description: str,
) -> Stream:
    src = _fmnist(data_dir)
    pool, test_pool = _pools(src, seed, "Fashion-MNIST")
    n_pix = math.prod(src.train_x.shape[1:])
    perms: dict[Any, torch.Tensor] = {}
    tasks: list[Task] = []
    for i, p in enumerate(plans):
        base = list(p.classes) if p.classes is not None else groups[p.group]
        classes = list(p.label_order) if p.label_order is not None else base
        n_train, n_val = sizes[p.size]
        tr, va = _draw_train_val(pool, classes, _rng(seed, "order", i), n_train=n_train, n_val=n_val)
        if p.repeats is not None:  # a repeat is tested on exactly its original's test images
            te = tasks[p.repeats].metadata["source_indices"]["test"]
        else:
            per_class = [n_test_per_class] * len(classes) if n_test_per_class is not None else None
            te = _draw_test(test_pool, classes, per_class)
        meta: dict[str, Any] = {"transform": p.transform, "size": p.size}
        perm = None
        if p.transform == "permute":
            key = p.permutation_key if p.permutation_key is not None else i
            if key not in perms:
                perms[key] = torch.randperm(n_pix, generator=_rng(seed, "permutation", key))
            perm = meta["permutation"] = perms[key]
        meta["description"] = (
            f"{len(classes)}-way over Fashion-MNIST classes {classes} ({p.size}: {n_train} train + {n_val} val "
            f"per class), inputs: {TRANSFORMS[p.transform]}"
        )
        if p.repeats is not None:
            ref = tasks[p.repeats]
            meta["repeats"] = ref.name
            meta["differs"] = p.differs
            if p.label_order is not None and ref.classes != tuple(classes):
                meta["label_permutation"] = [classes.index(c) for c in ref.classes]
        transform = functools.partial(_apply, name=p.transform, permutation=perm)
        tasks.append(_make_task(f"t{i + 1}", src, classes, tr, va, te, transform=transform, metadata=meta))
    return Stream(stream, tasks, seed, description)


# --------------------------------------------------------------------------------------------
# The short streams: t1, four distractors, then (except Spl) a task that relates to t1
# --------------------------------------------------------------------------------------------

_DISTRACTORS = ("rot90", "vflip", "permute", "rot270")
_CTRL_SIZES = {"large": (400, 200), "small": (40, 20), "tiny": (5, 3)}


@attrs.frozen
class _ShortCtrl:
    """t1..t5 of a short CTrL stream, and what its last task and `_build_ctrl` need."""

    seed: int
    data_dir: Any
    sizes: dict[str, tuple[int, int]]
    groups: list[list[int]]
    plans: tuple[_Plan, ...]
    n_test_per_class: int | None


def _short_ctrl(
    seed: int,
    data_dir: Any,
    classes_per_task: Any,
    n_test_per_class: Any,
    sizes: tuple[Any, Any, Any],
    distractor_transforms: bool,
    first: str,
    fifth: str = "small",
) -> _ShortCtrl:
    """Check the shared options (`sizes` is ``(large, small, tiny)``); plan t1 and four distractors.

    t1 sees class group 0 untransformed, size `first`. Distractor j (t2..t5) sees class group
    ``j % n_groups`` through ``_DISTRACTORS[j - 1]`` (identity without
    ``distractor_transforms``); t2..t4 are small, t5 is `fifth`.
    """
    _int("classes_per_task", classes_per_task, 2, 5)
    _int("n_test_per_class", n_test_per_class, 1, none=True)
    large, small, tiny = sizes
    checked = _pairs(large=large, small=small, tiny=tiny)
    k = classes_per_task
    groups = _groups(_class_order(seed, 10, "class-groups"), k, 10 // k)
    plans = [_Plan(group=0, transform="identity", size=first)]
    for j in range(1, 5):
        g = j % len(groups)
        t = _DISTRACTORS[j - 1] if distractor_transforms else "identity"
        if (g, t) in {(p.group, p.transform) for p in plans}:
            raise StreamError(
                f"classes_per_task={k} leaves only {len(groups)} disjoint class groups, so the distractor tasks "
                "need distractor_transforms=True to differ from one another"
            )
        plans.append(_Plan(group=g, transform=t, size=fifth if j == 4 else "small"))
    return _ShortCtrl(seed, data_dir, checked, groups, tuple(plans), n_test_per_class)


def _finish(stream: str, start: _ShortCtrl, last: list[_Plan], description: str) -> Stream:
    """Build t1..t5 of `start` followed by the `last` plans."""
    plans = [*start.plans, *last]
    return _build_ctrl(stream, start.seed, start.data_dir, plans, start.groups, start.sizes,
                       start.n_test_per_class, description)


@_register("ctrl-minus")
def ctrl_minus(
    seed: int = 0,
    data_dir: Any = None,
    *,
    classes_per_task: int = 2,
    large: tuple[int, int] = _CTRL_SIZES["large"],
    small: tuple[int, int] = _CTRL_SIZES["small"],
    tiny: tuple[int, int] = _CTRL_SIZES["tiny"],
    n_test_per_class: int | None = None,
    distractor_transforms: bool = True,
) -> Stream:
    """CTrL S- (direct transfer): the last task repeats the first with much less data.

    t1: class group 0, untransformed, large. t2..t5: distractors (other class groups, each
    through its own transform, small). t6: t1's classes, labels and inputs again, small, on fresh
    images (``metadata["repeats"] == "t1"``). Sizes ``(train, val)`` per class; see
    `jointnet.experiments.streams` for the class groups and transforms.
    """
    s = _short_ctrl(seed, data_dir, classes_per_task, n_test_per_class, (large, small, tiny), distractor_transforms,
                    first="large")
    t6 = _Plan(0, "identity", "small", repeats=0, differs=(
        f"same classes, labels and inputs as t1; fresh images; less data: {s.sizes['small'][0]} vs "
        f"{s.sizes['large'][0]} training images per class"))
    return _finish("ctrl-minus", s, [t6], "CTrL S-: t1 large, 4 small distractors, t1 again with less data")


@_register("ctrl-plus")
def ctrl_plus(
    seed: int = 0,
    data_dir: Any = None,
    *,
    classes_per_task: int = 2,
    large: tuple[int, int] = _CTRL_SIZES["large"],
    small: tuple[int, int] = _CTRL_SIZES["small"],
    tiny: tuple[int, int] = _CTRL_SIZES["tiny"],
    n_test_per_class: int | None = None,
    distractor_transforms: bool = True,
) -> Stream:
    """CTrL S+ (knowledge update): the first task is small, the last repeats it with more data.

    As `ctrl_minus` with the sizes swapped: t1 small, t2..t5 small distractors, t6 = t1's task
    again, large, on fresh images.
    """
    s = _short_ctrl(seed, data_dir, classes_per_task, n_test_per_class, (large, small, tiny), distractor_transforms,
                    first="small")
    t6 = _Plan(0, "identity", "large", repeats=0, differs=(
        f"same classes, labels and inputs as t1; fresh images; more data: {s.sizes['large'][0]} vs "
        f"{s.sizes['small'][0]} training images per class"))
    return _finish("ctrl-plus", s, [t6], "CTrL S+: t1 small, 4 small distractors, t1 again with more data")


@_register("ctrl-in")
def ctrl_in(
    seed: int = 0,
    data_dir: Any = None,
    *,
    classes_per_task: int = 2,
    perturbation: str = "invert",
    large: tuple[int, int] = _CTRL_SIZES["large"],
    small: tuple[int, int] = _CTRL_SIZES["small"],
    tiny: tuple[int, int] = _CTRL_SIZES["tiny"],
    n_test_per_class: int | None = None,
    distractor_transforms: bool = True,
) -> Stream:
    """CTrL Sin (same output space, shifted input): the last task is t1 with perturbed inputs.

    t1 large, t2..t5 small distractors, t6: t1's classes in t1's label order, fresh images, tiny
    (5 training images per class, as CTrL's Sin), every input (train, val and test) passed
    through ``perturbation``. CTrL uses a "rainbow" colour/scale/rotation change on RGB images;
    on grey Fashion-MNIST the default is colour inversion, ``x -> 1 - x``: it keeps every
    shape, is exact (so ``t6.x == 1 - image``), and moves the input distribution far (mean
    intensity about 0.29 -> 0.71). Any of `TRANSFORMS` except ``identity`` may be chosen
    (``permute`` uses a seeded pixel permutation, in ``metadata["permutation"]``).
    """
    s = _short_ctrl(seed, data_dir, classes_per_task, n_test_per_class, (large, small, tiny), distractor_transforms,
                    first="large")
    if perturbation not in TRANSFORMS or perturbation == "identity":
        allowed = ", ".join(t for t in TRANSFORMS if t != "identity")
        raise StreamError(f"'perturbation' must be one of {allowed} (got {perturbation!r})")
    if any(p.group == 0 and p.transform == perturbation for p in s.plans):
        raise StreamError(f"perturbation {perturbation!r} is a distractor's transform on t1's classes; choose another")
    t6 = _Plan(0, perturbation, "tiny", repeats=0, permutation_key="perturbation", differs=(
        f"same classes and labels as t1; inputs perturbed by {perturbation!r} ({TRANSFORMS[perturbation]}); "
        f"fresh images; {s.sizes['tiny'][0]} training images per class"))
    return _finish("ctrl-in", s, [t6],
                   f"CTrL Sin: t1 large, 4 small distractors, t1 again with inputs perturbed by {perturbation!r}")


@_register("ctrl-out")
def ctrl_out(
    seed: int = 0,
    data_dir: Any = None,
    *,
    classes_per_task: int = 2,
    large: tuple[int, int] = _CTRL_SIZES["large"],
    small: tuple[int, int] = _CTRL_SIZES["small"],
    tiny: tuple[int, int] = _CTRL_SIZES["tiny"],
    n_test_per_class: int | None = None,
    distractor_transforms: bool = True,
) -> Stream:
    """CTrL Sout (same input, new output mapping): the last task is t1 with permuted labels.

    t1 large, t2..t5 small distractors, t6: t1's classes and untransformed inputs, fresh images,
    small, with the labels permuted by a seeded non-identity permutation (with 2 classes per task
    that is the swap). ``t6.classes`` lists the same classes in the new label order, and
    ``metadata["label_permutation"][l]`` is t6's label for what t1 calls ``l``.
    """
    s = _short_ctrl(seed, data_dir, classes_per_task, n_test_per_class, (large, small, tiny), distractor_transforms,
                    first="large")
    g = _rng(seed, "label-permutation")
    k = classes_per_task
    perm = torch.randperm(k, generator=g)
    while bool((perm == torch.arange(k)).all()):
        perm = torch.randperm(k, generator=g)
    order = tuple(s.groups[0][j] for j in perm.tolist())
    t6 = _Plan(0, "identity", "small", repeats=0, label_order=order, differs=(
        f"same classes and inputs as t1; fresh images; labels permuted (classes in label order {list(order)} "
        f"instead of {s.groups[0]}); {s.sizes['small'][0]} training images per class"))
    return _finish("ctrl-out", s, [t6], "CTrL Sout: t1 large, 4 small distractors, t1 again with permuted labels")


@_register("ctrl-pl")
def ctrl_pl(
    seed: int = 0,
    data_dir: Any = None,
    *,
    classes_per_task: int = 2,
    large: tuple[int, int] = _CTRL_SIZES["large"],
    small: tuple[int, int] = _CTRL_SIZES["small"],
    tiny: tuple[int, int] = _CTRL_SIZES["tiny"],
    n_test_per_class: int | None = None,
    distractor_transforms: bool = True,
) -> Stream:
    """CTrL Spl (plasticity): 5 unrelated tasks, no repeats.

    t1..t4 small, t5 large (CTrL: MNIST, DTD, F-MNIST, SVHN small, then CIFAR10 large). Each
    task has its own class group and input transform (identity, rot90, vflip, permute; t5:
    rot270), so no two tasks share a class or an input domain (with ``classes_per_task=2``).
    """
    s = _short_ctrl(seed, data_dir, classes_per_task, n_test_per_class, (large, small, tiny), distractor_transforms,
                    first="small", fifth="large")
    return _finish("ctrl-pl", s, [], "CTrL Spl: 5 unrelated tasks, the last one large")


# --------------------------------------------------------------------------------------------
# The long stream
# --------------------------------------------------------------------------------------------

_LONG_TRANSFORMS = ("identity", "invert", "rot90", "vflip", "permute")


@_register("ctrl-long")
def ctrl_long(
    seed: int = 0,
    data_dir: Any = None,
    *,
    n_tasks: int = 100,
    classes_per_task: int = 5,
    large: tuple[int, int] = (200, 100),
    small: tuple[int, int] = (5, 3),
    p_large: tuple[float, float, float] = (0.5, 0.25, 0.1),
    n_repeats: int | None = None,
    n_test_per_class: int | None = 100,
) -> Stream:
    """CTrL Slong (scalability): many tasks over random class subsets and input transforms.

    Each task draws (by seed) ``classes_per_task`` of the 10 classes in a random label order and
    one input transform from identity, invert, rot90, vflip, permute (a pixel permutation of its
    own); no two fresh tasks share both class set and transform. ``n_repeats`` tasks (default
    ``max(1, n_tasks // 10)``, at seeded positions after t1) repeat an earlier fresh task: same
    classes, label order and transform (and permutation), fresh images, their own size draw
    (``metadata["repeats"]`` / ``["differs"]``). Sizes per class are large ``(200, 100)`` or
    small ``(5, 3)`` train + val (CTrL: 1000 + 500 or 5 + 3; large is scaled down to keep the
    stream light on CPU); a task is large with probability ``p_large[s]`` in third ``s`` of the
    stream (CTrL shifts the mix at tasks 33 and 66; the exact mix is our choice).
    """
    _int("n_tasks", n_tasks, 2)
    _int("classes_per_task", classes_per_task, 2, 10)
    _int("n_test_per_class", n_test_per_class, 1, none=True)
    n_repeats = max(1, n_tasks // 10) if n_repeats is None else n_repeats
    _int("n_repeats", n_repeats, 0, n_tasks // 2)
    probs_ok = isinstance(p_large, (tuple, list)) and len(p_large) == 3
    if not (probs_ok and all(isinstance(p, (int, float)) and 0 <= p <= 1 for p in p_large)):
        raise StreamError(f"'p_large' must be three probabilities, one per third of the stream (got {p_large!r})")
    sizes = _pairs(large=large, small=small)
    g = _rng(seed, "long-plan")
    repeat_at = set((1 + torch.randperm(n_tasks - 1, generator=g)[:n_repeats]).tolist())
    plans: list[_Plan] = []
    fresh: list[int] = []
    seen: set[tuple[frozenset[int], str]] = set()
    for i in range(n_tasks):
        third = min(2, 3 * i // n_tasks)
        size = "large" if float(torch.rand((), generator=g)) < p_large[third] else "small"
        if i in repeat_at:
            j = fresh[int(torch.randint(len(fresh), (), generator=g))]
            ref = plans[j]
            differs = "same classes, label order and inputs"
            differs += " (same pixel permutation)" if ref.transform == "permute" else ""
            differs += f"; fresh images; {size} " + (f"instead of {ref.size}" if size != ref.size else "too")
            plans.append(attrs.evolve(ref, size=size, repeats=j, differs=differs))
            continue
        while True:
            classes = tuple(torch.randperm(10, generator=g)[:classes_per_task].tolist())
            transform = _LONG_TRANSFORMS[int(torch.randint(len(_LONG_TRANSFORMS), (), generator=g))]
            key = (frozenset(classes), transform)
            if transform == "permute" or key not in seen:
                break
        seen.add(key)
        fresh.append(i)
        plans.append(_Plan(-1, transform, size, classes=classes, permutation_key=i))
    return _build_ctrl("ctrl-long", seed, data_dir, plans, [], sizes, n_test_per_class,
                       f"CTrL Slong: {n_tasks} tasks of {classes_per_task} random classes, {n_repeats} repeats")
