"""Shape inference along one task's route, with the widths that task sees."""

from __future__ import annotations

from jointnet.errors import InvariantError, SpecError
from jointnet.graph.net import JointNet, RouteView

__all__ = ["task_shapes", "route_sink"]


def task_shapes(net: JointNet, task: "str | RouteView") -> dict[str, tuple[int, ...]]:
    """Output shape (without batch axis) of every node on the route of `task` (a task or a view).

    Raises:
        InvariantError: a node's inputs do not fit its spec, naming node and task.
    """

    def make() -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        start = net.tasks[net.task_of(task)].input
        for n in net.route(task):
            spec = net.effective_spec(task, n)
            if n == start:
                shapes[n] = spec.out_shape([])
                continue
            ins = [shapes[u] for u in net.inputs_of(n, task)]
            try:
                shapes[n] = spec.out_shape(ins)
            except SpecError as e:
                where = f"task {task!r}" if isinstance(task, str) else f"view {task.name!r} of task {task.task!r}"
                raise InvariantError(f"node {n!r} on the route of {where}: {e}") from None
        return shapes

    if isinstance(task, RouteView):
        data = net._view_data(task)
        if "shapes" not in data:
            data["shapes"] = make()
        return data["shapes"]
    return net._index().cached("shapes", task, make)


def route_sink(net: JointNet, task: str) -> list[str]:
    """The nodes of `task`'s route that feed nothing on it (its input if the route is empty)."""
    route = net.route(task)
    fed = {u for u, _, _ in net.edges(task)}
    return [n for n in route if n not in fed]
