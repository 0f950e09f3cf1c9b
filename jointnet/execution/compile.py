"""Compile a net to an ordinary ``nn.Module`` by generating straight-line forward code; `run` it.

One task: exactly its route, nothing else registered (no unused parameters). Several tasks or
route views: the `jointnet.execution.program.plan` of their routes, each node computed once for
every route that computes the same thing there. The module registers the store's own tensors,
so training it updates the store. ``forward(x, ctx=None)`` takes the call's `Context` (gate
scale, Gumbel noise, dropout/BN mode); without one, the module's train/eval mode and the first
task's recorded inference context apply. The generated source is in ``module.code``.

>>> from jointnet import backbones
>>> from jointnet.execution.store import ParamStore
>>> net = backbones.build(backbones.mlp(4, [8]), task="t1", n_classes=2)
>>> m = compile_net(net, ParamStore().realize(net), "t1")
>>> print(m.code.splitlines()[2].strip())
v1 = F.linear(x, self.fc1_weight, self.fc1_bias)  # fc1
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from jointnet.errors import CompileError
from jointnet.execution import masks as _masks
from jointnet.execution.program import Context, Plan, plan, route_label, task_context
from jointnet.execution.store import ParamStore
from jointnet.graph.layers import RUNTIME
from jointnet.graph.net import JointNet, RouteView

__all__ = ["compile_net", "CompiledNet", "run", "Outputs"]

_CACHE_SIZE = 64


class CompiledNet(nn.Module):
    """A compiled task (or tasks, or route views) of a net.

    ``forward(x, ctx=None)`` returns logits (one route, nothing captured), else a dict of logits
    by route label; with captured nodes, ``(logits by label, {(label, node): activation})``.

    Attributes:
        tasks: the route labels; ``single`` says whether forward returns one tensor.
        code: the generated forward source.
        keys: attribute name -> store key of every registered store tensor.
        context: the default `Context` (the first task's recorded inference context); its
            ``training`` follows the module's mode.
    """

    tasks: tuple[str, ...]
    code: str
    context: Context = Context()

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, version={self.net_version}"

    def __reduce_ex__(self, protocol):
        raise CompileError(
            "a compiled jointnet module cannot be pickled (e.g. by torch.save(module)): its forward is "
            "generated code. Save the net with jointnet.save(path, net, store), or export a task with "
            "'jointnet export SNAP --task T -o FILE.pt2' (jointnet.execution.export.export_task)")

    def __deepcopy__(self, memo):  # deepcopy goes through __reduce_ex__ too: copy the state instead
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items()})
        return new

    def _ctx(self, ctx: Context | None) -> Context:
        if ctx is None:
            return self._defaults[self.training]
        if not isinstance(ctx, Context):
            raise CompileError(f"ctx must be a jointnet Context, got {type(ctx).__name__}")
        return ctx

    def set_context(self, context: Context) -> None:
        """Make `context` (in the module's train or eval mode) the default of calls without one."""
        self.context = context
        self._defaults = {True: context.with_training(True), False: context.with_training(False)}


def compile_net(
    net: JointNet,
    store: ParamStore,
    tasks: "str | RouteView | Sequence[str | RouteView] | None" = None,
    *,
    capture: Sequence[str] = (),
    independent_dropout: bool = False,
    cache: bool = True,
) -> CompiledNet:
    """Compile `tasks` of `net`: a task or a `RouteView` (one output tensor), or a list of them,
    or None for every task (a dict by label). `capture`: nodes whose outputs are returned too.

    Raises:
        CompileError: unknown or open task, several inputs, tensors missing from the store.
    """
    single = isinstance(tasks, (str, RouteView))
    routes = (tasks,) if single else tuple(net.tasks if tasks is None else tasks)
    capture = tuple(capture)
    key = (net.uid, routes, single, capture, independent_dropout)
    if cache and key in store._compiled:
        return store._compiled[key]
    p = plan(net, routes, capture, independent_dropout=independent_dropout)
    module = _build(net, store, p, routes, single and not capture)
    if cache:
        if len(store._compiled) >= _CACHE_SIZE:
            store._compiled.pop(next(iter(store._compiled)))
        store._compiled[key] = module
    return module


def _build(net: JointNet, store: ParamStore, p: Plan, routes, single: bool) -> CompiledNet:
    # Drop each intermediate after its last use, as a hand-written forward does by reassigning
    # `x`: without it every activation of every route stays alive until return (in a multi-task
    # module that doubled the eval time from allocator and cache pressure).
    outs = {var for _, var in p.outputs} | {var for _, _, var in p.captures}
    last_use = {v: i for i, s in enumerate(p.steps) for v in s.inputs}
    body = ["    ctx = self._ctx(ctx)"]
    for i, s in enumerate(p.steps):
        dead = [v for v in dict.fromkeys(s.inputs) if last_use[v] == i and v not in outs and v != "x"]
        free = f"; del {', '.join(dead)}" if dead else ""
        body.append(f"    {s.var} = {s.expr}{free}  # {s.node}")
    logits = "{" + ", ".join(f"{label!r}: {var}" for label, var in p.outputs) + "}"
    if single:
        ret = p.outputs[0][1]
    elif p.captures:
        acts = "{" + ", ".join(f"({label!r}, {node!r}): {var}" for label, node, var in p.captures) + "}"
        ret = f"{logits}, {acts}"
    else:
        ret = logits
    code = "def forward(self, x, ctx=None):\n" + "\n".join(body) + f"\n    return {ret}\n"
    namespace = {"torch": torch, "F": F, **RUNTIME, **_masks.RUNTIME}
    labels = tuple(route_label(r) for r in routes)
    exec(compile(code, f"<jointnet v{net.version} {','.join(labels)}>", "exec"), namespace)
    cls = type("CompiledNet", (CompiledNet,), {"forward": namespace["forward"]})
    module = cls()
    for attr, key, node in p.tensors:
        try:
            t = store.tensors[key]
        except KeyError:
            raise CompileError(f"node {node!r}: tensor {key!r} is not in the store; call store.realize(net)") from None
        if isinstance(t, nn.Parameter):
            module.register_parameter(attr, t)
        else:
            module.register_buffer(attr, t)
    for attr, key, shape in p.unpacked:
        if key not in store:
            raise CompileError(f"tensor {key!r} is not in the store; call store.realize(net)")
        module.register_buffer(attr, store.unpacked(key, shape))
    module.tasks = labels
    module.single = single
    module.code = code
    module.net_version = net.version
    module.keys = {attr: key for attr, key, _ in p.tensors}
    module.set_context(task_context(net, net.task_of(routes[0])))
    return module


@attrs.frozen
class Outputs:
    """What `run` returns: logits by route label, activations by (route label, node)."""

    logits: dict
    activations: dict


def run(
    net: JointNet,
    store: ParamStore,
    x: torch.Tensor,
    routes: "str | RouteView | Sequence[str | RouteView] | None" = None,
    *,
    capture: Sequence[str] = (),
    context: Context | None = None,
    independent_dropout: bool = False,
    grad: bool = False,
) -> Outputs:
    """Run `routes` (tasks or views; default every task) of `net` on `x` in one pass.

    Each node computed once for all routes that compute the same thing there; the modules are
    compiled once per (net version, routes, capture) and cached in the store. `context`: the
    call's `Context` (default: the first route's task's inference context, eval mode).
    Evaluating a view rewrites nothing and logs nothing. Without `grad` no autograd graph is
    built (evaluation, activations); with it the outputs can be backpropagated (importance passes).
    """
    if isinstance(routes, (str, RouteView)):
        routes = [routes]
    routes = tuple(net.tasks if routes is None else routes)
    module = compile_net(net, store, list(routes), capture=capture, independent_dropout=independent_dropout)
    ctx = context if context is not None else task_context(net, net.task_of(routes[0]))
    with torch.set_grad_enabled(grad):
        out = module(x, ctx)
    if capture:
        logits, acts = out
    else:
        logits, acts = out, {}
    return Outputs(dict(logits), dict(acts))
