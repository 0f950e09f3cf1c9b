"""Declarative construction: a backbone from a list of layer specs or partial dicts.

Each item is a full spec or a dict with a ``kind`` (``conv``, ``linear``, ``bn``, ``relu``,
``maxpool``, ``gap``, ``flatten``, ``dropout``, ``add``, ``concat`` or a spec class name) and its
fields; input widths are inferred. Optional ``name`` and ``inputs`` (default: the previous item)
make residual and concat merges:

>>> layers = [
...     {"kind": "conv", "out_ch": 8, "padding": 1, "name": "c1"},
...     {"kind": "relu", "name": "r1"},
...     {"kind": "conv", "out_ch": 8, "padding": 1, "name": "c2"},
...     {"kind": "add", "inputs": ["r1", "c2"], "name": "res"},
...     {"kind": "gap"},
... ]
>>> net = build(layers, input_shape=(3, 8, 8), task="t1", n_classes=10)
>>> net.route("t1")
['input', 'c1', 'r1', 'c2', 'res', 'gap1', 'head.t1']

Named backbones return such lists: `mlp`, `small_conv`, `lenet5`, `vgg`, `resnet_tiny`.
`build` is a composite: every node it adds is a logged primitive rewrite.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

from jointnet.errors import SpecError
from jointnet.graph.layers import Layer
from jointnet.graph.net import JointNet
from jointnet.graph.structure import add_head, add_input, add_node, add_task

__all__ = ["build", "mlp", "small_conv", "lenet5", "vgg", "resnet_tiny", "BACKBONES"]

_PREFIX = {
    "Conv2d": "conv", "Linear": "fc", "BatchNorm": "bn", "ReLU": "relu", "MaxPool2d": "pool",
    "AvgPool2d": "avgpool", "GlobalAvgPool": "gap", "Flatten": "flatten", "Dropout": "drop",
    "Add": "add", "Concat": "cat", "Identity": "id",
}
_ALIAS_KIND = {
    "conv": "Conv2d", "linear": "Linear", "fc": "Linear", "bn": "BatchNorm", "relu": "ReLU",
    "maxpool": "MaxPool2d", "avgpool": "AvgPool2d", "gap": "GlobalAvgPool", "flatten": "Flatten",
    "dropout": "Dropout", "add": "Add", "concat": "Concat", "identity": "Identity",
}


def _kind(item: Any) -> str:
    if isinstance(item, Layer):
        return item.kind
    if isinstance(item, dict) and "kind" in item:
        return _ALIAS_KIND.get(item["kind"], item["kind"])
    raise SpecError(f"a layer must be a spec or a dict with 'kind' (got {item!r})")


def build(
    layers: Sequence[Layer | dict[str, Any]],
    *,
    input_shape: Sequence[int] | None = None,
    task: str = "t1",
    n_classes: int = 10,
    net: JointNet | None = None,
) -> JointNet:
    """A net whose first task `task` routes through `layers` and ends in a head.

    `input_shape` may be omitted when `layers` comes from a named backbone (it then starts with
    ``{"kind": "input", "shape": ...}``).
    """
    items = list(layers)
    if items and isinstance(items[0], dict) and items[0].get("kind") == "input":
        input_shape = items.pop(0)["shape"]
    if input_shape is None:
        raise SpecError("build needs input_shape")
    net = JointNet.empty() if net is None else net
    net = add_input(net, node="input", shape=tuple(input_shape))
    net = add_task(net, task=task)
    counts: dict[str, int] = defaultdict(int)
    prev = "input"
    for item in items:
        kind = _kind(item)
        fields = dict(item) if isinstance(item, dict) else item
        if isinstance(fields, dict):
            name = fields.pop("name", None)
            inputs = fields.pop("inputs", [prev])
        else:
            name, inputs = None, [prev]
        if name is None:
            counts[kind] += 1
            name = f"{_PREFIX.get(kind, kind.lower())}{counts[kind]}"
        net = add_node(net, node=name, spec=fields, inputs=list(inputs), task=task)
        prev = name
    return add_head(net, task=task, n_classes=n_classes, after=prev)


def mlp(in_features: int, hidden: Sequence[int] = (256, 256), *, dropout: float = 0.0) -> list:
    """Flat input -> [Linear, ReLU (, Dropout)] per hidden width."""
    out: list = [{"kind": "input", "shape": (in_features,)}]
    for h in hidden:
        out += [{"kind": "linear", "out_f": h}, {"kind": "relu"}]
        if dropout:
            out.append({"kind": "dropout", "p": dropout})
    return out


def small_conv(input_shape: Sequence[int] = (1, 28, 28), widths: Sequence[int] = (32, 64), hidden: int = 128) -> list:
    """[Conv3x3, ReLU, MaxPool2] per width, then Flatten, Linear(hidden), ReLU."""
    out: list = [{"kind": "input", "shape": tuple(input_shape)}]
    for w in widths:
        out += [{"kind": "conv", "out_ch": w, "padding": 1}, {"kind": "relu"}, {"kind": "maxpool", "kernel": 2}]
    return out + [{"kind": "flatten"}, {"kind": "linear", "out_f": hidden}, {"kind": "relu"}]


def lenet5(input_shape: Sequence[int] = (1, 28, 28)) -> list:
    """LeNet-5-like: conv5(6, pad 2) - pool - conv5(16) - pool - fc120 - fc84."""
    return [
        {"kind": "input", "shape": tuple(input_shape)},
        {"kind": "conv", "out_ch": 6, "kernel": 5, "padding": 2}, {"kind": "relu"}, {"kind": "maxpool"},
        {"kind": "conv", "out_ch": 16, "kernel": 5}, {"kind": "relu"}, {"kind": "maxpool"},
        {"kind": "flatten"},
        {"kind": "linear", "out_f": 120}, {"kind": "relu"},
        {"kind": "linear", "out_f": 84}, {"kind": "relu"},
    ]


def vgg(input_shape: Sequence[int] = (3, 32, 32), cfg: Sequence[int | str] = (32, 32, "M", 64, 64, "M"),
        hidden: int = 128, batchnorm: bool = True) -> list:
    """VGG-style: conv3x3 (+ BatchNorm) + ReLU per int in `cfg`, MaxPool2 per "M"; then fc."""
    out: list = [{"kind": "input", "shape": tuple(input_shape)}]
    for c in cfg:
        if c == "M":
            out.append({"kind": "maxpool"})
            continue
        out.append({"kind": "conv", "out_ch": int(c), "padding": 1, "bias": not batchnorm})
        if batchnorm:
            out.append({"kind": "bn"})
        out.append({"kind": "relu"})
    return out + [{"kind": "flatten"}, {"kind": "linear", "out_f": hidden}, {"kind": "relu"}]


def resnet_tiny(input_shape: Sequence[int] = (3, 32, 32), width: int = 16, blocks: int = 2) -> list:
    """A stem conv and `blocks` residual blocks (conv-bn-relu-conv-bn + identity, Add, ReLU)."""
    out: list = [
        {"kind": "input", "shape": tuple(input_shape)},
        {"kind": "conv", "out_ch": width, "padding": 1, "bias": False, "name": "stem"},
        {"kind": "bn", "name": "stem_bn"}, {"kind": "relu", "name": "stem_relu"},
    ]
    prev = "stem_relu"
    for b in range(1, blocks + 1):
        p = f"b{b}"
        out += [
            {"kind": "conv", "out_ch": width, "padding": 1, "bias": False, "name": f"{p}_conv1", "inputs": [prev]},
            {"kind": "bn", "name": f"{p}_bn1"}, {"kind": "relu", "name": f"{p}_relu1"},
            {"kind": "conv", "out_ch": width, "padding": 1, "bias": False, "name": f"{p}_conv2"},
            {"kind": "bn", "name": f"{p}_bn2"},
            {"kind": "add", "inputs": [prev, f"{p}_bn2"], "name": f"{p}_add"},
            {"kind": "relu", "name": f"{p}_out"},
        ]
        prev = f"{p}_out"
    return out + [{"kind": "gap", "name": "gap"}]


BACKBONES = {
    "mlp": lambda: mlp(784, (256, 256)),
    "small_conv": small_conv,
    "lenet5": lenet5,
    "vgg": vgg,
    "resnet_tiny": resnet_tiny,
}
