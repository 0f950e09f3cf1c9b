"""Elastic Weight Consolidation: a quadratic penalty that keeps important trunk weights in place.

Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 114(13), 2017;
online variant from Schwarz et al., "Progress & Compress", ICML 2018 (§4, "online EWC").

Topology: a shared trunk with one head per task, exactly as fine-tuning
(`jointnet.experiments.strategy.trunk_task`). After task t the strategy estimates the diagonal
Fisher information F_t of the trunk parameters on t's training data, accumulates it with the
Fisher of earlier tasks, and stores it with an anchor theta* in the parameter store. While later
tasks train, the trainer adds

    (lambda / 2) * sum_i F_i (theta_i - theta*_i)^2

through `Hooks.extra_loss`. Heads are never penalised (each task owns its own).

State lives in the net and the store only: each trunk `Param` carries the annotations
``ewc.fisher`` and ``ewc.anchor``, `TensorRef`s to store tensors keyed
``ewc/fisher/{param_key}/{task}`` and ``ewc/anchor/{param_key}/{task}`` (a fresh key per task, so
older net versions keep meaning what they meant). Snapshots save every tensor a net references,
so a run resumed from a snapshot continues exactly. (These keys predate
`jointnet.experiments.strategy.store_key`; they are kept because the annotations that hold them
are logged rewrites: other keys would change the net's lineage, hence every later head's fresh
initial values, hence every number a run gives.)

Options (all of `EWC`'s attributes; defaults first):

- ``lam`` (100.0): the penalty strength lambda; see `EWC` for the stability limit it must
  respect with SGD. The papers tune it per benchmark. With the default trainer, 100 and 300
  trained without a non-finite loss on every shipped stream (seeds 0-2) and 1000 did not
  (`benchmarks/ewc_lambda.py`); 100 keeps a margin below the divergence, and 300 was no better on
  average (AP within 0.03 either way, stream by stream).
- ``fisher`` (``"empirical"``): squared gradients of log p(y | x) at the true labels;
  ``"true"``: at labels drawn from the model's own predictive distribution, one per input (the
  Monte Carlo estimate of the Fisher the paper defines). The default is a deviation: the paper
  defines the Fisher under the model's own distribution; the empirical one is the common
  practical choice.
- ``n_samples`` (1024): training inputs the estimate uses, a seeded random subset; None: the
  whole training split.
- ``fisher_batch_size`` (1): 1 squares per-sample gradients (the paper's diagonal Fisher);
  B > 1 squares the gradient of each batch's mean log-likelihood instead (a cheaper estimate
  about B times smaller, a deviation: scale ``lam`` up accordingly).
- ``per_sample`` (``"closed_form"``): how per-sample squared gradients are computed when
  ``fisher_batch_size`` is 1. ``"closed_form"``: for every Linear and (ungrouped) Conv2d trunk
  node, in closed form from one batched backward pass (`linear_fisher`, `conv2d_fisher`), and with
  `torch.func.vmap` for any other trunk parameter (BatchNorm affine, ...); ``"vmap"``: with
  `torch.func.vmap` for every parameter (the implementation before the closed form; several times
  slower and memory-hungry: it materialises every per-sample gradient of a chunk; the only
  choice that reproduces, bit for bit, the Fisher of runs made before the closed form). Both are
  the same Fisher up to float rounding: typically 1e-7 relative (another summation order), more
  where a sample's pre-activation lies within rounding of a ReLU kink, since vmap's one-sample
  forward rounds differently from the batched one and may flip that unit (the closed form then
  agrees with a float64 reference, vmap does not). Accuracy matrices of the runs we compared were
  identical.
- ``mode`` (``"sum"``): how task Fishers accumulate (`consolidate`):

  - ``"sum"``, the paper's multi-task penalty. Kirkpatrick et al. note that "the sum of two
    quadratic penalties is itself a quadratic penalty", so one (F, theta*) pair per parameter
    holds all of it: F = sum_t F_t and theta* = (sum_t F_t theta*_t) / F (the Fisher weighted
    mean of the per-task anchors; where F = 0 the latest weights). Its value differs from
    sum_t (lambda/2) F_t (theta - theta*_t)^2 by a constant only, so the gradients are identical.
  - ``"online"`` (Schwarz et al. 2018): F = gamma * F_prev + F_t, theta* = the weights after the
    latest task.
- ``gamma`` (1.0): decay of the old Fisher in online mode, in [0, 1]; ignored in ``"sum"`` mode.
- ``backbone`` (None): layer list for the trunk; None: `default_backbone` of the stream's inputs.

Fixed choices: the Fisher is computed in eval mode (no dropout, BatchNorm running statistics),
after the task trains, on a subset seeded by (run seed, task index).

>>> s = EWC(lam=100.0, mode="online", gamma=0.9)
>>> s.fisher, s.n_samples, s.per_sample
('empirical', 1024, 'closed_form')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from attrs import validators as v

from jointnet.errors import JointNetError
from jointnet.execution.compile import compile_net
from jointnet.execution.program import task_context
from jointnet.execution.store import ParamStore
from jointnet.experiments.strategy import TaskRun, count_or_none, default_backbone, trunk_task
from jointnet.experiments.trainer import Hooks
from jointnet.graph import annotate
from jointnet.graph.layers import Conv2d, Linear
from jointnet.graph.net import JointNet, Param, TensorRef

__all__ = [
    "EWC", "EWCHooks", "FISHER", "ANCHOR", "consolidate", "closed_form_nodes", "conv2d_fisher",
    "diag_fisher", "ewc_penalty", "linear_fisher", "penalty_terms", "trunk_fisher", "trunk_params",
]

FISHER = "ewc.fisher"
ANCHOR = "ewc.anchor"


@attrs.frozen
class EWC:
    """Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017) over a shared trunk.

    Options (see the module docstring for what each one means and where it deviates):
        lam: penalty strength lambda (default 100). The penalty's curvature is lam * F, and with
            SGD + momentum lam * max(F) * lr must stay below about 2 * (1 + momentum), or training
            diverges; ``mode="sum"`` grows F with every task, so longer streams or less confident
            models (larger F) need a smaller lam. With the default MLP backbone, SGD lr 0.05 and
            momentum 0.9, 2 epochs a task, lam = 1000 diverges on permuted- and rotated-fmnist
            (seed 0, tasks 4 and 5) although it protects split-fmnist best (BWT -0.008 against 100's
            -0.054); 100 and 300 are stable on every shipped stream (`benchmarks/ewc_lambda.py`).
        fisher: ``"empirical"`` (default) or ``"true"``.
        n_samples: training inputs used for the estimate (default 1024; None: all).
        fisher_batch_size: 1 (default: per-sample squared gradients) or B > 1 (squared
            batch-mean gradients).
        per_sample: ``"closed_form"`` (default: Linear / Conv2d in closed form, vmap for the
            rest) or ``"vmap"`` (vmap for everything).
        mode: ``"sum"`` (default) or ``"online"``.
        gamma: decay of the old Fisher in online mode, in [0, 1] (default 1.0).
        backbone: layer list for the trunk (default `default_backbone` of the stream's inputs).
    """

    lam: float = attrs.field(default=100.0, converter=float, validator=v.ge(0.0))
    fisher: str = attrs.field(default="empirical", validator=v.in_(("empirical", "true")))
    n_samples: int | None = attrs.field(default=1024, validator=count_or_none(1))
    fisher_batch_size: int = attrs.field(default=1, validator=[v.instance_of(int), v.gt(0)])
    per_sample: str = attrs.field(default="closed_form", validator=v.in_(("closed_form", "vmap")))
    mode: str = attrs.field(default="sum", validator=v.in_(("sum", "online")))
    gamma: float = attrs.field(default=1.0, converter=float, validator=[v.ge(0.0), v.le(1.0)])
    backbone: list | None = None

    def step(self, net: JointNet, run: TaskRun) -> JointNet:
        """Add the task on the shared trunk, train it under the penalty of every earlier task,
        then store its Fisher and anchor (annotations on the trunk's parameters)."""
        task = run.task
        net = trunk_task(net, self.backbone or default_backbone(task.input_shape), task.name, task.n_classes)
        run.store.realize(net)
        try:
            terms = penalty_terms(net, run.store, task.name)
        except JointNetError as e:
            raise run.error(str(e)) from None
        run.train(net, hooks=EWCHooks(terms, self.lam))
        return self.consolidate_task(net, run)

    def consolidate_task(self, net: JointNet, run: TaskRun) -> JointNet:
        """The post-task pass: `net` with the accumulated (Fisher, anchor) of every trunk tensor of
        `run.task`, the tensors put in `run.store` under new keys."""
        task, store = run.task, run.store
        try:
            trunk = trunk_params(net, task.name)
        except JointNetError as e:
            raise run.error(str(e)) from None
        if not trunk:
            return net
        x, y = task.train
        gen = torch.Generator().manual_seed(run.seed * 1_000_003 + 7 * run.index + 1)
        if self.n_samples is not None and self.n_samples < len(x):
            idx = torch.randperm(len(x), generator=gen)[: self.n_samples]
            x, y = x[idx], y[idx]
        fis = trunk_fisher(net, store, task.name, x, y, kind=self.fisher, batch_size=self.fisher_batch_size,
                           per_sample=self.per_sample, generator=gen, device=run.config.device)
        for (node, p), f_t in zip(trunk, fis):
            prev_f, prev_a = _stored(store, p)
            f, anchor = consolidate(prev_f, prev_a, f_t, store[p.key].detach(), mode=self.mode, gamma=self.gamma)
            fk, ak = f"ewc/fisher/{p.key}/{task.name}", f"ewc/anchor/{p.key}/{task.name}"
            store.put(fk, f, trainable=False)
            store.put(ak, anchor, trainable=False)
            net = annotate(net, node=node, param=p.name, key=FISHER, value=TensorRef(fk))
            net = annotate(net, node=node, param=p.name, key=ANCHOR, value=TensorRef(ak))
        return net


class EWCHooks(Hooks):
    """Adds the EWC penalty over `terms` = [(theta, F, theta*)] to every training batch."""

    def __init__(self, terms: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], lam: float):
        self.terms = terms
        self.lam = lam

    def extra_loss(self, module, x, y, logits, info: dict) -> torch.Tensor | None:
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


def linear_fisher(inputs: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over samples of the squared per-sample gradients of ``F.linear(inputs, W, b)``.

    The per-sample gradient of W is the outer product ``g_i a_i^T`` of the output gradient and
    the input, so its square is ``g_i^2 (a_i^2)^T`` and the sum over samples one matrix product;
    the bias's is ``g_i`` itself. Nothing of size samples x |W| is ever made.

    Args:
        inputs: (B, in) the layer's inputs a_i.
        grad_out: (B, out) the gradients g_i of each sample's own loss at the layer's output.

    Returns:
        (sum_i g_i^2 (a_i^2)^T of shape (out, in), sum_i g_i^2 of shape (out,)).

    >>> w, b = linear_fisher(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0]]))
    >>> w.tolist(), b.tolist()
    ([[9.0, 36.0]], [9.0])
    """
    g2 = grad_out.pow(2)
    return g2.t() @ inputs.pow(2), g2.sum(0)


def conv2d_fisher(
    inputs: torch.Tensor, grad_out: torch.Tensor, *, kernel: int, stride: int = 1, padding: int = 0,
    dilation: int = 1, max_elements: int = 1 << 26,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over samples of the squared per-sample gradients of an ungrouped ``F.conv2d``.

    Sample i's weight gradient is ``G_i = g_i U_i^T``: its output gradient g_i (C_out x L, L the
    output positions) times its unfolded input U_i (C_in*k*k x L), summed over positions; its
    bias gradient is g_i summed over positions. Each G_i is squared, then summed over samples.

    Args:
        inputs: (B, C_in, H, W) the layer's inputs.
        grad_out: (B, C_out, H', W') the gradients of each sample's own loss at its output.
        kernel, stride, padding, dilation: the convolution's (square) geometry.
        max_elements: samples go through in slices whose unfolded inputs and per-sample gradients
            hold at most about this many elements (the unfolded input of one sample is k*k times
            its input, so a whole chunk of large images would not fit).

    Returns:
        (sum_i G_i^2 of shape (C_out, C_in, k, k), sum_i (sum_l g_i)^2 of shape (C_out,)).

    >>> w, b = conv2d_fisher(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 1, 1), kernel=2)
    >>> w.flatten().tolist(), b.tolist()
    ([1.0, 1.0, 1.0, 1.0], [1.0])
    """
    n, c_in = inputs.shape[:2]
    c_out = grad_out.shape[1]
    g = grad_out.reshape(n, c_out, -1)  # (B, C_out, L)
    rows = c_in * kernel * kernel
    step = max(1, max_elements // max(rows * (g.shape[2] + c_out), 1))
    w = None
    for i in range(0, n, step):
        cols = F.unfold(inputs[i : i + step], kernel, dilation=dilation, padding=padding, stride=stride)
        per_sample = torch.bmm(g[i : i + step], cols.transpose(1, 2))  # (b, C_out, C_in*k*k)
        part = per_sample.pow(2).sum(0)
        w = part if w is None else w + part
    if w is None:
        w = inputs.new_zeros(c_out, rows)
    return w.reshape(c_out, c_in, kernel, kernel), g.sum(2).pow(2).sum(0)


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
    `generator`). batch_size 1 squares per-sample gradients (vectorised with `torch.func.vmap`:
    general, but it materialises the per-sample gradients of a whole chunk); B > 1 squares the
    gradient of each batch's mean log-likelihood and averages over batches.
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
            # `grad` differentiates inside no_grad (a function transform ignores the outer mode);
            # without it, the module's other parameters (the head's) would make every chunk's
            # result record an autograd graph that nothing ever uses.
            with torch.no_grad():
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


