"""PackNet (Mallya & Lazebnik, 2018, "PackNet: Adding Multiple Tasks to a Single Network by
Iterative Pruning", CVPR 2018).

One shared trunk holds every task. Each trunk weight is *owned* by at most one task. Training
task t updates only the weights no earlier task owns (the *free* ones), reading the earlier
tasks' weights as they are; then a fraction of the weights task t trained is pruned by magnitude,
per layer, the rest is retrained briefly, and task t owns what is left. Task t's forward pass uses
the weights owned by tasks 1..t and nothing else, so later tasks can never change it: no
forgetting, bit-exactly on CPU.

As a graph (GROWN spec §8, rewrite 12: PackNet-style strategies reuse its mask rewrites): the first
task builds the trunk, later tasks `bind` to it and add their own head. Every trunk weight node
(Conv2d, Linear) gets a per-task mask at ``param`` granularity (`attach_mask`), which the
compiled forward multiplies into the weight. While task t trains the mask is live but never
trained (train policy: ``freeze(params=["mask:mask"])``) and the strategy writes its values with
`ParamStore.update`: all ones before pruning (task t reads the earlier tasks' weights and trains
the free ones), then ``owner in 1..t``; `commit_mask` turns it into task t's immutable bits.

Ownership is core data: every trunk weight has an `OwnerMap` (`track_owners`, ``param``
granularity), an int32 tensor in the store: 0 = free, else the owning task's
``net.tasks[t].added_at`` (increasing in task order). Pruning writes it with
`ParamStore.update`; a resumed run reads it from the snapshot and continues exactly.

Old tasks' weights stay bit-identical through the train policy, set by the first task for every
task: the built-in ``owned`` freeze rule (`set_grad_rule(kind="freeze", provider="owned")`)
zeroes the gradient of every weight another task owns (so no momentum builds up on it) and puts
its value back after every optimizer step (which also undoes weight decay and any optimizer that
moves a weight with a zero gradient). The trunk biases (after task 1) and the live masks are
frozen per parameter (`freeze(params=["bias"])`, ``["mask:mask"]``): they get no gradient and no
optimizer state, weight decay included.

Options of `PackNet` (defaults first):

- ``backbone`` = None: a declarative layer list; None is `default_backbone` of the stream's input.
- ``prune`` = 0.5: fraction of the weights free for task t that pruning frees again, per layer
  (the ``k = floor(prune * n_free + 0.5)`` smallest in magnitude; ties broken by index). A float
  in [0, 1] for every task, or a non-empty list whose i-th entry is for task i (the last entry
  repeats). The paper sorts each layer's eligible weights by magnitude and prunes the lowest 50%
  or 75% after each task; the last task is pruned too, so the net can take more tasks later.
- ``retrain_epochs`` = None: epochs of retraining after pruning (the paper retrains for fewer
  epochs than the first training); None = half the task's epochs, at least 1; 0 = no retraining.
- ``retrain_lr`` = None: learning rate of retraining (> 0); None = the train config's.
- ``free_init`` = ``"zero"``: what a pruned weight holds until a later task trains it: ``"zero"``
  (the PackNet code zeroes pruned weights, so later tasks start them at 0) or ``"keep"`` (its
  trained value, masked out of task t's forward).
- ``bn`` = ``"per_task"``: BatchNorm after the first task. ``"per_task"``: every later task gets
  its own copy of the affine parameters and statistics (`per_task_bn`, copied from task 1's)
  and trains them (GROWN spec §2.7: "as CPG and PackNet do"); ``"freeze"``: the affine
  parameters stay task 1's, as in the paper, which keeps batchnorm fixed after the first task;
  the running statistics are still a per-task copy.

Fixed choices, documented: biases of trunk layers train with the first task only and are then
frozen (the paper prunes weights only and keeps biases fixed after the first task); heads are per
task and trained fully; masks cover only the trunk's weights. (The paper is paraphrased here
from memory of its text; it is not among the project's seeds.)

Deviation from the pre-Core-2 implementation (same arithmetic, new records): owner maps and the
freeze rules are rewrites in the net's log, and owner values are ``added_at`` instead of the
task's 1-based position, so the net's lineage, hence the keys and fresh initial values of every
tensor created after the first task's rewrites (later tasks' heads), differ from runs of the
older code with the same seed. The first task's tensors and its training are unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from attrs.validators import in_

from jointnet.errors import StrategyError
from jointnet.execution.store import ParamStore
from jointnet.experiments.strategy import (
    TaskRun, backbone_option, count_or_none, default_backbone, per_task, positive_or_none, trunk_task,
)
from jointnet.experiments.trainer import TrainConfig
from jointnet.graph import attach_mask, commit_mask, freeze, per_task_bn, set_grad_rule, track_owners
from jointnet.graph.net import JointNet

__all__ = [
    "FREE", "MASK", "PackNet", "claim", "live_mask", "owner_tensor", "owner_value", "prune_free",
    "retrain_epochs", "trunk_nodes",
]

FREE = 0  # owner value of a weight no task owns
MASK = "mask"  # the kind of PackNet's per-task weight masks


def _fail(message: str, task: str | None = None) -> StrategyError:
    """PackNet's error for a situation it cannot handle (named after the strategy and the task)."""
    return StrategyError(message, strategy="packnet", task=task)


