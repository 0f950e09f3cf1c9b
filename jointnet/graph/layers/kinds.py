"""Layer specs: frozen, validated descriptions of one layer, one class per kind.

A spec knows its parameter shapes, its output shape, how to emit its forward expression for the
compiler, and (for channel-carrying layers) how its width changes. It holds no tensors.

>>> Conv2d(in_ch=1, out_ch=8, kernel=3, padding=1).out_shape([(1, 28, 28)])
(8, 28, 28)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs

from jointnet.errors import SpecError
from jointnet.graph.names import MAX_DIM, check_float, check_int, check_shape

__all__ = [
    "Layer",
    "ParamInfo",
    "Input",
    "Linear",
    "Head",
    "Conv2d",
    "BatchNorm",
    "ReLU",
    "MaxPool2d",
    "AvgPool2d",
    "GlobalAvgPool",
    "Flatten",
    "Dropout",
    "Identity",
    "Add",
    "Concat",
    "Gate",
    "SPECS",
    "spec_from_dict",
    "spec_to_dict",
    "infer_spec",
]

def _pos(_inst, a, value) -> None:
    check_int(value, a.name, 1, MAX_DIM)


def _nonneg(_inst, a, value) -> None:
    check_int(value, a.name, 0, MAX_DIM)


def _flag(_inst, a, value) -> None:
    if type(value) is not bool:
        raise SpecError(f"{a.name} must be a bool; got {value!r}")


def _finite(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False):
    """A converter to float that refuses non-numbers, NaN, infinities and values out of range."""

    def convert(value: Any) -> float:
        v = check_float(value, "value", lo, hi)
        if (lo_open and v == lo) or (hi_open and v == hi):
            raise SpecError(f"value must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}; got {value!r}")
        return v

    return convert


def _shape(value: Any) -> tuple[int, ...]:
    return check_shape(value, "Input.shape")


@attrs.frozen
class ParamInfo:
    """Shape and role of one logical parameter of a layer.

    `out_axis` / `in_axis` say which tensor axis follows the layer's output / input channels (None
    if none does); widening adds blocks along them. `buffer` marks non-trainable state (BatchNorm
    running statistics). `init` names the fresh-initialisation scheme (see `jointnet.execution.store`).
    """

    shape: tuple[int, ...]
    out_axis: int | None = None
    in_axis: int | None = None
    buffer: bool = False
    init: str = "zeros"
    fan_in: int = 1


class Layer:
    """Behaviour shared by every layer spec; subclasses are frozen attrs classes."""

    kind: ClassVar[str] = "Layer"
    arity: ClassVar[int | None] = 1  # None: two or more inputs (merge node)
    producer: ClassVar[bool] = False  # has output channels that `widen` can grow
    consumer: ClassVar[bool] = False  # has input channels that grow when a producer widens
    passes_channels: ClassVar[bool] = False  # channel-preserving (ReLU, BN, pooling, flatten)

    def params(self) -> dict[str, ParamInfo]:
        return {}

    def out_shape(self, in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        raise NotImplementedError

    def emit(self, ins: list[str], p: dict[str, str]) -> str:
        raise NotImplementedError

    def widened(self, *, out: int = 0, in_: int = 0) -> "Layer":
        """This spec with `out` more output and `in_` more input channels."""
        raise SpecError(f"{self.kind} has no channels to widen")

    def short(self) -> str:
        """A compact description for listings: ``Conv2d(1->32, k3)``."""
        fields = ", ".join(f"{a.name}={getattr(self, a.name)!r}" for a in attrs.fields(type(self)))
        return f"{self.kind}({fields})"

    def n_params(self) -> int:
        return sum(math.prod(i.shape) for i in self.params().values() if not i.buffer)

    def _one(self, in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        if len(in_shapes) != 1:
            raise SpecError(f"{self.kind} takes one input, got {len(in_shapes)}")
        return in_shapes[0]


@attrs.frozen
class Input(Layer):
    """The source of a task's route: a batch of tensors of `shape` (without the batch axis)."""

    kind: ClassVar[str] = "Input"
    arity: ClassVar[int | None] = 0
    shape: tuple[int, ...] = attrs.field(converter=_shape)

    @shape.validator
    def _check(self, _a, value):
        if not value:
            raise SpecError(f"Input.shape must be non-empty positive ints (got {value!r})")

    def out_shape(self, in_shapes):
        return self.shape

    def short(self):
        return f"Input{self.shape}"


