"""Train-policy rewrites: `freeze`, `unfreeze`, `set_lr_scale` (per task and node, or for every task)."""

from __future__ import annotations

import math
from typing import Any

import attrs

from jointnet.graph.draft import NO_CHANGE, Draft, rewrite
from jointnet.graph.net import NodePolicy

__all__ = ["freeze", "unfreeze", "set_lr_scale"]


def _set_policy(d: Draft, nodes: Any, task: str | None, **change: Any) -> Any:
    # A task entry starts from what the task gets now (its entry, else the all-task entry) and
    # is dropped when it equals that fallback: so `unfreeze(task=t)` after `freeze(task=None)`
    # does unfreeze for t, and the policy keeps no redundant entries.
    if task is not None:
        d.task(task)
    changed = False
    for n in d.node_list(nodes):
        key = (task, n)
        fallback = NodePolicy() if task is None else d.policy.get((None, n), NodePolicy())
        old = d.policy.get(key, fallback)
        new = attrs.evolve(old, **change)
        if new != old:
            changed = True
            if new == fallback:
                d.policy.pop(key, None)
            else:
                d.policy[key] = new
    return None if changed else NO_CHANGE


@rewrite
def freeze(d: Draft, /, *, nodes: Any, task: str | None = None, keep_owned: bool = False) -> Any:
    """Mark `nodes` frozen when training `task` (None: every task).

    With `keep_owned`, the training task's own tensors on those nodes (channels it grew with
    `widen`, its `per_task_bn` variants, its live masks) still train (GROWN-style: old kernels
    frozen, new channels learn).
    """
    if not isinstance(keep_owned, bool):
        raise d.error(f"keep_owned must be a bool (got {keep_owned!r})")
    return _set_policy(d, nodes, task, frozen=True, keep_owned=keep_owned)


@rewrite
def unfreeze(d: Draft, /, *, nodes: Any, task: str | None = None) -> Any:
    """Mark `nodes` trainable again when training `task` (None: every task)."""
    return _set_policy(d, nodes, task, frozen=False, keep_owned=False)


@rewrite
def set_lr_scale(d: Draft, /, *, nodes: Any, scale: float, task: str | None = None) -> Any:
    """Scale the learning rate of `nodes` by `scale` when training `task` (None: every task)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise d.error(f"scale must be a finite number >= 0 (got {scale!r})")
    return _set_policy(d, nodes, task, lr_scale=float(scale))
