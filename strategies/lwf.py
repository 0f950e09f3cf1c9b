"""Learning without Forgetting: distil the old heads' own outputs while learning a new task.

Li & Hoiem, "Learning without Forgetting", ECCV 2016 (TPAMI 2018).

Topology: a shared trunk (theta_s) with one head per task, as fine-tuning
(`strategies.simple._trunk_task`). Training task t minimises

    CE(new head, y) + lam * sum_{old o} KD(student_o(x), teacher_o(x); T)

where the teacher is the net *as it was before task t* (trunk and old heads theta_o), and
KD = T^2 * KL(softmax(teacher / T) || softmax(student / T)). The paper records the old heads'
responses y_o on the new task's images once before training; a frozen teacher evaluated
online (eval mode, no augmentation here) gives exactly those targets without storing them.

- The teacher is transient: at the start of each task it is compiled from clones of the store
  tensors the old tasks use (`teacher_store`), so a run resumed from the previous task's
  snapshot rebuilds the same teacher and continues exactly. Nothing lives on the strategy.
- The student is one multi-task compile of the current net over every seen task, so the shared
  trunk runs once per batch and feeds the new head (cross-entropy, added by the trainer) and the
  old heads (distillation) alike (`Hooks.forward`).
- Old heads train too, as in the paper (`Hooks.extra_param_groups`), unless
  ``freeze_old_heads=True``.

>>> LwF().lam, LwF().T, LwF().warmup_epochs
(1.0, 2.0, 0)
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import validators as v

from jointnet.execution.compile import compile_net
from jointnet.graph.net import JointNet
from jointnet.execution.store import ParamStore
from jointnet.graph import freeze
from jointnet.execution.optim import task_tensors
from jointnet.experiments.trainer import Hooks, TrainResult, train_task
from strategies.base import RunState, Strategy, register
from strategies.simple import _trunk_task

__all__ = ["LwF", "LwFHooks", "kd_loss", "teacher_store"]


@register("lwf")
@attrs.frozen
class LwF(Strategy):
    """Learning without Forgetting (Li & Hoiem, ECCV 2016) over a shared trunk.

    Options:
        lam: weight of the distillation term, the paper's lambda_o (default 1.0).
        T: distillation temperature (default 2, the paper's choice).
        t2_scale: multiply the distillation loss by T^2 (default True; Hinton et al.'s
            convention, which keeps its gradients comparable across temperatures). False gives
            the paper's plain modified cross-entropy scale.
        warmup_epochs: epochs that first train only the new head, trunk and old heads frozen
            (the paper's optional warm-up step, §3; default 0: none). They come before the
            trainer's ``epochs`` of joint training.
        freeze_old_heads: keep the old heads fixed (default False: they train on the
            distillation loss, as in the paper).
        backbone: layer list for the trunk (default `strategies.base.default_backbone`).
    """

    lam: float = attrs.field(default=1.0, converter=float, validator=v.ge(0.0))
    T: float = attrs.field(default=2.0, converter=float, validator=v.gt(0.0))
    t2_scale: bool = True
    warmup_epochs: int = attrs.field(default=0, validator=[v.instance_of(int), v.ge(0)])
    freeze_old_heads: bool = False
    backbone: list | None = None

    def before_task(self, state: RunState, task, index: int) -> None:
        _trunk_task(state, task, index, self.backbone)

    def hooks(self, state: RunState, task, index: int) -> Hooks:
        """The distillation hooks, with a teacher cloned from the store *now*: call it before
        training the task."""
        old = [t for t in state.net.tasks if t != task.name]
        if not old:
            return Hooks()
        teacher = compile_net(state.net, teacher_store(state.net, state.store, old), old, cache=False)
        teacher.eval()
        student = compile_net(state.net, state.store, old + [task.name])
        return LwFHooks(student, teacher, task.name, old, lam=self.lam, T=self.T, t2_scale=self.t2_scale,
                        train_old_heads=not self.freeze_old_heads)

    def train_task(self, state: RunState, task, index: int) -> TrainResult:
        hooks = self.hooks(state, task, index)  # the teacher: the net before any step of task t
        if self.warmup_epochs and index > 0:
            trunk = [n for n in state.net.route(task.name)
                     if state.net.node(n).params and n != state.net.tasks[task.name].head]
            warm = freeze(state.net, nodes=trunk, task=task.name)  # transient; state.net untouched
            train_task(warm, state.store, task.name, task.train, task.val,
                       attrs.evolve(state.config, epochs=self.warmup_epochs), Hooks(), task_index=index)
        return train_task(state.net, state.store, task.name, task.train, task.val, state.config, hooks,
                          task_index=index)


class LwFHooks(Hooks):
    """One multi-task student forward; CE on the new head (trainer), KD on the old heads."""

    def __init__(self, student, teacher, task: str, old: list[str], *, lam: float, T: float,
                 t2_scale: bool, train_old_heads: bool):
        self.student, self.teacher = student, teacher
        self.task, self.old = task, list(old)
        self.lam, self.T, self.t2_scale = lam, T, t2_scale
        self.train_old_heads = train_old_heads
        self._old_head_params: list[torch.Tensor] = []

    def forward(self, module, x, ctx):
        self.student.train(module.training)
        out = self.student(x)
        ctx["lwf.old_logits"] = {t: out[t] for t in self.old}
        return out[self.task]

    def extra_loss(self, module, x, y, logits, ctx):
        student = ctx.get("lwf.old_logits")
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

    def after_step(self, module, ctx):
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


def teacher_store(net: JointNet, store: ParamStore, tasks: list[str]) -> ParamStore:
    """A new store holding detached clones of every tensor `tasks` use in `net` (a frozen copy)."""
    out = ParamStore(seed=store.seed, device=store.device)
    for t in tasks:
        for n in net.route(t):
            node = net.node(n)
            for key in [p.key for p in node.params] + [m.key for m in node.masks]:
                if key not in out.tensors and key in store.tensors:
                    out.tensors[key] = store.tensors[key].detach().clone()
    return out