@attrs.frozen
class Linear(Layer):
    """A fully connected layer `in_f -> out_f`."""

    kind: ClassVar[str] = "Linear"
    producer: ClassVar[bool] = True
    consumer: ClassVar[bool] = True
    in_f: int = attrs.field(validator=_pos)
    out_f: int = attrs.field(validator=_pos)
    bias: bool = attrs.field(default=True, validator=_flag)

    def params(self):
        p = {"weight": ParamInfo((self.out_f, self.in_f), 0, 1, init="kaiming", fan_in=self.in_f)}
        if self.bias:
            p["bias"] = ParamInfo((self.out_f,), 0, None, init="fan_in_uniform", fan_in=self.in_f)
        return p

    def out_shape(self, in_shapes):
        (s,) = [self._one(in_shapes)]
        if s != (self.in_f,):
            raise SpecError(f"{self.short()} expects input ({self.in_f},), got {s}")
        return (self.out_f,)

    def emit(self, ins, p):
        return f"F.linear({ins[0]}, {p['weight']}, {p.get('bias', 'None')})"

    def widened(self, *, out=0, in_=0):
        return attrs.evolve(self, in_f=self.in_f + in_, out_f=self.out_f + out)

    def short(self):
        return f"{self.kind}({self.in_f}->{self.out_f})"


@attrs.frozen
class Head(Linear):
    """A task's classifier: a Linear sink `in_f -> out_f` classes; never widened on its output."""

    kind: ClassVar[str] = "Head"
    producer: ClassVar[bool] = False

    def widened(self, *, out=0, in_=0):
        if out:
            raise SpecError("a Head's number of classes cannot be widened")
        return attrs.evolve(self, in_f=self.in_f + in_)


