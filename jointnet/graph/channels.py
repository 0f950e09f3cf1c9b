"""Channel rewrites: `widen` (output channels owned by a task, successors follow) and per-task masks
(`attach_mask`, `commit_mask`, `release_mask`)."""

from __future__ import annotations

import math

import attrs

from jointnet.graph.draft import NO_CHANGE, Draft, rewrite
from jointnet.graph.names import MAX_DIM, check_float
from jointnet.errors import SpecError
from jointnet.graph.net import Group, Init, Mask, Node, Param
from jointnet.graph.shapes import task_shapes

__all__ = ["widen", "attach_mask", "commit_mask", "release_mask"]


def _block_shape(info, rows: int, cols: int) -> tuple[int, ...]:
    shape = list(info.shape)
    if info.out_axis is not None:
        shape[info.out_axis] = rows
    if info.in_axis is not None:
        shape[info.in_axis] = cols
    return tuple(shape)


def _group_size(node: Node, gid: str | None, axis: str) -> int:
    if gid is None:
        return node.base_width(axis)
    groups = node.out_groups if axis == "out" else node.in_groups
    return next(g.size for g in groups if g.id == gid)


@rewrite
def widen(d: Draft, /, *, node: str, k: int, task: str, init: str = "fresh") -> None:
    """Add `k` output channels owned by `task` to `node`; successors follow.

    Successors through channel-preserving nodes grow with it: BatchNorm gains `k` features, a
    Flatten multiplies the new channels by H*W, and the next Conv2d/Linear/Head gains matching
    input columns (owned by `task` too). Tasks other than `task` that exist now never see the new
    channels; tasks added later that route through `node` do. init: ``fresh`` (the layer's
    default scheme) or ``zeros`` (new input columns start at 0).
    """
    if type(k) is not int or not 1 <= k <= MAX_DIM:
        raise d.error(f"k must be an int in [1, {MAX_DIM}] (got {k!r})")
    if init not in ("fresh", "zeros"):
        raise d.error(f"init must be 'fresh' or 'zeros' (got {init!r})")
    d.require_on_route(task, node)
    src = d.node(node)
    if not src.spec.producer:
        raise d.error(f"{node!r} is a {src.kind}; only Conv2d and Linear nodes can be widened")
    gid = f"{node}+{task}@{d.version}"
    group = Group(gid, k, task, d.version)
    infos = src.spec.params()
    new = []
    for name, info in infos.items():
        cols = [None] + [g.id for g in src.in_groups] if info.in_axis is not None else [None]
        for c in cols:
            shape = _block_shape(info, k, _group_size(src, c, "in"))
            new.append(Param(name, d.fresh_key(node, f"{name}.{gid}"), shape,
                             Init.fresh(info.init, info.fan_in), owner=task, block=(gid, c)))
    spec = src.spec.widened(out=k)
    d.set_node(attrs.evolve(src, spec=spec, out_groups=src.out_groups + (group,),
                            params=src.params + tuple(new)))
    # Propagate through channel-preserving successors to the consumers.
    stack = [(w, 1) for w in d.g.successors(node)]
    seen = set()
    while stack:
        n, factor = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        succ = d.node(n)
        if succ.spec.consumer:
            _grow_input(d, succ, group, k * factor, init)
        elif succ.kind == "BatchNorm":
            _grow_bn(d, succ, group, k)
            stack.extend((w, factor) for w in d.g.successors(n))
        elif succ.kind == "Flatten":
            # H*W from the net before this rewrite: on the draft, the task that sees the new
            # channels may not shape-check until its consumers have grown.
            users = d.base.users(n)
            some = sorted(users)[0]
            shape = task_shapes(d.base, some)[d.base.inputs_of(n, some)[0]]
            stack.extend((w, factor * math.prod(shape[1:])) for w in d.g.successors(n))
        elif succ.spec.passes_channels:
            stack.extend((w, factor) for w in d.g.successors(n))
        else:
            raise d.error(f"cannot widen through {n!r} ({succ.kind}): widen its coupled inputs together is not supported")
    for t in d.view().users(node):
        d.check_task(t)


