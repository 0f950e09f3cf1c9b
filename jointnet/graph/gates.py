"""Where a task's Gate nodes sit around a parametric layer: the walk HAT's gradient conditioning
and the capacity view of `jointnet inspect` both need (one implementation for both).

A Gate scales the channels (units) of its input. A parametric node's output channels are gated by
the first Gate after it, its input channels by the nearest Gate before it, each reached through
channel-preserving nodes (ReLU, BatchNorm, Dropout, pooling, Flatten) on the task's route.
"""

from __future__ import annotations

import math

from jointnet.errors import SpecError
from jointnet.graph.net import JointNet
from jointnet.graph.shapes import task_shapes

__all__ = ["gate_neighbours", "gates_on_route"]


def gates_on_route(net: JointNet, task: str) -> list[str]:
    """The Gate nodes of `task`'s route, in route order."""
    return [n for n in net.route(task) if net.node(n).kind == "Gate"]


def _next_on_route(net: JointNet, task: str, node: str) -> list[str]:
    return [v for _, v, d in net.graph.out_edges(node, data=True) if task in d["tasks"]]


def gate_neighbours(net: JointNet, task: str, node: str, *, strict: bool = True) -> tuple[str | None, str | None, int]:
    """(pre gate, post gate, repeat) of the parametric node `node` on `task`'s route.

    pre is None when the walk back reaches the input (the first layer); post is None when the
    walk forward reaches the head. `repeat` is how many input positions each pre-gate unit covers
    (H*W across a Flatten).

    Raises:
        SpecError: (`strict`) the walk meets a merge, a fork, or a node that does not pass
            channels before a gate. Without `strict`, the walk stops there and that side is None.
    """

    def stuck(message: str):
        if strict:
            raise SpecError(message)

    post, cur = None, node
    while True:
        nxt = _next_on_route(net, task, cur)
        if len(nxt) != 1:
            stuck(f"node {cur!r} feeds {len(nxt)} nodes on the route of task {task!r}; gates need a sequential trunk")
            break
        cur = nxt[0]
        spec = net.node(cur).spec
        if spec.kind == "Gate":
            post = cur
            break
        if spec.kind == "Head":
            break
        if not spec.passes_channels:
            stuck(f"no post gate for node {node!r} on the route of task {task!r}: "
                  f"the walk reaches {cur!r} ({spec.kind}) first")
            break
    pre, repeat, cur = None, 1, node
    shapes = task_shapes(net, task)
    while True:
        ins = net.inputs_of(cur, task)
        if len(ins) != 1:
            stuck(f"node {cur!r} has {len(ins)} inputs on the route of task {task!r}; gates need a sequential trunk")
            break
        cur = ins[0]
        spec = net.node(cur).spec
        if spec.kind == "Gate":
            pre = cur
            break
        if spec.kind == "Input":
            break
        if spec.kind == "Flatten":
            repeat *= math.prod(shapes[net.inputs_of(cur, task)[0]][1:])
        elif not spec.passes_channels:
            stuck(f"no pre gate for node {node!r} on the route of task {task!r}: "
                  f"the walk reaches {cur!r} ({spec.kind}) first")
            break
    return pre, post, repeat
