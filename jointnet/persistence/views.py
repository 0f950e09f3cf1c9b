"""Read-only views of a net as plain data: parameter counts, a summary, the history, sharing.

Every function here returns plain Python values (dicts, lists, str, int, float, bool, None) that
`json.dumps` accepts, except `sharing`, whose keys are task pairs. Nothing prints: the CLI
(`jointnet.cli`) only formats these values.

>>> from jointnet import backbones
>>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
>>> c = param_counts(net)
>>> c["total"], c["shared"], c["owned"]
(58, 0, {'t1': 58})
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import networkx as nx

from jointnet.errors import JointNetError
from jointnet.graph.net import JointNet, Node, Param, TensorRef

__all__ = [
    "param_counts", "param_owner", "summary", "history", "sharing", "plain", "call_text", "SHARED",
    "method_views", "method_diffs",
]

SHARED = "<shared>"
"""What `param_owner` returns for a tensor shared by several tasks."""


def plain(value: Any) -> Any:
    """`value` as JSON-ready data: mappings -> dicts (keys as str), tuples/sets -> lists,
    `TensorRef` -> ``{"tensor": key}``, attrs and other objects -> their repr.

    >>> from jointnet.graph.frozen import FrozenDict
    >>> plain(FrozenDict(a=(1, 2), b=TensorRef("k")))
    {'a': [1, 2], 'b': {'tensor': 'k'}}
    """
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, TensorRef):
        return {"tensor": value.key}
    if isinstance(value, Mapping):
        return {(k if isinstance(k, str) else str(k)): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(plain(v) for v in value)
    return repr(value)


def _py(value: Any) -> Any:
    """Plain data with lists as tuples, so that repr reads like the rewrite's call."""
    if isinstance(value, list):
        return tuple(_py(v) for v in value)
    if isinstance(value, dict):
        return {k: _py(v) for k, v in value.items()}
    return value


def call_text(name: str, kwargs: Mapping[str, Any]) -> str:
    """A log record as a call: ``name(k=v, ...)`` with plain values.

    >>> call_text("add_input", {"node": "input", "shape": [4]})
    "add_input(node='input', shape=(4,))"
    """
    args = ", ".join(f"{k}={_py(plain(v))!r}" for k, v in kwargs.items())
    return f"{name}({args})"


def _task_sorted(net: JointNet, tasks) -> list[str]:
    order = net._cache.get("task_order")
    if order is None:  # once per net: sorting users per node stays linear in nodes x users
        order = net._cache["task_order"] = {t: i for i, t in enumerate(net.tasks)}
    return sorted(tasks, key=lambda t: (order.get(t, 1 << 30), t))


def param_owner(net: JointNet, node_id: str, p: Param, users: frozenset[str] | None = None) -> str | None:
    """Who a parameter tensor of `node_id` belongs to, for counting.

    The task of a per-task variant (``p.task``), else its explicit owner (``p.owner``, e.g. the
    channels grown by `widen`), else the node's only user; `SHARED` when the node has several
    users; None when nobody live owns it (a node no task routes through, or an owner task that
    was removed).
    """
    t = p.task if p.task is not None else p.owner
    if t is None:
        if users is None:
            users = net.users(node_id)
        if len(users) > 1:
            return SHARED
        if len(users) == 1:
            (t,) = users
    return t if t in net.tasks else None


