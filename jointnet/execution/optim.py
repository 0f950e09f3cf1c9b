"""From train policy to optimizer: what one task's training updates, at which rate, under which
per-parameter gradient rules.

The policy is data on the net (`freeze`, `set_lr_scale`, `set_grad_rule`, per node or per
parameter); `train_plan` turns it into a `TrainPlan` for the task being trained:

- optimizer groups, one per learning-rate scale, of exactly the tensors the task's forward pass
  uses and trains (a frozen node's or parameter's tensors are left out; a frozen BatchNorm also
  keeps its running statistics, see `plan`);
- the tensors on the route that nothing trains, which get ``requires_grad=False`` while training
  (no gradient is computed or accumulated for them);
- the gradient rules (`GradRule`): multipliers applied to the gradient before the step or to the
  step after it, and frozen entries kept exactly (zero gradient before, values put back after).

One mechanism for every method that conditions gradients: HAT's conditioning and SPG's soft masks
are multipliers (from a registered provider or a store tensor), PackNet's and GROWN's frozen
weights are ``freeze`` rules (the built-in ``owned`` provider reads the parameter's `OwnerMap`).

>>> from jointnet import backbones, set_lr_scale
>>> from jointnet.execution.store import ParamStore
>>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
>>> net = set_lr_scale(net, nodes="fc1", scale=0.1, task="t1")
>>> groups = param_groups(net, ParamStore().realize(net), "t1", lr=0.1)
>>> [(g["name"], round(g["lr"], 3), len(g["params"])) for g in groups]
[('lr_scale=0.1', 0.01, 2), ('lr_scale=1.0', 0.1, 2)]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from jointnet.errors import JointNetError
from jointnet.execution.compile import compile_net
from jointnet.execution.store import ParamStore
from jointnet.graph.net import GRAD_PROVIDERS, JointNet, Param

__all__ = [
    "TrainPlan", "train_plan", "param_groups", "task_tensors", "register_provider", "fit", "evaluate",
]

_PROVIDERS: dict[str, Callable] = {}


def register_provider(name: str, fn: Callable) -> None:
    """Make gradient-rule provider `name` known: ``fn(net, store, task, node, param) -> tensor or
    None`` computes a rule's multiplier (or, for a ``freeze`` rule, its bool mask) broadcastable
    to the `Param` block when training starts; None means the rule does nothing this time."""
    GRAD_PROVIDERS.add(name)
    _PROVIDERS[name] = fn


def _owned_by_others(net: JointNet, store: ParamStore, task: str, node: str, p: Param) -> torch.Tensor | None:
    """The entries of block `p` another task owns (its `OwnerMap`), as a bool mask."""
    if p.owners is None:
        return None
    owners = store[p.owners.key]
    mine = net.tasks[task].added_at
    mask = (owners != 0) & (owners != mine)
    return mask.reshape(*mask.shape, *[1] * (len(p.shape) - mask.dim()))


register_provider("owned", _owned_by_others)


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


def _owned(net: JointNet, task: str, n: str, p: Param) -> bool:
    """Whether block `p` of node `n` belongs to `task` alone (grown channels, variants, or a
    node only it uses)."""
    return p.owner == task or p.task == task or (p.owner is None and net.users(n) == frozenset({task}))


@attrs.define
class TrainPlan:
    """What training one task does to the store's tensors (see the module docstring)."""

    groups: list[dict]
    untrained: list[torch.Tensor]
    grad_mults: list[tuple[torch.Tensor, torch.Tensor]] = attrs.field(factory=list)
    update_mults: list[tuple[torch.Tensor, torch.Tensor]] = attrs.field(factory=list)
    freezes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = attrs.field(factory=list)
    _before: list[torch.Tensor] = attrs.field(factory=list)

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for g in self.groups for p in g["params"]]

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """While training: tensors of the route that nothing trains carry no gradient."""
        was = [t.requires_grad for t in self.untrained]
        for t in self.untrained:
            t.requires_grad_(False)
        try:
            yield
        finally:
            for t, w in zip(self.untrained, was):
                t.requires_grad_(w)

    @torch.no_grad()
    def before_step(self) -> None:
        """Between backward and the optimizer step: multiply gradients, zero frozen entries'."""
        for t, m in self.grad_mults:
            if t.grad is not None:
                t.grad.mul_(m)
        for t, mask, _ in self.freezes:
            if t.grad is not None:
                t.grad.masked_fill_(mask, 0.0)
        self._before = [t.detach().clone() for t, _ in self.update_mults]

    @torch.no_grad()
    def after_step(self) -> None:
        """After the step: scale the steps of update rules, put frozen entries back exactly."""
        for (t, m), old in zip(self.update_mults, self._before):
            t.copy_(old + m * (t - old))
        for t, mask, saved in self.freezes:
            t.copy_(torch.where(mask, saved, t))


