"""The built-in layer kinds: frozen, validated descriptions of one layer, one class per kind.

>>> Conv2d(in_ch=1, out_ch=8, kernel=3, padding=1).out_shape([(1, 28, 28)])
(8, 28, 28)
"""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import torch
import torch.nn.functional as F

from jointnet.errors import SpecError
from jointnet.graph.layers.base import (
    Layer, ParamInfo, finite, flag, nonneg, pos, register_spec, shape_field,
)

__all__ = [
    "Input", "Linear", "Head", "Conv2d", "BatchNorm", "ReLU", "MaxPool2d", "AvgPool2d",
    "GlobalAvgPool", "Flatten", "Dropout", "Identity", "Zero", "Add", "Concat", "Gate",
]


@register_spec
@attrs.frozen
class Input(Layer):
    """The source of a task's route: a batch of tensors of `shape` (without the batch axis)."""

    kind: ClassVar[str] = "Input"
    aliases: ClassVar[tuple[str, ...]] = ("input",)
    arity: ClassVar[int | None] = 0
    shape: tuple[int, ...] = attrs.field(converter=shape_field)

    @shape.validator
    def _check(self, _a, value):
        if not value:
            raise SpecError(f"Input.shape must be non-empty positive ints (got {value!r})")

    def out_shape(self, in_shapes):
        return self.shape

    def short(self):
        return f"Input{self.shape}"


@register_spec
@attrs.frozen
class Linear(Layer):
    """A fully connected layer `in_f -> out_f`."""

    kind: ClassVar[str] = "Linear"
    aliases: ClassVar[tuple[str, ...]] = ("linear", "fc")
    in_field: ClassVar[str] = "in_f"
    out_field: ClassVar[str] = "out_f"
    channels: ClassVar[str] = "produce"
    in_f: int = attrs.field(validator=pos)
    out_f: int = attrs.field(validator=pos)
    bias: bool = attrs.field(default=True, validator=flag)

    def params(self):
        p = {"weight": ParamInfo((self.out_f, self.in_f), 0, 1, init="kaiming", fan_in=self.in_f)}
        if self.bias:
            p["bias"] = ParamInfo((self.out_f,), 0, None, init="fan_in_uniform", fan_in=self.in_f)
        return p

    def out_shape(self, in_shapes):
        s = self._one(in_shapes)
        if s != (self.in_f,):
            raise SpecError(f"{self.short()} expects input ({self.in_f},), got {s}")
        return (self.out_f,)

    def emit(self, ins, p):
        return f"F.linear({ins[0]}, {p['weight']}, {p.get('bias', 'None')})"

    def short(self):
        return f"{self.kind}({self.in_f}->{self.out_f})"


@register_spec
@attrs.frozen
class Head(Linear):
    """A task's classifier: a Linear sink `in_f -> out_f` classes; never widened on its output."""

    kind: ClassVar[str] = "Head"
    aliases: ClassVar[tuple[str, ...]] = ("head",)
    channels: ClassVar[str] = "consume"

    def widened(self, *, out=0, in_=0):
        if out:
            raise SpecError("a Head's number of classes cannot be widened")
        return super().widened(in_=in_)