def closed_form_nodes(net: JointNet, task: str, nodes: Sequence[str]) -> dict[str, str | None]:
    """The nodes among `nodes` whose Fisher `trunk_fisher` computes in closed form, each with the
    node its input comes from (None: the task's input).

    A node qualifies when it is a plain Linear (not a Head) or an ungrouped Conv2d with square
    geometry, reads one input, and carries no mask of `task` (a mask multiplies the weight, which
    the closed forms do not model) and no channel groups (the weight is one block).
    """
    out: dict[str, str | None] = {}
    start = net.tasks[task].input
    for n in nodes:
        node = net.node(n)
        spec = net.effective_spec(task, n)
        if type(spec) not in (Linear, Conv2d) or (type(spec) is Conv2d and spec.groups != 1):
            continue
        if node.out_groups or node.in_groups or any(m.task == task for m in node.masks):
            continue
        ins = net.inputs_of(n, task)
        if len(ins) != 1:
            continue
        out[n] = None if ins[0] == start else ins[0]
    return out


def trunk_fisher(
    net: JointNet,
    store: ParamStore,
    task: str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    kind: str = "empirical",
    batch_size: int = 1,
    per_sample: str = "closed_form",
    generator: torch.Generator | None = None,
    device: str = "cpu",
    chunk: int = 256,
) -> list[torch.Tensor]:
    """Diagonal Fisher (mean over `x`) of every tensor of `trunk_params(net, task)`, in order.

    With ``per_sample="closed_form"`` and `batch_size` 1, the nodes `closed_form_nodes` admits
    get `linear_fisher` / `conv2d_fisher` from one batched eval-mode backward per chunk (each
    sample's log-likelihood depends on that sample only, so the gradient of their sum at a
    layer's output holds every per-sample output gradient); every other tensor goes through
    `diag_fisher` (vmap). ``per_sample="vmap"`` or `batch_size` > 1: `diag_fisher` for all.
    """
    if per_sample not in ("closed_form", "vmap"):
        raise JointNetError(f"ewc: per_sample must be 'closed_form' or 'vmap' (got {per_sample!r})")
    trunk = trunk_params(net, task)
    module = compile_net(net, store, task)
    attr_of = {k: a for a, k in module.keys.items()}
    if per_sample == "vmap" or batch_size != 1:
        return diag_fisher(module, [attr_of[p.key] for _, p in trunk], x, y, kind=kind, batch_size=batch_size,
                           generator=generator, device=device, chunk=chunk)
    if kind not in ("empirical", "true"):
        raise JointNetError(f"ewc: fisher must be 'empirical' or 'true' (got {kind!r})")
    if kind == "true":  # one draw of labels, shared by both paths
        was = module.training
        module.eval()
        try:
            y = _sample_labels(module, x, generator, device, chunk)
        finally:
            module.train(was)
    closed = closed_form_nodes(net, task, list(dict.fromkeys(n for n, _ in trunk)))
    sums = _closed_form_sums(net, store, task, closed, x, y, device, chunk)
    rest = [i for i, (n, _) in enumerate(trunk) if n not in closed]
    out: list[Any] = [None] * len(trunk)
    if rest:
        fis = diag_fisher(module, [attr_of[trunk[i][1].key] for i in rest], x, y, device=device, chunk=chunk)
        for i, f in zip(rest, fis):
            out[i] = f
    for i, (n, p) in enumerate(trunk):
        if n in closed:
            out[i] = sums[n][p.name] / max(len(x), 1)
    return out


