"""SPG's pure pieces and its gradient rule (SPG spec §2.2-§2.5, §7, §8.4).

- Importance of one (task, head) pair: ``|tanh(Norm(G))|``, ``Norm`` the z-score over one tensor
  (unbiased std), 0 where the tensor is constant (`importance`, `importance_group`).
- CHI: the elementwise max over the current head and every old head (`chi_max`); accumulation:
  the elementwise max into ``gamma^{<=t}`` (`accumulate`).
- The soft masks: a trunk gradient is multiplied by ``1 - gamma`` (`trunk_factor`; the hard-mask
  ablation by ``1 - 1[gamma > threshold]``), the current head's by ``1 - mean(cat(gamma))`` over
  every trunk scalar (`head_factor`, SMH). Both are the ``"spg"`` gradient-rule provider
  (`spg_provider`, registered when this module is imported), the core's one per-parameter
  multiplier mechanism that HAT's conditioning (``"hat"``) uses too.
- Where the state lives: every trunk `Param` SPG has seen carries the annotation
  ``spg.importance``, a `TensorRef` to ``gamma^{<=t}`` in the store (keys from `store_key`, a new
  key per task); the net annotation ``spg`` records the variant and the tasks done.
- The "completely blocked" fraction of spec §5 Table 5 / §8.4 for SPG and HAT nets
  (`blocked_stats`), and the metrics SPG reports (`transfer_metrics`: ACC, BWT, FWT, and the
  identity of spec §4.3).

>>> [round(float(v), 4) for v in importance(torch.tensor([1.0, 2.0, 3.0]))]
[0.7616, 0.0, 0.7616]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from jointnet.errors import JointNetError, StrategyError
from jointnet.execution.optim import register_provider
from jointnet.execution.store import ParamStore
from jointnet.experiments import metrics
from jointnet.graph.net import JointNet, Param, TensorRef

__all__ = [
    "ANCHOR", "IMPORTANCE", "NET_KEY", "PROVIDER", "accumulate", "accumulated", "blocked_stats", "chi_max",
    "head_factor", "importance", "importance_group", "normalise", "route_importance", "spg_provider",
    "transfer_metrics", "trunk_factor", "trunk_params",
]

IMPORTANCE = "spg.importance"  # Param annotation: TensorRef to gamma^{<=t} (same shape as the Param)
ANCHOR = "spg.anchor"  # Param annotation (EWC-GI only): TensorRef to theta* after the latest task
NET_KEY = "spg"  # net annotation: the variant and the tasks done
PROVIDER = "spg"  # the gradient-rule provider of the soft masks (`spg_provider`)


def fail(message: str, task: str | None = None) -> StrategyError:
    """SPG's one-line error, naming the strategy and the task."""
    return StrategyError(message, strategy="spg", task=task)


# ---- importance (spec §2.2) -----------------------------------------------------------------


def normalise(g: torch.Tensor) -> torch.Tensor:
    """The z-score of `g` over all its elements, ``(g - mean) / std`` with the unbiased std.

    A constant tensor (every element equal, or a single element) gives zeros: its std is 0 in
    exact arithmetic (spec §7.1; float32 rounding of the mean would otherwise give every element
    the same z of about +-1).

    >>> normalise(torch.tensor([1.0, 3.0])).tolist(), normalise(torch.full((3,), 0.1)).tolist()
    ([-0.7071067690849304, 0.7071067690849304], [0.0, 0.0, 0.0])
    """
    g = g.detach().float()
    if g.numel() < 2 or bool(g.max() == g.min()):
        return torch.zeros_like(g)
    std = g.std()
    if not bool(torch.isfinite(std)) or float(std) == 0.0:
        return torch.zeros_like(g)
    return (g - g.mean()) / std


