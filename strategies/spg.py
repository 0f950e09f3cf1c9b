"""SPG, parameter-level soft-masking (Konishi, Kang, Iwasaki, Rao, Xiao, Hori, Liu, ICML 2023).

The method is SPG spec §2 (equations settled from the authors' code) and its graph mapping §8:

**Graph side.** No topology change besides the per-task head: the first task builds the trunk
(`default_backbone` or ``backbone``), later tasks `bind` to it and add their own head
(`trunk_task`). The first task also puts a ``multiply`` gradient rule with the provider
``"spg"`` (`strategies.spg_core.spg_provider`) on every trainable parameter of every trunk node,
for every task, and records the variant in the net annotation ``spg``; each task puts the same
rule on its own head (SMH). HAT's conditioning is the same mechanism (provider ``"hat"``).

**Per task t** (spec §2.1, §2.7):

1. Train under the rules: every trunk gradient is multiplied by ``1 - gamma^{<=t-1}`` (Eq. 6),
   the head's by ``1 - mean(cat(gamma^{<=t-1}))`` over every trunk scalar (Eq. 7, SMH). For
   t = 1 there is no importance yet: nothing is scaled.
2. After training (the trainer has put back the best weights when early stopping or the plateau
   schedule is on), compute the importance of every trunk tensor for the current head, the
   *signed* gradient of the batch-mean cross-entropy summed over every minibatch of the task's
   training set in order (`gradient_sums`), and, with CHI, for every old head tau the gradient
   of the sum of head tau's logits on the same inputs; ``|tanh(zscore(.))|`` per tensor, max
   over heads (`task_importance`).
3. Fold it into ``gamma^{<=t} = max(gamma^{<=t-1}, gamma^t)``: new store tensors (keys from
   `store_key`) referenced from each trunk `Param`'s annotation ``spg.importance``
   (`commit_importance`), and freeze the task's head. Nothing lives on the strategy object, so a
   run resumed from a snapshot continues exactly.

**Options** (`SPG` fields; defaults are the paper's / the authors' code unless marked):

- ``backbone`` = None: a declarative layer list; None is `default_backbone` of the stream's input.
- ``chi`` = True: cross-head importance (CHI); false is the ablation "w/o CHI" (``gamma^t =
  gamma^{t,t}``).
- ``smh`` = True: soft-mask the head (SMH); false is the ablation "w/o SMH".
- ``hard_threshold`` = None: None for soft masks; a number in (0, 1) for the ablation "w/
  hard-masking", ``g' = (1 - 1[gamma > threshold]) g`` (the paper searches 0.2, 0.4, 0.6, 0.8).
  The head factor then uses the mean of the binary masks ([ours]: spec §7.6 leaves it open).
- ``importance`` = "gradient": "gradient" for SPG's summed-gradient importance, "fisher" for
  SPG-FI. SPG-FI's importance is EWC's diagonal empirical Fisher of the task
  (`strategies.ewc.trunk_fisher`, per-sample, eval mode) instead of the summed gradient; CHI then
  uses the Fisher of each old head tau on the new task's inputs under labels drawn from head
  tau's own predictions (EWC's ``"true"`` Fisher; [ours]).
- ``fisher_norm`` = "zscore": how SPG-FI brings the Fisher into [0, 1] ([ours], spec §7.6 leaves it
  open): "zscore" applies SPG's own ``|tanh(zscore(F))|`` per tensor (the gradient replaced by the
  Fisher, nothing else changed); "max": ``F / max(F)`` per tensor. Used only by SPG-FI.
- ``ewc_gi`` = None: None for SPG's masks; a lambda > 0 for EWC-GI. EWC-GI masks nothing (no trunk
  or head factor) and adds EWC's penalty ``(lambda / 2) sum gamma^{<=t-1} (theta - theta*)^2``
  (`strategies.ewc.ewc_penalty`, `EWCHooks`) with theta* the weights after the latest task.
  With plain SGD, ``lambda * lr`` must stay below 2 or important weights oscillate. Excludes
  ``hard_threshold``; ``smh`` has no effect under it.
- ``importance_mode`` = "train": "train" keeps dropout active while importance is computed, as the
  code (spec §7.2); "eval" turns it off. BatchNorm uses its running statistics either way
  ([ours]: the pass must change nothing).
- ``norm_scope`` = "tensor": "tensor" z-scores each tensor (weight and bias separately, as the
  code); "node" pools a node's tensors (the paper's "within each layer", spec §8.1).
- ``apply`` = "grad": "grad" multiplies gradients by the factors (exact for plain SGD, the paper's
  optimizer); "update" multiplies the optimizer's step instead, so a blocked parameter stays
  bit-identical under momentum and weight decay too (spec §2.4, §7.4).
- ``importance_batch_size`` = None: batch size of the importance pass (None: the run's).
- ``freeze_old_heads`` = True: freeze a finished task's head (it is off later routes anyway).

**Train config.** `RECOMMENDED_CONFIG` is the code's: plain SGD (no momentum, no weight decay),
lr 0.25, batch 64, up to 500 epochs, lr / 3 after 5 epochs without improvement, stop below lr
1e-3 (the trainer's plateau schedule watches validation accuracy, the code validation loss, and
stops as soon as the lr falls below the minimum rather than after 5 more epochs there). The
head-only gradient clip at 10000 of the code is omitted (a no-op, spec §2.5).

Example:

>>> s = SPG(chi=False, hard_threshold=0.6)
>>> s.chi, s.smh, s.hard_threshold, s.variant()["importance"]
(False, True, 0.6, 'gradient')
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch
import torch.nn.functional as F

from jointnet.errors import JointNetError
from jointnet.execution.compile import compile_net
from jointnet.execution.program import task_context
from jointnet.execution.store import ParamStore
from jointnet.experiments.strategy import (
    TaskRun, add_column, backbone_option, count_or_none, default_backbone, positive_or_none, store_key,
    teacher_store, trunk_task,
)
from jointnet.experiments.trainer import accuracy
from jointnet.graph import annotate, freeze, set_grad_rule
from jointnet.graph.net import JointNet, Param, TensorRef
from strategies.ewc import EWCHooks, trunk_fisher
from strategies.spg_core import (
    ANCHOR, IMPORTANCE, NET_KEY, PROVIDER, accumulate, accumulated, chi_max, fail, importance,
    importance_group, trunk_params,
)

__all__ = [
    "RECOMMENDED_CONFIG", "SPG", "commit_importance", "fisher_importance", "gradient_sums", "penalty_terms",
    "prune_probe", "task_importance", "tensor_importance",
]

#: TrainConfig fields of the authors' code (SPG spec §3); the runner's config decides.
RECOMMENDED_CONFIG: dict[str, Any] = {
    "optimizer": "sgd", "lr": 0.25, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 64,
    "epochs": 500, "schedule": "plateau", "lr_factor": 3.0, "lr_patience": 5, "min_lr": 1e-3,
}


def _flag(_inst, a: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"'{a.name}' must be true or false (got {value!r})")


def _choice(*options: str):
    def check(_inst, a: attrs.Attribute, value: Any) -> None:
        if value not in options:
            raise ValueError(f"'{a.name}' must be one of {', '.join(map(repr, options))} (got {value!r})")
    return check


def _threshold_option(_inst, a: attrs.Attribute, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1):
        raise ValueError(f"'{a.name}' must be None or a number in (0, 1) (got {value!r})")


# ---- importance passes ------------------------------------------------------------------------


def gradient_sums(net: JointNet, store: ParamStore, task: str, head: str, x: torch.Tensor, y: torch.Tensor, *,
                  batch_size: int = 64, mode: str = "train") -> list[torch.Tensor]:
    """``G^{task,head}``: the signed gradient of every trunk tensor of `task` (`trunk_params`, in
    order), summed over the minibatches of `x` in order (spec §2.2).

    The loss of a batch is the batch-mean cross-entropy of head `task` at labels `y` when
    ``head == task``, else the sum of head `head`'s logits (CHI; labels unused). `mode` "train":
    dropout active (BatchNorm on running statistics); "eval": both off. Nothing is updated (no
    ``.grad`` is written).
    """
    trunk = trunk_params(net, task)
    tensors = [store[p.key] for _, p in trunk]
    module = compile_net(net, store, head)
    ctx = task_context(net, head, training=mode == "train", bn=False)
    sums = [torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in tensors]
    was = [t.requires_grad for t in tensors]
    try:
        for t in tensors:
            t.requires_grad_(True)
        with torch.enable_grad():
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size].to(store.device)
                logits = module(xb, ctx).float()
                if head == task:
                    loss = F.cross_entropy(logits, y[i : i + batch_size].to(store.device))
                else:
                    loss = logits.sum()
                grads = torch.autograd.grad(loss, tensors, allow_unused=True)
                for s, g in zip(sums, grads):
                    if g is not None:
                        s += g.float()
    finally:
        for t, w in zip(tensors, was):
            t.requires_grad_(w)
    return sums


def tensor_importance(net: JointNet, task: str, grads: list[torch.Tensor], scope: str = "tensor") -> list[torch.Tensor]:
    """``|tanh(zscore(g))|`` of each trunk tensor's `grads` (aligned with `trunk_params`), the
    z-score over each tensor (`scope` "tensor") or over each node's tensors pooled ("node")."""
    if scope == "tensor":
        return [importance(g) for g in grads]
    nodes = [n for n, _ in trunk_params(net, task)]
    out: list[Any] = [None] * len(grads)
    for n in dict.fromkeys(nodes):
        idx = [i for i, m in enumerate(nodes) if m == n]
        for i, imp in zip(idx, importance_group([grads[i] for i in idx])):
            out[i] = imp
    return out


