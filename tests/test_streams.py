"""jointnet.experiments.streams: determinism by seed, label remapping, and how each stream's tasks relate.

The Fashion-MNIST streams need the Debian package dataset-fashion-mnist (CI installs it); they
fail, never skip, when it is missing. Streams are built small through their size options.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from datafiles import tiny_cifar

from jointnet.experiments import data
from jointnet.experiments.streams import (
    STREAMS,
    Stream,
    StreamError,
    Task,
    get_stream,
    permute_pixels,
    rotate,
)

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def fm():
    """The real Fashion-MNIST (a DataError, hence a failure, when it is missing)."""
    return data.load_fashion_mnist()


def source_x(fm, task: Task, split: str) -> torch.Tensor:
    """The untransformed source images behind a task's split, scaled to [0, 1]."""
    images = fm["test_images"] if split == "test" else fm["train_images"]
    return images[task.metadata["source_indices"][split]].unsqueeze(1).float() / 255


def source_y(fm, task: Task, split: str) -> torch.Tensor:
    labels = fm["test_labels"] if split == "test" else fm["train_labels"]
    return labels[task.metadata["source_indices"][split]].long()


def assert_same_stream(a: Stream, b: Stream) -> None:
    assert a.task_names == b.task_names and a.seed == b.seed
    for ta, tb in zip(a, b):
        assert ta.classes == tb.classes
        for s in SPLITS:
            assert torch.equal(getattr(ta, f"x_{s}"), getattr(tb, f"x_{s}"))
            assert torch.equal(getattr(ta, f"y_{s}"), getattr(tb, f"y_{s}"))


def streams_differ(a: Stream, b: Stream) -> bool:
    for ta, tb in zip(a, b):
        if ta.classes != tb.classes or ta.x_train.shape != tb.x_train.shape:
            return True
        if not torch.equal(ta.x_train, tb.x_train) or not torch.equal(ta.y_train, tb.y_train):
            return True
    return False


def check_task(task: Task, input_shape=(1, 28, 28)) -> None:
    for s in SPLITS:
        x, y = getattr(task, f"x_{s}"), getattr(task, f"y_{s}")
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == input_shape and len(x) == len(y)
        assert x.numel() == 0 or (float(x.min()) >= 0.0 and float(x.max()) <= 1.0)
        assert y.numel() == 0 or (0 <= int(y.min()) and int(y.max()) < task.n_classes)


# Small versions of every Fashion-MNIST stream.
SMALL = {
    "split-fmnist": dict(n_train_per_task=40, n_test_per_task=20),
    "permuted-fmnist": dict(n_tasks=3, n_train_per_task=50, n_test_per_task=20),
    "rotated-fmnist": dict(n_tasks=3, n_train_per_task=50, n_test_per_task=20),
    "ctrl-minus": dict(large=(12, 4), small=(3, 2), n_test_per_class=5),
    "ctrl-plus": dict(large=(12, 4), small=(3, 2), n_test_per_class=5),
    "ctrl-in": dict(large=(12, 4), small=(3, 2), tiny=(2, 1), n_test_per_class=5),
    "ctrl-out": dict(large=(12, 4), small=(3, 2), n_test_per_class=5),
    "ctrl-pl": dict(large=(12, 4), small=(3, 2), n_test_per_class=5),
    "ctrl-long": dict(n_tasks=30, large=(6, 3), small=(2, 1), n_test_per_class=3),
}


# --------------------------------------------------------------------------------------------
# Registry, determinism, shapes
# --------------------------------------------------------------------------------------------


def test_registry_names():
    assert {
        "split-fmnist", "permuted-fmnist", "rotated-fmnist", "ctrl-minus", "ctrl-plus", "ctrl-in",
        "ctrl-out", "ctrl-pl", "ctrl-long", "synthetic", "split-cifar100", "cifar100-superclass",
    } <= set(STREAMS)


