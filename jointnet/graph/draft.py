"""Drafts and the rewrite registry: `@rewrite` turns an edit of a `Draft` into a pure, logged
`JointNet` function; `replay` applies a log.

A rewrite is called as ``f(net, **kwargs)`` and returns a new net whose version is one higher and
whose log ends with ``Record(name, kwargs)``; the input net is never touched. A rewrite that
changes nothing returns its input unchanged (same object, not logged). `replay(log)` applies a
log's records, by name, from the empty net.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterable
from typing import Any

import networkx as nx

from jointnet.errors import InvariantError, RewriteError, SpecError
from jointnet.graph.frozen import FrozenDict, freeze, thaw
from jointnet.graph.layers import Layer, infer_spec
from jointnet.graph.names import CHARSET, MAX_NAME, check_name, is_name
from jointnet.graph.index import node_users
from jointnet.graph.net import Init, JointNet, Node, Param, Record, TaskInfo

__all__ = ["Draft", "rewrite", "REWRITES", "replay", "apply"]

REWRITES: dict[str, Callable[..., JointNet]] = {}

_NO_CHANGE = object()


class Draft:
    """A mutable working copy of a net, edited by one rewrite and then frozen into the next net.

    Rewrite bodies only read and write the draft; helpers here keep edge routes, task registry,
    policy and annotations consistent and raise `RewriteError`s that name the call.
    """

    def __init__(self, net: JointNet, name: str, kwargs: dict[str, Any]):
        self.base = net
        self.name = name
        self.kwargs = kwargs
        self.g: nx.DiGraph = net.graph  # read-only until the first edit (see `_writable`)
        self._copied = False
        self.ix = net._index().copy()
        self.tasks: dict = net.tasks.to_dict()
        self.policy: dict = net.policy.to_dict()
        self.annotations: dict = net.annotations.to_dict()
        self.version = net.version + 1  # the version this draft will become
        self._keys: set[str] = set()  # keys made by this draft
        self._tag: str | None = None
        self._net: JointNet | None = None
        self._routed: set[tuple[str, str]] = set()  # (node, task) pairs this draft routed
        self._own_succ: set[str] = set()  # nodes whose adjacency maps this draft copied
        self._own_pred: set[str] = set()

    # ---- errors -------------------------------------------------------------------------------

    def error(self, message: str) -> RewriteError:
        return RewriteError(message, rewrite=self.name, kwargs=self.kwargs, version=self.base.version)

    def view(self) -> JointNet:
        """The draft's current state as a (scratch) net, for route and visibility queries; it
        shares the draft's graph and index (no copy), and is made again after every edit."""
        if self._net is None:
            self._net = JointNet(
                self.g,
                tasks=FrozenDict.wrap(self.tasks),
                policy=FrozenDict.wrap(self.policy),
                version=self.version,
            )
            self._net._cache["index"] = self.ix
        return self._net

    def _touch(self) -> None:
        self._net = None

    # ---- lookups with clear errors ------------------------------------------------------------

    def node(self, node_id: str) -> Node:
        if node_id not in self.g:
            raise self.error(f"no node {node_id!r}; nodes are {_listing(self.g._node)}")
        return self.g._node[node_id]["n"]

    def task(self, task: str):
        if task not in self.tasks:
            known = ", ".join(self.tasks) or "none"
            raise self.error(f"no task {task!r}; tasks are {known}")
        return self.tasks[task]

    def route(self, task: str) -> list[str]:
        return self.view().route(task)

    def require_on_route(self, task: str, node_id: str) -> None:
        self.node(node_id)
        self.task(task)
        if node_id not in self.route(task):
            raise self.error(f"task {task!r} does not route through {node_id!r}")

    # ---- edits --------------------------------------------------------------------------------
    #
    # The draft's graph shares every per-node map with the base net's (frozen) graph; an edit
    # copies the maps it changes first, so the base stays as it was and a rewrite costs what it
    # changes. Every edit goes through these methods, which also keep the route index current.

    def _writable(self) -> nx.DiGraph:
        """The draft's own graph, made (sharing the base's per-node maps) on the first edit."""
        if not self._copied:
            self.g = _graph_copy(self.g)
            self._copied = True
            self._touch()
        return self.g

    def _succ(self, u: str) -> dict:
        if u not in self._own_succ:
            self.g._succ[u] = dict(self.g._succ[u])
            self._own_succ.add(u)
        return self.g._succ[u]

    def _pred(self, v: str) -> dict:
        if v not in self._own_pred:
            self.g._pred[v] = dict(self.g._pred[v])
            self._own_pred.add(v)
        return self.g._pred[v]

    def _set_edge(self, u: str, v: str, data: dict | None) -> None:
        self._writable()
        if data is None:
            del self._succ(u)[v]
            del self._pred(v)[u]
        else:
            self._succ(u)[v] = data
            self._pred(v)[u] = data

    def set_node(self, node: Node) -> None:
        """Add `node`, or replace the node with its id (routes stay as they are)."""
        self._writable()
        n = node.id
        if n in self.g._node:
            self.ix.invalidate(node_users(self.g, n, self.tasks))
        else:
            self.g._succ[n] = {}
            self.g._pred[n] = {}
            self._own_succ.add(n)
            self._own_pred.add(n)
            if node.kind == "Input":
                self.ix.add_input(n)
        self.g._node[n] = {"n": node}
        self._touch()

    def add_task(self, info: TaskInfo) -> None:
        self.tasks[info.name] = info
        self.ix.add_task(info.name)
        self._touch()

    def drop_task(self, task: str) -> None:
        """Unregister `task` (its edges must be unrouted first)."""
        del self.tasks[task]
        self.ix.remove_task(task)
        self._touch()

    def remove_node(self, node_id: str) -> None:
        """Remove a node that no edge touches any more."""
        self._writable()
        if self.g._succ[node_id] or self.g._pred[node_id]:
            raise self.error(f"node {node_id!r} still has edges")  # pragma: no cover - internal misuse
        del self.g._node[node_id], self.g._succ[node_id], self.g._pred[node_id]
        self.ix.remove_node(node_id)
        self.policy = {k: v for k, v in self.policy.items() if k[1] != node_id}
        self._touch()

    def route_edge(self, u: str, v: str, task: str, port: int = 0) -> None:
        """Add `task` to the edge u -> v (creating it with `port`)."""
        d = self.g._succ[u].get(v)
        if d is not None:
            if d["port"] != port:
                raise self.error(f"edge {u!r} -> {v!r} already feeds port {d['port']}, not {port}")
            self._set_edge(u, v, {"tasks": d["tasks"] | {task}, "port": port})
        else:
            self._set_edge(u, v, {"tasks": frozenset({task}), "port": port})
        self.ix.route_edge(u, v, task, port)
        self._routed.add((v, task))
        self._touch()

    def unroute_edge(self, u: str, v: str, task: str) -> int:
        """Remove `task` from the edge u -> v (deleting it when no task is left); returns its port."""
        d = self.g._succ[u][v]
        rest = d["tasks"] - {task}
        self._set_edge(u, v, {"tasks": rest, "port": d["port"]} if rest else None)
        self.ix.unroute_edge(u, v, task)
        self._touch()
        return d["port"]

    def reaches(self, src: str, targets: set[str]) -> bool:
        """Whether a path of the draft's graph leads from `src` to one of `targets`."""
        seen, stack = {src}, [src]
        while stack:
            for w in self.g._succ[stack.pop()]:
                if w in targets:
                    return True
                if w not in seen:
                    seen.add(w)
                    stack.append(w)
        return False

    def fresh_id(self, base: str) -> str:
        """`base` if it is free, else ``base.2``, ``base.3``, ...; a valid name or a RewriteError."""
        out = base
        i = 2
        while out in self.g:
            out = f"{base}.{i}"
            i += 1
        if not is_name(out):
            raise self.error(f"the new node id {out!r} is not a valid name (1-{MAX_NAME} characters "
                             f"from {CHARSET}); pass new_id=")
        return out

    def fresh_key(self, node_id: str, name: str) -> str:
        """A parameter key that no other version of this lineage gives another meaning.

        Keys end in the new net's lineage tag, which no earlier version has, so only keys made by
        this draft can collide (two blocks of one parameter): those get ``.2``, ``.3``, ...
        """
        from jointnet.graph.net import _lineage

        # Frozen kwargs, as in the log record: a replay passes thawed lists where the caller may
        # have passed tuples, and both must give the same keys.
        if self._tag is None:  # the new net's lineage, computed once per draft
            self._tag = _lineage(self.base.lineage, Record(self.name, FrozenDict(freeze(self.kwargs))))
        key = f"{node_id}.{name}@{self._tag}"
        i = 2
        out = key
        while out in self._keys:
            out = f"{key}.{i}"
            i += 1
        self._keys.add(out)
        return out

    # ---- checks shared by the primitives -----------------------------------------------------

    def check_task(self, task: str) -> dict[str, tuple[int, ...]]:
        """Shape-check `task`'s route on the draft, its masks included (a reroute can hide channels
        a mask covers); a mismatch becomes a RewriteError. Returns the route's shapes."""
        from jointnet.graph.shapes import task_shapes

        view = self.view()
        try:
            shapes = task_shapes(view, task)
        except InvariantError as e:
            raise self.error(str(e)) from None
        for n in view.route(task):
            for m in view.node(n).masks:
                if m.task == task:
                    o, i = m.block
                    if (o is not None and o not in view.visible_groups(task, n, "out")) or (
                            i is not None and i not in view.visible_groups(task, n, "in")):
                        raise self.error(f"task {task!r}'s {m.kind} mask on {n!r}.{m.param} covers block "
                                         f"{m.block}, which it would not see; release the mask first")
        return shapes

    def require_open(self, task: str) -> TaskInfo:
        info = self.task(task)
        if info.head is not None:
            raise self.error(f"task {task!r} already has its head {info.head!r}; its route is closed")
        return info

    def new_node_id(self, node: str) -> str:
        try:
            check_name(node, "a node id")
        except SpecError as e:
            raise self.error(str(e)) from None
        if node in self.g:
            raise self.error(f"node {node!r} already exists")
        return node

    def node_list(self, nodes: Any, what: str = "nodes") -> list[str]:
        """`nodes` (one id or a non-empty list of ids of existing nodes) as a list."""
        if isinstance(nodes, str):
            return [nodes]
        if not isinstance(nodes, (list, tuple)) or not nodes:
            raise self.error(f"{what} must be a node id or a non-empty list of them (got {nodes!r})")
        for n in nodes:
            self.node(n)
        return list(nodes)

    def layer(self, spec: Any, in_shapes: list[tuple[int, ...]]) -> Layer:
        """A full layer spec from `spec` (a spec, or a dict whose input width is inferred)."""
        try:
            return infer_spec(spec, in_shapes)
        except SpecError as e:
            raise self.error(str(e)) from None

    def fresh_params(self, node_id: str, spec: Layer) -> tuple[Param, ...]:
        """Freshly initialised parameters for every tensor `spec` calls for."""
        return tuple(
            Param(name, self.fresh_key(node_id, name), info.shape, Init.fresh(info.init, info.fan_in),
                  buffer=info.buffer)
            for name, info in spec.params().items()
            if not info.per_task  # made per task when a task is routed through the node
        )

    def finish(self) -> JointNet:
        from jointnet.graph.ownership import per_task_params

        for n, t in sorted(self._routed):
            if n in self.g._node and t in self.tasks and any(i.per_task for i in self.node(n).spec.params().values()):
                per_task_params(self, n, t)
        record = Record(self.name, FrozenDict(freeze(self.kwargs)))
        # The draft is done with its maps: the new net takes them without a copy.
        return self.base.bump(
            self.g,
            FrozenDict.wrap(self.tasks),
            FrozenDict.wrap(self.policy),
            FrozenDict.wrap(self.annotations),
            record,
            index=self.ix,
        )


