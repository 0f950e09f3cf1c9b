"""The core value: `JointNet`, an immutable, versioned DAG of layer nodes with task routes.

Vocabulary:

- A **node** is one layer instance (`Node`): a layer spec, the parameters it holds (`Param`, each
  a reference to a tensor in a `ParamStore` by a stable key), channel groups grown by `widen`,
  per-task masks, and annotations.
- A **route** is the set of edges a task's forward pass follows. Every edge carries the tasks
  routed along it and a `port` (operand position for merge nodes). When routes of different
  tasks meet at a node, its in-edges are alternatives per task, never summed.
- **Ownership** is derived from routes (a node's users are the tasks routed through it) and,
  at finer grain, from `Param.owner` / `Param.task` (parameter) and `Group.owner` (channels).

A `JointNet` never changes: rewrites (`jointnet.graph.draft`) return a new one with `version + 1`
and one more log record. Old versions stay valid values.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import networkx as nx

from jointnet.errors import InvariantError
from jointnet.graph.frozen import FrozenDict
from jointnet.graph.index import RouteIndex, node_users
from jointnet.graph.layers import Layer
from jointnet.graph.names import check_int, check_key, check_name
from jointnet.graph.records import (  # the records, importable from here too
    DEFAULT_POLICY,
    GRAD_PROVIDERS,
    MASK_TRANSFORMS,
    GradRule,
    Group,
    Init,
    Log,
    Mask,
    Node,
    NodePolicy,
    OwnerMap,
    Param,
    ParamPolicy,
    Record,
    TaskInfo,
    TensorRef,
)

__all__ = [
    "Init",
    "Group",
    "OwnerMap",
    "Param",
    "MASK_TRANSFORMS",
    "Mask",
    "Node",
    "TaskInfo",
    "NodePolicy",
    "ParamPolicy",
    "GradRule",
    "GRAD_PROVIDERS",
    "TensorRef",
    "Record",
    "Log",
    "JointNet",
    "RouteView",
]


def _name(_inst, a, value) -> None:
    check_name(value, a.name)


def _nonneg(_inst, a, value) -> None:
    check_int(value, a.name, 0, 1 << 62)


def _key(_inst, a, value) -> None:
    check_key(value, a.name)


_uids = itertools.count()


def _lineage(parent: str, rec: Record) -> str:
    h = hashlib.blake2b(digest_size=6)
    h.update(parent.encode())
    h.update(repr(rec).encode())
    return h.hexdigest()


@attrs.frozen(eq=False)
class JointNet:
    """An immutable, versioned JointNet.

    Attributes:
        graph: a frozen ``nx.DiGraph``; node attribute ``n`` holds the `Node`, edge attributes
            ``tasks`` (frozenset) and ``port`` (int).
        tasks: `FrozenDict` name -> `TaskInfo`, in the order tasks were added.
        policy: `FrozenDict` (task or None, node) -> `NodePolicy`; None means every task.
        annotations: net-level annotations.
        version: number of rewrites applied since the empty net.
        log: the rewrites, as a `Log` of `Record`s.
        lineage: a digest of the whole history; fresh parameter keys include it, so two branches
            of one net never give the same key two meanings.

    >>> JointNet.empty()
    JointNet(version=0, tasks=(), nodes=0)
    """

    graph: nx.DiGraph
    tasks: FrozenDict = FrozenDict()
    policy: FrozenDict = FrozenDict()
    annotations: FrozenDict = FrozenDict()
    version: int = attrs.field(default=0, validator=_nonneg)
    log: Log = attrs.field(factory=Log)
    lineage: str = attrs.field(default="root", validator=_key)
    uid: int = attrs.field(factory=lambda: next(_uids))
    _cache: dict = attrs.field(factory=dict, repr=False)

    @classmethod
    def empty(cls) -> "JointNet":
        return cls(nx.freeze(nx.DiGraph()))

    # ---- nodes and edges ----------------------------------------------------------------------

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.graph

    def node(self, node_id: str) -> Node:
        """The `Node` with id `node_id` (KeyError if absent)."""
        return self.graph._node[node_id]["n"]  # not graph.nodes: its view would tie a cycle

    @property
    def nodes(self) -> list[str]:
        return list(self.graph._node)

    def edges(self, task: "str | RouteView | None" = None) -> list[tuple[str, str, Any]]:
        """Edges as (src, dst, data); only the route of `task` (a task or a `RouteView`) when given.

        A view's edges need not exist in the graph; their data is ``{"port": p}``.
        """
        if task is None:
            return list(self.graph.edges(data=True))
        if isinstance(task, RouteView):
            return [(u, v, {"port": p}) for u, v, p in task.edges]
        return [(u, v, self.graph._succ[u][v]) for u, v in self._index().edges(task)]

    def _index(self) -> RouteIndex:
        """The route index (built from the graph on first use for a net not made by rewrites)."""
        ix = self._cache.get("index")
        if ix is None:
            ix = self._cache["index"] = RouteIndex.build(self.graph, self._inputs())
        return ix

    def _ins(self, task: "str | RouteView") -> dict[str, tuple[tuple[int, str], ...]]:
        if isinstance(task, RouteView):
            return self._view_data(task)["ins"]
        return self._index().ins(task)

    def _view_data(self, view: "RouteView") -> dict:
        key = ("view", view)
        data = self._cache.get(key)
        if data is None:
            ins: dict[str, list] = {}
            for u, v, p in view.edges:
                ins.setdefault(v, []).append((p, u))
            data = self._cache[key] = {"ins": {v: tuple(sorted(x)) for v, x in ins.items()}}
        return data

    def _inputs(self) -> dict[str, str]:
        inputs = self._cache.get("inputs")
        if inputs is None:
            inputs = self._cache["inputs"] = {t: info.input for t, info in self.tasks.items()}
        return inputs

    def users(self, node_id: str) -> frozenset[str]:
        """The tasks routed through `node_id` (its route-level owners)."""
        users = self._cache.get("users")
        if users is not None:
            return users.get(node_id, frozenset())
        if node_id not in self.graph._node:
            return frozenset()
        return node_users(self.graph, node_id, self.tasks)

    def _users(self) -> dict[str, frozenset[str]]:
        """node -> its users, for every node (one pass over the edges, cached)."""
        users = self._cache.get("users")
        if users is None:
            acc: dict[str, set[str]] = {n: set() for n in self.graph._node}
            for u, nbrs in self.graph._succ.items():
                for v, d in nbrs.items():
                    acc[u] |= d["tasks"]
                    acc[v] |= d["tasks"]
            for t, info in self.tasks.items():
                if info.input in acc:
                    acc[info.input].add(t)
            users = self._cache["users"] = {n: frozenset(s) for n, s in acc.items()}
        return users

    # ---- routes -------------------------------------------------------------------------------

    def route(self, task: "str | RouteView") -> list[str]:
        """The nodes of the route of `task` (a task or a `RouteView`) in topological order, input
        first, head (or the view's output) last."""
        if isinstance(task, RouteView):
            data = self._view_data(task)
            if "order" not in data:
                data["order"] = _topo(self.tasks[task.task].input, ((u, v) for u, v, _ in task.edges))
            return data["order"]
        return self._index().cached(
            "order", task, lambda: _topo(self.tasks[task].input, self._index().edges(task)))

    def inputs_of(self, node_id: str, task: "str | RouteView") -> list[str]:
        """The predecessors feeding `node_id` on the route of `task`, in port order."""
        return [u for _, u in self._ins(task).get(node_id, ())]

    def in_ports(self, node_id: str, task: "str | RouteView") -> tuple[tuple[int, str], ...]:
        """The (port, predecessor) pairs feeding `node_id` on the route of `task`, by port."""
        return self._ins(task).get(node_id, ())

    def view(self, task: str, *, swap: Mapping[str, str] | None = None, name: str = "view") -> "RouteView":
        """`task`'s route as a `RouteView`, with every node ``a`` of `swap` replaced by ``swap[a]``.

        The view is a value: evaluating it needs no rewrite and leaves no log record (LASEM's
        configurations, a supernet path).

        >>> from jointnet.graph import backbones, add_task, bind, add_head, clone_node
        >>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
        >>> net = clone_node(net, node="fc1", task="t1", init="fresh")
        >>> net.route(net.view("t1", swap={"fc1.t1": "fc1"}))
        ['input', 'fc1', 'relu1', 'head.t1']
        """
        swap = dict(swap or {})
        for a, b in swap.items():
            if a not in self.graph or b not in self.graph:
                raise InvariantError(f"view of task {task!r}: no node {a if a not in self.graph else b!r}")
        info = self.tasks[task]
        edges = tuple(sorted({(swap.get(u, u), swap.get(v, v), d["port"]) for u, v, d in self.edges(task)}))
        head = info.head if info.head is not None else (self.route(task)[-1])
        return RouteView(task=task, edges=edges, output=swap.get(head, head), name=name)

    def task_of(self, task: "str | RouteView") -> str:
        """The task whose parameters the route of `task` uses (itself, or a view's task)."""
        return task.task if isinstance(task, RouteView) else task

    def task_order(self, task: str) -> int:
        """The position of `task` among the net's tasks (registration order)."""
        order = self._cache.get("task_order")
        if order is None:
            order = self._cache["task_order"] = {t: i for i, t in enumerate(self.tasks)}
        return order[task]

    # ---- policy -------------------------------------------------------------------------------

    def policy_for(self, task: "str | RouteView", node_id: str) -> NodePolicy:
        """The train policy of `node_id` when training `task` (task entry, then all-task entry)."""
        own = self.policy.get((self.task_of(task), node_id))
        every = self.policy.get((None, node_id))
        if own is None:
            return every or DEFAULT_POLICY
        if every is None or not every.params:
            return own
        # Node-level fields: the task's entry; parameters: the task's entry over every task's.
        return attrs.evolve(own, params=FrozenDict({**every.params, **own.params}))

    # ---- channel groups -----------------------------------------------------------------------

    def route_groups(self, task: "str | RouteView") -> frozenset[str]:
        def make() -> frozenset[str]:
            ids = set()
            for n in self.route(task):
                # Only producers (the nodes `widen` grew): a BatchNorm downstream holds the group
                # too, but a route may reach it from another producer that lacks the group.
                if self.node(n).spec.producer:
                    ids.update(g.id for g in self.node(n).out_groups)
            return frozenset(ids)

        if isinstance(task, RouteView):
            data = self._view_data(task)
            if "groups" not in data:
                data["groups"] = make()
            return data["groups"]
        return self._index().cached("groups", task, make)

    def group_visible(self, task: "str | RouteView", group: Group) -> bool:
        """Whether `task` (or a view of a task) computes the channels of `group` (see `Group`)."""
        if group.id not in self.route_groups(task):
            return False
        t = self.task_of(task)
        return group.owner == t or self.tasks[t].added_at > group.created_at

    def visible_groups(self, task: str, node_id: str, axis: str) -> list[str | None]:
        """The group ids `task` sees on `node_id` along `axis` (``out``/``in``), base (None) first."""
        n = self.node(node_id)
        groups = n.out_groups if axis == "out" else n.in_groups
        return [None] + [g.id for g in groups if self.group_visible(task, g)]

    def effective_spec(self, task: str, node_id: str) -> Layer:
        """The node's spec as `task` sees it: widths cut to the channel groups it sees."""
        n = self.node(node_id)
        if not (n.out_groups or n.in_groups):
            return n.spec
        hidden_out = sum(g.size for g in n.out_groups if not self.group_visible(task, g))
        hidden_in = sum(g.size for g in n.in_groups if not self.group_visible(task, g))
        return n.spec.widened(out=-hidden_out, in_=-hidden_in)

    def params_for(self, task: "str | RouteView", node_id: str) -> dict[str, list[list[Param]]]:
        """The parameter blocks `task` uses on `node_id`, as a grid per logical parameter.

        Rows follow the visible out groups, columns the visible in groups; a per-task variant
        replaces the shared tensor of the same block (and is the only one of a ``per_task``
        parameter).

        Raises:
            InvariantError: a block has neither a shared tensor nor one of `task`'s own.
        """
        n = self.node(node_id)
        outs = self.visible_groups(task, node_id, "out")
        ins = self.visible_groups(task, node_id, "in")
        by_block: dict[tuple, Param] = {}
        for p in n.params:
            if p.task is None and (p.name, p.block) not in by_block:
                by_block[(p.name, p.block)] = p
        owner = self.task_of(task)
        for p in n.params:
            if p.task == owner:
                by_block[(p.name, p.block)] = p
        grid: dict[str, list[list[Param]]] = {}
        for name, info in n.spec.params().items():
            rows = outs if info.out_axis is not None else [None]
            cols = ins if info.in_axis is not None else [None]
            try:
                grid[name] = [[by_block[(name, (o, i))] for i in cols] for o in rows]
            except KeyError:
                raise InvariantError(f"task {owner!r} has no {name!r} on node {node_id!r}: no shared "
                                     "tensor and none of its own") from None
        return grid

    # ---- equality and display -----------------------------------------------------------------

    def structure(self) -> tuple:
        """Everything but version, log and lineage, as comparable plain values."""
        nodes = tuple(sorted((n, d["n"]) for n, d in self.graph.nodes(data=True)))
        edges = tuple(
            sorted((u, v, d["port"], tuple(sorted(d["tasks"]))) for u, v, d in self.graph.edges(data=True))
        )
        return (nodes, edges, tuple(self.tasks.items()), self.policy, self.annotations)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JointNet):
            return NotImplemented
        return (
            self.version == other.version
            and self.lineage == other.lineage
            and self.structure() == other.structure()
            and self.log == other.log
        )

    def __hash__(self) -> int:
        return hash((self.version, self.lineage))

    def __repr__(self) -> str:
        return f"JointNet(version={self.version}, tasks={tuple(self.tasks)}, nodes={len(self.graph)})"

    def __str__(self) -> str:
        lines = [repr(self)]
        width = max((len(n) for n in self.graph), default=4)
        order = list(nx.lexicographical_topological_sort(self.graph))
        specw = max((len(self.node(n).spec.short()) for n in order), default=4)
        for n in order:
            node = self.node(n)
            owners = ",".join(sorted(self.users(n), key=self._order_key)) or "-"
            extra = f"  cloned_from={node.cloned_from}" if node.cloned_from else ""
            if node.out_groups:
                extra += "  groups=" + ",".join(f"{g.owner}:+{g.size}" for g in node.out_groups)
            lines.append(f"  {n:<{width}}  {node.spec.short():<{specw}}  owners={{{owners}}}{extra}")
        return "\n".join(lines)

    def _order_key(self, task: str) -> int:
        return self.task_order(task) if task in self.tasks else 1 << 30

    def bump(self, graph: nx.DiGraph, tasks, policy, annotations, record: Record,
             index: RouteIndex | None = None) -> "JointNet":
        """A successor of this net with the given contents and one more log record (and the route
        index the draft kept up to date, so the new net need not rebuild it)."""
        out = JointNet(
            nx.freeze(graph),
            tasks=tasks,
            policy=policy,
            annotations=annotations,
            version=self.version + 1,
            log=self.log.append(record),
            lineage=_lineage(self.lineage, record),
        )
        if index is not None:
            out._cache["index"] = index
        return out