def _grow_input(d: Draft, node: Node, group: Group, size: int, init: str) -> None:
    g_in = Group(group.id, size, group.owner, group.created_at)
    infos = node.spec.params()
    new = []
    for name, info in infos.items():
        if info.in_axis is None:
            continue
        rows = [None] + [g.id for g in node.out_groups] if info.out_axis is not None else [None]
        for r in rows:
            shape = _block_shape(info, _group_size(node, r, "out"), size)
            how = Init.fresh("zeros") if init == "zeros" else Init.fresh(info.init, info.fan_in)
            new.append(Param(name, d.fresh_key(node.id, f"{name}.{group.id}"), shape, how,
                             owner=group.owner, block=(r, group.id)))
    d.set_node(attrs.evolve(node, spec=node.spec.widened(in_=size), in_groups=node.in_groups + (g_in,),
                            params=node.params + tuple(new)))


def _grow_bn(d: Draft, node: Node, group: Group, k: int) -> None:
    new = tuple(
        Param(name, d.fresh_key(node.id, f"{name}.{group.id}"), (k,), Init.fresh(info.init),
              owner=group.owner, block=(group.id, None), buffer=info.buffer)
        for name, info in node.spec.params().items()
    )
    d.set_node(attrs.evolve(node, spec=node.spec.widened(out=k), out_groups=node.out_groups + (group,),
                            params=node.params + new))


_GRANULARITY = ("param", "kernel", "channel")
_TRANSFORMS = ("identity", "sigmoid", "hard")


@rewrite
def attach_mask(
    d: Draft, /, *, node: str, task: str, param: str = "weight", granularity: str = "param",
    transform: str = "identity", init: str = "ones",
) -> None:
    """Attach a trainable per-task mask over `param` of `node`, used only by `task`.

    The mask multiplies the parameter in `task`'s forward pass; other tasks are unaffected.
    """
    d.require_on_route(task, node)
    n = d.node(node)
    if granularity not in _GRANULARITY:
        raise d.error(f"granularity must be one of {_GRANULARITY} (got {granularity!r})")
    if transform not in _TRANSFORMS:
        raise d.error(f"transform must be one of {_TRANSFORMS} (got {transform!r})")
    if init not in ("ones", "zeros"):
        raise d.error(f"init must be 'ones' or 'zeros' (got {init!r})")
    view = d.view()
    infos = view.effective_spec(task, node).params()
    if param not in infos or infos[param].buffer:
        raise d.error(f"{node!r} ({n.kind}) has no parameter {param!r} to mask")
    if n.mask(task, param) is not None:
        raise d.error(f"task {task!r} already has a mask on {node!r}.{param}")
    info = infos[param]
    if granularity == "kernel" and (info.in_axis is None or len(info.shape) != 4):
        raise d.error("kernel granularity needs a conv weight")
    shape = {
        "param": info.shape,
        "kernel": info.shape[:2],
        "channel": info.shape[:1],
    }[granularity]
    key = d.fresh_key(node, f"mask.{task}.{param}")
    m = Mask(task, param, key, granularity, transform, "live", shape, Init.fresh(init))
    d.set_node(attrs.evolve(n, masks=n.masks + (m,)))


@rewrite
def commit_mask(d: Draft, /, *, node: str, task: str, param: str = "weight", threshold: float = 0.5) -> None:
    """Freeze `task`'s live mask into 0/1 bits: ``transform(mask) > threshold``."""
    n = d.node(node)
    d.task(task)
    m = n.mask(task, param)
    if m is None:
        raise d.error(f"task {task!r} has no mask on {node!r}.{param}")
    if m.state == "committed":
        return NO_CHANGE
    key = d.fresh_key(node, f"mask.{task}.{param}.bits")
    try:
        value = check_float(threshold, "threshold")
    except SpecError as e:
        raise d.error(str(e)) from None
    how = Init("threshold", scheme=m.transform, src=m.key, value=value)
    bits = attrs.evolve(m, key=key, state="committed", transform="identity", init=how)
    d.set_node(attrs.evolve(n, masks=tuple(bits if x is m else x for x in n.masks)))


@rewrite
def release_mask(d: Draft, /, *, node: str, task: str, param: str = "weight") -> None:
    """Remove `task`'s mask on `node`.`param`."""
    n = d.node(node)
    if n.mask(task, param) is None:
        raise d.error(f"task {task!r} has no mask on {node!r}.{param}")
    d.set_node(attrs.evolve(n, masks=tuple(m for m in n.masks if not (m.task == task and m.param == param))))