def _closed_form_sums(net: JointNet, store: ParamStore, task: str, closed: dict[str, str | None],
                      x: torch.Tensor, y: torch.Tensor, device: str, chunk: int) -> dict[str, dict[str, torch.Tensor]]:
    """node -> {"weight": sum_i (dW_i)^2, "bias": sum_i (db_i)^2} over `x` for the nodes `closed`."""
    if not closed:
        return {}
    sums: dict[str, dict[str, torch.Tensor]] = {}
    capture = list(dict.fromkeys([*closed, *(u for u in closed.values() if u is not None)]))
    module = compile_net(net, store, [task], capture=capture)
    ctx = task_context(net, task, training=False)
    specs = {n: net.effective_spec(task, n) for n in closed}
    # Outputs depend on the trunk's weights, so they carry gradients without x's; should a
    # caller have switched those off, ask for x's gradient instead so the graph exists.
    need_x = not all(store[p.key].requires_grad for n in closed for p in net.node(n).params if not p.buffer)
    with torch.enable_grad():
        for i in range(0, len(x), chunk):
            xb, yb = x[i : i + chunk].to(device), y[i : i + chunk].to(device)
            if need_x:
                xb = xb.clone().requires_grad_(True)
            logits, acts = module(xb, ctx)
            ll = F.log_softmax(logits[task].float(), -1).gather(1, yb[:, None]).sum()
            grads = torch.autograd.grad(ll, [acts[(task, n)] for n in closed])
            for (n, src), g in zip(closed.items(), grads):
                a = (xb if src is None else acts[(task, src)]).detach()
                spec = specs[n]
                if type(spec) is Linear:
                    w, b = linear_fisher(a.float(), g.float())
                else:
                    w, b = conv2d_fisher(a.float(), g.float(), kernel=spec.kernel, stride=spec.stride,
                                         padding=spec.padding, dilation=spec.dilation)
                acc = sums.setdefault(n, {"weight": torch.zeros_like(w), "bias": torch.zeros_like(b)})
                acc["weight"] += w
                acc["bias"] += b
    return sums


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
