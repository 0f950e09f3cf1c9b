"""GROWN_MASK's masks: kinds, the literal Eq. 6 transform, tied grown-masks, what a task reads, what can
be released, and the training hooks (GROWN_MASK spec §2.3-§2.5, §2.9, §8).

Mask kinds on one parameter block (several multiply; `jointnet.graph.net.Mask`):

- ``selective`` (m^s_t): kernel-wise over the kernels that existed before task t (Linear: one bit
  per weight), limited with ``where`` to the kernels not released to t;
- ``attentive`` (m^a_t): kernel-wise over every kernel grown at t;
- ``grown`` (m^g_t): channel-wise over a grown channel group, the *driver*: one logit per channel,
  on the filter block that reads the node's base input channels, ``(g, None)``;
- ``grown_tie``: the other blocks of the same channels (the filter's kernels over grown input
  groups, its bias, the BatchNorm weight and bias that follow it). The core keys masks by block and
  gives each its own tensor, so m^g's other blocks are *followers* (identity transform) that hold
  the driver's sample, written by `GrownHooks` before every batch; their gradients are added to the
  driver's through the transform's straight-through rule, so training sees one mask per channel,
  exactly as if the blocks shared a tensor. With every block of a channel gated, a channel whose
  m^g is 0 outputs exactly 0 (bias and BatchNorm included), so deleting it (`compact`) changes no
  output;
- ``scale`` (``soft_selective``): KSM's real per-kernel scale beside m^s (32 bits per kernel,
  never committed to bits).

Transforms: ``gumbel`` (the core's binary concrete: ``sigmoid((m + L) / tau)``, L logistic noise,
``P(on) = sigmoid(m)``) or ``gumbel_eq6`` (the paper's Eq. 6 as printed: ``sigmoid((log
sigmoid(m) + L) / tau)``, so ``P(on) = pi0 / (1 + pi0) <= 0.5``; spec §2.5). Both are
straight-through (forward: the hard sample ``> 0.5``, backward: the relaxed sample's gradient) and
deterministic at test time, ``m > 0`` (spec §2.9); committing keeps ``m > 0``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from jointnet.execution.masks import RUNTIME, deterministic, register_transform, salt
from jointnet.execution.program import Context, task_context
from jointnet.execution.store import ParamStore
from jointnet.experiments.trainer import Hooks
from jointnet.graph.net import JointNet, Mask, Param

__all__ = [
    "SELECTIVE", "ATTENTIVE", "GROWN_MASK", "TIE", "SCALE", "BINARY_KINDS", "GUMBEL_FORMS", "transform_of",
    "producers", "bn_followers", "granularity", "weight_block", "mask_values", "read_mask",
    "releasable", "kept_fraction", "ties_of", "l0_proxy", "sync_ties", "GrownHooks",
]

SELECTIVE = "selective"
ATTENTIVE = "attentive"
GROWN_MASK = "grown"
TIE = "grown_tie"
SCALE = "scale"
BINARY_KINDS = (SELECTIVE, ATTENTIVE, GROWN_MASK, TIE)
"""The kinds committed to bits at the end of a task (``scale`` stays a real tensor)."""

GUMBEL_FORMS = {"concrete": "gumbel", "eq6": "gumbel_eq6"}
"""Option ``gumbel`` -> mask transform name."""


def _eq6(m: torch.Tensor, ctx, salt_: int) -> torch.Tensor:
    """Eq. 6 as printed (second class logit 0): ``p = sigmoid((log sigmoid(m) + L) / tau)`` with
    the core's noise stream (one uniform per entry, ``L = log u - log(1 - u)``, which is
    ``g0 - g1`` in distribution); straight-through; ``m > 0`` without noise."""
    if not ctx.training or ctx.noise_seed is None:
        return (m > 0).to(m.dtype)
    g = torch.Generator(device=m.device).manual_seed((ctx.noise_seed * 1_000_003 + salt_) % (1 << 63))
    u = torch.rand(m.shape, generator=g, device=m.device, dtype=m.dtype).clamp_(1e-6, 1 - 1e-6)
    y = torch.sigmoid((F.logsigmoid(m) + torch.log(u) - torch.log1p(-u)) / ctx.tau)
    hard = (y > 0.5).to(y.dtype)
    return hard + y - y.detach()


register_transform("gumbel_eq6", _eq6, torch.sigmoid)  # commit: sigmoid(m) > 0.5, i.e. m > 0


def transform_of(form: str) -> str:
    """The mask transform of option ``gumbel`` (``concrete`` or ``eq6``)."""
    return GUMBEL_FORMS[form]


# ---- where masks go ---------------------------------------------------------------------------


def producers(net: JointNet) -> list[str]:
    """The trunk's growable nodes (Conv2d with groups 1, Linear; not heads), in route order."""
    first = next(iter(net.tasks))
    return [n for n in net.route(first) if net.node(n).spec.producer]


