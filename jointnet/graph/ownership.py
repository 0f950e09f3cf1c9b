"""Ownership rewrites: per-task variants of a node's parameters (`per_task_bn`, `add_task_embedding`)."""

from __future__ import annotations

import attrs

from jointnet.graph.draft import Draft, rewrite
from jointnet.graph.net import Init, Param

__all__ = ["per_task_bn", "add_task_embedding"]


@rewrite
def per_task_bn(d: Draft, /, *, node: str, task: str, init: str = "copy") -> None:
    """Give `task` its own BatchNorm parameters and statistics on `node` (copied or fresh)."""
    if init not in ("copy", "fresh"):
        raise d.error(f"init must be 'copy' or 'fresh' (got {init!r})")
    d.require_on_route(task, node)
    n = d.node(node)
    if n.kind != "BatchNorm":
        raise d.error(f"{node!r} is a {n.kind}, not a BatchNorm")
    if any(p.task == task for p in n.params):
        raise d.error(f"task {task!r} already has its own statistics on {node!r}")
    infos = n.spec.params()
    new = []
    for name, rows in d.view().params_for(task, node).items():
        for row in rows:
            for p in row:
                how = Init.copy(p.key) if init == "copy" else Init.fresh(infos[name].init)
                new.append(Param(name, d.fresh_key(node, f"{name}.{task}"), p.shape, how,
                                 owner=task, task=task, block=p.block, buffer=p.buffer))
    d.set_node(attrs.evolve(n, params=n.params + tuple(new)))


@rewrite
def add_task_embedding(d: Draft, /, *, node: str, task: str, init: str = "fresh") -> None:
    """Give `task` its own ``embedding`` on the `Gate` node `node` (a per-task variant).

    Other tasks keep theirs (or the node's shared default); `task`'s forward pass and training
    use only the new tensor, which `task` owns. init: ``fresh`` (the spec's scheme, N(0, 1)) or
    ``copy`` (a copy of the node's shared default embedding).

    >>> from jointnet import backbones
    >>> layers = [{"kind": "linear", "out_f": 4}, {"kind": "relu"}, {"kind": "Gate"}]
    >>> net = backbones.build(layers, input_shape=(3,), task="t1", n_classes=2)
    >>> net = add_task_embedding(net, node="gate1", task="t1")
    >>> [(p.name, p.task) for p in net.node("gate1").params]
    [('embedding', None), ('embedding', 't1')]
    """
    if init not in ("fresh", "copy"):
        raise d.error(f"init must be 'fresh' or 'copy' (got {init!r})")
    d.require_on_route(task, node)
    n = d.node(node)
    info = n.spec.params().get("embedding")
    if info is None or info.buffer:
        raise d.error(f"{node!r} is a {n.kind}; only Gate nodes hold task embeddings")
    if any(p.name == "embedding" and p.task == task for p in n.params):
        raise d.error(f"task {task!r} already has its own embedding on {node!r}")
    base = n.param("embedding")
    how = Init.copy(base.key) if init == "copy" else Init.fresh(info.init, info.fan_in)
    new = Param("embedding", d.fresh_key(node, f"embedding.{task}"), base.shape, how, owner=task, task=task)
    d.set_node(attrs.evolve(n, params=n.params + (new,)))
