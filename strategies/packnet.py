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
trained (the gradient hooks drop its gradient) and the strategy writes its values: all ones
before pruning (task t reads the earlier tasks' weights and trains the free ones), then
``owner in 1..t``; `commit_mask` turns it into task t's immutable 0/1 bits. Ownership is data:
an int16 tensor per trunk weight in the store (0 = free, i = the i-th task of the net),
referenced from the weight `Param` by the `TensorRef` annotation ``packnet.owner``; a fresh key
per task keeps older versions of the net valid, and a resumed run continues exactly.

Old tasks' weights stay bit-identical through `PackNetHooks`: ``transform_grads`` zeroes their
gradients (so no momentum builds up on them) and drops the gradients of the trunk biases (after
task 1) and of the live masks (so the optimizer skips those tensors, weight decay included);
``after_step`` copies the owned entries back from a copy taken before training, which also
undoes weight decay and any optimizer that moves a weight with a zero gradient.

Options of `PackNet` (defaults first):

- ``prune``: fraction of the weights free for task t that pruning frees again, per layer (the
  ``k = floor(prune * n_free + 0.5)`` smallest in magnitude; ties broken by index). A float for every
  task, or a list whose i-th entry is for task i (the last entry repeats). Default 0.5: the
  paper sorts each layer's eligible weights by magnitude and prunes the lowest 50% or 75% after
  each task; the last task is pruned too, so the net can take more tasks later.
- ``retrain_epochs``: epochs of retraining after pruning (the paper retrains for fewer epochs
  than the first training); None = half the task's epochs, at least 1; 0 = no retraining.
- ``retrain_lr``: learning rate of retraining; None = the train config's.
- ``free_init``: what a pruned weight holds until a later task trains it: ``"zero"`` (the
  PackNet code zeroes pruned weights, so later tasks start them at 0) or ``"keep"`` (its trained
  value, masked out of task t's forward).
- ``bn``: BatchNorm after the first task. ``"per_task"``: every later task gets its own copy of
  the affine parameters and statistics (`per_task_bn`, copied from task 1's) and trains them
  (GROWN spec §2.7: "as CPG and PackNet do"); ``"freeze"``: the affine parameters stay task 1's,
  as in the paper, which keeps batchnorm fixed after the first task; the running statistics are
  still a per-task copy, because a BatchNorm in train mode updates them.

Fixed choices, documented: biases of trunk layers train with the first task only and are then
frozen (the paper prunes weights only and keeps biases fixed after the first task); heads are per
task and trained fully; masks cover only the trunk's weights. (The paper is paraphrased here
from memory of its text; it is not among the project's seeds.)
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch

from jointnet.errors import JointNetError
from jointnet.graph.net import JointNet, TensorRef
from jointnet.execution.store import ParamStore
from jointnet.graph import add_head, add_task, annotate, attach_mask, bind, commit_mask, freeze, per_task_bn
from jointnet.experiments.trainer import Hooks, TrainResult, train_task
from strategies.base import RunState, Strategy, add_column, default_backbone, register

__all__ = ["PackNet", "PackNetHooks", "OWNER", "trunk_nodes", "owner_tensor", "prune_free", "task_id"]

OWNER = "packnet.owner"  # annotation on a trunk weight Param: TensorRef to its int16 owner tensor
FREE = 0


def task_id(net: JointNet, task: str) -> int:
    """The owner value of `task`: its 1-based position among the net's tasks (0 means free)."""
    return net.task_order(task) + 1


def trunk_nodes(net: JointNet) -> list[str]:
    """The trunk's weight nodes (Conv2d, Linear) on the first task's route, in route order."""
    if not net.tasks:
        return []
    first = next(iter(net.tasks))
    out = [n for n in net.route(first) if net.node(n).kind in ("Conv2d", "Linear")]
    for n in out:
        node = net.node(n)
        if node.out_groups or node.in_groups:
            raise JointNetError(f"PackNet: trunk node {n!r} has grown channel groups; PackNet masks whole weights")
    return out


def _weight(net: JointNet, node: str):
    return net.node(node).param("weight")


def owner_tensor(net: JointNet, store: ParamStore, node: str) -> torch.Tensor:
    """The int16 owner of every weight of trunk `node` (all free before the first commit)."""
    p = _weight(net, node)
    ref = p.annotations.get(OWNER)
    if ref is None:
        return torch.zeros(p.shape, dtype=torch.int16, device=store.device)
    return store[ref.key]


def prune_free(weight: torch.Tensor, owner: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool mask of the weights to prune: the ``floor(fraction * n + 0.5)`` smallest |w| among the
    `n` free ones (owner 0).

    Ties in |w| are broken by flat index (a stable sort), so the choice is deterministic.

    >>> w = torch.tensor([[0.1, -3.0], [0.2, 5.0]])
    >>> prune_free(w, torch.tensor([[0, 0], [1, 0]], dtype=torch.int16), 0.5).tolist()
    [[True, True], [False, False]]
    """
    free = (owner == FREE).flatten().nonzero().flatten()
    k = math.floor(fraction * len(free) + 0.5)
    out = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
    if k:
        order = torch.argsort(weight.detach().flatten()[free].abs(), stable=True)
        out[free[order[:k]]] = True
    return out.view(weight.shape)


class PackNetHooks(Hooks):
    """Keep old tasks' weights and (after task 1) the trunk biases bit-exact; never train masks.

    Args:
        frozen: (weight tensor, bool mask of the entries earlier tasks own) per trunk node.
        no_grad: tensors whose gradient is dropped, so the optimizer skips them entirely.
    """

    def __init__(self, frozen: list[tuple[torch.Tensor, torch.Tensor]], no_grad: list[torch.Tensor]):
        self.frozen = [(w, m, w.detach().clone()) for w, m in frozen if bool(m.any())]
        self.no_grad = no_grad

    def transform_grads(self, module, ctx: dict) -> None:
        for w, m, _ in self.frozen:
            if w.grad is not None:
                w.grad.masked_fill_(m, 0.0)
        for t in self.no_grad:
            t.grad = None

    @torch.no_grad()
    def after_step(self, module, ctx: dict) -> None:
        for w, m, saved in self.frozen:
            w.copy_(torch.where(m, saved, w))


@register("packnet")
@attrs.define
class PackNet(Strategy):
    """PackNet (Mallya & Lazebnik 2018): prune, retrain and freeze a share of one trunk per task.

    Options (see the module docstring): ``backbone`` (default: `default_backbone`), ``prune``
    = 0.5, ``retrain_epochs`` = None (half the epochs), ``retrain_lr`` = None, ``free_init`` =
    ``"zero"`` | ``"keep"``, ``bn`` = ``"per_task"`` | ``"freeze"``.
    """

    backbone: list | None = None
    prune: Any = 0.5
    retrain_epochs: int | None = None
    retrain_lr: float | None = None
    free_init: str = attrs.field(default="zero", validator=attrs.validators.in_(("zero", "keep")))
    bn: str = attrs.field(default="per_task", validator=attrs.validators.in_(("per_task", "freeze")))

    def __attrs_post_init__(self) -> None:
        fracs = self.prune if isinstance(self.prune, (list, tuple)) else [self.prune]
        if not fracs or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1 for f in fracs):
            raise ValueError(f"prune must be a fraction in [0, 1] or a non-empty list of them (got {self.prune!r})")
        if self.retrain_epochs is not None and (not isinstance(self.retrain_epochs, int) or self.retrain_epochs < 0):
            raise ValueError(f"retrain_epochs must be None or an int >= 0 (got {self.retrain_epochs!r})")

    def fraction(self, index: int) -> float:
        """The pruning fraction for the task at `index` (0-based)."""
        fracs = self.prune if isinstance(self.prune, (list, tuple)) else [self.prune]
        return float(fracs[min(index, len(fracs) - 1)])

    # ---- the runner's steps -------------------------------------------------------------------

    def before_task(self, state: RunState, task, index: int) -> None:
        if index == 0 and not state.net.tasks:
            layers = self.backbone or default_backbone(task.input_shape)
            net = add_column(state.net, layers, task.name, task.n_classes)
        else:
            first = next(iter(state.net.tasks))
            net = add_task(state.net, task=task.name)
            net = bind(net, task=task.name, to=first)
            net = add_head(net, task=task.name, n_classes=task.n_classes)
            bns = [n for n in net.route(task.name) if net.node(n).kind == "BatchNorm"]
            for n in bns:
                net = per_task_bn(net, node=n, task=task.name, init="copy")
            if bns and self.bn == "freeze":
                net = freeze(net, nodes=bns, task=task.name)
        for n in trunk_nodes(net):
            net = attach_mask(net, node=n, task=task.name, param="weight", granularity="param",
                              transform="identity", init="ones")
        state.net = net

    def hooks(self, state: RunState, task, index: int) -> PackNetHooks:
        net, store = state.net, state.store
        frozen, no_grad = [], []
        me = task_id(net, task.name)
        for n in trunk_nodes(net):
            node = net.node(n)
            owner = owner_tensor(net, store, n)
            frozen.append((store[_weight(net, n).key], (owner != FREE) & (owner < me)))
            if me > 1 and node.param("bias") is not None:
                no_grad.append(store[node.param("bias").key])
            m = node.mask(task.name)
            if m is not None and m.state == "live":
                no_grad.append(store[m.key])
        return PackNetHooks(frozen, no_grad)

    def train_task(self, state: RunState, task, index: int) -> TrainResult:
        config = state.config
        res = train_task(state.net, state.store, task.name, task.train, task.val, config,
                         self.hooks(state, task, index), task_index=index, echo=state.echo)
        self.prune_task(state, task.name, self.fraction(index))
        epochs = self.retrain_epochs if self.retrain_epochs is not None else max(1, config.epochs // 2)
        if epochs and config.epochs:
            again = attrs.evolve(config, epochs=epochs, lr=self.retrain_lr or config.lr)
            say = None if state.echo is None else (lambda msg: state.echo(f"retrain after pruning: {msg}"))
            more = train_task(state.net, state.store, task.name, task.train, task.val, again,
                              self.hooks(state, task, index), task_index=index, echo=say)
            res = TrainResult(res.epochs_run + more.epochs_run, more.best_val if more.best_val is not None
                              else res.best_val, res.history + more.history)
        return res

    def after_task(self, state: RunState, task, index: int) -> None:
        net = state.net
        for n in trunk_nodes(net):
            net = commit_mask(net, node=n, task=task.name, param="weight", threshold=0.5)
        state.net = net
        state.store.realize(net)

    # ---- pruning ------------------------------------------------------------------------------

    def prune_task(self, state: RunState, task: str, fraction: float) -> None:
        """Give `task` the weights it trained, less the pruned `fraction` (freed again), and set its
        live mask to ``owner in 1..t``. Writes a new owner tensor per trunk node."""
        net, store = state.net, state.store
        me = task_id(net, task)
        for n in trunk_nodes(net):
            w = store[_weight(net, n).key]
            owner = owner_tensor(net, store, n)
            cut = prune_free(w, owner, fraction)
            new = torch.where(owner == FREE, torch.full_like(owner, me), owner)
            new = torch.where(cut, torch.full_like(owner, FREE), new)
            with torch.no_grad():
                if self.free_init == "zero":
                    w.masked_fill_(cut, 0.0)
                m = net.node(n).mask(task)
                if m is None or m.state != "live":
                    raise JointNetError(f"PackNet: task {task!r} has no live mask on {n!r}")
                store[m.key].copy_(((new != FREE) & (new <= me)).to(store[m.key].dtype))
            key = f"{n}.{OWNER}.{task}@{net.lineage}"
            store.put(key, new, trainable=False)
            net = annotate(net, key=OWNER, value=TensorRef(key), node=n, param="weight")
        state.net = net