def owner_value(net: JointNet, task: str) -> int:
    """The owner value of `task` in the owner maps: its ``added_at`` (0 means free)."""
    return net.tasks[task].added_at


def trunk_nodes(net: JointNet) -> list[str]:
    """The trunk's weight nodes (Conv2d, Linear) on the first task's route, in route order."""
    if not net.tasks:
        return []
    first = next(iter(net.tasks))
    out = [n for n in net.route(first) if net.node(n).kind in ("Conv2d", "Linear")]
    for n in out:
        node = net.node(n)
        if node.out_groups or node.in_groups:
            raise _fail(f"trunk node {n!r} has grown channel groups; PackNet masks whole weights")
    return out


def owner_tensor(net: JointNet, store: ParamStore, node: str) -> torch.Tensor:
    """The int32 owner map of trunk `node`'s weight (a store tensor; read it, never write it).

    Raises:
        StrategyError: the weight has no owner map (`track_owners` was not applied).
    """
    p = net.node(node).param("weight")
    if p is None or p.owners is None:
        raise _fail(f"{node!r} has no owner map on its weight; apply track_owners")
    return store[p.owners.key]


def prune_free(weight: torch.Tensor, owner: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool mask of the weights to prune: the ``floor(fraction * n + 0.5)`` smallest |w| among the
    `n` free ones (owner 0).

    Ties in |w| are broken by flat index (a stable sort), so the choice is deterministic.

    >>> w = torch.tensor([[0.1, -3.0], [0.2, 5.0]])
    >>> prune_free(w, torch.tensor([[0, 0], [1, 0]], dtype=torch.int32), 0.5).tolist()
    [[True, True], [False, False]]
    """
    free = (owner == FREE).flatten().nonzero().flatten()
    k = math.floor(fraction * len(free) + 0.5)
    out = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
    if k:
        order = torch.argsort(weight.detach().flatten()[free].abs(), stable=True)
        out[free[order[:k]]] = True
    return out.view(weight.shape)


def claim(owner: torch.Tensor, cut: torch.Tensor, me: int) -> torch.Tensor:
    """The owner map after task `me` takes every free weight except the pruned ones (`cut`).

    >>> claim(torch.tensor([0, 0, 3, 0]), torch.tensor([True, False, False, False]), 5).tolist()
    [0, 5, 3, 5]
    """
    new = torch.where(owner == FREE, torch.full_like(owner, me), owner)
    return torch.where(cut, torch.full_like(owner, FREE), new)


def live_mask(owner: torch.Tensor, me: int) -> torch.Tensor:
    """Task `me`'s weight mask: the weights owned by it or an earlier task (``1 <= owner <= me``).

    >>> live_mask(torch.tensor([0, 2, 5, 7]), 5).tolist()
    [False, True, True, False]
    """
    return (owner != FREE) & (owner <= me)


def retrain_epochs(option: int | None, config: TrainConfig) -> int:
    """Epochs of retraining after pruning: the option, or half the task's epochs (at least 1);
    0 when the task trains for no epochs at all.

    >>> retrain_epochs(None, TrainConfig(epochs=5)), retrain_epochs(0, TrainConfig(epochs=5))
    (2, 0)
    """
    if not config.epochs:
        return 0
    return option if option is not None else max(1, config.epochs // 2)




def _fractions(_inst, attribute, value) -> None:
    fracs = list(value) if isinstance(value, (list, tuple)) else [value]
    if not fracs or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1 for f in fracs):
        raise ValueError(f"'{attribute.name}' must be a fraction in [0, 1] or a non-empty list of them "
                         f"(got {value!r})")






@attrs.frozen
class PackNet:
    """PackNet (Mallya & Lazebnik 2018): prune, retrain and freeze a share of one trunk per task.

    Options (details in the module docstring): ``backbone`` = None (`default_backbone`),
    ``prune`` = 0.5 (or a per-task list), ``retrain_epochs`` = None (half the epochs),
    ``retrain_lr`` = None (the config's), ``free_init`` = ``"zero"`` | ``"keep"``, ``bn`` =
    ``"per_task"`` | ``"freeze"``.

    >>> PackNet(prune=[0.5, 0.75]).fraction(0), PackNet(prune=[0.5, 0.75]).fraction(5)
    (0.5, 0.75)
    """

    backbone: list | None = attrs.field(default=None, validator=backbone_option)
    prune: Any = attrs.field(default=0.5, validator=_fractions)
    retrain_epochs: int | None = attrs.field(default=None, validator=count_or_none(0))
    retrain_lr: float | None = attrs.field(default=None, validator=positive_or_none)
    free_init: str = attrs.field(default="zero", validator=in_(("zero", "keep")))
    bn: str = attrs.field(default="per_task", validator=in_(("per_task", "freeze")))

    def fraction(self, index: int) -> float:
        """The pruning fraction for the task at `index` (0-based)."""
        return float(per_task(self.prune, index))

    # ---- rewrites -----------------------------------------------------------------------------

    def prepare(self, net: JointNet, task: str, n_classes: int, input_shape) -> JointNet:
        """The rewrites for a new task: the trunk (first task: with owner maps and the policy that
        protects owned weights and keeps masks untrained, for every task) or a binding to it with
        the task's head, BatchNorm variants and frozen trunk biases; then the task's live masks."""
        first = not net.tasks
        net = trunk_task(net, self.backbone or default_backbone(input_shape), task, n_classes)
        if not first:
            bns = [n for n in net.route(task) if net.node(n).kind == "BatchNorm"]
            for n in bns:
                net = per_task_bn(net, node=n, task=task, init="copy")
            if bns and self.bn == "freeze":
                net = freeze(net, nodes=bns, task=task)
        trunk = trunk_nodes(net)
        for n in trunk:
            net = attach_mask(net, node=n, task=task, param="weight", granularity="param",
                              transform="identity", init="ones")
        # The protection holds for every task; the first task logs it, later calls change nothing
        # (each of these rewrites returns the same net when its effect is already there).
        for n in trunk:
            net = track_owners(net, node=n, param="weight", granularity="param")
        net = set_grad_rule(net, nodes=trunk, params="weight", kind="freeze", provider="owned")
        net = freeze(net, nodes=trunk, params=[f"mask:{MASK}"])
        if not first:
            biased = [n for n in trunk if "bias" in net.node(n).spec.params()]
            if biased:
                net = freeze(net, nodes=biased, task=task, params=["bias"])
        return net

    # ---- pruning ------------------------------------------------------------------------------

    def prune_task(self, net: JointNet, store: ParamStore, task: str, fraction: float) -> None:
        """Give `task` the free weights it trained, less the pruned `fraction` (freed again; zeroed
        with ``free_init="zero"``), and set its live mask to ``owner in 1..t``. Writes owner maps,
        masks and weights with `ParamStore.update`; the net does not change.

        Raises:
            StrategyError: `task` has no live mask on a trunk node.
        """
        me = owner_value(net, task)
        for n in trunk_nodes(net):
            node = net.node(n)
            p = node.param("weight")
            m = node.mask(task, kind=MASK)
            if m is None or m.state != "live":
                raise _fail(f"task {task!r} has no live mask on {n!r}", task)
            w = store[p.key].detach()
            owner = owner_tensor(net, store, n)
            cut = prune_free(w, owner, fraction)
            new = claim(owner, cut, me)
            if self.free_init == "zero":
                store.update(p.key, w.masked_fill(cut, 0.0))
            store.update(m.key, live_mask(new, me))
            store.update(p.owners.key, new)

    # ---- the task ------------------------------------------------------------------------------

    def step(self, net: JointNet, run: TaskRun) -> JointNet:
        """Add `run.task` (`prepare`), train it on the free weights, prune, retrain what it kept,
        and commit its masks."""
        task = run.task
        net = self.prepare(net, task.name, task.n_classes, task.input_shape)
        run.train(net)
        self.prune_task(net, run.store, task.name, self.fraction(run.index))
        epochs = retrain_epochs(self.retrain_epochs, run.config)
        if epochs:
            again = attrs.evolve(run.config, epochs=epochs, lr=self.retrain_lr or run.config.lr)
            run.train(net, config=again, say="retrain after pruning")
        for n in trunk_nodes(net):
            net = commit_mask(net, node=n, task=task.name, param="weight", threshold=0.5)
        run.store.realize(net)
        return net