def test_unknown_stream_lists_known_names():
    with pytest.raises(StreamError) as e:
        get_stream("split-fminst")
    msg = str(e.value)
    assert "did you mean 'split-fmnist'" in msg
    for name in STREAMS:
        assert name in msg


def test_unknown_option_lists_options():
    with pytest.raises(StreamError, match="n_train_per_class") as e:
        get_stream("synthetic", n_task=3)
    assert "n_task" in str(e.value)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("synthetic", dict(n_tasks=0), "'n_tasks' must be an int >= 1"),
        ("synthetic", dict(input_shape=(0, 2)), "input_shape"),
        ("synthetic", dict(seed=-1), "'seed'"),
        ("split-fmnist", dict(val_fraction=1.0), r"'val_fraction' must be a number in \[0, 1\)"),
        ("split-fmnist", dict(n_tasks=6), "'n_tasks' must be an int in 1..5"),
        ("ctrl-minus", dict(large=(0, 2)), "'large' must be a"),
        ("ctrl-in", dict(perturbation="identity"), "'perturbation' must be one of"),
        ("ctrl-long", dict(p_large=(0.5,)), "'p_large'"),
        ("rotated-fmnist", dict(angles=[]), "'angles'"),
    ],
)
def test_bad_options(name, kwargs, match):
    with pytest.raises(StreamError, match=match):
        get_stream(name, **kwargs)


def test_too_many_images_asked(fm):
    with pytest.raises(StreamError, match="only 6000"):
        get_stream("ctrl-minus", large=(6000, 1))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_fmnist_streams_are_deterministic_by_seed(fm, name):
    a = get_stream(name, seed=3, **SMALL[name])
    b = get_stream(name, seed=3, **SMALL[name])
    assert_same_stream(a, b)
    assert streams_differ(a, get_stream(name, seed=4, **SMALL[name]))
    assert a.options == {**b.options} and a.options  # effective options recorded
    for t in a:
        check_task(t)
        assert t.metadata["description"] and "transform" in t.metadata
        # train and val come from the training set and never overlap
        tr, va = t.metadata["source_indices"]["train"], t.metadata["source_indices"]["val"]
        assert not set(tr.tolist()) & set(va.tolist())
        # labels are remapped: the source class behind label y is classes[y]
        for s in SPLITS:
            y = getattr(t, f"y_{s}")
            assert torch.equal(torch.tensor(t.classes)[y], source_y(fm, t, s))


def test_global_rng_untouched(fm):
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    get_stream("synthetic", n_tasks=2)
    get_stream("ctrl-out", **SMALL["ctrl-out"])
    assert torch.equal(torch.rand(3), before)


# --------------------------------------------------------------------------------------------
# split / permuted / rotated
# --------------------------------------------------------------------------------------------


def test_split_fmnist_default_is_5_disjoint_pairs(fm):
    s = get_stream("split-fmnist")
    assert [t.classes for t in s] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    for t in s:
        assert len(t.y_train) + len(t.y_val) == 12000 and len(t.y_val) == 1200
        assert len(t.y_test) == 2000
        assert torch.bincount(t.y_val).tolist() == [600, 600]  # stratified
        assert set(t.y_train.tolist()) == {0, 1}
        assert torch.equal(t.x_test, source_x(fm, t, "test"))
    assert s[0].class_names == ("T-shirt/top", "Trouser")


