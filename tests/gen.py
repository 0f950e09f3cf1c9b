"""Hypothesis generators shared by the property and stateful tests.

Named `gen`, not `strategies`: a `tests/strategies.py` would shadow the `strategies` package.
Everything here is tiny on purpose (1x8x8 images, widths 2-6) so CPU runs stay fast.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from hypothesis import strategies as st

from jointnet import backbones as bb
from jointnet.graph.net import TensorRef

__all__ = [
    "Backbone",
    "BACKBONE_NAMES",
    "tiny_backbone",
    "backbones",
    "widths",
    "n_classes",
    "plain_values",
    "annotation_values",
    "probe",
    "train_batch",
]

IMAGE = (1, 8, 8)
FLAT = (16,)
BACKBONE_NAMES = ("mlp", "small_conv", "vgg_bn", "resnet_tiny")

widths = st.integers(2, 6)
n_classes = st.integers(2, 4)


@attrs.frozen
class Backbone:
    """A named tiny backbone: its layer list (for `backbones.build`) and input shape."""

    name: str
    layers: tuple
    input_shape: tuple[int, ...]

    def build(self, task: str = "t1", n_classes: int = 3):
        return bb.build([dict(item) for item in self.layers], task=task, n_classes=n_classes)


def tiny_backbone(name: str, w1: int = 3, w2: int = 4, w3: int = 5, blocks: int = 1) -> Backbone:
    """One of `BACKBONE_NAMES` with widths `w1`, `w2` and hidden width `w3`."""
    if name == "mlp":
        layers = bb.mlp(FLAT[0], (w1, w2))
    elif name == "small_conv":
        layers = bb.small_conv(IMAGE, (w1, w2), w3)
    elif name == "vgg_bn":
        layers = bb.vgg(IMAGE, (w1, "M", w2, "M"), hidden=w3, batchnorm=True)
    elif name == "resnet_tiny":
        layers = bb.resnet_tiny(IMAGE, width=w1, blocks=blocks)
    else:  # pragma: no cover
        raise ValueError(name)
    shape = tuple(layers[0]["shape"])
    return Backbone(name, tuple(layers), shape)


@st.composite
def backbones(draw, names=BACKBONE_NAMES) -> Backbone:
    """A random tiny backbone: mlp, small_conv, VGG-ish with BatchNorm, or resnet_tiny (Add)."""
    name = draw(st.sampled_from(names))
    return tiny_backbone(name, draw(widths), draw(widths), draw(widths), draw(st.integers(1, 2)))


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**31), 2**31),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=6),
)

# Plain annotation data (no None at the top: annotate(value=None) removes a key).
plain_values = st.recursive(
    _scalars.filter(lambda v: v is not None),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(min_size=1, max_size=4), inner, max_size=3),
    ),
    max_leaves=6,
)


def annotation_values(refs: list[str]) -> st.SearchStrategy[Any]:
    """Plain values, or a `TensorRef` to one of `refs` (keys already in the store)."""
    if not refs:
        return plain_values
    return st.one_of(plain_values, st.sampled_from(refs).map(TensorRef))


def probe(shape: tuple[int, ...], n: int = 4, seed: int = 1234) -> torch.Tensor:
    """A fixed input batch of `n` samples of `shape`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g)


def train_batch(shape: tuple[int, ...], classes: int, n: int = 6, seed: int = 99):
    """A fixed (x, y) batch with labels in range(classes)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y
