"""`diff(a, b)`: what changed between two nets (and, given their stores, how far tensors moved).

The result is a `NetDiff`, an immutable value: ``bool(d)`` says whether anything differs,
``str(d)`` is a readable report and ``d.to_dict()`` plain JSON-ready data.

>>> from jointnet import backbones
>>> from jointnet.graph import add_task, bind, add_head, clone_node
>>> a = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
>>> a = add_head(bind(add_task(a, task="t2"), task="t2", to="t1"), task="t2", n_classes=2)
>>> b = clone_node(a, node="fc1", task="t2")
>>> d = diff(a, b)
>>> list(d.nodes_added), d.ownership["fc1"], d.params_added["t2"]
(['fc1.t2'], (('t1', 't2'), ('t1',)), 40)
>>> bool(diff(a, a))
False
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch

from jointnet.graph.frozen import FrozenDict, freeze
from jointnet.graph.net import JointNet, NodePolicy
from jointnet.persistence.views import call_text, param_counts, plain

__all__ = ["diff", "NetDiff", "NodeChange", "TensorMove"]


@attrs.frozen
class TensorMove:
    """How far one tensor moved between two stores: L2 norm and max abs of ``b - a``."""

    l2: float
    max_abs: float
    numel: int

    @property
    def moved(self) -> bool:
        return not (self.l2 == 0.0)  # NaN counts as moved


@attrs.frozen
class NodeChange:
    """What changed on a node present in both nets.

    spec: (before, after) short specs, or None. params_*: tensor keys of the node's parameters
    added, removed, or kept under the same key with another shape / owner / annotations.
    groups_*: channel groups (``"id (owner, +size)"``). masks_*: per-task masks
    (``"task:param (state)"``). annotations: (key, before, after). other: (field, before, after)
    for ``cloned_from``, ``created_by`` and input channel groups.
    """

    spec: tuple[str, str] | None = None
    params_added: tuple[str, ...] = ()
    params_removed: tuple[str, ...] = ()
    params_changed: tuple[str, ...] = ()
    groups_added: tuple[str, ...] = ()
    groups_removed: tuple[str, ...] = ()
    masks_added: tuple[str, ...] = ()
    masks_removed: tuple[str, ...] = ()
    masks_changed: tuple[str, ...] = ()
    annotations: tuple[tuple[str, Any, Any], ...] = ()
    other: tuple[tuple[str, Any, Any], ...] = ()

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in attrs.fields(type(self)))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in attrs.fields(type(self)):
            v = getattr(self, f.name)
            if not v:
                continue
            if f.name == "spec":
                out["spec"] = {"before": v[0], "after": v[1]}
            elif f.name in ("annotations", "other"):
                out[f.name] = [{"key": k, "before": plain(x), "after": plain(y)} for k, x, y in v]
            else:
                out[f.name] = list(v)
        return out

    def parts(self) -> list[str]:
        """One short phrase per change, for listings."""
        out = []
        if self.spec:
            out.append(f"spec {self.spec[0]} -> {self.spec[1]}")
        for name, sign in (("params_added", "+"), ("params_removed", "-"), ("params_changed", "~")):
            v = getattr(self, name)
            if v:
                out.append(f"{sign}params {', '.join(v)}")
        for name, sign in (("groups_added", "+"), ("groups_removed", "-")):
            v = getattr(self, name)
            if v:
                out.append(f"{sign}groups {', '.join(v)}")
        for name, sign in (("masks_added", "+"), ("masks_removed", "-"), ("masks_changed", "~")):
            v = getattr(self, name)
            if v:
                out.append(f"{sign}masks {', '.join(v)}")
        for k, x, y in self.annotations:
            out.append(f"annotation {k}: {_short(x)} -> {_short(y)}")
        for k, x, y in self.other:
            out.append(f"{k}: {_short(x)} -> {_short(y)}")
        return out


def _short(value: Any, limit: int = 60) -> str:
    if value is None:
        return "-"
    s = repr(plain(value))
    return s if len(s) <= limit else s[: limit - 3] + "..."


@attrs.frozen
class NetDiff:
    """The differences between net `a` and net `b` (read every field as "from a to b").

    Fields:
        version_a, version_b: the two versions (informational).
        rewrites: the log records of `b` after the longest log prefix it shares with `a`, as
            ``name(kwargs)`` strings (informational: the rewrites that lead from a to b when b
            descends from a).
        tasks_added, tasks_removed: task names.
        tasks_changed: task -> ((field, before, after), ...) for ``input``, ``head``,
            ``added_at`` and ``annotations``.
        nodes_added, nodes_removed: node id -> FrozenDict(kind, spec, users, cloned_from,
            params) as it is in the net that has it.
        nodes_changed: node id -> `NodeChange`.
        edges_added, edges_removed: (src, dst) -> tasks routed on it.
        routes: (src, dst) -> (tasks added, tasks removed), for edges in both nets.
        ownership: node -> (users in a, users in b), for nodes in both whose users differ.
        policy: (task or None, node) -> (before, after), each a FrozenDict(frozen, lr_scale) or
            None for "no entry" (default policy).
        params_added: task -> change of the scalars the task owns (`param_counts` ``owned``;
            negative when it lost some), non-zero entries only.
        masks_added: task -> change of the task's mask scalars, non-zero entries only.
        params_delta: change of ``total``, ``shared``, ``unowned``, ``masks_total`` and
            ``buffers`` of `param_counts`, non-zero entries only.
        annotations: net-level annotations, ((key, before, after), ...).
        tensors: when both stores are given: tensor key -> `TensorMove`, for every tensor both
            nets reference and both stores hold with the same shape (moved or not).

    ``bool(d)`` is True when anything but the informational fields differs, or a tensor moved.
    """

    version_a: int
    version_b: int
    rewrites: tuple[str, ...] = ()
    tasks_added: tuple[str, ...] = ()
    tasks_removed: tuple[str, ...] = ()
    tasks_changed: FrozenDict = FrozenDict()
    nodes_added: FrozenDict = FrozenDict()
    nodes_removed: FrozenDict = FrozenDict()
    nodes_changed: FrozenDict = FrozenDict()
    edges_added: FrozenDict = FrozenDict()
    edges_removed: FrozenDict = FrozenDict()
    routes: FrozenDict = FrozenDict()
    ownership: FrozenDict = FrozenDict()
    policy: FrozenDict = FrozenDict()
    params_added: FrozenDict = FrozenDict()
    masks_added: FrozenDict = FrozenDict()
    params_delta: FrozenDict = FrozenDict()
    annotations: tuple = ()
    tensors: FrozenDict = FrozenDict()

    _INFO = ("version_a", "version_b", "rewrites", "tensors")

    @property
    def moved(self) -> FrozenDict:
        """The tensors that moved (non-zero difference)."""
        return FrozenDict({k: m for k, m in self.tensors.items() if m.moved})

    def __bool__(self) -> bool:
        for f in attrs.fields(type(self)):
            if f.name not in self._INFO and getattr(self, f.name):
                return True
        return bool(self.moved)

    # ---- plain data -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready data (edges and policy entries become lists of dicts)."""

        def edges(m):
            return [{"src": u, "dst": v, "tasks": list(t)} for (u, v), t in m.items()]

        return {
            "version_a": self.version_a,
            "version_b": self.version_b,
            "empty": not bool(self),
            "rewrites": list(self.rewrites),
            "tasks_added": list(self.tasks_added),
            "tasks_removed": list(self.tasks_removed),
            "tasks_changed": {
                t: [{"field": k, "before": plain(x), "after": plain(y)} for k, x, y in ch]
                for t, ch in self.tasks_changed.items()
            },
            "nodes_added": plain(self.nodes_added),
            "nodes_removed": plain(self.nodes_removed),
            "nodes_changed": {n: c.to_dict() for n, c in self.nodes_changed.items()},
            "edges_added": edges(self.edges_added),
            "edges_removed": edges(self.edges_removed),
            "routes": [
                {"src": u, "dst": v, "tasks_added": list(add), "tasks_removed": list(rem)}
                for (u, v), (add, rem) in self.routes.items()
            ],
            "ownership": {n: {"a": list(x), "b": list(y)} for n, (x, y) in self.ownership.items()},
            "policy": [
                {"task": t, "node": n, "before": plain(x), "after": plain(y)}
                for (t, n), (x, y) in self.policy.items()
            ],
            "params_added": dict(self.params_added),
            "masks_added": dict(self.masks_added),
            "params_delta": dict(self.params_delta),
            "annotations": [{"key": k, "before": plain(x), "after": plain(y)} for k, x, y in self.annotations],
            "tensors": {
                k: {"l2": _num(m.l2), "max_abs": _num(m.max_abs), "numel": m.numel}
                for k, m in self.tensors.items()
            },
        }

    # ---- text -----------------------------------------------------------------------------------

    def __str__(self) -> str:
        head = f"diff v{self.version_a} -> v{self.version_b}"
        lines = [head + ("" if self else ": no differences")]
        if self.rewrites:
            lines.append(f"rewrites ({len(self.rewrites)}):")
            lines += [f"  {r}" for r in self.rewrites]
        if self.tasks_added:
            lines.append("tasks added: " + ", ".join(self.tasks_added))
        if self.tasks_removed:
            lines.append("tasks removed: " + ", ".join(self.tasks_removed))
        if self.tasks_changed:
            lines.append("tasks changed:")
            for t, ch in self.tasks_changed.items():
                lines.append(f"  ~ {t}  " + "; ".join(f"{k}: {_short(x)} -> {_short(y)}" for k, x, y in ch))
        for title, sign, m in (("nodes added", "+", self.nodes_added), ("nodes removed", "-", self.nodes_removed)):
            if m:
                lines.append(f"{title}:")
                for n, info in m.items():
                    extra = f"  cloned_from={info['cloned_from']}" if info.get("cloned_from") else ""
                    lines.append(f"  {sign} {n}  {info['spec']}  users={_set(info['users'])}"
                                 f"  params={info['params']}{extra}")
        if self.nodes_changed:
            lines.append("nodes changed:")
            for n, ch in self.nodes_changed.items():
                lines.append(f"  ~ {n}  " + "; ".join(ch.parts()))
        for title, sign, m in (("edges added", "+", self.edges_added), ("edges removed", "-", self.edges_removed)):
            if m:
                lines.append(f"{title}:")
                lines += [f"  {sign} {u} -> {v}  {_set(t)}" for (u, v), t in m.items()]
        if self.routes:
            lines.append("route changes:")
            for (u, v), (add, rem) in self.routes.items():
                what = []
                if add:
                    what.append("+" + _set(add))
                if rem:
                    what.append("-" + _set(rem))
                lines.append(f"  ~ {u} -> {v}  {' '.join(what)}")
        if self.ownership:
            lines.append("ownership:")
            lines += [f"  {n}  {_set(x)} -> {_set(y)}" for n, (x, y) in self.ownership.items()]
        if self.policy:
            lines.append("policy:")
            for (t, n), (x, y) in self.policy.items():
                who = "all tasks" if t is None else t
                lines.append(f"  {n} [{who}]  {_policy(x)} -> {_policy(y)}")
        if self.params_added or self.params_delta or self.masks_added:
            parts = [f"{k} {v:+d}" for k, v in self.params_delta.items()]
            if self.params_added:
                parts.append("owned: " + ", ".join(f"{t} {v:+d}" for t, v in self.params_added.items()))
            if self.masks_added:
                parts.append("masks: " + ", ".join(f"{t} {v:+d}" for t, v in self.masks_added.items()))
            lines.append("parameters: " + "; ".join(parts))
        if self.annotations:
            lines.append("net annotations:")
            lines += [f"  {k}: {_short(x)} -> {_short(y)}" for k, x, y in self.annotations]
        if self.tensors:
            moved = self.moved
            lines.append(f"tensors: {len(moved)} of {len(self.tensors)} shared tensors moved")
            for k, m in sorted(moved.items(), key=lambda kv: -_sortable(kv[1].l2)):
                lines.append(f"  {k}  l2={m.l2:.6g}  max_abs={m.max_abs:.6g}")
        return "\n".join(lines)


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x