def test_split_fmnist_shuffled_classes(fm):
    s = get_stream("split-fmnist", shuffle_classes=True, seed=1, **SMALL["split-fmnist"])
    groups = [set(t.classes) for t in s]
    assert set().union(*groups) == set(range(10))
    assert all(not a & b for a, b in itertools.combinations(groups, 2))
    assert [t.classes for t in s] != [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    t = s[0]
    assert torch.equal(t.x_train, source_x(fm, t, "train"))
    assert len(t.y_train) + len(t.y_val) == 40 and len(t.y_test) == 20


def test_permuted_tasks_are_permutations_of_the_same_images(fm):
    s = get_stream("permuted-fmnist", seed=2, **SMALL["permuted-fmnist"])
    first = s[0]
    assert torch.equal(first.metadata["permutation"], torch.arange(784))
    assert torch.equal(first.x_train, source_x(fm, first, "train"))  # t1 is plain Fashion-MNIST
    perms = [t.metadata["permutation"] for t in s]
    assert not torch.equal(perms[1], perms[2])
    for t in s[1:]:
        perm = t.metadata["permutation"]
        assert sorted(perm.tolist()) == list(range(784))
        for split in SPLITS:
            x0, x = getattr(first, f"x_{split}"), getattr(t, f"x_{split}")
            assert torch.equal(x.flatten(1), x0.flatten(1)[:, perm])
            assert torch.equal(getattr(t, f"y_{split}"), getattr(first, f"y_{split}"))
    s2 = get_stream("permuted-fmnist", seed=2, identity_first=False, **SMALL["permuted-fmnist"])
    assert not torch.equal(s2[0].metadata["permutation"], torch.arange(784))


def test_rotated_tasks(fm):
    s = get_stream("rotated-fmnist", seed=0, n_tasks=5, n_train_per_task=30, n_test_per_task=10)
    assert [t.metadata["angle"] for t in s] == [0.0, 45.0, 90.0, 135.0, 180.0]
    t0 = s[0]
    assert torch.equal(t0.x_train, source_x(fm, t0, "train"))
    assert torch.equal(s[2].x_train, torch.rot90(t0.x_train, 1, dims=(2, 3)))
    assert torch.equal(s[4].x_test, torch.flip(t0.x_test, dims=(2, 3)))
    assert not torch.equal(s[1].x_train, t0.x_train)
    # 45 degrees twice is 90 degrees, up to interpolation, inside the central disc
    twice = rotate(rotate(t0.x_train, 45), 45)
    yy, xx = torch.meshgrid(torch.arange(28) - 13.5, torch.arange(28) - 13.5, indexing="ij")
    inner = (yy**2 + xx**2) < 9**2
    assert (twice - s[2].x_train)[..., inner].abs().mean() < 0.08
    custom = get_stream("rotated-fmnist", angles=[0, 30], n_train_per_task=20, n_test_per_task=10)
    assert [t.metadata["angle"] for t in custom] == [0.0, 30.0]


def test_rotate_and_permute_helpers():
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 2] = 1.0
    assert rotate(x, 90)[0, 0, 0, 0] == 1.0
    assert torch.equal(rotate(x, 360), x) and torch.equal(rotate(x, -90), rotate(x, 270))
    r = rotate(torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), 33)
    assert 0.0 <= float(r.min()) and float(r.max()) <= 1.0
    out = permute_pixels(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]), torch.tensor([3, 2, 1, 0]))
    assert out.tolist() == [[[4.0, 3.0], [2.0, 1.0]]]


# --------------------------------------------------------------------------------------------
# CTrL
# --------------------------------------------------------------------------------------------


def train_val_indices(t: Task) -> set[int]:
    si = t.metadata["source_indices"]
    return set(si["train"].tolist()) | set(si["val"].tolist())


def check_short_ctrl(fm, s: Stream, n_tasks: int = 6) -> None:
    assert len(s) == n_tasks
    first = s[0]
    assert first.metadata["transform"] == "identity"
    assert torch.equal(first.x_train, source_x(fm, first, "train"))
    # distractors: each its own class group, disjoint from t1's and from one another
    groups = [set(t.classes) for t in s[1:5]] + [set(first.classes)]
    assert all(not a & b for a, b in itertools.combinations(groups, 2))
    assert [t.metadata["transform"] for t in s[1:5]] == ["rot90", "vflip", "permute", "rot270"]
    for t in s[1 : n_tasks - 1]:
        assert t.repeats is None
    # distractor inputs are their transform of the source images
    t2, t3 = s[1], s[2]
    assert torch.equal(t2.x_train, torch.rot90(source_x(fm, t2, "train"), 1, dims=(2, 3)))
    assert torch.equal(t3.x_val, source_x(fm, t3, "val").flip(2))


