"""`capacity`: how much of each masked, owned or gated parameter tensor every task uses or owns,
and how much is free (the mask methods' view: PackNet, HAT, SPG, GROWN, L2BG's channel growth).

Plain data like every view (`jointnet.persistence.views` re-exports `capacity`); the CLI
(`jointnet inspect`) and the HTML report format it.
"""

from __future__ import annotations

from typing import Any

import torch

from jointnet.errors import JointNetError
from jointnet.graph.gates import gate_neighbours
from jointnet.graph.net import JointNet, Node, Param
from jointnet.persistence._order import task_sorted as _task_sorted
from jointnet.persistence._order import topo as _topo

__all__ = ["capacity", "owner_split"]


def owner_split(net: JointNet, store, p: Param, node: Node, task: str) -> dict[str | None, int] | None:
    """Scalars of `p` that `task` uses, by owning task (None: free), from its owner map and the
    task's masks on it (no mask: every entry); None without an owner map."""
    if store is None or p.owners is None or p.owners.key not in store:
        return None
    added = {info.added_at: t for t, info in net.tasks.items()}
    o = _expand(store[p.owners.key].detach().cpu(), p.owners.granularity, p.shape).long().clamp(min=0)
    masks = [m for m in node.masks if m.task == task and m.param == p.name and m.block == p.block]
    if masks:
        mult = torch.ones(p.shape)
        for m in masks:
            mult = mult * _expand(_mask_value(store, m).cpu(), m.granularity, p.shape)
        o = o[mult > 0.5]
    counts = torch.bincount(o.reshape(-1)).tolist() if o.numel() else []
    out: dict[str | None, int] = {}
    for value, c in enumerate(counts):
        if c:
            who = added.get(value) if value else None
            out[who] = out.get(who, 0) + c
    return out


def _expand(v, granularity: str, shape: tuple[int, ...]):
    """A mask or owner value at `granularity` broadcast to a parameter block of `shape`."""
    if granularity == "param":
        return v.reshape(shape)
    lead = 2 if granularity == "kernel" else 1
    return v.reshape(tuple(v.shape[:lead]) + (1,) * (len(shape) - lead)).expand(shape)


class _Unmeasured(Exception):
    """A tensor `capacity` cannot measure (listed under ``skipped``, not an error of the view)."""


def _mask_value(store, m):
    """The deterministic multiplier of mask `m` (committed: its bits), limited to `m.where`."""
    from jointnet.execution.masks import _DETERMINISTIC, deterministic

    for key in (m.key, m.where):
        if key is not None and key not in store:
            raise _Unmeasured(f"the store has no tensor {key!r}")
    if m.state != "committed" and m.transform not in _DETERMINISTIC:
        raise _Unmeasured(f"mask transform {m.transform!r} is not registered (import the method that defines it)")
    if m.state == "committed":
        v = store.unpacked(m.key, m.shape)
    else:
        v = deterministic(m.transform, store[m.key].detach().float())
    if m.where is not None:
        v = torch.where(store[m.where].bool(), v, torch.ones_like(v))
    return v


def _fractions(used: dict[str, Any], numel: int) -> dict[str, float]:
    return {t: float(u.sum()) / numel for t, u in used.items()}


