"""Structure rewrites: inputs, tasks, nodes, heads, routes.

`add_input`, `add_task`, `add_node`, `add_head`, `bind`, `route_through`, `clone_node`, `reroute`,
`remove_task`, `prune`. Each is a registered pure function ``f(net, /, **kwargs) -> net``.

>>> from jointnet.graph import backbones
>>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
>>> net2 = add_task(net, task="t2")
>>> net3 = bind(net2, task="t2", to="t1")
>>> net4 = clone_node(add_head(net3, task="t2", n_classes=3), node="fc1", task="t2")
>>> net4.route("t2")
['input', 'fc1.t2', 'relu1', 'head.t2']
"""

from __future__ import annotations

from typing import Any

import attrs

from jointnet.errors import SpecError
from jointnet.graph.draft import NO_CHANGE, Draft, rewrite
from jointnet.graph.layers import Head, Input
from jointnet.graph.names import MAX_DIM, check_name
from jointnet.graph.net import Init, Node, Param, TaskInfo
from jointnet.graph.shapes import route_sink

__all__ = ["add_input", "add_task", "add_node", "add_head", "bind", "route_through", "clone_node", "reroute", "remove_task", "prune"]


@rewrite
def add_input(d: Draft, /, *, node: str, shape: list[int]) -> None:
    """Add an input node: the source of the routes of the tasks that read it.

    >>> from jointnet.graph.net import JointNet
    >>> add_input(JointNet.empty(), node="input", shape=(1, 28, 28)).node("input").spec
    Input(shape=(1, 28, 28))
    """
    d.new_node_id(node)
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
    inputs = list(d.ix.inputs)
    if input is None:
        if len(inputs) != 1:
            raise d.error(f"name the input: the net has {len(inputs)} input nodes ({inputs})")
        input = inputs[0]
    elif input not in inputs:
        raise d.error(f"{input!r} is not an input node; inputs are {inputs}")
    d.add_task(TaskInfo(task, input, added_at=d.version))


@rewrite(recorded_if_set=("route",))
def add_node(d: Draft, /, *, node: str, spec: Any, inputs: Any, task: str, route: bool = True) -> None:
    """Add a layer fed by `inputs` (nodes on `task`'s open route) and route `task` through it.

    `spec` is a layer spec, or a dict whose input width is inferred (``{"kind": "conv",
    "out_ch": 32}``). A merge spec (Add, Concat) takes its inputs in the order given.

    With ``route=False`` the node is only added: an *alternative* that no task routes through
    until a `reroute` (or a route view) uses it, e.g. LASEM's shared layer of a slot beside a
    task's own. Its input widths come from `inputs` on `task`'s route, which may then be closed.
    """
    d.new_node_id(node)
    if type(route) is not bool:
        raise d.error(f"route must be a bool (got {route!r})")
    if route:
        d.require_open(task)
    else:
        d.task(task)
    ins = [inputs] if isinstance(inputs, str) else list(inputs)
    on_route = set(d.route(task))
    for u in ins:
        d.node(u)
        if u not in on_route:
            raise d.error(f"input {u!r} is not on the route of task {task!r}")
    shapes = d.check_task(task)
    layer = d.layer(spec, [shapes[u] for u in ins])
    if isinstance(layer, (Input, Head)):
        raise d.error(f"use add_input / add_head for {layer.kind} nodes")
    want = layer.arity
    if (want is None and len(ins) < 2) or (want is not None and len(ins) != want):
        raise d.error(f"{layer.kind} takes {'two or more' if want is None else want} input(s), got {len(ins)}")
    if len(set(ins)) != len(ins):
        raise d.error(f"inputs {ins} repeat a node")
    d.set_node(Node(node, layer, d.fresh_params(node, layer), created_by=task))
    if not route:
        return
    for port, u in enumerate(ins):
        d.route_edge(u, node, task, port)
    d.check_task(task)


@rewrite
def add_head(
    d: Draft, /, *, task: str, n_classes: int | None = None, after: str | None = None,
    share_with: str | None = None, node: str | None = None,
) -> None:
    """Close `task`'s route with a classifier head fed by `after` (default: the route's end).

    With `share_with`, route `task` into that task's existing head instead (one softmax shared
    by several tasks, as on permuted streams); `n_classes` must then be None or match.
    """
    d.require_open(task)
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
    shapes = d.check_task(task)
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
        head_id = d.new_node_id(node or f"head.{task}")
        spec = Head(in_f=shape[0], out_f=n_classes)
        d.set_node(Node(head_id, spec, d.fresh_params(head_id, spec), created_by=task))
    d.route_edge(after, head_id, task, 0)
    d.tasks[task] = attrs.evolve(d.tasks[task], head=head_id)
    d.check_task(task)


