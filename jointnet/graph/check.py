"""`check(net)`: prove a net satisfies the core invariants, or raise `InvariantError` naming why.

Invariants:

- the graph is a DAG; every node holds a `Node` whose id is its key;
- every edge carries a non-empty set of registered tasks and an int port;
- every task's route starts at its input, which is an Input node; every other node on it has
  one in-edge per operand (one for plain layers, ports 0..n-1 for merges, n >= 2); a closed
  task's route ends at its head and only there; heads feed nothing;
- shapes agree along every route, with the channel groups each task sees;
- every parameter block a node's spec and channel groups call for exists exactly once, with the
  right shape; per-task variants and masks belong to tasks routed through the node;
- no tensor key is used twice; policy entries name registered tasks and existing nodes.
"""

from __future__ import annotations

import networkx as nx

from jointnet.errors import InvariantError
from jointnet.graph.net import JointNet, Node, require
from jointnet.graph.shapes import route_sink, task_shapes

__all__ = ["check"]


def check(net: JointNet) -> JointNet:
    """Return `net` if every invariant holds, else raise `InvariantError`.

    >>> from jointnet import backbones
    >>> check(backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)).version
    5
    """
    g = net.graph
    if not nx.is_directed_acyclic_graph(g):
        raise InvariantError(f"the graph has a cycle: {_cycle(g)}")
    for n, data in g.nodes(data=True):
        node = data.get("n")
        require(isinstance(node, Node), f"node {n!r} holds no Node")
        require(node.id == n, f"node {n!r} holds a Node with id {node.id!r}")
    for u, v, data in g.edges(data=True):
        tasks = data.get("tasks")
        require(isinstance(tasks, frozenset) and tasks, f"edge {u!r} -> {v!r} carries no tasks")
        for t in tasks:
            require(t in net.tasks, f"edge {u!r} -> {v!r} is routed for unknown task {t!r}")
        port = data.get("port")
        require(isinstance(port, int) and port >= 0, f"edge {u!r} -> {v!r} has bad port {port!r}")
        require(net.node(u).kind != "Head", f"head {u!r} feeds {v!r}")
        require(net.node(v).kind != "Input", f"input {v!r} has an in-edge from {u!r}")
    for t, info in net.tasks.items():
        require(info.name == t, f"task {t!r} is registered as {info.name!r}")
        require(0 <= info.added_at <= net.version, f"task {t!r} was added at {info.added_at}, after version {net.version}")
        _check_route(net, t)
    _check_params(net)
    for (t, n), pol in net.policy.items():
        require(t is None or t in net.tasks, f"policy names unknown task {t!r}")
        require(n in g, f"policy names unknown node {n!r}")
        infos = net.node(n).spec.params()
        for name in pol.params:
            require(name.startswith("mask:") or (name in infos and not infos[name].buffer),
                    f"policy of node {n!r} names {name!r}, which is no trainable parameter of a "
                    f"{net.node(n).kind} (nor mask:KIND)")
    return net


def _cycle(g: nx.DiGraph) -> list:
    try:
        return [u for u, _ in nx.find_cycle(g)]
    except nx.NetworkXNoCycle:  # pragma: no cover
        return []


def _check_route(net: JointNet, t: str) -> None:
    info = net.tasks[t]
    require(info.input in net.graph and net.node(info.input).kind == "Input",
            f"task {t!r} reads {info.input!r}, which is not an input node")
    route = net.route(t)
    for n in route:
        if n == info.input:
            continue
        ports = [port for port, _ in net.in_ports(n, t)]
        arity = net.node(n).spec.arity
        require(bool(ports), f"node {n!r} is on the route of task {t!r} but nothing feeds it")
        if arity is None:
            require(len(ports) >= 2 and ports == list(range(len(ports))),
                    f"merge node {n!r} gets ports {ports} on the route of task {t!r}; wants 0..n-1, n >= 2")
        else:
            require(ports == list(range(arity)),
                    f"node {n!r} gets {len(ports)} input(s) on the route of task {t!r}; it takes {arity}")
    if info.head is not None:
        require(info.head in net.graph and net.node(info.head).kind == "Head",
                f"task {t!r} has head {info.head!r}, which is not a Head node")
        sinks = route_sink(net, t)
        require(sinks == [info.head], f"the route of task {t!r} ends at {sinks}, not only at its head {info.head!r}")
    else:
        heads = [n for n in route if net.node(n).kind == "Head"]
        require(not heads, f"open task {t!r} routes into head(s) {heads}")
    task_shapes(net, t)  # raises InvariantError naming node and task


