"""The records a net is made of: frozen, validated attrs classes (`Node`, `Param`, `Mask`,
`OwnerMap`, `Group`, `Init`, `TaskInfo`, the train policy `NodePolicy` / `ParamPolicy` /
`GradRule`, the log's `Record` and `Log`).

Every field is checked by the same validators wherever a record is made: by a rewrite, by the
snapshot loader (whose codec is derived from these classes), by replay.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import attrs

from jointnet.errors import SpecError
from jointnet.graph.frozen import FrozenDict
from jointnet.graph.layers import Layer
from jointnet.graph.names import (
    MAX_DIM, MAX_NUMEL, check_float, check_int, check_key, check_name, check_opt_name, check_shape, is_key,
)

__all__ = [
    "Init", "TensorRef", "Group", "OwnerMap", "Param", "MASK_TRANSFORMS", "Mask", "Node", "TaskInfo",
    "GRAD_PROVIDERS", "GradRule", "ParamPolicy", "NodePolicy", "DEFAULT_POLICY", "Record", "Log",
]


def _name(_inst, a, value) -> None:
    check_name(value, a.name)


def _opt_name(_inst, a, value) -> None:
    check_opt_name(value, a.name)


def _key(_inst, a, value) -> None:
    check_key(value, a.name)


def _opt_key(_inst, a, value) -> None:
    if value is not None:
        check_key(value, a.name)


def _shape(value) -> tuple[int, ...]:
    return check_shape(value, "shape")


def _nonneg(_inst, a, value) -> None:
    check_int(value, a.name, 0, 1 << 62)


def _is(*types):
    def validate(_inst, a, value) -> None:
        if type(value) not in types:
            names = " or ".join(t.__name__ for t in types)
            raise SpecError(f"{a.name} must be a {names}; got {value!r}")
    return validate


def _tuple_of(cls):
    def validate(_inst, a, value) -> None:
        if type(value) is not tuple or any(type(v) is not cls for v in value):
            raise SpecError(f"{a.name} must be a tuple of {cls.__name__}; got {value!r}")
    return validate


INIT_SCHEMES = ("kaiming", "fan_in_uniform", "normal", "zeros", "ones")
MASK_TRANSFORMS: set[str] = {"identity", "sigmoid", "hard", "gumbel"}
"""Registered mask transforms (names); `jointnet.execution.masks` implements them and its
`register_transform` adds more."""


def _block(_inst, a, value) -> None:
    if type(value) is not tuple or len(value) != 2:
        raise SpecError(f"{a.name} must be a pair of group ids or None; got {value!r}")
    for v in value:
        if v is not None and not is_key(v):
            check_key(v, a.name)


def _indices(value) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > MAX_DIM:
        raise SpecError(f"init.index must be a list of at most {MAX_DIM} ints; got {value!r:.80}")
    for v in value:
        if type(v) is not int or not 0 <= v < MAX_DIM:
            raise SpecError(f"init.index must hold ints in [0, {MAX_DIM}); got {value!r:.80}")
    return tuple(value)


@attrs.frozen
class Init:
    """How a tensor is made when a store realizes a net.

    kind:

    - ``fresh``: scheme ``kaiming`` / ``fan_in_uniform`` / ``normal`` / ``zeros`` / ``ones``,
      seeded from the store seed and the key, so realization order does not matter;
    - ``copy``: a clone of the tensor under `src`;
    - ``threshold``: ``transform(src) > value`` (scheme: the mask transform), as packed bits
      (committing a mask);
    - ``slice``: the entries `index` of `src` along `axis` (compaction). When `src_shape` is set,
      `src` holds packed bits of that shape and so does the result.
    """

    kind: str = attrs.field(validator=attrs.validators.in_(("fresh", "copy", "threshold", "slice")))
    scheme: str = "zeros"
    fan_in: int = attrs.field(default=1, validator=lambda _i, a, v: check_int(v, "init.fan_in", 1, MAX_NUMEL))
    src: str | None = attrs.field(default=None, validator=_opt_key)
    value: float = attrs.field(default=0.0, validator=lambda _i, a, v: check_float(v, "init.value"))
    axis: int = attrs.field(default=0, validator=lambda _i, a, v: check_int(v, "init.axis", 0, 7))
    index: tuple[int, ...] = attrs.field(default=(), converter=_indices)
    src_shape: tuple[int, ...] = attrs.field(default=(), converter=lambda v: check_shape(v, "init.src_shape") if v else ())

    def __attrs_post_init__(self) -> None:
        if self.kind == "threshold":
            check_name(self.scheme, "init.scheme")  # a mask transform (see `_transform`)
            schemes = (self.scheme,)
        else:
            schemes = {"fresh": INIT_SCHEMES, "copy": ("zeros",), "slice": ("zeros",)}[self.kind]
        if self.scheme not in schemes:
            raise SpecError(f"init.scheme of a {self.kind!r} init must be one of {', '.join(schemes)}; "
                            f"got {self.scheme!r}")
        if (self.src is None) == (self.kind != "fresh"):
            raise SpecError(f"init.src must be {'a key' if self.src is None else 'nil'} for a {self.kind!r} init")
        if self.kind == "slice" and not self.index:
            raise SpecError("init.index of a 'slice' init must name at least one entry")

    @classmethod
    def fresh(cls, scheme: str, fan_in: int = 1) -> "Init":
        return cls("fresh", scheme=scheme, fan_in=fan_in)

    @classmethod
    def copy(cls, src: str) -> "Init":
        return cls("copy", src=src)

    @property
    def packed(self) -> bool:
        """Whether the tensor it makes holds packed bits (a committed mask)."""
        return self.kind == "threshold" or bool(self.src_shape)


@attrs.frozen
class TensorRef:
    """An annotation value that points at a tensor in the parameter store (e.g. SPG importance)."""

    key: str = attrs.field(validator=_key)


@attrs.frozen
class Group:
    """A block of output channels grown by `widen`, owned by `owner` and created at a version.

    A group is visible to a task iff the task's route goes through a producer holding the group
    and the task is its owner or was added after the group was created: widening never changes
    what an existing task computes, except the owner's. Nodes widened together (a residual
    stream) hold the same group id.
    """

    id: str = attrs.field(validator=_key)
    size: int = attrs.field(validator=lambda _i, a, v: check_int(v, "group size"))
    owner: str = attrs.field(validator=_name)
    created_at: int = attrs.field(validator=_nonneg)


@attrs.frozen
class OwnerMap:
    """Which task owns each element, kernel or output channel of a parameter block.

    An int32 tensor in the store under `key`: 0 = free, else the owning task's ``added_at``
    (unique per task, increasing in task order). `granularity`: ``param`` (the block's shape),
    ``kernel`` (its first two axes: per (out, in) pair) or ``channel`` (its first axis). Core
    data for PackNet's and GROWN's per-weight / per-kernel ownership; strategies write it with
    `ParamStore.update`, a rewrite (`set_owner_map`) attaches a new one.
    """

    key: str = attrs.field(validator=_key)
    granularity: str = attrs.field(validator=attrs.validators.in_(("param", "kernel", "channel")))
    init: Init = attrs.field(default=Init("fresh", scheme="zeros"), validator=_is(Init))

    def shape(self, param_shape: tuple[int, ...]) -> tuple[int, ...]:
        return {"param": param_shape, "kernel": param_shape[:2], "channel": param_shape[:1]}[self.granularity]


@attrs.frozen
class Param:
    """One tensor of a node: a block of a logical parameter (``weight``, ``bias``, ...).

    `block` = (out group id, in group id), None meaning the node's base channels. `task` set means
    a per-task variant used instead of the shared one by that task only (per-task BN, gate
    embeddings, LASEM's generator tensors); a parameter its kind declares ``per_task`` exists only
    as such variants. `owner` is the task that owns the tensor; None means "whoever uses the
    node". `owners`: per-element / per-kernel ownership (`OwnerMap`), or None.
    """

    name: str = attrs.field(validator=_name)
    key: str = attrs.field(validator=_key)
    shape: tuple[int, ...] = attrs.field(converter=_shape)
    init: Init = attrs.field(validator=_is(Init))
    owner: str | None = attrs.field(default=None, validator=_opt_name)
    task: str | None = attrs.field(default=None, validator=_opt_name)
    block: tuple[str | None, str | None] = attrs.field(default=(None, None), validator=_block)
    buffer: bool = attrs.field(default=False, validator=_is(bool))
    annotations: FrozenDict = attrs.field(default=FrozenDict(), validator=_is(FrozenDict))
    owners: OwnerMap | None = attrs.field(default=None, validator=_is(OwnerMap, type(None)))

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def _transform(_inst, a, value) -> None:
    # A name only, as for gradient-rule providers: a transform registered by a plugin need not be
    # imported to load a net; compiling one nobody registered is a CompileError.
    check_name(value, "transform")


@attrs.frozen
class Mask:
    """A per-task multiplicative mask over one block of a node's parameter `param`.

    Masks are keyed by (task, param, kind, block): several kinds may cover one parameter (GROWN's
    selective, attentive and grown masks) and they multiply. A mask covers the blocks it was
    attached to (its channel-group domain); blocks grown later are unmasked. Within its block,
    `where` (a store key of a bool tensor of `shape`, or None for all) limits it to a kernel /
    element index set: elsewhere the multiplier is 1.

    granularity: ``param`` (one value per element), ``kernel`` (per (out, in) pair, conv) or
    ``channel`` (per output channel). transform: how the stored tensor becomes the multiplier
    (`MASK_TRANSFORMS`: ``identity``, ``sigmoid``, ``hard`` = step at 0, ``gumbel`` = binary
    concrete with a straight-through hard sample). A ``live`` mask is trainable; `commit_mask`
    makes a ``committed`` one: packed bits, immutable.
    """

    task: str = attrs.field(validator=_name)
    param: str = attrs.field(validator=_name)
    key: str = attrs.field(validator=_key)
    granularity: str = attrs.field(validator=attrs.validators.in_(("param", "kernel", "channel")))
    transform: str = attrs.field(validator=_transform)
    state: str = attrs.field(validator=attrs.validators.in_(("live", "committed")))
    shape: tuple[int, ...] = attrs.field(converter=_shape)
    init: Init = attrs.field(default=Init("fresh", scheme="ones"), validator=_is(Init))
    kind: str = attrs.field(default="mask", validator=_name)
    block: tuple[str | None, str | None] = attrs.field(default=(None, None), validator=_block)
    where: str | None = attrs.field(default=None, validator=_opt_key)


@attrs.frozen
class Node:
    """One layer instance in the graph."""

    id: str = attrs.field(validator=_name)
    spec: Layer = attrs.field(validator=attrs.validators.instance_of(Layer))
    params: tuple[Param, ...] = attrs.field(default=(), validator=_tuple_of(Param))
    out_groups: tuple[Group, ...] = attrs.field(default=(), validator=_tuple_of(Group))
    in_groups: tuple[Group, ...] = attrs.field(default=(), validator=_tuple_of(Group))
    masks: tuple[Mask, ...] = attrs.field(default=(), validator=_tuple_of(Mask))
    annotations: FrozenDict = attrs.field(default=FrozenDict(), validator=_is(FrozenDict))
    cloned_from: str | None = attrs.field(default=None, validator=_opt_name)
    created_by: str | None = attrs.field(default=None, validator=_opt_name)

    @property
    def kind(self) -> str:
        return self.spec.kind

    def param(self, name: str, block=(None, None), task: str | None = None) -> Param | None:
        for p in self.params:
            if p.name == name and p.block == block and p.task == task:
                return p
        return None

    def masks_of(self, task: str, param: str | None = None, kind: str | None = None) -> list[Mask]:
        """`task`'s masks on this node (on `param`, of `kind`, when given)."""
        return [m for m in self.masks if m.task == task and (param is None or m.param == param)
                and (kind is None or m.kind == kind)]

    def mask(self, task: str, param: str = "weight", kind: str = "mask",
             block: tuple = (None, None)) -> Mask | None:
        """`task`'s mask of `kind` on `param`'s `block`, or None."""
        for m in self.masks:
            if m.task == task and m.param == param and m.kind == kind and m.block == block:
                return m
        return None

    def base_width(self, axis: str) -> int:
        """Channels of the node that belong to no grown group (axis ``out`` or ``in``)."""
        groups = self.out_groups if axis == "out" else self.in_groups
        return self.spec.width(axis) - sum(g.size for g in groups)


@attrs.frozen
class TaskInfo:
    """A registered task: its input node, its head (None while the route is being built), the
    version at which it was added (channel groups created later are visible to it; also the
    task's number in `OwnerMap`s), and `context`: how its inference runs (`Context` fields such
    as ``gate_scale``, set with `set_context`)."""

    name: str = attrs.field(validator=_name)
    input: str = attrs.field(validator=_name)
    added_at: int = attrs.field(validator=_nonneg)
    head: str | None = attrs.field(default=None, validator=_opt_name)
    annotations: FrozenDict = attrs.field(default=FrozenDict(), validator=_is(FrozenDict))
    context: FrozenDict = attrs.field(default=FrozenDict(), validator=_is(FrozenDict))

    @context.validator
    def _check_context(self, _a, value) -> None:
        for k, v in value.items():
            check_name(k, "context key")
            if type(v) is not bool and not (type(v) in (int, float) and math.isfinite(v)):
                raise SpecError(f"context value {k!r} must be a finite number or a bool; got {v!r}")


GRAD_PROVIDERS: set[str] = {"owned"}
"""Registered gradient-rule providers (names); `jointnet.execution.optim` implements them and
its `register_provider` adds more (HAT's conditioning, SPG's importance)."""


@attrs.frozen
class GradRule:
    """How training transforms one parameter block's gradient or update, entry by entry.

    kind ``multiply``: by a multiplier broadcast to the block, applied to the gradient before the
    optimizer step (`apply` ``grad``: SPG's soft masks, HAT's conditioning) or to the step itself
    after it (``update``: ``new = old + m * (stepped - old)``, so a 0 keeps an entry bit-identical
    under momentum and weight decay). kind ``freeze``: a bool mask of entries that keep their
    values exactly (their gradient is zeroed, so no momentum builds, and their values are put
    back after every step: PackNet's and GROWN's frozen weights).

    The multiplier or mask is the store tensor `tensor`, or computed when training starts by the
    registered provider `provider` (``owned``: freeze the entries another task owns, from the
    block's `OwnerMap`). `block`: the parameter block it applies to.
    """

    kind: str = attrs.field(validator=attrs.validators.in_(("multiply", "freeze")))
    tensor: str | None = attrs.field(default=None, validator=_opt_key)
    provider: str | None = attrs.field(default=None)
    apply: str = attrs.field(default="grad", validator=attrs.validators.in_(("grad", "update")))
    block: tuple[str | None, str | None] = attrs.field(default=(None, None), validator=_block)

    def __attrs_post_init__(self) -> None:
        if (self.tensor is None) == (self.provider is None):
            raise SpecError("a gradient rule takes a tensor key or a provider, not both or neither")
        if self.provider is not None:
            # Only the name is checked here: a net is data, and a provider is code that the strategy
            # defining it registers when imported (a snapshot must load without it); training
            # refuses a provider nobody registered.
            check_name(self.provider, "provider")


@attrs.frozen
class ParamPolicy:
    """How one parameter of a node trains (None: as the node's policy says), and its rules."""

    frozen: bool | None = attrs.field(default=None, validator=_is(bool, type(None)))
    lr_scale: float | None = attrs.field(
        default=None, converter=lambda v: None if v is None else check_float(v, "lr_scale", 0.0))
    rules: tuple[GradRule, ...] = attrs.field(default=(), validator=_tuple_of(GradRule))


@attrs.frozen
class NodePolicy:
    """How a node trains for a task: frozen or not, a learning-rate scale, and per parameter
    (`params`: name -> `ParamPolicy`; a name is a parameter of the node's kind, or ``mask:KIND``
    for the training task's live masks of that kind) its own frozen flag, scale and gradient
    rules, which win over the node's.

    `keep_owned`: with `frozen`, the training task's own tensors on the node (channels it grew,
    its per-task variants, its live masks) still train; only what others share is frozen.
    """

    frozen: bool = attrs.field(default=False, validator=_is(bool))
    lr_scale: float = attrs.field(default=1.0, converter=lambda v: check_float(v, "lr_scale", 0.0))
    keep_owned: bool = attrs.field(default=False, validator=_is(bool))
    params: "FrozenDict[str, ParamPolicy]" = attrs.field(default=FrozenDict(), validator=_is(FrozenDict))

    @params.validator
    def _check_params(self, _a, value) -> None:
        for k, v in value.items():
            check_name(k, "policy parameter")
            if type(v) is not ParamPolicy:
                raise SpecError(f"policy of parameter {k!r} must be a ParamPolicy; got {v!r}")

    def param(self, name: str) -> ParamPolicy:
        """The policy of parameter `name` (empty when it has none)."""
        return self.params.get(name, _NO_PARAM_POLICY)


_NO_PARAM_POLICY = ParamPolicy()


DEFAULT_POLICY = NodePolicy()


@attrs.frozen
class Record:
    """One log entry: a rewrite's registered name and its keyword arguments."""

    name: str = attrs.field(validator=_name)
    kwargs: FrozenDict = attrs.field(validator=_is(FrozenDict))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.name}({args})"


class Log:
    """A persistent, append-only sequence of `Record`s: appending is O(1) and shares the past."""

    __slots__ = ("_prev", "_rec", "_len")

    def __init__(self, prev: "Log | None" = None, rec: Record | None = None):
        self._prev = prev
        self._rec = rec
        self._len = 0 if prev is None else len(prev) + 1

    def append(self, rec: Record) -> "Log":
        return Log(self, rec)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Record]:
        out = []
        node = self
        while node._prev is not None:
            out.append(node._rec)
            node = node._prev
        return iter(reversed(out))

    def __getitem__(self, i: int) -> Record:
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(i)
        node = self
        for _ in range(self._len - 1 - i):
            node = node._prev
        return node._rec

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Log):
            return NotImplemented
        return len(self) == len(other) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Log({list(self)!r})"

    @classmethod
    def of(cls, records: Iterable[Record]) -> "Log":
        log = cls()
        for r in records:
            log = log.append(r)
        return log
