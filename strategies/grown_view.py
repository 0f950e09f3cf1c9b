"""GROWN's size accounting (spec §7.10) and its `jointnet inspect` view.

Size: weights, biases, BatchNorm (affine parameters and running statistics, per task) and heads,
relative to one full-width backbone with one head (the net annotation ``grown.full_params``, the
same count of that backbone). Masks are reported apart, in bits: committed masks 1 bit per entry,
``where`` sets 1 bit per entry, live real masks (``scale``) 32 bits per entry; the option
``count_masks`` adds them to the size as 32-bit numbers (bits / 32).
"""

from __future__ import annotations

import math
from typing import Any

from jointnet.graph.net import JointNet
from jointnet.persistence.views import param_counts

__all__ = ["NET_KEY", "size_report", "inspect_view"]

NET_KEY = "grown"
"""The net annotation (and each task's annotation) GROWN writes."""


def size_report(net: JointNet, store=None) -> dict[str, Any]:
    """Sizes of a GROWN net, as numbers of scalars: ``total`` (parameters + BatchNorm statistics),
    ``heads``, ``bn`` (BatchNorm parameters and statistics), ``core`` (total less heads and
    BatchNorm), ``full`` (one full-width backbone), ``mask_bits``, and ``size`` = total / full
    (plus mask_bits / 32 with the net's ``count_masks``)."""
    counts = param_counts(net)
    total = counts["total"] + counts["buffers"]
    heads = sum(counts["by_node"][n] for n in net.nodes if net.node(n).kind == "Head")
    bn = 0
    bits = 0
    wheres = set()
    for n in net.nodes:
        node = net.node(n)
        if node.kind == "BatchNorm":
            bn += sum(p.numel for p in node.params)
        for m in node.masks:
            numel = math.prod(m.shape)
            bits += numel if m.state == "committed" else 32 * numel
            if m.where is not None and m.where not in wheres:
                wheres.add(m.where)
                bits += numel
    ann = net.annotations.get(NET_KEY, {})
    full = int(ann.get("full_params", 0)) or total
    size = (total + (bits / 32 if ann.get("count_masks") else 0)) / full
    return {"total": total, "heads": heads, "bn": bn, "core": total - heads - bn, "full": full,
            "mask_bits": bits, "size": size}


def _owners(net: JointNet, store, node: str) -> dict[str, int]:
    """Kernels of `node`'s weight by owning task (from the owner maps), or {} without a store."""
    if store is None:
        return {}
    by_value = {info.added_at: t for t, info in net.tasks.items()}
    out: dict[str, int] = {}
    for p in net.node(node).params:
        if p.name != "weight" or p.task is not None or p.owners is None or p.owners.key not in store:
            continue
        values, counts = store[p.owners.key].unique(return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            who = by_value.get(v, "free" if v == 0 else f"?{v}")
            out[who] = out.get(who, 0) + c
    return out


def inspect_view(net: JointNet, store=None) -> dict[str, Any] | None:
    """What `jointnet inspect` shows of a GROWN net (None for other nets): the size now and after
    each task, the tasks where Stage B ran and where it was skipped, the masks' bits; per node
    (a list of dicts with ``node``) its width, seed width, channel groups by owner and state
    (``candidate`` while the owner trains, ``active`` after its commit; deleted candidates appear
    as "k of n candidates kept" in the owner's entry) and kernels by owner; per task (a list of
    dicts with ``task``) the target and its references, Stage-A and final validation accuracy,
    Stage B, released kernels, the kept fraction of each mask per node and the size after it."""
    ann = net.annotations.get(NET_KEY)
    if ann is None:
        return None
    seed = dict(ann.get("seed_widths", {}))
    nodes = []
    for n, base in seed.items():
        if n not in net.graph:
            continue
        node = net.node(n)
        groups = []
        for g in node.out_groups:
            live = any(m.task == g.owner and m.state == "live" for m in node.masks)
            groups.append(f"{g.owner}: +{g.size} ({'candidate' if live else 'active'})")
        entry: dict[str, Any] = {"node": n, "width": node.spec.width("out"), "seed": base,
                                 "groups": groups or ["(none)"]}
        owners = _owners(net, store, n)
        if owners:
            entry["kernels by owner"] = ", ".join(f"{t}={c}" for t, c in owners.items())
        nodes.append(entry)
    tasks = []
    grew, skipped = [], []
    for t, info in net.tasks.items():
        rec = info.annotations.get(NET_KEY)
        if rec is None:
            continue
        rec = dict(rec)
        if not rec.get("first"):
            (grew if rec.get("grew") else skipped).append(t)
        stage = "seed + LSG" if rec.get("first") else "ran" if rec.get("grew") else "skipped"
        entry = {"task": t, "size after": rec.get("size"), "stage B": stage,
                 "rounds": rec.get("rounds"), "released kernels": rec.get("released")}
        for k in ("target", "scratch", "finetune", "stage_a_acc", "acc"):
            if rec.get(k) is not None:
                entry[k] = rec[k]
        kept = rec.get("kept") or {}
        for n, kinds in kept.items():
            entry[f"kept {n}"] = ", ".join(f"{k}={v:.3f}" for k, v in dict(kinds).items() if v is not None)
        for n, gc in dict(rec.get("grown_channels") or {}).items():
            entry[f"grown {n}"] = f"{gc['kept']} of {gc['candidates']} candidates kept"
        tasks.append(entry)
    size = size_report(net, store)
    return {
        "size (x one full backbone)": round(size["size"], 4),
        "size after each task": [e["size after"] for e in tasks],
        "stage B ran at": grew,
        "stage B skipped at": skipped,
        "masks (bits)": size["mask_bits"],
        "nodes": nodes,
        "tasks": tasks,
    }
