"""Read-only views of a net as plain data: parameter counts, a summary, the history, sharing.

Every function here returns plain Python values (dicts, lists, str, int, float, bool, None) that
`json.dumps` accepts. Nothing prints: the CLI (`jointnet.cli`) only formats these values.
`capacity` (the mask methods' view) lives in `jointnet.persistence.capacity`.

>>> from jointnet import backbones
>>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
>>> c = param_counts(net)
>>> c["total"], c["shared"], c["owned"]
(58, 0, {'t1': 58})
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from jointnet.errors import JointNetError
from jointnet.graph.net import JointNet, Node, Param, TensorRef
from jointnet.persistence._order import task_sorted as _task_sorted
from jointnet.persistence._order import topo as _topo
from jointnet.persistence.capacity import owner_split

__all__ = [
    "param_counts", "param_owner", "summary", "history", "sharing", "plain", "call_text", "SHARED",
    "method_views", "method_diffs", "task_runs", "usage", "task_params", "short_value",
    "call_summary",
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


# ---- condensed views: task sets as ranges, usage groups, parameters per task, capacity ---------


def task_runs(order, tasks, max_runs: int | None = None) -> list[str]:
    """`tasks` (any iterable of task names) as runs in task order: three or more consecutive
    tasks become ``first..last``; with `max_runs`, at most that many runs, then ``+N more``.
    `order` is the net (its task order) or the task names in order; names that are not in it
    come last, sorted.

    >>> task_runs(["t1", "t2", "t3", "t4"], ["t4", "t1", "t2", "t3"]), task_runs(["t1", "t2", "t3", "t4"], ["t1", "t2", "t4"])
    (['t1..t4'], ['t1', 't2', 't4'])
    >>> task_runs([f"t{i}" for i in range(1, 30)], [f"t{i}" for i in range(1, 30, 2)], max_runs=3)
    ['t1', 't3', 't5', '+12 more']
    """
    if isinstance(order, JointNet):
        net = order
        index = net._cache.get("task_order")
        if index is None:
            index = net._cache["task_order"] = {t: i for i, t in enumerate(net.tasks)}
        names = list(net.tasks)
    else:
        names = list(order)
        index = {t: i for i, t in enumerate(names)}
    known = sorted(index[t] for t in set(tasks) if t in index)
    runs: list[str] = []
    i = 0
    while i < len(known):
        j = i
        while j + 1 < len(known) and known[j + 1] == known[j] + 1:
            j += 1
        if j - i >= 2:
            runs.append(f"{names[known[i]]}..{names[known[j]]}")
        else:
            runs.extend(names[k] for k in known[i:j + 1])
        i = j + 1
    runs.extend(sorted(t for t in set(tasks) if t not in index))
    if max_runs is not None and len(runs) > max_runs:
        runs = runs[:max_runs] + [f"+{len(runs) - max_runs} more"]
    return runs


def usage(net: JointNet) -> list[dict[str, list[str]]]:
    """Every node grouped by the set of tasks that use it: one entry ``{"tasks": [...],
    "nodes": [...]}`` per distinct set (a single task, several, or none: ``[]`` for nodes no
    task routes through), in topological order of each group's first node. Unlike `sharing`,
    inputs and single-task nodes are included, so every node is in exactly one group.

    >>> from jointnet import backbones
    >>> from jointnet.graph import add_task, bind, add_head
    >>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
    >>> net = add_head(bind(add_task(net, task="t2"), task="t2", to="t1"), task="t2", n_classes=2)
    >>> [(g["tasks"], g["nodes"]) for g in usage(net)]
    [(['t1', 't2'], ['input', 'fc1', 'relu1']), (['t1'], ['head.t1']), (['t2'], ['head.t2'])]
    """
    users = net._users()
    groups: dict[frozenset, list[str]] = {}
    for n in _topo(net):
        groups.setdefault(users.get(n, frozenset()), []).append(n)
    return [{"tasks": _task_sorted(net, ts), "nodes": nodes} for ts, nodes in groups.items()]


def task_params(net: JointNet, store=None) -> dict[str, dict[str, Any]]:
    """What each task's forward pass uses, in parameter scalars (buffers and masks apart):
    ``owned`` (tensors `param_owner` gives the task), ``shared`` (tensors of nodes several tasks
    use, owned by none), ``reused`` (tensors owned by other tasks, e.g. a bound task reading
    layers another task owns), ``total`` (their sum: the task's network size) and ``from``
    (reused scalars by owning task). With `store`, a tensor with an `OwnerMap` (PackNet) is
    split entry by entry over the entries the task uses (its masks on the tensor; all of them
    without a mask): entries it owns are ``owned``, entries another task owns ``reused``, free
    entries ``shared``.

    >>> from jointnet import backbones
    >>> from jointnet.graph import add_task, bind, add_head
    >>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
    >>> net = add_head(bind(add_task(net, task="t2"), task="t2", to="t1"), task="t2", n_classes=2)
    >>> task_params(net)["t2"]
    {'owned': 18, 'shared': 40, 'reused': 0, 'total': 58, 'from': {}}
    """
    out: dict[str, dict[str, Any]] = {}
    for t in net.tasks:
        seen: set[str] = set()
        owned = shared = reused = 0
        by_owner: dict[str, int] = {}
        for n in net.route(t):
            users = net.users(n)
            for blocks in net.params_for(t, n).values():
                for row in blocks:
                    for p in row:
                        if p.buffer or p.key in seen:
                            continue
                        seen.add(p.key)
                        split = owner_split(net, store, p, net.node(n), t)
                        if split is not None:
                            for who, count in split.items():
                                if who == t:
                                    owned += count
                                elif who is None:
                                    shared += count
                                else:
                                    reused += count
                                    by_owner[who] = by_owner.get(who, 0) + count
                            continue
                        who = param_owner(net, n, p, users)
                        if who == t:
                            owned += p.numel
                        elif who == SHARED or who is None:
                            shared += p.numel
                        else:
                            reused += p.numel
                            by_owner[who] = by_owner.get(who, 0) + p.numel
        out[t] = {"owned": owned, "shared": shared, "reused": reused, "total": owned + shared + reused,
                  "from": {k: by_owner[k] for k in _task_sorted(net, by_owner)}}
    return out


# ---- the rewrite log, one short line per record -------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_.:+@/\-]{1,48}")


def short_value(value: Any, depth: int = 0) -> str:
    """A plain value (`plain` output) in a few words: floats to 4 significant digits, tensor
    references as ``tensor(key)`` without the lineage suffix, names bare, long strings cut,
    small lists and maps inline, larger ones as their first keys / items and a count.

    >>> short_value({"bound_to": "t1", "conflict": 0.123456, "slots": [1, 2], "a": 1, "b": 2})
    '{bound_to, conflict, slots, ... 5 keys}'
    >>> short_value({"tensor": "gate1.hat.cum_mask@106829814279"}), short_value([0.5, "t2"])
    ('tensor(gate1.hat.cum_mask)', '[0.5, t2]')
    """
    if isinstance(value, dict) and set(value) == {"tensor"} and isinstance(value["tensor"], str):
        return f"tensor({value['tensor'].split('@')[0]})"
    if value is None or isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        if _BARE.fullmatch(value):
            return value
        return repr(value) if len(value) <= 40 else repr(value[:37]) + "..."
    if isinstance(value, dict):
        if not value:
            return "{}"
        keys = [short_value(str(k), 2) for k in value]
        if depth == 0 and len(value) <= 3:
            inline = "{" + ", ".join(f"{k}: {short_value(v, depth + 1)}" for k, v in zip(keys, value.values())) + "}"
            if len(inline) <= 48:
                return inline
        if len(keys) <= 3 and sum(len(k) for k in keys) <= 40:
            return "{" + ", ".join(keys) + "}"
        return "{" + ", ".join(keys[:3]) + f", ... {len(keys)} keys}}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        if depth <= 1 and len(value) <= 4:
            inline = "[" + ", ".join(short_value(v, depth + 1) for v in value) + "]"
            if len(inline) <= 48:
                return inline
        if depth == 0 and all(isinstance(v, (str, int, float)) for v in value):
            head = ", ".join(short_value(v, 2) for v in value[:3])
            return f"[{head}, ... {len(value)} items]"
        return f"[{len(value)} items]"
    return short_value(repr(value), depth)


def call_summary(name: str, kwargs: Mapping[str, Any], width: int = 160) -> str:
    """A log record as one readable line: ``name(k=v, ...)`` with every value `short_value`
    and arguments left at None omitted; cut at `width` characters.

    >>> call_summary("annotate", {"key": "l2bg.provenance", "value": {"bound_to": "t1", "conflict": 0.2,
    ...     "prob": 0.7, "rank": 0, "slot": "fc1"}, "node": "fc1", "param": None, "task": None})
    'annotate(key=l2bg.provenance, value={bound_to, conflict, prob, ... 5 keys}, node=fc1)'
    """
    args = ", ".join(f"{k}={short_value(plain(v))}" for k, v in kwargs.items() if v is not None)
    text = f"{name}({args})"
    return text if len(text) <= width else text[: width - 4] + "...)"


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