def test_ctrl_minus(fm):
    s = get_stream("ctrl-minus", seed=5, **SMALL["ctrl-minus"])
    check_short_ctrl(fm, s)
    first, last = s[0], s[-1]
    assert last.repeats == "t1" and "less data" in last.metadata["differs"]
    assert last.classes == first.classes and last.metadata["transform"] == "identity"
    assert torch.bincount(first.y_train).tolist() == [12, 12] and torch.bincount(first.y_val).tolist() == [4, 4]
    assert torch.bincount(last.y_train).tolist() == [3, 3]
    assert torch.equal(last.x_train, source_x(fm, last, "train"))  # same input distribution
    assert not train_val_indices(first) & train_val_indices(last)  # fresh images
    assert torch.equal(last.x_test, first.x_test) and torch.equal(last.y_test, first.y_test)
    assert len(first.y_test) == 10


def test_ctrl_minus_defaults(fm):
    s = get_stream("ctrl-minus")
    assert [len(t.y_train) for t in s] == [800, 80, 80, 80, 80, 80]
    assert [len(t.y_val) for t in s] == [400, 40, 40, 40, 40, 40]
    assert all(len(t.y_test) == 2000 for t in s)


def test_ctrl_plus(fm):
    s = get_stream("ctrl-plus", seed=5, **SMALL["ctrl-plus"])
    check_short_ctrl(fm, s)
    first, last = s[0], s[-1]
    assert last.repeats == "t1" and "more data" in last.metadata["differs"]
    assert last.classes == first.classes
    assert torch.bincount(first.y_train).tolist() == [3, 3]
    assert torch.bincount(last.y_train).tolist() == [12, 12]
    assert not train_val_indices(first) & train_val_indices(last)
    assert torch.equal(last.x_train, source_x(fm, last, "train"))


def test_ctrl_in(fm):
    s = get_stream("ctrl-in", seed=5, **SMALL["ctrl-in"])
    check_short_ctrl(fm, s)
    first, last = s[0], s[-1]
    assert last.repeats == "t1" and "invert" in last.metadata["differs"]
    assert last.classes == first.classes and last.metadata["transform"] == "invert"
    assert torch.bincount(last.y_train).tolist() == [2, 2]
    for split in SPLITS:  # every input is 1 - the source image; labels keep t1's meaning
        assert torch.equal(getattr(last, f"x_{split}"), 1.0 - source_x(fm, last, split))
    assert torch.equal(last.x_test, 1.0 - first.x_test) and torch.equal(last.y_test, first.y_test)
    assert not train_val_indices(first) & train_val_indices(last)
    # other perturbations
    p = get_stream("ctrl-in", seed=5, perturbation="permute", **SMALL["ctrl-in"])
    perm = p[-1].metadata["permutation"]
    assert torch.equal(p[-1].x_test.flatten(1), p[0].x_test.flatten(1)[:, perm])
    assert not torch.equal(perm, p[3].metadata["permutation"])  # not t4's distractor permutation


def test_ctrl_out(fm):
    s = get_stream("ctrl-out", seed=5, **SMALL["ctrl-out"])
    check_short_ctrl(fm, s)
    first, last = s[0], s[-1]
    assert last.repeats == "t1" and "labels permuted" in last.metadata["differs"]
    assert set(last.classes) == set(first.classes) and last.classes != first.classes
    assert last.classes == tuple(reversed(first.classes))  # 2 classes: the swap
    perm = torch.tensor(last.metadata["label_permutation"])
    # same test images, labels mapped through the permutation; inputs untransformed
    assert torch.equal(last.x_test, first.x_test)
    assert torch.equal(last.y_test, perm[first.y_test])
    assert torch.equal(last.x_train, source_x(fm, last, "train"))
    assert not train_val_indices(first) & train_val_indices(last)


