"""SPG's views for the CLI: ``jointnet inspect`` and ``jointnet diff`` (entry-point groups
``jointnet.inspect`` / ``jointnet.diff``, name ``spg``).

- `inspect_view`: for an SPG net, per trunk node the mean accumulated importance, the blocked
  fraction (gradient factor exactly 0) and the fractions with importance > 0.5 / > 0.9 / == 1,
  the head factor the next task would get (SMH), and the variant; for a HAT net, the blocked
  fraction per node (SPG's Table 5 comparison). None for other nets.
- `diff_view`: for two SPG nets, per trunk tensor present in both, how the importance moved:
  mean before and after, the fraction of entries that rose, the largest rise and fall (a later
  snapshot of one run never falls: accumulation is a max), and the blocked fractions.

Both only read the net and the store; without tensors (``--no-tensors``) they say what they can.
"""

from __future__ import annotations

from typing import Any

from jointnet.execution.store import ParamStore
from jointnet.graph.net import JointNet
from strategies.spg_core import (
    NET_KEY, as_plain, blocked_stats, head_factor, route_importance,
)

__all__ = ["inspect_view", "diff_view"]


def _variant(net: JointNet) -> dict[str, Any]:
    cfg = dict(net.annotations.get(NET_KEY) or {})
    cfg.pop("tasks", None)
    return {k: v for k, v in cfg.items() if v is not None}


def _flat(stats: dict[str, Any]) -> dict[str, Any]:
    """`blocked_stats` laid out for `format_views`: totals as top-level lines, one block per node
    (a list of dicts is what the CLI prints one ``key: value`` line per field)."""
    out = {k: v for k, v in stats.items() if k not in ("total", "nodes")}
    out.update(stats["total"])
    out["nodes"] = [{"node": n, **row} for n, row in stats["nodes"].items()]
    return out


def inspect_view(net: JointNet, store: ParamStore | None = None) -> dict[str, Any] | None:
    """What ``jointnet inspect`` shows of an SPG (or HAT) net; None for any other net.

    Fractions are of the parameters counted (``params``), in [0, 1].
    """
    if NET_KEY not in net.annotations and "hat" not in net.annotations:
        return None
    if store is None or not net.tasks:
        out: dict[str, Any] = {"method": "spg" if NET_KEY in net.annotations else "hat"}
        out["note"] = "no tensors loaded: importance and blocked fractions need them"
        return out
    stats = blocked_stats(net, store)
    if stats is None:
        return None
    if stats["method"] == "spg":
        variant = _variant(net)
        stats["variant"] = ", ".join(f"{k}={v}" for k, v in variant.items())
        gammas = list(route_importance(net, store, list(net.tasks)[-1]).values())
        if gammas and variant.get("ewc_gi") is None and variant.get("smh", True):
            stats["head factor (next task)"] = float(head_factor(gammas, variant.get("hard_threshold")))
    return as_plain(_flat(stats))


def diff_view(a: JointNet, b: JointNet, store_a: ParamStore | None = None,
              store_b: ParamStore | None = None) -> dict[str, Any] | None:
    """How SPG's accumulated importance moved from net `a` to net `b` (both SPG nets)."""
    if NET_KEY not in a.annotations or NET_KEY not in b.annotations:
        return None
    tasks_a = list(a.annotations[NET_KEY].get("tasks", ()))
    tasks_b = list(b.annotations[NET_KEY].get("tasks", ()))
    out: dict[str, Any] = {"tasks": f"{tasks_a} -> {tasks_b}"}
    if store_a is None or store_b is None or not a.tasks or not b.tasks:
        out["note"] = "no tensors loaded: importance changes need them"
        return out
    ga = route_importance(a, store_a, list(a.tasks)[-1])
    gb = route_importance(b, store_b, list(b.tasks)[-1])
    nodes: list[dict[str, Any]] = []
    for (n, name), g_b in gb.items():
        g_a = ga.get((n, name))
        row: dict[str, Any] = {"mean after": float(g_b.float().mean())}
        if g_a is not None and g_a.shape == g_b.shape:
            d = g_b.float().cpu() - g_a.float().cpu()
            row["mean before"] = float(g_a.float().mean())
            row["rose"] = float((d > 0).float().mean())
            row["max rise"] = max(0.0, float(d.max())) if d.numel() else 0.0
            row["max fall"] = max(0.0, float((-d).max())) if d.numel() else 0.0
            row["newly saturated"] = float(((g_b == 1) & (g_a != 1)).float().mean())
        else:
            row["new"] = True
        nodes.append({"tensor": f"{n}.{name}", **row})
    out["tensors"] = nodes
    sa, sb = blocked_stats(a, store_a), blocked_stats(b, store_b)
    if sa and sb:
        out["blocked"] = f"{sa['total']['blocked']:.4%} -> {sb['total']['blocked']:.4%}"
        out["mean importance"] = f"{sa['total']['mean importance']:.4f} -> {sb['total']['mean importance']:.4f}"
    return as_plain(out)