def _sortable(x: float) -> float:
    return math.inf if math.isnan(x) else x


def _set(tasks) -> str:
    return "{" + ",".join(tasks) + "}"


def _policy(p) -> str:
    if p is None:
        return "default"
    out = "frozen" if p["frozen"] else "trainable"
    if p["frozen"] and p.get("keep_owned"):
        out += " (own tensors train)"
    if p["lr_scale"] != 1.0:
        out += f", lr x{p['lr_scale']:g}"
    return out


# ---- computing a diff ---------------------------------------------------------------------------


def _users(net: JointNet, n: str) -> tuple[str, ...]:
    order = {t: i for i, t in enumerate(net.tasks)}
    return tuple(sorted(net.users(n), key=lambda t: (order.get(t, 1 << 30), t)))


def _node_info(net: JointNet, n: str, counts) -> FrozenDict:
    node = net.node(n)
    return FrozenDict(
        kind=node.kind,
        spec=node.spec.short(),
        users=_users(net, n),
        cloned_from=node.cloned_from,
        params=counts["by_node"].get(n, 0),
    )


def _group(g) -> str:
    return f"{g.id} ({g.owner}, +{g.size})"


def _mask(m) -> str:
    kind = "" if m.kind == "mask" else f"/{m.kind}"
    block = "" if m.block == (None, None) else f" {list(m.block)}"
    return f"{m.task}:{m.param}{kind}{block} ({m.state})"


