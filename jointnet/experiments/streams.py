"""Task streams for task-incremental continual learning, deterministic by seed.

A `Stream` is a named tuple of `Task` values. A task holds train / val / test tensors (``x``
float32 in [0, 1], ``N x 1 x 28 x 28`` for Fashion-MNIST, ``N x 3 x 32 x 32`` for CIFAR-100;
``y`` int64 labels remapped to ``0..n_classes-1``), the source classes behind its labels
(``task.classes[label]``), and metadata saying how it was built and which earlier task it
repeats. Every random choice draws from a `torch.Generator` seeded from ``(seed, purpose)``;
the global RNG is never touched, so the same seed gives bit-identical tensors. The validation
split is always carved from the source's *training* images (stratified per class); test images
come from the source's test set.

Streams, by name in `STREAMS` (each ``fn(seed=0, data_dir=None, **options) -> Stream``; use
`get_stream`):

=================== ========================================================================
name                construction
=================== ========================================================================
split-fmnist        5 tasks x 2 classes: (0,1), (2,3), ... (``shuffle_classes``: seeded order)
permuted-fmnist     N tasks (5), 10-way, one fixed seeded pixel permutation per task; task t1 is
                    the identity (plain Fashion-MNIST, the usual convention); all tasks show the
                    *same* sampled images, permuted
rotated-fmnist      N tasks (5), 10-way, task i rotated by ``i * max_angle / (N-1)`` degrees
                    (0, 45, 90, 135, 180), same images in every task; multiples of 90 are exact
                    `torch.rot90`, other angles bilinear `grid_sample` with zero fill
ctrl-minus (S-)     t1 large, t2..t5 small distractors, t6 = t1's task again, small
ctrl-plus  (S+)     t1 small, t2..t5 small distractors, t6 = t1's task again, large
ctrl-in    (Sin)    t1 large, t2..t5 small, t6 = t1's classes and labels with perturbed inputs
                    (default: colour inversion ``1 - x``), tiny (5 train images per class)
ctrl-out   (Sout)   t1 large, t2..t5 small, t6 = t1's classes and inputs, labels permuted, small
ctrl-pl    (Spl)    5 unrelated tasks: t1..t4 small, t5 large; no repeats
ctrl-long  (Slong)  100 tasks, 5 random classes each in a random label order and one of five
                    input transforms; a few tasks repeat an earlier one; large or tiny data,
                    large tasks rarer in each third of the stream
synthetic           seeded Gaussian class prototypes, no files; any input shape
split-cifar100      10 tasks x 10 classes from a local CIFAR-100 folder
cifar100-superclass 20 tasks, one per coarse label, each over its 5 fine classes
=================== ========================================================================

**CTrL from Fashion-MNIST alone.** CTrL (Veniat et al., ICLR'21; PAR spec §5) builds its short
streams from five datasets, each task 10-way over one dataset. With one dataset, a CTrL
"dataset" becomes a *class group* (the 10 classes split by seed into 5 disjoint pairs;
``classes_per_task`` changes the group size) seen through its own *input transform*: t1 sees its
group untransformed; the distractors t2..t5 see the other groups through ``rot90``, ``vflip``,
``permute`` (a fixed seeded pixel permutation) and ``rot270`` (``distractor_transforms=False``
keeps them untransformed). So no distractor shares a class, a label meaning or an input domain
with t1, and the last task relates to t1 only in the documented way. Sizes per class follow the
CTrL configs: large = 400 train + 200 val, small = 40 + 20, tiny = 5 + 3 (options ``large``,
``small``, ``tiny`` as ``(train, val)`` pairs). Tasks draw fresh images: a repeat never reuses
t1's training or validation images (each class's images are handed out without replacement until
a class runs out). Every test set holds all test images of the task's classes (or a seeded
``n_test_per_class`` of them per class), and a repeat is tested on exactly its original's test
images, so their accuracies compare directly.

Task metadata (``task.metadata``): ``description``; ``dataset``; ``transform`` (name);
``repeats`` (name of the earlier task it repeats, or None) and ``differs`` (how it differs from
it, or None); ``size`` (CTrL size name, when there is one); ``source_indices`` (``{"train",
"val", "test"}`` -> indices into the source's train/train/test split); and per transform
``permutation`` (pixel order) or ``angle``; for Sout ``label_permutation`` (t1's label ``l`` is
label ``label_permutation[l]`` here). Synthetic tasks have no ``source_indices``.

>>> s = get_stream("synthetic", seed=0, n_tasks=3, n_train_per_class=4, n_val_per_class=2)
>>> s
Stream(name='synthetic', seed=0, tasks=('t1', 't2', 't3'))
>>> s[0].x_train.shape, s[0].y_train.tolist()[:4]
(torch.Size([8, 1, 28, 28]), [1, 0, 0, 0])
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from jointnet.experiments.data import load_cifar100, load_fashion_mnist
from jointnet.errors import StreamError

__all__ = [
    "Task",
    "Stream",

    "STREAMS",
    "get_stream",
    "rotate",
    "permute_pixels",
    "TRANSFORMS",
]


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


def _check_xy(task: "Task", split: str) -> None:
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
        metadata: description, repeats / differs, transform, source indices (module docstring).
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
# Randomness, sources, sampling
# --------------------------------------------------------------------------------------------


def _rng(seed: int, *purpose: Any) -> torch.Generator:
    """A generator seeded from (seed, purpose): independent draws that do not shift one another."""
    digest = hashlib.sha256(repr((int(seed),) + purpose).encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return g


@attrs.frozen(eq=False)
class _Source:
    name: str
    train_x: torch.Tensor  # uint8 N x C x H x W (shared with the data cache: never written)
    train_y: torch.Tensor  # int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: tuple[str, ...]


def _fmnist(data_dir: Any) -> _Source:
    d = load_fashion_mnist(data_dir)
    return _Source(
        "fashion-mnist",
        d["train_images"].unsqueeze(1),
        d["train_labels"].long(),
        d["test_images"].unsqueeze(1),
        d["test_labels"].long(),
        tuple(d["classes"]),
    )


def _cifar(data_dir: Any) -> tuple[_Source, torch.Tensor, torch.Tensor, tuple[str, ...]]:
    d = load_cifar100(data_dir)
    src = _Source(
        "cifar100",
        d["train_images"],
        d["train_fine_labels"],
        d["test_images"],
        d["test_fine_labels"],
        tuple(d["fine_label_names"]),
    )
    return src, d["train_coarse_labels"], d["test_coarse_labels"], tuple(d["coarse_label_names"])


class _Pool:
    """Per-class shuffled queues of indices: `take` hands out images without replacement.

    When a class runs out, a fresh shuffled pass over it starts (images repeat only then).
    """

    def __init__(self, labels: torch.Tensor, gen: torch.Generator, what: str):
        self.labels, self.gen, self.what = labels, gen, what
        self._idx: dict[int, torch.Tensor] | None = None
        self._queue: dict[int, tuple[torch.Tensor, int]] = {}

    def indices(self, cls: int) -> torch.Tensor:
        """Every index of class `cls`, ascending."""
        if self._idx is None:  # one stable sort instead of a scan per class
            order = torch.argsort(self.labels, stable=True)
            counts = torch.bincount(self.labels).tolist()
            self._idx = dict(enumerate(torch.split(order, counts)))
        return self._idx.get(cls, torch.empty(0, dtype=torch.int64))

    def take(self, cls: int, n: int) -> torch.Tensor:
        idx = self.indices(cls)
        if n > len(idx):
            raise StreamError(f"asks for {n} {self.what} images of class {cls}, but there are only {len(idx)}")
        queue, pos = self._queue.get(cls, (None, 0))
        if queue is None or pos + n > len(queue):
            queue, pos = idx[torch.randperm(len(idx), generator=self.gen)], 0
        self._queue[cls] = (queue, pos + n)
        return queue[pos : pos + n]


def _spread(n: int, k: int) -> list[int]:
    """`n` items over `k` classes as evenly as possible, earlier classes taking the remainder."""
    return [n // k + (i < n % k) for i in range(k)]


def _shuffled(parts: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    cat = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)
    return cat[torch.randperm(len(cat), generator=gen)]


def _draw_train_val(
    pool: _Pool,
    classes: Sequence[int],
    gen: torch.Generator,
    *,
    per_class: Sequence[int | None] | None = None,
    val_fraction: float | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and val indices, stratified per class, each in a seeded random order.

    Either ``per_class`` totals (None = every image of the class) split by ``val_fraction``, or
    explicit ``n_train`` / ``n_val`` per class.
    """
    train, val = [], []
    for i, c in enumerate(classes):
        if val_fraction is not None:
            want = per_class[i] if per_class is not None else None
            total = len(pool.indices(c)) if want is None else want
            got = pool.take(c, total)
            k = int(round(total * val_fraction))
            if val_fraction > 0 and total >= 2:  # at least one of each for val and for train
                k = min(max(k, 1), total - 1)
            val.append(got[:k])
            train.append(got[k:])
        else:
            got = pool.take(c, n_train + n_val)
            train.append(got[:n_train])
            val.append(got[n_train:])
    return _shuffled(train, gen), _shuffled(val, gen)