@attrs.frozen
class Conv2d(Layer):
    """A 2-d convolution `in_ch -> out_ch` with a square kernel."""

    kind: ClassVar[str] = "Conv2d"
    producer: ClassVar[bool] = True
    consumer: ClassVar[bool] = True
    in_ch: int = attrs.field(validator=_pos)
    out_ch: int = attrs.field(validator=_pos)
    kernel: int = attrs.field(default=3, validator=_pos)
    stride: int = attrs.field(default=1, validator=_pos)
    padding: int = attrs.field(default=0, validator=_nonneg)
    bias: bool = attrs.field(default=True, validator=_flag)

    def params(self):
        k = self.kernel
        fan_in = self.in_ch * k * k
        p = {"weight": ParamInfo((self.out_ch, self.in_ch, k, k), 0, 1, init="kaiming", fan_in=fan_in)}
        if self.bias:
            p["bias"] = ParamInfo((self.out_ch,), 0, None, init="fan_in_uniform", fan_in=fan_in)
        return p

    def out_shape(self, in_shapes):
        s = self._one(in_shapes)
        if len(s) != 3 or s[0] != self.in_ch:
            raise SpecError(f"{self.short()} expects input ({self.in_ch}, H, W), got {s}")
        h, w = ((d + 2 * self.padding - self.kernel) // self.stride + 1 for d in s[1:])
        if h <= 0 or w <= 0:
            raise SpecError(f"{self.short()} maps input {s} to an empty output")
        return (self.out_ch, h, w)

    def emit(self, ins, p):
        return (
            f"F.conv2d({ins[0]}, {p['weight']}, {p.get('bias', 'None')}, "
            f"{self.stride}, {self.padding})"
        )

    def widened(self, *, out=0, in_=0):
        return attrs.evolve(self, in_ch=self.in_ch + in_, out_ch=self.out_ch + out)

    def short(self):
        extra = f", s{self.stride}" if self.stride != 1 else ""
        extra += f", p{self.padding}" if self.padding else ""
        return f"Conv2d({self.in_ch}->{self.out_ch}, k{self.kernel}{extra})"


@attrs.frozen
class BatchNorm(Layer):
    """Batch normalisation over axis 1 (works after Linear and Conv2d alike)."""

    kind: ClassVar[str] = "BatchNorm"
    passes_channels: ClassVar[bool] = True
    num_features: int = attrs.field(validator=_pos)
    eps: float = attrs.field(default=1e-5, converter=_finite(0.0, 1.0, lo_open=True))
    momentum: float = attrs.field(default=0.1, converter=_finite(0.0, 1.0, lo_open=True))

    def params(self):
        n = (self.num_features,)
        return {
            "weight": ParamInfo(n, 0, None, init="ones"),
            "bias": ParamInfo(n, 0, None, init="zeros"),
            "running_mean": ParamInfo(n, 0, None, buffer=True, init="zeros"),
            "running_var": ParamInfo(n, 0, None, buffer=True, init="ones"),
        }

    def out_shape(self, in_shapes):
        s = self._one(in_shapes)
        if s[0] != self.num_features:
            raise SpecError(f"{self.short()} expects {self.num_features} channels, got {s}")
        return s

    def emit(self, ins, p):
        return (
            f"F.batch_norm({ins[0]}, {p['running_mean']}, {p['running_var']}, {p['weight']}, "
            f"{p['bias']}, self.training, {self.momentum!r}, {self.eps!r})"
        )

    def widened(self, *, out=0, in_=0):
        return attrs.evolve(self, num_features=self.num_features + max(out, in_))

    def short(self):
        return f"BatchNorm({self.num_features})"


@attrs.frozen
class ReLU(Layer):
    kind: ClassVar[str] = "ReLU"
    passes_channels: ClassVar[bool] = True

    def out_shape(self, in_shapes):
        return self._one(in_shapes)

    def emit(self, ins, p):
        return f"F.relu({ins[0]})"

    def short(self):
        return "ReLU"


@attrs.frozen
class Identity(Layer):
    kind: ClassVar[str] = "Identity"
    passes_channels: ClassVar[bool] = True

    def out_shape(self, in_shapes):
        return self._one(in_shapes)

    def emit(self, ins, p):
        return ins[0]

    def short(self):
        return "Identity"


@attrs.frozen
class Dropout(Layer):
    kind: ClassVar[str] = "Dropout"
    passes_channels: ClassVar[bool] = True
    p: float = attrs.field(default=0.5, converter=_finite(0.0, 1.0, hi_open=True))

    def out_shape(self, in_shapes):
        return self._one(in_shapes)

    def emit(self, ins, p):
        return f"F.dropout({ins[0]}, {self.p!r}, self.training)"

    def short(self):
        return f"Dropout({self.p})"


def _pool_shape(spec, in_shapes):
    s = spec._one(in_shapes)
    if len(s) != 3:
        raise SpecError(f"{spec.short()} expects (C, H, W), got {s}")
    h, w = ((d - spec.kernel) // spec.stride + 1 for d in s[1:])
    if h <= 0 or w <= 0:
        raise SpecError(f"{spec.short()} maps input {s} to an empty output")
    return (s[0], h, w)


@attrs.frozen
class MaxPool2d(Layer):
    kind: ClassVar[str] = "MaxPool2d"
    passes_channels: ClassVar[bool] = True
    kernel: int = attrs.field(default=2, validator=_pos)
    stride: int = attrs.field(validator=_pos)

    @stride.default
    def _stride(self):
        return self.kernel

    def out_shape(self, in_shapes):
        return _pool_shape(self, in_shapes)

    def emit(self, ins, p):
        return f"F.max_pool2d({ins[0]}, {self.kernel}, {self.stride})"

    def short(self):
        return f"MaxPool2d({self.kernel})"


@attrs.frozen
class AvgPool2d(Layer):
    kind: ClassVar[str] = "AvgPool2d"
    passes_channels: ClassVar[bool] = True
    kernel: int = attrs.field(default=2, validator=_pos)
    stride: int = attrs.field(validator=_pos)

    @stride.default
    def _stride(self):
        return self.kernel

    def out_shape(self, in_shapes):
        return _pool_shape(self, in_shapes)

    def emit(self, ins, p):
        return f"F.avg_pool2d({ins[0]}, {self.kernel}, {self.stride})"

    def short(self):
        return f"AvgPool2d({self.kernel})"


@attrs.frozen
class GlobalAvgPool(Layer):
    """Mean over the spatial axes: (C, H, W) -> (C,)."""

    kind: ClassVar[str] = "GlobalAvgPool"
    passes_channels: ClassVar[bool] = True

    def out_shape(self, in_shapes):
        s = self._one(in_shapes)
        if len(s) != 3:
            raise SpecError(f"GlobalAvgPool expects (C, H, W), got {s}")
        return (s[0],)

    def emit(self, ins, p):
        return f"{ins[0]}.mean((2, 3))"

    def short(self):
        return "GlobalAvgPool"


@attrs.frozen
class Flatten(Layer):
    """(C, H, W) -> (C*H*W,), channel-major, so channel c owns a contiguous block of H*W."""

    kind: ClassVar[str] = "Flatten"
    passes_channels: ClassVar[bool] = True

    def out_shape(self, in_shapes):
        s = self._one(in_shapes)
        return (math.prod(s),)

    def emit(self, ins, p):
        return f"{ins[0]}.flatten(1)"

    def short(self):
        return "Flatten"


@attrs.frozen
class Add(Layer):
    """Element-wise sum of two or more inputs of equal shape (residual merge)."""

    kind: ClassVar[str] = "Add"
    arity: ClassVar[int | None] = None

    def out_shape(self, in_shapes):
        if len(in_shapes) < 2 or len(set(in_shapes)) != 1:
            raise SpecError(f"Add needs two or more inputs of equal shape, got {in_shapes}")
        return in_shapes[0]

    def emit(self, ins, p):
        return " + ".join(ins)

    def short(self):
        return "Add"


@attrs.frozen
class Concat(Layer):
    """Concatenation of two or more inputs along the channel axis."""

    kind: ClassVar[str] = "Concat"
    arity: ClassVar[int | None] = None

    def out_shape(self, in_shapes):
        if len(in_shapes) < 2 or len({s[1:] for s in in_shapes}) != 1:
            raise SpecError(f"Concat needs two or more inputs equal but for axis 1, got {in_shapes}")
        return (sum(s[0] for s in in_shapes),) + in_shapes[0][1:]

    def emit(self, ins, p):
        return f"torch.cat([{', '.join(ins)}], 1)"

    def short(self):
        return "Concat"


@attrs.frozen
class Gate(Layer):
    """A per-task, per-unit sigmoid gate: ``x * sigmoid(s * e_t)``, broadcast over spatial axes.

    `e_t` is the node's ``embedding`` parameter as task t sees it (normally a per-task variant,
    see `jointnet.graph.add_task_embedding`; the shared tensor is the default for a task
    without one). `s` is the compiled module's float attribute ``gate_s`` (default 400.0), so a
    strategy can anneal it per batch (HAT, SPG spec §8.4). One unit per input channel (conv
    feature map) or feature (flat input); the output has the input's shape.

    >>> Gate(units=8).out_shape([(8, 14, 14)])
    (8, 14, 14)
    """

    kind: ClassVar[str] = "Gate"
    units: int = attrs.field(validator=_pos)

    def params(self):
        # Embedding init N(0, 1), as torch.nn.Embedding (HAT's code).
        return {"embedding": ParamInfo((self.units,), init="normal")}

    def out_shape(self, in_shapes):
        s = self._one(in_shapes)
        if s[0] != self.units:
            raise SpecError(f"{self.short()} expects {self.units} channels, got {s}")
        return s

    def emit(self, ins, p):
        x = ins[0]
        return (
            f"({x} * torch.sigmoid(self.gate_s * {p['embedding']})"
            f".view(-1, *([1] * ({x}.dim() - 2))))"
        )

    def short(self):
        return f"Gate({self.units})"


SPECS: dict[str, type] = {
    c.kind: c
    for c in (
        Input, Linear, Head, Conv2d, BatchNorm, ReLU, Identity, Dropout,
        MaxPool2d, AvgPool2d, GlobalAvgPool, Flatten, Add, Concat, Gate,
    )
}


def register_spec(cls: type) -> type:
    """Make a new layer kind known to snapshots and declarative construction."""
    SPECS[cls.kind] = cls
    return cls


def spec_to_dict(spec: Layer) -> dict[str, Any]:
    """A plain dict (``{"kind": ..., field: value}``) that `spec_from_dict` turns back."""
    d = {"kind": spec.kind}
    for a in attrs.fields(type(spec)):
        v = getattr(spec, a.name)
        d[a.name] = list(v) if isinstance(v, tuple) else v
    return d


def spec_from_dict(d: dict[str, Any]) -> Layer:
    """Build a spec from a plain dict; unknown kinds and bad fields raise `SpecError`."""
    if not isinstance(d, dict) or "kind" not in d:
        raise SpecError(f"a layer spec dict needs a 'kind' key (got {d!r})")
    fields = dict(d)
    kind = fields.pop("kind")
    cls = SPECS.get(kind)
    if cls is None:
        raise SpecError(f"unknown layer kind {kind!r}; known kinds are {', '.join(sorted(SPECS))}")
    try:
        return cls(**fields)
    except SpecError:
        raise
    except (TypeError, ValueError) as e:
        raise SpecError(f"bad {kind} spec {fields!r}: {e}") from e


# Field that holds the input width of each consumer kind; declarative construction fills it in.
_IN_FIELD = {
    "Linear": "in_f", "Head": "in_f", "Conv2d": "in_ch", "BatchNorm": "num_features", "Gate": "units",
}
# Short aliases accepted in declarative layer lists.
_ALIASES = {
    "conv": "Conv2d", "linear": "Linear", "fc": "Linear", "bn": "BatchNorm", "relu": "ReLU",
    "maxpool": "MaxPool2d", "avgpool": "AvgPool2d", "gap": "GlobalAvgPool", "flatten": "Flatten",
    "dropout": "Dropout", "add": "Add", "concat": "Concat", "identity": "Identity", "head": "Head",
    "gate": "Gate",
}


def infer_spec(item: Layer | dict[str, Any], in_shapes: list[tuple[int, ...]]) -> Layer:
    """A full spec from a spec or a partial dict whose input width comes from `in_shapes`.

    >>> infer_spec({"kind": "conv", "out_ch": 8, "padding": 1}, [(3, 32, 32)]).short()
    'Conv2d(3->8, k3, p1)'
    """
    if isinstance(item, Layer):
        return item
    if not isinstance(item, dict):
        raise SpecError(f"a layer must be a spec or a dict (got {item!r})")
    d = {k: v for k, v in item.items() if k not in ("name", "inputs")}
    kind = _ALIASES.get(d.get("kind"), d.get("kind"))
    d["kind"] = kind
    field = _IN_FIELD.get(kind)
    if field and field not in d:
        if len(in_shapes) != 1:
            raise SpecError(f"cannot infer the input width of {item!r} from {in_shapes}")
        d[field] = in_shapes[0][0]
    return spec_from_dict(d)