def bn_followers(net: JointNet, task: str, node: str) -> list[str]:
    """The per-channel nodes (BatchNorm) after `node` on `task`'s route, up to the next consumer:
    they hold a block of every channel group `node` grows."""
    out, stack, seen = [], [node], set()
    while stack:
        n = stack.pop()
        for _, v, d in net.graph.out_edges(n, data=True):
            if task not in d["tasks"] or v in seen:
                continue
            seen.add(v)
            rule = net.node(v).spec.channels
            if rule == "follow":
                out.append(v)
                stack.append(v)
            elif rule in ("pass", "flatten"):
                stack.append(v)
    return [n for n in out if net.node(n).kind == "BatchNorm"]


def granularity(net: JointNet, node: str) -> str:
    """Kernel-wise masks: ``kernel`` on a conv weight, ``param`` (one per weight) on a Linear."""
    return "kernel" if net.node(node).kind == "Conv2d" else "param"


def weight_block(net: JointNet, task: str, node: str, block: tuple) -> Param | None:
    """The weight block `block` of `node` as `task` uses it, or None if `task` does not see it."""
    for row in net.params_for(task, node)["weight"]:
        for p in row:
            if p.block == block:
                return p
    return None


def mask_values(store: ParamStore, m: Mask) -> torch.Tensor:
    """A mask's values as a bool tensor of its shape: committed bits, or a live mask's
    deterministic value (``m > 0`` for Gumbel masks, non-zero for identity ones)."""
    if m.state == "committed":
        return store.unpacked(m.key, m.shape) != 0
    t = store[m.key].detach()
    if m.transform == "identity":
        return t != 0
    return deterministic(m.transform, t) > 0.5


def _kernelwise(values: torch.Tensor, m: Mask, rows_cols: tuple[int, int]) -> torch.Tensor:
    """A mask's bool values as one per (out, in) pair: a channel mask covers its rows, a
    per-element mask reads a kernel if any of its entries is on."""
    if m.granularity == "channel":
        return values.reshape(-1, 1).expand(*rows_cols)
    if values.dim() > 2:
        return values.flatten(2).any(2)
    return values


def read_mask(net: JointNet, store: ParamStore, task: str, node: str, block: tuple) -> torch.Tensor | None:
    """Which kernels of weight block `block` of `node` `task` reads (effective mask M_t != 0,
    spec §2.9), as a bool (out, in) tensor; None when `task` does not see the block.

    A kernel is read unless one of `task`'s masks on the block is 0 there (outside a mask's
    ``where`` set it counts as 1).
    """
    p = weight_block(net, task, node, block)
    if p is None:
        return None
    rc = tuple(p.shape[:2])
    out = torch.ones(rc, dtype=torch.bool)
    for m in net.node(node).masks:
        if m.task != task or m.param != "weight" or m.block != block:
            continue
        vals = mask_values(store, m).cpu()
        if m.where is not None:
            vals = vals | ~store[m.where].cpu().bool()
        out &= _kernelwise(vals, m, rc)
    return out


def releasable(net: JointNet, store: ParamStore, task: str, node: str, block: tuple,
               finished: Iterable[str]) -> torch.Tensor:
    """The kernels of `block` that `task` may take over: owned by some task (not free) and read by
    no task of `finished` (spec §8 rewrite 5), as a bool (out, in) tensor."""
    p = weight_block(net, task, node, block)
    owners = store[p.owners.key].cpu()
    out = owners != 0
    for s in finished:
        r = read_mask(net, store, s, node, block)
        if r is not None:
            out &= ~r
    return out


def kept_fraction(store: ParamStore, m: Mask) -> tuple[int, int]:
    """(entries kept, entries covered) of mask `m` (its ``where`` set only)."""
    vals = mask_values(store, m).cpu()
    if m.where is not None:
        w = store[m.where].cpu().bool()
        return int((vals & w).sum()), int(w.sum())
    return int(vals.sum()), vals.numel()


# ---- tied grown masks and training hooks -----------------------------------------------------------


def ties_of(net: JointNet, task: str) -> dict[str, tuple[Mask, list[Mask]]]:
    """`task`'s live grown-masks by channel group: group id -> (driver, followers)."""
    drivers: dict[str, Mask] = {}
    followers: dict[str, list[Mask]] = {}
    for n in net.nodes:
        for m in net.node(n).masks:
            if m.task != task or m.state != "live":
                continue
            if m.kind == GROWN_MASK:
                drivers[m.block[0]] = m
            elif m.kind == TIE:
                followers.setdefault(m.block[0], []).append(m)
    return {g: (d, followers.get(g, [])) for g, d in drivers.items()}