def _draw_test(pool: _Pool, classes: Sequence[int], per_class: Sequence[int | None] | None) -> torch.Tensor:
    """Test indices: every test image of `classes` (ascending), or a seeded sample per class."""
    if per_class is None or all(p is None for p in per_class):
        return torch.isin(pool.labels, torch.tensor(list(classes), dtype=torch.int64)).nonzero().flatten()
    return torch.sort(torch.cat([pool.take(c, n) for c, n in zip(classes, per_class)])).values


# --------------------------------------------------------------------------------------------
# Input transforms (all exact or deterministic; no torchvision)
# --------------------------------------------------------------------------------------------


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate images ``N x C x H x W`` counter-clockwise by `degrees`.

    Multiples of 90 degrees are exact (`torch.rot90`); other angles use bilinear `grid_sample`
    about the image centre with zeros outside, so values stay in [0, 1].

    Example:
        >>> x = torch.zeros(1, 1, 3, 3); x[0, 0, 0, 2] = 1      # top-right pixel
        >>> rotate(x, 90)[0, 0, 0].tolist()                       # moves to the top-left
        [1.0, 0.0, 0.0]
    """
    q = degrees / 90.0
    if float(q).is_integer():
        return torch.rot90(x, int(q) % 4, dims=(-2, -1)).contiguous()
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.clamp_(0.0, 1.0)


def permute_pixels(x: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Reorder each image's pixels: ``out.flatten(1) == x.flatten(1)[:, permutation]``.

    Example:
        >>> permute_pixels(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([2, 0, 1])).tolist()
        [[3.0, 1.0, 2.0]]
    """
    return x.flatten(1)[:, permutation].reshape(x.shape)


