"""Channel rewrites: `widen` (output channels owned by a task, successors follow; coupled nodes
together), `compact` (physically remove channels of a group), per-task masks by kind and block
(`attach_mask`, `commit_mask`, `release_mask`) and per-element ownership (`track_owners`).

How growth flows through a node is its kind's `channels` rule (`jointnet.graph.layers`):
producers grow output channels and, as successors, input columns; ``follow`` kinds (BatchNorm,
Gate) grow their per-channel parameters and pass the channels on; ``pass`` kinds pass them on;
a Flatten turns each channel into H*W features; an Add passes them on only when every one of its
inputs carries them (widen the producers of a residual stream together).
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from jointnet.errors import RewriteError, SpecError
from jointnet.graph.draft import NO_CHANGE, Draft, rewrite
from jointnet.graph.names import MAX_DIM, check_float, check_key
from jointnet.graph.net import MASK_TRANSFORMS, Group, Init, Mask, Node, OwnerMap, Param
from jointnet.graph.shapes import task_shapes

__all__ = ["widen", "compact", "attach_mask", "commit_mask", "release_mask", "track_owners"]


def _group_size(node: Node, gid: str | None, axis: str) -> int:
    if gid is None:
        return node.base_width(axis)
    groups = node.out_groups if axis == "out" else node.in_groups
    return next(g.size for g in groups if g.id == gid)


def _flat_factor(d: Draft, n: str) -> int:
    """H*W of what Flatten node `n` receives, from the net before this rewrite (on the draft,
    the task that sees new channels may not shape-check until its consumers have grown)."""
    users = sorted(d.base.users(n))
    if not users:
        raise d.error(f"Flatten {n!r} is on no task's route")
    shape = task_shapes(d.base, users[0])[d.base.inputs_of(n, users[0])[0]]
    return math.prod(shape[1:])


def _reach(d: Draft, producers: list[str], task: str) -> list[tuple[str, str, int]]:
    """Where new output channels of `producers` flow: (node, how, factor) in visiting order,
    how = ``consume`` (input columns grow) or ``follow`` (per-channel parameters grow).

    Channels leave a producer along every edge, and leave a pass-through or per-channel node
    only along the edges of tasks that entered it from a carrier: a node that two tasks enter
    from different inputs passes on, for each, what that task feeds it (a ReLU another task
    reaches from elsewhere does not carry this task's channels on).

    Raises a RewriteError naming the node where growth cannot pass, an Add whose inputs do not
    all carry the channels, or a node the channels reach along other tasks' edges while `task`
    feeds it from something that does not carry them (channel groups are visible per task).
    """
    out: list[tuple[str, str, int]] = []
    carry: dict[str, set[str]] = {p: set(d.tasks) for p in producers}  # node -> tasks carrying them
    factors: dict[str, int] = {}
    order: list[str] = []
    stack = [(w, 1, p) for p in producers for w in reversed(list(d.g._succ[p]))]
    merges: list[str] = []
    while stack:
        n, factor, u = stack.pop()
        tasks = carry[u] & d.g._succ[u][n]["tasks"]
        if not tasks or tasks <= carry.get(n, set()):
            continue
        first = n not in carry
        carry.setdefault(n, set()).update(tasks)
        rule = d.node(n).spec.channels
        if first:
            order.append(n)
            factors[n] = factor
            if rule == "merge":
                merges.append(n)
        if rule in ("produce", "consume"):
            continue
        if rule == "flatten":
            factor = factor * _flat_factor(d, n)
        elif rule not in ("follow", "pass", "merge"):
            raise d.error(f"cannot widen through {n!r} ({d.node(n).kind}): channel growth cannot pass it")
        stack.extend((w, factor, n) for w in reversed(list(d.g._succ[n])))
    for n in order:
        rule = d.node(n).spec.channels
        if rule in ("produce", "consume", "follow") and task in d.base.users(n) and task not in carry[n]:
            feeds = d.view().inputs_of(n, task)
            raise d.error(f"the new channels reach {n!r} along other tasks' edges, but task {task!r} feeds it "
                          f"from {feeds} (not carrying them); channel groups are visible per task, not per "
                          f"path: widen before rerouting {task!r} there")
        if rule in ("produce", "consume"):
            out.append((n, "consume", factors[n]))
        elif rule == "follow":
            out.append((n, "follow", factors[n]))
    passing = set(producers) | {n for n in order if d.node(n).spec.channels not in ("produce", "consume")}
    for m in dict.fromkeys(merges):
        missing = [u for u in d.view().inputs_of(m, task) if u not in passing]
        if missing:
            raise d.error(f"{m!r} ({d.node(m).kind}) also adds {missing}, which would not carry the new "
                          f"channels; widen the producers of every input of {m!r} together (node=[...])")
    return out


@rewrite
def widen(d: Draft, /, *, node: Any, k: int, task: str, init: str = "fresh") -> None:
    """Add `k` output channels owned by `task` to `node` (a producer, or a list of producers whose
    outputs meet in Add nodes, widened together as one channel group); successors follow.

    Successors grow by their kind's channel rule (module docstring): BatchNorm and Gate gain `k`
    per-channel entries, a Flatten multiplies the new channels by H*W, and the next
    Conv2d/Linear/Head gains matching input columns (owned by `task` too). Tasks other than `task`
    that exist now never see the new channels; tasks added later that route through `node` do.
    init: ``fresh`` (the layer's default scheme) or ``zeros`` (new input columns start at 0).
    """
    if type(k) is not int or not 1 <= k <= MAX_DIM:
        raise d.error(f"k must be an int in [1, {MAX_DIM}] (got {k!r})")
    if init not in ("fresh", "zeros"):
        raise d.error(f"init must be 'fresh' or 'zeros' (got {init!r})")
    producers = d.node_list(node, "node")
    if len(set(producers)) != len(producers):
        raise d.error(f"node lists {producers} with a repeat")
    for n in producers:
        d.require_on_route(task, n)
        if not d.node(n).spec.producer:
            raise d.error(f"{n!r} is a {d.node(n).kind}; only Conv2d (groups=1) and Linear nodes can be widened")
    gid = f"{producers[0]}+{task}@{d.version}"
    group = Group(gid, k, task, d.version)
    for n in producers:
        src = d.node(n)
        new = []
        for name, info in src.spec.params().items():
            cols = [None] + [g.id for g in src.in_groups] if info.in_axis is not None else [None]
            for c in cols:
                shape = info.block_shape(k, _group_size(src, c, "in"))
                new.append(Param(name, d.fresh_key(n, f"{name}.{gid}"), shape,
                                 Init.fresh(info.init, info.fan_in), owner=task, block=(gid, c)))
        d.set_node(attrs.evolve(src, spec=src.spec.widened(out=k), out_groups=src.out_groups + (group,),
                                params=src.params + tuple(new)))
    for n, how, factor in _reach(d, producers, task):
        if how == "consume":
            _grow_input(d, d.node(n), group, k * factor, init)
        else:
            _grow_follow(d, d.node(n), group, k)
    d.check_task(task)


def _grow_input(d: Draft, node: Node, group: Group, size: int, init: str) -> None:
    g_in = Group(group.id, size, group.owner, group.created_at)
    new = []
    for name, info in node.spec.params().items():
        if info.in_axis is None:
            continue
        rows = [None] + [g.id for g in node.out_groups] if info.out_axis is not None else [None]
        for r in rows:
            shape = info.block_shape(_group_size(node, r, "out"), size)
            how = Init.fresh("zeros") if init == "zeros" else Init.fresh(info.init, info.fan_in)
            new.append(Param(name, d.fresh_key(node.id, f"{name}.{group.id}"), shape, how,
                             owner=group.owner, block=(r, group.id)))
    d.set_node(attrs.evolve(node, spec=node.spec.widened(in_=size), in_groups=node.in_groups + (g_in,),
                            params=node.params + tuple(new)))


def _grow_follow(d: Draft, node: Node, group: Group, k: int) -> None:
    new = []
    for name, info in node.spec.params().items():
        # A per-task parameter gets a block only for the group's owner (others never see it).
        task = group.owner if info.per_task else None
        new.append(Param(name, d.fresh_key(node.id, f"{name}.{group.id}"), (k,), Init.fresh(info.init, info.fan_in),
                         owner=group.owner, task=task, block=(group.id, None), buffer=info.buffer))
    d.set_node(attrs.evolve(node, spec=node.spec.widened(out=k), out_groups=node.out_groups + (group,),
                            params=node.params + tuple(new)))


# ---- compaction -----------------------------------------------------------------------------------


def _sliced(d: Draft, node: str, what: str, key: str, axis: int, keep: tuple[int, ...],
            packed_shape: tuple[int, ...] = ()) -> tuple[str, Init]:
    return d.fresh_key(node, f"{what}.compact"), Init("slice", src=key, axis=axis, index=keep,
                                                      src_shape=packed_shape)


def _shrink(d: Draft, node: Node, gid: str, axis: str, keep: tuple[int, ...]) -> Node:
    """`node` with group `gid` along `axis` cut to the entries `keep` (or gone when empty)."""
    infos = node.spec.params()
    groups = node.out_groups if axis == "out" else node.in_groups
    old = next(g for g in groups if g.id == gid)
    pos = 0 if axis == "out" else 1
    params, masks = [], []
    for p in node.params:
        info = infos[p.name]
        t_axis = info.out_axis if axis == "out" else info.in_axis
        if p.block[pos] != gid:
            params.append(p)
            continue
        if not keep:  # the whole block goes
            continue
        if t_axis is None:  # pragma: no cover - a block of a group runs along the group's axis
            params.append(p)
            continue
        key, how = _sliced(d, node.id, p.name, p.key, t_axis, keep)
        owners = p.owners
        if owners is not None:
            o_shape = owners.shape(p.shape)
            if t_axis < len(o_shape):
                okey, ohow = _sliced(d, node.id, f"{p.name}.owners", owners.key, t_axis, keep)
                owners = attrs.evolve(owners, key=okey, init=ohow)
        shape = list(p.shape)
        shape[t_axis] = len(keep)
        params.append(attrs.evolve(p, key=key, shape=tuple(shape), init=how, owners=owners))
    for m in node.masks:
        info = infos[m.param]
        t_axis = info.out_axis if axis == "out" else info.in_axis
        if m.block[pos] != gid:
            masks.append(m)
            continue
        if not keep:  # its block goes
            continue
        if t_axis is None or t_axis >= len(m.shape):  # the mask does not run along the axis
            masks.append(m)
            continue
        if m.where is not None:
            raise d.error(f"task {m.task!r}'s {m.kind} mask on {node.id!r}.{m.param} is limited by `where` "
                          f"and covers group {gid!r}; release it before compacting")
        packed = m.shape if m.state == "committed" else ()
        key, how = _sliced(d, node.id, f"mask.{m.kind}.{m.task}.{m.param}", m.key, t_axis, keep, packed)
        shape = list(m.shape)
        shape[t_axis] = len(keep)
        masks.append(attrs.evolve(m, key=key, shape=tuple(shape), init=how))
    new_groups = tuple(g if g.id != gid else attrs.evolve(g, size=len(keep)) for g in groups if g.id != gid or keep)
    delta = len(keep) - old.size
    spec = node.spec.widened(out=delta) if axis == "out" else node.spec.widened(in_=delta)
    changes = {"out_groups" if axis == "out" else "in_groups": new_groups}
    return attrs.evolve(node, spec=spec, params=tuple(params), masks=tuple(masks), **changes)


@rewrite
def compact(d: Draft, /, *, group: str, keep: list[int]) -> None:
    """Physically remove the channels of channel group `group` not listed in `keep` (indices into
    the group, increasing), on every node that holds it: the producers' weights and biases, the
    per-channel parameters of BatchNorm and Gate nodes, the successors' input columns (H*W per
    channel after a Flatten), heads included, and the masks and owner maps over them. An empty
    `keep` removes the group. Outputs of every task that sees the group are unchanged when the
    removed channels were masked to zero (GROWN spec §8 rewrite 8); other tasks never saw them.
    """
    if not isinstance(group, str) or not group:
        raise d.error(f"group must be a channel group id (got {group!r})")
    if not isinstance(keep, (list, tuple)) or any(type(i) is not int for i in keep) or list(keep) != sorted(set(keep)):
        raise d.error(f"keep must be increasing channel indices without repeats (got {keep!r:.80})")
    holders = [(n, d.node(n)) for n in list(d.g._node)
               if any(g.id == group for g in d.node(n).out_groups + d.node(n).in_groups)]
    if not holders:
        raise d.error(f"no node holds channel group {group!r}")
    size = next(g.size for _, nd in holders for g in nd.out_groups if g.id == group)
    if keep and keep[-1] >= size:
        raise d.error(f"keep names channel {keep[-1]}, but group {group!r} has {size}")
    if len(keep) == size:
        return NO_CHANGE
    keep = tuple(keep)
    for n, nd in holders:
        for g in nd.in_groups:
            if g.id == group:
                factor = g.size // size
                cols = tuple(c * factor + j for c in keep for j in range(factor))
                nd = _shrink(d, nd, group, "in", cols)
        if any(g.id == group for g in nd.out_groups):
            nd = _shrink(d, nd, group, "out", keep)
        d.set_node(nd)
    grp = next(g for _, nd in holders for g in nd.out_groups if g.id == group)
    for t in d.tasks:  # every task that sees the group must still shape-check
        if t == grp.owner or d.tasks[t].added_at > grp.created_at:
            try:
                d.check_task(t)
            except RewriteError as e:
                raise d.error(f"compacting group {group!r} would break task {t!r} ({e.reason}); "
                              f"a node added for {t!r} after the group grew takes its channels as plain "
                              "columns, which compact cannot shrink") from None


# ---- masks and owners -----------------------------------------------------------------------------

_GRANULARITY = ("param", "kernel", "channel")


def _visible_blocks(d: Draft, task: str, node: str, name: str) -> list[tuple]:
    view = d.view()
    info = d.node(node).spec.params()[name]
    outs = view.visible_groups(task, node, "out") if info.out_axis is not None else [None]
    ins = view.visible_groups(task, node, "in") if info.in_axis is not None else [None]
    return [(o, i) for o in outs for i in ins]


def _mask_word(kind: str) -> str:
    return "mask" if kind == "mask" else f"{kind!r} mask"


def _a(kind: str) -> str:
    return f"a {_mask_word(kind)}"


def _mask_shape(block_shape: tuple[int, ...], granularity: str) -> tuple[int, ...]:
    return {"param": block_shape, "kernel": block_shape[:2], "channel": block_shape[:1]}[granularity]


@rewrite(recorded_if_set=("kind", "blocks", "where"))
def attach_mask(
    d: Draft, /, *, node: str, task: str, param: str = "weight", kind: str = "mask",
    granularity: str = "param", transform: str = "identity", init: str = "ones",
    blocks: Any = None, where: str | None = None,
) -> None:
    """Attach a trainable per-task mask of `kind` over `param` of `node`, used only by `task`.

    The mask multiplies the parameter in `task`'s forward pass; other tasks are unaffected.
    `blocks`: the (out group, in group) blocks it covers (None for the base channels; default:
    every block `task` sees now); blocks grown later stay unmasked. `where`: the store key of a
    bool tensor of the mask's shape limiting it to those entries (one block only). Several kinds
    may cover one parameter; their multipliers multiply. `transform`: a registered mask transform
    (`jointnet.graph.net.MASK_TRANSFORMS`); init ``ones`` or ``zeros`` (of the stored tensor).
    """
    d.require_on_route(task, node)
    n = d.node(node)
    if granularity not in _GRANULARITY:
        raise d.error(f"granularity must be one of {_GRANULARITY} (got {granularity!r})")
    if transform not in MASK_TRANSFORMS:
        raise d.error(f"transform must be one of {sorted(MASK_TRANSFORMS)} (registered by "
                      f"jointnet.execution.masks.register_transform; got {transform!r})")
    if init not in ("ones", "zeros"):
        raise d.error(f"init must be 'ones' or 'zeros' (got {init!r})")
    infos = n.spec.params()
    if param not in infos or infos[param].buffer:
        raise d.error(f"{node!r} ({n.kind}) has no parameter {param!r} to mask")
    info = infos[param]
    if granularity == "kernel" and (info.in_axis is None or len(info.shape) != 4):
        raise d.error("kernel granularity needs a conv weight")
    visible = _visible_blocks(d, task, node, param)
    if blocks is None:
        chosen = visible
    else:
        if not isinstance(blocks, (list, tuple)) or not blocks:
            raise d.error(f"blocks must be a non-empty list of [out group, in group] pairs (got {blocks!r:.80})")
        chosen = []
        for b in blocks:
            b = tuple(b) if isinstance(b, (list, tuple)) else b
            if b not in visible:
                raise d.error(f"block {b!r} of {node!r}.{param} is not one task {task!r} sees; it sees {visible}")
            chosen.append(b)
    if where is not None:
        try:
            check_key(where, "where")
        except SpecError as e:
            raise d.error(str(e)) from None
        if len(chosen) != 1:
            raise d.error("where limits a mask over one block; pass blocks=[...] with one")
    grid = {p.block: p for row in d.view().params_for(task, node)[param] for p in row}
    stem = "mask" if kind == "mask" else f"mask.{kind}"
    new = []
    for b in chosen:
        if n.mask(task, param, kind, b) is not None:
            raise d.error(f"task {task!r} already has {_a(kind)} on {node!r}.{param} (block {b})")
        key = d.fresh_key(node, f"{stem}.{task}.{param}")
        new.append(Mask(task, param, key, granularity, transform, "live", _mask_shape(grid[b].shape, granularity),
                        Init.fresh(init), kind=kind, block=b, where=where))
    d.set_node(attrs.evolve(n, masks=n.masks + tuple(new)))


@rewrite(recorded_if_set=("kind",))
def commit_mask(d: Draft, /, *, node: str, task: str, param: str = "weight", kind: str = "mask",
                threshold: float = 0.5) -> Any:
    """Freeze `task`'s live `kind` masks on `node`.`param` into packed bits:
    ``transform(mask) > threshold`` (the deterministic transform; sigmoid for Gumbel masks)."""
    n = d.node(node)
    d.task(task)
    masks = n.masks_of(task, param, kind)
    if not masks:
        raise d.error(f"task {task!r} has no {_mask_word(kind)} on {node!r}.{param}")
    try:
        value = check_float(threshold, "threshold")
    except SpecError as e:
        raise d.error(str(e)) from None
    live = [m for m in masks if m.state == "live"]
    if not live:
        return NO_CHANGE
    stem = "mask" if kind == "mask" else f"mask.{kind}"
    done = {}
    for m in live:
        key = d.fresh_key(node, f"{stem}.{task}.{param}.bits")
        how = Init("threshold", scheme=m.transform, src=m.key, value=value)
        done[m.key] = attrs.evolve(m, key=key, state="committed", transform="identity", init=how)
    d.set_node(attrs.evolve(n, masks=tuple(done.get(m.key, m) for m in n.masks)))
    return None


@rewrite(recorded_if_set=("kind",))
def release_mask(d: Draft, /, *, node: str, task: str, param: str = "weight", kind: str = "mask") -> None:
    """Remove `task`'s `kind` masks on `node`.`param` (every block)."""
    n = d.node(node)
    if not n.masks_of(task, param, kind):
        raise d.error(f"task {task!r} has no {_mask_word(kind)} on {node!r}.{param}")
    d.set_node(attrs.evolve(n, masks=tuple(m for m in n.masks
                                          if not (m.task == task and m.param == param and m.kind == kind))))


@rewrite
def track_owners(d: Draft, /, *, node: str, param: str = "weight", granularity: str = "kernel") -> Any:
    """Give every shared block of `node`.`param` an `OwnerMap` (all free), at `granularity`
    (``param``: per element, ``kernel``: per (out, in) pair, ``channel``: per output channel).

    Strategies record which task owns what with ``store.update(owner_map.key, ...)``; masks,
    gradient rules and views read it. Blocks grown later get no map (call again to add them).
    """
    n = d.node(node)
    infos = n.spec.params()
    if param not in infos or infos[param].buffer:
        raise d.error(f"{node!r} ({n.kind}) has no parameter {param!r}")
    if granularity not in _GRANULARITY:
        raise d.error(f"granularity must be one of {_GRANULARITY} (got {granularity!r})")
    if granularity == "kernel" and (infos[param].in_axis is None or len(infos[param].shape) < 2):
        raise d.error(f"kernel granularity needs a parameter with input and output axes; {param!r} has none")
    params = list(n.params)
    changed = False
    for i, p in enumerate(params):
        if p.name == param and p.task is None and p.owners is None:
            key = d.fresh_key(node, f"{param}.owners")
            params[i] = attrs.evolve(p, owners=OwnerMap(key, granularity))
            changed = True
    if not changed:
        return NO_CHANGE
    d.set_node(attrs.evolve(n, params=tuple(params)))
    return None