def test_ctrl_out_with_5_classes_per_task(fm):
    s = get_stream("ctrl-out", seed=1, classes_per_task=5, large=(4, 2), small=(2, 1), n_test_per_class=2)
    first, last = s[0], s[-1]
    perm = torch.tensor(last.metadata["label_permutation"])
    assert sorted(perm.tolist()) == list(range(5)) and perm.tolist() != list(range(5))
    assert torch.equal(last.y_test, perm[first.y_test])
    # only 2 class groups: distractors differ from t1 by their transforms
    assert [t.metadata["transform"] for t in s[1:5]] == ["rot90", "vflip", "permute", "rot270"]
    with pytest.raises(StreamError, match="distractor_transforms=True"):
        get_stream("ctrl-out", classes_per_task=5, distractor_transforms=False)


def test_ctrl_pl(fm):
    s = get_stream("ctrl-pl", seed=5, **SMALL["ctrl-pl"])
    check_short_ctrl(fm, s, n_tasks=5)
    assert all(t.repeats is None for t in s)
    assert [t.metadata["size"] for t in s] == ["small"] * 4 + ["large"]
    assert set().union(*(set(t.classes) for t in s)) == set(range(10))


def test_ctrl_long(fm):
    s = get_stream("ctrl-long", seed=7, **SMALL["ctrl-long"])
    assert len(s) >= 30
    repeats = [t for t in s if t.repeats is not None]
    assert len(repeats) >= 3
    for t in s:
        assert t.n_classes == 5 and len(set(t.classes)) == 5
        check_task(t)
        assert torch.equal(torch.tensor(t.classes)[t.y_test], source_y(fm, t, "test"))
    for t in repeats:
        ref = s[t.repeats]
        assert s.task_names.index(ref.name) < s.task_names.index(t.name) and ref.repeats is None
        assert t.classes == ref.classes and t.metadata["transform"] == ref.metadata["transform"]
        assert torch.equal(t.x_test, ref.x_test)  # same test images, same inputs, same labels
        assert t.metadata["differs"]
    transforms = {t.metadata["transform"] for t in s}
    assert len(transforms) >= 3
    assert {t.metadata["size"] for t in s} == {"large", "small"}


def test_ctrl_long_default_has_at_least_30_tasks(fm):
    s = get_stream("ctrl-long", large=(2, 1), small=(1, 1), n_test_per_class=1)
    assert len(s) == 100 and sum(t.repeats is not None for t in s) == 10


# --------------------------------------------------------------------------------------------
# Synthetic (no files at all)
# --------------------------------------------------------------------------------------------


def test_synthetic_needs_no_files(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "nothing")
    monkeypatch.chdir(tmp_path)
    data.clear_cache()
    try:
        kw = dict(n_tasks=4, classes_per_task=3, n_train_per_class=5, n_val_per_class=2, n_test_per_class=3)
        s = get_stream("synthetic", seed=1, **kw)
        assert len(s) == 4 and s[1].classes == (3, 4, 5)
        for t in s:
            check_task(t)
            assert len(t.y_train) == 15 and len(t.y_val) == 6 and len(t.y_test) == 9
            assert torch.bincount(t.y_train).tolist() == [5, 5, 5]
        assert_same_stream(s, get_stream("synthetic", seed=1, **kw))
        assert streams_differ(s, get_stream("synthetic", seed=2, **kw))
    finally:
        data.clear_cache()


def test_synthetic_flat_and_repeat_first():
    s = get_stream("synthetic", input_shape=(784,), n_tasks=3, repeat_first=True, noise=0.05)
    check_task(s[0], input_shape=(784,))
    last = s[-1]
    assert last.repeats == "t1" and last.classes == s[0].classes
    assert not torch.equal(last.x_train, s[0].x_train)
    # same prototypes: class means agree closely
    for c in range(2):
        m0 = s[0].x_train[s[0].y_train == c].mean(0)
        m1 = last.x_train[last.y_train == c].mean(0)
        assert (m0 - m1).abs().mean() < 0.02
    m_other = s[1].x_train[s[1].y_train == 0].mean(0)
    assert (m_other - s[0].x_train[s[0].y_train == 0].mean(0)).abs().mean() > 0.2


