"""The layer-kind protocol and registry: what every kind knows about itself.

A kind is one frozen attrs class, registered with `register_spec`. It knows its parameters
(`params`), its output shape (`out_shape`), the code of its forward expression (`emit`, and
`emit_grid` for parameters held in several blocks), its widths (`width`, `widened`), how channel
growth flows through it (`channels`), which field holds its input width (`in_field`, inferred in
declarative layer lists) and its short names (`aliases`). Adding a kind is one class and one
decorator; nothing in the net, the rewrites or the compiler names kinds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from jointnet.errors import SpecError
from jointnet.graph.names import MAX_DIM, check_float, check_int, check_shape

__all__ = [
    "Layer", "ParamInfo", "SPECS", "ALIASES", "CHANNEL_RULES", "register_spec", "spec_from_dict",
    "spec_to_dict", "infer_spec", "RUNTIME",
]

#: How channel growth (`widen`, `compact`) flows through a kind.
CHANNEL_RULES = {
    "produce": "has output channels widen grows; as a successor, grows input columns (Conv2d, Linear)",
    "consume": "grows input columns only (Head)",
    "follow": "holds per-channel parameters that grow with the channels, and passes them on (BatchNorm, Gate)",
    "pass": "channel-preserving, no parameters (ReLU, Dropout, pooling, Identity, GlobalAvgPool, Zero)",
    "flatten": "passes the channels on, each as H*W features (Flatten)",
    "merge": "an element-wise merge of equal-width inputs: widened only with all its inputs (Add)",
    "none": "channel growth cannot pass (Input, Concat, grouped convolutions)",
}

SPECS: dict[str, type] = {}
"""kind name -> spec class, for snapshots and declarative construction."""

ALIASES: dict[str, str] = {}
"""short name in declarative layer lists -> kind name (``conv`` -> ``Conv2d``)."""

RUNTIME: dict[str, Callable] = {}
"""Helper functions the kinds' emitted code calls, by name (the compiler's namespace)."""


def pos(_inst, a, value) -> None:
    check_int(value, a.name, 1, MAX_DIM)


def nonneg(_inst, a, value) -> None:
    check_int(value, a.name, 0, MAX_DIM)


def flag(_inst, a, value) -> None:
    if type(value) is not bool:
        raise SpecError(f"{a.name} must be a bool; got {value!r}")


def finite(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False):
    """A converter to float that refuses non-numbers, NaN, infinities and values out of range."""

    def convert(value: Any) -> float:
        v = check_float(value, "value", lo, hi)
        if (lo_open and v == lo) or (hi_open and v == hi):
            raise SpecError(f"value must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}; got {value!r}")
        return v

    return convert


def shape_field(value: Any) -> tuple[int, ...]:
    return check_shape(value, "Input.shape")


@attrs.frozen
class ParamInfo:
    """Shape and role of one logical parameter of a layer.

    `out_axis` / `in_axis` say which tensor axis follows the layer's output / input channels (None
    if none does); widening adds blocks along them. `buffer` marks non-trainable state (BatchNorm
    running statistics). `init` names the fresh-initialisation scheme (see
    `jointnet.execution.store`). `per_task`: the parameter exists only as per-task variants, one
    per task routed through the node, never shared (LASEM's generator tensors).
    """

    shape: tuple[int, ...]
    out_axis: int | None = None
    in_axis: int | None = None
    buffer: bool = False
    init: str = "zeros"
    fan_in: int = 1
    per_task: bool = False

    def block_shape(self, rows: int, cols: int) -> tuple[int, ...]:
        """The shape of one block: `rows` along the output axis, `cols` along the input axis."""
        shape = list(self.shape)
        if self.out_axis is not None:
            shape[self.out_axis] = rows
        if self.in_axis is not None:
            shape[self.in_axis] = cols
        return tuple(shape)


class Layer:
    """Behaviour shared by every layer spec; subclasses are frozen attrs classes."""

    kind: ClassVar[str] = "Layer"
    aliases: ClassVar[tuple[str, ...]] = ()
    in_field: ClassVar[str | None] = None  # the field that holds the input width
    out_field: ClassVar[str | None] = None  # the field that holds the output width
    arity: ClassVar[int | None] = 1  # None: two or more inputs (merge node)
    channels: ClassVar[str] = "none"  # one of CHANNEL_RULES
    runtime: ClassVar[dict[str, Callable]] = {}  # helpers its emitted code calls

    @property
    def producer(self) -> bool:
        """Has output channels that `widen` can grow."""
        return self.channels == "produce"

    @property
    def consumer(self) -> bool:
        """Has input channels that grow when a producer before it widens."""
        return self.channels in ("produce", "consume")

    @property
    def passes_channels(self) -> bool:
        """Passes its input's channels on (possibly with per-channel parameters)."""
        return self.channels in ("follow", "pass", "flatten")

    def params(self) -> dict[str, ParamInfo]:
        return {}

    def out_shape(self, in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        raise NotImplementedError

    def emit(self, ins: list[str], p: dict[str, str]) -> str:
        """The forward expression for input expressions `ins` and parameter expressions `p`.

        Generated code may read ``ctx`` (an `jointnet.execution.Context`: ``ctx.training``,
        ``ctx.dropout``, ``ctx.bn``, ``ctx.gate_scale``), ``torch``, ``F`` and `RUNTIME` helpers.
        """
        raise NotImplementedError

    def emit_grid(self, ins: list[str], grids: dict[str, list[list[str]]],
                  infos: dict[str, ParamInfo], sizes: list[int]) -> str:
        """The forward expression when parameters are held in blocks: ``grids[name]`` has a row
        per visible output channel group and a column per input group (`sizes`: the output
        groups' widths). Default: join each grid with ``torch.cat`` and `emit`."""
        p = {}
        for name, rows in grids.items():
            info = infos[name]
            joined = [cells[0] if len(cells) == 1 else f"torch.cat([{', '.join(cells)}], {info.in_axis})"
                      for cells in rows]
            p[name] = joined[0] if len(joined) == 1 else f"torch.cat([{', '.join(joined)}], {info.out_axis})"
        return self.emit(ins, p)

    def width(self, axis: str) -> int:
        """The number of ``out`` (or ``in``) channels, 0 for a kind without them."""
        name = self.out_field if axis == "out" else self.in_field
        return getattr(self, name) if name else 0

    def widened(self, *, out: int = 0, in_: int = 0) -> "Layer":
        """This spec with `out` more output and `in_` more input channels (negative: fewer).

        A kind whose input and output widths are one field (BatchNorm, Gate) takes either.
        """
        if self.out_field and self.out_field == self.in_field:
            deltas = {self.out_field: out or in_}
        else:
            deltas = {self.out_field: out, self.in_field: in_}
        changes = {}
        for field, delta in deltas.items():
            if not delta:
                continue
            if not field:
                raise SpecError(f"{self.kind} has no {'output' if delta is out else 'input'} channels to widen")
            changes[field] = getattr(self, field) + delta
        return attrs.evolve(self, **changes) if changes else self

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


def register_spec(cls: type) -> type:
    """Class decorator: make a layer kind known to snapshots, declarative construction and the
    compiler (its aliases and runtime helpers)."""
    if isinstance(cls.channels, str) and cls.channels not in CHANNEL_RULES:
        raise SpecError(f"{cls.__name__}.channels must be one of {', '.join(CHANNEL_RULES)}")
    SPECS[cls.kind] = cls
    for alias in cls.aliases:
        ALIASES[alias] = cls.kind
    RUNTIME.update(cls.runtime)
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
    kind = ALIASES.get(d.get("kind"), d.get("kind"))
    d["kind"] = kind
    cls = SPECS.get(kind)
    field = cls.in_field if cls is not None else None
    if field and field not in d:
        if len(in_shapes) != 1:
            raise SpecError(f"cannot infer the input width of {item!r} from {in_shapes}")
        d[field] = in_shapes[0][0]
    return spec_from_dict(d)
