"""L2BG's view for ``jointnet inspect`` (entry-point group ``jointnet.inspect``, name ``l2bg``).

`inspect_view` shows, for a net L2BG (or its random-growth control) built: the grow sequence
(per task: bind target, delta, grown slots or channel units), the training version of every
node (spec §8: how many training phases updated it; `strategies.l2bg_graph.bump_versions`),
the provenance of every grown node (task, slot, conflict, rank, in the nucleus) and, for
channel-level growth, which channel group of which producer grows which unit. None for other
nets. It reads only the net.
"""

from __future__ import annotations

from typing import Any

from jointnet.graph.frozen import thaw
from jointnet.graph.net import JointNet
from strategies.l2bg_channels import UNITS
from strategies.l2bg_graph import GROW_LOG, PROV, grow_sequence, node_versions

__all__ = ["inspect_view"]


def inspect_view(net: JointNet, store: Any = None) -> dict[str, Any] | None:
    """What ``jointnet inspect`` shows of an L2BG net; None for any other net.

    >>> from jointnet import backbones
    >>> from strategies.l2bg_graph import bind_grow_step
    >>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
    >>> view = inspect_view(bind_grow_step(net, task="t2", to="t1", grow=["fc1"], n_classes=2, delta=1.0))
    >>> view["grow sequence"], view["grown nodes"]["fc1.t2"]["slot"]
    (['t2 -> t1 d=1.00 +[fc1]'], 'fc1')
    """
    if GROW_LOG not in net.annotations:
        return None
    seq = []
    for e in grow_sequence(net):
        if e.get("bind") is None:
            seq.append(f"{e['task']} first +[{', '.join(e.get('grow') or [])}]")
            continue
        d = "" if e.get("delta") is None else f" d={e['delta']:.2f}"
        seq.append(f"{e['task']} -> {e['bind']}{d} +[{', '.join(e.get('grow') or [])}]")
    grown = {}
    units = {}
    for n in net.nodes:
        ann = net.node(n).annotations
        prov = ann.get(PROV)
        if prov is not None and "task" in prov:
            p = thaw(prov)
            grown[n] = {k: p.get(k) for k in ("task", "slot", "bound_to", "conflict", "rank", "in_nucleus", "init")}
        if UNITS in ann:
            units[n] = {g: int(j) for g, j in thaw(ann[UNITS]).items()}
    out: dict[str, Any] = {"method": "l2bg", "grow sequence": seq, "versions": node_versions(net),
                           "grown nodes": grown}
    if units:
        out["channel units"] = units
    return out