def test_task_and_stream_values():
    s = get_stream("synthetic", n_tasks=2, n_train_per_class=3, n_val_per_class=1, n_test_per_class=2)
    assert repr(s) == "Stream(name='synthetic', seed=0, tasks=('t1', 't2'))"
    assert repr(s[0]) == "Task(name='t1', classes=(0, 1), train=6, val=2, test=4)"
    assert s["t2"] is s[1] and len(s) == 2 and [t.name for t in s] == ["t1", "t2"]
    assert s[0].train[0] is s[0].x_train and s[0].input_shape == (1, 28, 28)
    assert "t2" in str(s)
    with pytest.raises(KeyError, match="tasks are t1, t2"):
        s["t9"]
    t = s[0]
    with pytest.raises(StreamError, match="labels must lie in 0..1"):
        Task("bad", (0, 1), t.x_train, t.y_train + 5, t.x_val, t.y_val, t.x_test, t.y_test)
    with pytest.raises(StreamError, match="float32"):
        Task("bad", (0, 1), t.x_train.double(), t.y_train, t.x_val, t.y_val, t.x_test, t.y_test)
    with pytest.raises(StreamError, match="unique"):
        Stream("s", [t, t])


# --------------------------------------------------------------------------------------------
# CIFAR-100 on tiny self-written files
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> Path:
    return tiny_cifar(tmp_path_factory.mktemp("cifar"), n_train_per_class=4, n_test_per_class=2)[0]


def test_split_cifar100(cifar_dir):
    s = get_stream("split-cifar100", data_dir=cifar_dir, val_fraction=0.25)
    c = data.load_cifar100(cifar_dir)
    assert len(s) == 10 and [t.classes for t in s][:2] == [tuple(range(10)), tuple(range(10, 20))]
    for t in s:
        check_task(t, input_shape=(3, 32, 32))
        assert len(t.y_train) == 30 and len(t.y_val) == 10 and len(t.y_test) == 20
        idx = t.metadata["source_indices"]["train"]
        assert torch.equal(t.x_train, c["train_images"][idx].float() / 255)
        assert torch.equal(torch.tensor(t.classes)[t.y_train], c["train_fine_labels"][idx])
    assert_same_stream(s, get_stream("split-cifar100", data_dir=cifar_dir, val_fraction=0.25))
    assert streams_differ(s, get_stream("split-cifar100", data_dir=cifar_dir, val_fraction=0.25, seed=1))
    sh = get_stream("split-cifar100", data_dir=cifar_dir, shuffle_classes=True, n_tasks=3, classes_per_task=5)
    assert len(sh) == 3 and sh[0].classes != tuple(range(5))


def test_cifar100_superclass(cifar_dir):
    s = get_stream("cifar100-superclass", data_dir=cifar_dir, val_fraction=0.25)
    c = data.load_cifar100(cifar_dir)
    assert len(s) == 20
    seen = set()
    for i, t in enumerate(s):
        assert t.n_classes == 5 and t.metadata["coarse_label"] == i
        assert t.metadata["superclass"] == f"coarse{i}"
        idx = t.metadata["source_indices"]["test"]
        assert set(c["test_coarse_labels"][idx].tolist()) == {i}
        assert torch.equal(torch.tensor(t.classes)[t.y_test], c["test_fine_labels"][idx])
        seen |= set(t.classes)
    assert seen == set(range(100))


def test_cifar100_streams_without_data_say_where_they_looked(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.DataError, match="CIFAR-100 not found") as e:
        get_stream("split-cifar100")
    assert "data_dir: not set" in str(e.value) and "$JOINTNET_DATA: not set" in str(e.value)
