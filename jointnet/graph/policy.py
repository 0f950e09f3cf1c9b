"""Policy rewrites: how a task trains (`freeze`, `unfreeze`, `set_lr_scale`, `set_grad_rule`,
`clear_grad_rules`; per task or for every task, per node or per parameter) and how its inference
runs (`set_context`). The trainer turns the policy into optimizer groups and gradient rules
(`jointnet.execution.optim`)."""

from __future__ import annotations

import math
from typing import Any

import attrs

from jointnet.errors import SpecError
from jointnet.graph.draft import NO_CHANGE, Draft, rewrite
from jointnet.graph.frozen import FrozenDict
from jointnet.graph.names import check_name
from jointnet.graph.net import GRAD_PROVIDERS, GradRule, NodePolicy, ParamPolicy

__all__ = ["freeze", "unfreeze", "set_lr_scale", "set_grad_rule", "clear_grad_rules", "set_context"]


def _fallback(d: Draft, task: str | None, n: str) -> NodePolicy:
    """What a new entry for (task, n) starts from: nothing for every task, else what the task gets
    now from the every-task entry (its node-level fields; parameters merge, see `policy_for`)."""
    if task is None:
        return NodePolicy()
    return attrs.evolve(d.policy.get((None, n), NodePolicy()), params=FrozenDict())


def _store(d: Draft, key: tuple, new: NodePolicy, fallback: NodePolicy) -> None:
    # An entry equal to its fallback is dropped: so `unfreeze(task=t)` after `freeze(task=None)`
    # does unfreeze for t, and the policy keeps no redundant entries.
    if new == fallback:
        d.policy.pop(key, None)
    else:
        d.policy[key] = new


def _param_names(d: Draft, n: str, params: Any) -> list[str]:
    names = [params] if isinstance(params, str) else list(params) if isinstance(params, (list, tuple)) else None
    if not names:
        raise d.error(f"params must be a parameter name or a non-empty list of them (got {params!r})")
    kinds = d.node(n).spec.params()
    for name in names:
        if name.startswith("mask:"):
            check = name[5:]
            try:
                check_name(check, "mask kind")
            except SpecError as e:
                raise d.error(str(e)) from None
        elif name not in kinds or kinds[name].buffer:
            raise d.error(f"{n!r} ({d.node(n).kind}) has no trainable parameter {name!r}; it has "
                          f"{sorted(k for k, i in kinds.items() if not i.buffer)} (and mask:KIND for masks)")
    return names


def _edit_policy(d: Draft, nodes: Any, task: str | None, edit) -> Any:
    """Apply ``edit(entry, node) -> entry`` to the policy entry of (task, node) for each of `nodes`
    (a missing entry starts from its fallback); NO_CHANGE when nothing changed."""
    if task is not None:
        d.task(task)
    changed = False
    for n in d.node_list(nodes):
        key = (task, n)
        fallback = _fallback(d, task, n)
        old = d.policy.get(key, fallback)
        new = edit(old, n)
        if new != old:
            changed = True
            _store(d, key, new, fallback)
    return None if changed else NO_CHANGE


def _set_policy(d: Draft, nodes: Any, task: str | None, params: Any = None, **change: Any) -> Any:
    """Change node-level fields (`params` None) or the named parameters' fields of `nodes`."""

    def edit(old: NodePolicy, n: str) -> NodePolicy:
        if params is None:
            return attrs.evolve(old, **change)
        table = dict(old.params)
        for name in _param_names(d, n, params):
            pp = attrs.evolve(table.get(name, ParamPolicy()), **change)
            if pp == ParamPolicy():
                table.pop(name, None)
            else:
                table[name] = pp
        return attrs.evolve(old, params=FrozenDict(table))

    return _edit_policy(d, nodes, task, edit)


