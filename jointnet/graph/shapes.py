"""Shape inference along one task's route, with the widths that task sees."""

from __future__ import annotations

from jointnet.errors import InvariantError, SpecError
from jointnet.graph.net import JointNet

__all__ = ["task_shapes", "route_sink"]


def task_shapes(net: JointNet, task: str) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch axis) of every node on `task`'s route.

    Raises:
        InvariantError: a node's inputs do not fit its spec, naming node and task.
    """
    key = ("shapes", task)
    if key in net._cache:
        return net._cache[key]
    shapes: dict[str, tuple[int, ...]] = {}
    info = net.tasks[task]
    for n in net.route(task):
        spec = net.effective_spec(task, n)
        if n == info.input:
            shapes[n] = spec.out_shape([])
            continue
        ins = [shapes[u] for u in net.inputs_of(n, task)]
        try:
            shapes[n] = spec.out_shape(ins)
        except SpecError as e:
            raise InvariantError(f"node {n!r} on the route of task {task!r}: {e}") from None
    net._cache[key] = shapes
    return shapes


def route_sink(net: JointNet, task: str) -> list[str]:
    """The nodes of `task`'s route that feed nothing on it (its input if the route is empty)."""
    route = net.route(task)
    fed = {u for u, _, _ in net.edges(task)}
    return [n for n in route if n not in fed]