def importance(g: torch.Tensor) -> torch.Tensor:
    """``|tanh(normalise(g))|``: the importance of one tensor from its summed gradient (Eq. 1-3).

    In [0, 1); exactly 1.0 where float32 tanh saturates (|z| >~ 9): such an entry is blocked.

    >>> importance(torch.tensor([0.0, 0.0, 5.0])).tolist()[0] == importance(torch.tensor([0.0, 0.0, -5.0])).tolist()[0]
    True
    """
    return torch.tanh(normalise(g)).abs()


def importance_group(grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """`importance` over several tensors pooled (``norm_scope="node"``: a node's weight and bias
    standardised together), split back into their shapes.

    >>> [t.shape for t in importance_group([torch.ones(2, 2), torch.zeros(2)])]
    [torch.Size([2, 2]), torch.Size([2])]
    """
    if not grads:
        return []
    flat = torch.cat([g.detach().float().reshape(-1) for g in grads])
    imp = importance(flat)
    out, i = [], 0
    for g in grads:
        out.append(imp[i : i + g.numel()].reshape(g.shape))
        i += g.numel()
    return out


def chi_max(per_head: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """CHI (Eq. 4): the elementwise max over heads of each tensor's importance.

    `per_head[k][i]` is tensor i's importance through head k (the current head first).

    >>> chi_max([[torch.tensor([0.1, 0.5])], [torch.tensor([0.3, 0.2])]])[0].tolist()
    [0.30000001192092896, 0.5]
    """
    if not per_head:
        raise JointNetError("chi_max needs at least one head")
    out = [t.clone() for t in per_head[0]]
    for head in per_head[1:]:
        if len(head) != len(out):
            raise JointNetError(f"chi_max: a head gives {len(head)} tensors, the first {len(out)}")
        out = [torch.maximum(a, b) for a, b in zip(out, head)]
    return out


def accumulate(old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    """``gamma^{<=t} = max(gamma^{<=t-1}, gamma^t)`` elementwise (Eq. 5); `new` when no `old`.

    >>> accumulate(torch.tensor([0.2, 0.9]), torch.tensor([0.5, 0.1])).tolist()
    [0.5, 0.8999999761581421]
    """
    new = new.detach().float()
    return new.clone() if old is None else torch.maximum(old.detach().to(new.device), new)


def trunk_factor(gamma: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """The trunk gradient multiplier (Eq. 6): ``1 - gamma``; the hard-mask ablation (spec §2.9):
    ``1 - 1[gamma > threshold]``.

    >>> trunk_factor(torch.tensor([0.0, 0.25, 1.0])).tolist(), trunk_factor(torch.tensor([0.5, 0.7]), 0.6).tolist()
    ([1.0, 0.75, 0.0], [1.0, 0.0])
    """
    if threshold is None:
        return 1.0 - gamma
    return 1.0 - (gamma > threshold).to(gamma.dtype)


def head_factor(gammas: Sequence[torch.Tensor], threshold: float | None = None) -> torch.Tensor:
    """SMH (Eq. 7): ``1 - mean(cat(gamma))`` over every trunk scalar (weighted by parameter
    count, spec §7.3), a 0-dim tensor. With a `threshold` (hard masks), the mean of the binary
    masks ``1[gamma > threshold]`` ([ours]: spec §7.6 leaves it open).

    >>> float(head_factor([torch.tensor([1.0, 0.0]), torch.tensor([0.5])]))
    0.5
    """
    if not gammas:
        raise JointNetError("head_factor needs at least one importance tensor")
    flat = torch.cat([g.detach().float().reshape(-1) for g in gammas])
    if threshold is not None:
        flat = (flat > threshold).float()
    return 1.0 - flat.mean()


# ---- the net's SPG state ----------------------------------------------------------------------


def trunk_params(net: JointNet, task: str) -> list[tuple[str, Param]]:
    """(node, Param) of every trainable tensor on `task`'s route except its head's, in route order.

    Raises:
        StrategyError: unknown task, a widened node (a parameter in several blocks) or a per-task
            variant on the trunk: SPG is defined for one plain shared trunk.
    """
    from strategies.ewc import trunk_params as _trunk

    try:
        out = _trunk(net, task)
    except JointNetError as e:
        raise fail(str(e).removeprefix("ewc: "), task) from None
    for n, p in out:
        if p.task is not None:
            raise fail(f"node {n!r} holds a per-task variant of {p.name!r}; SPG needs a plain shared trunk", task)
    return out


def _ref(p: Param, key: str) -> TensorRef | None:
    r = p.annotations.get(key)
    return r if isinstance(r, TensorRef) else None


def accumulated(store: ParamStore, p: Param) -> torch.Tensor | None:
    """``gamma^{<=t}`` of trunk tensor `p` from the store (None before its first task is done)."""
    r = _ref(p, IMPORTANCE)
    if r is None:
        return None
    g = store[r.key]
    if tuple(g.shape) != tuple(p.shape):
        raise JointNetError(f"spg: the importance {r.key!r} has shape {tuple(g.shape)}, its parameter "
                            f"{p.key!r} {tuple(p.shape)}")
    return g


def route_importance(net: JointNet, store: ParamStore, task: str) -> dict[tuple[str, str], torch.Tensor]:
    """(node, param name) -> ``gamma^{<=t}`` for every trunk tensor of `task` that has one."""
    out = {}
    for n, p in trunk_params(net, task):
        g = accumulated(store, p)
        if g is not None:
            out[(n, p.name)] = g
    return out


def _threshold(net: JointNet) -> float | None:
    cfg = net.annotations.get(NET_KEY) or {}
    thr = cfg.get("hard_threshold")
    return None if thr is None else float(thr)


def spg_provider(net: JointNet, store: ParamStore, task: str, node: str, param: Param) -> torch.Tensor | None:
    """The ``"spg"`` gradient-rule provider (`jointnet.execution.optim.register_provider`).

    For the training task's head: `head_factor` over the accumulated importance of every trunk
    tensor of its route (SMH); for a trunk tensor: `trunk_factor` of its own accumulated
    importance. The threshold of the hard-mask variant comes from the net annotation ``spg``.
    None (no-op) before any importance exists: the first task trains untouched.
    """
    if NET_KEY not in net.annotations:
        return None
    thr = _threshold(net)
    if node == net.tasks[task].head:
        gammas = list(route_importance(net, store, task).values())
        return head_factor(gammas, thr).to(store.device) if gammas else None
    g = accumulated(store, param)
    return None if g is None else trunk_factor(g.detach(), thr)


register_provider(PROVIDER, spg_provider)


# ---- blocked fractions (spec §5 Table 5, §8.4) ------------------------------------------------------


def _last_task(net: JointNet) -> str | None:
    return list(net.tasks)[-1] if net.tasks else None


def _stats_row(n: int, blocked: int, gamma_sum: float | None = None, over: dict | None = None) -> dict:
    row: dict[str, Any] = {"params": n, "blocked": blocked / n if n else 0.0}
    if gamma_sum is not None:
        row["mean importance"] = gamma_sum / n if n else 0.0
    for k, v in (over or {}).items():
        row[k] = v / n if n else 0.0
    return row


def blocked_stats(net: JointNet, store: ParamStore, task: str | None = None) -> dict[str, Any] | None:
    """The fraction of trunk parameters the next task could not move, per trunk node and in total.

    - SPG net (annotation ``spg``): blocked = the gradient factor `trunk_factor` is exactly 0
      (soft masks: ``gamma^{<=t} == 1``; hard masks: ``gamma > threshold``; EWC-GI masks nothing);
      also the mean importance and the fractions with ``gamma > 0.5`` and ``> 0.9``.
    - HAT net (annotation ``hat``): blocked = HAT's conditioning ``1 - min(a_post, a_pre)`` (a
      bias: ``1 - a_post``) is exactly 0, i.e. both cumulative gates saturate at 1.0.

    Counts run over every trainable tensor of the trunk of `task` (default: the last task),
    weights and biases (heads, HAT's gate embeddings excepted). None for other nets.
    """
    task = task or _last_task(net)
    if task is None:
        return None
    if NET_KEY in net.annotations:
        return _spg_stats(net, store, task)
    if "hat" in net.annotations:
        return _hat_stats(net, store, task)
    return None


def _spg_stats(net: JointNet, store: ParamStore, task: str) -> dict[str, Any]:
    cfg = net.annotations.get(NET_KEY) or {}
    masking = cfg.get("ewc_gi") is None
    thr = _threshold(net)
    nodes: dict[str, list] = {}
    for n, p in trunk_params(net, task):
        g = accumulated(store, p)
        acc = nodes.setdefault(n, [0, 0, 0.0, 0, 0, 0])
        acc[0] += p.numel
        if g is None:
            continue
        g = g.detach().float()
        if masking:
            acc[1] += int((trunk_factor(g, thr) == 0).sum())
        acc[2] += float(g.sum(dtype=torch.float64))
        acc[3] += int((g > 0.5).sum())
        acc[4] += int((g > 0.9).sum())
        acc[5] += int((g == 1.0).sum())
    per_node, tot = {}, [0, 0, 0.0, 0, 0, 0]
    for n, a in nodes.items():
        per_node[n] = _stats_row(a[0], a[1], a[2], {"> 0.5": a[3], "> 0.9": a[4], "== 1": a[5]})
        tot = [x + y for x, y in zip(tot, a)]
    total = _stats_row(tot[0], tot[1], tot[2], {"> 0.5": tot[3], "> 0.9": tot[4], "== 1": tot[5]})
    return {"method": "spg", "tasks": list(cfg.get("tasks", ())), "total": total, "nodes": per_node}


def _hat_stats(net: JointNet, store: ParamStore, task: str) -> dict[str, Any]:
    from strategies import hat

    per_node, n_all, b_all = {}, 0, 0
    for n, names in hat.conditioned_params(net, task).items():
        grid = net.params_for(task, n)
        count = blocked = 0
        for name in names:
            p = grid[name][0][0]
            f = hat.param_conditioning(net, store, task, n, name)
            count += p.numel
            if f is not None:
                blocked += int((f.expand(p.shape) == 0).sum())
        per_node[n] = _stats_row(count, blocked)
        n_all += count
        b_all += blocked
    tasks = list((net.annotations.get("hat") or {}).get("tasks", ()))
    return {"method": "hat", "tasks": tasks, "total": _stats_row(n_all, b_all), "nodes": per_node}


# ---- metrics (spec §4.2, §4.3) ------------------------------------------------------------------


def transfer_metrics(R: Sequence[Sequence[float | None]], reference: Sequence[float] | None = None) -> dict[str, float]:
    """ACC, BWT and (with the independent nets' accuracies `reference`) FWT as SPG defines them
    (spec §4.2; `jointnet.experiments.metrics`: ACC is its AP), plus ``ONE`` = mean(reference)
    and ``identity`` = ACC - (ONE + FWT + BWT (T-1)/T), which is 0 up to rounding (spec §4.3).

    >>> m = transfer_metrics([[0.9, None], [0.8, 0.7]], [0.85, 0.75])
    >>> round(m["ACC"], 3), round(m["BWT"], 3), round(m["FWT"], 3), abs(m["identity"]) < 1e-12
    (0.75, -0.1, 0.0, True)
    """
    out = {"ACC": metrics.average_accuracy(R), "BWT": metrics.bwt(R)}
    if reference is not None:
        T = len(R)
        out["FWT"] = metrics.fwt(R, reference)
        out["ONE"] = sum(reference) / T
        out["identity"] = out["ACC"] - (out["ONE"] + out["FWT"] + out["BWT"] * (T - 1) / T)
    return out


def as_plain(stats: Mapping[str, Any]) -> dict[str, Any]:
    """`stats` with floats rounded for display (views)."""
    def r(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 6)
        if isinstance(v, Mapping):
            return {k: r(x) for k, x in v.items()}
        return v
    return r(stats)