def _ann_changes(a: FrozenDict, b: FrozenDict) -> tuple:
    out = []
    for k in list(a) + [k for k in b if k not in a]:
        x, y = a.get(k), b.get(k)
        if x != y:
            out.append((k, freeze(plain(x)), freeze(plain(y))))
    return tuple(out)


def _node_change(na, nb) -> NodeChange:
    spec = None
    if na.spec != nb.spec:
        sa, sb = na.spec.short(), nb.spec.short()
        spec = (sa, sb) if sa != sb else (repr(na.spec), repr(nb.spec))
    pa = {p.key: p for p in na.params}
    pb = {p.key: p for p in nb.params}
    ga = {g.id: g for g in na.out_groups}
    gb = {g.id: g for g in nb.out_groups}
    ma = {(m.task, m.param, m.kind, m.block): m for m in na.masks}
    mb = {(m.task, m.param, m.kind, m.block): m for m in nb.masks}
    other = []
    for field in ("cloned_from", "created_by"):
        x, y = getattr(na, field), getattr(nb, field)
        if x != y:
            other.append((field, x, y))
    if na.in_groups != nb.in_groups:
        other.append(("in_groups", tuple(_group(g) for g in na.in_groups), tuple(_group(g) for g in nb.in_groups)))
    return NodeChange(
        spec=spec,
        params_added=tuple(k for k in pb if k not in pa),
        params_removed=tuple(k for k in pa if k not in pb),
        params_changed=tuple(k for k in pa if k in pb and pa[k] != pb[k]),
        groups_added=tuple(_group(g) for i, g in gb.items() if i not in ga),
        groups_removed=tuple(_group(g) for i, g in ga.items() if i not in gb),
        masks_added=tuple(_mask(m) for k, m in mb.items() if k not in ma),
        masks_removed=tuple(_mask(m) for k, m in ma.items() if k not in mb),
        masks_changed=tuple(_mask(m) for k, m in mb.items() if k in ma and ma[k] != m),
        annotations=_ann_changes(na.annotations, nb.annotations),
        other=tuple(other),
    )