def _block_shape(info, node: Node, block) -> tuple[int, ...]:
    shape = list(info.shape)
    o, i = block
    if info.out_axis is not None:
        shape[info.out_axis] = node.base_width("out") if o is None else _size(node.out_groups, o)
    if info.in_axis is not None:
        shape[info.in_axis] = node.base_width("in") if i is None else _size(node.in_groups, i)
    return tuple(shape)


def _size(groups, gid) -> int:
    for g in groups:
        if g.id == gid:
            return g.size
    raise InvariantError(f"unknown channel group {gid!r}")


def _check_params(net: JointNet) -> None:
    seen: dict[str, str] = {}
    all_users = net._users()
    for n in net.nodes:
        node = net.node(n)
        users = all_users[n]
        for axis in ("out", "in"):
            groups = node.out_groups if axis == "out" else node.in_groups
            require(len({g.id for g in groups}) == len(groups), f"node {n!r} repeats a channel group")
            if groups:
                require(node.base_width(axis) >= 1, f"node {n!r} has no base {axis} channels left")
        infos = node.spec.params()
        want = set()
        for name, info in infos.items():
            outs = [None] + [g.id for g in node.out_groups] if info.out_axis is not None else [None]
            ins = [None] + [g.id for g in node.in_groups] if info.in_axis is not None else [None]
            want |= {(name, (o, i)) for o in outs for i in ins}
        have = {}
        variants: dict[tuple, set] = {}
        for p in node.params:
            where = f"parameter {p.name!r} block {p.block} of node {n!r}"
            require(p.key not in seen, f"tensor key {p.key!r} is used by {seen.get(p.key)!r} and {n!r}")
            seen[p.key] = n
            require((p.name, p.block) in want, f"{where} is not called for by {node.spec.short()}")
            require(p.shape == _block_shape(infos[p.name], node, p.block),
                    f"{where} has shape {p.shape}, wants {_block_shape(infos[p.name], node, p.block)}")
            require(p.buffer == infos[p.name].buffer, f"{where} has the wrong buffer flag")
            if p.owners is not None:
                require(p.owners.key not in seen, f"tensor key {p.owners.key!r} is used twice (owner map on {n!r})")
                seen[p.owners.key] = n
            if p.task is None:
                require(not infos[p.name].per_task, f"{where} is per-task but has a shared tensor")
                require((p.name, p.block) not in have, f"{where} appears twice")
                have[(p.name, p.block)] = p
            else:
                require(p.task in users, f"{where} is a variant for {p.task!r}, which does not route through it")
                require(p.task not in variants.setdefault((p.name, p.block), set()), f"{where} has two variants for {p.task!r}")
                variants[(p.name, p.block)].add(p.task)
        shared = {w for w in want if not infos[w[0]].per_task}
        missing = shared - set(have)
        require(not missing, f"node {n!r} lacks parameter blocks {sorted(missing, key=str)}")
        per_task = [name for name, info in infos.items() if info.per_task]
        for t in sorted(users) if per_task else ():
            if net.node(n).kind == "Input":
                continue
            for row in net.params_for(t, n).values():  # raises naming task, parameter and node
                pass
        masks_seen = set()
        for m in node.masks:
            require(m.key not in seen, f"tensor key {m.key!r} is used twice (mask on {n!r})")
            seen[m.key] = n
            require(m.task in users, f"node {n!r} has a mask for {m.task!r}, which does not route through it")
            require(m.param in infos, f"node {n!r} masks unknown parameter {m.param!r}")
            ident = (m.task, m.param, m.kind, m.block)
            require(ident not in masks_seen, f"node {n!r} has two {m.kind!r} masks of {m.task!r} on {m.param} {m.block}")
            masks_seen.add(ident)
            require((m.param, m.block) in want, f"mask of {m.task!r} on {n!r}.{m.param} covers block {m.block}, "
                                                "which the parameter does not have")
            block = _block_shape(infos[m.param], node, m.block)
            full = {"param": block, "kernel": block[:2], "channel": block[:1]}[m.granularity]
            require(m.shape == full, f"{m.kind} mask of {m.task!r} on {n!r}.{m.param} {m.block} has shape "
                                     f"{m.shape}, the block's {m.granularity} shape is {full}")