def l0_proxy(logits: list[torch.Tensor]) -> torch.Tensor:
    """The relaxed L0 norm of grown-masks: ``sum sigmoid(m) / number of candidates`` (spec §3).

    >>> float(l0_proxy([torch.zeros(3), torch.zeros(1)]))
    0.5
    """
    n = sum(t.numel() for t in logits)
    return sum(torch.sigmoid(t).sum() for t in logits) / max(n, 1)


@torch.no_grad()
def sync_ties(store: ParamStore, ties: dict, ctx: Context | None = None) -> None:
    """Write every follower's value: the driver's sample under `ctx` (training), else its
    deterministic value ``m > 0``."""
    for driver, followers in ties.values():
        m = store[driver.key].detach()
        if ctx is None:
            value = (m > 0).to(m.dtype)
        else:
            value = RUNTIME[f"_mask_{driver.transform}"](m, ctx, salt(driver.key)).detach()
        for f in followers:
            store.update(f.key, value.reshape(store[f.key].shape))


class GrownHooks(Hooks):
    """The training hooks of one GROWN_MASK training run of `task`.

    - `context`: per batch, a training `Context` with the Gumbel temperature and a noise seed that
      advances per step (``seed0 + step``), after writing the tied followers' sample; for
      validation the followers get their deterministic value and the task's own context runs.
    - `extra_loss`: ``lam * L0(m^g) + lam_a * L0(m^a) + weight_decay / 2 * ||w||^2`` over the
      weights the task trains (masks excluded).
    - `transform_grads`: each follower's gradient goes to its driver through the transform's
      straight-through rule (autograd of the same function), then the follower's is dropped.
    """

    def __init__(self, net: JointNet, store: ParamStore, task: str, *, seed0: int, tau: float,
                 lam: float = 0.0, lam_a: float = 0.0, weight_decay: float = 0.0,
                 decayed: list[torch.Tensor] = ()):
        self.net, self.store, self.task = net, store, task
        self.seed0, self.tau, self.step = seed0, tau, 0
        self.lam, self.lam_a, self.weight_decay = lam, lam_a, weight_decay
        self.ties = ties_of(net, task)
        self.drivers = [store[d.key] for d, _ in self.ties.values()]
        self.attentive = [store[m.key] for n in net.nodes for m in net.node(n).masks
                          if m.task == task and m.state == "live" and m.kind == ATTENTIVE]
        self.decayed = list(decayed)
        self._ctx: Context | None = None

    def context(self, info: dict) -> Context | None:
        if not info.get("training"):
            sync_ties(self.store, self.ties)
            self._ctx = None
            return None
        ctx = task_context(self.net, self.task, training=True, noise_seed=self.seed0 + self.step, tau=self.tau)
        self.step += 1
        sync_ties(self.store, self.ties, ctx)
        self._ctx = ctx
        return ctx

    def extra_loss(self, module, x, y, logits, info):
        terms = []
        if self.lam and self.drivers:
            terms.append(self.lam * l0_proxy(self.drivers))
        if self.lam_a and self.attentive:
            terms.append(self.lam_a * l0_proxy(self.attentive))
        if self.weight_decay and self.decayed:
            terms.append(0.5 * self.weight_decay * sum((t * t).sum() for t in self.decayed))
        return sum(terms) if terms else None

    def transform_grads(self, module, info) -> None:
        if self._ctx is None:
            return
        for driver, followers in self.ties.values():
            grads = [self.store[f.key].grad for f in followers]
            grads = [g for g in grads if g is not None]
            for f in followers:
                self.store[f.key].grad = None
            if not grads:
                continue
            total = sum(g.reshape(-1) for g in grads)
            d = self.store[driver.key]
            with torch.enable_grad():
                m = d.detach().requires_grad_(True)
                out = RUNTIME[f"_mask_{driver.transform}"](m, self._ctx, salt(driver.key))
                (g,) = torch.autograd.grad(out, m, grad_outputs=total.reshape(out.shape))
            d.grad = g if d.grad is None else d.grad + g

    def finish(self) -> None:
        """After training: followers at their deterministic value (evaluation, commit)."""
        sync_ties(self.store, self.ties)


def kaiming_like(shape: tuple[int, ...], fan_in: int, gen: torch.Generator) -> torch.Tensor:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, the core's ``kaiming`` initialisation."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return torch.empty(shape).uniform_(-bound, bound, generator=gen)