def _edge_map(net: JointNet) -> dict[tuple[str, str], tuple[str, ...]]:
    order = {t: i for i, t in enumerate(net.tasks)}
    return {
        (u, v): tuple(sorted(d["tasks"], key=lambda t: (order.get(t, 1 << 30), t)))
        for u, v, d in net.graph.edges(data=True)
    }


def _pol(p: NodePolicy | None):
    if p is None:
        return None
    return FrozenDict(frozen=p.frozen, lr_scale=p.lr_scale)


def _delta_map(a: dict, b: dict) -> FrozenDict:
    out = {}
    for k in list(a) + [k for k in b if k not in a]:
        dv = b.get(k, 0) - a.get(k, 0)
        if dv:
            out[k] = dv
    return FrozenDict(out)


def _tensor_moves(a: JointNet, b: JointNet, store_a, store_b) -> FrozenDict:
    keys_a = store_a.keys_of(a)
    keys_b = store_b.keys_of(b)
    out = {}
    for k in sorted(keys_a & keys_b):
        if k not in store_a or k not in store_b:
            continue
        ta = store_a[k].detach().to("cpu", torch.float64)
        tb = store_b[k].detach().to("cpu", torch.float64)
        if ta.shape != tb.shape:
            continue
        d = tb - ta
        l2 = float(torch.linalg.vector_norm(d)) if d.numel() else 0.0
        mx = float(d.abs().max()) if d.numel() else 0.0
        out[k] = TensorMove(l2, mx, int(d.numel()))
    return FrozenDict(out)


