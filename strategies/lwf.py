"""Learning without Forgetting: distil the old heads' own outputs while learning a new task.

Li & Hoiem, "Learning without Forgetting", ECCV 2016 (TPAMI 2018).

Topology: a shared trunk (theta_s) with one head per task, as fine-tuning
(`jointnet.experiments.strategy.trunk_task`). Training task t minimises

    CE(new head, y) + lam * sum_{old o} KD(student_o(x), teacher_o(x); T)

where the teacher is the net *as it was before task t* (trunk and old heads theta_o), and
KD = T^2 * KL(softmax(teacher / T) || softmax(student / T)). The paper records the old heads'
responses y_o on the new task's images once before training; a frozen teacher evaluated
online (eval mode, no augmentation here) gives exactly those targets without storing them.

- The teacher is transient: at the start of each task it is compiled from clones of the store
  tensors the old tasks use (`jointnet.experiments.strategy.teacher_store`), so a run resumed
  from the previous task's snapshot rebuilds the same teacher and continues exactly. Nothing
  lives on the strategy.
- The student is one multi-task compile of the current net over every seen task, so the shared
  trunk runs once per batch and feeds the new head (cross-entropy, added by the trainer) and the
  old heads (distillation) alike (`Hooks.forward`), with the trainer's context for the batch.
- Old heads train too, as in the paper (`Hooks.extra_param_groups`), unless
  ``freeze_old_heads=True``.

Options (all of `LwF`'s attributes; defaults first):

- ``lam`` (1.0): weight of the distillation term, the paper's lambda_o.
- ``T`` (2.0): distillation temperature (the paper's choice).
- ``t2_scale`` (False): multiply the distillation loss by T^2 (Hinton et al.'s convention, which
  keeps its gradients comparable across temperatures; a deviation from the paper, whose modified
  cross-entropy has no such factor). The default is the paper's plain scale: with the default
  trainer (SGD lr 0.05, momentum 0.9) and 2 epochs a task, T^2 = 4 times the distillation
  gradient, summed over 4 old heads by task 5, made training unstable (loss spikes above 5 at
  task 5; split-fmnist AP 0.89 / 0.95 / 0.97 over seeds 0-2 against 0.99 / 0.98 / 0.98 without).
- ``warmup_epochs`` (1; 0: none): epochs that first train only the new head, trunk and old heads
  frozen (the paper's warm-up step, §3: "we first freeze theta_s and theta_o and train theta_n
  to convergence", so a fresh head does not push random-head gradients into the shared trunk).
  They come before the trainer's ``epochs`` of joint training; the freeze is transient (the net
  `step` returns carries no policy). The paper trains to convergence; one epoch is our default
  (a head on a trained trunk converges fast; raise it for larger heads). Measured, not assumed:
  with 2 joint epochs a task it lowered AP (split-fmnist 0.945 against 0.984 without, permuted
  0.574 against 0.596; seeds 0-2 side by side in the setting of `benchmarks/baselines.py`, both
  with the plain scale). It stays on to follow the paper; 0 turns it off.
- ``freeze_old_heads`` (False): keep the old heads fixed (the paper trains them on the
  distillation loss).
- ``backbone`` (None): layer list for the trunk; None: `default_backbone` of the stream's inputs.

Fixed choices: the distillation targets use the teacher's eval mode and the first old task's
inference context; the KD term is the batch mean of the per-sample KL divergence.

>>> LwF().lam, LwF().T, LwF().warmup_epochs
(1.0, 2.0, 1)
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import validators as v

from jointnet.execution.compile import compile_net
from jointnet.execution.optim import task_tensors
from jointnet.execution.program import Context
from jointnet.execution.store import ParamStore
from jointnet.experiments.strategy import TaskRun, default_backbone, teacher_store, trunk_task
from jointnet.experiments.trainer import Hooks
from jointnet.graph import freeze
from jointnet.graph.net import JointNet

__all__ = ["LwF", "LwFHooks", "kd_loss", "lwf_hooks", "warmup_net"]


@attrs.frozen
class LwF:
    """Learning without Forgetting (Li & Hoiem, ECCV 2016) over a shared trunk.

    Options (see the module docstring for what each one means and where it deviates):
        lam: weight of the distillation term, the paper's lambda_o (default 1.0).
        T: distillation temperature (default 2).
        t2_scale: multiply the distillation loss by T^2 (default False: the paper's scale).
        warmup_epochs: head-only epochs before joint training (default 1; 0: none).
        freeze_old_heads: keep the old heads fixed (default False).
        backbone: layer list for the trunk (default `default_backbone` of the stream's inputs).
    """

    lam: float = attrs.field(default=1.0, converter=float, validator=v.ge(0.0))
    T: float = attrs.field(default=2.0, converter=float, validator=v.gt(0.0))
    t2_scale: bool = attrs.field(default=False, validator=v.instance_of(bool))
    warmup_epochs: int = attrs.field(default=1, validator=[v.instance_of(int), v.ge(0)])
    freeze_old_heads: bool = attrs.field(default=False, validator=v.instance_of(bool))
    backbone: list | None = None

    def step(self, net: JointNet, run: TaskRun) -> JointNet:
        """Add the task on the shared trunk; optionally warm its head up alone; train it with the
        old heads distilled from a frozen copy of the net as it was before this task."""
        task = run.task
        net = trunk_task(net, self.backbone or default_backbone(task.input_shape), task.name, task.n_classes)
        run.store.realize(net)
        hooks = self.hooks(net, run.store, task.name)  # the teacher: the net before any step of t
        if self.warmup_epochs and run.index > 0:
            run.train(warmup_net(net, task.name), config=attrs.evolve(run.config, epochs=self.warmup_epochs),
                      say="warm-up")
        run.train(net, hooks=hooks)
        return net

    def hooks(self, net: JointNet, store: ParamStore, task: str) -> Hooks:
        """The distillation hooks for training `task` of `net`, with a teacher cloned from `store`
        *now*: call it before training the task."""
        return lwf_hooks(net, store, task, lam=self.lam, T=self.T, t2_scale=self.t2_scale,
                         train_old_heads=not self.freeze_old_heads)


def warmup_net(net: JointNet, task: str) -> JointNet:
    """`net` with every parameterised node of `task`'s route but its head frozen for `task` (the
    warm-up's transient net: train it, then keep training the unfrozen `net`)."""
    head = net.tasks[task].head
    trunk = [n for n in net.route(task) if net.node(n).params and n != head]
    return freeze(net, nodes=trunk, task=task)


def lwf_hooks(net: JointNet, store: ParamStore, task: str, *, lam: float = 1.0, T: float = 2.0,
              t2_scale: bool = False, train_old_heads: bool = True) -> Hooks:
    """`LwFHooks` distilling every other task of `net` into `task`'s training (plain `Hooks` when
    `task` is the only one). The teacher is compiled from `teacher_store` clones taken now."""
    old = [t for t in net.tasks if t != task]
    if not old:
        return Hooks()
    teacher = compile_net(net, teacher_store(net, store, old), old, cache=False)
    teacher.eval()
    student = compile_net(net, store, old + [task])
    return LwFHooks(student, teacher, task, old, lam=lam, T=T, t2_scale=t2_scale, train_old_heads=train_old_heads)


class LwFHooks(Hooks):
    """One multi-task student forward; CE on the new head (trainer), KD on the old heads."""

    def __init__(self, student, teacher, task: str, old: list[str], *, lam: float, T: float,
                 t2_scale: bool, train_old_heads: bool):
        self.student, self.teacher = student, teacher
        self.task, self.old = task, list(old)
        self.lam, self.T, self.t2_scale = lam, T, t2_scale
        self.train_old_heads = train_old_heads
        self._old_head_params: list[torch.Tensor] = []

    def forward(self, module, x, info: dict, ctx: Context | None) -> torch.Tensor:
        # The student follows the trainer's module mode (for a call without a context) and runs
        # under the trainer's context for this batch.
        self.student.train(module.training)
        out = self.student(x, ctx)
        info["lwf.old_logits"] = {t: out[t] for t in self.old}
        return out[self.task]

    def extra_loss(self, module, x, y, logits, info: dict) -> torch.Tensor | None:
        student = info.get("lwf.old_logits")
        if student is None or self.lam == 0:
            return None
        with torch.no_grad():
            target = self.teacher(x)
        total = sum(kd_loss(student[t], target[t], self.T, self.t2_scale) for t in self.old)
        return self.lam * total

    def extra_param_groups(self, net: JointNet, store: ParamStore, task: str, lr: float) -> list[dict]:
        own = {id(store[k]) for keys in task_tensors(net, task).values() for k in keys}
        by_scale: dict[float, list] = {}
        self._old_head_params = []
        for t in self.old:
            head = net.tasks[t].head
            for k in task_tensors(net, t).get(head, []):
                p = store[k]
                if id(p) in own:
                    continue
                own.add(id(p))
                self._old_head_params.append(p)
                pol = net.policy_for(task, head)
                if self.train_old_heads and not pol.frozen and pol.lr_scale != 0:
                    by_scale.setdefault(pol.lr_scale, []).append(p)
        return [{"params": ps, "lr": lr * s, "name": f"lwf_old_heads lr_scale={s}"} for s, ps in sorted(by_scale.items())]

    def after_step(self, module, info: dict) -> None:
        if not self.train_old_heads:
            # the distillation loss reaches frozen old heads too; drop those unused gradients
            for p in self._old_head_params:
                p.grad = None


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, T: float = 2.0, t2_scale: bool = True) -> torch.Tensor:
    """Distillation loss: ``KL(softmax(teacher / T) || softmax(student / T))``, batch mean,
    times ``T ** 2`` when `t2_scale`. Zero iff the two agree (up to a constant per row).

    >>> z = torch.tensor([[1.0, -1.0]])
    >>> float(kd_loss(z, z))
    0.0
    """
    log_s = F.log_softmax(student.float() / T, -1)
    log_t = F.log_softmax(teacher.float() / T, -1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
    return kl * (T * T) if t2_scale else kl
