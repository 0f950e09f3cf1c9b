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
        self.g: nx.DiGraph = net.graph.copy()
        self.tasks: dict = dict(net.tasks)
        self.policy: dict = dict(net.policy)
        self.annotations: dict = dict(net.annotations)
        self.version = net.version + 1  # the version this draft will become
        self._keys: set[str] | None = None
        self._tag: str | None = None
        self._net: JointNet | None = None

    # ---- errors -------------------------------------------------------------------------------

    def error(self, message: str) -> RewriteError:
        return RewriteError(message, rewrite=self.name, kwargs=self.kwargs, version=self.base.version)

    def view(self) -> JointNet:
        """The draft's current state as a (scratch) net, for route and visibility queries."""
        if self._net is None:
            self._net = JointNet(
                nx.freeze(self.g.copy()),
                tasks=FrozenDict(self.tasks),
                policy=FrozenDict(self.policy),
                version=self.version,
            )
        return self._net

    def _touch(self) -> None:
        self._net = None

    # ---- lookups with clear errors ------------------------------------------------------------

    def node(self, node_id: str) -> Node:
        if node_id not in self.g:
            raise self.error(f"no node {node_id!r}; nodes are {_listing(self.g.nodes)}")
        return self.g.nodes[node_id]["n"]

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

    def set_node(self, node: Node) -> None:
        if node.id in self.g:
            self.g.nodes[node.id]["n"] = node
        else:
            self.g.add_node(node.id, n=node)
        self._keys = None
        self._touch()

    def remove_node(self, node_id: str) -> None:
        self.g.remove_node(node_id)
        self.policy = {k: v for k, v in self.policy.items() if k[1] != node_id}
        self._keys = None
        self._touch()

    def route_edge(self, u: str, v: str, task: str, port: int = 0) -> None:
        """Add `task` to the edge u -> v (creating it with `port`)."""
        if self.g.has_edge(u, v):
            d = self.g.edges[u, v]
            if d["port"] != port:
                raise self.error(f"edge {u!r} -> {v!r} already feeds port {d['port']}, not {port}")
            self.g.add_edge(u, v, tasks=d["tasks"] | {task}, port=port)
        else:
            self.g.add_edge(u, v, tasks=frozenset({task}), port=port)
        self._touch()

    def unroute_edge(self, u: str, v: str, task: str) -> int:
        """Remove `task` from the edge u -> v (deleting it when no task is left); returns its port."""
        d = self.g.edges[u, v]
        rest = d["tasks"] - {task}
        if rest:
            self.g.add_edge(u, v, tasks=rest, port=d["port"])
        else:
            self.g.remove_edge(u, v)
        self._touch()
        return d["port"]

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
        """A parameter key that no other version of this lineage gives another meaning."""
        from jointnet.graph.net import _lineage

        # Frozen kwargs, as in the log record: a replay passes thawed lists where the caller may
        # have passed tuples, and both must give the same keys.
        if self._tag is None:  # the new net's lineage, computed once per draft
            self._tag = _lineage(self.base.lineage, Record(self.name, FrozenDict(freeze(self.kwargs))))
        key = f"{node_id}.{name}@{self._tag}"
        if self._keys is None:
            self._keys = {p.key for _, d in self.g.nodes(data=True) for p in d["n"].params}
            self._keys |= {m.key for _, d in self.g.nodes(data=True) for m in d["n"].masks}
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
                    full = view.effective_spec(task, n).params()[m.param].shape
                    if any(a > b for a, b in zip(m.shape, full)):
                        raise self.error(f"task {task!r}'s mask on {n!r}.{m.param} covers {m.shape}, more "
                                         f"than the {full} it would see; release the mask first")
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
        )

    def finish(self) -> JointNet:
        record = Record(self.name, FrozenDict(freeze(self.kwargs)))
        return self.base.bump(
            self.g,
            FrozenDict(self.tasks),
            FrozenDict(self.policy),
            FrozenDict(self.annotations),
            record,
        )


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _listing(names: Iterable[str], limit: int = 12) -> str:
    names = sorted(names)
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def rewrite(fn: Callable[..., Any]) -> Callable[..., JointNet]:
    """Register `fn(draft, /, **kwargs)` as the pure rewrite ``fn.__name__(net, /, **kwargs)``.

    `fn` edits the draft in place; returning `NO_CHANGE` means the call is a no-op and the
    input net is returned as is.
    """
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
        draft = Draft(net, name, full)
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