def param_counts(net: JointNet, store=None) -> dict[str, Any]:
    """Parameter counts of `net`, by owner. Counts are numbers of scalars (``Param.numel``).

    Definitions:

    - ``total``: every distinct trainable tensor of the net (non-buffer `Param` s of every node,
      each tensor key counted once). BatchNorm running statistics are buffers and are not
      parameters; they are counted in ``buffers``. Masks are counted apart, in ``masks``.
    - each tensor is attributed to exactly one of:

      - ``owned[t]``: the tensor is a per-task variant for `t` (``Param.task == t``), or is
        explicitly owned by `t` (``Param.owner == t``, e.g. channels `t` grew with `widen`),
        or has no explicit owner and sits on a node whose only user is `t`;
      - ``shared``: no explicit owner / per-task variant, on a node routed by more than one task;
      - ``unowned``: no live task owns it: its node is routed by no task (dead until `prune`)
        or its explicit owner is not a registered task.

      so ``total == shared + sum(owned.values()) + unowned`` always holds.
    - ``owned`` lists every registered task, in task order (0 when it owns nothing).
    - ``masks[t]``: scalars of the masks of task `t` (live and committed); ``masks_total`` is
      their sum.
    - ``buffers``: scalars of non-trainable tensors (BatchNorm running statistics).
    - ``by_node[n]``: the parameter scalars held by node `n` (non-buffer), so
      ``sum(by_node.values()) == total``.

    The store is not needed: shapes come from the net. When `store` is given, each tensor the
    store holds for the net is checked to have the shape the net says (a mismatch raises
    `JointNetError`); tensors it lacks are ignored (the net may not be realized yet).
    """
    owned = {t: 0 for t in net.tasks}
    shared = unowned = buffers = 0
    masks = {t: 0 for t in net.tasks}
    by_node: dict[str, int] = {}
    seen: set[str] = set()
    for n in net.nodes:
        node = net.node(n)
        users = net.users(n)
        by_node[n] = 0
        for p in node.params:
            if p.key in seen:
                continue
            seen.add(p.key)
            _check_store(store, p.key, p.shape)
            if p.buffer:
                buffers += p.numel
                continue
            by_node[n] += p.numel
            who = param_owner(net, n, p, users)
            if who == SHARED:
                shared += p.numel
            elif who is None:
                unowned += p.numel
            else:
                owned[who] += p.numel
        for m in node.masks:
            if m.key in seen:
                continue
            seen.add(m.key)
            _check_store(store, m.key, ((math.prod(m.shape) + 7) // 8,) if m.state == "committed" else m.shape)
            numel = 1
            for s in m.shape:
                numel *= s
            masks[m.task] = masks.get(m.task, 0) + numel
    total = sum(by_node.values())
    assert total == shared + unowned + sum(owned.values())
    return {
        "total": total,
        "shared": shared,
        "owned": owned,
        "unowned": unowned,
        "masks": masks,
        "masks_total": sum(masks.values()),
        "buffers": buffers,
        "by_node": by_node,
    }


def _check_store(store, key: str, shape: tuple[int, ...]) -> None:
    if store is None or key not in store:
        return
    have = tuple(store[key].shape)
    if have != tuple(shape):
        raise JointNetError(f"the store's tensor {key!r} has shape {have}; the net says {tuple(shape)}")


def _topo(net: JointNet) -> list[str]:
    return list(nx.lexicographical_topological_sort(net.graph))


def _node_entry(net: JointNet, n: str, counts: dict[str, Any]) -> dict[str, Any]:
    node: Node = net.node(n)
    policy = []
    for (t, m), pol in net.policy.items():
        if m != n:
            continue
        entry = {"task": t, "frozen": pol.frozen, "lr_scale": pol.lr_scale}
        if pol.params:  # per-parameter entries, when there are any
            entry["params"] = {
                name: {"frozen": pp.frozen, "lr_scale": pp.lr_scale,
                       "rules": [f"{r.kind}:{r.tensor or r.provider}/{r.apply}" for r in pp.rules]}
                for name, pp in pol.params.items()}
        policy.append(entry)
    return {
        "id": n,
        "kind": node.kind,
        "spec": node.spec.short(),
        "users": _task_sorted(net, net.users(n)),
        "params": counts["by_node"].get(n, 0),
        "cloned_from": node.cloned_from,
        "created_by": node.created_by,
        "groups": [
            {"id": g.id, "size": g.size, "owner": g.owner, "created_at": g.created_at}
            for g in node.out_groups
        ],
        "masks": [
            {"task": m.task, "param": m.param, "kind": m.kind, "block": list(m.block),
             "granularity": m.granularity, "transform": m.transform, "state": m.state,
             "shape": list(m.shape)}
            for m in node.masks
        ],
        "annotations": plain(node.annotations),
        "policy": policy,
    }


def summary(net: JointNet) -> dict[str, Any]:
    """The net as plain data: version, tasks, nodes (in topological order) and parameter counts.

    Keys: ``version``, ``lineage``, ``annotations``, ``tasks`` (list of dicts: ``name``,
    ``input``, ``head``, ``added_at``, ``route_length`` (nodes on the route, input and head
    included), ``annotations``), ``nodes`` (list of dicts: ``id``, ``kind``, ``spec`` (short),
    ``users``, ``params`` (scalars held), ``cloned_from``, ``created_by``, ``groups``, ``masks``,
    ``annotations``, ``policy`` (entries ``{"task", "frozen", "lr_scale"}``, task None meaning
    every task)), ``params`` (`param_counts`).

    >>> from jointnet import backbones
    >>> s = summary(backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2))
    >>> [n["id"] for n in s["nodes"]], s["tasks"][0]["route_length"]
    (['input', 'fc1', 'relu1', 'head.t1'], 4)
    """
    counts = param_counts(net)
    tasks = [
        {
            "name": t,
            "input": info.input,
            "head": info.head,
            "added_at": info.added_at,
            "route_length": len(net.route(t)),
            "annotations": plain(info.annotations),
        }
        for t, info in net.tasks.items()
    ]
    return {
        "version": net.version,
        "lineage": net.lineage,
        "annotations": plain(net.annotations),
        "tasks": tasks,
        "nodes": [_node_entry(net, n, counts) for n in _topo(net)],
        "params": counts,
    }


def history(net: JointNet) -> list[dict[str, Any]]:
    """The rewrite log: one dict per record, ``version`` (the version the record produced),
    ``name`` and ``kwargs`` (plain data).

    >>> from jointnet import backbones
    >>> history(backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2))[0]
    {'version': 1, 'name': 'add_input', 'kwargs': {'node': 'input', 'shape': [4]}}
    """
    first = net.version - len(net.log) + 1
    return [
        {"version": first + i, "name": rec.name, "kwargs": plain(rec.kwargs)}
        for i, rec in enumerate(net.log)
    ]


def sharing(net: JointNet) -> list[dict[str, list[str]]]:
    """The nodes several tasks route through, grouped by the set of tasks that use them.

    One entry ``{"tasks": [...], "nodes": [...]}`` per distinct set of two or more users, in
    topological order of the nodes (tasks in task order). Input nodes are left out (every task
    reading an input trivially shares it). Linear in nodes x users, never in task pairs.

    >>> from jointnet import backbones
    >>> from jointnet.graph import add_task, bind, add_head
    >>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
    >>> net = add_head(bind(add_task(net, task="t2"), task="t2", to="t1"), task="t2", n_classes=2)
    >>> sharing(net)
    [{'tasks': ['t1', 't2'], 'nodes': ['fc1', 'relu1']}]
    """
    users = net._users()
    groups: dict[frozenset, list[str]] = {}
    for n in _topo(net):
        if len(users[n]) >= 2 and net.node(n).kind != "Input":
            groups.setdefault(users[n], []).append(n)
    return [{"tasks": _task_sorted(net, ts), "nodes": nodes} for ts, nodes in groups.items()]


# ---- method views: plugins ----------------------------------------------------------------------

INSPECT_VIEWS = "jointnet.inspect"
DIFF_VIEWS = "jointnet.diff"


def _plugins(group: str) -> list:
    from importlib.metadata import entry_points

    out = []
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            out.append((ep.name, ep.load()))
        except Exception as e:  # a plugin that does not import: say so, do not fail the view
            out.append((ep.name, _broken(ep.value, e)))
    return out


def _broken(where: str, error: Exception):
    def view(*_args):
        return {"error": f"cannot load {where}: {type(error).__name__}: {error}"}
    return view


def method_views(net: JointNet, store=None) -> dict[str, Any]:
    """What each installed method view (the ``jointnet.inspect`` entry-point group) says of `net`:
    name -> plain data (a dict or list; a view returns None for a net it has nothing to say of).

    A method keeps its state in the net (annotations, masks, policy) and the store; its view turns
    that into what a reader wants (SPG's importance per node, GROWN's sizes, PAR's groups).
    """
    out = {}
    for name, fn in _plugins(INSPECT_VIEWS):
        data = fn(net, store)
        if data is not None:
            out[name] = plain(data)
    return out


def method_diffs(a: JointNet, b: JointNet, store_a=None, store_b=None) -> dict[str, Any]:
    """What each installed method diff (the ``jointnet.diff`` group) says changed from `a` to `b`."""
    out = {}
    for name, fn in _plugins(DIFF_VIEWS):
        data = fn(a, b, store_a, store_b)
        if data is not None:
            out[name] = plain(data)
    return out
