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
similar-fmnist      N 10-way tasks (5) on disjoint Fashion-MNIST shards, each through its own
                    seeded writer (affine warp + stroke gamma): SPG's similar tasks
lowlevel-fmnist     N tasks (5), one 5-way problem (seeded classes) on fresh images per task,
                    each through its own fixed low-level transform (identity, invert, blur,
                    randconv, patchperm): LASEM's known answer
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

The package: `core` (`Task`, `Stream`, option checks, the registry, `get_stream`), `sampling`
(seeded draws per class, train / val / test splits, gathering a task), `transforms` (`rotate`,
`permute_pixels`, `TRANSFORMS`), and one module per family of streams: `fmnist` (split,
permuted, rotated), `ctrl`, `synthetic`, `cifar`.

>>> s = get_stream("synthetic", seed=0, n_tasks=3, n_train_per_class=4, n_val_per_class=2)
>>> s
Stream(name='synthetic', seed=0, tasks=('t1', 't2', 't3'))
>>> s[0].x_train.shape, s[0].y_train.tolist()[:4]
(torch.Size([8, 1, 28, 28]), [1, 0, 0, 0])
"""

from __future__ import annotations

# StreamError: raised by every stream; importable from here as before.
from jointnet.errors import StreamError as StreamError
from jointnet.experiments.streams.core import STREAMS, Stream, Task, get_stream
from jointnet.experiments.streams.transforms import TRANSFORMS, permute_pixels, rotate

# Importing a family registers its streams; `STREAMS` lists them in this order.
# isort: off
from jointnet.experiments.streams import fmnist, ctrl, synthetic, cifar  # noqa: F401
from jointnet.experiments.streams import similar  # noqa: F401  (similar-fmnist: SPG's similar tasks)
from jointnet.experiments.streams import lowlevel  # noqa: F401  (lowlevel-fmnist: LASEM's known-answer stream)
# isort: on

__all__ = [
    "Task",
    "Stream",
    "STREAMS",
    "get_stream",
    "rotate",
    "permute_pixels",
    "TRANSFORMS",
]