def capacity(net: JointNet, store) -> dict[str, Any] | None:
    """How much of each masked, owned or gated parameter tensor every task uses or owns, and
    how much is free; None when the net has no masks, owner maps or task gates.

    Sources (each tensor says which in ``via``):

    - ``owners``: a parameter's `OwnerMap` (`track_owners`): ``owned[t]`` = fraction of entries
      whose owner is `t`; ``free`` = fraction owned by nobody (0);
    - ``masks``: the tasks' masks on a shared parameter block (`attach_mask`; several kinds
      multiply; a committed mask is its bits, a live one its deterministic transform):
      ``used[t]`` = fraction of entries whose multiplier is > 0.5; ``free`` (without an owner
      map) = fraction no task uses;
    - ``gates``: a `Gate` node with per-task embeddings (HAT): a unit is used by `t` when
      ``sigmoid(s * e_t) > 0.5`` at the task's inference gate scale; a weight of the parametric
      node before the gate is used by `t` when its output unit's gate and its input unit's gate
      (the nearest Gate before the node, if any) are both open (HAT's notion of a used weight).
      Gates themselves are listed under ``units``.

    Returns ``{"tensors": [{"node", "param", "key", "numel", "via", "used", "owned", "free"}],
    "units": [{"node", "units", "used", "free"}], "tasks": {t: {"used", "owned"}}, "free",
    "skipped": [{"node", "param", "why"}]}`` (``skipped``: tensors that cannot be measured, e.g.
    a mask whose transform no imported module registered):
    fractions in [0, 1]; ``tasks`` and the top ``free`` are averages over the tensors weighted
    by their sizes (``owned`` / ``used`` None where no tensor says). Needs the store (tensors):
    raises `JointNetError` when `store` is None and the net has any of the three.
    """
    from jointnet.execution.program import task_context

    tasks = list(net.tasks)
    added = {info.added_at: t for t, info in net.tasks.items()}
    gate_nodes = [n for n in _topo(net) if net.node(n).kind == "Gate"
                  and any(p.task is not None for p in net.node(n).params)]
    has_masks = any(net.node(n).masks for n in net.nodes)
    has_owners = any(p.owners is not None for n in net.nodes for p in net.node(n).params)
    if not (gate_nodes or has_masks or has_owners):
        return None
    if store is None:
        raise JointNetError("capacity needs the snapshot's tensors (it has none)")
    tensors: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    # gates: per task, the open units of every gate it has its own embedding on
    open_units: dict[str, dict[str, torch.Tensor]] = {}
    units = []
    for g in gate_nodes:
        node = net.node(g)
        per = {}
        for p in node.params:
            if p.task in net.tasks and p.name == "embedding" and p.key in store:
                s = task_context(net, p.task).gate_scale
                per[p.task] = (torch.sigmoid(s * store[p.key].detach().float()) > 0.5).cpu()
        open_units[g] = per
        n_units = node.spec.units
        any_used = torch.zeros(n_units, dtype=torch.bool)
        for u in per.values():
            any_used |= u
        units.append({"node": g, "units": n_units, "used": _fractions(per, n_units),
                      "free": 1.0 - float(any_used.sum()) / n_units})
    for n in _topo(net):
        node = net.node(n)
        if node.kind in ("Gate", "Head", "Input"):
            continue
        infos = node.spec.params()
        for p in node.params:
            if p.buffer or p.task is not None:
                continue
            masks = [m for m in node.masks if m.param == p.name and m.block == p.block and m.task in net.tasks]
            used: dict[str, torch.Tensor] = {}
            via = []
            if masks:
                via.append("masks")
                try:
                    for t in _task_sorted(net, {m.task for m in masks}):
                        mult = torch.ones(p.shape)
                        for m in masks:
                            if m.task == t:
                                mult = mult * _expand(_mask_value(store, m).cpu(), m.granularity, p.shape)
                        used[t] = mult > 0.5
                except _Unmeasured as e:
                    skipped.append({"node": n, "param": p.name, "why": str(e)})
                    continue
            elif gate_nodes and infos.get(p.name) is not None and infos[p.name].out_axis is not None:
                info = infos[p.name]
                for t in _task_sorted(net, net.users(n)):
                    pre, post, repeat = gate_neighbours(net, t, n, strict=False)
                    if post is None or t not in open_units.get(post, {}):
                        continue
                    a = open_units[post][t]
                    if a.numel() != p.shape[info.out_axis]:
                        continue
                    view = [1] * len(p.shape)
                    view[info.out_axis] = -1
                    u = a.reshape(view)
                    if info.in_axis is not None and pre is not None and t in open_units.get(pre, {}):
                        b = open_units[pre][t].repeat_interleave(repeat)
                        if b.numel() == p.shape[info.in_axis]:
                            view = [1] * len(p.shape)
                            view[info.in_axis] = -1
                            u = u & b.reshape(view)
                    used[t] = u.expand(p.shape)
                if used:
                    via.append("gates")
            owned: dict[str, float] = {}
            free = None
            if p.owners is not None and p.owners.key not in store:
                skipped.append({"node": n, "param": p.name, "why": f"the store has no tensor {p.owners.key!r}"})
                continue
            if p.owners is not None:
                via.append("owners")
                o = _expand(store[p.owners.key].detach().cpu(), p.owners.granularity, p.shape)
                counts = torch.bincount(o.reshape(-1).long().clamp(min=0))
                for value, c in enumerate(counts.tolist()):
                    if value and c and value in added:
                        owned[added[value]] = c / p.numel
                owned = {t: owned[t] for t in _task_sorted(net, owned)}
                free = (counts[0].item() if len(counts) else 0) / p.numel
            if not via:
                continue
            if free is None:
                any_used = torch.zeros(p.shape, dtype=torch.bool)
                for u in used.values():
                    any_used |= u
                free = 1.0 - float(any_used.sum()) / p.numel
            tensors.append({"node": n, "param": p.name, "key": p.key, "numel": p.numel, "via": "+".join(via),
                            "used": _fractions(used, p.numel), "owned": owned, "free": free})
    total = sum(e["numel"] for e in tensors)
    per_task: dict[str, dict[str, float | None]] = {}
    for t in tasks:
        row: dict[str, float | None] = {}
        for what in ("used", "owned"):
            says = [e for e in tensors if (e["used"] if what == "used" else "owners" in e["via"])]
            w = sum(e["numel"] for e in says)
            row[what] = sum(e[what].get(t, 0.0) * e["numel"] for e in says) / w if w else None
        per_task[t] = row
    return {
        "tensors": tensors,
        "units": units,
        "tasks": per_task,
        "free": sum(e["free"] * e["numel"] for e in tensors) / total if total else None,
        "skipped": skipped,
    }