def train_plan(net: JointNet, store: ParamStore, task: str, lr: float) -> TrainPlan:
    """The `TrainPlan` of training `task` with base learning rate `lr`.

    Raises:
        JointNetError: unknown task, a tensor missing from the store, or a gradient rule whose
            tensor does not broadcast to its block.
    """
    if task not in net.tasks:
        raise JointNetError(f"train_plan: no task {task!r}; tasks are {', '.join(net.tasks)}")
    by_scale: dict[float, list[nn.Parameter]] = {}
    untrained: list[torch.Tensor] = []
    out = TrainPlan([], untrained)
    seen: set[int] = set()
    for n in net.route(task):
        node = net.node(n)
        pol = net.policy_for(task, n)
        tensors: list[tuple[str, Param | None, torch.Tensor, bool]] = []  # (policy name, block, tensor, owned)
        for name, rows in net.params_for(task, n).items():
            for row in rows:
                for p in row:
                    if not p.buffer:
                        tensors.append((name, p, store[p.key], _owned(net, task, n, p)))
        for m in node.masks:
            if m.task == task and m.state == "live":
                tensors.append((f"mask:{m.kind}", None, store[m.key], True))
        for name, p, t, owned in tensors:
            if id(t) in seen:
                continue
            seen.add(id(t))
            pp = pol.param(name)
            frozen = pp.frozen if pp.frozen is not None else (pol.frozen and not (pol.keep_owned and owned))
            scale = pp.lr_scale if pp.lr_scale is not None else pol.lr_scale
            if frozen or scale == 0:
                if isinstance(t, nn.Parameter):
                    untrained.append(t)
                continue
            by_scale.setdefault(scale, []).append(t)
            for rule in pp.rules:
                if p is None or rule.block != p.block:
                    continue
                if rule.provider is not None and rule.provider not in _PROVIDERS:
                    raise JointNetError(f"node {n!r}.{name}: gradient-rule provider {rule.provider!r} is not "
                                        "registered; import the strategy that provides it")
                value = store[rule.tensor] if rule.tensor is not None else _PROVIDERS[rule.provider](net, store, task, n, p)
                if value is None:
                    continue
                try:
                    torch.broadcast_shapes(tuple(value.shape), tuple(t.shape))
                except RuntimeError:
                    raise JointNetError(f"gradient rule on {n!r}.{name} {p.block}: a tensor of shape "
                                        f"{tuple(value.shape)} does not broadcast to {tuple(t.shape)}") from None
                value = value.detach().to(t.device)
                if rule.kind == "freeze":
                    mask = value.bool().expand_as(t)
                    if bool(mask.any()):  # an empty freeze set needs no copy per step
                        out.freezes.append((t, mask, t.detach().clone()))
                elif rule.apply == "grad":
                    out.grad_mults.append((t, value.to(t.dtype)))
                else:
                    out.update_mults.append((t, value.to(t.dtype)))
    out.groups = [{"params": ps, "lr": lr * s, "name": f"lr_scale={s}"} for s, ps in sorted(by_scale.items())]
    return out


def param_groups(net: JointNet, store: ParamStore, task: str, lr: float) -> list[dict]:
    """Optimizer parameter groups for training `task`, one per learning-rate scale."""
    return train_plan(net, store, task, lr).groups


def fit(
    net: JointNet,
    store: ParamStore,
    task: str,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> list[float]:
    """Train `task` with SGD over `batches` (an iterable of (x, y)) under its train policy
    (gradient rules included); returns the losses."""
    module = compile_net(net, store, task)
    tp = train_plan(net, store, task, lr)
    if not tp.groups:
        raise JointNetError(f"fit: every node of task {task!r} is frozen; nothing to train")
    opt = torch.optim.SGD(tp.groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    module.train()
    losses = []
    with tp.training():
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(module(x), y)
            loss.backward()
            tp.before_step()
            opt.step()
            tp.after_step()
            losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def evaluate(net: JointNet, store: ParamStore, task: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of `task` on (x, y), in eval mode (with its recorded inference context)."""
    module = compile_net(net, store, task)
    was = module.training
    module.eval()
    acc = float((module(x).argmax(1) == y).float().mean())
    module.train(was)
    return acc