def _topo(input_node: str, edges: Iterable[tuple[str, str]]) -> list[str]:
    """The nodes of a route in topological order, ties broken by name (as networkx's
    ``lexicographical_topological_sort``), in O(E log V) without building a graph."""
    succ: dict[str, list[str]] = {input_node: []}
    indeg: dict[str, int] = {input_node: 0}
    for u, v in edges:
        succ.setdefault(u, []).append(v)
        succ.setdefault(v, [])
        indeg[v] = indeg.get(v, 0) + 1
        indeg.setdefault(u, 0)
    ready = [n for n, k in indeg.items() if k == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        n = heapq.heappop(ready)
        order.append(n)
        for w in succ[n]:
            indeg[w] -= 1
            if indeg[w] == 0:
                heapq.heappush(ready, w)
    if len(order) != len(indeg):
        raise InvariantError(f"the route from {input_node!r} has a cycle")
    return order


@attrs.frozen
class RouteView:
    """A path through the net that is not a task's route, evaluated like one (LASEM's
    configurations, a PAR supernet path): the edges `(src, dst, port)` from `task`'s input to
    `output`, computed with `task`'s parameter variants, masks and visible channel groups.

    A view is a value: making or evaluating one rewrites nothing and logs nothing. Its edges need
    not exist in the graph; its nodes must. Make one with `JointNet.view`.
    """

    task: str = attrs.field(validator=_name)
    edges: tuple[tuple[str, str, int], ...] = attrs.field(converter=lambda e: tuple(sorted(tuple(x) for x in e)))
    output: str = attrs.field(validator=_name)
    name: str = attrs.field(default="view", validator=_name)


def require(cond: bool, message: str) -> None:
    """Raise `InvariantError(message)` unless `cond` holds."""
    if not cond:
        raise InvariantError(message)
