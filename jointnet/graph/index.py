"""The route index of a net, kept up to date edit by edit so rewrites cost what they change.

For every task, a `TaskRoute`: the edges routed for it, per node the (port, source) pairs that
feed the node on its route, and what was derived from the route (topological order, channel
groups, shapes), dropped when an edit touches the task. Plus the net's Input nodes.

A `Draft` works on a copy of its base net's index: one map of tasks is copied (a C-level copy
of pointers), a task's `TaskRoute` only when an edit changes that task, so a rewrite never walks
the whole graph. Nets that were not built by rewrites (loaded, or made by hand) build their index
from the graph on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import networkx as nx

__all__ = ["RouteIndex", "TaskRoute", "node_users"]


class TaskRoute:
    """One task's route: ``edges`` {(src, dst): port} in routing order, ``ins`` {dst: ((port,
    src), ...)} sorted by port, and ``derived`` {kind: value} computed from them.

    Shared between nets until one of them changes the task; then that net gets its own copy.
    """

    __slots__ = ("edges", "ins", "derived")

    def __init__(self, edges: dict, ins: dict, derived: dict):
        self.edges = edges
        self.ins = ins
        self.derived = derived


class RouteIndex:
    """task -> `TaskRoute`, and the net's Input nodes."""

    __slots__ = ("routes", "inputs", "_own")

    def __init__(self, routes: dict, inputs: tuple):
        self.routes = routes
        self.inputs = inputs  # the Input nodes, in the order they were added
        self._own: set[str] = set()  # tasks whose TaskRoute this copy may mutate

    @classmethod
    def build(cls, graph: nx.DiGraph, tasks: dict[str, str]) -> "RouteIndex":
        """The index of `graph`, whose tasks read the inputs `tasks` (task -> input node)."""
        routes = {t: TaskRoute({}, {}, {}) for t in tasks}
        ins: dict[str, dict[str, list]] = {t: {} for t in tasks}
        for u, nbrs in graph._succ.items():
            for v, d in nbrs.items():
                for t in d["tasks"]:
                    if t not in routes:  # an edge routed for an unregistered task (check says so)
                        routes[t] = TaskRoute({}, {}, {})
                        ins[t] = {}
                    routes[t].edges[(u, v)] = d["port"]
                    ins[t].setdefault(v, []).append((d["port"], u))
        for t, r in routes.items():
            r.ins = {v: tuple(sorted(p)) for v, p in ins[t].items()}
        inputs = tuple(n for n, d in graph._node.items() if d["n"].kind == "Input")
        return cls(routes, inputs)

    def copy(self) -> "RouteIndex":
        """A copy to edit: the map of tasks copied, each TaskRoute shared until written."""
        return RouteIndex(dict(self.routes), self.inputs)

    # ---- queries ---------------------------------------------------------------------------------

    def edges(self, task: str) -> dict:
        r = self.routes.get(task)
        return r.edges if r is not None else {}

    def ins(self, task: str) -> dict:
        r = self.routes.get(task)
        return r.ins if r is not None else {}

    def cached(self, kind: str, task: str, make) -> Any:
        """The value `kind` derived from `task`'s route, computed by `make()` on first use.

        The derived map is replaced, never changed, so copies of the index stay apart.
        """
        r = self.routes[task]
        if kind in r.derived:
            return r.derived[kind]
        value = make()
        r.derived = {**r.derived, kind: value}
        return value

    # ---- edits (a Draft's copy only) ---------------------------------------------------------------

    def _mine(self, task: str) -> TaskRoute:
        r = self.routes[task]
        if task not in self._own:
            r = self.routes[task] = TaskRoute(dict(r.edges), dict(r.ins), {})
            self._own.add(task)
        return r

    def add_task(self, task: str) -> None:
        self.routes[task] = TaskRoute({}, {}, {})
        self._own.add(task)

    def remove_task(self, task: str) -> None:
        self.routes.pop(task, None)
        self._own.discard(task)

    def route_edge(self, u: str, v: str, task: str, port: int) -> None:
        r = self._mine(task)
        if (u, v) in r.edges:
            return
        r.edges[(u, v)] = port
        r.ins[v] = tuple(sorted(r.ins.get(v, ()) + ((port, u),)))
        r.derived = {}

    def unroute_edge(self, u: str, v: str, task: str) -> None:
        r = self._mine(task)
        r.edges.pop((u, v), None)
        rest = tuple(p for p in r.ins.get(v, ()) if p[1] != u)
        if rest:
            r.ins[v] = rest
        else:
            r.ins.pop(v, None)
        r.derived = {}

    def add_input(self, node: str) -> None:
        self.inputs = self.inputs + (node,)

    def remove_node(self, node: str) -> None:
        if node in self.inputs:
            self.inputs = tuple(n for n in self.inputs if n != node)

    def invalidate(self, tasks) -> None:
        """Forget what was derived from the routes of `tasks` (a node on them changed)."""
        for t in tasks:
            r = self.routes.get(t)
            if r is not None and r.derived:
                self.routes[t] = TaskRoute(r.edges, r.ins, {})
                # r's edges/ins stay shared: this copy does not own them unless it did before


def node_users(graph: nx.DiGraph, node: str, tasks: Mapping[str, Any]) -> frozenset[str]:
    """The tasks routed through `node`: those on its edges, and (for an Input node) those of
    `tasks` (name -> TaskInfo) that read it."""
    users: set[str] = set()
    for d in graph._succ[node].values():
        users |= d["tasks"]
    for d in graph._pred[node].values():
        users |= d["tasks"]
    if graph._node[node]["n"].kind == "Input":
        users.update(t for t, info in tasks.items() if info.input == node)
    return frozenset(users)
