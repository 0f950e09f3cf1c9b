"""What the stream builders share: seeded generators, per-class draws, splits, gathering a task.

Every random choice draws from a `torch.Generator` seeded from ``(seed, purpose)`` (`_rng`), so
draws for different purposes never shift one another and the global RNG is never touched.
Images are handed out per class without replacement (`_Pool`); train and val come from the
source's training images (stratified per class), test images from its test set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from jointnet.errors import StreamError
from jointnet.experiments.data import load_fashion_mnist
from jointnet.experiments.streams.core import Stream, Task, _frac, _int

# --------------------------------------------------------------------------------------------
# Randomness and sources
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


def _class_order(seed: int, n: int, purpose: str, shuffle: bool = True) -> list[int]:
    """``0..n-1``, in a seeded random order when `shuffle`."""
    return torch.randperm(n, generator=_rng(seed, purpose)).tolist() if shuffle else list(range(n))


def _groups(order: Sequence[int], k: int, n_groups: int) -> list[list[int]]:
    """The first `n_groups` consecutive runs of `k` classes of `order`, each sorted."""
    return [sorted(order[i * k : (i + 1) * k]) for i in range(n_groups)]


# --------------------------------------------------------------------------------------------
# Drawing images per class
# --------------------------------------------------------------------------------------------


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


def _pools(src: _Source, seed: int, what: str | None = None) -> tuple[_Pool, _Pool]:
    """The training and test pools of a stream (`what` names the source in errors)."""
    what = src.name if what is None else what
    return (
        _Pool(src.train_y, _rng(seed, "train-pool"), f"{what} training"),
        _Pool(src.test_y, _rng(seed, "test-pool"), f"{what} test"),
    )


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
            k = round(total * val_fraction)
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
# Per-task totals (split, permuted, rotated, CIFAR-100 streams)
# --------------------------------------------------------------------------------------------


@attrs.frozen
class _Sample:
    """How much a task draws: train images before the val split and test images, balanced over
    its classes (None: all of them), and the share of each class held out for validation."""

    n_train: int | None
    n_test: int | None
    val_fraction: float


def _sample_options(n_train_per_task: Any, n_test_per_task: Any, val_fraction: Any, *, at_least: int = 1) -> _Sample:
    """Check the ``n_train_per_task``, ``n_test_per_task`` and ``val_fraction`` options."""
    _int("n_train_per_task", n_train_per_task, at_least, none=True)
    _int("n_test_per_task", n_test_per_task, at_least, none=True)
    _frac("val_fraction", val_fraction)
    return _Sample(n_train_per_task, n_test_per_task, val_fraction)


def _draw_task(
    pools: tuple[_Pool, _Pool], classes: Sequence[int], gen: torch.Generator, sample: _Sample
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train, val and test indices of one task drawing `sample` over `classes`."""
    k = len(classes)
    train, val = _draw_train_val(
        pools[0], classes, gen,
        per_class=_spread(sample.n_train, k) if sample.n_train is not None else None,
        val_fraction=sample.val_fraction,
    )
    test = _draw_test(pools[1], classes, _spread(sample.n_test, k) if sample.n_test is not None else None)
    return train, val, test


# --------------------------------------------------------------------------------------------
# Building tasks and split streams
# --------------------------------------------------------------------------------------------


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


def _split_groups(seed: int, n_classes: int, n_tasks: Any, classes_per_task: Any, shuffle: bool) -> list[list[int]]:
    """Check ``classes_per_task`` and ``n_tasks`` (None: as many as fit); the tasks' class groups.

    Consecutive groups of classes ``0..n_classes-1``, or of a seeded order with `shuffle`.
    """
    _int("classes_per_task", classes_per_task, 1, n_classes)
    n_tasks = n_classes // classes_per_task if n_tasks is None else n_tasks
    _int("n_tasks", n_tasks, 1, n_classes // classes_per_task)
    return _groups(_class_order(seed, n_classes, "class-order", shuffle), classes_per_task, n_tasks)


def _split_stream(
    stream: str, src: _Source, groups: list[list[int]], seed: int, sample: _Sample, description: str
) -> Stream:
    """One task per class group, each drawing `sample` of fresh images of its classes."""
    pools = _pools(src, seed)
    tasks = []
    for i, group in enumerate(groups):
        tr, va, te = _draw_task(pools, group, _rng(seed, "order", i), sample)
        meta = {"description": f"{len(group)}-way over {src.name} classes {group}"}
        tasks.append(_make_task(f"t{i + 1}", src, group, tr, va, te, metadata=meta))
    return Stream(stream, tasks, seed, description)
