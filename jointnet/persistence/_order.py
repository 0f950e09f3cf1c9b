"""Orders the persistence views share: tasks in the order they joined the net, nodes in a
deterministic topological order (`views` and `capacity` both read them)."""

from __future__ import annotations

import networkx as nx

from jointnet.graph.net import JointNet


def task_sorted(net: JointNet, tasks) -> list[str]:
    """`tasks` in the order they were added to `net` (unknown names last, by name)."""
    order = net._cache.get("task_order")
    if order is None:  # once per net: sorting users per node stays linear in nodes x users
        order = net._cache["task_order"] = {t: i for i, t in enumerate(net.tasks)}
    return sorted(tasks, key=lambda t: (order.get(t, 1 << 30), t))


def topo(net: JointNet) -> list[str]:
    """The nodes of `net` in lexicographical topological order."""
    return list(nx.lexicographical_topological_sort(net.graph))
