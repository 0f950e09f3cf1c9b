"""Elastic Weight Consolidation: a quadratic penalty that keeps important trunk weights in place.

Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 114(13), 2017;
online variant from Schwarz et al., "Progress & Compress", ICML 2018 (§4, "online EWC").

Topology: a shared trunk with one head per task, exactly as fine-tuning
(`strategies.simple._trunk_task`). After task t the strategy estimates the diagonal Fisher
information F_t of the trunk parameters on t's training data, accumulates it with the Fisher of
earlier tasks, and stores it with an anchor theta* in the parameter store. While later tasks
train, the trainer adds

    (lambda / 2) * sum_i F_i (theta_i - theta*_i)^2

through `Hooks.extra_loss`. Heads are never penalised (each task owns its own).

State lives in the net and the store only: each trunk `Param` carries the annotations
``ewc.fisher`` and ``ewc.anchor``, `TensorRef`s to store tensors keyed
``ewc/fisher/{param_key}/{task}`` and ``ewc/anchor/{param_key}/{task}`` (a fresh key per task, so
older net versions keep meaning what they meant). Snapshots save every tensor a net references,
so a run resumed from a snapshot continues exactly.

Accumulation (`consolidate`):

- ``mode="sum"`` (default): the paper's multi-task penalty. Kirkpatrick et al. note that "the sum
  of two quadratic penalties is itself a quadratic penalty", so one (F, theta*) pair per
  parameter holds all of it: F = sum_t F_t and theta* = (sum_t F_t theta*_t) / F (the Fisher
  weighted mean of the per-task anchors; where F = 0 the latest weights). Its value differs from
  sum_t (lambda/2) F_t (theta - theta*_t)^2 by a constant only, so the gradients are identical.
- ``mode="online"``: F = gamma * F_prev + F_t and theta* = the weights after the latest task.

>>> s = EWC(lam=100.0, mode="online", gamma=0.9)
>>> s.fisher, s.n_samples
('empirical', 1024)
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from attrs import validators as v

from jointnet.execution.compile import compile_net
from jointnet.errors import JointNetError
from jointnet.graph.net import JointNet, Param, TensorRef
from jointnet.graph import annotate
from jointnet.experiments.trainer import Hooks
from strategies.base import RunState, Strategy, register
from strategies.simple import _trunk_task

__all__ = ["EWC", "EWCHooks", "ewc_penalty", "consolidate", "diag_fisher", "trunk_params", "penalty_terms",
           "FISHER", "ANCHOR"]

FISHER = "ewc.fisher"
ANCHOR = "ewc.anchor"


def _opt_pos_int(inst, attribute, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"'{attribute.name}' must be a positive int or None (got {value!r})")


@register("ewc")
@attrs.frozen
class EWC(Strategy):
    """Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017) over a shared trunk.

    Options:
        lam: penalty strength lambda (default 1000). On split-fmnist (5 tasks) with the default
            MLP backbone, SGD lr 0.05 and momentum 0.9, 2 epochs a task, it takes finetune's BWT
            from -0.112 to -0.005. The penalty's curvature is lam * F, and with SGD + momentum
            lam * max(F) * lr must stay below about 2 * (1 + momentum), or training diverges:
            there lam = 1000 keeps it under 0.5 through task 5, while lam = 5000 (often quoted for
            MNIST-scale nets) crosses it at task 3. ``mode="sum"`` grows F with every task, so
            longer streams or less confident models (larger F) need a smaller lam.
        fisher: ``"empirical"`` (default): squared gradients of log p(y | x) at the true labels;
            ``"true"``: at labels sampled from the model's own predictive distribution (one
            sample per input, the Monte Carlo estimate of the Fisher the paper defines).
        n_samples: training inputs used for the estimate, a seeded random subset (default 1024;
            None: the whole training split).
        fisher_batch_size: 1 (default) squares per-sample gradients (the paper's diagonal
            Fisher, computed with `torch.func.vmap`); B > 1 squares the gradient of each batch's
            mean log-likelihood instead, a cheaper estimate that is about B times smaller, so
            scale `lam` up accordingly.
        mode: ``"sum"`` (default, the paper's one-penalty-per-task, summed) or ``"online"``
            (Schwarz et al. 2018: F = gamma * F_prev + F_t, anchor = latest weights).
        gamma: decay of the old Fisher in online mode, in [0, 1] (default 1.0); ignored in
            ``"sum"`` mode.
        backbone: layer list for the trunk (default `strategies.base.default_backbone`).
    """

    lam: float = attrs.field(default=1000.0, converter=float, validator=v.ge(0.0))
    fisher: str = attrs.field(default="empirical", validator=v.in_(("empirical", "true")))
    n_samples: int | None = attrs.field(default=1024, validator=_opt_pos_int)
    fisher_batch_size: int = attrs.field(default=1, validator=[v.instance_of(int), v.gt(0)])
    mode: str = attrs.field(default="sum", validator=v.in_(("sum", "online")))
    gamma: float = attrs.field(default=1.0, converter=float, validator=[v.ge(0.0), v.le(1.0)])
    backbone: list | None = None

    def before_task(self, state: RunState, task, index: int) -> None:
        _trunk_task(state, task, index, self.backbone)

    def hooks(self, state: RunState, task, index: int) -> "EWCHooks":
        return EWCHooks(penalty_terms(state.net, state.store, task.name), self.lam)

    def after_task(self, state: RunState, task, index: int) -> None:
        net, store, config = state.net, state.store, state.config
        trunk = trunk_params(net, task.name)
        if not trunk:
            return
        module = compile_net(net, store, task.name)
        attr_of = {k: a for a, k in module.keys.items()}
        x, y = task.train
        gen = torch.Generator().manual_seed(state.seed * 1_000_003 + 7 * index + 1)
        if self.n_samples is not None and self.n_samples < len(x):
            idx = torch.randperm(len(x), generator=gen)[: self.n_samples]
            x, y = x[idx], y[idx]
        fis = diag_fisher(
            module, [attr_of[p.key] for _, p in trunk], x, y, kind=self.fisher,
            batch_size=self.fisher_batch_size, generator=gen, device=config.device,
        )
        for (node, p), f_t in zip(trunk, fis):
            prev_f, prev_a = _stored(store, p)
            f, anchor = consolidate(prev_f, prev_a, f_t, store[p.key].detach(), mode=self.mode, gamma=self.gamma)
            fk, ak = f"ewc/fisher/{p.key}/{task.name}", f"ewc/anchor/{p.key}/{task.name}"
            store.put(fk, f, trainable=False)
            store.put(ak, anchor, trainable=False)
            net = annotate(net, node=node, param=p.name, key=FISHER, value=TensorRef(fk))
            net = annotate(net, node=node, param=p.name, key=ANCHOR, value=TensorRef(ak))
        state.net = net


class EWCHooks(Hooks):
    """Adds the EWC penalty over `terms` = [(theta, F, theta*)] to every training batch."""

    def __init__(self, terms: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], lam: float):
        self.terms = terms
        self.lam = lam

    def extra_loss(self, module, x, y, logits, ctx):
        if not self.terms or self.lam == 0:
            return None
        thetas, fishers, anchors = zip(*self.terms)
        return ewc_penalty(thetas, fishers, anchors, self.lam)


# ---- pure parts ---------------------------------------------------------------------------------


def ewc_penalty(params, fishers, anchors, lam: float) -> torch.Tensor:
    """``(lam / 2) * sum_i sum(F_i * (theta_i - theta*_i) ** 2)`` over matching tensor lists.

    >>> ewc_penalty([torch.tensor([1.0, 2.0])], [torch.tensor([2.0, 0.5])], [torch.zeros(2)], 2.0)
    tensor(4.)
    """
    total = None
    for p, f, a in zip(params, fishers, anchors, strict=True):
        term = (f * (p - a).pow(2)).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return 0.5 * lam * total


def consolidate(
    fisher_prev: torch.Tensor | None,
    anchor_prev: torch.Tensor | None,
    fisher_new: torch.Tensor,
    theta: torch.Tensor,
    *,
    mode: str = "sum",
    gamma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The accumulated (Fisher, anchor) after a task with Fisher `fisher_new` ending at `theta`.

    ``sum``: F = F_prev + F_new, anchor = (F_prev * a_prev + F_new * theta) / F (theta where
    F = 0), so the one quadratic equals the sum of the per-task ones up to a constant.
    ``online``: F = gamma * F_prev + F_new, anchor = theta.

    >>> f, a = consolidate(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([4.0]))
    >>> f.item(), a.item()
    (4.0, 3.0)
    """
    theta = theta.detach()
    fisher_new = fisher_new.detach()
    if fisher_prev is None:
        return fisher_new.clone(), theta.clone()
    if mode == "online":
        return gamma * fisher_prev + fisher_new, theta.clone()
    if mode != "sum":
        raise JointNetError(f"ewc: mode must be 'sum' or 'online' (got {mode!r})")
    f = fisher_prev + fisher_new
    weighted = fisher_prev * anchor_prev + fisher_new * theta
    anchor = torch.where(f > 0, weighted / torch.where(f > 0, f, torch.ones_like(f)), theta)
    return f, anchor


def diag_fisher(
    module,
    names: list[str],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    kind: str = "empirical",
    batch_size: int = 1,
    generator: torch.Generator | None = None,
    device: str = "cpu",
    chunk: int = 256,
) -> list[torch.Tensor]:
    """Diagonal Fisher of the module tensors called `names`: the mean over inputs of the squared
    gradient of ``log p(y | x)``, in eval mode (no dropout, BatchNorm running statistics).

    kind ``empirical`` uses the labels `y`; ``true`` draws y ~ p(. | x) from the module (with
    `generator`). batch_size 1 squares per-sample gradients (vectorised with `torch.func`); B > 1
    squares the gradient of each batch's mean log-likelihood and averages over batches.
    """
    if kind not in ("empirical", "true"):
        raise JointNetError(f"ewc: fisher must be 'empirical' or 'true' (got {kind!r})")
    was = module.training
    module.eval()
    try:
        params = dict(module.named_parameters())
        targets = {n: params[n] for n in names}
        if kind == "true":
            y = _sample_labels(module, x, generator, device, chunk)
        sums = [torch.zeros_like(targets[n], memory_format=torch.contiguous_format) for n in names]
        if batch_size == 1:
            from torch.func import functional_call, grad, vmap

            frozen = {n: t.detach() for n, t in targets.items()}

            def loglik(p, xi, yi):
                out = functional_call(module, p, (xi.unsqueeze(0),))
                return F.log_softmax(out.float(), -1)[0].gather(0, yi.unsqueeze(0)).squeeze(0)

            per_sample = vmap(grad(loglik), in_dims=(None, 0, 0))
            for i in range(0, len(x), chunk):
                g = per_sample(frozen, x[i : i + chunk].to(device), y[i : i + chunk].to(device))
                for s, n in zip(sums, names):
                    s += g[n].pow(2).sum(0)
            count = len(x)
        else:
            count = 0
            tensors = [targets[n] for n in names]
            for i in range(0, len(x), batch_size):
                xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
                ll = F.log_softmax(module(xb).float(), -1).gather(1, yb[:, None]).mean()
                for s, g in zip(sums, torch.autograd.grad(ll, tensors)):
                    s += g.pow(2)
                count += 1
        return [s / max(count, 1) for s in sums]
    finally:
        module.train(was)


@torch.no_grad()
def _sample_labels(module, x, generator, device, chunk) -> torch.Tensor:
    out = []
    for i in range(0, len(x), chunk):
        probs = F.softmax(module(x[i : i + chunk].to(device)).float(), -1).cpu()
        out.append(torch.multinomial(probs, 1, generator=generator).squeeze(1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def trunk_params(net: JointNet, task: str) -> list[tuple[str, Param]]:
    """(node, Param) for every trainable tensor on `task`'s route except its head's.

    Raises:
        JointNetError: a node holds a parameter in several blocks (a widened node) or the task
            is unknown; EWC here is defined for a plain shared trunk.
    """
    if task not in net.tasks:
        raise JointNetError(f"ewc: no task {task!r}; tasks are {', '.join(net.tasks)}")
    head = net.tasks[task].head
    out = []
    for n in net.route(task):
        if n == head:
            continue
        for name, rows in net.params_for(task, n).items():
            ps = [p for row in rows for p in row]
            if ps[0].buffer:
                continue
            if len(ps) != 1:
                raise JointNetError(f"ewc: node {n!r} holds {name!r} in {len(ps)} channel blocks; "
                                    "EWC needs a plain shared trunk (no widen)")
            out.append((n, ps[0]))
    return out


def _ref(p: Param, ann: str, kind: str) -> TensorRef | None:
    # The key embeds the parameter's own key, so an annotation that `annotate` spread to a
    # per-task variant of the same name is never misread as that variant's.
    r = p.annotations.get(ann)
    if isinstance(r, TensorRef) and r.key.startswith(f"ewc/{kind}/{p.key}/"):
        return r
    return None


def _stored(store, p: Param) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    fr, ar = _ref(p, FISHER, "fisher"), _ref(p, ANCHOR, "anchor")
    if fr is None or ar is None:
        return None, None
    return store[fr.key], store[ar.key]


def penalty_terms(net: JointNet, store, task: str) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(theta, F, theta*) for every trunk tensor of `task` that an earlier task consolidated."""
    terms = []
    for _, p in trunk_params(net, task):
        f, a = _stored(store, p)
        if f is not None:
            terms.append((store[p.key], f, a))
    return terms
