"""`annotate`: strategy data on a parameter, a node, a task or the net."""

from __future__ import annotations

from typing import Any

import attrs

from jointnet.graph.draft import NO_CHANGE, Draft, rewrite
from jointnet.graph.frozen import FrozenDict

__all__ = ["annotate"]


_PLAIN = (str, int, float, bool, type(None))


def _check_value(d: Draft, value: Any) -> Any:
    from jointnet.graph.net import TensorRef

    if isinstance(value, _PLAIN + (TensorRef,)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_check_value(d, v) for v in value)
    if isinstance(value, dict) or isinstance(value, FrozenDict):
        for k in value:
            if not isinstance(k, str):
                raise d.error(f"annotation dict keys must be strings (got {k!r})")
        return FrozenDict({k: _check_value(d, v) for k, v in value.items()})
    raise d.error(f"annotation values must be str/int/float/bool/None, lists, dicts or TensorRef (got {type(value).__name__})")


@rewrite
def annotate(
    d: Draft, /, *, key: str, value: Any, node: str | None = None, param: str | None = None,
    task: str | None = None,
) -> Any:
    """Attach strategy data under `key`: to a parameter (`node` + `param`), a node, a task, or the
    net (neither). `value` None removes the key. Tensors go in the store, referenced by `TensorRef`.
    """
    if not isinstance(key, str) or not key:
        raise d.error(f"key must be a non-empty string (got {key!r})")
    value = _check_value(d, value)

    def put(ann: FrozenDict) -> FrozenDict:
        return ann.without(key) if value is None else ann.set(key, value)

    if node is not None:
        n = d.node(node)
        if param is not None:
            hits = [p for p in n.params if p.name == param and (task is None or p.task in (None, task))]
            if not hits:
                names = sorted({p.name for p in n.params})
                raise d.error(f"{node!r} has no parameter {param!r}; it has {names}")
            new = tuple(attrs.evolve(p, annotations=put(p.annotations)) if p in hits else p for p in n.params)
            out = attrs.evolve(n, params=new)
        else:
            out = attrs.evolve(n, annotations=put(n.annotations))
        if out == n:
            return NO_CHANGE
        d.set_node(out)
    elif param is not None:
        raise d.error("param needs node")
    elif task is not None:
        info = d.task(task)
        new_info = attrs.evolve(info, annotations=put(info.annotations))
        if new_info == info:
            return NO_CHANGE
        d.tasks[task] = new_info
    else:
        new = put(FrozenDict(d.annotations))
        if new == FrozenDict(d.annotations):
            return NO_CHANGE
        d.annotations = dict(new)
    return None