@rewrite
def bind(d: Draft, /, *, task: str, to: str) -> None:
    """Route the open, empty `task` through every node of `to`'s route except `to`'s head.

    No parameters are added: the two tasks now share those nodes.
    """
    info = d.require_open(task)
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
    d.check_task(task)


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
    info = d.require_open(task)
    other = d.task(like)
    if like == task:
        raise d.error("a task cannot be routed like itself")
    if other.input != info.input:
        raise d.error(f"task {like!r} reads input {other.input!r}, task {task!r} reads {info.input!r}")
    targets = d.node_list(upto, "upto")
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
        for u, data in d.g._pred[v].items():
            if like in data["tasks"]:
                wanted.append((u, v, data["port"]))
                stack.append(u)
    mine = set(d.route(task))
    for v in sorted(seen & mine):
        have = sorted((data["port"], u) for u, data in d.g._pred[v].items() if task in data["tasks"])
        want = sorted((p, u) for u, w, p in wanted if w == v)
        if have and have != want:
            raise d.error(f"task {task!r} already routes into {v!r} from {[u for _, u in have]}, "
                          f"task {like!r} from {[u for _, u in want]}")
    new = [(u, v, p) for u, v, p in wanted if task not in d.g._succ[u][v]["tasks"]]
    if not new:
        return NO_CHANGE
    for u, v, p in sorted(new):
        d.route_edge(u, v, task, p)
    d.check_task(task)
    return None


def _move_routes(d: Draft, task: str, node: str, to: str) -> None:
    for u, data in list(d.g._pred[node].items()):
        if task in data["tasks"]:
            port = d.unroute_edge(u, node, task)
            d.route_edge(u, to, task, port)
    for w, data in list(d.g._succ[node].items()):
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
    clone_id = d.new_node_id(new_id) if new_id is not None else d.fresh_id(f"{node}.{task}")
    view = d.view()
    grid = view.params_for(task, node)
    infos = view.effective_spec(task, node).params()
    params = []
    for name, rows in grid.items():
        info = infos[name]
        for row in rows:
            for p in row:
                make = Init.copy(p.key) if init == "copy" else Init.fresh(info.init, info.fan_in)
                # A per-task parameter stays the task's own (its kind has no shared one).
                params.append(Param(name, d.fresh_key(clone_id, name), p.shape, make,
                                    task=task if info.per_task else None, owner=task if info.per_task else None,
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
    d.check_task(task)


@rewrite
def reroute(d: Draft, /, *, task: str, node: str, to: str) -> None:
    """Send `task`'s route through the existing node `to` instead of `node` (same edges, ports).

    `to` may be of another kind that takes as many inputs (a factorized conv for a plain one:
    LASEM's shared and task-specific alternatives), but never a Head for a non-head or the
    reverse; the shapes along the route must still agree. `task`'s variants and masks on `node`
    go; a kind's per-task parameters on `to` are made for `task`.
    """
    d.require_on_route(task, node)
    target = d.node(to)
    if to in d.route(task):
        raise d.error(f"task {task!r} already routes through {to!r}")
    if target.kind == "Input" or d.node(node).kind == "Input":
        raise d.error("inputs cannot be rerouted")
    src = d.node(node)
    if target.kind != src.kind and (
            "Head" in (target.kind, src.kind) or target.spec.arity != src.spec.arity):
        raise d.error(f"{to!r} is a {target.kind}, {node!r} a {src.kind}")
    feeds = set(d.view().inputs_of(node, task))
    _move_routes(d, task, node, to)
    if d.reaches(to, feeds | {to}):
        # Other tasks' edges may already lead from `node`'s successors back to `to` (or from
        # `to` to what feeds it now): a cycle must use one of the edges just added.
        raise d.error(f"routing {task!r} through {to!r} would close a cycle")
    d.set_node(attrs.evolve(
        d.node(node),
        params=tuple(p for p in d.node(node).params if p.task != task),
        masks=tuple(m for m in d.node(node).masks if m.task != task),
    ))
    d.check_task(task)


@rewrite
def remove_task(d: Draft, /, *, task: str) -> None:
    """Unregister `task`: its route, policy, per-task variants and masks go; its nodes stay
    until `prune` (they may serve other tasks)."""
    d.task(task)
    route = d.route(task)  # only nodes on its route hold its variants and masks (check)
    for u, v, _ in d.view().edges(task):
        d.unroute_edge(u, v, task)
    for n in route:
        node = d.node(n)
        if any(p.task == task for p in node.params) or any(m.task == task for m in node.masks):
            d.set_node(attrs.evolve(
                node,
                params=tuple(p for p in node.params if p.task != task),
                masks=tuple(m for m in node.masks if m.task != task),
            ))
    d.policy = {k: v for k, v in d.policy.items() if k[0] != task}
    d.drop_task(task)


@rewrite
def prune(d: Draft, /) -> Any:
    """Remove every node that no task routes through (inputs too, once no task reads them)."""
    users = d.view()._users()
    dead = [n for n, u in users.items() if not u]
    if not dead:
        return NO_CHANGE
    for n in dead:
        d.remove_node(n)