@rewrite(recorded_if_set=("params",))
def freeze(d: Draft, /, *, nodes: Any, task: str | None = None, keep_owned: bool = False,
           params: Any = None) -> Any:
    """Mark `nodes` (or only their parameters `params`) frozen when training `task` (None: every
    task). A frozen tensor gets no gradient and no optimizer state.

    With `keep_owned` (node level), the training task's own tensors on those nodes (channels it
    grew with `widen`, its per-task variants, its live masks) still train (GROWN-style: old
    kernels frozen, new channels learn). `params` names parameters of the node's kind, or
    ``mask:KIND`` for the training task's live masks of that kind (PackNet's strategy-written
    masks).
    """
    if not isinstance(keep_owned, bool):
        raise d.error(f"keep_owned must be a bool (got {keep_owned!r})")
    if params is not None:
        if keep_owned:
            raise d.error("keep_owned applies to whole nodes, not to params")
        return _set_policy(d, nodes, task, params, frozen=True)
    return _set_policy(d, nodes, task, frozen=True, keep_owned=keep_owned)


@rewrite(recorded_if_set=("params",))
def unfreeze(d: Draft, /, *, nodes: Any, task: str | None = None, params: Any = None) -> Any:
    """Mark `nodes` (or their parameters `params`) trainable again when training `task`."""
    if params is not None:
        return _set_policy(d, nodes, task, params, frozen=False)
    return _set_policy(d, nodes, task, frozen=False, keep_owned=False)


@rewrite(recorded_if_set=("params",))
def set_lr_scale(d: Draft, /, *, nodes: Any, scale: float, task: str | None = None,
                 params: Any = None) -> Any:
    """Scale the learning rate of `nodes` (or their parameters `params`) by `scale` when training
    `task` (None: every task)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise d.error(f"scale must be a finite number >= 0 (got {scale!r})")
    if params is not None:
        return _set_policy(d, nodes, task, params, lr_scale=float(scale))
    return _set_policy(d, nodes, task, lr_scale=float(scale))


@rewrite
def set_grad_rule(
    d: Draft, /, *, nodes: Any, params: Any, task: str | None = None, kind: str = "multiply",
    tensor: str | None = None, provider: str | None = None, apply: str = "grad", block: Any = None,
) -> Any:
    """Add a gradient rule (`jointnet.graph.net.GradRule`) to `params` of `nodes` when training
    `task` (None: every task); a rule equal to one already there changes nothing.

    kind ``multiply`` (by the store tensor `tensor` or the provider's result; `apply` ``grad`` or
    ``update``) or ``freeze`` (entries that keep their values exactly). `block`: the parameter
    block (default: the base block).
    """
    if provider is not None and provider not in GRAD_PROVIDERS:
        raise d.error(f"provider must be one of {', '.join(sorted(GRAD_PROVIDERS))} (registered by "
                      f"jointnet.execution.optim.register_provider); got {provider!r}")
    try:
        rule = GradRule(kind, tensor=tensor, provider=provider, apply=apply,
                        block=tuple(block) if isinstance(block, (list, tuple)) else (None, None))
    except SpecError as e:
        raise d.error(str(e)) from None

    def edit(old: NodePolicy, n: str) -> NodePolicy:
        table = dict(old.params)
        for name in _param_names(d, n, params):
            pp = table.get(name, ParamPolicy())
            if rule not in pp.rules:
                table[name] = attrs.evolve(pp, rules=pp.rules + (rule,))
        return attrs.evolve(old, params=FrozenDict(table))

    return _edit_policy(d, nodes, task, edit)


@rewrite
def clear_grad_rules(d: Draft, /, *, nodes: Any, params: Any, task: str | None = None) -> Any:
    """Remove every gradient rule of `params` of `nodes` for `task` (None: the every-task entry)."""
    return _set_policy(d, nodes, task, params, rules=())


@rewrite
def set_context(d: Draft, /, *, task: str, values: Any) -> Any:
    """Set how `task`'s inference runs: `values` maps `jointnet.execution.Context` fields to
    finite numbers or bools (HAT: ``{"gate_scale": s_max}``); a value None removes the field.

    Evaluation anywhere (the runner, `jointnet.execution.run`, export) reads it from the net.
    """
    info = d.task(task)
    if not isinstance(values, dict) or not values:
        raise d.error(f"values must be a non-empty map of context fields (got {values!r:.80})")
    ctx = dict(info.context)
    for k, v in values.items():
        if v is None:
            ctx.pop(k, None)
        else:
            ctx[k] = v
    try:
        new = attrs.evolve(info, context=FrozenDict(ctx))
    except SpecError as e:
        raise d.error(str(e)) from None
    if new == info:
        return NO_CHANGE
    d.tasks[task] = new
    return None