def fisher_importance(fishers: list[torch.Tensor], norm: str = "zscore") -> list[torch.Tensor]:
    """SPG-FI's importance from diagonal Fisher tensors: ``|tanh(zscore(F))|`` ("zscore") or
    ``F / max(F)`` per tensor ("max"; 0 where the Fisher is all 0).

    >>> fisher_importance([torch.tensor([0.0, 1.0, 4.0])], "max")[0].tolist()
    [0.0, 0.25, 1.0]
    """
    if norm == "zscore":
        return [importance(f) for f in fishers]
    if norm != "max":
        raise JointNetError(f"spg: fisher_norm must be 'zscore' or 'max' (got {norm!r})")
    out = []
    for f in fishers:
        f = f.detach().float()
        m = f.max() if f.numel() else torch.zeros(())
        out.append(f / m if float(m) > 0 else torch.zeros_like(f))
    return out


def task_importance(net: JointNet, store: ParamStore, task: str, x: torch.Tensor, y: torch.Tensor, *,
                    old_heads: list[str] = (), producer: str = "gradient", fisher_norm: str = "zscore",
                    mode: str = "train", scope: str = "tensor", batch_size: int = 64,
                    generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """``gamma^t`` of every trunk tensor of `task` (aligned with `trunk_params`): the importance
    through `task`'s own head and, CHI, through each of `old_heads` on the same inputs, max over
    heads (spec §2.2). `producer` "gradient" (SPG) or "fisher" (SPG-FI)."""
    per_head = []
    for head in [task, *old_heads]:
        if producer == "gradient":
            g = gradient_sums(net, store, task, head, x, y, batch_size=batch_size, mode=mode)
            per_head.append(tensor_importance(net, task, g, scope))
        elif producer == "fisher":
            keys = [p.key for _, p in trunk_params(net, task)]
            kind = "empirical" if head == task else "true"
            fis = trunk_fisher(net, store, head, x, y, kind=kind, generator=generator, device=store.device)
            by_key = {p.key: f for (_, p), f in zip(trunk_params(net, head), fis)}
            per_head.append(fisher_importance([by_key[k] for k in keys], fisher_norm))
        else:
            raise JointNetError(f"spg: importance must be 'gradient' or 'fisher' (got {producer!r})")
    return chi_max(per_head)


def commit_importance(net: JointNet, store: ParamStore, task: str, gammas: list[torch.Tensor], *,
                      anchors: bool = False) -> JointNet:
    """The post-task pass: fold `gammas` (``gamma^t``, aligned with `trunk_params`) into every
    trunk tensor's ``gamma^{<=t}`` (new store keys, `IMPORTANCE` annotations) and, with
    `anchors` (EWC-GI), record the current weights as theta* (`ANCHOR` annotations); `task` goes
    into the net annotation's list of tasks done. Older versions of the net keep their tensors.
    """
    trunk = trunk_params(net, task)
    if len(trunk) != len(gammas):
        raise fail(f"{len(gammas)} importance tensors for {len(trunk)} trunk tensors", task)
    for (n, p), g in zip(trunk, gammas):
        new = accumulate(accumulated(store, p), g.to(store.device))
        key = store_key(net, n, f"{IMPORTANCE}.{p.name}")
        store.put(key, new, trainable=False)
        net = annotate(net, node=n, param=p.name, key=IMPORTANCE, value=TensorRef(key))
        if anchors:
            akey = store_key(net, n, f"{ANCHOR}.{p.name}")
            store.put(akey, store[p.key].detach(), trainable=False)
            net = annotate(net, node=n, param=p.name, key=ANCHOR, value=TensorRef(akey))
    cfg = dict(net.annotations.get(NET_KEY) or {})
    cfg["tasks"] = list(cfg.get("tasks", ())) + [task]
    return annotate(net, key=NET_KEY, value=cfg)


def penalty_terms(net: JointNet, store: ParamStore, task: str) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """EWC-GI's (theta, gamma^{<=t-1}, theta*) for every trunk tensor of `task` that has both."""
    terms = []
    for _, p in trunk_params(net, task):
        g, a = accumulated(store, p), p.annotations.get(ANCHOR)
        if g is not None and isinstance(a, TensorRef):
            terms.append((store[p.key], g.detach(), store[a.key].detach()))
    return terms


# ---- the pruning probe (spec §2.9, Table 6) -----------------------------------------------------------


def prune_probe(net: JointNet, store: ParamStore, task: str, x: torch.Tensor, y: torch.Tensor, *,
                fraction: float, which: str = "lowest", scope: str = "global", seed: int = 0,
                batch_size: int = 1024) -> float:
    """`task`'s accuracy on (x, y) with `fraction` of its trunk parameters set to 0.

    `which`: the parameters of lowest / highest accumulated importance (``spg.importance``) or a
    random draw; ties are broken at random. `scope` ([ours]; the paper does not say): "global"
    ranks every trunk scalar together, "tensor" prunes `fraction` of each tensor. Runs on a copy
    of the task's tensors (`teacher_store`): `store` is not touched.

    Raises:
        StrategyError: a bad argument, or a trunk tensor without importance.
    """
    if not 0 <= fraction <= 1:
        raise fail(f"prune_probe: fraction must be in [0, 1] (got {fraction!r})", task)
    if which not in ("lowest", "highest", "random") or scope not in ("global", "tensor"):
        raise fail(f"prune_probe: which must be lowest/highest/random and scope global/tensor "
                   f"(got {which!r}, {scope!r})", task)
    trunk = trunk_params(net, task)
    gammas = []
    for n, p in trunk:
        g = accumulated(store, p)
        if g is None:
            raise fail(f"prune_probe: {n}.{p.name} has no importance yet; run a task first", task)
        gammas.append(g.detach().float().reshape(-1).cpu())
    gen = torch.Generator().manual_seed(seed)

    def pick(g: torch.Tensor, k: int) -> torch.Tensor:
        perm = torch.randperm(len(g), generator=gen)
        if which == "random":
            return perm[:k]
        order = perm[torch.argsort(g[perm], stable=True, descending=which == "highest")]
        return order[:k]

    masks = [torch.zeros(len(g), dtype=torch.bool) for g in gammas]
    if scope == "global":
        flat = torch.cat(gammas)
        chosen = pick(flat, round(fraction * len(flat)))
        hit = torch.zeros(len(flat), dtype=torch.bool)
        hit[chosen] = True
        masks = list(torch.split(hit, [len(g) for g in gammas]))
    else:
        for m, g in zip(masks, gammas):
            m[pick(g, round(fraction * len(g)))] = True
    copy = teacher_store(net, store, [task])
    for (_, p), m in zip(trunk, masks):
        t = copy[p.key]
        copy.update(p.key, torch.where(m.reshape(t.shape).to(t.device), torch.zeros_like(t), t.detach()))
    module = compile_net(net, copy, task)
    return accuracy(module, x, y, batch_size, str(store.device))


# ---- the strategy ----------------------------------------------------------------------------


@attrs.frozen
class SPG:
    """SPG soft masks; variants chi=false, smh=false, hard_threshold=T, importance=fisher, ewc_gi=L.

    SPG: Konishi et al., ICML 2023 (soft-masked gradients). The variants: ``chi=false`` (w/o
    CHI), ``smh=false`` (w/o SMH), ``hard_threshold=T`` (hard mask), ``importance=fisher``
    (SPG-FI), ``ewc_gi=LAMBDA`` (EWC-GI).

    Options (details and deviations in the module docstring): ``backbone`` = None
    (`default_backbone`), ``chi`` = True, ``smh`` = True, ``hard_threshold`` = None (in (0, 1)),
    ``importance`` = "gradient" ("fisher": SPG-FI), ``fisher_norm`` = "zscore" ("max"),
    ``ewc_gi`` = None (> 0: EWC-GI's lambda), ``importance_mode`` = "train" ("eval"),
    ``norm_scope`` = "tensor" ("node"), ``apply`` = "grad" ("update"),
    ``importance_batch_size`` = None (the run's batch size), ``freeze_old_heads`` = True. The
    runner starts from `recommended_config` (the authors' optimizer and schedule).

    >>> SPG(importance="fisher").importance, SPG(ewc_gi=5).ewc_gi
    ('fisher', 5)
    """

    recommended_config: ClassVar[dict[str, Any]] = RECOMMENDED_CONFIG

    backbone: list | None = attrs.field(default=None, validator=backbone_option)
    chi: bool = attrs.field(default=True, validator=_flag)
    smh: bool = attrs.field(default=True, validator=_flag)
    hard_threshold: float | None = attrs.field(default=None, validator=_threshold_option)
    importance: str = attrs.field(default="gradient", validator=_choice("gradient", "fisher"))
    fisher_norm: str = attrs.field(default="zscore", validator=_choice("zscore", "max"))
    ewc_gi: float | None = attrs.field(default=None, validator=positive_or_none)
    importance_mode: str = attrs.field(default="train", validator=_choice("train", "eval"))
    norm_scope: str = attrs.field(default="tensor", validator=_choice("tensor", "node"))
    apply: str = attrs.field(default="grad", validator=_choice("grad", "update"))
    importance_batch_size: int | None = attrs.field(default=None, validator=count_or_none(1))
    freeze_old_heads: bool = attrs.field(default=True, validator=_flag)

    def __attrs_post_init__(self) -> None:
        if self.ewc_gi is not None and self.hard_threshold is not None:
            raise ValueError("ewc_gi (EWC-GI: a penalty, no masks) and hard_threshold (hard masks) exclude "
                             f"each other (got ewc_gi={self.ewc_gi!r}, hard_threshold={self.hard_threshold!r})")

    @property
    def masking(self) -> bool:
        """Whether gradients are masked (every variant but EWC-GI)."""
        return self.ewc_gi is None

    def variant(self) -> dict[str, Any]:
        """What the net annotation ``spg`` records of this configuration (the provider reads the
        threshold from it; a later task checks it is unchanged)."""
        return {"chi": self.chi, "smh": self.smh, "hard_threshold": self.hard_threshold,
                "importance": self.importance, "fisher_norm": self.fisher_norm, "ewc_gi": self.ewc_gi,
                "importance_mode": self.importance_mode, "norm_scope": self.norm_scope, "apply": self.apply}

    def prepare(self, net: JointNet, task: str, n_classes: int, input_shape) -> JointNet:
        """The rewrites for a new task: the trunk with its ``"spg"`` rules and the annotation
        ``spg`` (first task) or a binding to it, the task's head and (SMH) the head's rule.

        Raises:
            StrategyError: the net was not built by SPG, or by SPG with other options.
        """
        if not net.tasks:
            net = add_column(net, list(self.backbone or default_backbone(input_shape)), task, n_classes)
            if self.masking:
                # One rule per distinct parameter list (a conv without bias, BatchNorm, ...).
                per_node: dict[str, list[str]] = {}
                for n, p in trunk_params(net, task):
                    per_node.setdefault(n, []).append(p.name)
                groups: dict[tuple[str, ...], list[str]] = {}
                for n, names in per_node.items():
                    groups.setdefault(tuple(names), []).append(n)
                for names, nodes in groups.items():
                    net = set_grad_rule(net, nodes=nodes, params=list(names), kind="multiply",
                                        provider=PROVIDER, apply=self.apply)
            net = annotate(net, key=NET_KEY, value={**self.variant(), "tasks": []})
        else:
            cfg = net.annotations.get(NET_KEY)
            if cfg is None:
                raise fail("the net was not built by spg (no 'spg' annotation)", task)
            for k, v in self.variant().items():
                if cfg.get(k) != v:
                    raise fail(f"the net was trained with {k}={cfg.get(k)!r}, this run asks {k}={v!r}", task)
            net = trunk_task(net, [], task, n_classes)
        if self.masking and self.smh:
            head = net.tasks[task].head
            names = [n for n, info in net.effective_spec(task, head).params().items() if not info.buffer]
            net = set_grad_rule(net, nodes=head, params=names, kind="multiply", provider=PROVIDER, apply=self.apply)
        return net

    def step(self, net: JointNet, run: TaskRun) -> JointNet:
        """Add `run.task` (`prepare`), train it under the ``"spg"`` rules (EWC-GI: under the
        penalty), compute its importance and fold it into the net (`commit_importance`), freeze
        its head."""
        task = run.task
        net = self.prepare(net, task.name, task.n_classes, task.input_shape)
        cfg = run.config
        if self.masking and self.apply == "grad" and (cfg.weight_decay > 0 or cfg.momentum > 0) and run.echo:
            run.echo(f"SPG warning: {cfg.optimizer} with momentum={cfg.momentum}, weight_decay={cfg.weight_decay}: "
                     "gradient masks are not update masks; use plain SGD or apply='update'")
        run.store.realize(net)
        hooks = None
        if self.ewc_gi is not None:
            hooks = EWCHooks(penalty_terms(net, run.store, task.name), self.ewc_gi)
        run.train(net, hooks=hooks)
        done = list((net.annotations.get(NET_KEY) or {}).get("tasks", ()))
        x, y = task.train
        try:
            gammas = task_importance(
                net, run.store, task.name, x, y, old_heads=done if self.chi else [], producer=self.importance,
                fisher_norm=self.fisher_norm, mode=self.importance_mode, scope=self.norm_scope,
                batch_size=self.importance_batch_size or cfg.batch_size,
                generator=torch.Generator().manual_seed(run.seed * 1_000_003 + 7 * run.index + 3))
        except JointNetError as e:
            raise run.error(str(e)) from None
        net = commit_importance(net, run.store, task.name, gammas, anchors=self.ewc_gi is not None)
        if self.freeze_old_heads:
            net = freeze(net, nodes=net.tasks[task.name].head)
        return net
