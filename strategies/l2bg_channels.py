"""Channel-level growth for L2BG (``granularity="channels"``; spec §2.4 "finer granularity",
§8 rewrite 7), built on the core's channel primitives: `widen` (channel groups owned by a task),
per-task masks with `where` and blocks (`attach_mask`, `commit_mask`, `release_mask`), gradient
rules, and node annotations. No new core rewrite was needed.

**Units.** Each slot's producer (its Conv2d / Linear node; a BatchNorm after it belongs to the
slot) has its base output channels cut into ``channel_groups`` contiguous *units*
(`channel_units`). A unit's conflict is the RSA of its channels' activations (the slot's
recorded output, ``record``) between the bound task's live net and ``G_t^⊥``; the nucleus runs
over every unit of every slot (unit names ``SLOT#J``).

**Growing a unit** ``(n, j)`` for task t bound to b makes t compute, for unit j of n, channels
of its own that start as a copy of what b computes there, while every other task is untouched:

1. `widen(node=n, k=|unit|, task=t)`: a channel group owned by t (successors gain input
   columns owned by t; tasks that exist now never see it);
2. the unit's current *provider* under b's view is masked off for t: the base channels of the
   unit (mask kind ``l2bg.replace`` over every base-row block of n and of its BatchNorm, limited
   by `where` to those channels) or, when b itself uses a group grown for that unit, that group
   (mask kind ``l2bg.hide``); masks are committed (packed bits, never trained);
3. with ``init="copy"`` the new group's rows (and the successors' new columns, the BatchNorm's
   entries and statistics) are copied from the provider's, so right after growing t computes
   exactly b's function (up to float summation order): the masked channels give 0 (an
   activation of 0 is 0: ReLU, max-pool, flatten; Sigmoid is refused) and the copy gives the
   values they had. ``init="fresh"`` keeps `widen`'s fresh values.

**Binding to a task of a channel-grown net.** Channel groups are visible to every task added
after them (the core's `widen` rule), so a new task t bound to b would also see groups that b
does not use. t first takes over b's *view*: every channel b has masked (its ``l2bg.replace``
channels, its ``l2bg.hide`` groups) and every group b cannot see are masked off for t too, so t
starts as exactly b's function, as a layer-level bind does (spec §2.3). The producer annotation
``l2bg.units`` maps each grown group to its unit, so a later task knows which group provides a
unit.

**Train policy.** Nodes t shares train at ``shared_lr_scale`` except t's own blocks (its
groups, its new input columns), which train at the full rate: the node's rate stays 1 and a
``multiply`` rule with ``apply="update"`` scales the steps of every block t does not own by
``shared_lr_scale`` (for SGD and Adam without weight decay this is the 0.1x learning rate of the
spec, block by block); ``shared_lr_scale=0`` freezes the shared blocks (`freeze` with
``keep_owned``).

Provenance: the task annotation ``l2bg`` lists ``units`` (per unit: slot, unit, channels,
conflict, probability, rank, in_nucleus, grown, provider) and ``grown`` (unit names); the grow
log entry's ``grow`` lists unit names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from jointnet.execution import run as execute
from jointnet.execution import task_context
from jointnet.execution.store import ParamStore
from jointnet.experiments.strategy import TaskRun, store_key
from jointnet.graph import (
    add_head, add_task, annotate, attach_mask, bind, commit_mask, freeze, release_mask, set_grad_rule, widen,
)
from jointnet.graph.frozen import thaw
from jointnet.graph.net import JointNet
from strategies.l2bg_decide import Choice, Situation, choose, rsa_argmin, rsa_sample
from strategies.l2bg_graph import PROV, Slot, log_entry, slot_conflicts, slot_outputs, task_slots
from strategies.l2bg_rsa import normalise, nucleus, ranking, rsa, task_conflict

__all__ = [
    "UNITS", "REPLACE", "HIDE", "channel_units", "unit_name", "replaced_rows", "hidden_groups", "provider",
    "unit_outputs", "unit_conflicts", "grow_channels", "bind_grow_channels",
]

UNITS = "l2bg.units"  # producer annotation: {group id: unit index} of the groups grown for units
REPLACE = "l2bg.replace"  # mask kind: base channels a task replaced by a group of its own
HIDE = "l2bg.hide"  # mask kind: channel groups a task does not use


def channel_units(width: int, groups: int) -> list[list[int]]:
    """`width` channels cut into `groups` contiguous units of near-equal size (the first
    ``width % groups`` one larger); at most `width` units.

    >>> channel_units(10, 4)
    [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    """
    if width < 1 or groups < 1:
        raise ValueError(f"need width >= 1 and groups >= 1 (got {width}, {groups})")
    g = min(groups, width)
    size, extra = divmod(width, g)
    out, start = [], 0
    for j in range(g):
        n = size + (1 if j < extra else 0)
        out.append(list(range(start, start + n)))
        start += n
    return out


def unit_name(slot: str, j: int) -> str:
    return f"{slot}#{j}"


# ---- a task's view of a producer ---------------------------------------------------------------


def replaced_rows(net: JointNet, store: ParamStore, task: str, node: str) -> set[int]:
    """Base output channels of `node` that `task` has masked off (``l2bg.replace``)."""
    m = net.node(node).mask(task, "weight", REPLACE, (None, None))
    if m is None or m.where is None:
        return set()
    return {int(i) for i in torch.nonzero(store[m.where].reshape(-1)).reshape(-1).tolist()}


def hidden_groups(net: JointNet, task: str, node: str) -> set[str]:
    """Channel groups of `node` that `task` has masked off (``l2bg.hide``)."""
    return {m.block[0] for m in net.node(node).masks if m.task == task and m.kind == HIDE and m.param == "weight"}


def _used_groups(net: JointNet, task: str, node: str) -> list[str]:
    hidden = hidden_groups(net, task, node)
    return [g.id for g in net.node(node).out_groups if net.group_visible(task, g) and g.id not in hidden]


def provider(net: JointNet, task: str, node: str, j: int) -> str | None:
    """The group that computes unit `j` of `node` for `task` (the last grown one it uses), or None
    when the unit's base channels do."""
    units = thaw(net.node(node).annotations.get(UNITS, {}))
    hits = [g for g in _used_groups(net, task, node) if units.get(g) == j]
    return hits[-1] if hits else None


def _positions(net: JointNet, task: str, node: str, units: list[list[int]]) -> list[list[int]]:
    """Where each unit's channels are in `task`'s output of `node` (base first, then visible groups)."""
    n = net.node(node)
    offset, where = n.base_width("out"), {}
    for g in n.out_groups:
        if net.group_visible(task, g):
            where[g.id] = list(range(offset, offset + g.size))
            offset += g.size
    out = []
    for j, chans in enumerate(units):
        g = provider(net, task, node, j)
        out.append(where[g] if g is not None else chans)
    return out


@torch.no_grad()
def unit_outputs(net: JointNet, store: ParamStore, task: str, x: torch.Tensor, slots: Sequence[Slot],
                 groups: int, record: str = "post") -> dict[str, torch.Tensor]:
    """The activations of every unit of every slot of `task` (``n x d`` each, by unit name): the
    slot's output (`record`) at the channels that compute the unit for `task`."""
    at = {s.name: (s.post if record == "post" else s.pre) for s in slots}
    ctx = task_context(net, task).with_training(False)
    acts = execute(net, store, x, task, capture=list(dict.fromkeys(at.values())), context=ctx).activations
    out = {}
    for s in slots:
        a = acts[(task, at[s.name])]
        producer = s.nodes[0]
        units = channel_units(net.node(producer).base_width("out"), groups)
        for j, pos in enumerate(_positions(net, task, producer, units)):
            out[unit_name(s.name, j)] = a[:, pos].reshape(len(x), -1)
    return out


def unit_conflicts(acts_b: Mapping[str, torch.Tensor], acts_t: Mapping[str, torch.Tensor], *,
                   rdm_kind: str = "pearson", compare: str = "spearman") -> dict[str, float]:
    """RSA dissimilarity of every unit (same unit names required)."""
    if list(acts_b) != list(acts_t):
        raise ValueError(f"the task-nets have different units ({list(acts_b)} vs {list(acts_t)})")
    return {u: rsa(acts_b[u], acts_t[u], rdm_kind, compare) for u in acts_b}


# ---- the rewrites -------------------------------------------------------------------------------


def _follow_nodes(net: JointNet, task: str, producer: str) -> list[str]:
    """Nodes after `producer` on `task`'s route up to the next producer or head that hold
    per-channel parameters (BatchNorm)."""
    route = net.route(task)
    out = []
    for n in route[route.index(producer) + 1:]:
        node = net.node(n)
        if node.spec.producer or n == net.tasks[task].head:
            break
        if any(not i.buffer for i in node.spec.params().values()):
            out.append(n)
    return out


def _trainable(net: JointNet, node: str) -> list[str]:
    return [k for k, i in net.node(node).spec.params().items() if not i.buffer]


def _mask_rows(net: JointNet, store: ParamStore, task: str, producer: str, rows: set[int]) -> JointNet:
    """Mask the base output channels `rows` of `producer` (and its BatchNorm) off for `task`."""
    if not rows:
        return net
    width = net.node(producer).base_width("out")
    where = torch.zeros(width, dtype=torch.bool)
    where[sorted(rows)] = True
    key = store_key(net, producer, "l2bg.replace_where", task)
    store.put(key, where, trainable=False)
    for n in [producer] + _follow_nodes(net, task, producer):
        for name in _trainable(net, n):
            if net.node(n).masks_of(task, name, REPLACE):
                net = release_mask(net, node=n, task=task, param=name, kind=REPLACE)
            grid = net.params_for(task, n)[name]
            for row in grid:
                for p in row:
                    if p.block[0] is None:
                        net = attach_mask(net, node=n, task=task, param=name, kind=REPLACE, granularity="channel",
                                          init="zeros", blocks=[list(p.block)], where=key)
            store.realize(net)  # the live masks' zeros, which the commit thresholds
            net = commit_mask(net, node=n, task=task, param=name, kind=REPLACE)
    return net


def _mask_groups(net: JointNet, store: ParamStore, task: str, producer: str, groups: set[str]) -> JointNet:
    """Mask the channel groups `groups` of `producer` (and its BatchNorm) off for `task`."""
    groups = set(groups) - hidden_groups(net, task, producer)
    if not groups:
        return net
    for n in [producer] + _follow_nodes(net, task, producer):
        for name in _trainable(net, n):
            blocks = [list(p.block) for row in net.params_for(task, n)[name] for p in row if p.block[0] in groups]
            if blocks:
                net = attach_mask(net, node=n, task=task, param=name, kind=HIDE, granularity="channel",
                                  init="zeros", blocks=blocks)
                store.realize(net)
                net = commit_mask(net, node=n, task=task, param=name, kind=HIDE)
    return net


def grow_channels(
    net: JointNet, store: ParamStore, *, task: str, to: str, grow: Sequence[tuple[str, int]], groups: int,
    n_classes: int, init: str = "copy", shared_lr_scale: float = 0.1,
) -> tuple[JointNet, dict[str, dict]]:
    """Bind `task` to `to`, add its head, take over `to`'s view, grow the units `grow` (pairs of
    producer node and unit index), set the train policy; see the module docstring.

    Tensors the step needs before training (mask `where` sets, the shared-step scale, copied
    values) are written to `store`. Returns the net and, per grown unit name, what it grew
    (``{"group", "provider", "channels"}``).
    """
    if init not in ("copy", "fresh"):
        raise ValueError(f"channel growth init must be 'copy' or 'fresh' (got {init!r})")
    net = add_task(net, task=task)
    net = bind(net, task=task, to=to)
    net = add_head(net, task=task, n_classes=n_classes)
    head = net.tasks[task].head
    producers = [n for n in net.route(task) if net.node(n).spec.producer and n != head]
    # What `to` computes: t masks what `to` masks and every group `to` does not use.
    rows = {n: replaced_rows(net, store, to, n) for n in producers}
    hide = {n: {g.id for g in net.node(n).out_groups if net.group_visible(task, g)} - set(_used_groups(net, to, n))
            for n in producers}
    sources: dict[str, tuple[str, str | None, list[int]]] = {}  # new group -> (node, provider, channels)
    grown: dict[str, dict] = {}
    for n, j in sorted(grow, key=lambda u: (producers.index(u[0]), u[1])):
        units = channel_units(net.node(n).base_width("out"), groups)
        prov = provider(net, to, n, j)
        if prov is None:
            chans = units[j]
            rows[n] |= set(chans)
        else:
            size = next(g.size for g in net.node(n).out_groups if g.id == prov)
            chans = list(range(size))
            hide[n].add(prov)
        net = widen(net, node=n, k=len(chans), task=task)
        gid = net.node(n).out_groups[-1].id
        sources[gid] = (n, prov, chans)
        grown[unit_name(n, j)] = {"group": gid, "provider": prov, "channels": chans}
        units_map = dict(thaw(net.node(n).annotations.get(UNITS, {})))
        units_map[gid] = j
        net = annotate(net, key=UNITS, value=units_map, node=n)
    for n in producers:  # after every widen, so the masks cover the blocks it added
        net = _mask_rows(net, store, task, n, rows[n])
        net = _mask_groups(net, store, task, n, hide[n])
    net = _policy(net, store, task, shared_lr_scale)
    store.realize(net)
    if init == "copy":
        _copy_sources(net, store, task, sources)
    return net, grown


def _policy(net: JointNet, store: ParamStore, task: str, scale: float) -> JointNet:
    shared = [n for n in net.route(task) if net.node(n).params and net.users(n) != frozenset({task})]
    if not shared or scale == 1:
        return net
    if scale == 0:
        return freeze(net, nodes=shared, task=task, keep_owned=True)
    key = store_key(net, None, "l2bg.shared_step", task)
    store.put(key, torch.tensor(float(scale)), trainable=False)
    by_block: dict[tuple, list[tuple[str, list[str]]]] = {}
    for n in shared:
        for name in _trainable(net, n):
            for row in net.params_for(task, n)[name]:
                for p in row:
                    if p.owner != task and p.task != task:
                        by_block.setdefault(p.block, []).append((n, name))
    for block, items in sorted(by_block.items(), key=lambda kv: repr(kv[0])):
        for name in sorted({nm for _, nm in items}):
            nodes = sorted({n for n, nm in items if nm == name})
            net = set_grad_rule(net, nodes=nodes, params=name, task=task, kind="multiply", tensor=key,
                                apply="update", block=list(block))
    return net


@torch.no_grad()
def _copy_sources(net: JointNet, store: ParamStore, task: str, sources: Mapping[str, tuple]) -> None:
    """Copy every block of the new groups from the blocks of the channels they replace."""
    for m in net.nodes:
        node = net.node(m)
        infos = node.spec.params()
        for p in node.params:
            o, i = p.block
            if o not in sources and i not in sources:
                continue
            src_o, rows = (sources[o][1], sources[o][2]) if o in sources else (o, None)
            src_i, cols = (sources[i][1], sources[i][2]) if i in sources else (i, None)
            q = node.param(p.name, (src_o, src_i), task) or node.param(p.name, (src_o, src_i))
            if q is None or q.key not in store:
                continue
            v = store[q.key].detach()
            info = infos[p.name]
            if rows is not None:
                v = v.index_select(info.out_axis, torch.tensor(rows))
            if cols is not None:
                factor = p.shape[info.in_axis] // len(cols)
                idx = [c * factor + f for c in cols for f in range(factor)]
                v = v.index_select(info.in_axis, torch.tensor(idx))
            if tuple(v.shape) == tuple(p.shape):
                store.update(p.key, v)


# ---- the shell -----------------------------------------------------------------------------------


def bind_grow_channels(opts: Any, net: JointNet, run: TaskRun, ind: Any, entry: Mapping,
                       decide: Callable[[Situation], Choice]) -> JointNet:
    """`strategies.l2bg._bind_grow` at channel granularity: bind by the slots' RSA (spec
    §2.3), grow the nucleus of the units' conflicts (or a sequence entry's ``grow`` unit names)."""
    task, index = run.task, run.index
    learned = list(net.tasks)
    if any(net.node(n).kind == "Sigmoid" for t in learned for n in net.route(t)):
        raise run.error("granularity='channels' masks channels to 0, which a Sigmoid does not keep at 0")
    candidates = [b for b in learned if opts.candidates is None or b in opts.candidates]
    if not candidates:
        raise run.error(f"no bind candidate: candidates={opts.candidates!r}, learned tasks are {learned}")
    if entry.get("bind") is not None and entry["bind"] not in learned:
        raise run.error(f"cannot bind to {entry['bind']!r}; learned tasks are {learned}")
    targets = list(dict.fromkeys(candidates + ([entry["bind"]] if entry.get("bind") else [])))
    slots = {b: task_slots(net, b, bn_slots=False) for b in targets}
    conflicts = unit_conf = None
    run.store.realize(net)
    if ind is not None:
        x = rsa_sample(task, seed=run.seed, index=index, n=opts.rsa_samples).to(run.config.device)
        t_slots = task_slots(ind.net, task.name, bn_slots=False)
        acts_t = slot_outputs(ind.net, ind.store, task.name, x, t_slots, opts.record)
        conflicts = {b: slot_conflicts(slot_outputs(net, run.store, b, x, slots[b], opts.record), acts_t,
                                       rdm_kind=opts.rdm, compare=opts.compare) for b in targets}
        units_t = unit_outputs(ind.net, ind.store, task.name, x, t_slots, opts.channel_groups, opts.record)
    choice = choose(decide, run, task.name, index, candidates,
                    {b: [s.name for s in slots[b]] for b in targets}, conflicts, entry)
    target, delta = choice.bind, choice.delta
    by_slot = {s.name: s for s in slots[target]}
    names = [unit_name(s.name, j) for s in slots[target]
             for j in range(len(channel_units(net.node(s.nodes[0]).base_width("out"), opts.channel_groups)))]
    probs = nuc = None
    if ind is not None:
        acts_b = unit_outputs(net, run.store, target, x, slots[target], opts.channel_groups, opts.record)
        unit_conf = unit_conflicts(acts_b, units_t, rdm_kind=opts.rdm, compare=opts.compare)
        probs = normalise([unit_conf[u] for u in names], opts.normalise, opts.temperature)
        nuc = [names[i] for i in nucleus(probs, delta, opts.tol)] if delta is not None else None
    grow = list(choice.grow) if choice.grow is not None else nuc
    if grow is None:
        raise run.error("neither a grow list nor a nucleus")
    unknown = [g for g in grow if g not in names]
    if unknown:
        raise run.error(f"no unit(s) {unknown}; units are {names}")
    pairs = [(by_slot[g.split("#")[0]].nodes[0], int(g.split("#")[1])) for g in grow]
    net, grown = grow_channels(net, run.store, task=task.name, to=target, grow=pairs, groups=opts.channel_groups,
                               n_classes=task.n_classes, init=opts.init, shared_lr_scale=opts.shared_lr_scale)
    prov: dict[str, Any] = {"bound_to": target, "delta": delta, "grown": list(grow), "nucleus": nuc,
                            "granularity": "channels"}
    if conflicts is not None:
        ranks = {names[i]: r for r, i in enumerate(ranking(probs))}
        prov["argmin"] = rsa_argmin(candidates, conflicts, opts.norm)
        prov["conflicts"] = {b: {"slots": dict(c), "norm": task_conflict(list(c.values()), opts.norm)}
                             for b, c in conflicts.items()}
        prov["units"] = [
            {"unit": u, "conflict": unit_conf[u], "prob": p, "rank": ranks[u],
             "in_nucleus": None if nuc is None else u in nuc, "grown": u in grow,
             **({"group": grown[unit_name(by_slot[u.split('#')[0]].nodes[0], int(u.split('#')[1]))]["group"]}
                if u in grow else {})}
            for u, p in zip(names, probs)
        ]
    if ind is not None:
        prov["independent"] = ind.info
    net = annotate(net, key=PROV, value=prov, task=task.name)
    return log_entry(net, {"task": task.name, "bind": target, "delta": delta, "grow": list(grow)})
