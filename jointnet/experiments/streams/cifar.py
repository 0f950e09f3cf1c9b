"""CIFAR-100 streams from a local python-version folder: split by fine class, or by superclass."""

from __future__ import annotations

from typing import Any

import attrs
import torch

from jointnet.errors import StreamError
from jointnet.experiments.data import load_cifar100
from jointnet.experiments.streams.core import Stream, _int, _register
from jointnet.experiments.streams.sampling import (
    _class_order,
    _sample_options,
    _Source,
    _split_groups,
    _split_stream,
)


def _cifar(data_dir: Any) -> tuple[_Source, torch.Tensor, tuple[str, ...]]:
    """The fine-label source, the coarse label of each training image, and the coarse names."""
    d = load_cifar100(data_dir)
    src = _Source(
        "cifar100",
        d["train_images"],
        d["train_fine_labels"],
        d["test_images"],
        d["test_fine_labels"],
        tuple(d["fine_label_names"]),
    )
    return src, d["train_coarse_labels"], tuple(d["coarse_label_names"])


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
    groups = _split_groups(seed, 100, n_tasks, classes_per_task, shuffle_classes)
    sample = _sample_options(n_train_per_task, n_test_per_task, val_fraction)
    desc = f"CIFAR-100 split into {n_tasks} disjoint groups of {classes_per_task} fine classes"
    return _split_stream("split-cifar100", _cifar(data_dir)[0], groups, seed, sample, desc)


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

    Args:
        n_tasks: the first `n_tasks` coarse labels (1..20) in task order.
        shuffle_tasks: order the coarse labels by the seed instead of 0..19.
        n_train_per_task: training images drawn per task (balanced over its 5 classes) before
            the validation split; None: all 2500.
        n_test_per_task: test images per task (balanced); None: all 500.
        val_fraction: share of each class's training images held out for validation.
    """
    _int("n_tasks", n_tasks, 1, 20)
    sample = _sample_options(n_train_per_task, n_test_per_task, val_fraction)
    src, coarse_train, coarse_names = _cifar(data_dir)
    fine_of: dict[int, set[int]] = {}
    pairs = torch.unique(torch.stack([coarse_train, src.train_y], 1), dim=0).tolist()
    for c, f in pairs:
        fine_of.setdefault(c, set()).add(f)
    coarse_by_fine: dict[int, int] = {}
    for c, f in pairs:
        if coarse_by_fine.setdefault(f, c) != c:
            raise StreamError(f"CIFAR-100 data: fine class {f} appears under coarse labels {coarse_by_fine[f]} and {c}")
    order = _class_order(seed, 20, "task-order", shuffle_tasks)[:n_tasks]
    missing = [c for c in order if c not in fine_of]
    if missing:
        raise StreamError(f"CIFAR-100 data: no training images for coarse labels {missing}")
    groups = [sorted(fine_of[c]) for c in order]
    stream = _split_stream("cifar100-superclass", src, groups, seed, sample,
                           f"CIFAR-100, one task per superclass ({n_tasks} of 20)")
    tasks = []
    for t, c in zip(stream.tasks, order):
        meta = dict(t.metadata, superclass=coarse_names[c], coarse_label=c,
                    description=f"the {len(t.classes)} fine classes of superclass {coarse_names[c]!r}")
        tasks.append(attrs.evolve(t, metadata=meta))
    return attrs.evolve(stream, tasks=tasks)
