"""From train policy to optimizer: parameter groups for one task, and a minimal training loop.

The policy (`freeze`, `set_lr_scale`) is data on the net; `param_groups` turns it into torch
optimizer groups for the task being trained: frozen nodes contribute nothing (a frozen BatchNorm
also keeps its running statistics, see `compile_net`), every other node its tensors at
``lr * lr_scale``. Only tensors the task's forward pass uses are included.

>>> from jointnet import backbones, set_lr_scale
>>> from jointnet.execution.store import ParamStore
>>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
>>> net = set_lr_scale(net, nodes="fc1", scale=0.1, task="t1")
>>> groups = param_groups(net, ParamStore().realize(net), "t1", lr=0.1)
>>> [(g["name"], round(g["lr"], 3), len(g["params"])) for g in groups]
[('lr_scale=0.1', 0.01, 2), ('lr_scale=1.0', 0.1, 2)]
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from jointnet.execution.compile import compile_net
from jointnet.errors import JointNetError
from jointnet.graph.net import JointNet
from jointnet.execution.store import ParamStore

__all__ = ["param_groups", "task_tensors", "fit", "evaluate"]


def task_tensors(net: JointNet, task: str) -> dict[str, list[str]]:
    """Store keys of the trainable tensors `task`'s forward pass uses, per node."""
    out: dict[str, list[str]] = {}
    for n in net.route(task):
        node = net.node(n)
        keys = [p.key for rows in net.params_for(task, n).values() for row in rows for p in row if not p.buffer]
        keys += [m.key for m in node.masks if m.task == task and m.state == "live"]
        if keys:
            out[n] = keys
    return out


def _owned_keys(net: JointNet, task: str, n: str) -> set[str]:
    """Keys on node `n` that belong to `task` alone: its grown channels, variants and masks."""
    node = net.node(n)
    sole = net.users(n) == frozenset({task})
    keys = {p.key for p in node.params if p.owner == task or p.task == task or (sole and p.owner is None)}
    return keys | {m.key for m in node.masks if m.task == task}


def param_groups(net: JointNet, store: ParamStore, task: str, lr: float) -> list[dict]:
    """Optimizer parameter groups for training `task`, one per learning-rate scale.

    Raises:
        JointNetError: unknown task, or a tensor missing from the store.
    """
    if task not in net.tasks:
        raise JointNetError(f"param_groups: no task {task!r}; tasks are {', '.join(net.tasks)}")
    by_scale: dict[float, list[nn.Parameter]] = {}
    for n, keys in task_tensors(net, task).items():
        pol = net.policy_for(task, n)
        if pol.lr_scale == 0:
            continue
        if pol.frozen:
            if not pol.keep_owned:
                continue
            keys = [k for k in keys if k in _owned_keys(net, task, n)]
        by_scale.setdefault(pol.lr_scale, []).extend(store[k] for k in keys)
    return [
        {"params": ps, "lr": lr * s, "name": f"lr_scale={s}"}
        for s, ps in sorted(by_scale.items())
    ]


def fit(
    net: JointNet,
    store: ParamStore,
    task: str,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    lr: float = 0.05,
    momentum: float = 0.0,
) -> list[float]:
    """Train `task` with SGD over `batches` (an iterable of (x, y)); returns the losses."""
    module = compile_net(net, store, task)
    groups = param_groups(net, store, task, lr)
    if not groups:
        raise JointNetError(f"fit: every node of task {task!r} is frozen; nothing to train")
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum)
    module.train()
    losses = []
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(module(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def evaluate(net: JointNet, store: ParamStore, task: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of `task` on (x, y), in eval mode."""
    module = compile_net(net, store, task)
    was = module.training
    module.eval()
    acc = float((module(x).argmax(1) == y).float().mean())
    module.train(was)
    return acc