def _graph_copy(graph: nx.DiGraph) -> nx.DiGraph:
    """A new graph sharing `graph`'s per-node maps (copied by the Draft before it writes one)."""
    g = nx.DiGraph()
    g.graph = graph.graph
    g._node = dict(graph._node)
    g._succ = g._adj = dict(graph._succ)
    g._pred = dict(graph._pred)
    return g


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _listing(names: Iterable[str], limit: int = 12) -> str:
    names = sorted(names)
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def rewrite(fn: Callable[..., Any] | None = None, *, recorded_if_set: tuple[str, ...] = ()) -> Any:
    """Register `fn(draft, /, **kwargs)` as the pure rewrite ``fn.__name__(net, /, **kwargs)``.

    `fn` edits the draft in place; returning `NO_CHANGE` means the call is a no-op and the
    input net is returned as is. The log record holds every argument, defaults included, except
    those named in `recorded_if_set` while they equal their default: arguments added to a rewrite
    after nets were built with it, so those nets' records, lineages and parameter keys (hence
    their initial values) stay what they were.
    """
    if fn is None:
        return functools.partial(rewrite, recorded_if_set=tuple(recorded_if_set))
    name = fn.__name__
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[1:]
    allowed = {p.name for p in params}
    required = {p.name for p in params if p.default is inspect.Parameter.empty}
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}

    @functools.wraps(fn)
    def wrapper(net: JointNet, /, *args: Any, **kwargs: Any) -> JointNet:
        if not isinstance(net, JointNet):
            raise RewriteError(f"expects a JointNet as first argument, got {type(net).__name__}",
                               rewrite=name, kwargs=kwargs)
        if args:
            raise RewriteError(f"arguments after the net are keyword-only; got {len(args)} positional "
                               f"argument(s) {_shown(args)}; call {name}(net, {', '.join(f'{a}=...' for a in sorted(required))})",
                               rewrite=name, kwargs=kwargs, version=net.version)
        unknown = set(kwargs) - allowed
        missing = required - set(kwargs)
        if unknown or missing:
            what = []
            if unknown:
                what.append(f"unknown argument(s) {sorted(unknown)}")
            if missing:
                what.append(f"missing argument(s) {sorted(missing)}")
            raise RewriteError("; ".join(what) + f"; it takes {sorted(allowed)}", rewrite=name,
                               kwargs=kwargs, version=net.version)
        full = {**defaults, **kwargs}
        full = {k: full[k] for k in [p.name for p in params]}
        recorded = {k: v for k, v in full.items() if not (k in recorded_if_set and v == defaults.get(k))}
        draft = Draft(net, name, recorded)
        try:
            if fn(draft, **full) is _NO_CHANGE:
                return net
        except SpecError as e:  # a value the net's own validators refuse (name, size, number)
            raise draft.error(str(e)) from None
        out = draft.finish()
        if os.environ.get("JOINTNET_CHECK"):
            from jointnet.graph.check import check

            check(out)
        return out

    wrapper.__signature__ = sig.replace(parameters=[
        inspect.Parameter("net", inspect.Parameter.POSITIONAL_ONLY), *params
    ])
    wrapper.rewrite_name = name
    REWRITES[name] = wrapper
    return wrapper


NO_CHANGE = _NO_CHANGE


def apply(net: JointNet, name: str, **kwargs: Any) -> JointNet:
    """Apply the registered rewrite `name` to `net`."""
    if name not in REWRITES:
        raise RewriteError(f"no rewrite named {name!r}; known: {_listing(REWRITES)}", rewrite=name,
                           kwargs=kwargs, version=net.version)
    return REWRITES[name](net, **kwargs)


def replay(records: Iterable[Record], net: JointNet | None = None) -> JointNet:
    """Apply `records` in order, starting from `net` (default: the empty net).

    >>> from jointnet import backbones
    >>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
    >>> replay(net.log) == net
    True
    """
    import jointnet.graph  # noqa: F401  (registers the primitives)

    out = JointNet.empty() if net is None else net
    for rec in records:
        out = apply(out, rec.name, **{k: thaw(v) for k, v in rec.kwargs.items()})
    return out
