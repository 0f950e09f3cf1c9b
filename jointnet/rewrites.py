"""The primitive rewrites, each a registered pure function ``f(net, /, **kwargs) -> net``.

Structure: `add_input`, `add_task`, `add_node`, `add_head`, `bind`, `route_through`,
`clone_node`, `reroute`, `remove_task`, `prune`. Channels: `widen`, `attach_mask`, `commit_mask`, `release_mask`.
Policy and data: `freeze`, `unfreeze`, `set_lr_scale`, `per_task_bn`, `add_task_embedding`,
`annotate`.

>>> from jointnet import backbones
>>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
>>> net2 = add_task(net, task="t2")
>>> net3 = bind(net2, task="t2", to="t1")
>>> net4 = clone_node(add_head(net3, task="t2", n_classes=3), node="fc1", task="t2")
>>> net4.route("t2")
['input', 'fc1.t2', 'relu1', 'head.t2']
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import networkx as nx

from jointnet.errors import InvariantError, SpecError
from jointnet.frozen import FrozenDict
from jointnet.layers import Head, Input, Layer, infer_spec
from jointnet.names import MAX_DIM, check_float, check_name
from jointnet.net import Group, Init, Mask, Node, NodePolicy, Param, TaskInfo
from jointnet.rewrite import NO_CHANGE, Draft, rewrite
from jointnet.shapes import route_sink, task_shapes

__all__ = [
    "add_input", "add_task", "add_node", "add_head", "bind", "route_through", "clone_node", "reroute",
    "remove_task", "prune", "widen", "attach_mask", "commit_mask", "release_mask",
    "freeze", "unfreeze", "set_lr_scale", "per_task_bn", "add_task_embedding", "annotate",
]


# ---- helpers --------------------------------------------------------------------------------


def _fresh_params(d: Draft, node_id: str, spec: Layer) -> tuple[Param, ...]:
    return tuple(
        Param(name, d.fresh_key(node_id, name), info.shape, Init.fresh(info.init, info.fan_in),
              buffer=info.buffer)
        for name, info in spec.params().items()
    )


def _check_task(d: Draft, task: str) -> dict[str, tuple[int, ...]]:
    """Shape-check `task`'s route on the draft, its masks included (a reroute can hide channels
    a mask covers); a mismatch becomes a RewriteError."""
    view = d.view()
    try:
        shapes = task_shapes(view, task)
    except InvariantError as e:
        raise d.error(str(e)) from None
    for n in view.route(task):
        for m in view.node(n).masks:
            if m.task == task:
                full = view.effective_spec(task, n).params()[m.param].shape
                if any(a > b for a, b in zip(m.shape, full)):
                    raise d.error(f"task {task!r}'s mask on {n!r}.{m.param} covers {m.shape}, more than "
                                  f"the {full} it would see; release the mask first")
    return shapes


def _require_open(d: Draft, task: str) -> TaskInfo:
    info = d.task(task)
    if info.head is not None:
        raise d.error(f"task {task!r} already has its head {info.head!r}; its route is closed")
    return info


def _new_node_id(d: Draft, node: str) -> str:
    try:
        check_name(node, "a node id")
    except SpecError as e:
        raise d.error(str(e)) from None
    if node in d.g:
        raise d.error(f"node {node!r} already exists")
    return node


def _as_list(d: Draft, nodes: Any, what: str = "nodes") -> list[str]:
    if isinstance(nodes, str):
        return [nodes]
    if not isinstance(nodes, (list, tuple)) or not nodes:
        raise d.error(f"{what} must be a node id or a non-empty list of them (got {nodes!r})")
    for n in nodes:
        d.node(n)
    return list(nodes)


def _spec(d: Draft, spec: Any, in_shapes: list[tuple[int, ...]]) -> Layer:
    try:
        return infer_spec(spec, in_shapes)
    except SpecError as e:
        raise d.error(str(e)) from None


# ---- structure ------------------------------------------------------------------------------


@rewrite
def add_input(d: Draft, /, *, node: str, shape: list[int]) -> None:
    """Add an input node: the source of the routes of the tasks that read it.

    >>> from jointnet.net import JointNet
    >>> add_input(JointNet.empty(), node="input", shape=(1, 28, 28)).node("input").spec
    Input(shape=(1, 28, 28))
    """
    _new_node_id(d, node)
    try:
        spec = Input(shape=tuple(shape))
    except (SpecError, TypeError, ValueError) as e:
        raise d.error(f"bad input shape {shape!r}: {e}") from None
    d.set_node(Node(node, spec))


@rewrite
def add_task(d: Draft, /, *, task: str, input: str | None = None) -> None:
    """Register a new task with an empty route from `input` (default: the net's only input).

    The task is *open* until `add_head` closes it: `add_node` and `bind` build its route.
    """
    try:
        check_name(task, "a task name")
    except SpecError as e:
        raise d.error(str(e)) from None
    if task in d.tasks:
        raise d.error(f"task {task!r} already exists")
    inputs = [n for n, data in d.g.nodes(data=True) if data["n"].kind == "Input"]
    if input is None:
        if len(inputs) != 1:
            raise d.error(f"name the input: the net has {len(inputs)} input nodes ({inputs})")
        input = inputs[0]
    elif input not in inputs:
        raise d.error(f"{input!r} is not an input node; inputs are {inputs}")
    d.tasks[task] = TaskInfo(task, input, added_at=d.version)


@rewrite
def add_node(d: Draft, /, *, node: str, spec: Any, inputs: Any, task: str) -> None:
    """Add a layer fed by `inputs` (nodes on `task`'s open route) and route `task` through it.

    `spec` is a layer spec, or a dict whose input width is inferred (``{"kind": "conv",
    "out_ch": 32}``). A merge spec (Add, Concat) takes its inputs in the order given.
    """
    _new_node_id(d, node)
    _require_open(d, task)
    ins = [inputs] if isinstance(inputs, str) else list(inputs)
    route = set(d.route(task))
    for u in ins:
        d.node(u)
        if u not in route:
            raise d.error(f"input {u!r} is not on the route of task {task!r}")
    shapes = _check_task(d, task)
    layer = _spec(d, spec, [shapes[u] for u in ins])
    if isinstance(layer, (Input, Head)):
        raise d.error(f"use add_input / add_head for {layer.kind} nodes")
    want = layer.arity
    if (want is None and len(ins) < 2) or (want is not None and len(ins) != want):
        raise d.error(f"{layer.kind} takes {'two or more' if want is None else want} input(s), got {len(ins)}")
    if len(set(ins)) != len(ins):
        raise d.error(f"inputs {ins} repeat a node")
    d.set_node(Node(node, layer, _fresh_params(d, node, layer), created_by=task))
    for port, u in enumerate(ins):
        d.route_edge(u, node, task, port)
    _check_task(d, task)


@rewrite
def add_head(
    d: Draft, /, *, task: str, n_classes: int | None = None, after: str | None = None,
    share_with: str | None = None, node: str | None = None,
) -> None:
    """Close `task`'s route with a classifier head fed by `after` (default: the route's end).

    With `share_with`, route `task` into that task's existing head instead (one softmax shared
    by several tasks, as on permuted streams); `n_classes` must then be None or match.
    """
    _require_open(d, task)
    sinks = route_sink(d.view(), task)
    if after is None:
        if len(sinks) != 1:
            raise d.error(f"task {task!r}'s route ends in {sinks}; say which one with after=")
        after = sinks[0]
    elif after not in d.route(task):
        d.node(after)
        raise d.error(f"{after!r} is not on the route of task {task!r}")
    elif sinks != [after]:
        rest = [s for s in sinks if s != after]
        raise d.error(f"{after!r} is not the end of task {task!r}'s route; {rest} would feed nothing")
    shapes = _check_task(d, task)
    shape = shapes[after]
    if len(shape) != 1:
        raise d.error(f"a head needs flat features; {after!r} gives {shape} (add a Flatten)")
    if share_with is not None:
        other = d.task(share_with)
        if other.head is None:
            raise d.error(f"task {share_with!r} has no head to share")
        head = d.node(other.head)
        if n_classes is not None and n_classes != head.spec.out_f:
            raise d.error(f"shared head {other.head!r} has {head.spec.out_f} classes, not {n_classes}")
        head_id = other.head
    else:
        if type(n_classes) is not int or not 1 <= n_classes <= MAX_DIM:
            raise d.error(f"n_classes must be an int in [1, {MAX_DIM}] (got {n_classes!r})")
        head_id = _new_node_id(d, node or f"head.{task}")
        spec = Head(in_f=shape[0], out_f=n_classes)
        d.set_node(Node(head_id, spec, _fresh_params(d, head_id, spec), created_by=task))
    d.route_edge(after, head_id, task, 0)
    d.tasks[task] = attrs.evolve(d.tasks[task], head=head_id)
    _check_task(d, task)


@rewrite
def bind(d: Draft, /, *, task: str, to: str) -> None:
    """Route the open, empty `task` through every node of `to`'s route except `to`'s head.

    No parameters are added: the two tasks now share those nodes.
    """
    info = _require_open(d, task)
    target = d.task(to)
    if to == task:
        raise d.error("a task cannot bind to itself")
    if d.route(task) != [info.input]:
        raise d.error(f"task {task!r} already has a route; bind needs an empty one")
    if target.input != info.input:
        raise d.error(f"task {to!r} reads input {target.input!r}, task {task!r} reads {info.input!r}")
    for u, v, data in d.view().edges(to):
        if v != target.head:
            d.route_edge(u, v, task, data["port"])
    _check_task(d, task)


@rewrite
def route_through(d: Draft, /, *, task: str, like: str, upto: Any) -> Any:
    """Route the open `task` along the part of `like`'s route that feeds the nodes `upto`.

    Every edge of `like`'s route that leads to one of `upto` (directly or through other nodes)
    is routed for `task` too, with its port; the nodes are shared and no parameters are added,
    so `task` computes at each of `upto` exactly what `like` computes there. The nodes of `upto`
    end `task`'s route until `add_node` feeds them to something (Progressive Nets read the
    earlier columns this way, as lateral sources). Nothing to add returns the net unchanged.

    >>> from jointnet import backbones
    >>> net = add_task(backbones.build(backbones.mlp(4, [8, 8]), task="t1", n_classes=2), task="t2")
    >>> route_through(net, task="t2", like="t1", upto=["relu1"]).route("t2")
    ['input', 'fc1', 'relu1']
    """
    info = _require_open(d, task)
    other = d.task(like)
    if like == task:
        raise d.error("a task cannot be routed like itself")
    if other.input != info.input:
        raise d.error(f"task {like!r} reads input {other.input!r}, task {task!r} reads {info.input!r}")
    targets = _as_list(d, upto, "upto")
    theirs = set(d.route(like))
    for n in targets:
        if n not in theirs:
            raise d.error(f"task {like!r} does not route through {n!r}")
        if d.node(n).kind == "Head":
            raise d.error(f"{n!r} is {like!r}'s head; a route cannot continue past a head")
    # The edges of `like` into the ancestors of `upto` on its route (upto included).
    wanted: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    stack = list(targets)
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        for u, _, data in d.g.in_edges(v, data=True):
            if like in data["tasks"]:
                wanted.append((u, v, data["port"]))
                stack.append(u)
    mine = set(d.route(task))
    for v in sorted(seen & mine):
        have = sorted((data["port"], u) for u, _, data in d.g.in_edges(v, data=True) if task in data["tasks"])
        want = sorted((p, u) for u, w, p in wanted if w == v)
        if have and have != want:
            raise d.error(f"task {task!r} already routes into {v!r} from {[u for _, u in have]}, "
                          f"task {like!r} from {[u for _, u in want]}")
    new = [(u, v, p) for u, v, p in wanted if task not in d.g.edges[u, v]["tasks"]]
    if not new:
        return NO_CHANGE
    for u, v, p in sorted(new):
        d.route_edge(u, v, task, p)
    _check_task(d, task)
    return None


def _move_routes(d: Draft, task: str, node: str, to: str) -> None:
    for u, _, data in list(d.g.in_edges(node, data=True)):
        if task in data["tasks"]:
            port = d.unroute_edge(u, node, task)
            d.route_edge(u, to, task, port)
    for _, w, data in list(d.g.out_edges(node, data=True)):
        if task in data["tasks"]:
            port = d.unroute_edge(node, w, task)
            d.route_edge(to, w, task, port)
    if d.tasks[task].head == node:
        d.tasks[task] = attrs.evolve(d.tasks[task], head=to)
    if d.tasks[task].input == node:  # pragma: no cover - inputs cannot be cloned or rerouted
        raise d.error("cannot move an input")


@rewrite
def clone_node(
    d: Draft, /, *, node: str, task: str, init: str = "copy", new_id: str | None = None,
) -> None:
    """Give `task` its own copy of `node` and route it there; other tasks keep `node`.

    init: ``copy`` (the clone starts from `node`'s tensors) or ``fresh`` (new initialisation).
    The clone holds the channels `task` sees; `task`'s masks and per-task variants move with it.
    """
    if init not in ("copy", "fresh"):
        raise d.error(f"init must be 'copy' or 'fresh' (got {init!r})")
    d.require_on_route(task, node)
    src = d.node(node)
    if src.kind == "Input":
        raise d.error("inputs cannot be cloned")
    clone_id = _new_node_id(d, new_id) if new_id is not None else d.fresh_id(f"{node}.{task}")
    view = d.view()
    grid = view.params_for(task, node)
    infos = view.effective_spec(task, node).params()
    params = []
    for name, rows in grid.items():
        info = infos[name]
        for row in rows:
            for p in row:
                make = Init.copy(p.key) if init == "copy" else Init.fresh(info.init, info.fan_in)
                params.append(Param(name, d.fresh_key(clone_id, name), p.shape, make,
                                    block=p.block, buffer=p.buffer, annotations=p.annotations))
    node_obj = Node(
        clone_id,
        view.effective_spec(task, node),
        tuple(params),
        out_groups=tuple(g for g in src.out_groups if view.group_visible(task, g)),
        in_groups=tuple(g for g in src.in_groups if view.group_visible(task, g)),
        masks=tuple(m for m in src.masks if m.task == task),
        cloned_from=node,
        created_by=task,
    )
    d.set_node(node_obj)
    d.set_node(attrs.evolve(
        src,
        params=tuple(p for p in src.params if p.task != task),
        masks=tuple(m for m in src.masks if m.task != task),
    ))
    _move_routes(d, task, node, clone_id)
    if (task, node) in d.policy:
        d.policy[(task, clone_id)] = d.policy.pop((task, node))
    _check_task(d, task)


@rewrite
def reroute(d: Draft, /, *, task: str, node: str, to: str) -> None:
    """Send `task`'s route through the existing node `to` instead of `node` (same edges, ports)."""
    d.require_on_route(task, node)
    target = d.node(to)
    if to in d.route(task):
        raise d.error(f"task {task!r} already routes through {to!r}")
    if target.kind == "Input" or d.node(node).kind == "Input":
        raise d.error("inputs cannot be rerouted")
    if target.kind != d.node(node).kind:
        raise d.error(f"{to!r} is a {target.kind}, {node!r} a {d.node(node).kind}")
    _move_routes(d, task, node, to)
    if not nx.is_directed_acyclic_graph(d.g):
        # Other tasks' edges may already lead from `node`'s successors back to `to`.
        raise d.error(f"routing {task!r} through {to!r} would close a cycle")
    d.g.nodes[node]["n"] = attrs.evolve(
        d.node(node),
        params=tuple(p for p in d.node(node).params if p.task != task),
        masks=tuple(m for m in d.node(node).masks if m.task != task),
    )
    _check_task(d, task)


@rewrite
def remove_task(d: Draft, /, *, task: str) -> None:
    """Unregister `task`: its route, policy, per-task variants and masks go; its nodes stay
    until `prune` (they may serve other tasks)."""
    d.task(task)
    for u, v, data in list(d.g.edges(data=True)):
        if task in data["tasks"]:
            d.unroute_edge(u, v, task)
    for n, data in list(d.g.nodes(data=True)):
        node = data["n"]
        if any(p.task == task for p in node.params) or any(m.task == task for m in node.masks):
            d.set_node(attrs.evolve(
                node,
                params=tuple(p for p in node.params if p.task != task),
                masks=tuple(m for m in node.masks if m.task != task),
            ))
    d.policy = {k: v for k, v in d.policy.items() if k[0] != task}
    del d.tasks[task]
    d._touch()


@rewrite
def prune(d: Draft, /) -> Any:
    """Remove every node that no task routes through (inputs too, once no task reads them)."""
    users = d.view()._users()
    dead = [n for n, u in users.items() if not u]
    if not dead:
        return NO_CHANGE
    for n in dead:
        d.remove_node(n)


# ---- channels -------------------------------------------------------------------------------


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
        _check_task(d, t)


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


# ---- policy and annotations -----------------------------------------------------------------


def _set_policy(d: Draft, nodes: Any, task: str | None, **change: Any) -> Any:
    # A task entry starts from what the task gets now (its entry, else the all-task entry) and
    # is dropped when it equals that fallback: so `unfreeze(task=t)` after `freeze(task=None)`
    # does unfreeze for t, and the policy keeps no redundant entries.
    if task is not None:
        d.task(task)
    changed = False
    for n in _as_list(d, nodes):
        key = (task, n)
        fallback = NodePolicy() if task is None else d.policy.get((None, n), NodePolicy())
        old = d.policy.get(key, fallback)
        new = attrs.evolve(old, **change)
        if new != old:
            changed = True
            if new == fallback:
                d.policy.pop(key, None)
            else:
                d.policy[key] = new
    return None if changed else NO_CHANGE


@rewrite
def freeze(d: Draft, /, *, nodes: Any, task: str | None = None, keep_owned: bool = False) -> Any:
    """Mark `nodes` frozen when training `task` (None: every task).

    With `keep_owned`, the training task's own tensors on those nodes (channels it grew with
    `widen`, its `per_task_bn` variants, its live masks) still train (GROWN-style: old kernels
    frozen, new channels learn).
    """
    if not isinstance(keep_owned, bool):
        raise d.error(f"keep_owned must be a bool (got {keep_owned!r})")
    return _set_policy(d, nodes, task, frozen=True, keep_owned=keep_owned)


@rewrite
def unfreeze(d: Draft, /, *, nodes: Any, task: str | None = None) -> Any:
    """Mark `nodes` trainable again when training `task` (None: every task)."""
    return _set_policy(d, nodes, task, frozen=False, keep_owned=False)


@rewrite
def set_lr_scale(d: Draft, /, *, nodes: Any, scale: float, task: str | None = None) -> Any:
    """Scale the learning rate of `nodes` by `scale` when training `task` (None: every task)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise d.error(f"scale must be a finite number >= 0 (got {scale!r})")
    return _set_policy(d, nodes, task, lr_scale=float(scale))


@rewrite
def per_task_bn(d: Draft, /, *, node: str, task: str, init: str = "copy") -> None:
    """Give `task` its own BatchNorm parameters and statistics on `node` (copied or fresh)."""
    if init not in ("copy", "fresh"):
        raise d.error(f"init must be 'copy' or 'fresh' (got {init!r})")
    d.require_on_route(task, node)
    n = d.node(node)
    if n.kind != "BatchNorm":
        raise d.error(f"{node!r} is a {n.kind}, not a BatchNorm")
    if any(p.task == task for p in n.params):
        raise d.error(f"task {task!r} already has its own statistics on {node!r}")
    infos = n.spec.params()
    new = []
    for name, rows in d.view().params_for(task, node).items():
        for row in rows:
            for p in row:
                how = Init.copy(p.key) if init == "copy" else Init.fresh(infos[name].init)
                new.append(Param(name, d.fresh_key(node, f"{name}.{task}"), p.shape, how,
                                 owner=task, task=task, block=p.block, buffer=p.buffer))
    d.set_node(attrs.evolve(n, params=n.params + tuple(new)))


@rewrite
def add_task_embedding(d: Draft, /, *, node: str, task: str, init: str = "fresh") -> None:
    """Give `task` its own ``embedding`` on the `Gate` node `node` (a per-task variant).

    Other tasks keep theirs (or the node's shared default); `task`'s forward pass and training
    use only the new tensor, which `task` owns. init: ``fresh`` (the spec's scheme, N(0, 1)) or
    ``copy`` (a copy of the node's shared default embedding).

    >>> from jointnet import backbones
    >>> layers = [{"kind": "linear", "out_f": 4}, {"kind": "relu"}, {"kind": "Gate"}]
    >>> net = backbones.build(layers, input_shape=(3,), task="t1", n_classes=2)
    >>> net = add_task_embedding(net, node="gate1", task="t1")
    >>> [(p.name, p.task) for p in net.node("gate1").params]
    [('embedding', None), ('embedding', 't1')]
    """
    if init not in ("fresh", "copy"):
        raise d.error(f"init must be 'fresh' or 'copy' (got {init!r})")
    d.require_on_route(task, node)
    n = d.node(node)
    info = n.spec.params().get("embedding")
    if info is None or info.buffer:
        raise d.error(f"{node!r} is a {n.kind}; only Gate nodes hold task embeddings")
    if any(p.name == "embedding" and p.task == task for p in n.params):
        raise d.error(f"task {task!r} already has its own embedding on {node!r}")
    base = n.param("embedding")
    how = Init.copy(base.key) if init == "copy" else Init.fresh(info.init, info.fan_in)
    new = Param("embedding", d.fresh_key(node, f"embedding.{task}"), base.shape, how, owner=task, task=task)
    d.set_node(attrs.evolve(n, params=n.params + (new,)))


_PLAIN = (str, int, float, bool, type(None))


def _check_value(d: Draft, value: Any) -> Any:
    from jointnet.net import TensorRef

    if isinstance(value, _PLAIN + (TensorRef,)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_check_value(d, v) for v in value)
    if isinstance(value, dict) or isinstance(value, FrozenDict):
        for k in value:
            if not isinstance(k, str):
                raise d.error(f"annotation dict keys must be strings (got {k!r})")
        return FrozenDict({k: _check_value(d, v) for k, v in value.items()})
    raise d.error(f"annotation values must be str/int/float/bool/None, lists, dicts or TensorRef (got {type(value).__name__})")


@rewrite
def annotate(
    d: Draft, /, *, key: str, value: Any, node: str | None = None, param: str | None = None,
    task: str | None = None,
) -> Any:
    """Attach strategy data under `key`: to a parameter (`node` + `param`), a node, a task, or the
    net (neither). `value` None removes the key. Tensors go in the store, referenced by `TensorRef`.
    """
    if not isinstance(key, str) or not key:
        raise d.error(f"key must be a non-empty string (got {key!r})")
    value = _check_value(d, value)

    def put(ann: FrozenDict) -> FrozenDict:
        return ann.without(key) if value is None else ann.set(key, value)

    if node is not None:
        n = d.node(node)
        if param is not None:
            hits = [p for p in n.params if p.name == param and (task is None or p.task in (None, task))]
            if not hits:
                names = sorted({p.name for p in n.params})
                raise d.error(f"{node!r} has no parameter {param!r}; it has {names}")
            new = tuple(attrs.evolve(p, annotations=put(p.annotations)) if p in hits else p for p in n.params)
            out = attrs.evolve(n, params=new)
        else:
            out = attrs.evolve(n, annotations=put(n.annotations))
        if out == n:
            return NO_CHANGE
        d.set_node(out)
    elif param is not None:
        raise d.error("param needs node")
    elif task is not None:
        info = d.task(task)
        new_info = attrs.evolve(info, annotations=put(info.annotations))
        if new_info == info:
            return NO_CHANGE
        d.tasks[task] = new_info
    else:
        new = put(FrozenDict(d.annotations))
        if new == FrozenDict(d.annotations):
            return NO_CHANGE
        d.annotations = dict(new)
    return None