@register_spec
@attrs.frozen
class Conv2d(Layer):
    """A 2-d convolution `in_ch -> out_ch` with a square kernel, optional dilation and groups.

    With ``groups > 1`` (depthwise and grouped convolutions, PAR's separable convs) the weight
    is ``(out_ch, in_ch / groups, k, k)`` and channel growth cannot pass the layer.
    """

    kind: ClassVar[str] = "Conv2d"
    aliases: ClassVar[tuple[str, ...]] = ("conv",)
    in_field: ClassVar[str] = "in_ch"
    out_field: ClassVar[str] = "out_ch"
    in_ch: int = attrs.field(validator=pos)
    out_ch: int = attrs.field(validator=pos)
    kernel: int = attrs.field(default=3, validator=pos)
    stride: int = attrs.field(default=1, validator=pos)
    padding: int = attrs.field(default=0, validator=nonneg)
    bias: bool = attrs.field(default=True, validator=flag)
    dilation: int = attrs.field(default=1, validator=pos)
    groups: int = attrs.field(default=1, validator=pos)

    def __attrs_post_init__(self):
        if self.in_ch % self.groups or self.out_ch % self.groups:
            raise SpecError(f"Conv2d: in_ch {self.in_ch} and out_ch {self.out_ch} must be multiples of "
                            f"groups {self.groups}")

    @property
    def channels(self) -> str:  # type: ignore[override]
        return "produce" if self.groups == 1 else "none"

    def params(self):
        k = self.kernel
        per = self.in_ch // self.groups
        fan_in = per * k * k
        in_axis = 1 if self.groups == 1 else None
        p = {"weight": ParamInfo((self.out_ch, per, k, k), 0, in_axis, init="kaiming", fan_in=fan_in)}
        if self.bias:
            p["bias"] = ParamInfo((self.out_ch,), 0, None, init="fan_in_uniform", fan_in=fan_in)
        return p

    def out_shape(self, in_shapes):
        s = self._one(in_shapes)
        if len(s) != 3 or s[0] != self.in_ch:
            raise SpecError(f"{self.short()} expects input ({self.in_ch}, H, W), got {s}")
        reach = self.dilation * (self.kernel - 1) + 1
        h, w = ((d + 2 * self.padding - reach) // self.stride + 1 for d in s[1:])
        if h <= 0 or w <= 0:
            raise SpecError(f"{self.short()} maps input {s} to an empty output")
        return (self.out_ch, h, w)

    def emit(self, ins, p):
        extra = f", {self.dilation}, {self.groups}" if (self.dilation, self.groups) != (1, 1) else ""
        return (
            f"F.conv2d({ins[0]}, {p['weight']}, {p.get('bias', 'None')}, "
            f"{self.stride}, {self.padding}{extra})"
        )

    def short(self):
        extra = f", s{self.stride}" if self.stride != 1 else ""
        extra += f", p{self.padding}" if self.padding else ""
        extra += f", d{self.dilation}" if self.dilation != 1 else ""
        extra += f", g{self.groups}" if self.groups != 1 else ""
        return f"Conv2d({self.in_ch}->{self.out_ch}, k{self.kernel}{extra})"


def _bn_groups(x, sizes, means, vars_, weights, biases, training, momentum, eps):
    """BatchNorm over channel groups held in separate tensors (after `widen`): each group's
    running statistics are updated in place in its own tensor."""
    parts = x.split(sizes, 1)
    weights = weights or [None] * len(parts)
    biases = biases or [None] * len(parts)
    return torch.cat(
        [
            F.batch_norm(p, m, v, w, b, training, momentum, eps)
            for p, m, v, w, b in zip(parts, means, vars_, weights, biases)
        ],
        1,
    )


@register_spec
@attrs.frozen
class BatchNorm(Layer):
    """Batch normalisation over axis 1 (works after Linear and Conv2d alike); `affine` False has no
    weight and bias (PAR's cell ops)."""

    kind: ClassVar[str] = "BatchNorm"
    aliases: ClassVar[tuple[str, ...]] = ("bn",)
    in_field: ClassVar[str] = "num_features"
    out_field: ClassVar[str] = "num_features"
    channels: ClassVar[str] = "follow"
    runtime: ClassVar[dict] = {"_bn_groups": _bn_groups}
    num_features: int = attrs.field(validator=pos)
    eps: float = attrs.field(default=1e-5, converter=finite(0.0, 1.0, lo_open=True))
    momentum: float = attrs.field(default=0.1, converter=finite(0.0, 1.0, lo_open=True))
    affine: bool = attrs.field(default=True, validator=flag)

    def params(self):
        n = (self.num_features,)
        p = {}
        if self.affine:
            p["weight"] = ParamInfo(n, 0, None, init="ones")
            p["bias"] = ParamInfo(n, 0, None, init="zeros")
        p["running_mean"] = ParamInfo(n, 0, None, buffer=True, init="zeros")
        p["running_var"] = ParamInfo(n, 0, None, buffer=True, init="ones")
        return p

    def out_shape(self, in_shapes):
        s = self._one(in_shapes)
        if s[0] != self.num_features:
            raise SpecError(f"{self.short()} expects {self.num_features} channels, got {s}")
        return s

    def emit(self, ins, p):
        return (
            f"F.batch_norm({ins[0]}, {p['running_mean']}, {p['running_var']}, {p.get('weight', 'None')}, "
            f"{p.get('bias', 'None')}, ctx.bn, {self.momentum!r}, {self.eps!r})"
        )

    def emit_grid(self, ins, grids, infos, sizes):
        if len(sizes) == 1:
            return super().emit_grid(ins, grids, infos, sizes)
        # Running statistics live in one tensor per channel group and are updated in place, so
        # the groups are normalised apart rather than joined (a joined copy would not update).
        lists = {name: "[" + ", ".join(row[0] for row in rows) + "]" for name, rows in grids.items()}
        return (
            f"_bn_groups({ins[0]}, {sizes}, {lists['running_mean']}, {lists['running_var']}, "
            f"{lists.get('weight', 'None')}, {lists.get('bias', 'None')}, ctx.bn, {self.momentum!r}, "
            f"{self.eps!r})"
        )

    def short(self):
        return f"BatchNorm({self.num_features}{'' if self.affine else ', affine=False'})"


class _Pass(Layer):
    """A channel-preserving kind without parameters."""

    channels: ClassVar[str] = "pass"

    def out_shape(self, in_shapes):
        return self._one(in_shapes)


@register_spec
@attrs.frozen
class ReLU(_Pass):
    kind: ClassVar[str] = "ReLU"
    aliases: ClassVar[tuple[str, ...]] = ("relu",)

    def emit(self, ins, p):
        return f"F.relu({ins[0]})"

    def short(self):
        return "ReLU"


@register_spec
@attrs.frozen
class Identity(_Pass):
    kind: ClassVar[str] = "Identity"
    aliases: ClassVar[tuple[str, ...]] = ("identity",)

    def emit(self, ins, p):
        return ins[0]

    def short(self):
        return "Identity"


@register_spec
@attrs.frozen
class Dropout(_Pass):
    kind: ClassVar[str] = "Dropout"
    aliases: ClassVar[tuple[str, ...]] = ("dropout",)
    p: float = attrs.field(default=0.5, converter=finite(0.0, 1.0, hi_open=True))

    def emit(self, ins, p):
        return f"F.dropout({ins[0]}, {self.p!r}, ctx.dropout)"

    def short(self):
        return f"Dropout({self.p})"


@register_spec
@attrs.frozen
class Zero(_Pass):
    """The zero operation of a DARTS cell: zeros of the input's shape, subsampled by `stride`."""

    kind: ClassVar[str] = "Zero"
    aliases: ClassVar[tuple[str, ...]] = ("zero", "none")
    stride: int = attrs.field(default=1, validator=pos)

    def out_shape(self, in_shapes):
        s = self._one(in_shapes)
        if self.stride == 1:
            return s
        if len(s) != 3:
            raise SpecError(f"{self.short()} with a stride expects (C, H, W), got {s}")
        return (s[0],) + tuple(-(-d // self.stride) for d in s[1:])

    def emit(self, ins, p):
        x = ins[0] if self.stride == 1 else f"{ins[0]}[:, :, ::{self.stride}, ::{self.stride}]"
        return f"{x}.mul(0.0)"

    def short(self):
        return "Zero" if self.stride == 1 else f"Zero(s{self.stride})"


def _pool_shape(spec, in_shapes):
    s = spec._one(in_shapes)
    if len(s) != 3:
        raise SpecError(f"{spec.short()} expects (C, H, W), got {s}")
    h, w = ((d + 2 * spec.padding - spec.kernel) // spec.stride + 1 for d in s[1:])
    if h <= 0 or w <= 0:
        raise SpecError(f"{spec.short()} maps input {s} to an empty output")
    return (s[0], h, w)


class _Pool(_Pass):
    kernel: int
    stride: int
    padding: int

    def out_shape(self, in_shapes):
        return _pool_shape(self, in_shapes)

    def short(self):
        extra = f", s{self.stride}" if self.stride != self.kernel else ""
        extra += f", p{self.padding}" if self.padding else ""
        return f"{self.kind}({self.kernel}{extra})"


@register_spec
@attrs.frozen
class MaxPool2d(_Pool):
    kind: ClassVar[str] = "MaxPool2d"
    aliases: ClassVar[tuple[str, ...]] = ("maxpool",)
    kernel: int = attrs.field(default=2, validator=pos)
    stride: int = attrs.field(validator=pos)
    padding: int = attrs.field(default=0, validator=nonneg)

    @stride.default
    def _stride(self):
        return self.kernel

    def emit(self, ins, p):
        pad = f", {self.padding}" if self.padding else ""
        return f"F.max_pool2d({ins[0]}, {self.kernel}, {self.stride}{pad})"


@register_spec
@attrs.frozen
class AvgPool2d(_Pool):
    kind: ClassVar[str] = "AvgPool2d"
    aliases: ClassVar[tuple[str, ...]] = ("avgpool",)
    kernel: int = attrs.field(default=2, validator=pos)
    stride: int = attrs.field(validator=pos)
    padding: int = attrs.field(default=0, validator=nonneg)

    @stride.default
    def _stride(self):
        return self.kernel

    def emit(self, ins, p):
        # count_include_pad=False, as DARTS' avg_pool_3x3 does; no effect without padding.
        pad = f", {self.padding}, count_include_pad=False" if self.padding else ""
        return f"F.avg_pool2d({ins[0]}, {self.kernel}, {self.stride}{pad})"


@register_spec
@attrs.frozen
class GlobalAvgPool(_Pass):
    """Mean over the spatial axes: (C, H, W) -> (C,)."""

    kind: ClassVar[str] = "GlobalAvgPool"
    aliases: ClassVar[tuple[str, ...]] = ("gap",)

    def out_shape(self, in_shapes):
        s = self._one(in_shapes)
        if len(s) != 3:
            raise SpecError(f"GlobalAvgPool expects (C, H, W), got {s}")
        return (s[0],)

    def emit(self, ins, p):
        return f"{ins[0]}.mean((2, 3))"

    def short(self):
        return "GlobalAvgPool"


@register_spec
@attrs.frozen
class Flatten(Layer):
    """(C, H, W) -> (C*H*W,), channel-major, so channel c owns a contiguous block of H*W."""

    kind: ClassVar[str] = "Flatten"
    aliases: ClassVar[tuple[str, ...]] = ("flatten",)
    channels: ClassVar[str] = "flatten"

    def out_shape(self, in_shapes):
        s = self._one(in_shapes)
        return (math.prod(s),)

    def emit(self, ins, p):
        return f"{ins[0]}.flatten(1)"

    def short(self):
        return "Flatten"


@register_spec
@attrs.frozen
class Add(Layer):
    """Element-wise sum of two or more inputs of equal shape (residual merge)."""

    kind: ClassVar[str] = "Add"
    aliases: ClassVar[tuple[str, ...]] = ("add",)
    arity: ClassVar[int | None] = None
    channels: ClassVar[str] = "merge"

    def out_shape(self, in_shapes):
        if len(in_shapes) < 2 or len(set(in_shapes)) != 1:
            raise SpecError(f"Add needs two or more inputs of equal shape, got {in_shapes}")
        return in_shapes[0]

    def emit(self, ins, p):
        return " + ".join(ins)

    def short(self):
        return "Add"


@register_spec
@attrs.frozen
class Concat(Layer):
    """Concatenation of two or more inputs along the channel axis."""

    kind: ClassVar[str] = "Concat"
    aliases: ClassVar[tuple[str, ...]] = ("concat",)
    arity: ClassVar[int | None] = None

    def out_shape(self, in_shapes):
        if len(in_shapes) < 2 or len({s[1:] for s in in_shapes}) != 1:
            raise SpecError(f"Concat needs two or more inputs equal but for axis 1, got {in_shapes}")
        return (sum(s[0] for s in in_shapes),) + in_shapes[0][1:]

    def emit(self, ins, p):
        return f"torch.cat([{', '.join(ins)}], 1)"

    def short(self):
        return "Concat"


@register_spec
@attrs.frozen
class Gate(Layer):
    """A per-task, per-unit sigmoid gate: ``x * sigmoid(s * e_t)``, broadcast over spatial axes.

    `e_t` is the node's ``embedding`` parameter as task t sees it (normally a per-task variant,
    see `jointnet.graph.own_param`; the shared tensor is the default for a task without one).
    `s` is the call context's ``gate_scale`` (default 400.0; HAT anneals it per batch, SPG spec
    §8.4). One unit per input channel (conv feature map) or feature (flat input); the output has
    the input's shape.

    >>> Gate(units=8).out_shape([(8, 14, 14)])
    (8, 14, 14)
    """

    kind: ClassVar[str] = "Gate"
    aliases: ClassVar[tuple[str, ...]] = ("gate",)
    in_field: ClassVar[str] = "units"
    out_field: ClassVar[str] = "units"
    channels: ClassVar[str] = "follow"
    units: int = attrs.field(validator=pos)

    def params(self):
        # Embedding init N(0, 1), as torch.nn.Embedding (HAT's code).
        return {"embedding": ParamInfo((self.units,), 0, None, init="normal")}

    def out_shape(self, in_shapes):
        s = self._one(in_shapes)
        if s[0] != self.units:
            raise SpecError(f"{self.short()} expects {self.units} channels, got {s}")
        return s

    def emit(self, ins, p):
        x = ins[0]
        return (
            f"({x} * torch.sigmoid(ctx.gate_scale * {p['embedding']})"
            f".view(-1, *([1] * ({x}.dim() - 2))))"
        )

    def short(self):
        return f"Gate({self.units})"
