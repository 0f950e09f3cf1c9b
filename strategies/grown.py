"""GROWN, "GRow Only When Necessary" (Yang, Lin, Zhang, Fan, AAAI 2022), on the core's graph
rewrites; the method as restated in ``specs/GROWN.md`` (cited as "spec §x").

**The method, and how each piece maps onto the core.** A task-incremental stream; every task has
its own head and (with ``bn="per_task"``) its own BatchNorm (`per_task_bn`).

- *Seed* (spec §2.1): task 1 builds the backbone with every Conv2d / Linear at ``seed_ratio`` of
  its width (at least 2 channels); the full-width backbone's size is "1x" (net annotation
  ``grown``).
- *Growth round* (Learnable Sparse Growth, spec §2.3, §8 rewrites 4 and 6): every growable node
  gets ``ceil(pool * full width)`` candidate channels owned by the task (`widen`; successors grow
  input columns, BatchNorm grows with them). Masks (`attach_mask`, Gumbel-sigmoid with
  straight-through, driven by the `Context` the hooks return per batch): the grown-mask m^g
  (``kind="grown"``, one logit per channel, with an L0 proxy ``lam * sum sigmoid(m^g) / n``),
  tied over every block of the channel (`strategies.grown_masks`), and the attentive-mask m^a
  (``kind="attentive"``, one per kernel grown by the task: the new filters and the old filters'
  kernels over new input channels). Channels whose m^g is 0 at the end are removed (`compact`),
  which changes no output (a channel off is exactly 0).
- *Task 1* (spec §2.4): the seed plus one round of ``first_pool`` candidates, trained with Eq. 3.
- *Tasks t >= 2, Stage A* (spec §2.5): `release` gives t every kernel no finished task reads (in
  the paper's case: kernels of t-1's grown filters that its m^a switched off; owner map :=
  t); the selective-mask m^s_t (``kind="selective"``) covers every other old kernel (``where``
  keeps it off the released ones), over weights frozen at update level; released kernels train
  dense (Eq. 7).
- *The rule* (spec §2.6): after Stage A, the task's validation accuracy is compared with the
  target, the better of a full-size Scratch net and Fine-tuning (`strategies.grown_refs`,
  memoised and optionally cached on disk); below ``target - delta``, Stage B runs growth rounds
  of ``pool`` candidates (Eq. 8, m^s and released kernels still training) until the target is
  met or ``rounds`` rounds ran.
- *Commit* (spec §8 rewrite 8): every binary mask becomes packed bits (`commit_mask`),
  candidates with m^g = 0 are compacted away, every kernel the task grew becomes its own in the
  owner maps, and sizes, targets, accuracies and kept fractions go into the task's ``grown``
  annotation (`jointnet inspect` shows them through `strategies.grown_view`; the log shows
  ``widen`` records only for tasks that grew).

**Frozen at update level** (spec §2.7): every weight and bias block of the trunk has a
kernel-wise owner map (`track_owners`; 0 free, else the owner's ``added_at``) and, for every task,
the built-in ``owned`` freeze rule (`set_grad_rule(kind="freeze", provider="owned")`): entries
another task owns get a zero gradient and their values back after every optimizer step, so no
gradient, momentum or weight decay moves them. Finished masks are packed bits, which no training
touches; heads and BatchNorm variants are each task's own.

**Options** (defaults first; ``[ours]`` marks the spec's recommendations where the paper is silent):

- ``backbone`` = None: a declarative layer list, or ``"lenet"`` (20-50-800-500, spec §4),
  ``"vgg"`` (`backbones.vgg`, with BatchNorm), ``"mlp"`` (two hidden layers of 256),
  ``"small_conv"``; None: ``"lenet"`` for image inputs, ``"mlp"`` for flat ones. Sequential nets
  only (no Add/Concat).
- ``seed_ratio`` = None: the seed's width ratio; None is 0.125 for ``"vgg"`` and 0.25 otherwise
  (spec §2.1 [ours]).
- ``first_pool`` = 0.5: task 1's candidate channels per layer, as a fraction of the full width
  [ours: the paper's size after task 1 is 0.3-0.5x].
- ``pool`` = 0.1: candidate channels per layer and Stage-B round, as a fraction of the full
  width (spec §2.6 rho).
- ``rounds`` = 2: Stage-B rounds at most (spec §2.6 R).
- ``grow_when`` = ``"needed"`` (the rule above) | ``"always"`` (no Stage A: one growth round per
  task, as the paper's "Grow" baseline in its Table 2) | ``"never"`` (no Stage B).
- ``target`` = ``"max"`` (best of Scratch and Fine-tune, spec §2.6) | ``"scratch"`` |
  ``"finetune"`` | a fixed accuracy in [0, 1].
- ``target_split`` = ``"val"`` | ``"test"``: the split compared with the target (spec §7.5).
- ``delta`` = 0.0: the tolerance; Stage B runs while accuracy < target - delta (a negative delta
  asks for more than the target).
- ``target_cache`` = None: a folder where the reference accuracies are cached
  (`strategies.grown_refs`).
- ``selective`` = True: the selective-mask m^s over old kernels (ablation switch, spec §5.5).
- ``attentive`` = True: the attentive-mask m^a over grown kernels (ablation switch; the paper's
  LSG is ``grow_mode="lsg", attentive=True``, Yuan et al.'s channel growth is ``attentive=False``).
- ``release`` = True: re-train released kernels (ablation switch).
- ``grow_mode`` = ``"lsg"`` (candidates gated by a learned m^g with its L0 term; unused ones
  deleted) | ``"channel"`` (the whole candidate pool is kept: plain channel growth, no m^g).
- ``gumbel`` = ``"concrete"`` (binary concrete, P(on) = sigmoid(m)) | ``"eq6"`` (Eq. 6 as printed,
  P(on) <= 0.5; spec §2.5, §7.1).
- ``tau`` = 1.0: the Gumbel-sigmoid temperature.
- ``test_masks`` = ``"deterministic"`` (commit ``m > 0``) | ``"sampled"`` (commit one Gumbel
  sample; spec §7.1).
- ``lam`` = 0.5: the L0 weight on m^g, after dividing by the number of candidates (spec §3
  suggests 1e-3..1e-1; with Adam on the logits only the sign balance against the task loss
  matters, and 0.5 deletes the candidates the loss does not pull up within a few epochs).
- ``lam_a`` = 0.0: an L0 weight on m^a (spec §7.3, 0 = faithful).
- ``selective_init`` = 3.0: the initial logit of m^s (see "Mask logits" below).
- ``attentive_init`` = 3.0: the initial logit of m^a.
- ``grown_init`` = 2.0: the initial logit of m^g.
- ``mask_lr`` = 0.1: the mask logits' learning rate (an lr scale of ``mask_lr / config.lr`` on
  ``mask:*``; see "Mask logits" below).
- ``weight_decay`` = 0.0: L2 on the tensors the task trains, masks excluded (added to the loss;
  the run config's ``weight_decay`` would also decay mask logits, so the recommended config keeps
  it 0).
- ``soft_selective`` = False: KSM-style m^s (binary times a learned real scale per kernel, kind
  ``scale``, 32 bits per kernel, never committed to bits; spec §7.2).
- ``old_reads_new`` = True: old filters read the new input channels through kernels the task owns
  (spec §7.6); False keeps those kernels at 0, frozen for every task.
- ``bn`` = ``"per_task"`` (spec §7.7) | ``"freeze"`` (later tasks use task 1's BatchNorm frozen).
- ``release_init`` = ``"keep"`` | ``"fresh"``: released kernels keep their values or are
  re-initialised (spec §7.8).
- ``mask_released`` = False: with True, released kernels get the task's m^a in Stage B (spec
  §7.8).
- ``count_masks`` = False: whether the reported size includes the masks (as 32-bit floats per
  32 bits); they are always reported apart, in bits (spec §7.10).
- ``stage_b_epochs`` = None: epochs per Stage-B round (None: the run's).

Mask logits: spec §3 starts from +2 (m^s), +2 (m^a), -1 (m^g) and Adam at 1e-3, "to be tuned";
ours were tuned for CPU-sized runs (~50-100 steps per training): at 1e-3 a logit moves by ~0.1 in
a task, so masks never change, and from -1 every candidate ends below 0 and is deleted (nothing
ever grows); a logit of 3 also keeps the Gumbel noise at 5% of kernels off per step (12% at 2),
which costs accuracy when training is this short. One seed of rotated Fashion-MNIST, four tasks,
chose them. At that budget (~27 steps per training) what m^s turns off costs rotated Fashion-MNIST
10 points of Stage-A accuracy while it gains split Fashion-MNIST 12; ``selective_init=6`` keeps
m^s at the old net through Stage A (docs/methods/grown.md, "Reading").

Deviations, all documented here: one optimizer for weights and masks (the trainer has one; the
recommended config is Adam, lr 1e-3, batch 32; masks get their own lr through the policy); the
weight decay of spec §3 is the ``weight_decay`` option (default 0); per-task BatchNorm of a later
task starts from task 1's (`per_task_bn` copies the shared tensors), not from task t-1's;
release frees every kernel no finished task reads, which in practice is the paper's "m^a_{t-1} =
0" set.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs
import torch
from attrs.validators import in_

from jointnet import backbones
from jointnet.execution.optim import train_plan
from jointnet.execution.program import task_context
from jointnet.execution.store import ParamStore
from jointnet.experiments.strategy import TaskRun, count_or_none, store_key, trunk_task
from jointnet.graph import (
    annotate, attach_mask, commit_mask, compact, freeze, per_task_bn, set_grad_rule, set_lr_scale,
    track_owners, widen,
)
from jointnet.graph.net import GradRule, JointNet
from jointnet.persistence.views import param_counts
from strategies.grown_masks import (
    ATTENTIVE, BINARY_KINDS, GROWN_MASK, GUMBEL_FORMS, SCALE, SELECTIVE, TIE, GrownHooks, bn_followers,
    granularity, kaiming_like, kept_fraction, mask_values, producers, releasable, sync_ties, ties_of,
    transform_of,
)
from strategies.grown_options import (
    BACKBONES, check_backbone, check_count, check_finite, check_flag, check_number, check_opt_fraction,
    check_opt_path, check_target, full_layers, lenet, seed_layers,
)
from strategies.grown_refs import references
from strategies.grown_view import NET_KEY, size_report

__all__ = ["GROWN", "GrowOnly", "RECOMMENDED_CONFIG", "BACKBONES", "lenet", "seed_layers", "full_layers"]

RECOMMENDED_CONFIG: dict[str, Any] = {
    "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 32, "epochs": 20,
}
"""TrainConfig fields GROWN runs with unless a run says otherwise (batch 32 and 20 epochs are the
paper's; the optimizer is ours, see the module docstring)."""


@attrs.frozen
class GROWN:
    """GROWN (Yang et al. 2022): a seed net, selective masks over frozen old kernels, released
    kernels re-trained, and learnable sparse growth only when validation accuracy is below target.
    Options and their defaults: the module docstring.

    >>> GROWN(rounds=1, gumbel="eq6").transform
    'gumbel_eq6'
    """

    recommended_config: ClassVar[dict] = RECOMMENDED_CONFIG

    backbone: Any = attrs.field(default=None, validator=check_backbone)
    seed_ratio: float | None = attrs.field(default=None, validator=check_opt_fraction)
    first_pool: float = attrs.field(default=0.5, validator=check_number(0.0))
    pool: float = attrs.field(default=0.1, validator=check_number(0.0, open_lo=True))
    rounds: int = attrs.field(default=2, validator=check_count)
    grow_when: str = attrs.field(default="needed", validator=in_(("needed", "always", "never")))
    target: Any = attrs.field(default="max", validator=check_target)
    target_split: str = attrs.field(default="val", validator=in_(("val", "test")))
    delta: float = attrs.field(default=0.0, validator=check_finite)
    target_cache: str | None = attrs.field(default=None, validator=check_opt_path)
    selective: bool = attrs.field(default=True, validator=check_flag)
    attentive: bool = attrs.field(default=True, validator=check_flag)
    release: bool = attrs.field(default=True, validator=check_flag)
    grow_mode: str = attrs.field(default="lsg", validator=in_(("lsg", "channel")))
    gumbel: str = attrs.field(default="concrete", validator=in_(tuple(GUMBEL_FORMS)))
    tau: float = attrs.field(default=1.0, validator=check_number(0.0, open_lo=True))
    test_masks: str = attrs.field(default="deterministic", validator=in_(("deterministic", "sampled")))
    lam: float = attrs.field(default=0.5, validator=check_number(0.0))
    lam_a: float = attrs.field(default=0.0, validator=check_number(0.0))
    selective_init: float = attrs.field(default=3.0, validator=check_finite)
    attentive_init: float = attrs.field(default=3.0, validator=check_finite)
    grown_init: float = attrs.field(default=2.0, validator=check_finite)
    mask_lr: float = attrs.field(default=0.1, validator=check_number(0.0, open_lo=True))
    weight_decay: float = attrs.field(default=0.0, validator=check_number(0.0))
    soft_selective: bool = attrs.field(default=False, validator=check_flag)
    old_reads_new: bool = attrs.field(default=True, validator=check_flag)
    bn: str = attrs.field(default="per_task", validator=in_(("per_task", "freeze")))
    release_init: str = attrs.field(default="keep", validator=in_(("keep", "fresh")))
    mask_released: bool = attrs.field(default=False, validator=check_flag)
    count_masks: bool = attrs.field(default=False, validator=check_flag)
    stage_b_epochs: int | None = attrs.field(default=None, validator=count_or_none(0))

    @property
    def transform(self) -> str:
        """The mask transform of the Gumbel-sigmoid form chosen."""
        return transform_of(self.gumbel)

    def ratio(self) -> float:
        """The seed's width ratio (option, or 0.125 for ``"vgg"`` and 0.25 otherwise)."""
        if self.seed_ratio is not None:
            return float(self.seed_ratio)
        return 0.125 if self.backbone == "vgg" else 0.25

    # ---- the task ------------------------------------------------------------------------------

    def step(self, net: JointNet, run: TaskRun) -> JointNet:
        """Add `run.task`: task 1 from the seed with one LSG round; later tasks Stage A, Stage B
        rounds when below target; then commit."""
        task = run.task
        full = full_layers(self.backbone, task.input_shape)
        first = not net.tasks
        info: dict[str, Any] = {"stage_a_acc": None, "target": None, "scratch": None, "finetune": None,
                                "rounds": 0, "released": 0}
        if first:
            net = self._start(net, run, full)
        else:
            if NET_KEY not in net.annotations:
                raise run.error("the net was not built by GROWN (no 'grown' annotation); start from an empty net")
            net = trunk_task(net, full, task.name, task.n_classes)
            net = self._task_policy(net, run)
            run.store.realize(net)
            released = self._release(net, run) if self.release else {}
            info["released"] = int(sum(int(r.sum()) for r in released.values()))
            # Nodes with nothing released: every block other tasks own is frozen as a whole (out
            # of the optimizer, no gradient computed); the owner maps' freeze rule covers the
            # rest, entry by entry. Same arithmetic, less work per step.
            whole = [n for n in producers(net) if not any(k[0] == n for k in released)]
            if whole:
                net = freeze(net, nodes=whole, task=task.name, keep_owned=True)
            if self.selective:
                net = self._select(net, run, released)
            run.store.realize(net)
        if first:
            net = self._grow(net, run, self.first_pool, 1, {})
            self._train(net, run, 1)
            info["rounds"] = 1 if self.first_pool > 0 else 0
        elif self.grow_when == "always":
            net = self._grow(net, run, self.pool, 1, released)
            self._train(net, run, 1)
            info["rounds"] = 1
        else:
            self._train(net, run, 0)
            acc = run.accuracy(net, task, self.target_split)
            info["stage_a_acc"] = acc
            if self.grow_when == "needed" and self.rounds:
                info.update(self._target(run, full))
                while acc < info["target"] - self.delta and info["rounds"] < self.rounds:
                    info["rounds"] += 1
                    net = self._grow(net, run, self.pool, info["rounds"], released)
                    self._train(net, run, info["rounds"])
                    acc = run.accuracy(net, task, self.target_split)
        info["acc"] = run.accuracy(net, task, self.target_split)
        info["grew"] = not first and info["rounds"] > 0
        info["first"] = first
        return self._commit(net, run, info)

    # ---- rewrites ------------------------------------------------------------------------------

    def _start(self, net: JointNet, run: TaskRun, full: list) -> JointNet:
        task = run.task
        seed = seed_layers(full, self.ratio(), task.name)
        ref = backbones.build(full, task=task.name, n_classes=task.n_classes)
        net = trunk_task(net, seed, task.name, task.n_classes)
        prods = producers(net)
        counts = param_counts(ref)
        value = {
            "full_params": counts["total"] + counts["buffers"],
            "full_widths": {n: ref.node(n).spec.width("out") for n in prods},
            "seed_widths": {n: net.node(n).spec.width("out") for n in prods},
            "seed_ratio": self.ratio(),
            "count_masks": self.count_masks,
        }
        net = annotate(net, key=NET_KEY, value=value)
        net = self._protect(net)
        return self._task_policy(net, run)

    def _task_policy(self, net: JointNet, run: TaskRun) -> JointNet:
        """Per-task BatchNorm (or frozen) and the mask learning rate of the task."""
        t = run.task.name
        if len(net.tasks) > 1:
            bns = [n for n in net.route(t) if net.node(n).kind == "BatchNorm"]
            if self.bn == "per_task":
                for n in bns:
                    net = per_task_bn(net, node=n, task=t, init="copy")
            elif bns:
                net = freeze(net, nodes=bns, task=t)
        scale = self.mask_lr / run.config.lr
        kinds = [f"mask:{k}" for k in (SELECTIVE, ATTENTIVE, GROWN_MASK)]
        return set_lr_scale(net, nodes=producers(net), scale=scale, task=t, params=kinds)

    def _protect(self, net: JointNet) -> JointNet:
        """Owner maps (per kernel) on every weight and bias block of the trunk, and the ``owned``
        freeze rule on each, for every task (blocks a widening added get theirs here)."""
        prods = producers(net)
        for n in prods:
            net = track_owners(net, node=n, param="weight", granularity="kernel")
            if "bias" in net.node(n).spec.params():
                net = track_owners(net, node=n, param="bias", granularity="param")
        todo: dict[tuple, list[str]] = {}
        for n in prods:
            pol = net.policy.get((None, n))
            for p in net.node(n).params:
                if p.task is not None or p.name not in ("weight", "bias"):
                    continue
                rule = GradRule("freeze", provider="owned", block=p.block)
                if pol is None or rule not in pol.param(p.name).rules:
                    todo.setdefault((p.name, p.block), []).append(n)
        for (name, block), nodes in todo.items():
            net = set_grad_rule(net, nodes=nodes, params=name, kind="freeze", provider="owned",
                                block=None if block == (None, None) else list(block))
        return net

    def _release(self, net: JointNet, run: TaskRun) -> dict[tuple, torch.Tensor]:
        """Give the task every kernel no finished task reads (owner map := the task's; with
        ``release_init="fresh"`` re-initialised). Returns (node, block) -> released kernels."""
        t, store = run.task.name, run.store
        me = net.tasks[t].added_at
        finished = [s for s in net.tasks if s != t]
        gen = torch.Generator().manual_seed(run.seed * 7919 + run.index)
        out = {}
        for n in producers(net):
            for row in net.params_for(t, n)["weight"]:
                for p in row:
                    r = releasable(net, store, t, n, p.block, finished)
                    if not bool(r.any()):
                        continue
                    owners = store[p.owners.key]
                    store.update(p.owners.key, torch.where(r.to(owners.device), torch.full_like(owners, me), owners))
                    if self.release_init == "fresh":
                        w = store[p.key].detach()
                        fresh = kaiming_like(tuple(w.shape), net.node(n).spec.params()["weight"].fan_in, gen)
                        sel = r.reshape(*r.shape, *[1] * (w.dim() - 2)).expand_as(w).to(w.device)
                        store.update(p.key, torch.where(sel, fresh.to(w.device), w))
                    out[(n, p.block)] = r
        return out

    def _masked_blocks(self, net, run, kind, blocks_by_node, where_by_block, init_keys) -> JointNet:
        """Attach `kind` masks of the task over `blocks_by_node` (node -> blocks), one call per
        node, and one per block that has a `where` set (a bool tensor put in the store)."""
        t = run.task.name
        transform = "identity" if kind == SCALE else self.transform
        for n, blocks in blocks_by_node.items():
            plain = [list(b) for b in blocks if (n, b) not in where_by_block]
            gran = granularity(net, n)
            if plain:
                net = attach_mask(net, node=n, task=t, param="weight", kind=kind, granularity=gran,
                                  transform=transform, blocks=plain)
            for i, b in enumerate(b for b in blocks if (n, b) in where_by_block):
                key = store_key(net, n, f"grown.where.{kind}.{i}", t)
                keep = where_by_block[(n, b)]
                p = next(p for row in net.params_for(t, n)["weight"] for p in row if p.block == b)
                shape = p.shape[:2] if gran == "kernel" else p.shape
                run.store.put(key, keep.reshape(shape).to(run.store.device))
                net = attach_mask(net, node=n, task=t, param="weight", kind=kind, granularity=gran,
                                  transform=transform, blocks=[list(b)], where=key)
        return net

    def _select(self, net: JointNet, run: TaskRun, released: dict) -> JointNet:
        """m^s_t over every old kernel the task reads as it is (not the released ones)."""
        t = run.task.name
        blocks: dict[str, list] = {}
        where: dict[tuple, torch.Tensor] = {}
        for n in producers(net):
            for row in net.params_for(t, n)["weight"]:
                for p in row:
                    r = released.get((n, p.block))
                    if r is not None and bool(r.all()):
                        continue
                    blocks.setdefault(n, []).append(p.block)
                    if r is not None:
                        where[(n, p.block)] = ~r
        before = _live_keys(net, t)
        net = self._masked_blocks(net, run, SELECTIVE, blocks, where, None)
        if self.soft_selective:
            net = self._masked_blocks(net, run, SCALE, blocks, where, None)
        run.store.realize(net)
        self._init_masks(net, run.store, t, before)
        return net

    def _grow(self, net: JointNet, run: TaskRun, frac: float, round_no: int, released: dict) -> JointNet:
        """One growth round: candidates on every growable node, their owner maps and rules, m^g
        (tied over each channel's blocks) and m^a; logits initialised."""
        t = run.task.name
        if frac <= 0:
            return net
        full = dict(net.annotations[NET_KEY]["full_widths"])
        groups = {}
        for n in producers(net):
            net = widen(net, node=n, k=max(1, math.ceil(frac * full[n])), task=t)
            groups[n] = net.node(n).out_groups[-1].id
        new = set(groups.values())
        net = self._protect(net)
        before = _live_keys(net, t)
        if self.grow_mode == "lsg":
            for n, g in groups.items():
                net = attach_mask(net, node=n, task=t, param="weight", kind=GROWN_MASK, granularity="channel",
                                  transform=self.transform, blocks=[[g, None]])
                others = [[g, c] for c in net.visible_groups(t, n, "in") if c is not None]
                if others:
                    net = attach_mask(net, node=n, task=t, param="weight", kind=TIE, granularity="channel",
                                      blocks=others)
                tied = [(n, "bias")] if "bias" in net.node(n).spec.params() else []
                tied += [(b, w) for b in bn_followers(net, t, n) for w in ("weight", "bias")
                         if w in net.node(b).spec.params()]
                for node, param in tied:
                    net = attach_mask(net, node=node, task=t, param=param, kind=TIE, granularity="channel",
                                      blocks=[[g, None]])
        if self.attentive:
            blocks = {n: [p.block for row in net.params_for(t, n)["weight"] for p in row
                          if p.block[0] in new or p.block[1] in new] for n in groups}
            net = self._masked_blocks(net, run, ATTENTIVE, blocks, {}, None)
        if self.mask_released and round_no == 1 and released:
            blocks = {}
            for (n, b) in released:
                blocks.setdefault(n, []).append(b)
            net = self._masked_blocks(net, run, ATTENTIVE, blocks, dict(released), None)
        run.store.realize(net)
        if not self.old_reads_new:
            net = self._cut_old_from_new(net, run, new)
        self._init_masks(net, run.store, t, before)
        return net

    def _cut_old_from_new(self, net: JointNet, run: TaskRun, new: set) -> JointNet:
        """``old_reads_new=False``: old filters' kernels over new input channels are 0 and frozen
        for every task (spec §7.6)."""
        t, store = run.task.name, run.store
        key = store_key(net, None, "grown.frozen", t)
        store.put(key, torch.ones(1, dtype=torch.bool))
        for n in producers(net):
            for row in net.params_for(t, n)["weight"]:
                for p in row:
                    if p.block[0] not in new and p.block[1] in new:
                        store.update(p.key, torch.zeros(p.shape))
                        net = set_grad_rule(net, nodes=[n], params="weight", kind="freeze", tensor=key,
                                            block=list(p.block))
        return net

    def _init_masks(self, net: JointNet, store: ParamStore, t: str, before: set) -> None:
        """Set the logits of `t`'s masks made since `before`; followers take their driver's value."""
        start = {SELECTIVE: self.selective_init, ATTENTIVE: self.attentive_init, GROWN_MASK: self.grown_init}
        for n in net.nodes:
            for m in net.node(n).masks:
                if m.task == t and m.state == "live" and m.key not in before and m.kind in start:
                    store.update(m.key, torch.full(m.shape, float(start[m.kind])))
        sync_ties(store, ties_of(net, t))

    # ---- training --------------------------------------------------------------------------------

    def _train(self, net: JointNet, run: TaskRun, stage: int) -> None:
        """Train the task once (stage 0: Stage A, else growth round `stage`) with `GrownHooks`."""
        t, store = run.task.name, run.store
        config = run.config
        if stage and run.index and self.stage_b_epochs is not None:
            config = attrs.evolve(config, epochs=self.stage_b_epochs)
        store.realize(net)
        masks = {id(store[m.key]) for n in net.nodes for m in net.node(n).masks if m.task == t and m.state == "live"}
        decayed = [p for p in train_plan(net, store, t, config.lr).params if id(p) not in masks]
        seed0 = ((run.seed % 100_003) * 1_000 + run.index * 10 + min(stage, 9)) * 1_000_000
        hooks = GrownHooks(net, store, t, seed0=seed0, tau=self.tau,
                           lam=self.lam if self.grow_mode == "lsg" else 0.0, lam_a=self.lam_a,
                           weight_decay=self.weight_decay, decayed=decayed)
        what = "stage A" if stage == 0 else f"growth round {stage}"
        run.train(net, hooks=hooks, config=config, say=what)
        hooks.finish()

    def _target(self, run: TaskRun, full: list) -> dict:
        if not isinstance(self.target, str):
            return {"target": float(self.target)}
        refs = references(run, full, self.target, self.target_split, self.target_cache)
        return dict(refs)

    # ---- commit ----------------------------------------------------------------------------------

    def _commit(self, net: JointNet, run: TaskRun, info: dict) -> JointNet:
        """Masks to bits, unused candidates removed, kernels the task grew owned by it; the task's
        record (sizes, accuracies, kept fractions) in its ``grown`` annotation."""
        t, store = run.task.name, run.store
        store.realize(net)
        if self.test_masks == "sampled":
            self._sample_once(net, run)
        kept: dict[str, dict] = {}
        pairs = []
        for n in net.nodes:
            for m in net.node(n).masks:
                if m.task != t or m.state != "live" or m.kind not in BINARY_KINDS:
                    continue
                pairs.append((n, m.param, m.kind))
                if m.kind != TIE and m.param == "weight":
                    k, total = kept_fraction(store, m)
                    entry = kept.setdefault(n, {}).setdefault(m.kind, [0, 0])
                    entry[0] += k
                    entry[1] += total
        for n, param, kind in dict.fromkeys(pairs):
            net = commit_mask(net, node=n, task=t, param=param, kind=kind, threshold=0.5)
        store.realize(net)
        grown: dict[str, list[int]] = {}
        for n in producers(net):
            for g in [g for g in net.node(n).out_groups if g.owner == t]:
                driver = net.node(n).mask(t, "weight", GROWN_MASK, (g.id, None))
                keep = list(range(g.size)) if driver is None else \
                    mask_values(store, driver).nonzero().flatten().tolist()
                entry = grown.setdefault(n, [0, 0])
                entry[0] += len(keep)
                entry[1] += g.size
                net = compact(net, group=g.id, keep=keep)
                # Realize after each compaction: a later one slices the tensors this one made,
                # and the store can only make a slice of a tensor it has (or the net declares).
                store.realize(net)
        me = net.tasks[t].added_at
        for n in producers(net):
            for rows in net.params_for(t, n).values():
                for p in (p for row in rows for p in row):
                    if p.owners is not None:
                        o = store[p.owners.key]
                        if bool((o == 0).any()):
                            store.update(p.owners.key, torch.where(o == 0, torch.full_like(o, me), o))
        size = size_report(net, store)
        record = {
            **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in info.items()},
            "kept": {n: {k: round(a / b, 6) if b else None for k, (a, b) in kinds.items()}
                     for n, kinds in kept.items()},
            "grown_channels": {n: {"kept": a, "candidates": b} for n, (a, b) in grown.items()},
            "size": round(size["size"], 6),
            "size_core": round(size["core"] / size["full"], 6),
            "mask_bits": size["mask_bits"],
        }
        net = annotate(net, key=NET_KEY, task=t, value=record)
        # A short record the summarised `jointnet log` shows in full: did Stage B run.
        short = {"first": True} if info["first"] else {"grew": info["grew"], "rounds": info["rounds"]}
        return annotate(net, key=f"{NET_KEY}.stage_b", task=t, value={**short, "size": round(size["size"], 4)})

    def _sample_once(self, net: JointNet, run: TaskRun) -> None:
        """``test_masks="sampled"``: every Gumbel mask of the task becomes one sample (logits
        +-1), which commit then keeps."""
        t, store = run.task.name, run.store
        ctx = task_context(net, t, training=True, noise_seed=run.seed * 1_000_003 + run.index, tau=self.tau)
        from jointnet.execution.masks import RUNTIME, salt

        for n in net.nodes:
            for m in net.node(n).masks:
                if m.task == t and m.state == "live" and m.transform != "identity":
                    s = RUNTIME[f"_mask_{m.transform}"](store[m.key].detach(), ctx, salt(m.key))
                    store.update(m.key, torch.where(s > 0.5, 1.0, -1.0))
        sync_ties(store, ties_of(net, t))


def _live_keys(net: JointNet, task: str) -> set[str]:
    return {m.key for n in net.nodes for m in net.node(n).masks if m.task == task and m.state == "live"}


@attrs.frozen
class GrowOnly(GROWN):
    """The Grow-only baseline (spec §5.5, §8.12): learnable channel growth (m^g with its L0 term),
    the old part frozen and used unmasked, nothing released: GROWN with ``selective=False``,
    ``attentive=False``, ``release=False``. Like GROWN it grows only below target (spec §8.12
    keeps the rule; Stage A then trains only the head and BatchNorm); ``grow_when="always"``
    grows at every task, as the paper's Table 2 "Grow" row does. Every GROWN option can be set."""

    selective: bool = attrs.field(default=False, validator=check_flag)
    attentive: bool = attrs.field(default=False, validator=check_flag)
    release: bool = attrs.field(default=False, validator=check_flag)