def _invert(x: torch.Tensor) -> torch.Tensor:
    return 1.0 - x


# name -> what it does to an image (the input transforms CTrL-style streams use)
TRANSFORMS: dict[str, str] = {
    "identity": "the images as they are",
    "invert": "colour inversion, x -> 1 - x",
    "rot90": "rotation by 90 degrees counter-clockwise (exact)",
    "rot270": "rotation by 270 degrees counter-clockwise (exact)",
    "vflip": "upside-down flip (exact)",
    "permute": "a fixed seeded permutation of the pixels",
}


def _apply(x: torch.Tensor, name: str, permutation: torch.Tensor | None = None) -> torch.Tensor:
    if name == "identity":
        return x
    if name == "invert":
        return _invert(x)
    if name == "rot90":
        return rotate(x, 90)
    if name == "rot270":
        return rotate(x, 270)
    if name == "vflip":
        return x.flip(-2).contiguous()
    if name == "permute":
        assert permutation is not None
        return permute_pixels(x, permutation)
    raise StreamError(f"unknown transform {name!r}; transforms are {', '.join(TRANSFORMS)}")


def _make_task(
    name: str,
    src: _Source,
    classes: Sequence[int],
    train_idx: torch.Tensor,
    val_idx: torch.Tensor,
    test_idx: torch.Tensor,
    *,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    metadata: dict[str, Any],
) -> Task:
    """Gather, scale to [0, 1], transform and relabel one task's images."""
    classes = [int(c) for c in classes]
    lut = torch.full((max(len(src.class_names), max(classes) + 1),), -1, dtype=torch.int64)
    lut[torch.tensor(classes)] = torch.arange(len(classes))

    def xs(images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        x = images[idx].float().div_(255.0)
        return transform(x).contiguous() if transform is not None else x

    meta = {"dataset": src.name, "transform": "identity", "repeats": None, "differs": None}
    meta.update(metadata)
    meta["source_indices"] = {"train": train_idx, "val": val_idx, "test": test_idx}
    return Task(
        name=name,
        classes=tuple(classes),
        x_train=xs(src.train_x, train_idx),
        y_train=lut[src.train_y[train_idx]],
        x_val=xs(src.train_x, val_idx),
        y_val=lut[src.train_y[val_idx]],
        x_test=xs(src.test_x, test_idx),
        y_test=lut[src.test_y[test_idx]],
        class_names=tuple(src.class_names[c] for c in classes),
        metadata=meta,
    )


# --------------------------------------------------------------------------------------------
# Option checks and the registry
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


# --------------------------------------------------------------------------------------------
# Split / permuted / rotated Fashion-MNIST
# --------------------------------------------------------------------------------------------


def _split_stream(
    stream: str,
    src: _Source,
    groups: list[list[int]],
    seed: int,
    n_train_per_task: int | None,
    n_test_per_task: int | None,
    val_fraction: float,
    description: str,
) -> Stream:
    pool = _Pool(src.train_y, _rng(seed, "train-pool"), f"{src.name} training")
    test_pool = _Pool(src.test_y, _rng(seed, "test-pool"), f"{src.name} test")
    tasks = []
    for i, group in enumerate(groups):
        k = len(group)
        tr, va = _draw_train_val(
            pool, group, _rng(seed, "order", i),
            per_class=_spread(n_train_per_task, k) if n_train_per_task is not None else None,
            val_fraction=val_fraction,
        )
        te = _draw_test(test_pool, group, _spread(n_test_per_task, k) if n_test_per_task is not None else None)
        meta = {"description": f"{k}-way over {src.name} classes {group}"}
        tasks.append(_make_task(f"t{i + 1}", src, group, tr, va, te, metadata=meta))
    return Stream(stream, tasks, seed, description)


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
    _int("classes_per_task", classes_per_task, 1, 10)
    n_tasks = 10 // classes_per_task if n_tasks is None else n_tasks
    _int("n_tasks", n_tasks, 1, 10 // classes_per_task)
    _int("n_train_per_task", n_train_per_task, 1, none=True)
    _int("n_test_per_task", n_test_per_task, 1, none=True)
    _frac("val_fraction", val_fraction)
    src = _fmnist(data_dir)
    order = torch.randperm(10, generator=_rng(seed, "class-order")).tolist() if shuffle_classes else list(range(10))
    groups = [sorted(order[i * classes_per_task : (i + 1) * classes_per_task]) for i in range(n_tasks)]
    desc = f"Fashion-MNIST split into {n_tasks} disjoint groups of {classes_per_task} classes"
    return _split_stream("split-fmnist", src, groups, seed, n_train_per_task, n_test_per_task, val_fraction, desc)


def _same_images(src: _Source, seed: int, n_train: int | None, n_test: int | None, val_fraction: float):
    pool = _Pool(src.train_y, _rng(seed, "train-pool"), f"{src.name} training")
    test_pool = _Pool(src.test_y, _rng(seed, "test-pool"), f"{src.name} test")
    classes = list(range(10))
    tr, va = _draw_train_val(
        pool, classes, _rng(seed, "order"),
        per_class=_spread(n_train, 10) if n_train is not None else None, val_fraction=val_fraction,
    )
    te = _draw_test(test_pool, classes, _spread(n_test, 10) if n_test is not None else None)
    return classes, tr, va, te


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
    _int("n_train_per_task", n_train_per_task, 10, none=True)
    _int("n_test_per_task", n_test_per_task, 10, none=True)
    _frac("val_fraction", val_fraction)
    src = _fmnist(data_dir)
    classes, tr, va, te = _same_images(src, seed, n_train_per_task, n_test_per_task, val_fraction)
    n_pix = math.prod(src.train_x.shape[1:])
    tasks = []
    for i in range(n_tasks):
        if i == 0 and identity_first:
            perm = torch.arange(n_pix)
        else:
            perm = torch.randperm(n_pix, generator=_rng(seed, "permutation", i))
        plain = i == 0 and identity_first
        meta = {
            "description": "10-way Fashion-MNIST" + (", pixels in their usual order" if plain else ", pixels permuted"),
            "transform": "identity" if plain else "permute",
            "permutation": perm,
        }
        fn = functools.partial(permute_pixels, permutation=perm)
        tasks.append(_make_task(f"t{i + 1}", src, classes, tr, va, te, transform=fn, metadata=meta))
    desc = f"{n_tasks} pixel-permuted copies of the same Fashion-MNIST sample"
    desc += ", t1 unpermuted" if identity_first else ""
    return Stream("permuted-fmnist", tasks, seed, desc)


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
    _int("n_train_per_task", n_train_per_task, 10, none=True)
    _int("n_test_per_task", n_test_per_task, 10, none=True)
    _frac("val_fraction", val_fraction)
    if angles is None:
        angles = [i * float(max_angle) / (n_tasks - 1) if n_tasks > 1 else 0.0 for i in range(n_tasks)]
    src = _fmnist(data_dir)
    classes, tr, va, te = _same_images(src, seed, n_train_per_task, n_test_per_task, val_fraction)
    tasks = []
    for i, a in enumerate(angles):
        meta = {"description": f"10-way Fashion-MNIST rotated by {a:g} degrees", "transform": f"rotate({a:g})"}
        meta["angle"] = a
        fn = functools.partial(rotate, degrees=a)
        tasks.append(_make_task(f"t{i + 1}", src, classes, tr, va, te, transform=fn, metadata=meta))
    listed = ", ".join(f"{a:g}" for a in angles)
    return Stream("rotated-fmnist", tasks, seed, f"the same Fashion-MNIST sample rotated by {listed} degrees")


# --------------------------------------------------------------------------------------------
# CTrL-style streams
# --------------------------------------------------------------------------------------------

_DISTRACTORS = ("rot90", "vflip", "permute", "rot270")


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


def _ctrl_sizes(large: Any, small: Any, tiny: Any) -> dict[str, tuple[int, int]]:
    return {"large": _pair("large", large), "small": _pair("small", small), "tiny": _pair("tiny", tiny)}


def _class_groups(seed: int, k: int) -> list[list[int]]:
    order = torch.randperm(10, generator=_rng(seed, "class-groups")).tolist()
    return [sorted(order[i * k : (i + 1) * k]) for i in range(10 // k)]


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
    pool = _Pool(src.train_y, _rng(seed, "train-pool"), "Fashion-MNIST training")
    test_pool = _Pool(src.test_y, _rng(seed, "test-pool"), "Fashion-MNIST test")
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
        how = TRANSFORMS[p.transform]
        meta["description"] = (
            f"{len(classes)}-way over Fashion-MNIST classes {classes} ({p.size}: {n_train} train + {n_val} val "
            f"per class), inputs: {how}"
        )
        if p.repeats is not None:
            ref = tasks[p.repeats]
            meta["repeats"] = ref.name
            meta["differs"] = p.differs
            if p.label_order is not None and ref.classes != tuple(classes):
                meta["label_permutation"] = [classes.index(c) for c in ref.classes]
        tasks.append(
            _make_task(
                f"t{i + 1}", src, classes, tr, va, te,
                transform=functools.partial(_apply, name=p.transform, permutation=perm),
                metadata=meta,
            )
        )
    return Stream(stream, tasks, seed, description)


def _short_ctrl_plans(k: int, n_groups: int, distractor_transforms: bool, first: str, last: str | None) -> list[_Plan]:
    """t1 (group 0, identity, size `first`), then 4 distractors; `last` is filled in by the caller."""
    plans = [_Plan(group=0, transform="identity", size=first)]
    for j in range(4):
        g = (j + 1) % n_groups
        t = _DISTRACTORS[j] if distractor_transforms else "identity"
        if (g, t) in {(p.group, p.transform) for p in plans}:
            raise StreamError(
                f"classes_per_task={k} leaves only {n_groups} disjoint class groups, so the distractor tasks "
                "need distractor_transforms=True to differ from one another"
            )
        plans.append(_Plan(group=g, transform=t, size=last or "small"))
    return plans


def _ctrl_common(classes_per_task: int, n_test_per_class: Any) -> None:
    _int("classes_per_task", classes_per_task, 2, 5)
    _int("n_test_per_class", n_test_per_class, 1, none=True)


_CTRL_SIZES = {"large": (400, 200), "small": (40, 20), "tiny": (5, 3)}


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
    images (``metadata["repeats"] == "t1"``). Sizes ``(train, val)`` per class; see the module
    docstring for the class groups and transforms.
    """
    _ctrl_common(classes_per_task, n_test_per_class)
    sizes = _ctrl_sizes(large, small, tiny)
    groups = _class_groups(seed, classes_per_task)
    plans = _short_ctrl_plans(classes_per_task, len(groups), distractor_transforms, "large", "small")
    plans.append(_Plan(0, "identity", "small", repeats=0, differs=(
        f"same classes, labels and inputs as t1; fresh images; less data: {sizes['small'][0]} vs "
        f"{sizes['large'][0]} training images per class")))
    return _build_ctrl("ctrl-minus", seed, data_dir, plans, groups, sizes, n_test_per_class,
                       "CTrL S-: t1 large, 4 small distractors, t1 again with less data")


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
    _ctrl_common(classes_per_task, n_test_per_class)
    sizes = _ctrl_sizes(large, small, tiny)
    groups = _class_groups(seed, classes_per_task)
    plans = _short_ctrl_plans(classes_per_task, len(groups), distractor_transforms, "small", "small")
    plans.append(_Plan(0, "identity", "large", repeats=0, differs=(
        f"same classes, labels and inputs as t1; fresh images; more data: {sizes['large'][0]} vs "
        f"{sizes['small'][0]} training images per class")))
    return _build_ctrl("ctrl-plus", seed, data_dir, plans, groups, sizes, n_test_per_class,
                       "CTrL S+: t1 small, 4 small distractors, t1 again with more data")


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
    _ctrl_common(classes_per_task, n_test_per_class)
    if perturbation not in TRANSFORMS or perturbation == "identity":
        allowed = ", ".join(t for t in TRANSFORMS if t != "identity")
        raise StreamError(f"'perturbation' must be one of {allowed} (got {perturbation!r})")
    sizes = _ctrl_sizes(large, small, tiny)
    groups = _class_groups(seed, classes_per_task)
    plans = _short_ctrl_plans(classes_per_task, len(groups), distractor_transforms, "large", "small")
    if any(p.group == 0 and p.transform == perturbation for p in plans):
        raise StreamError(f"perturbation {perturbation!r} is a distractor's transform on t1's classes; choose another")
    plans.append(_Plan(0, perturbation, "tiny", repeats=0, permutation_key="perturbation", differs=(
        f"same classes and labels as t1; inputs perturbed by {perturbation!r} ({TRANSFORMS[perturbation]}); "
        f"fresh images; {sizes['tiny'][0]} training images per class")))
    return _build_ctrl("ctrl-in", seed, data_dir, plans, groups, sizes, n_test_per_class,
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
    _ctrl_common(classes_per_task, n_test_per_class)
    sizes = _ctrl_sizes(large, small, tiny)
    groups = _class_groups(seed, classes_per_task)
    plans = _short_ctrl_plans(classes_per_task, len(groups), distractor_transforms, "large", "small")
    g = _rng(seed, "label-permutation")
    k = classes_per_task
    perm = torch.randperm(k, generator=g)
    while bool((perm == torch.arange(k)).all()):
        perm = torch.randperm(k, generator=g)
    order = tuple(groups[0][j] for j in perm.tolist())
    plans.append(_Plan(0, "identity", "small", repeats=0, label_order=order, differs=(
        f"same classes and inputs as t1; fresh images; labels permuted (classes in label order {list(order)} "
        f"instead of {groups[0]}); {sizes['small'][0]} training images per class")))
    return _build_ctrl("ctrl-out", seed, data_dir, plans, groups, sizes, n_test_per_class,
                       "CTrL Sout: t1 large, 4 small distractors, t1 again with permuted labels")


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
    _ctrl_common(classes_per_task, n_test_per_class)
    sizes = _ctrl_sizes(large, small, tiny)
    groups = _class_groups(seed, classes_per_task)
    plans = _short_ctrl_plans(classes_per_task, len(groups), distractor_transforms, "small", "small")
    plans[-1] = attrs.evolve(plans[-1], size="large")
    return _build_ctrl("ctrl-pl", seed, data_dir, plans, groups, sizes, n_test_per_class,
                       "CTrL Spl: 5 unrelated tasks, the last one large")


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
    sizes = {"large": _pair("large", large), "small": _pair("small", small)}
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
            differs += f"; fresh images; {size} instead of {ref.size}" if size != ref.size else f"; fresh images; {size} too"
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


# --------------------------------------------------------------------------------------------
# Synthetic
# --------------------------------------------------------------------------------------------


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

        def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.arange(k).repeat_interleave(n)
            y = y[torch.randperm(len(y), generator=g)]
            x = (protos[y] + noise * torch.randn((len(y), *shape), generator=g)).clamp_(0.0, 1.0)
            return x, y

        (xtr, ytr), (xva, yva), (xte, yte) = draw(n_train_per_class), draw(n_val_per_class), draw(n_test_per_class)
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


# --------------------------------------------------------------------------------------------
# CIFAR-100
# --------------------------------------------------------------------------------------------


@_register("split-cifar100")
def split_cifar100(
    seed: int = 0,
    data_dir: Any = None,
    *,
    n_tasks: int = 10,
    classes_per_task: int = 10,
    shuffle_classes: bool = False,
    n_train_per_task: int | None = None,
    n_test_per_task: int | None = None,
    val_fraction: float = 0.1,
) -> Stream:
    """Split CIFAR-100: 10 tasks x 10 fine classes (0-9, 10-19, ... or a seeded order).

    Needs a local CIFAR-100 python-version folder (`data_dir` or ``$JOINTNET_DATA``; see
    `jointnet.experiments.data.load_cifar100`). Inputs are ``N x 3 x 32 x 32`` in [0, 1]. Options as
    `split_fmnist` (PAR's CIFAR100-10 uses a seeded class order: ``shuffle_classes=True``).
    """
    _int("classes_per_task", classes_per_task, 1, 100)
    _int("n_tasks", n_tasks, 1, 100 // classes_per_task)
    _int("n_train_per_task", n_train_per_task, 1, none=True)
    _int("n_test_per_task", n_test_per_task, 1, none=True)
    _frac("val_fraction", val_fraction)
    src = _cifar(data_dir)[0]
    order = torch.randperm(100, generator=_rng(seed, "class-order")).tolist() if shuffle_classes else list(range(100))
    groups = [sorted(order[i * classes_per_task : (i + 1) * classes_per_task]) for i in range(n_tasks)]
    desc = f"CIFAR-100 split into {n_tasks} disjoint groups of {classes_per_task} fine classes"
    return _split_stream("split-cifar100", src, groups, seed, n_train_per_task, n_test_per_task, val_fraction, desc)


@_register("cifar100-superclass")
def cifar100_superclass(
    seed: int = 0,
    data_dir: Any = None,
    *,
    n_tasks: int = 20,
    shuffle_tasks: bool = False,
    n_train_per_task: int | None = None,
    n_test_per_task: int | None = None,
    val_fraction: float = 0.1,
) -> Stream:
    """CIFAR-100 by superclass: task i covers the fine classes of coarse label i (5 each).

    The fine -> coarse map is read from the data (and checked to be a function); tasks follow
    coarse labels 0..19, or a seeded order with ``shuffle_tasks``; labels follow ascending fine
    class id. ``metadata["superclass"]`` names the coarse label.
    """
    _int("n_tasks", n_tasks, 1, 20)
    _int("n_train_per_task", n_train_per_task, 1, none=True)
    _int("n_test_per_task", n_test_per_task, 1, none=True)
    _frac("val_fraction", val_fraction)
    src, coarse_train, _, coarse_names = _cifar(data_dir)
    fine_of: dict[int, set[int]] = {}
    pairs = torch.unique(torch.stack([coarse_train, src.train_y], 1), dim=0).tolist()
    for c, f in pairs:
        fine_of.setdefault(c, set()).add(f)
    coarse_by_fine: dict[int, int] = {}
    for c, f in pairs:
        if coarse_by_fine.setdefault(f, c) != c:
            raise StreamError(f"CIFAR-100 data: fine class {f} appears under coarse labels {coarse_by_fine[f]} and {c}")
    order = torch.randperm(20, generator=_rng(seed, "task-order")).tolist() if shuffle_tasks else list(range(20))
    order = order[:n_tasks]
    missing = [c for c in order if c not in fine_of]
    if missing:
        raise StreamError(f"CIFAR-100 data: no training images for coarse labels {missing}")
    groups = [sorted(fine_of[c]) for c in order]
    stream = _split_stream("cifar100-superclass", src, groups, seed, n_train_per_task, n_test_per_task, val_fraction,
                           f"CIFAR-100, one task per superclass ({n_tasks} of 20)")
    tasks = []
    for t, c in zip(stream.tasks, order):
        meta = dict(t.metadata, superclass=coarse_names[c], coarse_label=c,
                    description=f"the {len(t.classes)} fine classes of superclass {coarse_names[c]!r}")
        tasks.append(attrs.evolve(t, metadata=meta))
    return attrs.evolve(stream, tasks=tasks)