def diff(a: JointNet, b: JointNet, store_a=None, store_b=None) -> NetDiff:
    """The differences from `a` to `b` as a `NetDiff` (see its fields).

    With both `store_a` and `store_b`, also how far every tensor both nets reference and both
    stores hold moved (``tensors``); the stores may be the same object, and then only tensors the
    nets reference under different keys differ.
    """
    # rewrites of b after the common log prefix
    la, lb = list(a.log), list(b.log)
    common = 0
    while common < min(len(la), len(lb)) and la[common] == lb[common]:
        common += 1
    rewrites = tuple(call_text(r.name, r.kwargs) for r in lb[common:])

    tasks_added = tuple(t for t in b.tasks if t not in a.tasks)
    tasks_removed = tuple(t for t in a.tasks if t not in b.tasks)
    tasks_changed = {}
    for t in a.tasks:
        if t not in b.tasks:
            continue
        ia, ib = a.tasks[t], b.tasks[t]
        ch = [(f, getattr(ia, f), getattr(ib, f)) for f in ("input", "head", "added_at")
              if getattr(ia, f) != getattr(ib, f)]
        ch += [(f"annotations.{k}", x, y) for k, x, y in _ann_changes(ia.annotations, ib.annotations)]
        if ch:
            tasks_changed[t] = tuple(ch)

    ca, cb = param_counts(a), param_counts(b)
    nodes_a, nodes_b = set(a.nodes), set(b.nodes)
    nodes_added = {n: _node_info(b, n, cb) for n in b.nodes if n not in nodes_a}
    nodes_removed = {n: _node_info(a, n, ca) for n in a.nodes if n not in nodes_b}
    nodes_changed = {}
    ownership = {}
    for n in a.nodes:
        if n not in nodes_b:
            continue
        na, nb = a.node(n), b.node(n)
        if na != nb:
            ch = _node_change(na, nb)
            if ch:
                nodes_changed[n] = ch
        ua, ub = _users(a, n), _users(b, n)
        if set(ua) != set(ub):
            ownership[n] = (ua, ub)

    ea, eb = _edge_map(a), _edge_map(b)
    edges_added = {e: t for e, t in eb.items() if e not in ea}
    edges_removed = {e: t for e, t in ea.items() if e not in eb}
    routes = {}
    for e, ta in ea.items():
        if e in eb and set(ta) != set(eb[e]):
            tb = eb[e]
            routes[e] = (tuple(t for t in tb if t not in ta), tuple(t for t in ta if t not in tb))

    policy = {}
    for key in list(a.policy) + [k for k in b.policy if k not in a.policy]:
        x, y = a.policy.get(key), b.policy.get(key)
        if x != y:
            policy[key] = (_pol(x), _pol(y))

    delta = {}
    for k in ("total", "shared", "unowned", "masks_total", "buffers"):
        if cb[k] != ca[k]:
            delta[k] = cb[k] - ca[k]

    tensors = FrozenDict()
    if store_a is not None and store_b is not None:
        tensors = _tensor_moves(a, b, store_a, store_b)

    return NetDiff(
        version_a=a.version,
        version_b=b.version,
        rewrites=rewrites,
        tasks_added=tasks_added,
        tasks_removed=tasks_removed,
        tasks_changed=FrozenDict(tasks_changed),
        nodes_added=FrozenDict(nodes_added),
        nodes_removed=FrozenDict(nodes_removed),
        nodes_changed=FrozenDict(nodes_changed),
        edges_added=FrozenDict(edges_added),
        edges_removed=FrozenDict(edges_removed),
        routes=FrozenDict(routes),
        ownership=FrozenDict(ownership),
        policy=FrozenDict(policy),
        params_added=_delta_map(ca["owned"], cb["owned"]),
        masks_added=_delta_map(ca["masks"], cb["masks"]),
        params_delta=FrozenDict(delta),
        annotations=_ann_changes(a.annotations, b.annotations),
        tensors=tensors,
    )
