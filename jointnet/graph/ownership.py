"""Ownership rewrites: a task's own variant of any parameter of a node (`own_param`).

A variant replaces the shared tensor of the same block for its task only (per-task BatchNorm,
HAT's gate embeddings, a task's own copy of a shared layer's bias). Parameters a kind declares
``per_task`` (LASEM's generator tensors) need no call: every task routed through such a node gets
its own, fresh, in the rewrite that routes it there.
"""

from __future__ import annotations

from typing import Any

import attrs

from jointnet.graph.draft import Draft, rewrite
from jointnet.graph.net import Init, Param

__all__ = ["own_param", "per_task_bn", "add_task_embedding"]


@rewrite
def own_param(d: Draft, /, *, node: str, task: str, params: Any = None, init: str = "copy") -> None:
    """Give `task` its own variant of `params` of `node` (names; None: every parameter of the
    kind that is not already per-task), over every block `task` sees. Other tasks keep theirs.

    init: ``copy`` (a copy of what `task` uses now) or ``fresh`` (the kind's initialisation).
    The variants are owned by `task`; its training and forward pass use them, nobody else's.

    >>> from jointnet import backbones
    >>> layers = [{"kind": "linear", "out_f": 4}, {"kind": "relu"}, {"kind": "Gate"}]
    >>> net = backbones.build(layers, input_shape=(3,), task="t1", n_classes=2)
    >>> net = own_param(net, node="gate1", task="t1", params=["embedding"], init="fresh")
    >>> [(p.name, p.task) for p in net.node("gate1").params]
    [('embedding', None), ('embedding', 't1')]
    """
    _own(d, node, task, params, init)


@rewrite
def per_task_bn(d: Draft, /, *, node: str, task: str, init: str = "copy") -> None:
    """`own_param` for every parameter and statistic of the BatchNorm `node` (a shorthand whose
    log record says what was meant)."""
    if d.node(node).kind != "BatchNorm":
        raise d.error(f"{node!r} is a {d.node(node).kind}, not a BatchNorm")
    _own(d, node, task, None, init)


@rewrite
def add_task_embedding(d: Draft, /, *, node: str, task: str, init: str = "fresh") -> None:
    """`own_param` of the ``embedding`` of the Gate `node` (a shorthand: HAT's per-task gates)."""
    if d.node(node).kind != "Gate":
        raise d.error(f"{node!r} is a {d.node(node).kind}; only Gate nodes hold task embeddings")
    _own(d, node, task, ["embedding"], init)


def _own(d: Draft, node: str, task: str, params: Any, init: str) -> None:
    if init not in ("copy", "fresh"):
        raise d.error(f"init must be 'copy' or 'fresh' (got {init!r})")
    d.require_on_route(task, node)
    n = d.node(node)
    infos = n.spec.params()
    if params is None:
        names = [name for name, info in infos.items() if not info.per_task]
    else:
        names = [params] if isinstance(params, str) else list(params) if isinstance(params, (list, tuple)) else None
        if not names:
            raise d.error(f"params must be a parameter name or a non-empty list of them (got {params!r})")
    for name in names:
        if name not in infos:
            raise d.error(f"{node!r} ({n.kind}) has no parameter {name!r}; it has {sorted(infos)}")
        if infos[name].per_task:
            raise d.error(f"{name!r} of {node!r} is per-task already: every task has its own")
        if any(p.name == name and p.task == task for p in n.params):
            raise d.error(f"task {task!r} already has its own {name!r} on {node!r}")
    grid = d.view().params_for(task, node)
    new = []
    for name in names:
        info = infos[name]
        for row in grid[name]:
            for p in row:
                how = Init.copy(p.key) if init == "copy" else Init.fresh(info.init, info.fan_in)
                new.append(Param(name, d.fresh_key(node, f"{name}.{task}"), p.shape, how,
                                 owner=task, task=task, block=p.block, buffer=p.buffer))
    d.set_node(attrs.evolve(n, params=n.params + tuple(new)))


def per_task_params(d: Draft, node: str, task: str) -> None:
    """Create `task`'s variants of the ``per_task`` parameters of `node` it lacks (fresh).

    Called by the Draft when a rewrite routes `task` through `node`: a per-task parameter has no
    shared tensor to fall back on.
    """
    n = d.node(node)
    infos = {name: info for name, info in n.spec.params().items() if info.per_task}
    if not infos or task not in d.tasks:
        return
    view = d.view()
    have = {(p.name, p.block) for p in n.params if p.task == task}
    new = []
    for name, info in infos.items():
        outs = view.visible_groups(task, node, "out") if info.out_axis is not None else [None]
        ins = view.visible_groups(task, node, "in") if info.in_axis is not None else [None]
        for o in outs:
            for i in ins:
                if (name, (o, i)) in have:
                    continue
                rows = n.base_width("out") if o is None else next(g.size for g in n.out_groups if g.id == o)
                cols = n.base_width("in") if i is None else next(g.size for g in n.in_groups if g.id == i)
                new.append(Param(name, d.fresh_key(node, f"{name}.{task}"), info.block_shape(rows, cols),
                                 Init.fresh(info.init, info.fan_in), owner=task, task=task, block=(o, i),
                                 buffer=info.buffer))
    if new:
        d.set_node(attrs.evolve(n, params=n.params + tuple(new)))
